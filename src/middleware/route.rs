//! Read/write routing as a tower layer: each request gets a [`DbRoute`] in its extensions
//! before it reaches a handler, so handlers never choose a pool themselves.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, Request};
use tower::{Layer, Service};

use super::{Access, Policies};
use crate::db::DbRoute;
use crate::db::replica::ReplicaHealth;
use crate::domain::Lsn;
use crate::headers::X_CONSISTENCY_TOKEN;

/// Writes go to the primary. Reads prefer the replica while its probe says it is up and has
/// replayed the request's `X-Consistency-Token`; otherwise they go to the primary.
#[derive(Clone)]
pub struct DbRouteLayer {
    replica: Option<Arc<ReplicaHealth>>,
    policies: Arc<Policies>,
}

impl DbRouteLayer {
    /// `replica` is `None` when no replica is configured: everything goes to the primary.
    /// Reads are the routes `policies` give [`Access::Read`].
    pub fn new(replica: Option<Arc<ReplicaHealth>>, policies: Arc<Policies>) -> Self {
        Self { replica, policies }
    }
}

impl<S> Layer<S> for DbRouteLayer {
    type Service = DbRouteService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DbRouteService {
            inner,
            replica: self.replica.clone(),
            policies: self.policies.clone(),
        }
    }
}

#[derive(Clone)]
pub struct DbRouteService<S> {
    inner: S,
    replica: Option<Arc<ReplicaHealth>>,
    policies: Arc<Policies>,
}

impl<S> DbRouteService<S> {
    /// Where a read goes: the replica while its probe says it is up and has replayed the
    /// request's token; the primary for a malformed token (which the handler rejects).
    fn read_route(&self, token: Result<Option<Lsn>, MalformedToken>) -> DbRoute {
        let Some(replica) = self.replica.as_ref().filter(|r| r.is_up()) else {
            return DbRoute::Primary;
        };
        match token {
            Ok(None) => DbRoute::ReplicaPreferred,
            Ok(Some(token)) if replica.replayed() >= token => DbRoute::ReplicaPreferred,
            _ => DbRoute::Primary,
        }
    }
}

/// A request's `X-Consistency-Token`, parsed once: by this layer for reads (it needs the
/// token to choose a database), and taken from the request's extensions by the handlers'
/// extractor ([`crate::routes::extract::ConsistencyToken`]).
#[derive(Debug, Clone, Copy)]
pub struct ParsedToken(pub Result<Option<Lsn>, MalformedToken>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedToken;

/// `X-Consistency-Token`: absent, a position, or malformed.
pub fn parse_token(headers: &HeaderMap) -> Result<Option<Lsn>, MalformedToken> {
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

impl<S, B> Service<Request<B>> for DbRouteService<S>
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
        let route = if self.policies.of(&request) == Access::Read {
            let token = parse_token(request.headers());
            request.extensions_mut().insert(ParsedToken(token));
            self.read_route(token)
        } else {
            DbRoute::Primary
        };
        request.extensions_mut().insert(route);
        self.inner.call(request)
    }
}
