//! Keeping this instance's reader leases ([`super::readers`]): the renewals, joining the
//! readers before serving and leaving them on shutdown.

use super::SizeService;
use super::readers::RENEW_INTERVAL;
use crate::cache::CacheRole;
use crate::db::lease::bounded;
use crate::db::readers;
use std::time::Instant;

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

    /// Renews the leases every [`RENEW_INTERVAL`], and at once, twice, when a change is
    /// announced: the second renewal publishes that the book with the change is applied.
    pub async fn keep_leases(self: std::sync::Arc<Self>) {
        let mut ticker = tokio::time::interval(RENEW_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.renew_leases().await,
                () = self.readers.wake.notified() => {
                    self.renew_leases().await;
                    self.renew_leases().await;
                }
            }
            self.reconcile_epochs().await;
            self.start_ended_epochs_afresh();
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

    /// Removes the rows of readers long gone (see [`readers::forget_gone`]).
    pub(super) async fn forget_gone_readers(&self) {
        let forgotten = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| readers::forget_gone(conn)
        );
        match forgotten.await {
            Ok(0) => {}
            Ok(gone) => tracing::info!(gone, "forgot the reader leases of instances long gone"),
            Err(error) => tracing::debug!(%error, "could not forget lapsed reader leases"),
        }
    }
}
