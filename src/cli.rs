//! The command line of the `product-size` binary.

use clap::{Parser, Subcommand};

use crate::config::{DatabaseArgs, ServeArgs};
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
}
