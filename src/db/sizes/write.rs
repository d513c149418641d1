//! The write path's transaction on `product_sizes`: lock, plan, store, commit, and the WAL
//! position after the commit.

use std::collections::HashMap;

use sqlx::{PgConnection, Postgres, Transaction};

use super::position::{DatabaseHistory, primary_position};
use crate::db::error::{DbError, parse_lsn};
use crate::db::lease::Admission;
use crate::db::session::{Sessions, own_transaction};
use crate::domain::{Lsn, StoredSize};

/// What a write transaction stored, the WAL position after its commit, and the history of
/// the primary it committed on.
#[derive(Debug)]
pub struct Committed<T> {
    pub outcome: T,
    pub lsn: Lsn,
    pub history: DatabaseHistory,
    /// A WAL position read inside the transaction, while it held the locks of the rows it
    /// wrote: every token at or below it belongs to a commit the written rows include, since
    /// a later writer of those rows commits after this one. Zero when nothing was written.
    pub visible: Lsn,
    /// The transaction that stored the rows, which names its record in `cache_own_writes`
    /// (see [`super::settle_own_writes`]). `None` when nothing was written.
    pub xact: Option<i64>,
}

/// How often a write is tried: again when a concurrent transaction created one of its new
/// SKUs, or when PostgreSQL aborted it to break a deadlock or a serialization conflict.
const MAX_ATTEMPTS: usize = 5;

/// Runs one write transaction on the primary: locks the current rows of `skus`, asks `plan`
/// what to store (given those rows by SKU), stores it with one set-based statement, commits, and
/// reads the WAL position (and history) after the commit.
///
/// Rows that do not exist yet cannot be locked; if a concurrent transaction inserts one first,
/// the insert skips it, and the whole transaction is retried against the new row. A transaction
/// PostgreSQL aborted as a deadlock's victim (another session locking the same rows in another
/// order: a data fix by hand) or for a serialization failure committed nothing: it is retried
/// too, after a short random pause. After [`MAX_ATTEMPTS`] the last error is returned
/// ([`is_transient`] tells the caller it may succeed if tried again later).
///
/// `unsure` is told the rows and the transaction of a commit whose outcome this call does not
/// learn: the call was cancelled (a request's timeout, a client gone) or the connection failed
/// between the rows' store and the position read after their commit. The transaction may have
/// committed; its caller's caches may then lack it.
pub async fn write_transaction<T>(
    primary: &Admission,
    skus: &[&str],
    plan: impl Fn(&HashMap<String, StoredSize>) -> (Vec<StoredSize>, T),
    unsure: &(dyn Fn(&[StoredSize], i64) + Sync),
) -> Result<Committed<T>, DbError> {
    let mut conn = primary.acquire().await?;
    let mut last = None;
    for attempt in 1..=MAX_ATTEMPTS {
        match try_write(&mut conn, primary.sessions(), skus, &plan, unsure).await {
            Ok(Some(committed)) => return Ok(committed),
            Ok(None) => {}
            Err(DbError::Sqlx(error)) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(%error, attempt, "write transaction aborted by the server; retrying");
                last = Some(error);
                let pause = 10 * attempt as u64 + fastrand::u64(..20);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(error) => return Err(error),
        }
    }
    Err(last.map_or(DbError::KeptConflicting, DbError::Sqlx))
}

/// One attempt of [`write_transaction`]; `None` when a concurrent create got in first (nothing
/// was committed).
async fn try_write<T>(
    conn: &mut PgConnection,
    sessions: &Sessions,
    skus: &[&str],
    plan: &impl Fn(&HashMap<String, StoredSize>) -> (Vec<StoredSize>, T),
    unsure: &(dyn Fn(&[StoredSize], i64) + Sync),
) -> Result<Option<Committed<T>>, DbError> {
    let mut tx = sessions.begin(conn).await?;
    let current = lock_rows(&mut tx, skus).await?;
    let (rows, outcome) = plan(&current);
    let mut visible = Lsn::ZERO;
    let mut xact = None;
    let mut outcome_unknown = None;
    if rows.is_empty() {
        tx.commit().await?;
    } else {
        let stored = store(&mut tx, &rows, &current).await?;
        visible = stored.visible;
        xact = Some(stored.xact);
        if stored.rows < rows.len() {
            tx.rollback().await?;
            return Ok(None);
        }
        outcome_unknown = Some(Unsure {
            rows: &rows,
            xact: stored.xact,
            tell: unsure,
            known: false,
        });
        tx.commit().await?;
    }
    let (lsn, history) = own_transaction!(sessions, conn, |conn| primary_position(conn))?;
    if let Some(mut outcome) = outcome_unknown {
        outcome.known = true;
    }
    Ok(Some(Committed {
        outcome,
        lsn,
        history,
        visible,
        xact,
    }))
}

/// Tells its caller, when dropped before its commit's outcome is `known`, that it is unknown
/// (see [`write_transaction`]).
struct Unsure<'a> {
    rows: &'a [StoredSize],
    xact: i64,
    tell: &'a (dyn Fn(&[StoredSize], i64) + Sync),
    known: bool,
}

impl Drop for Unsure<'_> {
    fn drop(&mut self) {
        if !self.known {
            (self.tell)(self.rows, self.xact);
        }
    }
}

/// Whether PostgreSQL aborted the transaction for a reason a later try may not meet again: a
/// deadlock (`40P01`), a serialization failure (`40001`), or another transaction rollback
/// (SQLSTATE class 40). Nothing of it was committed.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error.code().is_some_and(|code| code.starts_with("40")),
        _ => false,
    }
}

async fn lock_rows(
    tx: &mut Transaction<'_, Postgres>,
    skus: &[&str],
) -> Result<HashMap<String, StoredSize>, sqlx::Error> {
    let rows: Vec<StoredSize> = sqlx::query_as(
        "SELECT sku, length_mm, width_mm, height_mm, weight_g, size_label, version, \
                source_version, deleted, updated_at \
         FROM product_sizes WHERE sku = ANY($1) ORDER BY sku FOR UPDATE",
    )
    .bind(skus)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|row| (row.sku.clone(), row)).collect())
}

/// What one [`store`] statement did.
struct Stored {
    /// How many rows were stored.
    rows: usize,
    /// The WAL insert position during the statement (see [`Committed::visible`]).
    visible: Lsn,
    /// The transaction's id (see [`Committed::xact`]).
    xact: i64,
}

/// Stores `rows`: rows that were locked are updated, the others inserted unless a concurrent
/// transaction created them first. The capture trigger records the stored versions once in
/// `cache_own_writes` for each of this instance's caches, and per row in `cache_repairs` for
/// every other cache that follows the table (see [`crate::db::changes`]).
async fn store(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[StoredSize],
    locked: &HashMap<String, StoredSize>,
) -> Result<Stored, DbError> {
    let column = |f: fn(&StoredSize) -> i32| rows.iter().map(f).collect::<Vec<_>>();
    let (stored, visible, xact): (i64, String, i64) = sqlx::query_as(
        "WITH n AS ( \
             SELECT * FROM UNNEST($1::text[], $2::int[], $3::int[], $4::int[], $5::int[], $6::text[], \
                                  $7::bigint[], $8::bigint[], $9::bool[], $10::timestamptz[], $11::bool[]) \
                 AS n(sku, length_mm, width_mm, height_mm, weight_g, size_label, version, \
                      source_version, deleted, updated_at, is_new) \
         ), updated AS ( \
             UPDATE product_sizes AS p SET \
                 length_mm = n.length_mm, width_mm = n.width_mm, height_mm = n.height_mm, \
                 weight_g = n.weight_g, size_label = n.size_label, version = n.version, \
                 source_version = n.source_version, deleted = n.deleted, updated_at = n.updated_at \
             FROM n WHERE p.sku = n.sku AND NOT n.is_new \
             RETURNING p.sku, p.version \
         ), inserted AS ( \
             INSERT INTO product_sizes \
                 (sku, length_mm, width_mm, height_mm, weight_g, size_label, version, \
                  source_version, deleted, updated_at) \
             SELECT sku, length_mm, width_mm, height_mm, weight_g, size_label, version, \
                    source_version, deleted, updated_at FROM n WHERE n.is_new \
             ON CONFLICT (sku) DO NOTHING \
             RETURNING sku, version \
         ), stored AS ( \
             SELECT sku, version FROM updated UNION ALL SELECT sku, version FROM inserted \
         ) \
         SELECT count(*), pg_current_wal_insert_lsn()::text, \
                pg_current_xact_id()::text::bigint FROM stored",
    )
    .bind(rows.iter().map(|r| r.sku.as_str()).collect::<Vec<_>>())
    .bind(column(|r| r.length_mm))
    .bind(column(|r| r.width_mm))
    .bind(column(|r| r.height_mm))
    .bind(column(|r| r.weight_g))
    .bind(rows.iter().map(|r| r.size_label.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.source_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.deleted).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| !locked.contains_key(&r.sku)).collect::<Vec<_>>())
    .fetch_one(&mut **tx)
    .await?;
    Ok(Stored {
        rows: usize::try_from(stored).unwrap_or(0),
        visible: parse_lsn(&visible)?,
        xact,
    })
}
