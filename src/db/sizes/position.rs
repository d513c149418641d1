//! Where the primary's WAL is, and which history of the data it belongs to.

use sqlx::PgConnection;

use crate::db::error::{DbError, parse_lsn};
use crate::domain::Lsn;

/// The primary's current WAL insert position. Taken after a commit returns, it is at or past
/// that commit's record, so a replica that has replayed it sees the commit.
pub async fn current_wal_lsn(conn: &mut PgConnection) -> Result<Lsn, DbError> {
    let text: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(conn)
        .await?;
    parse_lsn(&text)
}

/// Names one history of the primary's data: the cluster's system identifier and its WAL
/// timeline. A promoted standby keeps the identifier but starts a new timeline; a cluster
/// restored or rebuilt elsewhere has a new identifier. Writes acknowledged on one history
/// may be missing from the next (asynchronous replication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseHistory {
    pub system: String,
    pub timeline: u32,
}

impl std::fmt::Display for DatabaseHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.system, self.timeline)
    }
}

/// The primary's WAL insert position and the history it belongs to, in one round trip. Taken
/// after a commit returns, the position is at or past that commit's record.
pub async fn primary_position(conn: &mut PgConnection) -> Result<(Lsn, DatabaseHistory), DbError> {
    // The timeline is the first 8 hexadecimal digits of the WAL file name.
    let (lsn, timeline, system): (String, String, String) = sqlx::query_as(
        "SELECT p.lsn::text, substr(pg_walfile_name(p.lsn), 1, 8), c.system_identifier::text \
         FROM (SELECT pg_current_wal_insert_lsn() AS lsn) AS p, pg_control_system() AS c",
    )
    .fetch_one(conn)
    .await?;
    let unexpected = || DbError::UnexpectedPosition(format!("{lsn:?} on timeline {timeline:?}"));
    let position = lsn.parse().map_err(|_| unexpected())?;
    let timeline = u32::from_str_radix(&timeline, 16).map_err(|_| unexpected())?;
    Ok((position, DatabaseHistory { system, timeline }))
}
