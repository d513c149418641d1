//! Logs through `tracing`: JSON for machines, pretty for people at a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber; `RUST_LOG` filters (default `info`). Logs go to stderr so
/// that commands printing data (`openapi`) keep stdout clean.
pub fn init(format: Option<LogFormat>) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Lets one of a run of identical warnings through per second. A failure that every request
/// meets (a database that sheds load, a replica that is down) would otherwise log as fast as
/// requests arrive, and under overload the logging itself would take the CPU that the
/// requests still being served need.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Milliseconds since [`clock_start`] of the last warning let through, plus one.
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub const fn new() -> Self {
        Self {
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(how many were held back since the last one)` when this warning may be logged.
    pub fn allow(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = u64::try_from(clock_start().elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < 1000
            || self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }
}

fn clock_start() -> std::time::Instant {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *START.get_or_init(std::time::Instant::now)
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn a_throttle_lets_one_warning_through_per_second_and_counts_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(throttle.allow(), Some(2));
        assert_eq!(throttle.allow(), None);
    }
}
