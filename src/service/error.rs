//! What the service layer fails with. The HTTP layer maps these to statuses
//! (`impl From<ServiceError> for AppError`); the causes stay chained for the one log line.

use super::CacheJobError;
use crate::cache::CacheError;
use crate::db::DbError;

/// Why a read or a write could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database did not answer, is shedding load, or answered what the service could not
    /// use (a WAL position it cannot read, a write that lost every race to concurrent creates):
    /// the request may succeed shortly.
    #[error("the database is unavailable")]
    Unavailable(#[source] DbError),
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
        if is_unavailable(&error) {
            Self::Unavailable(error.into())
        } else {
            Self::Database(error)
        }
    }
}

impl From<DbError> for ServiceError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Sqlx(error) => error.into(),
            // Unavailable: a retry may read a position the service can use, or win the race.
            own @ (DbError::UnexpectedPosition(_) | DbError::KeptConflicting) => {
                Self::Unavailable(own)
            }
        }
    }
}

/// Whether `error` may pass shortly: the pool is exhausted or closed, the connection failed,
/// or the server is shutting down, crashing, failing over, out of connections, or aborted a
/// transaction (a deadlock, a serialization failure) whose retries ran out.
fn is_unavailable(error: &sqlx::Error) -> bool {
    use sqlx::Error as E;
    match error {
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::Protocol(_) => true,
        E::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("57") || c.starts_with("08") || c.starts_with("40") || c == "53300"
        }),
        _ => false,
    }
}

/// A failure of a store that a background step (an epoch, a repair, the change feed) uses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] DbError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// No epoch of the cache could be read or started (see `SizeService::current_meta`).
    #[error("the cache has no epoch this instance can trust")]
    NoEpoch,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.into())
    }
}

impl From<sqlx::Error> for CacheJobError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.into())
    }
}
