//! Batching of concurrent calls: callers queue one item each, a driver
//! task hands whatever has queued up to one run of a batch function, and
//! each caller gets its own item's output.
//!
//! While a batch runs, the next one fills, so batches grow with load (and
//! stay at one item when idle) without any timer: the same self-clocking
//! as group commit. A node uses it to store concurrent coordinated writes
//! with one engine write and one thread hand-off, and its transport to send
//! concurrent replica messages to one peer in one call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// The boxed future of a batch run.
pub type BatchFuture<O> = Pin<Box<dyn Future<Output = Vec<O>> + Send>>;

/// A function that runs one batch: it returns one output per item, in
/// order. Items without an output (a shorter vector) fail with
/// [`Stopped`].
pub type RunBatch<I, O> = Arc<dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync>;

/// The batcher's driver has stopped, or a batch run gave no output for
/// the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch was not run")]
pub struct Stopped;

struct Queued<I, O> {
    item: I,
    done: oneshot::Sender<O>,
}

/// A queue in front of a batch function. Dropping every clone of it stops
/// the driver once the queued items have run.
pub struct Batcher<I, O> {
    queue: mpsc::UnboundedSender<Queued<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher {
            queue: self.queue.clone(),
        }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("stopped", &self.queue.is_closed())
            .finish()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts a driver on the current tokio runtime that runs at most
    /// `in_flight` batches at a time, each of at most `max_batch` items.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if `max_batch` or `in_flight` is zero.
    pub fn spawn(max_batch: usize, in_flight: usize, run: RunBatch<I, O>) -> Self {
        assert!(max_batch > 0 && in_flight > 0, "a batcher needs room");
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(rx, max_batch, in_flight, run));
        Batcher { queue }
    }

    /// Queues `item` now and returns what waits for its output: the item
    /// joins a batch whether or not the future is polled yet.
    ///
    /// # Errors
    ///
    /// The future fails with [`Stopped`] if the driver stopped or the
    /// batch run gave no output for the item.
    pub fn submit(&self, item: I) -> impl Future<Output = Result<O, Stopped>> + Send + 'static {
        let (done, output) = oneshot::channel();
        let queued = self.queue.send(Queued { item, done }).map_err(|_| Stopped);
        async move {
            queued?;
            output.await.map_err(|_| Stopped)
        }
    }

    /// Queues `item` and waits for its output.
    ///
    /// # Errors
    ///
    /// [`Stopped`] if the driver stopped or the batch run gave no output
    /// for the item.
    pub async fn call(&self, item: I) -> Result<O, Stopped> {
        self.submit(item).await
    }

    /// Whether the driver has stopped (a new call would fail).
    pub fn is_stopped(&self) -> bool {
        self.queue.is_closed()
    }
}

async fn drive<I: Send + 'static, O: Send + 'static>(
    mut queue: mpsc::UnboundedReceiver<Queued<I, O>>,
    max_batch: usize,
    in_flight: usize,
    run: RunBatch<I, O>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while waiting for a slot joins this batch.
        let batch = with_ready(first, &mut queue, max_batch).await;
        let run = run.clone();
        tokio::spawn(async move {
            let (items, done): (Vec<I>, Vec<_>) =
                batch.into_iter().map(|q| (q.item, q.done)).unzip();
            let outputs = run(items).await;
            // A missing output drops its sender: that caller gets Stopped.
            for (done, output) in done.into_iter().zip(outputs) {
                let _ = done.send(output);
            }
            drop(slot);
        });
    }
}

/// `first` and whatever else `queue` holds once the tasks ready to run
/// have run, up to `max` in all: how every self-clocked batch here is
/// gathered (no timer: a batch is whatever queued while the last one was
/// under way).
///
/// The yield matters on tokio's multi-threaded runtime: a task woken by
/// the running one (the first item's sender) runs next, before the tasks
/// already queued, so without it the batch would be taken while the
/// items' other senders (callers woken together by the last reply, a
/// pipeline message's operations) still wait to run, and go out one item
/// at a time. Measured on three nodes under workload a: the client's
/// pipeline messages carried 1.03 operations each without it, 3.7 with.
pub async fn with_ready<T>(first: T, queue: &mut mpsc::UnboundedReceiver<T>, max: usize) -> Vec<T> {
    tokio::task::yield_now().await;
    let mut batch = Vec::with_capacity((queue.len() + 1).min(max));
    batch.push(first);
    while batch.len() < max {
        match queue.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn doubling(batches: Arc<parking_lot::Mutex<Vec<usize>>>) -> RunBatch<u32, u32> {
        Arc::new(move |items: Vec<u32>| {
            batches.lock().push(items.len());
            Box::pin(async move { items.into_iter().map(|i| i * 2).collect() })
        })
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_output() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let batcher = Batcher::spawn(8, 1, doubling(batches.clone()));
        let calls: Vec<_> = (0..20u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, out) = call.await.unwrap();
            assert_eq!(out, Ok(i * 2));
        }
        let sizes = batches.lock().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.iter().all(|&n| (1..=8).contains(&n)), "{sizes:?}");
    }

    #[tokio::test]
    async fn a_submitted_item_is_queued_before_it_is_awaited() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let run: RunBatch<u32, u32> = {
            let seen = seen.clone();
            Arc::new(move |items: Vec<u32>| {
                seen.lock().extend(items.iter().copied());
                Box::pin(async move { items })
            })
        };
        let batcher = Batcher::spawn(8, 1, run);
        let first = batcher.submit(1);
        assert_eq!(batcher.call(2).await, Ok(2));
        assert_eq!(first.await, Ok(1));
        assert_eq!(*seen.lock(), vec![1, 2], "queued in submission order");
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_ready_up_to_its_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 1..=5 {
            tx.send(i).unwrap();
        }
        assert_eq!(with_ready(0, &mut rx, 3).await, vec![0, 1, 2]);
        assert_eq!(with_ready(9, &mut rx, 10).await, vec![9, 3, 4, 5]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn callers_that_are_ready_together_share_one_batch() {
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sizes = batches.clone();
        // On the worker: the callers are spawned together, and the first
        // one's submission wakes the driver, which the runtime runs next.
        tokio::spawn(async move {
            let batcher = Batcher::spawn(64, 1, doubling(batches));
            let calls: Vec<_> = (0..8u32)
                .map(|i| {
                    let b = batcher.clone();
                    tokio::spawn(async move { b.call(i).await })
                })
                .collect();
            for (i, call) in (0..8u32).zip(calls) {
                assert_eq!(call.await.unwrap(), Ok(i * 2));
            }
        })
        .await
        .unwrap();
        assert_eq!(*sizes.lock(), vec![8], "one batch for the eight callers");
    }

    #[tokio::test]
    async fn calls_queued_during_a_run_share_the_next_batch() {
        // The first run holds its slot until released; everything queued
        // meanwhile must go out as one batch.
        let gate = Arc::new(tokio::sync::Notify::new());
        let batches = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let run: RunBatch<u32, u32> = {
            let (gate, batches) = (gate.clone(), batches.clone());
            Arc::new(move |items: Vec<u32>| {
                batches.lock().push(items.len());
                let gate = gate.clone();
                Box::pin(async move {
                    if items == [0] {
                        gate.notified().await;
                    }
                    items
                })
            })
        };
        let batcher = Batcher::spawn(64, 1, run);
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.call(0).await }
        });
        while batches.lock().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=10u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        // Let every call queue before the first batch finishes.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Ok(0));
        for (i, call) in (1..=10u32).zip(rest) {
            assert_eq!(call.await.unwrap(), Ok(i));
        }
        assert_eq!(*batches.lock(), vec![1, 10]);
    }

    #[tokio::test]
    async fn a_short_run_fails_only_the_items_without_output() {
        let runs = Arc::new(AtomicUsize::new(0));
        let run: RunBatch<u32, u32> = {
            let runs = runs.clone();
            Arc::new(move |_items: Vec<u32>| {
                runs.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Vec::new() })
            })
        };
        let batcher = Batcher::spawn(4, 1, run);
        assert_eq!(batcher.call(7).await, Err(Stopped));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(!batcher.is_stopped());
    }
}
