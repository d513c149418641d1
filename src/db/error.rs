//! What the database layer fails with: PostgreSQL's (or the driver's) errors, and the
//! service's own failures found in what the database answered.

use super::lease::QueryError;

/// A failed database step.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The driver or the server failed (connection, query, pool).
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// The server answered a WAL position (or timeline) the service cannot read; the text
    /// says what it answered.
    #[error("unexpected WAL position {0}")]
    UnexpectedPosition(String),
    /// Every try of a write ([`write_transaction`](super::sizes::write_transaction)) found
    /// that a concurrent transaction had created one of its new SKUs first.
    #[error("write kept conflicting with concurrent creates")]
    KeptConflicting,
}

impl QueryError for DbError {
    /// The service's own failures never say the connection broke: it answered.
    fn is_broken_connection(&self) -> bool {
        match self {
            Self::Sqlx(error) => error.is_broken_connection(),
            Self::UnexpectedPosition(_) | Self::KeptConflicting => false,
        }
    }
}

/// A WAL position `text` as PostgreSQL writes it (`16/B374D848`).
pub(crate) fn parse_lsn(text: &str) -> Result<crate::domain::Lsn, DbError> {
    text.parse()
        .map_err(|_| DbError::UnexpectedPosition(format!("{text:?}")))
}
