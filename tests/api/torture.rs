//! The torture test: writers and readers over a few dozen SKUs, on two instances of one
//! deployment (half the reads through the instance that does not write), a replica applying
//! WAL 1 s late, and a chaos task that flushes Redis, deletes cache entries, snapshots Redis and
//! later restarts it from that older snapshot, pauses it, pauses its writes (`CLIENT PAUSE
//! WRITE`, as its `FAILOVER` does), blackholes the writing instance's connection to it (a TCP
//! proxy: Redis keeps its data and never sees the commands) and restores it, fails over to a
//! standby that missed the last writes, and restarts the replica. A checker records every
//! acknowledged write and every read with its start time.
//!
//! It fails on any read older than a write acknowledged before the read started, on any
//! acknowledged write missing from the primary at the end, and on any 5xx (only Redis is made
//! to fail here, and the service must not fail because of Redis). `PSS_TORTURE_SECS` sets the
//! duration (default 30).

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, KeysInterface};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, Replica, TestApp, primary_port, read_source, size};
use crate::processes::{OwnPostgres, OwnRedis};
use crate::proxy::TcpProxy;

const SKUS: usize = 36;

#[derive(Default)]
struct Checker {
    /// Per SKU: (acknowledged at, version).
    acked: HashMap<String, Vec<(Instant, i64)>>,
    /// (started at, SKU, version read, where from and through which instance).
    reads: Vec<(Instant, String, i64, String)>,
    writes: usize,
    server_errors: Vec<String>,
    chaos: Vec<&'static str>,
}

impl Checker {
    fn ack(&mut self, sku: &str, version: i64) {
        self.acked
            .entry(sku.to_owned())
            .or_default()
            .push((Instant::now(), version));
        self.writes += 1;
    }

    fn stale_reads(&self) -> Vec<String> {
        self.reads
            .iter()
            .filter_map(|(started, sku, version, from)| {
                let floor = self
                    .acked
                    .get(sku)?
                    .iter()
                    .filter(|(at, _)| at < started)
                    .map(|(_, v)| *v)
                    .max()?;
                (*version < floor).then(|| {
                    format!("{sku}: read v{version} ({from}) after v{floor} was acknowledged")
                })
            })
            .collect()
    }
}

fn duration() -> Duration {
    let secs = std::env::var("PSS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_no_stale_reads_and_no_lost_writes_under_cache_chaos() {
    let servers = Servers::start().await;
    let app = Arc::new(
        TestApp::spawn_with(Options {
            replica: Replica::Url(servers.replica.url()),
            redis_url: Some(servers.link.url()),
            ..Options::default()
        })
        .await,
    );
    let reader = Arc::new(
        app.sibling(Options {
            replica: Replica::Url(servers.replica.url()),
            redis_url: Some(servers.readers_link.url()),
            ..Options::default()
        })
        .await,
    );
    let run = Run::create_skus(app.clone(), reader).await;

    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..2 {
        tasks.spawn(run.clone().write(writer == 1));
    }
    for reader in 0..4 {
        tasks.spawn(run.clone().read(reader % 2 == 0, reader >= 2));
    }
    let chaos = tokio::spawn(run.clone().chaos(servers));
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    let _servers = chaos.await.unwrap();

    let checker = std::mem::take(&mut *run.checker.lock().unwrap());
    let lost = lost_writes(&app, &checker).await;
    let stale = checker.stale_reads();
    let _ = writeln!(
        std::io::stderr(),
        "torture: {} acknowledged writes, {} reads, chaos events {:?}; {} stale reads, {} lost writes, {} server errors",
        checker.writes,
        checker.reads.len(),
        checker.chaos,
        stale.len(),
        lost.len(),
        checker.server_errors.len()
    );
    assert!(
        stale.is_empty(),
        "stale reads: {:?}",
        &stale[..stale.len().min(10)]
    );
    assert!(lost.is_empty(), "lost writes: {lost:?}");
    assert!(
        checker.server_errors.is_empty(),
        "server errors: {:?}",
        checker.server_errors
    );
    assert!(
        checker.writes >= 200 && checker.reads.len() >= 1000 && checker.chaos.len() >= 7,
        "too little load"
    );
}

/// The test's own servers, which the chaos task stops, pauses and restarts: a replica applying
/// WAL 1 s late, a Redis that keeps snapshots and a standby Redis replicating it, and the
/// addresses each instance reaches Redis by (proxies: the writer's can drop its traffic, and
/// a failover moves both).
struct Servers {
    replica: OwnPostgres,
    redis: OwnRedis,
    standby: OwnRedis,
    link: TcpProxy,
    readers_link: TcpProxy,
}

impl Servers {
    async fn start() -> Self {
        let replica = OwnPostgres::replica_of(primary_port(), Some("1s")).await;
        let redis = OwnRedis::start_with_snapshots().await;
        let standby = OwnRedis::start_with_snapshots().await;
        replicate(&standby, &redis).await;
        let link = TcpProxy::to(redis.port).await;
        let readers_link = TcpProxy::to(redis.port).await;
        Self {
            replica,
            redis,
            standby,
            link,
            readers_link,
        }
    }

    /// The standby is promoted, and keeps running as the master while the old master goes on
    /// taking the instances' writes for a moment (the standby misses them); then both
    /// addresses move to it, and the old master becomes its standby.
    async fn fail_over(&mut self) {
        self.standby.command(&["REPLICAOF", "NO", "ONE"]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.link.retarget(self.standby.port);
        self.readers_link.retarget(self.standby.port);
        std::mem::swap(&mut self.redis, &mut self.standby);
        replicate(&self.standby, &self.redis).await;
    }
}

/// Makes `standby` a replica of `master`.
async fn replicate(standby: &OwnRedis, master: &OwnRedis) {
    standby
        .command(&["REPLICAOF", "127.0.0.1", &master.port.to_string()])
        .await;
}

/// What every task of a run shares: the service, its SKUs (each created at version 1), the
/// checker, and when the run started and ends.
#[derive(Clone)]
struct Run {
    /// Writes, and reads half of the time.
    app: Arc<TestApp>,
    /// Another instance of the same deployment, which only reads.
    reader: Arc<TestApp>,
    skus: Arc<Vec<String>>,
    checker: Arc<Mutex<Checker>>,
    started: Instant,
    deadline: Instant,
}

impl Run {
    async fn create_skus(app: Arc<TestApp>, reader: Arc<TestApp>) -> Self {
        let skus: Vec<String> = (0..SKUS).map(|i| app.sku(&format!("t{i}"))).collect();
        let mut checker = Checker::default();
        for sku in &skus {
            let response = app.put(sku, &size(1)).await;
            assert_eq!(response.status(), StatusCode::CREATED);
            checker.ack(sku, 1);
        }
        let started = Instant::now();
        Self {
            app,
            reader,
            skus: Arc::new(skus),
            checker: Arc::new(Mutex::new(checker)),
            started,
            deadline: started + duration(),
        }
    }

    fn any_sku(&self) -> &str {
        &self.skus[fastrand::usize(..self.skus.len())]
    }

    /// Single PUTs until the deadline; with `batches`, every fifth write is a WMS batch of 4.
    async fn write(self, batches: bool) {
        let mut n: i64 = 1;
        while Instant::now() < self.deadline {
            n += 1;
            if batches && n % 5 == 0 {
                self.sync_batch(n).await;
            } else {
                let sku = self.any_sku();
                let response = self.app.put(sku, &size(1000 + n)).await;
                record_status(&self.checker, response.status(), "put");
                if response.status().is_success() {
                    let version = response.json::<Value>().await.unwrap()["version"]
                        .as_i64()
                        .unwrap();
                    self.checker.lock().unwrap().ack(sku, version);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn sync_batch(&self, n: i64) {
        let batch: Vec<Value> = (0..4)
            .map(|_| {
                json!({"sku": self.any_sku(), "length_mm": n, "width_mm": 2, "height_mm": 3,
                       "weight_g": 4,
                       "source_version": self.started.elapsed().as_micros() as i64})
            })
            .collect();
        let response = self.app.sync(&batch).await;
        record_status(&self.checker, response.status(), "sync");
        if response.status() == StatusCode::OK {
            let body: Value = response.json().await.unwrap();
            let mut checker = self.checker.lock().unwrap();
            for result in body["results"].as_array().unwrap() {
                if let Some(version) = result["version"].as_i64() {
                    checker.ack(result["sku"].as_str().unwrap(), version);
                }
            }
        }
    }

    /// Single GETs until the deadline, or with `lookups`, lookups of 8 SKUs, through the
    /// writing instance or with `elsewhere` the other one; every read is recorded with the
    /// instant it began.
    async fn read(self, lookups: bool, elsewhere: bool) {
        let app = if elsewhere { &self.reader } else { &self.app };
        while Instant::now() < self.deadline {
            let begun = Instant::now();
            if lookups {
                let wanted: Vec<&str> = (0..8).map(|_| self.any_sku()).collect();
                let response = app.lookup(&wanted).await;
                record_status(&self.checker, response.status(), "lookup");
                if response.status() == StatusCode::OK {
                    let from = format!("lookup, {}, {}", read_source(&response), app.address);
                    let body: Value = response.json().await.unwrap();
                    let mut checker = self.checker.lock().unwrap();
                    for item in body["items"].as_array().unwrap() {
                        let sku = item["sku"].as_str().unwrap().to_owned();
                        checker.reads.push((
                            begun,
                            sku,
                            item["version"].as_i64().unwrap(),
                            from.clone(),
                        ));
                    }
                }
            } else {
                let sku = self.any_sku();
                let response = app.get(sku).await;
                record_status(&self.checker, response.status(), "get");
                if response.status() == StatusCode::OK {
                    let from = format!("get, {}, {}", read_source(&response), app.address);
                    let version = response.json::<Value>().await.unwrap()["version"]
                        .as_i64()
                        .unwrap();
                    let read = (begun, sku.to_owned(), version, from);
                    self.checker.lock().unwrap().reads.push(read);
                }
            }
        }
    }

    /// One failure every 1.5 s, in turn, until 2 s before the deadline. (Fences are the
    /// service's own bookkeeping, like a WAL file: deleting single fences is not an outage
    /// Redis has.) Returns the servers, to be stopped when the test ends.
    async fn chaos(self, mut servers: Servers) -> Servers {
        let app = &self.app;
        let mut round = 0;
        while Instant::now() + Duration::from_secs(2) < self.deadline {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let event = match round % 9 {
                0 => {
                    let _: () = app.redis.flushall(false).await.unwrap_or(());
                    "flushall"
                }
                1 => {
                    for sku in self.skus.iter().step_by(2) {
                        let _: Result<i64, _> = app.redis.del(app.entry_key(sku)).await;
                    }
                    "delete entries"
                }
                2 => {
                    servers.redis.snapshot().await;
                    "snapshot"
                }
                3 => {
                    servers.redis.pause().await;
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    servers.redis.resume().await;
                    "pause"
                }
                4 => {
                    servers.link.blackhole();
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    servers.link.restore();
                    "blackhole"
                }
                5 => {
                    // Back with the data of the last snapshot: older entries and fences.
                    servers.redis.restart().await;
                    "restart from snapshot"
                }
                6 => {
                    // Reads go on; scripts, every install among them, wait.
                    servers
                        .redis
                        .command(&["CLIENT", "PAUSE", "1200", "WRITE"])
                        .await;
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    "pause writes"
                }
                7 => {
                    servers.fail_over().await;
                    "failover to a standby that missed writes"
                }
                _ => {
                    servers.replica.stop().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    servers.replica.start().await;
                    "replica restart"
                }
            };
            self.checker.lock().unwrap().chaos.push(event);
            round += 1;
        }
        servers
    }
}

/// Each SKU whose newest acknowledged version the primary does not hold.
async fn lost_writes(app: &TestApp, checker: &Checker) -> Vec<String> {
    let mut lost = Vec::new();
    for (sku, acks) in &checker.acked {
        let newest = acks.iter().map(|(_, v)| *v).max().unwrap();
        let stored = app.primary_row(sku).await.map_or(0, |row| row.0);
        if stored < newest {
            lost.push(format!("{sku}: v{newest} acknowledged, v{stored} stored"));
        }
    }
    lost
}

fn record_status(checker: &Mutex<Checker>, status: StatusCode, what: &str) {
    if status.is_server_error() {
        checker
            .lock()
            .unwrap()
            .server_errors
            .push(format!("{what}: {status}"));
    }
}
