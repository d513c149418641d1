//! product-size-service: product sizes served cache-first, never older than an acknowledged
//! write, whatever the replica's lag or the cache's failures. See `service` for how.

pub mod app;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod headers;
pub mod infra;
pub mod metrics;
pub mod middleware;
pub mod routes;
pub mod service;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
