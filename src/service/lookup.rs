//! Steps 1 to 3 of the read path: the cache snapshot (entries, fences and epoch in one round
//! trip), the epoch it is served under, and the plan that sorts every SKU into a hit or a miss
//! with what decides where it may be read.
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 2 (reads) and 10 (no hit without a reader lease).

use std::collections::HashSet;

use super::SizeService;
use super::plan::{Miss, Plan, plan, servable};
use super::read::Reader;
use crate::cache::{Cache, CacheRead, CacheRole, Meta};
use crate::db::lease::bounded;
use crate::db::sizes::owed_repairs;
use crate::domain::{Lsn, Sku};
use crate::metrics::CacheOutcome;
use crate::telemetry;

impl Reader {
    /// Step 1: the cache snapshot. Entries, fences and epoch in one round trip, from the
    /// primary cluster, or the secondary while the first does not answer; with the SKUs the
    /// secondary may have missed, which only the database can say.
    pub(super) async fn look_up(&self, skus: &[Sku]) -> Snapshot<'_> {
        let (role, cache, cached) = self.shared.read_caches(skus).await;
        // The secondary is read only while the primary cache fails: what it still owes comes
        // from the database, so that no instance serves it an update it missed.
        let owed_by_secondary = match (role, &cached) {
            (CacheRole::Secondary, Some(_)) => Box::pin(self.owed_by_secondary(skus)).await,
            _ => HashSet::new(),
        };
        Snapshot {
            role,
            cache,
            cached,
            owed_by_secondary,
        }
    }

    /// Step 2: the epoch the snapshot is served under: its own if complete, else the cache's
    /// completed now (which asks the primary for the high-water mark of a new one). `None`
    /// when the cache cannot be trusted now, or its epoch is not the deployment's.
    pub(super) async fn served_meta(&self, snapshot: &mut Snapshot<'_>) -> Option<Meta> {
        let seen = snapshot.cached.as_mut()?.meta.take();
        let meta = match seen.filter(Meta::is_complete) {
            Some(meta) => Some(meta),
            None => Box::pin(self.shared.current_meta(snapshot.cache, None)).await,
        };
        // Only the deployment's authoritative data set is served: another (an old master still
        // running after its replica was promoted) may lack writes.
        meta.filter(|meta| self.shared.readers.is_authority(snapshot.role, &meta.epoch))
    }

    /// Step 3: every SKU sorted into a hit (its document) or a miss with its fence, by the pure
    /// [`plan`]; the lookups counted by outcome.
    pub(super) fn sort(
        &self,
        skus: &[Sku],
        snapshot: Snapshot<'_>,
        meta: Option<&Meta>,
        token: Option<Lsn>,
    ) -> Plan {
        let (entries, fences) = match snapshot.cached {
            Some(cached) => (cached.entries, cached.fences),
            None => (vec![None; skus.len()], vec![None; skus.len()]),
        };
        let epoch = meta.map(|m| &m.epoch);
        // Until its repair is applied, Redis may hold an older version than this instance, or
        // any other, acknowledged: neither its entry nor its fence can be trusted.
        let owed = |sku: &Sku| {
            self.shared.owes(snapshot.role, sku.as_str())
                || snapshot.owed_by_secondary.contains(sku.as_str())
        };
        let plan = plan(skus, entries, fences, epoch, token, owed);
        for hit in plan.docs.iter().flatten() {
            self.shared.inspector.served(&hit.sku, hit.version);
        }
        self.count_lookups(skus.len(), &plan.misses, meta.is_some());
        plan
    }

    /// Counts `looked_up` lookups by outcome (a miss bypasses the cache when the cache is not
    /// `trusted`, or when only the primary may answer it), and names them on the span.
    fn count_lookups(&self, looked_up: usize, misses: &[Miss], trusted: bool) {
        let bypassed = if !trusted {
            misses.len()
        } else {
            misses.iter().filter(|m| m.primary_only).count()
        };
        let metrics = &self.shared.metrics;
        metrics.count_cache(CacheOutcome::Hit, looked_up - misses.len());
        metrics.count_cache(CacheOutcome::Miss, misses.len() - bypassed);
        metrics.count_cache(CacheOutcome::Bypass, bypassed);
        if telemetry::tracing_enabled() {
            let span = tracing::Span::current();
            span.record("hits", looked_up - misses.len());
            span.record("misses", misses.len());
        }
    }

    /// The SKUs among `skus` whose update the secondary cache may have missed, on any
    /// instance: those with a repair record in its ledger. All of them if the database
    /// cannot say (then they are read from the primary anyway).
    async fn owed_by_secondary(&self, skus: &[Sku]) -> HashSet<String> {
        let asked: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let shared = &self.shared;
        let ledger = shared.ledger(CacheRole::Secondary);
        let owed = bounded!(
            shared.db.primary_reads(),
            shared.db.background_deadline(),
            |conn| owed_repairs(conn, &ledger, Some(&asked))
        );
        match owed.await {
            Ok(owed) => owed.into_iter().map(|(sku, _)| sku).collect(),
            Err(error) => {
                tracing::debug!(%error, "repairs owed to the secondary unknown; reading the primary");
                asked.into_iter().map(str::to_owned).collect()
            }
        }
    }
}

impl SizeService {
    /// The version a read without a token would be served from the cache for each of `skus`
    /// (`None` for a miss); `None` if the primary cache does not answer.
    pub(super) async fn servable_versions(&self, skus: &[Sku]) -> Option<Vec<Option<i64>>> {
        let (role, _, cached) = self.read_caches(skus).await;
        // While the primary cache fails, the secondary's owed SKUs are decided by the
        // database: not judged here.
        if role == CacheRole::Secondary {
            return None;
        }
        let cached = cached?;
        let meta = cached
            .meta
            .filter(|meta| meta.is_complete() && self.readers.is_authority(role, &meta.epoch));
        let epoch = meta.as_ref().map(|m| &m.epoch);
        let versions = skus
            .iter()
            .zip(cached.entries)
            .map(|(sku, entry)| {
                let owed = self.owes(role, sku.as_str());
                entry
                    .filter(|e| servable(e, epoch, owed, None))
                    .map(|e| e.version)
            })
            .collect();
        Some(versions)
    }

    /// Whether this instance knows the cache `role` to be owed `sku`: its own update of it
    /// failed, or the owed book names it.
    pub(super) fn owes(&self, role: CacheRole, sku: &str) -> bool {
        self.repairs.is_pending(role, sku) || self.readers.is_owed(role, sku)
    }

    /// The primary cache cluster, or the secondary while the primary does not answer; neither
    /// without a reader lease (this instance may not know what the cache is owed).
    pub(super) async fn read_caches(&self, skus: &[Sku]) -> (CacheRole, &Cache, Option<CacheRead>) {
        if !self.readers.has_lease(CacheRole::Primary) {
            return (CacheRole::Primary, &self.cache, None);
        }
        let error = match self.cache.read(skus).await {
            Ok(read) => return (CacheRole::Primary, &self.cache, Some(read)),
            Err(error) => error,
        };
        if let Some(secondary) = &self.secondary
            && self.readers.has_lease(CacheRole::Secondary)
        {
            match secondary.cache.read(skus).await {
                Ok(read) => return (CacheRole::Secondary, &secondary.cache, Some(read)),
                Err(error) => tracing::debug!(%error, "secondary cache unavailable too"),
            }
        }
        tracing::debug!(%error, "cache unavailable; reading the database");
        (CacheRole::Primary, &self.cache, None)
    }
}

/// What one cache lookup saw, before it is planned.
pub(super) struct Snapshot<'a> {
    role: CacheRole,
    /// The cache that was read, and is filled.
    pub(super) cache: &'a Cache,
    /// `None` when no cache answered (or this instance holds no reader lease).
    cached: Option<CacheRead>,
    /// The SKUs the secondary, when it was read, may have missed on any instance.
    owed_by_secondary: HashSet<String>,
}
