//! Every error status of the API: a clear problem+json, and nothing changed.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Options, READ_TOKEN, Replica, TestApp, WRITE_TOKEN, free_port, size};

/// What every problem `type` URI starts with; the kind follows.
const PROBLEM_TYPE: &str = "tag:product-size-service,2026:problem/";

/// The problem body of `response`, checked: its status, its media type, a problem type of this
/// service (never `about:blank`) and the request's id (the response's `X-Request-Id`).
async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string());
    let kind = body["type"].as_str().unwrap_or_default();
    assert!(kind.starts_with(PROBLEM_TYPE), "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    body
}

/// Sends `request` with its own `X-Request-Id` and checks its answer is a problem of `kind`
/// carrying that id.
async fn problem_of_kind(request: RequestBuilder, status: StatusCode, kind: &str, id: &str) {
    let response = request.header("X-Request-Id", id).send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], id);
    let body = problem(response, status).await;
    assert_eq!(body["type"], format!("{PROBLEM_TYPE}{kind}"), "{body}");
    assert_eq!(body["request_id"], id, "{body}");
}

/// The problem types the served OpenAPI document lists in its `Problem` schema.
async fn documented_problem_types(app: &TestApp) -> String {
    let document = app.openapi_document().await;
    let problem = &document["components"]["schemas"]["Problem"];
    assert!(
        problem["required"]
            .as_array()
            .unwrap()
            .contains(&json!("request_id")),
        "{problem}"
    );
    problem["properties"]["type"]["description"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn fields(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn malformed_json_and_bad_path_skus_are_400() {
    let app = TestApp::spawn().await;
    let sku = app.sku("x");
    let malformed = app
        .request(
            Method::PUT,
            &format!("/v1/products/{sku}/size"),
            Some(WRITE_TOKEN),
        )
        .header("content-type", "application/json")
        .body("{\"length_mm\": ")
        .send()
        .await
        .unwrap();
    problem(malformed, StatusCode::BAD_REQUEST).await;
    for bad in ["-lead", "a%20b", "%7Bx%7D", &"x".repeat(65)] {
        let response = app
            .request(
                Method::GET,
                &format!("/v1/products/{bad}/size"),
                Some(READ_TOKEN),
            )
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::BAD_REQUEST).await;
    }
    let bad_token = app
        .request(
            Method::GET,
            &format!("/v1/products/{sku}/size"),
            Some(READ_TOKEN),
        )
        .header("X-Consistency-Token", "yesterday")
        .send()
        .await
        .unwrap();
    problem(bad_token, StatusCode::BAD_REQUEST).await;
    assert_eq!(app.primary_row(&sku).await, None);
}

#[tokio::test]
async fn missing_or_unknown_tokens_are_401_and_read_tokens_cannot_write() {
    let app = TestApp::spawn().await;
    let sku = app.sku("auth");
    let path = format!("/v1/products/{sku}/size");

    let anonymous = app.request(Method::GET, &path, None).send().await.unwrap();
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    problem(anonymous, StatusCode::UNAUTHORIZED).await;
    let unknown = app
        .request(Method::GET, &path, Some("guess"))
        .send()
        .await
        .unwrap();
    problem(unknown, StatusCode::UNAUTHORIZED).await;

    for method in [Method::PUT, Method::DELETE] {
        let response = app
            .request(method, &path, Some(READ_TOKEN))
            .json(&size(1))
            .send()
            .await
            .unwrap();
        problem(response, StatusCode::FORBIDDEN).await;
    }
    let sync = app
        .request(Method::POST, "/v1/sync/product-sizes", Some(READ_TOKEN))
        .json(&json!({"updates": [{"sku": sku, "length_mm": 1, "width_mm": 1, "height_mm": 1, "weight_g": 1, "source_version": 1}]}))
        .send()
        .await
        .unwrap();
    problem(sync, StatusCode::FORBIDDEN).await;
    assert_eq!(app.primary_row(&sku).await, None);

    // A write token reads too; public endpoints need none.
    let read = app
        .request(Method::GET, &path, Some(WRITE_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND);
    for public in ["/healthz", "/readyz", "/openapi.json", "/docs"] {
        let response = app.request(Method::GET, public, None).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{public}");
    }
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_a_405_problem_naming_those_it_does() {
    let app = TestApp::spawn().await;
    let path = format!("/v1/products/{}/size", app.sku("allow"));
    let response = app
        .request(Method::POST, &path, Some(WRITE_TOKEN))
        .send()
        .await
        .unwrap();
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    let body = problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    for method in ["GET", "HEAD", "PUT", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
    assert!(body["detail"].as_str().unwrap().contains("PUT"), "{body}");
}

#[tokio::test]
async fn a_403_names_the_scope_the_route_needs() {
    let app = TestApp::spawn().await;
    let cases = [
        (
            Method::PUT,
            format!("/v1/products/{}/size", app.sku("scope")),
            READ_TOKEN,
            "write",
        ),
        (
            Method::GET,
            "/v1/admin/cache/warm".to_owned(),
            WRITE_TOKEN,
            "admin",
        ),
    ];
    for (method, path, token, scope) in cases {
        let response = app
            .request(method, &path, Some(token))
            .json(&size(1))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"").as_str()
        );
        let body = problem(response, StatusCode::FORBIDDEN).await;
        assert!(body["detail"].as_str().unwrap().contains(scope), "{body}");
    }
}

#[tokio::test]
async fn auth_disabled_never_opens_the_operator_endpoints() {
    let service = crate::helpers::ServiceProcess::start(
        "noauth",
        &[
            ("AUTH_DISABLED", "true"),
            ("API_READ_TOKENS", ""),
            ("API_WRITE_TOKENS", ""),
        ],
        false,
    )
    .await;
    let client = reqwest::Client::new();
    let read = client
        .get(format!("{}/v1/products/NOAUTH-1/size", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::NOT_FOUND, "reads are open");
    let admin = client
        .get(format!("{}/v1/admin/cache/warm", service.base))
        .send()
        .await
        .unwrap();
    problem(admin, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn unknown_skus_are_404() {
    let app = TestApp::spawn().await;
    let sku = app.sku("nobody");
    let body = problem(app.get(&sku).await, StatusCode::NOT_FOUND).await;
    assert!(body["detail"].as_str().unwrap().contains(&sku));
    problem(app.delete(&sku).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn an_older_source_version_on_put_is_409() {
    let app = TestApp::spawn().await;
    let sku = app.sku("wms");
    let mut newer = size(1);
    newer["source_version"] = json!(10);
    app.put(&sku, &newer).await;
    let mut older = size(2);
    older["source_version"] = json!(9);
    problem(app.put(&sku, &older).await, StatusCode::CONFLICT).await;
    assert_eq!(app.primary_row(&sku).await, Some((1, false, 1)));
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = TestApp::spawn().await;
    let sku = app.sku("big");
    let huge = format!(
        "{{\"length_mm\": 1, \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let response = app
        .request(
            Method::PUT,
            &format!("/v1/products/{sku}/size"),
            Some(WRITE_TOKEN),
        )
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(app.primary_row(&sku).await, None);
}

#[tokio::test]
async fn bodies_that_are_not_json_are_415() {
    let app = TestApp::spawn().await;
    let sku = app.sku("text");
    let response = app
        .request(
            Method::PUT,
            &format!("/v1/products/{sku}/size"),
            Some(WRITE_TOKEN),
        )
        .header("content-type", "text/plain")
        .body(size(1).to_string())
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let lookup = app
        .request(Method::POST, "/v1/product-sizes/lookup", Some(READ_TOKEN))
        .body("{\"skus\": [\"a\"]}")
        .send()
        .await
        .unwrap();
    problem(lookup, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert_eq!(app.primary_row(&sku).await, None);
}

#[tokio::test]
async fn invalid_fields_are_422_and_each_is_named() {
    let app = TestApp::spawn().await;
    let sku = app.sku("bad");
    let body = json!({"length_mm": 1.5, "width_mm": 0, "height_mm": "3", "weight_g": 50000001,
                      "size_label": "", "source_version": -1, "colour": "red"});
    let response = app.put(&sku, &body).await;
    let problem_body = problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        fields(&problem_body),
        [
            "length_mm",
            "width_mm",
            "height_mm",
            "weight_g",
            "size_label",
            "source_version",
            "colour"
        ]
    );
    let missing = problem(
        app.put(&sku, &json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(
        fields(&missing),
        ["length_mm", "width_mm", "height_mm", "weight_g"]
    );
    problem(
        app.put(&sku, &json!([1, 2])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(app.primary_row(&sku).await, None);

    let too_many: Vec<String> = (0..1001).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    problem(app.lookup(&refs).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    problem(app.lookup(&[]).await, StatusCode::UNPROCESSABLE_ENTITY).await;
    let bad_sku = problem(
        app.lookup(&["ok", "not ok"]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(fields(&bad_sku), ["skus[1]"]);
    problem(app.sync(&[]).await, StatusCode::UNPROCESSABLE_ENTITY).await;
}

#[tokio::test]
async fn a_write_with_the_primary_down_is_503_with_retry_after() {
    // The primary URL points at a port where nothing listens: a real, down dependency.
    let app = TestApp::spawn_with(Options {
        replica: Replica::None,
        database_url: format!(
            "postgres://postgres@127.0.0.1:{}/product_sizes",
            free_port()
        ),
        ..Options::default()
    })
    .await;
    let sku = app.sku("down");
    let response = app.put(&sku, &size(1)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        !body["detail"].as_str().unwrap().contains("127.0.0.1"),
        "no connection detail leaks"
    );
    problem(app.get(&sku).await, StatusCode::SERVICE_UNAVAILABLE).await;
    let id = format!("down-{}", app.id);
    let put = app
        .request(
            Method::PUT,
            &format!("/v1/products/{sku}/size"),
            Some(WRITE_TOKEN),
        )
        .json(&size(1));
    problem_of_kind(put, StatusCode::SERVICE_UNAVAILABLE, "unavailable", &id).await;
}

#[tokio::test]
async fn unknown_routes_are_404_problems() {
    let app = TestApp::spawn().await;
    let response = app
        .request(Method::GET, "/v1/nothing", Some(READ_TOKEN))
        .send()
        .await
        .unwrap();
    problem(response, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn every_kind_of_problem_has_its_documented_type_and_the_request_id() {
    let app = TestApp::spawn().await;
    let documented = documented_problem_types(&app).await;
    let sku = app.sku("kinds");
    let path = format!("/v1/products/{sku}/size");
    let mut stored = size(1);
    stored["source_version"] = json!(10);
    assert_eq!(app.put(&sku, &stored).await.status(), StatusCode::CREATED);
    let mut older = size(2);
    older["source_version"] = json!(9);
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let put = |token: &str| app.request(Method::PUT, &path, Some(token));
    let unknown = format!("/v1/products/{}/size", app.sku("nobody"));

    let cases = [
        (
            put(WRITE_TOKEN)
                .header("content-type", "application/json")
                .body("{\"length_mm\": "),
            StatusCode::BAD_REQUEST,
            "bad-request",
        ),
        (
            app.request(Method::GET, &path, None),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            put(READ_TOKEN).json(&size(3)),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            app.request(Method::GET, &unknown, Some(READ_TOKEN)),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            app.request(Method::GET, "/v1/nothing", Some(READ_TOKEN)),
            StatusCode::NOT_FOUND,
            "not-found",
        ),
        (
            app.request(Method::POST, &path, Some(WRITE_TOKEN)),
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
        ),
        (
            put(WRITE_TOKEN).json(&older),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            put(WRITE_TOKEN).header("If-Match", "\"7\"").json(&size(3)),
            StatusCode::PRECONDITION_FAILED,
            "precondition-failed",
        ),
        (
            put(WRITE_TOKEN)
                .header("content-type", "application/json")
                .body(huge),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
        ),
        (
            put(WRITE_TOKEN)
                .header("content-type", "text/plain")
                .body(size(3).to_string()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            put(WRITE_TOKEN).json(&json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
        ),
    ];
    for (n, (request, status, kind)) in cases.into_iter().enumerate() {
        assert!(
            documented.contains(&format!("`{PROBLEM_TYPE}{kind}`")),
            "{kind} is not documented: {documented}"
        );
        let id = format!("{kind}-{n}-{}", app.id);
        problem_of_kind(request, status, kind, &id).await;
    }
    assert_eq!(app.primary_row(&sku).await, Some((1, false, 1)));
}

#[tokio::test]
async fn a_timed_out_request_is_a_timeout_problem_with_the_request_id() {
    let app = TestApp::spawn_with(Options {
        request_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let sku = app.sku("stalled");
    let id = format!("stalled-{}", app.id);
    // A body promised and never finished: the request outlives its timeout.
    let mut stream = TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "PUT /v1/products/{sku}/size HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {WRITE_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\nx-request-id: {id}\r\n\r\n{{\"len"
    );
    stream.write_all(head.as_bytes()).await.unwrap();

    let (head, body) = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut stream))
        .await
        .expect("an answer within 10 s");
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains(&format!("x-request-id: {id}")), "{head}");
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["type"], format!("{PROBLEM_TYPE}timeout"), "{body}");
    assert_eq!(body["request_id"], id, "{body}");
}

/// One HTTP/1.1 answer read off `stream`: its head in lower case, and its body (of the length
/// its `content-length` says).
async fn read_answer(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .unwrap();
            if raw.len() >= end + 4 + length {
                return (head, raw[end + 4..end + 4 + length].to_vec());
            }
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the whole answer");
        raw.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn every_503_says_when_to_try_again() {
    let down = format!(
        "postgres://postgres@127.0.0.1:{}/product_sizes",
        free_port()
    );
    let app = TestApp::spawn_with(Options {
        replica: Replica::None,
        database_url: down,
        redis_url: Some(format!("redis://127.0.0.1:{}", free_port())),
        ..Options::default()
    })
    .await;
    let ready = app
        .request(Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.headers()["retry-after"], "1");
    let read = app.get(&app.sku("nowhere")).await;
    assert_eq!(read.headers()["retry-after"], "1");
    let body = problem(read, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["type"], format!("{PROBLEM_TYPE}unavailable"), "{body}");
}
