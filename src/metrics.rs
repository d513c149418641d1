//! Prometheus metrics (OpenMetrics text at `/metrics`). Names follow Prometheus conventions:
//! `_total` counters, base units (`_seconds`, `_bytes`).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;

use prometheus_client::registry::{Registry, Unit};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Database {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabels {
    pub database: Database,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CacheOutcome {
    /// Served from Redis.
    Hit,
    /// Not in Redis (or not trusted): read from a database.
    Miss,
    /// Redis was not asked or did not answer (breaker open, timeout, pending repair).
    Bypass,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub outcome: CacheOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    pub state: &'static str,
}

/// Every metric the service exports, registered once.
pub struct Metrics {
    registry: Registry,
    /// Queries that read product rows, by database.
    pub database_reads: Family<DatabaseLabels, Counter>,
    /// Per-SKU cache lookups, by outcome.
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// Cache repairs this instance owes Redis (writes whose cache update failed).
    pub repairs_pending: Gauge,
    /// 1 while Redis answers, 0 while the breaker is open.
    pub cache_up: Gauge,
    /// How far the replica's replay is behind the primary.
    pub replica_lag_bytes: Gauge,
    pub replica_lag_seconds: Gauge<f64, AtomicU64>,
    /// The counts of the last cache audit (any instance's or `audit-cache`'s).
    pub audit_entries: Family<AuditLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("product_size");
        let database_reads = Family::<DatabaseLabels, Counter>::default();
        registry.register(
            "database_reads",
            "Queries that read product rows, by database",
            database_reads.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Per-SKU cache lookups by outcome (hit, miss, bypass)",
            cache_lookups.clone(),
        );
        let repairs_pending = Gauge::default();
        registry.register(
            "cache_repairs_pending",
            "Cache updates this instance still owes Redis",
            repairs_pending.clone(),
        );
        let cache_up = Gauge::default();
        registry.register(
            "cache_up",
            "1 while Redis answers, 0 while the cache breaker is open",
            cache_up.clone(),
        );
        let replica_lag_bytes = Gauge::default();
        registry.register_with_unit(
            "replica_lag",
            "How far the replica's replay is behind the primary's WAL",
            Unit::Bytes,
            replica_lag_bytes.clone(),
        );
        let replica_lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "replica_lag",
            "How long ago the primary was where the replica's replay is now",
            Unit::Seconds,
            replica_lag_seconds.clone(),
        );
        let audit_entries = Family::<AuditLabels, Gauge>::default();
        registry.register(
            "cache_audit_entries",
            "Counts of the last cache audit: checked, agreeing, stale, orphaned, missing, repaired",
            audit_entries.clone(),
        );
        Self {
            registry,
            audit_entries,
            database_reads,
            cache_lookups,
            repairs_pending,
            cache_up,
            replica_lag_bytes,
            replica_lag_seconds,
        }
    }
}

impl Metrics {
    pub fn count_database_read(&self, database: Database) {
        self.database_reads
            .get_or_create(&DatabaseLabels { database })
            .inc();
    }

    pub fn count_cache(&self, outcome: CacheOutcome, n: usize) {
        self.cache_lookups
            .get_or_create(&CacheLabels { outcome })
            .inc_by(n as u64);
    }

    pub fn set_audit(&self, report: &crate::service::audit::AuditReport) {
        for (state, count) in [
            ("checked", report.checked),
            ("agreeing", report.agreeing),
            ("stale", report.stale),
            ("orphaned", report.orphaned),
            ("missing", report.missing),
            ("repaired", report.repaired),
        ] {
            self.audit_entries
                .get_or_create(&AuditLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
