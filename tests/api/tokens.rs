//! `X-Consistency-Token` on cache hits: a read carrying a token gets data at least that new
//! even when the cache it reads holds an older version it has no other way to doubt.

use reqwest::Response;
use serde_json::Value;

use crate::helpers::{Options, TestApp, eventually, read_source, size, version_of};
use crate::processes::OwnRedis;
use crate::proxy::TcpProxy;

fn token_of(written: &Response) -> String {
    written.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Reads `sku` on `app` until the cache serves it, at `version`.
async fn cached_at(app: &TestApp, sku: &str, version: i64) {
    eventually(30, "the read is served from the cache", || async {
        let read = app.get(sku).await;
        let source = read_source(&read);
        let body: Value = read.json().await.unwrap();
        source == "cache" && version_of(&body) == version
    })
    .await;
}

#[tokio::test]
async fn a_token_from_another_deployment_is_honoured_on_a_cache_hit() {
    let writer = TestApp::spawn().await;
    // Its own CACHE_KEY_PREFIX on the same database: the writer's writes reach its cache
    // only through the change records (C7), within a second, not before the writer answers.
    let other = TestApp::spawn().await;
    let sku = writer.sku("other-deployment");
    writer.put(&sku, &size(1)).await;
    cached_at(&other, &sku, 1).await;

    let written = writer.put(&sku, &size(2)).await;
    let read = other.get_with_token(&sku, &token_of(&written)).await;
    let source = read_source(&read);
    assert_eq!(
        version_of(&read.json().await.unwrap()),
        2,
        "served from {source} older than the token"
    );
    // The fill, or the applied change, stamped the new version: reads with the token become
    // hits (right after the write, the applied change may still hold the SKU back).
    eventually(30, "a read with the token is a hit", || async {
        let again = other.get_with_token(&sku, &token_of(&written)).await;
        let source = read_source(&again);
        let version = version_of(&again.json().await.unwrap());
        assert_eq!(version, 2, "served from {source} older than the token");
        source == "cache"
    })
    .await;
}

#[tokio::test]
async fn a_token_is_honoured_by_an_instance_that_never_saw_the_failed_cache_update() {
    let redis = OwnRedis::start().await;
    let writer_link = TcpProxy::to(redis.port).await;
    let writer = TestApp::spawn_with(Options {
        redis_url: Some(writer_link.url()),
        ..Options::default()
    })
    .await;
    let reader = writer
        .sibling(Options {
            redis_url: Some(redis.url()),
            ..Options::default()
        })
        .await;
    let sku = writer.sku("lost-update");
    writer.put(&sku, &size(1)).await;
    cached_at(&reader, &sku, 1).await;

    // The writer's cache update never reaches Redis; only the writer knows it owes one.
    writer_link.blackhole();
    let written = writer.put(&sku, &size(2)).await;
    assert!(written.status().is_success());
    let read = reader.get_with_token(&sku, &token_of(&written)).await;
    let source = read_source(&read);
    assert_eq!(
        version_of(&read.json().await.unwrap()),
        2,
        "served from {source} older than the token"
    );
    writer_link.restore();
}
