//! One test app per test: its own HTTP listener, its own Redis key prefix and its own SKUs,
//! against the real PostgreSQL primary, replicas and Redis that `scripts/services.sh` runs.

use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike, Config as RedisConfig, KeysInterface};
use product_size_service::Application;
use product_size_service::cache::CacheRole;
use product_size_service::config::{
    CacheSettings, Config, DatabaseSettings, Pooler, SecondaryCache, ServeArgs, ServeConfig,
};
use product_size_service::db;
use product_size_service::service::ledger;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use sqlx::{Connection, PgPool};

pub const READ_TOKEN: &str = "test-read-token";
pub const WRITE_TOKEN: &str = "test-write-token";
pub const ADMIN_TOKEN: &str = "test-admin-token";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn primary_url() -> String {
    env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:55432/product_sizes",
    )
}
/// The port of the shared primary (for a replica or a proxy of a test's own).
pub fn primary_port() -> u16 {
    reqwest::Url::parse(&primary_url()).unwrap().port().unwrap()
}

pub fn replica_url() -> String {
    env_or(
        "DATABASE_REPLICA_URL",
        "postgres://postgres@127.0.0.1:55433/product_sizes",
    )
}
/// A replica that always applies WAL 2 s late (`recovery_min_apply_delay`).
pub fn lagging_replica_url() -> String {
    env_or(
        "PSS_TEST_LAGGING_REPLICA_URL",
        "postgres://postgres@127.0.0.1:55434/product_sizes",
    )
}
pub fn shared_redis_url() -> String {
    env_or("REDIS_URL", "redis://127.0.0.1:56379")
}

#[derive(Debug, Clone)]
pub enum Replica {
    Fresh,
    Lagging,
    None,
    Url(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub replica: Replica,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub replica_max_lag: Duration,
    /// Names the deployment (SKU and key prefix); random unless given.
    pub id: Option<String>,
    pub secondary_cache: Option<SecondaryCache>,
    /// `REDIS_TLS_CA_FILE`.
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
    /// Pool size and timeouts (the tests' defaults if `None`).
    pub database: Option<DatabaseSettings>,
    /// Connection cap and header read timeout.
    pub http: product_size_service::infra::server::Limits,
    /// `HTTP_REQUEST_TIMEOUT_MS`.
    pub request_timeout: Duration,
    /// `CACHE_READ_LEASE_MS` and `CACHE_ACK_TIMEOUT_MS` (the service's defaults if `None`).
    pub readers: Option<product_size_service::config::ReaderSettings>,
    /// `DATABASE_POOLER=transaction`: `database_url` (and a replica's URL) point at a pooler.
    pub pooled: Option<Pooled>,
}

/// An app behind a pooler in transaction mode (`tests/api/pooler.rs`).
#[derive(Debug, Clone)]
pub struct Pooled {
    /// The primary itself: the app's `DATABASE_SESSION_URL`; the test's own pool, the
    /// migrations and the clean-up use it too.
    pub direct_url: String,
}

impl Options {
    /// Where the test's own pool goes: the primary itself, even for an app behind a pooler
    /// (whose `DatabaseSettings` say so).
    fn own_url(&self) -> &str {
        self.pooled
            .as_ref()
            .map_or(&self.database_url, |p| &p.direct_url)
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            replica: Replica::Fresh,
            database_url: primary_url(),
            redis_url: None,
            replica_max_lag: Duration::from_secs(10),
            id: None,
            secondary_cache: None,
            redis_tls_ca_file: None,
            database: None,
            http: product_size_service::infra::server::Limits::default(),
            request_timeout: Duration::from_secs(10),
            readers: None,
            pooled: None,
        }
    }
}

pub struct TestApp {
    /// What the app was built with (to build a service or run a command against the same).
    pub config: Config,
    pub address: String,
    server: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    )>,
    pub client: reqwest::Client,
    /// Makes this test's SKUs unique.
    pub id: String,
    /// This app's Redis key prefix.
    pub key_prefix: String,
    pub redis: Client,
    pub primary: PgPool,
    pub replica: Option<PgPool>,
    /// The app's replicas, with what their probes saw.
    replicas: product_size_service::db::replicas::Replicas,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        // `TEST_LOG=1 cargo test ...` shows the service's logs.
        static TRACING: std::sync::Once = std::sync::Once::new();
        TRACING.call_once(|| {
            if std::env::var_os("TEST_LOG").is_some() {
                let _spans = product_size_service::telemetry::init(Some(
                    product_size_service::telemetry::LogFormat::Pretty,
                ));
            }
        });
        let id = options
            .id
            .clone()
            .unwrap_or_else(|| format!("{:08x}", fastrand::u32(..)));
        let primary = PgPool::connect_lazy(options.own_url()).unwrap();
        // A test may point the app at a primary that is down on purpose.
        if let Err(error) = db::migrate(&primary).await {
            eprintln!("migrations not applied: {error}");
        }
        let replica_url = match &options.replica {
            Replica::Fresh => Some(replica_url()),
            Replica::Lagging => Some(lagging_replica_url()),
            Replica::None => None,
            Replica::Url(url) => Some(url.clone()),
        };
        let replica = match (&options.replica, &replica_url) {
            (Replica::Fresh | Replica::Lagging, Some(url)) => {
                Some(PgPool::connect(url).await.expect("replica is up"))
            }
            _ => None,
        };
        let redis_url = options.redis_url.clone().unwrap_or_else(shared_redis_url);
        let key_prefix = format!("t{id}");
        let config = test_config(&options, &redis_url, &key_prefix, replica_url);
        let app = Application::build(config.clone())
            .await
            .expect("app builds");
        let replicas = app.replicas();
        let address = format!("http://{}", app.local_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));

        // Reconnects after a test restarts its Redis; never waits forever on one that is down.
        let redis = fred::prelude::Builder::from_config(RedisConfig::from_url(&redis_url).unwrap())
            .with_performance_config(|perf| perf.default_command_timeout = Duration::from_secs(2))
            .set_policy(fred::prelude::ReconnectPolicy::new_constant(0, 100))
            .build()
            .unwrap();
        // Some tests point the app at a Redis that is down on purpose: connect lazily.
        let _connection = redis.connect();
        let _ = tokio::time::timeout(Duration::from_secs(1), redis.wait_for_connect()).await;
        let test_app = Self {
            config: config.common,
            address,
            server: Some((stop, server)),
            client: reqwest::Client::new(),
            id,
            key_prefix,
            redis,
            primary,
            replica,
            replicas,
        };
        // A replica of the shared services is up; a test's own may be down on purpose.
        if matches!(options.replica, Replica::Fresh | Replica::Lagging) {
            test_app.wait_replica_up().await;
        }
        test_app
    }

    /// Another instance of the same deployment: same SKUs and Redis key prefix.
    pub async fn sibling(&self, options: Options) -> Self {
        Self::spawn_with(Options {
            id: Some(self.id.clone()),
            ..options
        })
        .await
    }

    /// Shuts the instance down as SIGTERM does: background tasks are cancelled and waited for.
    pub async fn stop(&mut self) {
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            let _ = server.await;
        }
    }

    /// A SKU unique to this test.
    pub fn sku(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    pub fn entry_key(&self, sku: &str) -> String {
        format!("{}:{{{sku}}}", self.key_prefix)
    }

    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let builder = self
            .client
            .request(method, format!("{}{path}", self.address));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    pub async fn get(&self, sku: &str) -> Response {
        self.request(
            Method::GET,
            &format!("/v1/products/{sku}/size"),
            Some(READ_TOKEN),
        )
        .send()
        .await
        .unwrap()
    }

    /// A GET that sends `X-Consistency-Token: token`.
    pub async fn get_with_token(&self, sku: &str, token: &str) -> Response {
        self.request(
            Method::GET,
            &format!("/v1/products/{sku}/size"),
            Some(READ_TOKEN),
        )
        .header("X-Consistency-Token", token)
        .send()
        .await
        .unwrap()
    }

    pub async fn put(&self, sku: &str, body: &Value) -> Response {
        self.request(
            Method::PUT,
            &format!("/v1/products/{sku}/size"),
            Some(WRITE_TOKEN),
        )
        .json(body)
        .send()
        .await
        .unwrap()
    }

    pub async fn delete(&self, sku: &str) -> Response {
        self.request(
            Method::DELETE,
            &format!("/v1/products/{sku}/size"),
            Some(WRITE_TOKEN),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn lookup(&self, skus: &[&str]) -> Response {
        self.request(Method::POST, "/v1/product-sizes/lookup", Some(READ_TOKEN))
            .json(&json!({ "skus": skus }))
            .send()
            .await
            .unwrap()
    }

    pub async fn sync(&self, updates: &[Value]) -> Response {
        self.request(Method::POST, "/v1/sync/product-sizes", Some(WRITE_TOKEN))
            .json(&json!({ "updates": updates }))
            .send()
            .await
            .unwrap()
    }

    /// The stored row on the primary, tombstones included: (version, deleted, length_mm).
    pub async fn primary_row(&self, sku: &str) -> Option<(i64, bool, i32)> {
        sqlx::query_as("SELECT version, deleted, length_mm FROM product_sizes WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&self.primary)
            .await
            .unwrap()
    }

    /// How many of `skus` this app's cache is still owed a record for (its writes', per
    /// transaction until handed over, or anyone else's).
    pub async fn owed_records(&self, skus: &[String]) -> i64 {
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM cache_repairs \
                      WHERE cache_prefix = $1 AND sku = ANY($2)) \
                  + (SELECT count(*) FROM cache_own_writes AS w, unnest(w.skus) AS o(sku) \
                      WHERE w.ledger = $1 AND o.sku = ANY($2))",
        )
        .bind(&self.key_prefix)
        .bind(skus)
        .fetch_one(&self.primary)
        .await
        .unwrap()
    }

    /// Waits until the app's replica has replayed everything the primary has now.
    pub async fn wait_replica_caught_up(&self) {
        let Some(replica) = &self.replica else { return };
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&self.primary)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let caught_up: bool =
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                    .bind(&target)
                    .fetch_one(replica)
                    .await
                    .unwrap();
            // The app's replica probe must see it too: reads follow the probe.
            let seen = self.replicas.iter().all(|replica| {
                let health = replica.health();
                health.is_up() && health.replayed() >= target.parse().expect("an LSN")
            });
            if caught_up && seen {
                return;
            }
            assert!(Instant::now() < deadline, "replica did not catch up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Until the app's replica probes let reads use the replicas it started with.
    pub async fn wait_replica_up(&self) {
        if self.replicas.is_empty() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.replicas.iter().all(|r| r.health().is_up()) {
            assert!(
                Instant::now() < deadline,
                "the replica probe never saw the replica up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn scrape_metrics(&self) -> String {
        let response = self
            .request(Method::GET, "/metrics", None)
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    /// The sum of a metric's samples over all its labels.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.scrape_metrics().await;
        text.lines()
            .filter(|line| line.starts_with(name) && !line.starts_with('#'))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The served OpenAPI document.
    pub async fn openapi_document(&self) -> Value {
        let response = self
            .request(Method::GET, "/openapi.json", None)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    /// The `/readyz` body.
    pub async fn readiness(&self) -> Value {
        let response = self
            .request(Method::GET, "/readyz", None)
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    pub async fn evict(&self, sku: &str) {
        let _: i64 = self.redis.del(self.entry_key(sku)).await.unwrap();
    }

    pub async fn flushall(&self) {
        let _: () = self.redis.flushall(false).await.unwrap();
    }

    /// The id of the cache's current epoch (the first field of its meta key).
    pub async fn cache_epoch(&self) -> String {
        let meta: String = self
            .redis
            .get(format!("{}:meta", self.key_prefix))
            .await
            .unwrap();
        meta.split('|').next().unwrap().to_owned()
    }

    /// Writes `sku`'s cache entry directly: `version|epoch|body`, as the service stores it.
    pub async fn plant_entry(&self, sku: &str, version: i64, epoch: &str, body: &str) {
        let entry = format!("{version}|{epoch}|{body}");
        let _: () = (self.redis)
            .set(self.entry_key(sku), entry, None, None, false)
            .await
            .unwrap();
    }
}

/// Cache settings for tests (the apps' and those of caches built directly from the library).
/// What `product-size serve` loads from these flags (the real loader, with its checks), then
/// what only a test sets: the replica it chose, a secondary cache, pool and HTTP limits.
fn test_config(
    options: &Options,
    redis_url: &str,
    key_prefix: &str,
    replica_url: Option<String>,
) -> ServeConfig {
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }
    let max_lag = options.replica_max_lag.as_millis().to_string();
    let mut argv = vec![
        "serve",
        "--database-url",
        &options.database_url,
        "--redis-url",
        redis_url,
        "--cache-key-prefix",
        key_prefix,
        "--cache-ttl-secs",
        "300",
        "--redis-timeout-ms",
        "500",
        "--redis-pool-size",
        "2",
        "--replica-max-lag-ms",
        &max_lag,
        "--bind-addr",
        "127.0.0.1:0",
        "--api-read-tokens",
        READ_TOKEN,
        "--api-write-tokens",
        WRITE_TOKEN,
        "--api-admin-tokens",
        ADMIN_TOKEN,
        "--shutdown-grace-secs",
        "5",
    ];
    let ca_file = options
        .redis_tls_ca_file
        .as_ref()
        .map(|path| path.to_string_lossy().into_owned());
    if let Some(ca_file) = &ca_file {
        argv.extend(["--redis-tls-ca-file", ca_file.as_str()]);
    }
    if let Some(replica_url) = &replica_url {
        argv.extend(["--database-replica-url", replica_url.as_str()]);
    }
    let mut config = ServeConfig::from_args(<Serve as clap::Parser>::parse_from(argv).args)
        .expect("the test configuration loads");
    // The environment (`scripts/services.sh env`) names a replica; the test chooses its own.
    if replica_url.is_none() {
        config.common.replica_urls.clear();
    }
    config.common.secondary_cache = options.secondary_cache.clone();
    config.common.database = options.database.clone().unwrap_or(DatabaseSettings {
        max_connections: 10,
        acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(5),
        replica_timeout: product_size_service::config::DEFAULT_REPLICA_TIMEOUT,
        pooler: Pooler::None,
    });
    config.common.session_url = options.pooled.as_ref().map(|p| p.direct_url.clone().into());
    config.http = options.http;
    config.request_timeout = options.request_timeout;
    if let Some(readers) = options.readers {
        config.common.readers = readers;
    }
    config
}

pub fn cache_settings(key_prefix: &str) -> CacheSettings {
    CacheSettings {
        key_prefix: key_prefix.to_owned(),
        entry_ttl: Duration::from_secs(300),
        negative_ttl: Duration::from_secs(30),
        fence_ttl: Duration::from_secs(600),
        command_timeout: Duration::from_millis(500),
        pool_size: 2,
        tls_ca_file: None,
    }
}

impl Drop for TestApp {
    /// The test's deployment stops following the table's changes, and what was recorded for
    /// it goes. A deployment that really went away would lapse within a minute, and keep
    /// receiving records until then: with dozens of tests a minute, every write of the suite
    /// would be recorded dozens of times.
    fn drop(&mut self) {
        // The test's own pool goes to the primary itself, even for an app behind a pooler.
        let options = self.primary.connect_options().as_ref().clone();
        let ledgers = [
            ledger(&self.key_prefix, CacheRole::Primary),
            ledger(&self.key_prefix, CacheRole::Secondary),
        ];
        let forget = async move {
            let mut conn = sqlx::PgConnection::connect_with(&options).await?;
            sqlx::query(
                "WITH gone AS (DELETE FROM cache_ledgers WHERE ledger = ANY($1)), \
                      writes AS (DELETE FROM cache_own_writes WHERE ledger = ANY($1)), \
                      readers AS (DELETE FROM cache_readers WHERE ledger = ANY($1)) \
                 DELETE FROM cache_repairs WHERE cache_prefix = ANY($1)",
            )
            .bind(&ledgers[..])
            .execute(&mut conn)
            .await
        };
        // Drop cannot wait on the test's runtime: a thread with its own runs the query.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async { tokio::time::timeout(Duration::from_secs(2), forget).await })
        })
        .join();
    }
}

/// The epoch `cache` holds, started if it has none: what a write installs with must be the
/// current epoch, or its high-water mark is not raised and the install counts as failed.
pub async fn current_epoch(
    cache: &product_size_service::cache::Cache,
) -> product_size_service::cache::Epoch {
    cache.start_epoch().await.unwrap();
    cache.read_meta().await.unwrap().expect("an epoch").epoch
}

/// Polls `check` until it holds, for up to `seconds`.
pub async fn eventually<F, Fut>(seconds: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn size(length_mm: i64) -> Value {
    json!({"length_mm": length_mm, "width_mm": 20, "height_mm": 30, "weight_g": 400, "size_label": "M"})
}

pub fn version_of(response_body: &Value) -> i64 {
    response_body["version"].as_i64().expect("a version")
}

pub fn read_source(response: &Response) -> String {
    response
        .headers()
        .get("x-read-source")
        .expect("X-Read-Source")
        .to_str()
        .unwrap()
        .to_owned()
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The service's binary, serving on a port of its own against the shared services: for tests
/// of what only a process shows (signals, its logs, exported traces).
pub struct ServiceProcess {
    pub child: tokio::process::Child,
    pub port: u16,
    /// `http://127.0.0.1:{port}`.
    pub base: String,
}

impl ServiceProcess {
    /// Migrates the primary, starts `product-size serve` with read and write tokens, the
    /// shared primary, Redis and `extra` environment (an empty value removes a variable),
    /// and waits until it answers. Its stderr is piped when `logs` is set, else discarded.
    pub async fn start(key_prefix: &str, extra: &[(&str, &str)], logs: bool) -> Self {
        // The binary does not migrate on its own; this may be the first test on the database.
        let primary = PgPool::connect(&primary_url()).await.unwrap();
        db::migrate(&primary).await.unwrap();
        primary.close().await;
        let port = free_port();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_product-size"));
        command
            .arg("serve")
            .env("DATABASE_URL", primary_url())
            .env_remove("DATABASE_REPLICA_URL")
            .env("REDIS_URL", shared_redis_url())
            .env("CACHE_KEY_PREFIX", format!("{key_prefix}{port}"))
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("API_READ_TOKENS", READ_TOKEN)
            .env("API_WRITE_TOKENS", WRITE_TOKEN)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(if logs {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .kill_on_drop(true);
        for (name, value) in extra {
            if value.is_empty() {
                command.env_remove(name);
            } else {
                command.env(name, value);
            }
        }
        let child = command.spawn().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "the service did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, port, base }
    }

    /// Sends SIGTERM and waits for a successful exit within `within`.
    pub async fn terminate(mut self, within: Duration) {
        let pid = self.child.id().unwrap().to_string();
        let killed = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(killed.success());
        let exit = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert!(exit.success(), "exit status {exit}");
    }
}
