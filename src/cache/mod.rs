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
pub mod entry;
mod epochs;
mod fills;
mod install;
pub mod link;
mod reads;
mod relink;
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
use fred::types::scripts::Script;
use futures_util::FutureExt;
use futures_util::future::Either;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Notify;

pub use crate::infra::breaker::Breaker;
pub use entry::{Entry, Epoch, Fence, Meta};
pub use install::Install;
pub use link::ServerIdentity;

use crate::config::CacheSettings;

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
}

/// A coalescer ([`crate::infra::coalesce`]) whose batches run on a cache while it exists; once it is
/// gone (or the coalescer stopped), each read is answered that the cache is closed.
struct CacheCoalescer<Q, A>(crate::infra::coalesce::Coalescer<Q, Result<A, CacheError>>);

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
        Self(crate::infra::coalesce::Coalescer::start(
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

fn no_link() -> CacheError {
    CacheError::new(fred::error::ErrorKind::IO, "no checked connection to Redis")
}
