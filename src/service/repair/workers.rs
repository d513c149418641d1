//! The repair workers: one applies what the caches are owed, the other clears the records of
//! this instance's writes whose cache updates settled.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{BACKLOG_INTERVAL, BATCH, REPAIR_INTERVAL, Settled};
use crate::db::lease::bounded;
use crate::db::sizes::settle_own_writes;
use crate::infra::background::{Worker, every};
use crate::service::SizeService;

/// Where the write path queues the transactions whose cache updates settled.
pub type SettledQueue = mpsc::Sender<Settled>;

/// A queue of settled updates: its sending end for [`SizeService::with_settled_queue`], its
/// receiving end for [`SettledClearing::new`].
pub fn settled_queue() -> (SettledQueue, mpsc::Receiver<Settled>) {
    mpsc::channel(10_000)
}

/// Applies what the caches are owed: every [`REPAIR_INTERVAL`], soon after a write's update
/// failed, and at once when another writer's change is announced.
pub struct RepairWorker(pub Arc<SizeService>);

impl Worker for RepairWorker {
    /// Repairs. Dropped where it awaits, a pass loses nothing: every batch is one
    /// transaction, and what it had not committed stays recorded.
    async fn work(self) {
        let service = &self.0;
        let mut ticker = every(REPAIR_INTERVAL);
        let mut backlog_read = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = service.repairs.wake.notified() => {
                    // Let Redis settle (or time out) before the first attempt.
                    tokio::time::sleep(REPAIR_INTERVAL).await;
                }
                () = service.repairs.changed.notified() => {}
            }
            match service.repair_once().await {
                Ok(applied) => tracing::trace!(applied, "cache records applied"),
                Err(error) => tracing::debug!(%error, "cache repair postponed"),
            }
            service
                .metrics
                .repairs_pending
                .set(service.repairs.pending_count() as i64);
            if backlog_read.elapsed() >= BACKLOG_INTERVAL {
                backlog_read = tokio::time::Instant::now();
                service.read_backlog().await;
            }
        }
    }
}

/// Clears the records of this instance's writes whose cache updates settled, in batches, as
/// the write path queues them ([`SizeService::with_settled_queue`]).
pub struct SettledClearing {
    sizes: Arc<SizeService>,
    settled: mpsc::Receiver<Settled>,
}

impl SettledClearing {
    /// Clears what arrives on `settled`, the other end of the queue handed to `sizes`.
    pub fn new(sizes: Arc<SizeService>, settled: mpsc::Receiver<Settled>) -> Self {
        Self { sizes, settled }
    }
}

impl Worker for SettledClearing {
    /// Clears. Dropped where it awaits, a batch is harmless to lose: a record not cleared is
    /// handed over and applied again later.
    async fn work(mut self) {
        let sizes = &self.sizes;
        let mut batch = Vec::with_capacity(BATCH);
        while self.settled.recv_many(&mut batch, BATCH).await > 0 {
            for (role, _) in sizes.ledgers() {
                let done: Vec<i64> = batch
                    .iter()
                    .filter(|s| s.role == role)
                    .map(|s| s.xact)
                    .collect();
                if done.is_empty() {
                    continue;
                }
                let ledger = sizes.ledger(role);
                let settled = bounded!(
                    sizes.db.background(),
                    sizes.db.background_deadline(),
                    |conn| settle_own_writes(conn, &ledger, &done)
                );
                if let Err(error) = settled.await {
                    tracing::debug!(%error, "could not clear cache repairs; the worker will redo them");
                }
            }
            batch.clear();
        }
    }
}
