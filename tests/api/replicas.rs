//! Several read replicas (`DATABASE_REPLICA_URL` lists them, comma-separated): misses are
//! spread over the replicas that prove their rows fresh, and one that falls behind, hangs or
//! stops is left out of reads within the probe interval, without failing a request.
//! `/readyz` and `/metrics` name each replica by its host and port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    Options, Replica, TestApp, eventually, lagging_replica_url, primary_port, read_source,
    replica_url, size, version_of,
};
use crate::processes::OwnPostgres;
use crate::proxy::TcpProxy;

/// How `/readyz` and `/metrics` name the replica at `url`.
fn name_of(url: &str) -> String {
    let url = reqwest::Url::parse(url).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
}

/// An instance reading from every replica in `urls`, once the probes found them all usable.
async fn app_on(urls: &[String], max_lag: Duration) -> TestApp {
    let app = TestApp::spawn_with(Options {
        replica: Replica::Url(urls.join(",")),
        replica_max_lag: max_lag,
        ..Options::default()
    })
    .await;
    for url in urls {
        usable(&app, &name_of(url), true).await;
    }
    app
}

/// Waits until the instance's probe has `replica` usable for reads, or left out of them.
async fn usable(app: &TestApp, replica: &str, up: bool) {
    let series = format!("product_size_replica_usable{{replica=\"{replica}\"}}");
    let want = if up { 1.0 } else { 0.0 };
    let what = format!("{series} is {want}");
    eventually(30, &what, || async {
        app.scrape_metrics()
            .await
            .lines()
            .any(|line| line == format!("{series} {want}"))
    })
    .await;
}

/// How many misses the instance has read on `replica`.
async fn reads_on(app: &TestApp, replica: &str) -> f64 {
    app.metric(&format!(
        "product_size_replica_reads_total{{replica=\"{replica}\"}}"
    ))
    .await
}

/// Checks that misses no longer go to `replica`: once the reads that chose it before its
/// probe left it out have ended (its count holds still), misses of `skus` do not add to it.
async fn left_out(app: &TestApp, replica: &str, skus: &[(String, i64)]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = reads_on(app, replica).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = reads_on(app, replica).await;
        if std::mem::replace(&mut last, now) == now {
            break;
        }
        assert!(Instant::now() < deadline, "reads on {replica} went on");
    }
    for (sku, version) in skus {
        read_miss(app, sku, *version).await;
    }
    assert_eq!(reads_on(app, replica).await, last, "{replica} was read");
}

/// What `/readyz` says of `replica`.
async fn readiness_of(app: &TestApp, replica: &str) -> Value {
    app.readiness().await["replicas"][replica].clone()
}

/// Writes `count` SKUs, and returns them with their acknowledged versions.
async fn written(app: &TestApp, prefix: &str, count: usize) -> Vec<(String, i64)> {
    let mut skus = Vec::new();
    for i in 0..count {
        let sku = app.sku(&format!("{prefix}-{i}"));
        let response = app.put(&sku, &size(100 + i as i64)).await;
        assert!(response.status().is_success(), "{}", response.status());
        let version = version_of(&response.json().await.unwrap());
        skus.push((sku, version));
    }
    skus
}

/// Reads `sku` as a miss (its entry evicted, its fence kept): the answer must be `version`.
/// Returns where it came from.
async fn read_miss(app: &TestApp, sku: &str, version: i64) -> String {
    app.evict(sku).await;
    let response = app.get(sku).await;
    assert_eq!(response.status(), StatusCode::OK, "a read of {sku} failed");
    let source = read_source(&response);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        version_of(&body),
        version,
        "{sku} read from the {source} older than acknowledged"
    );
    source
}

#[tokio::test]
async fn misses_are_spread_over_every_replica_that_proves_them_fresh() {
    let second = OwnPostgres::replica_of(primary_port(), None).await;
    let (first_url, second_url) = (replica_url(), second.url());
    let app = app_on(
        &[first_url.clone(), second_url.clone()],
        Duration::from_secs(10),
    )
    .await;
    let skus = written(&app, "spread", 16).await;

    // Until both replicas have replayed the writes, misses go to the primary; then to both.
    let (first, second_name) = (name_of(&first_url), name_of(&second_url));
    eventually(30, "both replicas served misses", || async {
        for (sku, version) in &skus {
            read_miss(&app, sku, *version).await;
        }
        reads_on(&app, &first).await > 0.0 && reads_on(&app, &second_name).await > 0.0
    })
    .await;

    let readiness = app.readiness().await;
    assert_eq!(readiness["replicas"][&first], "up", "{readiness}");
    assert_eq!(readiness["replicas"][&second_name], "up", "{readiness}");
}

#[tokio::test]
async fn a_replica_that_falls_behind_is_left_out_and_no_read_goes_older() {
    // The lagging replica applies WAL 2 s late: with writes going on it is 2 s behind, past
    // the bound of 500 ms, while the other keeps up.
    let (fresh_url, lagging_url) = (replica_url(), lagging_replica_url());
    let app = TestApp::spawn_with(Options {
        replica: Replica::Url(format!("{fresh_url},{lagging_url}")),
        replica_max_lag: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    let (fresh, lagging) = (name_of(&fresh_url), name_of(&lagging_url));
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, sku) = (writing.clone(), app.sku("moving"));
        let app = app.sibling(Options::default()).await;
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                n += 1;
                assert!(app.put(&sku, &size(n)).await.status().is_success());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    usable(&app, &lagging, false).await;
    usable(&app, &fresh, true).await;

    let skus = written(&app, "behind", 8).await;
    let lagging_reads = reads_on(&app, &lagging).await;
    eventually(30, "the fresh replica served misses", || async {
        for (sku, version) in &skus {
            read_miss(&app, sku, *version).await;
        }
        reads_on(&app, &fresh).await > 0.0
    })
    .await;
    // Still reachable: /readyz names it up; reads leave it out.
    left_out(&app, &lagging, &skus).await;
    assert_eq!(reads_on(&app, &lagging).await, lagging_reads);
    assert_eq!(readiness_of(&app, &lagging).await, "up");
    writing.store(false, Ordering::SeqCst);
    writer.await.unwrap();
}

#[tokio::test]
async fn a_replica_that_hangs_or_stops_is_left_out_without_failing_a_request() {
    let own = OwnPostgres::replica_of(primary_port(), None).await;
    let proxy = TcpProxy::to(own.port).await;
    let (shared_url, own_url) = (replica_url(), proxy.postgres_url());
    let app = app_on(
        &[shared_url.clone(), own_url.clone()],
        Duration::from_secs(10),
    )
    .await;
    let own_name = name_of(&own_url);
    let skus = Arc::new(written(&app, "hang", 8).await);
    eventually(30, "the replica behind the proxy served misses", || async {
        for (sku, version) in skus.iter() {
            read_miss(&app, sku, *version).await;
        }
        reads_on(&app, &own_name).await > 0.0
    })
    .await;

    // Misses go on all along: none may fail, none may be older than acknowledged.
    let app = Arc::new(app);
    let reading = Arc::new(AtomicBool::new(true));
    let reader = {
        let (app, skus, reading) = (app.clone(), skus.clone(), reading.clone());
        tokio::spawn(async move {
            let mut reads = 0;
            while reading.load(Ordering::SeqCst) {
                for (sku, version) in skus.iter() {
                    read_miss(&app, sku, *version).await;
                    reads += 1;
                }
            }
            reads
        })
    };

    // A replica that stops answering (packets dropped, connections left open).
    proxy.blackhole();
    usable(&app, &own_name, false).await;
    eventually(30, "/readyz names the hung replica down", || async {
        readiness_of(&app, &own_name).await == "down"
    })
    .await;
    left_out(&app, &own_name, &skus).await;

    // Back, it is read again; stopped, it is left out again.
    proxy.restore();
    usable(&app, &own_name, true).await;
    own.stop().await;
    usable(&app, &own_name, false).await;
    eventually(30, "/readyz names the stopped replica down", || async {
        readiness_of(&app, &own_name).await == "down"
    })
    .await;

    reading.store(false, Ordering::SeqCst);
    let reads = reader.await.expect("no read failed or went older");
    assert!(reads > 0);
    assert_eq!(app.readiness().await["replica"], "down");
}
