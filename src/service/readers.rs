//! Reader leases: an instance serves a cache only while it knows every SKU that cache is owed,
//! on every instance (docs/reader-leases.md, where the safety argument is).
//!
//! Every [`RENEW_INTERVAL`], and whenever the primary announces a change, this instance renews
//! its row in `cache_readers` for each cache and reads that cache's whole *owed book*
//! (`cache_repairs`). Reads never serve an owed SKU from the cache, nor from a replica row that
//! the cache's fence or high-water mark would call fresh. A renewal grants a lease of
//! [`ReaderSettings::lease`] counted from when it was sent; without a lease the cache is not
//! used at all. A write whose cache update failed records what it missed and is acknowledged
//! only once every other reader has applied a book that includes it, or its lease has ended
//! ([`SizeService::confirm_owed`]).
//!
//! The same renewal reads the cache's *authoritative epoch*: only that data set is served, and
//! only an update landed in it counts. A new epoch is made authoritative, and waits until every
//! other reader knows, before it can be used ([`SizeService::make_authoritative`]): after a
//! Redis failover that leaves the old master running (split brain), no instance still on it
//! serves it, or acknowledges a write that only it holds.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use sqlx::PgConnection;
use tokio::sync::Notify;

use super::{ServiceError, SizeService, StoreError};
use crate::cache::{Cache, CacheRole, Epoch};
use crate::config::ReaderSettings;
use crate::db::lease::bounded;
use crate::db::readers::{self, Book};
use crate::domain::{Lsn, StoredSize};

/// How often each lease is renewed.
pub const RENEW_INTERVAL: Duration = Duration::from_millis(250);
/// How often a write waiting for the other readers looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// This instance as a reader of its caches.
pub struct Readers {
    /// Names this instance in `cache_readers` (new on every start).
    id: String,
    settings: ReaderSettings,
    /// Per cache, in [`CacheRole::index`] order.
    caches: [Lease; 2],
    /// A renewal is wanted now (a change was announced).
    wake: Notify,
}

/// One cache's lease and the owed book it was granted with.
#[derive(Default)]
struct Lease {
    /// Until when the cache may be served ([`since_origin`]); 0: no lease.
    until: AtomicU64,
    /// SKU → the version owed, as the last renewal read it.
    book: Mutex<HashMap<String, i64>>,
    /// Fast path: reads skip the lock while the book is empty.
    owed: AtomicUsize,
    /// How far the applied book reaches, and the primary's timeline it was read on (published
    /// by the next renewal).
    applied: Mutex<(Lsn, i32)>,
    /// The cache's authoritative epoch, as the last renewal read it: the only one served.
    authority: ArcSwapOption<String>,
    /// The link generation ([`crate::cache::Cache::link_generation`]) whose data set was last
    /// checked against the authority ([`SizeService::reconcile_epochs`]).
    reconciled: AtomicU64,
    /// A new epoch is being started after a `TRUNCATE` ended the authoritative one.
    starting_afresh: AtomicBool,
}

impl Readers {
    pub fn new(settings: ReaderSettings) -> Self {
        Self {
            id: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            settings,
            caches: [Lease::default(), Lease::default()],
            wake: Notify::new(),
        }
    }

    /// Whether this instance may serve from `cache` now.
    pub fn has_lease(&self, cache: CacheRole) -> bool {
        since_origin(Instant::now()) < self.caches[cache.index()].until.load(Ordering::Acquire)
    }

    /// Whether `cache` is owed a version of `sku` (on some instance, its update failed).
    pub fn is_owed(&self, cache: CacheRole, sku: &str) -> bool {
        let lease = &self.caches[cache.index()];
        lease.owed.load(Ordering::Acquire) > 0
            && lease.book.lock().is_ok_and(|book| book.contains_key(sku))
    }

    /// Whether this instance, under its lease, knows `epoch` to be the authoritative epoch of
    /// `cache`: the one readers serve, and updates must land in.
    pub fn is_authority(&self, cache: CacheRole, epoch: &Epoch) -> bool {
        self.has_lease(cache) && self.names_authority(cache, epoch)
    }

    /// Whether the last renewal found the authoritative epoch of `cache` ended by a
    /// `TRUNCATE` of the table (the migration `every_writer_seen`): nothing cached before it
    /// may be served, and a new epoch must begin.
    fn authority_ended(&self, cache: CacheRole) -> bool {
        self.caches[cache.index()]
            .authority
            .load()
            .as_deref()
            .is_some_and(|authority| readers::names_no_epoch(authority))
    }

    fn names_authority(&self, cache: CacheRole, epoch: &Epoch) -> bool {
        self.caches[cache.index()]
            .authority
            .load()
            .as_deref()
            .is_some_and(|authority| authority == epoch.as_str())
    }

    /// This instance recorded `epoch` as the authority, and every other reader knows.
    fn set_authority(&self, cache: CacheRole, epoch: &Epoch) {
        self.caches[cache.index()]
            .authority
            .store(Some(Arc::new(epoch.as_str().to_owned())));
    }

    /// A change was announced: renew now.
    pub fn renew_soon(&self) {
        self.wake.notify_one();
    }

    /// Takes `book`, read by a renewal sent at `sent`; grants the lease if the row existed.
    fn apply(&self, cache: CacheRole, book: Book, sent: Instant) {
        let lease = &self.caches[cache.index()];
        if !book.registered {
            // The row was made now (or had gone) or the ledger lapsed: a writer may have been
            // acknowledged without this reader.
            lease.until.store(0, Ordering::Release);
        }
        if let (Ok(mut applied), Ok(mut owed)) = (lease.applied.lock(), lease.book.lock()) {
            lease.owed.store(book.owed.len(), Ordering::Release);
            *owed = book.owed;
            *applied = (book.visible, book.timeline);
            lease.authority.store(book.authority.map(Arc::new));
        }
        if book.registered {
            lease
                .until
                .fetch_max(since_origin(sent + self.settings.lease), Ordering::AcqRel);
        }
    }

    /// This instance has installed these versions into `cache` and cleared their records:
    /// they are no longer owed here (the next renewal's book says so for every instance).
    pub fn settled(&self, cache: CacheRole, done: &[(String, i64)]) {
        let lease = &self.caches[cache.index()];
        if lease.owed.load(Ordering::Acquire) == 0 {
            return;
        }
        if let Ok(mut book) = lease.book.lock() {
            for (sku, version) in done {
                if book.get(sku).is_some_and(|owed| owed <= version) {
                    book.remove(sku);
                }
            }
            lease.owed.store(book.len(), Ordering::Release);
        }
    }

    fn applied(&self, cache: CacheRole) -> (Lsn, i32) {
        self.caches[cache.index()]
            .applied
            .lock()
            .map_or((Lsn::ZERO, 0), |applied| *applied)
    }

    /// Ends every lease at once (on shutdown, before the rows go).
    fn end(&self) {
        for lease in &self.caches {
            lease.until.store(0, Ordering::Release);
        }
    }
}

/// A fixed instant leases are counted from, so that one fits in an atomic.
fn since_origin(at: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(at.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// How long after a reader's lease has ended by its own clock a writer's clock may say so: a
/// tenth for clocks that run at different rates, and 100 ms.
fn margin(lease: Duration) -> Duration {
    lease / 10 + Duration::from_millis(100)
}

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

    /// For each cache whose authoritative epoch a `TRUNCATE` ended: replaces the epoch Redis
    /// holds with a new one, made authoritative once every other instance knows. Runs apart
    /// from the renewals, which must go on meanwhile (the other instances wait for this one's
    /// renewal, or its lease to end, before theirs is authoritative); one at a time per cache.
    fn start_ended_epochs_afresh(self: &Arc<Self>) {
        for (role, _) in self.ledgers() {
            let lease = &self.readers.caches[role.index()];
            if !self.readers.authority_ended(role)
                || lease.starting_afresh.swap(true, Ordering::AcqRel)
            {
                continue;
            }
            let service = self.clone();
            tokio::spawn(async move {
                let cache = match role {
                    CacheRole::Primary => service.cache.as_ref(),
                    CacheRole::Secondary => match &service.secondary {
                        Some(secondary) => secondary.cache.as_ref(),
                        None => return,
                    },
                };
                let restarted = match cache.read_meta().await {
                    // No epoch: the next read starts one, authoritative first.
                    Ok(None) => Ok(()),
                    Ok(Some(seen)) => service.take_over(cache, &seen).await,
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
                service.readers.caches[role.index()]
                    .starting_afresh
                    .store(false, Ordering::Release);
            });
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

    /// After a write's update of the primary cache failed: records what it missed, durably
    /// and for every instance, and returns once every other reader of the cache treats those
    /// SKUs as owed or has no lease from before the record. A write is acknowledged only then
    /// (see docs/reader-leases.md for why that is enough).
    pub(super) async fn confirm_owed(
        &self,
        rows: &[StoredSize],
        xact: Option<i64>,
    ) -> Result<(), ServiceError> {
        let role = CacheRole::Primary;
        let ledger = self.ledger(role);
        let owed: Vec<(&str, i64)> = rows.iter().map(|r| (r.sku.as_str(), r.version)).collect();
        let xacts: Vec<i64> = xact.into_iter().collect();
        let deadline = Instant::now() + self.readers.settings.ack_timeout;
        let recorded = bounded!(
            self.db.primary_reads(),
            self.readers.settings.ack_timeout,
            |conn| readers::owe_failed_write(conn, &ledger, &xacts, &owed)
        );
        let position = recorded.await.map_err(|error| {
                tracing::warn!(%error, "could not record a failed cache update for the other instances");
                ServiceError::Unacknowledged
            })?;
        if self
            .wait_covered(&ledger, position, Instant::now(), deadline, None)
            .await
        {
            return Ok(());
        }
        tracing::warn!(
            skus = rows.len(),
            "a cache update failed and not every instance learned of it in time; answering 503"
        );
        Err(ServiceError::Unacknowledged)
    }

    /// Waits until every other reader of `ledger` has applied a book that includes what was
    /// committed before `position` (read at `recorded_at`), or its lease has ended; `false` if
    /// that is not known by `deadline`.
    async fn wait_covered(
        &self,
        ledger: &str,
        position: Lsn,
        recorded_at: Instant,
        deadline: Instant,
        mut conn: Option<&mut PgConnection>,
    ) -> bool {
        self.readers.renew_soon();
        while Instant::now() < deadline {
            let uncovered = match conn.as_deref_mut() {
                Some(conn) => readers::uncovered(conn, ledger, &self.readers.id, position).await,
                None => {
                    bounded!(
                        self.db.primary_reads(),
                        self.db.background_deadline(),
                        |conn| readers::uncovered(conn, ledger, &self.readers.id, position)
                    )
                    .await
                }
            };
            // A reader that has not applied the record is waited out: its lease came from a
            // renewal sent before the record existed.
            if let Ok(uncovered) = uncovered
                && uncovered
                    .iter()
                    .all(|(_, lease)| recorded_at.elapsed() >= *lease + margin(*lease))
            {
                return true;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        false
    }

    /// Records `epoch` as the authoritative epoch of the cache `role` and waits until every
    /// other reader knows (or its lease ended): from then on none serves the data set it used
    /// before, and none counts an update of it as landed. `false` if that cannot be had now.
    /// Runs on `conn` alone (which holds the epoch lock).
    pub(super) async fn make_authoritative(
        &self,
        role: CacheRole,
        epoch: &Epoch,
        conn: &mut PgConnection,
    ) -> Result<bool, StoreError> {
        let ledger = self.ledger(role);
        let position = readers::record_epoch(conn, &ledger, epoch.as_str()).await?;
        let recorded_at = Instant::now();
        let lease = self.readers.settings.lease;
        let deadline = recorded_at + lease + margin(lease) + Duration::from_secs(1);
        if !self
            .wait_covered(&ledger, position, recorded_at, deadline, Some(conn))
            .await
        {
            return Ok(false);
        }
        self.readers.set_authority(role, epoch);
        Ok(true)
    }

    /// After this instance linked to Redis again: if the data set it reaches holds an epoch
    /// other than the authoritative one, the deployment used another data set meanwhile (a
    /// promoted replica, while this one was cut off), and this one may lack writes
    /// acknowledged there. Its epoch is replaced, and the new one made authoritative, before
    /// it is served. An instance that stayed linked to such a data set does not take it over:
    /// it serves nothing from it, and counts no update of it as landed.
    async fn reconcile_epochs(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Fence;

    fn book(visible: u64, owed: &[(&str, i64)], registered: bool) -> Book {
        Book {
            visible: Lsn::new(visible),
            timeline: 1,
            authority: Some("E".to_owned()),
            owed: owed.iter().map(|(s, v)| ((*s).to_owned(), *v)).collect(),
            registered,
        }
    }

    fn readers() -> Readers {
        Readers::new(ReaderSettings {
            lease: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
        })
    }

    #[test]
    fn a_new_row_grants_no_lease_and_the_next_renewal_does() {
        let readers = readers();
        assert!(!readers.has_lease(CacheRole::Primary));
        readers.apply(CacheRole::Primary, book(10, &[], false), Instant::now());
        assert!(!readers.has_lease(CacheRole::Primary));
        readers.apply(CacheRole::Primary, book(20, &[], true), Instant::now());
        assert!(readers.has_lease(CacheRole::Primary));
        assert!(!readers.has_lease(CacheRole::Secondary));
    }

    #[test]
    fn a_lease_counts_from_when_its_renewal_was_sent() {
        let readers = readers();
        let long_ago = Instant::now() - Duration::from_secs(3);
        readers.apply(CacheRole::Primary, book(10, &[], true), long_ago);
        assert!(!readers.has_lease(CacheRole::Primary));
    }

    #[test]
    fn the_book_names_the_owed_skus_and_is_replaced_whole() {
        let readers = readers();
        readers.apply(
            CacheRole::Primary,
            book(10, &[("A", 2)], true),
            Instant::now(),
        );
        assert!(readers.is_owed(CacheRole::Primary, "A"));
        assert!(!readers.is_owed(CacheRole::Primary, "B"));
        assert!(!readers.is_owed(CacheRole::Secondary, "A"));
        readers.apply(
            CacheRole::Primary,
            book(20, &[("B", 1)], true),
            Instant::now(),
        );
        assert!(!readers.is_owed(CacheRole::Primary, "A"));
        assert!(readers.is_owed(CacheRole::Primary, "B"));
        assert_eq!(readers.applied(CacheRole::Primary), (Lsn::new(20), 1));
    }

    #[test]
    fn a_repair_settles_what_it_installed_and_nothing_newer() {
        let readers = readers();
        readers.apply(
            CacheRole::Primary,
            book(10, &[("A", 2), ("B", 5)], true),
            Instant::now(),
        );
        readers.settled(CacheRole::Primary, &[("A".into(), 2), ("B".into(), 4)]);
        assert!(!readers.is_owed(CacheRole::Primary, "A"));
        assert!(readers.is_owed(CacheRole::Primary, "B"));
    }

    #[test]
    fn only_the_authoritative_epoch_is_served_and_only_under_a_lease() {
        let readers = readers();
        let epoch = |name: &str| Fence::decode(format!("1|{name}").as_bytes()).unwrap().epoch;
        assert!(!readers.is_authority(CacheRole::Primary, &epoch("E")));
        readers.apply(CacheRole::Primary, book(10, &[], true), Instant::now());
        assert!(readers.is_authority(CacheRole::Primary, &epoch("E")));
        assert!(!readers.is_authority(CacheRole::Primary, &epoch("F")));
        let none = Book {
            authority: None,
            ..book(20, &[], true)
        };
        readers.apply(CacheRole::Primary, none, Instant::now());
        assert!(!readers.is_authority(CacheRole::Primary, &epoch("E")));
        readers.apply(CacheRole::Primary, book(30, &[], true), Instant::now());
        readers.end();
        assert!(!readers.is_authority(CacheRole::Primary, &epoch("E")));
    }

    #[test]
    fn a_renewal_that_finds_its_row_gone_ends_the_lease() {
        let readers = readers();
        readers.apply(CacheRole::Primary, book(10, &[], true), Instant::now());
        assert!(readers.has_lease(CacheRole::Primary));
        readers.apply(CacheRole::Primary, book(20, &[], false), Instant::now());
        assert!(!readers.has_lease(CacheRole::Primary));
    }
}
