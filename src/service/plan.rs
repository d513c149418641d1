//! The read's plan: from what one cache lookup saw, which SKUs are hits (served as they are)
//! and which are misses, each with what decides where it may be read. Pure: no I/O, so the
//! rules are tested here without PostgreSQL or Redis.
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 2 (reads), 7 (tokens on hits) and 8 (owed SKUs go to the primary).

use crate::cache::{Entry, Epoch, Fence};
use crate::domain::{Lsn, Sku};

use super::answer::SizeDoc;

/// The lookups in request order: a hit's document, or `None` where `misses` has the SKU.
pub(super) struct Plan {
    pub(super) docs: Vec<Option<SizeDoc>>,
    pub(super) misses: Vec<Miss>,
}

/// One SKU the cache could not answer, and everything that decides where it may be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Miss {
    /// Its place among the requested SKUs.
    pub(super) index: usize,
    pub(super) sku: Sku,
    /// The newest acknowledged version, from a fence of the current epoch.
    pub(super) fence: Option<i64>,
    /// A cache repair is pending for this SKU: only the primary is known to be fresh.
    pub(super) primary_only: bool,
}

/// Sorts `skus`, with the `entries` and `fences` one lookup read for them, into hits and
/// misses. `epoch` is the one served (`None` when the cache cannot be trusted now: every SKU
/// is a miss); `owed` tells the SKUs the cache is owed a repair for.
pub(super) fn plan(
    skus: &[Sku],
    entries: Vec<Option<Entry>>,
    fences: Vec<Option<Fence>>,
    epoch: Option<&Epoch>,
    token: Option<Lsn>,
    owed: impl Fn(&Sku) -> bool,
) -> Plan {
    let mut docs: Vec<Option<SizeDoc>> = Vec::with_capacity(skus.len());
    let mut misses = Vec::new();
    let looked_up = skus.iter().zip(entries).zip(fences).enumerate();
    for (index, ((sku, entry), fence)) in looked_up {
        let owed = owed(sku);
        match entry.filter(|e| servable(e, epoch, owed, token)) {
            Some(entry) => docs.push(Some(SizeDoc {
                sku: sku.clone(),
                version: entry.version,
                body: entry.body,
            })),
            None => {
                docs.push(None);
                // A fence counts only in the epoch it was written in, and not for a SKU owed
                // a repair (only the primary is fresh for it).
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
    Plan { docs, misses }
}

/// Whether a cached `entry` may be served as a hit: stamped in the current `epoch`, not
/// `owed` a repair, and verified at or past the client's `token`. A token may name a write
/// this cache never saw (another instance's failed update, another deployment's write): only
/// an entry verified at or past it proves it includes that write.
pub(super) fn servable(
    entry: &Entry,
    epoch: Option<&Epoch>,
    owed: bool,
    token: Option<Lsn>,
) -> bool {
    Some(&entry.epoch) == epoch && !owed && token.is_none_or(|token| entry.verified >= token)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn sku(name: &str) -> Sku {
        Sku::parse(name).unwrap()
    }

    fn entry(version: i64, epoch: &Epoch, verified: u64) -> Option<Entry> {
        Some(Entry {
            version,
            epoch: epoch.clone(),
            verified: Lsn::new(verified),
            body: Some(Bytes::from_static(b"{}")),
        })
    }

    fn fence(version: i64, epoch: &Epoch) -> Option<Fence> {
        Some(Fence {
            version,
            epoch: epoch.clone(),
        })
    }

    #[test]
    fn an_entry_of_the_served_epoch_is_a_hit_in_request_order() {
        let epoch = Epoch::random();
        let skus = [sku("A-1"), sku("B-2")];
        let plan = plan(
            &skus,
            vec![None, entry(3, &epoch, 10)],
            vec![fence(2, &epoch), None],
            Some(&epoch),
            None,
            |_| false,
        );
        assert!(plan.docs[0].is_none());
        assert_eq!(plan.docs[1].as_ref().map(|d| d.version), Some(3));
        let miss = Miss {
            index: 0,
            sku: skus[0].clone(),
            fence: Some(2),
            primary_only: false,
        };
        assert_eq!(plan.misses, vec![miss]);
    }

    /// The plan of one SKU, `A-1`, whose lookup read `entry` and `fence`.
    fn plan_one(
        entry: Option<Entry>,
        fence: Option<Fence>,
        served: Option<&Epoch>,
        owed: bool,
    ) -> Plan {
        plan(
            &[sku("A-1")],
            vec![entry],
            vec![fence],
            served,
            None,
            |_| owed,
        )
    }

    #[test]
    fn another_epochs_entry_and_fence_count_for_nothing() {
        let (served, old) = (Epoch::random(), Epoch::random());
        let plan = plan_one(entry(3, &old, 10), fence(4, &old), Some(&served), false);
        assert!(plan.docs[0].is_none());
        assert_eq!(plan.misses[0].fence, None);
    }

    #[test]
    fn without_a_trusted_epoch_every_sku_is_a_miss() {
        let epoch = Epoch::random();
        let plan = plan_one(entry(3, &epoch, 10), fence(3, &epoch), None, false);
        assert!(plan.docs[0].is_none());
        assert_eq!(plan.misses[0].fence, None);
    }

    #[test]
    fn an_owed_sku_is_read_from_the_primary_whatever_the_cache_holds() {
        let epoch = Epoch::random();
        let plan = plan_one(entry(3, &epoch, 10), fence(3, &epoch), Some(&epoch), true);
        assert!(plan.docs[0].is_none());
        assert!(plan.misses[0].primary_only);
        assert_eq!(
            plan.misses[0].fence, None,
            "an owed SKU's fence proves nothing"
        );
    }

    #[test]
    fn an_entry_verified_below_the_token_is_a_miss_that_keeps_its_fence() {
        let epoch = Epoch::random();
        let skus = [sku("A-1")];
        let entries = || vec![entry(3, &epoch, 10)];
        let fences = || vec![fence(3, &epoch)];
        let token = |at: u64| Some(Lsn::new(at));
        let below = plan(&skus, entries(), fences(), Some(&epoch), token(11), |_| {
            false
        });
        assert!(below.docs[0].is_none());
        assert_eq!(below.misses[0].fence, Some(3));
        let at = plan(&skus, entries(), fences(), Some(&epoch), token(10), |_| {
            false
        });
        assert!(at.docs[0].is_some());
    }
}
