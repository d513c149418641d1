//! Connections the read path keeps between its queries, outside sqlx's pool.
//!
//! sqlx tests every connection on its way back into the pool (a Sync and a wait for
//! ReadyForQuery) and again on its way out after idling: round trips that would double the
//! database work of a cache miss, whose query is one short round trip itself. The read path
//! borrows connections from the pool and keeps up to `keep` of them between queries; a
//! connection goes back to sqlx (which tests it) when its query failed; it is closed when its
//! query was cancelled midway (its protocol state is unknown, and its server may have stopped
//! answering: sqlx's test of it would never end) and after [`MAX_KEPT`]. A kept connection the
//! server dropped meanwhile (a restart, a failover) fails its query: the caller then drops
//! every kept connection and retries once on one from the pool, which is tested before it is
//! handed out (`leased!`). A query past the leases' deadline closes every kept connection.
//!
//! `keep` is half the pool: the other half always serves writes, probes and jobs. The pool's
//! metrics count kept connections as open and busy.
//!
//! **Background work** (renewals, repairs, probes, the change feed's queries) runs through
//! [`bounded!`] on leases made by [`Leases::background`], whose connections never go back to
//! sqlx: after a query a connection is kept or closed, and a kept one is tested with a ping
//! bounded by [`IDLE_TEST_TIMEOUT`] before its next query. sqlx's test of a returned
//! connection has no deadline, so a server that stops answering between a query's answer and
//! that test would hold the pool's slot for good: with one connection for the renewals, no
//! lease would be renewed again.
//!
//! **Load shedding.** When the database is saturated (a slow primary, a lock, more misses than
//! it can answer), waiting longer for a connection helps nobody: the queue only grows until
//! requests time out together. While every connection is busy, at most twice as many reads as
//! the pool has connections wait for one, and as many writes ([`Admission`], one for each);
//! any further one is refused at once ([`sqlx::Error::PoolTimedOut`], a 503 with
//! `Retry-After`), while cache hits, which need no connection, go on as before.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use super::session::Sessions;

/// How long a connection may wait in the keep list before it is closed.
const MAX_KEPT: Duration = Duration::from_secs(30);
/// How long an idle connection may take to answer a test before it is handed out; one that
/// does not is closed.
pub const IDLE_TEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits for a pool's connection unless the pool is saturated and too many wait already (see
/// the module's "Load shedding").
#[derive(Debug)]
pub struct Admission {
    pool: PgPool,
    /// How statements reach the pool's server ([`super::session`]).
    sessions: Sessions,
    /// Callers waiting for a connection now, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Admission {
    pub fn new(pool: PgPool, sessions: Sessions) -> Self {
        let size = pool.options().get_max_connections() as usize;
        Self {
            pool,
            sessions,
            waiting: AtomicUsize::new(0),
            max_waiting: 2 * size.max(1),
        }
    }

    /// A connection from the pool (which sqlx tests before handing it out), or
    /// [`sqlx::Error::PoolTimedOut`] at once when the pool is saturated and the queue full.
    pub async fn acquire(&self) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let waiting = Waiting(&self.waiting);
        let queued = waiting.0.fetch_add(1, Ordering::Relaxed);
        let saturated = self.pool.num_idle() == 0
            && self.pool.size() >= self.pool.options().get_max_connections();
        if saturated && queued >= self.max_waiting {
            return Err(sqlx::Error::PoolTimedOut);
        }
        let conn = self.pool.acquire().await;
        drop(waiting);
        conn
    }

    /// How statements reach the pool's server ([`super::session`]).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

#[derive(Debug)]
pub struct Leases {
    kept: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    keep: usize,
    /// How reads wait for the pool.
    admission: Admission,
    /// How long one query may take, connecting included (see [`leased!`]).
    deadline: Duration,
    /// Whether a connection not kept goes back to sqlx (the read path) or is closed (see the
    /// module's "Background work").
    hand_back: bool,
}

impl Leases {
    /// The read path's leases: half the pool kept.
    pub fn new(pool: PgPool, sessions: Sessions, deadline: Duration) -> Self {
        let keep = pool.options().get_max_connections() as usize / 2;
        Self::with(Admission::new(pool, sessions), deadline, keep, true)
    }

    /// Leases for background queries ([`bounded!`]): up to `keep` connections kept, none ever
    /// handed back to sqlx.
    pub fn background(pool: PgPool, sessions: Sessions, deadline: Duration, keep: usize) -> Self {
        Self::with(Admission::new(pool, sessions), deadline, keep, false)
    }

    fn with(admission: Admission, deadline: Duration, keep: usize, hand_back: bool) -> Self {
        Self {
            kept: Mutex::new(Vec::with_capacity(keep)),
            keep,
            admission,
            deadline,
            hand_back,
        }
    }

    /// The pool the connections come from.
    pub fn pool(&self) -> &PgPool {
        &self.admission.pool
    }

    /// How statements reach the pool's server ([`super::session`]).
    pub fn sessions(&self) -> &Sessions {
        &self.admission.sessions
    }

    /// How long one query may take, connecting included.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A kept connection, else one from the pool.
    pub async fn acquire(&self) -> Result<Lease<'_>, sqlx::Error> {
        Ok(match self.take_kept() {
            Some(conn) => self.lease(conn, true),
            // Boxed, and only when taken: sqlx's acquire future would otherwise make every
            // read's future kilobytes larger.
            None => self.lease(Box::pin(self.admission.acquire()).await?, false),
        })
    }

    /// A kept connection that answers a ping within [`IDLE_TEST_TIMEOUT`] (one that does not
    /// is closed), else one from the pool, which tests it. Waits for the pool rather than
    /// being shed: background work is a handful of queries, and must go on under load.
    pub async fn acquire_checked(&self) -> Result<Lease<'_>, sqlx::Error> {
        while let Some(conn) = self.take_kept() {
            // Leased before the ping: cancelled midway, it is closed, not handed back.
            let mut lease = self.lease(conn, true);
            if self.sessions().is_pooled() {
                // Behind a pooler a ping waits for a server connection it lends: under load it
                // would time out on its queue, not on a connection that stopped answering.
                return Ok(lease);
            }
            let ping = sqlx::Connection::ping(&mut *lease);
            if matches!(
                tokio::time::timeout(IDLE_TEST_TIMEOUT, ping).await,
                Ok(Ok(()))
            ) {
                return Ok(lease);
            }
        }
        let conn = Box::pin(self.pool().acquire()).await?;
        Ok(self.lease(conn, false))
    }

    /// The most recently kept connection; too old ones are closed (handed back, sqlx would
    /// test each with a round trip that never ends if its server stopped answering).
    fn take_kept(&self) -> Option<PoolConnection<Postgres>> {
        let mut kept = self.kept.lock().ok()?;
        let mut i = 0;
        while i < kept.len() {
            if kept[i].1.elapsed() >= MAX_KEPT {
                drop(kept.swap_remove(i).0.detach());
            } else {
                i += 1;
            }
        }
        kept.pop().map(|(conn, _)| conn)
    }

    /// A connection from the pool, which sqlx tests before handing it out.
    pub async fn acquire_tested(&self) -> Result<Lease<'_>, sqlx::Error> {
        Ok(self.lease(Box::pin(self.admission.acquire()).await?, false))
    }

    fn lease(&self, conn: PoolConnection<Postgres>, kept: bool) -> Lease<'_> {
        Lease {
            conn: Some(conn),
            leases: self,
            kept,
            settled: false,
            answered: false,
        }
    }

    /// Hands every kept connection back to the pool (before closing it); background leases
    /// close theirs.
    pub fn release_all(&self) {
        if !self.hand_back {
            return self.close_kept();
        }
        if let Ok(mut kept) = self.kept.lock() {
            kept.clear();
        }
    }

    /// Closes every kept connection: a query on one of them timed out, and the server may
    /// have stopped answering on all of them.
    pub fn close_kept(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            for (conn, _) in kept.drain(..) {
                drop(conn.detach());
            }
        }
    }
}

/// The error a leased query ends with ([`leased!`]): it tells whether the connection, not the
/// query, failed.
pub trait QueryError: std::fmt::Display + From<sqlx::Error> {
    fn is_broken_connection(&self) -> bool;
}

impl QueryError for sqlx::Error {
    fn is_broken_connection(&self) -> bool {
        is_broken_connection(self)
    }
}

/// Whether `error` says the connection, not the query, failed: I/O, protocol, or the server
/// ending the session (SQLSTATE class 08, or 57P01–57P03 for a shutdown).
fn is_broken_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// A connection for one query; [`Lease::finish`] it with the query's result. A lease dropped
/// unfinished gives its connection back to sqlx.
pub struct Lease<'a> {
    conn: Option<PoolConnection<Postgres>>,
    leases: &'a Leases,
    /// Taken from the keep list, so not tested since its last query.
    kept: bool,
    settled: bool,
    /// The server answered the query (with rows or an error): the connection may go back to
    /// sqlx. Otherwise the query was cancelled midway, perhaps on a server that stopped
    /// answering, and the connection is closed.
    answered: bool,
}

impl Lease<'_> {
    /// After a completed query the connection is idle and may be kept. Returns whether to
    /// run the query again on a tested connection: this kept connection turned out broken,
    /// and the others, most likely broken with it, have been dropped.
    pub fn finish<T, E: QueryError>(mut self, result: &Result<T, E>) -> bool {
        self.answered = true;
        match result {
            Ok(_) => {
                self.settled = true;
                false
            }
            Err(error) if self.kept && error.is_broken_connection() => {
                tracing::debug!(%error, "a kept connection broke; retrying on a tested one");
                self.leases.release_all();
                true
            }
            Err(_) => false,
        }
    }

    /// Ends a background query ([`bounded!`]) that the server answered: a connection whose
    /// query succeeded may be kept; one whose query failed is closed.
    pub fn settle(mut self, succeeded: bool) {
        self.answered = true;
        self.settled = succeeded;
    }
}

/// Runs `$query` (an expression awaited, using `$conn: &mut PgConnection`, that fails with a
/// [`QueryError`]) on a connection of `$leases`, and once more on a tested one if the kept
/// connection turned out broken; all of it within the leases' deadline, after which the
/// connection in use is closed (a server that stops answering without closing its connections
/// holds a query until TCP gives up, minutes later) and the error says it timed out. Behind
/// a pooler in transaction mode, `$query` runs in a transaction of its own
/// ([`crate::db::session`]).
macro_rules! leased {
    ($leases:expr, |$conn:ident| $query:expr) => {
        async {
            let leases: &$crate::db::lease::Leases = $leases;
            let attempt = async {
                let mut lease = leases.acquire().await?;
                let result =
                    $crate::db::session::own_transaction!(leases.sessions(), &mut lease, |$conn| {
                        $query
                    });
                if !lease.finish(&result) {
                    return result;
                }
                let mut lease = leases.acquire_tested().await?;
                let result =
                    $crate::db::session::own_transaction!(leases.sessions(), &mut lease, |$conn| {
                        $query
                    });
                lease.finish(&result);
                result
            };
            match tokio::time::timeout(leases.deadline(), attempt).await {
                Ok(result) => result,
                Err(_) => {
                    leases.close_kept();
                    Err($crate::db::lease::timed_out(leases.deadline()).into())
                }
            }
        }
    };
}
pub(crate) use leased;

/// Runs `$query` (an expression awaited, using `$conn: &mut PgConnection`) on a connection of
/// `$leases` within `$deadline`, taking and testing the connection included. A connection
/// whose query did not end in time is closed. On background leases ([`Leases::background`])
/// so is one whose query failed or that is not kept: none goes back to sqlx (see the
/// module's "Background work"); the request path's own queries use the read leases. Behind a
/// pooler in transaction mode, `$query` runs in a transaction of its own
/// ([`crate::db::session`]).
macro_rules! bounded {
    ($leases:expr, $deadline:expr, |$conn:ident| $query:expr) => {
        async {
            let leases: &$crate::db::lease::Leases = $leases;
            let limit: std::time::Duration = $deadline;
            let deadline = tokio::time::Instant::now() + limit;
            let mut lease = tokio::time::timeout_at(deadline, leases.acquire_checked())
                .await
                .map_err(|_| $crate::db::lease::timed_out(limit))??;
            let sessions = leases.sessions();
            let result = tokio::time::timeout_at(deadline, async {
                $crate::db::session::own_transaction!(sessions, &mut lease, |$conn| $query)
            })
            .await;
            match result {
                Ok(result) => {
                    lease.settle(result.is_ok());
                    result
                }
                // Dropped unanswered: closed.
                Err(_) => Err($crate::db::lease::timed_out(limit).into()),
            }
        }
    };
}
pub(crate) use bounded;

/// The error of a query that did not end within `limit`.
pub fn timed_out(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the database did not answer within {} ms",
            limit.as_millis()
        ),
    ))
}

impl Deref for Lease<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if !self.answered {
            // Cancelled midway: closed (a raw connection closes its socket when dropped).
            drop(conn.detach());
            return;
        }
        if self.settled
            && let Ok(mut kept) = self.leases.kept.lock()
            && kept.len() < self.leases.keep
        {
            kept.push((conn, Instant::now()));
            return;
        }
        // Failed, or not kept: back to sqlx, which tests it; background leases close it.
        if !self.leases.hand_back {
            drop(conn.detach());
        }
    }
}
