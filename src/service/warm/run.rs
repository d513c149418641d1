//! The deployment's one warm-up at a time, whichever instance an operator's request reaches:
//! a run starts only by claiming the cache's row in `cache_warm_ups`, reports its progress
//! there every [`REPORT_INTERVAL`] (any instance answers the status from it), and stops at
//! its next report once any instance has asked it to. A run whose instance died stops holding
//! the row once its reports are [`ABANDONED_AFTER`] old, and reads as failed.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{WarmOptions, WarmProgress};
use crate::cache::CacheRole;
use crate::db::lease::bounded;
use crate::db::warm_ups::{self, WarmUpRow};
use crate::service::{CacheJobError, ServiceError, SizeService};

/// How often the instance running a warm-up reports its progress and reads whether it was
/// asked to stop.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How old the reports of a running warm-up may be before its instance counts as gone.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// No warm-up has run yet.
    #[default]
    Idle,
    Running,
    Succeeded,
    /// Failed, or its instance died while it ran.
    Failed,
    /// Stopped by `DELETE /v1/admin/cache/warm`, or by its instance shutting down.
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
    /// An operator asked it to stop, on any instance, or the instance running it stopped.
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
    /// [`REPORT_INTERVAL`], until done, failed, asked to stop (by any instance, or by `stop`
    /// here: both end it as cancelled), or taken over; then records how it ended.
    pub async fn run(
        self,
        sizes: &SizeService,
        options: &WarmOptions,
        stop: CancellationToken,
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
        let watch = self.report_until_stopped(sizes, progress);
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
            () = stop.cancelled() => {
                tracing::info!("cache warm-up cancelled: this instance is stopping");
                ("cancelled", Ok(WarmOutcome::Cancelled(progress())), None)
            }
        };
        let counts = match &result {
            Ok(WarmOutcome::Succeeded(done)) => done.clone(),
            _ => progress(),
        };
        self.record_end(sizes, state, &counts, error).await;
        result
    }

    /// Reports `progress` to the deployment's row every [`REPORT_INTERVAL`] until the run is
    /// asked to stop (`false`) or another run took the warm-up over (`true`).
    async fn report_until_stopped(
        &self,
        sizes: &SizeService,
        progress: impl Fn() -> WarmProgress,
    ) -> bool {
        let mut ticker = tokio::time::interval(REPORT_INTERVAL);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let counts = progress();
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
    }

    /// Records how the run ended, in the state `state`.
    async fn record_end(
        &self,
        sizes: &SizeService,
        state: &str,
        counts: &WarmProgress,
        error: Option<&str>,
    ) {
        let finished = bounded!(
            sizes.db.background(),
            sizes.db.background_deadline(),
            |conn| warm_ups::finish(conn, &self.ledger, &self.id, state, counts, error)
        );
        if let Err(error) = finished.await {
            tracing::warn!(%error, "could not record how the cache warm-up ended; it reads as failed once its reports are old");
        }
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
}
