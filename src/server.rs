//! The HTTP/1.1 accept loop, written out so that shutdown loses no accepted connection.
//!
//! `axum::serve` closes its listener with whatever the kernel had already queued in the
//! backlog (those clients get a reset), and both it and hyper close a connection at once on
//! shutdown when they have not read from it yet, although its request may be on the wire.
//! Here, once `shutdown` resolves, every connection whose TCP handshake had completed is
//! still served: each new connection's first request is read and answered (with keep-alive
//! off) before the connection closes. An idle keep-alive connection is closed at once, as
//! HTTP/1.1 allows; clients retry a request that raced that close.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// How long a connection may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    shutdown: impl Future<Output = ()>,
) -> Draining {
    let connections = Connections {
        router,
        stop: watch::Sender::new(()),
        open: watch::Sender::new(()),
    };
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.spawn(stream),
                Err(error) => pause_after(error).await,
            },
        }
    }
    // The reactor may not have reported the last handshakes yet; ask the kernel directly.
    let backlog = socket2::SockRef::from(&listener);
    loop {
        match backlog.accept() {
            Ok((socket, _)) => match adopt(socket) {
                Ok(stream) => connections.spawn(stream),
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
    /// Marked once the listener stops.
    stop: watch::Sender<()>,
    open: watch::Sender<()>,
}

impl Connections {
    fn spawn(&self, stream: TcpStream) {
        // Responses are written whole; waiting for more to coalesce only adds latency.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let (first_read, read_begun) = oneshot::channel();
        let stream = FirstRead {
            stream,
            first_read: Some(first_read),
        };
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(
                TokioIo::new(stream),
                TowerToHyperService::new(self.router.clone()),
            );
        let mut stop = self.stop.subscribe();
        stop.mark_unchanged();
        let open = self.open.subscribe();
        tokio::spawn(async move {
            let mut connection = pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => Some(served),
                _ = stop.changed() => None,
            };
            let served = match served {
                Some(served) => served,
                None => {
                    // Stopping. Hyper would drop a connection it has not read from yet, so wait
                    // for its first request to arrive (or the connection to end) first.
                    let served = tokio::select! {
                        served = connection.as_mut() => Some(served),
                        _ = read_begun => None,
                    };
                    match served {
                        Some(served) => served,
                        None => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(open);
        });
    }
}

fn adopt(socket: socket2::Socket) -> io::Result<TcpStream> {
    // An accepted socket does not inherit the listener's non-blocking flag.
    socket.set_nonblocking(true)?;
    TcpStream::from_std(socket.into())
}

/// A stream that reports when its first bytes have been read.
struct FirstRead {
    stream: TcpStream,
    first_read: Option<oneshot::Sender<()>>,
}

impl AsyncRead for FirstRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before
            && let Some(first_read) = self.first_read.take()
        {
            let _ = first_read.send(());
        }
        polled
    }
}

impl AsyncWrite for FirstRead {
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
