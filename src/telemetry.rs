//! Logs through `tracing` (JSON for machines, pretty for people at a terminal) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, traces over OTLP/HTTP.
//!
//! Traces: each request's span continues the caller's W3C `traceparent`; the service's own
//! spans below it (the read, the cache lookup, each database read, the fill, a write's
//! transaction and cache update) are `debug` spans, exported but never logged, and disabled
//! at their call sites when no endpoint is set, so a cache hit pays nothing for them. The
//! request span records the trace id as `trace_id`, which every JSON log line of the request
//! carries.

use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// What exports spans, while it runs; flush it with [`Telemetry::shutdown`] before exiting.
#[must_use = "spans still buffered are lost unless it is shut down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered (bounded by the exporter's timeout).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // Blocks until the batch task has exported: off the async workers.
            let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(error)) = flushed {
                eprintln!("cannot export the last spans: {error}");
            }
        }
    }
}

/// Whether spans are exported: set once, at start.
static TRACING: OnceLock<TraceContextPropagator> = OnceLock::new();

/// The log format chosen at start (`None` before [`init`]).
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Whether logs are written as JSON lines (the access log then writes its own, in batches).
pub fn json_logs() -> bool {
    FORMAT.get() == Some(&LogFormat::Json)
}

/// Installs the global subscriber; `RUST_LOG` filters the logs (default `info,sqlx=warn`;
/// directives by target and level). Logs go to
/// stderr so that commands printing data (`openapi`) keep stdout clean. With
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set (OTLP/HTTP, `http://`), spans are exported too; the
/// exporter also reads the other standard `OTEL_*` variables (`OTEL_SERVICE_NAME`,
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_BSP_SCHEDULE_DELAY`, ...).
pub fn init(format: Option<LogFormat>) -> Telemetry {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let _ = FORMAT.set(format);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Pretty => logs.boxed(),
    };
    let (provider, spans) = match exporter() {
        Ok(Some(provider)) => {
            let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
            let _ = TRACING.set(TraceContextPropagator::new());
            (
                Some(provider),
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
            )
        }
        Ok(None) => (None, None),
        Err(error) => {
            eprintln!("not exporting traces: {error}");
            (None, None)
        }
    };
    // One filter for both layers. Per-layer filters would let the exporter see only the
    // service's spans, but they decide from state a callsite check leaves behind, and a
    // library's `enabled!` check without an event (sqlx makes them) leaves it stale: whole
    // request spans went missing. So: what `RUST_LOG` enables, plus, while exporting, the
    // service's own `debug` spans (never its `debug` events).
    let logged: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| directives.parse().ok())
        .unwrap_or_else(|| {
            Targets::new()
                .with_default(Level::INFO)
                .with_target("sqlx", Level::WARN)
        });
    let exporting = provider.is_some();
    let filter = tracing_subscriber::filter::filter_fn(move |metadata| {
        logged.would_enable(metadata.target(), metadata.level())
            || exporting && metadata.is_span() && metadata.target().starts_with("product_size")
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
    Telemetry { provider }
}

/// The span exporter, when an endpoint is configured.
fn exporter() -> Result<Option<SdkTracerProvider>, String> {
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()));
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    if !endpoint.starts_with("http://") {
        return Err(format!(
            "the OTLP endpoint {endpoint} is not http://: export to a local collector (an agent or sidecar), which forwards over TLS"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| e.to_string())?;
    let batch =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let service_name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| env!("CARGO_PKG_NAME").to_owned());
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(batch)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(service_name)
                    .build(),
            )
            .build(),
    ))
}

/// Whether spans are exported.
pub fn tracing_enabled() -> bool {
    TRACING.get().is_some()
}

/// The trace id of the current span, when spans are exported.
pub fn current_trace_id() -> Option<opentelemetry::trace::TraceId> {
    TRACING.get()?;
    let id = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id();
    (id != opentelemetry::trace::TraceId::INVALID).then_some(id)
}

/// Makes `span` (a request's) continue the trace of the caller's `traceparent`, if any, and
/// records its trace id in its `trace_id` field. Does nothing unless spans are exported.
pub fn continue_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    let Some(propagator) = TRACING.get() else {
        return;
    };
    let parent = propagator.extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    span.record("trace_id", tracing::field::display(trace_id));
}

/// Lets one of a run of identical warnings through per second. A failure that every request
/// meets (a database that sheds load, a replica that is down) would otherwise log as fast as
/// requests arrive, and under overload the logging itself would take the CPU that the
/// requests still being served need.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Milliseconds since [`clock_start`] of the last warning let through, plus one.
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Self {
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(how many were held back since the last one)` when this warning may be logged.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(clock_start().elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000
            || self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

fn clock_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn a_throttle_lets_one_warning_through_per_second_and_counts_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(throttle.allow(), Some(2));
        assert_eq!(throttle.allow(), None);
    }
}
