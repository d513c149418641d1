//! Keeping the cache's link to Redis (see [`super::link`]): checking it, dropping it, and
//! adopting a new one only once its data set is the one the epoch was started on.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use fred::interfaces::{ClientLike, KeysInterface};
use tokio::sync::Notify;

use super::epochs::origin_value;
use super::{Cache, CacheError, Meta, link};

impl Cache {
    /// Keeps the link: `true` if it is healthy (or was just replaced by a checked one).
    pub(super) async fn check_link(&self) -> bool {
        if self.link_still_holds().await {
            return true;
        }
        self.drop_link();
        if self.is_closed() {
            return false;
        }
        let Some(opened) = self.open_link().await else {
            return false;
        };
        self.adopt_link(opened).await
    }

    /// Whether the current link is open and still reaches the data set it was checked
    /// against (a server that does not answer, paused or overloaded, is still the same one).
    async fn link_still_holds(&self) -> bool {
        let Some(link) = self.link.load_full() else {
            return false;
        };
        if !link.is_alive() {
            return false;
        }
        match link.identify_again().await {
            Err(_) => true,
            Ok(now) if link.same_data_set(&now) => {
                self.server.store(Some(Arc::new(now)));
                true
            }
            Ok(_) => {
                tracing::warn!(
                    cache = self.prefix(),
                    "the Redis server changed under an open connection (failover or resync)"
                );
                false
            }
        }
    }

    /// Drops the current link, if any: nothing may use it from here on. Its connections
    /// close in the background.
    fn drop_link(&self) {
        self.server.store(None);
        if let Some(old) = self.link.swap(None) {
            tokio::spawn(async move {
                let _ = old.pool.quit().await;
            });
        }
    }

    /// Opens a new link, and remembers whether the server refused its credentials.
    async fn open_link(&self) -> Option<link::Link> {
        match link::Link::open(&self.config, &self.settings, self.clustered).await {
            Ok(opened) => {
                self.refused.store(None);
                Some(opened)
            }
            Err(error) => {
                tracing::debug!(%error, "cannot connect to Redis yet");
                self.refused
                    .store(is_refusal(&error).then(|| Arc::new(error.details().to_owned())));
                None
            }
        }
    }

    /// Makes `opened` the current link once its data set is the epoch's ([`Cache::adopt`]);
    /// closes it instead if that fails, or if the cache was quit meanwhile.
    async fn adopt_link(&self, opened: link::Link) -> bool {
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

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(super) fn relink_requested(&self) -> Arc<Notify> {
        self.relink.clone()
    }

    /// Wakes the supervisor if a connection of the link has closed.
    pub(super) fn notice_failure(&self) {
        if self
            .link
            .load()
            .as_ref()
            .is_some_and(|link| !link.is_alive())
        {
            self.relink.notify_one();
        }
    }

    /// Counts the links adopted so far: a new value means a new connection to Redis, possibly
    /// to another data set than the last one.
    pub fn link_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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
