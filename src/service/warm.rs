//! Cache warm-up: every row, page by page in SKU order, into Redis with the same versioned
//! compare-and-set as fills, so it is safe while writes go on. Pages come from a replica once
//! it has replayed the current high-water mark and the primary's position when the warm-up
//! began, so rows written without the service (a restore with triggers off) are not missed;
//! else from the primary.
//!
//! One warm-up runs at a time in a deployment ([`run`]).

use std::time::{Duration, Instant};

use tracing::instrument;

use super::{CacheJobError, FILL_MAX_AGE, SizeService};
use crate::cache::{CacheError, Install, Meta};
use crate::db::lease::bounded;
use crate::db::session::on_pool;
use crate::db::sizes::{Fetched, count, fetch_page, primary_position};
use crate::domain::Lsn;
pub use crate::domain::WarmProgress;

mod run;

pub use run::{ABANDONED_AFTER, ClaimError, JobState, WarmOutcome, WarmRun, WarmStatus};

#[derive(Debug, Clone)]
pub struct WarmOptions {
    pub batch_size: usize,
    /// Rows per second at most.
    pub rate_limit: Option<u32>,
    /// Read the primary even when a replica is configured.
    pub from_primary: bool,
}

impl Default for WarmOptions {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            rate_limit: None,
            from_primary: false,
        }
    }
}

impl WarmProgress {
    /// Counts a page of `read` rows, `installed` of them installed, of a warm-up that began
    /// at `started`.
    fn add_page(&mut self, read: u64, installed: u64, started: Instant) {
        self.rows += read;
        self.installed += installed;
        self.skipped += read - installed;
        self.elapsed_secs = started.elapsed().as_secs_f64();
    }
}

/// Sleeps until `rows` rows are due at `limit` rows per second since `started`.
async fn keep_to_rate(limit: u32, rows: u64, started: Instant) {
    let due = Duration::from_secs_f64(rows as f64 / f64::from(limit));
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
}

impl SizeService {
    /// Warms the cache with every row; `report` is called after each page.
    #[instrument(skip_all, fields(batch_size = options.batch_size))]
    pub async fn warm_cache(
        &self,
        options: &WarmOptions,
        mut report: impl FnMut(&WarmProgress),
    ) -> Result<WarmProgress, CacheJobError> {
        let started = Instant::now();
        let batch = options.batch_size.clamp(1, 10_000);
        let (sessions, primary) = (self.db.sessions(), self.db.primary());
        let mut progress = WarmProgress {
            total: u64::try_from(on_pool!(sessions, primary, |conn| count(conn)).await?)
                .unwrap_or(0),
            ..WarmProgress::default()
        };
        // Without a rate limit, the next page is read while the current one is installed:
        // Redis and the database work side by side. With one, a page read ahead could wait
        // past FILL_MAX_AGE and be dropped, so each page is read when its turn comes.
        let rate_limit = options.rate_limit.filter(|l| *l > 0);
        // Everything committed before now, by anyone, must be in what the pages read.
        let (floor, _) = on_pool!(sessions, primary, |conn| primary_position(conn)).await?;
        let mut next = self
            .next_page(String::new(), batch, options.from_primary, floor)
            .await?;
        loop {
            let (meta, page, page_started) = next;
            if page.fell_back {
                progress.pages_from_primary += 1;
            }
            let Some(last) = page.fetched.rows.last() else {
                break;
            };
            let after = last.sku.clone();
            let fill = self.install_page(&meta, &page, page_started);
            let (installed, read_ahead) = if rate_limit.is_none() {
                let (installed, following) = tokio::join!(
                    fill,
                    self.next_page(after.clone(), batch, options.from_primary, floor)
                );
                (installed?, Some(following?))
            } else {
                (fill.await?, None)
            };

            progress.add_page(page.fetched.rows.len() as u64, installed as u64, started);
            report(&progress);
            if let Some(limit) = rate_limit {
                keep_to_rate(limit, progress.rows, started).await;
            }
            next = match read_ahead {
                Some(page) => page,
                None => {
                    self.next_page(after, batch, options.from_primary, floor)
                        .await?
                }
            };
        }
        progress.elapsed_secs = started.elapsed().as_secs_f64();
        Ok(progress)
    }

    /// Installs `page`, read for the epoch of `meta` from `page_started` on, with the
    /// compare-and-set of fills; how many rows were installed.
    async fn install_page(
        &self,
        meta: &Meta,
        page: &Page,
        page_started: Instant,
    ) -> Result<usize, CacheError> {
        if page_started.elapsed() >= FILL_MAX_AGE {
            return Ok(0);
        }
        // Rows of another timeline than the epoch's (a failover it has not seen a write of
        // yet) are not installed: their versions may reuse its numbers.
        let bound = self.cache.bound_timeline(&meta.epoch).await?;
        if page.fetched.timeline.is_none() || page.fetched.timeline != bound {
            return Ok(0);
        }
        let verified = page.fetched.visible;
        let installs: Vec<Install<'_>> = page
            .fetched
            .rows
            .iter()
            .map(|row| Install::row(row, verified))
            .collect();
        self.cache.fill(&installs, &meta.epoch).await
    }

    /// The page after `after`, with the cache's epoch and high-water mark read before it (as
    /// for any fill) and the time its read began. A replica serves it only once it has
    /// replayed both that mark and `floor`.
    async fn next_page(
        &self,
        after: String,
        batch: usize,
        from_primary: bool,
        floor: Lsn,
    ) -> Result<(Meta, Page, Instant), CacheJobError> {
        let seen = self.cache.read_meta().await?;
        let meta = self
            .current_meta(&self.cache, seen)
            .await
            .ok_or(CacheJobError::NoEpoch)?;
        let page_started = Instant::now();
        let page = self
            .warm_page(&after, batch, meta.hwm.max(floor), from_primary)
            .await?;
        Ok((meta, page, page_started))
    }

    /// One page, from the replica if it had replayed `hwm` before the page's snapshot (it
    /// reports that position with the rows); else from the primary at once. Under steady
    /// writes a lagging replica never catches up with a high-water mark read just before:
    /// waiting for it would pace the warm-up by the lag, page after page. Rows installed from
    /// the primary are as good, and the writes install their own versions anyway.
    async fn warm_page(
        &self,
        after: &str,
        batch: usize,
        hwm: Lsn,
        from_primary: bool,
    ) -> Result<Page, sqlx::Error> {
        let size = i32::try_from(batch).unwrap_or(i32::MAX);
        let replicas = Some(self.db.replicas()).filter(|r| !from_primary && !r.is_empty());
        // The probes already know the replicas that are down or behind the mark: those are
        // skipped, and the page read from the primary if all are.
        if let Some((_, replica)) = replicas.and_then(|r| r.pick(Some(hwm), None)) {
            let page = bounded!(&replica.background(), self.db.replica_deadline(), |conn| {
                fetch_page(conn, after, size)
            });
            match page.await {
                Ok(fetched) if fetched.replayed.is_some_and(|r| r >= hwm) => {
                    return Ok(Page {
                        fetched,
                        fell_back: false,
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "replica unavailable; warming from the primary")
                }
            }
        }
        Ok(Page {
            fetched: on_pool!(self.db.sessions(), self.db.primary(), |conn| {
                fetch_page(conn, after, size)
            })
            .await?,
            fell_back: replicas.is_some(),
        })
    }
}

struct Page {
    fetched: Fetched,
    /// Read from the primary because the replica had not caught up.
    fell_back: bool,
}
