//! The cache-hit ceiling of the benchmark: axum answering `GET /v1/products/{sku}/size` with one
//! fred `GET` of the SKU's cache entry, returned as it is. No authentication, no routing to a
//! database, no metrics, no request id, no check of the entry: what any handler serving that
//! key over HTTP with this stack must at least do. The service's cache-hit GET is reported
//! against it (bench/run.sh, scenario "axum + fred GET").
//!
//! Environment: `BIND_ADDR`, `REDIS_URL`, `CACHE_KEY_PREFIX`, `REDIS_POOL_SIZE` (as the
//! service's default: one connection per CPU the process may use).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::prelude::{Builder, Config};

#[derive(Clone)]
struct Ceiling {
    redis: Pool,
    prefix: String,
}

async fn get_size(State(ceiling): State<Ceiling>, Path(sku): Path<String>) -> Response {
    let key = format!("{}:{{{sku}}}", ceiling.prefix);
    match ceiling.redis.get::<Option<Bytes>, _>(key).await {
        Ok(Some(entry)) => ([(header::CONTENT_TYPE, "application/json")], entry).into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let config = Config::from_url(&var("REDIS_URL", "redis://127.0.0.1:6379"))?;
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let pool_size = var("REDIS_POOL_SIZE", "0").parse::<usize>()?;
    let pool_size = if pool_size == 0 { cpus } else { pool_size };
    let redis = Builder::from_config(config).build_pool(pool_size)?;
    redis.init().await?;
    let ceiling = Ceiling {
        redis,
        prefix: var("CACHE_KEY_PREFIX", "pss"),
    };
    let app = Router::new()
        .route("/v1/products/{sku}/size", get(get_size))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ceiling);
    let listener = tokio::net::TcpListener::bind(var("BIND_ADDR", "127.0.0.1:8081")).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
