//! Migrations applied to a database that already holds data, as an upgrade applies them.

use std::path::{Path, PathBuf};

use sqlx::migrate::Migrator;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};

use crate::helpers::primary_url;

/// The first migration of change capture (docs/consistency.md, "Writers other than the
/// service"); everything before it is what the previous release ran.
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

/// What `ledger` is owed per write transaction: (transaction, SKUs, versions).
async fn own_writes(pool: &PgPool, ledger: &str) -> Vec<(i64, Vec<String>, Vec<i64>)> {
    sqlx::query_as(
        "SELECT xact, skus, versions FROM cache_own_writes WHERE ledger = $1 ORDER BY xact",
    )
    .bind(ledger)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The per-SKU records of `ledger`: (SKU, version, own write).
async fn records(pool: &PgPool, ledger: &str) -> Vec<(String, i64, bool)> {
    sqlx::query_as(
        "SELECT sku, version, own_write FROM cache_repairs WHERE cache_prefix = $1 ORDER BY sku",
    )
    .bind(ledger)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn own_writes_are_recorded_once_per_transaction_and_the_previous_release_keeps_its_records() {
    let database = Database::create().await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    product_size_service::db::migrate(&pool).await.unwrap();
    sqlx::query("SELECT follow_cache_ledgers('{other}')")
        .execute(&pool)
        .await
        .unwrap();

    // This release's writer: two statements in one transaction, for its two caches.
    // (Connections of their own: a setting would stay with a pooled one.)
    let mut writer = PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("SELECT set_config('product_size.own_ledgers', 'mine mine2', false)")
        .execute(&mut writer)
        .await
        .unwrap();
    let mut tx = writer.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO product_sizes (sku, length_mm, width_mm, height_mm, weight_g) \
         VALUES ('O1', 1, 2, 3, 4), ('O2', 1, 2, 3, 4)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("UPDATE product_sizes SET weight_g = 5 WHERE sku = 'O1'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let xact: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let skus = |skus: &[&str]| skus.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let written = vec![(xact, skus(&["O1", "O2", "O1"]), vec![1, 1, 2])];
    assert_eq!(
        own_writes(&pool, "mine").await,
        written,
        "one row per transaction"
    );
    assert_eq!(own_writes(&pool, "mine2").await, written);
    assert!(records(&pool, "mine").await.is_empty());
    assert_eq!(
        records(&pool, "other").await,
        vec![("O1".to_owned(), 2, false), ("O2".to_owned(), 1, false)],
        "a cache the writer does not update still gets a record per SKU"
    );

    // An instance of the previous release names its caches in `product_size.ledgers`.
    let mut previous = PgConnection::connect(&database.url).await.unwrap();
    sqlx::raw_sql(
        "SELECT set_config('product_size.ledgers', 'old', false); \
         UPDATE product_sizes SET weight_g = 6 WHERE sku = 'O2';",
    )
    .execute(&mut previous)
    .await
    .unwrap();
    assert_eq!(
        records(&pool, "old").await,
        vec![("O2".to_owned(), 2, true)]
    );
    assert!(own_writes(&pool, "old").await.is_empty());

    // Handing over: nothing young unless its transaction is named; a newer record stays.
    sqlx::query("INSERT INTO cache_repairs (cache_prefix, sku, version, own_write) VALUES ('mine', 'O1', 5, false)")
        .execute(&pool)
        .await
        .unwrap();
    let hand_over = |ledger: &'static str, xacts: Vec<i64>, older_than: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT hand_over_own_writes($1, $2, $3::interval)")
                .bind(ledger)
                .bind(xacts)
                .bind(older_than)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(hand_over("mine", vec![], "1 hour").await, 0);
    assert_eq!(hand_over("mine", vec![xact], "1 hour").await, 2);
    assert!(own_writes(&pool, "mine").await.is_empty());
    assert_eq!(
        records(&pool, "mine").await,
        vec![("O1".to_owned(), 5, false), ("O2".to_owned(), 1, true)]
    );
    assert_eq!(
        hand_over("mine2", vec![], "0 seconds").await,
        2,
        "an old one goes"
    );
    assert_eq!(
        records(&pool, "mine2").await,
        vec![("O1".to_owned(), 2, true), ("O2".to_owned(), 1, true)]
    );

    // A ledger nobody renews is forgotten with its own writes.
    sqlx::raw_sql(
        "SELECT set_config('product_size.own_ledgers', 'other gone', false); \
         UPDATE product_sizes SET weight_g = 7 WHERE sku = 'O1'; \
         SELECT forget_lapsed_cache_ledgers();",
    )
    .execute(&mut writer)
    .await
    .unwrap();
    writer.close().await.unwrap();
    previous.close().await.unwrap();
    assert!(own_writes(&pool, "gone").await.is_empty());
    assert_eq!(
        own_writes(&pool, "other").await.len(),
        1,
        "a followed ledger's stays"
    );
    pool.close().await;
}
