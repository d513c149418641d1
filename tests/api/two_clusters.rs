//! Two cache clusters (master/slave): the primary cache is killed in the middle of writes;
//! under either failover policy neither cluster may then serve a version older than
//! acknowledged.

use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config as RedisConfig, KeysInterface};
use product_size_service::config::{FailoverPolicy, SecondaryCache};
use reqwest::StatusCode;
use secrecy::SecretString;

use crate::helpers::{Options, TestApp, eventually, read_source, size, version_of};
use crate::processes::OwnRedis;
use crate::proxy::TcpProxy;

async fn client(redis: &OwnRedis) -> Client {
    let client = Builder::from_config(RedisConfig::from_url(&redis.url()).unwrap())
        .with_performance_config(|perf| perf.default_command_timeout = Duration::from_secs(2))
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// The version a cluster holds for `key`, if any.
async fn cached_version(client: &Client, key: &str) -> Option<i64> {
    let value: Option<String> = client.get(key).await.unwrap();
    value.map(|v| v.split('|').next().unwrap().parse().unwrap())
}

/// The WAL position an entry (`<version>|<epoch>|<verified>|<body>`) is proven at.
async fn verified_at(client: &Client, key: &str) -> u64 {
    let value: String = client.get(key).await.unwrap();
    value.split('|').nth(2).unwrap().parse().unwrap()
}

/// The WAL position an `X-Consistency-Token` names (16 hexadecimal digits).
fn lsn(token: &str) -> u64 {
    u64::from_str_radix(token, 16).unwrap()
}

/// The high-water mark in a cluster's meta key (`<epoch>|<zero-padded position>`).
async fn high_water_mark(client: &Client, key_prefix: &str) -> u64 {
    let meta: String = client.get(format!("{key_prefix}:meta")).await.unwrap();
    meta.split('|').nth(1).unwrap().parse().unwrap()
}

fn with_caches(primary: &OwnRedis, secondary: &OwnRedis, policy: FailoverPolicy) -> Options {
    Options {
        redis_url: Some(primary.url()),
        secondary_cache: Some(SecondaryCache {
            url: SecretString::from(secondary.url()),
            policy,
            failover_ttl: Duration::from_secs(300),
        }),
        ..Options::default()
    }
}

async fn primary_cache_killed_mid_write(policy: FailoverPolicy) {
    let mut primary_cache = OwnRedis::start_persistent().await;
    let secondary_cache = OwnRedis::start().await;
    let app = TestApp::spawn_with(with_caches(&primary_cache, &secondary_cache, policy)).await;
    let secondary = client(&secondary_cache).await;
    let sku = app.sku("two");
    let key = app.entry_key(&sku);
    assert!(app.put(&sku, &size(1)).await.status().is_success());
    // A Redis just started may miss the write's own update; its repair follows shortly.
    eventually(30, "the write is served from the cache", || async {
        read_source(&app.get(&sku).await) == "cache"
    })
    .await;
    assert_eq!(
        cached_version(&secondary, &key).await,
        Some(1),
        "writes reach the secondary"
    );

    primary_cache.stop().await;
    let written = app.put(&sku, &size(2)).await;
    assert_eq!(written.status(), StatusCode::OK);
    let token = lsn(written.headers()["x-consistency-token"].to_str().unwrap());
    assert!(
        high_water_mark(&secondary, &app.key_prefix).await >= token,
        "the secondary's high-water mark covers the write"
    );
    match policy {
        // Invalidated: its fence raised and the older entry gone. The repair worker may have
        // put the new version there since (each cache is repaired on its own), never the old.
        FailoverPolicy::Delete => {
            assert_eq!(
                cached_version(&secondary, &format!("{key}:fence")).await,
                Some(2)
            );
            let entry = cached_version(&secondary, &key).await;
            assert!(matches!(entry, None | Some(2)), "entry at {entry:?}");
        }
        FailoverPolicy::ShortTtl => {
            assert_eq!(cached_version(&secondary, &key).await, Some(2));
            let ttl: i64 = secondary.pttl(&key).await.unwrap();
            // The write's own install is stamped before its commit, below its token; a repair
            // since (due once the record is 2 s old) stamps a later position and gives the
            // entry an ordinary TTL, which is right: it was read from the primary.
            if verified_at(&secondary, &key).await < token {
                assert!(ttl > 0 && ttl <= 300_000, "short TTL, got {ttl} ms");
            }
        }
    }
    for _ in 0..3 {
        let read = app.get(&sku).await;
        assert_eq!(version_of(&read.json().await.unwrap()), 2);
    }

    // The primary cache comes back from its append-only file, holding version 1.
    primary_cache.restart().await;
    for _ in 0..3 {
        let read = app.get(&sku).await;
        assert_eq!(version_of(&read.json().await.unwrap()), 2);
    }
    let primary = client(&primary_cache).await;
    eventually(30, "the primary cache is repaired", || async {
        cached_version(&primary, &key).await == Some(2)
    })
    .await;
    assert_eq!(
        cached_version(&secondary, &key).await,
        Some(2),
        "the secondary was repaired too"
    );
    // The instance forgets the SKU's pending repair just after applying it: until then it
    // reads the primary, which is also fresh.
    eventually(30, "reads are served from the cache again", || async {
        let read = app.get(&sku).await;
        let source = read_source(&read);
        assert_eq!(version_of(&read.json().await.unwrap()), 2);
        source == "cache"
    })
    .await;
    primary.quit().await.unwrap();
}

#[tokio::test]
async fn with_the_delete_policy_neither_cluster_serves_stale_data_when_the_primary_cache_dies() {
    primary_cache_killed_mid_write(FailoverPolicy::Delete).await;
}

#[tokio::test]
async fn with_the_short_ttl_policy_neither_cluster_serves_stale_data_when_the_primary_cache_dies() {
    primary_cache_killed_mid_write(FailoverPolicy::ShortTtl).await;
}

#[tokio::test]
async fn a_write_the_secondary_missed_is_repaired_there_while_the_primary_cache_is_down() {
    let mut primary_cache = OwnRedis::start().await;
    let secondary_cache = OwnRedis::start().await;
    let secondary_link = TcpProxy::to(secondary_cache.port).await;
    let mut options = with_caches(&primary_cache, &secondary_cache, FailoverPolicy::Delete);
    if let Some(secondary) = &mut options.secondary_cache {
        secondary.url = SecretString::from(secondary_link.url());
    }
    let mut writer = TestApp::spawn_with(options.clone()).await;
    let reader = writer.sibling(options).await;
    let secondary = client(&secondary_cache).await;
    let sku = writer.sku("missed");
    let key = writer.entry_key(&sku);
    // Shows when the reader serves from the secondary.
    let probe = writer.sku("probe");
    for sku in [&sku, &probe] {
        assert!(writer.put(sku, &size(1)).await.status().is_success());
    }
    eventually(30, "the writes reach the secondary", || async {
        cached_version(&secondary, &key).await == Some(1)
            && cached_version(&secondary, &writer.entry_key(&probe)).await == Some(1)
    })
    .await;

    // The secondary never sees version 2; the writer goes away owing it, then the primary
    // cache dies and every read falls back to the secondary, which still holds version 1.
    secondary_link.blackhole();
    assert_eq!(writer.put(&sku, &size(2)).await.status(), StatusCode::OK);
    writer.stop().await;
    primary_cache.stop().await;
    secondary_link.restore();
    eventually(30, "the reader serves from the secondary", || async {
        read_source(&reader.get(&probe).await) == "cache"
    })
    .await;

    for _ in 0..5 {
        let read = reader.get(&sku).await;
        assert_eq!(
            version_of(&read.json().await.unwrap()),
            2,
            "served the version the secondary missed"
        );
    }
    eventually(30, "the secondary is repaired", || async {
        cached_version(&secondary, &key).await == Some(2)
    })
    .await;
    eventually(30, "reads are served from the secondary again", || async {
        let read = reader.get(&sku).await;
        let source = read_source(&read);
        assert_eq!(version_of(&read.json().await.unwrap()), 2);
        source == "cache"
    })
    .await;
}
