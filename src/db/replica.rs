//! A background probe of the replica, so request routing can skip a replica that is down or
//! behind a client's consistency token without a round trip of its own. Every replica read
//! still checks freshness exactly; this only avoids reads that would be thrown away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::domain::Lsn;

#[derive(Debug, Default)]
pub struct ReplicaHealth {
    up: AtomicBool,
    replayed: AtomicU64,
}

impl ReplicaHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The replay position seen by the last successful probe.
    pub fn replayed(&self) -> Lsn {
        Lsn::new(self.replayed.load(Ordering::Relaxed))
    }

    fn record(&self, replayed: Option<Lsn>) {
        match replayed {
            Some(lsn) => {
                self.replayed.fetch_max(lsn.as_u64(), Ordering::Relaxed);
                self.up.store(true, Ordering::Relaxed);
            }
            None => self.up.store(false, Ordering::Relaxed),
        }
    }
}

/// Probes the replica every `interval` until the returned task is aborted.
pub fn spawn_probe(pool: PgPool, health: Arc<ReplicaHealth>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_up = true;
        loop {
            ticker.tick().await;
            let probe =
                tokio::time::timeout(interval.max(Duration::from_secs(1)), replay_position(&pool))
                    .await;
            let replayed = match probe {
                Ok(Ok(lsn)) => lsn,
                Ok(Err(error)) => {
                    if was_up {
                        tracing::warn!(%error, "replica probe failed; reading from the primary");
                    }
                    None
                }
                Err(_) => None,
            };
            if replayed.is_some() && !was_up {
                tracing::info!("replica is back");
            }
            was_up = replayed.is_some();
            health.record(replayed);
        }
    })
}

/// `None` when the server is not replaying WAL (a promoted or misconfigured replica).
async fn replay_position(pool: &PgPool) -> Result<Option<Lsn>, sqlx::Error> {
    let text: Option<String> = sqlx::query_scalar("SELECT pg_last_wal_replay_lsn()::text")
        .fetch_one(pool)
        .await?;
    Ok(text.and_then(|t| t.parse().ok()))
}
