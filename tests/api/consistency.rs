//! The consistency guarantees (docs/consistency.md, "How reads stay fresh") against real lag:
//! the "lagging" replica applies WAL 2 s late.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::prelude::{ClientLike, KeysInterface};
use product_size_service::cache::{Cache, Entry, Epoch, Install};
use product_size_service::domain::Lsn;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::{
    Options, Replica, TestApp, WRITE_TOKEN, cache_settings, read_source, shared_redis_url, size,
    version_of,
};
use crate::processes::OwnRedis;
use crate::proxy::TcpProxy;

/// An instance with a fresh replica and a Redis of the test's own.
async fn app_on(redis: &OwnRedis) -> TestApp {
    TestApp::spawn_with(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await
}

/// `count` SKUs of the test's own: `name-1`, `name-2`, ...
fn numbered_skus(app: &TestApp, name: &str, count: usize) -> Vec<String> {
    (1..=count)
        .map(|i| app.sku(&format!("{name}-{i}")))
        .collect()
}

async fn lagging_app(redis: Option<&OwnRedis>) -> TestApp {
    TestApp::spawn_with(Options {
        replica: Replica::Lagging,
        redis_url: redis.map(OwnRedis::url),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_2xx_write_is_committed_on_the_primary_before_the_response() {
    let app = TestApp::spawn().await;
    let sku = app.sku("durable");
    for length in 1..=5 {
        let response = app.put(&sku, &size(length)).await;
        assert!(response.status().is_success());
        let acknowledged = version_of(&response.json().await.unwrap());
        assert_eq!(
            app.primary_row(&sku).await,
            Some((acknowledged, false, length as i32))
        );
    }
    assert_eq!(app.delete(&sku).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.primary_row(&sku).await, Some((6, true, 5)));
}

#[tokio::test]
async fn read_after_write_is_fresh_while_the_replica_lags_and_the_entry_is_evicted() {
    let app = lagging_app(None).await;
    let sku = app.sku("lag");
    app.put(&sku, &size(1)).await;
    app.wait_replica_caught_up().await;

    for length in 2..=6 {
        let written = app.put(&sku, &size(length)).await;
        let acknowledged = version_of(&written.json().await.unwrap());
        app.evict(&sku).await;

        let read = app.get(&sku).await;
        assert_eq!(
            read_source(&read),
            "primary",
            "the lagging replica must not answer"
        );
        let body: Value = read.json().await.unwrap();
        assert_eq!(
            (version_of(&body), body["length_mm"].as_i64()),
            (acknowledged, Some(length))
        );
    }
}

#[tokio::test]
async fn read_after_write_is_fresh_while_the_replica_lags_across_flushall() {
    let redis = OwnRedis::start().await;
    let app = lagging_app(Some(&redis)).await;
    let (sku, other) = (app.sku("flush"), app.sku("other"));
    app.put(&sku, &size(1)).await;
    app.put(&other, &size(1)).await;
    app.wait_replica_caught_up().await;

    for length in 2..=4 {
        let acknowledged = version_of(&app.put(&sku, &size(length)).await.json().await.unwrap());
        app.flushall().await;

        let read = app.get(&sku).await;
        assert_eq!(read_source(&read), "primary");
        assert_eq!(version_of(&read.json().await.unwrap()), acknowledged);
        // No fence survives a FLUSHALL: even a SKU that was not written is read from the
        // primary until the replica reaches the new epoch's high-water mark.
        let unrelated = app.get(&other).await;
        assert_eq!(read_source(&unrelated), "primary");
    }
}

#[tokio::test]
async fn the_replica_serves_misses_once_it_has_replayed_the_write() {
    let app = lagging_app(None).await;
    let sku = app.sku("caught-up");
    app.put(&sku, &size(1)).await;
    app.evict(&sku).await;
    assert_eq!(read_source(&app.get(&sku).await), "primary");

    app.wait_replica_caught_up().await;
    app.evict(&sku).await;
    let read = app.get(&sku).await;
    assert_eq!(read_source(&read), "replica");
    assert_eq!(version_of(&read.json().await.unwrap()), 1);
}

#[tokio::test]
async fn a_deleted_sku_is_not_resurrected_by_a_lagging_replica() {
    let redis = OwnRedis::start().await;
    let app = lagging_app(Some(&redis)).await;
    let sku = app.sku("deleted");
    app.put(&sku, &size(1)).await;
    app.wait_replica_caught_up().await;
    assert_eq!(app.delete(&sku).await.status(), StatusCode::NO_CONTENT);

    app.evict(&sku).await;
    assert_eq!(app.get(&sku).await.status(), StatusCode::NOT_FOUND);
    app.flushall().await;
    assert_eq!(app.get(&sku).await.status(), StatusCode::NOT_FOUND);
    let lookup: Value = app.lookup(&[&sku]).await.json().await.unwrap();
    assert_eq!(lookup["not_found"][0], sku.as_str());
    // And the cache now remembers the tombstone, not the replica's old row.
    assert_eq!(app.get(&sku).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_fill_never_replaces_a_newer_version_even_after_eviction() {
    let cache = cache_of_its_own().await;
    let sku = "C3-SKU";
    let sku_parsed = product_size_service::domain::Sku::parse(sku).unwrap();
    let epoch = crate::helpers::current_epoch(&cache).await;
    let (old, new) = (
        Bytes::from_static(b"{\"v\":1}"),
        Bytes::from_static(b"{\"v\":2}"),
    );
    let install = |version, body| {
        [Install {
            sku,
            version,
            verified: Lsn::ZERO,
            body,
        }]
    };

    assert_eq!(
        cache
            .record_writes(&install(2, Some(new.clone())), &epoch, Lsn::new(1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        cache
            .fill(&install(1, Some(old.clone())), &epoch)
            .await
            .unwrap(),
        0,
        "older than the entry"
    );

    cache.read(std::slice::from_ref(&sku_parsed)).await.unwrap();
    let _: i64 = fred::prelude::KeysInterface::del(&fred_client().await, cache.entry_key(sku))
        .await
        .unwrap();
    assert_eq!(
        cache
            .fill(&install(1, Some(old.clone())), &epoch)
            .await
            .unwrap(),
        0,
        "older than the fence"
    );
    assert_eq!(
        cache.fill(&install(0, None), &epoch).await.unwrap(),
        0,
        "a stale 'not found'"
    );
    assert_eq!(
        cache
            .fill(&install(2, Some(new.clone())), &epoch)
            .await
            .unwrap(),
        1,
        "the fenced version itself"
    );
    assert_eq!(
        cache.fill(&install(3, None), &epoch).await.unwrap(),
        1,
        "newer is fine"
    );

    let read = cache.read(std::slice::from_ref(&sku_parsed)).await.unwrap();
    let entry = read.entries[0].clone().unwrap();
    assert_eq!((entry.version, entry.body), (3, None));
}

/// A read on the primary just after a commit can fill the committed version before the write
/// installs it, with a later `verified` stamp: the write's install then leaves that entry, but
/// its fence must still go up. Else, once the entry is evicted, the fence names the previous
/// version and a lagging replica's row of it passes as fresh.
#[tokio::test]
async fn a_write_raises_its_fence_even_when_a_fill_installed_its_version_first() {
    let cache = cache_of_its_own().await;
    let sku = "FENCE-AFTER-FILL";
    let sku_parsed = product_size_service::domain::Sku::parse(sku).unwrap();
    let epoch = crate::helpers::current_epoch(&cache).await;
    let stamped = |version, verified| {
        [Install {
            sku,
            version,
            verified: Lsn::new(verified),
            body: body_of(version),
        }]
    };
    cache
        .record_writes(&stamped(1, 100), &epoch, Lsn::new(100))
        .await
        .unwrap();

    // Version 2 commits at 200; a primary read at 250 fills it before the write's install.
    assert_eq!(cache.fill(&stamped(2, 250), &epoch).await.unwrap(), 1);
    assert_eq!(
        cache
            .record_writes(&stamped(2, 200), &epoch, Lsn::new(200))
            .await
            .unwrap(),
        0,
        "the fill's entry proves more than the write's"
    );

    let read = cache.read(std::slice::from_ref(&sku_parsed)).await.unwrap();
    assert_eq!(
        read.entries[0].as_ref().map(|e| e.verified),
        Some(Lsn::new(250))
    );
    let fence = read.fences[0].clone().expect("the write's fence");
    assert_eq!((fence.version, fence.epoch), (2, epoch));
}

/// A cache client on the shared Redis, under a key prefix of its own.
async fn cache_of_its_own() -> Arc<Cache> {
    let prefix = format!("c{:08x}", fastrand::u32(..));
    let cache = Cache::connect(
        &SecretString::from(shared_redis_url()),
        cache_settings(&prefix),
    )
    .unwrap();
    assert_eq!(cache.wait_connected(Duration::from_secs(5)).await, Ok(true));
    cache
}

/// A JSON body carrying its version, as cached bodies do.
fn body_of(version: i64) -> Option<Bytes> {
    Some(Bytes::from(format!("{{\"version\":{version}}}")))
}

async fn fred_client() -> fred::prelude::Client {
    use fred::prelude::ClientLike;
    let client = fred::prelude::Client::new(
        fred::prelude::Config::from_url(&shared_redis_url()).unwrap(),
        None,
        None,
        None,
    );
    client.init().await.unwrap();
    client
}

#[tokio::test]
async fn racing_fills_evictions_and_writes_never_serve_an_older_version() {
    let app = Arc::new(lagging_app(None).await);
    let sku = app.sku("race");
    app.put(&sku, &size(1)).await;
    let acknowledged = Arc::new(AtomicI64::new(1));
    let writing = Arc::new(AtomicBool::new(true));
    // At least 4 s of races and at least 20 writes, however slow the machine is today.
    let (least, most) = (
        Instant::now() + Duration::from_secs(4),
        Instant::now() + Duration::from_secs(60),
    );

    let writer = {
        let (app, sku, acknowledged, writing) = (
            app.clone(),
            sku.clone(),
            acknowledged.clone(),
            writing.clone(),
        );
        tokio::spawn(async move {
            let mut length = 1;
            while (Instant::now() < least || length <= 21) && Instant::now() < most {
                length += 1;
                let response = app.put(&sku, &size(length)).await;
                assert!(response.status().is_success());
                acknowledged.fetch_max(
                    version_of(&response.json().await.unwrap()),
                    Ordering::SeqCst,
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            writing.store(false, Ordering::SeqCst);
        })
    };
    let readers: Vec<_> = (0..4)
        .map(|n| {
            let (app, sku, acknowledged, writing) = (
                app.clone(),
                sku.clone(),
                acknowledged.clone(),
                writing.clone(),
            );
            tokio::spawn(async move {
                let mut reads = 0;
                while writing.load(Ordering::SeqCst) {
                    if n % 2 == 0 {
                        app.evict(&sku).await;
                    }
                    let floor = acknowledged.load(Ordering::SeqCst);
                    let read = app.get(&sku).await;
                    let version = version_of(&read.json().await.unwrap());
                    assert!(
                        version >= floor,
                        "read version {version} after version {floor} was acknowledged"
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    writer.await.unwrap();
    let mut reads = 0;
    for reader in readers {
        reads += reader.await.unwrap();
    }
    assert!(
        acknowledged.load(Ordering::SeqCst) > 20 && reads > 100,
        "real load: {reads} reads"
    );
}

#[tokio::test]
async fn of_twenty_concurrent_puts_with_one_if_match_exactly_one_wins() {
    let app = Arc::new(TestApp::spawn().await);
    let sku = app.sku("cas");
    app.put(&sku, &size(1)).await;

    let attempts: Vec<_> = (0..20)
        .map(|i| {
            let (app, sku) = (app.clone(), sku.clone());
            tokio::spawn(async move {
                app.request(
                    Method::PUT,
                    &format!("/v1/products/{sku}/size"),
                    Some(WRITE_TOKEN),
                )
                .header("If-Match", "\"1\"")
                .json(&size(100 + i))
                .send()
                .await
                .unwrap()
                .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    let count = |wanted: fn(&StatusCode) -> bool| statuses.iter().filter(|s| wanted(s)).count();
    let won = count(StatusCode::is_success);
    let lost = count(|s| *s == StatusCode::PRECONDITION_FAILED);
    // On a loaded machine the service may shed a write (503, nothing written): it neither
    // wins nor breaks the rule.
    let shed = count(|s| *s == StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((won, lost + shed), (1, 19), "{statuses:?}");
    assert_eq!(app.primary_row(&sku).await.map(|r| r.0), Some(2));
}

#[tokio::test]
async fn a_consistency_token_makes_another_instance_read_at_least_that_new() {
    let writer = TestApp::spawn().await;
    // Another deployment sharing the database but not the cache: it knows nothing of the
    // writer's fences, only the token.
    // Since it follows the table's changes (C7), the writer's versions also reach its cache
    // within a second, but a read with the token may not wait for that.
    let reader = lagging_app(None).await;
    let sku = writer.sku("token");
    writer.put(&sku, &size(1)).await;
    reader.wait_replica_caught_up().await;
    reader.evict(&sku).await;
    let read = reader.get(&sku).await;
    assert_ne!(read_source(&read), "primary");
    assert_eq!(version_of(&read.json().await.unwrap()), 1);

    let written = writer.put(&sku, &size(2)).await;
    let token = written.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let read = reader
        .request(
            Method::GET,
            &format!("/v1/products/{sku}/size"),
            Some(crate::helpers::READ_TOKEN),
        )
        .header("X-Consistency-Token", &token)
        .send()
        .await
        .unwrap();
    // Never the replica, which replays 2 s late: the primary, or the cache if the change was
    // already applied there with a position that covers the token.
    assert_ne!(read_source(&read), "replica");
    assert_eq!(version_of(&read.json().await.unwrap()), 2);
}

#[tokio::test]
async fn a_batched_fill_installs_only_what_is_newer_than_the_cache_and_its_fences() {
    // Arrange: one SKU cached at a newer version, one fenced at a newer version, one cached
    // at the same version under an older epoch, one absent.
    let cache = cache_of_its_own().await;
    let redis = fred_client().await;
    let (epoch, older_epoch) = (Epoch::random(), Epoch::random());
    let fence = format!("7|{}", epoch.as_str());
    set_raw(&redis, cache.entry_key("NEWER"), cached(5, &epoch)).await;
    set_raw(&redis, cache.fence_key("FENCED"), fence).await;
    set_raw(&redis, cache.entry_key("RESTAMP"), cached(3, &older_epoch)).await;

    // Act: one fill of many items (the batched script), each older than or equal to Redis.
    let items = [
        install("NEWER", 4),
        install("FENCED", 6),
        install("RESTAMP", 3),
        install("ABSENT", 1),
    ];
    let installed = cache.fill(&items, &epoch).await.unwrap();

    // Assert
    let stored = |sku| stored_entry(&redis, &cache, sku);
    assert_eq!(
        installed, 2,
        "only the re-stamped and the absent SKU are installed"
    );
    assert_eq!(
        stored("NEWER").await,
        Some((5, epoch.clone())),
        "a newer entry stays"
    );
    assert_eq!(
        stored("FENCED").await,
        None,
        "a fence names a newer version"
    );
    assert_eq!(
        stored("RESTAMP").await,
        Some((3, epoch.clone())),
        "re-stamped"
    );
    assert_eq!(stored("ABSENT").await, Some((1, epoch.clone())));
    cache.quit().await;
    redis.quit().await.unwrap();
}

#[tokio::test]
async fn a_batched_fill_sees_its_own_earlier_items_of_a_sku() {
    // One script call reads every entry and fence up front: an item that follows another of
    // its SKU in the same call must see what the first one installed, not what was stored.
    let cache = cache_of_its_own().await;
    let redis = fred_client().await;
    let epoch = Epoch::random();
    let items = [
        install("UP", 1),
        install("UP", 2),
        install("DOWN", 3),
        install("DOWN", 2),
    ];
    let installed = cache.fill(&items, &epoch).await.unwrap();

    assert_eq!(installed, 3, "UP twice, DOWN once");
    assert_eq!(
        stored_entry(&redis, &cache, "UP").await,
        Some((2, epoch.clone()))
    );
    assert_eq!(
        stored_entry(&redis, &cache, "DOWN").await,
        Some((3, epoch.clone())),
        "an older item after a newer one of its SKU installs nothing"
    );
    cache.quit().await;
    redis.quit().await.unwrap();
}

#[tokio::test]
async fn a_batched_write_fences_each_sku_and_raises_the_high_water_mark() {
    let cache = cache_of_its_own().await;
    let redis = fred_client().await;
    let epoch = Epoch::random();
    let meta = format!("{}|{:020}", epoch.as_str(), 100);
    set_raw(&redis, cache.meta_key(), meta).await;

    let deleted = Install {
        body: None,
        ..install("W2", 9)
    };
    let items = [install("W1", 2), deleted];
    let installed = cache
        .record_writes(&items, &epoch, Lsn::new(5000))
        .await
        .unwrap();

    assert_eq!(installed, 2);
    for (sku, version) in [("W1", 2), ("W2", 9)] {
        let fence: Option<String> = redis.get(cache.fence_key(sku)).await.unwrap();
        assert_eq!(
            fence,
            Some(format!("{version}|{}", epoch.as_str())),
            "{sku}'s fence"
        );
        let entry = stored_entry(&redis, &cache, sku).await;
        assert_eq!(entry.map(|(version, _)| version), Some(version));
    }
    let meta = cache.read_meta().await.unwrap().unwrap();
    assert_eq!(meta.hwm, Lsn::new(5000));
    cache.quit().await;
    redis.quit().await.unwrap();
}

/// An install of `sku` at `version` with a body, proven by nothing newer than the start.
fn install(sku: &'static str, version: i64) -> Install<'static> {
    Install {
        sku,
        version,
        verified: Lsn::ZERO,
        body: body_of(version),
    }
}

/// A cache entry of `version` stamped with `epoch`, as the service encodes it.
fn cached(version: i64, epoch: &Epoch) -> Bytes {
    Entry::encode(version, epoch, Lsn::ZERO, body_of(version).as_ref())
}

async fn set_raw(redis: &fred::prelude::Client, key: String, value: impl Into<Bytes>) {
    let value: Bytes = value.into();
    let _: () = redis.set(key, value, None, None, false).await.unwrap();
}

/// The version and epoch of `sku`'s entry, if it has one.
async fn stored_entry(
    redis: &fred::prelude::Client,
    cache: &Cache,
    sku: &str,
) -> Option<(i64, Epoch)> {
    let value: Option<Bytes> = redis.get(cache.entry_key(sku)).await.unwrap();
    value.and_then(Entry::decode).map(|e| (e.version, e.epoch))
}

#[tokio::test]
async fn a_read_that_joins_an_older_shared_read_is_not_served_its_answer() {
    // The reader's primary answers 3 s late; the writer reaches the primary directly.
    let database = TcpProxy::to(crate::helpers::primary_port()).await;
    let reader = TestApp::spawn_with(Options {
        database_url: database.postgres_url(),
        replica: Replica::None,
        ..Options::default()
    })
    .await;
    let writer = reader
        .sibling(Options {
            replica: Replica::None,
            ..Options::default()
        })
        .await;
    let sku = reader.sku("joined");
    writer.put(&sku, &size(1)).await;
    // A miss first, so the reader's read connection is open before its answers slow down.
    reader.evict(&sku).await;
    assert_eq!(read_source(&reader.get(&sku).await), "primary");
    reader.evict(&sku).await;
    database.delay_answers(Duration::from_secs(3));

    // A first read misses and reads version 1; while its answer is on the way, version 2 is
    // acknowledged, its entry evicted, and a second read misses: it finds the shared read of
    // the first in flight, whose answer predates the write it must see.
    let first = reader.get(&sku);
    let second = async {
        crate::helpers::eventually(30, "the first read ran on the primary", || async {
            database.has_delayed(sku.as_bytes())
        })
        .await;
        assert!(writer.put(&sku, &size(2)).await.status().is_success());
        reader.evict(&sku).await;
        reader.get(&sku).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(
        version_of(&first.json().await.unwrap()),
        1,
        "began before the write"
    );
    assert_eq!(
        version_of(&second.json().await.unwrap()),
        2,
        "a read that began after the write was served the older shared answer"
    );
}

/// Calls of `command` since the last `CONFIG RESETSTAT`, from `INFO commandstats`.
#[tokio::test]
async fn a_miss_reads_entry_fence_and_epoch_in_one_round_trip_and_uses_the_fence() {
    let redis = OwnRedis::start().await;
    let app = lagging_app(Some(&redis)).await;
    let (sku, other) = (app.sku("one-trip"), app.sku("one-trip-other"));
    app.put(&sku, &size(1)).await;
    app.wait_replica_caught_up().await;
    // A later write elsewhere puts the high-water mark past what the replica has replayed:
    // only the SKU's own fence can show that the replica's row is fresh.
    app.put(&other, &size(1)).await;
    app.evict(&sku).await;
    let monitor = redis.monitor().await;

    let read = app.get(&sku).await;
    assert_eq!(
        read_source(&read),
        "replica",
        "the fence read with the entry lets the replica answer"
    );
    assert_eq!(version_of(&read.json().await.unwrap()), 1);
    let skus = [sku.clone()];
    assert_eq!(
        (
            monitor.client_calls("mget", &skus).await,
            monitor.client_calls("get", &skus).await
        ),
        (1, 0),
        "one read before the database:\n{:#?}",
        monitor.lines().await
    );
}

#[tokio::test]
async fn concurrent_hits_share_one_mget_and_each_gets_its_own_entry() {
    let redis = OwnRedis::start().await;
    let app = app_on(&redis).await;
    let skus = numbered_skus(&app, "shared-mget", 24);
    for (i, sku) in skus.iter().enumerate() {
        app.put(sku, &size(i as i64 + 1)).await;
    }
    let monitor = redis.monitor().await;
    // Redis holds every command for a moment: the hits that arrive meanwhile queue behind
    // the first batch and go out together when it returns.
    redis.command(&["CLIENT", "PAUSE", "250", "ALL"]).await;
    let app = &app;
    let reads = skus.iter().map(|sku| async move {
        let response = app.get(sku).await;
        assert_eq!(response.status(), StatusCode::OK);
        let source = read_source(&response);
        (source, response.json::<Value>().await.unwrap())
    });
    let answers = futures_util::future::join_all(reads).await;

    for ((source, body), (i, sku)) in answers.iter().zip(skus.iter().enumerate()) {
        assert_eq!(source, "cache", "{sku}");
        assert_eq!(body["sku"], sku.as_str());
        assert_eq!(
            body["length_mm"],
            i as i64 + 1,
            "{sku} got another SKU's entry"
        );
    }
    let reads = monitor.client_calls("mget", &skus).await;
    assert!(
        (1..=6).contains(&reads),
        "{} hits took {reads} MGETs:\n{:#?}",
        skus.len(),
        monitor.lines().await
    );
}

#[tokio::test]
async fn concurrent_fills_share_one_install_call_and_each_installs_its_own_row() {
    let redis = OwnRedis::start().await;
    let app = app_on(&redis).await;
    let skus = numbered_skus(&app, "shared-fill", 24);
    // The newest version acknowledged for each SKU: no read may return an older one.
    let mut acknowledged = Vec::new();
    for (i, sku) in skus.iter().enumerate() {
        let mut newest = 0;
        // Two versions: a fill that installed another SKU's row, or the older version, shows.
        for length in [i as i64 + 1, 100 + i as i64] {
            let response = app.put(sku, &size(length)).await;
            if response.status().is_success() {
                newest = version_of(&response.json().await.unwrap());
            }
        }
        acknowledged.push(newest);
        app.evict(sku).await;
    }
    let epoch = app.cache_epoch().await;
    let monitor = redis.monitor().await;
    // Redis holds writes (the install script) for a moment: the fills that arrive meanwhile
    // queue behind the first ones and go out together when it lets them through.
    redis.command(&["CLIENT", "PAUSE", "250", "WRITE"]).await;
    let app = &app;
    let reads = skus
        .iter()
        .zip(&acknowledged)
        .map(|(sku, &floor)| async move {
            let response = app.get(sku).await;
            assert_eq!(response.status(), StatusCode::OK);
            let source = read_source(&response);
            let version = version_of(&response.json().await.unwrap());
            assert!(
                version >= floor,
                "{sku}: version {version} after {floor} was acknowledged"
            );
            source
        });
    let sources = futures_util::future::join_all(reads).await;
    // An evicted SKU is a miss, unless a repair installed it again meanwhile (a write whose
    // record was not yet cleared on a busy machine): only misses fill.
    let misses = sources.iter().filter(|source| *source != "cache").count();
    // A fill's install call carries the epoch and a fence lifetime of 0 (a write's, a
    // repair's, carry the fence's).
    let fill_header = format!("\"{epoch}\" \"0\"");
    let fills = monitor
        .client_commands("evalsha", &skus)
        .await
        .into_iter()
        .filter(|line| line.contains(&fill_header))
        .count();
    assert!(
        (misses.min(1)..=8).contains(&fills),
        "{misses} misses took {fills} install calls:\n{:#?}",
        monitor.lines().await
    );

    for sku in &skus {
        let response = app.get(sku).await;
        assert_eq!(read_source(&response), "cache", "{sku} was not filled");
        let body = response.json::<Value>().await.unwrap();
        assert_eq!(body["sku"], sku.as_str());
        let (version, _, length) = app.primary_row(sku).await.unwrap();
        assert_eq!(
            (version_of(&body), body["length_mm"].as_i64()),
            (version, Some(i64::from(length))),
            "{sku} was filled with another row than its own newest"
        );
    }
}

#[tokio::test]
async fn concurrent_misses_sharing_a_replica_query_each_get_their_own_fresh_row() {
    let redis = OwnRedis::start().await;
    let app = lagging_app(Some(&redis)).await;
    let settled = numbered_skus(&app, "shared-settled", 10);
    let moving = numbered_skus(&app, "shared-moving", 5);
    for (i, sku) in settled.iter().chain(&moving).enumerate() {
        app.put(sku, &size(i as i64 + 1)).await;
    }
    app.wait_replica_caught_up().await;
    // Newer versions the replica, 2 s behind, has not replayed: only the primary has them.
    for (i, sku) in moving.iter().enumerate() {
        app.put(sku, &size(100 + i as i64)).await;
    }
    for sku in settled.iter().chain(&moving) {
        app.evict(sku).await;
    }
    // Redis holds the look-ups for a moment, so that the misses reach the replica together.
    redis.command(&["CLIENT", "PAUSE", "200", "ALL"]).await;
    let app = &app;
    let reads = settled.iter().chain(&moving).map(|sku| async move {
        let response = app.get(sku).await;
        assert_eq!(response.status(), StatusCode::OK);
        (
            read_source(&response),
            response.json::<Value>().await.unwrap(),
        )
    });
    let answers = futures_util::future::join_all(reads).await;

    for ((source, body), (i, sku)) in answers.iter().zip(settled.iter().enumerate()) {
        assert_eq!(source, "replica", "{sku}: the replica has its only version");
        assert_eq!(body["sku"], sku.as_str());
        assert_eq!(
            (version_of(body), body["length_mm"].as_i64()),
            (1, Some(i as i64 + 1))
        );
    }
    // The lagging replica still has their first versions (unless a busy machine took more
    // than its 2 s between those writes and these reads): only the primary can answer these.
    for ((_, body), (i, sku)) in answers[settled.len()..]
        .iter()
        .zip(moving.iter().enumerate())
    {
        assert_eq!(body["sku"], sku.as_str());
        assert_eq!(
            (version_of(body), body["length_mm"].as_i64()),
            (2, Some(100 + i as i64))
        );
    }
}
