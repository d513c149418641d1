//! Building the application from a [`ServeConfig`] and serving it.

mod router;
mod startup;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::config::ServeConfig;
use crate::db::replicas::Replicas;
use crate::infra::server;
use crate::metrics::Metrics;
use crate::middleware::access_log::{AccessLog, AccessLogWriter};
use crate::middleware::auth::Authenticator;
use crate::middleware::metrics::RequestMetricsLayer;
use crate::middleware::timeout::RequestTimeoutLayer;
use crate::routes::AppState;
use crate::service::repair::settled_queue;
use crate::service::{Background, Reader, SizeService, Writer};

pub use router::router;
pub use startup::{StartupError, connect, service};

/// How long shutdown waits for the background tasks, once cancelled, to end: they stop where
/// they await, but a warm-up still records that it was cancelled.
const BACKGROUND_STOP: Duration = Duration::from_secs(2);

/// A bound, ready-to-serve instance.
pub struct Application {
    listener: TcpListener,
    router: Router,
    sizes: Arc<SizeService>,
    background: Background,
    grace: Duration,
    limits: server::Limits,
    replicas: Replicas,
    access_log: Option<AccessLogWriter>,
}

impl Application {
    /// Connects lazily to every dependency (so it starts while one is down) and binds.
    pub async fn build(config: ServeConfig) -> Result<Self, StartupError> {
        let (db, cache, secondary) = connect(&config.common).await?;
        let background = Background::default();
        workers::start_replica_probes(&db, &config.common, &background);
        let replicas = db.replicas().clone();
        let metrics = Arc::new(Metrics::default());
        let (settled, settled_records) = settled_queue();
        let sizes = Arc::new(
            SizeService::new(db, cache, metrics.clone())
                .with_secondary(secondary)
                .with_readers(config.common.readers)
                .with_settled_queue(settled),
        );
        workers::prepare_and_start(&sizes, settled_records, &background).await;
        let (access_log, access_log_writer) =
            AccessLog::start(config.access_log_hit_sample).unzip();
        let router = router(
            AppState {
                reader: Arc::new(Reader::new(sizes.clone())),
                writer: Arc::new(Writer::new(sizes.clone())),
                sizes: sizes.clone(),
                background: background.clone(),
            },
            Authenticator::new(&config.auth),
            RequestMetricsLayer::new(metrics, access_log),
            RequestTimeoutLayer::new(config.request_timeout),
            replicas.clone(),
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
            replicas,
            access_log: access_log_writer,
        })
    }

    /// The replicas, with what their probes last saw: reads use a replica only as its probe
    /// says.
    pub fn replicas(&self) -> Replicas {
        self.replicas.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves. Then it stops accepting, lets in-flight requests
    /// finish within the grace period, stops the background tasks (a warm-up it runs ends as
    /// cancelled), applies pending cache repairs if Redis answers, and closes the pools.
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
        // Before the flush and the pools: no repair pass runs beside the flush, and no task
        // uses a pool after it is closed (unless one outlasts the bound).
        self.background.stop(BACKGROUND_STOP).await;
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
