//! Every path bounded, every writer seen: a write that another session deadlocks is retried,
//! a database or Redis that stops answering holds nothing up for long, and a misconfiguration
//! stops the start.

use std::time::{Duration, Instant};

use fred::prelude::KeysInterface;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::helpers::{Options, Replica, TestApp, eventually, primary_url, size};
use crate::proxy::TcpProxy;

#[tokio::test]
async fn a_write_a_deadlock_aborts_is_retried_not_a_500() {
    let app = TestApp::spawn_with(Options {
        replica: Replica::None,
        ..Options::default()
    })
    .await;
    let (a, b) = (app.sku("deadlock-a"), app.sku("deadlock-b"));
    let update = |sku: &str, length_mm: i64| {
        json!({"sku": sku, "length_mm": length_mm, "width_mm": 2, "height_mm": 3,
               "weight_g": 4, "source_version": length_mm})
    };
    let created = app.sync(&[update(&a, 1), update(&b, 1)]).await;
    assert_eq!(created.status(), StatusCode::OK);

    // A data fix by hand that locks b, then a: the opposite order of the service's. Its own
    // deadlock check waits a minute, so the service's session (one second) is the victim.
    let mut fix = PgConnection::connect(&primary_url()).await.unwrap();
    let fix_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut fix)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut fix).await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut fix)
        .await
        .unwrap();
    sqlx::query("UPDATE product_sizes SET weight_g = 5 WHERE sku = $1")
        .bind(&b)
        .execute(&mut fix)
        .await
        .unwrap();
    let sync = {
        let request = app
            .request(
                reqwest::Method::POST,
                "/v1/sync/product-sizes",
                Some(crate::helpers::WRITE_TOKEN),
            )
            .json(&json!({"updates": [update(&a, 2), update(&b, 2)]}));
        tokio::spawn(async move { request.send().await.unwrap() })
    };
    let primary = app.primary.clone();
    eventually(10, "the sync holds a and waits for b", || {
        let primary = primary.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
            )
            .bind(fix_pid)
            .fetch_one(&primary)
            .await
            .unwrap()
                > 0
        }
    })
    .await;
    // Waits until PostgreSQL aborts the service's transaction, which releases a.
    sqlx::query("UPDATE product_sizes SET weight_g = 5 WHERE sku = $1")
        .bind(&a)
        .execute(&mut fix)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut fix).await.unwrap();

    let response = sync.await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "retried after the deadlock"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["applied"], 2, "{body}");
    for sku in [&a, &b] {
        let read: Value = app.get(sku).await.json().await.unwrap();
        assert_eq!(
            (read["length_mm"].as_i64(), read["weight_g"].as_i64()),
            (Some(2), Some(4))
        );
    }
}

/// Starts `product-size serve` against the shared services with `env` on top, expects it to
/// stop with a non-zero exit within 20 s, and returns what it wrote to stderr.
async fn refused_start(env: &[(&str, &str)]) -> String {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_product-size"));
    command
        .arg("serve")
        .env("DATABASE_URL", primary_url())
        .env_remove("DATABASE_REPLICA_URL")
        .env_remove("REDIS_SECONDARY_URL")
        .env("REDIS_URL", crate::helpers::shared_redis_url())
        .env(
            "CACHE_KEY_PREFIX",
            format!("refused{:08x}", fastrand::u32(..)),
        )
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("API_READ_TOKENS", "read")
        .env("API_WRITE_TOKENS", "write")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(std::time::Duration::from_secs(20), command.output())
        .await
        .expect("the service stops instead of serving")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    stderr
}

/// The one line of `stderr` that names `setting`, which must also say `reason`.
fn one_message(stderr: &str, setting: &str, reason: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(setting)).collect();
    assert_eq!(lines.len(), 1, "one message naming {setting}: {stderr}");
    assert!(lines[0].contains(reason), "{}", lines[0]);
    assert!(
        !lines[0].contains(" line "),
        "no server internals: {}",
        lines[0]
    );
}

#[tokio::test]
async fn a_database_that_does_not_exist_stops_the_start() {
    let url = primary_url().replace("/product_sizes", "/no_such_database");
    let stderr = refused_start(&[("DATABASE_URL", &url)]).await;
    one_message(
        &stderr,
        "DATABASE_URL",
        r#"database \"no_such_database\" does not exist"#,
    );
}

#[tokio::test]
async fn credentials_postgresql_refuses_stop_the_start() {
    let url = primary_url().replace("postgres@", "nobody_here@");
    let stderr = refused_start(&[("DATABASE_REPLICA_URL", &url)]).await;
    one_message(
        &stderr,
        "DATABASE_REPLICA_URL",
        r#"role \"nobody_here\" does not exist"#,
    );
}

#[tokio::test]
async fn a_malformed_url_stops_the_start() {
    let stderr = refused_start(&[("DATABASE_URL", "postgres://[::1/nope")]).await;
    one_message(&stderr, "DATABASE_URL", "");
}

#[tokio::test]
async fn credentials_redis_refuses_stop_the_start() {
    let port = crate::helpers::free_port();
    let _redis = tokio::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--requirepass", "right"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    crate::processes::wait_port(port, true).await;
    let url = format!("redis://:wrong@127.0.0.1:{port}");
    let stderr = refused_start(&[("REDIS_URL", &url)]).await;
    one_message(&stderr, "REDIS_URL", "WRONGPASS");
}

#[tokio::test]
async fn a_write_whose_request_timed_out_after_its_commit_is_repaired_at_once() {
    let redis = crate::processes::OwnRedis::start().await;
    let app = TestApp::spawn_with(Options {
        redis_url: Some(redis.url()),
        replica: Replica::None,
        request_timeout: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let sku = app.sku("timed-out");
    // The first write may start the cache's epoch, which can take longer than the timeout.
    eventually(10, "the SKU is served from the cache", || async {
        let _ = app.put(&sku, &size(1)).await;
        crate::helpers::read_source(&app.get(&sku).await) == "cache"
    })
    .await;

    // The cache update waits for Redis past the request's timeout, after the commit; then
    // its connection is killed, and the update never runs.
    redis.command(&["CLIENT", "PAUSE", "400", "WRITE"]).await;
    let response = app.put(&sku, &size(2)).await;
    let answered = Instant::now();
    redis.command(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.primary_row(&sku).await.map(|row| row.0), Some(2));

    // Repaired as soon as Redis takes writes again, not once the write's record is old
    // enough (2 s after the commit) for any instance to take it over.
    let key = app.entry_key(&sku);
    loop {
        let entry: Option<String> = app.redis.get(&key).await.unwrap_or(None);
        if entry.is_some_and(|entry| entry.starts_with("2|")) {
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_millis(1300),
            "the cache was not repaired before the hand-over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_replica_that_stops_answering_holds_no_read() {
    let replica_port = reqwest::Url::parse(&crate::helpers::replica_url())
        .unwrap()
        .port()
        .unwrap();
    let replica = TcpProxy::to(replica_port).await;
    let app = TestApp::spawn_with(Options {
        replica: Replica::Url(replica.postgres_url()),
        ..Options::default()
    })
    .await;
    let skus: Vec<String> = (0..20).map(|i| app.sku(&format!("hung-{i}"))).collect();
    for sku in &skus {
        app.put(sku, &size(1)).await;
    }
    // A miss is read from the replica once it has replayed the writes.
    eventually(20, "a miss is read from the replica", || async {
        app.evict(&skus[0]).await;
        crate::helpers::read_source(&app.get(&skus[0]).await) == "replica"
    })
    .await;

    // The replica's host stops answering, its connections left open.
    replica.blackhole();
    for sku in &skus {
        app.evict(sku).await;
        let started = Instant::now();
        let read = app.get(sku).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a read waited {:?} for a replica that does not answer",
            started.elapsed()
        );
    }
    eventually(10, "the probe marks the replica down", || async {
        app.readiness().await["replica"] == "down"
    })
    .await;

    // Back: the connections given up on were closed, not kept, and the replica serves again.
    replica.restore();
    eventually(20, "a miss is read from the replica again", || async {
        app.evict(&skus[1]).await;
        crate::helpers::read_source(&app.get(&skus[1]).await) == "replica"
    })
    .await;
}

#[tokio::test]
async fn a_primary_that_stops_answering_stalls_no_background_work_for_long() {
    let primary = TcpProxy::to(crate::helpers::primary_port()).await;
    let app = TestApp::spawn_with(Options {
        database_url: primary.postgres_url(),
        replica: Replica::None,
        ..Options::default()
    })
    .await;
    let outside = sqlx::PgPool::connect(&primary_url()).await.unwrap();
    let sku = app.sku("dead-primary");
    app.put(&sku, &size(1)).await;
    eventually(10, "the SKU is served from the cache", || async {
        crate::helpers::read_source(&app.get(&sku).await) == "cache"
    })
    .await;

    // The primary's host stops answering; once the probe has met it, every background task
    // has had a query out on a connection that will never answer.
    primary.blackhole();
    eventually(10, "the probe marks the primary down", || async {
        app.readiness().await["primary"] == "down"
    })
    .await;
    // The network comes back; the connections open during the outage stay dead.
    primary.abandon_open();
    sqlx::query("UPDATE product_sizes SET weight_g = 999 WHERE sku = $1")
        .bind(&sku)
        .execute(&outside)
        .await
        .unwrap();

    // Leases renewed, the change heard or found, the repair applied: served from the cache.
    eventually(
        40,
        "the outside change is served from the cache",
        || async {
            let read = app.get(&sku).await;
            let source = crate::helpers::read_source(&read);
            let body: Value = read.json().await.unwrap();
            source == "cache" && body["weight_g"] == 999
        },
    )
    .await;
}
