//! Concurrent one-SKU fills coalesced into one install call ([`crate::infra::coalesce`]).
//!
//! A miss's fill is one install script call for one item, and about half its cost is per call:
//! Redis's script dispatch (about 7 µs of the 14 µs such a call takes, bench/RESULTS.md) and
//! fred's command handling. A batch is one call of the same compare-and-set for every waiting
//! fill of the same epoch: the script judges each item on its own against its entry and
//! fence, in order, so a batch installs exactly what the fills one by one would have (of two
//! fills of one SKU, the newer version stays, whichever came first).
//!
//! A fill is only safe while a write's fence outlives it (see `FILL_MAX_AGE` in
//! `service::read`): one whose deadline passed while it waited is dropped, not installed.

use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::Bytes;

use super::entry::Epoch;
use super::install::Install;
use super::{Cache, CacheError};
use crate::domain::Lsn;

/// Fills per install call at most: under the install's own chunk of 100, so a batch is one
/// call, short enough not to hold Redis for the hits behind it.
const MAX_BATCH: usize = 64;

/// As for the hits' `MGET` ([`super::batch`]): one install call out at a time.
const IN_FLIGHT: usize = 1;

/// One fill of one SKU, owned while it waits for its batch.
pub struct Fill {
    pub sku: String,
    pub version: i64,
    pub verified: Lsn,
    pub body: Option<Bytes>,
    pub epoch: Epoch,
    /// Not installed after this.
    pub deadline: Instant,
}

pub struct Fills(super::CacheCoalescer<Fill, ()>);

impl Fills {
    pub fn start(cache: Weak<Cache>) -> Self {
        Self(super::CacheCoalescer::start(
            cache, MAX_BATCH, IN_FLIGHT, install,
        ))
    }

    /// Installs `fill` in whichever batch takes it.
    pub async fn fill(&self, fill: Fill) -> Result<(), CacheError> {
        self.0.ask(fill).await
    }
}

/// Installs one batch: one call per epoch among its fills (there is one but around a change
/// of epoch), skipping fills past their deadline.
async fn install(cache: Arc<Cache>, batch: Vec<Fill>) -> Vec<Result<(), CacheError>> {
    let now = Instant::now();
    let mut answers: Vec<Result<(), CacheError>> = batch.iter().map(|_| Ok(())).collect();
    let mut pending: Vec<usize> = (0..batch.len())
        .filter(|&i| batch[i].deadline > now)
        .collect();
    while let Some(&first) = pending.first() {
        let epoch = &batch[first].epoch;
        let (members, rest): (Vec<usize>, Vec<usize>) =
            pending.iter().partition(|&&i| batch[i].epoch == *epoch);
        pending = rest;
        let installs: Vec<Install<'_>> = members
            .iter()
            .map(|&i| Install {
                sku: &batch[i].sku,
                version: batch[i].version,
                verified: batch[i].verified,
                body: batch[i].body.clone(),
            })
            .collect();
        if let Err(error) = cache.fill(&installs, epoch).await {
            for i in members {
                answers[i] = Err(error.clone());
            }
        }
    }
    answers
}
