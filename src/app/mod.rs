//! Building the application from a [`ServeConfig`] and serving it.

mod router;
mod startup;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, ServeConfig};
use crate::db::Db;
use crate::db::replica::{ReplicaHealth, spawn_probe};
use crate::infra::server;
use crate::metrics::Metrics;
use crate::middleware::access_log::{AccessLog, AccessLogWriter};
use crate::middleware::auth::Authenticator;
use crate::middleware::metrics::RequestMetricsLayer;
use crate::middleware::timeout::RequestTimeoutLayer;
use crate::routes::AppState;
use crate::service::SizeService;

pub use router::router;
pub use startup::{StartupError, connect, service};

const REPLICA_PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// A bound, ready-to-serve instance.
pub struct Application {
    listener: TcpListener,
    router: Router,
    sizes: Arc<SizeService>,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
    limits: server::Limits,
    replica_health: Option<Arc<ReplicaHealth>>,
    access_log: Option<AccessLogWriter>,
}

impl Application {
    /// Connects lazily to every dependency (so it starts while one is down) and binds.
    pub async fn build(config: ServeConfig) -> Result<Self, StartupError> {
        let (db, cache, secondary) = connect(&config.common).await?;
        let mut background = Vec::new();
        let replica_health = start_replica_probe(&db, &config.common, &mut background);
        let metrics = Arc::new(Metrics::default());
        let sizes = Arc::new(
            SizeService::new(db, cache, metrics.clone(), replica_health.clone())
                .with_secondary(secondary)
                .with_readers(config.common.readers),
        );
        background.extend(prepare_and_start(&sizes, replica_health.as_deref()).await);
        let (access_log, access_log_writer) =
            AccessLog::start(config.access_log_hit_sample).unzip();
        let router = router(
            AppState {
                sizes: sizes.clone(),
            },
            Authenticator::new(&config.auth),
            RequestMetricsLayer::new(metrics, access_log),
            RequestTimeoutLayer::new(config.request_timeout),
            replica_health.clone(),
        );
        let listener = TcpListener::bind(config.bind_addr)
            .await
            .map_err(|source| StartupError::Bind {
                addr: config.bind_addr,
                source,
            })?;
        Ok(Self {
            listener,
            router,
            sizes,
            background,
            grace: config.shutdown_grace,
            limits: config.http,
            replica_health,
            access_log: access_log_writer,
        })
    }

    /// What the replica probe last saw (`None` without a replica): reads use the replica
    /// only as it says.
    pub fn replica_health(&self) -> Option<Arc<ReplicaHealth>> {
        self.replica_health.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves. Then it stops accepting, lets in-flight requests
    /// finish within the grace period, applies pending cache repairs if Redis answers, and
    /// closes the pools.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let draining = server::serve(self.listener, self.router, self.limits, shutdown).await;
        tracing::info!(
            connections = draining.count(),
            "shutting down: listener closed, finishing requests in flight"
        );
        if tokio::time::timeout(self.grace, draining.finished())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = self.grace.as_secs(),
                "grace period over; dropping requests still in flight"
            );
        }
        for task in &self.background {
            task.abort();
        }
        // Repairs need the lease, which the last renewal left for a while yet.
        self.sizes.flush_repairs(Duration::from_secs(2)).await;
        self.sizes.leave_readers().await;
        self.sizes.db().close().await;
        self.sizes.cache().quit().await;
        // The server has dropped the router and with it the log's last handle: the writer
        // writes what is queued and ends.
        if let Some(writer) = self.access_log {
            writer.finished(Duration::from_secs(1)).await;
        }
    }
}

/// Starts probing the replica, if one is configured; its health is what reads consult.
fn start_replica_probe(
    db: &Db,
    config: &Config,
    background: &mut Vec<JoinHandle<()>>,
) -> Option<Arc<ReplicaHealth>> {
    let replica = db.replica_background()?;
    let health = Arc::new(ReplicaHealth::default());
    background.push(spawn_probe(
        db.background_leases(),
        replica,
        health.clone(),
        REPLICA_PROBE_INTERVAL,
        config.replica_max_lag,
        config.database.replica_timeout,
    ));
    Some(health)
}

/// Everything an instance must know before it serves (owed repairs, the probes' first round,
/// the change feed, its reader lease), then the background tasks, in that order.
async fn prepare_and_start(
    sizes: &Arc<SizeService>,
    replica_health: Option<&ReplicaHealth>,
) -> Vec<JoinHandle<()>> {
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
    let mut background = vec![tokio::spawn(sizes.clone().keep_probing())];
    if let Some(health) = replica_health {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !health.probed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    if let Err(error) = sizes.follow_changes().await {
        tracing::warn!(%error, "cannot follow the table's changes yet; retrying in the background");
    }
    // No hit is served before this instance knows what the cache is owed.
    sizes.join_readers().await;
    background.push(tokio::spawn(sizes.clone().keep_leases()));
    background.extend(sizes.spawn_repair_tasks());
    background.push(tokio::spawn(sizes.clone().keep_following()));
    background.push(tokio::spawn(sizes.clone().listen_for_changes()));
    background.push(tokio::spawn(sizes.clone().inspect_consistency()));
    background
}
