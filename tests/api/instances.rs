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

/// Four instances of one deployment on `redis`.
async fn four_instances(redis: &OwnRedis) -> Vec<TestApp> {
    let mut apps = vec![TestApp::spawn_with(on(redis.url())).await];
    for _ in 0..3 {
        let sibling = apps[0].sibling(on(redis.url())).await;
        apps.push(sibling);
    }
    apps
}

/// Four instances of one deployment, writes spread over them and reads on every one, while
/// Redis kills every client connection again and again (`CLIENT KILL TYPE normal`): an update
/// is lost with its connection now and then, and no instance ever serves a version older than
/// one acknowledged before its read began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_never_read_older_while_redis_kills_their_connections() {
    let redis = OwnRedis::start().await;
    let apps = std::sync::Arc::new(four_instances(&redis).await);
    let skus: std::sync::Arc<Vec<String>> = std::sync::Arc::new(
        (0..8)
            .map(|i| apps[0].sku(&format!("killed-{i}")))
            .collect(),
    );
    // SKU -> (acknowledged at, version), and (read began, SKU, version, instance).
    type Acks = std::collections::HashMap<String, Vec<(Instant, i64)>>;
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Acks::new()));
    let reads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(8);

    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..4 {
        let (apps, skus, acks) = (apps.clone(), skus.clone(), acks.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                let sku = &skus[(writer + n) % skus.len()];
                let response = apps[writer].put(sku, &size(100 + n as i64)).await;
                assert!(!response.status().is_server_error() || response.status() == 503);
                if response.status().is_success() {
                    let version = version_of(&response.json().await.unwrap());
                    let mut acks = acks.lock().unwrap();
                    acks.entry(sku.clone())
                        .or_default()
                        .push((Instant::now(), version));
                }
            }
        });
    }
    for reader in 0..4 {
        let (apps, skus, reads) = (apps.clone(), skus.clone(), reads.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                n += 1;
                let sku = &skus[(reader * 3 + n) % skus.len()];
                let began = Instant::now();
                let read = apps[reader].get(sku).await;
                if read.status() == StatusCode::OK {
                    let source = read_source(&read);
                    let version = version_of(&read.json().await.unwrap());
                    reads
                        .lock()
                        .unwrap()
                        .push((began, sku.clone(), version, reader, source));
                }
            }
        });
    }
    let mut kills = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(300)).await;
        redis.command(&["CLIENT", "KILL", "TYPE", "normal"]).await;
        kills += 1;
    }
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }

    let acks = acks.lock().unwrap();
    let reads = reads.lock().unwrap();
    let stale: Vec<String> = reads
        .iter()
        .filter_map(|(began, sku, version, reader, source)| {
            let floor = acks
                .get(sku)?
                .iter()
                .filter(|(at, _)| at < began)
                .map(|(_, v)| *v)
                .max()?;
            (*version < floor).then(|| {
                format!("{sku} v{version} from {source} on instance {reader}, after v{floor}")
            })
        })
        .collect();
    let writes: usize = acks.values().map(Vec::len).sum();
    assert!(
        stale.is_empty(),
        "{} of {} reads older than acknowledged ({writes} writes, {kills} kills), e.g. {:?}",
        stale.len(),
        reads.len(),
        &stale[..stale.len().min(5)]
    );
    assert!(
        writes >= 40 && reads.len() >= 200 && kills >= 10,
        "too little load: {writes} writes, {} reads, {kills} kills",
        reads.len()
    );
}

/// What the clients of a run saw: every acknowledged version, every read, and every answer
/// that was neither.
#[derive(Default)]
struct Seen {
    /// Per SKU: (acknowledged at, version).
    acks: std::collections::HashMap<String, Vec<(Instant, i64)>>,
    /// (read began, SKU, version or 0 when not found, instance, source).
    reads: Vec<(Instant, String, i64, usize, String)>,
    /// How many requests failed (a 5xx, or any other answer a client does not expect), and the
    /// first few with their status and body.
    failed: usize,
    failures: Vec<String>,
}

impl Seen {
    fn ack(&mut self, sku: &str, version: i64) {
        let acks = self.acks.entry(sku.to_owned()).or_default();
        acks.push((Instant::now(), version));
    }

    fn failure(&mut self, what: String, status: StatusCode, body: String) {
        self.failed += 1;
        if self.failures.len() < 5 {
            self.failures.push(format!("{what}: {status} {body}"));
        }
    }

    /// The newest version acknowledged for `sku` (0 if none).
    fn last_acked(&self, sku: &str) -> i64 {
        self.acks
            .get(sku)
            .and_then(|acks| acks.iter().map(|(_, version)| *version).max())
            .unwrap_or(0)
    }

    /// Every read older than a version acknowledged before it began.
    fn stale(&self) -> Vec<String> {
        (self.reads.iter())
            .filter_map(|(began, sku, version, instance, source)| {
                let floor = (self.acks.get(sku)?.iter())
                    .filter(|(at, _)| at < began)
                    .map(|(_, v)| *v)
                    .max()?;
                (*version < floor).then(|| {
                    format!("{sku} v{version} from {source} on instance {instance}, after v{floor}")
                })
            })
            .collect()
    }
}

/// The clients of a run: writers and readers on every instance until it is stopped.
#[derive(Clone)]
struct Clients {
    apps: std::sync::Arc<Vec<TestApp>>,
    skus: std::sync::Arc<Vec<String>>,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    began: Instant,
    stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Clients {
    fn running(&self) -> bool {
        !self.stopped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many writes were acknowledged and reads answered.
    fn load(&self) -> (usize, usize) {
        let seen = self.seen.lock().unwrap();
        (seen.acks.values().map(Vec::len).sum(), seen.reads.len())
    }

    fn any_sku(&self) -> &str {
        &self.skus[fastrand::usize(..self.skus.len())]
    }

    /// PUTs through `instance`, every fifth write a WMS batch of three; every write stores new
    /// content, so every acknowledged one is a new version.
    async fn write(self, instance: usize) {
        let app = &self.apps[instance];
        let mut n = 0;
        while self.running() {
            n += 1;
            let length_mm = (1 + instance * 20_000 + n) as i64;
            if n % 5 == 0 {
                self.sync(instance, length_mm).await;
                continue;
            }
            let sku = self.any_sku();
            let response = app.put(sku, &size(length_mm)).await;
            let status = response.status();
            if status.is_success() {
                let version = version_of(&response.json().await.unwrap());
                self.seen.lock().unwrap().ack(sku, version);
            } else {
                let body = response.text().await.unwrap_or_default();
                let what = format!("PUT {sku} on instance {instance}");
                self.seen.lock().unwrap().failure(what, status, body);
            }
        }
    }

    /// A batch of three SKUs at `length_mm`, its counter the microseconds since the run began,
    /// so a later batch is the newer one (one that loses a race to an earlier one comes back
    /// `stale`, with the version stored).
    async fn sync(&self, instance: usize, length_mm: i64) {
        let source_version = self.began.elapsed().as_micros() as i64;
        let updates: Vec<Value> = (0..3)
            .map(|_| {
                json!({"sku": self.any_sku(), "length_mm": length_mm, "width_mm": 2,
                       "height_mm": 3, "weight_g": 4, "source_version": source_version})
            })
            .collect();
        let response = self.apps[instance].sync(&updates).await;
        let status = response.status();
        if status != StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            let what = format!("sync on instance {instance}");
            self.seen.lock().unwrap().failure(what, status, body);
            return;
        }
        let body: Value = response.json().await.unwrap();
        let mut seen = self.seen.lock().unwrap();
        for result in body["results"].as_array().unwrap() {
            let version = result["version"].as_i64().expect("a version");
            seen.ack(result["sku"].as_str().unwrap(), version);
        }
    }

    /// Reads through `instance` until the run ends: single GETs, every third a lookup of four
    /// SKUs. A SKU not found counts as a read of version 0 (each was created before the run).
    async fn read(self, instance: usize) {
        let app = &self.apps[instance];
        let mut n = 0;
        while self.running() {
            n += 1;
            let began = Instant::now();
            let mut found = Vec::new();
            let mut missing = Vec::new();
            let response = if n % 3 == 0 {
                let asked: Vec<&str> = (0..4).map(|_| self.any_sku()).collect();
                let response = app.lookup(&asked).await;
                if response.status() == StatusCode::OK {
                    let source = read_source(&response);
                    let body: Value = response.json().await.unwrap();
                    for item in body["items"].as_array().unwrap() {
                        let sku = item["sku"].as_str().unwrap().to_owned();
                        found.push((sku, version_of(item), source.clone()));
                    }
                    for sku in body["not_found"].as_array().unwrap() {
                        missing.push(sku.as_str().unwrap().to_owned());
                    }
                    None
                } else {
                    Some((format!("lookup {asked:?} on instance {instance}"), response))
                }
            } else {
                let sku = self.any_sku();
                let response = app.get(sku).await;
                match response.status() {
                    StatusCode::OK => {
                        let source = read_source(&response);
                        let version = version_of(&response.json().await.unwrap());
                        found.push((sku.to_owned(), version, source));
                        None
                    }
                    StatusCode::NOT_FOUND => {
                        missing.push(sku.to_owned());
                        None
                    }
                    _ => Some((format!("GET {sku} on instance {instance}"), response)),
                }
            };
            if let Some((what, response)) = response {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                self.seen.lock().unwrap().failure(what, status, body);
                continue;
            }
            let mut seen = self.seen.lock().unwrap();
            for (sku, version, source) in found {
                seen.reads.push((began, sku, version, instance, source));
            }
            for sku in missing {
                let read = (began, sku, 0, instance, "not found".to_owned());
                seen.reads.push(read);
            }
        }
    }
}

/// Every SKU read through every instance: what does not come from the cache at the version
/// and length the primary stores.
async fn not_cached_as_stored(apps: &[TestApp], stored: &[(String, i64, i32)]) -> Vec<String> {
    let mut off = Vec::new();
    for (instance, app) in apps.iter().enumerate() {
        for (sku, version, length_mm) in stored {
            let read = app.get(sku).await;
            let status = read.status();
            if status != StatusCode::OK {
                off.push(format!("{sku} on instance {instance}: {status}"));
                continue;
            }
            let source = read_source(&read);
            let body: Value = read.json().await.unwrap();
            let read = (
                source.as_str(),
                version_of(&body),
                body["length_mm"].as_i64(),
            );
            if read != ("cache", *version, Some(i64::from(*length_mm))) {
                off.push(format!(
                    "{sku} on instance {instance}: {read:?}, stored v{version} at {length_mm} mm"
                ));
            }
        }
    }
    off
}

/// Issue 32, item 4. Four instances of one deployment, writes (PUTs and WMS batches) spread
/// over them and reads (GETs and lookups) on every one, while Redis is flushed (`FLUSHALL`)
/// and has every client connection killed (`CLIENT KILL TYPE normal`), in turn, every 250 ms:
/// no read is older than a version acknowledged before it began, no request fails, and once
/// the chaos stops the primary holds each SKU's last acknowledged version and every instance
/// serves it from the repaired cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_lose_no_write_and_never_read_older_while_redis_is_flushed_and_cut_off() {
    let redis = OwnRedis::start().await;
    let apps = four_instances(&redis).await;
    let skus: Vec<String> = (0..12)
        .map(|i| apps[0].sku(&format!("flushed-{i}")))
        .collect();
    let mut seen = Seen::default();
    let created = skus.len();
    for (i, sku) in skus.iter().enumerate() {
        let response = apps[i % 4].put(sku, &size(1)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        seen.ack(sku, version_of(&response.json().await.unwrap()));
    }
    let clients = Clients {
        apps: std::sync::Arc::new(apps),
        skus: std::sync::Arc::new(skus),
        seen: std::sync::Arc::new(std::sync::Mutex::new(seen)),
        began: Instant::now(),
        stopped: Default::default(),
    };

    let mut tasks = tokio::task::JoinSet::new();
    for instance in 0..4 {
        tasks.spawn(clients.clone().write(instance));
        tasks.spawn(clients.clone().read(instance));
    }
    // 8 s of chaos, longer (up to 14 s) while a busy machine has not yet made the load that
    // the last assertion requires, with some to spare.
    let (mut flushes, mut kills) = (0, 0);
    loop {
        let chaos = clients.began.elapsed();
        let (writes, reads) = clients.load();
        let enough = writes >= created + 60 && reads >= 300;
        if chaos >= Duration::from_secs(14) || (chaos >= Duration::from_secs(8) && enough) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if flushes == kills {
            redis.command(&["FLUSHALL"]).await;
            flushes += 1;
        } else {
            redis.command(&["CLIENT", "KILL", "TYPE", "normal"]).await;
            kills += 1;
        }
    }
    clients.stop();
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }

    let seen = std::mem::take(&mut *clients.seen.lock().unwrap());
    let writes = seen.acks.values().map(Vec::len).sum::<usize>() - created;
    let load = format!(
        "{writes} writes, {} reads, {flushes} flushes, {kills} kills in {:.1?}",
        seen.reads.len(),
        clients.began.elapsed()
    );
    let stale = seen.stale();
    assert!(
        stale.is_empty(),
        "{} reads older than acknowledged ({load}), e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert!(
        seen.failed == 0,
        "{} requests failed ({load}), first {:?}",
        seen.failed,
        seen.failures
    );
    let apps = &clients.apps;
    let mut stored = Vec::new();
    for sku in clients.skus.iter() {
        let (version, deleted, length_mm) = apps[0].primary_row(sku).await.expect("a row");
        let last = seen.last_acked(sku);
        assert!(
            (version, deleted) == (last, false),
            "{sku}: the primary holds v{version} (deleted: {deleted}), v{last} was acknowledged last"
        );
        stored.push((sku.clone(), version, length_mm));
    }
    let calm = Instant::now();
    let deadline = calm + Duration::from_secs(30);
    loop {
        let off = not_cached_as_stored(apps, &stored).await;
        if off.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after the chaos, {} reads are not the stored version from the cache, e.g. {:?}",
            off.len(),
            &off[..off.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{load}; every instance served the cache repaired {:.1?} later",
        calm.elapsed()
    );
    assert!(
        writes >= 40 && seen.reads.len() >= 200 && kills >= 10,
        "too little load: {load}"
    );
}
