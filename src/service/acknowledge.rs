//! Waiting until every other reader knows ([`super::readers`]): what a write whose cache
//! update failed left owed, or a new authoritative epoch.

use std::time::{Duration, Instant};

use sqlx::PgConnection;

use super::{ServiceError, SizeService, StoreError};
use crate::cache::{CacheRole, Epoch};
use crate::db::lease::bounded;
use crate::db::readers;
use crate::domain::{Lsn, StoredSize};

/// How often a write waiting for the other readers looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

impl SizeService {
    /// After a write's update of the primary cache failed: records what it missed, durably
    /// and for every instance, and returns once every other reader of the cache treats those
    /// SKUs as owed or has no lease from before the record. A write is acknowledged only then
    /// (see docs/reader-leases.md for why that is enough).
    pub(super) async fn confirm_owed(
        &self,
        rows: &[StoredSize],
        xact: Option<i64>,
    ) -> Result<(), ServiceError> {
        let role = CacheRole::Primary;
        let ledger = self.ledger(role);
        let owed: Vec<(&str, i64)> = rows.iter().map(|r| (r.sku.as_str(), r.version)).collect();
        let xacts: Vec<i64> = xact.into_iter().collect();
        let deadline = Instant::now() + self.readers.settings.ack_timeout;
        let recorded = bounded!(
            self.db.primary_reads(),
            self.readers.settings.ack_timeout,
            |conn| readers::owe_failed_write(conn, &ledger, &xacts, &owed)
        );
        let position = recorded.await.map_err(|error| {
                tracing::warn!(%error, "could not record a failed cache update for the other instances");
                ServiceError::Unacknowledged
            })?;
        if self
            .wait_covered(&ledger, position, Instant::now(), deadline, None)
            .await
        {
            return Ok(());
        }
        tracing::warn!(
            skus = rows.len(),
            "a cache update failed and not every instance learned of it in time; answering 503"
        );
        Err(ServiceError::Unacknowledged)
    }

    /// Waits until every other reader of `ledger` has applied a book that includes what was
    /// committed before `position` (read at `recorded_at`), or its lease has ended; `false` if
    /// that is not known by `deadline`.
    async fn wait_covered(
        &self,
        ledger: &str,
        position: Lsn,
        recorded_at: Instant,
        deadline: Instant,
        mut conn: Option<&mut PgConnection>,
    ) -> bool {
        self.readers.renew_soon();
        while Instant::now() < deadline {
            let uncovered = match conn.as_deref_mut() {
                Some(conn) => readers::uncovered(conn, ledger, &self.readers.id, position).await,
                None => {
                    bounded!(
                        self.db.primary_reads(),
                        self.db.background_deadline(),
                        |conn| readers::uncovered(conn, ledger, &self.readers.id, position)
                    )
                    .await
                }
            };
            // A reader that has not applied the record is waited out: its lease came from a
            // renewal sent before the record existed.
            if let Ok(uncovered) = uncovered
                && uncovered
                    .iter()
                    .all(|(_, lease)| recorded_at.elapsed() >= *lease + margin(*lease))
            {
                return true;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        false
    }

    /// Records `epoch` as the authoritative epoch of the cache `role` and waits until every
    /// other reader knows (or its lease ended): from then on none serves the data set it used
    /// before, and none counts an update of it as landed. `false` if that cannot be had now.
    /// Runs on `conn` alone (which holds the epoch lock).
    pub(super) async fn make_authoritative(
        &self,
        role: CacheRole,
        epoch: &Epoch,
        conn: &mut PgConnection,
    ) -> Result<bool, StoreError> {
        let ledger = self.ledger(role);
        let position = readers::record_epoch(conn, &ledger, epoch.as_str()).await?;
        let recorded_at = Instant::now();
        let lease = self.readers.settings.lease;
        let deadline = recorded_at + lease + margin(lease) + Duration::from_secs(1);
        if !self
            .wait_covered(&ledger, position, recorded_at, deadline, Some(conn))
            .await
        {
            return Ok(false);
        }
        self.readers.set_authority(role, epoch);
        Ok(true)
    }
}

/// How long after a reader's lease has ended by its own clock a writer's clock may say so: a
/// tenth for clocks that run at different rates, and 100 ms.
fn margin(lease: Duration) -> Duration {
    lease / 10 + Duration::from_millis(100)
}
