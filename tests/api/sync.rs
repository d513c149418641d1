//! WMS batches (C5): per-item results in input order; older or replayed updates change nothing.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::TestApp;

fn update(sku: &str, length_mm: i64, source_version: i64) -> Value {
    json!({"sku": sku, "length_mm": length_mm, "width_mm": 2, "height_mm": 3, "weight_g": 4,
           "source_version": source_version})
}

fn statuses(body: &Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_batch_reports_each_item_in_input_order() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.sku("a"), app.sku("b"));
    let batch = [
        update(&a, 10, 5),
        json!({"sku": "not a sku", "length_mm": 1}),
        update(&b, 20, 1),
        json!(42),
        update(&a, 11, 6),
    ];
    let response = app.sync(&batch).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-consistency-token"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        statuses(&body),
        ["applied", "invalid", "applied", "invalid", "applied"]
    );
    assert_eq!(
        (body["applied"].as_i64(), body["invalid"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(body["results"][0]["version"], 1);
    assert_eq!(body["results"][4]["version"], 2);
    let error = body["results"][1]["error"].as_str().unwrap();
    assert!(
        error.contains("sku") && error.contains("width_mm") && error.contains("source_version"),
        "{error}"
    );
    assert_eq!(app.primary_row(&a).await, Some((2, false, 11)));

    let read: Value = app.get(&a).await.json().await.unwrap();
    assert_eq!(
        (read["version"].as_i64(), read["source_version"].as_i64()),
        (Some(2), Some(6))
    );
}

#[tokio::test]
async fn older_source_versions_never_apply_and_replays_change_nothing() {
    let app = TestApp::spawn().await;
    let (a, b) = (app.sku("a"), app.sku("b"));
    let batch = [update(&a, 10, 5), update(&b, 20, 7)];
    app.sync(&batch).await;

    let replay: Value = app.sync(&batch).await.json().await.unwrap();
    assert_eq!(statuses(&replay), ["unchanged", "unchanged"]);
    assert_eq!(replay["unchanged"], 2);

    let out_of_order: Value = app
        .sync(&[update(&a, 99, 4), update(&b, 99, 7)])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(statuses(&out_of_order), ["stale", "stale"]);
    assert_eq!(out_of_order["stale"], 2);
    assert_eq!(out_of_order["results"][0]["version"], 1);

    assert_eq!(app.primary_row(&a).await, Some((1, false, 10)));
    assert_eq!(app.primary_row(&b).await, Some((1, false, 20)));
    let read: Value = app.get(&a).await.json().await.unwrap();
    assert_eq!(read["length_mm"], 10);
}

#[tokio::test]
async fn a_replay_after_a_delete_does_not_resurrect() {
    let app = TestApp::spawn().await;
    let sku = app.sku("gone");
    app.sync(&[update(&sku, 1, 3)]).await;
    app.delete(&sku).await;

    let replay: Value = app.sync(&[update(&sku, 1, 3)]).await.json().await.unwrap();
    assert_eq!(statuses(&replay), ["stale"]);
    assert_eq!(app.get(&sku).await.status(), StatusCode::NOT_FOUND);

    let newer: Value = app.sync(&[update(&sku, 1, 4)]).await.json().await.unwrap();
    assert_eq!(statuses(&newer), ["applied"]);
    assert_eq!(newer["results"][0]["version"], 3);
}

#[tokio::test]
async fn a_thousand_items_apply_in_one_batch() {
    let app = TestApp::spawn().await;
    let batch: Vec<Value> = (0..1000)
        .map(|i| update(&app.sku(&format!("bulk{i}")), i + 1, 1))
        .collect();
    let body: Value = app.sync(&batch).await.json().await.unwrap();
    assert_eq!(body["applied"], 1000);
    let skus: Vec<String> = (0..1000).map(|i| app.sku(&format!("bulk{i}"))).collect();
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    let found: Value = app.lookup(&refs).await.json().await.unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 1000);
    assert_eq!(found["items"][999]["length_mm"], 1000);
}

#[tokio::test]
async fn a_sku_may_appear_several_times_in_one_batch() {
    let app = TestApp::spawn().await;
    let (sku, other) = (app.sku("twice"), app.sku("other"));
    app.sync(&[update(&sku, 1, 1)]).await;
    let body: Value = app
        .sync(&[
            update(&sku, 2, 2),
            update(&other, 5, 1),
            update(&sku, 3, 3),
            update(&sku, 3, 3),
            update(&sku, 9, 2),
        ])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        statuses(&body),
        ["applied", "applied", "applied", "unchanged", "stale"]
    );
    let versions: Vec<i64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [2, 1, 3, 3, 3]);
    assert_eq!(app.primary_row(&sku).await, Some((3, false, 3)));
    let read: Value = app.get(&sku).await.json().await.unwrap();
    assert_eq!(
        (read["version"].as_i64(), read["length_mm"].as_i64()),
        (Some(3), Some(3))
    );
}
