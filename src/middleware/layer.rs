//! The shape the layers here share. A middleware is its settings: [`MiddlewareLayer`] wraps
//! each service in a [`Middleware`] holding a clone of them, and each middleware implements
//! `Service` for `Middleware<S, ItsSettings>` alone. A middleware that acts on the response
//! returns [`Finishing`], the inner future with a [`Finish`] step, so that no request pays for
//! a boxed future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower::Layer;

/// A middleware's settings as a tower layer.
#[derive(Debug, Clone, Copy)]
pub struct MiddlewareLayer<M>(pub(super) M);

impl<S, M: Clone> Layer<S> for MiddlewareLayer<M> {
    type Service = Middleware<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Middleware {
            inner,
            settings: self.0.clone(),
        }
    }
}

/// A service wrapped by the middleware whose settings are `M`.
#[derive(Debug, Clone)]
pub struct Middleware<S, M> {
    pub(super) inner: S,
    pub(super) settings: M,
}

/// What a middleware does with the inner service's output once it is ready.
pub trait Finish<T> {
    type Output;

    fn finish(&mut self, output: T) -> Self::Output;
}

pin_project_lite::pin_project! {
    /// The inner service's future, its output handed to the middleware's [`Finish`] step.
    pub struct Finishing<F, H> {
        #[pin]
        inner: F,
        step: H,
    }
}

impl<F, H> Finishing<F, H> {
    pub fn new(inner: F, step: H) -> Self {
        Self { inner, step }
    }
}

impl<F: Future, H: Finish<F::Output>> Future for Finishing<F, H> {
    type Output = H::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let output = ready!(this.inner.poll(cx));
        Poll::Ready(this.step.finish(output))
    }
}
