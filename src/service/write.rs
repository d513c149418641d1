//! The write path: one transaction on the primary, then, before the response, the versioned
//! compare-and-set into Redis (entry, fence and high-water mark in one pipeline).
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 1 (writes) and 6 (a write that changes nothing).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::instrument;

use super::{ServiceError, SizeService};
use crate::cache::{Cache, CacheRole, Epoch, Install, Meta};
use crate::config::FailoverPolicy;
use crate::db::sizes::{Committed, DatabaseHistory, write_transaction};
use crate::domain::write::{Change, Decision, Preconditions, decide};
use crate::domain::{Lsn, SizeUpdate, Sku, StoredSize};

/// The decision for one write and the WAL position after its transaction, which clients get
/// back as `X-Consistency-Token`.
#[derive(Debug)]
pub struct WriteOutcome {
    pub decision: Decision,
    pub token: Lsn,
}

/// Per-item decisions of a WMS batch, in input order, and the batch's token.
#[derive(Debug)]
pub struct SyncItemOutcome {
    pub decisions: Vec<Decision>,
    pub token: Lsn,
}

/// Serves writes: each commits on the primary, then installs its version in the caches
/// before it is acknowledged. It shares the stores, the repair book and the leases with the
/// reader and the workers.
pub struct Writer {
    shared: Arc<SizeService>,
}

impl Writer {
    pub fn new(shared: Arc<SizeService>) -> Self {
        Self { shared }
    }

    #[instrument(skip_all, fields(sku = %sku))]
    pub async fn put(
        &self,
        sku: Sku,
        update: SizeUpdate,
        preconditions: &Preconditions,
    ) -> Result<WriteOutcome, ServiceError> {
        self.write_one(sku, Change::Put(update), preconditions)
            .await
    }

    #[instrument(skip_all, fields(sku = %sku))]
    pub async fn delete(
        &self,
        sku: Sku,
        preconditions: &Preconditions,
    ) -> Result<WriteOutcome, ServiceError> {
        self.write_one(sku, Change::Delete, preconditions).await
    }

    /// Applies a WMS batch in one transaction; each item follows the `source_version` rule.
    #[instrument(skip_all, fields(items = updates.len()))]
    pub async fn sync(
        &self,
        updates: Vec<(Sku, SizeUpdate)>,
    ) -> Result<SyncItemOutcome, ServiceError> {
        let changes: Vec<(Sku, Change)> = updates
            .into_iter()
            .map(|(sku, u)| (sku, Change::Put(u)))
            .collect();
        let (decisions, token) = self.apply(&changes, &Preconditions::default()).await?;
        Ok(SyncItemOutcome { decisions, token })
    }

    async fn write_one(
        &self,
        sku: Sku,
        change: Change,
        preconditions: &Preconditions,
    ) -> Result<WriteOutcome, ServiceError> {
        let (mut decisions, token) = self.apply(&[(sku, change)], preconditions).await?;
        let decision = decisions
            .pop()
            .ok_or_else(|| ServiceError::Invariant("a write decided nothing for its SKU"))?;
        Ok(WriteOutcome { decision, token })
    }

    /// Decides and stores `changes` (in order; a SKU may appear more than once) in one
    /// transaction, then records what was written in the cache before returning.
    async fn apply(
        &self,
        changes: &[(Sku, Change)],
        preconditions: &Preconditions,
    ) -> Result<(Vec<Decision>, Lsn), ServiceError> {
        // Captured before the commit: if Redis loses its data after the commit, this stamp is
        // stale and readers ignore what we install.
        let primary_stamp = self.stamp_for_write(&self.shared.cache).await;
        let secondary_stamp = match &self.shared.secondary {
            Some(secondary) => self.stamp_for_write(&secondary.cache).await,
            None => None,
        };
        let committed = self.commit(changes, preconditions).await?;
        let (decisions, mut rows) = committed.outcome;
        rows.extend(already_stored(&decisions, &rows));
        if !rows.is_empty() {
            // From here until the caches are updated, or their failure recorded, a cancelled
            // request (its timeout, its client gone) leaves the update to the repair worker at
            // once, not after the 2 s its record waits for its writer.
            let mut cancelled = Cancelled {
                writer: self,
                rows: &rows,
                xact: committed.xact,
                done: false,
            };
            let epochs = self
                .epochs_after_commit(primary_stamp, secondary_stamp, &committed.history)
                .await;
            // The rows the write only reported (unchanged, stale) were locked as long as those
            // it stored: the same position proves them.
            let installs: Vec<Install<'_>> = rows
                .iter()
                .map(|row| Install::row(row, committed.visible))
                .collect();
            let written = Written {
                rows: &rows,
                installs: &installs,
                xact: committed.xact,
            };
            if !self.record_in_cache(&written, &epochs, committed.lsn).await {
                // Other instances still read the older entry: acknowledged only once each
                // of them knows the cache is owed these SKUs.
                let confirmed = self.shared.confirm_owed(&rows, committed.xact).await;
                cancelled.done = true;
                confirmed?;
            }
            cancelled.done = true;
        }
        Ok((decisions, committed.lsn))
    }

    /// The transaction of [`Self::apply`]: the decisions, and the rows it stored.
    async fn commit(
        &self,
        changes: &[(Sku, Change)],
        preconditions: &Preconditions,
    ) -> Result<Committed<(Vec<Decision>, Vec<StoredSize>)>, ServiceError> {
        let mut skus: Vec<&str> = changes.iter().map(|(sku, _)| sku.as_str()).collect();
        skus.sort_unstable();
        skus.dedup();
        let now = Utc::now();
        let unsure = |rows: &[StoredSize], xact: i64| self.left_unrecorded(rows, Some(xact));
        let transaction = write_transaction(
            self.shared.db.primary_writes(),
            &skus,
            |current| decide_in_order(current, changes, preconditions, now),
            &unsure,
        );
        let span = tracing::debug_span!(
            "db.write",
            db.system = "postgresql",
            database = "primary",
            skus = skus.len()
        );
        self.shared.on_primary(transaction, span).await
    }

    /// A write committed (or may have) and its request ended before it updated the caches:
    /// each is owed its rows, repaired at once, and not served them here until then.
    fn left_unrecorded(&self, rows: &[StoredSize], xact: Option<i64>) {
        for (role, _) in self.shared.ledgers() {
            self.shared.repairs.mark_pending(role, rows, xact);
        }
        self.shared
            .metrics
            .repairs_pending
            .set(self.shared.repairs.pending_count() as i64);
    }

    /// The epoch `cache` holds now, and the database history it is bound to. Read on every
    /// write, not remembered: an instance that only writes would otherwise go on stamping an
    /// epoch that ended when Redis lost its data, and what it installs would be invisible to
    /// readers. `None` when Redis does not answer: the install most likely fails too (the
    /// repair worker takes over).
    async fn stamp_for_write(&self, cache: &Cache) -> Option<Stamp> {
        let (seen, history) = cache.read_meta_with_history().await.ok()?;
        if let Some(meta) = seen.clone().filter(Meta::is_complete) {
            return Some(Stamp { meta, history });
        }
        let meta = self.shared.current_meta(cache, seen).await?;
        let (_, history) = cache.read_meta_with_history().await.ok()?;
        Some(Stamp { meta, history })
    }

    /// The epoch each cache installs a commit on `history` with ([`Self::epoch_after_commit`]).
    async fn epochs_after_commit(
        &self,
        primary_stamp: Option<Stamp>,
        secondary_stamp: Option<Stamp>,
        history: &DatabaseHistory,
    ) -> Epochs {
        Epochs {
            primary: self
                .epoch_after_commit(&self.shared.cache, primary_stamp, history)
                .await,
            secondary: match &self.shared.secondary {
                Some(secondary) => Some(
                    self.epoch_after_commit(&secondary.cache, secondary_stamp, history)
                        .await,
                ),
                None => None,
            },
        }
    }

    /// The epoch to install a commit on `history` with: the stamp's, if its versions come
    /// from that history (an epoch not bound to any yet is bound to it now). Otherwise the
    /// primary changed under the epoch (a promoted standby, a restored cluster): versions it
    /// holds may have been lost with the old primary and reused by the new one, so a new
    /// epoch begins before this write is installed and acknowledged. `Epoch::unknown()` if
    /// none can be had: what is installed with it is never served.
    async fn epoch_after_commit(
        &self,
        cache: &Cache,
        stamp: Option<Stamp>,
        history: &DatabaseHistory,
    ) -> Epoch {
        let Some(stamp) = stamp else {
            return Epoch::unknown();
        };
        let committed = history.to_string();
        let same_history = match stamp.history.as_deref() {
            Some(bound) => bound == committed,
            None => cache
                .bind_history(&stamp.meta.epoch, &committed)
                .await
                .unwrap_or(false),
        };
        if same_history {
            return stamp.meta.epoch;
        }
        self.shared
            .replace_epoch_for(cache, &stamp.meta, history)
            .await
            .map_or_else(Epoch::unknown, |meta| meta.epoch)
    }

    /// Installs what was written in the primary cache, then the secondary; when the primary
    /// cache misses it, the secondary follows the failover policy. What a cache missed is
    /// left to the repair worker, and this instance does not read those SKUs from that cache
    /// until then. A secondary that followed the failover policy is safe to read but still
    /// owed the version: its record stays for the repair worker.
    /// Returns whether the primary cache took the update.
    #[instrument(level = "debug", name = "cache.update", skip_all, fields(skus = written.rows.len()))]
    async fn record_in_cache(&self, written: &Written<'_>, epochs: &Epochs, lsn: Lsn) -> bool {
        let (shared, installs) = (&self.shared, written.installs);
        let primary = shared
            .cache
            .record_writes(installs, &epochs.primary, lsn)
            .await;
        if let Err(error) = &primary {
            tracing::warn!(%error, rows = written.rows.len(), "cache update after commit failed; repair queued");
        }
        // An update of a data set the deployment does not serve (split brain: this instance
        // still reaches an old master) has not landed where readers look.
        let updated_primary = primary.is_ok()
            && shared
                .readers
                .is_authority(CacheRole::Primary, &epochs.primary);
        if primary.is_ok() && !updated_primary {
            tracing::warn!(
                rows = written.rows.len(),
                "cache updated in a Redis data set the deployment does not serve; repair queued"
            );
        }
        self.after_update(CacheRole::Primary, written, updated_primary);
        let Some((secondary, epoch)) = shared.secondary.as_ref().zip(epochs.secondary.as_ref())
        else {
            return updated_primary;
        };
        let updated = match primary {
            Ok(_) => secondary
                .cache
                .record_writes(installs, epoch, lsn)
                .await
                .map(|_| true),
            Err(_) => match secondary.policy {
                FailoverPolicy::Delete => secondary
                    .cache
                    .invalidate(installs, epoch, lsn)
                    .await
                    .map(|()| false),
                FailoverPolicy::ShortTtl => secondary
                    .cache
                    .record_writes_briefly(installs, epoch, lsn, secondary.failover_ttl)
                    .await
                    .map(|_| false),
            },
        };
        match updated {
            Ok(true) => self.after_update(CacheRole::Secondary, written, true),
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, rows = written.rows.len(), "secondary cache update after commit failed; repair queued");
                self.after_update(CacheRole::Secondary, written, false);
            }
        }
        updated_primary
    }

    /// Clears the record of an update of `cache` that succeeded, or protects its SKUs
    /// until their repair.
    fn after_update(&self, cache: CacheRole, written: &Written<'_>, succeeded: bool) {
        if succeeded {
            if let Some(xact) = written.xact {
                self.shared.repairs.settled(cache, xact);
            }
        } else {
            self.shared
                .repairs
                .mark_pending(cache, written.rows, written.xact);
            self.shared
                .metrics
                .repairs_pending
                .set(self.shared.repairs.pending_count() as i64);
        }
    }
}

/// Hands a write's cache updates to the repair worker if dropped before they are `done`: its
/// request was cancelled between the commit and the end of the updates.
struct Cancelled<'a> {
    writer: &'a Writer,
    rows: &'a [StoredSize],
    xact: Option<i64>,
    done: bool,
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.writer.left_unrecorded(self.rows, self.xact);
        }
    }
}

/// What a write puts in the caches: the rows it stored and those it only reported, and the
/// transaction that stored them, whose record is cleared once a cache holds them.
struct Written<'a> {
    rows: &'a [StoredSize],
    installs: &'a [Install<'a>],
    /// `None` when the write stored nothing (every row only reported).
    xact: Option<i64>,
}

/// The epoch a commit is installed with in each cache.
struct Epochs {
    primary: Epoch,
    /// When a secondary cluster is configured.
    secondary: Option<Epoch>,
}

/// What a write saw of one cache before its commit.
struct Stamp {
    meta: Meta,
    /// The database history the epoch is bound to, if any yet.
    history: Option<String>,
}

/// Decides `changes` in order against the `current` rows, each seeing the rows decided before
/// it: the rows to store (the last of each SKU written), and the decisions with those rows.
fn decide_in_order(
    current: &HashMap<String, StoredSize>,
    changes: &[(Sku, Change)],
    preconditions: &Preconditions,
    now: DateTime<Utc>,
) -> (Vec<StoredSize>, (Vec<Decision>, Vec<StoredSize>)) {
    let mut state = current.clone();
    let mut written: Vec<&str> = Vec::new();
    let decisions: Vec<Decision> = changes
        .iter()
        .map(|(sku, change)| {
            let decision = decide(sku, state.get(sku.as_str()), change, preconditions, now);
            if let Decision::Write { row, .. } = &decision {
                state.insert(row.sku.clone(), row.clone());
                written.push(sku.as_str());
            }
            decision
        })
        .collect();
    written.sort_unstable();
    written.dedup();
    let rows: Vec<StoredSize> = written
        .iter()
        .filter_map(|sku| state.get(*sku).cloned())
        .collect();
    (rows.clone(), (decisions, rows))
}

/// The stored rows that `decisions` report without writing them (unchanged or stale) and that
/// `written` does not cover. They go to the cache too: the writer that stored them may have
/// committed and died before its own cache update, and this response tells the client their
/// version is saved.
fn already_stored(decisions: &[Decision], written: &[StoredSize]) -> Vec<StoredSize> {
    let mut covered: std::collections::HashSet<&str> =
        written.iter().map(|row| row.sku.as_str()).collect();
    let mut rows = Vec::new();
    for decision in decisions {
        if let Decision::Unchanged(row) | Decision::Stale(row) = decision
            && covered.insert(row.sku.as_str())
        {
            rows.push(row.clone());
        }
    }
    rows
}
