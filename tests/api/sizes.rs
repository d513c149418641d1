//! The happy paths of every /v1 endpoint.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{READ_TOKEN, TestApp, WRITE_TOKEN, read_source, size, version_of};

#[tokio::test]
async fn put_creates_then_replaces_and_get_returns_the_latest() {
    let app = TestApp::spawn().await;
    let sku = app.sku("shoe");

    let created = app.put(&sku, &size(100)).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["etag"], "\"1\"");
    let token = created.headers()["x-consistency-token"].to_str().unwrap();
    assert!(
        token.len() == 16 && token.chars().all(|c| c.is_ascii_hexdigit()),
        "{token}"
    );
    let body: Value = created.json().await.unwrap();
    assert_eq!(body["sku"], sku);
    assert_eq!(body["length_mm"], 100);
    assert_eq!(body["size_label"], "M");
    assert_eq!(body["source_version"], Value::Null);
    let updated_at = body["updated_at"].as_str().unwrap();
    assert!(updated_at.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(updated_at).is_ok());

    let replaced = app.put(&sku, &size(101)).await;
    assert_eq!(replaced.status(), StatusCode::OK);
    assert_eq!(version_of(&replaced.json().await.unwrap()), 2);

    let read = app.get(&sku).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["etag"], "\"2\"");
    assert_eq!(read.headers()["content-type"], "application/json");
    let body: Value = read.json().await.unwrap();
    assert_eq!(
        (body["length_mm"].as_i64(), body["version"].as_i64()),
        (Some(101), Some(2))
    );
}

#[tokio::test]
async fn writing_the_same_content_is_a_no_op() {
    let app = TestApp::spawn().await;
    let sku = app.sku("same");
    app.put(&sku, &size(5)).await;

    let again = app.put(&sku, &size(5)).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["etag"], "\"1\"");
    assert!(again.headers().contains_key("x-consistency-token"));
    assert_eq!(app.primary_row(&sku).await, Some((1, false, 5)));
}

#[tokio::test]
async fn integral_floats_are_integers() {
    let app = TestApp::spawn().await;
    let sku = app.sku("float");
    let response = app
        .put(
            &sku,
            &json!({"length_mm": 3609.0, "width_mm": 1, "height_mm": 1, "weight_g": 1}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.json::<Value>().await.unwrap()["length_mm"], 3609);
}

#[tokio::test]
async fn the_second_read_comes_from_the_cache() {
    let app = TestApp::spawn().await;
    let sku = app.sku("cached");
    app.put(&sku, &size(7)).await;
    app.evict(&sku).await;
    app.wait_replica_caught_up().await;

    let first = app.get(&sku).await;
    assert_eq!(read_source(&first), "replica");
    let second = app.get(&sku).await;
    assert_eq!(read_source(&second), "cache");
    assert_eq!(version_of(&second.json().await.unwrap()), 1);
}

#[tokio::test]
async fn if_none_match_gives_304_when_current() {
    let app = TestApp::spawn().await;
    let sku = app.sku("etag");
    app.put(&sku, &size(1)).await;

    let not_modified = app
        .request(
            Method::GET,
            &format!("/v1/products/{sku}/size"),
            Some(READ_TOKEN),
        )
        .header("If-None-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], "\"1\"");

    let modified = app
        .request(
            Method::GET,
            &format!("/v1/products/{sku}/size"),
            Some(READ_TOKEN),
        )
        .header("If-None-Match", "\"0\"")
        .send()
        .await
        .unwrap();
    assert_eq!(modified.status(), StatusCode::OK);
}

#[tokio::test]
async fn delete_removes_and_recreate_continues_the_version() {
    let app = TestApp::spawn().await;
    let sku = app.sku("gone");
    app.put(&sku, &size(1)).await;

    let deleted = app.delete(&sku).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(deleted.headers().contains_key("x-consistency-token"));
    assert_eq!(app.get(&sku).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&sku).await.status(), StatusCode::NOT_FOUND);

    let recreated = app.put(&sku, &size(2)).await;
    assert_eq!(recreated.status(), StatusCode::CREATED);
    assert_eq!(
        recreated.headers()["etag"],
        "\"3\"",
        "an ETag never names two contents"
    );
}

#[tokio::test]
async fn conditional_writes() {
    let app = TestApp::spawn().await;
    let sku = app.sku("cond");
    let path = format!("/v1/products/{sku}/size");
    let put = |if_header: (&'static str, &'static str), length| {
        app.request(Method::PUT, &path, Some(WRITE_TOKEN))
            .header(if_header.0, if_header.1)
            .json(&size(length))
            .send()
    };

    assert_eq!(
        put(("If-None-Match", "*"), 1).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        put(("If-None-Match", "*"), 2).await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        put(("If-Match", "\"7\""), 2).await.unwrap().status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(
        put(("If-Match", "\"1\""), 2).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(app.primary_row(&sku).await, Some((2, false, 2)));

    let stale_delete = app
        .request(Method::DELETE, &path, Some(WRITE_TOKEN))
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale_delete.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(app.primary_row(&sku).await, Some((2, false, 2)));
}

#[tokio::test]
async fn lookup_answers_in_order_and_names_what_is_missing() {
    let app = TestApp::spawn().await;
    let (a, b, missing, deleted) = (
        app.sku("a"),
        app.sku("b"),
        app.sku("missing"),
        app.sku("deleted"),
    );
    app.put(&a, &size(1)).await;
    app.put(&b, &size(2)).await;
    app.put(&deleted, &size(3)).await;
    app.delete(&deleted).await;
    app.evict(&b).await;

    let response = app.lookup(&[&b, &missing, &a, &deleted, &b]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-read-source"));
    let body: Value = response.json().await.unwrap();
    let items: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(items, [b.as_str(), a.as_str()]);
    assert_eq!(body["not_found"], json!([missing, deleted]));
    assert_eq!(body["items"][0]["length_mm"], 2);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = TestApp::spawn().await;
    let echoed = app
        .request(Method::GET, "/healthz", None)
        .header("X-Request-Id", "order-42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "order-42");
    let generated = app
        .request(Method::GET, "/healthz", None)
        .send()
        .await
        .unwrap();
    assert!(!generated.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn the_documented_request_examples_are_accepted() {
    let app = TestApp::spawn().await;
    let document = app.openapi_document().await;
    let examples = |method: &str, path: &str| -> Vec<Value> {
        let content = &document["paths"][path][method]["requestBody"]["content"];
        let examples: Vec<Value> = content["application/json"]["examples"]
            .as_object()
            .into_iter()
            .flat_map(|examples| examples.values().map(|e| e["value"].clone()))
            .collect();
        assert!(!examples.is_empty(), "{method} {path} has examples");
        examples
    };

    for (n, body) in examples("put", "/v1/products/{sku}/size")
        .into_iter()
        .enumerate()
    {
        let response = app.put(&app.sku(&format!("example-{n}")), &body).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{body}");
    }
    for body in examples("post", "/v1/product-sizes/lookup") {
        let response = app
            .request(Method::POST, "/v1/product-sizes/lookup", Some(READ_TOKEN))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{body}");
    }
    for mut body in examples("post", "/v1/sync/product-sizes") {
        // Under this test's own SKUs: the shared database's rows of the examples' SKUs stay
        // as they are.
        for update in body["updates"].as_array_mut().unwrap() {
            update["sku"] = json!(app.sku(update["sku"].as_str().unwrap()));
        }
        let response = app
            .request(Method::POST, "/v1/sync/product-sizes", Some(WRITE_TOKEN))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{body}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["invalid"], 0, "{outcome}");
    }
}
