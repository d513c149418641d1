//! C6 and the cache failure modes, with the tests' own Redis, replica and primary processes
//! stopped, paused and restarted.

use std::sync::Arc;
use std::time::Duration;

use product_size_service::cache::{Cache, CacheRole};
use product_size_service::config::{DatabaseSettings, ReaderSettings};
use product_size_service::db::{Db, DbRoute};
use product_size_service::domain::{Lsn, Sku};
use product_size_service::metrics::{Database, DatabaseLabels, Metrics};
use product_size_service::service::{Reader, SizeService, ledger};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{
    Options, Replica, TestApp, cache_settings, eventually, primary_port, primary_url, read_source,
    shared_redis_url, size, version_of,
};
use crate::processes::{OwnPostgres, OwnRedis};

fn with_redis(redis: &OwnRedis) -> Options {
    Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_write_acknowledged_while_redis_is_paused_is_never_served_stale() {
    let redis = OwnRedis::start().await;
    let app = TestApp::spawn_with(with_redis(&redis)).await;
    let sku = app.sku("paused");
    app.put(&sku, &size(1)).await;
    assert_eq!(read_source(&app.get(&sku).await), "cache");

    redis.pause().await;
    let written = app.put(&sku, &size(2)).await;
    assert_eq!(
        written.status(),
        StatusCode::OK,
        "writes succeed without Redis"
    );
    let read = app.get(&sku).await;
    assert_ne!(read_source(&read), "cache");
    assert_eq!(version_of(&read.json().await.unwrap()), 2);
    assert!(app.metric("product_size_cache_repairs_pending").await >= 1.0);

    // Redis comes back still holding version 1: it must not be served.
    redis.resume().await;
    let read = app.get(&sku).await;
    assert_eq!(version_of(&read.json().await.unwrap()), 2);
    eventually(
        10,
        "the repair is applied and served from the cache",
        || async {
            let read = app.get(&sku).await;
            read_source(&read) == "cache" && version_of(&read.json().await.unwrap()) == 2
        },
    )
    .await;
    // The write's durable record may still be claimed once more by the repair pass (it is
    // older than 2 s) before it is cleared: the count drains to zero, it need not be there yet.
    eventually(30, "no repair is pending", || async {
        app.metric("product_size_cache_repairs_pending").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_write_acknowledged_while_redis_was_down_is_repaired_before_its_old_entry_is_served() {
    let mut redis = OwnRedis::start_persistent().await;
    let app = TestApp::spawn_with(with_redis(&redis)).await;
    let sku = app.sku("aof");
    app.put(&sku, &size(1)).await;
    assert_eq!(read_source(&app.get(&sku).await), "cache");

    redis.stop().await;
    assert_eq!(app.put(&sku, &size(2)).await.status(), StatusCode::OK);
    // Redis comes back from its append-only file, still holding version 1 in this epoch.
    redis.restart().await;
    for _ in 0..5 {
        let read = app.get(&sku).await;
        assert_eq!(version_of(&read.json().await.unwrap()), 2);
    }
    eventually(
        10,
        "the repair is applied and served from the cache",
        || async {
            let read = app.get(&sku).await;
            read_source(&read) == "cache" && version_of(&read.json().await.unwrap()) == 2
        },
    )
    .await;
}

#[tokio::test]
async fn an_instance_started_after_a_crash_applies_recorded_repairs_before_serving() {
    let mut redis = OwnRedis::start_persistent().await;
    let mut first = TestApp::spawn_with(with_redis(&redis)).await;
    let sku = first.sku("orphan");
    first.put(&sku, &size(1)).await;
    assert_eq!(read_source(&first.get(&sku).await), "cache");

    redis.stop().await;
    assert_eq!(first.put(&sku, &size(2)).await.status(), StatusCode::OK);
    first.stop().await; // its memory is gone; the outbox is not
    redis.restart().await; // still holding version 1

    let second = first.sibling(with_redis(&redis)).await;
    let read = second.get(&sku).await;
    assert_eq!(version_of(&read.json().await.unwrap()), 2);
    eventually(30, "the recorded repair is applied", || async {
        let read = second.get(&sku).await;
        read_source(&read) == "cache" && version_of(&read.json().await.unwrap()) == 2
    })
    .await;
}

#[tokio::test]
async fn reads_and_writes_go_on_while_redis_is_down_and_after_it_restarts_empty() {
    let mut redis = OwnRedis::start().await;
    let app = TestApp::spawn_with(with_redis(&redis)).await;
    let sku = app.sku("down");
    app.put(&sku, &size(1)).await;
    app.get(&sku).await;

    redis.stop().await;
    for length in 2..=6 {
        let written = app.put(&sku, &size(length)).await;
        assert_eq!(written.status(), StatusCode::OK);
        let read = app.get(&sku).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert_ne!(read_source(&read), "cache");
        assert_eq!(read.json::<Value>().await.unwrap()["length_mm"], length);
    }
    assert_eq!(
        app.metric("product_size_cache_up").await,
        0.0,
        "the breaker is open"
    );

    redis.restart().await;
    eventually(
        10,
        "the breaker closes and reads come from the cache again",
        || async {
            let read = app.get(&sku).await;
            let cached = read_source(&read) == "cache";
            assert_eq!(read.json::<Value>().await.unwrap()["length_mm"], 6);
            cached
        },
    )
    .await;
    assert_eq!(app.metric("product_size_cache_up").await, 1.0);
}

#[tokio::test]
async fn a_down_replica_sends_reads_to_the_primary_until_it_is_back() {
    let replica = OwnPostgres::replica_of(primary_port(), None).await;
    let app = TestApp::spawn_with(Options {
        replica: Replica::Url(replica.url()),
        ..Options::default()
    })
    .await;
    let sku = app.sku("replica");
    app.put(&sku, &size(1)).await;
    let from_replica = || async {
        app.evict(&sku).await;
        let read = app.get(&sku).await;
        read.status() == StatusCode::OK && read_source(&read) == "replica"
    };
    eventually(30, "the replica serves", from_replica).await;

    replica.stop().await;
    for _ in 0..3 {
        app.evict(&sku).await;
        let read = app.get(&sku).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert_eq!(read_source(&read), "primary");
    }
    replica.start().await;
    eventually(30, "the replica serves again", from_replica).await;
}

#[tokio::test]
async fn a_primary_restart_costs_no_read_a_failure() {
    // Arrange: no replica, so misses read the primary on the connections the read path keeps.
    // A lookup of two SKUs: a single SKU's shared read would itself retry once.
    let primary = OwnPostgres::primary().await;
    let app = TestApp::spawn_with(Options {
        database_url: primary.url(),
        replica: Replica::None,
        ..Options::default()
    })
    .await;
    let skus = [app.sku("restart1"), app.sku("restart2")];
    for sku in &skus {
        assert_eq!(app.put(sku, &size(1)).await.status(), StatusCode::CREATED);
        app.evict(sku).await;
    }
    let skus = [skus[0].as_str(), skus[1].as_str()];
    assert_eq!(read_source(&app.lookup(&skus).await), "primary");

    // Act: the primary restarts; the kept connection is now dead.
    primary.stop().await;
    primary.start().await;
    for sku in skus {
        app.evict(sku).await;
    }
    let read = app.lookup(&skus).await;

    // Assert: the read noticed, retried on a tested connection and succeeded.
    assert_eq!(
        (read.status(), read_source(&read)),
        (StatusCode::OK, "primary".to_owned())
    );
}

/// Within its reader lease: an instance that cannot reach the primary serves the cache, and
/// the replica where the cache proves it fresh, for as long as its lease lasts
/// (`instances::an_instance_cut_off_from_the_primary_stops_serving_the_cache_when_its_lease_ends`).
#[tokio::test]
async fn with_the_primary_down_writes_are_503_and_reads_go_on() {
    let primary = OwnPostgres::primary().await;
    let replica = OwnPostgres::replica_of(primary.port, None).await;
    let app = TestApp::spawn_with(Options {
        database_url: primary.url(),
        replica: Replica::Url(replica.url()),
        readers: Some(ReaderSettings {
            lease: Duration::from_secs(60),
            ack_timeout: Duration::from_secs(5),
        }),
        ..Options::default()
    })
    .await;
    let (sku, other) = (app.sku("p"), app.sku("other"));
    assert_eq!(app.put(&sku, &size(1)).await.status(), StatusCode::CREATED);
    assert_eq!(
        app.put(&other, &size(1)).await.status(),
        StatusCode::CREATED
    );
    eventually(30, "the replica has the rows", || async {
        app.evict(&sku).await;
        read_source(&app.get(&sku).await) == "replica"
    })
    .await;
    assert_eq!(read_source(&app.get(&other).await), "cache");

    primary.stop().await;
    let refused = app.put(&sku, &size(2)).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    let cached = app.get(&other).await;
    assert_eq!(
        (cached.status(), read_source(&cached)),
        (StatusCode::OK, "cache".to_owned())
    );
    app.evict(&sku).await;
    let from_replica = app.get(&sku).await;
    assert_eq!(
        (from_replica.status(), read_source(&from_replica)),
        (StatusCode::OK, "replica".to_owned())
    );
    // `/readyz` reports what the probes saw: within a probe interval or so.
    eventually(30, "readyz reports the primary down", || async {
        let ready = app.readiness().await;
        (ready["status"].as_str(), ready["primary"].as_str()) == (Some("degraded"), Some("down"))
    })
    .await;

    primary.start().await;
    eventually(30, "writes succeed again", || async {
        app.put(&sku, &size(3)).await.status().is_success()
    })
    .await;
    assert_eq!(version_of(&app.get(&sku).await.json().await.unwrap()), 2);
}

#[tokio::test]
async fn not_found_is_cached_briefly_and_a_create_is_never_hidden_by_it() {
    let app = TestApp::spawn().await;
    let sku = app.sku("later");
    assert_eq!(app.get(&sku).await.status(), StatusCode::NOT_FOUND);
    let again = app.get(&sku).await;
    assert_eq!(
        (again.status(), read_source(&again)),
        (StatusCode::NOT_FOUND, "cache".to_owned())
    );

    assert_eq!(app.put(&sku, &size(1)).await.status(), StatusCode::CREATED);
    let read = app.get(&sku).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(version_of(&read.json().await.unwrap()), 1);
}

#[tokio::test]
async fn concurrent_misses_for_one_sku_make_one_database_read() {
    let prefix = format!("sf{:08x}", fastrand::u32(..));
    let settings = cache_settings(&prefix);
    let cache = Cache::connect(&SecretString::from(shared_redis_url()), settings).unwrap();
    assert_eq!(cache.wait_connected(Duration::from_secs(5)).await, Ok(true));
    let db_settings = DatabaseSettings {
        max_connections: 60,
        acquire_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(5),
        replica_timeout: product_size_service::config::DEFAULT_REPLICA_TIMEOUT,
        pooler: product_size_service::config::Pooler::None,
    };
    let ledgers = [ledger(&prefix, CacheRole::Primary)];
    let db = Db::connect_lazy(
        &SecretString::from(primary_url()),
        &[],
        None,
        &db_settings,
        &ledgers,
    )
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let service = Arc::new(SizeService::new(db, cache, metrics.clone()));
    service.follow_changes().await.unwrap();
    service.join_readers().await;
    let reader = Arc::new(Reader::new(service));
    let sku = Sku::parse(&format!("SF-{:08x}", fastrand::u32(..))).unwrap();
    // Warm the epoch so every reader sees the same one.
    reader
        .read(std::slice::from_ref(&sku), DbRoute::Primary, None)
        .await
        .unwrap();
    let primary_reads = || {
        metrics
            .database_reads
            .get_or_create(&DatabaseLabels {
                database: Database::Primary,
            })
            .get()
    };
    let sku2 = Sku::parse(&format!("{}-2", sku)).unwrap();
    let before = primary_reads();

    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (reader, sku) = (reader.clone(), sku2.clone());
        readers.spawn(async move {
            reader
                .read(std::slice::from_ref(&sku), DbRoute::Primary, None)
                .await
                .unwrap()
        });
    }
    while let Some(read) = readers.join_next().await {
        assert_eq!(read.unwrap().docs[0].version, 0);
    }
    let reads = primary_reads() - before;
    assert!(
        reads <= 2,
        "50 concurrent misses made {reads} database reads"
    );
}

#[tokio::test]
async fn installs_survive_redis_forgetting_its_scripts() {
    use product_size_service::cache::{Epoch, Install};
    let redis = OwnRedis::start().await;
    let settings = cache_settings("scripts");
    let cache = Cache::connect(&SecretString::from(redis.url()), settings).unwrap();
    assert_eq!(cache.wait_connected(Duration::from_secs(5)).await, Ok(true));
    let epoch = Epoch::random();
    let body = bytes::Bytes::from_static(b"{}");
    let skus: Vec<String> = (0..10).map(|i| format!("S{i}")).collect();
    let installs = |version| -> Vec<Install<'_>> {
        skus.iter()
            .map(|sku| Install {
                sku,
                version,
                verified: Lsn::ZERO,
                body: Some(body.clone()),
            })
            .collect()
    };
    assert_eq!(
        cache.fill(&installs(1), &epoch).await.unwrap(),
        10,
        "scripts loaded on first use"
    );

    redis.command(&["SCRIPT", "FLUSH"]).await;
    assert_eq!(
        cache.fill(&installs(2), &epoch).await.unwrap(),
        10,
        "reloaded, and every install counted once"
    );
    assert_eq!(cache.fill(&installs(2), &epoch).await.unwrap(), 0);
}

#[tokio::test]
async fn a_write_whose_install_script_was_forgotten_still_sets_its_fence() {
    use product_size_service::cache::Install;
    let redis = OwnRedis::start().await;
    let cache =
        Cache::connect(&SecretString::from(redis.url()), cache_settings("refenced")).unwrap();
    assert_eq!(cache.wait_connected(Duration::from_secs(5)).await, Ok(true));
    let epoch = crate::helpers::current_epoch(&cache).await;
    let write = |version| Install {
        sku: "W",
        version,
        verified: Lsn::ZERO,
        body: Some(bytes::Bytes::from_static(b"{}")),
    };
    cache
        .record_writes(&[write(1)], &epoch, Lsn::new(1))
        .await
        .unwrap();
    // Redis forgets its scripts, and the high-water mark's script is loaded again first: the
    // write's install fails with NOSCRIPT in the pipeline where its bump succeeds.
    redis.command(&["SCRIPT", "FLUSH"]).await;
    cache.raise_hwm(Lsn::new(1)).await.unwrap();

    cache
        .record_writes(&[write(2)], &epoch, Lsn::new(2))
        .await
        .unwrap();
    assert_eq!(
        redis.command(&["GET", &cache.fence_key("W")]).await.trim(),
        format!("2|{}", epoch.as_str()),
        "the retried install is still a write, and raises the fence"
    );
}

/// An app on a primary of its own whose pool has two connections, and waits long enough
/// that only shedding can answer 503 while the table is held (nor may the per-request timeout
/// answer first); and a SKU it serves from the cache.
async fn saturable_app() -> (TestApp, OwnPostgres, String) {
    let primary = OwnPostgres::primary().await;
    let app = TestApp::spawn_with(Options {
        database_url: primary.url(),
        replica: Replica::None,
        database: Some(DatabaseSettings {
            max_connections: 2,
            acquire_timeout: Duration::from_secs(60),
            statement_timeout: Duration::from_secs(60),
            replica_timeout: product_size_service::config::DEFAULT_REPLICA_TIMEOUT,
            pooler: product_size_service::config::Pooler::None,
        }),
        request_timeout: Duration::from_secs(120),
        ..Options::default()
    })
    .await;
    let cached = app.sku("saturated-hit");
    app.put(&cached, &size(1)).await;
    assert_eq!(read_source(&app.get(&cached).await), "cache");
    (app, primary, cached)
}

/// Holds `product_sizes` in ACCESS EXCLUSIVE mode until [`release_table`]: every query on it
/// waits, and the pool's connections fill up.
async fn hold_table(primary: &OwnPostgres) -> sqlx::PgConnection {
    let mut holder = <sqlx::PgConnection as sqlx::Connection>::connect(&primary.url())
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE product_sizes IN ACCESS EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}

async fn release_table(mut holder: sqlx::PgConnection) {
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
}

#[tokio::test]
async fn with_the_database_saturated_misses_are_shed_at_once_and_hits_stay_served() {
    let (app, primary, cached) = saturable_app().await;
    let held = hold_table(&primary).await;
    let mut misses = tokio::task::JoinSet::new();
    for i in 0..12 {
        let request = app.request(
            reqwest::Method::GET,
            &format!("/v1/products/{}/size", app.sku(&format!("saturated-{i}"))),
            Some(crate::helpers::READ_TOKEN),
        );
        misses.spawn(async move { request.send().await.unwrap() });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let shed = loop {
        let answered = tokio::time::timeout_at(deadline.into(), misses.join_next())
            .await
            .expect("a miss is refused while the table is held, not after")
            .expect("misses still waiting")
            .unwrap();
        if answered.status() == StatusCode::SERVICE_UNAVAILABLE {
            break answered;
        }
    };
    assert!(shed.headers().contains_key("retry-after"));
    // Hits need no connection.
    let hit = app.get(&cached).await;
    assert_eq!(
        (hit.status(), read_source(&hit)),
        (StatusCode::OK, "cache".to_owned())
    );

    release_table(held).await;
    while let Some(answered) = misses.join_next().await {
        let status = answered.unwrap().status();
        assert!(
            [StatusCode::NOT_FOUND, StatusCode::SERVICE_UNAVAILABLE].contains(&status),
            "{status}"
        );
    }
    let after = app.get(&app.sku("saturated-0")).await;
    assert_eq!(after.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn with_the_database_saturated_writes_are_shed_at_once_and_change_nothing() {
    let (app, primary, cached) = saturable_app().await;
    let held = hold_table(&primary).await;
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..12 {
        let sku = app.sku(&format!("saturated-write-{i}"));
        let request = app
            .request(
                reqwest::Method::PUT,
                &format!("/v1/products/{sku}/size"),
                Some(crate::helpers::WRITE_TOKEN),
            )
            .json(&size(2));
        writes.spawn(async move { (sku, request.send().await.unwrap()) });
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (shed_sku, shed) = loop {
        let (sku, answered) = tokio::time::timeout_at(deadline.into(), writes.join_next())
            .await
            .expect("a write is refused while the table is held, not after")
            .expect("writes still waiting")
            .unwrap();
        if answered.status() == StatusCode::SERVICE_UNAVAILABLE {
            break (sku, answered);
        }
    };
    assert!(shed.headers().contains_key("retry-after"));
    // Hits need no connection.
    let hit = app.get(&cached).await;
    assert_eq!(
        (hit.status(), read_source(&hit)),
        (StatusCode::OK, "cache".to_owned())
    );

    release_table(held).await;
    let mut refused = vec![shed_sku];
    while let Some(answered) = writes.join_next().await {
        let (sku, answered) = answered.unwrap();
        match answered.status() {
            StatusCode::CREATED => {}
            StatusCode::SERVICE_UNAVAILABLE => refused.push(sku),
            status => panic!("{status}"),
        }
    }
    for sku in refused {
        assert_eq!(app.get(&sku).await.status(), StatusCode::NOT_FOUND, "{sku}");
    }
}
