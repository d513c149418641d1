//! Concurrent small reads coalesced into one larger read.
//!
//! Under load, most of a small read's cost is per call, not per key: a Redis `MGET` of one
//! SKU or a replica query for one row costs the client, the server and the round trip nearly
//! what one for many costs, and the service and its stores share one machine. So a read that
//! arrives while earlier batches are in flight waits for a free slot and then goes out with
//! every read that waited with it. Without load a read finds a slot free and goes out at once,
//! alone.
//!
//! A batch is sent after each of its reads was asked for, so it sees everything committed or
//! acknowledged before any of them began; what each read may conclude from its share (a cache
//! entry's epoch, a replica row's replay position) is the batch's own atomic answer.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

struct Waiting<Q, A> {
    query: Q,
    reply: oneshot::Sender<A>,
}

/// The queue of reads waiting for the next batch; its task ends when this is dropped.
pub struct Coalescer<Q, A> {
    queue: mpsc::UnboundedSender<Waiting<Q, A>>,
}

impl<Q: Send + 'static, A: Send + 'static> Coalescer<Q, A> {
    /// `run` reads a batch of at most `max_batch` queries and answers each, in order. At most
    /// `in_flight` batches are out at once: while they are, new reads queue for the next one.
    pub fn start<R, F>(max_batch: usize, in_flight: usize, run: R) -> Self
    where
        R: Fn(Vec<Q>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<A>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(waiting, max_batch, in_flight.max(1), run));
        Self { queue }
    }

    /// `query`'s answer from whichever batch takes it; `None` if the coalescer stopped or the
    /// batch panicked.
    pub async fn ask(&self, query: Q) -> Option<A> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Waiting { query, reply }).ok()?;
        answer.await.ok()
    }
}

async fn dispatch<Q, A, R, F>(
    mut waiting: mpsc::UnboundedReceiver<Waiting<Q, A>>,
    max_batch: usize,
    slots: usize,
    run: R,
) where
    Q: Send + 'static,
    A: Send + 'static,
    R: Fn(Vec<Q>) -> F,
    F: Future<Output = Vec<A>> + Send + 'static,
{
    // The batches in flight are polled here rather than spawned: a task per batch cost more
    // than the batch saved when batches are small.
    let mut in_flight = FuturesUnordered::new();
    loop {
        let next = if in_flight.len() < slots {
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => continue,
                next = waiting.recv() => next,
            }
        } else {
            // Every slot is taken: reads gather in the queue until a batch is answered.
            in_flight.next().await;
            continue;
        };
        let Some(first) = next else {
            // Nobody can ask any more: answer what is in flight, then stop.
            while in_flight.next().await.is_some() {}
            return;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // A read whose request was abandoned (timed out, disconnected) is not asked for.
        batch.retain(|read| !read.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (queries, replies): (Vec<Q>, Vec<_>) =
            batch.into_iter().map(|w| (w.query, w.reply)).unzip();
        let answers = run(queries);
        // A batch that panics answers none of its reads (each sees the coalescer as stopped)
        // and leaves the next batches served, as a task of its own would.
        let batch = AssertUnwindSafe(async move {
            for (reply, answer) in replies.into_iter().zip(answers.await) {
                let _ = reply.send(answer);
            }
        });
        in_flight.push(batch.catch_unwind().map(drop));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const IN_FLIGHT: usize = 2;

    #[tokio::test]
    async fn a_batch_that_panics_answers_none_and_later_batches_are_served() {
        let coalescer = Coalescer::start(64, 1, |queries: Vec<u32>| async move {
            assert!(!queries.contains(&0), "the batch of 0 panics");
            queries
        });
        assert_eq!(coalescer.ask(0).await, None);
        assert_eq!(coalescer.ask(7).await, Some(7));
    }

    #[tokio::test]
    async fn each_read_gets_its_own_answer_and_waiting_reads_share_a_batch() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let (open, opened) = tokio::sync::watch::channel(false);
        let coalescer = Arc::new(Coalescer::start(64, IN_FLIGHT, move |queries: Vec<u32>| {
            seen.lock().unwrap().push(queries.len());
            let mut opened = opened.clone();
            async move {
                let _ = opened.wait_for(|open| *open).await;
                queries.into_iter().map(|q| q * 10).collect()
            }
        }));
        let reads: Vec<_> = (0..20)
            .map(|q| {
                let coalescer = coalescer.clone();
                tokio::spawn(async move { coalescer.ask(q).await })
            })
            .collect();
        // The held batches take the first reads; every other read queues behind them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let sent = sizes.lock().unwrap().clone();
            if sent.len() == IN_FLIGHT || sent.iter().sum::<usize>() == 20 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no batch went out");
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        open.send(true).unwrap();
        for (q, read) in reads.into_iter().enumerate() {
            assert_eq!(read.await.unwrap(), Some(q as u32 * 10));
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(
            sizes.len() <= 3,
            "20 waiting reads in {} batches",
            sizes.len()
        );
    }
}
