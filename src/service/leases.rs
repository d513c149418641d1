//! Keeping this instance's reader leases ([`super::readers`]): the renewals, joining the
//! readers before serving and leaving them on shutdown.

use std::sync::Arc;
use std::time::Instant;

use super::readers::RENEW_INTERVAL;
use super::{Background, SizeService};
use crate::cache::CacheRole;
use crate::db::lease::bounded;
use crate::db::readers;
use crate::infra::background::{Worker, every};

impl SizeService {
    /// Renews every lease once. Errors are logged, not returned: the lease simply runs out.
    pub async fn renew_leases(&self) {
        for (role, _) in self.ledgers() {
            let ledger = self.ledger(role);
            let sent = Instant::now();
            let renewed = readers::renew(
                self.db.readers(),
                &ledger,
                &self.readers.id,
                self.readers.applied(role),
                self.readers.settings.lease,
            )
            .await;
            match renewed {
                Ok(book) => self.readers.apply(role, book, sent),
                Err(error) => {
                    tracing::debug!(%error, cache = %ledger, "could not renew the reader lease");
                }
            }
        }
    }

    /// Takes the first leases before serving: the first renewal registers this instance, the
    /// second grants them.
    pub async fn join_readers(&self) {
        self.renew_leases().await;
        self.renew_leases().await;
        if !self.readers.has_lease(CacheRole::Primary) {
            tracing::warn!(
                "no reader lease yet (is the primary reachable?); the cache is not used until one is renewed"
            );
        }
    }

    /// Stops serving from the caches and removes this instance's rows: writers stop waiting
    /// for it.
    pub async fn leave_readers(&self) {
        self.readers.end();
        let left = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| readers::leave(conn, &self.readers.id)
        );
        if let Err(error) = left.await {
            tracing::debug!(%error, "could not remove this instance's reader rows; they lapse");
        }
    }
}

/// Renews the reader leases every [`RENEW_INTERVAL`], and at once, twice, when a change is
/// announced: the second renewal publishes that the book with the change is applied. After
/// each round it replaces epochs that are not the deployment's, and starts afresh, apart, the
/// epochs a `TRUNCATE` ended.
pub struct LeaseRenewal {
    sizes: Arc<SizeService>,
    /// Where the epochs started afresh run: beside the renewals, stopped with them.
    background: Background,
}

impl LeaseRenewal {
    pub fn new(sizes: Arc<SizeService>, background: Background) -> Self {
        Self { sizes, background }
    }
}

impl Worker for LeaseRenewal {
    /// Renews. Dropped where it awaits, a renewal is harmless to lose: a lease not renewed
    /// runs out, and this instance leaves the readers right after anyway.
    async fn work(self) {
        let sizes = &self.sizes;
        let mut ticker = every(RENEW_INTERVAL);
        loop {
            tokio::select! {
                _ = ticker.tick() => sizes.renew_leases().await,
                () = sizes.readers.wake.notified() => {
                    sizes.renew_leases().await;
                    sizes.renew_leases().await;
                }
            }
            sizes.reconcile_epochs().await;
            sizes.start_ended_epochs_afresh(&self.background);
        }
    }
}
