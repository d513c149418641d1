//! Every path bounded, every writer seen: a write that another session deadlocks is retried,
//! a database or Redis that stops answering holds nothing up for long, and a misconfiguration
//! stops the start.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::helpers::{Options, Replica, TestApp, eventually, primary_url};

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
