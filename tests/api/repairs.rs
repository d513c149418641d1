//! Cache updates lost while Redis keeps its data (traffic blackholed, then new connections): every
//! SKU an instance failed to update stays protected until it is repaired, however many there
//! are, and instances share the repairs without doing any twice.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, eventually, read_source};
use crate::processes::OwnRedis;
use crate::proxy::TcpProxy;

const OWED: usize = 10_000;
/// The most SKUs one lookup or sync takes.
const BATCH: usize = 1_000;

fn through(proxy: &TcpProxy) -> Options {
    Options {
        redis_url: Some(proxy.url()),
        ..Options::default()
    }
}

fn skus(app: &TestApp) -> Vec<String> {
    (0..OWED).map(|i| app.sku(&format!("owed-{i}"))).collect()
}

/// Writes every SKU at `length_mm` (WMS `source_version` = `length_mm`), in batches.
async fn sync_all(app: &TestApp, skus: &[String], length_mm: i64) {
    for chunk in skus.chunks(BATCH) {
        let updates: Vec<Value> = chunk
            .iter()
            .map(|sku| {
                json!({"sku": sku, "length_mm": length_mm, "width_mm": 2, "height_mm": 3,
                       "weight_g": 4, "source_version": length_mm})
            })
            .collect();
        let response = app.sync(&updates).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// Reads every SKU; each must have `length_mm`. Returns how many lookups the cache served.
async fn read_all(app: &TestApp, skus: &[String], length_mm: i64) -> usize {
    let mut from_cache = 0;
    for chunk in skus.chunks(BATCH) {
        let asked: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let response = app.lookup(&asked).await;
        assert_eq!(response.status(), StatusCode::OK);
        from_cache += usize::from(read_source(&response) == "cache");
        let body: Value = response.json().await.unwrap();
        let items = body["items"].as_array().unwrap();
        assert_eq!(items.len(), chunk.len());
        let stale: Vec<&Value> = items
            .iter()
            .filter(|item| item["length_mm"] != length_mm)
            .collect();
        assert!(
            stale.is_empty(),
            "{} of {} read older than acknowledged, e.g. {}",
            stale.len(),
            chunk.len(),
            stale[0]
        );
    }
    from_cache
}

/// Waits until no repair of `skus` is owed and every SKU is served from the cache at
/// `length_mm`. Only these SKUs' records count: the app's backlog also holds the changes other
/// tests keep making (every cache follows every writer), and may never be seen at zero while
/// they run.
async fn all_repaired(apps: &[&TestApp], skus: &[String], length_mm: i64) {
    for app in apps {
        eventually(60, "every owed repair is applied", || async {
            app.owed_records(skus).await == 0
                && app.metric("product_size_cache_repairs_pending").await == 0.0
        })
        .await;
        eventually(30, "every SKU is served from the cache again", || async {
            read_all(app, skus, length_mm).await == skus.len().div_ceil(BATCH)
        })
        .await;
    }
}

#[tokio::test]
async fn ten_thousand_updates_lost_while_redis_keeps_its_data_are_never_served_stale() {
    let redis = OwnRedis::start().await;
    let link = TcpProxy::to(redis.port).await;
    let app = TestApp::spawn_with(through(&link)).await;
    let skus = skus(&app);
    sync_all(&app, &skus, 1).await;
    assert_eq!(read_all(&app, &skus, 1).await, OWED / BATCH, "all cached");

    link.blackhole();
    sync_all(&app, &skus, 2).await;
    eventually(30, "the backlog is on /metrics", || async {
        app.metric("product_size_cache_repairs_backlog").await >= OWED as f64
            && app
                .metric("product_size_cache_repairs_oldest_age_seconds")
                .await
                > 0.0
    })
    .await;

    // Redis, which never saw the updates, is reachable again: every SKU is still cached at
    // 1, in the same epoch.
    link.restore();
    // Newest first: repairs go oldest first, so these wait longest for theirs.
    let newest_first: Vec<String> = skus.iter().rev().cloned().collect();
    read_all(&app, &newest_first, 2).await;
    all_repaired(&[&app], &skus, 2).await;
}

#[tokio::test]
async fn instances_share_orphaned_repairs_without_doing_any_twice() {
    let redis = OwnRedis::start().await;
    let link = TcpProxy::to(redis.port).await;
    let mut writer = TestApp::spawn_with(through(&link)).await;
    let skus = skus(&writer);
    sync_all(&writer, &skus, 1).await;
    link.blackhole();
    sync_all(&writer, &skus, 2).await;
    // The writer goes away owing every update; Redis is reachable again with the old entries.
    writer.stop().await;
    link.restore();

    let (first, second) = tokio::join!(
        writer.sibling(through(&link)),
        writer.sibling(through(&link))
    );
    read_all(&first, &skus, 2).await;
    all_repaired(&[&first, &second], &skus, 2).await;
    // Counted just after each batch's records are cleared: read once the count is complete.
    let applied = || async {
        first.metric("product_size_cache_repairs_applied").await
            + second.metric("product_size_cache_repairs_applied").await
    };
    eventually(30, "every repair is counted", || async {
        applied().await >= OWED as f64
    })
    .await;
    assert_eq!(
        applied().await,
        OWED as f64,
        "each repair applied exactly once"
    );
}
