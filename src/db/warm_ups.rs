//! The deployment's cache warm-up (the migration `one_warm_up_per_deployment`): one row per
//! cache, which is its lock, its shared status and its cancel switch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use crate::domain::WarmProgress;

/// What a warm-up's row holds.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WarmUpRow {
    pub state: String,
    pub rate_limit: i32,
    pub total: i64,
    pub rows_read: i64,
    pub installed: i64,
    pub skipped: i64,
    pub pages_from_primary: i64,
    pub elapsed_secs: f64,
    pub error: Option<String>,
    pub cancel_requested: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The run's reports stopped more than the limit ago: its instance is gone.
    pub abandoned: bool,
}

/// The columns of a [`WarmUpRow`]; `$2` is the limit in seconds.
macro_rules! columns {
    () => {
        "state, rate_limit, total, rows_read, installed, skipped, pages_from_primary, \
         elapsed_secs, error, cancel_requested, started_at, finished_at, \
         (state = 'running' AND reported_at < now() - make_interval(secs => $2)) AS abandoned"
    };
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Makes `run` the warm-up of `ledger`, unless another one is running and reported within
/// `abandoned_after`; then returns that one.
pub async fn claim(
    conn: &mut PgConnection,
    ledger: &str,
    run: &str,
    rate_limit: u32,
    abandoned_after: Duration,
) -> Result<Result<(), WarmUpRow>, sqlx::Error> {
    let claimed = sqlx::query(
        "INSERT INTO cache_warm_ups AS w (ledger, run, state, rate_limit) \
         VALUES ($1, $3, 'running', $4) \
         ON CONFLICT (ledger) DO UPDATE SET run = $3, state = 'running', rate_limit = $4, \
             total = 0, rows_read = 0, installed = 0, skipped = 0, pages_from_primary = 0, \
             elapsed_secs = 0, error = NULL, cancel_requested = false, started_at = now(), \
             reported_at = now(), finished_at = NULL \
         WHERE w.state <> 'running' OR w.reported_at < now() - make_interval(secs => $2)",
    )
    .bind(ledger)
    .bind(secs(abandoned_after))
    .bind(run)
    .bind(i32::try_from(rate_limit).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        return Ok(Ok(()));
    }
    // Running elsewhere (a run that ended meanwhile is reported as it ended).
    Ok(Err(status(conn, ledger, abandoned_after)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?))
}

/// `sql` with `$1` the ledger, `$2` the run and `$3` to `$8` the counts bound.
fn counted<'q>(
    sql: &'static str,
    ledger: &'q str,
    run: &'q str,
    counts: &WarmProgress,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(ledger)
        .bind(run)
        .bind(int(counts.total))
        .bind(int(counts.rows))
        .bind(int(counts.installed))
        .bind(int(counts.skipped))
        .bind(int(counts.pages_from_primary))
        .bind(counts.elapsed_secs)
}

/// Records the progress of `run`; returns whether it was asked to stop, or `None` if the row
/// is no longer its own (its reports stopped for long enough that another run took over).
pub async fn report(
    conn: &mut PgConnection,
    ledger: &str,
    run: &str,
    counts: &WarmProgress,
) -> Result<Option<bool>, sqlx::Error> {
    let row = counted(
        "UPDATE cache_warm_ups SET total = $3, rows_read = $4, installed = $5, skipped = $6, \
             pages_from_primary = $7, elapsed_secs = $8, reported_at = now() \
         WHERE ledger = $1 AND run = $2 AND state = 'running' RETURNING cancel_requested",
        ledger,
        run,
        counts,
    )
    .fetch_optional(conn)
    .await?;
    row.map(|row| row.try_get(0)).transpose()
}

/// Records how `run` ended: `state` is `succeeded`, `failed` or `cancelled`.
pub async fn finish(
    conn: &mut PgConnection,
    ledger: &str,
    run: &str,
    state: &str,
    counts: &WarmProgress,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    counted(
        "UPDATE cache_warm_ups SET total = $3, rows_read = $4, installed = $5, skipped = $6, \
             pages_from_primary = $7, elapsed_secs = $8, state = $9, error = $10, \
             reported_at = now(), finished_at = now() \
         WHERE ledger = $1 AND run = $2 AND state = 'running'",
        ledger,
        run,
        counts,
    )
    .bind(state)
    .bind(error)
    .execute(conn)
    .await
    .map(drop)
}

/// The last or current warm-up of `ledger`, if there ever was one.
pub async fn status(
    conn: &mut PgConnection,
    ledger: &str,
    abandoned_after: Duration,
) -> Result<Option<WarmUpRow>, sqlx::Error> {
    let sql = concat!(
        "SELECT ",
        columns!(),
        " FROM cache_warm_ups WHERE ledger = $1"
    );
    fetch_row(conn, sql, ledger, abandoned_after).await
}

/// Asks the running warm-up of `ledger` to stop; returns it, or `None` if none runs.
pub async fn cancel(
    conn: &mut PgConnection,
    ledger: &str,
    abandoned_after: Duration,
) -> Result<Option<WarmUpRow>, sqlx::Error> {
    let sql = concat!(
        "UPDATE cache_warm_ups SET cancel_requested = true \
         WHERE ledger = $1 AND state = 'running' \
             AND reported_at >= now() - make_interval(secs => $2) RETURNING ",
        columns!()
    );
    fetch_row(conn, sql, ledger, abandoned_after).await
}

/// The row `sql` returns, if any, with `$1` the ledger and `$2` the limit of [`columns!`].
async fn fetch_row(
    conn: &mut PgConnection,
    sql: &'static str,
    ledger: &str,
    abandoned_after: Duration,
) -> Result<Option<WarmUpRow>, sqlx::Error> {
    sqlx::query_as(sql)
        .bind(ledger)
        .bind(secs(abandoned_after))
        .fetch_optional(conn)
        .await
}
