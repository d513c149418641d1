//! `/v1/admin/cache/warm`: start a cache warm-up in this instance and watch its progress.
//! Admin tokens only (`API_ADMIN_TOKENS`; see [`crate::routes::api`]). A warm-up started here
//! is throttled unless the request asks for another rate: it shares the primary (or the
//! replica) and Redis with live traffic.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::error::AppError;
use crate::service::CacheJobError;
use crate::service::warm::{WarmOptions, WarmProgress};

/// The operator endpoints this file serves (the admin group).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start_warm, warm_status))
}

/// Rows per second a warm-up started over HTTP installs at most, unless the request says.
pub const DEFAULT_RATE_LIMIT: u32 = 20_000;
const MAX_RATE_LIMIT: u32 = 1_000_000;

/// How fast to warm.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WarmParams {
    /// Rows per second at most (1 to 1,000,000; default 20,000).
    #[param(minimum = 1, maximum = 1_000_000)]
    rate_limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    #[default]
    Idle,
    Running,
    Succeeded,
    Failed,
}

/// The last (or current) warm-up of this instance.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct WarmStatus {
    state: JobState,
    progress: WarmProgress,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<DateTime<Utc>>,
}

/// At most one warm-up per instance at a time.
#[derive(Debug, Default)]
pub struct WarmJob {
    status: Mutex<WarmStatus>,
}

impl WarmJob {
    fn status(&self) -> WarmStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, change: impl FnOnce(&mut WarmStatus)) {
        if let Ok(mut status) = self.status.lock() {
            change(&mut status);
        }
    }

    /// Marks a new run as started, unless one is running.
    fn try_start(&self) -> Result<WarmStatus, WarmStatus> {
        let mut status = self.status.lock().map_err(|_| WarmStatus::default())?;
        if status.state == JobState::Running {
            return Err(status.clone());
        }
        *status = WarmStatus {
            state: JobState::Running,
            started_at: Some(Utc::now()),
            ..WarmStatus::default()
        };
        Ok(status.clone())
    }
}

#[utoipa::path(
    post,
    path = "/v1/admin/cache/warm",
    tag = "operations",
    params(WarmParams),
    responses(
        (status = 202, description = "Warm-up started", body = WarmStatus),
        (status = 400, description = "A rate limit out of range"),
        (status = 409, description = "A warm-up is already running"),
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
    let options = WarmOptions {
        rate_limit: Some(rate_limit),
        ..WarmOptions::default()
    };
    let status = match state.warm_job.try_start() {
        Ok(status) => status,
        Err(running) => {
            return AppError::Conflict(format!(
                "a warm-up is already running ({} of {} rows)",
                running.progress.rows, running.progress.total
            ))
            .into_response();
        }
    };
    let (sizes, job) = (state.sizes.clone(), Arc::clone(&state.warm_job));
    tokio::spawn(async move {
        let result = sizes
            .warm_cache(&options, |progress| {
                job.update(|s| s.progress = progress.clone())
            })
            .await;
        job.update(|status| {
            status.finished_at = Some(Utc::now());
            match result {
                Ok(progress) => {
                    status.state = JobState::Succeeded;
                    status.progress = progress;
                }
                Err(error) => {
                    tracing::warn!(%error, "cache warm-up failed");
                    status.state = JobState::Failed;
                    status.error = Some(public_reason(&error).to_owned());
                }
            }
        });
    });
    (StatusCode::ACCEPTED, Json(status)).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/admin/cache/warm",
    tag = "operations",
    responses(
        (status = 200, description = "The last or current warm-up", body = WarmStatus),
    )
)]
pub async fn warm_status(State(state): State<AppState>) -> Json<WarmStatus> {
    Json(state.warm_job.status())
}

/// Why a job failed, for its HTTP status: which dependency, never its error text (which can
/// name hosts, users or queries); the log has the whole error.
fn public_reason(error: &CacheJobError) -> &'static str {
    match error {
        CacheJobError::Database(_) => "the database failed; see the service's log",
        CacheJobError::Cache(_) => "Redis failed; see the service's log",
        CacheJobError::NoEpoch => "Redis has no usable epoch (is it reachable?)",
    }
}
