//! Traces over OTLP/HTTP, from the real exporter to an OTLP endpoint in the test that decodes
//! the protobuf as a collector would.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::io::AsyncBufReadExt;

use crate::helpers::{READ_TOKEN, ServiceProcess, WRITE_TOKEN, size};

/// The caller's trace and span, as its `traceparent` names them.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_request_continues_the_callers_trace_with_spans_for_cache_and_database() {
    let received = OtlpReceiver::start().await;
    let mut server = ServiceProcess::start(
        "traces",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", received.endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("RUST_LOG", "info"),
            // The reader names itself: its name is the principal, its token stays secret.
            ("API_READ_TOKENS", &format!("orders:{READ_TOKEN}")),
        ],
        true,
    )
    .await;
    let logs = collect_lines(server.child.stderr.take().unwrap());
    let client = reqwest::Client::new();
    let sku = format!("TRACE-{}", server.port);
    let url = format!("{}/v1/products/{sku}/size", server.base);
    let written = client
        .put(&url)
        .bearer_auth(WRITE_TOKEN)
        .json(&size(3))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), 201);
    // Evicted, so the traced read misses, reads the database and fills the cache.
    let redis = fred::prelude::Client::new(
        fred::prelude::Config::from_url(&crate::helpers::shared_redis_url()).unwrap(),
        None,
        None,
        None,
    );
    fred::prelude::ClientLike::init(&redis).await.unwrap();
    let key = format!("traces{}:{{{sku}}}", server.port);
    let _: i64 = fred::prelude::KeysInterface::del(&redis, &key)
        .await
        .unwrap();
    let read = client
        .get(&url)
        .bearer_auth(READ_TOKEN)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"))
        .header("x-request-id", "traced-read")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()["x-read-source"], "primary");

    // The request's span continues the caller's trace, as the server side of its call...
    let request = received
        .eventually("the request's span", |span| {
            hex(&span.trace_id) == TRACE_ID && hex(&span.parent_span_id) == PARENT_SPAN_ID
        })
        .await;
    assert_eq!(request.name, "GET /v1/products/{sku}/size");
    assert_eq!(request.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(
        attribute(&request, "http.response.status_code"),
        Some("200".into())
    );
    assert_eq!(attribute(&request, "principal"), Some("orders".into()));
    // ...and the service's own calls are spans below it.
    let lookup = received
        .eventually("the cache lookup", |span| {
            hex(&span.trace_id) == TRACE_ID && span.name == "cache.lookup"
        })
        .await;
    assert_eq!(attribute(&lookup, "misses"), Some("1".into()));
    assert_eq!(attribute(&lookup, "hits"), Some("0".into()));
    let database = received
        .eventually("the database read", |span| {
            hex(&span.trace_id) == TRACE_ID && span.name == "db.read"
        })
        .await;
    assert_eq!(attribute(&database, "database"), Some("primary".into()));
    assert_eq!(attribute(&database, "skus"), Some("1".into()));
    let read_span = received
        .eventually("the read", |span| {
            hex(&span.trace_id) == TRACE_ID && span.name == "read"
        })
        .await;
    assert_eq!(attribute(&read_span, "source"), Some("primary".into()));
    received
        .eventually("the fill", |span| {
            hex(&span.trace_id) == TRACE_ID && span.name == "cache.fill"
        })
        .await;
    for child in [&lookup, &database] {
        assert!(
            child.start_time_unix_nano >= request.start_time_unix_nano
                && child.end_time_unix_nano <= request.end_time_unix_nano,
            "{} lies within the request",
            child.name
        );
    }

    // The access line of that request carries the trace id.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let traced = logs.lock().unwrap().iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|record| {
                record["request_id"] == "traced-read"
                    && record["trace_id"] == TRACE_ID
                    && record["principal"] == "orders"
            })
        });
        if traced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with the trace id and the principal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.terminate(Duration::from_secs(15)).await;
    let logs = logs.lock().unwrap();
    assert!(!logs.iter().any(|line| line.contains(READ_TOKEN)));
}

/// An OTLP/HTTP endpoint: decodes every export and keeps its spans.
struct OtlpReceiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl OtlpReceiver {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = spans.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut kept = kept.lock().unwrap();
                    for resource in export.resource_spans {
                        for scope in resource.scope_spans {
                            kept.extend(scope.spans);
                        }
                    }
                    // An empty ExportTraceServiceResponse.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { endpoint, spans }
    }

    /// The first span received that matches, waiting up to 20 s for it.
    async fn eventually(&self, what: &str, matches: impl Fn(&Span) -> bool) -> Span {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(span) = self.spans.lock().unwrap().iter().find(|s| matches(s)) {
                return span.clone();
            }
            if Instant::now() > deadline {
                let seen: Vec<(String, String, String)> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        (
                            format!("{} {}", s.name, hex(&s.span_id)),
                            hex(&s.trace_id),
                            hex(&s.parent_span_id),
                        )
                    })
                    .collect();
                panic!("no span received: {what}; received {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        AnyValue::StringValue(text) => text.clone(),
        AnyValue::IntValue(number) => number.to_string(),
        AnyValue::BoolValue(flag) => flag.to_string(),
        AnyValue::DoubleValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

/// Every line the child writes to stderr, as it comes.
fn collect_lines(stderr: tokio::process::ChildStderr) -> Arc<Mutex<Vec<String>>> {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = lines.clone();
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    lines
}
