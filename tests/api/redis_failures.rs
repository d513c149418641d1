//! C2 under the ways production Redis loses data that the epoch alone does not see: a restart
//! from an older snapshot, an instance that only writes while Redis starts a new epoch, and a
//! write that finds its content already stored by a writer that never updated the cache.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Options, TestApp, eventually, read_source, size, version_of};
use crate::processes::{OwnRedis, OwnRedisCluster};

fn with_redis(redis: &OwnRedis) -> Options {
    Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    }
}

/// Reads `sku` on `app` until one comes from the cache; every read must be `version`.
async fn served_from_the_cache_at(app: &TestApp, sku: &str, version: i64) {
    eventually(30, "a read is served from the cache again", || async {
        let read = app.get(sku).await;
        let source = read_source(&read);
        let body: Value = read.json().await.unwrap();
        assert_eq!(
            version_of(&body),
            version,
            "read from {source} is older than the acknowledged write"
        );
        source == "cache"
    })
    .await;
}

#[tokio::test]
async fn a_redis_restarted_from_an_older_snapshot_serves_no_version_older_than_acknowledged() {
    let mut redis = OwnRedis::start_with_snapshots().await;
    let writer = TestApp::spawn_with(with_redis(&redis)).await;
    let reader = writer.sibling(with_redis(&redis)).await;
    let sku = writer.sku("snapshot");
    writer.put(&sku, &size(1)).await;
    served_from_the_cache_at(&reader, &sku, 1).await;
    redis.snapshot().await;

    let acknowledged = version_of(&writer.put(&sku, &size(2)).await.json().await.unwrap());
    served_from_the_cache_at(&reader, &sku, acknowledged).await;
    // Back with the snapshot's data: version 1, its fence and the same epoch.
    redis.restart().await;

    for app in [&reader, &writer] {
        served_from_the_cache_at(app, &sku, acknowledged).await;
    }
}

#[tokio::test]
async fn a_cluster_master_restarted_from_an_older_snapshot_serves_no_version_older_than_acknowledged()
 {
    let mut cluster = OwnRedisCluster::start().await;
    let options = || Options {
        redis_url: Some(cluster.url()),
        ..Options::default()
    };
    let writer = TestApp::spawn_with(options()).await;
    let reader = writer.sibling(options()).await;
    // A SKU on another master than the epoch's: that master alone goes back in time.
    let epoch_node = cluster
        .node_holding(&format!("{}:meta", writer.key_prefix))
        .await;
    let mut sku = String::new();
    for i in 0.. {
        sku = writer.sku(&format!("shard-{i}"));
        if cluster.node_holding(&writer.entry_key(&sku)).await != epoch_node {
            break;
        }
    }
    let node = cluster.node_holding(&writer.entry_key(&sku)).await;
    writer.put(&sku, &size(1)).await;
    served_from_the_cache_at(&reader, &sku, 1).await;
    cluster.snapshot_node(node).await;

    let acknowledged = version_of(&writer.put(&sku, &size(2)).await.json().await.unwrap());
    served_from_the_cache_at(&reader, &sku, acknowledged).await;
    // That master is back with the snapshot's entry and fence (version 1); the epoch, on
    // another master, never went away.
    cluster.restart_node(node).await;

    for app in [&reader, &writer] {
        served_from_the_cache_at(app, &sku, acknowledged).await;
    }
}

#[tokio::test]
async fn a_write_whose_high_water_mark_was_not_raised_counts_as_a_failed_update() {
    let cluster = OwnRedisCluster::start().await;
    let app = TestApp::spawn_with(Options {
        redis_url: Some(cluster.url()),
        ..Options::default()
    })
    .await;
    // The entry on one master, the epoch's high-water mark on another.
    let epoch_node = cluster
        .node_holding(&format!("{}:meta", app.key_prefix))
        .await;
    let mut sku = String::new();
    for i in 0.. {
        sku = app.sku(&format!("mark-{i}"));
        if cluster.node_holding(&app.entry_key(&sku)).await != epoch_node {
            break;
        }
    }
    app.put(&sku, &size(1)).await;
    served_from_the_cache_at(&app, &sku, 1).await;
    let repaired = app.metric("product_size_cache_repairs_applied").await;

    // The mark's master is out of memory: the entry lands, the mark does not.
    for setting in [["maxmemory-policy", "noeviction"], ["maxmemory", "1"]] {
        let set = ["CONFIG", "SET", setting[0], setting[1]];
        cluster.command_node(epoch_node, &set).await;
    }
    let written = app.put(&sku, &size(2)).await;
    cluster
        .command_node(epoch_node, &["CONFIG", "SET", "maxmemory", "0"])
        .await;
    assert!(
        [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(&written.status()),
        "{}",
        written.status()
    );
    eventually(20, "the update whose mark failed is repaired", || async {
        app.metric("product_size_cache_repairs_applied").await > repaired
    })
    .await;
}

#[tokio::test]
async fn an_instance_that_only_writes_stamps_the_epoch_readers_trust() {
    let redis = OwnRedis::start().await;
    let writer = TestApp::spawn_with(with_redis(&redis)).await;
    let reader = writer.sibling(with_redis(&redis)).await;
    let sku = writer.sku("writer-only");
    writer.put(&sku, &size(1)).await;
    served_from_the_cache_at(&reader, &sku, 1).await;

    // Redis loses its data; the reader starts the next epoch.
    writer.flushall().await;
    served_from_the_cache_at(&reader, &sku, 1).await;

    let acknowledged = version_of(&writer.put(&sku, &size(2)).await.json().await.unwrap());
    let read = reader.get(&sku).await;
    assert_eq!(
        read_source(&read),
        "cache",
        "the write's install must be visible in the epoch readers use"
    );
    assert_eq!(version_of(&read.json().await.unwrap()), acknowledged);
}

#[tokio::test]
async fn an_unchanged_write_leaves_the_cache_holding_the_stored_version() {
    let app = TestApp::spawn().await;
    let sku = app.sku("unchanged");
    app.put(&sku, &size(1)).await;
    served_from_the_cache_at(&app, &sku, 1).await;

    // A writer committed version 2 and died before its cache update (and before recording
    // the repair, as a writer outside this service would).
    sqlx::query(
        "UPDATE product_sizes SET length_mm = 2, version = 2, updated_at = now() WHERE sku = $1",
    )
    .bind(&sku)
    .execute(&app.primary)
    .await
    .unwrap();

    let written = app.put(&sku, &size(2)).await;
    assert_eq!(written.status(), StatusCode::OK);
    let acknowledged = version_of(&written.json().await.unwrap());
    assert_eq!(acknowledged, 2, "the content was already stored");
    let read = app.get(&sku).await;
    assert_eq!(version_of(&read.json().await.unwrap()), acknowledged);
}

#[tokio::test]
async fn a_redis_that_may_evict_fences_is_reported() {
    let redis = OwnRedis::start().await;
    let app = TestApp::spawn_with(with_redis(&redis)).await;
    let ready = app.readiness().await;
    assert_eq!(ready["cache_eviction_policy"], "noeviction");
    assert_eq!(ready["cache_fences_evictable"], false);

    redis.configure("maxmemory-policy", "volatile-ttl").await;
    eventually(30, "the eviction policy is reported", || async {
        let ready = app.readiness().await;
        let metrics = app.scrape_metrics().await;
        ready["cache_fences_evictable"] == true
            && metrics
                .lines()
                .any(|line| line == "product_size_cache_fences_evictable 1")
    })
    .await;
    assert_eq!(
        app.readiness().await["cache_eviction_policy"],
        "volatile-ttl"
    );
}
