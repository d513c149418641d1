//! Graceful shutdown: SIGTERM during load; no request the server had accepted fails.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;

use crate::helpers::{
    READ_TOKEN, WRITE_TOKEN, free_port, primary_url, replica_url, shared_redis_url,
};

#[tokio::test]
async fn sigterm_during_load_fails_no_accepted_request() {
    let port = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_product-size"))
        .arg("serve")
        .env("DATABASE_URL", primary_url())
        .env("DATABASE_REPLICA_URL", replica_url())
        .env("REDIS_URL", shared_redis_url())
        .env("CACHE_KEY_PREFIX", format!("sigterm{port}"))
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("API_READ_TOKENS", READ_TOKEN)
        .env("API_WRITE_TOKENS", WRITE_TOKEN)
        .env("SHUTDOWN_GRACE_SECS", "10")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    // A new connection per request: a request is either accepted by the server or refused.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let skus: Vec<String> = (0..1000).map(|i| format!("SIGTERM-{port}-{i}")).collect();
    let updates: Vec<_> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "length_mm": 1, "width_mm": 1, "height_mm": 1, "weight_g": 1, "source_version": 1}))
        .collect();
    let seeded = client
        .post(format!("{base}/v1/sync/product-sizes"))
        .bearer_auth(WRITE_TOKEN)
        .json(&json!({ "updates": updates }))
        .send()
        .await
        .unwrap();
    assert!(seeded.status().is_success());

    let terminated = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let (client, base, skus, terminated) = (
            client.clone(),
            base.clone(),
            skus.clone(),
            terminated.clone(),
        );
        load.spawn(async move {
            let (mut ok, mut refused) = (0, 0);
            loop {
                let sent_before_term = !terminated.load(Ordering::SeqCst);
                // Lookups of 1,000 SKUs keep requests in flight when the signal arrives.
                let request = if worker % 4 != 3 {
                    client
                        .post(format!("{base}/v1/product-sizes/lookup"))
                        .json(&json!({ "skus": skus }))
                } else {
                    client.get(format!("{base}/v1/products/{}/size", skus[worker]))
                };
                match request.bearer_auth(READ_TOKEN).send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.bytes().await;
                        assert!(status.is_success(), "an accepted request failed: {status}");
                        assert!(body.is_ok(), "an accepted request lost its body");
                        ok += 1;
                    }
                    Err(error) => {
                        // Only requests begun after the signal may fail (refused, or reset while
                        // still in the listen backlog): one begun before had been accepted.
                        assert!(
                            !sent_before_term,
                            "a request begun before SIGTERM failed: {error}"
                        );
                        refused += 1;
                        if refused >= 3 {
                            return ok;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    terminated.store(true, Ordering::SeqCst);
    let pid = server.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());

    let mut served = 0;
    while let Some(worker) = load.join_next().await {
        served += worker.unwrap();
    }
    let exit = tokio::time::timeout(Duration::from_secs(15), server.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
    assert!(served > 50, "real load: {served} requests served");
}
