//! A background probe of each replica, so request routing can skip a replica that is down,
//! lagging past the configured bound, or behind a client's consistency token without a round
//! trip of its own. Every replica read still checks freshness exactly; this only avoids reads
//! that would be thrown away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::DbError;
use super::lease::Leases;
use super::replicas::{Replica, ReplicaHealth};
use crate::domain::Lsn;
use crate::infra::background::{Worker, every};

/// The primary's WAL positions over the last while, to turn a replay position into a lag in
/// time: the replica is as far behind as the oldest sample it has not replayed yet.
#[derive(Debug, Default)]
struct PrimaryHistory {
    samples: VecDeque<(Instant, Lsn)>,
}

impl PrimaryHistory {
    fn record(&mut self, at: Instant, lsn: Lsn, keep: Duration) {
        self.samples.push_back((at, lsn));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > keep)
        {
            self.samples.pop_front();
        }
    }

    fn lag(&self, replayed: Lsn, now: Instant) -> (Duration, u64) {
        let bytes = self.samples.back().map_or(0, |(_, newest)| {
            newest.as_u64().saturating_sub(replayed.as_u64())
        });
        let time = self
            .samples
            .iter()
            .find(|(_, lsn)| *lsn > replayed)
            .map_or(Duration::ZERO, |(t, _)| now.duration_since(*t));
        (time, bytes)
    }
}

/// What one probe saw of the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replay {
    replayed: Lsn,
    /// The timeline of the WAL it receives (or, not receiving, of its last restartpoint).
    timeline: Option<u32>,
}

/// Why a replica that answers must not be read, if it must not: it follows another history
/// than the primary (another timeline: a standby of the old primary after a failover, which
/// may hold writes the new primary lost), or it has replayed more than the primary has written
/// (a primary restored or rebuilt behind it). `primary` is read after the replica's replay.
fn diverged(replay: Replay, primary: Option<(Lsn, u32)>) -> Option<&'static str> {
    let (position, timeline) = primary?;
    if replay.timeline.is_some_and(|t| t != timeline) {
        return Some("the replica is on another timeline than the primary");
    }
    (replay.replayed > position).then_some("the replica has replayed past the primary's WAL")
}

/// Probes the replica (and the primary's position) every `interval`, and publishes what it
/// saw to the [`ReplicaHealth`] that reads consult. A replica that does not answer within
/// `replica_deadline` (a hung host, a network that drops packets) is marked down, and its
/// connection closed. It remembers the primary's recent positions, to turn a replay position
/// into a lag in time.
pub struct ReplicaProbe {
    primary: Arc<Leases>,
    /// The replica's name, for the logs.
    name: String,
    replica: Arc<Leases>,
    health: Arc<ReplicaHealth>,
    timing: Timing,
    history: PrimaryHistory,
    /// The last probe's verdict: a change is logged once, not on every probe.
    was_usable: bool,
}

impl ReplicaProbe {
    /// Probes `replica`, and the primary's position on `primary`.
    pub fn new(
        primary: Arc<Leases>,
        replica: &Replica,
        interval: Duration,
        max_lag: Duration,
        replica_deadline: Duration,
    ) -> Self {
        Self {
            primary,
            name: replica.name().to_owned(),
            replica: replica.background(),
            health: replica.shared_health(),
            timing: Timing {
                interval,
                max_lag,
                replica_deadline,
            },
            history: PrimaryHistory::default(),
            was_usable: true,
        }
    }
}

impl Worker for ReplicaProbe {
    /// Probes. Dropped where it awaits, a probe publishes nothing.
    async fn work(mut self) {
        let mut ticker = every(self.timing.interval);
        loop {
            ticker.tick().await;
            self.once().await;
        }
    }
}

impl ReplicaProbe {
    /// Probes the replica, then the primary, and publishes what they say.
    async fn once(&mut self) {
        // The replica first: the primary, read after, has written at least as much.
        let (replay, reachable) = self.replay().await;
        let primary = self.read_primary(Instant::now()).await;
        let usable = match replay {
            Some(replay) => self.judge(replay, primary),
            None => false,
        };
        if usable && !self.was_usable {
            tracing::info!(replica = self.name, "replica is usable again");
        }
        self.was_usable = usable;
        let health = &self.health;
        health.usable.store(usable, Ordering::Relaxed);
        health.reachable.store(reachable, Ordering::Relaxed);
        health.probes.fetch_add(1, Ordering::Relaxed);
    }

    /// The replica's replay (`None` if it is not replaying), and whether it answered.
    async fn replay(&self) -> (Option<Replay>, bool) {
        let deadline = self.timing.replica_deadline;
        let replay = super::lease::bounded!(&self.replica, deadline, |conn| replay_of(conn));
        match replay.await {
            Ok(replay) => (replay, true),
            Err(error) => {
                if self.was_usable {
                    tracing::warn!(replica = self.name, %error, "replica probe failed; left out of reads");
                }
                (None, false)
            }
        }
    }

    /// The primary's position and timeline, recorded in the history as of `now`; `None` if
    /// the primary did not answer.
    async fn read_primary(&mut self, now: Instant) -> Option<(Lsn, u32)> {
        let timeout = self.timing.primary_timeout();
        let position = super::lease::bounded!(&self.primary, timeout, |conn| position_of(conn));
        let (lsn, timeline) = position.await.ok()?;
        self.history.record(now, lsn, self.timing.history_span());
        Some((lsn, timeline))
    }

    /// Publishes how far behind `replay` is, and whether it may be read: on the primary's
    /// history and within the lag bound.
    fn judge(&self, replay: Replay, primary: Option<(Lsn, u32)>) -> bool {
        let (lag, bytes) = self.history.lag(replay.replayed, Instant::now());
        let health = &self.health;
        health
            .replayed
            .fetch_max(replay.replayed.as_u64(), Ordering::Relaxed);
        health.lag_bytes.store(bytes, Ordering::Relaxed);
        health
            .lag_millis
            .store(lag.as_millis() as u64, Ordering::Relaxed);
        if let Some(reason) = diverged(replay, primary) {
            if self.was_usable {
                tracing::warn!(
                    replica = self.name,
                    reason,
                    "replica not used; left out of reads"
                );
            }
            return false;
        }
        if lag > self.timing.max_lag && self.was_usable {
            tracing::warn!(
                replica = self.name,
                lag_ms = lag.as_millis() as u64,
                "replica lags past the bound; left out of reads"
            );
        }
        lag <= self.timing.max_lag
    }
}

/// How often the probe asks, how long it waits, and the lag reads tolerate.
#[derive(Debug, Clone, Copy)]
struct Timing {
    interval: Duration,
    max_lag: Duration,
    replica_deadline: Duration,
}

impl Timing {
    /// How long the primary may take to say where it is: a probe's interval, at least a second.
    fn primary_timeout(&self) -> Duration {
        self.interval.max(Duration::from_secs(1))
    }

    /// How long the primary's positions are kept: twice the lag bound and then some, so a lag
    /// past the bound is still measured.
    fn history_span(&self) -> Duration {
        self.max_lag * 2 + Duration::from_secs(5)
    }
}

async fn position_of(conn: &mut sqlx::PgConnection) -> Result<(Lsn, u32), DbError> {
    let (lsn, history) = crate::db::sizes::primary_position(conn).await?;
    Ok((lsn, history.timeline))
}

/// `None` when the server is not replaying WAL (a promoted or misconfigured replica).
async fn replay_of(conn: &mut sqlx::PgConnection) -> Result<Option<Replay>, sqlx::Error> {
    // pg_stat_wal_receiver shows its timeline only to roles with pg_read_all_stats; without
    // it (or while not receiving) the last restartpoint's timeline stands in.
    let (replayed, timeline): (Option<String>, Option<i32>) = sqlx::query_as(
        "SELECT pg_last_wal_replay_lsn()::text, \
                COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), \
                         (SELECT timeline_id FROM pg_control_checkpoint()))",
    )
    .fetch_one(conn)
    .await?;
    Ok(replayed
        .and_then(|text| text.parse().ok())
        .map(|replayed| Replay {
            replayed,
            timeline: timeline.and_then(|t| u32::try_from(t).ok()),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(replayed: u64, timeline: u32) -> Replay {
        Replay {
            replayed: Lsn::new(replayed),
            timeline: Some(timeline),
        }
    }

    #[test]
    fn a_replica_on_the_primarys_history_and_behind_it_may_be_read() {
        assert_eq!(diverged(replay(100, 2), Some((Lsn::new(100), 2))), None);
        assert_eq!(diverged(replay(50, 2), Some((Lsn::new(100), 2))), None);
        let unknown_timeline = Replay {
            timeline: None,
            ..replay(50, 1)
        };
        assert_eq!(diverged(unknown_timeline, Some((Lsn::new(100), 2))), None);
    }

    #[test]
    fn a_replica_on_another_timeline_or_ahead_of_the_primary_is_not_read() {
        assert!(diverged(replay(50, 1), Some((Lsn::new(100), 2))).is_some());
        assert!(diverged(replay(101, 2), Some((Lsn::new(100), 2))).is_some());
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_position_not_yet_replayed() {
        let start = Instant::now();
        let mut history = PrimaryHistory::default();
        for (secs, lsn) in [(0, 100), (1, 200), (2, 300)] {
            history.record(
                start + Duration::from_secs(secs),
                Lsn::new(lsn),
                Duration::from_secs(60),
            );
        }
        let now = start + Duration::from_secs(3);
        assert_eq!(history.lag(Lsn::new(300), now), (Duration::ZERO, 0));
        assert_eq!(
            history.lag(Lsn::new(250), now),
            (Duration::from_secs(1), 50)
        );
        assert_eq!(
            history.lag(Lsn::new(100), now),
            (Duration::from_secs(2), 200)
        );
    }
}
