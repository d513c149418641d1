//! A circuit breaker for Redis: after a few failures in a row, cache operations fail at once
//! for a short cool-down instead of each paying the command timeout. When the cool-down ends,
//! one operation is let through as a probe; its success closes the breaker.
//!
//! **Why not a library.** What matters is which failures count (a timeout or a dropped
//! connection, never a script's reply) and that the probe is one operation; the states are
//! three. `failsafe` would wrap the same few dozen lines in its own clock, backoff and policy
//! types. The unit tests below and `degraded::reads_and_writes_go_on_while_redis_is_down_and_after_it_restarts_empty`
//! pin its behaviour.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FAILURES_TO_OPEN: u32 = 3;
const COOL_DOWN: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Breaker {
    failures: AtomicU32,
    /// Milliseconds since `origin` until which the breaker is open; 0 when closed.
    open_until: AtomicU64,
    origin: Instant,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl Breaker {
    fn now(&self) -> u64 {
        // +1 so that "open until 0" never means a real instant.
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// Whether an operation may go to Redis now. While open, exactly one caller per cool-down
    /// is let through as a probe.
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now();
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    now + COOL_DOWN.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    pub fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Release);
            if self.open_until.swap(0, Ordering::AcqRel) != 0 {
                tracing::info!("Redis answers again; cache breaker closed");
            }
        } else if self.failures.fetch_add(1, Ordering::AcqRel) + 1 >= FAILURES_TO_OPEN {
            let until = self.now() + COOL_DOWN.as_millis() as u64;
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!(
                    "Redis keeps failing; cache breaker open, serving from the database"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_repeated_failures_and_probes_after_the_cool_down() {
        let breaker = Breaker::default();
        for _ in 0..FAILURES_TO_OPEN {
            assert!(breaker.allow());
            breaker.record(false);
        }
        assert!(breaker.is_open());
        assert!(!breaker.allow());
        std::thread::sleep(COOL_DOWN + Duration::from_millis(20));
        assert!(breaker.allow(), "one probe after the cool-down");
        assert!(!breaker.allow(), "only one");
        breaker.record(true);
        assert!(!breaker.is_open());
        assert!(breaker.allow());
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::default();
        for _ in 0..10 {
            breaker.record(false);
            breaker.record(true);
        }
        assert!(!breaker.is_open());
    }
}
