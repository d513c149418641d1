//! Queries on `product_sizes`, and on the records of what each cache is owed. Plain SQL with
//! bound parameters, set-based for batches. Reads are here; the primary's position, writes and
//! the repair records each have a file of their own.

mod position;
mod repairs;
mod write;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::lease::{Leases, leased};
use crate::domain::{Lsn, StoredSize};
use crate::infra::coalesce::Coalescer;

pub use position::{DatabaseHistory, current_wal_lsn, primary_position};
pub use repairs::{
    Owed, claim_repairs, hand_over_own_writes, owed_repairs, repair_backlog, settle_own_writes,
    settle_repairs,
};
pub use write::{Committed, is_transient, write_transaction};

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

/// [`fetch_on`] on a connection the read path keeps.
pub async fn fetch_leased(leases: &Leases, skus: &[&str]) -> Result<Fetched, sqlx::Error> {
    leased!(leases, |conn| fetch_on(conn, skus)).await
}

/// Concurrent reads of one SKU each on one server, coalesced into one [`fetch`]
/// ([`crate::infra::coalesce`]): a query's cost is mostly per statement (parse, plan, snapshot, round
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

/// Reads `skus` (tombstones included) and the replay position that bounds what the rows
/// reflect. See `read_product_sizes` in the migrations for why the bound is exact.
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
pub async fn count(executor: impl sqlx::PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM product_sizes")
        .fetch_one(executor)
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
