//! Health, readiness, the OpenAPI document and the docs page.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Options, Replica, TestApp, free_port};
use crate::processes::OwnRedis;

#[tokio::test]
async fn healthz_and_readyz_report_each_dependency() {
    let app = TestApp::spawn().await;
    let health = app
        .request(Method::GET, "/healthz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let ready = app.readiness().await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        (
            ready["primary"].as_str(),
            ready["replica"].as_str(),
            ready["cache"].as_str()
        ),
        (Some("up"), Some("up"), Some("up"))
    );
}

#[tokio::test]
async fn readyz_degrades_when_a_dependency_is_down_and_fails_when_all_are() {
    let down = |port: u16| format!("postgres://postgres@127.0.0.1:{port}/product_sizes");
    let degraded = TestApp::spawn_with(Options {
        replica: Replica::Url(down(free_port())),
        ..Options::default()
    })
    .await;
    let response = degraded
        .request(Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["replica"].as_str()),
        (Some("degraded"), Some("down"))
    );

    let nothing = TestApp::spawn_with(Options {
        replica: Replica::None,
        database_url: down(free_port()),
        redis_url: Some(format!("redis://127.0.0.1:{}", free_port())),
        ..Options::default()
    })
    .await;
    let response = nothing
        .request(Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(
        (
            body["primary"].as_str(),
            body["replica"].as_str(),
            body["cache"].as_str()
        ),
        (Some("down"), Some("disabled"), Some("down"))
    );
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let app = TestApp::spawn().await;
    let served = app
        .request(Method::GET, "/openapi.json", None)
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    let served = served.text().await.unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .unwrap();
    assert!(
        served == committed,
        "GET /openapi.json differs from openapi/openapi.json"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/products/{sku}/size",
        "/v1/product-sizes/lookup",
        "/v1/sync/product-sizes",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
}

#[tokio::test]
async fn the_docs_page_and_its_assets_are_served_offline() {
    let app = TestApp::spawn().await;
    let page = app
        .request(Method::GET, "/docs", None)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Scripts and styles only from the instance itself, and no inline script to run.
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    let html = page.text().await.unwrap();
    assert!(html.contains("\"docs/swagger-ui-bundle.js\""), "{html}");
    // Relative URLs only: behind a path prefix they stay under it.
    for absolute in ["src=\"/", "href=\"/", "url: \"/"] {
        assert!(!html.contains(absolute), "{html}");
    }
    assert!(!html.contains("<script>"), "{html}");
    let start = app
        .request(Method::GET, "/docs/start.js", None)
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::OK);
    let start = start.text().await.unwrap();
    assert!(
        start.contains("new URL(\"openapi.json\", document.baseURI)"),
        "{start}"
    );
    let bundle = app
        .request(Method::GET, "/docs/swagger-ui-bundle.js", None)
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
}

/// The value of the first sample whose line starts with `prefix` (name and labels).
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_export_each_family_with_plausible_values() {
    let app = TestApp::spawn().await;
    let sku = app.sku("metrics");
    app.put(&sku, &crate::helpers::size(1)).await;
    app.get(&sku).await;
    app.evict(&sku).await;
    app.get(&sku).await;
    app.lookup(&[&sku]).await;
    // Refused before a handler: counted all the same.
    let path = format!("/v1/products/{sku}/size");
    let unauthenticated = app.request(Method::GET, &path, None).send().await.unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    let forbidden = app
        .request(Method::PUT, &path, Some(crate::helpers::READ_TOKEN))
        .json(&crate::helpers::size(2))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    let metrics = app.scrape_metrics().await;
    let route = r#"route="/v1/products/{sku}/size""#;
    for (method, status) in [("GET", 401), ("PUT", 403)] {
        assert_eq!(
            sample(
                &metrics,
                &format!(
                    r#"product_size_http_requests_total{{method="{method}",{route},status="{status}"}}"#
                )
            ),
            Some(1.0),
            "{method} {status}: {metrics}"
        );
    }
    let gets = sample(
        &metrics,
        &format!(r#"product_size_http_requests_total{{method="GET",{route},status="200"}}"#),
    );
    assert_eq!(gets, Some(2.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            &format!(r#"product_size_http_requests_total{{method="PUT",{route},status="201"}}"#)
        ),
        Some(1.0)
    );
    let count = sample(
        &metrics,
        &format!(r#"product_size_http_request_duration_seconds_count{{method="GET",{route}}}"#),
    );
    assert_eq!(count, Some(3.0), "two served GETs and the refused one");
    let sum = sample(
        &metrics,
        &format!(r#"product_size_http_request_duration_seconds_sum{{method="GET",{route}}}"#),
    )
    .unwrap();
    assert!(sum > 0.0 && sum < 5.0, "latency sum {sum}");
    assert!(
        sample(
            &metrics,
            r#"product_size_cache_lookups_total{outcome="hit"}"#
        ) >= Some(2.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"product_size_cache_lookups_total{outcome="miss"}"#
        ) >= Some(1.0)
    );
    assert!(sample(&metrics, r#"product_size_reads_total{source="cache"}"#) >= Some(2.0));
    assert!(sample(&metrics, r#"product_size_database_reads_total{database="#).is_some());
    assert!(sample(&metrics, "product_size_replica_lag_bytes").is_some_and(|b| b >= 0.0));
    assert!(
        sample(&metrics, "product_size_replica_lag_seconds")
            .is_some_and(|s| (0.0..60.0).contains(&s))
    );
    assert_eq!(
        sample(&metrics, "product_size_cache_repairs_pending"),
        Some(0.0)
    );
    assert_eq!(sample(&metrics, "product_size_cache_up"), Some(1.0));
    assert_eq!(
        sample(
            &metrics,
            r#"product_size_db_pool_connections{database="primary",state="max"}"#
        ),
        Some(10.0)
    );
    assert!(
        sample(
            &metrics,
            r#"product_size_db_pool_connections{database="primary",state="open"}"#
        ) >= Some(1.0)
    );
    assert!(sample(&metrics, "product_size_db_pool_timeouts_total").is_some());
    assert_eq!(sample(&metrics, "product_size_build_info{"), Some(1.0));
}

/// Every metric family the service exports (from `# TYPE` lines).
fn families(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_metrics_scrape_costs_no_redis_round_trip() {
    let redis = crate::processes::OwnRedis::start().await;
    let app = TestApp::spawn_with(crate::helpers::Options {
        redis_url: Some(redis.url()),
        ..crate::helpers::Options::default()
    })
    .await;
    let monitor = redis.monitor().await;
    for _ in 0..10 {
        app.scrape_metrics().await;
    }
    let notes = monitor
        .lines()
        .await
        .into_iter()
        .filter(|line| line.contains(":note:"))
        .count();
    // At most the probes' own read, every 10 s.
    assert!(notes <= 1, "{notes} reads of a note for 10 scrapes");
}

#[tokio::test]
async fn every_dashboard_query_names_an_exported_metric() {
    let app = TestApp::spawn().await;
    // Traffic and an audit, so that every family has samples (and so a TYPE line).
    let sku = app.sku("dashboard");
    app.put(&sku, &crate::helpers::size(1)).await;
    app.evict(&sku).await;
    app.get(&sku).await;
    app.get(&sku).await;
    let audit = r#"{"checked":1,"agreeing":1,"stale":0,"orphaned":0,"missing":0,"repaired":0,"first_divergent":[]}"#;
    let _: () = fred::prelude::KeysInterface::set(
        &app.redis,
        format!("{}:note:audit", app.key_prefix),
        audit,
        None,
        None,
        false,
    )
    .await
    .unwrap();
    // The probes read the audit's counts every 10 s, not every scrape.
    crate::helpers::eventually(20, "the audit's counts are exported", || async {
        families(&app.scrape_metrics().await)
            .iter()
            .any(|family| family == "product_size_cache_audit_entries")
    })
    .await;
    let exported = families(&app.scrape_metrics().await);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/product-size-service/dashboards/product-size.json"
    );
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 7);
    let mut queries = 0;
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            queries += 1;
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("product_size_"))
                .collect();
            assert!(
                !names.is_empty(),
                "panel {:?} queries no service metric: {expr}",
                panel["title"]
            );
            for name in names {
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
                assert!(
                    exported.iter().any(|f| f == family),
                    "panel {:?} queries {name}, which the service does not export ({exported:?})",
                    panel["title"]
                );
            }
        }
    }
    assert!(queries >= 7);
}

#[tokio::test]
async fn readyz_answers_from_the_probes_without_a_query_per_call() {
    let redis = OwnRedis::start().await;
    let app = TestApp::spawn_with(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let pings = || async {
        let stats = redis.info("commandstats").await;
        stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_ping:calls="))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse::<u64>().unwrap())
    };
    let before = pings().await;
    let started = std::time::Instant::now();
    for _ in 0..40 {
        assert_eq!(app.readiness().await["cache"], "up");
    }
    let probes = started.elapsed().as_millis() as u64 / 250 + 2;
    let after = pings().await;
    assert!(
        after - before <= probes,
        "{} PINGs for 40 calls of /readyz (the probes account for {probes})",
        after - before
    );
}

#[tokio::test]
async fn the_access_line_of_a_request_answered_just_before_sigterm_is_written() {
    use tokio::io::AsyncReadExt;

    use crate::helpers::{READ_TOKEN, ServiceProcess};
    let mut server = ServiceProcess::start("access-exit", &[("RUST_LOG", "info")], true).await;
    let mut stderr = server.child.stderr.take().unwrap();
    let output = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.unwrap();
        text
    });
    let url = format!("{}/v1/products/EXIT-{}/size", server.base, server.port);
    let status = reqwest::Client::new()
        .get(&url)
        .bearer_auth(READ_TOKEN)
        .header("x-request-id", "just-before-sigterm")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.terminate(std::time::Duration::from_secs(15)).await;

    let output = output.await.unwrap();
    let written = output.lines().any(|line| {
        serde_json::from_str::<Value>(line).is_ok_and(|record| {
            record["target"] == "access" && record["request_id"] == "just-before-sigterm"
        })
    });
    assert!(written, "no access line for the last request in:\n{output}");
}

/// Access log lines (JSON) the real binary writes, by request id, until `last` appears.
async fn access_lines(
    stderr: tokio::process::ChildStderr,
    last: &str,
) -> std::collections::HashMap<String, Value> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut seen = std::collections::HashMap::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !seen.contains_key(last) {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let line = tokio::time::timeout(remaining, lines.next_line())
            .await
            .expect("the access line of the last request is written")
            .unwrap()
            .expect("the server is still running");
        let Ok(record) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if record["target"] == "access" {
            let id = record["request_id"].as_str().unwrap_or_default().to_owned();
            seen.insert(id, record);
        }
    }
    seen
}

#[tokio::test]
async fn every_request_leaves_an_access_line_with_its_request_id_and_hits_can_be_silenced() {
    use crate::helpers::{READ_TOKEN, ServiceProcess, WRITE_TOKEN};
    let mut server = ServiceProcess::start(
        "access",
        &[("ACCESS_LOG_HIT_SAMPLE", "0"), ("RUST_LOG", "info")],
        true,
    )
    .await;
    let stderr = server.child.stderr.take().unwrap();
    let lines = tokio::spawn(async move { access_lines(stderr, "last-request").await });
    let (base, port) = (server.base.clone(), server.port);
    let client = reqwest::Client::new();
    let sku = format!("ACCESS-{port}");
    let url = format!("{base}/v1/products/{sku}/size");
    let send = |request: reqwest::RequestBuilder, id: &'static str| async move {
        request
            .header("x-request-id", id)
            .send()
            .await
            .unwrap()
            .status()
    };
    let write = client
        .put(&url)
        .bearer_auth(WRITE_TOKEN)
        .json(&crate::helpers::size(1));
    assert_eq!(send(write, "the-write").await, StatusCode::CREATED);
    assert_eq!(
        send(client.get(&url).bearer_auth(READ_TOKEN), "the-hit").await,
        StatusCode::OK
    );
    assert_eq!(
        send(client.get(&url), "refused").await,
        StatusCode::UNAUTHORIZED
    );
    let missing = format!("{base}/v1/products/{sku}-MISSING/size");
    assert_eq!(
        send(client.get(&missing).bearer_auth(READ_TOKEN), "last-request").await,
        StatusCode::NOT_FOUND
    );

    let seen = lines.await.unwrap();
    let write = &seen["the-write"];
    assert_eq!(
        (
            write["method"].as_str(),
            write["route"].as_str(),
            write["status"].as_u64()
        ),
        (Some("PUT"), Some("/v1/products/{sku}/size"), Some(201))
    );
    assert!(write["latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(seen["refused"]["status"], 401);
    assert_eq!(seen["last-request"]["read_source"], "primary");
    // Lines are written in order: the hit came before the last request and was left out.
    assert!(!seen.contains_key("the-hit"), "{seen:?}");
}

#[tokio::test]
async fn large_answers_are_gzipped_for_clients_that_accept_it_and_small_ones_are_not() {
    let app = TestApp::spawn().await;
    let skus: Vec<String> = (0..200).map(|i| app.sku(&format!("gzip-{i}"))).collect();
    let updates: Vec<Value> = skus
        .iter()
        .map(|sku| {
            serde_json::json!({"sku": sku, "length_mm": 1, "width_mm": 2, "height_mm": 3,
                               "weight_g": 4, "source_version": 1})
        })
        .collect();
    assert_eq!(app.sync(&updates).await.status(), StatusCode::OK);
    let asked: Vec<&str> = skus.iter().map(String::as_str).collect();
    let lookup = |gzip: bool| {
        let request = app
            .request(
                Method::POST,
                "/v1/product-sizes/lookup",
                Some(crate::helpers::READ_TOKEN),
            )
            .json(&serde_json::json!({ "skus": asked }));
        if gzip {
            request.header("accept-encoding", "gzip")
        } else {
            request
        }
    };

    let plain = lookup(false).send().await.unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    let plain = plain.bytes().await.unwrap();
    let gzipped = lookup(true).send().await.unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let gzipped = gzipped.bytes().await.unwrap();
    assert_eq!(&gzipped[..2], &[0x1f, 0x8b], "a gzip stream");
    assert!(
        gzipped.len() * 4 < plain.len(),
        "{} bytes gzipped, {} plain",
        gzipped.len(),
        plain.len()
    );

    let single = app
        .request(
            Method::GET,
            &format!("/v1/products/{}/size", skus[0]),
            Some(crate::helpers::READ_TOKEN),
        )
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(single.status(), StatusCode::OK);
    assert_eq!(single.headers().get("content-encoding"), None);
}
