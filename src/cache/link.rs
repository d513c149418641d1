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
//! In a Redis Cluster the link's connections reach every master, and its identity is that of
//! every master together (each one's `run_id` and replication id, by address): a master that
//! restarts from an older snapshot, or a replica promoted in its place, closes the link like a
//! single server's restart, and the next link, checked against the epoch's origin, starts a
//! new epoch before anything is read through it. A master the link did not check (slots moved
//! to a new node) is noticed only by the periodic check; no test moves slots.

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, Pool};
use fred::interfaces::ClientLike;
use fred::prelude::Builder;
use fred::types::{ConnectHandle, CustomCommand};

use super::{Cache, CacheError};

/// How often the link's health and its server's identity are checked.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// What names one Redis data set: the server process (`run_id`, new on every start) and its
/// replication history (`master_replid`, new when a replica is promoted or a master is made a
/// replica of another). Recorded with every epoch as its *origin*. In a Cluster: every
/// master's, each prefixed with its address.
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

    /// A Cluster's: every master's identity, by address (in address order). Its eviction
    /// policy is the first one that may evict fences, if any master has one.
    fn of_masters(masters: &[(String, Self)]) -> Option<Self> {
        let joined = |field: fn(&Self) -> &str| {
            masters
                .iter()
                .map(|(address, server)| format!("{address}={}", field(server)))
                .collect::<Vec<_>>()
                .join(",")
        };
        let policy = masters
            .iter()
            .map(|(_, server)| server)
            .find(|server| server.may_evict_fences())
            .or(masters.first().map(|(_, server)| server))?;
        Some(Self {
            run_id: joined(|server| &server.run_id),
            replication_id: joined(|server| &server.replication_id),
            eviction_policy: policy.eviction_policy.clone(),
        })
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

/// A pool whose connections all reach one checked server process (in a Cluster, one checked
/// process per master).
pub struct Link {
    pub pool: Pool,
    pub server: ServerIdentity,
    clustered: bool,
    /// Each connection's task; it ends when its connection closes (fred's client state does
    /// not say so without a reconnection policy).
    tasks: Vec<ConnectHandle>,
}

impl Link {
    /// Opens a pool of `settings.pool_size` connections and identifies the server (or every
    /// Cluster master) behind them; gives up after a few connection timeouts.
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
        let pool = builder.build_pool(settings.pool_size)?;
        let opened = async {
            let mut tasks = Vec::with_capacity(pool.size());
            for client in pool.clients() {
                tasks.push(client.init().await?);
            }
            let server = identify_all(&pool, clustered).await?;
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
            clustered,
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

    /// The server (or every Cluster master) as it is now. An error if it does not answer.
    pub async fn identify_again(&self) -> Result<ServerIdentity, CacheError> {
        identify_client(self.pool.next(), self.clustered).await
    }

    /// Whether `now` names the data set the link was checked against.
    pub fn same_data_set(&self, now: &ServerIdentity) -> bool {
        self.server.data_set() == now.data_set()
    }
}

/// Every connection of the pool must reach the same servers: under Sentinel, two connections
/// opened during a failover may reach different masters.
async fn identify_all(pool: &Pool, clustered: bool) -> Result<ServerIdentity, CacheError> {
    let mut seen: Option<ServerIdentity> = None;
    for client in pool.clients() {
        let server = identify_client(client, clustered).await?;
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

/// The server behind `client`, or in a Cluster every master it is connected to.
async fn identify_client(client: &Client, clustered: bool) -> Result<ServerIdentity, CacheError> {
    if !clustered {
        return identify(client).await;
    }
    // A Cluster client holds one connection per master.
    let mut masters = client.active_connections();
    masters.sort_by_key(ToString::to_string);
    let mut identities = Vec::with_capacity(masters.len());
    for master in masters {
        let address = master.to_string();
        identities.push((address, identify(&client.with_cluster_node(master)).await?));
    }
    ServerIdentity::of_masters(&identities).ok_or_else(|| {
        CacheError::new(
            fred::error::ErrorKind::Cluster,
            "the Cluster client is connected to no master",
        )
    })
}

async fn identify(client: &impl ClientLike) -> Result<ServerIdentity, CacheError> {
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
    fn a_cluster_is_named_by_every_master() {
        let master = |run_id: &str, policy: &str| ServerIdentity {
            run_id: run_id.into(),
            replication_id: format!("repl-{run_id}"),
            eviction_policy: policy.into(),
        };
        let masters = |second: &str, policy: &str| {
            ServerIdentity::of_masters(&[
                ("a:1".into(), master("r1", "noeviction")),
                ("b:2".into(), master(second, policy)),
            ])
            .unwrap()
        };
        let cluster = masters("r2", "noeviction");
        assert_eq!(cluster.data_set(), "a:1=r1,b:2=r2/a:1=repl-r1,b:2=repl-r2");
        assert!(!cluster.may_evict_fences());
        assert_ne!(cluster.data_set(), masters("r3", "noeviction").data_set());
        assert!(masters("r2", "allkeys-lru").may_evict_fences());
        assert!(ServerIdentity::of_masters(&[]).is_none());
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
