//! The cache's epochs: the meta key (`<epoch>|<hwm>`), the data set an epoch was started on,
//! and the database history it is bound to (see the module doc of [`super`]).
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 4 (Redis losing its data).

use std::sync::Arc;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::KeysInterface;

use super::entry::{self, Epoch, Meta};
use super::{Cache, CacheError, ServerIdentity, no_link};
use crate::domain::Lsn;

impl Cache {
    /// Replaces the epoch with a new one whose high-water mark is not known yet, if the meta
    /// key still holds `seen`. The caller (or the next read) then raises the mark from the
    /// primary.
    pub(super) async fn restart_epoch_on(
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

    pub(super) fn remember_history(&self, epoch: &Epoch, history: &str) {
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
pub(super) fn origin_value(epoch: &Epoch, server: &ServerIdentity) -> String {
    format!("{}|{}", epoch.as_str(), server.data_set())
}

/// The timeline of a database history as bound to an epoch (`<system identifier>/<timeline>`).
fn timeline_of(history: &str) -> Option<u32> {
    history.rsplit_once('/')?.1.parse().ok()
}

/// The high-water mark script's answer as a result: 1 when the mark covers the position.
pub(super) fn mark_raised(answer: i64) -> Result<(), CacheError> {
    if answer == 1 {
        Ok(())
    } else {
        Err(CacheError::new(
            fred::error::ErrorKind::Unknown,
            "the cache epoch ended before its high-water mark was raised",
        ))
    }
}
