//! A cache warm-up's progress, as its run reports it and the deployment's row keeps it.

use serde::Serialize;

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
