//! Servers of a test's own, for tests that stop, pause or restart them: never the shared ones.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

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

async fn wait_port(port: u16, up: bool) {
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

/// A redis-server on a free port, stopped when dropped.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
    /// With an append-only file here, a restart brings the data back.
    persistent_dir: Option<PathBuf>,
}

impl OwnRedis {
    /// Keeps nothing on disk: a restart comes back empty.
    pub async fn start() -> Self {
        Self::launch(None).await
    }

    /// Writes every command to an append-only file: a restart comes back with the old data.
    pub async fn start_persistent() -> Self {
        let dir = std::env::temp_dir().join(format!("pss-test-redis-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        Self::launch(Some(dir)).await
    }

    async fn launch(persistent_dir: Option<PathBuf>) -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            persistent_dir,
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
        match &self.persistent_dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        wait_port(self.port, true).await;
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
        if let Some(dir) = &self.persistent_dir {
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

/// Runs a PostgreSQL tool as the `postgres` user (tests may run as root).
fn as_postgres(tool: &str) -> Command {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if is_root {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(postgres_bin(tool));
        command
    } else {
        Command::new(postgres_bin(tool))
    }
}

/// A PostgreSQL cluster in a temporary folder on a free port, removed when dropped.
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
}

impl OwnPostgres {
    /// A new primary with the `product_sizes` database.
    pub async fn primary() -> Self {
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
            let conf = cluster.dir.join("postgresql.auto.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(&format!("recovery_min_apply_delay = '{delay}'\n"));
            std::fs::write(&conf, text).unwrap();
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
