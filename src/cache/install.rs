//! Installing versioned values: the compare-and-set pipeline shared by writes, fills,
//! repairs, warm-up and audit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::prelude::Value;
use fred::types::CustomCommand;
use fred::types::scripts::Script;

use super::entry::{self, Entry, Epoch};
use super::epochs::mark_raised;
use super::fills::Fill;
use super::{Cache, CacheError};
use crate::domain::{Lsn, StoredSize};

/// One versioned value to install with compare-and-set.
#[derive(Debug, Clone)]
pub struct Install<'a> {
    pub sku: &'a str,
    pub version: i64,
    /// Every write whose consistency token is at or below this is included in `version`
    /// (see [`super::Entry::verified`]).
    pub verified: Lsn,
    /// `None` for a tombstone or "not found".
    pub body: Option<Bytes>,
}

impl<'a> Install<'a> {
    /// A stored row, read (or written) where every token up to `verified` was visible.
    pub fn row(row: &'a StoredSize, verified: Lsn) -> Self {
        Self {
            sku: &row.sku,
            version: row.version,
            verified,
            body: row.to_body(),
        }
    }
}

impl Cache {
    /// Installs values read from the database, each only if nothing newer is cached or fenced.
    /// Returns how many were installed.
    pub async fn fill(&self, items: &[Install<'_>], epoch: &Epoch) -> Result<usize, CacheError> {
        let stamping = Stamping {
            epoch,
            written_at: None,
            ttl: None,
        };
        self.install_all(items, stamping).await
    }

    /// Installs one value read from the database, unless nothing newer is cached or fenced,
    /// or `deadline` passed first. Concurrent fills share one install call ([`super::fills`]).
    pub async fn fill_one(
        &self,
        item: &Install<'_>,
        epoch: &Epoch,
        deadline: Instant,
    ) -> Result<(), CacheError> {
        if let Some(fills) = &self.fills {
            return fills
                .fill(Fill {
                    sku: item.sku.to_owned(),
                    version: item.version,
                    verified: item.verified,
                    body: item.body.clone(),
                    epoch: epoch.clone(),
                    deadline,
                })
                .await;
        }
        if Instant::now() < deadline {
            self.fill(std::slice::from_ref(item), epoch).await?;
        }
        Ok(())
    }

    /// Invalidates `items` at their versions (fence raised, older entries deleted) and raises
    /// the high-water mark to their commit's position, for a secondary cluster whose primary
    /// missed a write under the `delete` failover policy.
    pub async fn invalidate(
        &self,
        items: &[Install<'_>],
        epoch: &Epoch,
        lsn: Lsn,
    ) -> Result<(), CacheError> {
        let client = self.client()?;
        for item in items {
            let keys = vec![self.entry_key(item.sku), self.fence_key(item.sku)];
            let args = vec![
                item.version.to_string(),
                epoch.as_str().to_owned(),
                self.settings.fence_ttl.as_millis().to_string(),
            ];
            self.guarded(
                self.invalidate
                    .evalsha_with_reload::<i64, _, _>(&client, keys, args),
            )
            .await?;
        }
        self.raise_hwm(lsn).await
    }

    /// Installs what writes committed (with their fences) and raises the high-water mark to
    /// the commit's WAL position, in one pipeline.
    pub async fn record_writes(
        &self,
        items: &[Install<'_>],
        epoch: &Epoch,
        lsn: Lsn,
    ) -> Result<usize, CacheError> {
        let stamping = Stamping {
            epoch,
            written_at: Some(lsn),
            ttl: None,
        };
        self.install_all(items, stamping).await
    }

    /// Like [`Cache::record_writes`], with entries that live only `ttl` (the `short-ttl`
    /// failover policy of a secondary cluster).
    pub async fn record_writes_briefly(
        &self,
        items: &[Install<'_>],
        epoch: &Epoch,
        lsn: Lsn,
        ttl: Duration,
    ) -> Result<usize, CacheError> {
        let stamping = Stamping {
            epoch,
            written_at: Some(lsn),
            ttl: Some(ttl),
        };
        self.install_all(items, stamping).await
    }

    async fn install_all(
        &self,
        items: &[Install<'_>],
        stamping: Stamping<'_>,
    ) -> Result<usize, CacheError> {
        if items.is_empty() && stamping.written_at.is_none() {
            return Ok(0);
        }
        // A script touching many keys would cross slots in a Cluster.
        if items.len() > 1 && !self.clustered {
            return self.guarded(self.install_in_chunks(items, stamping)).await;
        }
        self.guarded(self.install_all_unguarded(items, stamping))
            .await
    }

    /// Installs in calls of `CHUNK` items, each run by Redis as one script; then, for writes,
    /// raises the high-water mark to their commit's position.
    async fn install_in_chunks(
        &self,
        items: &[Install<'_>],
        stamping: Stamping<'_>,
    ) -> Result<usize, CacheError> {
        let client = self.client()?;
        let mut installed = 0;
        for chunk in items.chunks(CHUNK) {
            let mut keys = Vec::with_capacity(chunk.len() * 2);
            let mut args = Vec::with_capacity(chunk.len() * 4 + 2);
            args.extend(self.install_header(stamping));
            for item in chunk {
                keys.push(self.entry_key(item.sku));
                keys.push(self.fence_key(item.sku));
                args.extend(self.install_item(item, stamping));
            }
            let count: i64 = self
                .install
                .evalsha_with_reload(&client, keys, args)
                .await?;
            installed += usize::try_from(count).unwrap_or(0);
        }
        if let Some(lsn) = stamping.written_at {
            self.raise_hwm_of(stamping.epoch, lsn).await?;
        }
        Ok(installed)
    }

    async fn install_all_unguarded(
        &self,
        items: &[Install<'_>],
        stamping: Stamping<'_>,
    ) -> Result<usize, CacheError> {
        let client = &self.client()?;
        let written_at = stamping.written_at;
        let results = self
            .run_installs(client, items, stamping, written_at)
            .await?;
        let no_script = |r: &Result<i64, CacheError>| {
            r.as_ref()
                .is_err_and(|e| e.details().starts_with("NOSCRIPT"))
        };
        if !results.iter().any(no_script) {
            return count_installed(results, items.len(), written_at.is_some());
        }
        // Some calls found the script missing (a restarted or flushed-scripts Redis). Others in
        // the same pipeline may have run (another client can load the same script meanwhile):
        // run again only what did not, and count both runs.
        self.install.load(client).await?;
        self.bump.load(client).await?;
        let again: Vec<Install<'_>> = items
            .iter()
            .zip(&results)
            .filter(|(_, r)| no_script(r))
            .map(|(item, _)| item.clone())
            .collect();
        // A write retried without its bump (which ran) is still a write: it sets its fence.
        let bump_again = written_at.filter(|_| results.get(items.len()).is_some_and(no_script));
        let mut results = results;
        let bumped = match (written_at, bump_again) {
            (Some(_), None) => Some(results.pop()),
            _ => None,
        };
        let mut installed = 0;
        for result in results
            .into_iter()
            .take(items.len())
            .filter(|r| !no_script(r))
        {
            installed += usize::from(result? == 1);
        }
        if let Some(bumped) = bumped {
            mark_landed(bumped)?;
        }
        let retried = self
            .run_installs(client, &again, stamping, bump_again)
            .await?;
        Ok(installed + count_installed(retried, again.len(), bump_again.is_some())?)
    }

    /// One pipeline: an install per item (with its fence for a write), then the high-water
    /// mark raised to `bump` if given.
    async fn run_installs(
        &self,
        client: &Client,
        items: &[Install<'_>],
        stamping: Stamping<'_>,
        bump: Option<Lsn>,
    ) -> Result<Vec<Result<i64, CacheError>>, CacheError> {
        let pipeline = client.pipeline();
        for item in items {
            let (keys, args) = self.install_call(item, stamping);
            let _: () = pipeline
                .custom(evalsha(&keys[0]), script_args(&self.install, keys, args))
                .await?;
        }
        if let Some(lsn) = bump {
            let key = self.meta_key();
            let args = vec![
                Bytes::from(entry::pad_lsn(lsn)),
                Bytes::from(stamping.epoch.as_str().to_owned()),
            ];
            let _: () = pipeline
                .custom(evalsha(&key), script_args(&self.bump, vec![key], args))
                .await?;
        }
        Ok(pipeline.try_all().await)
    }

    /// KEYS and ARGV of the install script for one item.
    fn install_call(
        &self,
        item: &Install<'_>,
        stamping: Stamping<'_>,
    ) -> ([String; 2], Vec<Bytes>) {
        let keys = [self.entry_key(item.sku), self.fence_key(item.sku)];
        let mut args = Vec::with_capacity(6);
        args.extend(self.install_header(stamping));
        args.extend(self.install_item(item, stamping));
        (keys, args)
    }

    /// The install script's leading ARGV: the epoch, and the fence TTL (`0`: a fill).
    fn install_header(&self, stamping: Stamping<'_>) -> [Bytes; 2] {
        let fence_ttl = if stamping.is_write() {
            self.settings.fence_ttl.as_millis()
        } else {
            0
        };
        [
            Bytes::from(stamping.epoch.as_str().to_owned()),
            Bytes::from(fence_ttl.to_string()),
        ]
    }

    /// The install script's ARGV for one item: version, encoded entry, entry TTL, and the
    /// fence a write sets (empty for a fill).
    fn install_item(&self, item: &Install<'_>, stamping: Stamping<'_>) -> [Bytes; 4] {
        let epoch = stamping.epoch;
        let fence = if stamping.is_write() {
            Bytes::from(format!("{}|{}", item.version, epoch.as_str()))
        } else {
            Bytes::new()
        };
        [
            Bytes::from(item.version.to_string()),
            Entry::encode(item.version, epoch, item.verified, item.body.as_ref()),
            Bytes::from(self.entry_ttl(item, stamping.ttl).as_millis().to_string()),
            fence,
        ]
    }

    /// `ttl` if given; else a remembered "not found" lives briefly, an entry long (jittered).
    fn entry_ttl(&self, item: &Install<'_>, ttl: Option<Duration>) -> Duration {
        match (ttl, &item.body) {
            (Some(ttl), _) => ttl,
            (None, None) if item.version == 0 => self.settings.negative_ttl,
            (None, _) => entry::jittered(self.settings.entry_ttl),
        }
    }
}

/// What every install of one batch carries: the epoch it is stamped with, the position of the
/// commit a write's values come from (`None` for a fill), and a TTL to use instead of the
/// usual one.
#[derive(Clone, Copy)]
struct Stamping<'e> {
    epoch: &'e Epoch,
    written_at: Option<Lsn>,
    ttl: Option<Duration>,
}

impl Stamping<'_> {
    /// A write sets its fences; a fill sets none.
    fn is_write(&self) -> bool {
        self.written_at.is_some()
    }
}

/// Items per install script call: Redis runs a script to its end before serving
/// anyone else, so a call stays around a millisecond.
const CHUNK: usize = 100;

/// How many of the first `items` results installed their value. With `bumped`, the result
/// after them is the high-water mark's: a write whose mark was not raised (its meta key on
/// another master that failed, or the epoch ended meanwhile) failed, like one whose entry did
/// not land, since a reader that finds no fence relies on the mark.
fn count_installed(
    mut results: Vec<Result<i64, CacheError>>,
    items: usize,
    bumped: bool,
) -> Result<usize, CacheError> {
    if bumped {
        mark_landed(results.pop())?;
    }
    let mut installed = 0;
    for result in results.into_iter().take(items) {
        installed += usize::from(result? == 1);
    }
    Ok(installed)
}

/// The high-water mark script's result in a pipeline, as a result.
fn mark_landed(result: Option<Result<i64, CacheError>>) -> Result<(), CacheError> {
    match result {
        Some(Ok(answer)) => mark_raised(answer),
        Some(Err(error)) => Err(error),
        None => mark_raised(0),
    }
}

/// `EVALSHA` as a pipelined command, routed to the slot of its first key (fred's pipelines
/// have no Lua interface, and the default routing would hash the script's SHA).
fn evalsha(first_key: &str) -> CustomCommand {
    CustomCommand::new_static(
        "EVALSHA",
        Some(fred::util::redis_keyslot(first_key.as_bytes())),
        false,
    )
}

fn script_args(
    script: &Script,
    keys: impl IntoIterator<Item = String>,
    args: Vec<Bytes>,
) -> Vec<Value> {
    let keys: Vec<String> = keys.into_iter().collect();
    let mut values = Vec::with_capacity(2 + keys.len() + args.len());
    values.push(Value::from(script.sha1().clone()));
    values.push(Value::from(keys.len() as i64));
    values.extend(keys.into_iter().map(Value::from));
    values.extend(args.into_iter().map(Value::Bytes));
    values
}
