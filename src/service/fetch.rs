//! Steps 2 and 3 of the read path: the misses from the replica where its snapshot provably
//! holds every write they must see, the rest from the primary.
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 2 (a replica row only when provably fresh).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use super::ServiceError;
use super::answer::Proof;
use super::answer::ReadSource;
use super::read::Load;
use super::read::Reader;
use crate::db::DbRoute;
use crate::db::lease::Leases;
use crate::db::sizes::{Fetched, fetch_leased};
use crate::domain::{Lsn, StoredSize};
use crate::metrics::Database;
use crate::telemetry::Throttle;

impl Reader {
    /// Step 2: a replica, for the misses it may serve, keeping the rows it proves fresh: the
    /// next in turn among those the probes saw usable and past the token. Everything else
    /// stays pending for the primary.
    pub(super) async fn read_replica(&self, load: &Load<'_>) -> DatabaseRead {
        let mut read = DatabaseRead::all_pending(load.misses.len());
        let replica = Some(self.shared.db.replicas())
            .filter(|_| load.route == DbRoute::ReplicaPreferred)
            .filter(|_| load.misses.iter().any(|m| !m.primary_only))
            .and_then(|replicas| replicas.pick(load.token, proving_position(load)));
        let Some((index, replica)) = replica else {
            return read;
        };
        let replica_skus: Vec<&str> = load
            .misses
            .iter()
            .filter(|m| !m.primary_only)
            .map(|m| m.sku.as_str())
            .collect();
        let hwm = self.replica_hwm(load);
        let fetch = self.fetch_from_replica(index, replica.reads(), &replica_skus);
        let (fetched, hwm) = async { tokio::join!(fetch, hwm) }
            .instrument(db_read_span("replica", replica_skus.len()))
            .await;
        self.shared.metrics.count_replica_read(replica.name());
        if let Some((fetched, replayed, hwm)) = judgeable(fetched, hwm) {
            read.keep_fresh(load, fetched, replayed, hwm);
        }
        read
    }

    /// The high-water mark a replica row must reach, and the timeline it must be on.
    /// Without Redis there is no high-water mark: the primary's position, read after this
    /// request began, is one. With it, the timeline the epoch is bound to; without it, the
    /// primary's: rows of another (a standby left on a history a failover lost) are never
    /// used.
    async fn replica_hwm(&self, load: &Load<'_>) -> Option<(Lsn, u32)> {
        match load.meta {
            Some(meta) => {
                let timeline = load.cache.bound_timeline(&meta.epoch).await.ok().flatten();
                timeline.map(|timeline| (meta.hwm, timeline))
            }
            // Boxed: taken only while Redis is down, it would size every miss's future.
            None => {
                Box::pin(
                    self.shared
                        .primary_position
                        .read_after(load.started, self.shared.db.primary_reads()),
                )
                .await
            }
        }
    }

    /// The rows of `skus` on the replica at `index`, whose read connections are `replica`: a
    /// single SKU's read is shared with concurrent reads of that replica.
    async fn fetch_from_replica(
        &self,
        index: usize,
        replica: &Leases,
        skus: &[&str],
    ) -> Result<Fetched, Arc<sqlx::Error>> {
        match (skus, self.replica_fetches.get(index)) {
            ([sku], Some(batched)) => batched.fetch(sku).await,
            _ => fetch_leased(replica, skus).await.map_err(Arc::new),
        }
    }

    /// Step 3: the primary, for every miss still pending after the replica. Its answer is
    /// proven from the instant its query was sent.
    pub(super) async fn read_primary(
        &self,
        load: &Load<'_>,
        read: &mut DatabaseRead,
    ) -> Result<(), ServiceError> {
        let rest: Vec<&str> = read
            .pending
            .iter()
            .map(|&i| load.misses[i].sku.as_str())
            .collect();
        self.shared.metrics.count_database_read(Database::Primary);
        let began = Instant::now();
        let fetched = self
            .shared
            .on_primary(
                fetch_leased(self.shared.db.primary_reads(), &rest),
                db_read_span("primary", rest.len()),
            )
            .await?;
        read.rows
            .extend(fetched.rows.into_iter().map(|r| (r.sku.clone(), r)));
        // Rows the replica proved fresh keep the replica's, lower, position as their proof
        // for later tokens.
        read.verified = if read.pending.len() == load.misses.len() {
            fetched.visible
        } else {
            read.verified.min(fetched.visible)
        };
        read.pending.clear();
        read.source = ReadSource::Primary;
        read.proof = Proof::PrimaryAfter(began);
        read.primary_timeline = Some(fetched.timeline);
        Ok(())
    }
}

/// Where a database read of the misses stands.
pub(super) struct DatabaseRead {
    /// Rows found, by SKU (absent: no such row).
    pub(super) rows: HashMap<String, StoredSize>,
    /// Misses (by index) still to be read from the primary.
    pub(super) pending: Vec<usize>,
    /// The farthest source read, and its proof: set by the source that completes the read.
    pub(super) source: ReadSource,
    pub(super) proof: Proof,
    /// Every token at or below this is included in `rows` (for the fill's entries).
    pub(super) verified: Lsn,
    /// The primary's timeline, if it was read (and said).
    pub(super) primary_timeline: Option<Option<u32>>,
}

impl DatabaseRead {
    /// A read of `misses` misses that has read nothing yet.
    fn all_pending(misses: usize) -> Self {
        Self {
            rows: HashMap::with_capacity(misses),
            pending: (0..misses).collect(),
            source: ReadSource::Primary,
            proof: Proof::PrimaryAfter(Instant::now()),
            verified: Lsn::ZERO,
            primary_timeline: None,
        }
    }

    /// Takes the replica's rows that are fresh for their miss ([`is_fresh`]) out of the
    /// pending ones; the read is the replica's if none is left.
    fn keep_fresh(&mut self, load: &Load<'_>, fetched: Fetched, replayed: Lsn, hwm: Lsn) {
        let hwm = Some(hwm);
        let mut rows: HashMap<String, StoredSize> = fetched
            .rows
            .into_iter()
            .map(|r| (r.sku.clone(), r))
            .collect();
        self.pending.retain(|&i| {
            let miss = &load.misses[i];
            let version = rows.get(miss.sku.as_str()).map_or(0, |r| r.version);
            let fresh =
                !miss.primary_only && is_fresh(replayed, version, miss.fence, hwm, load.token);
            if fresh && let Some(row) = rows.remove(miss.sku.as_str()) {
                self.rows.insert(row.sku.clone(), row);
            }
            !fresh
        });
        if self.pending.len() < load.misses.len() {
            self.verified = fetched.visible;
        }
        if self.pending.is_empty() {
            self.source = ReadSource::Replica;
            self.proof = Proof::Replayed(replayed);
        }
    }
}

/// The replica's answer with the position its snapshot had replayed and the high-water mark
/// its rows are judged by; `None` (the primary is read) when the read failed, either position
/// is unknown, or the replica is on another timeline than the mark's.
fn judgeable(
    fetched: Result<Fetched, Arc<sqlx::Error>>,
    hwm: Option<(Lsn, u32)>,
) -> Option<(Fetched, Lsn, Lsn)> {
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            static FAILED: Throttle = Throttle::new();
            if let Some(suppressed) = FAILED.allow() {
                tracing::warn!(%error, suppressed, "replica read failed; reading the primary");
            }
            return None;
        }
    };
    let replayed = fetched.replayed?;
    let (hwm, timeline) = hwm?;
    if fetched.timeline != Some(timeline) {
        static OTHER_TIMELINE: Throttle = Throttle::new();
        if let Some(suppressed) = OTHER_TIMELINE.allow() {
            tracing::warn!(
                replica = ?fetched.timeline,
                expected = timeline,
                suppressed,
                "the replica is on another timeline than the primary; reading the primary"
            );
        }
        return None;
    }
    Some((fetched, replayed, hwm))
}

/// The span of one database read of `skus` SKUs from `database`.
/// A replay position that proves every miss of `load` fresh, if one is known before the read:
/// the client's token, and the high-water mark if a miss has no fence (a fenced miss is proven
/// by its row's version instead).
fn proving_position(load: &Load<'_>) -> Option<Lsn> {
    let unfenced = load.misses.iter().any(|miss| miss.fence.is_none());
    let hwm = load.meta.filter(|_| unfenced).map(|meta| meta.hwm);
    hwm.max(load.token)
}

fn db_read_span(database: &'static str, skus: usize) -> tracing::Span {
    tracing::debug_span!("db.read", db.system = "postgresql", database, skus)
}

/// Whether a replica row of `version`, read from a snapshot that includes everything up to
/// `replayed`, may be served. `hwm` covers every acknowledged write (the high-water mark, or
/// the primary's position when Redis is unavailable).
fn is_fresh(
    replayed: Lsn,
    version: i64,
    fence: Option<i64>,
    hwm: Option<Lsn>,
    token: Option<Lsn>,
) -> bool {
    if token.is_some_and(|token| replayed < token) {
        return false;
    }
    match (fence, hwm) {
        (Some(fence), _) => version >= fence,
        (None, Some(hwm)) => replayed >= hwm,
        // No record of acknowledged writes at all: only the primary knows.
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hwm(lsn: u64) -> Option<Lsn> {
        Some(Lsn::new(lsn))
    }

    #[test]
    fn a_fence_decides_by_version() {
        assert!(is_fresh(Lsn::new(1), 5, Some(5), hwm(100), None));
        assert!(!is_fresh(Lsn::new(1000), 4, Some(5), hwm(100), None));
    }

    #[test]
    fn without_a_fence_the_replica_must_reach_the_high_water_mark() {
        assert!(is_fresh(Lsn::new(100), 1, None, hwm(100), None));
        assert!(!is_fresh(Lsn::new(99), 1, None, hwm(100), None));
        assert!(!is_fresh(Lsn::new(u64::MAX), 1, None, None, None));
    }

    #[test]
    fn the_token_is_always_required() {
        assert!(!is_fresh(
            Lsn::new(100),
            5,
            Some(5),
            hwm(1),
            Some(Lsn::new(101))
        ));
        assert!(is_fresh(
            Lsn::new(101),
            5,
            Some(5),
            hwm(1),
            Some(Lsn::new(101))
        ));
    }
}
