//! The access log: one line per request at `info` (target `access`), with its method, route,
//! status, latency, read source, request id and (when traces are exported) trace id. The request only hands a record to a bounded
//! queue; a background task formats and writes it, so a slow log sink never slows a request
//! (when the queue is full, records are dropped and counted in the next line written).
//! `ACCESS_LOG_HIT_SAMPLE` thins out cache hits, the bulk of the traffic: 1 logs every hit,
//! N one in N, 0 none. Every other request is always logged.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::HeaderValue;
use tokio::sync::mpsc;

/// Records waiting to be written, at most.
const QUEUE: usize = 8_192;

pub struct AccessRecord {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
    pub latency_us: u64,
    pub read_source: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
    /// When traces are exported.
    pub trace_id: Option<opentelemetry::trace::TraceId>,
}

pub struct AccessLog {
    queue: mpsc::Sender<AccessRecord>,
    hit_sample: u64,
    hits: AtomicU64,
    dropped: AtomicU64,
}

impl AccessLog {
    /// The log and the task that writes it; `None` when `info` lines of target `access` would
    /// be filtered out anyway (then requests do not even build records).
    pub fn start(hit_sample: u32) -> Option<std::sync::Arc<Self>> {
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return None;
        }
        let (queue, records) = mpsc::channel(QUEUE);
        let log = std::sync::Arc::new(Self {
            queue,
            hit_sample: u64::from(hit_sample),
            hits: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(write(records, std::sync::Arc::downgrade(&log)));
        Some(log)
    }

    /// Whether a request that read `source` is logged (hits are sampled).
    pub fn wants(&self, source: Option<&HeaderValue>) -> bool {
        if source.is_none_or(|s| s.as_bytes() != b"cache") || self.hit_sample == 1 {
            return true;
        }
        self.hit_sample != 0
            && self
                .hits
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(self.hit_sample)
    }

    pub fn record(&self, record: AccessRecord) {
        if self.queue.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write(mut records: mpsc::Receiver<AccessRecord>, log: std::sync::Weak<AccessLog>) {
    let text = |value: &Option<HeaderValue>| {
        value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    while let Some(record) = records.recv().await {
        let dropped = log
            .upgrade()
            .map_or(0, |log| log.dropped.swap(0, Ordering::Relaxed));
        tracing::info!(
            target: "access",
            method = record.method,
            route = record.route,
            status = record.status,
            latency_ms = record.latency_us as f64 / 1000.0,
            read_source = text(&record.read_source),
            request_id = text(&record.request_id),
            trace_id = record.trace_id.map(|id| id.to_string()).unwrap_or_default(),
            dropped_before = dropped,
            "request"
        );
    }
}
