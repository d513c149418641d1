//! The one owner of an instance's background tasks: the workers started with the application,
//! and the jobs it starts while it serves (a warm-up asked for over HTTP, an epoch started
//! afresh). Each task gets a token of its own, a child of the instance's: stopping cancels
//! them all, then waits for them, so none outlives the pools and clients it uses.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A value that works in the background for as long as the instance runs. It owns what it
/// alone uses, and shares the rest (the stores, the repair book) with the others.
pub trait Worker: Send + 'static {
    /// The work, which ends only when there is nothing left to do. Stopping the instance drops
    /// it where it awaits: each worker's doc says why that is safe wherever it awaits.
    fn work(self) -> impl Future<Output = ()> + Send;
}

/// A ticker for a worker's rounds every `period`: the first at once, and a late round delays
/// the next one instead of being made up for in a burst.
pub fn every(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// A cheap handle (clone it) on the instance's background tasks.
#[derive(Clone, Default)]
pub struct Background {
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Background {
    /// Runs `task` in the background until it ends or the instance stops; it is handed the
    /// token that tells it to stop.
    pub fn spawn<T, F>(&self, task: T)
    where
        T: FnOnce(CancellationToken) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.shutdown.child_token()));
    }

    /// Starts `worker`, which works until it is done or the instance stops.
    pub fn start(&self, worker: impl Worker) {
        self.spawn(|stop| async move {
            stop.run_until_cancelled(worker.work()).await;
        });
    }

    /// Cancels every task and waits for them to end, for `bound` at most: a task still
    /// running then is logged and left behind, so that shutdown goes on.
    pub async fn stop(&self, bound: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(bound, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.tasks.len(),
                bound_ms = bound.as_millis() as u64,
                "background tasks still running after they were cancelled; shutting down without them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn stopping_cancels_every_task_and_waits_for_it_to_end() {
        let background = Background::default();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = ended.clone();
        background.spawn(|stop| async move {
            stop.cancelled().await;
            // What a task does once cancelled (a warm-up records how it ended) is awaited.
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, Ordering::SeqCst);
        });

        background.stop(Duration::from_secs(5)).await;

        assert!(ended.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_task_that_does_not_end_holds_shutdown_no_longer_than_the_bound() {
        let background = Background::default();
        background.spawn(|_| std::future::pending::<()>());
        let started = std::time::Instant::now();

        background.stop(Duration::from_millis(50)).await;

        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
