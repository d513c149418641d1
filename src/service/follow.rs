//! Following every change to the table, whoever makes it (docs/consistency.md, "Writers other
//! than the service").
//!
//! The primary records each committed change for every cache registered as a follower (see
//! [`crate::db::changes`]); the repair worker applies the records ([`super::repair`]). This
//! module keeps this instance's caches registered, and listens for the primary's notification
//! that another writer's change was recorded, so the worker applies it at once rather than
//! at its next pass.
//!
//! A cache whose registration lapsed (no instance renewed it for 45 s: all were down, or cut
//! off from the primary) may have missed changes, and nothing tells which: its epoch is
//! replaced, in the same database transaction as the renewal that finds the lapse, so that a
//! renewal is never committed before the stale entries are disowned.
//!
//! The invariants kept here: docs/consistency.md, "How reads stay fresh", 9 (every change reaches the cache).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::{SizeService, StoreError};
use crate::cache::Cache;
use crate::db::lease::bounded;
use crate::db::{changes, readers};
use crate::infra::background::{Worker, every};

/// How often the registration is renewed. Well under the 45 s after which it lapses.
const RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// Renewals between two clean-ups of ledgers nobody follows any more.
const RENEWALS_PER_CLEANUP: u32 = 12;
/// How long the listener waits before reconnecting after an error.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How long the listener's connection may be silent before it is asked whether it answers.
const LISTENER_CHECK: Duration = Duration::from_secs(2);

impl SizeService {
    /// Registers (or renews) this instance's caches as followers of the table; a cache whose
    /// registration had lapsed gets a new epoch first. Called before the service serves, and
    /// then every few seconds.
    pub async fn follow_changes(&self) -> Result<(), StoreError> {
        // Twice the background deadline: a lapsed cache's new epoch waits for the readers.
        let deadline = self.db.background_deadline() * 2;
        bounded!(self.db.background(), deadline, |conn| self
            .follow_changes_on(conn))
        .await
    }

    async fn follow_changes_on(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let ledgers: Vec<String> = self.ledgers().map(|(role, _)| self.ledger(role)).collect();
        let mut tx = sqlx::Connection::begin(conn).await?;
        let lapsed = changes::follow(&mut *tx, &ledgers).await?;
        for (role, cache) in self.ledgers() {
            if lapsed.contains(&self.ledger(role)) {
                self.disown_epoch(cache).await?;
                self.metrics.follow_lapses.inc();
            }
        }
        // Not committed unless every lapsed cache's epoch was replaced: the next renewal
        // finds the lapse again.
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the epoch of `cache`, if it has one: entries stamped with it may be older than
    /// changes nobody recorded for it.
    async fn disown_epoch(&self, cache: &Cache) -> Result<(), StoreError> {
        if let Some(meta) = cache.read_meta().await? {
            if cache.replace_epoch(&meta).await? {
                tracing::warn!(
                    cache = cache.prefix(),
                    "this cache was not following the table's changes; new cache epoch"
                );
            }
            self.complete_epoch(cache).await?;
        }
        Ok(())
    }

    /// Removes the rows of readers long gone ([`readers::forget_gone`]) and, with `ledgers`,
    /// the ledgers nobody follows any more ([`changes::forget_lapsed`]). What it cannot remove
    /// now, a later round does.
    async fn forget_the_gone(&self, ledgers: bool) {
        let (background, deadline) = (self.db.background(), self.db.background_deadline());
        let gone = bounded!(background, deadline, |conn| readers::forget_gone(conn)).await;
        log_forgotten(
            gone.map(|n| n as i64),
            "reader leases of instances long gone",
        );
        if ledgers {
            let lapsed = bounded!(background, deadline, |conn| changes::forget_lapsed(conn)).await;
            log_forgotten(lapsed, "ledgers nobody follows any more");
        }
    }

    /// Passes on every announcement `listener` hears until its connection stops answering
    /// (continue: replace it) or its pool is closed (break: the service stops).
    async fn hear_changes(&self, listener: &mut PgListener, deadline: Duration) -> ControlFlow<()> {
        loop {
            match tokio::time::timeout(LISTENER_CHECK, listener.try_recv()).await {
                Ok(Ok(Some(_))) => self.change_announced(),
                Ok(Ok(None)) => {
                    tracing::debug!("the change listener reconnected");
                    self.change_announced();
                }
                Ok(Err(sqlx::Error::PoolClosed)) => return ControlFlow::Break(()),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "the change listener lost its connection");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
                Err(_) => {
                    let answered = tokio::time::timeout(
                        deadline,
                        sqlx::query("SELECT 1").execute(&mut *listener),
                    )
                    .await;
                    if !matches!(answered, Ok(Ok(_))) {
                        tracing::warn!(
                            "the change listener's connection stopped answering; replacing it"
                        );
                        return ControlFlow::Continue(());
                    }
                }
            }
        }
    }

    /// A change may have been recorded (or its announcement missed): the leases are renewed
    /// and the repair worker woken now.
    fn change_announced(&self) {
        self.readers.renew_soon();
        self.repairs.change_announced();
    }
}

/// Follows the table's changes, whoever makes them: keeps this instance's caches registered
/// as followers, and listens for the primary's announcements of other writers' changes.
pub struct ChangeFeed(pub Arc<SizeService>);

impl Worker for ChangeFeed {
    /// Renews and listens. Dropped where they await, neither loses anything: a renewal's
    /// transaction not committed is rolled back, and the lapse it handled found again.
    async fn work(self) {
        tokio::join!(self.keep_following(), self.listen_for_changes());
    }
}

impl ChangeFeed {
    /// Renews the registration every [`RENEW_INTERVAL`], and now and then forgets the ledgers
    /// nobody follows any more.
    async fn keep_following(&self) {
        let mut ticker = every(RENEW_INTERVAL);
        let mut renewals = 0_u32;
        loop {
            ticker.tick().await;
            if let Err(error) = self.0.follow_changes().await {
                tracing::warn!(%error, "could not renew following the table's changes");
                continue;
            }
            renewals += 1;
            let ledgers_too = renewals.is_multiple_of(RENEWALS_PER_CLEANUP);
            self.0.forget_the_gone(ledgers_too).await;
        }
    }

    /// Wakes the repair worker whenever the primary announces another writer's change, and
    /// after the listening connection was lost or replaced (announcements may have been
    /// missed; the worker's regular pass would find their records anyway). A connection that
    /// stays silent for [`LISTENER_CHECK`] is asked whether it still answers, and replaced if
    /// it does not within the background deadline: a primary that stopped answering without
    /// closing it would otherwise keep this listener deaf until TCP gives up, minutes later.
    async fn listen_for_changes(&self) {
        let deadline = self.0.db.background_deadline();
        loop {
            // A pool of its own for each connection: a connection given up on is never
            // handed back (sqlx would first test it with a round trip that does not end), and
            // the next one must not wait for it.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(deadline)
                .connect_lazy_with(self.0.db.changes().connect_options().as_ref().clone());
            let Some(mut listener) = listen_on(&pool, deadline).await else {
                continue;
            };
            self.0.change_announced();
            if self
                .0
                .hear_changes(&mut listener, deadline)
                .await
                .is_break()
            {
                return;
            }
        }
    }
}

/// A listener on the changes channel, on `pool`'s connection; `None` if it cannot be had
/// within `deadline` (after a pause, if the server answered with an error).
async fn listen_on(pool: &PgPool, deadline: Duration) -> Option<PgListener> {
    let connected = tokio::time::timeout(deadline, async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(changes::CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    })
    .await;
    match connected {
        Ok(Ok(listener)) => Some(listener),
        Ok(Err(error)) => {
            tracing::debug!(%error, "cannot listen for changes yet");
            tokio::time::sleep(RECONNECT_DELAY).await;
            None
        }
        Err(_) => {
            tracing::debug!("listening for changes timed out; trying again");
            None
        }
    }
}

/// Logs what a clean-up that forgets `what` removed, or why it could not.
fn log_forgotten(forgotten: Result<i64, sqlx::Error>, what: &str) {
    match forgotten {
        Ok(0) => {}
        Ok(forgotten) => tracing::info!(forgotten, "forgot {what}"),
        Err(error) => tracing::debug!(%error, "could not forget {what}"),
    }
}
