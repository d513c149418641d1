//! Health, readiness, the OpenAPI document and the docs page.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Options, Replica, TestApp, free_port};

#[tokio::test]
async fn healthz_and_readyz_report_each_dependency() {
    let app = TestApp::spawn().await;
    let health = app
        .request(Method::GET, "/healthz", None)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);

    let ready: Value = app
        .request(Method::GET, "/readyz", None)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
    let html = page.text().await.unwrap();
    assert!(html.contains("/openapi.json") && html.contains("swagger-ui-bundle.js"));
    let bundle = app
        .request(Method::GET, "/docs/swagger-ui-bundle.js", None)
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(bundle.bytes().await.unwrap().len() > 100_000);
}
