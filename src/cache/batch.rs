//! Concurrent single-SKU reads coalesced into one `MGET`.
//!
//! A cache hit is one small `MGET` (entry, fence, meta). Under load, most of a hit's Redis
//! cost is per command, not per key: fred's command and reply handling and its writer task in
//! the service, parsing and dispatch in Redis, which shares the service's core. So reads that
//! arrive while earlier ones are in flight wait for a free slot and then go out together, as
//! one `MGET` of every waiting SKU's entry and fence and the meta key once. Without load a read
//! finds a slot free and goes out at once, alone.
//!
//! This keeps every read's guarantee: `MGET` is atomic, so each read's entry, fence and epoch
//! are still one instant of one data set, and a read's `MGET` is sent after the read began, so
//! it sees every write acknowledged before that. Only a standalone Redis batches: in a Cluster,
//! one `MGET` cannot span slots.

use std::sync::{Arc, Weak};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Cache, CacheError};

/// Batches in flight at once: while they are, new reads queue for the next one.
const IN_FLIGHT: usize = 2;
/// SKUs per `MGET` at most: a larger batch would hold Redis, and every read behind it, longer.
const MAX_BATCH: usize = 64;

/// One SKU's keys as one `MGET` of a batch read them.
pub struct Slot {
    pub entry: Option<Bytes>,
    pub fence: Option<Bytes>,
    pub meta: Option<Bytes>,
}

struct Waiting {
    entry_key: String,
    fence_key: String,
    reply: oneshot::Sender<Result<Slot, CacheError>>,
}

/// The queue of reads waiting for the next batch; its task ends with the cache.
pub struct Batcher {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl Batcher {
    pub fn start(cache: Weak<Cache>) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(cache, waiting));
        Self { queue }
    }

    /// One SKU's entry, fence and the meta key, read in whichever batch takes it.
    pub async fn read(&self, entry_key: String, fence_key: String) -> Result<Slot, CacheError> {
        let (reply, answer) = oneshot::channel();
        let waiting = Waiting {
            entry_key,
            fence_key,
            reply,
        };
        if self.queue.send(waiting).is_err() {
            return Err(closed());
        }
        answer.await.unwrap_or_else(|_| Err(closed()))
    }
}

async fn run(cache: Weak<Cache>, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // A slot first: while every slot is taken, reads gather in the queue.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = waiting.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // A read whose request was abandoned (timed out, disconnected) is not asked for.
        batch.retain(|read| !read.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let Some(cache) = cache.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            answer(&cache, batch).await;
            drop(slot);
        });
    }
}

/// Reads one batch and answers each of its reads. The breaker counts each read, as it would
/// have counted each read's own `MGET`.
async fn answer(cache: &Cache, batch: Vec<Waiting>) {
    if !cache.breaker.allow() {
        for read in batch {
            let _ = read.reply.send(Err(super::breaker_open()));
        }
        return;
    }
    let mut keys = Vec::with_capacity(2 * batch.len() + 1);
    let mut replies = Vec::with_capacity(batch.len());
    for read in batch {
        keys.push(read.entry_key);
        keys.push(read.fence_key);
        replies.push(read.reply);
    }
    keys.push(cache.meta_key());
    match cache.get_many(keys).await {
        Ok(mut values) if values.len() == 2 * replies.len() + 1 => {
            cache.breaker.record(true);
            let meta = values.pop().flatten();
            let mut values = values.into_iter();
            for reply in replies {
                let (entry, fence) = (values.next().flatten(), values.next().flatten());
                let _ = reply.send(Ok(Slot {
                    entry,
                    fence,
                    meta: meta.clone(),
                }));
            }
        }
        result => {
            let error = result.err().unwrap_or_else(|| {
                CacheError::new(
                    fred::error::ErrorKind::Protocol,
                    "MGET answered a different number of values than keys",
                )
            });
            for reply in replies {
                cache.breaker.record(false);
                let _ = reply.send(Err(error.clone()));
            }
            cache.notice_failure();
        }
    }
}

fn closed() -> CacheError {
    CacheError::new(fred::error::ErrorKind::Canceled, "the cache is closed")
}
