//! Writers other than the service (a data fix in psql, a backfill, another program): the table
//! keeps versions monotonic for them, so a version always names one content and the cache's
//! compare-and-set can replace what they changed; the consistency inspector notices a cache
//! that goes on serving what they replaced.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, eventually, read_source, size, version_of};

/// The stored version, content and tombstone flag of `sku`, straight from the primary.
async fn stored(app: &TestApp, sku: &str) -> (i64, i32, bool) {
    sqlx::query_as("SELECT version, weight_g, deleted FROM product_sizes WHERE sku = $1")
        .bind(sku)
        .fetch_one(&app.primary)
        .await
        .unwrap()
}

/// Runs `statement` (with `sku` as `$1`) on the primary, outside the service; returns the WAL
/// position after its commit as a consistency token (16 hex digits), which a read can send.
async fn outside(app: &TestApp, statement: &'static str, sku: &str) -> String {
    sqlx::query(statement)
        .bind(sku)
        .execute(&app.primary)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT lpad(to_hex((pg_current_wal_lsn() - '0/0')::bigint), 16, '0')")
        .fetch_one(&app.primary)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_update_that_leaves_the_version_alone_gets_a_higher_one() {
    let app = TestApp::spawn().await;
    let sku = app.sku("fix");
    app.put(&sku, &size(1)).await;
    assert_eq!(read_source(&app.get(&sku).await), "cache");

    let token = outside(
        &app,
        "UPDATE product_sizes SET weight_g = 777 WHERE sku = $1",
        &sku,
    )
    .await;
    assert_eq!(stored(&app, &sku).await, (2, 777, false));

    // The cache held version 1 with the old weight; a read that must see the fix gets it,
    // and no version is served with two contents.
    let read: Value = app.get_with_token(&sku, &token).await.json().await.unwrap();
    assert_eq!(
        (version_of(&read), read["weight_g"].as_i64()),
        (2, Some(777))
    );

    // Changing nothing, or lowering the version, keeps the stored one.
    outside(
        &app,
        "UPDATE product_sizes SET weight_g = weight_g WHERE sku = $1",
        &sku,
    )
    .await;
    outside(
        &app,
        "UPDATE product_sizes SET version = 1 WHERE sku = $1",
        &sku,
    )
    .await;
    assert_eq!(stored(&app, &sku).await, (2, 777, false));
    // A writer that raises the version itself keeps its own.
    outside(
        &app,
        "UPDATE product_sizes SET weight_g = 778, version = 10 WHERE sku = $1",
        &sku,
    )
    .await;
    assert_eq!(stored(&app, &sku).await, (10, 778, false));
}

#[tokio::test]
async fn a_delete_keeps_a_tombstone_that_a_re_create_continues() {
    let app = TestApp::spawn().await;
    let sku = app.sku("outside-delete");
    app.put(&sku, &size(1)).await;
    app.put(&sku, &size(2)).await;

    let token = outside(&app, "DELETE FROM product_sizes WHERE sku = $1", &sku).await;
    assert_eq!(stored(&app, &sku).await, (3, 400, true));
    assert_eq!(
        app.get_with_token(&sku, &token).await.status(),
        StatusCode::NOT_FOUND
    );
    // Deleting a tombstone changes nothing.
    outside(&app, "DELETE FROM product_sizes WHERE sku = $1", &sku).await;
    assert_eq!(stored(&app, &sku).await.0, 3);

    let recreated = app.put(&sku, &size(4)).await;
    assert_eq!(recreated.status(), StatusCode::CREATED);
    assert_eq!(version_of(&recreated.json().await.unwrap()), 4);
    // Re-created from outside, by an UPDATE: the version goes on too.
    outside(&app, "DELETE FROM product_sizes WHERE sku = $1", &sku).await;
    outside(
        &app,
        "UPDATE product_sizes SET deleted = false WHERE sku = $1",
        &sku,
    )
    .await;
    assert_eq!(stored(&app, &sku).await, (6, 400, false));
}

#[tokio::test]
async fn an_insert_from_outside_needs_no_version_and_no_sku_is_renamed() {
    let app = TestApp::spawn().await;
    let sku = app.sku("outside-insert");
    let token = outside(
        &app,
        "INSERT INTO product_sizes (sku, length_mm, width_mm, height_mm, weight_g) \
         VALUES ($1, 10, 20, 30, 40)",
        &sku,
    )
    .await;
    let read = app.get_with_token(&sku, &token).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(version_of(&read.json().await.unwrap()), 1);

    let renamed = sqlx::query("UPDATE product_sizes SET sku = sku || 'x' WHERE sku = $1")
        .bind(&sku)
        .execute(&app.primary)
        .await
        .expect_err("a SKU is never renamed");
    assert!(
        renamed.to_string().contains("cannot be renamed"),
        "{renamed}"
    );
    assert_eq!(stored(&app, &sku).await, (1, 40, false));
}

#[tokio::test]
async fn the_inspector_counts_hits_the_cache_keeps_serving_older_than_committed() {
    let app = TestApp::spawn().await;
    let sku = app.sku("inspected");
    app.put(&sku, &size(1)).await;
    assert_eq!(read_source(&app.get(&sku).await), "cache");
    eventually(10, "the sampled hit is checked", || async {
        app.metric("product_size_consistency_checked_total").await >= 1.0
    })
    .await;
    assert_eq!(
        app.metric("product_size_consistency_divergent_total").await,
        0.0
    );
    assert_eq!(app.metric("product_size_consistency_ratio").await, 1.0);

    // A change the cache does not learn of: it goes on serving version 1.
    outside(
        &app,
        "UPDATE product_sizes SET weight_g = 999 WHERE sku = $1",
        &sku,
    )
    .await;
    eventually(10, "the divergence is counted", || async {
        let read = app.get(&sku).await;
        assert_eq!(read_source(&read), "cache");
        app.metric("product_size_consistency_divergent_total").await >= 1.0
    })
    .await;
    assert!(app.metric("product_size_consistency_ratio").await < 1.0);
}
