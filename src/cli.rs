//! The command line of the `product-size` binary.

use clap::{Args, Parser, Subcommand};

use crate::config::{ConnectionArgs, DatabaseArgs, ServeArgs};
use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "product-size",
    version,
    about = "Product sizes for the Order system and the WMS"
)]
pub struct Cli {
    /// Log format: json or pretty (default: pretty on a terminal, else json).
    #[arg(long, env = "LOG_FORMAT", global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API.
    Serve(Box<ServeArgs>),
    /// Apply database migrations to the primary.
    Migrate(DatabaseArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Load every row into the cache (safe while writes go on).
    WarmCache(WarmCacheArgs),
    /// Compare the cache with the primary; exit 0 only when they agree.
    AuditCache(AuditCacheArgs),
    /// Exit 0 if the local instance answers /healthz (for container health checks).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The instance's listen address.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub struct AuditCacheArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Fix every divergence found (compare-and-set, never a blind write).
    #[arg(long)]
    pub repair: bool,
}

#[derive(Debug, Args)]
pub struct WarmCacheArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Rows per page.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,

    /// Rows per second at most (default: as fast as it goes).
    #[arg(long)]
    pub rate_limit: Option<u32>,

    /// Read the primary even when a replica is configured.
    #[arg(long)]
    pub from_primary: bool,
}
