//! The torture test: writers and readers over a few dozen SKUs, a replica applying WAL 1 s
//! late, and a chaos task that flushes Redis, deletes cache entries, snapshots Redis and later
//! restarts it from that older snapshot, pauses it, blackholes the service's connection to it
//! (a TCP proxy: Redis keeps its data and never sees the commands) and restores it, and
//! restarts the replica. A checker records every acknowledged write and every read with its
//! start time.
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

use crate::helpers::{Options, Replica, TestApp, primary_url, size};
use crate::processes::{OwnPostgres, OwnRedis};
use crate::proxy::TcpProxy;

const SKUS: usize = 36;

#[derive(Default)]
struct Checker {
    /// Per SKU: (acknowledged at, version).
    acked: HashMap<String, Vec<(Instant, i64)>>,
    /// (started at, SKU, version read).
    reads: Vec<(Instant, String, i64)>,
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
            .filter_map(|(started, sku, version)| {
                let floor = self
                    .acked
                    .get(sku)?
                    .iter()
                    .filter(|(at, _)| at < started)
                    .map(|(_, v)| *v)
                    .max()?;
                (*version < floor)
                    .then(|| format!("{sku}: read v{version} after v{floor} was acknowledged"))
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
    let primary_port: u16 = primary_url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let replica = OwnPostgres::replica_of(primary_port, Some("1s")).await;
    let mut redis = OwnRedis::start_with_snapshots().await;
    let link = TcpProxy::to(redis.port).await;
    let app = Arc::new(
        TestApp::spawn_with(Options {
            replica: Replica::Url(replica.url()),
            redis_url: Some(link.url()),
            ..Options::default()
        })
        .await,
    );
    let skus: Arc<Vec<String>> = Arc::new((0..SKUS).map(|i| app.sku(&format!("t{i}"))).collect());
    let checker = Arc::new(Mutex::new(Checker::default()));
    for sku in skus.iter() {
        let response = app.put(sku, &size(1)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        checker.lock().unwrap().ack(sku, 1);
    }
    let started = Instant::now();
    let deadline = started + duration();
    let mut tasks = tokio::task::JoinSet::new();

    // Writers: single PUTs and WMS batches.
    for writer in 0..2 {
        let (app, skus, checker) = (app.clone(), skus.clone(), checker.clone());
        tasks.spawn(async move {
            let mut n: i64 = 1;
            while Instant::now() < deadline {
                n += 1;
                if writer == 1 && n % 5 == 0 {
                    let batch: Vec<Value> = (0..4)
                        .map(|_| {
                            let sku = &skus[fastrand::usize(..skus.len())];
                            json!({"sku": sku, "length_mm": n, "width_mm": 2, "height_mm": 3, "weight_g": 4,
                                   "source_version": Instant::now().duration_since(started).as_micros() as i64})
                        })
                        .collect();
                    let response = app.sync(&batch).await;
                    record_status(&checker, response.status(), "sync");
                    if response.status() == StatusCode::OK {
                        let body: Value = response.json().await.unwrap();
                        let mut checker = checker.lock().unwrap();
                        for result in body["results"].as_array().unwrap() {
                            if let Some(version) = result["version"].as_i64() {
                                checker.ack(result["sku"].as_str().unwrap(), version);
                            }
                        }
                    }
                } else {
                    let sku = &skus[fastrand::usize(..skus.len())];
                    let response = app.put(sku, &size(1000 + n)).await;
                    record_status(&checker, response.status(), "put");
                    if response.status().is_success() {
                        let version = response.json::<Value>().await.unwrap()["version"].as_i64().unwrap();
                        checker.lock().unwrap().ack(sku, version);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    // Readers: single GETs and lookups.
    for reader in 0..4 {
        let (app, skus, checker) = (app.clone(), skus.clone(), checker.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let begun = Instant::now();
                if reader == 0 {
                    let wanted: Vec<&str> = (0..8)
                        .map(|_| skus[fastrand::usize(..skus.len())].as_str())
                        .collect();
                    let response = app.lookup(&wanted).await;
                    record_status(&checker, response.status(), "lookup");
                    if response.status() == StatusCode::OK {
                        let body: Value = response.json().await.unwrap();
                        let mut checker = checker.lock().unwrap();
                        for item in body["items"].as_array().unwrap() {
                            let sku = item["sku"].as_str().unwrap().to_owned();
                            checker
                                .reads
                                .push((begun, sku, item["version"].as_i64().unwrap()));
                        }
                    }
                } else {
                    let sku = &skus[fastrand::usize(..skus.len())];
                    let response = app.get(sku).await;
                    record_status(&checker, response.status(), "get");
                    if response.status() == StatusCode::OK {
                        let version = response.json::<Value>().await.unwrap()["version"]
                            .as_i64()
                            .unwrap();
                        checker
                            .lock()
                            .unwrap()
                            .reads
                            .push((begun, sku.clone(), version));
                    }
                }
            }
        });
    }

    // Chaos. (Fences are the service's own bookkeeping, like a WAL file: deleting single fences
    // is not an outage Redis has.)
    let chaos = {
        let (app, skus, checker) = (app.clone(), skus.clone(), checker.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while Instant::now() + Duration::from_secs(2) < deadline {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let event = match round % 7 {
                    0 => {
                        let _: () = app.redis.flushall(false).await.unwrap_or(());
                        "flushall"
                    }
                    1 => {
                        for sku in skus.iter().step_by(2) {
                            let _: Result<i64, _> = app.redis.del(app.entry_key(sku)).await;
                        }
                        "delete entries"
                    }
                    2 => {
                        redis.snapshot().await;
                        "snapshot"
                    }
                    3 => {
                        redis.pause().await;
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                        redis.resume().await;
                        "pause"
                    }
                    4 => {
                        link.blackhole();
                        tokio::time::sleep(Duration::from_millis(1200)).await;
                        link.restore();
                        "blackhole"
                    }
                    5 => {
                        // Back with the data of the last snapshot: older entries and fences.
                        redis.restart().await;
                        "restart from snapshot"
                    }
                    _ => {
                        replica.stop().await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        replica.start().await;
                        "replica restart"
                    }
                };
                checker.lock().unwrap().chaos.push(event);
                round += 1;
            }
            (redis, link, replica)
        })
    };
    while let Some(task) = tasks.join_next().await {
        task.unwrap();
    }
    let _servers = chaos.await.unwrap();

    let checker = std::mem::take(&mut *checker.lock().unwrap());
    let mut lost = Vec::new();
    for (sku, acks) in &checker.acked {
        let newest = acks.iter().map(|(_, v)| *v).max().unwrap();
        let stored = app.primary_row(sku).await.map_or(0, |row| row.0);
        if stored < newest {
            lost.push(format!("{sku}: v{newest} acknowledged, v{stored} stored"));
        }
    }
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

fn record_status(checker: &Mutex<Checker>, status: StatusCode, what: &str) {
    if status.is_server_error() {
        checker
            .lock()
            .unwrap()
            .server_errors
            .push(format!("{what}: {status}"));
    }
}
