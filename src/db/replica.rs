//! A background probe of the replica, so request routing can skip a replica that is down,
//! lagging past the configured bound, or behind a client's consistency token without a round
//! trip of its own. Every replica read still checks freshness exactly; this only avoids reads
//! that would be thrown away.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::domain::Lsn;

#[derive(Debug, Default)]
pub struct ReplicaHealth {
    usable: AtomicBool,
    replayed: AtomicU64,
    lag_bytes: AtomicU64,
    lag_millis: AtomicU64,
}

impl ReplicaHealth {
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

/// Probes the replica (and the primary's position) every `interval` until aborted.
pub fn spawn_probe(
    primary: PgPool,
    replica: PgPool,
    health: Arc<ReplicaHealth>,
    interval: Duration,
    max_lag: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut history = PrimaryHistory::default();
        let mut was_usable = true;
        let timeout = interval.max(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let now = Instant::now();
            if let Ok(Ok(lsn)) = tokio::time::timeout(timeout, primary_position(&primary)).await {
                history.record(now, lsn, max_lag * 2 + Duration::from_secs(5));
            }
            let replayed = match tokio::time::timeout(timeout, replay_position(&replica)).await {
                Ok(Ok(replayed)) => replayed,
                Ok(Err(error)) => {
                    if was_usable {
                        tracing::warn!(%error, "replica probe failed; reading from the primary");
                    }
                    None
                }
                Err(_) => None,
            };
            let usable = match replayed {
                Some(replayed) => {
                    let (lag, bytes) = history.lag(replayed, Instant::now());
                    health
                        .replayed
                        .fetch_max(replayed.as_u64(), Ordering::Relaxed);
                    health.lag_bytes.store(bytes, Ordering::Relaxed);
                    health
                        .lag_millis
                        .store(lag.as_millis() as u64, Ordering::Relaxed);
                    if lag > max_lag && was_usable {
                        tracing::warn!(
                            lag_ms = lag.as_millis() as u64,
                            "replica lags past the bound; reading from the primary"
                        );
                    }
                    lag <= max_lag
                }
                None => false,
            };
            if usable && !was_usable {
                tracing::info!("replica is usable again");
            }
            was_usable = usable;
            health.usable.store(usable, Ordering::Relaxed);
        }
    })
}

async fn primary_position(pool: &PgPool) -> Result<Lsn, sqlx::Error> {
    crate::db::sizes::current_wal_lsn(&mut *pool.acquire().await?).await
}

/// `None` when the server is not replaying WAL (a promoted or misconfigured replica).
pub async fn replay_position(pool: &PgPool) -> Result<Option<Lsn>, sqlx::Error> {
    let text: Option<String> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
        .fetch_one(pool)
        .await?;
    Ok(text.and_then(|t| t.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
