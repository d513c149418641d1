//! Counts every request and its latency by method, matched route and status, and hands it to
//! the access log ([`super::access_log`]).
//!
//! **Why not a library.** `axum-prometheus` (and `from_fn` middleware generally) records
//! through the `metrics` crate's global recorder with labels built as strings per request and
//! a boxed future per call; this layer interns the route, keeps one `prometheus-client`
//! family, and adds no box.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use tower::Service;

use super::access_log::{AccessLog, AccessRecord};
use super::auth::Principal;
use super::layer::{Finish, Finishing, Middleware, MiddlewareLayer};
use crate::headers::X_REQUEST_ID;
use crate::metrics::Metrics;
use crate::service::ReadSource;
use opentelemetry::trace::TraceId;

/// Goes inside the router's matching (it reads the matched route).
pub type RequestMetricsLayer = MiddlewareLayer<Recorders>;

/// Where a request is recorded.
#[derive(Clone)]
pub struct Recorders {
    metrics: Arc<Metrics>,
    access: Option<Arc<AccessLog>>,
}

impl RequestMetricsLayer {
    /// `access`: the access log, if one is written.
    pub fn new(metrics: Arc<Metrics>, access: Option<Arc<AccessLog>>) -> Self {
        MiddlewareLayer(Recorders { metrics, access })
    }
}

impl<S, E> Service<Request> for Middleware<S, Recorders>
where
    S: Service<Request, Response = Response, Error = E>,
{
    type Response = Response;
    type Error = E;
    type Future = Finishing<S::Future, Observation>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = method_label(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |path| interned(path.as_str()));
        let access = self.settings.access.clone().map(|log| {
            let request_id = request.headers().get(&X_REQUEST_ID).cloned();
            (log, request_id, crate::telemetry::current_trace_id())
        });
        let observation = Observation {
            metrics: self.settings.metrics.clone(),
            access,
            method,
            route,
            started: Instant::now(),
        };
        Finishing::new(self.inner.call(request), observation)
    }
}

/// One request, from its start: recorded when its response is ready.
pub struct Observation {
    metrics: Arc<Metrics>,
    access: Option<(Arc<AccessLog>, Option<HeaderValue>, Option<TraceId>)>,
    method: &'static str,
    route: &'static str,
    started: Instant,
}

impl<E> Finish<Result<Response, E>> for Observation {
    type Output = Result<Response, E>;

    fn finish(&mut self, result: Result<Response, E>) -> Self::Output {
        let Ok(response) = &result else {
            return result;
        };
        let latency = self.started.elapsed();
        let status = response.status().as_u16();
        self.metrics
            .observe_request(self.method, self.route, status, latency.as_secs_f64());
        if let Some((log, request_id, trace_id)) = self.access.take() {
            // Put there by the handler (`routes::parts::AnsweredFrom`), beside the header.
            let read_source = response.extensions().get::<ReadSource>().copied();
            if log.wants(read_source) {
                log.record(AccessRecord {
                    method: self.method,
                    route: self.route,
                    status,
                    latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
                    read_source,
                    principal: response.extensions().get::<Principal>().map(|p| p.0),
                    request_id,
                    trace_id,
                    at: std::time::SystemTime::now(),
                });
            }
        }
        result
    }
}

/// Standard methods by name; anything else as one value, so that a client inventing methods
/// cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The route template as a `&'static str`. Only templates registered in the router reach
/// here (never raw paths), so the set, and the memory leaked for it, is small and fixed.
fn interned(route: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(RwLock::default);
    if let Some(known) = routes.read().ok().and_then(|set| set.get(route).copied()) {
        return known;
    }
    let Ok(mut set) = routes.write() else {
        return "unmatched";
    };
    if let Some(known) = set.get(route) {
        return known;
    }
    let leaked: &'static str = Box::leak(route.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_interned_once() {
        let first = interned("/v1/products/{sku}/size");
        let second = interned(&String::from("/v1/products/{sku}/size"));
        assert!(std::ptr::eq(first, second));
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
