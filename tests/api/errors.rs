//! Every error status of the API: a clear problem+json, and nothing changed.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Options, READ_TOKEN, Replica, TestApp, WRITE_TOKEN, free_port, size};

async fn problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["detail"].is_string());
    body
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
