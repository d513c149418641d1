//! Step 1 of the read path: the cache. Entries, fences and epoch come in one round trip, and
//! every SKU is sorted into a hit or a miss with what decides where it may be read.
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 2 (reads) and 10 (no hit without a reader lease).

use std::collections::HashSet;

use tracing::instrument;

use super::SizeService;
use super::answer::SizeDoc;
use super::plan::{Miss, Plan, plan, servable};
use crate::cache::{Cache, CacheRead, CacheRole, Meta};
use crate::db::lease::bounded;
use crate::db::sizes::owed_repairs;
use crate::domain::{Lsn, Sku};
use crate::metrics::CacheOutcome;
use crate::telemetry;

impl SizeService {
    /// Step 1: the cache. Every SKU becomes a hit (its document) or a miss with its fence, and
    /// the lookups are counted by outcome.
    #[instrument(
        level = "debug",
        name = "cache.lookup",
        skip_all,
        fields(skus = skus.len(), hits = tracing::field::Empty, misses = tracing::field::Empty)
    )]
    pub(super) async fn look_up(&self, skus: &[Sku], token: Option<Lsn>) -> Sorted<'_> {
        let (role, cache, cached) = self.read_caches(skus).await;
        // The secondary is read only while the primary cache fails: what it still owes comes
        // from the database, so that no instance serves it an update it missed.
        let owed_by_secondary = match (role, &cached) {
            (CacheRole::Secondary, Some(_)) => Box::pin(self.owed_by_secondary(skus)).await,
            _ => HashSet::new(),
        };
        let (meta, entries, fences) = match cached {
            Some(cached) => {
                let meta = self.served_meta(role, cache, cached.meta).await;
                (meta, cached.entries, cached.fences)
            }
            None => (None, vec![None; skus.len()], vec![None; skus.len()]),
        };
        let epoch = meta.as_ref().map(|m| &m.epoch);
        // Until its repair is applied, Redis may hold an older version than this instance, or
        // any other, acknowledged: neither its entry nor its fence can be trusted.
        let owed =
            |sku: &Sku| self.owes(role, sku.as_str()) || owed_by_secondary.contains(sku.as_str());
        let Plan { docs, misses } = plan(skus, entries, fences, epoch, token, owed);
        for hit in docs.iter().flatten() {
            self.inspector.served(&hit.sku, hit.version);
        }
        self.count_lookups(skus.len(), &misses, meta.is_some());
        Sorted {
            cache,
            meta,
            docs,
            misses,
        }
    }

    /// The epoch `cache` holds, with a known high-water mark (completed now if it is new), if
    /// it is the one served.
    async fn served_meta(
        &self,
        role: CacheRole,
        cache: &Cache,
        seen: Option<Meta>,
    ) -> Option<Meta> {
        let meta = match seen.filter(Meta::is_complete) {
            Some(meta) => Some(meta),
            None => Box::pin(self.current_meta(cache, None)).await,
        };
        // Only the deployment's authoritative data set is served: another (an old master still
        // running after its replica was promoted) may lack writes.
        meta.filter(|meta| self.readers.is_authority(role, &meta.epoch))
    }

    /// Counts `looked_up` lookups by outcome (a miss bypasses the cache when the cache is not
    /// `trusted`, or when only the primary may answer it), and names them on the span.
    fn count_lookups(&self, looked_up: usize, misses: &[Miss], trusted: bool) {
        let bypassed = if !trusted {
            misses.len()
        } else {
            misses.iter().filter(|m| m.primary_only).count()
        };
        self.metrics
            .count_cache(CacheOutcome::Hit, looked_up - misses.len());
        self.metrics
            .count_cache(CacheOutcome::Miss, misses.len() - bypassed);
        self.metrics.count_cache(CacheOutcome::Bypass, bypassed);
        if telemetry::tracing_enabled() {
            let span = tracing::Span::current();
            span.record("hits", looked_up - misses.len());
            span.record("misses", misses.len());
        }
    }

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
    fn owes(&self, role: CacheRole, sku: &str) -> bool {
        self.repairs.is_pending(role, sku) || self.readers.is_owed(role, sku)
    }

    /// The primary cache cluster, or the secondary while the primary does not answer; neither
    /// without a reader lease (this instance may not know what the cache is owed).
    async fn read_caches(&self, skus: &[Sku]) -> (CacheRole, &Cache, Option<CacheRead>) {
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

    /// The SKUs among `skus` whose update the secondary cache may have missed, on any
    /// instance: those with a repair record in its ledger. All of them if the database
    /// cannot say (then they are read from the primary anyway).
    async fn owed_by_secondary(&self, skus: &[Sku]) -> HashSet<String> {
        let asked: Vec<&str> = skus.iter().map(Sku::as_str).collect();
        let ledger = self.ledger(CacheRole::Secondary);
        let owed = bounded!(
            self.db.primary_reads(),
            self.db.background_deadline(),
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

/// A read's lookups sorted into hits (their documents) and misses.
pub(super) struct Sorted<'a> {
    /// The cache that was read, and is filled.
    pub(super) cache: &'a Cache,
    /// Its epoch with a known high-water mark; `None` when Redis cannot be trusted now.
    pub(super) meta: Option<Meta>,
    /// One per requested SKU: the hit's document, or `None` for a miss.
    pub(super) docs: Vec<Option<SizeDoc>>,
    pub(super) misses: Vec<Miss>,
}
