//! Configuration: [`Config`] for what every command needs and [`ServeConfig`] for what `serve`
//! adds, from environment variables and flags (whose declarations hold every default), checked
//! at start so a bad URL or a missing token fails fast instead of at the first request.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

/// The flags of `product-size serve`; each also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Listen address.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: SocketAddr,

    /// Comma-separated bearer tokens that may read.
    #[arg(long, env = "API_READ_TOKENS", hide_env_values = true)]
    pub api_read_tokens: Vec<String>,

    /// Comma-separated bearer tokens that may read and write.
    #[arg(long, env = "API_WRITE_TOKENS", hide_env_values = true)]
    pub api_write_tokens: Vec<String>,

    /// Comma-separated bearer tokens for the operator endpoints under `/v1/admin/` (and only
    /// those). None: every admin request is refused.
    #[arg(long, env = "API_ADMIN_TOKENS", hide_env_values = true)]
    pub api_admin_tokens: Vec<String>,

    /// Serve without authentication (development only).
    #[arg(long, env = "AUTH_DISABLED")]
    pub auth_disabled: bool,

    /// Access log lines for cache hits: 1 every hit, N one in N, 0 none (other requests are
    /// always logged, at `info`, target `access`).
    #[arg(long, env = "ACCESS_LOG_HIT_SAMPLE", default_value_t = 1)]
    pub access_log_hit_sample: u32,

    /// On SIGTERM, how long in-flight requests may take to finish, in seconds.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 20)]
    pub shutdown_grace_secs: u64,

    /// Open connections at most; further ones wait in the listen backlog until one closes.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub http_max_connections: usize,

    /// How long a connection may take to send its first bytes, and a request its headers
    /// (idle keep-alive connections close after it too), in milliseconds.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_read_timeout_ms: u64,

    /// Longest a request may take, reading its body included, before it is answered 503 with
    /// `Retry-After`, in milliseconds.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_request_timeout_ms: u64,
}

/// How to reach the databases and Redis: shared by `serve` and the cache commands.
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// PostgreSQL streaming replicas, comma-separated: misses are spread over those that have
    /// replayed what they must see. Unset = read from the primary.
    #[arg(long, env = "DATABASE_REPLICA_URL", hide_env_values = true)]
    pub database_replica_url: Option<String>,

    /// Reads avoid the replica while it lags the primary by more than this (milliseconds).
    #[arg(long, env = "REPLICA_MAX_LAG_MS", default_value_t = 5000)]
    pub replica_max_lag_ms: u64,

    /// How long a replica query (a read's, the probe's) may take, connecting included, before
    /// the read goes to the primary and the connection is closed (milliseconds).
    #[arg(long, env = "REPLICA_TIMEOUT_MS", default_value_t = 250)]
    pub replica_timeout_ms: u64,

    /// Redis URL.
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,

    /// PEM bundle of the CA(s) that sign the Redis servers' certificates, for `rediss://` URLs
    /// (default: the system's roots). The certificate is always verified.
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,

    /// Cache entry lifetime in seconds (jittered by ±10%).
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 3600)]
    pub cache_ttl_secs: u64,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "CACHE_KEY_PREFIX", default_value = "ps")]
    pub cache_key_prefix: String,

    /// Timeout of one Redis command, in milliseconds.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 250)]
    pub redis_timeout_ms: u64,

    /// Redis connections. Commands are pipelined on each, and the fewer connections share
    /// the load, the more commands go out in one write: 0 (the default) is one per CPU the
    /// service may run on (its affinity and CPU quota), as many as the runtime's workers.
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 0)]
    pub redis_pool_size: usize,

    /// A second Redis cluster, written after the primary cache and read when it is down.
    #[arg(long, env = "REDIS_SECONDARY_URL", hide_env_values = true)]
    pub redis_secondary_url: Option<String>,

    /// What a write does to the secondary when its update of the primary cache fails.
    #[arg(long, env = "CACHE_FAILOVER_POLICY", value_enum, default_value_t = FailoverPolicy::Delete)]
    pub cache_failover_policy: FailoverPolicy,

    /// Entry lifetime on the secondary under the `short-ttl` policy, in seconds.
    #[arg(long, env = "CACHE_FAILOVER_TTL_SECS", default_value_t = 300)]
    pub cache_failover_ttl_secs: u64,

    /// How long an instance serves from the cache after it last learned, from the database,
    /// which SKUs the cache is owed (milliseconds). A write whose cache update failed may wait
    /// this long for an instance that stopped renewing.
    #[arg(long, env = "CACHE_READ_LEASE_MS", default_value_t = 2000)]
    pub cache_read_lease_ms: u64,

    /// How long a write whose cache update failed waits for every instance to learn that the
    /// cache is owed its SKUs; then it is answered 503 although committed (milliseconds).
    #[arg(long, env = "CACHE_ACK_TIMEOUT_MS", default_value_t = 5000)]
    pub cache_ack_timeout_ms: u64,
}

/// When a write's compare-and-set on the primary cache fails, what it does to the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailoverPolicy {
    /// Invalidate the SKU on the secondary: reads fall through to the database.
    Delete,
    /// Install the new version on the secondary with a short lifetime.
    ShortTtl,
}

/// The second cache cluster of the master/slave design.
#[derive(Debug, Clone)]
pub struct SecondaryCache {
    pub url: SecretString,
    pub policy: FailoverPolicy,
    pub failover_ttl: Duration,
}

/// What every command that talks to the primary needs.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL primary.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Connections per database pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// Longest wait for a pooled connection, and longest statement, in milliseconds.
    #[arg(long, env = "DATABASE_TIMEOUT_MS", default_value_t = 3000)]
    pub database_timeout_ms: u64,

    /// What DATABASE_URL and DATABASE_REPLICA_URL point at: `none`, the servers (or a pooler
    /// in session mode); `transaction`, a pooler in transaction mode (PgBouncer).
    #[arg(long, env = "DATABASE_POOLER", value_enum, default_value_t = Pooler::None)]
    pub database_pooler: Pooler,

    /// The primary through a connection that keeps its session (the server, or a pooler in
    /// session mode): the change listener, epoch changes' lock and `migrate` use it. Default:
    /// DATABASE_URL; required when DATABASE_POOLER is `transaction`.
    #[arg(long, env = "DATABASE_SESSION_URL", hide_env_values = true)]
    pub database_session_url: Option<String>,
}

/// What the database URLs point at (`DATABASE_POOLER`; docs/scaling.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooler {
    /// The servers, or a pooler in session mode: a connection keeps its session.
    #[default]
    None,
    /// A pooler in transaction mode: each transaction may run on another server connection.
    Transaction,
}

/// What every command needs: how to reach the databases and Redis, and how the cache and
/// reader leases behave.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: SecretString,
    /// See `DATABASE_SESSION_URL`.
    pub session_url: Option<SecretString>,
    /// The streaming replicas reads may use; none: every read goes to the primary.
    pub replica_urls: Vec<SecretString>,
    pub replica_max_lag: Duration,
    pub redis_url: SecretString,
    pub secondary_cache: Option<SecondaryCache>,
    pub database: DatabaseSettings,
    pub cache: CacheSettings,
    pub readers: ReaderSettings,
}

/// What `serve` adds: the listener, its limits and the callers' tokens.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub common: Config,
    pub bind_addr: SocketAddr,
    pub shutdown_grace: Duration,
    /// See `HTTP_MAX_CONNECTIONS` and `HTTP_HEADER_READ_TIMEOUT_MS`.
    pub http: crate::infra::server::Limits,
    /// See `HTTP_REQUEST_TIMEOUT_MS`.
    pub request_timeout: Duration,
    /// See `ACCESS_LOG_HIT_SAMPLE`.
    pub access_log_hit_sample: u32,
    pub auth: AuthSettings,
}

/// Reader leases (docs/reader-leases.md).
#[derive(Debug, Clone, Copy)]
pub struct ReaderSettings {
    /// How long a renewal lets an instance serve from the cache.
    pub lease: Duration,
    /// How long a write whose cache update failed waits for every reader to learn of it.
    pub ack_timeout: Duration,
}

impl Default for ReaderSettings {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub read_tokens: Vec<SecretString>,
    pub write_tokens: Vec<SecretString>,
    pub admin_tokens: Vec<SecretString>,
    pub disabled: bool,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// The server's limit on one statement; the client gives a primary query a second more,
    /// then closes its connection (a server that stopped answering never ends it).
    pub statement_timeout: Duration,
    /// See `REPLICA_TIMEOUT_MS`.
    pub replica_timeout: Duration,
    /// See `DATABASE_POOLER`.
    pub pooler: Pooler,
}

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub key_prefix: String,
    pub entry_ttl: Duration,
    /// How long a "not found" is remembered (a later create replaces it at once).
    pub negative_ttl: Duration,
    /// How long a write's fence lives: far longer than any read can take, so a fill that read
    /// before the write always finds the fence when it lands.
    pub fence_ttl: Duration,
    pub command_timeout: Duration,
    pub pool_size: usize,
    /// The CA bundle `rediss://` connections verify the server against (system roots if none).
    pub tls_ca_file: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not a valid PostgreSQL URL: {reason}")]
    DatabaseUrl { name: &'static str, reason: String },
    #[error("REDIS_URL or REDIS_SECONDARY_URL is not a valid Redis URL: {0}")]
    RedisUrl(String),
    #[error("no API tokens: set API_READ_TOKENS and/or API_WRITE_TOKENS, or AUTH_DISABLED=true")]
    NoTokens,
    #[error("{0}")]
    Invalid(String),
}

/// See `REPLICA_TIMEOUT_MS`.
pub const DEFAULT_REPLICA_TIMEOUT: Duration = Duration::from_millis(250);

impl DatabaseSettings {
    /// How long a query on the primary may take before its connection is given up: the
    /// server's statement timeout and a second.
    pub fn primary_deadline(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(1)
    }

    pub fn from_args(args: &DatabaseArgs) -> Self {
        let timeout = Duration::from_millis(args.database_timeout_ms.max(1));
        Self {
            max_connections: args.database_max_connections.max(1),
            acquire_timeout: timeout,
            statement_timeout: timeout,
            replica_timeout: DEFAULT_REPLICA_TIMEOUT,
            pooler: args.database_pooler,
        }
    }
}

impl ServeConfig {
    /// The configuration of `serve`: connections plus listener and tokens.
    pub fn from_args(args: ServeArgs) -> Result<Self, ConfigError> {
        let common = Config::from_args(args.connection)?;
        if args.http_max_connections == 0
            || args.http_header_read_timeout_ms == 0
            || args.http_request_timeout_ms == 0
        {
            return Err(ConfigError::Invalid(
                "HTTP_MAX_CONNECTIONS, HTTP_HEADER_READ_TIMEOUT_MS and HTTP_REQUEST_TIMEOUT_MS must be at least 1".into(),
            ));
        }
        let auth = AuthSettings {
            read_tokens: tokens(&args.api_read_tokens),
            write_tokens: tokens(&args.api_write_tokens),
            admin_tokens: tokens(&args.api_admin_tokens),
            disabled: args.auth_disabled,
        };
        if !auth.disabled && auth.read_tokens.is_empty() && auth.write_tokens.is_empty() {
            return Err(ConfigError::NoTokens);
        }
        Ok(Self {
            common,
            bind_addr: args.bind_addr,
            shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
            http: crate::infra::server::Limits {
                max_connections: args.http_max_connections,
                header_read_timeout: Duration::from_millis(args.http_header_read_timeout_ms),
            },
            request_timeout: Duration::from_millis(args.http_request_timeout_ms),
            access_log_hit_sample: args.access_log_hit_sample,
            auth,
        })
    }
}

/// The non-empty tokens of comma-separated lists (a flag may be given more than once), trimmed.
fn tokens(lists: &[String]) -> Vec<SecretString> {
    lists
        .iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(SecretString::from)
        .collect()
}

/// The URLs of a comma-separated `DATABASE_REPLICA_URL`, trimmed, without empty entries.
fn replica_urls(list: Option<&str>) -> impl Iterator<Item = &str> {
    list.into_iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|url| !url.is_empty())
}

impl Config {
    /// The configuration every command shares (`serve`, warm-cache, audit-cache).
    pub fn from_args(args: ConnectionArgs) -> Result<Self, ConfigError> {
        check_connection_args(&args)?;
        let entry_ttl = Duration::from_secs(args.cache_ttl_secs);
        Ok(Self {
            database_url: SecretString::from(args.database.database_url.clone()),
            session_url: args.database.database_session_url.clone().map(Into::into),
            replica_urls: replica_urls(args.database_replica_url.as_deref())
                .map(SecretString::from)
                .collect(),
            replica_max_lag: Duration::from_millis(args.replica_max_lag_ms),
            redis_url: SecretString::from(args.redis_url),
            secondary_cache: args.redis_secondary_url.map(|url| SecondaryCache {
                url: SecretString::from(url),
                policy: args.cache_failover_policy,
                failover_ttl: Duration::from_secs(args.cache_failover_ttl_secs.max(1)),
            }),
            database: DatabaseSettings {
                replica_timeout: Duration::from_millis(args.replica_timeout_ms.max(1)),
                ..DatabaseSettings::from_args(&args.database)
            },
            cache: CacheSettings {
                key_prefix: args.cache_key_prefix,
                entry_ttl,
                negative_ttl: entry_ttl.min(Duration::from_secs(30)),
                fence_ttl: Duration::from_secs(600),
                command_timeout: Duration::from_millis(args.redis_timeout_ms.max(1)),
                pool_size: redis_pool_size(args.redis_pool_size),
                tls_ca_file: args.redis_tls_ca_file,
            },
            readers: ReaderSettings {
                lease: Duration::from_millis(args.cache_read_lease_ms),
                ack_timeout: Duration::from_millis(args.cache_ack_timeout_ms),
            },
        })
    }
}

/// Refuses URLs that do not parse, a CA bundle that cannot be used, and cache settings out of
/// range: at start, not at the first connection.
fn check_connection_args(args: &ConnectionArgs) -> Result<(), ConfigError> {
    check_pg_url("DATABASE_URL", &args.database.database_url)?;
    match (
        &args.database.database_session_url,
        args.database.database_pooler,
    ) {
        (Some(url), _) => check_pg_url("DATABASE_SESSION_URL", url)?,
        (None, Pooler::Transaction) => {
            return Err(ConfigError::Invalid(
                "DATABASE_POOLER=transaction needs DATABASE_SESSION_URL: the primary, or a pooler in session mode".into(),
            ));
        }
        (None, Pooler::None) => {}
    }
    for url in replica_urls(args.database_replica_url.as_deref()) {
        check_pg_url("DATABASE_REPLICA_URL", url)?;
    }
    for url in std::iter::once(&args.redis_url).chain(&args.redis_secondary_url) {
        let redis = fred::prelude::Config::from_url(url)
            .map_err(|e| ConfigError::RedisUrl(e.details().to_string()))?;
        if redis.uses_tls() {
            crate::cache::tls::config(args.redis_tls_ca_file.as_deref())
                .map_err(ConfigError::Invalid)?;
        }
    }
    if args.cache_ttl_secs == 0 {
        return Err(ConfigError::Invalid(
            "CACHE_TTL_SECS must be at least 1".into(),
        ));
    }
    if args.cache_key_prefix.is_empty() || args.cache_key_prefix.contains(['{', '}', ' ']) {
        return Err(ConfigError::Invalid(
            "CACHE_KEY_PREFIX must be non-empty, without braces or spaces".into(),
        ));
    }
    if args.cache_read_lease_ms < 500 {
        return Err(ConfigError::Invalid(
            "CACHE_READ_LEASE_MS must be at least 500: leases are renewed every 250 ms".into(),
        ));
    }
    Ok(())
}

/// `configured`, or for 0 one connection per CPU this process may use; 1 to 64.
fn redis_pool_size(configured: usize) -> usize {
    let size = match configured {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        size => size,
    };
    size.clamp(1, 64)
}

fn check_pg_url(name: &'static str, url: &str) -> Result<(), ConfigError> {
    sqlx::postgres::PgConnectOptions::from_str(url)
        .map(|_| ())
        .map_err(|e| ConfigError::DatabaseUrl {
            name,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::{redis_pool_size, tokens};

    #[test]
    fn token_lists_are_split_at_commas_trimmed_and_without_empty_tokens() {
        let lists = ["a, b".to_owned(), ",c ,".to_owned(), String::new()];
        let tokens: Vec<String> = tokens(&lists)
            .iter()
            .map(|token| token.expose_secret().to_owned())
            .collect();
        assert_eq!(tokens, ["a", "b", "c"]);
    }

    #[test]
    fn a_pool_of_zero_is_one_connection_per_usable_cpu() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(redis_pool_size(0), cpus.clamp(1, 64));
        assert_eq!(redis_pool_size(3), 3);
        assert_eq!(redis_pool_size(1000), 64);
    }
}
