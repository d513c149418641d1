//! What the service layer fails with. The HTTP layer maps these to statuses
//! (`impl From<ServiceError> for AppError`); the causes stay chained for the one log line.

use crate::cache::CacheError;

/// Why a read or a write could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database did not answer, or is shedding load: the request may succeed shortly.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database refused a query that should have run: a bug or a broken schema.
    #[error("the database refused a query")]
    Database(#[source] sqlx::Error),
    /// The write committed, but its cache update failed and not every instance learned that
    /// the cache is owed it within `CACHE_ACK_TIMEOUT_MS` (docs/reader-leases.md).
    #[error("the write is committed but could not be acknowledged")]
    Unacknowledged,
    /// A broken invariant of the service, said in the message.
    #[error("{0}")]
    Invariant(&'static str),
}

impl From<sqlx::Error> for ServiceError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let unavailable = match &error {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => true,
            // Shutdown, crash or failover of the server, too many connections, and a
            // transaction the server aborted (a deadlock, a serialization failure) whose
            // retries ran out: each may succeed shortly.
            E::Database(db) => db.code().is_some_and(|c| {
                c.starts_with("57") || c.starts_with("08") || c.starts_with("40") || c == "53300"
            }),
            _ => false,
        };
        if unavailable {
            Self::Unavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

/// A failure of a store that a background step (an epoch, a repair, the change feed) uses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// No epoch of the cache could be read or started (see `SizeService::current_meta`).
    #[error("the cache has no epoch this instance can trust")]
    NoEpoch,
}
