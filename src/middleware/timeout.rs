//! The per-request timeout: a request that takes longer than [`RequestTimeoutLayer`]'s limit,
//! reading its body included, is answered `503` with `Retry-After` and a problem body, and its
//! handler is dropped.
//!
//! tower-http's `TimeoutLayer` answers with an empty body and no `Retry-After`; every other
//! refusal of this service is a problem document that says what to do.
//!
//! Dropping a handler is the same cancellation a client disconnect causes, which every
//! handler survives: a write cut off after (or during) its commit hands its cache update to
//! the repair worker at once, and its client, told nothing was acknowledged, retries (an
//! idempotent repeat).

use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum::response::{IntoResponse, Response};
use tokio::time::Timeout;
use tokio::time::error::Elapsed;
use tower::Service;

use super::layer::{Finish, Finishing, Middleware, MiddlewareLayer};
use crate::error::AppError;
use crate::telemetry::Throttle;

pub type RequestTimeoutLayer = MiddlewareLayer<TimeLimit>;

/// How long a request may take.
#[derive(Debug, Clone, Copy)]
pub struct TimeLimit(Duration);

impl RequestTimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        MiddlewareLayer(TimeLimit(limit))
    }
}

impl<S, B> Service<Request<B>> for Middleware<S, TimeLimit>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Finishing<Timeout<S::Future>, TimeLimit>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let TimeLimit(limit) = self.settings;
        Finishing::new(
            tokio::time::timeout(limit, self.inner.call(request)),
            self.settings,
        )
    }
}

/// The handler's response, or a 503 once the limit passed.
impl<E> Finish<Result<Result<Response, E>, Elapsed>> for TimeLimit {
    type Output = Result<Response, E>;

    fn finish(&mut self, output: Result<Result<Response, E>, Elapsed>) -> Self::Output {
        let Self(limit) = *self;
        output.unwrap_or_else(|_| {
            // Under overload every request may time out: one warning a second, with a count.
            static TIMED_OUT: Throttle = Throttle::new();
            if let Some(suppressed) = TIMED_OUT.allow() {
                tracing::warn!(
                    limit_ms = limit.as_millis(),
                    suppressed,
                    "request timed out"
                );
            }
            let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
            Ok(AppError::TimedOut { limit_ms }.into_response())
        })
    }
}
