//! The change-capture side of the primary (docs/consistency.md, "Writers other than the
//! service"): which caches follow the table, and the channel that announces changes made by
//! other writers. The records themselves are `cache_repairs` rows and, for the writing
//! instance's own caches, one `cache_own_writes` row per transaction, written by a trigger
//! (migrations `capture_every_change` and `own_writes_once_per_transaction`).

use sqlx::PgExecutor;

/// The channel the capture trigger notifies when it records a change another writer made.
pub const CHANNEL: &str = "product_size_changes";

/// The `application_name` of the connection that listens on [`CHANNEL`] for the caches
/// `ledgers`: an operator (or a test) can tell each deployment's listener apart.
pub fn listener_application(ledgers: &[String]) -> String {
    let mut name = String::from("product-size-service changes");
    if let Some(ledger) = ledgers.first() {
        name.push(' ');
        name.push_str(ledger);
    }
    name
}

/// Renews the registration of `ledgers` as followers of the table. Returns those whose
/// registration had lapsed or never existed: their cache may have missed changes.
pub async fn follow<'c>(
    executor: impl PgExecutor<'c>,
    ledgers: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT follow_cache_ledgers($1)")
        .bind(ledgers)
        .fetch_all(executor)
        .await
}

/// Forgets ledgers nobody has renewed for minutes, and the records kept for them. Returns how
/// many ledgers and records went.
pub async fn forget_lapsed(executor: impl PgExecutor<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT forget_lapsed_cache_ledgers()")
        .fetch_one(executor)
        .await
}
