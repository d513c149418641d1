//! What a read answers: each SKU's document, and the farthest source any came from.

use bytes::Bytes;

use crate::domain::Sku;

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
