//! The records of what each cache is owed (`cache_repairs`, and `cache_own_writes` for the
//! writing instance's own caches): read, claimed, counted and cleared.

use sqlx::{Postgres, Transaction};

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
