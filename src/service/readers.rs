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
//! ([`SizeService::confirm_owed`](super::SizeService::confirm_owed)).
//!
//! The same renewal reads the cache's *authoritative epoch*: only that data set is served, and
//! only an update landed in it counts. A new epoch is made authoritative, and waits until every
//! other reader knows, before it can be used ([`SizeService::make_authoritative`](super::SizeService::make_authoritative)): after a
//! Redis failover that leaves the old master running (split brain), no instance still on it
//! serves it, or acknowledges a write that only it holds.
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 10 (reader leases).

//!
//! This module holds what the last renewal learned; the renewals themselves are in
//! [`super::leases`], the waits for the other readers in [`super::acknowledge`], and the
//! authoritative epoch's upkeep in [`super::authority`].

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use crate::cache::{CacheRole, Epoch};
use crate::config::ReaderSettings;
use crate::db::readers::{self, Book};
use crate::domain::Lsn;

/// How often each lease is renewed.
pub const RENEW_INTERVAL: Duration = Duration::from_millis(250);

/// This instance as a reader of its caches.
pub struct Readers {
    /// Names this instance in `cache_readers` (new on every start).
    pub(super) id: String,
    pub(super) settings: ReaderSettings,
    /// Per cache, in [`CacheRole::index`] order.
    pub(super) caches: [Lease; 2],
    /// A renewal is wanted now (a change was announced).
    pub(super) wake: Notify,
}

/// One cache's lease and the owed book it was granted with.
#[derive(Default)]
pub(super) struct Lease {
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
    /// checked against the authority ([`SizeService::reconcile_epochs`](super::SizeService::reconcile_epochs)).
    pub(super) reconciled: AtomicU64,
    /// A new epoch is being started after a `TRUNCATE` ended the authoritative one.
    pub(super) starting_afresh: AtomicBool,
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
    pub(super) fn authority_ended(&self, cache: CacheRole) -> bool {
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
    pub(super) fn set_authority(&self, cache: CacheRole, epoch: &Epoch) {
        self.caches[cache.index()]
            .authority
            .store(Some(Arc::new(epoch.as_str().to_owned())));
    }

    /// A change was announced: renew now.
    pub fn renew_soon(&self) {
        self.wake.notify_one();
    }

    /// Takes `book`, read by a renewal sent at `sent`; grants the lease if the row existed.
    pub(super) fn apply(&self, cache: CacheRole, book: Book, sent: Instant) {
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

    pub(super) fn applied(&self, cache: CacheRole) -> (Lsn, i32) {
        self.caches[cache.index()]
            .applied
            .lock()
            .map_or((Lsn::ZERO, 0), |applied| *applied)
    }

    /// Ends every lease at once (on shutdown, before the rows go).
    pub(super) fn end(&self) {
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
