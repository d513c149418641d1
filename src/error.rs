//! One error type for the HTTP layer, rendered as `application/problem+json` (RFC 9457).
//!
//! Database and Redis failures never show their text to clients: the detail goes to the log
//! inside the request span, the client gets an opaque 503 (or 500) body.
//!
//! Each kind of error has its own [`ProblemType`], whose URI is the body's `type`; and every
//! problem carries its request's id (`request_id`), which [`with_request_id`] writes in.

use axum::BoxError;
use axum::body::{Bytes, HttpBody};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{Either, Full};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::domain::{FieldError, FieldErrors};
use crate::headers::X_REQUEST_ID;
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
    /// No route matches the request's path.
    #[error("no such route")]
    NoRoute,
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
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    #[schema(schema_with = problem_type_schema)]
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
    /// The request's `X-Request-Id` (the one it sent, or the one the service made for it), as
    /// the response's header says too: the service's log lines of the request carry it, so
    /// quote it when reporting a problem.
    #[schema(value_type = String, required = true, example = "5f0c2b9e-7a41-4d2c-9e5b-1b2f0d4c8a77")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Each invalid field (422 only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// A kind of problem: the `type` URI its bodies carry, stable across releases, and what it
/// tells a client. The URIs are `tag:` URIs (RFC 4151): identifiers, not addresses, which
/// RFC 9457 (3.1.1) allows; what each means is documented in the OpenAPI document's `Problem`
/// schema, made from [`ProblemType::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemType {
    /// The body's `type`.
    pub uri: &'static str,
    /// The status it is answered with.
    pub status: StatusCode,
    /// When it happens and what a client does about it.
    pub about: &'static str,
}

/// Declares each kind of problem as a constant of [`ProblemType`] (its URI made from the
/// name after `problem/`) and lists them all in [`ProblemType::ALL`], in the order given.
macro_rules! problem_types {
    ($($name:ident = $slug:literal, $status:ident, $about:literal;)*) => {
        impl ProblemType {
            $(
                pub const $name: Self = Self {
                    uri: concat!("tag:product-size-service,2026:problem/", $slug),
                    status: StatusCode::$status,
                    about: $about,
                };
            )*

            /// Every kind of problem, by status.
            pub const ALL: &[Self] = &[$(Self::$name),*];
        }
    };
}

problem_types! {
    BAD_REQUEST = "bad-request", BAD_REQUEST,
        "The request cannot be read: malformed JSON, an invalid SKU in the path, or a \
        malformed header (`X-Consistency-Token`, `If-Match`, `If-None-Match`) or query \
        parameter. Sent again unchanged, it fails again.";
    UNAUTHORIZED = "unauthorized", UNAUTHORIZED,
        "No bearer token, or one the service does not know.";
    FORBIDDEN = "forbidden", FORBIDDEN,
        "The token is valid but lacks the scope the route needs, which \
        `WWW-Authenticate` names (`read`, `write` or `admin`).";
    NOT_FOUND = "not-found", NOT_FOUND,
        "No size is stored for the SKU (never written, or deleted), or no route matches \
        the path.";
    METHOD_NOT_ALLOWED = "method-not-allowed", METHOD_NOT_ALLOWED,
        "The route does not take this method; `Allow` lists those it does.";
    CONFLICT = "conflict", CONFLICT,
        "The request contradicts what is stored: a PUT's `source_version` behind the \
        stored one (nothing changed: the WMS already sent something newer), or a \
        warm-up already running.";
    PRECONDITION_FAILED = "precondition-failed", PRECONDITION_FAILED,
        "`If-Match` or `If-None-Match` does not hold for the stored version: nothing \
        changed. Read the current version and decide again.";
    PAYLOAD_TOO_LARGE = "payload-too-large", PAYLOAD_TOO_LARGE,
        "The body is larger than the service reads (the detail says how large); split \
        the batch.";
    UNSUPPORTED_MEDIA_TYPE = "unsupported-media-type", UNSUPPORTED_MEDIA_TYPE,
        "The body is not declared JSON: send `Content-Type: application/json`.";
    VALIDATION = "validation", UNPROCESSABLE_ENTITY,
        "The JSON is well formed, but fields are invalid or unknown: `errors` names \
        each one and what is wrong with it. Nothing changed.";
    UNAVAILABLE = "unavailable", SERVICE_UNAVAILABLE,
        "A dependency the request needs is down or saturated (the primary database \
        for a write; every source of the data for a read). Nothing was written. Retry \
        after `Retry-After` seconds.";
    UNACKNOWLEDGED = "unacknowledged", SERVICE_UNAVAILABLE,
        "The write is committed, but its cache update failed and not every instance \
        could learn of it in time, so it is not acknowledged. Retry it after \
        `Retry-After` seconds: the same PUT or sync again changes nothing twice.";
    TIMEOUT = "timeout", SERVICE_UNAVAILABLE,
        "The request took longer than the server's request timeout. A write may have \
        committed, unacknowledged: retry it after `Retry-After` seconds (the same PUT \
        or sync again changes nothing twice).";
    INTERNAL = "internal", INTERNAL_SERVER_ERROR,
        "A bug: the service's log has the cause under the request's id. Report it with \
        `request_id`.";
}

/// The schema of a problem's `type`: every kind, what it means, and what a client may rely on.
fn problem_type_schema() -> impl Into<RefOr<Schema>> {
    let mut description = String::from(
        "A URI naming the kind of problem: stable across releases, so compare it rather \
         than `title` or `detail`. A release may add kinds: handle an unknown one by its \
         `status`.\n\n| `type` | status | when, and what to do |\n|---|---|---|\n",
    );
    for kind in ProblemType::ALL {
        let (uri, status, about) = (kind.uri, kind.status.as_u16(), kind.about);
        description.push_str(&format!("| `{uri}` | {status} | {about} |\n"));
    }
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .examples([ProblemType::VALIDATION.uri])
}

impl AppError {
    /// The kind of problem this error is.
    pub fn problem_type(&self) -> ProblemType {
        match self {
            Self::BadRequest(_) => ProblemType::BAD_REQUEST,
            Self::Unauthorized => ProblemType::UNAUTHORIZED,
            Self::Forbidden { .. } => ProblemType::FORBIDDEN,
            Self::MethodNotAllowed { .. } => ProblemType::METHOD_NOT_ALLOWED,
            Self::NotFound(_) | Self::NoRoute => ProblemType::NOT_FOUND,
            Self::Conflict(_) => ProblemType::CONFLICT,
            Self::PreconditionFailed => ProblemType::PRECONDITION_FAILED,
            Self::PayloadTooLarge { .. } => ProblemType::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => ProblemType::UNSUPPORTED_MEDIA_TYPE,
            Self::Validation(_) => ProblemType::VALIDATION,
            Self::Unavailable { .. } => ProblemType::UNAVAILABLE,
            Self::Unacknowledged => ProblemType::UNACKNOWLEDGED,
            Self::TimedOut { .. } => ProblemType::TIMEOUT,
            Self::Internal(_) => ProblemType::INTERNAL,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.problem_type().status
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
        let kind = self.problem_type();
        let status = kind.status;
        let errors = match &self {
            Self::Validation(errors) => errors.clone().into_vec(),
            _ => Vec::new(),
        };
        let problem = Problem {
            kind: kind.uri,
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.to_string(),
            request_id: None,
            errors,
        };
        let mut response = (status, axum::Json(&problem)).into_response();
        // For `with_request_id`, which knows the request's id.
        response.extensions_mut().insert(problem);
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

/// Writes the request's id into a problem response's body as `request_id`: the id the
/// response's `X-Request-Id` carries. A response is a problem when [`AppError`] made it, which
/// leaves its [`Problem`] in the response's extensions.
///
/// It maps every response outside the layer that copies the id onto the response, and inside
/// compression (see `app::router`), so that the problems made by the layers (401, 403, 405,
/// the timeout's 503, a panic's 500) and by the fallback (404) get it as well as the
/// handlers' own. A problem gets a new body; any other body passes through unchanged.
pub fn with_request_id<B>(response: Response<B>) -> Response<Either<B, Full<Bytes>>>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let rendered = parts
        .extensions
        .remove::<Problem>()
        .zip(parts.headers.get(X_REQUEST_ID))
        .and_then(|(mut problem, id)| {
            problem.request_id = Some(String::from_utf8_lossy(id.as_bytes()).into_owned());
            serde_json::to_vec(&problem).ok()
        });
    match rendered {
        Some(problem) => {
            // Set again from the new body on the way out.
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Either::Right(Full::new(Bytes::from(problem))))
        }
        // Any other body passes as it is, neither copied nor boxed.
        None => Response::from_parts(parts, Either::Left(body)),
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// One error of every kind.
    fn one_of_each() -> Vec<AppError> {
        vec![
            AppError::BadRequest("malformed JSON".into()),
            AppError::Unauthorized,
            AppError::Forbidden { scope: "write" },
            AppError::MethodNotAllowed {
                allow: "GET, HEAD".into(),
            },
            AppError::NotFound("A-1".into()),
            AppError::NoRoute,
            AppError::Conflict("older".into()),
            AppError::PreconditionFailed,
            AppError::PayloadTooLarge { limit: 10 },
            AppError::UnsupportedMediaType,
            AppError::invalid_field("sku", "is required"),
            AppError::Unavailable {
                dependency: "the database",
            },
            AppError::Unacknowledged,
            AppError::TimedOut { limit_ms: 10 },
            AppError::internal("a test"),
        ]
    }

    #[test]
    fn every_kind_has_its_own_documented_tag_uri_and_its_status() {
        let uris: HashSet<&str> = ProblemType::ALL.iter().map(|kind| kind.uri).collect();
        assert_eq!(uris.len(), ProblemType::ALL.len(), "one URI per kind");
        for uri in &uris {
            let slug = uri
                .strip_prefix("tag:product-size-service,2026:problem/")
                .unwrap_or_else(|| panic!("{uri} is not one of this service's tag URIs"));
            assert!(
                slug.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{uri}"
            );
        }
        let schema = serde_json::to_value(problem_type_schema().into()).unwrap();
        let documented = schema["description"].as_str().unwrap();
        let mut used = HashSet::new();
        for error in one_of_each() {
            let kind = error.problem_type();
            assert!(ProblemType::ALL.contains(&kind), "{error:?}");
            assert!(
                documented.contains(&format!("`{}`", kind.uri)),
                "{documented}"
            );
            let response = error.into_response();
            assert_eq!(response.status(), kind.status);
            assert_eq!(
                response.extensions().get::<Problem>().unwrap().kind,
                kind.uri
            );
            used.insert(kind.uri);
        }
        assert_eq!(used, uris, "every documented kind is some error's");
    }

    #[tokio::test]
    async fn a_problem_gets_the_id_its_response_carries_and_other_responses_stay_as_they_are() {
        let mut response = AppError::NoRoute.into_response();
        response
            .headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from_static("order-42"));
        let response = with_request_id(response);
        assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
        let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), usize::MAX)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["request_id"], "order-42");
        assert_eq!(body["type"], ProblemType::NOT_FOUND.uri);
        assert_eq!(body["detail"], "no such route");

        let mut plain = Response::new(axum::body::Body::from("ok"));
        plain
            .headers_mut()
            .insert(X_REQUEST_ID, HeaderValue::from_static("order-43"));
        let plain = with_request_id(plain);
        let body = axum::body::to_bytes(axum::body::Body::new(plain.into_body()), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], b"ok");
    }
}
