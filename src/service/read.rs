//! The read path: cache first, then the replica when it is provably fresh, else the primary;
//! then fill the cache with a versioned compare-and-set.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use tracing::instrument;

use super::{FILL_MAX_AGE, SizeService};
use crate::cache::{Install, Meta};
use crate::db::DbRoute;
use crate::db::sizes::fetch;
use crate::domain::{Lsn, Sku, StoredSize};
use crate::error::AppError;

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
    /// Reads `skus` (distinct) as of at least every acknowledged write, and `token` if given.
    #[instrument(skip_all, fields(skus = skus.len()))]
    pub async fn read(
        &self,
        skus: &[Sku],
        route: DbRoute,
        token: Option<Lsn>,
    ) -> Result<ReadResult, AppError> {
        let started = Instant::now();
        let cached = match self.cache.read(skus).await {
            Ok(cached) => Some(cached),
            Err(error) => {
                tracing::warn!(%error, "cache read failed; reading the database");
                None
            }
        };
        let (meta, entries, fences) = match cached {
            Some(cached) => (
                self.current_meta(cached.meta).await,
                cached.entries,
                cached.fences,
            ),
            None => (None, vec![None; skus.len()], vec![None; skus.len()]),
        };
        let epoch = meta.as_ref().map(|m| &m.epoch);

        let mut docs: Vec<Option<SizeDoc>> = Vec::with_capacity(skus.len());
        let mut misses = Vec::new();
        for (i, (sku, entry)) in skus.iter().zip(entries).enumerate() {
            match entry.filter(|e| Some(&e.epoch) == epoch) {
                Some(entry) => docs.push(Some(SizeDoc {
                    sku: sku.clone(),
                    version: entry.version,
                    body: entry.body,
                })),
                None => {
                    docs.push(None);
                    // A fence counts only in the epoch it was written in.
                    let fence = fences[i]
                        .as_ref()
                        .filter(|f| Some(&f.epoch) == epoch)
                        .map(|f| f.version);
                    misses.push(Miss { index: i, fence });
                }
            }
        }
        if misses.is_empty() {
            return Ok(ReadResult {
                docs: docs.into_iter().flatten().collect(),
                source: ReadSource::Cache,
            });
        }

        let miss_skus: Vec<&str> = misses.iter().map(|m| skus[m.index].as_str()).collect();
        let (mut rows, source) = self
            .read_database(&miss_skus, &misses, meta.as_ref(), route, token)
            .await?;
        for miss in &misses {
            let sku = &skus[miss.index];
            docs[miss.index] = Some(match rows.remove(sku.as_str()) {
                Some(row) => SizeDoc {
                    sku: sku.clone(),
                    version: row.version,
                    body: row.to_body(),
                },
                None => SizeDoc {
                    sku: sku.clone(),
                    version: 0,
                    body: None,
                },
            });
        }
        let docs: Vec<SizeDoc> = docs.into_iter().flatten().collect();

        if let Some(meta) = &meta
            && started.elapsed() < FILL_MAX_AGE
        {
            let installs: Vec<Install<'_>> = misses
                .iter()
                .map(|m| &docs[m.index])
                .map(|doc| Install {
                    sku: doc.sku.as_str(),
                    version: doc.version,
                    body: doc.body.as_ref(),
                })
                .collect();
            if let Err(error) = self.cache.fill(&installs, &meta.epoch).await {
                tracing::warn!(%error, "cache fill failed");
            }
        }
        Ok(ReadResult { docs, source })
    }

    /// Reads the misses from the replica where that is provably fresh, the rest from the
    /// primary: at most one query on each.
    async fn read_database(
        &self,
        skus: &[&str],
        misses: &[Miss],
        meta: Option<&Meta>,
        route: DbRoute,
        token: Option<Lsn>,
    ) -> Result<(HashMap<String, StoredSize>, ReadSource), AppError> {
        let mut found = HashMap::with_capacity(skus.len());
        let mut pending: Vec<usize> = (0..skus.len()).collect();
        let replica = self
            .db
            .replica()
            .filter(|_| route == DbRoute::ReplicaPreferred);
        if let Some(replica) = replica {
            match fetch(replica, skus).await {
                Ok(fetched) => {
                    let mut rows: HashMap<String, StoredSize> = fetched
                        .rows
                        .into_iter()
                        .map(|r| (r.sku.clone(), r))
                        .collect();
                    pending.retain(|&i| {
                        let version = rows.get(skus[i]).map_or(0, |r| r.version);
                        let fresh = fetched.replayed.is_some_and(|replayed| {
                            is_fresh(replayed, version, misses[i].fence, meta, token)
                        });
                        if fresh && let Some(row) = rows.remove(skus[i]) {
                            found.insert(row.sku.clone(), row);
                        }
                        !fresh
                    });
                }
                Err(error) => tracing::warn!(%error, "replica read failed; reading the primary"),
            }
            if pending.is_empty() {
                return Ok((found, ReadSource::Replica));
            }
        }
        let rest: Vec<&str> = pending.iter().map(|&i| skus[i]).collect();
        let fetched = fetch(self.db.primary(), &rest).await?;
        found.extend(fetched.rows.into_iter().map(|r| (r.sku.clone(), r)));
        Ok((found, ReadSource::Primary))
    }
}

#[derive(Debug)]
struct Miss {
    index: usize,
    /// The newest acknowledged version, from a fence of the current epoch.
    fence: Option<i64>,
}

/// Whether a replica row of `version`, read from a snapshot that includes everything up to
/// `replayed`, may be served.
fn is_fresh(
    replayed: Lsn,
    version: i64,
    fence: Option<i64>,
    meta: Option<&Meta>,
    token: Option<Lsn>,
) -> bool {
    if token.is_some_and(|token| replayed < token) {
        return false;
    }
    match (fence, meta) {
        (Some(fence), _) => version >= fence,
        (None, Some(meta)) => replayed >= meta.hwm,
        // Without Redis there is no record of acknowledged writes: only the primary knows.
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Epoch;

    fn meta(hwm: u64) -> Meta {
        Meta {
            epoch: Epoch::random(),
            hwm: Lsn::new(hwm),
        }
    }

    #[test]
    fn a_fence_decides_by_version() {
        assert!(is_fresh(Lsn::new(1), 5, Some(5), Some(&meta(100)), None));
        assert!(!is_fresh(
            Lsn::new(1000),
            4,
            Some(5),
            Some(&meta(100)),
            None
        ));
    }

    #[test]
    fn without_a_fence_the_replica_must_reach_the_high_water_mark() {
        assert!(is_fresh(Lsn::new(100), 1, None, Some(&meta(100)), None));
        assert!(!is_fresh(Lsn::new(99), 1, None, Some(&meta(100)), None));
        assert!(!is_fresh(Lsn::new(u64::MAX), 1, None, None, None));
    }

    #[test]
    fn the_token_is_always_required() {
        assert!(!is_fresh(
            Lsn::new(100),
            5,
            Some(5),
            Some(&meta(1)),
            Some(Lsn::new(101))
        ));
        assert!(is_fresh(
            Lsn::new(101),
            5,
            Some(5),
            Some(&meta(1)),
            Some(Lsn::new(101))
        ));
    }
}
