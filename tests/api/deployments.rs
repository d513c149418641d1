//! The core read/write paths against the Redis deployments operators already run: a
//! three-master Redis Cluster and a Sentinel-managed pair.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, read_source, size, version_of};
use crate::processes::{OwnRedisCluster, OwnSentinel};

async fn core_reads_and_writes(app: &TestApp) {
    let skus: Vec<String> = (0..12).map(|i| app.sku(&format!("d{i}"))).collect();
    for sku in &skus {
        assert_eq!(app.put(sku, &size(1)).await.status(), StatusCode::CREATED);
    }
    let first = &skus[0];
    assert_eq!(read_source(&app.get(first).await), "cache");
    assert_eq!(
        version_of(&app.put(first, &size(2)).await.json().await.unwrap()),
        2
    );
    app.evict(first).await;
    let read = app.get(first).await;
    assert_ne!(read_source(&read), "cache");
    assert_eq!(version_of(&read.json().await.unwrap()), 2);
    assert_eq!(read_source(&app.get(first).await), "cache", "filled again");

    // SKUs over many hash slots in one lookup and one batch.
    let refs: Vec<&str> = skus.iter().map(String::as_str).collect();
    let lookup: Value = app.lookup(&refs).await.json().await.unwrap();
    assert_eq!(lookup["items"].as_array().unwrap().len(), 12);
    let batch: Vec<Value> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "length_mm": 7, "width_mm": 1, "height_mm": 1, "weight_g": 1, "source_version": 1}))
        .collect();
    let synced: Value = app.sync(&batch).await.json().await.unwrap();
    assert_eq!(synced["applied"], 12);
    let lookup: Value = app.lookup(&refs).await.json().await.unwrap();
    assert!(
        lookup["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["length_mm"] == 7)
    );

    assert_eq!(app.delete(first).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(first).await.status(), StatusCode::NOT_FOUND);
    app.evict(first).await;
    assert_eq!(app.get(first).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn core_reads_and_writes_work_on_a_redis_cluster() {
    let cluster = OwnRedisCluster::start().await;
    let app = TestApp::spawn_with(Options {
        redis_url: Some(cluster.url()),
        ..Options::default()
    })
    .await;
    core_reads_and_writes(&app).await;
}

#[tokio::test]
async fn core_reads_and_writes_work_behind_redis_sentinel() {
    let sentinel = OwnSentinel::start().await;
    let app = TestApp::spawn_with(Options {
        redis_url: Some(sentinel.url()),
        ..Options::default()
    })
    .await;
    core_reads_and_writes(&app).await;
}
