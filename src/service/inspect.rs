//! Continuous consistency measurement (the read-your-writes and every-writer guarantees of
//! docs/consistency.md), as CacheFront's Cache Inspector does it: a sample of the cache hits
//! this instance serves is compared with what the primary has committed.
//!
//! A hit older than the primary's row is not yet a divergence: the newer version may have
//! committed just after the hit was served, its install on the way. It becomes a *suspect*,
//! and is counted divergent only if, [`CONVERGE`] after the primary showed the newer version,
//! the cache would still serve an older one. `product_size_consistency_checked_total` and
//! `product_size_consistency_divergent_total` count the verdicts; the gauge
//! `product_size_consistency_ratio` is the share of agreeing ones over the last minute (1 with
//! nothing checked).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::SizeService;
use crate::db::lease::bounded;
use crate::db::sizes::fetch_on;
use crate::domain::Sku;
use crate::infra::background::{Worker, every};

/// How often the sample is checked.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long a newer committed version may take to reach the cache (a second,
/// docs/consistency.md, "Writers other than the service").
pub const CONVERGE: Duration = Duration::from_secs(1);
/// Hits sampled per interval at most: the first ones served (the rest cost one atomic load).
const SAMPLE: usize = 256;
/// The window of the ratio gauge.
const WINDOW: Duration = Duration::from_secs(60);

/// A hit older than the primary's row: divergent unless the cache catches up in time.
struct Suspect {
    sku: Sku,
    stored: i64,
    seen: Instant,
}

#[derive(Default)]
pub struct Inspector {
    taken: AtomicUsize,
    sampled: Mutex<Vec<(Sku, i64)>>,
}

impl Inspector {
    /// Notes a hit served at `version`, while this interval's sample has room.
    pub fn served(&self, sku: &Sku, version: i64) {
        if self.taken.load(Ordering::Relaxed) >= SAMPLE
            || self.taken.fetch_add(1, Ordering::Relaxed) >= SAMPLE
        {
            return;
        }
        if let Ok(mut sampled) = self.sampled.lock() {
            sampled.push((sku.clone(), version));
        }
    }

    /// The interval's sample, leaving room for the next.
    fn take(&self) -> Vec<(Sku, i64)> {
        let sampled = self
            .sampled
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        self.taken.store(0, Ordering::Relaxed);
        sampled
    }
}

/// Verdicts per interval, for the ratio over [`WINDOW`].
#[derive(Default)]
struct Tally {
    rounds: VecDeque<(Instant, u64, u64)>,
}

impl Tally {
    fn add(&mut self, now: Instant, checked: u64, divergent: u64) -> f64 {
        self.rounds.push_back((now, checked, divergent));
        while self
            .rounds
            .front()
            .is_some_and(|(at, ..)| now.duration_since(*at) > WINDOW)
        {
            self.rounds.pop_front();
        }
        let (checked, divergent) = self
            .rounds
            .iter()
            .fold((0, 0), |(c, d), (_, checked, divergent)| {
                (c + checked, d + divergent)
            });
        ratio(checked, divergent)
    }
}

fn ratio(checked: u64, divergent: u64) -> f64 {
    if checked == 0 {
        1.0
    } else {
        (checked - divergent) as f64 / checked as f64
    }
}

/// Checks the hits sampled in each [`INTERVAL`] against the primary, and publishes the
/// verdicts.
pub struct ConsistencyCheck(pub Arc<SizeService>);

impl Worker for ConsistencyCheck {
    /// Checks every second. Dropped where it awaits, a check takes the suspects it held with
    /// it, unjudged.
    async fn work(self) {
        let sizes = &self.0;
        let mut ticker = every(INTERVAL);
        let mut suspects: Vec<Suspect> = Vec::new();
        let mut tally = Tally::default();
        sizes.metrics.consistency_ratio.set(1.0);
        loop {
            ticker.tick().await;
            let sample = sizes.inspector.take();
            let now = Instant::now();
            let (due, waiting): (Vec<Suspect>, Vec<Suspect>) = suspects
                .into_iter()
                .partition(|s| now.duration_since(s.seen) >= CONVERGE);
            suspects = waiting;
            let (agreeing, new_suspects) = match sizes.compare(sample, now).await {
                Ok(compared) => compared,
                Err(error) => {
                    tracing::debug!(%error, "consistency sample not checked");
                    (0, Vec::new())
                }
            };
            suspects.extend(new_suspects);
            let (checked, divergent) = match sizes.confirm(&due).await {
                Some(divergent) => (agreeing + due.len() as u64, divergent),
                None => {
                    // The cache does not answer: ask again next time.
                    suspects.extend(due);
                    (agreeing, 0)
                }
            };
            sizes.metrics.consistency_checked.inc_by(checked);
            sizes.metrics.consistency_divergent.inc_by(divergent);
            sizes
                .metrics
                .consistency_ratio
                .set(tally.add(now, checked, divergent));
        }
    }
}

impl SizeService {
    /// How many sampled hits agree with the primary, and the suspects among the rest.
    async fn compare(
        &self,
        sample: Vec<(Sku, i64)>,
        now: Instant,
    ) -> Result<(u64, Vec<Suspect>), sqlx::Error> {
        if sample.is_empty() {
            return Ok((0, Vec::new()));
        }
        let skus: Vec<&str> = sample.iter().map(|(sku, _)| sku.as_str()).collect();
        let stored: HashMap<String, i64> = bounded!(
            self.db.background(),
            self.db.background_deadline(),
            |conn| fetch_on(conn, &skus)
        )
        .await?
        .rows
        .into_iter()
        .map(|row| (row.sku, row.version))
        .collect();
        let mut agreeing = 0;
        let mut suspects = Vec::new();
        for (sku, served) in sample {
            match stored.get(sku.as_str()) {
                Some(&stored) if stored > served => suspects.push(Suspect {
                    sku,
                    stored,
                    seen: now,
                }),
                _ => agreeing += 1,
            }
        }
        Ok((agreeing, suspects))
    }

    /// How many of `due` the cache would still serve older than the primary showed them:
    /// `None` if the cache cannot say.
    async fn confirm(&self, due: &[Suspect]) -> Option<u64> {
        if due.is_empty() {
            return Some(0);
        }
        let skus: Vec<Sku> = due.iter().map(|s| s.sku.clone()).collect();
        let served = self.servable_versions(&skus).await?;
        let divergent = due
            .iter()
            .zip(served)
            .filter(|(suspect, served)| served.is_some_and(|v| v < suspect.stored))
            .inspect(|(suspect, served)| {
                tracing::warn!(
                    sku = suspect.sku.as_str(),
                    cached = served.unwrap_or_default(),
                    stored = suspect.stored,
                    "the cache serves a version older than committed"
                );
            })
            .count();
        Some(divergent as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_counts_the_last_minute() {
        let mut tally = Tally::default();
        let start = Instant::now();
        assert_eq!(tally.add(start, 0, 0), 1.0);
        assert_eq!(tally.add(start, 4, 1), 0.75);
        assert_eq!(tally.add(start + Duration::from_secs(30), 4, 0), 7.0 / 8.0);
        assert_eq!(tally.add(start + Duration::from_secs(61), 0, 0), 1.0);
    }

    #[test]
    fn a_sample_is_bounded_per_interval() {
        let inspector = Inspector::default();
        let sku = Sku::parse("A-1").unwrap();
        for _ in 0..SAMPLE + 10 {
            inspector.served(&sku, 1);
        }
        assert_eq!(inspector.take().len(), SAMPLE);
        inspector.served(&sku, 1);
        assert_eq!(inspector.take().len(), 1);
    }
}
