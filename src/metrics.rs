//! Prometheus metrics (OpenMetrics text at `/metrics`). Names follow Prometheus conventions:
//! `_total` counters, base units (`_seconds`, `_bytes`).

use std::fmt::Write;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::AtomicU64;

use prometheus_client::registry::{Registry, Unit};

use crate::cache::CacheRole;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Database {
    Primary,
    Replica,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatabaseLabels {
    pub database: Database,
}

/// A replica, by its `host:port`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    pub replica: String,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from Redis.
    Hit,
    /// Not in Redis (or not trusted): read from a database.
    Miss,
    /// Redis was not asked or did not answer (breaker open, timeout, pending repair).
    Bypass,
}

/// Label values in lower case, as Prometheus conventions have them.
macro_rules! lowercase_label_value {
    ($type:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                encoder.write_str(match self {
                    $(Self::$variant => $text),+
                })
            }
        }
    };
}

lowercase_label_value!(Database { Primary => "primary", Replica => "replica" });
lowercase_label_value!(CacheOutcome { Hit => "hit", Miss => "miss", Bypass => "bypass" });

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub outcome: CacheOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheClusterLabels {
    pub cache: CacheRole,
}

lowercase_label_value!(CacheRole { Primary => "primary", Secondary => "secondary" });

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The matched route template (`/v1/products/{sku}/size`), never the raw path.
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub database: Database,
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    pub state: &'static str,
}

/// Declares the metric families: each one's field, type, name under the `product_size_`
/// prefix (and unit), help text and, when `default()` will not do, its constructor. `/metrics`
/// lists them in this order.
macro_rules! metrics {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $ty:ty = $name:literal $(in $unit:ident)?,
            $help:literal $(with $ctor:expr)?;
    )*) => {
        /// Every metric the service exports, registered once.
        pub struct Metrics {
            registry: Registry,
            $($(#[doc = $doc])* pub $field: $ty,)*
        }

        impl Default for Metrics {
            fn default() -> Self {
                let mut registry = Registry::with_prefix("product_size");
                $(
                    let $field: $ty = metrics!(@new $($ctor)?);
                    metrics!(@register registry, $name, $help, $field.clone() $(, $unit)?);
                )*
                let build_info = Family::<BuildLabels, Gauge>::default();
                build_info
                    .get_or_create(&BuildLabels {
                        version: env!("CARGO_PKG_VERSION"),
                    })
                    .set(1);
                registry.register("build_info", "Build information (always 1)", build_info);
                Self { registry, $($field,)* }
            }
        }
    };
    (@new) => { Default::default() };
    (@new $ctor:expr) => { $ctor };
    (@register $registry:ident, $name:literal, $help:literal, $metric:expr) => {
        $registry.register($name, $help, $metric)
    };
    (@register $registry:ident, $name:literal, $help:literal, $metric:expr, $unit:ident) => {
        $registry.register_with_unit($name, $help, Unit::$unit, $metric)
    };
}

metrics! {
    /// Queries that read product rows, by database.
    database_reads: Family<DatabaseLabels, Counter> = "database_reads",
        "Queries that read product rows, by database";
    /// Per-SKU cache lookups, by outcome.
    cache_lookups: Family<CacheLabels, Counter> = "cache_lookups",
        "Per-SKU cache lookups by outcome (hit, miss, bypass)";
    /// Cache repairs this instance owes Redis (writes whose cache update failed).
    repairs_pending: Gauge = "cache_repairs_pending",
        "Cache updates this instance still owes Redis";
    /// Cache updates recorded in the database and not yet applied, per cache cluster (any
    /// instance's), and how long the oldest has waited.
    repairs_backlog: Family<CacheClusterLabels, Gauge> = "cache_repairs_backlog",
        "Cache updates recorded in the database and not yet applied, by cache cluster";
    /// Cache updates this instance's repair worker applied.
    repairs_applied: Counter = "cache_repairs_applied",
        "Cache updates applied by this instance's repair worker";
    /// Changes other writers made, applied to a cache by this instance.
    changes_applied: Counter = "changes_applied",
        "Changes made by other writers (psql, other deployments) applied to a cache by this instance";
    /// Times a cache's registration as a follower of the table had lapsed (or was new), so
    /// its epoch was replaced.
    follow_lapses: Counter = "change_follow_lapses",
        "Times a cache had stopped following the table's changes, so its epoch was replaced";
    /// Sampled cache hits compared with the primary, and those the cache went on serving
    /// older than committed ([`crate::service`]'s inspector).
    consistency_checked: Counter = "consistency_checked",
        "Sampled cache hits compared with what the primary committed";
    consistency_divergent: Counter = "consistency_divergent",
        "Sampled cache hits the cache still served older than committed a second later";
    /// The share of agreeing checks over the last minute.
    consistency_ratio: Gauge<f64, AtomicU64> = "consistency_ratio",
        "Share of sampled cache hits that agreed with the primary over the last minute";
    repairs_oldest_seconds: Family<CacheClusterLabels, Gauge<f64, AtomicU64>> = "cache_repairs_oldest_age" in Seconds,
        "How long the oldest recorded cache update has waited, by cache cluster";
    /// 1 while Redis answers, 0 while the breaker is open.
    cache_up: Gauge = "cache_up",
        "1 while Redis answers, 0 while the cache breaker is open";
    /// 1 while Redis's `maxmemory-policy` may evict fences (anything but `noeviction`).
    cache_fences_evictable: Gauge = "cache_fences_evictable",
        "1 while Redis's maxmemory-policy may evict the fences reads rely on (use noeviction)";
    /// 1 while a replica's probe lets reads use it (reachable, on the primary's history,
    /// within the lag bound), per replica.
    replica_usable: Family<ReplicaLabels, Gauge> = "replica_usable",
        "1 while reads may use the replica: reachable, on the primary's timeline, within the lag bound";
    /// How far each replica's replay is behind the primary.
    replica_lag_bytes: Family<ReplicaLabels, Gauge> = "replica_lag" in Bytes,
        "How far the replica's replay is behind the primary's WAL";
    replica_lag_seconds: Family<ReplicaLabels, Gauge<f64, AtomicU64>> = "replica_lag" in Seconds,
        "How long ago the primary was where the replica's replay is now";
    /// Queries that read product rows on each replica.
    replica_reads: Family<ReplicaLabels, Counter> = "replica_reads",
        "Queries that read product rows, by replica";
    /// The counts of the last cache audit (any instance's or `audit-cache`'s).
    audit_entries: Family<AuditLabels, Gauge> = "cache_audit_entries",
        "Counts of the last cache audit: checked, agreeing, stale, orphaned, missing, repaired";
    http_requests: Family<RequestLabels, Counter> = "http_requests",
        "HTTP requests by method, route and status";
    http_request_duration: Family<RouteLabels, Histogram> = "http_request_duration" in Seconds,
        "HTTP request latency by method and route"
        with Family::new_with_constructor(latency_histogram as fn() -> Histogram);
    /// Reads by where their answer came from.
    reads_by_source: Family<SourceLabels, Counter> = "reads",
        "Reads by where the answer came from (cache, replica, primary)";
    /// Connections per pool: open, idle, max.
    db_pool_connections: Family<PoolLabels, Gauge> = "db_pool_connections",
        "Database pool connections by database and state (open, idle, max)";
    /// Requests that waited for a pooled connection until the timeout.
    db_pool_timeouts: Counter = "db_pool_timeouts",
        "Requests that waited for a pooled database connection until the timeout";
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
            ("dead_epoch", report.dead_epoch),
            ("orphaned", report.orphaned),
            ("missing", report.missing),
            ("repaired", report.repaired),
        ] {
            self.audit_entries
                .get_or_create(&AuditLabels { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Label values are static: the few methods and route templates there are, interned by
    /// the caller, so counting a request allocates nothing.
    pub fn observe_request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        seconds: f64,
    ) {
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                route,
                status,
            })
            .inc();
        self.http_request_duration
            .get_or_create(&RouteLabels { method, route })
            .observe(seconds);
    }

    pub fn count_read(&self, source: &'static str) {
        self.reads_by_source
            .get_or_create(&SourceLabels { source })
            .inc();
    }

    /// Records what the database says `cache` is owed.
    pub fn set_repair_backlog(&self, cache: CacheRole, count: i64, oldest: std::time::Duration) {
        let labels = CacheClusterLabels { cache };
        self.repairs_backlog.get_or_create(&labels).set(count);
        self.repairs_oldest_seconds
            .get_or_create(&labels)
            .set(oldest.as_secs_f64());
    }

    /// Counts a read of product rows on `replica` (and on the replicas as a whole).
    pub fn count_replica_read(&self, replica: &str) {
        self.count_database_read(Database::Replica);
        self.replica_reads
            .get_or_create(&ReplicaLabels {
                replica: replica.to_owned(),
            })
            .inc();
    }

    /// Publishes what the probe of `replica` last saw.
    pub fn set_replica(&self, replica: &str, health: &crate::db::replicas::ReplicaHealth) {
        let labels = ReplicaLabels {
            replica: replica.to_owned(),
        };
        let usable = i64::from(health.is_up());
        self.replica_usable.get_or_create(&labels).set(usable);
        let lag_bytes = i64::try_from(health.lag_bytes()).unwrap_or(i64::MAX);
        self.replica_lag_bytes.get_or_create(&labels).set(lag_bytes);
        let lag = health.lag().as_secs_f64();
        self.replica_lag_seconds.get_or_create(&labels).set(lag);
    }

    /// The connections of `pools`, all of `database` (the replicas' summed), by state.
    pub fn set_pools<'a>(&self, database: Database, pools: impl Iterator<Item = &'a sqlx::PgPool>) {
        let (mut open, mut idle, mut max) = (0, 0, 0);
        for pool in pools {
            open += i64::from(pool.size());
            idle += pool.num_idle() as i64;
            max += i64::from(pool.options().get_max_connections());
        }
        for (state, value) in [("open", open), ("idle", idle), ("max", max)] {
            self.db_pool_connections
                .get_or_create(&PoolLabels { database, state })
                .set(value);
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

/// Buckets from 250 µs to 5 s: a cache hit is well under a millisecond.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ])
}
