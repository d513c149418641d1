//! The read path: cache first, then the replica when it is provably fresh, else the primary;
//! then fill the cache with a versioned compare-and-set.
//!
//! The steps have modules of their own: the cache snapshot and its epoch
//! ([`super::lookup`]), the pure plan of hits and misses ([`super::plan`]), and the database
//! reads ([`super::fetch`]).
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 2 (reads), 3 (fills) and 5 (not found).

use std::sync::Arc;
use std::time::Instant;

use tracing::{Instrument, instrument};

use super::answer::{Answer, Proof, ReadResult, ReadSource, SizeDoc};
use super::flight::Flights;
use super::plan::{Miss, Plan};
use super::{FILL_MAX_AGE, ServiceError, SizeService};
use crate::cache::{Cache, Install, Meta};
use crate::db::DbRoute;
use crate::db::sizes::SharedFetches;
use crate::domain::{Lsn, Sku};
use crate::telemetry;

/// Serves reads. It shares the stores, the repair book and the leases with the writer and
/// the workers; what only reads use is its own: the shared flights of single-SKU misses and
/// the replica reads batched into one query.
pub struct Reader {
    pub(super) shared: Arc<SizeService>,
    flights: Flights,
    /// Per replica, in the replicas' order: concurrent single-SKU reads, one query per batch.
    pub(super) replica_fetches: Vec<SharedFetches>,
}

impl Reader {
    pub fn new(shared: Arc<SizeService>) -> Self {
        Self {
            replica_fetches: (shared.db.replicas().iter())
                .map(|replica| SharedFetches::start(replica.read_leases()))
                .collect(),
            flights: Flights::default(),
            shared,
        }
    }

    /// Reads `skus` (distinct) as of at least every acknowledged write, and `token` if given,
    /// in named steps: the cache snapshot (entries, fences and epoch in one round trip), the
    /// epoch it is served under, the plan of hits and misses; for the misses, the replica
    /// where it is provably fresh, the primary for the rest, and the fill.
    #[instrument(skip_all, fields(skus = skus.len(), source = tracing::field::Empty))]
    pub async fn read(
        &self,
        skus: &[Sku],
        route: DbRoute,
        token: Option<Lsn>,
    ) -> Result<ReadResult, ServiceError> {
        let started = Instant::now();
        let (cache, meta, Plan { mut docs, misses }) = async {
            let mut snapshot = self.look_up(skus).await;
            let meta = self.served_meta(&mut snapshot).await;
            let cache = snapshot.cache;
            let plan = self.sort(skus, snapshot, meta.as_ref(), token);
            (cache, meta, plan)
        }
        .instrument(lookup_span(skus.len()))
        .await;
        if misses.is_empty() {
            self.shared.metrics.count_read(ReadSource::Cache.as_str());
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
        self.shared.metrics.count_read(source.as_str());
        record_source(source);
        Ok(ReadResult {
            docs: docs.into_iter().flatten().collect(),
            source,
        })
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

/// The documents of a read's misses, in miss order, and where they came from.
struct Loaded {
    docs: Vec<SizeDoc>,
    source: ReadSource,
    proof: Proof,
}

/// The cache misses of one read, and what decides where they may be read from.
pub(super) struct Load<'a> {
    /// The cache that was read, and is filled.
    pub(super) cache: &'a Cache,
    pub(super) misses: &'a [Miss],
    pub(super) meta: Option<&'a Meta>,
    pub(super) route: DbRoute,
    pub(super) token: Option<Lsn>,
    pub(super) started: Instant,
}

/// The span of steps 1 to 3, which count its hits and misses.
fn lookup_span(skus: usize) -> tracing::Span {
    tracing::debug_span!(
        "cache.lookup",
        skus,
        hits = tracing::field::Empty,
        misses = tracing::field::Empty
    )
}

/// Names the read's source on its span, for traces.
fn record_source(source: ReadSource) {
    if telemetry::tracing_enabled() {
        tracing::Span::current().record("source", source.as_str());
    }
}
