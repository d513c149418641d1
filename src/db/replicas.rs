//! The streaming replicas reads may use (`DATABASE_REPLICA_URL` lists them, comma-separated).
//! Each has its own pools and its own probe ([`super::replica`]); a read goes to one the probe
//! last saw usable and past the read's consistency token, in turn, so that misses spread over
//! them. Which replica serves a read never decides whether its rows are served: every replica
//! read proves its own rows fresh with the replay position of its snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use super::lease::Leases;
use crate::domain::Lsn;

/// What a replica's probe ([`super::replica::ReplicaProbe`]) last saw, which reads consult.
#[derive(Debug, Default)]
pub struct ReplicaHealth {
    /// Answered the last probe (whether or not it may be read).
    pub(super) reachable: AtomicBool,
    /// Probes completed since start.
    pub(super) probes: AtomicU64,
    pub(super) usable: AtomicBool,
    pub(super) replayed: AtomicU64,
    pub(super) lag_bytes: AtomicU64,
    pub(super) lag_millis: AtomicU64,
}

impl ReplicaHealth {
    /// Whether the replica answered the last probe (`/readyz`).
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Whether a probe has completed since start.
    pub fn probed(&self) -> bool {
        self.probes.load(Ordering::Relaxed) > 0
    }

    /// Reachable, replaying, and no further behind the primary than the configured bound.
    pub fn is_up(&self) -> bool {
        self.usable.load(Ordering::Relaxed)
    }

    /// The replay position seen by the last successful probe.
    pub fn replayed(&self) -> Lsn {
        Lsn::new(self.replayed.load(Ordering::Relaxed))
    }

    /// How far the replica's replay is behind the primary's WAL, in bytes.
    pub fn lag_bytes(&self) -> u64 {
        self.lag_bytes.load(Ordering::Relaxed)
    }

    /// How long ago the primary was where the replica's replay is now.
    pub fn lag(&self) -> Duration {
        Duration::from_millis(self.lag_millis.load(Ordering::Relaxed))
    }
}

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
}

/// What a replica's probe last saw, as far as choosing it goes.
#[derive(Debug, Clone, Copy)]
struct Seen {
    up: bool,
    replayed: Lsn,
}

/// Which of the replicas `seen` a read that must see `token` goes to, starting the turn at
/// `start`: the first usable one past the token that is also past `proves`, else the first
/// usable one past the token.
fn choose(seen: &[Seen], start: usize, token: Option<Lsn>, proves: Option<Lsn>) -> Option<usize> {
    let past = |at: Option<Lsn>, replica: &Seen| at.is_none_or(|at| replica.replayed >= at);
    let in_turn = || {
        (0..seen.len())
            .map(move |step| (start + step) % seen.len())
            .filter(|&index| seen[index].up && past(token, &seen[index]))
    };
    let proving = |&index: &usize| proves.is_some() && past(proves, &seen[index]);
    in_turn().find(proving).or_else(|| in_turn().next())
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
    /// in turn among those the probes saw usable and past the token, preferring those already
    /// seen past `proves` (a position that proves the read's rows fresh, if one is known): a
    /// replica behind it would most likely read rows only to have them thrown away.
    pub fn pick(&self, token: Option<Lsn>, proves: Option<Lsn>) -> Option<(usize, &Replica)> {
        if self.all.is_empty() {
            return None;
        }
        let seen: Vec<Seen> = (self.all.iter())
            .map(|replica| Seen {
                up: replica.health.is_up(),
                replayed: replica.health.replayed(),
            })
            .collect();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        choose(&seen, start, token, proves).map(|index| (index, &self.all[index]))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(up: bool, replayed: u64) -> Seen {
        Seen {
            up,
            replayed: Lsn::new(replayed),
        }
    }

    #[test]
    fn reads_take_turns_over_the_usable_replicas() {
        let replicas = [seen(true, 10), seen(false, 10), seen(true, 10)];
        let picks: Vec<Option<usize>> = (0..4)
            .map(|start| choose(&replicas, start, None, None))
            .collect();
        assert_eq!(picks, [Some(0), Some(2), Some(2), Some(0)]);
        assert_eq!(choose(&[seen(false, 10)], 0, None, None), None);
    }

    #[test]
    fn a_replica_behind_the_token_is_never_chosen() {
        let replicas = [seen(true, 10), seen(true, 20)];
        let token = Some(Lsn::new(15));
        assert_eq!(choose(&replicas, 0, token, None), Some(1));
        assert_eq!(choose(&replicas, 1, token, None), Some(1));
        assert_eq!(choose(&replicas, 0, Some(Lsn::new(21)), None), None);
    }

    #[test]
    fn a_replica_known_to_prove_the_rows_is_preferred_else_any_usable_one() {
        let replicas = [seen(true, 10), seen(true, 20)];
        assert_eq!(choose(&replicas, 0, None, Some(Lsn::new(15))), Some(1));
        assert_eq!(choose(&replicas, 0, None, Some(Lsn::new(30))), Some(0));
        assert_eq!(choose(&replicas, 1, None, Some(Lsn::new(30))), Some(1));
    }
}
