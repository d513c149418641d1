//! Statements behind a pooler in transaction mode (`DATABASE_POOLER`; docs/scaling.md).
//!
//! A server keeps a connection's session for as long as it is open; a pooler in transaction
//! mode (PgBouncer's `pool_mode = transaction`) lends each transaction a server connection of
//! its pool, and outside a transaction each `Sync` may end the loan. sqlx sends a statement in
//! two round trips (Parse, Describe, Sync; then Bind, Execute, Sync), by default under a name
//! it caches per connection (`sqlx_s_N`). Through such a pooler the Bind may reach another
//! server connection than the Parse: one where the name does not exist, or names another
//! client's statement, whose rows then arrive under this statement's columns (sqlx panics
//! decoding a row shorter than its columns). Turning the statement cache off
//! (`statement_cache_capacity(0)`) does not help: sqlx 0.9 still names every statement, and
//! never closes it.
//!
//! So behind such a pooler every statement runs inside a transaction, which keeps its server
//! connection from Parse to Bind, and each transaction begins with one round trip that
//! `DEALLOCATE`s what earlier clients left on that server connection (no name of ours can
//! meet another statement under it) and sets what a session setting would set directly: the
//! statement timeout, and for the primary the caches this instance updates itself (the
//! capture trigger reads `product_size.own_ledgers`). With the statement cache off, nothing
//! survives a transaction. The price is two round trips more per statement (the `BEGIN` and
//! the `COMMIT`), paid only there: on a server, statements are sent as they always were.
//!
//! What needs a session itself, `LISTEN` (the change feed's wake-up) and the session lock of
//! an epoch change (with the statements it covers, which must commit one by one), goes to
//! `DATABASE_SESSION_URL` instead: the primary, or a pooler in session mode.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Transaction};

/// How statements reach one server's connections: as they are, or each in a transaction that
/// begins with `begin` (see the module).
#[derive(Debug, Clone, Default)]
pub struct Sessions {
    begin: Option<Arc<str>>,
}

impl Sessions {
    /// Connections straight to the server (or to a pooler in session mode).
    pub fn direct() -> Self {
        Self::default()
    }

    /// Connections through a pooler in transaction mode: every transaction limits its
    /// statements to `statement_timeout` and, if any, names `own_ledgers` as the caches this
    /// instance updates itself.
    pub fn pooled(statement_timeout: Duration, own_ledgers: &[String]) -> Self {
        let mut begin = format!(
            "BEGIN; DEALLOCATE ALL; SET LOCAL statement_timeout = {}",
            statement_timeout.as_millis()
        );
        if !own_ledgers.is_empty() {
            begin.push_str("; SET LOCAL product_size.own_ledgers = ");
            begin.push_str(&quote_literal(&own_ledgers.join(" ")));
        }
        Self {
            begin: Some(begin.into()),
        }
    }

    /// Whether the connections go through a pooler in transaction mode.
    pub fn is_pooled(&self) -> bool {
        self.begin.is_some()
    }

    /// Begins a transaction on `conn`: a plain `BEGIN` on a server, one that makes the
    /// pooled server connection ours (see the module) behind a pooler.
    pub async fn begin<'c>(
        &self,
        conn: &'c mut PgConnection,
    ) -> Result<Transaction<'c, Postgres>, sqlx::Error> {
        match &self.begin {
            None => conn.begin().await,
            Some(begin) => conn.begin_with(AssertSqlSafe(begin.to_string())).await,
        }
    }
}

/// Awaits `$query` (an expression awaited, using `$conn: &mut PgConnection`, that fails with
/// an error made from [`sqlx::Error`]) on `$connection`, in an async context: as it is on a
/// server; behind a pooler in transaction mode, in a transaction of its own, committed if the
/// query succeeded (see the module). The pooled path is boxed, so that it adds nothing to the
/// direct path's future.
macro_rules! own_transaction {
    ($sessions:expr, $connection:expr, |$conn:ident| $query:expr) => {{
        if $crate::db::session::Sessions::is_pooled($sessions) {
            let sessions: &$crate::db::session::Sessions = $sessions;
            let connection: &mut sqlx::PgConnection = $connection;
            Box::pin(async {
                match sessions.begin(connection).await {
                    Err(error) => Err(error.into()),
                    Ok(mut tx) => {
                        let result = {
                            let $conn: &mut sqlx::PgConnection = &mut tx;
                            $query.await
                        };
                        $crate::db::session::end(tx, result).await
                    }
                }
            })
            .await
        } else {
            let $conn: &mut sqlx::PgConnection = $connection;
            $query.await
        }
    }};
}
pub(crate) use own_transaction;

/// Runs `$query` (as in [`own_transaction!`]) on a connection taken from the pool `$pool`, in
/// a transaction of its own behind a pooler: for jobs that take connections from the pool
/// themselves rather than through [`super::lease::Leases`].
macro_rules! on_pool {
    ($sessions:expr, $pool:expr, |$conn:ident| $query:expr) => {
        async {
            let pool: &sqlx::PgPool = $pool;
            match pool.acquire().await {
                Err(error) => Err(error.into()),
                Ok(mut connection) => {
                    $crate::db::session::own_transaction!($sessions, &mut connection, |$conn| {
                        $query
                    })
                }
            }
        }
    };
}
pub(crate) use on_pool;

/// Ends the transaction a pooled statement ran in: committed if `result` is a success (an
/// error committing becomes the result), rolled back otherwise.
pub async fn end<T, E: From<sqlx::Error>>(
    tx: Transaction<'_, Postgres>,
    result: Result<T, E>,
) -> Result<T, E> {
    match result {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(error) => {
            // The connection may be what failed; the error that matters is the query's.
            let _ = tx.rollback().await;
            Err(error)
        }
    }
}

/// Commits what `conn`'s transaction did so far and begins the next one, in one round trip
/// that keeps the server connection: for a caller that must read something only after its
/// statement committed (a WAL position other sessions compare with) while running inside
/// [`own_transaction!`]. Outside a transaction (on a server, where every statement commits
/// by itself) it does nothing.
pub async fn commit_so_far(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    if conn.is_in_transaction() {
        sqlx::raw_sql("COMMIT; BEGIN").execute(conn).await?;
    }
    Ok(())
}

/// `text` as an SQL string literal, whatever `standard_conforming_strings` says.
fn quote_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pooled_transaction_sets_what_a_session_would() {
        let sessions = Sessions::pooled(
            Duration::from_secs(3),
            &["ps".to_owned(), "ps{secondary}".to_owned()],
        );
        assert_eq!(
            sessions.begin.as_deref(),
            Some(
                "BEGIN; DEALLOCATE ALL; SET LOCAL statement_timeout = 3000; \
                 SET LOCAL product_size.own_ledgers = E'ps ps{secondary}'"
            )
        );
        assert!(sessions.is_pooled());
        assert!(!Sessions::direct().is_pooled());
    }

    #[test]
    fn a_ledger_is_quoted_whatever_it_holds() {
        assert_eq!(quote_literal(r"it's \x"), r"E'it\'s \\x'");
    }
}
