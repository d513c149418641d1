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
//! - `{ps:meta}:origin` — `<epoch>|<run_id>/<master_replid>`: the server process and
//!   replication history the epoch was started on (in a Cluster, every master's, by address).
//!   A link to Redis whose server does not match starts a new epoch before anything is read
//!   through it ([`link`]). It shares the meta key's slot, so both change in one script.
//! - `{ps:meta}:database` — `<epoch>|<system identifier>/<timeline>`: the PostgreSQL history
//!   the epoch's versions and high-water mark come from. A write that commits on another
//!   history (a promoted standby, a restored cluster) starts a new epoch before it installs,
//!   so a version lost with the old primary never names the new primary's content.
//!
//! The entry and fence of a SKU share the hash tag `{SKU}`, so the install script touches one
//! Cluster slot.

mod batch;
mod breaker;
pub mod entry;
mod fills;
mod install;
pub mod link;
mod scripts;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::Config as RedisConfig;
use fred::prelude::Value;
use fred::types::CustomCommand;
use fred::types::scripts::Script;
use futures_util::future::Either;
use futures_util::{FutureExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;

pub use breaker::Breaker;
pub use entry::{Entry, Epoch, Fence, Meta};
pub use install::Install;
pub use link::ServerIdentity;

use crate::config::CacheSettings;
use crate::domain::{Lsn, Sku};

pub type CacheError = fred::error::Error;

/// What Redis holds for a set of SKUs, read in one round trip.
#[derive(Debug)]
pub struct CacheRead {
    pub entries: Vec<Option<Entry>>,
    /// The SKUs' fences, in the same order.
    pub fences: Vec<Option<Fence>>,
    pub meta: Option<Meta>,
}

/// Which of the (at most two) cache clusters a cache is (`REDIS_URL`, `REDIS_SECONDARY_URL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheRole {
    Primary,
    Secondary,
}

impl CacheRole {
    /// 0 for the primary, 1 for the secondary: for per-cache state kept in pairs.
    pub fn index(self) -> usize {
        match self {
            Self::Primary => 0,
            Self::Secondary => 1,
        }
    }
}

pub struct Cache {
    /// The checked connections to the current server; `None` while Redis is unreachable.
    link: ArcSwapOption<link::Link>,
    /// The linked server as last seen (its eviction policy may change while linked).
    server: ArcSwapOption<ServerIdentity>,
    config: RedisConfig,
    /// Wakes the link supervisor when a connection is found closed.
    relink: Arc<Notify>,
    closed: AtomicBool,
    /// How many links have been adopted ([`Cache::link_generation`]).
    generation: AtomicU64,
    prefix: String,
    settings: CacheSettings,
    install: Script,
    bump: Script,
    delete_if: Script,
    invalidate: Script,
    restart_epoch: Script,
    bind_history: Script,
    /// A Redis Cluster: multi-key commands must stay within one slot.
    clustered: bool,
    /// Why the last connection attempt was refused, if the server refused its credentials.
    refused: ArcSwapOption<String>,
    /// The last epoch seen bound to a database history, and that history.
    bound: ArcSwapOption<(Epoch, Arc<str>)>,
    breaker: Breaker,
    /// Coalesces concurrent single-SKU reads (standalone Redis only: `None` in a Cluster).
    batcher: Option<batch::Batcher>,
    /// Coalesces concurrent one-SKU fills (standalone Redis only, like `batcher`).
    fills: Option<fills::Fills>,
}

impl Cache {
    /// Starts linking to Redis in the background: the service starts, and serves from the
    /// database, while Redis is down. The link is kept until [`Cache::quit`].
    pub fn connect(url: &SecretString, settings: CacheSettings) -> Result<Arc<Self>, CacheError> {
        let mut config = RedisConfig::from_url(url.expose_secret())?;
        if config.uses_tls() {
            config.tls = Some(
                tls::config(settings.tls_ca_file.as_deref())
                    .map_err(|e| CacheError::new(fred::error::ErrorKind::Tls, e))?,
            );
        }
        let clustered = config.server.is_clustered();
        let cache = Arc::new_cyclic(|cache| Self {
            link: ArcSwapOption::empty(),
            server: ArcSwapOption::empty(),
            clustered,
            config,
            refused: ArcSwapOption::empty(),
            bound: ArcSwapOption::empty(),
            relink: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            prefix: settings.key_prefix.clone(),
            settings,
            install: Script::from_lua(scripts::INSTALL),
            bump: Script::from_lua(scripts::BUMP_HWM),
            delete_if: Script::from_lua(scripts::DELETE_IF_UNCHANGED),
            invalidate: Script::from_lua(scripts::INVALIDATE),
            restart_epoch: Script::from_lua(scripts::RESTART_EPOCH),
            bind_history: Script::from_lua(scripts::BIND_HISTORY),
            breaker: Breaker::default(),
            batcher: (!clustered).then(|| batch::Batcher::start(cache.clone())),
            fills: (!clustered).then(|| fills::Fills::start(cache.clone())),
        });
        tokio::spawn(link::supervise(Arc::downgrade(&cache)));
        Ok(cache)
    }

    /// Waits up to `timeout` for the first checked link: `Ok(false)` if Redis is not there
    /// yet, an error with the server's words if it refused the connection's credentials (a
    /// misconfiguration, which waiting does not mend).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<bool, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.link.load().is_none() {
            if let Some(refused) = self.refused.load_full() {
                return Err(refused.as_ref().clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(true)
    }

    /// A connection of the current link.
    fn client(&self) -> Result<Client, CacheError> {
        match self.link.load().as_ref() {
            Some(link) => Ok(link.client().clone()),
            None => Err(no_link()),
        }
    }

    /// Asks Redis directly, past the breaker (readiness and the repair worker's probe); a
    /// success closes the breaker.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let result = self.client()?.ping::<()>(None).await;
        if result.is_ok() {
            self.breaker.record(true);
        }
        result
    }

    /// The server (or Cluster masters) behind the current link (`None` while unlinked).
    pub fn server(&self) -> Option<ServerIdentity> {
        self.server.load().as_deref().cloned()
    }

    /// Keeps the link: `true` if it is healthy (or was just replaced by a checked one).
    async fn check_link(&self) -> bool {
        if let Some(link) = self.link.load_full()
            && link.is_alive()
        {
            match link.identify_again().await {
                // A server that does not answer (paused, overloaded) is still the same one.
                Err(_) => return true,
                Ok(now) if link.same_data_set(&now) => {
                    self.server.store(Some(Arc::new(now)));
                    return true;
                }
                Ok(_) => tracing::warn!(
                    cache = self.prefix(),
                    "the Redis server changed under an open connection (failover or resync)"
                ),
            }
        }
        // Nothing may use the old link from here on.
        self.server.store(None);
        if let Some(old) = self.link.swap(None) {
            tokio::spawn(async move {
                let _ = old.pool.quit().await;
            });
        }
        if self.is_closed() {
            return false;
        }
        let opened = match link::Link::open(&self.config, &self.settings, self.clustered).await {
            Ok(opened) => {
                self.refused.store(None);
                opened
            }
            Err(error) => {
                tracing::debug!(%error, "cannot connect to Redis yet");
                self.refused
                    .store(is_refusal(&error).then(|| Arc::new(error.details().to_owned())));
                return false;
            }
        };
        match self.adopt(&opened).await {
            // Quit while this link was being opened: keep nothing open.
            Ok(()) if self.is_closed() => {
                let _ = opened.pool.quit().await;
                false
            }
            Ok(()) => {
                if opened.server.may_evict_fences() {
                    tracing::warn!(
                        cache = self.prefix(),
                        policy = %opened.server.eviction_policy,
                        "Redis may evict fences under memory pressure, and then serve reads older than acknowledged writes; set maxmemory-policy noeviction"
                    );
                }
                self.server.store(Some(Arc::new(opened.server.clone())));
                self.link.store(Some(Arc::new(opened)));
                self.generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(error) => {
                tracing::debug!(%error, "cannot check the Redis data set yet");
                let _ = opened.pool.quit().await;
                false
            }
        }
    }

    /// Trusts the link's data set only if the current epoch was started on it; otherwise
    /// starts a new epoch (its high-water mark still unknown) before the link is used.
    async fn adopt(&self, opened: &link::Link) -> Result<(), CacheError> {
        let server = &opened.server;
        let client = opened.client();
        for _ in 0..5 {
            let mut values: Vec<Option<Bytes>> = client
                .mget(vec![self.meta_key(), self.origin_key()])
                .await?;
            let origin = values.pop().flatten();
            let seen = values.pop().flatten();
            if let Some(meta) = seen.as_deref().and_then(Meta::decode)
                && origin.as_deref() == Some(origin_value(&meta.epoch, server).as_bytes())
            {
                return Ok(());
            }
            if self.restart_epoch_on(client, seen, server).await? {
                tracing::info!(
                    cache = self.prefix(),
                    server = %server.data_set(),
                    "Redis data set not the one the epoch began on (restart, snapshot or failover); new cache epoch"
                );
                return Ok(());
            }
        }
        Err(CacheError::new(
            fred::error::ErrorKind::Unknown,
            "the cache epoch kept changing while being checked",
        ))
    }

    /// Replaces the epoch with a new one whose high-water mark is not known yet, if the meta
    /// key still holds `seen`. The caller (or the next read) then raises the mark from the
    /// primary.
    async fn restart_epoch_on(
        &self,
        client: &Client,
        seen: Option<Bytes>,
        server: &ServerIdentity,
    ) -> Result<bool, CacheError> {
        let fresh = Meta {
            epoch: Epoch::random(),
            hwm: Lsn::ZERO,
        };
        let started: i64 = self
            .restart_epoch
            .evalsha_with_reload(
                client,
                vec![self.meta_key(), self.origin_key()],
                vec![
                    seen.unwrap_or_default(),
                    Bytes::from(fresh.encode()),
                    Bytes::from(origin_value(&fresh.epoch, server)),
                ],
            )
            .await?;
        Ok(started == 1)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn relink_requested(&self) -> Arc<Notify> {
        self.relink.clone()
    }

    /// Wakes the supervisor if a connection of the link has closed.
    fn notice_failure(&self) {
        if self
            .link
            .load()
            .as_ref()
            .is_some_and(|link| !link.is_alive())
        {
            self.relink.notify_one();
        }
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
            return Either::Left(std::future::ready(Err(breaker_open())));
        }
        Either::Right(operation.map(|result| {
            self.breaker.record(result.is_ok());
            if result.is_err() {
                self.notice_failure();
            }
            result
        }))
    }

    /// Closes the link and stops keeping it.
    pub async fn quit(&self) {
        self.closed.store(true, Ordering::Release);
        self.relink.notify_one();
        self.server.store(None);
        if let Some(link) = self.link.swap(None) {
            let _ = link.pool.quit().await;
        }
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

    /// Hash-tagged with the meta key's name, so both live in one Cluster slot.
    pub fn origin_key(&self) -> String {
        format!("{{{}:meta}}:origin", self.prefix)
    }

    /// Hash-tagged with the meta key's name, so both live in one Cluster slot.
    pub fn database_key(&self) -> String {
        format!("{{{}:meta}}:database", self.prefix)
    }

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
    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Bytes>>, CacheError> {
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

    /// Deletes an entry only if it still holds `seen`.
    pub async fn delete_entry_if_unchanged(
        &self,
        sku: &str,
        seen: Bytes,
    ) -> Result<bool, CacheError> {
        let client = self.client()?;
        let deleted: i64 = self
            .guarded(self.delete_if.evalsha_with_reload(
                &client,
                vec![self.entry_key(sku)],
                vec![seen],
            ))
            .await?;
        Ok(deleted == 1)
    }

    /// Stores a small JSON document beside the cache's keys (the last audit's counts).
    pub async fn put_note(&self, name: &str, value: String) -> Result<(), CacheError> {
        let client = self.client()?;
        self.guarded(client.set(
            format!("{}:note:{name}", self.prefix),
            value,
            None,
            None,
            false,
        ))
        .await
    }

    pub async fn note(&self, name: &str) -> Result<Option<String>, CacheError> {
        let client = self.client()?;
        self.guarded(client.get(format!("{}:note:{name}", self.prefix)))
            .await
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

    pub async fn read_meta(&self) -> Result<Option<Meta>, CacheError> {
        let client = self.client()?;
        let value: Option<Bytes> = self.guarded(client.get(self.meta_key())).await?;
        Ok(value.and_then(|v| Meta::decode(&v)))
    }

    /// The meta key, and the database history bound to its epoch (if any), in one round trip.
    pub async fn read_meta_with_history(
        &self,
    ) -> Result<(Option<Meta>, Option<String>), CacheError> {
        let client = self.client()?;
        let mut values: Vec<Option<Bytes>> = self
            .guarded(client.mget(vec![self.meta_key(), self.database_key()]))
            .await?;
        let bound = values.pop().flatten();
        let meta = values.pop().flatten().and_then(|v| Meta::decode(&v));
        let history = match (&meta, bound) {
            (Some(meta), Some(bound)) => std::str::from_utf8(&bound)
                .ok()
                .and_then(|text| text.split_once('|'))
                .filter(|(epoch, _)| *epoch == meta.epoch.as_str())
                .map(|(_, history)| history.to_owned()),
            _ => None,
        };
        if let (Some(meta), Some(history)) = (&meta, &history) {
            self.remember_history(&meta.epoch, history);
        }
        Ok((meta, history))
    }

    /// The database history (`<system identifier>/<timeline>`) `epoch` is bound to: from
    /// memory (a binding never changes), else from Redis. `None` if `epoch` is not current or
    /// not bound yet.
    pub async fn bound_history(&self, epoch: &Epoch) -> Result<Option<Arc<str>>, CacheError> {
        if let Some(bound) = self.bound.load().as_deref()
            && bound.0 == *epoch
        {
            return Ok(Some(bound.1.clone()));
        }
        let (meta, history) = self.read_meta_with_history().await?;
        Ok(match (meta, history) {
            (Some(meta), Some(history)) if meta.epoch == *epoch => Some(history.into()),
            _ => None,
        })
    }

    /// The WAL timeline of the database history `epoch` is bound to (see
    /// [`Cache::bound_history`]).
    pub async fn bound_timeline(&self, epoch: &Epoch) -> Result<Option<u32>, CacheError> {
        Ok(self
            .bound_history(epoch)
            .await?
            .and_then(|history| timeline_of(&history)))
    }

    fn remember_history(&self, epoch: &Epoch, history: &str) {
        self.bound
            .store(Some(Arc::new((epoch.clone(), Arc::from(history)))));
    }

    /// Binds `epoch` to the database `history` unless it is bound already. `false` if it is
    /// bound to another history, or is no longer the current epoch.
    pub async fn bind_history(&self, epoch: &Epoch, history: &str) -> Result<bool, CacheError> {
        let client = self.client()?;
        let bound: i64 = self
            .guarded(self.bind_history.evalsha_with_reload(
                &client,
                vec![self.meta_key(), self.database_key()],
                vec![epoch.as_str().to_owned(), history.to_owned()],
            ))
            .await?;
        if bound == 1 {
            self.remember_history(epoch, history);
        }
        Ok(bound == 1)
    }

    /// Ends the epoch `seen` (if it is still current) and starts a new one, its high-water
    /// mark not known yet: for a database history the old epoch does not describe. `false` if
    /// `seen` was no longer current.
    pub async fn replace_epoch(&self, seen: &Meta) -> Result<bool, CacheError> {
        let link = self.link.load_full().ok_or_else(no_link)?;
        self.restart_epoch_on(
            link.client(),
            Some(Bytes::from(seen.encode())),
            &link.server,
        )
        .await
    }

    /// Starts a new epoch if none exists (its high-water mark still unknown: zero), on the
    /// data set of the current link. The caller then raises the mark to a primary WAL position
    /// read *after* this call, which covers every write acknowledged before; writes
    /// acknowledged after it raise the mark themselves.
    pub async fn start_epoch(&self) -> Result<(), CacheError> {
        let link = self.link.load_full().ok_or_else(no_link)?;
        self.restart_epoch_on(link.client(), None, &link.server)
            .await?;
        Ok(())
    }

    /// Raises the high-water mark of `epoch`, if it is still the current one, to `lsn` (never
    /// lowers it). An error if `epoch` is not the current one: what was stamped with it is
    /// not served, and the mark does not cover `lsn`.
    pub async fn raise_hwm_of(&self, epoch: &Epoch, lsn: Lsn) -> Result<(), CacheError> {
        let client = self.client()?;
        let raised = self
            .bump
            .evalsha_with_reload::<i64, _, _>(
                &client,
                vec![self.meta_key()],
                vec![entry::pad_lsn(lsn), epoch.as_str().to_owned()],
            )
            .await?;
        mark_raised(raised)
    }

    /// Counts the links adopted so far: a new value means a new connection to Redis, possibly
    /// to another data set than the last one.
    pub fn link_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Raises the high-water mark to `lsn` (never lowers it; no-op without an epoch).
    pub async fn raise_hwm(&self, lsn: Lsn) -> Result<(), CacheError> {
        let client = self.client()?;
        self.bump
            .evalsha_with_reload::<i64, _, _>(
                &client,
                vec![self.meta_key()],
                vec![entry::pad_lsn(lsn)],
            )
            .await?;
        Ok(())
    }
}

/// The origin recorded with `epoch`: the data set it was started on.
fn origin_value(epoch: &Epoch, server: &ServerIdentity) -> String {
    format!("{}|{}", epoch.as_str(), server.data_set())
}

/// A coalescer ([`crate::coalesce`]) whose batches run on a cache while it exists; once it is
/// gone (or the coalescer stopped), each read is answered that the cache is closed.
struct CacheCoalescer<Q, A>(crate::coalesce::Coalescer<Q, Result<A, CacheError>>);

impl<Q: Send + 'static, A: Send + 'static> CacheCoalescer<Q, A> {
    fn start<R, F>(
        cache: std::sync::Weak<Cache>,
        max_batch: usize,
        in_flight: usize,
        run: R,
    ) -> Self
    where
        R: Fn(Arc<Cache>, Vec<Q>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<Result<A, CacheError>>> + Send + 'static,
    {
        Self(crate::coalesce::Coalescer::start(
            max_batch,
            in_flight,
            move |batch: Vec<Q>| match cache.upgrade() {
                Some(cache) => Either::Left(run(cache, batch)),
                None => Either::Right(std::future::ready(
                    batch.iter().map(|_| Err(closed())).collect(),
                )),
            },
        ))
    }

    /// `query`'s answer from whichever batch takes it.
    async fn ask(&self, query: Q) -> Result<A, CacheError> {
        self.0.ask(query).await.unwrap_or_else(|| Err(closed()))
    }
}

fn closed() -> CacheError {
    CacheError::new(fred::error::ErrorKind::Canceled, "the cache is closed")
}

fn breaker_open() -> CacheError {
    CacheError::new(
        fred::error::ErrorKind::Canceled,
        "Redis is failing; the cache breaker is open",
    )
}

/// The timeline of a database history as bound to an epoch (`<system identifier>/<timeline>`).
fn timeline_of(history: &str) -> Option<u32> {
    history.rsplit_once('/')?.1.parse().ok()
}

/// The high-water mark script's answer as a result: 1 when the mark covers the position.
fn mark_raised(answer: i64) -> Result<(), CacheError> {
    if answer == 1 {
        Ok(())
    } else {
        Err(CacheError::new(
            fred::error::ErrorKind::Unknown,
            "the cache epoch ended before its high-water mark was raised",
        ))
    }
}

/// Whether the server refused the connection's credentials (a wrong password or user, or a
/// server that wants one), as opposed to not answering.
fn is_refusal(error: &CacheError) -> bool {
    let details = error.details();
    *error.kind() == fred::error::ErrorKind::Auth
        || ["WRONGPASS", "NOAUTH", "NOPERM"]
            .iter()
            .any(|code| details.contains(code))
}

fn no_link() -> CacheError {
    CacheError::new(fred::error::ErrorKind::IO, "no checked connection to Redis")
}
