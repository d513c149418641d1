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

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::error::AppError;
use crate::telemetry::Throttle;

#[derive(Debug, Clone, Copy)]
pub struct RequestTimeoutLayer {
    limit: Duration,
}

impl RequestTimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> Service<Request<B>> for RequestTimeout<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TimedOut<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        TimedOut {
            inner: self.inner.call(request),
            deadline: tokio::time::sleep(self.limit),
            limit: self.limit,
        }
    }
}

pin_project! {
    /// The handler's response, or a 503 once the deadline passes.
    pub struct TimedOut<F> {
        #[pin]
        inner: F,
        #[pin]
        deadline: Sleep,
        limit: Duration,
    }
}

impl<F, E> Future for TimedOut<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.inner.poll(cx) {
            return Poll::Ready(response);
        }
        if this.deadline.poll(cx).is_ready() {
            // Under overload every request may time out: one warning a second, with a count.
            static TIMED_OUT: Throttle = Throttle::new();
            if let Some(suppressed) = TIMED_OUT.allow() {
                tracing::warn!(
                    limit_ms = this.limit.as_millis(),
                    suppressed,
                    "request timed out"
                );
            }
            let limit_ms = u64::try_from(this.limit.as_millis()).unwrap_or(u64::MAX);
            return Poll::Ready(Ok(AppError::TimedOut { limit_ms }.into_response()));
        }
        Poll::Pending
    }
}
