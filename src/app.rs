//! Building the application from a [`Config`] and serving it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, header};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::cache::{Cache, CacheRole};
use crate::config::Config;
use crate::db::Db;
use crate::db::replica::{ReplicaHealth, spawn_probe};
use crate::error::{self, AppError};
use crate::metrics::Metrics;
use crate::middleware::Access;
use crate::middleware::access_log::{AccessLog, AccessLogWriter};
use crate::middleware::auth::{AuthLayer, Authenticator};
use crate::middleware::metrics::{RequestMetricsLayer, X_REQUEST_ID};
use crate::middleware::request_id::MakeRandomRequestId;
use crate::middleware::route::DbRouteLayer;
use crate::middleware::timeout::RequestTimeoutLayer;
use crate::routes::{self, AppState, docs, extract::BODY_LIMIT};
use crate::server;
use crate::service::{Secondary, SizeService, ledger};
use crate::telemetry;

const REPLICA_PROBE_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database configuration: {0}")]
    Database(#[from] sqlx::Error),
    #[error("Redis configuration: {0}")]
    Cache(#[from] fred::error::Error),
    /// A server refused what the configuration names (a database that does not exist,
    /// credentials): waiting does not mend it.
    #[error("{setting}: the server refused it: {reason}")]
    Refused {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Responses at least this large are compressed when the client accepts gzip.
const COMPRESS_ABOVE: u64 = 2048;

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
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let (db, cache, secondary) = connect(&config).await?;
        let mut background = Vec::new();
        let replica_health = db.replica_background().map(|replica| {
            let health = Arc::new(ReplicaHealth::default());
            background.push(spawn_probe(
                db.background_leases(),
                replica,
                health.clone(),
                REPLICA_PROBE_INTERVAL,
                config.replica_max_lag,
                config.database.replica_timeout,
            ));
            health
        });
        let metrics = Arc::new(Metrics::default());
        let sizes = Arc::new(
            SizeService::new(db, cache, metrics.clone(), replica_health.clone())
                .with_secondary(secondary)
                .with_readers(config.readers),
        );
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
        background.push(tokio::spawn(sizes.clone().keep_probing()));
        if let Some(health) = &replica_health {
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
        let state = AppState {
            sizes: sizes.clone(),
        };
        let (access_log, access_log_writer) =
            AccessLog::start(config.access_log_hit_sample).unzip();
        let router = router(
            state,
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

/// Pools and the Redis client, connecting lazily: nothing here fails because a dependency is
/// down, only because the configuration is wrong.
pub async fn connect(config: &Config) -> Result<(Db, Arc<Cache>, Option<Secondary>), StartupError> {
    let mut ledgers = vec![ledger(&config.cache.key_prefix, CacheRole::Primary)];
    if config.secondary_cache.is_some() {
        ledgers.push(ledger(&config.cache.key_prefix, CacheRole::Secondary));
    }
    let db = Db::connect_lazy(
        &config.database_url,
        config.replica_url.as_ref(),
        &config.database,
        &ledgers,
    )?;
    let cache = Cache::connect(&config.redis_url, config.cache.clone())?;
    let secondary = match &config.secondary_cache {
        Some(secondary) => Some(Secondary {
            cache: Cache::connect(&secondary.url, config.cache.clone())?,
            policy: secondary.policy,
            failover_ttl: secondary.failover_ttl,
        }),
        None => None,
    };
    let refused = |setting| move |reason| StartupError::Refused { setting, reason };
    let (primary, replica, linked, secondary_linked) = tokio::join!(
        check_database("DATABASE_URL", db.primary()),
        async {
            match db.replica() {
                Some(replica) => check_database("DATABASE_REPLICA_URL", replica).await,
                None => Ok(()),
            }
        },
        cache.wait_connected(Duration::from_secs(2)),
        async {
            match &secondary {
                Some(secondary) => secondary.cache.wait_connected(Duration::from_secs(2)).await,
                None => Ok(true),
            }
        },
    );
    primary?;
    replica?;
    if !linked.map_err(refused("REDIS_URL"))? {
        tracing::warn!("Redis is not reachable yet; serving from the database until it is");
    }
    if !secondary_linked.map_err(refused("REDIS_SECONDARY_URL"))? {
        tracing::warn!("the secondary Redis is not reachable yet");
    }
    Ok((db, cache, secondary))
}

/// Connects to the database `setting` names once: an error if the server refuses what the
/// URL says (no such database, credentials, no right to connect), which waiting does not
/// mend. A server that does not answer yet is only logged: the service starts degraded.
async fn check_database(setting: &'static str, pool: &sqlx::PgPool) -> Result<(), StartupError> {
    use sqlx::ConnectOptions;
    // One attempt, not the pool's retries until its acquire timeout.
    let options = pool.connect_options();
    let error = match tokio::time::timeout(Duration::from_secs(3), options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            return Ok(());
        }
        Ok(Err(error)) => error,
        Err(_) => {
            tracing::warn!(
                setting,
                "PostgreSQL did not answer within 3 s; starting degraded"
            );
            return Ok(());
        }
    };
    if let sqlx::Error::Database(refusal) = &error
        && refusal.code().is_some_and(|code| {
            // No such database; authentication failed or not allowed (pg_hba.conf, no such
            // role); no CONNECT privilege.
            matches!(code.as_ref(), "3D000" | "28P01" | "28000" | "42501")
        })
    {
        return Err(StartupError::Refused {
            setting,
            reason: refusal.message().to_owned(),
        });
    }
    tracing::warn!(setting, %error, "PostgreSQL is not reachable yet; starting degraded");
    Ok(())
}

/// The service without HTTP, for the cache commands.
pub async fn service(config: &Config) -> Result<Arc<SizeService>, StartupError> {
    let (db, cache, secondary) = connect(config).await?;
    Ok(Arc::new(
        SizeService::new(db, cache, Arc::new(Metrics::default()), None).with_secondary(secondary),
    ))
}

/// The full router: the documented API, docs, and the middleware stack.
pub fn router(
    state: AppState,
    authenticator: Authenticator,
    metrics: RequestMetricsLayer,
    timeout: RequestTimeoutLayer,
    replica_health: Option<Arc<ReplicaHealth>>,
) -> Router {
    let (api, mut policies) = routes::api();
    let (api, _) = api.split_for_parts();
    let openapi = routes::openapi_json();
    for documentation in ["/openapi.json", "/docs", "/docs/{*file}"] {
        policies.insert(Method::GET, documentation, Access::Public);
    }
    let policies = Arc::new(policies);
    let auth = AuthLayer::new(authenticator, policies.clone());
    let db_route = DbRouteLayer::new(replica_health, policies);
    api.route(
        "/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi) }),
    )
    .route("/docs", get(docs::docs_page))
    .route("/docs/{*file}", get(docs::docs_asset))
    .fallback(|| async { AppError::NoRoute })
    .with_state(state)
    // One stack, outermost first, applied with one `layer` call: axum boxes each route once
    // per `layer` call, and a request pays for every box and clone on its way in.
    .layer(
        ServiceBuilder::new()
            // Large answers (lookups, syncs) only: a single size is a few hundred bytes, and
            // compressing it would cost more than it saves.
            .layer(
                CompressionLayer::new()
                    .gzip(true)
                    .compress_when(DefaultPredicate::new().and(SizeAbove::new(COMPRESS_ABOVE))),
            )
            .layer(SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
            ]))
            .layer(SetRequestIdLayer::new(X_REQUEST_ID, MakeRandomRequestId))
            // Outside the next layer, which copies the id onto the response: every problem
            // body, the inner layers' included, gets it as `request_id`.
            .map_response(error::with_request_id)
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(|request: &Request| {
                        let path = request
                            .extensions()
                            .get::<MatchedPath>()
                            .map_or(request.uri().path(), MatchedPath::as_str);
                        let request_id = request
                            .headers()
                            .get(&X_REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        let span = tracing::info_span!(
                            "request",
                            method = %request.method(),
                            path,
                            request_id,
                            principal = tracing::field::Empty,
                            trace_id = tracing::field::Empty,
                            otel.name = tracing::field::Empty,
                            otel.kind = "server",
                            http.response.status_code = tracing::field::Empty,
                        );
                        if telemetry::tracing_enabled() {
                            span.record(
                                "otel.name",
                                tracing::field::display(format_args!(
                                    "{} {path}",
                                    request.method()
                                )),
                            );
                            telemetry::continue_trace(&span, request.headers());
                        }
                        span
                    })
                    .on_response(
                        |response: &axum::http::Response<_>, _: Duration, span: &tracing::Span| {
                            if telemetry::tracing_enabled() {
                                span.record(
                                    "http.response.status_code",
                                    response.status().as_u16(),
                                );
                            }
                        },
                    )
                    // The access log has every status; an error line per 503 would flood the log
                    // exactly when the service sheds load.
                    .on_failure(()),
            )
            .layer(CatchPanicLayer::custom(|_| {
                axum::response::IntoResponse::into_response(AppError::internal("handler panicked"))
            }))
            // Outside authentication: requests refused before a handler (401, 403, 413) are
            // counted too, and so are those that time out.
            .layer(metrics)
            .layer(timeout)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .layer(auth)
            .layer(db_route),
    )
}
