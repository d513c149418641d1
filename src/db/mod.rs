//! PostgreSQL: the primary (all writes, fresh reads) and any number of streaming replicas.

pub mod changes;
mod error;
pub mod lease;
pub mod readers;
pub mod replica;
pub mod replicas;
pub mod session;
pub mod sizes;
pub mod warm_ups;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::config::{DatabaseSettings, Pooler};
pub use error::DbError;
use lease::{Admission, IDLE_TEST_TIMEOUT, Leases};
use replicas::{Replica, Replicas};
use session::Sessions;

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
    /// Connections that keep their session, to `DATABASE_SESSION_URL`, when the primary's
    /// go through a pooler in transaction mode (see [`Db::epoch_locks`]).
    session: Option<PgPool>,
    /// How statements reach the primary ([`session`]).
    sessions: Sessions,
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
    /// records of its writes to it (see the migration `capture_every_change`): in their
    /// session, or behind a pooler in transaction mode in each transaction ([`session`]).
    /// What needs a session of its own (the change listener, the epoch lock) connects to
    /// `session_url`, which a pooler in transaction mode requires, else to the primary.
    pub fn connect_lazy(
        primary_url: &SecretString,
        replica_urls: &[SecretString],
        session_url: Option<&SecretString>,
        settings: &DatabaseSettings,
        ledgers: &[String],
    ) -> Result<Self, sqlx::Error> {
        let pooled = settings.pooler == Pooler::Transaction;
        let session_options = |name: &str| match (session_url, pooled) {
            (Some(url), _) => connect_options(url, name, settings, false),
            (None, false) => connect_options(primary_url, name, settings, false),
            (None, true) => Err(sqlx::Error::Configuration(
                "a pooler in transaction mode needs DATABASE_SESSION_URL".into(),
            )),
        };
        let primary_options = connect_options(primary_url, APPLICATION, settings, pooled)?;
        warn_if_unverified("DATABASE_URL", &primary_options);
        let listener = changes::listener_application(ledgers);
        let primary = primary_pool(settings, primary_options, ledgers);
        let changes = one_connection(settings, session_options(&listener)?, false);
        let session = pooled
            .then(|| session_options(APPLICATION))
            .transpose()?
            .map(|options| session_pool(settings, options));
        let readers = one_connection(
            settings,
            connect_options(primary_url, READERS_APPLICATION, settings, pooled)?,
            pooled,
        );
        let replicas = replica_urls
            .iter()
            .map(|url| {
                let replica = connect_options(url, APPLICATION, settings, pooled)?;
                warn_if_unverified("DATABASE_REPLICA_URL", &replica);
                Ok::<_, sqlx::Error>(request_pool(settings).connect_lazy_with(replica))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (primary_sessions, replica_sessions) = match pooled {
            false => (Sessions::direct(), Sessions::direct()),
            true => (
                Sessions::pooled(settings.statement_timeout, ledgers),
                Sessions::pooled(settings.statement_timeout, &[]),
            ),
        };
        Ok(Self::with_pools(
            (primary, primary_sessions),
            (replicas, replica_sessions),
            (changes, session),
            readers,
            settings,
        ))
    }

    /// The handles over lazy pools: the leases of reads, writes and background queries on
    /// each database, and their deadlines.
    fn with_pools(
        (primary, sessions): (PgPool, Sessions),
        (replicas, replica_sessions): (Vec<PgPool>, Sessions),
        (changes, session): (PgPool, Option<PgPool>),
        readers: PgPool,
        settings: &DatabaseSettings,
    ) -> Self {
        let primary_deadline = settings.primary_deadline();
        let replica_deadline = settings.replica_timeout;
        let leases = |pool: &PgPool, sessions: &Sessions, deadline| {
            Arc::new(Leases::new(pool.clone(), sessions.clone(), deadline))
        };
        let background = |pool: &PgPool, sessions: &Sessions, deadline, keep| {
            Arc::new(Leases::background(
                pool.clone(),
                sessions.clone(),
                deadline,
                keep,
            ))
        };
        let kept = BACKGROUND_KEPT.min(settings.max_connections as usize / 4);
        Self {
            primary_reads: leases(&primary, &sessions, primary_deadline),
            primary_writes: Arc::new(Admission::new(primary.clone(), sessions.clone())),
            background: background(&primary, &sessions, primary_deadline, kept),
            replicas: Replicas::new(
                replicas
                    .into_iter()
                    .map(|pool| {
                        let sessions = replica_sessions.clone();
                        let reads = Leases::new(pool.clone(), sessions.clone(), replica_deadline);
                        let background =
                            Leases::background(pool.clone(), sessions, replica_deadline, 1);
                        Replica::new(pool, reads, background)
                    })
                    .collect(),
            ),
            readers: background(&readers, &sessions, primary_deadline, 1),
            primary,
            changes,
            session,
            sessions,
            background_deadline: primary_deadline,
            replica_deadline,
        }
    }

    /// How statements reach the primary ([`session`]).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
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

    /// Where the lock of an epoch change is taken, on a connection that keeps its session
    /// ([`readers::lock_epochs`]): the primary's pool, or `DATABASE_SESSION_URL`'s when the
    /// primary's connections go through a pooler in transaction mode. The epoch's work runs
    /// on the lock's connection, so it holds no pooled server connection either.
    pub fn epoch_locks(&self) -> &PgPool {
        self.session.as_ref().unwrap_or(&self.primary)
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
        if let Some(session) = &self.session {
            session.close().await;
        }
        self.readers.pool().close().await;
        self.primary.close().await;
        self.replicas.close().await;
    }
}

/// How to connect to `url` as the application `name`, with the configured statement timeout:
/// in the session, or, through a pooler in transaction mode (`pooled`), in each transaction
/// ([`session`]). Such a pooler refuses startup parameters it does not know (PgBouncer:
/// `options`, `extra_float_digits`), and no prepared statement may outlive a transaction.
fn connect_options(
    url: &SecretString,
    name: &str,
    settings: &DatabaseSettings,
    pooled: bool,
) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url.expose_secret())?.application_name(name);
    Ok(match pooled {
        false => options.options([(
            "statement_timeout",
            format!("{}", settings.statement_timeout.as_millis()),
        )]),
        // Rows come in binary, where the digits of a float do not depend on the setting.
        true => options.extra_float_digits(None).statement_cache_capacity(0),
    })
}

/// The options of a pool that serves requests (and background work) on one server.
fn request_pool(settings: &DatabaseSettings) -> PgPoolOptions {
    tested(PgPoolOptions::new(), settings.pooler == Pooler::Transaction)
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
}

/// The primary's pool, whose connections name `ledgers` (see [`Db::connect_lazy`]) unless
/// they go through a pooler in transaction mode, whose transactions do ([`session`]).
fn primary_pool(
    settings: &DatabaseSettings,
    options: PgConnectOptions,
    ledgers: &[String],
) -> PgPool {
    if settings.pooler == Pooler::Transaction {
        return request_pool(settings).connect_lazy_with(options);
    }
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

/// The connections to `DATABASE_SESSION_URL` that hold an epoch change's lock
/// ([`Db::epoch_locks`]): two, one epoch change at a time for each of two caches.
fn session_pool(settings: &DatabaseSettings, options: PgConnectOptions) -> PgPool {
    warn_if_unverified("DATABASE_SESSION_URL", &options);
    tested(PgPoolOptions::new(), false)
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options)
}

/// A pool of one connection, for a task that must not wait behind requests.
fn one_connection(settings: &DatabaseSettings, options: PgConnectOptions, pooled: bool) -> PgPool {
    tested(PgPoolOptions::new(), pooled)
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options)
}

/// Pool options whose idle connections are tested before they are handed out within
/// [`IDLE_TEST_TIMEOUT`], and closed if they do not answer. sqlx's own test has no deadline:
/// after a server stopped answering without closing its connections, an idle one held every
/// taker until the pool's acquire timeout, and went back to the pool to hold the next (a
/// one-connection pool was stuck for good). Through a pooler in transaction mode (`pooled`)
/// they are not tested: a ping waits for a server connection the pooler lends, so under load
/// it times out on the pooler's queue, not on a connection that stopped answering; each
/// query's own deadline closes a connection that does not answer.
fn tested(options: PgPoolOptions, pooled: bool) -> PgPoolOptions {
    let options = options.test_before_acquire(false);
    if pooled {
        return options;
    }
    options.before_acquire(|conn, _| {
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
