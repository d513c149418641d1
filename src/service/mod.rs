//! The read and write paths that tie the databases and the cache together, and the reasoning
//! that makes them safe. The invariant they keep (read-your-writes for everyone, no stale fill):
//!
//! > A cache entry stamped with the current epoch is at least as new as every write
//! > acknowledged for its SKU, and a database read is served only from a source known to
//! > have every acknowledged write the read must see.
//!
//! - Writes commit on the primary, then install their version with a compare-and-set that
//!   also raises the SKU's fence and the global high-water mark, all before acknowledging.
//! - Fills install with the same compare-and-set, which refuses anything older than the
//!   cached entry or the fence, and only within [`FILL_MAX_AGE`] of their read, far less than
//!   a fence lives: a fill that read before a write always lands on that write's fence.
//! - A replica row is used only if its version reaches the SKU's fence, or (no fence) the
//!   replica had replayed the high-water mark before its snapshot; and always past the
//!   client's consistency token. Anything else is read from the primary.
//! - Redis losing its data (FLUSHALL, restart) ends the epoch: everything stamped before is
//!   ignored, and the next epoch's high-water mark is taken from the primary.
//! - Every instance serves a cache only under a reader lease ([`readers`]): it knows every SKU
//!   the cache is owed, on any instance, and which epoch is the deployment's. A write whose
//!   update did not land there is acknowledged only once every other instance knows.

mod acknowledge;
mod answer;
pub mod audit;
mod authority;
mod error;
mod fetch;
mod flight;
mod follow;
mod inspect;
mod leases;
mod lookup;
mod plan;
mod position;
mod read;
mod readers;
pub mod repair;
pub mod warm;
mod write;

use crate::infra::background::every;
pub use crate::infra::background::{Background, Worker};
pub use error::{ServiceError, StoreError};
pub use follow::ChangeFeed;
pub use inspect::ConsistencyCheck;
pub use leases::LeaseRenewal;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Instrument;

pub use answer::{ReadResult, ReadSource, SizeDoc};
pub use read::Reader;
pub use write::{SyncItemOutcome, WriteOutcome, Writer};

use crate::cache::{Cache, CacheRole, Meta};
use crate::config::{FailoverPolicy, ReaderSettings};
use crate::db::Db;
use crate::db::DbError;
use crate::db::lease::bounded;
use crate::db::replicas::Replica;
use crate::db::sizes::{DatabaseHistory, primary_position};
use crate::metrics::{Database, Metrics};

/// Why a warm-up or an audit of the cache stopped.
#[derive(Debug, thiserror::Error)]
pub enum CacheJobError {
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("Redis: {0}")]
    Cache(#[from] fred::error::Error),
    #[error("Redis has no usable epoch (is it reachable?)")]
    NoEpoch,
}

/// The name under which `cache_repairs` records what the cache `role` of the deployment with
/// key prefix `prefix` is owed. The secondary shares the primary's key prefix, so its ledger
/// gets a suffix that no prefix can hold (the configuration refuses braces and spaces in
/// `CACHE_KEY_PREFIX`; the capture trigger reads a connection's ledgers space-separated).
pub fn ledger(prefix: &str, role: CacheRole) -> String {
    match role {
        CacheRole::Primary => prefix.to_owned(),
        CacheRole::Secondary => format!("{prefix}{{secondary}}"),
    }
}

/// A fill whose database read is older than this is dropped rather than installed.
pub const FILL_MAX_AGE: Duration = Duration::from_secs(10);

/// What the [`Reader`], the [`Writer`] and the workers share: the stores, the pending-repair
/// book, this instance's reader leases and the epochs it serves; and what operators ask of
/// the instance (readiness, metrics, the warm-up and the audit). It serves no request itself.
pub struct SizeService {
    db: Db,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    repairs: repair::Repairs,
    inspector: inspect::Inspector,
    primary_position: position::PrimaryPosition,
    secondary: Option<Secondary>,
    probed: Probed,
    /// This instance's leases on its caches (docs/reader-leases.md).
    readers: readers::Readers,
    /// Per cache: one epoch completion at a time in this instance.
    epoch_changes: [tokio::sync::Mutex<()>; 2],
    /// The counts of the last audit, as last read from Redis ([`SizeService::last_audit`]).
    audit_note: arc_swap::ArcSwapOption<audit::AuditReport>,
}

/// Whether the primary and Redis answered the last probe.
#[derive(Default)]
struct Probed {
    primary: AtomicBool,
    cache: AtomicBool,
}

/// How often `/readyz`'s view of the primary and Redis is refreshed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The second cache cluster and what writes do to it when the primary cache misses one.
pub struct Secondary {
    pub cache: Arc<Cache>,
    pub policy: FailoverPolicy,
    pub failover_ttl: Duration,
}

/// Whether each dependency answers, for `/readyz`.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub primary: bool,
    /// Each replica by name, and whether it answered its last probe.
    pub replicas: Vec<(String, bool)>,
    pub cache: bool,
    /// Redis's `maxmemory-policy` (in a Cluster, the first master's that may evict fences).
    pub cache_eviction_policy: Option<String>,
    pub cache_fences_evictable: bool,
}

/// Probes the primary and Redis every [`PROBE_INTERVAL`] (each replica has its own probe), and
/// reads the last audit's counts every [`audit::AUDIT_NOTE_INTERVAL`]: `/readyz` and the
/// audit gauges answer from what it last saw.
pub struct DependencyProbe(pub Arc<SizeService>);

impl Worker for DependencyProbe {
    /// Probes. Dropped where it awaits, a probe records nothing.
    async fn work(self) {
        let mut ticker = every(PROBE_INTERVAL);
        let mut audit_read: Option<tokio::time::Instant> = None;
        loop {
            ticker.tick().await;
            self.0.probe_dependencies().await;
            if audit_read.is_none_or(|at| at.elapsed() >= audit::AUDIT_NOTE_INTERVAL) {
                audit_read = Some(tokio::time::Instant::now());
                self.0.read_audit_note().await;
            }
        }
    }
}

impl SizeService {
    pub fn new(db: Db, cache: Arc<Cache>, metrics: Arc<Metrics>) -> Self {
        Self {
            db,
            cache,
            metrics,
            repairs: repair::Repairs::new(None),
            inspector: inspect::Inspector::default(),
            primary_position: position::PrimaryPosition::default(),
            secondary: None,
            probed: Probed::default(),
            readers: readers::Readers::new(ReaderSettings::default()),
            epoch_changes: Default::default(),
            audit_note: arc_swap::ArcSwapOption::empty(),
        }
    }

    /// Sets the reader lease and how long a write waits for the other readers.
    pub fn with_readers(mut self, settings: ReaderSettings) -> Self {
        self.readers = readers::Readers::new(settings);
        self
    }

    /// Sends the write transactions whose cache updates settled to `settled`, whose
    /// [`repair::SettledClearing`] clears their records. Without it they are cleared only once
    /// handed over as orphans ([`repair::ORPHAN_AGE`] later), like those a crash left.
    pub fn with_settled_queue(mut self, settled: repair::SettledQueue) -> Self {
        self.repairs = repair::Repairs::new(Some(settled));
        self
    }

    /// Adds a second cache cluster (`REDIS_SECONDARY_URL`).
    pub fn with_secondary(mut self, secondary: Option<Secondary>) -> Self {
        self.secondary = secondary;
        self
    }

    /// The caches writes go to: the primary cluster, then the secondary.
    fn caches(&self) -> impl Iterator<Item = &Cache> {
        std::iter::once(self.cache.as_ref())
            .chain(self.secondary.as_ref().map(|s| s.cache.as_ref()))
    }

    /// Each cache writes go to, with its role: the primary cluster, then the secondary.
    fn ledgers(&self) -> impl Iterator<Item = (CacheRole, &Cache)> {
        [CacheRole::Primary, CacheRole::Secondary]
            .into_iter()
            .zip(self.caches())
    }

    fn ledger(&self, role: CacheRole) -> String {
        ledger(self.cache.prefix(), role)
    }

    /// The metrics, as they are (no gauge refresh): for recording on the hot path.
    pub fn metrics_registry(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts pool timeouts on the way to the caller.
    fn database_error(&self, error: impl Into<DbError>) -> ServiceError {
        let error = error.into();
        if matches!(error, DbError::Sqlx(sqlx::Error::PoolTimedOut)) {
            self.metrics.db_pool_timeouts.inc();
        }
        error.into()
    }

    /// Awaits a request path's `query` on the primary within `span`; see
    /// [`Self::database_error`].
    async fn on_primary<T, E: Into<DbError>>(
        &self,
        query: impl Future<Output = Result<T, E>>,
        span: tracing::Span,
    ) -> Result<T, ServiceError> {
        query
            .instrument(span)
            .await
            .map_err(|e| self.database_error(e))
    }

    /// The metrics, with gauges brought up to date (for a scrape).
    pub fn metrics(&self) -> &Metrics {
        let metrics = &self.metrics;
        let (primary, replicas) = (self.db.primary(), self.db.replicas());
        metrics.set_pools(Database::Primary, std::iter::once(primary));
        if !replicas.is_empty() {
            metrics.set_pools(Database::Replica, replicas.iter().map(Replica::pool));
        }
        for replica in replicas.iter() {
            metrics.set_replica(replica.name(), replica.health());
        }
        metrics
            .cache_up
            .set(i64::from(!self.cache.is_unavailable()));
        metrics
            .cache_fences_evictable
            .set(i64::from(self.caches().any(|cache| {
                cache.server().is_some_and(|s| s.may_evict_fences())
            })));
        metrics
            .repairs_pending
            .set(self.repairs.pending_count() as i64);
        metrics
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// What the background probes last saw (see [`DependencyProbe`]): answering
    /// `/readyz` costs no query, however often a load balancer asks.
    pub fn readiness(&self) -> Readiness {
        let server = self.cache.server();
        Readiness {
            primary: self.probed.primary.load(Ordering::Relaxed),
            replicas: (self.db.replicas().iter())
                .map(|replica| (replica.name().to_owned(), replica.health().is_reachable()))
                .collect(),
            cache: self.probed.cache.load(Ordering::Relaxed),
            cache_eviction_policy: server.as_ref().map(|s| s.eviction_policy.clone()),
            cache_fences_evictable: server.is_some_and(|s| s.may_evict_fences()),
        }
    }

    /// Pings the primary and Redis once (1 s at most each) and records whether they answered.
    pub async fn probe_dependencies(&self) {
        let timeout = Duration::from_secs(1);
        let primary = async {
            bounded!(self.db.background(), timeout, |conn| sqlx::query(
                "SELECT 1"
            )
            .execute(conn))
            .await
            .is_ok()
        };
        let cache = async {
            tokio::time::timeout(timeout, self.cache.ping())
                .await
                .is_ok_and(|r| r.is_ok())
        };
        let (primary, cache) = tokio::join!(primary, cache);
        self.probed.primary.store(primary, Ordering::Relaxed);
        self.probed.cache.store(cache, Ordering::Relaxed);
    }

    /// The current epoch of `cache` with a known high-water mark, starting one if it has none.
    /// `None` if Redis or the primary cannot be reached: then nothing cached is trusted.
    async fn current_meta(&self, cache: &Cache, seen: Option<Meta>) -> Option<Meta> {
        if let Some(meta) = seen.filter(Meta::is_complete) {
            return Some(meta);
        }
        match self.start_epoch(cache).await {
            Ok(meta) => meta,
            Err(error) => {
                tracing::warn!(%error, "could not start a cache epoch; bypassing the cache");
                None
            }
        }
    }

    async fn start_epoch(&self, cache: &Cache) -> Result<Option<Meta>, StoreError> {
        cache.start_epoch().await?;
        self.complete_epoch(cache).await
    }

    /// Makes the current epoch of `cache` usable: if it is new, records it as the deployment's
    /// authoritative epoch and waits until every other instance knows (so none serves, or
    /// counts as landed an update of, the data set it used before); binds it to the primary's
    /// history; and raises its high-water mark to the primary's position, read after that:
    /// it covers every write acknowledged before, on whichever data set; writes acknowledged
    /// later raise the mark themselves, or count as failed updates. `None` if the epoch
    /// belongs to another history (a failover this instance has not seen a write of yet):
    /// nothing cached is trusted until a write on this history replaces it.
    async fn complete_epoch(&self, cache: &Cache) -> Result<Option<Meta>, StoreError> {
        let role = self.role_of(cache);
        // Concurrent reads that meet a new epoch queue here, holding no connection, and find
        // it complete when their turn comes.
        let _one_here = self.epoch_changes[role.index()].lock().await;
        let Some(meta) = cache.read_meta().await? else {
            return Ok(None);
        };
        if meta.is_complete() {
            return self.bind_epoch(cache, meta).await;
        }
        // One epoch change of a cache at a time, across instances: the last to record its
        // epoch as the authority is the last to have read it from Redis. The lock is a
        // session's, on a connection taken out of the pool: closed when done, or when this
        // task is cancelled, it never goes back to the pool holding the lock.
        let ledger = self.ledger(role);
        let mut conn = self.db.epoch_locks().acquire().await?.detach();
        crate::db::readers::lock_epochs(&mut conn, &ledger).await?;
        let completed = self.complete_new_epoch(cache, role, &mut conn).await;
        let unlocked = crate::db::readers::unlock_epochs(&mut conn, &ledger).await;
        let _ = sqlx::Connection::close(conn).await;
        unlocked?;
        completed
    }

    /// Completes the epoch `cache` holds, if still incomplete, under the epoch lock held by
    /// `conn`: makes it authoritative, then raises its high-water mark.
    async fn complete_new_epoch(
        &self,
        cache: &Cache,
        role: CacheRole,
        conn: &mut sqlx::PgConnection,
    ) -> Result<Option<Meta>, StoreError> {
        let Some(meta) = cache.read_meta().await? else {
            return Ok(None);
        };
        if meta.is_complete() {
            return self.bind_epoch(cache, meta).await;
        }
        if !self.make_authoritative(role, &meta.epoch, conn).await? {
            tracing::warn!(
                cache = cache.prefix(),
                "not every instance learned of the new cache epoch in time; bypassing the cache"
            );
            return Ok(None);
        }
        let (lsn, history) = primary_position(conn).await?;
        if !cache
            .bind_history(&meta.epoch, &history.to_string())
            .await?
        {
            tracing::warn!(cache = cache.prefix(), %history, "the cache epoch belongs to another database history; bypassing the cache");
            return Ok(None);
        }
        cache.raise_hwm_of(&meta.epoch, lsn).await?;
        tracing::info!(%lsn, %history, cache = cache.prefix(), "cache epoch started");
        Ok(cache.read_meta().await?.filter(Meta::is_complete))
    }

    /// Binds a complete epoch to the primary's history (unless it is bound already); `None` if
    /// it belongs to another.
    async fn bind_epoch(&self, cache: &Cache, meta: Meta) -> Result<Option<Meta>, StoreError> {
        let (_, history) = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| primary_position(conn)
        )
        .await?;
        if !cache
            .bind_history(&meta.epoch, &history.to_string())
            .await?
        {
            tracing::warn!(cache = cache.prefix(), %history, "the cache epoch belongs to another database history; bypassing the cache");
            return Ok(None);
        }
        Ok(Some(meta))
    }

    /// Which of this instance's caches `cache` is.
    fn role_of(&self, cache: &Cache) -> CacheRole {
        if std::ptr::eq(cache, self.cache.as_ref()) {
            CacheRole::Primary
        } else {
            CacheRole::Secondary
        }
    }

    /// Replaces the epoch `seen` of `cache`, whose versions come from another database
    /// history than `history`, with one on `history`. `None` if that cannot be done now.
    async fn replace_epoch_for(
        &self,
        cache: &Cache,
        seen: &Meta,
        history: &DatabaseHistory,
    ) -> Option<Meta> {
        let replaced = async {
            if cache.replace_epoch(seen).await? {
                tracing::warn!(cache = cache.prefix(), %history, "the primary's database history changed (failover or restore); new cache epoch");
            }
            self.complete_epoch(cache).await
        };
        match replaced.await {
            Ok(meta) => meta,
            Err(error) => {
                tracing::warn!(%error, "could not start a cache epoch for the new database history");
                None
            }
        }
    }
}
