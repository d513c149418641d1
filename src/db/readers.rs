//! Reader leases on the primary (migration `reader_leases`, docs/reader-leases.md): each
//! instance renews its row in `cache_readers` and reads the owed book of each cache it serves;
//! a write whose cache update failed records what it missed and waits until every other
//! reader has applied a book that includes it.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::PgConnection;

use super::error::{DbError, parse_lsn};
use super::lease::Leases;
use super::session::commit_so_far;
use crate::domain::Lsn;

/// What one renewal (or one read of the book on a replica) returned.
#[derive(Debug)]
pub struct Book {
    /// Every record handed over before a WAL position at or below this is in `owed`.
    pub visible: Lsn,
    /// The primary's timeline `visible` belongs to.
    pub timeline: i32,
    /// The cache's authoritative epoch (`None` until one is recorded).
    pub authority: Option<String>,
    /// SKU → the version the cache is owed.
    pub owed: HashMap<String, i64>,
    /// The reader's row existed before this renewal, and its ledger's registration has not
    /// lapsed: the book may grant a lease.
    pub registered: bool,
}

/// Whether an authoritative epoch as recorded names no epoch a cache can hold: the marker a
/// `TRUNCATE` of the table leaves (the migration `every_writer_seen`).
pub fn names_no_epoch(authority: &str) -> bool {
    authority.starts_with("truncated:")
}

/// Renews `reader`'s lease on the cache `ledger`, publishing that it applied the book up to
/// `applied`, and reads the current book; within `lease`, after which the connection is closed
/// (a primary that stopped answering would otherwise hold the renewals' one connection).
pub async fn renew(
    connection: &Leases,
    ledger: &str,
    reader: &str,
    applied: (Lsn, i32),
    lease: Duration,
) -> Result<Book, DbError> {
    type Renewed = (bool, String, i32, Option<String>, Vec<String>, Vec<i64>);
    let lease_ms = i32::try_from(lease.as_millis()).unwrap_or(i32::MAX);
    let applied_to = applied.0.to_string();
    let (registered, visible, timeline, authority, skus, versions): Renewed =
        super::lease::bounded!(connection, lease, |conn| {
            sqlx::query_as("SELECT * FROM renew_cache_reader($1, $2, $3, $4, $5)")
                .bind(ledger)
                .bind(reader)
                .bind(&applied_to)
                .bind(applied.1)
                .bind(lease_ms)
                .fetch_one(conn)
        })
        .await?;
    Ok(Book {
        visible: parse_lsn(&visible)?,
        timeline,
        authority,
        owed: skus.into_iter().zip(versions).collect(),
        registered,
    })
}

/// Records that the cache `ledger` missed the write of `xacts` and of `owed` (SKU, version),
/// notifies every instance, and returns the primary's WAL insert position read after that
/// commit: a reader whose applied book reaches it has the records. (Behind a pooler in
/// transaction mode, the statement's transaction is committed first.)
pub async fn owe_failed_write(
    conn: &mut PgConnection,
    ledger: &str,
    xacts: &[i64],
    owed: &[(&str, i64)],
) -> Result<Lsn, DbError> {
    sqlx::query("SELECT owe_failed_write($1, $2, $3, $4)")
        .bind(ledger)
        .bind(xacts)
        .bind(owed.iter().map(|(sku, _)| *sku).collect::<Vec<_>>())
        .bind(owed.iter().map(|(_, version)| *version).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    commit_so_far(conn).await?;
    super::sizes::current_wal_lsn(conn).await
}

/// Records `epoch` as the authoritative epoch of the cache `ledger`, notifies every instance,
/// and returns the primary's WAL insert position read after that commit (see
/// [`owe_failed_write`]).
pub async fn record_epoch(
    conn: &mut PgConnection,
    ledger: &str,
    epoch: &str,
) -> Result<Lsn, DbError> {
    sqlx::query("SELECT record_cache_epoch($1, $2)")
        .bind(ledger)
        .bind(epoch)
        .execute(&mut *conn)
        .await?;
    super::sizes::current_wal_lsn(conn).await
}

/// Takes the lock that serialises epoch changes of the cache `ledger`, for as long as `conn`
/// is open or until [`unlock_epochs`]: two instances completing epochs at once record them in
/// the order they check Redis. `conn` must be closed, not returned to a pool, if the unlock
/// may not run (a cancelled task), and keep its session ([`super::Db::epoch_locks`]).
pub async fn lock_epochs(conn: &mut PgConnection, ledger: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_lock(hashtext('product_size_epoch ' || $1))")
        .bind(ledger)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn unlock_epochs(conn: &mut PgConnection, ledger: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_unlock(hashtext('product_size_epoch ' || $1))")
        .bind(ledger)
        .execute(conn)
        .await
        .map(drop)
}

/// The other readers of `ledger` whose applied book does not reach `position` on the primary's
/// current timeline, with their lease length.
pub async fn uncovered<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    ledger: &str,
    reader: &str,
    position: Lsn,
) -> Result<Vec<(String, Duration)>, sqlx::Error> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT reader, lease_ms FROM cache_readers \
         WHERE ledger = $1 AND reader <> $2 \
           AND (applied < $3::pg_lsn OR applied_on <> cache_reader_timeline())",
    )
    .bind(ledger)
    .bind(reader)
    .bind(position.to_string())
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(reader, ms)| {
            (
                reader,
                Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
            )
        })
        .collect())
}

/// Removes `reader`'s rows: it serves no cache any more.
pub async fn leave(executor: impl sqlx::PgExecutor<'_>, reader: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cache_readers WHERE reader = $1")
        .bind(reader)
        .execute(executor)
        .await
        .map(drop)
}

/// Removes the rows of readers that have not renewed for a minute past their lease (crashed,
/// or cut off from the primary). Writers never needed them (a row past its lease is waited
/// out by time), so the horizon is long: a reader whose row went (a step of the database's
/// clock) ends its lease at its next renewal.
pub async fn forget_gone(executor: impl sqlx::PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM cache_readers \
         WHERE renewed_at < now() - make_interval(secs => lease_ms / 1000.0 + 60)",
    )
    .execute(executor)
    .await
    .map(|done| done.rows_affected())
}
