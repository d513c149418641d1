//! Queries on `product_sizes`. Plain SQL with bound parameters, set-based for batches.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{Acquire, PgConnection, PgPool, Postgres, Transaction};

use super::lease::{Admission, Leases, leased};
use crate::coalesce::Coalescer;
use crate::domain::{Lsn, StoredSize};

/// Rows read in one round trip, with the WAL position the server had replayed before its
/// snapshot (`None` on a primary).
#[derive(Debug)]
pub struct Fetched {
    pub replayed: Option<Lsn>,
    /// Every commit whose consistency token is at or below this is visible in `rows` (zero
    /// when the server did not say).
    pub visible: Lsn,
    /// The WAL timeline of the server the rows come from (`None` when it did not say): rows
    /// of another timeline than their cache epoch's may belong to a history a failover lost.
    pub timeline: Option<u32>,
    pub rows: Vec<StoredSize>,
}

#[derive(sqlx::FromRow)]
struct FetchedRow {
    replay_lsn: Option<String>,
    visible_lsn: Option<String>,
    timeline: Option<i32>,
    sku: Option<String>,
    length_mm: Option<i32>,
    width_mm: Option<i32>,
    height_mm: Option<i32>,
    weight_g: Option<i32>,
    size_label: Option<String>,
    version: Option<i64>,
    source_version: Option<i64>,
    deleted: Option<bool>,
    updated_at: Option<DateTime<Utc>>,
}

impl FetchedRow {
    fn into_stored(self) -> Option<StoredSize> {
        Some(StoredSize {
            sku: self.sku?,
            length_mm: self.length_mm?,
            width_mm: self.width_mm?,
            height_mm: self.height_mm?,
            weight_g: self.weight_g?,
            size_label: self.size_label,
            version: self.version?,
            source_version: self.source_version,
            deleted: self.deleted?,
            updated_at: self.updated_at?,
        })
    }
}

/// Reads `skus` (tombstones included) and the replay position that bounds what the rows
/// reflect. See `read_product_sizes` in the migrations for why the bound is exact.
pub async fn fetch(pool: &PgPool, skus: &[&str]) -> Result<Fetched, sqlx::Error> {
    fetch_on(&mut *pool.acquire().await?, skus).await
}

/// [`fetch`] on a connection the read path keeps.
pub async fn fetch_leased(leases: &Leases, skus: &[&str]) -> Result<Fetched, sqlx::Error> {
    leased!(leases, |conn| fetch_on(conn, skus)).await
}

/// Concurrent reads of one SKU each on one server, coalesced into one [`fetch`]
/// ([`crate::coalesce`]): a query's cost is mostly per statement (parse, plan, snapshot, round
/// trip), not per row. Each read gets its own row with the statement's replay and visibility
/// positions, which hold for every row of one snapshot, so each read's freshness check is the
/// one it would make on a query of its own; the statement is sent after every read in it began.
pub struct SharedFetches(Coalescer<String, Result<Fetched, Arc<sqlx::Error>>>);

/// SKUs per coalesced query at most.
const MAX_SHARED_FETCH: usize = 64;
/// Queries out at once: two, so that one slow query (cold pages) does not hold every other
/// miss behind it.
const SHARED_FETCHES_IN_FLIGHT: usize = 2;

impl SharedFetches {
    pub fn start(leases: Arc<Leases>) -> Self {
        Self(Coalescer::start(
            MAX_SHARED_FETCH,
            SHARED_FETCHES_IN_FLIGHT,
            move |skus: Vec<String>| {
                let leases = leases.clone();
                async move {
                    let asked: Vec<&str> = skus.iter().map(String::as_str).collect();
                    match fetch_leased(&leases, &asked).await {
                        Ok(fetched) => fetched.split(&asked).map(Ok).collect(),
                        Err(error) => {
                            let error = Arc::new(error);
                            skus.iter().map(|_| Err(error.clone())).collect()
                        }
                    }
                }
            },
        ))
    }

    /// `sku`'s row (if any) and the positions that bound it, from whichever query takes it.
    pub async fn fetch(&self, sku: &str) -> Result<Fetched, Arc<sqlx::Error>> {
        self.0
            .ask(sku.to_owned())
            .await
            .unwrap_or_else(|| Err(Arc::new(sqlx::Error::PoolClosed)))
    }
}

pub async fn fetch_on(conn: &mut PgConnection, skus: &[&str]) -> Result<Fetched, sqlx::Error> {
    // Boxed where it is made: sqlx's query future is kilobytes, and every future that holds
    // it unboxed is copied whole into each box above it (a miss's read was 45 KB).
    let rows: Vec<FetchedRow> = Box::pin(
        sqlx::query_as("SELECT * FROM read_product_sizes($1)")
            .bind(skus)
            .fetch_all(conn),
    )
    .await?;
    Ok(Fetched::from_rows(rows))
}

/// Up to `page_size` rows after `after_sku` in SKU order, tombstones included, with the
/// replay position that bounds what they reflect.
pub async fn fetch_page(
    executor: impl sqlx::PgExecutor<'_>,
    after_sku: &str,
    page_size: i32,
) -> Result<Fetched, sqlx::Error> {
    let rows: Vec<FetchedRow> = sqlx::query_as("SELECT * FROM read_product_sizes_page($1, $2)")
        .bind(after_sku)
        .bind(page_size)
        .fetch_all(executor)
        .await?;
    Ok(Fetched::from_rows(rows))
}

/// How many rows (tombstones included) there are.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM product_sizes")
        .fetch_one(pool)
        .await
}

impl Fetched {
    /// One `Fetched` per SKU of `skus`, in order: its row, if any, and this read's positions.
    fn split<'a>(self, skus: &'a [&str]) -> impl Iterator<Item = Fetched> + 'a {
        let rows: HashMap<String, StoredSize> = self
            .rows
            .into_iter()
            .map(|row| (row.sku.clone(), row))
            .collect();
        skus.iter().map(move |sku| Fetched {
            replayed: self.replayed,
            visible: self.visible,
            timeline: self.timeline,
            rows: rows.get(*sku).cloned().into_iter().collect(),
        })
    }

    fn from_rows(rows: Vec<FetchedRow>) -> Self {
        let position = |text: Option<&str>| text.and_then(|text| text.parse().ok());
        let first = rows.first();
        let replayed = position(first.and_then(|row| row.replay_lsn.as_deref()));
        let visible = position(first.and_then(|row| row.visible_lsn.as_deref()));
        let timeline = first
            .and_then(|row| row.timeline)
            .and_then(|t| u32::try_from(t).ok());
        Self {
            replayed,
            visible: visible.unwrap_or(Lsn::ZERO),
            timeline,
            rows: rows
                .into_iter()
                .filter_map(FetchedRow::into_stored)
                .collect(),
        }
    }
}

/// The primary's current WAL insert position. Taken after a commit returns, it is at or past
/// that commit's record, so a replica that has replayed it sees the commit.
pub async fn current_wal_lsn(conn: &mut PgConnection) -> Result<Lsn, sqlx::Error> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(conn)
        .await?;
    text.parse()
        .map_err(|_| sqlx::Error::Protocol(format!("unexpected WAL position {text:?}")))
}

/// Names one history of the primary's data: the cluster's system identifier and its WAL
/// timeline. A promoted standby keeps the identifier but starts a new timeline; a cluster
/// restored or rebuilt elsewhere has a new identifier. Writes acknowledged on one history
/// may be missing from the next (asynchronous replication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseHistory {
    pub system: String,
    pub timeline: u32,
}

impl std::fmt::Display for DatabaseHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.system, self.timeline)
    }
}

/// The primary's WAL insert position and the history it belongs to, in one round trip. Taken
/// after a commit returns, the position is at or past that commit's record.
pub async fn primary_position(
    conn: &mut PgConnection,
) -> Result<(Lsn, DatabaseHistory), sqlx::Error> {
    // The timeline is the first 8 hexadecimal digits of the WAL file name.
    let (lsn, timeline, system): (String, String, String) = sqlx::query_as(
        "SELECT p.lsn::text, substr(pg_walfile_name(p.lsn), 1, 8), c.system_identifier::text \
         FROM (SELECT pg_current_wal_insert_lsn() AS lsn) AS p, pg_control_system() AS c",
    )
    .fetch_one(conn)
    .await?;
    let unexpected = || {
        sqlx::Error::Protocol(format!(
            "unexpected WAL position {lsn:?} on timeline {timeline:?}"
        ))
    };
    let position = lsn.parse().map_err(|_| unexpected())?;
    let timeline = u32::from_str_radix(&timeline, 16).map_err(|_| unexpected())?;
    Ok((position, DatabaseHistory { system, timeline }))
}

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
    /// (see [`settle_own_writes`]). `None` when nothing was written.
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
) -> Result<Committed<T>, sqlx::Error> {
    let mut conn = primary.acquire().await?;
    let mut last = None;
    for attempt in 1..=MAX_ATTEMPTS {
        match try_write(&mut conn, skus, &plan, unsure).await {
            Ok(Some(committed)) => return Ok(committed),
            Ok(None) => {}
            Err(error) if is_transient(&error) && attempt < MAX_ATTEMPTS => {
                tracing::debug!(%error, attempt, "write transaction aborted by the server; retrying");
                last = Some(error);
                let pause = 10 * attempt as u64 + fastrand::u64(..20);
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        sqlx::Error::Protocol("write kept conflicting with concurrent creates".to_owned())
    }))
}

/// One attempt of [`write_transaction`]; `None` when a concurrent create got in first (nothing
/// was committed).
async fn try_write<T>(
    conn: &mut PgConnection,
    skus: &[&str],
    plan: &impl Fn(&HashMap<String, StoredSize>) -> (Vec<StoredSize>, T),
    unsure: &(dyn Fn(&[StoredSize], i64) + Sync),
) -> Result<Option<Committed<T>>, sqlx::Error> {
    let mut tx = conn.begin().await?;
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
    let (lsn, history) = primary_position(conn).await?;
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
/// every other cache that follows the table (see [`super::changes`]).
async fn store(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[StoredSize],
    locked: &HashMap<String, StoredSize>,
) -> Result<Stored, sqlx::Error> {
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
    let visible = visible
        .parse()
        .map_err(|_| sqlx::Error::Protocol(format!("unexpected WAL position {visible:?}")))?;
    Ok(Stored {
        rows: usize::try_from(stored).unwrap_or(0),
        visible,
        xact,
    })
}

/// What the cache `ledger` is owed among `skus` (all of them when `skus` is `None`), and the
/// versions: its records, and the own writes not cleared or handed over yet (one statement, so
/// a record handed over meanwhile is seen once).
pub async fn owed_repairs(
    executor: impl sqlx::PgExecutor<'_>,
    ledger: &str,
    skus: Option<&[&str]>,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "WITH owed AS ( \
             SELECT sku, version FROM cache_repairs WHERE cache_prefix = $1 \
             UNION ALL \
             SELECT o.sku, o.version \
               FROM cache_own_writes AS w, unnest(w.skus, w.versions) AS o(sku, version) \
              WHERE w.ledger = $1 \
         ) \
         SELECT sku, max(version) FROM owed \
         WHERE $2::text[] IS NULL OR sku = ANY($2) GROUP BY sku",
    )
    .bind(ledger)
    .bind(skus)
    .fetch_all(executor)
    .await
}

/// A record of what a cache is owed, as claimed.
#[derive(Debug, sqlx::FromRow)]
pub struct Owed {
    pub sku: String,
    pub version: i64,
    /// Recorded for a write of the service's own, which its instance installs itself: a
    /// repair if it is still here. Otherwise a change another writer (or deployment) made.
    pub own_write: bool,
}

/// Claims up to `limit` records owed to the cache `ledger`, oldest first: changes made by other
/// writers, those of `pending` SKUs, and own writes' records older than `min_age` (a write
/// whose instance died before updating Redis, or before clearing its record). The rows stay
/// locked until `tx` ends; other instances skip them (`SKIP LOCKED`), so no record is applied
/// twice at once.
pub async fn claim_repairs(
    tx: &mut Transaction<'_, Postgres>,
    ledger: &str,
    pending: &[&str],
    min_age: std::time::Duration,
    limit: i64,
) -> Result<Vec<Owed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sku, version, own_write FROM cache_repairs \
         WHERE cache_prefix = $4 \
           AND (NOT own_write OR sku = ANY($1) \
                OR created_at < now() - make_interval(secs => $2)) \
         ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED",
    )
    .bind(pending)
    .bind(min_age.as_secs_f64())
    .bind(limit)
    .bind(ledger)
    .fetch_all(&mut **tx)
    .await
}

/// How many records the cache `ledger` is owed (own writes not cleared yet count per SKU),
/// and how long the oldest has waited.
pub async fn repair_backlog(
    executor: impl sqlx::PgExecutor<'_>,
    ledger: &str,
) -> Result<(i64, std::time::Duration), sqlx::Error> {
    let (count, oldest): (i64, f64) = sqlx::query_as(
        "WITH owed AS ( \
             SELECT count(*) AS records, min(created_at) AS oldest \
               FROM cache_repairs WHERE cache_prefix = $1 \
             UNION ALL \
             SELECT COALESCE(sum(cardinality(skus)), 0), min(created_at) \
               FROM cache_own_writes WHERE ledger = $1 \
         ) \
         SELECT sum(records)::bigint, \
                COALESCE(EXTRACT(EPOCH FROM now() - min(oldest))::float8, 0) FROM owed",
    )
    .bind(ledger)
    .fetch_one(executor)
    .await?;
    Ok((count, std::time::Duration::from_secs_f64(oldest.max(0.0))))
}

/// Clears repairs that the cache `ledger` now satisfies: those at or below the given versions.
pub async fn settle_repairs<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    ledger: &str,
    settled: &[(String, i64)],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM cache_repairs AS r \
         USING UNNEST($1::text[], $2::bigint[]) AS s(sku, version) \
         WHERE r.cache_prefix = $3 AND r.sku = s.sku AND r.version <= s.version",
    )
    .bind(
        settled
            .iter()
            .map(|(sku, _)| sku.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        settled
            .iter()
            .map(|(_, version)| *version)
            .collect::<Vec<_>>(),
    )
    .bind(ledger)
    .execute(executor)
    .await?;
    Ok(done.rows_affected())
}

/// Clears the records of own writes that the cache `ledger` now holds: those of the
/// transactions `xacts`. A record handed over to `cache_repairs` meanwhile is not cleared
/// here; the repair worker applies it again, which installs nothing older.
pub async fn settle_own_writes<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    ledger: &str,
    xacts: &[i64],
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM cache_own_writes WHERE ledger = $1 AND xact = ANY($2)")
        .bind(ledger)
        .bind(xacts)
        .execute(executor)
        .await?;
    Ok(done.rows_affected())
}

/// Hands the own writes of the cache `ledger` made by `xacts` (their cache update failed), or
/// older than `min_age` (their writer died or did not clear them), over to `cache_repairs`,
/// where the repair worker claims them. Returns how many records that made or raised.
pub async fn hand_over_own_writes<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    ledger: &str,
    xacts: &[i64],
    min_age: std::time::Duration,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT hand_over_own_writes($1, $2, make_interval(secs => $3))")
        .bind(ledger)
        .bind(xacts)
        .bind(min_age.as_secs_f64())
        .fetch_one(executor)
        .await
}
