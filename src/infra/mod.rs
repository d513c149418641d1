//! Infrastructure written by hand where a library did not do what the service needs. Each
//! module says why not the library, and `docs/infrastructure.md` lists them with where each
//! claim is measured.

pub mod breaker;
pub mod coalesce;
pub mod server;
