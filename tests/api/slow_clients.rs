//! Slow and idle clients, too many connections, slow requests, and HTTP/2 beside HTTP/1.1.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::helpers::{Options, READ_TOKEN, TestApp, size};
use product_size_service::infra::server::Limits;

/// Connections a slowloris holds open: half send nothing, half trickle a header byte at a time.
const SLOWLORIS: usize = 2000;

#[tokio::test]
async fn a_slowloris_neither_stops_answers_nor_keeps_its_connections() {
    let app = TestApp::spawn_with(Options {
        http: Limits {
            header_read_timeout: Duration::from_secs(8),
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let sku = app.sku("slowloris");
    assert_eq!(app.put(&sku, &size(10)).await.status(), 201);
    let addr = app.address.trim_start_matches("http://").to_owned();

    let mut held = JoinSet::new();
    for n in 0..SLOWLORIS {
        let mut stream = TcpStream::connect(&addr).await.expect("connects");
        let trickle = n % 2 == 1;
        if trickle {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        held.spawn(async move { closed_by_server(stream, trickle).await });
    }

    // Everyone else is answered while those connections are held.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..20 {
        let response = client
            .get(format!("{}/v1/products/{sku}/size", app.address))
            .bearer_auth(READ_TOKEN)
            .send()
            .await
            .expect("answered during the slowloris");
        assert_eq!(response.status(), 200);
    }

    // And the server, not the clients, ends every one of them.
    let mut closed = 0;
    while let Some(ended) = held.join_next().await {
        if ended.unwrap() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, SLOWLORIS,
        "every idle or trickling connection is closed"
    );
}

/// Holds `stream` (writing a header byte every 200 ms if `trickle`) until the server closes
/// it; false if it is still open after a minute.
async fn closed_by_server(mut stream: TcpStream, trickle: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                // A 408 or 400 before the close is fine; keep reading until it closes.
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if Instant::now() > deadline {
                    return false;
                }
                if trickle && stream.write_all(b"x").await.is_err() {
                    return true;
                }
            }
        }
    }
}

/// The client's side of an HTTP/2 connection's start: the preface and empty SETTINGS.
const H2_START: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

/// One HTTP/2 frame: its type, flags, stream and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend([kind, flags]);
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

/// Reads frames until the server closes the connection, within `within`; the types of the
/// frames it sent on `stream`, and whether it sent a GOAWAY. `None`: still open.
async fn h2_until_closed(
    connection: &mut TcpStream,
    stream: u32,
    within: Duration,
) -> Option<(Vec<u8>, bool)> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, connection.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    let (mut on_stream, mut goaway) = (Vec::new(), false);
    let mut rest = &bytes[..];
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        goaway |= rest[3] == 7;
        if id == stream {
            on_stream.push(rest[3]);
        }
        rest = &rest[(9 + length).min(rest.len())..];
    }
    Some((on_stream, goaway))
}

#[tokio::test]
async fn idle_http2_connections_close_after_the_header_read_timeout() {
    let app = TestApp::spawn_with(Options {
        http: Limits {
            header_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_owned();

    // A connection that never opens a stream.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    silent.write_all(H2_START).await.unwrap();
    let (_, goaway) = h2_until_closed(&mut silent, 0, Duration::from_secs(20))
        .await
        .expect("an HTTP/2 connection without a stream is closed");
    assert!(goaway, "closed with a GOAWAY");

    // A connection whose request was answered, then idle.
    let mut used = TcpStream::connect(&addr).await.unwrap();
    used.write_all(H2_START).await.unwrap();
    // GET /healthz (HPACK: :method GET, :scheme http, :path literal), END_STREAM|END_HEADERS.
    let mut headers = vec![0x82, 0x86, 0x04, 8];
    headers.extend(b"/healthz");
    used.write_all(&h2_frame(1, 0x5, 1, &headers))
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, goaway) = h2_until_closed(&mut used, 1, Duration::from_secs(20))
        .await
        .expect("an idle HTTP/2 connection is closed");
    assert!(
        answer.contains(&1),
        "the request was answered first: {answer:?}"
    );
    assert!(goaway, "closed with a GOAWAY");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before it was idle for the timeout"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let app = TestApp::spawn_with(Options {
        http: Limits {
            max_connections: 3,
            header_read_timeout: Duration::from_secs(60),
        },
        ..Options::default()
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        assert_eq!(keep_alive_healthz(&mut stream).await.unwrap(), 200);
        open.push(stream);
    }

    // The fourth completes its handshake (the kernel's backlog) but is not served...
    let mut fourth = TcpStream::connect(&addr).await.unwrap();
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond the cap: {early:?}");

    // ...until one of the three closes.
    drop(open.pop());
    let status = tokio::time::timeout(Duration::from_secs(10), read_status(&mut fourth, &buf))
        .await
        .expect("served once a slot is free");
    assert_eq!(status.unwrap(), 200);
}

/// Sends a keep-alive `GET /healthz` and reads its whole response.
async fn keep_alive_healthz(stream: &mut TcpStream) -> std::io::Result<u16> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await?;
    read_status(stream, &[]).await
}

/// Reads one response (after the bytes in `start`) and returns its status.
async fn read_status(stream: &mut TcpStream, start: &[u8]) -> std::io::Result<u16> {
    let mut raw: Vec<u8> = start.iter().copied().take_while(|b| *b != 0).collect();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .and_then(|n| n.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            if body.len() >= length {
                return head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "no status line")
                });
            }
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_request_slower_than_the_timeout_is_answered_503_with_a_problem() {
    let app = TestApp::spawn_with(Options {
        request_timeout: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    let sku = app.sku("slow-body");
    let addr = app.address.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    // Promises a body and sends only part of it.
    let body = serde_json::to_string(&size(10)).unwrap();
    stream
        .write_all(
            format!(
                "PUT /v1/products/{sku}/size HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
                crate::helpers::WRITE_TOKEN,
                body.len(),
                &body[..5]
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&raw).contains("}") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without an answer");
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer within 10 s");
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(
        text.contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(text.contains("longer than 500 ms"), "{text}");
    // Nothing was written.
    assert_eq!(app.get(&sku).await.status(), 404);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served_beside_http1() {
    let app = TestApp::spawn().await;
    let sku = app.sku("h2c");
    assert_eq!(app.put(&sku, &size(12)).await.status(), 201);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2
        .get(format!("{}/v1/products/{sku}/size", app.address))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["length_mm"], 12);
    // Many streams on one connection at once.
    let mut lookups = JoinSet::new();
    for _ in 0..20 {
        let request = h2
            .request(
                Method::POST,
                format!("{}/v1/product-sizes/lookup", app.address),
            )
            .bearer_auth(READ_TOKEN)
            .json(&serde_json::json!({ "skus": [sku] }));
        lookups.spawn(async move { request.send().await.map(|r| r.status()) });
    }
    while let Some(status) = lookups.join_next().await {
        assert_eq!(status.unwrap().unwrap(), 200);
    }
    // HTTP/1.1 on the same port still works.
    let h1 = app.get(&sku).await;
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.status(), 200);
}
