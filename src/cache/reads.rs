//! Reading entries, fences and the meta key: one round trip for a set of SKUs, and a check,
//! in the same round trip, that the server still is a master.

use bytes::Bytes;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::Value;
use fred::types::CustomCommand;
use futures_util::TryStreamExt;

use super::entry::{Entry, Fence, Meta};
use super::{Cache, CacheError, CacheRead};
use crate::domain::Sku;

impl Cache {
    /// Every SKU that has a cache entry (on every node of a Cluster).
    pub async fn entry_skus(&self) -> Result<Vec<String>, CacheError> {
        let pattern = format!("{}:{{*}}", self.prefix);
        let client = self.client()?;
        let keys: Vec<fred::types::Key> = if self.clustered {
            client
                .scan_cluster_buffered(pattern, Some(1000), None)
                .try_collect()
                .await?
        } else {
            client
                .scan_buffered(pattern, Some(1000), None)
                .try_collect()
                .await?
        };
        Ok(keys
            .iter()
            .filter_map(|key| key.as_str())
            .filter_map(|key| {
                key.strip_prefix(&self.prefix)?
                    .strip_prefix(":{")?
                    .strip_suffix('}')
            })
            .map(str::to_owned)
            .collect())
    }

    /// Values of `keys` in one round trip: MGET, or, in a Cluster (where one MGET cannot span
    /// slots), a pipeline of GETs that fred routes to each key's node.
    pub(super) async fn get_many(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        // Boxed: the pipeline's futures would double the size of every read's future.
        if self.clustered {
            return Box::pin(self.get_many_clustered(keys)).await;
        }
        Box::pin(self.get_many_from_master(keys)).await
    }

    /// MGET, and `ROLE` right after it on the same connection: a server that is no longer a
    /// master (demoted, and perhaps already resynchronised from another data set, without
    /// closing connections) is refused in the same round trip, not at the next identity
    /// check. Its role as the MGET ran is that of the ROLE after it: a demoted server stays a
    /// replica until it is promoted again, which gives it a new replication id that the
    /// identity check refuses.
    async fn get_many_from_master(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        let pipeline = self.client()?.pipeline();
        let _: () = pipeline.mget(keys).await?;
        let _: () = pipeline
            .custom(
                CustomCommand::new_static("ROLE", None, false),
                Vec::<Value>::new(),
            )
            .await?;
        let mut replies: Vec<Value> = pipeline.all().await?;
        let role = replies.pop();
        let values = replies.pop();
        let is_master = matches!(&role, Some(Value::Array(role))
            if role.first().and_then(Value::as_str).as_deref() == Some("master"));
        if !is_master {
            // The supervisor checks the server's identity now, and replaces the link.
            self.relink.notify_one();
            return Err(CacheError::new(
                fred::error::ErrorKind::Unknown,
                "the Redis server is no longer a master",
            ));
        }
        values.map_or_else(|| Ok(Vec::new()), Value::convert)
    }

    async fn get_many_clustered(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        let pipeline = self.client()?.pipeline();
        for key in keys {
            let _: () = pipeline.get(key).await?;
        }
        pipeline
            .try_all::<Option<Bytes>>()
            .await
            .into_iter()
            .collect()
    }

    /// The raw entry values of `skus`, as stored.
    pub async fn raw_entries(&self, skus: &[&str]) -> Result<Vec<Option<Bytes>>, CacheError> {
        if skus.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = skus.iter().map(|s| self.entry_key(s)).collect();
        self.guarded(self.get_many(keys)).await
    }

    /// Entries, fences and the meta key for `skus`, in one MGET: a miss knows everything it
    /// needs before the database, and a hit pays for its fence with a few bytes, not a round
    /// trip. Read together, entry, fence and epoch are one instant of one data set. A read of
    /// one SKU shares its MGET with the other single-SKU reads waiting at the time ([`batch`]).
    pub async fn read(&self, skus: &[Sku]) -> Result<CacheRead, CacheError> {
        if let ([sku], Some(batcher)) = (skus, &self.batcher) {
            let slot = batcher
                .read(self.entry_key(sku.as_str()), self.fence_key(sku.as_str()))
                .await?;
            return Ok(CacheRead {
                entries: vec![slot.entry.and_then(Entry::decode)],
                fences: vec![slot.fence.and_then(|v| Fence::decode(&v))],
                meta: slot.meta.and_then(|v| Meta::decode(&v)),
            });
        }
        // Never empty: the meta key is always read.
        let mut keys: Vec<String> = Vec::with_capacity(2 * skus.len() + 1);
        keys.extend(skus.iter().map(|s| self.entry_key(s.as_str())));
        keys.extend(skus.iter().map(|s| self.fence_key(s.as_str())));
        keys.push(self.meta_key());
        let mut values: Vec<Option<Bytes>> = self.guarded(self.get_many(keys)).await?;
        let meta = values.pop().flatten().and_then(|v| Meta::decode(&v));
        let fences = values
            .drain(skus.len()..)
            .map(|v| v.and_then(|v| Fence::decode(&v)))
            .collect();
        let entries = values
            .into_iter()
            .map(|v| v.and_then(Entry::decode))
            .collect();
        Ok(CacheRead {
            entries,
            fences,
            meta,
        })
    }
}
