//! Connections that cross a network: TLS to Redis and to PostgreSQL is real TLS, with the
//! server's certificate verified against the CA the deployment names.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use reqwest::StatusCode;
use tokio::process::{Child, Command};

use crate::helpers::{Options, Replica, TestApp, free_port, read_source, size};
use crate::processes::OwnPostgres;

/// A CA, a server certificate it signed for 127.0.0.1, and a second CA that signed nothing.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make() -> Self {
        let dir = std::env::temp_dir().join(format!("pss-test-tls-{:016x}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(status.success(), "openssl {args:?}");
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subject) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN={ca}"),
            );
            let mut args = vec!["req", "-x509", "-days", "1", "-subj", &subject];
            args.extend(new_key);
            args.extend(["-keyout", &key, "-out", &pem]);
            openssl(&args);
        }
        let mut request = vec!["req", "-subj", "/CN=127.0.0.1"];
        request.extend(new_key);
        request.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&request);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's redis-server, answering TLS only (no plaintext port).
struct TlsRedis {
    port: u16,
    _server: Child,
}

impl TlsRedis {
    async fn start(certificates: &Certificates) -> Self {
        let port = free_port();
        let path = |name| certificates.path(name);
        let server = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--tls-port")
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(path("server.pem"))
            .arg("--tls-key-file")
            .arg(path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(path("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        crate::processes::wait_port(port, true).await;
        Self {
            port,
            _server: server,
        }
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

fn over_tls(redis: &TlsRedis, ca: &Path) -> Options {
    Options {
        redis_url: Some(redis.url()),
        redis_tls_ca_file: Some(ca.to_owned()),
        ..Options::default()
    }
}

#[tokio::test]
async fn a_rediss_url_is_served_over_tls_verified_against_the_configured_ca() {
    let certificates = Certificates::make();
    let redis = TlsRedis::start(&certificates).await;

    let app = TestApp::spawn_with(over_tls(&redis, &certificates.path("ca.pem"))).await;
    let sku = app.sku("tls");
    assert_eq!(app.put(&sku, &size(1)).await.status(), StatusCode::CREATED);
    // The server speaks TLS only: a hit proves the cache was reached over TLS.
    crate::helpers::eventually(30, "the SKU is served from Redis over TLS", || async {
        read_source(&app.get(&sku).await) == "cache"
    })
    .await;

    // A certificate the configured CA did not sign is refused: the cache is not used at all.
    let distrusting =
        TestApp::spawn_with(over_tls(&redis, &certificates.path("other-ca.pem"))).await;
    for _ in 0..3 {
        let read = distrusting.get(&sku).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert_ne!(read_source(&read), "cache");
    }
    assert_eq!(distrusting.readiness().await["cache"], "down");
}

#[tokio::test]
async fn a_primary_url_with_sslmode_verify_full_is_served_over_verified_tls() {
    let certificates = Certificates::make();
    let (cert, key) = (
        certificates.path("server.pem"),
        certificates.path("server.key"),
    );
    let primary = OwnPostgres::primary_with_tls(Some((&cert, &key))).await;
    let verified = |ca: &str| Options {
        database_url: format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            primary.url(),
            certificates.path(ca).display()
        ),
        replica: Replica::None,
        ..Options::default()
    };

    let app = TestApp::spawn_with(verified("ca.pem")).await;
    let sku = app.sku("pg-tls");
    assert_eq!(app.put(&sku, &size(1)).await.status(), StatusCode::CREATED);
    let (connections, all_tls): (i64, Option<bool>) = sqlx::query_as(
        "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity AS a \
         JOIN pg_stat_ssl AS s USING (pid) WHERE a.application_name = 'product-size-service'",
    )
    .fetch_one(&app.primary)
    .await
    .unwrap();
    assert!(connections > 0);
    assert_eq!(all_tls, Some(true), "every service connection uses TLS");

    // A server certificate the named root did not sign: nothing connects, writes are 503.
    let distrusting = TestApp::spawn_with(verified("other-ca.pem")).await;
    let refused = distrusting.put(&distrusting.sku("pg-tls"), &size(1)).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
}
