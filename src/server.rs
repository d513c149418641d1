//! The accept loop, written out so that shutdown loses no accepted connection and slow or
//! idle clients cannot take the service down.
//!
//! **Why not `axum::serve` or hyper-util's `auto` builder.** `axum::serve` closes its listener
//! with whatever the kernel had already queued in the backlog (those clients get a reset),
//! and both it and hyper close a connection at once on shutdown when they have not read from
//! it yet, although its request may be on the wire; neither caps connections. hyper-util's
//! `auto` builder, which tells HTTP/2's preface from HTTP/1.1, cancels a connection whose
//! preface is half read when shutdown begins, and waits for that preface without a deadline
//! (its source, 0.1.21), so an idle connection is never closed. `tests/api/shutdown.rs`
//! failed with `axum::serve`; `slow_clients::a_slowloris_*` needs the idle ones closed.
//!
//! **Shutdown.** Once `shutdown` resolves, every connection whose TCP handshake had completed
//! is still served: a connection's first request is read and answered (HTTP/1.1 with
//! keep-alive off; HTTP/2 with a GOAWAY that lets its open streams finish) before it closes.
//! An idle HTTP/1.1 keep-alive connection is closed at once, as HTTP/1.1 allows; clients
//! retry a request that raced that close.
//!
//! **Protocols.** HTTP/1.1, and HTTP/2 over cleartext with prior knowledge (as a mesh sidecar
//! speaks it), told apart by the first bytes.
//!
//! **Slow and idle clients.** At most [`Limits::max_connections`] connections are open; at
//! the cap, new ones wait in the kernel's backlog until one closes. A connection must send its
//! first bytes, and each HTTP/1.1 request its headers, within [`Limits::header_read_timeout`]
//! (which also closes idle connections: HTTP/1.1 keep-alive ones, and HTTP/2 ones without an
//! open stream, with a GOAWAY); bodies and handlers are bounded by the
//! per-request timeout of [`crate::middleware::timeout`].

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

/// What the client starts an HTTP/2 connection with (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bounds on what one client may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; more wait in the backlog.
    pub max_connections: usize,
    /// How long a connection may take to send its first bytes, and an HTTP/1.1 request its
    /// headers (an idle keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Connections still finishing their requests after the listener closed.
pub struct Draining {
    /// Each connection's task holds a receiver; when none is left, all have finished.
    open: watch::Sender<()>,
}

impl Draining {
    /// Connections that have not finished yet.
    pub fn count(&self) -> usize {
        self.open.receiver_count()
    }

    /// Resolves when every connection has answered its request and closed.
    pub async fn finished(self) {
        self.open.closed().await;
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then closes the listener once the
/// connections already waiting in its backlog are taken, and returns them still running.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Draining {
    let connections = Connections {
        router,
        limits,
        stop: watch::Sender::new(()),
        open: watch::Sender::new(()),
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut at_cap = false;
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_cap = false;
                slot
            }
            Err(_) => {
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached; new connections wait in the backlog"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.spawn(stream, Some(slot)),
                Err(error) => pause_after(error).await,
            },
        }
    }
    // The reactor may not have reported the last handshakes yet; ask the kernel directly.
    // These are served whatever the cap: they are owed an answer, and no more will come.
    let backlog = socket2::SockRef::from(&listener);
    loop {
        match backlog.accept() {
            Ok((socket, _)) => match adopt(socket) {
                Ok(stream) => connections.spawn(stream, None),
                Err(error) => tracing::warn!(%error, "cannot serve a queued connection"),
            },
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) if is_connection_error(&error) => {}
            Err(error) => {
                tracing::warn!(%error, "cannot take the connections still queued");
                break;
            }
        }
    }
    drop(listener);
    connections.stop.send_replace(());
    Draining {
        open: connections.open,
    }
}

struct Connections {
    router: Router,
    limits: Limits,
    /// Marked once the listener stops.
    stop: watch::Sender<()>,
    open: watch::Sender<()>,
}

impl Connections {
    fn spawn(&self, stream: TcpStream, slot: Option<OwnedSemaphorePermit>) {
        // Responses are written whole; waiting for more to coalesce only adds latency.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let router = self.router.clone();
        let limits = self.limits;
        let mut stop = self.stop.subscribe();
        stop.mark_unchanged();
        let open = self.open.subscribe();
        tokio::spawn(async move {
            if let Err(error) = serve_connection(stream, router, limits, stop).await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
            drop(open);
        });
    }
}

#[derive(Debug, Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_connection(
    mut stream: TcpStream,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<()>,
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
    let io = TokioIo::new(Prefixed {
        prefix: preface.freeze(),
        stream,
    });
    match protocol {
        Protocol::Http1 => {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(io, hyper_util::service::TowerToHyperService::new(router));
            // Stopping: hyper finishes the request it has begun reading (the first bytes are
            // its already) and closes after its response.
            let stopping = async {
                let _ = stop.changed().await;
            };
            let never = std::future::pending();
            serve_until(pin!(connection), stopping, |c| c.graceful_shutdown(), never)
                .await
                .unwrap_or(Ok(()))
                .map_err(Into::into)
        }
        Protocol::Http2 => {
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
            // Stopping: a GOAWAY before the client's first stream would refuse the request it
            // opened this connection for, so it waits for that request (or the deadline). The
            // GOAWAY then lets every stream the client has opened finish. A connection idle
            // for the header read timeout closes the same way, as an HTTP/1.1 one does.
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
            // The GOAWAY that ends a graceful shutdown waits for the client to answer a ping:
            // a client that never does would keep the connection. Once no stream has been
            // open for the header read timeout since the shutdown began, it is closed.
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
    }
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

/// Reads until the first bytes tell HTTP/2's preface from an HTTP/1.1 request line; `None`
/// when the client closed without sending anything.
async fn read_preface(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Option<Protocol>> {
    loop {
        if stream.read_buf(buf).await? == 0 {
            // Whatever came is hyper's to answer or reject.
            return Ok((!buf.is_empty()).then_some(Protocol::Http1));
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Ok(Some(Protocol::Http1));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
    }
}

fn adopt(socket: socket2::Socket) -> io::Result<TcpStream> {
    // An accepted socket does not inherit the listener's non-blocking flag.
    socket.set_nonblocking(true)?;
    TcpStream::from_std(socket.into())
}

/// A stream that first gives back the bytes read to tell its protocol.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let taken = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..taken]);
        self.prefix.advance(taken);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A peer that gave up before it was accepted is its own problem; running out of file
/// descriptors is ours, and retrying at once would spin.
async fn pause_after(error: io::Error) {
    if is_connection_error(&error) {
        return;
    }
    tracing::error!(%error, "accept failed; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
