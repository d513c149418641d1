//! Misses at a fixed rate, open loop, for the benchmark's overload scenario (issue 12): GETs
//! of SKUs that exist nowhere, so each needs the database, due on schedule whether or not
//! earlier ones were answered (a closed-loop generator would slow down with the service and
//! never overload it). Like an upstream's connection pool or a mesh sidecar, it keeps at most
//! [`CONNECTIONS`] requests in flight; a request due while all are busy waits for one, and
//! that wait is reported apart from the service's own time. Prints one JSON object: how many
//! were answered (404), shed (503), failed, and the latency of each kind.
//!
//! ```text
//! overload SERVICE_URL TOKEN RATE_PER_SECOND SECONDS
//! ```

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::task::JoinSet;

/// A request not answered after this long counts as failed (the service's own request
/// timeout is 10 s: nothing should come near this).
const GIVE_UP: Duration = Duration::from_secs(30);

/// Requests in flight at most (each on a keep-alive connection of its own).
const CONNECTIONS: usize = 256;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [service_url, token, rate, seconds] = &args[..] else {
        eprintln!("usage: overload SERVICE_URL TOKEN RATE SECONDS");
        std::process::exit(2);
    };
    let rate: f64 = rate.parse().expect("RATE is a number");
    let seconds: f64 = seconds.parse().expect("SECONDS is a number");
    let client = reqwest::Client::builder()
        .timeout(GIVE_UP)
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .expect("a client");

    // Sends in bursts every millisecond: a timer per request cannot keep up at these rates.
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut requests = JoinSet::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    while started.elapsed().as_secs_f64() < seconds {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            sent += 1;
            let request = client
                .get(format!(
                    "{service_url}/v1/products/Z{:012}/size",
                    fastrand::u64(..1_000_000_000_000)
                ))
                .bearer_auth(token)
                .send();
            let slots = slots.clone();
            requests.spawn(async move {
                let due = Instant::now();
                let _slot = slots.acquire_owned().await.expect("never closed");
                let sent = Instant::now();
                let status = request.await.map(|response| response.status().as_u16());
                (status.ok(), sent.elapsed(), due.elapsed())
            });
        }
        // Collect what has finished, so the set stays small.
        while let Some(done) = requests.try_join_next() {
            tally(done.expect("a request task"));
        }
    }
    while let Some(done) = requests.join_next().await {
        tally(done.expect("a request task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let summary = TALLY.with_borrow_mut(|t| t.summary(sent, elapsed, rate));
    println!("{summary}");
}

thread_local! {
    static TALLY: std::cell::RefCell<Tally> = std::cell::RefCell::default();
}

fn tally((status, latency, since_due): (Option<u16>, Duration, Duration)) {
    TALLY.with_borrow_mut(|t| {
        t.since_due_max = t.since_due_max.max(since_due);
        match status {
            Some(200 | 404) => t.answered.push(latency),
            Some(503) => t.shed.push(latency),
            _ => t.failed.push(latency),
        }
    });
}

#[derive(Default)]
struct Tally {
    answered: Vec<Duration>,
    shed: Vec<Duration>,
    failed: Vec<Duration>,
    /// The longest a request took from when it was due, its wait for a connection included.
    since_due_max: Duration,
}

impl Tally {
    fn summary(&mut self, sent: u64, elapsed: f64, rate: f64) -> serde_json::Value {
        let all_max = self
            .answered
            .iter()
            .chain(&self.shed)
            .chain(&self.failed)
            .max()
            .copied()
            .unwrap_or_default();
        json!({
            "target_rate_per_s": rate,
            "sent": sent,
            "answered": self.answered.len(),
            "answered_per_s": self.answered.len() as f64 / elapsed,
            "shed": self.shed.len(),
            "failed": self.failed.len(),
            "answered_p50_ms": percentile(&mut self.answered, 0.50),
            "answered_p99_ms": percentile(&mut self.answered, 0.99),
            "shed_p99_ms": percentile(&mut self.shed, 0.99),
            "max_ms": all_max.as_secs_f64() * 1000.0,
            "max_since_due_ms": self.since_due_max.as_secs_f64() * 1000.0,
        })
    }
}

fn percentile(latencies: &mut [Duration], p: f64) -> Option<f64> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = ((latencies.len() - 1) as f64 * p).round() as usize;
    Some(latencies[at].as_secs_f64() * 1000.0)
}
