//! Cache warm-up: every row, page by page in SKU order, into Redis with the same versioned
//! compare-and-set as fills, so it is safe while writes go on. Pages come from the replica once
//! it has replayed the current high-water mark and the primary's position when the warm-up
//! began, so rows written without the service (a restore with triggers off) are not missed;
//! else from the primary.
//!
//! A deployment runs one warm-up at a time, whichever instance an operator's request reaches:
//! a run starts only by claiming the cache's row in `cache_warm_ups`, reports its progress
//! there every [`REPORT_INTERVAL`] (any instance answers the status from it), and stops at
//! its next report once any instance has asked it to. A run whose instance died stops holding
//! the row once its reports are [`ABANDONED_AFTER`] old, and reads as failed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::instrument;

use super::{CacheJobError, CacheRole, FILL_MAX_AGE, ServiceError, SizeService};
use crate::cache::{Install, Meta};
use crate::db::lease::bounded;
use crate::db::sizes::{Fetched, count, fetch_page, primary_position};
use crate::db::warm_ups::{self, Counts, WarmUpRow};
use crate::domain::Lsn;

/// How often the instance running a warm-up reports its progress and reads whether it was
/// asked to stop.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How old the reports of a running warm-up may be before its instance counts as gone.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);

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

/// How far a warm-up has come.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct WarmProgress {
    /// Rows in the table when the warm-up began (tombstones included).
    pub total: u64,
    /// Rows read so far.
    pub rows: u64,
    /// Rows installed in the cache.
    pub installed: u64,
    /// Rows skipped because the cache already held that version or a newer one.
    pub skipped: u64,
    /// Pages read from the primary because the replica had not caught up.
    pub pages_from_primary: u64,
    /// Seconds since the warm-up began.
    pub elapsed_secs: f64,
}

impl WarmProgress {
    fn counts(&self) -> Counts {
        Counts {
            total: self.total,
            rows: self.rows,
            installed: self.installed,
            skipped: self.skipped,
            pages_from_primary: self.pages_from_primary,
            elapsed_secs: self.elapsed_secs,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// No warm-up has run yet.
    #[default]
    Idle,
    Running,
    Succeeded,
    /// Failed, or its instance stopped while it ran.
    Failed,
    /// Stopped by `DELETE /v1/admin/cache/warm`.
    Cancelled,
}

/// The deployment's last or current warm-up, whichever instance runs it.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct WarmStatus {
    pub state: JobState,
    pub progress: WarmProgress,
    /// Rows per second at most.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// A running warm-up was asked to stop, and stops at its next report (within a second).
    pub cancel_requested: bool,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<WarmUpRow> for WarmStatus {
    fn from(row: WarmUpRow) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let (state, error) = match row.state.as_str() {
            "running" if row.abandoned => (
                JobState::Failed,
                Some("the instance running it stopped reporting".to_owned()),
            ),
            "running" => (JobState::Running, None),
            "succeeded" => (JobState::Succeeded, None),
            "cancelled" => (JobState::Cancelled, None),
            _ => (JobState::Failed, row.error),
        };
        Self {
            state,
            progress: WarmProgress {
                total: count(row.total),
                rows: count(row.rows_read),
                installed: count(row.installed),
                skipped: count(row.skipped),
                pages_from_primary: count(row.pages_from_primary),
                elapsed_secs: row.elapsed_secs,
            },
            rate_limit: u32::try_from(row.rate_limit).ok().filter(|r| *r > 0),
            cancel_requested: row.cancel_requested,
            error,
            started_at: Some(row.started_at),
            finished_at: row.finished_at,
        }
    }
}

/// Why a warm-up could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("a warm-up is already running")]
    Running(Box<WarmStatus>),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// How a warm-up run ended.
#[derive(Debug)]
pub enum WarmOutcome {
    Succeeded(WarmProgress),
    /// An operator asked it to stop, on any instance.
    Cancelled(WarmProgress),
    /// Its reports failed for so long that another run took the deployment's warm-up over.
    TakenOver(WarmProgress),
}

/// The deployment's warm-up, claimed by this instance: [`WarmRun::run`] it.
#[derive(Debug)]
pub struct WarmRun {
    id: String,
    ledger: String,
    rate_limit: Option<u32>,
    started_at: DateTime<Utc>,
}

impl WarmRun {
    /// The status of the run as it starts.
    pub fn status(&self) -> WarmStatus {
        WarmStatus {
            state: JobState::Running,
            rate_limit: self.rate_limit,
            started_at: Some(self.started_at),
            ..WarmStatus::default()
        }
    }

    /// Warms the cache ([`SizeService::warm_cache`]), reporting to the deployment's row every
    /// [`REPORT_INTERVAL`], until done, failed, asked to stop, or taken over; then records how
    /// it ended.
    pub async fn run(
        self,
        sizes: &SizeService,
        options: &WarmOptions,
        mut report: impl FnMut(&WarmProgress),
    ) -> Result<WarmOutcome, CacheJobError> {
        let latest = Mutex::new(WarmProgress::default());
        let progress = || latest.lock().map(|p| p.clone()).unwrap_or_default();
        let warm = sizes.warm_cache(options, |p| {
            if let Ok(mut latest) = latest.lock() {
                *latest = p.clone();
            }
            report(p);
        });
        let watch = async {
            let mut ticker = tokio::time::interval(REPORT_INTERVAL);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let counts = progress().counts();
                let reported = bounded!(sizes.db.background(), REPORT_INTERVAL, |conn| {
                    warm_ups::report(conn, &self.ledger, &self.id, &counts)
                });
                match reported.await {
                    Ok(Some(false)) => {}
                    Ok(Some(true)) => return false,
                    Ok(None) => return true,
                    Err(error) => {
                        tracing::debug!(%error, "could not report the warm-up's progress")
                    }
                }
            }
        };
        let (state, result, error) = tokio::select! {
            result = warm => match result {
                Ok(done) => ("succeeded", Ok(WarmOutcome::Succeeded(done)), None),
                Err(error) => {
                    let reason = public_reason(&error);
                    ("failed", Err(error), Some(reason))
                }
            },
            taken_over = watch => {
                if taken_over {
                    tracing::warn!("the cache warm-up was taken over by another run; stopping");
                    return Ok(WarmOutcome::TakenOver(progress()));
                }
                tracing::info!("cache warm-up cancelled");
                ("cancelled", Ok(WarmOutcome::Cancelled(progress())), None)
            }
        };
        let counts = match &result {
            Ok(WarmOutcome::Succeeded(done)) => done.counts(),
            _ => progress().counts(),
        };
        let finished = bounded!(
            sizes.db.background(),
            sizes.db.background_deadline(),
            |conn| warm_ups::finish(conn, &self.ledger, &self.id, state, &counts, error)
        );
        if let Err(error) = finished.await {
            tracing::warn!(%error, "could not record how the cache warm-up ended; it reads as failed once its reports are old");
        }
        result
    }
}

/// Why a warm-up failed, for its status: which dependency, never its error text (which can
/// name hosts, users or queries); the log has the whole error.
fn public_reason(error: &CacheJobError) -> &'static str {
    match error {
        CacheJobError::Database(_) => "the database failed; see the service's log",
        CacheJobError::Cache(_) => "Redis failed; see the service's log",
        CacheJobError::NoEpoch => "Redis has no usable epoch (is it reachable?)",
    }
}

impl SizeService {
    /// Claims the deployment's warm-up for a run of this instance, unless one is running on
    /// any instance.
    pub async fn claim_warm_up(&self, rate_limit: Option<u32>) -> Result<WarmRun, ClaimError> {
        let ledger = self.ledger(CacheRole::Primary);
        let id = format!("{:016x}", fastrand::u64(..));
        let claimed = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| {
                warm_ups::claim(conn, &ledger, &id, rate_limit.unwrap_or(0), ABANDONED_AFTER)
            }
        );
        match claimed.await.map_err(ServiceError::from)? {
            Ok(()) => Ok(WarmRun {
                id,
                ledger,
                rate_limit,
                started_at: Utc::now(),
            }),
            Err(running) => Err(ClaimError::Running(Box::new(running.into()))),
        }
    }

    /// The deployment's last or current warm-up.
    pub async fn warm_up_status(&self) -> Result<WarmStatus, ServiceError> {
        let ledger = self.ledger(CacheRole::Primary);
        let row = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| warm_ups::status(conn, &ledger, ABANDONED_AFTER)
        );
        Ok(row.await?.map(WarmStatus::from).unwrap_or_default())
    }

    /// Asks the deployment's running warm-up to stop; `None` if none runs.
    pub async fn cancel_warm_up(&self) -> Result<Option<WarmStatus>, ServiceError> {
        let ledger = self.ledger(CacheRole::Primary);
        let row = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| warm_ups::cancel(conn, &ledger, ABANDONED_AFTER)
        );
        Ok(row.await?.map(WarmStatus::from))
    }

    /// Warms the cache with every row; `report` is called after each page.
    #[instrument(skip_all, fields(batch_size = options.batch_size))]
    pub async fn warm_cache(
        &self,
        options: &WarmOptions,
        mut report: impl FnMut(&WarmProgress),
    ) -> Result<WarmProgress, CacheJobError> {
        let started = Instant::now();
        let batch = options.batch_size.clamp(1, 10_000);
        let mut progress = WarmProgress {
            total: u64::try_from(count(self.db.primary()).await?).unwrap_or(0),
            ..WarmProgress::default()
        };
        // Without a rate limit, the next page is read while the current one is installed:
        // Redis and the database work side by side. With one, a page read ahead could wait
        // past FILL_MAX_AGE and be dropped, so each page is read when its turn comes.
        let rate_limit = options.rate_limit.filter(|l| *l > 0);
        // Everything committed before now, by anyone, must be in what the pages read.
        let (floor, _) = primary_position(&mut *self.db.primary().acquire().await?).await?;
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
            let fill = async {
                if page_started.elapsed() >= FILL_MAX_AGE {
                    return Ok(0);
                }
                // Rows of another timeline than the epoch's (a failover it has not seen a
                // write of yet) are not installed: their versions may reuse its numbers.
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
            };
            let (installed, read_ahead) = if rate_limit.is_none() {
                let (installed, following) = tokio::join!(
                    fill,
                    self.next_page(after.clone(), batch, options.from_primary, floor)
                );
                (installed?, Some(following?))
            } else {
                (fill.await?, None)
            };

            let read = page.fetched.rows.len() as u64;
            progress.rows += read;
            progress.installed += installed as u64;
            progress.skipped += read - installed as u64;
            progress.elapsed_secs = started.elapsed().as_secs_f64();
            report(&progress);
            if let Some(limit) = rate_limit {
                let due = Duration::from_secs_f64(progress.rows as f64 / f64::from(limit));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
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
        let replica = self.db.replica_background().filter(|_| !from_primary);
        // The probe already knows a replica that is down or behind the mark: skip the query.
        let behind = self
            .replica_health
            .as_ref()
            .is_some_and(|health| !health.is_up() || health.replayed() < hwm);
        if let Some(replica) = replica.as_ref().filter(|_| !behind) {
            let page = bounded!(replica, self.db.replica_deadline(), |conn| {
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
            fetched: fetch_page(self.db.primary(), after, size).await?,
            fell_back: replica.is_some(),
        })
    }
}

struct Page {
    fetched: Fetched,
    /// Read from the primary because the replica had not caught up.
    fell_back: bool,
}
