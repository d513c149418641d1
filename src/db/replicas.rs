//! The streaming replicas reads may use (`DATABASE_REPLICA_URL` lists them, comma-separated).
//! Each has its own pools and its own probe ([`super::replica`]); a read goes to one the probe
//! last saw usable and past the read's consistency token, in turn, so that misses spread over
//! them. Which replica serves a read never decides whether its rows are served: every replica
//! read proves its own rows fresh with the replay position of its snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use super::lease::Leases;
use super::replica::ReplicaHealth;
use crate::domain::Lsn;

/// One replica: its pools and what its probe last saw.
#[derive(Debug)]
pub struct Replica {
    /// `host:port`, as logs, `/readyz` and `/metrics` name it.
    name: String,
    pool: PgPool,
    /// The read path's connections.
    reads: Arc<Leases>,
    /// The probe's and the warm-up's connections.
    background: Arc<Leases>,
    health: Arc<ReplicaHealth>,
}

impl Replica {
    pub(super) fn new(pool: PgPool, reads: Leases, background: Leases) -> Self {
        Self {
            name: name_of(pool.connect_options().as_ref()),
            pool,
            reads: Arc::new(reads),
            background: Arc::new(background),
            health: Arc::new(ReplicaHealth::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn reads(&self) -> &Leases {
        &self.reads
    }

    /// The read connections, shared (for a task that reads on them).
    pub fn read_leases(&self) -> Arc<Leases> {
        self.reads.clone()
    }

    /// Background queries on this replica, shared (for a task of its own).
    pub fn background(&self) -> Arc<Leases> {
        self.background.clone()
    }

    pub fn health(&self) -> &ReplicaHealth {
        &self.health
    }

    /// The health its probe publishes to.
    pub fn shared_health(&self) -> Arc<ReplicaHealth> {
        self.health.clone()
    }

    /// Usable by the last probe, and past `token` if there is one.
    fn serves(&self, token: Option<Lsn>) -> bool {
        self.health.is_up() && token.is_none_or(|token| self.health.replayed() >= token)
    }
}

/// `host:port` of the server `options` connect to (the socket path for a local socket).
fn name_of(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// Every configured replica (none: reads go to the primary), cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    all: Arc<[Replica]>,
    /// Where the next read's turn starts.
    turn: Arc<AtomicUsize>,
}

impl Replicas {
    pub(super) fn new(all: Vec<Replica>) -> Self {
        Self {
            all: all.into(),
            turn: Arc::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Replica> {
        self.all.iter()
    }

    /// The furthest replay position among the replicas the probes saw usable (`None`: none
    /// is): a read that must see a token past it goes to the primary.
    pub fn furthest(&self) -> Option<Lsn> {
        self.all
            .iter()
            .filter(|replica| replica.health.is_up())
            .map(|replica| replica.health.replayed())
            .max()
    }

    /// The replica for one read that must see `token`, with its place in the list: the next
    /// in turn among those the probes saw usable and past the token.
    pub fn pick(&self, token: Option<Lsn>) -> Option<(usize, &Replica)> {
        let count = self.all.len();
        if count == 0 {
            return None;
        }
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|step| (start + step) % count)
            .map(|index| (index, &self.all[index]))
            .find(|(_, replica)| replica.serves(token))
    }

    /// Whether the first probe of every replica has completed.
    pub fn probed(&self) -> bool {
        self.all.iter().all(|replica| replica.health.probed())
    }

    pub(super) fn release_all(&self) {
        for replica in self.iter() {
            replica.reads.release_all();
            replica.background.release_all();
        }
    }

    pub(super) async fn close(&self) {
        for replica in self.iter() {
            replica.pool.close().await;
        }
    }
}
