//! One accepted connection: its protocol told from its first bytes, then served by hyper
//! until it ends, the listener stops, or it stays idle too long.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use super::Limits;
use super::prefixed::{Prefixed, Protocol, read_preface};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves one connection to its end; `stop` changes once the listener has closed.
pub(super) async fn serve_connection(
    mut stream: TcpStream,
    router: Router,
    limits: Limits,
    stop: watch::Receiver<()>,
) -> Result<(), BoxError> {
    // Shutdown does not interrupt this wait: the client completed its handshake before the
    // listener closed, and is owed an answer if its request comes within the deadline.
    let mut preface = BytesMut::with_capacity(1024);
    let protocol = match tokio::time::timeout(
        limits.header_read_timeout,
        read_preface(&mut stream, &mut preface),
    )
    .await
    {
        Ok(Ok(Some(protocol))) => protocol,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(error)) => return Err(error.into()),
        Err(_) => return Err("no request within the header read timeout".into()),
    };
    let io = TokioIo::new(Prefixed::new(preface.freeze(), stream));
    match protocol {
        Protocol::Http1 => serve_http1(io, router, limits, stop).await,
        Protocol::Http2 => serve_http2(io, router, limits, stop).await,
    }
}

async fn serve_http1(
    io: TokioIo<Prefixed>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<()>,
) -> Result<(), BoxError> {
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(router));
    // Stopping: hyper finishes the request it has begun reading (the first bytes are its
    // already) and closes after its response.
    let stopping = async {
        let _ = stop.changed().await;
    };
    let never = std::future::pending();
    serve_until(pin!(connection), stopping, |c| c.graceful_shutdown(), never)
        .await
        .unwrap_or(Ok(()))
        .map_err(Into::into)
}

async fn serve_http2(
    io: TokioIo<Prefixed>,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<()>,
) -> Result<(), BoxError> {
    let first_request = Arc::new(Notify::new());
    // Streams being answered: the connection is idle while there are none.
    let open = Arc::new(watch::Sender::new(0usize));
    let service = {
        let (first_request, open) = (first_request.clone(), open.clone());
        hyper::service::service_fn(move |request: Request<Incoming>| {
            first_request.notify_one();
            let answering = Answering::new(open.clone());
            let answer = router.clone().oneshot(request);
            async move {
                let answer = answer.await;
                drop(answering);
                answer
            }
        })
    };
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .serve_connection(io, service);
    // Stopping: a GOAWAY before the client's first stream would refuse the request it opened
    // this connection for, so it waits for that request (or the deadline). The GOAWAY then
    // lets every stream the client has opened finish. A connection idle for the header read
    // timeout closes the same way, as an HTTP/1.1 one does.
    let stopping = async {
        tokio::select! {
            () = async {
                let _ = stop.changed().await;
                tokio::select! {
                    () = first_request.notified() => {}
                    () = tokio::time::sleep(limits.header_read_timeout) => {}
                }
            } => {}
            () = idle_for(&open, limits.header_read_timeout) => {}
        }
    };
    // The GOAWAY that ends a graceful shutdown waits for the client to answer a ping: a
    // client that never does would keep the connection. Once no stream has been open for the
    // header read timeout since the shutdown began, it is closed.
    let given_up = idle_for(&open, limits.header_read_timeout);
    serve_until(
        pin!(connection),
        stopping,
        |c| c.graceful_shutdown(),
        given_up,
    )
    .await
    .unwrap_or(Ok(()))
    .map_err(Into::into)
}

/// Counts one HTTP/2 stream being answered for as long as it lives (a stream the client
/// resets drops it too).
struct Answering(Arc<watch::Sender<usize>>);

impl Answering {
    fn new(open: Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        Self(open)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Resolves once no stream has been open for `limit`.
async fn idle_for(open: &watch::Sender<usize>, limit: Duration) {
    let mut open = open.subscribe();
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        open.mark_unchanged();
        if tokio::time::timeout(limit, open.changed()).await.is_err() {
            return;
        }
    }
}

/// Drives `connection` to its end; once `stopping` resolves first, asks it to shut down
/// gracefully and drives it to its end still, unless `given_up` (first polled then) resolves
/// first: then `None`, and the connection is dropped. The connection is polled before
/// `stopping` each time, so a request it has begun reading is never cut off by the stop.
async fn serve_until<C: Future>(
    mut connection: Pin<&mut C>,
    stopping: impl Future<Output = ()>,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    given_up: impl Future<Output = ()>,
) -> Option<C::Output> {
    tokio::select! {
        biased;
        served = connection.as_mut() => return Some(served),
        () = stopping => {}
    }
    graceful_shutdown(connection.as_mut());
    tokio::select! {
        biased;
        served = connection => Some(served),
        () = given_up => None,
    }
}
