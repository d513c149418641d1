//! The read path: cache first, then the replica when it is provably fresh, else the primary;
//! then fill the cache with a versioned compare-and-set.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{Instrument, instrument};

use super::{FILL_MAX_AGE, ServiceError, SizeService};
use crate::cache::{Cache, CacheRead, CacheRole, Entry, Epoch, Install, Meta};
use crate::db::DbRoute;
use crate::db::lease::bounded;
use crate::db::sizes::{fetch_leased, owed_repairs};
use crate::domain::{Lsn, Sku, StoredSize};
use crate::metrics::{CacheOutcome, Database};
use crate::telemetry::{self, Throttle};

/// Where an answer came from, in order of distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadSource {
    Cache,
    Replica,
    Primary,
}

impl ReadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cache => "cache",
            Self::Replica => "replica",
            Self::Primary => "primary",
        }
    }
}

/// One SKU's current state: `body` is `None` when it does not exist (or was deleted).
#[derive(Debug, Clone)]
pub struct SizeDoc {
    pub sku: Sku,
    /// 0 when the SKU never existed.
    pub version: i64,
    pub body: Option<Bytes>,
}

#[derive(Debug)]
pub struct ReadResult {
    /// One per requested SKU, in request order.
    pub docs: Vec<SizeDoc>,
    /// The farthest source any of them came from.
    pub source: ReadSource,
}

impl SizeService {
    /// Reads `skus` (distinct) as of at least every acknowledged write, and `token` if given,
    /// in named steps: look the SKUs up in the cache (entries, fences and epoch in one round
    /// trip) and sort hits from misses; for the misses, the replica where it is provably
    /// fresh, the primary for the rest, and fill the cache with what was read.
    #[instrument(skip_all, fields(skus = skus.len(), source = tracing::field::Empty))]
    pub async fn read(
        &self,
        skus: &[Sku],
        route: DbRoute,
        token: Option<Lsn>,
    ) -> Result<ReadResult, ServiceError> {
        let started = Instant::now();
        let Sorted {
            cache,
            meta,
            mut docs,
            misses,
        } = self.look_up(skus, token).await;
        if misses.is_empty() {
            self.metrics.count_read(ReadSource::Cache.as_str());
            record_source(ReadSource::Cache);
            return Ok(ReadResult {
                docs: docs.into_iter().flatten().collect(),
                source: ReadSource::Cache,
            });
        }
        // The paths a cache hit does not take are boxed: built only when taken, they keep this
        // future (which every layer above moves) small.
        let (loaded, source) = Box::pin(async {
            let load = Load {
                cache,
                misses: &misses,
                meta: meta.as_ref(),
                route,
                token,
                started,
            };
            self.load_misses(&load).await
        })
        .await?;
        for (miss, doc) in misses.iter().zip(loaded) {
            docs[miss.index] = Some(doc);
        }
        self.metrics.count_read(source.as_str());
        record_source(source);
        Ok(ReadResult {
            docs: docs.into_iter().flatten().collect(),
            source,
        })
    }

    /// Step 1: the cache. Every SKU becomes a hit (its document) or a miss with its fence, and
    /// the lookups are counted by outcome.
    #[instrument(
        level = "debug",
        name = "cache.lookup",
        skip_all,
        fields(skus = skus.len(), hits = tracing::field::Empty, misses = tracing::field::Empty)
    )]
    async fn look_up(&self, skus: &[Sku], token: Option<Lsn>) -> Sorted<'_> {
        let (role, cache, cached) = self.read_caches(skus).await;
        // The secondary is read only while the primary cache fails: what it still owes comes
        // from the database, so that no instance serves it an update it missed.
        let owed_by_secondary = match (role, &cached) {
            (CacheRole::Secondary, Some(_)) => Box::pin(self.owed_by_secondary(skus)).await,
            _ => HashSet::new(),
        };
        let (meta, entries, fences) = match cached {
            Some(cached) => {
                let meta = match cached.meta.filter(Meta::is_complete) {
                    Some(meta) => Some(meta),
                    None => Box::pin(self.current_meta(cache, None)).await,
                };
                // Only the deployment's authoritative data set is served: another (an old
                // master still running after its replica was promoted) may lack writes.
                let meta = meta.filter(|meta| self.readers.is_authority(role, &meta.epoch));
                (meta, cached.entries, cached.fences)
            }
            None => (None, vec![None; skus.len()], vec![None; skus.len()]),
        };
        let epoch = meta.as_ref().map(|m| &m.epoch);
        let mut docs: Vec<Option<SizeDoc>> = Vec::with_capacity(skus.len());
        let mut misses = Vec::new();
        let looked_up = skus.iter().zip(entries).zip(fences).enumerate();
        for (index, ((sku, entry), fence)) in looked_up {
            // Until its repair is applied, Redis may hold an older version than this
            // instance, or any other, acknowledged: neither its entry nor its fence can be
            // trusted.
            let owed = self.repairs.is_pending(role, sku.as_str())
                || self.readers.is_owed(role, sku.as_str())
                || owed_by_secondary.contains(sku.as_str());
            match entry.filter(|e| servable(e, epoch, owed, token)) {
                Some(entry) => {
                    self.inspector.served(sku, entry.version);
                    docs.push(Some(SizeDoc {
                        sku: sku.clone(),
                        version: entry.version,
                        body: entry.body,
                    }));
                }
                None => {
                    docs.push(None);
                    // A fence counts only in the epoch it was written in, and not for a SKU
                    // owed a repair (only the primary is fresh for it).
                    let fence = fence
                        .filter(|f| !owed && Some(&f.epoch) == epoch)
                        .map(|f| f.version);
                    misses.push(Miss {
                        index,
                        sku: sku.clone(),
                        fence,
                        primary_only: owed,
                    });
                }
            }
        }
        let bypassed = if meta.is_none() {
            misses.len()
        } else {
            misses.iter().filter(|m| m.primary_only).count()
        };
        self.metrics
            .count_cache(CacheOutcome::Hit, skus.len() - misses.len());
        self.metrics
            .count_cache(CacheOutcome::Miss, misses.len() - bypassed);
        self.metrics.count_cache(CacheOutcome::Bypass, bypassed);
        if telemetry::tracing_enabled() {
            let span = tracing::Span::current();
            span.record("hits", skus.len() - misses.len());
            span.record("misses", misses.len());
        }
        Sorted {
            cache,
            meta,
            docs,
            misses,
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
                let owed = self.repairs.is_pending(role, sku.as_str())
                    || self.readers.is_owed(role, sku.as_str());
                entry
                    .filter(|e| servable(e, epoch, owed, None))
                    .map(|e| e.version)
            })
            .collect();
        Some(versions)
    }

    /// Reads the misses, sharing a single SKU's read with concurrent misses of it.
    async fn load_misses(
        &self,
        load: &Load<'_>,
    ) -> Result<(Vec<SizeDoc>, ReadSource), ServiceError> {
        Ok(match (load.misses, load.meta, load.token) {
            // One SKU, Redis up, no token: share the read with concurrent misses. The shared
            // read may have begun before this request, so its answer must meet this request's
            // own requirement, else it reads again.
            ([miss], Some(meta), None) if !miss.primary_only => {
                let shared = self
                    .flights
                    .read(miss.sku.as_str(), &meta.epoch, async {
                        let read = self.load(load).await.ok()?;
                        Some(Answer {
                            doc: read.docs.into_iter().next()?,
                            source: read.source,
                            proof: read.proof,
                        })
                    })
                    .await
                    .filter(|answer| answer.satisfies(miss.fence, meta.hwm, load.started));
                match shared {
                    Some(answer) => (vec![answer.doc], answer.source),
                    None => {
                        let read = self.load(load).await?;
                        (read.docs, read.source)
                    }
                }
            }
            _ => {
                let read = self.load(load).await?;
                (read.docs, read.source)
            }
        })
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

    /// Steps 2 to 4: the replica where it is provably fresh, the primary for the rest, then
    /// the fill. One document per miss, in miss order.
    async fn load(&self, load: &Load<'_>) -> Result<Loaded, ServiceError> {
        // sqlx's and fred's futures are tens of kilobytes: boxed here, they are copied once
        // instead of with every future that holds this one.
        let mut read = Box::pin(self.read_replica(load)).await;
        if !read.pending.is_empty() {
            Box::pin(self.read_primary(load, &mut read)).await?;
        }
        let docs: Vec<SizeDoc> = load
            .misses
            .iter()
            .map(|miss| match read.rows.remove(miss.sku.as_str()) {
                Some(row) => SizeDoc {
                    sku: miss.sku.clone(),
                    version: row.version,
                    body: row.to_body(),
                },
                None => SizeDoc {
                    sku: miss.sku.clone(),
                    version: 0,
                    body: None,
                },
            })
            .collect();
        Box::pin(self.fill(load, &docs, read.verified, read.primary_timeline)).await;
        Ok(Loaded {
            docs,
            source: read.source,
            proof: read.proof,
        })
    }

    /// Step 2: the replica, for the misses it may serve, keeping the rows it proves fresh.
    /// Everything else stays pending for the primary.
    async fn read_replica(&self, load: &Load<'_>) -> DatabaseRead {
        let mut read = DatabaseRead {
            rows: HashMap::with_capacity(load.misses.len()),
            pending: (0..load.misses.len()).collect(),
            source: ReadSource::Primary,
            proof: Proof::PrimaryAfter(Instant::now()),
            verified: Lsn::ZERO,
            primary_timeline: None,
        };
        let replica = self
            .db
            .replica_reads()
            .filter(|_| load.route == DbRoute::ReplicaPreferred)
            .filter(|_| load.misses.iter().any(|m| !m.primary_only));
        let Some(replica) = replica else {
            return read;
        };
        let replica_skus: Vec<&str> = load
            .misses
            .iter()
            .filter(|m| !m.primary_only)
            .map(|m| m.sku.as_str())
            .collect();
        // Without Redis there is no high-water mark: the primary's position, read after
        // this request began, is one. With it, the timeline the epoch is bound to; without
        // it, the primary's: rows of another (a standby left on a history a failover lost)
        // are never used.
        let hwm = async {
            match load.meta {
                Some(meta) => {
                    let timeline = load.cache.bound_timeline(&meta.epoch).await.ok().flatten();
                    timeline.map(|timeline| (meta.hwm, timeline))
                }
                // Boxed: taken only while Redis is down, it would size every miss's future.
                None => {
                    Box::pin(
                        self.primary_position
                            .read_after(load.started, self.db.primary_reads()),
                    )
                    .await
                }
            }
        };
        let fetch = async {
            match (&replica_skus[..], &self.replica_fetches) {
                ([sku], Some(shared)) => shared.fetch(sku).await,
                _ => fetch_leased(replica, &replica_skus).await.map_err(Arc::new),
            }
        };
        let (fetched, hwm) = async { tokio::join!(fetch, hwm) }
            .instrument(tracing::debug_span!(
                "db.read",
                db.system = "postgresql",
                database = "replica",
                skus = replica_skus.len()
            ))
            .await;
        self.metrics.count_database_read(Database::Replica);
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                static FAILED: Throttle = Throttle::new();
                if let Some(suppressed) = FAILED.allow() {
                    tracing::warn!(%error, suppressed, "replica read failed; reading the primary");
                }
                return read;
            }
        };
        let Some(replayed) = fetched.replayed else {
            return read;
        };
        let Some((hwm, timeline)) = hwm else {
            return read;
        };
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
            return read;
        }
        let hwm = Some(hwm);
        let mut rows: HashMap<String, StoredSize> = fetched
            .rows
            .into_iter()
            .map(|r| (r.sku.clone(), r))
            .collect();
        read.pending.retain(|&i| {
            let miss = &load.misses[i];
            let version = rows.get(miss.sku.as_str()).map_or(0, |r| r.version);
            let fresh =
                !miss.primary_only && is_fresh(replayed, version, miss.fence, hwm, load.token);
            if fresh && let Some(row) = rows.remove(miss.sku.as_str()) {
                read.rows.insert(row.sku.clone(), row);
            }
            !fresh
        });
        if read.pending.len() < load.misses.len() {
            read.verified = fetched.visible;
        }
        if read.pending.is_empty() {
            read.source = ReadSource::Replica;
            read.proof = Proof::Replayed(replayed);
        }
        read
    }

    /// Step 3: the primary, for every miss still pending after the replica. Its answer is
    /// proven from the instant its query was sent.
    async fn read_primary(
        &self,
        load: &Load<'_>,
        read: &mut DatabaseRead,
    ) -> Result<(), ServiceError> {
        let rest: Vec<&str> = read
            .pending
            .iter()
            .map(|&i| load.misses[i].sku.as_str())
            .collect();
        self.metrics.count_database_read(Database::Primary);
        let began = Instant::now();
        let fetched = fetch_leased(self.db.primary_reads(), &rest)
            .instrument(tracing::debug_span!(
                "db.read",
                db.system = "postgresql",
                database = "primary",
                skus = rest.len()
            ))
            .await
            .map_err(|e| self.database_error(e))?;
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

    /// Step 4: installs what was read with the compare-and-set, unless the read is too old
    /// to be sure a write's fence would stop it, or the primary it read is on another
    /// timeline than the epoch is bound to (a failover the epoch has not seen a write of yet:
    /// the versions read may reuse numbers of versions it holds, with other content).
    #[instrument(level = "debug", name = "cache.fill", skip_all, fields(skus = docs.len()))]
    async fn fill(
        &self,
        load: &Load<'_>,
        docs: &[SizeDoc],
        verified: Lsn,
        primary_timeline: Option<Option<u32>>,
    ) {
        let Some(meta) = load.meta else { return };
        if load.started.elapsed() >= FILL_MAX_AGE {
            return;
        }
        if let Some(timeline) = primary_timeline {
            let bound = load.cache.bound_timeline(&meta.epoch).await.ok().flatten();
            if timeline.is_none() || timeline != bound {
                tracing::debug!(
                    ?timeline,
                    ?bound,
                    "the primary is on another timeline than the cache epoch; not filled"
                );
                return;
            }
        }
        let installs: Vec<Install<'_>> = docs
            .iter()
            .map(|doc| Install {
                sku: doc.sku.as_str(),
                version: doc.version,
                verified,
                body: doc.body.clone(),
            })
            .collect();
        let filled = match installs.as_slice() {
            // A single miss's fill may wait for a batch: it is dropped if its read is too old
            // by the time the batch goes out.
            [one] => {
                let deadline = load.started + FILL_MAX_AGE;
                load.cache.fill_one(one, &meta.epoch, deadline).await
            }
            _ => load.cache.fill(&installs, &meta.epoch).await.map(drop),
        };
        if let Err(error) = filled {
            tracing::debug!(%error, "cache fill failed");
        }
    }
}

/// A read's lookups sorted into hits (their documents) and misses.
struct Sorted<'a> {
    /// The cache that was read, and is filled.
    cache: &'a Cache,
    /// Its epoch with a known high-water mark; `None` when Redis cannot be trusted now.
    meta: Option<Meta>,
    /// One per requested SKU: the hit's document, or `None` for a miss.
    docs: Vec<Option<SizeDoc>>,
    misses: Vec<Miss>,
}

/// Where a database read of the misses stands.
struct DatabaseRead {
    /// Rows found, by SKU (absent: no such row).
    rows: HashMap<String, StoredSize>,
    /// Misses (by index) still to be read from the primary.
    pending: Vec<usize>,
    /// The farthest source read, and its proof: set by the source that completes the read.
    source: ReadSource,
    proof: Proof,
    /// Every token at or below this is included in `rows` (for the fill's entries).
    verified: Lsn,
    /// The primary's timeline, if it was read (and said).
    primary_timeline: Option<Option<u32>>,
}

/// The documents of a read's misses, in miss order, and where they came from.
struct Loaded {
    docs: Vec<SizeDoc>,
    source: ReadSource,
    proof: Proof,
}

/// The cache misses of one read, and what decides where they may be read from.
struct Load<'a> {
    /// The cache that was read, and is filled.
    cache: &'a Cache,
    misses: &'a [Miss],
    meta: Option<&'a Meta>,
    route: DbRoute,
    token: Option<Lsn>,
    started: Instant,
}

/// One SKU the cache could not answer, and everything that decides where it may be read.
#[derive(Debug)]
struct Miss {
    /// Its place among the requested SKUs.
    index: usize,
    sku: Sku,
    /// The newest acknowledged version, from a fence of the current epoch.
    fence: Option<i64>,
    /// A cache repair is pending for this SKU: only the primary is known to be fresh.
    primary_only: bool,
}

/// What a database read shows about how new its rows are.
#[derive(Debug, Clone, Copy)]
enum Proof {
    /// From the replica, whose snapshot included everything up to this WAL position.
    Replayed(Lsn),
    /// From the primary, by a query sent at this instant: it saw every write acknowledged
    /// before.
    PrimaryAfter(Instant),
}

/// One SKU's answer from a database read, as shared with concurrent misses of it.
#[derive(Debug, Clone)]
pub struct Answer {
    doc: SizeDoc,
    source: ReadSource,
    proof: Proof,
}

impl Answer {
    /// Whether this answer may serve a request that began at `started` and found `fence`
    /// (else `hwm`, which covers every acknowledged write) in the cache.
    fn satisfies(&self, fence: Option<i64>, hwm: Lsn, started: Instant) -> bool {
        match (fence, self.proof) {
            (Some(fence), _) => self.doc.version >= fence,
            (None, Proof::Replayed(replayed)) => replayed >= hwm,
            (None, Proof::PrimaryAfter(began)) => began >= started,
        }
    }
}

/// Whether a cached `entry` may be served as a hit: stamped in the current `epoch`, not
/// `owed` a repair, and verified at or past the client's `token`. A token may name a write
/// this cache never saw (another instance's failed update, another deployment's write): only
/// an entry verified at or past it proves it includes that write.
fn servable(entry: &Entry, epoch: Option<&Epoch>, owed: bool, token: Option<Lsn>) -> bool {
    Some(&entry.epoch) == epoch && !owed && token.is_none_or(|token| entry.verified >= token)
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

/// Names the read's source on its span, for traces.
fn record_source(source: ReadSource) {
    if telemetry::tracing_enabled() {
        tracing::Span::current().record("source", source.as_str());
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

    fn answer(version: i64, proof: Proof) -> Answer {
        Answer {
            doc: SizeDoc {
                sku: Sku::parse("SHARED").unwrap(),
                version,
                body: None,
            },
            source: ReadSource::Replica,
            proof,
        }
    }

    #[test]
    fn a_shared_answer_meets_the_joiners_fence() {
        let shared = answer(4, Proof::Replayed(Lsn::new(1_000)));
        assert!(shared.satisfies(Some(4), Lsn::new(1), Instant::now()));
        assert!(!shared.satisfies(Some(5), Lsn::new(1), Instant::now()));
    }

    #[test]
    fn without_a_fence_a_shared_answer_must_cover_the_joiners_high_water_mark() {
        let shared = answer(4, Proof::Replayed(Lsn::new(100)));
        assert!(shared.satisfies(None, Lsn::new(100), Instant::now()));
        assert!(!shared.satisfies(None, Lsn::new(101), Instant::now()));
    }

    #[test]
    fn without_a_fence_a_shared_primary_read_must_begin_after_the_joiner() {
        let joined = Instant::now();
        let before = answer(
            4,
            Proof::PrimaryAfter(joined - std::time::Duration::from_millis(1)),
        );
        let after = answer(4, Proof::PrimaryAfter(joined));
        assert!(!before.satisfies(None, Lsn::new(1), joined));
        assert!(after.satisfies(None, Lsn::new(1), joined));
    }
}
