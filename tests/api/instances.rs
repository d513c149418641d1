//! C2 through every instance of a deployment: a write whose cache update cannot land (Redis
//! pausing writes, Redis out of memory, the writer's own connection lost) is acknowledged only
//! once every other instance knows the cache is owed it, so none of them serves the older
//! entry (docs/reader-leases.md). Reads go through an instance that did not write.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use product_size_service::config::ReaderSettings;

use crate::helpers::{
    Options, Replica, TestApp, eventually, primary_port, read_source, size, version_of,
};
use crate::processes::OwnRedis;
use crate::proxy::TcpProxy;

fn on(redis_url: String) -> Options {
    Options {
        redis_url: Some(redis_url),
        ..Options::default()
    }
}

/// A writer and a reader of one deployment on `redis` (the writer through `writer_url` if
/// given), and a SKU both have cached at version 1.
async fn writer_and_reader(redis: &OwnRedis, writer_url: Option<String>) -> (TestApp, TestApp) {
    let writer = TestApp::spawn_with(on(writer_url.unwrap_or_else(|| redis.url()))).await;
    let reader = writer.sibling(on(redis.url())).await;
    (writer, reader)
}

/// Writes version 1 of `sku` and waits until `reader` serves it from the cache.
async fn cached_at_one(writer: &TestApp, reader: &TestApp, sku: &str) {
    assert_eq!(
        writer.put(sku, &size(1)).await.status(),
        StatusCode::CREATED
    );
    served_from_cache_at(reader, sku, 1).await;
}

/// Waits until `app` serves `sku` from the cache at `version` (a repair landed).
async fn served_from_cache_at(app: &TestApp, sku: &str, version: i64) {
    let what = format!("{sku} is served from the cache at version {version}");
    eventually(30, &what, || async {
        let read = app.get(sku).await;
        read_source(&read) == "cache" && version_of(&read.json().await.unwrap()) == version
    })
    .await;
}

/// Reads `sku` through `reader` for `period`: every read must be version `at_least` or newer.
/// Returns how many reads were made.
async fn never_older(reader: &TestApp, sku: &str, at_least: i64, period: Duration) -> usize {
    let until = Instant::now() + period;
    let mut reads = 0;
    while Instant::now() < until {
        let read = reader.get(sku).await;
        assert_eq!(read.status(), StatusCode::OK);
        let source = read_source(&read);
        let version = version_of(&read.json().await.unwrap());
        assert!(
            version >= at_least,
            "read #{reads} through the other instance: version {version} from {source}, \
             after version {at_least} was acknowledged"
        );
        reads += 1;
    }
    reads
}

#[tokio::test]
async fn a_write_acknowledged_while_redis_pauses_writes_is_never_read_older_on_another_instance() {
    let redis = OwnRedis::start().await;
    let (writer, reader) = writer_and_reader(&redis, None).await;
    let sku = writer.sku("paused-writes");
    cached_at_one(&writer, &reader, &sku).await;

    // What Redis's own FAILOVER and managed failovers do: reads go on, scripts wait.
    redis.command(&["CLIENT", "PAUSE", "4000", "WRITE"]).await;
    let written = writer.put(&sku, &size(2)).await;
    assert_eq!(written.status(), StatusCode::OK, "the write succeeds");
    let reads = never_older(&reader, &sku, 2, Duration::from_secs(5)).await;
    assert!(reads > 10, "only {reads} reads");
    served_from_cache_at(&reader, &sku, 2).await;
}

#[tokio::test]
async fn a_write_acknowledged_while_redis_is_out_of_memory_is_never_read_older_on_another_instance()
{
    let redis = OwnRedis::start().await;
    let (writer, reader) = writer_and_reader(&redis, None).await;
    let sku = writer.sku("out-of-memory");
    cached_at_one(&writer, &reader, &sku).await;

    // Under `noeviction`, the policy docs/consistency.md requires ("What the guarantees
    // assume"): writes are refused, reads go on.
    redis.configure("maxmemory-policy", "noeviction").await;
    redis.configure("maxmemory", "1").await;
    let written = writer.put(&sku, &size(2)).await;
    assert_eq!(written.status(), StatusCode::OK, "the write succeeds");
    never_older(&reader, &sku, 2, Duration::from_secs(3)).await;

    redis.configure("maxmemory", "0").await;
    served_from_cache_at(&reader, &sku, 2).await;
}

#[tokio::test]
async fn a_write_whose_connection_was_lost_is_never_read_older_on_another_instance() {
    let redis = OwnRedis::start().await;
    let link = TcpProxy::to(redis.port).await;
    let (writer, reader) = writer_and_reader(&redis, Some(link.url())).await;
    let sku = writer.sku("lost-connection");
    cached_at_one(&writer, &reader, &sku).await;

    // Redis is fine and keeps its data; only the writer's traffic is lost.
    link.blackhole();
    let written = writer.put(&sku, &size(2)).await;
    assert_eq!(written.status(), StatusCode::OK, "the write succeeds");
    never_older(&reader, &sku, 2, Duration::from_secs(3)).await;
    link.restore();
    served_from_cache_at(&reader, &sku, 2).await;
}

/// Writes every SKU at `length_mm` in one WMS batch.
async fn sync_at(app: &TestApp, skus: &[String], length_mm: i64) -> StatusCode {
    let updates: Vec<Value> = skus
        .iter()
        .map(|sku| {
            json!({"sku": sku, "length_mm": length_mm, "width_mm": 2, "height_mm": 3,
                   "weight_g": 4, "source_version": length_mm})
        })
        .collect();
    app.sync(&updates).await.status()
}

/// How many of `skus`, looked up through `app`, are not at `length_mm`.
async fn older_than(app: &TestApp, skus: &[String], length_mm: i64) -> (usize, String) {
    let asked: Vec<&str> = skus.iter().map(String::as_str).collect();
    let response = app.lookup(&asked).await;
    assert_eq!(response.status(), StatusCode::OK);
    let source = read_source(&response);
    let body: Value = response.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), skus.len());
    let older = items
        .iter()
        .filter(|item| item["length_mm"] != length_mm)
        .count();
    (older, source)
}

#[tokio::test]
async fn a_batch_of_1000_whose_connection_was_lost_is_never_read_older_on_another_instance() {
    let redis = OwnRedis::start().await;
    let link = TcpProxy::to(redis.port).await;
    let (writer, reader) = writer_and_reader(&redis, Some(link.url())).await;
    let skus: Vec<String> = (0..1000)
        .map(|i| writer.sku(&format!("batch-{i}")))
        .collect();
    assert_eq!(sync_at(&writer, &skus, 1).await, StatusCode::OK);
    eventually(30, "the reader serves the batch from the cache", || async {
        older_than(&reader, &skus, 1).await == (0, "cache".to_owned())
    })
    .await;

    link.blackhole();
    assert_eq!(sync_at(&writer, &skus, 2).await, StatusCode::OK);
    for _ in 0..5 {
        let (older, source) = older_than(&reader, &skus, 2).await;
        assert_eq!(
            older, 0,
            "{older} of 1000 read older (from {source}) after the ack"
        );
    }
    // Right after the writer's connection comes back, before any repair could land.
    link.restore();
    let (older, source) = older_than(&reader, &skus, 2).await;
    assert_eq!(
        older, 0,
        "{older} of 1000 read older (from {source}) after the ack"
    );
    eventually(
        60,
        "the repairs land and the reader serves the batch from the cache",
        || async { older_than(&reader, &skus, 2).await == (0, "cache".to_owned()) },
    )
    .await;
}

/// The limit of the mechanism, and its bound: a reader cut off from the primary cannot learn
/// what the cache is owed. A write whose cache update fails meanwhile waits until that
/// reader's lease has ended (`CACHE_READ_LEASE_MS`), and from then on the reader serves nothing
/// from the cache: older than acknowledged never, a 503 while it cannot reach the primary.
#[tokio::test]
async fn an_instance_cut_off_from_the_primary_stops_serving_the_cache_when_its_lease_ends() {
    let lease = Duration::from_secs(2);
    let readers = ReaderSettings {
        lease,
        ack_timeout: Duration::from_secs(8),
    };
    let redis = OwnRedis::start().await;
    let writers_link = TcpProxy::to(redis.port).await;
    let readers_database = TcpProxy::to(primary_port()).await;
    let writer = TestApp::spawn_with(Options {
        readers: Some(readers),
        ..on(writers_link.url())
    })
    .await;
    let reader = writer
        .sibling(Options {
            database_url: readers_database.postgres_url(),
            replica: Replica::None,
            readers: Some(readers),
            ..on(redis.url())
        })
        .await;
    let sku = writer.sku("cut-off");
    cached_at_one(&writer, &reader, &sku).await;

    readers_database.blackhole();
    writers_link.blackhole();
    let started = Instant::now();
    let written = writer.put(&sku, &size(2)).await;
    let waited = started.elapsed();
    assert_eq!(written.status(), StatusCode::OK, "the write succeeds");
    assert!(
        waited >= lease,
        "acknowledged after {waited:?}, before the silent reader's lease of {lease:?} ended"
    );
    for _ in 0..3 {
        let read = reader.get(&sku).await;
        if read.status() == StatusCode::OK {
            let source = read_source(&read);
            let version = version_of(&read.json().await.unwrap());
            assert!(
                version >= 2,
                "version {version} from {source} after the ack"
            );
        } else {
            assert_eq!(read.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    readers_database.restore();
    writers_link.restore();
    eventually(30, "the reader is back, at version 2", || async {
        let read = reader.get(&sku).await;
        read.status() == StatusCode::OK && version_of(&read.json().await.unwrap()) == 2
    })
    .await;
}

/// Waits until `redis` reports its link to its master up (a replica in sync).
async fn in_sync(redis: &OwnRedis) {
    eventually(30, "the replica is in sync with its master", || async {
        redis
            .info("replication")
            .await
            .contains("master_link_status:up")
    })
    .await;
}

/// A master, and a replica of it in sync. Each with a folder of its own: a replica writes the
/// data set it receives to disk.
async fn master_and_replica() -> (OwnRedis, OwnRedis) {
    let master = OwnRedis::start_with_snapshots().await;
    let replica = OwnRedis::start_with_snapshots().await;
    replica
        .command(&["REPLICAOF", "127.0.0.1", &master.port.to_string()])
        .await;
    in_sync(&replica).await;
    (master, replica)
}

/// Waits until `replica` holds version 1 at `key`.
async fn replica_has_version_one(replica: &OwnRedis, key: &str) {
    eventually(30, "the replica has version 1", || async {
        replica.command(&["GET", key]).await.starts_with("1|")
    })
    .await;
}

/// A master demoted with `REPLICAOF` keeps its clients' connections open and, once it has
/// resynchronised, serves its new master's data set, which lacks the last writes. A read
/// checks the server's role in its own round trip: not one read is served from it.
#[tokio::test]
async fn a_master_demoted_under_open_connections_is_not_read_at_all() {
    let (master, promoted) = master_and_replica().await;
    // Its resync starts at once, so the demoted master holds the older data set within
    // milliseconds, well inside the periodic identity check.
    promoted.configure("repl-diskless-sync-delay", "0").await;
    let (writer, reader) = writer_and_reader(&master, None).await;
    let sku = writer.sku("demoted");
    cached_at_one(&writer, &reader, &sku).await;
    let key = writer.entry_key(&sku);
    replica_has_version_one(&promoted, &key).await;

    // The replica is promoted while the master runs on; the master takes a write it never
    // passes on.
    promoted.command(&["REPLICAOF", "NO", "ONE"]).await;
    assert_eq!(writer.put(&sku, &size(2)).await.status(), StatusCode::OK);
    let read = reader.get(&sku).await;
    assert_eq!(
        (read_source(&read), version_of(&read.json().await.unwrap())),
        ("cache".to_owned(), 2)
    );

    master
        .command(&["REPLICAOF", "127.0.0.1", &promoted.port.to_string()])
        .await;
    let reads = never_older(&reader, &sku, 2, Duration::from_secs(1)).await;
    in_sync(&master).await;
    assert!(
        master.command(&["GET", &key]).await.starts_with("1|"),
        "the demoted master now holds the promoted data set"
    );
    never_older(&reader, &sku, 2, Duration::from_millis(500)).await;
    assert!(reads > 10, "only {reads} reads");
}

/// Split brain across a Redis failover: a replica is promoted and one instance moves to it,
/// while the old master runs on and another instance still reaches it. The database names the
/// deployment's authoritative data set, and every instance learns it with its lease: the
/// instance on the old master reads nothing from it, and counts its updates there as failed,
/// so what it acknowledges is owed to the promoted data set and read from the database until
/// repaired there. Then the old master dies and every instance is on the promoted server.
#[tokio::test]
async fn writes_through_an_old_master_after_a_failover_are_never_read_older() {
    let (old_master, promoted) = master_and_replica().await;
    // Each instance reaches Redis by an address that a failover moves (a DNS name, a proxy).
    let writers_address = TcpProxy::to(old_master.port).await;
    let readers_address = TcpProxy::to(old_master.port).await;
    let writer = TestApp::spawn_with(on(writers_address.url())).await;
    let reader = writer.sibling(on(readers_address.url())).await;
    let sku = writer.sku("split-brain");
    cached_at_one(&writer, &reader, &sku).await;
    replica_has_version_one(&promoted, &writer.entry_key(&sku)).await;

    promoted.command(&["REPLICAOF", "NO", "ONE"]).await;
    readers_address.retarget(promoted.port);
    // The reader's new epoch there is authoritative, and filled.
    served_from_cache_at(&reader, &sku, 1).await;

    // The writer's update lands on the old master, which the deployment no longer serves.
    assert_eq!(writer.put(&sku, &size(2)).await.status(), StatusCode::OK);
    never_older(&reader, &sku, 2, Duration::from_secs(2)).await;
    never_older(&writer, &sku, 2, Duration::from_millis(500)).await;

    // The old master dies; the writer's address moves to the promoted server too.
    let mut old_master = old_master;
    old_master.stop().await;
    writers_address.retarget(promoted.port);
    for app in [&writer, &reader] {
        never_older(app, &sku, 2, Duration::from_millis(500)).await;
    }
    for app in [&writer, &reader] {
        served_from_cache_at(app, &sku, 2).await;
    }
}
