//! PostgreSQL: the primary (all writes, fresh reads) and an optional streaming replica.

pub mod lease;
pub mod replica;
pub mod sizes;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseSettings;
use lease::Leases;

/// Which database a request's reads go to, decided once per request by
/// [`DbRouteLayer`](crate::middleware::route::DbRouteLayer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRoute {
    /// Writes, and reads the replica cannot serve (not configured, unhealthy, or behind the
    /// request's consistency token).
    Primary,
    /// Reads: the replica, when it has replayed every write the read must see.
    ReplicaPreferred,
}

/// Cheap-to-clone handles to the primary and the replica pools.
#[derive(Clone, Debug)]
pub struct Db {
    primary: PgPool,
    replica: Option<PgPool>,
    /// The read path's connections (see [`lease`]).
    primary_reads: Arc<Leases>,
    replica_reads: Option<Arc<Leases>>,
}

impl Db {
    /// Builds lazy pools: nothing connects until first use, so the service starts (and serves
    /// what it can) while a database is down.
    pub fn connect_lazy(
        primary_url: &SecretString,
        replica_url: Option<&SecretString>,
        settings: &DatabaseSettings,
    ) -> Result<Self, sqlx::Error> {
        let pool = |url: &SecretString| -> Result<PgPool, sqlx::Error> {
            let options = PgConnectOptions::from_str(url.expose_secret())?
                .application_name("product-size-service")
                .options([(
                    "statement_timeout",
                    format!("{}", settings.statement_timeout.as_millis()),
                )]);
            Ok(PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .min_connections(0)
                .acquire_timeout(settings.acquire_timeout)
                .idle_timeout(Some(Duration::from_secs(300)))
                .connect_lazy_with(options))
        };
        let primary = pool(primary_url)?;
        let replica = replica_url.map(pool).transpose()?;
        Ok(Self {
            primary_reads: Arc::new(Leases::new(primary.clone())),
            replica_reads: replica.clone().map(|r| Arc::new(Leases::new(r))),
            primary,
            replica,
        })
    }

    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    pub fn replica(&self) -> Option<&PgPool> {
        self.replica.as_ref()
    }

    pub fn primary_reads(&self) -> &Leases {
        &self.primary_reads
    }

    pub fn replica_reads(&self) -> Option<&Leases> {
        self.replica_reads.as_deref()
    }

    pub async fn close(&self) {
        self.primary_reads.release_all();
        if let Some(reads) = &self.replica_reads {
            reads.release_all();
        }
        self.primary.close().await;
        if let Some(replica) = &self.replica {
            replica.close().await;
        }
    }
}

/// Applies the embedded migrations to the primary.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}
