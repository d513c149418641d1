//! A TCP proxy the tests own, in front of Redis or PostgreSQL, to make the network faults a
//! server process cannot: traffic lost while the server keeps its data, connections dropped,
//! an address moved to another server, answers that arrive late.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct TcpProxy {
    pub port: u16,
    faults: Arc<Faults>,
    /// Bumped to drop every open connection.
    generation: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Faults {
    target: AtomicU16,
    blackholed: AtomicBool,
    /// Connections are numbered as they open; those below this lose every byte for good.
    next_connection: AtomicU64,
    dead_below: AtomicU64,
    /// How late the server's bytes reach the client, in milliseconds.
    delay_ms: AtomicU64,
    /// What the server sent while a delay was set (the newest 1 MiB).
    delayed: Mutex<Vec<u8>>,
}

const DELAYED_KEPT: usize = 1 << 20;

impl TcpProxy {
    pub async fn to(target_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        faults.target.store(target_port, Ordering::SeqCst);
        let (generation, _) = watch::channel(0);
        let accept = {
            let faults = faults.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let port = faults.target.load(Ordering::SeqCst);
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", port)).await else {
                        continue;
                    };
                    let id = faults.next_connection.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(relay(
                        inbound,
                        outbound,
                        id,
                        faults.clone(),
                        generation.subscribe(),
                    ));
                }
            })
        };
        Self {
            port,
            faults,
            generation,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A PostgreSQL URL to the `product_sizes` database through the proxy.
    pub fn postgres_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/product_sizes", self.port)
    }

    /// From now on, bytes in either direction are read and dropped.
    pub fn blackhole(&self) {
        self.faults.blackholed.store(true, Ordering::SeqCst);
    }

    /// Forwards again, for new connections only: every connection open now keeps losing its
    /// bytes and is never closed, as a host that died or a network path that went away leaves
    /// them (the peer learns only when TCP gives up, minutes later).
    pub fn abandon_open(&self) {
        let next = self.faults.next_connection.load(Ordering::SeqCst);
        self.faults.dead_below.store(next, Ordering::SeqCst);
        self.faults.blackholed.store(false, Ordering::SeqCst);
    }

    /// Drops every connection open through the proxy, then forwards again.
    pub fn restore(&self) {
        self.generation.send_modify(|g| *g += 1);
        self.faults.blackholed.store(false, Ordering::SeqCst);
    }

    /// Sends new connections to another server and drops the open ones, as a virtual IP or
    /// DNS name moved to a promoted standby does.
    pub fn retarget(&self, port: u16) {
        self.faults.target.store(port, Ordering::SeqCst);
        self.restore();
    }

    /// From now on, what the server sends reaches the client `delay` late (in order).
    pub fn delay_answers(&self, delay: Duration) {
        self.faults
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Whether the server has sent `pattern` since answers were delayed: a query has run on
    /// the server, its answer not yet delivered.
    pub fn has_delayed(&self, pattern: &[u8]) -> bool {
        let delayed = self.faults.delayed.lock().unwrap();
        delayed.windows(pattern.len()).any(|w| w == pattern)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Copies bytes both ways until either side closes or the proxy drops its connections.
async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    id: u64,
    faults: Arc<Faults>,
    mut dropped: watch::Receiver<u64>,
) {
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    // Server bytes go through a queue, each chunk released at its due time.
    let (answers, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let deliver = tokio::spawn(async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if in_write.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    let dropping = |n: usize| {
        n > 0
            && (faults.blackholed.load(Ordering::SeqCst)
                || id < faults.dead_below.load(Ordering::SeqCst))
    };
    loop {
        tokio::select! {
            read = in_read.read(&mut up) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) if dropping(n) => {}
                Ok(n) => if out_write.write_all(&up[..n]).await.is_err() { break },
            },
            read = out_read.read(&mut down) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) if dropping(n) => {}
                Ok(n) => {
                    let delay = Duration::from_millis(faults.delay_ms.load(Ordering::SeqCst));
                    if !delay.is_zero() {
                        let mut delayed = faults.delayed.lock().unwrap();
                        delayed.extend_from_slice(&down[..n]);
                        let excess = delayed.len().saturating_sub(DELAYED_KEPT);
                        delayed.drain(..excess);
                    }
                    if answers.send((Instant::now() + delay, down[..n].to_vec())).is_err() {
                        break;
                    }
                }
            },
            _ = dropped.changed() => break,
        }
    }
    deliver.abort();
}
