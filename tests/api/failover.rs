//! A PostgreSQL failover: a standby that missed the last writes is promoted. Asynchronous
//! replication lost those writes; the new primary reuses their version numbers for other
//! content. No version may then name two contents, and no standby left on the old history
//! may be read.

use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use serde_json::Value;

use crate::helpers::{Options, Replica, TestApp, eventually, read_source, size, version_of};
use crate::processes::OwnPostgres;
use crate::proxy::TcpProxy;

/// Puts `body` until the new primary takes it (connections to the old one fail first).
async fn put_after_failover(app: &TestApp, sku: &str, body: &Value) -> Response {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = app.put(sku, body).await;
        if response.status().is_success() {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "the new primary never took the write: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every read of `sku` is version `version` with `length_mm`.
async fn reads_are(app: &TestApp, sku: &str, version: i64, length_mm: i64) {
    for _ in 0..3 {
        let read = app.get(sku).await;
        let source = read_source(&read);
        let body: Value = read.json().await.unwrap();
        assert_eq!(version_of(&body), version);
        assert_eq!(
            body["length_mm"], length_mm,
            "version {version} read from {source} names the content lost with the old primary"
        );
    }
}

/// An instance on a primary whose standby missed version 2 of a SKU (acknowledged and
/// cached), then took over: the old primary is stopped and its address moved to the standby.
struct LostVersion {
    app: TestApp,
    sku: String,
    new_primary: OwnPostgres,
    _database: TcpProxy,
    _old_primary: OwnPostgres,
}

impl LostVersion {
    async fn failover(name: &str) -> Self {
        let old_primary = OwnPostgres::primary().await;
        let database = TcpProxy::to(old_primary.port).await;
        let app = TestApp::spawn_with(Options {
            database_url: database.postgres_url(),
            replica: Replica::None,
            ..Options::default()
        })
        .await;
        let standby = OwnPostgres::replica_of(old_primary.port, None).await;
        let sku = app.sku(name);
        assert_eq!(app.put(&sku, &size(1)).await.status(), StatusCode::CREATED);
        standby.caught_up_with(&old_primary).await;

        // The standby misses version 2. The old primary wrote far more WAL before it: the
        // cached entry's proof (its WAL position) is past anything the new primary writes for
        // a while.
        standby.stop().await;
        let old = sqlx::PgPool::connect(&old_primary.url()).await.unwrap();
        for _ in 0..3 {
            sqlx::query("SELECT pg_logical_emit_message(false, 'pss', 'x'), pg_switch_wal()")
                .execute(&old)
                .await
                .unwrap();
        }
        old.close().await;
        let lost = app.put(&sku, &size(2)).await;
        assert_eq!(version_of(&lost.json().await.unwrap()), 2);
        reads_are(&app, &sku, 2, 2).await;
        old_primary.stop().await;
        standby.start().await;
        standby.promote().await;
        database.retarget(standby.port);
        Self {
            app,
            sku,
            new_primary: standby,
            _database: database,
            _old_primary: old_primary,
        }
    }
}

#[tokio::test]
async fn a_write_on_a_promoted_standby_starts_a_new_cache_epoch() {
    let LostVersion { app, sku, .. } = &LostVersion::failover("failover").await;
    let rewritten = put_after_failover(app, sku, &size(3)).await;
    assert_eq!(
        version_of(&rewritten.json().await.unwrap()),
        2,
        "the new primary had version 1"
    );
    reads_are(app, sku, 2, 3).await;
}

#[tokio::test]
async fn a_standby_left_on_the_old_timeline_is_not_read() {
    let old_primary = OwnPostgres::primary().await;
    let database = TcpProxy::to(old_primary.port).await;
    let promoted = OwnPostgres::replica_of(old_primary.port, None).await;
    let left_behind = OwnPostgres::replica_of(old_primary.port, None).await;
    let app = TestApp::spawn_with(Options {
        database_url: database.postgres_url(),
        replica: Replica::Url(left_behind.url()),
        // Lag alone would not rule the stale standby out within this test.
        replica_max_lag: Duration::from_secs(120),
        ..Options::default()
    })
    .await;
    let sku = app.sku("timeline");
    assert_eq!(app.put(&sku, &size(1)).await.status(), StatusCode::CREATED);
    promoted.caught_up_with(&old_primary).await;

    // Version 2 reaches the standby that stays behind, not the one promoted.
    promoted.stop().await;
    assert_eq!(app.put(&sku, &size(2)).await.status(), StatusCode::OK);
    left_behind.caught_up_with(&old_primary).await;
    old_primary.stop().await;
    promoted.start().await;
    promoted.promote().await;
    database.retarget(promoted.port);

    let rewritten = put_after_failover(&app, &sku, &size(3)).await;
    assert_eq!(version_of(&rewritten.json().await.unwrap()), 2);
    // At once, whatever the probe has seen yet: every replica read names its timeline.
    app.evict(&sku).await;
    reads_are(&app, &sku, 2, 3).await;
    eventually(
        20,
        "the replica probe stops using the old timeline",
        || async { app.metric("product_size_replica_usable").await == 0.0 },
    )
    .await;
    // A miss: the fence says version 2, which the stale standby also has, with other content.
    app.evict(&sku).await;
    reads_are(&app, &sku, 2, 3).await;
}

#[tokio::test]
async fn an_outside_write_on_a_promoted_standby_is_served_not_the_lost_version() {
    let LostVersion {
        app,
        sku,
        new_primary,
        ..
    } = &LostVersion::failover("outside-failover").await;
    // No write of the service's reaches the new primary: a data fix in psql gives the SKU
    // version 2 again, with other content. Its record is repaired into the cache, which must
    // not keep the lost content under the same number.
    let outside = sqlx::PgPool::connect(&new_primary.url()).await.unwrap();
    sqlx::query("UPDATE product_sizes SET length_mm = 7 WHERE sku = $1")
        .bind(sku)
        .execute(&outside)
        .await
        .unwrap();
    eventually(20, "the new primary's version 2 is served", || async {
        let read = app.get(sku).await;
        if !read.status().is_success() {
            return false;
        }
        let body: Value = read.json().await.unwrap();
        version_of(&body) == 2 && body["length_mm"] == 7
    })
    .await;
    reads_are(app, sku, 2, 7).await;
}
