//! The primary's WAL position, read once for many concurrent requests. Without Redis there is
//! no high-water mark of acknowledged writes, but the primary's current position is one: any
//! position read *after* a request began covers every write acknowledged before it. Requests
//! that begin while a read of the position is under way wait for the next one.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OnceCell;

use crate::db::lease::{Leases, leased};
use crate::db::sizes::primary_position;
use crate::domain::Lsn;

#[derive(Default)]
pub struct PrimaryPosition {
    latest: Mutex<Option<Arc<Probe>>>,
}

struct Probe {
    started: Instant,
    /// The position and the WAL timeline it is on.
    lsn: OnceCell<Option<(Lsn, u32)>>,
}

impl PrimaryPosition {
    /// A primary WAL position read after `since`, and the timeline it is on, shared with every
    /// caller it also serves. `None` if the primary cannot be reached.
    pub async fn read_after(&self, since: Instant, primary: &Leases) -> Option<(Lsn, u32)> {
        let probe = {
            let mut latest = self.latest.lock().ok()?;
            match latest.as_ref() {
                Some(probe) if probe.started >= since => probe.clone(),
                _ => {
                    let probe = Arc::new(Probe {
                        started: Instant::now(),
                        lsn: OnceCell::new(),
                    });
                    *latest = Some(probe.clone());
                    probe
                }
            }
        };
        *probe
            .lsn
            .get_or_init(|| async {
                let (lsn, history) = leased!(primary, |conn| primary_position(conn)).await.ok()?;
                Some((lsn, history.timeline))
            })
            .await
    }
}
