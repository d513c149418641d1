//! `/v1/admin/cache/warm`: start, watch and cancel the deployment's cache warm-up. Admin
//! tokens only (`API_ADMIN_TOKENS`; see [`crate::routes::api`]). One warm-up runs per
//! deployment, whichever instance a request reaches, and every instance reports it (see
//! [`crate::service::warm`]). It is throttled: it shares the primary (or the replica) and
//! Redis with live traffic.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::AppError;
use crate::service::warm::{ClaimError, WarmOptions, WarmStatus};

/// The operator endpoints this file serves (the admin group).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start_warm, warm_status, cancel_warm))
}

/// Rows per second a warm-up started over HTTP installs at most, unless the request says.
pub const DEFAULT_RATE_LIMIT: u32 = 20_000;
/// The most a request may ask for: beyond it a warm-up competes with live traffic for the
/// database and Redis rather than filling behind it.
const MAX_RATE_LIMIT: u32 = 50_000;

/// How fast to warm.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WarmParams {
    /// Rows per second at most (1 to 50,000; default 20,000).
    #[param(minimum = 1, maximum = 50_000)]
    rate_limit: Option<u32>,
}

#[utoipa::path(
    post,
    path = "/v1/admin/cache/warm",
    tag = "operations",
    summary = "Start the deployment's cache warm-up",
    description = "Loads every row of the table into the cache, page by page, with the same \
        versioned compare-and-set as any fill, so it is safe while writes go on. One warm-up \
        runs per deployment: while one runs on any instance, this answers 409. It runs on the \
        instance this request reached, at `rate_limit` rows per second at most; watch it with \
        `GET` and stop it with `DELETE` on any instance.",
    params(WarmParams),
    responses(
        (status = 202, description = "Warm-up started", body = WarmStatus),
        (status = 400, description = "A rate limit out of range", body = crate::error::Problem),
        (status = 409, description = "A warm-up is already running on an instance of the deployment", body = crate::error::Problem),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn start_warm(
    State(state): State<AppState>,
    params: Result<Query<WarmParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let rate_limit = match params {
        Ok(Query(WarmParams { rate_limit: None })) => DEFAULT_RATE_LIMIT,
        Ok(Query(WarmParams {
            rate_limit: Some(rate @ 1..=MAX_RATE_LIMIT),
        })) => rate,
        _ => {
            return AppError::BadRequest(format!(
                "rate_limit must be a whole number of rows per second from 1 to {MAX_RATE_LIMIT}"
            ))
            .into_response();
        }
    };
    let run = match state.sizes.claim_warm_up(Some(rate_limit)).await {
        Ok(run) => run,
        Err(ClaimError::Running(running)) => {
            return AppError::Conflict(format!(
                "a warm-up is already running in this deployment ({} of {} rows)",
                running.progress.rows, running.progress.total
            ))
            .into_response();
        }
        Err(ClaimError::Service(error)) => return AppError::from(error).into_response(),
    };
    let status = run.status();
    let options = WarmOptions {
        rate_limit: Some(rate_limit),
        ..WarmOptions::default()
    };
    let sizes = state.sizes.clone();
    // On the instance's background tasks: its shutdown cancels the run and waits for it to
    // record that it was cancelled.
    state.background.spawn(|stop| async move {
        if let Err(error) = run.run(&sizes, &options, stop, |_| {}).await {
            tracing::warn!(%error, "cache warm-up failed");
        }
    });
    (StatusCode::ACCEPTED, Json(status)).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/admin/cache/warm",
    tag = "operations",
    summary = "The deployment's warm-up",
    description = "The last or current warm-up of the deployment, whichever instance runs it: \
        its state and progress (reported every second). A warm-up whose instance shut down while \
        it ran reads as cancelled; one whose instance died reads as failed within 30 seconds.",
    responses(
        (status = 200, description = "The last or current warm-up", body = WarmStatus),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn warm_status(State(state): State<AppState>) -> Result<Json<WarmStatus>, AppError> {
    Ok(Json(state.sizes.warm_up_status().await?))
}

#[utoipa::path(
    delete,
    path = "/v1/admin/cache/warm",
    tag = "operations",
    summary = "Cancel the deployment's warm-up",
    description = "Asks the deployment's running warm-up to stop, whichever instance runs it; \
        it stops within a second and then reads as cancelled. What it installed stays: every \
        entry is as safe as any fill.",
    responses(
        (status = 202, description = "The running warm-up was asked to stop", body = WarmStatus),
        (status = 204, description = "No warm-up is running"),
        (status = 503, description = "The database is unavailable", body = crate::error::Problem,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again"))),
    )
)]
pub async fn cancel_warm(State(state): State<AppState>) -> Result<Response, AppError> {
    Ok(match state.sizes.cancel_warm_up().await? {
        Some(status) => (StatusCode::ACCEPTED, Json(status)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}
