//! Durable cache repair. Every write records what Redis owes it in `cache_repairs`, in the
//! write's own transaction. When the cache update succeeds, the record is cleared in the
//! background; when it fails, the SKU is also marked pending here, and until a repair worker
//! has put the committed version into Redis this instance does not serve that SKU from the
//! cache. After a crash, records older than [`ORPHAN_AGE`] are repaired by any instance.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::SizeService;
use crate::cache::Install;
use crate::db::sizes::{current_wal_lsn, fetch, owed_repairs, settle_repairs};
use crate::domain::StoredSize;

/// A repair record this old is taken to be orphaned (its writer died or could not clear it).
pub const ORPHAN_AGE: Duration = Duration::from_secs(2);
const REPAIR_INTERVAL: Duration = Duration::from_millis(250);
const BATCH: usize = 500;

pub struct Repairs {
    /// SKU → the version whose cache update failed on this instance.
    pending: Mutex<HashMap<String, i64>>,
    /// Fast path: reads skip the lock while nothing is pending.
    pending_count: AtomicUsize,
    wake: Notify,
    settled_tx: mpsc::Sender<(String, i64)>,
    settled_rx: Mutex<Option<mpsc::Receiver<(String, i64)>>>,
}

impl Default for Repairs {
    fn default() -> Self {
        let (settled_tx, settled_rx) = mpsc::channel(10_000);
        Self {
            pending: Mutex::new(HashMap::new()),
            pending_count: AtomicUsize::new(0),
            wake: Notify::new(),
            settled_tx,
            settled_rx: Mutex::new(Some(settled_rx)),
        }
    }
}

impl Repairs {
    pub fn is_pending(&self, sku: &str) -> bool {
        self.pending_count.load(Ordering::Acquire) > 0
            && self.pending.lock().is_ok_and(|p| p.contains_key(sku))
    }

    pub fn pending_count(&self) -> usize {
        self.pending_count.load(Ordering::Acquire)
    }

    fn pending_skus(&self) -> Vec<String> {
        self.pending
            .lock()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The cache update for these rows failed: stop serving them from the cache.
    pub fn mark_pending(&self, rows: &[StoredSize]) {
        self.mark_owed(rows.iter().map(|row| (row.sku.as_str(), row.version)));
        self.wake.notify_one();
    }

    fn mark_owed<'a>(&self, owed: impl IntoIterator<Item = (&'a str, i64)>) {
        if let Ok(mut pending) = self.pending.lock() {
            for (sku, version) in owed {
                let entry = pending.entry(sku.to_owned()).or_insert(version);
                *entry = (*entry).max(version);
            }
            self.pending_count.store(pending.len(), Ordering::Release);
        }
    }

    /// Redis now holds at least these versions.
    fn clear(&self, done: &[(String, i64)]) {
        if let Ok(mut pending) = self.pending.lock() {
            for (sku, version) in done {
                if pending.get(sku).is_some_and(|owed| owed <= version) {
                    pending.remove(sku);
                }
            }
            self.pending_count.store(pending.len(), Ordering::Release);
        }
    }

    /// Forget pending SKUs that no longer have a repair record (another instance repaired them).
    fn forget_unless(&self, skus: &[String], owed: &[(String, i64)]) {
        if let Ok(mut pending) = self.pending.lock() {
            for sku in skus {
                if !owed.iter().any(|(owed_sku, _)| owed_sku == sku) {
                    pending.remove(sku);
                }
            }
            self.pending_count.store(pending.len(), Ordering::Release);
        }
    }

    /// The cache update of these rows succeeded: clear their records in the background. A
    /// record that is not cleared (full queue, crash) is re-applied later, which is harmless.
    pub fn settled(&self, rows: &[StoredSize]) {
        for row in rows {
            let _ = self.settled_tx.try_send((row.sku.clone(), row.version));
        }
    }
}

impl SizeService {
    /// Starts the repair worker and the task that clears settled records.
    pub fn spawn_repair_tasks(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(mut settled) = self
            .repairs
            .settled_rx
            .lock()
            .ok()
            .and_then(|mut rx| rx.take())
        {
            let service = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut batch = Vec::with_capacity(BATCH);
                while settled.recv_many(&mut batch, BATCH).await > 0 {
                    if let Err(error) = settle_repairs(service.db.primary(), service.cache.prefix(), &batch).await {
                        tracing::debug!(%error, "could not clear cache repairs; the worker will redo them");
                    }
                    batch.clear();
                }
            }));
        }
        let service = self.clone();
        tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(REPAIR_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = service.repairs.wake.notified() => {
                        // Let Redis settle (or time out) before the first attempt.
                        tokio::time::sleep(REPAIR_INTERVAL).await;
                    }
                }
                match service.repair_once().await {
                    Ok(0) => {}
                    Ok(repaired) => tracing::info!(repaired, "cache repaired"),
                    Err(error) => tracing::debug!(%error, "cache repair postponed"),
                }
                service
                    .metrics
                    .repairs_pending
                    .set(service.repairs.pending_count() as i64);
            }
        }));
        tasks
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
        let owed = owed_repairs(
            self.db.primary(),
            self.cache.prefix(),
            &[],
            Duration::ZERO,
            1_000_000,
        )
        .await?;
        self.repairs
            .mark_owed(owed.iter().map(|(sku, version)| (sku.as_str(), *version)));
        if !owed.is_empty() {
            self.repairs.wake.notify_one();
        }
        Ok(owed.len())
    }

    /// Puts the committed version of owed SKUs into Redis. Returns how many were repaired.
    pub async fn repair_once(&self) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        if self.cache.is_unavailable() {
            self.cache.ping().await?;
        }
        let pending = self.repairs.pending_skus();
        let pending_refs: Vec<&str> = pending.iter().map(String::as_str).collect();
        let owed = owed_repairs(
            self.db.primary(),
            self.cache.prefix(),
            &pending_refs,
            ORPHAN_AGE,
            BATCH as i64,
        )
        .await?;
        self.repairs.forget_unless(&pending, &owed);
        if owed.is_empty() {
            return Ok(0);
        }
        // Orphans (their writer died or could not clear them) are not served from the cache
        // here either until they are repaired.
        self.repairs
            .mark_owed(owed.iter().map(|(sku, version)| (sku.as_str(), *version)));
        // Each cache's epoch is captured before the rows are read, like a write's.
        let mut epochs = Vec::with_capacity(2);
        for cache in self.caches() {
            if cache.is_unavailable() {
                cache.ping().await?;
            }
            let seen = cache.read_meta().await?;
            let meta = self
                .current_meta(cache, seen)
                .await
                .ok_or("no cache epoch")?;
            epochs.push(meta.epoch);
        }
        let skus: Vec<&str> = owed.iter().map(|(sku, _)| sku.as_str()).collect();
        let rows = fetch(self.db.primary(), &skus).await?.rows;
        let lsn = current_wal_lsn(&mut *self.db.primary().acquire().await?).await?;
        let installs: Vec<Install<'_>> = rows.iter().map(Install::from).collect();
        for (cache, epoch) in self.caches().zip(&epochs) {
            cache.record_writes(&installs, epoch, lsn).await?;
        }
        let done: Vec<(String, i64)> = rows.iter().map(|r| (r.sku.clone(), r.version)).collect();
        settle_repairs(self.db.primary(), self.cache.prefix(), &done).await?;
        self.repairs.clear(&done);
        Ok(done.len())
    }
}
