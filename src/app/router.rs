//! The full router: the documented API, the docs, and one middleware stack.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, header};
use axum::routing::get;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate, SizeAbove};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::db::replicas::Replicas;
use crate::error::{self, AppError};
use crate::headers::X_REQUEST_ID;
use crate::middleware::Access;
use crate::middleware::auth::{AuthLayer, Authenticator};
use crate::middleware::metrics::RequestMetricsLayer;
use crate::middleware::request_id::MakeRandomRequestId;
use crate::middleware::route::DbRouteLayer;
use crate::middleware::timeout::RequestTimeoutLayer;
use crate::routes::{self, AppState, docs, extract::BODY_LIMIT};
use crate::telemetry;

/// Responses at least this large are compressed when the client accepts gzip.
const COMPRESS_ABOVE: u64 = 2048;

/// The full router: the documented API, docs, and the middleware stack.
pub fn router(
    state: AppState,
    authenticator: Authenticator,
    metrics: RequestMetricsLayer,
    timeout: RequestTimeoutLayer,
    replicas: Replicas,
) -> Router {
    let (api, mut policies) = routes::api();
    let (api, _) = api.split_for_parts();
    for documentation in ["/openapi.json", "/docs", "/docs/{*file}"] {
        policies.insert(Method::GET, documentation, Access::Public);
    }
    let policies = Arc::new(policies);
    let auth = AuthLayer::new(authenticator, policies.clone());
    let db_route = DbRouteLayer::new(replicas, policies);
    with_docs(api)
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
                        .make_span_with(request_span)
                        .on_response(record_status)
                        // The access log has every status; an error line per 503 would flood the
                        // log exactly when the service sheds load.
                        .on_failure(()),
                )
                .layer(CatchPanicLayer::custom(|_| {
                    axum::response::IntoResponse::into_response(AppError::internal(
                        "handler panicked",
                    ))
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

/// The request's span: method, matched path and request id, and the caller's trace
/// continued when tracing is on. The principal and status are recorded later.
fn request_span(request: &Request) -> tracing::Span {
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
            tracing::field::display(format_args!("{} {path}", request.method())),
        );
        telemetry::continue_trace(&span, request.headers());
    }
    span
}

/// Records the response's status on the request's span when traces are exported.
fn record_status<B>(response: &axum::http::Response<B>, _: Duration, span: &tracing::Span) {
    if telemetry::tracing_enabled() {
        span.record("http.response.status_code", response.status().as_u16());
    }
}

/// The OpenAPI document and the docs page beside the API (public: see `router`).
fn with_docs(api: Router<AppState>) -> Router<AppState> {
    let openapi = routes::openapi_json();
    api.route(
        "/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], openapi) }),
    )
    .route("/docs", get(docs::docs_page))
    .route("/docs/{*file}", get(docs::docs_asset))
}
