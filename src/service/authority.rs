//! The deployment's authoritative cache epochs, kept by the lease renewals
//! ([`super::readers`]): an epoch Redis holds that is not the authority is replaced before it
//! is served, and one a `TRUNCATE` ended starts afresh.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Background, SizeService, StoreError};
use crate::cache::{Cache, CacheRole};

impl SizeService {
    /// For each cache whose authoritative epoch a `TRUNCATE` ended: replaces the epoch Redis
    /// holds with a new one, made authoritative once every other instance knows. Runs apart
    /// from the renewals, which must go on meanwhile (the other instances wait for this one's
    /// renewal, or its lease to end, before theirs is authoritative); one at a time per cache.
    /// Stopped with the rest of `background`, wherever it awaits.
    pub(super) fn start_ended_epochs_afresh(self: &Arc<Self>, background: &Background) {
        for (role, _) in self.ledgers() {
            let lease = &self.readers.caches[role.index()];
            if !self.readers.authority_ended(role)
                || lease.starting_afresh.swap(true, Ordering::AcqRel)
            {
                continue;
            }
            let service = self.clone();
            background.spawn(|stop| async move {
                stop.run_until_cancelled(service.start_afresh(role)).await;
            });
        }
    }

    /// Replaces the epoch of the cache `role` names, which a `TRUNCATE` ended, and lets the
    /// next renewal start another if this fails.
    async fn start_afresh(&self, role: CacheRole) {
        let cache = match role {
            CacheRole::Primary => self.cache.as_ref(),
            CacheRole::Secondary => match &self.secondary {
                Some(secondary) => secondary.cache.as_ref(),
                None => return,
            },
        };
        let restarted = match cache.read_meta().await {
            // No epoch: the next read starts one, authoritative first.
            Ok(None) => Ok(()),
            Ok(Some(seen)) => self.take_over(cache, &seen).await,
            Err(error) => Err(error.into()),
        };
        match restarted {
            Ok(()) => tracing::warn!(
                cache = cache.prefix(),
                "the table was truncated; the cache starts afresh"
            ),
            Err(error) => {
                tracing::warn!(%error, cache = cache.prefix(), "could not start the cache afresh after a truncate; retrying")
            }
        }
        self.readers.caches[role.index()]
            .starting_afresh
            .store(false, Ordering::Release);
    }

    /// After this instance linked to Redis again: if the data set it reaches holds an epoch
    /// other than the authoritative one, the deployment used another data set meanwhile (a
    /// promoted replica, while this one was cut off), and this one may lack writes
    /// acknowledged there. Its epoch is replaced, and the new one made authoritative, before
    /// it is served. An instance that stayed linked to such a data set does not take it over:
    /// it serves nothing from it, and counts no update of it as landed.
    pub(super) async fn reconcile_epochs(&self) {
        for (role, cache) in self.ledgers() {
            let generation = cache.link_generation();
            let lease = &self.readers.caches[role.index()];
            if generation == lease.reconciled.load(Ordering::Acquire)
                || !self.readers.has_lease(role)
            {
                continue;
            }
            let meta = match cache.read_meta().await {
                Ok(Some(meta)) if meta.is_complete() => meta,
                // No epoch yet, or one still being completed: the next read completes it,
                // authoritative first.
                _ => continue,
            };
            if !self.readers.is_authority(role, &meta.epoch) {
                match self.take_over(cache, &meta).await {
                    Ok(()) => {}
                    Err(error) => {
                        tracing::warn!(%error, cache = cache.prefix(), "could not replace a cache epoch that is not the deployment's");
                        continue;
                    }
                }
            }
            lease.reconciled.store(generation, Ordering::Release);
        }
    }

    async fn take_over(&self, cache: &Cache, seen: &crate::cache::Meta) -> Result<(), StoreError> {
        if cache.replace_epoch(seen).await? {
            tracing::warn!(
                cache = cache.prefix(),
                "linked to a Redis data set the deployment was not using; new cache epoch"
            );
        }
        self.complete_epoch(cache).await.map(drop)
    }
}
