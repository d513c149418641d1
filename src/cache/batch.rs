//! Concurrent single-SKU reads coalesced into one `MGET` ([`crate::infra::coalesce`]).
//!
//! A cache hit is one small `MGET` (entry, fence, meta), and most of its cost is per command:
//! fred's command and reply handling and its writer task in the service, parsing and dispatch
//! in Redis, which shares the service's core. A batch is one `MGET` of every waiting SKU's
//! entry and fence, and the meta key once.
//!
//! Every read keeps its guarantee: `MGET` is atomic, so each read's entry, fence and epoch are
//! still one instant of one data set, and a read's `MGET` is sent after the read began, so it
//! sees every write acknowledged before that. Only a standalone Redis batches: in a Cluster,
//! one `MGET` cannot span slots.

use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::{Cache, CacheError};

/// SKUs per `MGET` at most: a larger batch would hold Redis, and every read behind it, longer.
const MAX_BATCH: usize = 64;

/// One batch out at a time: Redis serves one command at a time, and the service reaches it on
/// one connection per CPU, so a second batch in flight only splits the queue. Measured
/// (bench/RESULTS.md, issue 14's third pass): one served hits 2-5% faster than two, and misses
/// 3-10%.
const IN_FLIGHT: usize = 1;

/// One SKU's keys as one `MGET` of a batch read them.
pub struct Slot {
    pub entry: Option<Bytes>,
    pub fence: Option<Bytes>,
    pub meta: Option<Bytes>,
}

/// A SKU's entry key and fence key.
type Keys = (String, String);

pub struct Batcher(super::CacheCoalescer<Keys, Slot>);

impl Batcher {
    pub fn start(cache: Weak<Cache>) -> Self {
        Self(super::CacheCoalescer::start(
            cache, MAX_BATCH, IN_FLIGHT, answer,
        ))
    }

    /// One SKU's entry, fence and the meta key, read in whichever batch takes it.
    pub async fn read(&self, entry_key: String, fence_key: String) -> Result<Slot, CacheError> {
        self.0.ask((entry_key, fence_key)).await
    }
}

/// Reads one batch. The breaker counts each read, as it would have counted each read's own
/// `MGET`.
async fn answer(cache: Arc<Cache>, batch: Vec<Keys>) -> Vec<Result<Slot, CacheError>> {
    let reads = batch.len();
    if !cache.breaker.allow() {
        return (0..reads).map(|_| Err(super::breaker_open())).collect();
    }
    let mut keys = Vec::with_capacity(2 * reads + 1);
    for (entry_key, fence_key) in batch {
        keys.push(entry_key);
        keys.push(fence_key);
    }
    keys.push(cache.meta_key());
    match cache.get_many(keys).await {
        Ok(mut values) if values.len() == 2 * reads + 1 => {
            cache.breaker.record(true);
            let meta = values.pop().flatten();
            let mut values = values.into_iter();
            (0..reads)
                .map(|_| {
                    Ok(Slot {
                        entry: values.next().flatten(),
                        fence: values.next().flatten(),
                        meta: meta.clone(),
                    })
                })
                .collect()
        }
        result => {
            let error = result.err().unwrap_or_else(|| {
                CacheError::new(
                    fred::error::ErrorKind::Protocol,
                    "MGET answered a different number of values than keys",
                )
            });
            cache.notice_failure();
            (0..reads)
                .map(|_| {
                    cache.breaker.record(false);
                    Err(error.clone())
                })
                .collect()
        }
    }
}
