//! Servers of a test's own, for tests that stop, pause or restart them: never the shared ones.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::free_port;

async fn run(command: &mut Command) {
    let output = command.output().await.expect("command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub async fn wait_port(port: u16, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
        != up
    {
        assert!(
            Instant::now() < deadline,
            "port {port} did not become {}",
            if up { "open" } else { "closed" }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `MONITOR` showed of the commands a Redis ran, as its lines (`<time> [<db> <client>]
/// "COMMAND" "arg" ...`, with `lua` for the client of a command a script ran).
pub struct Monitor {
    _child: Child,
    seen: Arc<Mutex<Vec<String>>>,
    port: u16,
}

impl Monitor {
    /// Every command run so far: a marker is sent after them and awaited, so none is missing.
    pub async fn lines(&self) -> Vec<String> {
        let marker = format!("monitor-marker-{:016x}", fastrand::u64(..));
        run(Command::new("redis-cli").args(["-p", &self.port.to_string(), "ECHO", &marker])).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let seen = self.seen.lock().unwrap();
                if let Some(end) = seen.iter().position(|line| line.contains(&marker)) {
                    return seen[..end].to_vec();
                }
            }
            assert!(Instant::now() < deadline, "MONITOR never showed {marker}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Commands named `command` that a client sent (not a script) naming a key of one of
    /// `skus`: what a test's own requests made Redis do, whatever else runs beside them.
    pub async fn client_calls(&self, command: &str, skus: &[String]) -> usize {
        self.client_commands(command, skus).await.len()
    }

    /// The lines of those commands.
    pub async fn client_commands(&self, command: &str, skus: &[String]) -> Vec<String> {
        let command = format!("\"{}\"", command.to_ascii_uppercase());
        let tags: Vec<String> = skus.iter().map(|sku| format!("{{{sku}}}")).collect();
        self.lines()
            .await
            .into_iter()
            .filter(|line| !line.contains(" lua] ") && line.to_ascii_uppercase().contains(&command))
            .filter(|line| tags.iter().any(|tag| line.contains(tag.as_str())))
            .collect()
    }
}

/// A redis-server on a free port, stopped when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    persistence: Persistence,
}

/// What a restart brings back.
enum Persistence {
    Nothing,
    /// Every command, from an append-only file in this folder.
    AppendOnly(PathBuf),
    /// The last snapshot taken with [`OwnRedis::snapshot`], from this folder.
    Snapshot(PathBuf),
}

impl Persistence {
    fn dir(&self) -> Option<&PathBuf> {
        match self {
            Self::Nothing => None,
            Self::AppendOnly(dir) | Self::Snapshot(dir) => Some(dir),
        }
    }
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pss-test-redis-{:016x}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl OwnRedis {
    /// Keeps nothing on disk: a restart comes back empty.
    pub async fn start() -> Self {
        Self::launch(Persistence::Nothing).await
    }

    /// Writes every command to an append-only file: a restart comes back with the old data.
    pub async fn start_persistent() -> Self {
        Self::launch(Persistence::AppendOnly(scratch_dir())).await
    }

    /// Saves only when told ([`OwnRedis::snapshot`]): a restart comes back with the data of the
    /// last snapshot, older than what Redis held when it stopped.
    pub async fn start_with_snapshots() -> Self {
        Self::launch(Persistence::Snapshot(scratch_dir())).await
    }

    async fn launch(persistence: Persistence) -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            persistence,
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port: empty, or with its append-only file replayed.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        match &self.persistence {
            Persistence::AppendOnly(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            Persistence::Snapshot(dir) => command.args(["--appendonly", "no", "--dir"]).arg(dir),
            Persistence::Nothing => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        wait_port(self.port, true).await;
    }

    /// Saves a snapshot (`SAVE`) that the next restart loads.
    pub async fn snapshot(&self) {
        assert!(matches!(self.persistence, Persistence::Snapshot(_)));
        run(Command::new("redis-cli").args(["-p", &self.port.to_string(), "SAVE"])).await;
    }

    /// Runs one command through `redis-cli`, which must succeed; its output, as text.
    pub async fn command(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .expect("redis-cli runs");
        assert!(output.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts watching every command Redis runs (`MONITOR`), from the moment this returns.
    pub async fn monitor(&self) -> Monitor {
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "MONITOR"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-cli runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Redis answers OK once the connection monitors.
        let first = lines.next_line().await.unwrap();
        assert_eq!(first.as_deref(), Some("OK"), "MONITOR did not start");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let collected = seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Monitor {
            _child: child,
            seen,
            port: self.port,
        }
    }

    /// `INFO section`, as text.
    pub async fn info(&self, section: &str) -> String {
        self.command(&["INFO", section]).await
    }

    /// `CONFIG SET name value`.
    pub async fn configure(&self, name: &str, value: &str) {
        self.command(&["CONFIG", "SET", name, value]).await;
    }

    /// SIGKILL: nothing is flushed or saved on the way out.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
            wait_port(self.port, false).await;
        }
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub async fn pause(&self) {
        self.signal("-STOP").await;
    }

    pub async fn resume(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        run(Command::new("kill").args([signal, &pid.to_string()])).await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(dir) = self.persistence.dir() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn postgres_bin(tool: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    dirs.sort();
    dirs.pop().expect("a PostgreSQL version").join(tool)
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Runs a PostgreSQL tool as the `postgres` user (tests may run as root).
fn as_postgres(tool: &str) -> Command {
    run_as_postgres(postgres_bin(tool))
}

/// Runs `program` as the `postgres` user (tests may run as root).
fn run_as_postgres(program: PathBuf) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Adds `lines` to the cluster's `postgresql.auto.conf` (read when it starts).
fn append_conf(dir: &Path, lines: &str) {
    let conf = dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str(lines);
    std::fs::write(&conf, text).unwrap();
}

/// A PostgreSQL cluster in a temporary folder on a free port, removed when dropped.
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
}

impl OwnPostgres {
    /// A new primary with the `product_sizes` database.
    pub async fn primary() -> Self {
        Self::primary_with_tls(None).await
    }

    /// A new primary that also takes TLS (`ssl = on`) with this certificate and key.
    pub async fn primary_with_tls(certificate: Option<(&Path, &Path)>) -> Self {
        let cluster = Self::new();
        run(as_postgres("initdb")
            .args([
                "-D",
                cluster.dir(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ])
            .stdout(Stdio::null()))
        .await;
        // Standbys made from it stream without slots (see scripts/services.sh).
        append_conf(&cluster.dir, "wal_keep_size = 256MB\n");
        if let Some((cert, key)) = certificate {
            for (from, to) in [(cert, "server.pem"), (key, "server.key")] {
                let to = cluster.dir.join(to);
                std::fs::copy(from, &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
                // The server runs as `postgres` and refuses a key others can read.
                run(Command::new("chown")
                    .arg("--reference")
                    .arg(&cluster.dir)
                    .arg(&to))
                .await;
            }
            append_conf(
                &cluster.dir,
                "ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
            );
        }
        cluster.start().await;
        run(Command::new(postgres_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                "postgres",
                "-qc",
            ])
            .arg("CREATE DATABASE product_sizes"))
        .await;
        cluster
    }

    /// A streaming replica of the server on `primary_port`, applying WAL `delay` late.
    pub async fn replica_of(primary_port: u16, delay: Option<&str>) -> Self {
        let cluster = Self::new();
        run(as_postgres("pg_basebackup").args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            "postgres",
            "-D",
            cluster.dir(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]))
        .await;
        if let Some(delay) = delay {
            append_conf(
                &cluster.dir,
                &format!("recovery_min_apply_delay = '{delay}'\n"),
            );
        }
        cluster.start().await;
        cluster
    }

    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("pss-test-pg-{:016x}", fastrand::u64(..)));
        Self {
            port: free_port(),
            dir,
        }
    }

    fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/product_sizes", self.port)
    }

    pub async fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir()
        );
        run(as_postgres("pg_ctl")
            .args([
                "-D",
                self.dir(),
                "-l",
                &format!("{}/server.log", self.dir()),
                "-w",
                "-o",
                &options,
                "start",
            ])
            .stdout(Stdio::null()))
        .await;
        wait_port(self.port, true).await;
    }

    /// Ends recovery: this standby becomes a primary on a new timeline.
    pub async fn promote(&self) {
        run(as_postgres("pg_ctl")
            .args(["-D", self.dir(), "-w", "promote"])
            .stdout(Stdio::null()))
        .await;
    }

    /// Waits until this standby has replayed everything `primary` has written so far.
    pub async fn caught_up_with(&self, primary: &OwnPostgres) {
        let primary = sqlx::PgPool::connect(&primary.url()).await.unwrap();
        let standby = sqlx::PgPool::connect(&self.url()).await.unwrap();
        let target: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&primary)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&target)
            .fetch_one(&standby)
            .await
            .unwrap()
        {
            assert!(Instant::now() < deadline, "standby did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        primary.close().await;
        standby.close().await;
    }

    /// Stops at once, like a crash of the server.
    pub async fn stop(&self) {
        run(as_postgres("pg_ctl")
            .args(["-D", self.dir(), "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null()))
        .await;
        wait_port(self.port, false).await;
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(postgres_bin("pg_ctl"))
            .args(["-D", self.dir(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn spawn_redis(args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server is installed")
}

async fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli is installed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn eventually_output(port: u16, args: &[&str], expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis_cli(port, args).await.contains(expected) {
        assert!(
            Instant::now() < deadline,
            "redis on {port} never answered {args:?} with {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis Cluster of three masters (no replicas) on free ports, stopped when dropped. Each
/// master saves a snapshot of its own when told to ([`Self::snapshot_node`]) and loads it when
/// restarted.
pub struct OwnRedisCluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    dir: PathBuf,
}

impl OwnRedisCluster {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("pss-test-cluster-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            ports,
            dir,
        };
        for port in cluster.ports.clone() {
            let node = cluster.spawn_node(port).await;
            cluster.nodes.push(node);
        }
        for port in &cluster.ports {
            wait_port(*port, true).await;
        }
        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        run(Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null()))
        .await;
        cluster.wait_healthy().await;
        cluster
    }

    async fn spawn_node(&self, port: u16) -> Child {
        let conf = format!("nodes-{port}.conf");
        let snapshot = format!("dump-{port}.rdb");
        let port = port.to_string();
        spawn_redis(&[
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &conf,
            "--cluster-node-timeout",
            "2000",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dbfilename",
            &snapshot,
            "--dir",
            self.dir.to_str().unwrap(),
        ])
        .await
    }

    async fn wait_healthy(&self) {
        for port in &self.ports {
            eventually_output(*port, &["cluster", "info"], "cluster_state:ok").await;
        }
    }

    pub fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.ports[0], self.ports[1], self.ports[2]
        )
    }

    /// The port of the master that holds `key`'s slot.
    pub async fn node_holding(&self, key: &str) -> u16 {
        for port in &self.ports {
            // Any other master answers with a MOVED redirection.
            if !redis_cli(*port, &["EXISTS", key]).await.contains("MOVED") {
                return *port;
            }
        }
        panic!("no master holds {key}")
    }

    /// Runs one command on one master and returns what `redis-cli` printed.
    pub async fn command_node(&self, port: u16, args: &[&str]) -> String {
        redis_cli(port, args).await
    }

    /// `SAVE` on one master: its next restart loads this snapshot.
    pub async fn snapshot_node(&self, port: u16) {
        run(Command::new("redis-cli").args(["-p", &port.to_string(), "SAVE"])).await;
    }

    /// SIGKILL one master and start it again on its port, with its cluster configuration and
    /// its last snapshot; returns once the cluster is healthy again.
    pub async fn restart_node(&mut self, port: u16) {
        let index = self.ports.iter().position(|p| *p == port).unwrap();
        let _ = self.nodes[index].kill().await;
        wait_port(port, false).await;
        self.nodes[index] = self.spawn_node(port).await;
        wait_port(port, true).await;
        self.wait_healthy().await;
    }
}

impl Drop for OwnRedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Sentinel-managed pair: a master, its replica and one sentinel, stopped when dropped.
pub struct OwnSentinel {
    sentinel_port: u16,
    _processes: Vec<Child>,
    dir: PathBuf,
}

impl OwnSentinel {
    pub const SERVICE: &'static str = "pss";

    pub async fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("pss-test-sentinel-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let (master, replica, sentinel) = (free_port(), free_port(), free_port());
        // Replication writes an RDB file: keep it in the test's folder.
        let base = [
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.to_str().unwrap(),
        ];
        let master_port = master.to_string();
        let mut processes =
            vec![spawn_redis(&[&["--port", &master_port][..], &base].concat()).await];
        wait_port(master, true).await;
        processes.push(
            spawn_redis(
                &[
                    &[
                        "--port",
                        &replica.to_string(),
                        "--replicaof",
                        "127.0.0.1",
                        &master_port,
                    ][..],
                    &base,
                ]
                .concat(),
            )
            .await,
        );
        wait_port(replica, true).await;
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\ndir {}\nsentinel monitor {} 127.0.0.1 {master} 1\n\
                 sentinel down-after-milliseconds {} 2000\nsentinel failover-timeout {} 10000\n",
                dir.display(),
                Self::SERVICE,
                Self::SERVICE,
                Self::SERVICE
            ),
        )
        .unwrap();
        processes.push(spawn_redis(&[conf.to_str().unwrap(), "--sentinel"]).await);
        wait_port(sentinel, true).await;
        eventually_output(replica, &["info", "replication"], "master_link_status:up").await;
        eventually_output(
            sentinel,
            &["sentinel", "get-master-addr-by-name", Self::SERVICE],
            &master_port,
        )
        .await;
        Self {
            sentinel_port: sentinel,
            _processes: processes,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.sentinel_port,
            Self::SERVICE
        )
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PgBouncer in transaction mode (`pool_mode = transaction`) in front of the server on
/// `server_port`, on a free port, with a configuration, log and pid file in a temporary folder
/// of its own; it runs as the `postgres` user and is stopped when dropped.
pub struct OwnPgBouncer {
    pub port: u16,
    dir: PathBuf,
}

impl OwnPgBouncer {
    /// `pool_size` server connections (`default_pool_size`) for every client.
    pub async fn start(server_port: u16, pool_size: u32) -> Self {
        let dir =
            std::env::temp_dir().join(format!("pss-test-pgbouncer-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let bouncer = Self {
            port: free_port(),
            dir,
        };
        let path = |name: &str| bouncer.dir.join(name).to_string_lossy().into_owned();
        std::fs::write(bouncer.dir.join("users.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            bouncer.dir.join("pgbouncer.ini"),
            format!(
                "[databases]\nproduct_sizes = host=127.0.0.1 port={server_port} dbname=product_sizes user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\n\
                 default_pool_size = {pool_size}\nmax_client_conn = 500\n\
                 logfile = {}\npidfile = {}\n",
                bouncer.port,
                path("users.txt"),
                path("pgbouncer.log"),
                path("pgbouncer.pid"),
            ),
        )
        .unwrap();
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&bouncer.dir))
            .await;
        }
        // `-d`: it forks into the background once it listens, and writes its pid file.
        run(run_as_postgres(PathBuf::from(pgbouncer_bin()))
            .arg("-d")
            .arg(path("pgbouncer.ini"))
            .stdout(Stdio::null()))
        .await;
        wait_port(bouncer.port, true).await;
        bouncer
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/product_sizes", self.port)
    }
}

/// Where Debian installs PgBouncer (`apt-get install pgbouncer`; `scripts/test.sh` does).
fn pgbouncer_bin() -> &'static str {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|path| Path::new(path).exists())
        .expect("PgBouncer is installed")
}

impl Drop for OwnPgBouncer {
    fn drop(&mut self) {
        // SIGKILL: the process this test started, found by its pid file; its connections
        // close with it.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
