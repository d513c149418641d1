//! Migrations applied to a database that already holds data, as an upgrade applies them.

use std::path::{Path, PathBuf};

use sqlx::migrate::Migrator;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use crate::helpers::primary_url;

/// The first migration of change capture (SPEC.md C7); everything before it is what the
/// previous release ran.
const CAPTURE: &str = "20261202000001";

/// A database of its own on the shared primary, dropped at the end.
struct Database {
    name: String,
    url: String,
}

impl Database {
    async fn create() -> Self {
        let name = format!("migrations_{:08x}", fastrand::u32(..));
        let mut admin = PgConnection::connect(&primary_url()).await.unwrap();
        // The name is made here, of hex digits: nothing to inject.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let primary = primary_url();
        let (server, _) = primary.rsplit_once('/').expect("a database URL");
        Self {
            url: format!("{server}/{name}"),
            name,
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&primary_url()).await?;
                sqlx::raw_sql(AssertSqlSafe(statement))
                    .execute(&mut admin)
                    .await
            })
        })
        .join();
    }
}

/// A directory holding the migrations older than `version`, as the previous release had them.
fn migrations_before(version: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pss-migrations-{:08x}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")).unwrap()
    {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < version {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    dir
}

#[tokio::test]
async fn change_capture_migrates_a_table_that_holds_rows_and_owed_repairs() {
    let database = Database::create().await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    let previous = migrations_before(CAPTURE);
    Migrator::new(previous.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&previous).unwrap();
    sqlx::raw_sql(
        "INSERT INTO product_sizes (sku, length_mm, width_mm, height_mm, weight_g, version) \
         SELECT 'M' || i, i, 2, 3, 4, 7 FROM generate_series(1, 1000) AS i; \
         INSERT INTO cache_repairs (cache_prefix, sku, version) VALUES ('old', 'M1', 7);",
    )
    .execute(&pool)
    .await
    .unwrap();

    product_size_service::db::migrate(&pool).await.unwrap();

    let (rows, versions): (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(version)::bigint FROM product_sizes")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rows, versions), (1000, 7000), "rows kept as they were");
    let owed: Vec<(String, i64, bool)> =
        sqlx::query_as("SELECT sku, version, own_write FROM cache_repairs")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        owed,
        vec![("M1".to_owned(), 7, true)],
        "the old release's record stays its writer's"
    );

    // The table is followed from now on.
    sqlx::query("SELECT follow_cache_ledgers('{new}')")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE product_sizes SET weight_g = 5 WHERE sku = 'M2'")
        .execute(&pool)
        .await
        .unwrap();
    let captured: Vec<(String, String, i64, bool)> = sqlx::query_as(
        "SELECT cache_prefix, sku, version, own_write FROM cache_repairs WHERE sku = 'M2'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        captured,
        vec![("new".to_owned(), "M2".to_owned(), 8, false)]
    );
    pool.close().await;
}
