//! The connections to one Redis server process, and the proof that its data set is the one
//! the current epoch was started on.
//!
//! A Redis that restarts from an RDB or AOF snapshot, or a replica promoted after
//! asynchronous replication, comes back with older entries and fences under the same epoch.
//! fred would reconnect by itself, and commands queued during a reconnection run before any
//! `on_reconnect` handler could check the server: a read could reach the older data set
//! before anyone noticed. So a *link* is a pool that never reconnects: every command sent on it
//! reaches the server process it was checked against. When any of its connections closes, the
//! link is dropped, and a new one is opened and checked ([`ServerIdentity`] against the epoch's
//! recorded origin) before anything uses it. A server whose identity changes under an open link
//! (a master demoted and resynchronised without a restart) is noticed by the periodic check.
//!
//! A Redis Cluster keeps fred's own reconnection (slots move between nodes); see the README for
//! what that leaves out.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::prelude::{Builder, ReconnectPolicy};
use fred::types::{ConnectHandle, CustomCommand};

use super::{Cache, CacheError};

/// How often the link's health and its server's identity are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// What names one Redis data set: the server process (`run_id`, new on every start) and its
/// replication history (`master_replid`, new when a replica is promoted or a master is made a
/// replica of another). Recorded with every epoch as its *origin*.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    pub run_id: String,
    pub replication_id: String,
    /// `maxmemory-policy`: whether Redis may evict the fences the guarantees rest on.
    pub eviction_policy: String,
}

impl ServerIdentity {
    /// Reads it from `INFO server replication memory`.
    fn parse(info: &str) -> Option<Self> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(|value| value.trim().to_owned())
        };
        Some(Self {
            run_id: field("run_id")?,
            replication_id: field("master_replid")?,
            eviction_policy: field("maxmemory_policy").unwrap_or_default(),
        })
    }

    /// For a Cluster, whose nodes are not checked one by one.
    pub fn unchecked() -> Self {
        Self {
            run_id: "cluster".to_owned(),
            replication_id: "-".to_owned(),
            eviction_policy: String::new(),
        }
    }

    /// The data set's name as the origin records it.
    pub fn data_set(&self) -> String {
        format!("{}/{}", self.run_id, self.replication_id)
    }

    /// Whether Redis may evict keys that have a TTL, fences included: only `noeviction`
    /// keeps every fence until it expires.
    pub fn may_evict_fences(&self) -> bool {
        !self.eviction_policy.is_empty() && self.eviction_policy != "noeviction"
    }
}

/// A pool whose connections all reach one checked server process.
pub struct Link {
    pub pool: Pool,
    /// `None` in a Cluster, where connections follow the slots.
    pub server: Option<ServerIdentity>,
    /// Each connection's task; it ends when its connection closes (fred's client state does
    /// not say so without a reconnection policy).
    tasks: Vec<ConnectHandle>,
}

impl Link {
    /// Opens a pool of `settings.pool_size` connections and identifies the server behind them
    /// (not in a Cluster); gives up after a few connection timeouts.
    pub async fn open(
        config: &fred::prelude::Config,
        settings: &crate::config::CacheSettings,
        clustered: bool,
    ) -> Result<Self, CacheError> {
        let connect_timeout = settings.command_timeout.max(Duration::from_millis(500));
        let mut builder = Builder::from_config(config.clone());
        builder
            .with_performance_config(|perf| {
                perf.default_command_timeout = settings.command_timeout;
            })
            .with_connection_config(|conn| {
                conn.connection_timeout = connect_timeout;
                conn.internal_command_timeout = connect_timeout;
                conn.max_command_attempts = 1;
            });
        if clustered {
            builder.set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
        }
        let pool = builder.build_pool(settings.pool_size)?;
        let opened = async {
            let mut tasks = Vec::with_capacity(pool.size());
            for client in pool.clients() {
                tasks.push(client.init().await?);
            }
            let server = match clustered {
                true => None,
                false => Some(identify_all(&pool).await?),
            };
            Ok((server, tasks))
        };
        let (server, tasks) = match tokio::time::timeout(connect_timeout * 4, opened).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(error)) => {
                let _ = pool.quit().await;
                return Err(error);
            }
            Err(_) => {
                let _ = pool.quit().await;
                return Err(CacheError::new(
                    fred::error::ErrorKind::Timeout,
                    "connecting to Redis timed out",
                ));
            }
        };
        Ok(Self {
            pool,
            server,
            tasks,
        })
    }

    /// Whether every connection is still open (a closed one never reopens).
    pub fn is_alive(&self) -> bool {
        self.tasks.iter().all(|task| !task.is_finished())
    }

    pub fn client(&self) -> &Client {
        self.pool.next()
    }

    /// The server as it is now, if the link has one to check (not in a Cluster). An error if it
    /// does not answer.
    pub async fn identify_again(&self) -> Result<Option<ServerIdentity>, CacheError> {
        match &self.server {
            Some(_) => Ok(Some(identify(self.pool.next()).await?)),
            None => Ok(None),
        }
    }

    /// Whether `now` names the data set the link was checked against.
    pub fn same_data_set(&self, now: &ServerIdentity) -> bool {
        self.server
            .as_ref()
            .is_some_and(|server| server.data_set() == now.data_set())
    }
}

/// Every connection of the pool must reach the same server: under Sentinel, two connections
/// opened during a failover may reach different masters.
async fn identify_all(pool: &Pool) -> Result<ServerIdentity, CacheError> {
    let mut seen: Option<ServerIdentity> = None;
    for client in pool.clients() {
        let server = identify(client).await?;
        match &seen {
            Some(first) if first.run_id != server.run_id => {
                return Err(CacheError::new(
                    fred::error::ErrorKind::Unknown,
                    "the pool's connections reach different Redis servers",
                ));
            }
            Some(_) => {}
            None => seen = Some(server),
        }
    }
    seen.ok_or_else(|| CacheError::new(fred::error::ErrorKind::Unknown, "empty Redis pool"))
}

async fn identify(client: &Client) -> Result<ServerIdentity, CacheError> {
    let info: Bytes = client
        .custom(
            CustomCommand::new_static("INFO", None, false),
            vec!["server", "replication", "memory"],
        )
        .await?;
    ServerIdentity::parse(&String::from_utf8_lossy(&info)).ok_or_else(|| {
        CacheError::new(
            fred::error::ErrorKind::Protocol,
            "INFO has no run_id or master_replid",
        )
    })
}

/// Keeps `cache` linked until it is dropped or quit: opens a link when there is none, drops
/// one whose connection closed or whose server changed, and opens the next at once.
pub async fn supervise(cache: Weak<Cache>) {
    let mut failures: u32 = 0;
    loop {
        let Some(cache) = cache.upgrade() else { return };
        if cache.is_closed() {
            return;
        }
        if cache.check_link().await {
            failures = 0;
        } else {
            if failures == 0 {
                tracing::warn!(cache = cache.prefix(), "Redis link lost; reconnecting");
            }
            failures = failures.saturating_add(1);
        }
        let wake = cache.relink_requested();
        drop(cache);
        // Quick retries first, then no more often than the check interval.
        let delay = if failures > 0 && failures < 4 {
            Duration::from_millis(50)
        } else {
            CHECK_INTERVAL
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_info_sections() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n\r\n# Replication\r\n\
                    role:master\r\nmaster_replid:def\r\nmaster_replid2:000\r\n\
                    # Memory\r\nmaxmemory_policy:volatile-ttl\r\n";
        let server = ServerIdentity::parse(info).unwrap();
        assert_eq!(server.data_set(), "abc/def");
        assert!(server.may_evict_fences());
        assert!(ServerIdentity::parse("# Server\r\nrun_id:abc\r\n").is_none());
    }

    #[test]
    fn only_noeviction_keeps_every_fence() {
        let server = |policy: &str| ServerIdentity {
            run_id: "r".into(),
            replication_id: "p".into(),
            eviction_policy: policy.into(),
        };
        assert!(!server("noeviction").may_evict_fences());
        for policy in [
            "volatile-ttl",
            "volatile-lru",
            "allkeys-lru",
            "allkeys-random",
        ] {
            assert!(server(policy).may_evict_fences(), "{policy}");
        }
    }
}
