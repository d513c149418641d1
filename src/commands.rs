//! The operator commands of the binary: cache warm-up and audit.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::cli::{AuditCacheArgs, HealthcheckArgs, WarmCacheArgs};
use crate::config::Config;
use crate::service::audit::AuditReport;
use crate::service::warm::{ClaimError, WarmOptions, WarmOutcome, WarmProgress};

pub type CommandError = Box<dyn std::error::Error>;

/// `product-size warm-cache`: the deployment's warm-up, as if started over HTTP (refused
/// while one runs on any instance, cancelled by `DELETE /v1/admin/cache/warm`); a progress
/// bar on a terminal, plain progress lines otherwise, and a summary at the end.
pub async fn warm_cache(args: WarmCacheArgs) -> Result<(), CommandError> {
    let config = Config::from_args(args.connection)?;
    let service = app::service(&config).await?;
    let options = WarmOptions {
        batch_size: args.batch_size,
        rate_limit: args.rate_limit,
        from_primary: args.from_primary,
    };
    let run = match service.claim_warm_up(args.rate_limit).await {
        Ok(run) => run,
        Err(ClaimError::Running(running)) => {
            return Err(format!(
                "a warm-up is already running in this deployment ({} of {} rows); \
                 cancel it with DELETE /v1/admin/cache/warm, or wait",
                running.progress.rows, running.progress.total
            )
            .into());
        }
        Err(ClaimError::Service(error)) => return Err(error.into()),
    };
    let mut display = Progress::new();
    let outcome = run
        // Never cancelled here: like any run, it stops when DELETE /v1/admin/cache/warm asks.
        .run(&service, &options, CancellationToken::new(), |progress| {
            display.update(progress)
        })
        .await;
    display.finish();
    match outcome? {
        WarmOutcome::Succeeded(summary) => {
            println!("{}", warm_summary(&summary));
            Ok(())
        }
        WarmOutcome::Cancelled(_) => Err("the warm-up was cancelled".into()),
        WarmOutcome::TakenOver(_) => {
            Err("the warm-up stopped: another run took the deployment's warm-up over".into())
        }
    }
}

pub fn warm_summary(p: &WarmProgress) -> String {
    let rate = if p.elapsed_secs > 0.0 {
        p.rows as f64 / p.elapsed_secs
    } else {
        0.0
    };
    format!(
        "cache warm-up done\n\
         \x20 rows read        {:>12}\n\
         \x20 installed        {:>12}\n\
         \x20 skipped (older)  {:>12}\n\
         \x20 pages from primary {:>10}\n\
         \x20 elapsed          {:>11.1}s\n\
         \x20 rate             {:>9.0} rows/s",
        p.rows, p.installed, p.skipped, p.pages_from_primary, p.elapsed_secs, rate
    )
}

/// A progress bar with rate and ETA on a terminal; a line every few seconds elsewhere.
enum Progress {
    Bar(ProgressBar),
    Lines { last: Instant },
}

impl Progress {
    fn new() -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Self::Bar(bar)
        } else {
            Self::Lines {
                last: Instant::now(),
            }
        }
    }

    fn update(&mut self, p: &WarmProgress) {
        match self {
            Self::Bar(bar) => {
                bar.set_length(p.total.max(p.rows));
                bar.set_position(p.rows);
            }
            Self::Lines { last } => {
                if last.elapsed() >= Duration::from_secs(2) {
                    *last = Instant::now();
                    let rate = p.rows as f64 / p.elapsed_secs.max(0.001);
                    eprintln!(
                        "warm-cache: {}/{} rows ({} installed, {} skipped), {rate:.0} rows/s",
                        p.rows, p.total, p.installed, p.skipped
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// `product-size audit-cache [--repair]`: prints a summary table and the first divergent SKUs.
/// Succeeds only when the cache agrees with the primary (after repair, when asked to repair).
pub async fn audit_cache(args: AuditCacheArgs) -> Result<(), CommandError> {
    let config = Config::from_args(args.connection)?;
    let service = app::service(&config).await?;
    let report = service.audit_cache(args.repair).await?;
    println!("{}", audit_table(&report));
    let agrees = if args.repair && report.divergent() > 0 {
        let again = service.audit_cache(false).await?;
        println!("after repair: {} divergent", again.divergent());
        again.divergent() == 0
    } else {
        report.divergent() == 0
    };
    if agrees {
        Ok(())
    } else {
        Err("the cache diverges from the primary".into())
    }
}

pub fn audit_table(r: &AuditReport) -> String {
    let mut out = format!(
        "cache audit\n\
         \x20 checked   {:>10}\n\
         \x20 agreeing  {:>10}\n\
         \x20 stale     {:>10}\n\
         \x20 dead_epoch{:>10}\n\
         \x20 orphaned  {:>10}\n\
         \x20 missing   {:>10}\n\
         \x20 repaired  {:>10}",
        r.checked, r.agreeing, r.stale, r.dead_epoch, r.orphaned, r.missing, r.repaired
    );
    if !r.first_divergent.is_empty() {
        out.push_str("\nfirst divergent SKUs:");
        for d in &r.first_divergent {
            let version = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
            out.push_str(&format!(
                "\n  {:<30} {:<9} cached {:<6} stored {}",
                d.sku,
                serde_json::to_value(d.divergence)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                version(d.cached_version),
                version(d.stored_version)
            ));
        }
    }
    out
}

/// `product-size healthcheck`: GET /healthz on the local instance, with no HTTP client
/// dependency (the runtime image has no curl).
pub async fn healthcheck(args: HealthcheckArgs) -> Result<(), CommandError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut addr = args.bind_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("unhealthy".into()),
        Ok(Err(error)) => Err(error.into()),
        Err(_) => Err("no answer within 3 s".into()),
    }
}
