//! Behind PgBouncer in transaction mode (`DATABASE_POOLER=transaction`; docs/scaling.md): a
//! transaction, not a connection, owns a server connection, so every statement runs in a
//! transaction of its own, the instance's caches are named per transaction, and the change
//! listener needs a session of its own (`DATABASE_SESSION_URL`). Each test runs its own
//! PgBouncer (Debian's 1.18: no prepared statements in transaction mode) with two server
//! connections in front of the shared primary, and another in front of the replica that
//! applies WAL 2 s late (or, for what is timed, in front of a primary of the test's own), and
//! sends enough requests at once that clients share them.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use product_size_service::config::{DEFAULT_REPLICA_TIMEOUT, DatabaseSettings, Pooler};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::ConnectOptions;

use crate::helpers::{
    ADMIN_TOKEN, Options, Pooled, Replica, ServiceProcess, TestApp, eventually,
    lagging_replica_url, primary_port, primary_url, read_source, size, version_of,
};
use crate::processes::{OwnPgBouncer, OwnPostgres};

/// Server connections per pooler: fewer than the requests in flight.
const POOL_SIZE: u32 = 2;
/// Requests sent at once.
const CONCURRENCY: usize = 20;

/// PgBouncers in transaction mode in front of a primary and, if any, its lagging replica.
struct Poolers {
    primary: OwnPgBouncer,
    replica: Option<OwnPgBouncer>,
    /// The primary itself.
    direct_url: String,
}

impl Poolers {
    /// In front of the shared primary and its replica that applies WAL 2 s late.
    async fn start() -> Self {
        let replica_port = reqwest::Url::parse(&lagging_replica_url())
            .unwrap()
            .port()
            .unwrap();
        Self {
            primary: OwnPgBouncer::start(primary_port(), POOL_SIZE).await,
            replica: Some(OwnPgBouncer::start(replica_port, POOL_SIZE).await),
            direct_url: primary_url(),
        }
    }

    /// In front of a primary of the test's own, without a replica: what is timed there waits
    /// for no other test's locks.
    async fn start_on(primary: &OwnPostgres) -> Self {
        Self {
            primary: OwnPgBouncer::start(primary.port, POOL_SIZE).await,
            replica: None,
            direct_url: primary.url(),
        }
    }

    /// An app whose primary and replica URLs point at the poolers, with the primary itself
    /// as `DATABASE_SESSION_URL`. Its requests may wait for a pooled connection longer than
    /// the tests' usual 2 s: ten of its connections queue for two of the server's, and other
    /// tests load the same machine and server. What is tested is that no answer fails.
    fn options(&self) -> Options {
        Options {
            database_url: self.primary.url(),
            replica: self
                .replica
                .as_ref()
                .map_or(Replica::None, |replica| Replica::Url(replica.url())),
            pooled: Some(Pooled {
                direct_url: self.direct_url.clone(),
            }),
            database: Some(DatabaseSettings {
                max_connections: 10,
                acquire_timeout: Duration::from_secs(8),
                statement_timeout: Duration::from_secs(5),
                replica_timeout: DEFAULT_REPLICA_TIMEOUT,
                pooler: Pooler::Transaction,
            }),
            ..Options::default()
        }
    }

    /// A new deployment behind the poolers, once its replica probe reads the replica.
    async fn spawn(&self) -> TestApp {
        let app = TestApp::spawn_with(self.options()).await;
        app.wait_replica_up().await;
        app
    }

    /// A connection of another writer (not the service) through the primary's pooler. It
    /// sends statements as `psql` does, whole, in the simple protocol.
    async fn outside_writer(&self) -> sqlx::PgConnection {
        self.primary
            .url()
            .parse::<sqlx::postgres::PgConnectOptions>()
            .unwrap()
            .extra_float_digits(None)
            .connect()
            .await
            .unwrap()
    }
}

/// Runs `statement` on `conn`, whole (no bound parameters: the simple protocol).
async fn outside(conn: &mut sqlx::PgConnection, statement: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(conn)
        .await
        .unwrap();
}

/// Sets `sku`'s weight through `writer`, another writer than the service, in a transaction of
/// its own; returns when its `COMMIT` was sent. (A lock the `UPDATE` waited for is not timed.)
async fn update_outside(writer: &mut sqlx::PgConnection, sku: &str, weight: i64) -> Instant {
    let update = format!("BEGIN; UPDATE product_sizes SET weight_g = {weight} WHERE sku = '{sku}'");
    outside(writer, update).await;
    let committing = Instant::now();
    outside(writer, "COMMIT".to_owned()).await;
    committing
}

/// The body of a successful answer; the problem it reports otherwise.
async fn succeeded(answer: reqwest::Response) -> serde_json::Value {
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn token_of(written: &reqwest::Response) -> String {
    written.headers()["x-consistency-token"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every endpoint a client of SKU `n` calls, with the statuses it got, by name.
async fn exercise(app: &TestApp, n: usize) -> Vec<(&'static str, StatusCode)> {
    let sku = app.sku(&format!("pooled-{n}"));
    let path = format!("/v1/products/{sku}/size");
    let mut seen = Vec::new();
    let created = app.put(&sku, &size(1)).await;
    // What a failed answer lacks, a made-up value stands in for: its status is what counts.
    let header = |answer: &reqwest::Response, name, absent: &str| {
        let value = answer.headers().get(name).and_then(|v| v.to_str().ok());
        value.unwrap_or(absent).to_owned()
    };
    let token = header(&created, "x-consistency-token", "0000000000000000");
    seen.push(("put", created.status()));
    seen.push(("replace", app.put(&sku, &size(2)).await.status()));
    let read = app.get(&sku).await;
    let etag = header(&read, "etag", "\"0\"");
    seen.push(("get", read.status()));
    app.evict(&sku).await;
    seen.push(("miss", app.get(&sku).await.status()));
    seen.push(("token", app.get_with_token(&sku, &token).await.status()));
    let unchanged = app
        .request(Method::GET, &path, Some(crate::helpers::READ_TOKEN))
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    seen.push(("not modified", unchanged.status()));
    let missing = app.sku(&format!("pooled-missing-{n}"));
    seen.push(("lookup", app.lookup(&[&sku, &missing]).await.status()));
    let update = json!({"sku": sku, "length_mm": 3, "width_mm": 2, "height_mm": 3,
                        "weight_g": 4, "source_version": 10 + n});
    seen.push(("sync", app.sync(&[update]).await.status()));
    seen.push(("delete", app.delete(&sku).await.status()));
    seen.push(("deleted", app.get(&sku).await.status()));
    for public in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let answer = app.request(Method::GET, public, None).send().await.unwrap();
        seen.push(("public", answer.status()));
    }
    seen
}

/// The cache warm-up endpoints, started, read and cancelled.
async fn exercise_warm_up(app: &TestApp) -> Vec<(&'static str, StatusCode)> {
    let warm = |method| {
        app.request(method, "/v1/admin/cache/warm", Some(ADMIN_TOKEN))
            .send()
    };
    vec![
        ("warm", warm(Method::POST).await.unwrap().status()),
        ("warm status", warm(Method::GET).await.unwrap().status()),
        ("warm cancel", warm(Method::DELETE).await.unwrap().status()),
    ]
}

#[tokio::test]
async fn every_endpoint_answers_through_pgbouncer_in_transaction_mode() {
    let poolers = Poolers::start().await;
    let app = poolers.spawn().await;

    let mut seen = exercise_warm_up(&app).await;
    for round in 0..3 {
        let clients = (0..CONCURRENCY).map(|n| exercise(&app, round * CONCURRENCY + n));
        seen.extend(join_all(clients).await.into_iter().flatten());
    }

    let failed: Vec<_> = seen.iter().filter(|(_, s)| s.is_server_error()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    let status_of = |what| {
        seen.iter()
            .filter(move |(name, _)| *name == what)
            .map(|s| s.1)
    };
    assert!(status_of("put").all(|s| s == StatusCode::CREATED));
    assert!(status_of("token").all(|s| s == StatusCode::OK));
    assert!(status_of("not modified").all(|s| s == StatusCode::NOT_MODIFIED));
    assert!(status_of("deleted").all(|s| s == StatusCode::NOT_FOUND));
    assert!(status_of("warm").all(|s| s == StatusCode::ACCEPTED));
}

/// Writes `sku` through `writer`, then reads it through `reader` at once, from its cache and
/// again from the database: neither read may be older than the acknowledged write. Returns
/// where the reads came from.
async fn write_then_read(
    writer: &TestApp,
    reader: &TestApp,
    sku: &str,
    length: i64,
) -> [String; 2] {
    let acknowledged = version_of(&succeeded(writer.put(sku, &size(length)).await).await);
    let mut sources = Vec::new();
    for evicted in [false, true] {
        if evicted {
            reader.evict(sku).await;
        }
        let read = reader.get(sku).await;
        sources.push(read_source(&read));
        let served = version_of(&succeeded(read).await);
        assert!(
            served >= acknowledged,
            "served {served} after {acknowledged} was acknowledged"
        );
    }
    [sources[0].clone(), sources[1].clone()]
}

#[tokio::test]
async fn reads_through_another_instance_are_never_older_than_an_acknowledged_write() {
    let poolers = Poolers::start().await;
    let writer = poolers.spawn().await;
    let reader = writer.sibling(poolers.options()).await;
    reader.wait_replica_up().await;
    // SKUs the lagging replica has replayed: read from it once evicted.
    let settled: Vec<String> = (0..CONCURRENCY)
        .map(|n| writer.sku(&format!("settled-{n}")))
        .collect();
    for sku in &settled {
        assert!(writer.put(sku, &size(1)).await.status().is_success());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut sources = Vec::new();
    let (writer, reader) = (&writer, &reader);
    for round in 0..5 {
        let fresh = (0..CONCURRENCY).map(|n| {
            let sku = writer.sku(&format!("fresh-{n}"));
            async move { write_then_read(writer, reader, &sku, round + 2).await }
        });
        let replayed = settled.iter().map(|sku| async {
            reader.evict(sku).await;
            read_source(&reader.get(sku).await)
        });
        let (fresh, replayed) = tokio::join!(join_all(fresh), join_all(replayed));
        sources.extend(fresh.into_iter().flatten().chain(replayed));
    }
    // The replica behind its pooler served what it had replayed, never a fresh write.
    assert!(sources.iter().any(|s| s == "replica"), "{sources:?}");
}

#[tokio::test]
async fn a_consistency_token_is_honoured_through_the_pooler() {
    let poolers = Poolers::start().await;
    let writing = poolers.spawn().await;
    // Another deployment (a cache of its own), which the write does not update.
    let reading = poolers.spawn().await;
    let skus: Vec<String> = (0..CONCURRENCY)
        .map(|n| writing.sku(&format!("token-{n}")))
        .collect();
    let first = size(1);
    join_all(skus.iter().map(|sku| writing.put(sku, &first))).await;
    for sku in &skus {
        eventually(10, "the other deployment caches version 1", || async {
            let read = reading.get(sku).await;
            read_source(&read) == "cache" && version_of(&read.json().await.unwrap()) == 1
        })
        .await;
    }

    let tokened = join_all(skus.iter().map(|sku| async {
        let written = writing.put(sku, &size(2)).await;
        let token = token_of(&written);
        succeeded(written).await;
        version_of(&succeeded(reading.get_with_token(sku, &token).await).await)
    }))
    .await;
    assert!(tokened.iter().all(|version| *version == 2), "{tokened:?}");
}

/// How long after `committed` each of `apps` first served `sku` at `version`, polling every
/// 10 ms (10 s at most).
async fn served_after(
    apps: &[&TestApp],
    sku: &str,
    version: i64,
    committed: Instant,
) -> Vec<Duration> {
    join_all(apps.iter().map(|app| async move {
        loop {
            let read = app.get(sku).await;
            if read.status() == StatusCode::OK && version_of(&read.json().await.unwrap()) == version
            {
                return committed.elapsed();
            }
            let waited = committed.elapsed();
            assert!(waited < Duration::from_secs(10), "{sku} not at {version}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }))
    .await
}

/// Updates `sku` (at version `from`) `times` times through the pooler, as another writer;
/// how long each update took to be served by each of `apps`. Each update waits until every
/// app serves the previous version from its cache: a SKU an instance still reads from the
/// database (its change not applied yet) would be served fresh at once.
async fn outside_updates(
    poolers: &Poolers,
    apps: &[&TestApp],
    sku: &str,
    from: i64,
    times: i64,
) -> Vec<Duration> {
    let mut writer = poolers.outside_writer().await;
    let mut latencies = Vec::new();
    for version in from + 1..=from + times {
        for app in apps {
            eventually(10, "the SKU is served from the cache", || async {
                let read = app.get(sku).await;
                read_source(&read) == "cache"
                    && version_of(&read.json().await.unwrap()) == version - 1
            })
            .await;
        }
        // Every UPDATE of the row raises its version by one (the table's triggers).
        let committing = update_outside(&mut writer, sku, version).await;
        latencies.extend(served_after(apps, sku, version, committing).await);
    }
    latencies
}

#[tokio::test]
async fn an_outside_update_through_the_pooler_is_served_within_a_second() {
    let primary = OwnPostgres::primary().await;
    let poolers = Poolers::start_on(&primary).await;
    let app = poolers.spawn().await;
    let sibling = app.sibling(poolers.options()).await;
    let sku = app.sku("outside");
    app.put(&sku, &size(1)).await;

    // The pooled server connections the instances used are the ones the outside writer gets.
    let latencies = outside_updates(&poolers, &[&app, &sibling], &sku, 1, 5).await;
    // Timed from before the COMMIT was sent to the answer of the first read that had the new
    // version, reads polled every 10 ms: at most ~20 ms (the commit's round trip, a poll's
    // interval) more than from the commit to the first read served it. A change taken for
    // the instances' own write would wait 2 s for its writer to apply it.
    let slowest = latencies.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(1), "{latencies:?}");
}

/// The backend of `app`'s change listener on its primary, once it listens there.
async fn listener_backend(app: &TestApp) -> Option<i32> {
    let name = format!("product-size-service changes {}", app.key_prefix);
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
    )
    .bind(&name)
    .fetch_optional(&app.primary)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_session_url_wakes_the_change_feed_at_once() {
    let primary = OwnPostgres::primary().await;
    let poolers = Poolers::start_on(&primary).await;
    let app = poolers.spawn().await;
    let sku = app.sku("woken");
    app.put(&sku, &size(1)).await;
    // The listener is a session of its own on the primary itself (`DATABASE_SESSION_URL`).
    eventually(10, "the change listener listens on the primary", || async {
        listener_backend(&app).await.is_some()
    })
    .await;
    // Each outside update is served within the promised second, the listener on the primary.
    let served = outside_updates(&poolers, &[&app], &sku, 1, 12).await;
    let slowest = served.iter().max().unwrap();
    assert!(*slowest < Duration::from_secs(1), "served {served:?}");
}

/// Starts `product-size serve` behind the poolers; its stderr is collected.
async fn serve_pooled(poolers: &Poolers, prefix: Option<&str>) -> ServiceProcess {
    let primary = poolers.primary.url();
    let replica = poolers.replica.as_ref().map(OwnPgBouncer::url);
    let replica = replica.unwrap_or_default();
    let session = &poolers.direct_url;
    let mut env = vec![
        ("DATABASE_URL", primary.as_str()),
        ("DATABASE_REPLICA_URL", replica.as_str()),
        ("DATABASE_POOLER", "transaction"),
        ("DATABASE_MAX_CONNECTIONS", "4"),
        ("DATABASE_SESSION_URL", session.as_str()),
    ];
    if let Some(prefix) = prefix {
        env.push(("CACHE_KEY_PREFIX", prefix));
    }
    ServiceProcess::start("pooled", &env, true).await
}

#[tokio::test]
async fn instances_start_and_stop_behind_the_pooler_without_a_panic() {
    let poolers = Poolers::start().await;
    let shared = format!("pooled-start-{:08x}", fastrand::u32(..));
    // Three instances of one deployment (they race to start its cache epoch) and two others.
    let starting = (0..5).map(|n| serve_pooled(&poolers, (n < 3).then_some(&*shared)));
    let mut instances = join_all(starting).await;
    let logs: Vec<_> = instances
        .iter_mut()
        .map(|instance| {
            let mut stderr = instance.child.stderr.take().unwrap();
            tokio::spawn(async move {
                let mut text = String::new();
                tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
                    .await
                    .unwrap();
                text
            })
        })
        .collect();

    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for (n, instance) in instances.iter().enumerate() {
        let url = format!("{}/v1/products/{shared}-{n}/size", instance.base);
        let written = client.put(&url).bearer_auth(crate::helpers::WRITE_TOKEN);
        let written = written.json(&size(1)).send().await.unwrap();
        let read = client.get(&url).bearer_auth(crate::helpers::READ_TOKEN);
        statuses.push((written.status(), read.send().await.unwrap().status()));
    }
    let stopping = instances
        .into_iter()
        .map(|i| i.terminate(Duration::from_secs(20)));
    join_all(stopping).await;
    for log in join_all(logs).await {
        let log = log.unwrap();
        assert!(!log.contains("panicked"), "{log}");
    }
    let expected = (StatusCode::CREATED, StatusCode::OK);
    assert!(statuses.iter().all(|s| *s == expected), "{statuses:?}");
}

#[test]
fn a_transaction_pooler_without_a_session_url_stops_the_start() {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: product_size_service::config::ServeArgs,
    }
    let load = |extra: &[&str]| {
        let pooled = [
            "serve",
            "--database-url",
            "postgres://pooler:6432/product_sizes",
        ];
        let argv = [
            &pooled[..],
            &["--auth-disabled", "--database-pooler", "transaction"],
            extra,
        ];
        let args = <Serve as clap::Parser>::parse_from(argv.concat()).args;
        product_size_service::config::ServeConfig::from_args(args).map(drop)
    };
    let refused = load(&[]).unwrap_err().to_string();
    assert!(refused.contains("DATABASE_SESSION_URL"), "{refused}");
    assert!(load(&["--database-session-url", "postgres://primary/product_sizes"]).is_ok());
}
