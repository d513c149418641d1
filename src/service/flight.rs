//! Single flight: concurrent cache misses for one SKU in one instance make one database read.
//!
//! A joiner may have arrived after the read began, and so after a write it must see. Each
//! joiner therefore checks the shared answer against what it saw in Redis itself (same epoch;
//! version at least its fence, or without one, a read that covers its high-water mark) and
//! reads on its own when the answer does not pass.
//!
//! **Why not a library.** `async_singleflight` and its kind hand every joiner the leader's
//! answer, which is exactly the stale read this module must refuse: a joiner's check of the
//! answer against its own view of Redis needs the answer's proof, so the map is ours (about
//! forty lines). `degraded::concurrent_misses_for_one_sku_make_one_database_read` shows the
//! reads it saves; the consistency tests show none of them is stale.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::answer::Answer;
use crate::cache::Epoch;

#[derive(Default)]
pub struct Flights {
    in_flight: Mutex<HashMap<String, Arc<Flight>>>,
}

struct Flight {
    epoch: Epoch,
    answer: OnceCell<Option<Answer>>,
}

impl Flights {
    /// Runs `read` for `sku`, or waits for the read another request runs for it. `None` when
    /// the shared read failed or was made in another epoch.
    pub async fn read<F>(&self, sku: &str, epoch: &Epoch, read: F) -> Option<Answer>
    where
        F: Future<Output = Option<Answer>>,
    {
        let flight = {
            let mut in_flight = self.in_flight.lock().ok()?;
            in_flight
                .entry(sku.to_owned())
                .or_insert_with(|| {
                    Arc::new(Flight {
                        epoch: epoch.clone(),
                        answer: OnceCell::new(),
                    })
                })
                .clone()
        };
        let answer = flight.answer.get_or_init(|| read).await.clone();
        if let Ok(mut in_flight) = self.in_flight.lock()
            && in_flight.get(sku).is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            in_flight.remove(sku);
        }
        answer.filter(|_| &flight.epoch == epoch)
    }
}
