//! Issue 32, item 4: four instances of one deployment, writes spread over them and reads on
//! every one, while Redis drops their connections and loses its data again and again. No
//! instance ever serves a version older than one acknowledged before its read began.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, read_source, size, version_of};
use crate::processes::OwnRedis;

fn on(redis_url: String) -> Options {
    Options {
        redis_url: Some(redis_url),
        ..Options::default()
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
