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

mod connection;
mod prefixed;

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use connection::serve_connection;

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
    while let Some(slot) = free_slot(&slots, &mut at_cap, limits, shutdown.as_mut()).await {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connections.spawn(stream, Some(slot)),
                Err(error) => pause_after(error).await,
            },
        }
    }
    take_backlog(&listener, &connections);
    drop(listener);
    connections.stop.send_replace(());
    Draining {
        open: connections.open,
    }
}

/// A slot for the next connection, waiting (and saying so once) while the cap is reached;
/// `None` once `shutdown` resolves first.
async fn free_slot(
    slots: &Arc<Semaphore>,
    at_cap: &mut bool,
    limits: Limits,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        *at_cap = false;
        return Some(slot);
    }
    if !*at_cap {
        *at_cap = true;
        tracing::warn!(
            max_connections = limits.max_connections,
            "connection cap reached; new connections wait in the backlog"
        );
    }
    tokio::select! {
        biased;
        () = shutdown => None,
        slot = slots.clone().acquire_owned() => slot.ok(),
    }
}

/// Serves the connections whose handshake completed before the listener closes. The reactor
/// may not have reported the last handshakes yet, so this asks the kernel directly. These are
/// served whatever the cap: they are owed an answer, and no more will come.
fn take_backlog(listener: &TcpListener, connections: &Connections) {
    let backlog = socket2::SockRef::from(listener);
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

fn adopt(socket: socket2::Socket) -> io::Result<TcpStream> {
    // An accepted socket does not inherit the listener's non-blocking flag.
    socket.set_nonblocking(true)?;
    TcpStream::from_std(socket.into())
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
