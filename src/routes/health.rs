//! `/healthz` (the process is alive) and `/readyz` (what it can serve).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// The public endpoints this file serves.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DependencyState {
    Up,
    Down,
    /// Not configured (a replica is optional).
    Disabled,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` (everything up), `degraded` (serving what it can) or `unavailable`.
    #[schema(example = "ready")]
    status: &'static str,
    primary: DependencyState,
    /// `up` while every replica answers its probe, `down` while one does not, `disabled`
    /// without replicas.
    replica: DependencyState,
    /// Each replica by `host:port`: whether it answers its probe. Reads use it only while it
    /// is also within the lag bound (`product_size_replica_usable` per replica).
    #[schema(example = json!({"10.0.0.7:5432": "up", "10.0.0.8:5432": "down"}))]
    replicas: BTreeMap<String, DependencyState>,
    cache: DependencyState,
    /// Redis's `maxmemory-policy` (absent while Redis is unreachable, or in a Cluster).
    /// Anything but `noeviction` may evict the fences that keep reads fresh.
    #[schema(example = "noeviction")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_eviction_policy: Option<String>,
    /// Whether that policy may evict fences: then a read may be older than an acknowledged
    /// write after Redis runs out of memory.
    cache_fences_evictable: bool,
}

/// Liveness: the process is alive
///
/// Answers 200 while the process serves HTTP, whatever its dependencies: for a liveness probe.
/// Needs no token.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: what the instance can serve
///
/// Names each dependency (the primary database, each replica, the cache) up or down, from
/// probes that run in the background, so asking often costs the dependencies nothing. 200
/// while the instance can serve anything, possibly degraded (reads from what answers); 503
/// only when it can serve nothing. Needs no token.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Can serve (possibly degraded)", body = Readiness),
        (status = 503, description = "Can serve nothing", body = Readiness,
         headers(("Retry-After" = u32, description = "Seconds to wait before asking again"))),
    ))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ready = state.sizes.readiness();
    let up = |ok: bool| {
        if ok {
            DependencyState::Up
        } else {
            DependencyState::Down
        }
    };
    let every_replica = ready.replicas.iter().all(|(_, reachable)| *reachable);
    let any_replica = ready.replicas.iter().any(|(_, reachable)| *reachable);
    let replica = if ready.replicas.is_empty() {
        DependencyState::Disabled
    } else {
        up(every_replica)
    };

    let any_reads = ready.primary || any_replica || ready.cache;
    let all_up = ready.primary && ready.cache && every_replica;
    let (status, word) = match (all_up, any_reads) {
        (true, _) => (StatusCode::OK, "ready"),
        (false, true) => (StatusCode::OK, "degraded"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    let retry = (status == StatusCode::SERVICE_UNAVAILABLE).then_some([(header::RETRY_AFTER, "1")]);
    (
        status,
        retry,
        Json(Readiness {
            status: word,
            primary: up(ready.primary),
            replica,
            replicas: (ready.replicas.into_iter())
                .map(|(name, reachable)| (name, up(reachable)))
                .collect(),
            cache: up(ready.cache),
            cache_eviction_policy: ready.cache_eviction_policy,
            cache_fences_evictable: ready.cache_fences_evictable,
        }),
    )
}

/// Prometheus metrics
///
/// Request counts and latency by route and status, cache lookups by outcome, reads by source,
/// replica lag, the cache repair backlog, pool use and the last cache audit's counts, all
/// prefixed `product_size_`, in the OpenMetrics text format. Needs no token.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text format)",
               content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = state.sizes.metrics();
    if let Some(audit) = state.sizes.last_audit() {
        metrics.set_audit(&audit);
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
}
