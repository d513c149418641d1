//! Reaching the dependencies at start: pools and Redis clients made lazily, and each server
//! tried once so that a configuration it refuses stops the start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, CacheRole};
use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::service::{Secondary, SizeService, ledger};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database configuration: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Redis configuration: {0}")]
    Cache(#[from] fred::error::Error),
    /// A server refused what the configuration names (a database that does not exist,
    /// credentials): waiting does not mend it.
    #[error("{setting}: the server refused it: {reason}")]
    Refused {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Pools and the Redis client, connecting lazily: nothing here fails because a dependency is
/// down, only because the configuration is wrong.
pub async fn connect(config: &Config) -> Result<(Db, Arc<Cache>, Option<Secondary>), StartupError> {
    let mut ledgers = vec![ledger(&config.cache.key_prefix, CacheRole::Primary)];
    if config.secondary_cache.is_some() {
        ledgers.push(ledger(&config.cache.key_prefix, CacheRole::Secondary));
    }
    let db = Db::connect_lazy(
        &config.database_url,
        &config.replica_urls,
        config.session_url.as_ref(),
        &config.database,
        &ledgers,
    )?;
    let cache = Cache::connect(&config.redis_url, config.cache.clone())?;
    let secondary = match &config.secondary_cache {
        Some(secondary) => Some(Secondary {
            cache: Cache::connect(&secondary.url, config.cache.clone())?,
            policy: secondary.policy,
            failover_ttl: secondary.failover_ttl,
        }),
        None => None,
    };
    let refused = |setting| move |reason| StartupError::Refused { setting, reason };
    let (primary, replica, linked, secondary_linked) = tokio::join!(
        check_database("DATABASE_URL", db.primary()),
        futures_util::future::try_join_all(
            (db.replicas().iter())
                .map(|replica| check_database("DATABASE_REPLICA_URL", replica.pool()))
        ),
        cache.wait_connected(Duration::from_secs(2)),
        async {
            match &secondary {
                Some(secondary) => secondary.cache.wait_connected(Duration::from_secs(2)).await,
                None => Ok(true),
            }
        },
    );
    primary?;
    replica?;
    if !linked.map_err(refused("REDIS_URL"))? {
        tracing::warn!("Redis is not reachable yet; serving from the database until it is");
    }
    if !secondary_linked.map_err(refused("REDIS_SECONDARY_URL"))? {
        tracing::warn!("the secondary Redis is not reachable yet");
    }
    Ok((db, cache, secondary))
}

/// Connects to the database `setting` names once: an error if the server refuses what the
/// URL says (no such database, credentials, no right to connect), which waiting does not
/// mend. A server that does not answer yet is only logged: the service starts degraded.
async fn check_database(setting: &'static str, pool: &sqlx::PgPool) -> Result<(), StartupError> {
    use sqlx::ConnectOptions;
    // One attempt, not the pool's retries until its acquire timeout.
    let options = pool.connect_options();
    let error = match tokio::time::timeout(Duration::from_secs(3), options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            return Ok(());
        }
        Ok(Err(error)) => error,
        Err(_) => {
            tracing::warn!(
                setting,
                "PostgreSQL did not answer within 3 s; starting degraded"
            );
            return Ok(());
        }
    };
    if let sqlx::Error::Database(refusal) = &error
        && refusal.code().is_some_and(|code| {
            // No such database; authentication failed or not allowed (pg_hba.conf, no such
            // role); no CONNECT privilege.
            matches!(code.as_ref(), "3D000" | "28P01" | "28000" | "42501")
        })
    {
        return Err(StartupError::Refused {
            setting,
            reason: refusal.message().to_owned(),
        });
    }
    tracing::warn!(setting, %error, "PostgreSQL is not reachable yet; starting degraded");
    Ok(())
}

/// The service without HTTP, for the cache commands.
pub async fn service(config: &Config) -> Result<Arc<SizeService>, StartupError> {
    let (db, cache, secondary) = connect(config).await?;
    Ok(Arc::new(
        SizeService::new(db, cache, Arc::new(Metrics::default())).with_secondary(secondary),
    ))
}
