//! What a read answers: each SKU's document, and the farthest source any came from; and what
//! a database read proves about how new its rows are.

use std::time::Instant;

use bytes::Bytes;

use crate::domain::{Lsn, Sku};

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

/// What a database read shows about how new its rows are.
#[derive(Debug, Clone, Copy)]
pub(super) enum Proof {
    /// From the replica, whose snapshot included everything up to this WAL position.
    Replayed(Lsn),
    /// From the primary, by a query sent at this instant: it saw every write acknowledged
    /// before.
    PrimaryAfter(Instant),
}

/// One SKU's answer from a database read, as shared with concurrent misses of it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub(super) doc: SizeDoc,
    pub(super) source: ReadSource,
    pub(super) proof: Proof,
}

impl Answer {
    /// Whether this answer may serve a request that began at `started` and found `fence`
    /// (else `hwm`, which covers every acknowledged write) in the cache.
    pub(super) fn satisfies(&self, fence: Option<i64>, hwm: Lsn, started: Instant) -> bool {
        match (fence, self.proof) {
            (Some(fence), _) => self.doc.version >= fence,
            (None, Proof::Replayed(replayed)) => replayed >= hwm,
            (None, Proof::PrimaryAfter(began)) => began >= started,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
