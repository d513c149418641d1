//! The access log: one line per request at `info` (target `access`), with its method, route,
//! status, latency, read source, principal (the caller a `name:token` entry names), request id
//! and (when traces are exported) trace id. The request only hands a record to a bounded
//! queue; a background task formats and writes it, so a slow log sink never slows a request
//! (when the queue is full, records are dropped and counted in the next line written).
//!
//! With JSON logs the task formats the lines itself, in the shape of the other JSON lines,
//! and writes whole lines a few kilobytes at a time; the task wakes every 20 ms rather than
//! per record, so a request pays for neither a task wake-up, a `tracing` event nor a
//! `write(2)`. Pretty logs go through `tracing`.
//! `ACCESS_LOG_HIT_SAMPLE` thins out cache hits, the bulk of the traffic: 1 logs every hit,
//! N one in N, 0 none. Every other request is always logged.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::http::HeaderValue;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::service::ReadSource;

/// Records waiting to be written, at most.
const QUEUE: usize = 8_192;

pub struct AccessRecord {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
    pub latency_us: u64,
    /// Where a read's answer came from (none for other requests).
    pub read_source: Option<ReadSource>,
    /// The caller its token names ([`super::auth::Principal`]).
    pub principal: Option<&'static str>,
    pub request_id: Option<HeaderValue>,
    /// When traces are exported.
    pub trace_id: Option<opentelemetry::trace::TraceId>,
    /// When the response was ready.
    pub at: SystemTime,
}

pub struct AccessLog {
    queue: mpsc::Sender<AccessRecord>,
    hit_sample: u64,
    hits: AtomicU64,
    dropped: AtomicU64,
}

/// The task that writes an access log. It ends once the log's last handle is gone (the
/// server drops its router when it stops) and every queued line is written.
pub struct AccessLogWriter(tokio::task::JoinHandle<()>);

impl AccessLogWriter {
    /// Waits, `within` at most, until every line recorded is written: lines of the last
    /// requests before a shutdown are not lost when the process exits.
    pub async fn finished(self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, self.0).await;
    }
}

impl AccessLog {
    /// The log and the task that writes it; `None` when `info` lines of target `access` would
    /// be filtered out anyway (then requests do not even build records).
    pub fn start(hit_sample: u32) -> Option<(std::sync::Arc<Self>, AccessLogWriter)> {
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
        let writer = tokio::spawn(write(
            records,
            std::sync::Arc::downgrade(&log),
            crate::telemetry::json_logs(),
        ));
        Some((log, AccessLogWriter(writer)))
    }

    /// Whether a request that read `source` is logged (hits are sampled).
    pub fn wants(&self, source: Option<ReadSource>) -> bool {
        if source != Some(ReadSource::Cache) || self.hit_sample == 1 {
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

/// Lines are written about this many bytes at a time (and always whole).
const BATCH_BYTES: usize = 4096;

/// How often the writer wakes to write what has queued. Waking it per record (awaiting the
/// queue) cost the request path a task wake-up each, more than the line itself.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);

async fn write(
    mut records: mpsc::Receiver<AccessRecord>,
    log: std::sync::Weak<AccessLog>,
    json: bool,
) {
    let mut lines = Vec::with_capacity(2 * BATCH_BYTES);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            let record = match records.try_recv() {
                Ok(record) => record,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    write_lines(&mut lines);
                    return;
                }
            };
            let dropped = log
                .upgrade()
                .map_or(0, |log| log.dropped.swap(0, Ordering::Relaxed));
            if json {
                json_line(&mut lines, &record, dropped);
                if lines.len() >= BATCH_BYTES {
                    write_lines(&mut lines);
                }
            } else {
                event(&record, dropped);
            }
        }
        write_lines(&mut lines);
    }
}

/// One access line through `tracing`.
fn event(record: &AccessRecord, dropped: u64) {
    tracing::info!(
        target: "access",
        method = record.method,
        route = record.route,
        status = record.status,
        latency_ms = record.latency_us as f64 / 1000.0,
        read_source = record.read_source.map_or("", ReadSource::as_str),
        principal = record.principal.unwrap_or_default(),
        request_id = text(&record.request_id),
        trace_id = record.trace_id.map(|id| id.to_string()).unwrap_or_default(),
        dropped_before = dropped,
        "request"
    );
}

/// One access line as the JSON formatter writes events (flattened, target last).
fn json_line(lines: &mut Vec<u8>, record: &AccessRecord, dropped: u64) {
    #[derive(Serialize)]
    struct Line<'a> {
        timestamp: String,
        level: &'static str,
        message: &'static str,
        method: &'a str,
        route: &'a str,
        status: u16,
        latency_ms: f64,
        read_source: &'a str,
        principal: &'a str,
        request_id: &'a str,
        trace_id: &'a str,
        dropped_before: u64,
        target: &'static str,
    }
    let trace_id = record.trace_id.map(|id| id.to_string());
    let line = Line {
        timestamp: DateTime::<Utc>::from(record.at).to_rfc3339_opts(SecondsFormat::Micros, true),
        level: "INFO",
        message: "request",
        method: record.method,
        route: record.route,
        status: record.status,
        latency_ms: record.latency_us as f64 / 1000.0,
        read_source: record.read_source.map_or("", ReadSource::as_str),
        principal: record.principal.unwrap_or_default(),
        request_id: text(&record.request_id),
        trace_id: trace_id.as_deref().unwrap_or(""),
        dropped_before: dropped,
        target: "access",
    };
    if serde_json::to_writer(&mut *lines, &line).is_ok() {
        lines.push(b'\n');
    }
}

fn write_lines(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        // Like the formatter's own lines: a failed write to stderr is nowhere to report.
        let _ = std::io::stderr().lock().write_all(lines);
        lines.clear();
    }
}

fn text(value: &Option<HeaderValue>) -> &str {
    value.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
}
