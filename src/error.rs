//! One error type for the HTTP layer, rendered as `application/problem+json` (RFC 9457).
//!
//! Database and Redis failures never show their text to clients: the detail goes to the log
//! inside the request span, the client gets an opaque 503 (or 500) body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{FieldError, FieldErrors};
use crate::service::ServiceError;
use crate::telemetry::Throttle;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// The token is known but its scope does not cover the route, which needs `scope`.
    #[error(
        "this endpoint needs a token with the {scope} scope (reads: a read or write token; writes: a write token; /v1/admin/: an admin token)"
    )]
    Forbidden { scope: &'static str },
    /// The route has no handler for the request's method; `allow` lists those it has.
    #[error("this endpoint does not take this method; it takes {allow}")]
    MethodNotAllowed { allow: String },
    #[error("no product size for SKU {0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the product's current version does not match the request's precondition")]
    PreconditionFailed,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    #[error("the request body has invalid fields")]
    Validation(FieldErrors),
    #[error("{dependency} is unavailable; try again shortly")]
    Unavailable { dependency: &'static str },
    /// A write committed whose cache update failed and could not be announced to every
    /// instance in time: not acknowledged, and safe to retry.
    #[error(
        "the write is committed, but the cache could not be updated and not every instance could be told in time; retrying it is safe"
    )]
    Unacknowledged,
    #[error("the request took longer than {limit_ms} ms; try again shortly")]
    TimedOut { limit_ms: u64 },
    /// A bug or an unexpected failure: its cause is logged once, when the response is made,
    /// and never sent to the client.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The problem details body (RFC 9457) of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference identifying the problem type; `about:blank` means "see the status".
    #[schema(example = "about:blank")]
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The status code's reason phrase.
    #[schema(example = "Unprocessable Entity")]
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(example = 422)]
    pub status: u16,
    /// What went wrong, for a person.
    #[schema(example = "the request body has invalid fields")]
    pub detail: String,
    /// Each invalid field (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } | Self::TimedOut { .. } | Self::Unacknowledged => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// An internal error whose cause is a broken invariant, said in `what`.
    pub fn internal(what: &'static str) -> Self {
        Self::Internal(what.into())
    }

    /// One invalid field, as a 422.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::default();
        errors.push(field, message);
        Self::Validation(errors)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            // The one place an internal error is logged, inside the request's span (its id).
            let mut chain = cause.to_string();
            let mut source = cause.source();
            while let Some(next) = source {
                chain.push_str(": ");
                chain.push_str(&next.to_string());
                source = next.source();
            }
            tracing::error!(error = %chain, "internal error");
        }
        let status = self.status();
        let errors = match &self {
            Self::Validation(errors) => errors.clone().into_vec(),
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            Self::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Forbidden { scope } => {
                // RFC 6750: the scope the route needs.
                let challenge = format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"");
                if let Ok(challenge) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, challenge);
                }
            }
            Self::MethodNotAllowed { allow } => {
                if let Ok(allow) = HeaderValue::from_str(&allow) {
                    headers.insert(header::ALLOW, allow);
                }
            }
            Self::Unavailable { .. } | Self::TimedOut { .. } | Self::Unacknowledged => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

impl From<ServiceError> for AppError {
    fn from(error: ServiceError) -> Self {
        // Every request meets this while the database is down or shedding load.
        static UNAVAILABLE: Throttle = Throttle::new();
        match error {
            ServiceError::Unavailable(cause) => {
                if let Some(suppressed) = UNAVAILABLE.allow() {
                    tracing::warn!(error = %cause, suppressed, "database unavailable");
                }
                Self::Unavailable {
                    dependency: "the database",
                }
            }
            ServiceError::Unacknowledged => Self::Unacknowledged,
            error @ (ServiceError::Database(_) | ServiceError::Invariant(_)) => {
                Self::Internal(Box::new(error))
            }
        }
    }
}
