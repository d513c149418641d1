//! The instance's background workers, each started on the one [`Background`] that shutdown
//! cancels and waits for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::db::Db;
use crate::db::replica::ReplicaProbe;
use crate::service::repair::{RepairWorker, Settled, SettledClearing};
use crate::service::{
    Background, ChangeFeed, ConsistencyCheck, DependencyProbe, LeaseRenewal, SizeService,
};

const REPLICA_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// Starts probing each replica; its health is what reads consult.
pub fn start_replica_probes(db: &Db, config: &Config, background: &Background) {
    for replica in db.replicas().iter() {
        background.start(ReplicaProbe::new(
            db.background_leases(),
            replica,
            REPLICA_PROBE_INTERVAL,
            config.replica_max_lag,
            config.database.replica_timeout,
        ));
    }
}

/// Everything an instance must know before it serves (owed repairs, the probes' first round,
/// the change feed, its reader lease), then the background workers, in that order. `settled`
/// is the receiving end of the queue `sizes` sends its settled updates to.
pub async fn prepare_and_start(
    sizes: &Arc<SizeService>,
    settled: mpsc::Receiver<Settled>,
    background: &Background,
) {
    match sizes.adopt_owed_repairs().await {
        Ok(0) => {}
        Ok(owed) => tracing::info!(
            owed,
            "cache repairs recorded before this start will be applied"
        ),
        Err(error) => tracing::warn!(%error, "could not read recorded cache repairs"),
    }
    // The backlog gauges have their first values before the first scrape.
    sizes.read_backlog().await;
    // `/readyz` answers from the probes: the first round completes before serving.
    sizes.probe_dependencies().await;
    background.start(DependencyProbe(sizes.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !sizes.db().replicas().probed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Err(error) = sizes.follow_changes().await {
        tracing::warn!(%error, "cannot follow the table's changes yet; retrying in the background");
    }
    // No hit is served before this instance knows what the cache is owed.
    sizes.join_readers().await;
    start_workers(sizes, settled, background);
}

/// The workers that keep the instance's leases, repairs, change feed and consistency check.
fn start_workers(
    sizes: &Arc<SizeService>,
    settled: mpsc::Receiver<Settled>,
    background: &Background,
) {
    background.start(LeaseRenewal::new(sizes.clone(), background.clone()));
    background.start(SettledClearing::new(sizes.clone(), settled));
    background.start(RepairWorker(sizes.clone()));
    background.start(ChangeFeed(sizes.clone()));
    background.start(ConsistencyCheck(sizes.clone()));
}
