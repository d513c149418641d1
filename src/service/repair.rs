//! Durable cache records: what each cache is owed, applied from the database. Every committed
//! change to `product_sizes` is recorded in its own transaction by a trigger, for each cache
//! that follows the table (its *ledger*; see [`crate::db::changes`]):
//!
//! - **This instance's writes** are recorded as its own, once per transaction and cache (in
//!   `cache_own_writes`). When a cache's update succeeds, the record is cleared in the
//!   background; when it fails, the SKUs are also marked pending here, and until a repair
//!   worker has put the committed versions into that cache this instance does not serve them
//!   from it. The worker hands such a record over to `cache_repairs` (one record per SKU) at
//!   once, and any instance hands over records older than [`ORPHAN_AGE`] (their writer died,
//!   or could not clear them); from there they are repaired like any other.
//! - **Everyone else's changes** (psql, a backfill, another deployment's writes) are due at
//!   once: the primary notifies the instances, whose workers apply them within milliseconds;
//!   the pass every [`REPAIR_INTERVAL`] picks up whatever a lost notification left.
//!
//! Each cache is repaired on its own: a secondary cluster that missed a write is repaired
//! while the primary cache is down, and the other way round. Records are claimed with
//! `FOR UPDATE SKIP LOCKED`, so instances share a backlog without applying one twice at once,
//! and applied with the compare-and-set of every install, so applying one again installs
//! nothing older. An instance protects every SKU it owes, however many: it forgets one only
//! when its record is gone from the database.
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 8 (repairs are never forgotten).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::{SizeService, StoreError};
use crate::cache::{Cache, CacheRole, Install, Meta};
use crate::db::lease::bounded;
use crate::db::session::on_pool;
use crate::db::sizes::{
    Owed, claim_repairs, fetch_on, hand_over_own_writes, owed_repairs, primary_position,
    repair_backlog, settle_repairs,
};
use crate::domain::StoredSize;

mod workers;

pub use workers::{RepairWorker, SettledClearing, SettledQueue, settled_queue};

/// A repair record this old is taken to be orphaned (its writer died or could not clear it).
pub const ORPHAN_AGE: Duration = Duration::from_secs(2);
const REPAIR_INTERVAL: Duration = Duration::from_millis(250);
/// How often the backlog gauges are refreshed from the database.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);
/// Repairs claimed, read and installed per transaction.
const BATCH: usize = 1_000;
/// Batches one pass applies to one cache before it lets the other take a turn.
const BATCHES_PER_PASS: usize = 50;

/// One write transaction's versions, settled in one cache.
pub struct Settled {
    role: CacheRole,
    xact: i64,
}

pub struct Repairs {
    /// Per cache: SKU → the version whose update of that cache failed on this instance.
    pending: Mutex<[HashMap<String, i64>; 2]>,
    /// Fast path: reads skip the lock while nothing is pending.
    pending_count: AtomicUsize,
    /// Per cache: write transactions whose update of that cache failed on this instance, and
    /// whose records are still to be handed over to `cache_repairs`.
    failed_writes: Mutex<[Vec<i64>; 2]>,
    wake: Notify,
    /// Another writer's change was recorded (a notification from the primary).
    changed: Notify,
    /// Where settled updates go to have their records cleared; `None` where no
    /// [`SettledClearing`] runs (the commands).
    settled: Option<SettledQueue>,
}

impl Repairs {
    pub fn new(settled: Option<SettledQueue>) -> Self {
        Self {
            pending: Mutex::new([HashMap::new(), HashMap::new()]),
            pending_count: AtomicUsize::new(0),
            failed_writes: Mutex::new([Vec::new(), Vec::new()]),
            wake: Notify::new(),
            changed: Notify::new(),
            settled,
        }
    }

    /// Whether `cache` may hold an older version of `sku` than this instance acknowledged.
    pub fn is_pending(&self, cache: CacheRole, sku: &str) -> bool {
        self.pending_count.load(Ordering::Acquire) > 0
            && self
                .pending
                .lock()
                .is_ok_and(|p| p[cache.index()].contains_key(sku))
    }

    pub fn pending_count(&self) -> usize {
        self.pending_count.load(Ordering::Acquire)
    }

    fn pending_skus(&self, cache: CacheRole) -> Vec<String> {
        self.pending
            .lock()
            .map(|p| p[cache.index()].keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The update of these rows in `cache`, written by the transaction `xact` (if it wrote
    /// any), failed: stop serving them from it, and have the write's record handed over.
    pub fn mark_pending(&self, cache: CacheRole, rows: &[StoredSize], xact: Option<i64>) {
        if let (Some(xact), Ok(mut failed)) = (xact, self.failed_writes.lock()) {
            failed[cache.index()].push(xact);
        }
        self.mark_owed(
            cache,
            rows.iter().map(|row| (row.sku.as_str(), row.version)),
        );
        self.wake.notify_one();
    }

    fn failed_writes(&self, cache: CacheRole) -> Vec<i64> {
        self.failed_writes
            .lock()
            .map(|failed| failed[cache.index()].clone())
            .unwrap_or_default()
    }

    /// The records of these failed writes are in `cache_repairs` now.
    fn handed_over(&self, cache: CacheRole, xacts: &[i64]) {
        if let Ok(mut failed) = self.failed_writes.lock() {
            failed[cache.index()].retain(|xact| !xacts.contains(xact));
        }
    }

    fn mark_owed<'a>(&self, cache: CacheRole, owed: impl IntoIterator<Item = (&'a str, i64)>) {
        self.update(cache, |pending| {
            for (sku, version) in owed {
                let entry = pending.entry(sku.to_owned()).or_insert(version);
                *entry = (*entry).max(version);
            }
        });
    }

    /// `cache` now holds at least these versions.
    fn clear(&self, cache: CacheRole, done: &[(String, i64)]) {
        self.update(cache, |pending| {
            for (sku, version) in done {
                if pending.get(sku).is_some_and(|owed| owed <= version) {
                    pending.remove(sku);
                }
            }
        });
    }

    /// Forgets the `asked` SKUs that have no record any more (another instance repaired them).
    fn forget_unrecorded(&self, cache: CacheRole, asked: &[String], recorded: &[(String, i64)]) {
        let recorded: HashSet<&str> = recorded.iter().map(|(sku, _)| sku.as_str()).collect();
        self.update(cache, |pending| {
            for sku in asked {
                if !recorded.contains(sku.as_str()) {
                    pending.remove(sku);
                }
            }
        });
    }

    fn update(&self, cache: CacheRole, change: impl FnOnce(&mut HashMap<String, i64>)) {
        if let Ok(mut pending) = self.pending.lock() {
            change(&mut pending[cache.index()]);
            let count = pending.iter().map(HashMap::len).sum();
            self.pending_count.store(count, Ordering::Release);
        }
    }

    /// Another writer's change was recorded: apply it now rather than at the next pass.
    pub fn change_announced(&self) {
        self.changed.notify_one();
    }

    /// The update of `cache` with what the transaction `xact` wrote succeeded: clear its
    /// record in the background. A record that is not cleared (full queue, crash) is handed
    /// over and applied again later, which is harmless.
    pub fn settled(&self, cache: CacheRole, xact: i64) {
        if let Some(settled) = &self.settled {
            let _ = settled.try_send(Settled { role: cache, xact });
        }
    }
}

impl SizeService {
    /// Refreshes the backlog gauges: records owed to each cache, and the oldest one's age.
    pub async fn read_backlog(&self) {
        for (role, _) in self.ledgers() {
            let ledger = self.ledger(role);
            let backlog = bounded!(
                self.db.background(),
                self.db.background_deadline(),
                |conn| repair_backlog(conn, &ledger)
            );
            match backlog.await {
                Ok((count, oldest)) => self.metrics.set_repair_backlog(role, count, oldest),
                Err(error) => tracing::debug!(%error, "could not read the repair backlog"),
            }
        }
    }

    /// On shutdown: applies this instance's pending repairs while Redis answers, for at most
    /// `budget`. What is left stays recorded for the next instance.
    pub async fn flush_repairs(&self, budget: Duration) {
        let deadline = tokio::time::Instant::now() + budget;
        while self.repairs.pending_count() > 0 && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.repair_once()).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let left = self.repairs.pending_count();
        if left > 0 {
            tracing::warn!(left, "cache repairs left for the next instance");
        }
    }

    /// Takes over every repair still recorded, so that an instance that starts after a crash
    /// does not serve, from the cache, versions older than what its predecessor acknowledged.
    pub async fn adopt_owed_repairs(&self) -> Result<usize, sqlx::Error> {
        let mut adopted = 0;
        for (role, _) in self.ledgers() {
            let ledger = self.ledger(role);
            let owed = on_pool!(self.db.sessions(), self.db.primary(), |conn| {
                owed_repairs(conn, &ledger, None)
            })
            .await?;
            self.repairs.mark_owed(
                role,
                owed.iter().map(|(sku, version)| (sku.as_str(), *version)),
            );
            adopted += owed.len();
        }
        if adopted > 0 {
            self.repairs.wake.notify_one();
        }
        Ok(adopted)
    }

    /// Puts the committed version of owed SKUs into each cache that answers, independently.
    /// Returns how many were repaired; an error only if nothing was and a cache failed.
    pub async fn repair_once(&self) -> Result<usize, StoreError> {
        let mut repaired = 0;
        let mut failure = None;
        for (role, cache) in self.ledgers() {
            match self.repair_cache(role, cache).await {
                Ok(done) => repaired += done,
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) if repaired == 0 => Err(error),
            _ => Ok(repaired),
        }
    }

    async fn repair_cache(&self, role: CacheRole, cache: &Cache) -> Result<usize, StoreError> {
        let ledger = self.ledger(role);
        // Before the cache is asked: during an outage this keeps the list of failed writes
        // short, one entry per write since the last pass, however long Redis is away.
        let failed = self.repairs.failed_writes(role);
        bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| hand_over_own_writes(conn, &ledger, &failed, ORPHAN_AGE)
        )
        .await?;
        self.repairs.handed_over(role, &failed);
        if cache.is_unavailable() {
            cache.ping().await?;
        }
        self.forget_repaired_elsewhere(role, &ledger).await?;
        let mut repaired = 0;
        for _ in 0..BATCHES_PER_PASS {
            let (claimed, done) = self.repair_batch(role, cache, &ledger).await?;
            repaired += done;
            if claimed < BATCH {
                break;
            }
        }
        Ok(repaired)
    }

    /// Stops protecting pending SKUs whose records are gone: another instance repaired them.
    async fn forget_repaired_elsewhere(
        &self,
        role: CacheRole,
        ledger: &str,
    ) -> Result<(), StoreError> {
        let pending = self.repairs.pending_skus(role);
        if pending.is_empty() {
            return Ok(());
        }
        let asked: Vec<&str> = pending.iter().map(String::as_str).collect();
        let recorded = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| owed_repairs(conn, ledger, Some(&asked))
        )
        .await?;
        self.repairs.forget_unrecorded(role, &pending, &recorded);
        Ok(())
    }

    /// Claims one batch of repairs owed to `cache`, installs the committed rows and clears
    /// their records, all while the claim holds. Returns how many were claimed and repaired.
    /// Within twice the background deadline (several statements and an install): a primary
    /// that stopped answering does not hold the worker. An epoch that must be started or
    /// completed first is, with no claim held, and then the batch claimed again.
    async fn repair_batch(
        &self,
        role: CacheRole,
        cache: &Cache,
        ledger: &str,
    ) -> Result<(usize, usize), StoreError> {
        let deadline = self.db.background_deadline() * 2;
        let batch = || {
            bounded!(self.db.background(), deadline, |conn| {
                self.repair_batch_on(conn, role, cache, ledger)
            })
        };
        if let Some(counts) = batch().await? {
            return Ok(counts);
        }
        self.repair_epoch(role, cache).await?;
        Ok(batch().await?.unwrap_or((0, 0)))
    }

    /// One batch, or `None` when `cache` holds no complete epoch the deployment serves.
    async fn repair_batch_on(
        &self,
        conn: &mut sqlx::PgConnection,
        role: CacheRole,
        cache: &Cache,
        ledger: &str,
    ) -> Result<Option<(usize, usize)>, StoreError> {
        let pending = self.repairs.pending_skus(role);
        let pending: Vec<&str> = pending.iter().map(String::as_str).collect();
        let mut tx = sqlx::Connection::begin(conn).await?;
        let owed = claim_repairs(&mut tx, ledger, &pending, ORPHAN_AGE, BATCH as i64).await?;
        if owed.is_empty() {
            return Ok(Some((0, 0)));
        }
        // Orphans (their writer died or could not clear them) and other writers' changes are
        // not served from the cache here either until they are applied.
        self.repairs.mark_owed(
            role,
            owed.iter().map(|owed| (owed.sku.as_str(), owed.version)),
        );
        // The epoch is captured before the rows are read, like a write's; but not started or
        // completed while the claim holds: that waits for every instance, and meanwhile the
        // writes that record these SKUs as owed wait for the claim (and time out).
        let Some(meta) = self.served_epoch(role, cache).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        let skus: Vec<&str> = owed.iter().map(|owed| owed.sku.as_str()).collect();
        let fetched = fetch_on(&mut tx, &skus).await?;
        let rows = fetched.rows;
        let (lsn, history) = primary_position(&mut tx).await?;
        // Versions of another history (a failover the epoch has not seen a write of yet) may
        // reuse numbers the epoch holds with other content: a new epoch first, then the
        // records are applied there by the next pass.
        if cache.bound_history(&meta.epoch).await?.as_deref() != Some(&*history.to_string()) {
            tx.rollback().await?;
            if self
                .replace_epoch_for(cache, &meta, &history)
                .await
                .is_none()
            {
                return Err(StoreError::NoEpoch);
            }
            return Ok(Some((0, 0)));
        }
        let installs: Vec<Install<'_>> = rows
            .iter()
            .map(|row| Install::row(row, fetched.visible))
            .collect();
        cache.record_writes(&installs, &meta.epoch, lsn).await?;
        let done: Vec<(String, i64)> = rows.iter().map(|r| (r.sku.clone(), r.version)).collect();
        settle_repairs(&mut *tx, ledger, &done).await?;
        tx.commit().await?;
        self.repairs.clear(role, &done);
        self.readers.settled(role, &done);
        self.count_applied(cache, &owed);
        Ok(Some((owed.len(), done.len())))
    }

    /// The epoch of `cache` a repair installs in, if Redis holds it complete and the deployment
    /// serves it: one read, no query.
    async fn served_epoch(
        &self,
        role: CacheRole,
        cache: &Cache,
    ) -> Result<Option<Meta>, StoreError> {
        let seen = cache.read_meta().await?;
        Ok(seen.filter(|meta| meta.is_complete() && self.readers.is_authority(role, &meta.epoch)))
    }

    /// The epoch of `cache` a repair installs in. Only the data set the deployment serves: a
    /// repair applied elsewhere would clear the record while readers still lack the version.
    async fn repair_epoch(&self, role: CacheRole, cache: &Cache) -> Result<Meta, StoreError> {
        let seen = cache.read_meta().await?;
        self.current_meta(cache, seen)
            .await
            .filter(|meta| self.readers.is_authority(role, &meta.epoch))
            .ok_or(StoreError::NoEpoch)
    }

    /// Logs and counts the `owed` records applied to `cache`: repairs of this service's own
    /// writes, and other writers' changes.
    fn count_applied(&self, cache: &Cache, owed: &[Owed]) {
        let repairs = owed.iter().filter(|owed| owed.own_write).count();
        if repairs > 0 {
            tracing::info!(repaired = repairs, cache = cache.prefix(), "cache repaired");
        }
        self.metrics.repairs_applied.inc_by(repairs as u64);
        self.metrics
            .changes_applied
            .inc_by((owed.len() - repairs) as u64);
    }
}
