//! Connections the read path keeps between its queries, outside sqlx's pool.
//!
//! sqlx tests every connection on its way back into the pool (a Sync and a wait for
//! ReadyForQuery) and again on its way out after idling: round trips that doubled the
//! database work of a cache miss, whose query is one short round trip itself. The read path
//! borrows connections from the pool and keeps up to `keep` of them between queries; a
//! connection goes back to sqlx (which tests or closes it) when its query failed or was
//! cancelled midway, since its protocol state is then unknown, and after [`MAX_KEPT`], so a
//! connection the server dropped meanwhile costs at most one failed query.
//!
//! `keep` is half the pool: the other half always serves writes, probes and jobs. The pool's
//! metrics count kept connections as open and busy.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

/// How long a connection may wait in the keep list before it is handed back to sqlx.
const MAX_KEPT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Leases {
    pool: PgPool,
    kept: Mutex<Vec<(PoolConnection<Postgres>, Instant)>>,
    keep: usize,
}

impl Leases {
    pub fn new(pool: PgPool) -> Self {
        let keep = (pool.options().get_max_connections() / 2) as usize;
        Self {
            pool,
            kept: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A kept connection, else one from the pool.
    pub async fn acquire(&self) -> Result<Lease<'_>, sqlx::Error> {
        let kept = self.kept.lock().ok().and_then(|mut kept| {
            // Too old ones go back to sqlx, to be tested or closed.
            kept.retain(|(_, since)| since.elapsed() < MAX_KEPT);
            kept.pop()
        });
        let conn = match kept {
            Some((conn, _)) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(Lease {
            conn: Some(conn),
            leases: self,
            settled: false,
        })
    }

    /// Hands every kept connection back to the pool (before closing it).
    pub fn release_all(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            kept.clear();
        }
    }
}

/// A connection for one query. Call [`Lease::settle`] once the query completed; a lease
/// dropped unsettled gives its connection back to sqlx.
pub struct Lease<'a> {
    conn: Option<PoolConnection<Postgres>>,
    leases: &'a Leases,
    settled: bool,
}

impl Lease<'_> {
    /// The query ran to completion: the connection is idle and may be kept.
    pub fn settle(mut self) {
        self.settled = true;
    }
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
        if !self.settled {
            return; // dropped: back to sqlx
        }
        if let Ok(mut kept) = self.leases.kept.lock()
            && kept.len() < self.leases.keep
        {
            kept.push((conn, Instant::now()));
        }
    }
}
