//! Operating the cache: warm-up while writes go on, and audit with repair. Each test has its own
//! database, since both walk every row.

use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use product_size_service::app;
use product_size_service::service::warm::WarmOptions;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, Options, Replica, TestApp, WRITE_TOKEN, size};
use crate::processes::{OwnPostgres, OwnRedis};

async fn app_on(primary: &OwnPostgres, replica: Option<&OwnPostgres>) -> TestApp {
    TestApp::spawn_with(Options {
        database_url: primary.url(),
        replica: replica.map_or(Replica::None, |r| Replica::Url(r.url())),
        ..Options::default()
    })
    .await
}

/// Loads `rows` rows as a restore would (`pg_restore --disable-triggers` turns them off for
/// the load): nothing is captured, so the cache starts cold and only the warm-up fills it.
/// The triggers are back on, for every session role, when the load commits.
async fn seed(app: &TestApp, rows: i64) {
    let mut tx = app.primary.begin().await.unwrap();
    sqlx::query("ALTER TABLE product_sizes DISABLE TRIGGER USER")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO product_sizes SELECT 'W' || lpad(i::text, 7, '0'), 100, 100, 100, 1000, NULL, 1, NULL, false, now() \
         FROM generate_series(1, $1) AS i",
    )
    .bind(rows)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "DO $$ DECLARE t text; BEGIN \
             FOR t IN SELECT tgname FROM pg_trigger \
                       WHERE tgrelid = 'product_sizes'::regclass AND NOT tgisinternal LOOP \
                 EXECUTE format('ALTER TABLE product_sizes ENABLE ALWAYS TRIGGER %I', t); \
             END LOOP; END $$",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_100k_rows_while_writes_go_on_leaves_the_cache_equal_to_the_primary() {
    let primary = OwnPostgres::primary().await;
    let replica = OwnPostgres::replica_of(primary.port, None).await;
    let app = Arc::new(app_on(&primary, Some(&replica)).await);
    seed(&app, 100_000).await;
    let service = app::service(&app.config).await.unwrap();

    let warming = Arc::new(AtomicBool::new(true));
    let writer = {
        let (app, warming) = (app.clone(), warming.clone());
        tokio::spawn(async move {
            let mut writes = 0;
            while warming.load(Ordering::Relaxed) {
                let sku = format!("W{:07}", fastrand::u32(1..=100_000));
                assert!(
                    app.put(&sku, &size(200 + writes))
                        .await
                        .status()
                        .is_success()
                );
                writes += 1;
            }
            writes
        })
    };
    let mut pages = 0;
    let summary = service
        .warm_cache(
            &WarmOptions {
                batch_size: 1000,
                ..WarmOptions::default()
            },
            |_| pages += 1,
        )
        .await
        .unwrap();
    warming.store(false, Ordering::Relaxed);
    let writes = writer.await.unwrap();

    assert_eq!(summary.rows, 100_000);
    assert_eq!(summary.installed + summary.skipped, summary.rows);
    assert!(
        pages >= 100 && writes > 0,
        "{pages} pages, {writes} concurrent writes"
    );
    let audit = service.audit_cache(false).await.unwrap();
    assert_eq!(audit.divergent(), 0, "{audit:?}");
    assert_eq!(audit.agreeing, audit.checked);
    assert!(audit.checked >= 100_000);
}

#[tokio::test]
async fn a_rate_limited_warm_up_keeps_to_its_rate_and_installs_every_row() {
    let primary = OwnPostgres::primary().await;
    let app = app_on(&primary, None).await;
    seed(&app, 600).await;
    let service = app::service(&app.config).await.unwrap();

    let started = std::time::Instant::now();
    let summary = service
        .warm_cache(
            &WarmOptions {
                batch_size: 100,
                rate_limit: Some(400),
                ..WarmOptions::default()
            },
            |_| {},
        )
        .await
        .unwrap();

    assert_eq!((summary.rows, summary.installed), (600, 600));
    // 600 rows at 400 rows/s: the last page may start only after 1.25 s (500 rows done).
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1250),
        "took {:?}",
        started.elapsed()
    );
}

fn audit_command(app: &TestApp, repair: bool) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_product-size"));
    command
        .arg("audit-cache")
        .env("DATABASE_URL", app.config.database_url.expose_secret())
        .env("REDIS_URL", app.config.redis_url.expose_secret())
        .env("CACHE_KEY_PREFIX", &app.key_prefix)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn");
    if repair {
        command.arg("--repair");
    }
    command.output().unwrap()
}

#[tokio::test]
async fn audit_finds_and_repairs_stale_orphaned_and_missing_entries() {
    let primary = OwnPostgres::primary().await;
    let app = app_on(&primary, None).await;
    let diverged = Divergence::plant(&app).await;

    let found = audit_command(&app, false);
    let table = String::from_utf8_lossy(&found.stdout);
    assert!(
        !found.status.success(),
        "divergence must fail the audit:\n{table}"
    );
    assert_counts(
        &table,
        &[
            ("checked", 4),
            ("agreeing", 1),
            ("stale", 1),
            ("dead_epoch", 1),
            ("orphaned", 1),
            ("missing", 1),
        ],
    );
    let Divergence {
        stale,
        orphan,
        missing,
        dead,
    } = &diverged;
    assert!(table.contains(stale) && table.contains(orphan) && table.contains(missing));
    assert!(
        table
            .lines()
            .any(|l| l.contains(dead.as_str()) && l.contains("dead_epoch"))
    );

    // A warm-up replaces what is stale, dead or missing; only the orphan is left.
    let service = app::service(&app.config).await.unwrap();
    service
        .warm_cache(&WarmOptions::default(), |_| {})
        .await
        .unwrap();
    let warmed = service.audit_cache(false).await.unwrap();
    assert_eq!(
        (
            warmed.stale,
            warmed.dead_epoch,
            warmed.missing,
            warmed.orphaned
        ),
        (0, 0, 0, 1),
        "{warmed:?}"
    );
    service.cache().quit().await;

    let repaired = audit_command(&app, true);
    assert!(
        repaired.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&repaired.stdout),
        String::from_utf8_lossy(&repaired.stderr)
    );
    assert!(audit_command(&app, false).status.success());
    assert_eq!(
        app.get(stale).await.json::<Value>().await.unwrap()["version"],
        2
    );
    assert_eq!(app.get(orphan).await.status(), StatusCode::NOT_FOUND);

    // Every instance exports the last audit's counts, as its probes read them (every 10 s).
    crate::helpers::eventually(20, "the audit's counts are exported", || async {
        app.scrape_metrics()
            .await
            .lines()
            .any(|l| l.starts_with("product_size_cache_audit_entries{state=\"agreeing\"} 4"))
    })
    .await;
}

/// One SKU of each kind of divergence an audit finds, next to one that agrees.
struct Divergence {
    /// Cached at version 1; the primary holds version 2.
    stale: String,
    /// Cached, but the primary has no such SKU.
    orphan: String,
    /// In the primary, not in the cache.
    missing: String,
    /// At its stored version, but stamped with an epoch that ended: invisible to readers.
    dead: String,
}

impl Divergence {
    async fn plant(app: &TestApp) -> Self {
        let names = ["stale", "orphan", "missing", "dead"];
        let [stale, orphan, missing, dead] = names.map(|name| app.sku(name));
        for sku in [&stale, &missing, &app.sku("fine"), &dead] {
            app.put(sku, &size(1)).await;
        }
        app.put(&stale, &size(2)).await;
        let epoch = app.cache_epoch().await;
        app.plant_entry(&stale, 1, &epoch, "{}").await;
        app.plant_entry(&orphan, 3, &epoch, "{}").await;
        app.evict(&missing).await;
        app.plant_entry(&dead, 1, "ended", "{}").await;
        Self {
            stale,
            orphan,
            missing,
            dead,
        }
    }
}

/// Each `(name, count)` is a row of the audit's table.
fn assert_counts(table: &str, counts: &[(&str, usize)]) {
    for (name, count) in counts {
        let row = [name.to_string(), count.to_string()];
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().eq(row.iter().map(String::as_str))),
            "{name} {count} in\n{table}"
        );
    }
}

/// Polls `GET /v1/admin/cache/warm` until its status satisfies `done` (30 s at most).
async fn warm_status_once(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status: Value = app
            .request(Method::GET, "/v1/admin/cache/warm", Some(ADMIN_TOKEN))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_admin_endpoint_warms_the_cache_and_reports_progress() {
    let primary = OwnPostgres::primary().await;
    let app = app_on(&primary, None).await;
    seed(&app, 2_500).await;

    let started = app
        .request(Method::POST, "/v1/admin/cache/warm", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    // Operator endpoints take admin tokens only, and an admin token opens nothing else.
    for token in [crate::helpers::READ_TOKEN, WRITE_TOKEN] {
        for method in [Method::POST, Method::GET] {
            let forbidden = app
                .request(method, "/v1/admin/cache/warm", Some(token))
                .send()
                .await
                .unwrap();
            assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        }
    }
    let sku = app.sku("admin-token");
    assert_eq!(
        app.request(
            Method::GET,
            &format!("/v1/products/{sku}/size"),
            Some(ADMIN_TOKEN)
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.request(
            Method::PUT,
            &format!("/v1/products/{sku}/size"),
            Some(ADMIN_TOKEN)
        )
        .json(&crate::helpers::size(1))
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::FORBIDDEN
    );
    let out_of_range = app
        .request(
            Method::POST,
            "/v1/admin/cache/warm?rate_limit=0",
            Some(ADMIN_TOKEN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out_of_range.status(), StatusCode::BAD_REQUEST);
    let status = warm_status_once(&app, |status| status["state"] != "running").await;
    assert_eq!(status["state"], "succeeded", "{status}");
    assert_eq!(status["progress"]["rows"], 2_500);
    assert_eq!(status["progress"]["installed"], 2_500);
    let read = app.get("W0001234").await;
    assert_eq!(crate::helpers::read_source(&read), "cache");
}

#[tokio::test]
async fn a_failed_warm_up_over_http_names_the_dependency_and_nothing_more() {
    let mut redis = OwnRedis::start().await;
    let app = TestApp::spawn_with(Options {
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    redis.stop().await;

    let started = app
        .request(Method::POST, "/v1/admin/cache/warm", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let status = warm_status_once(&app, |status| status["state"] == "failed").await;
    // The log has the client's error (host, port); the response only says which.
    assert_eq!(
        status["error"], "Redis failed; see the service's log",
        "{status}"
    );
}

/// Two instances of one deployment on `primary`, without a replica, and `rows` rows loaded as
/// a restore would.
async fn two_instances_with_rows(primary: &OwnPostgres, rows: i64) -> (TestApp, TestApp) {
    let app = app_on(primary, None).await;
    let other = app
        .sibling(Options {
            database_url: primary.url(),
            replica: Replica::None,
            ..Options::default()
        })
        .await;
    seed(&app, rows).await;
    (app, other)
}

/// `/v1/admin/cache/warm` with `method` and `query`, on `app`.
fn warm(
    app: &TestApp,
    method: Method,
    query: &str,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    app.request(
        method,
        &format!("/v1/admin/cache/warm{query}"),
        Some(ADMIN_TOKEN),
    )
    .send()
}

#[tokio::test]
async fn one_warm_up_runs_per_deployment_and_any_instance_reports_or_cancels_it() {
    let primary = OwnPostgres::primary().await;
    let (app, other) = two_instances_with_rows(&primary, 3_000).await;
    // Past the cap, nothing starts.
    let too_fast = warm(&app, Method::POST, "?rate_limit=50001").await.unwrap();
    assert_eq!(too_fast.status(), StatusCode::BAD_REQUEST);
    assert_eq!(warm_status_once(&other, |_| true).await["state"], "idle");

    // 100 rows a second: it runs for half a minute unless stopped.
    let started = warm(&app, Method::POST, "?rate_limit=100").await.unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    // The other instance sees it running, with its progress, and starts none of its own.
    let seen = warm_status_once(&other, |status| {
        status["state"] == "running" && status["progress"]["rows"].as_u64() > Some(0)
    })
    .await;
    assert_eq!(seen["rate_limit"], 100, "{seen}");
    let second = warm(&other, Method::POST, "").await.unwrap();
    assert_eq!(second.status(), StatusCode::CONFLICT);
    assert_eq!(second.headers()["content-type"], "application/problem+json");

    // Cancelled from the other instance, it stops on the instance running it.
    let cancelled = warm(&other, Method::DELETE, "").await.unwrap();
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    let ended = warm_status_once(&app, |status| status["state"] != "running").await;
    assert_eq!(ended["state"], "cancelled", "{ended}");
    let rows = ended["progress"]["rows"].as_u64().unwrap();
    assert!(rows < 3_000, "{ended}");
    // Nothing runs any more: cancelling again changes nothing, and a new one may start.
    let again = warm(&app, Method::DELETE, "").await.unwrap();
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    let restarted = warm(&other, Method::POST, "").await.unwrap();
    assert_eq!(restarted.status(), StatusCode::ACCEPTED);
    let done = warm_status_once(&app, |status| status["state"] != "running").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"]["rows"], 3_000, "{done}");
}

#[tokio::test]
async fn a_warm_up_whose_instance_shuts_down_ends_cancelled_not_abandoned() {
    let primary = OwnPostgres::primary().await;
    let (mut app, other) = two_instances_with_rows(&primary, 3_000).await;
    // 100 rows a second: it runs for half a minute unless stopped.
    let started = warm(&app, Method::POST, "?rate_limit=100").await.unwrap();
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    warm_status_once(&other, |status| {
        status["state"] == "running" && status["progress"]["rows"].as_u64() > Some(0)
    })
    .await;

    // Its instance shuts down: the run is cancelled and says so on the way out, instead of
    // reading as running until its reports are old enough to count as abandoned.
    app.stop().await;
    let ended = warm_status_once(&other, |status| status["state"] != "running").await;
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(ended["progress"]["rows"].as_u64() < Some(3_000), "{ended}");
}

#[tokio::test]
async fn a_warm_up_misses_no_row_a_restore_wrote_while_the_replica_had_not_replayed_it() {
    let primary = OwnPostgres::primary().await;
    let replica = OwnPostgres::replica_of(primary.port, None).await;
    let app = app_on(&primary, Some(&replica)).await;
    // The epoch starts, and the replica replays past its high-water mark...
    let sku = app.sku("before-restore");
    assert_eq!(app.put(&sku, &size(1)).await.status(), StatusCode::CREATED);
    let replica_pool = sqlx::PgPool::connect(&replica.url()).await.unwrap();
    let target: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&app.primary)
        .await
        .unwrap();
    crate::helpers::eventually(30, "the replica replays the write", || async {
        sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&target)
            .fetch_one(&replica_pool)
            .await
            .unwrap()
    })
    .await;
    // ...then stops replaying, and a restore (no trigger, no high-water mark) writes rows.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica_pool)
        .await
        .unwrap();
    seed(&app, 500).await;

    let service = app::service(&app.config).await.unwrap();
    let summary = service
        .warm_cache(&WarmOptions::default(), |_| {})
        .await
        .unwrap();
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica_pool)
        .await
        .unwrap();
    assert_eq!(summary.rows, 501, "every row, the restored ones included");
    assert!(summary.pages_from_primary > 0, "{summary:?}");
}
