//! Redis: a small wrapper owning the fred client pool, the key scheme and the Lua scripts.
//!
//! Three kinds of key, all under a configurable prefix (default `ps`):
//! - `ps:{SKU}` — the cache entry: `<version>|<epoch>|<JSON body>`; an empty body is a
//!   tombstone (deleted) or, at version 0, a remembered "not found".
//! - `ps:{SKU}:fence` — `<version>|<epoch>`: the newest version a write acknowledged for
//!   this SKU. It outlives an evicted entry, so no fill can put back an older version, and it
//!   tells the read path how new the replica's row must be.
//! - `ps:meta` — `<epoch>|<hwm>`: the epoch names this Redis data set (a FLUSHALL or restart
//!   ends it), the high-water mark is the newest WAL position of any acknowledged write.
//!
//! The entry and fence of a SKU share the hash tag `{SKU}`, so the install script touches one
//! Cluster slot.

mod breaker;
pub mod entry;
mod install;
mod scripts;

use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::{Builder, Config as RedisConfig, ReconnectPolicy, SetOptions};
use fred::types::scripts::Script;
use futures_util::future::Either;
use futures_util::{FutureExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};

pub use breaker::Breaker;
pub use entry::{Entry, Epoch, Fence, Meta};
pub use install::Install;

use crate::config::CacheSettings;
use crate::domain::{Lsn, Sku};

pub type CacheError = fred::error::Error;

/// What Redis holds for a set of SKUs, read in one round trip.
#[derive(Debug)]
pub struct CacheRead {
    pub entries: Vec<Option<Entry>>,
    pub meta: Option<Meta>,
}

pub struct Cache {
    pool: Pool,
    prefix: String,
    settings: CacheSettings,
    install: Script,
    bump: Script,
    delete_if: Script,
    invalidate: Script,
    /// A Redis Cluster: multi-key commands must stay within one slot.
    clustered: bool,
    /// The last epoch this instance saw, stamped on writes (see [`Cache::known_epoch`]).
    epoch: RwLock<Option<Epoch>>,
    breaker: Breaker,
}

impl Cache {
    /// Builds the client pool and starts connecting in the background: the service starts,
    /// and serves from the database, while Redis is down.
    pub fn connect(url: &SecretString, settings: CacheSettings) -> Result<Self, CacheError> {
        let config = RedisConfig::from_url(url.expose_secret())?;
        let clustered = config.server.is_clustered();
        let pool = Builder::from_config(config)
            .with_performance_config(|perf| {
                perf.default_command_timeout = settings.command_timeout;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = settings.command_timeout.max(Duration::from_millis(500));
                conn.internal_command_timeout =
                    settings.command_timeout.max(Duration::from_millis(500));
                conn.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build_pool(settings.pool_size)?;
        let _connection_tasks = pool.connect();
        Ok(Self {
            pool,
            prefix: settings.key_prefix.clone(),
            clustered,
            settings,
            install: Script::from_lua(scripts::INSTALL),
            bump: Script::from_lua(scripts::BUMP_HWM),
            delete_if: Script::from_lua(scripts::DELETE_IF_UNCHANGED),
            invalidate: Script::from_lua(scripts::INVALIDATE),
            epoch: RwLock::new(None),
            breaker: Breaker::default(),
        })
    }

    /// Waits up to `timeout` for the first connection; `false` if Redis is not there yet.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.pool.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Asks Redis directly, past the breaker (readiness and the repair worker's probe); a
    /// success closes the breaker.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let result = self.pool.next().ping::<()>(None).await;
        if result.is_ok() {
            self.breaker.record(true);
        }
        result
    }

    /// Whether cache operations are being skipped because Redis keeps failing.
    pub fn is_unavailable(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs one Redis operation through the breaker. A combinator rather than an `async fn`:
    /// an `async fn` would hold `operation` twice (as argument and as awaited future), and
    /// fred's futures are kilobytes that every read's future carries.
    fn guarded<T>(
        &self,
        operation: impl Future<Output = Result<T, CacheError>>,
    ) -> impl Future<Output = Result<T, CacheError>> {
        if !self.breaker.allow() {
            return Either::Left(std::future::ready(Err(CacheError::new(
                fred::error::ErrorKind::Canceled,
                "Redis is failing; the cache breaker is open",
            ))));
        }
        Either::Right(operation.map(|result| {
            self.breaker.record(result.is_ok());
            result
        }))
    }

    pub async fn quit(&self) {
        let _ = self.pool.quit().await;
    }

    /// Names this cache (its key prefix): repairs are recorded per cache.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn entry_key(&self, sku: &str) -> String {
        format!("{}:{{{sku}}}", self.prefix)
    }

    pub fn fence_key(&self, sku: &str) -> String {
        format!("{}:{{{sku}}}:fence", self.prefix)
    }

    pub fn meta_key(&self) -> String {
        format!("{}:meta", self.prefix)
    }

    /// Every SKU that has a cache entry (on every node of a Cluster).
    pub async fn entry_skus(&self) -> Result<Vec<String>, CacheError> {
        let pattern = format!("{}:{{*}}", self.prefix);
        let client = self.pool.next();
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
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>, CacheError> {
        if self.clustered {
            // Boxed: the pipeline's futures would double the size of every read's future.
            return Box::pin(self.get_many_clustered(keys)).await;
        }
        self.pool.next().mget(keys).await
    }

    async fn get_many_clustered(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        let pipeline = self.pool.next().pipeline();
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

    /// Deletes an entry only if it still holds `seen`.
    pub async fn delete_entry_if_unchanged(
        &self,
        sku: &str,
        seen: Bytes,
    ) -> Result<bool, CacheError> {
        let client = self.pool.next();
        let deleted: i64 = self
            .guarded(self.delete_if.evalsha_with_reload(
                client,
                vec![self.entry_key(sku)],
                vec![seen],
            ))
            .await?;
        Ok(deleted == 1)
    }

    /// Stores a small JSON document beside the cache's keys (the last audit's counts).
    pub async fn put_note(&self, name: &str, value: String) -> Result<(), CacheError> {
        self.guarded(self.pool.next().set(
            format!("{}:note:{name}", self.prefix),
            value,
            None,
            None,
            false,
        ))
        .await
    }

    pub async fn note(&self, name: &str) -> Result<Option<String>, CacheError> {
        self.guarded(self.pool.next().get(format!("{}:note:{name}", self.prefix)))
            .await
    }

    /// Entries and the meta key for `skus`, in one MGET. Fences are read only for misses
    /// ([`Cache::fences`]): a hit does not need them.
    pub async fn read(&self, skus: &[Sku]) -> Result<CacheRead, CacheError> {
        // Never empty: the meta key is always read.
        let mut keys: Vec<String> = Vec::with_capacity(skus.len() + 1);
        keys.extend(skus.iter().map(|s| self.entry_key(s.as_str())));
        keys.push(self.meta_key());
        let mut values: Vec<Option<Bytes>> = self.guarded(self.get_many(keys)).await?;
        let meta = values.pop().flatten().and_then(|v| Meta::decode(&v));
        let entries = values
            .into_iter()
            .map(|v| v.and_then(Entry::decode))
            .collect();
        if let Some(meta) = &meta {
            self.remember_epoch(&meta.epoch);
        }
        Ok(CacheRead { entries, meta })
    }

    /// The fences of `skus`, in one MGET.
    pub async fn fences(&self, skus: &[&str]) -> Result<Vec<Option<Fence>>, CacheError> {
        let keys: Vec<String> = skus.iter().map(|s| self.fence_key(s)).collect();
        let values = self.guarded(self.get_many(keys)).await?;
        Ok(values
            .into_iter()
            .map(|v| v.and_then(|v| Fence::decode(&v)))
            .collect())
    }

    /// The epoch this instance last saw. Writes stamp it on what they install: it was current
    /// before their commit, so if Redis loses its data after the commit, readers see a stale
    /// stamp and ignore the entry instead of trusting it.
    pub fn known_epoch(&self) -> Option<Epoch> {
        self.epoch.read().ok().and_then(|e| e.clone())
    }

    fn remember_epoch(&self, epoch: &Epoch) {
        if self.known_epoch().as_ref() != Some(epoch)
            && let Ok(mut slot) = self.epoch.write()
        {
            *slot = Some(epoch.clone());
        }
    }

    pub async fn read_meta(&self) -> Result<Option<Meta>, CacheError> {
        let value: Option<Bytes> = self.guarded(self.pool.next().get(self.meta_key())).await?;
        let meta = value.and_then(|v| Meta::decode(&v));
        if let Some(meta) = &meta {
            self.remember_epoch(&meta.epoch);
        }
        Ok(meta)
    }

    /// Starts a new epoch if none exists (its high-water mark still unknown: zero). The caller
    /// then raises the mark to a primary WAL position read *after* this call, which covers
    /// every write acknowledged before; writes acknowledged after it raise the mark themselves.
    pub async fn start_epoch(&self) -> Result<(), CacheError> {
        let fresh = Meta {
            epoch: Epoch::random(),
            hwm: Lsn::ZERO,
        };
        let _: Option<String> = self
            .pool
            .next()
            .set(
                self.meta_key(),
                fresh.encode(),
                None,
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(())
    }

    /// Raises the high-water mark to `lsn` (never lowers it; no-op without an epoch).
    pub async fn raise_hwm(&self, lsn: Lsn) -> Result<(), CacheError> {
        let client = self.pool.next();
        self.bump
            .evalsha_with_reload::<i64, _, _>(
                client,
                vec![self.meta_key()],
                vec![entry::pad_lsn(lsn)],
            )
            .await?;
        Ok(())
    }
}
