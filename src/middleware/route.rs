//! Read routing as a tower layer: each read gets its [`ReadContext`] (the database to read
//! and the `X-Consistency-Token` to honour) in its extensions before it reaches a handler, so
//! handlers never choose a pool nor parse the token themselves.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, Request};
use tower::Service;

use super::layer::{Middleware, MiddlewareLayer};
use super::{Access, Policies};
use crate::db::DbRoute;
use crate::db::replicas::Replicas;
use crate::domain::Lsn;
use crate::headers::X_CONSISTENCY_TOKEN;

/// Reads prefer the replicas while a probe says one is up and has replayed the request's
/// `X-Consistency-Token`; otherwise they go to the primary. Writes always go to the primary:
/// they get no context.
pub type DbRouteLayer = MiddlewareLayer<DbRouting>;

/// What the routing of reads depends on.
#[derive(Clone)]
pub struct DbRouting {
    replicas: Replicas,
    policies: Arc<Policies>,
}

impl DbRouteLayer {
    /// Without `replicas`, everything goes to the primary. Reads are the routes `policies`
    /// give [`Access::Read`].
    pub fn new(replicas: Replicas, policies: Arc<Policies>) -> Self {
        MiddlewareLayer(DbRouting { replicas, policies })
    }
}

/// What a read needs from its request, made once per read by [`DbRouteLayer`] and taken by
/// the handler as an extractor (see `routes::extract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadContext {
    /// The database to read, chosen with the token below.
    pub route: DbRoute,
    /// The position of an earlier write the answer must be at least as new as.
    pub token: Option<Lsn>,
}

/// An `X-Consistency-Token` that names no position: the handler answers 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedToken;

/// What [`DbRouteLayer`] puts in a read's extensions.
pub type ReadRequest = Result<ReadContext, MalformedToken>;

impl DbRouting {
    /// The context of a read sending `token`.
    fn read_context(&self, token: Option<Lsn>) -> ReadContext {
        ReadContext {
            route: read_route(self.replicas.furthest(), token),
            token,
        }
    }
}

/// Where a read goes: the replicas while one is up (`replayed` is then the furthest replay
/// position among those that are) and has replayed the request's token; otherwise the primary.
fn read_route(replayed: Option<Lsn>, token: Option<Lsn>) -> DbRoute {
    match (replayed, token) {
        (Some(_), None) => DbRoute::ReplicaPreferred,
        (Some(replayed), Some(token)) if replayed >= token => DbRoute::ReplicaPreferred,
        _ => DbRoute::Primary,
    }
}

/// `X-Consistency-Token`: absent, a position, or malformed.
fn parse_token(headers: &HeaderMap) -> Result<Option<Lsn>, MalformedToken> {
    match headers.get(&X_CONSISTENCY_TOKEN) {
        None => Ok(None),
        Some(raw) => raw
            .to_str()
            .ok()
            .and_then(|token| Lsn::from_token(token).ok())
            .map(Some)
            .ok_or(MalformedToken),
    }
}

impl<S, B> Service<Request<B>> for Middleware<S, DbRouting>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if self.settings.policies.of(&request) == Access::Read {
            let read: ReadRequest =
                parse_token(request.headers()).map(|token| self.settings.read_context(token));
            request.extensions_mut().insert(read);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::Method;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn a_read_uses_the_replica_only_while_it_is_up_and_has_replayed_the_token() {
        let (at, before, after) = (Lsn::new(10), Lsn::new(9), Lsn::new(11));
        assert_eq!(read_route(Some(at), None), DbRoute::ReplicaPreferred);
        assert_eq!(
            read_route(Some(at), Some(before)),
            DbRoute::ReplicaPreferred
        );
        assert_eq!(read_route(Some(at), Some(at)), DbRoute::ReplicaPreferred);
        assert_eq!(read_route(Some(at), Some(after)), DbRoute::Primary);
        // No replica, or one whose probe says it is down.
        assert_eq!(read_route(None, None), DbRoute::Primary);
        assert_eq!(read_route(None, Some(before)), DbRoute::Primary);
    }

    /// What the layer put in the extensions of a request for `method` with `token`.
    async fn context(method: Method, token: Option<&str>) -> String {
        let mut policies = Policies::default();
        policies.insert(Method::GET, "/size", Access::Read);
        policies.insert(Method::PUT, "/size", Access::Write);
        let layer = DbRouteLayer::new(Replicas::default(), Arc::new(policies));
        let seen = |request: Request<Body>| async move {
            format!("{:?}", request.extensions().get::<ReadRequest>())
        };
        let router = Router::new()
            .route("/size", get(seen).put(seen))
            .route_layer(layer);
        let mut request = Request::builder().method(method).uri("/size");
        if let Some(token) = token {
            request = request.header(X_CONSISTENCY_TOKEN, token);
        }
        let response = router
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1024).await;
        String::from_utf8(body.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reads_get_their_context_once_and_writes_none() {
        let primary = |token| {
            format!(
                "{:?}",
                Some(Ok::<_, MalformedToken>(ReadContext {
                    route: DbRoute::Primary,
                    token,
                }))
            )
        };
        assert_eq!(context(Method::GET, None).await, primary(None));
        assert_eq!(
            context(Method::GET, Some("000000000000002A")).await,
            primary(Some(Lsn::new(42)))
        );
        assert_eq!(
            context(Method::GET, Some("not a token")).await,
            "Some(Err(MalformedToken))"
        );
        assert_eq!(context(Method::PUT, Some("000000000000002A")).await, "None");
    }
}
