//! Graceful shutdown: SIGTERM during load; no request the server had accepted fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{READ_TOKEN, ServiceProcess, WRITE_TOKEN, eventually, replica_url};

#[tokio::test]
async fn sigterm_during_load_fails_no_accepted_request() {
    let (server, skus) = start_seeded().await;
    let port = server.port;
    // Lookups of 1,000 SKUs keep requests in flight when the signal arrives.
    let lookup = Arc::new(request(
        "POST /v1/product-sizes/lookup",
        &json!({ "skus": skus }).to_string(),
    ));
    let single = Arc::new(request(&format!("GET /v1/products/{}/size", skus[0]), ""));

    let terminated = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let request = if worker % 4 == 3 { &single } else { &lookup }.clone();
        let (terminated, answered) = (terminated.clone(), answered.clone());
        load.spawn(until_refused(terminated, answered, move |terminated| {
            let request = request.clone();
            async move {
                // A new connection per request. Once connect() returns, the handshake is done
                // and the connection sits in the server's backlog or has been accepted: if
                // that happened before the signal, the server owes it a whole response.
                let connected = TcpStream::connect(("127.0.0.1", port)).await;
                let before_signal = !terminated.load(Ordering::SeqCst);
                let exchanged = match connected {
                    Ok(stream) => exchange(stream, &request).await,
                    Err(error) => Err(error),
                };
                (before_signal, exchanged.map_err(|e| e.to_string()))
            }
        }));
    }
    under_way(&answered).await;
    terminated.store(true, Ordering::SeqCst);
    let stopped = tokio::spawn(server.terminate(Duration::from_secs(15)));

    while let Some(worker) = load.join_next().await {
        worker.unwrap();
    }
    stopped.await.unwrap();
}

/// Starts the binary and stores 1,000 sizes; returns it and the SKUs.
async fn start_seeded() -> (ServiceProcess, Vec<String>) {
    let replica = replica_url();
    let server = ServiceProcess::start(
        "sigterm",
        &[
            ("DATABASE_REPLICA_URL", replica.as_str()),
            ("SHUTDOWN_GRACE_SECS", "10"),
        ],
        false,
    )
    .await;
    let port = server.port;
    let skus: Vec<String> = (0..1000).map(|i| format!("SIGTERM-{port}-{i}")).collect();
    let updates: Vec<_> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "length_mm": 1, "width_mm": 1, "height_mm": 1, "weight_g": 1, "source_version": 1}))
        .collect();
    let seeded = reqwest::Client::new()
        .post(format!("{}/v1/sync/product-sizes", server.base))
        .bearer_auth(WRITE_TOKEN)
        .json(&json!({ "updates": updates }))
        .send()
        .await
        .unwrap();
    assert_eq!(seeded.status(), 200, "seeding failed");
    (server, skus)
}

#[tokio::test]
async fn sigterm_during_http2_load_fails_no_request_sent_before_it() {
    let (server, skus) = start_seeded().await;
    let port = server.port;
    // One multiplexed connection, as a mesh sidecar keeps it.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let lookup = format!("http://127.0.0.1:{port}/v1/product-sizes/lookup");
    let body = json!({ "skus": skus });
    let terminated = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, lookup, body, terminated) = (
            client.clone(),
            lookup.clone(),
            body.clone(),
            terminated.clone(),
        );
        load.spawn(until_refused(
            terminated,
            answered.clone(),
            move |terminated| {
                let (client, lookup, body) = (client.clone(), lookup.clone(), body.clone());
                async move {
                    let before_signal = !terminated.load(Ordering::SeqCst);
                    let response = client
                        .post(&lookup)
                        .bearer_auth(READ_TOKEN)
                        .json(&body)
                        .send()
                        .await;
                    let exchanged = match response {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            response.bytes().await.map(|_| status)
                        }
                        Err(error) => Err(error),
                    };
                    (before_signal, exchanged.map_err(|e| e.to_string()))
                }
            },
        ));
    }
    under_way(&answered).await;
    terminated.store(true, Ordering::SeqCst);
    server.terminate(Duration::from_secs(15)).await;
    while let Some(worker) = load.join_next().await {
        worker.unwrap();
    }
}

/// Waits until the load has had 50 answers: the signal then lands on a server under real load,
/// however slow the machine is today.
async fn under_way(answered: &AtomicUsize) {
    eventually(60, "the load has had 50 answers", || {
        std::future::ready(answered.load(Ordering::SeqCst) >= 50)
    })
    .await;
}

/// Sends requests with `attempt` until three have been refused, counting answers in
/// `answered`. Each answer must be a 200, and a request that failed must have been made after
/// the signal (`attempt` says whether it was made before, as it defines "made").
async fn until_refused<F, Fut>(
    terminated: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    mut attempt: F,
) where
    F: FnMut(Arc<AtomicBool>) -> Fut,
    Fut: std::future::Future<Output = (bool, Result<u16, String>)>,
{
    let mut refused = 0;
    loop {
        let (before_signal, exchanged) = attempt(terminated.clone()).await;
        match exchanged {
            Ok(status) => {
                assert_eq!(status, 200, "an accepted request failed");
                answered.fetch_add(1, Ordering::SeqCst);
            }
            Err(error) => {
                assert!(
                    !before_signal,
                    "a request made before SIGTERM failed: {error}"
                );
                refused += 1;
                if refused >= 3 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// An HTTP/1.1 request that asks the server to close the connection after its response.
fn request(line: &str, body: &str) -> Vec<u8> {
    format!(
        "{line} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {READ_TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request`, reads the response to its end and returns its status; a response cut
/// short is an error.
async fn exchange(mut stream: TcpStream, request: &[u8]) -> std::io::Result<u16> {
    stream.write_all(request).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let cut_short = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "response cut short");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(cut_short)?;
    let status = head
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(cut_short)?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|length| length.trim().parse().ok())
        .ok_or_else(cut_short)?;
    if body.len() != length {
        return Err(cut_short());
    }
    Ok(status)
}
