//! PostgreSQL: the primary (all writes, fresh reads) and any number of streaming replicas.

pub mod changes;
mod error;
pub mod lease;
pub mod readers;
pub mod replica;
pub mod replicas;
pub mod sizes;
pub mod warm_ups;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::DatabaseSettings;
pub use error::DbError;
use lease::{Admission, IDLE_TEST_TIMEOUT, Leases};
use replicas::{Replica, Replicas};

/// The `application_name` of the service's connections.
const APPLICATION: &str = "product-size-service";
/// How many connections background queries on the primary keep between queries, at most: a
/// quarter of the pool, so that with the read path's half a quarter is always left to writes
/// (a pool of two keeps none for background work: each query then opens its own).
const BACKGROUND_KEPT: usize = 2;
/// The `application_name` of the connection that renews the reader leases.
const READERS_APPLICATION: &str = "product-size-service readers";

/// Which database a request's reads go to, decided once per request by
/// [`DbRouteLayer`](crate::middleware::route::DbRouteLayer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRoute {
    /// Writes, and reads no replica can serve (none configured, none usable, or none past the
    /// request's consistency token).
    Primary,
    /// Reads: a replica, when it has replayed every write the read must see.
    ReplicaPreferred,
}

/// Cheap-to-clone handles to the primary and the replica pools.
#[derive(Clone, Debug)]
pub struct Db {
    primary: PgPool,
    /// The read path's connections (see [`lease`]).
    primary_reads: Arc<Leases>,
    /// How writes wait for a primary connection.
    primary_writes: Arc<Admission>,
    /// Background queries on the primary ([`lease::bounded!`]).
    background: Arc<Leases>,
    /// Each replica's pools and health.
    replicas: Replicas,
    /// One connection that listens for changes made by other writers (see [`changes`]).
    changes: PgPool,
    /// The reader leases' renewals ([`readers`]), on a connection apart from the requests'
    /// pool: a lease must not lapse because requests hold every connection.
    readers: Arc<Leases>,
    /// How long a background query on the primary may take before its connection is given
    /// up ([`lease::bounded!`]).
    background_deadline: Duration,
    /// The same for a replica (`REPLICA_TIMEOUT_MS`).
    replica_deadline: Duration,
}

impl Db {
    /// Builds lazy pools: nothing connects until first use, so the service starts (and serves
    /// what it can) while a database is down. Connections to the primary name `ledgers`, the
    /// caches this instance updates itself, so that the change-capture trigger can leave the
    /// records of its writes to it (see the migration `capture_every_change`).
    pub fn connect_lazy(
        primary_url: &SecretString,
        replica_urls: &[SecretString],
        settings: &DatabaseSettings,
        ledgers: &[String],
    ) -> Result<Self, sqlx::Error> {
        let primary_options = connect_options(primary_url, APPLICATION, settings)?;
        warn_if_unverified("DATABASE_URL", &primary_options);
        let listener = changes::listener_application(ledgers);
        let primary = primary_pool(settings, primary_options, ledgers);
        let changes = one_connection(settings, connect_options(primary_url, &listener, settings)?);
        let readers = one_connection(
            settings,
            connect_options(primary_url, READERS_APPLICATION, settings)?,
        );
        let replicas = replica_urls
            .iter()
            .map(|url| {
                let replica = connect_options(url, APPLICATION, settings)?;
                warn_if_unverified("DATABASE_REPLICA_URL", &replica);
                Ok::<_, sqlx::Error>(request_pool(settings).connect_lazy_with(replica))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::with_pools(
            primary, replicas, changes, readers, settings,
        ))
    }

    /// The handles over lazy pools: the leases of reads, writes and background queries on
    /// each database, and their deadlines.
    fn with_pools(
        primary: PgPool,
        replicas: Vec<PgPool>,
        changes: PgPool,
        readers: PgPool,
        settings: &DatabaseSettings,
    ) -> Self {
        let primary_deadline = settings.primary_deadline();
        let replica_deadline = settings.replica_timeout;
        Self {
            primary_reads: Arc::new(Leases::new(primary.clone(), primary_deadline)),
            primary_writes: Arc::new(Admission::new(primary.clone())),

            background: Arc::new(Leases::background(
                primary.clone(),
                primary_deadline,
                BACKGROUND_KEPT.min(settings.max_connections as usize / 4),
            )),
            replicas: Replicas::new(
                replicas
                    .into_iter()
                    .map(|pool| {
                        let reads = Leases::new(pool.clone(), replica_deadline);
                        let background = Leases::background(pool.clone(), replica_deadline, 1);
                        Replica::new(pool, reads, background)
                    })
                    .collect(),
            ),
            readers: Arc::new(Leases::background(readers, primary_deadline, 1)),
            primary,
            changes,
            background_deadline: primary_deadline,
            replica_deadline,
        }
    }

    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// How long one background query on the primary (a probe, a renewal, a repair's
    /// statement) may take, connecting included, before its connection is closed.
    pub fn background_deadline(&self) -> Duration {
        self.background_deadline
    }

    /// How long one replica query may take, connecting included (`REPLICA_TIMEOUT_MS`).
    pub fn replica_deadline(&self) -> Duration {
        self.replica_deadline
    }

    /// The replicas reads may use, each with what its probe last saw.
    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    /// The connection the lease renewals run on.
    pub fn readers(&self) -> &Leases {
        &self.readers
    }

    /// Background queries on the primary ([`lease::bounded!`]).
    pub fn background(&self) -> &Leases {
        &self.background
    }

    /// Background queries on the primary, shared (for a task of its own).
    pub fn background_leases(&self) -> Arc<Leases> {
        self.background.clone()
    }

    /// The pool the change listener takes its one connection from.
    pub fn changes(&self) -> &PgPool {
        &self.changes
    }

    pub fn primary_reads(&self) -> &Leases {
        &self.primary_reads
    }

    /// Admission of writes to the primary (shed when it is saturated).
    pub fn primary_writes(&self) -> &Admission {
        &self.primary_writes
    }

    pub async fn close(&self) {
        self.primary_reads.release_all();
        self.background.release_all();
        self.readers.release_all();
        self.replicas.release_all();
        self.changes.close().await;
        self.readers.pool().close().await;
        self.primary.close().await;
        self.replicas.close().await;
    }
}

/// How to connect to `url` as the application `name`, with the configured statement timeout.
fn connect_options(
    url: &SecretString,
    name: &str,
    settings: &DatabaseSettings,
) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url.expose_secret())?
        .application_name(name)
        .options([(
            "statement_timeout",
            format!("{}", settings.statement_timeout.as_millis()),
        )]))
}

/// The options of a pool that serves requests (and background work) on one server.
fn request_pool(settings: &DatabaseSettings) -> PgPoolOptions {
    tested(PgPoolOptions::new())
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
}

/// The primary's pool, whose connections name `ledgers` (see [`Db::connect_lazy`]).
fn primary_pool(
    settings: &DatabaseSettings,
    options: PgConnectOptions,
    ledgers: &[String],
) -> PgPool {
    let ledgers = Arc::new(ledgers.join(" "));
    request_pool(settings)
        .after_connect(move |conn, _| {
            let ledgers = ledgers.clone();
            Box::pin(async move {
                sqlx::query("SELECT set_config('product_size.own_ledgers', $1, false)")
                    .bind(ledgers.as_str())
                    .execute(conn)
                    .await
                    .map(drop)
            })
        })
        .connect_lazy_with(options)
}

/// A pool of one connection, for a task that must not wait behind requests.
fn one_connection(settings: &DatabaseSettings, options: PgConnectOptions) -> PgPool {
    tested(PgPoolOptions::new())
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options)
}

/// Pool options whose idle connections are tested before they are handed out within
/// [`IDLE_TEST_TIMEOUT`], and closed if they do not answer. sqlx's own test has no deadline:
/// after a server stopped answering without closing its connections, an idle one held every
/// taker until the pool's acquire timeout, and went back to the pool to hold the next (a
/// one-connection pool was stuck for good).
fn tested(options: PgPoolOptions) -> PgPoolOptions {
    options
        .test_before_acquire(false)
        .before_acquire(|conn, _| {
            Box::pin(async move {
                let answered =
                    tokio::time::timeout(IDLE_TEST_TIMEOUT, sqlx::Connection::ping(conn)).await;
                Ok(matches!(answered, Ok(Ok(()))))
            })
        })
}

/// Warns when a connection that leaves this host would not verify the server's certificate
/// (`sslmode` other than `verify-full` or `verify-ca`): its traffic, password included, could
/// be read or redirected by anyone in between.
fn warn_if_unverified(setting: &str, options: &PgConnectOptions) {
    let local = options.get_socket().is_some()
        || matches!(options.get_host(), "localhost" | "127.0.0.1" | "::1")
        || options.get_host().starts_with('/');
    let verified = matches!(
        options.get_ssl_mode(),
        PgSslMode::VerifyFull | PgSslMode::VerifyCa
    );
    if !local && !verified {
        tracing::warn!(
            setting,
            host = options.get_host(),
            "PostgreSQL's certificate is not verified; add sslmode=verify-full (and sslrootcert=CA bundle) to the URL"
        );
    }
}

/// Applies the embedded migrations to the primary.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}
