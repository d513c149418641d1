//! Writers other than the service (a data fix in psql, a backfill, another program, another
//! deployment): the table keeps versions monotonic for them, every change they commit reaches
//! every instance's cache through the records the primary keeps (docs/consistency.md, "Writers
//! other than the service"), and the consistency inspector notices a cache that goes on serving
//! what they replaced.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Options, TestApp, eventually, read_source, size, version_of};

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

/// Waits until `app` serves `sku` at `version` from its cache (`None`: serves no such SKU).
/// The cache entries live an hour: only the captured change can bring the new version.
async fn serves_from_cache(app: &TestApp, sku: &str, version: Option<i64>) {
    let what = format!("{sku} is served from the cache at {version:?}");
    eventually(30, &what, || async {
        let read = app.get(sku).await;
        if read_source(&read) != "cache" {
            return false;
        }
        match version {
            Some(version) => {
                read.status() == StatusCode::OK
                    && version_of(&read.json().await.unwrap()) == version
            }
            None => read.status() == StatusCode::NOT_FOUND,
        }
    })
    .await;
}

#[tokio::test]
async fn every_instance_serves_an_outside_update_insert_and_delete() {
    let app = TestApp::spawn().await;
    let sibling = app.sibling(Options::default()).await;
    let updated = app.sku("captured-update");
    let inserted = app.sku("captured-insert");
    app.put(&updated, &size(1)).await;
    for instance in [&app, &sibling] {
        serves_from_cache(instance, &updated, Some(1)).await;
        serves_from_cache(instance, &inserted, None).await;
    }

    outside(
        &app,
        "UPDATE product_sizes SET weight_g = 501 WHERE sku = $1",
        &updated,
    )
    .await;
    outside(
        &app,
        "INSERT INTO product_sizes (sku, length_mm, width_mm, height_mm, weight_g) \
         VALUES ($1, 10, 20, 30, 40)",
        &inserted,
    )
    .await;
    for instance in [&app, &sibling] {
        serves_from_cache(instance, &updated, Some(2)).await;
        serves_from_cache(instance, &inserted, Some(1)).await;
    }
    let read: Value = sibling.get(&updated).await.json().await.unwrap();
    assert_eq!(read["weight_g"], 501);

    outside(&app, "DELETE FROM product_sizes WHERE sku = $1", &updated).await;
    for instance in [&app, &sibling] {
        serves_from_cache(instance, &updated, None).await;
    }
    let applied = app.metric("product_size_changes_applied").await
        + sibling.metric("product_size_changes_applied").await;
    assert!(applied >= 3.0, "{applied} changes applied");
}

#[tokio::test]
async fn deployments_with_their_own_prefix_follow_each_other_and_outside_writers() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn().await;
    assert_ne!(first.key_prefix, second.key_prefix);
    let sku = first.sku("two-deployments");
    first.put(&sku, &size(1)).await;
    serves_from_cache(&second, &sku, Some(1)).await;

    // The first deployment's write reaches the second's cache, and an outside one both.
    first.put(&sku, &size(2)).await;
    serves_from_cache(&second, &sku, Some(2)).await;
    outside(
        &first,
        "UPDATE product_sizes SET length_mm = 3 WHERE sku = $1",
        &sku,
    )
    .await;
    for deployment in [&first, &second] {
        serves_from_cache(deployment, &sku, Some(3)).await;
    }
}

/// Stops a PostgreSQL backend (as a connection that hangs without closing would) and lets it
/// go on when dropped, whatever the test did in between.
pub struct Paused(i32);

impl Paused {
    pub fn pause(pid: i32) -> Self {
        signal("-STOP", pid);
        Self(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

fn signal(which: &str, pid: i32) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {which} {pid}");
}

/// The backend of `app`'s change listener, once it listens.
async fn listener_backend(app: &TestApp) -> i32 {
    let name = format!("product-size-service changes {}", app.key_prefix);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let pid: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
        )
        .bind(&name)
        .fetch_optional(&app.primary)
        .await
        .unwrap();
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change listener never listened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_notifications_lost_the_durable_record_still_brings_the_change() {
    let app = TestApp::spawn().await;
    let sku = app.sku("unannounced");
    app.put(&sku, &size(1)).await;
    serves_from_cache(&app, &sku, Some(1)).await;

    // The listener's connection hangs: no notification reaches this instance.
    let backend = listener_backend(&app).await;
    let paused = Paused::pause(backend);
    outside(
        &app,
        "UPDATE product_sizes SET weight_g = 502 WHERE sku = $1",
        &sku,
    )
    .await;
    serves_from_cache(&app, &sku, Some(2)).await;

    // Killed, it reconnects and listens again.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(backend)
        .execute(&app.primary)
        .await
        .unwrap();
    drop(paused);
    eventually(30, "the listener is back", || async {
        listener_backend(&app).await != backend
    })
    .await;
    outside(
        &app,
        "UPDATE product_sizes SET weight_g = 503 WHERE sku = $1",
        &sku,
    )
    .await;
    serves_from_cache(&app, &sku, Some(3)).await;
}

#[tokio::test]
async fn replaying_a_change_installs_nothing_older() {
    let app = TestApp::spawn().await;
    let sku = app.sku("replayed");
    app.put(&sku, &size(1)).await;
    for weight in [601, 602] {
        sqlx::query("UPDATE product_sizes SET weight_g = $2 WHERE sku = $1")
            .bind(&sku)
            .bind(weight)
            .execute(&app.primary)
            .await
            .unwrap();
    }
    serves_from_cache(&app, &sku, Some(3)).await;
    // A record is gone once the worker has applied it. (The app's counter of applied changes
    // also counts other tests' changes, which every cache follows.)
    let owed = [sku.clone()];
    let all_applied =
        |what: &'static str| eventually(30, what, || async { app.owed_records(&owed).await == 0 });
    all_applied("the updates' record is applied").await;

    // The records of versions 2 and 3 again, as a redelivery would bring them, twice. No
    // notification: the regular pass finds them.
    for _ in 0..2 {
        for version in [2, 3] {
            sqlx::query(
                "INSERT INTO cache_repairs (cache_prefix, sku, version, own_write) \
                 VALUES ($1, $2, $3, false)",
            )
            .bind(&app.key_prefix)
            .bind(&sku)
            .bind(version)
            .execute(&app.primary)
            .await
            .unwrap();
            all_applied("the replayed record is applied").await;
        }
        // Read from the cache, where the replays landed. (Until its next lease renewal, an
        // instance may still read a SKU whose record was just applied from the primary.)
        eventually(30, "the cache serves version 3 as written", || async {
            let read = app.get(&sku).await;
            if read_source(&read) != "cache" {
                return false;
            }
            let read: Value = read.json().await.unwrap();
            assert_eq!(
                (version_of(&read), read["weight_g"].as_i64()),
                (3, Some(602))
            );
            true
        })
        .await;
    }
}

#[tokio::test]
async fn the_inspector_counts_hits_the_cache_keeps_serving_older_than_committed() {
    let app = TestApp::spawn().await;
    let sku = app.sku("inspected");
    app.put(&sku, &size(1)).await;
    assert_eq!(read_source(&app.get(&sku).await), "cache");
    eventually(30, "the sampled hit is checked", || async {
        app.metric("product_size_consistency_checked_total").await >= 1.0
    })
    .await;
    assert_eq!(
        app.metric("product_size_consistency_divergent_total").await,
        0.0
    );
    assert_eq!(app.metric("product_size_consistency_ratio").await, 1.0);

    // A change whose record is lost (its writer removed it in the same transaction): the
    // cache does not learn of it and goes on serving version 1.
    let mut tx = app.primary.begin().await.unwrap();
    for statement in [
        "UPDATE product_sizes SET weight_g = 999 WHERE sku = $1",
        "DELETE FROM cache_repairs WHERE sku = $1",
    ] {
        sqlx::query(statement)
            .bind(&sku)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    eventually(30, "the divergence is counted", || async {
        let read = app.get(&sku).await;
        assert_eq!(read_source(&read), "cache");
        app.metric("product_size_consistency_divergent_total").await >= 1.0
    })
    .await;
    assert!(app.metric("product_size_consistency_ratio").await < 1.0);
}

#[tokio::test]
async fn a_change_made_as_a_replication_replica_reaches_every_instance() {
    let writer = TestApp::spawn().await;
    let reader = writer.sibling(Options::default()).await;
    let sku = writer.sku("applied-as-replica");
    writer.put(&sku, &size(1)).await;
    for app in [&writer, &reader] {
        eventually(10, "the SKU is served from the cache", || async {
            read_source(&app.get(&sku).await) == "cache"
        })
        .await;
    }

    // What logical replication's apply worker, or a data-only restore, does: ordinary
    // triggers do not fire in this role.
    let mut conn = writer.primary.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE product_sizes SET weight_g = 4321 WHERE sku = $1")
        .bind(&sku)
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("RESET session_replication_role")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(stored(&writer, &sku).await, (2, 4321, false));

    for app in [&reader, &writer] {
        eventually(10, "the change is served", || async {
            let read: Value = app.get(&sku).await.json().await.unwrap();
            (version_of(&read), read["weight_g"].as_i64()) == (2, Some(4321))
        })
        .await;
    }
}

#[tokio::test]
async fn after_a_truncate_nothing_cached_before_it_is_served_on_any_instance() {
    // A database of its own: a TRUNCATE of the shared one would empty every test's table.
    let primary = crate::processes::OwnPostgres::primary().await;
    let options = || Options {
        database_url: primary.url(),
        replica: crate::helpers::Replica::None,
        ..Options::default()
    };
    let writer = TestApp::spawn_with(options()).await;
    let reader = writer.sibling(options()).await;
    let sku = writer.sku("truncated");
    for length in 1..=3 {
        writer.put(&sku, &size(length)).await;
    }
    for app in [&writer, &reader] {
        eventually(10, "the SKU is served from the cache", || async {
            let read = app.get(&sku).await;
            read_source(&read) == "cache" && version_of(&read.json().await.unwrap()) == 3
        })
        .await;
    }

    sqlx::query("TRUNCATE product_sizes")
        .execute(&writer.primary)
        .await
        .unwrap();
    for app in [&reader, &writer] {
        eventually(10, "the truncated SKU is gone", || async {
            app.get(&sku).await.status() == StatusCode::NOT_FOUND
        })
        .await;
    }
    // Created again, it starts over at version 1, below what the caches held.
    let created = writer.put(&sku, &size(7)).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    for app in [&reader, &writer] {
        for _ in 0..20 {
            let read: Value = app.get(&sku).await.json().await.unwrap();
            assert_eq!(
                (version_of(&read), read["length_mm"].as_i64()),
                (1, Some(7)),
                "served something cached before the truncate"
            );
        }
        eventually(10, "the cache, started afresh, serves again", || async {
            read_source(&app.get(&sku).await) == "cache"
        })
        .await;
    }
}

#[tokio::test]
async fn a_deployment_back_after_its_registration_lapsed_serves_nothing_it_missed() {
    let mut first = TestApp::spawn_with(Options {
        replica: crate::helpers::Replica::None,
        ..Options::default()
    })
    .await;
    let sku = first.sku("lapsed");
    first.put(&sku, &size(1)).await;
    eventually(10, "the SKU is served from the cache", || async {
        read_source(&first.get(&sku).await) == "cache"
    })
    .await;
    first.stop().await;

    // Nobody followed the table for minutes: the registration lapsed and was forgotten with
    // everything recorded for it, and a change made meanwhile was recorded for nobody.
    let ledger = first.key_prefix.clone();
    sqlx::query(
        "WITH l AS (DELETE FROM cache_ledgers WHERE ledger = $1), \
              r AS (DELETE FROM cache_readers WHERE ledger = $1), \
              w AS (DELETE FROM cache_own_writes WHERE ledger = $1) \
         DELETE FROM cache_repairs WHERE cache_prefix = $1",
    )
    .bind(&ledger)
    .execute(&first.primary)
    .await
    .unwrap();
    outside(
        &first,
        "UPDATE product_sizes SET weight_g = 777 WHERE sku = $1",
        &sku,
    )
    .await;

    // Back, and registering fails at start: another session holds the registration's row.
    let mut blocker = first.primary.begin().await.unwrap();
    sqlx::query("INSERT INTO cache_ledgers (ledger) VALUES ($1)")
        .bind(&ledger)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let second = first
        .sibling(Options {
            replica: crate::helpers::Replica::None,
            ..Options::default()
        })
        .await;
    for _ in 0..20 {
        let read: Value = second.get(&sku).await.json().await.unwrap();
        assert_eq!(
            read["weight_g"], 777,
            "served the cache that missed a change before registering"
        );
    }
    blocker.rollback().await.unwrap();
    eventually(
        30,
        "the cache, started afresh, serves the change",
        || async {
            let read = second.get(&sku).await;
            let source = read_source(&read);
            let body: Value = read.json().await.unwrap();
            assert_eq!(body["weight_g"], 777, "read from {source}");
            source == "cache"
        },
    )
    .await;
}
