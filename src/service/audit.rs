//! Cache audit: compares every cached entry with the primary, and every stored row with the
//! cache, and optionally repairs what diverges (with the same compare-and-set as fills, and a
//! compare-and-delete for entries that name no stored row).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::instrument;

use super::{CacheJobError, SizeService};
use crate::cache::{Entry, Epoch, Install};
use crate::db::session::on_pool;
use crate::db::sizes::{fetch_on, fetch_page};
use crate::domain::{Lsn, StoredSize};

/// How many divergent SKUs a report lists.
const LISTED: usize = 20;
const PAGE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Divergence {
    /// Cached, but older than the stored row.
    Stale,
    /// Cached at the stored version, but stamped with an epoch that has ended (Redis lost
    /// its data, or the database changed history): readers ignore it, a fill or a warm-up
    /// replaces it.
    #[serde(rename = "dead_epoch")]
    DeadEpoch,
    /// Cached, but no such row is stored (or the entry is unreadable or newer than the row).
    Orphaned,
    /// Stored (and not deleted), but not cached.
    Missing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergent {
    pub sku: String,
    pub divergence: Divergence,
    pub cached_version: Option<i64>,
    pub stored_version: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Cached entries compared with the primary.
    pub checked: u64,
    pub agreeing: u64,
    pub stale: u64,
    /// Counted apart from `stale`: harmless to readers, only a lost hit.
    #[serde(default)]
    pub dead_epoch: u64,
    pub orphaned: u64,
    pub missing: u64,
    /// Divergences fixed (with `--repair`).
    pub repaired: u64,
    /// The first divergent SKUs.
    pub first_divergent: Vec<Divergent>,
}

impl AuditReport {
    pub fn divergent(&self) -> u64 {
        self.stale + self.dead_epoch + self.orphaned + self.missing
    }

    fn record(&mut self, found: Divergent) {
        match found.divergence {
            Divergence::Stale => self.stale += 1,
            Divergence::DeadEpoch => self.dead_epoch += 1,
            Divergence::Orphaned => self.orphaned += 1,
            Divergence::Missing => self.missing += 1,
        }
        if self.first_divergent.len() < LISTED {
            self.first_divergent.push(found);
        }
    }
}

impl SizeService {
    /// Audits the whole cache; with `repair`, fixes each divergence it finds.
    #[instrument(skip_all, fields(repair))]
    pub async fn audit_cache(&self, repair: bool) -> Result<AuditReport, CacheJobError> {
        let seen = self.cache.read_meta().await?;
        let meta = self
            .current_meta(&self.cache, seen)
            .await
            .ok_or(CacheJobError::NoEpoch)?;
        let mut report = AuditReport::default();

        // Every cached entry against the primary.
        let cached = self.cache.entry_skus().await?;
        for chunk in cached.chunks(PAGE) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            self.audit_cached(&refs, &meta.epoch, repair, &mut report)
                .await?;
        }

        // Every stored row against the cache.
        let mut after = String::new();
        loop {
            let page = on_pool!(self.db.sessions(), self.db.primary(), |conn| {
                fetch_page(conn, &after, PAGE as i32)
            })
            .await?;
            let Some(last) = page.rows.last() else { break };
            after = last.sku.clone();
            let live: Vec<&StoredSize> = page.rows.iter().filter(|r| !r.deleted).collect();
            let absent = self.uncached(live).await?;
            // Re-read so that a concurrent fill or write is not reported.
            let missing = self.uncached(absent).await?;
            for row in &missing {
                report.record(Divergent {
                    sku: row.sku.clone(),
                    divergence: Divergence::Missing,
                    cached_version: None,
                    stored_version: Some(row.version),
                });
            }
            if repair && !missing.is_empty() {
                let rows: Vec<StoredSize> = missing.into_iter().cloned().collect();
                report.repaired += self.install_rows(&rows, &meta.epoch).await? as u64;
            }
        }
        self.publish_audit(&report).await;
        Ok(report)
    }

    async fn audit_cached(
        &self,
        skus: &[&str],
        epoch: &Epoch,
        repair: bool,
        report: &mut AuditReport,
    ) -> Result<(), CacheJobError> {
        let raw = self.cache.raw_entries(skus).await?;
        let rows = self.stored_rows(skus).await?;
        let suspects = suspects_among(skus, raw, &rows, epoch, report);
        if suspects.is_empty() {
            return Ok(());
        }
        // Look again: a write or fill may have landed between the two reads.
        let raw = self.cache.raw_entries(&suspects).await?;
        let rows = self.stored_rows(&suspects).await?;
        let mut to_install = Vec::new();
        for (sku, value) in suspects.iter().zip(raw) {
            let row = rows.get(*sku);
            let Some(value) = value else {
                report.agreeing += 1;
                continue;
            };
            match judge(sku, &value, row, epoch) {
                None => report.agreeing += 1,
                Some(found) => {
                    let divergence = found.divergence;
                    report.record(found);
                    if repair {
                        match (divergence, row) {
                            (Divergence::Stale | Divergence::DeadEpoch, Some(row)) => {
                                to_install.push(row.clone());
                            }
                            _ => {
                                report.repaired += u64::from(
                                    self.cache.delete_entry_if_unchanged(sku, value).await?,
                                )
                            }
                        }
                    }
                }
            }
        }
        if !to_install.is_empty() {
            report.repaired += self.install_rows(&to_install, epoch).await? as u64;
        }
        Ok(())
    }

    /// The primary's rows of `skus`, by SKU.
    async fn stored_rows(
        &self,
        skus: &[&str],
    ) -> Result<HashMap<String, StoredSize>, CacheJobError> {
        let stored = on_pool!(self.db.sessions(), self.db.primary(), |conn| {
            fetch_on(conn, skus)
        });
        Ok(stored
            .await?
            .rows
            .into_iter()
            .map(|r| (r.sku.clone(), r))
            .collect())
    }

    /// The rows among `rows` that have no cached entry.
    async fn uncached<'r>(
        &self,
        rows: Vec<&'r StoredSize>,
    ) -> Result<Vec<&'r StoredSize>, CacheJobError> {
        let skus: Vec<&str> = rows.iter().map(|r| r.sku.as_str()).collect();
        let cached = self.cache.raw_entries(&skus).await?;
        Ok(rows
            .into_iter()
            .zip(cached)
            .filter(|(_, c)| c.is_none())
            .map(|(r, _)| r)
            .collect())
    }

    async fn install_rows(
        &self,
        rows: &[StoredSize],
        epoch: &Epoch,
    ) -> Result<usize, CacheJobError> {
        // Installed without a proof for consistency tokens: a read carrying one reads the
        // database until a fill or write stamps the entry.
        let installs: Vec<Install<'_>> = rows
            .iter()
            .map(|row| Install::row(row, Lsn::ZERO))
            .collect();
        Ok(self.cache.fill(&installs, epoch).await?)
    }

    /// Leaves the counts in Redis, where every instance exports them on `/metrics`.
    async fn publish_audit(&self, report: &AuditReport) {
        let counts = AuditReport {
            first_divergent: Vec::new(),
            ..report.clone()
        };
        if let Ok(json) = serde_json::to_string(&counts)
            && let Err(error) = self.cache.put_note("audit", json).await
        {
            tracing::warn!(%error, "could not publish the audit counts");
        }
    }

    /// The counts of the last audit of this cache, as the probes last read them from Redis
    /// (every [`AUDIT_NOTE_INTERVAL`]): a `/metrics` scrape costs no Redis round trip.
    pub fn last_audit(&self) -> Option<Arc<AuditReport>> {
        self.audit_note.load_full()
    }

    /// Reads the counts the last audit left in Redis, on any instance (see [`Self::last_audit`]).
    pub(super) async fn read_audit_note(&self) {
        let note = self.cache.note("audit").await;
        if let Ok(Some(json)) = note
            && let Ok(report) = serde_json::from_str::<AuditReport>(&json)
        {
            self.audit_note.store(Some(Arc::new(report)));
        }
    }
}

/// How often the probes read the last audit's counts from Redis.
pub const AUDIT_NOTE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The SKUs among `skus` whose cached value (in `raw`) diverges from the stored `rows`; those
/// that agree are counted as such, and those expired since the scan not at all.
fn suspects_among<'s>(
    skus: &[&'s str],
    raw: Vec<Option<Bytes>>,
    rows: &HashMap<String, StoredSize>,
    epoch: &Epoch,
    report: &mut AuditReport,
) -> Vec<&'s str> {
    let mut suspects = Vec::new();
    for (sku, value) in skus.iter().zip(raw) {
        let Some(value) = value else { continue }; // expired since the scan
        report.checked += 1;
        match judge(sku, &value, rows.get(*sku), epoch) {
            None => report.agreeing += 1,
            Some(_) => suspects.push(*sku),
        }
    }
    suspects
}

/// `None` when the cached value agrees with the stored row.
fn judge(sku: &str, value: &Bytes, row: Option<&StoredSize>, epoch: &Epoch) -> Option<Divergent> {
    let entry = Entry::decode(value.clone());
    let cached_version = entry.as_ref().map(|e| e.version);
    let divergence = match (entry, row) {
        (None, _) => Divergence::Orphaned,
        (Some(entry), None) if entry.version == 0 => return None,
        (Some(_), None) => Divergence::Orphaned,
        (Some(entry), Some(row)) if entry.version > row.version => Divergence::Orphaned,
        (Some(entry), Some(row)) if entry.version == row.version && &entry.epoch == epoch => {
            return None;
        }
        (Some(entry), Some(row)) if entry.version == row.version => Divergence::DeadEpoch,
        (Some(_), Some(_)) => Divergence::Stale,
    };
    Some(Divergent {
        sku: sku.to_owned(),
        divergence,
        cached_version,
        stored_version: row.map(|r| r.version),
    })
}
