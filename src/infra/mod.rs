//! Infrastructure written by hand where a library did not do what the service needs. Each
//! module says why not the library, and `docs/infrastructure.md` lists them with where each
//! claim is measured. [`background`] is the owner of the instance's background tasks, on
//! tokio-util's tracker: what every worker runs on.

pub mod background;
pub mod breaker;
pub mod coalesce;
pub mod server;
