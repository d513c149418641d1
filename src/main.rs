use std::process::ExitCode;

use clap::Parser;
use product_size_service::cli::{Cli, Command};
use product_size_service::config::{DatabaseSettings, Pooler, ServeConfig};
use product_size_service::{Application, commands, db, routes, telemetry};

// Many small, short-lived allocations per request (headers, keys, futures): mimalloc serves
// them from thread-local pages where glibc's malloc took a measurable share of a cache hit.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Openapi => {
            print!("{}", routes::openapi_json());
            Ok(())
        }
        Command::WarmCache(args) => commands::warm_cache(args).await,
        Command::AuditCache(args) => commands::audit_cache(args).await,
        Command::Healthcheck(args) => commands::healthcheck(args).await,
    };
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Once: as a log line where logs are JSON (a collector parses them), else as text.
            if telemetry::json_logs() {
                tracing::error!(%error, "failed");
            } else {
                eprintln!("error: {error}");
            }
            ExitCode::FAILURE
        }
    }
}

type AnyError = Box<dyn std::error::Error>;

async fn serve(args: product_size_service::config::ServeArgs) -> Result<(), AnyError> {
    let config = ServeConfig::from_args(args)?;
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "serving");
    app.run_until(shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Applies the migrations, holding a session's lock: behind a pooler in transaction mode,
/// through `DATABASE_SESSION_URL`.
async fn migrate(args: product_size_service::config::DatabaseArgs) -> Result<(), AnyError> {
    let url = match (args.database_pooler, &args.database_session_url) {
        (Pooler::None, _) => &args.database_url,
        (Pooler::Transaction, Some(url)) => url,
        (Pooler::Transaction, None) => {
            return Err("DATABASE_POOLER=transaction needs DATABASE_SESSION_URL: the primary, or a pooler in session mode".into());
        }
    };
    let url = secrecy::SecretString::from(url.clone());
    let settings = DatabaseSettings {
        pooler: Pooler::None,
        ..DatabaseSettings::from_args(&args)
    };
    let db = db::Db::connect_lazy(&url, &[], None, &settings, &[])?;
    db::migrate(db.primary()).await?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
