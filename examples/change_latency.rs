//! Commit-to-served latency of changes made outside the service (docs/consistency.md, "Writers
//! other than the service"), for the benchmark: a stream of `UPDATE`s straight to the primary,
//! at a fixed rate, on random SKUs the service has cached; after each, the SKU is read through
//! the service every 2 ms until it serves the new version. The clock starts before the `UPDATE` is sent, so each
//! latency is an upper bound. Prints one JSON object.
//!
//! ```text
//! change_latency DATABASE_URL SERVICE_URL TOKEN ROWS RATE_PER_SECOND SECONDS
//! ```
//! SKUs are `B0000001` to `B{ROWS}`, as `bench/run.sh` loads them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;

/// A change not served after this long counts as lost.
const GIVE_UP: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(2);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [database_url, service_url, token, rows, rate, seconds] = &args[..] else {
        eprintln!("usage: change_latency DATABASE_URL SERVICE_URL TOKEN ROWS RATE SECONDS");
        std::process::exit(2);
    };
    let rows: u32 = rows.parse().expect("ROWS is a number");
    let rate: f64 = rate.parse().expect("RATE is a number");
    let seconds: f64 = seconds.parse().expect("SECONDS is a number");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(database_url)
        .await
        .expect("the primary answers");
    let client = reqwest::Client::new();

    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut changes = JoinSet::new();
    while started.elapsed().as_secs_f64() < seconds {
        ticker.tick().await;
        let sku = format!("B{:07}", fastrand::u32(1..=rows));
        let (pool, client) = (pool.clone(), client.clone());
        let url = format!("{service_url}/v1/products/{sku}/size");
        let token = token.clone();
        changes.spawn(async move {
            let sent = Instant::now();
            let version: i64 = sqlx::query_scalar(
                "UPDATE product_sizes SET weight_g = weight_g % 100000 + 1 \
                 WHERE sku = $1 RETURNING version",
            )
            .bind(&sku)
            .fetch_one(&pool)
            .await
            .expect("the update commits");
            let committed = sent.elapsed();
            while sent.elapsed() < GIVE_UP {
                let read: Value = client
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("the service answers")
                    .json()
                    .await
                    .expect("a size");
                if read["version"].as_i64() >= Some(version) {
                    return Some((sent.elapsed(), committed));
                }
                tokio::time::sleep(POLL).await;
            }
            None
        });
    }
    let sent = changes.len();
    let elapsed = started.elapsed().as_secs_f64();
    let timings: Vec<(Duration, Duration)> =
        changes.join_all().await.into_iter().flatten().collect();
    let sorted = |pick: fn(&(Duration, Duration)) -> Duration| {
        let mut all: Vec<Duration> = timings.iter().map(pick).collect();
        all.sort_unstable();
        all
    };
    let served = sorted(|t| t.0);
    let commits = sorted(|t| t.1);
    let percentile = |all: &[Duration], p: f64| {
        all.get(((all.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{}",
        json!({
            "changes": sent,
            "rate_per_s": sent as f64 / elapsed,
            "lost": sent - served.len(),
            "over_1s": served.iter().filter(|d| **d > Duration::from_secs(1)).count(),
            "p50_ms": percentile(&served, 0.50),
            "p90_ms": percentile(&served, 0.90),
            "p99_ms": percentile(&served, 0.99),
            "max_ms": percentile(&served, 1.0),
            // The UPDATE's own round trip, commit included: part of the figures above.
            "commit_p50_ms": percentile(&commits, 0.50),
            "commit_p99_ms": percentile(&commits, 0.99),
        })
    );
}
