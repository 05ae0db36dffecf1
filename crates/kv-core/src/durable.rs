//! [`Durable`]: a write that is made and will be durable, as a future.
//!
//! An engine that syncs its log on a thread of its own hands one out from
//! [`StorageEngine::write_deferred`](crate::StorageEngine::write_deferred),
//! so an async caller awaits the sync without a blocking thread of its own
//! waiting for it. Runtime-free: the engine's thread completes it through
//! a [`DurableSignal`] and wakes whichever task awaits it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::StorageError;

/// Resolves once a write is durable (`Ok`) or cannot be (`Err`: the sync
/// failed, or the engine closed before it synced).
#[derive(Debug)]
#[must_use = "a deferred write is only acknowledged once it is durable"]
pub struct Durable(Inner);

#[derive(Debug)]
enum Inner {
    Ready(Option<Result<(), StorageError>>),
    Waiting(Arc<Cell>),
}

#[derive(Debug, Default)]
struct Cell {
    state: Mutex<CellState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct CellState {
    result: Option<Result<(), StorageError>>,
    waker: Option<Waker>,
    /// A thread sleeps on `done` (`wait`). The standard condition variable
    /// makes a system call on every notify, waiter or not, and most
    /// waiters are tasks: the engine's syncer completes one of these per
    /// batch it syncs, nearly all awaited by tasks.
    blocked: bool,
}

/// The engine's end of a [`Durable`]: [`complete`](Self::complete) it once
/// the write is synced or has failed. Dropped without completing, it
/// completes with [`StorageError::Closed`], so no caller waits for ever.
#[derive(Debug)]
pub struct DurableSignal(Option<Arc<Cell>>);

impl Durable {
    /// A write that is already as durable as it will be.
    pub fn ready(result: Result<(), StorageError>) -> Self {
        Durable(Inner::Ready(Some(result)))
    }

    /// A write waiting for its sync, and the signal that ends the wait.
    pub fn pending() -> (Self, DurableSignal) {
        let cell = Arc::new(Cell::default());
        (
            Durable(Inner::Waiting(cell.clone())),
            DurableSignal(Some(cell)),
        )
    }

    /// Blocks the calling thread until the write is durable (for callers
    /// that are not async).
    ///
    /// # Errors
    ///
    /// The engine's error if the write could not be made durable.
    pub fn wait(self) -> Result<(), StorageError> {
        match self.0 {
            Inner::Ready(result) => result.unwrap_or(Ok(())),
            Inner::Waiting(cell) => {
                let mut state = cell.state.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    if let Some(result) = state.result.take() {
                        return result;
                    }
                    state.blocked = true;
                    state = cell
                        .done
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

impl Durable {
    /// The outcome, if the write is already as durable as it will be (a
    /// ready `Durable`, or one whose sync has completed), without waiting
    /// or registering a waker: a caller can then skip the machinery of
    /// waiting.
    pub fn outcome(&self) -> Option<Result<(), StorageError>> {
        match &self.0 {
            Inner::Ready(result) => Some(result.clone().unwrap_or(Ok(()))),
            Inner::Waiting(cell) => cell
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .result
                .clone(),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            // Polled again after it finished: it stays finished.
            Inner::Ready(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            Inner::Waiting(cell) => {
                let mut state = cell.state.lock().unwrap_or_else(PoisonError::into_inner);
                match state.result.take() {
                    Some(result) => {
                        drop(state);
                        self.0 = Inner::Ready(None);
                        Poll::Ready(result)
                    }
                    None => {
                        match &mut state.waker {
                            Some(waker) if waker.will_wake(cx.waker()) => {}
                            slot => *slot = Some(cx.waker().clone()),
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl DurableSignal {
    /// Ends the wait with `result`, waking the waiter.
    pub fn complete(mut self, result: Result<(), StorageError>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<(), StorageError>) {
        let Some(cell) = self.0.take() else {
            return;
        };
        let (waker, blocked) = {
            let mut state = cell.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.result = Some(result);
            (state.waker.take(), state.blocked)
        };
        if blocked {
            cell.done.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for DurableSignal {
    fn drop(&mut self) {
        self.finish(Err(StorageError::Closed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(durable: &mut Durable, wakes: &Arc<CountWakes>) -> Poll<Result<(), StorageError>> {
        let waker = Waker::from(wakes.clone());
        Pin::new(durable).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn pending_until_completed_then_woken_once_with_the_result() {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let (mut durable, signal) = Durable::pending();
        assert!(poll(&mut durable, &wakes).is_pending());
        assert!(poll(&mut durable, &wakes).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        signal.complete(Err(StorageError::Io("fsync failed".into())));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            poll(&mut durable, &wakes),
            Poll::Ready(Err(StorageError::Io("fsync failed".into())))
        );
    }

    #[test]
    fn the_outcome_is_known_once_ready_or_completed_and_not_before() {
        assert_eq!(Durable::ready(Ok(())).outcome(), Some(Ok(())));
        let closed = Durable::ready(Err(StorageError::Closed));
        assert_eq!(closed.outcome(), Some(Err(StorageError::Closed)));
        let (durable, signal) = Durable::pending();
        assert_eq!(durable.outcome(), None);
        signal.complete(Err(StorageError::Io("fsync failed".into())));
        let failed = Err(StorageError::Io("fsync failed".into()));
        assert_eq!(durable.outcome(), Some(failed.clone()));
        // Asking does not consume it: the wait still gives the result.
        assert_eq!(durable.wait(), failed);
    }

    #[test]
    fn a_dropped_signal_ends_the_wait_as_closed() {
        let (durable, signal) = Durable::pending();
        drop(signal);
        assert_eq!(durable.wait(), Err(StorageError::Closed));
    }

    #[test]
    fn a_blocking_waiter_sees_a_completion_from_another_thread() {
        let (durable, signal) = Durable::pending();
        let waiter = std::thread::spawn(move || durable.wait());
        signal.complete(Ok(()));
        assert_eq!(waiter.join().ok(), Some(Ok(())));
        assert_eq!(Durable::ready(Ok(())).wait(), Ok(()));
    }

    #[test]
    fn a_thread_already_asleep_in_wait_is_woken() {
        let (durable, signal) = Durable::pending();
        let Inner::Waiting(cell) = &durable.0 else {
            panic!("a pending durable waits");
        };
        let cell = cell.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(durable.wait()));
        // Complete only once the waiter is asleep on the condition variable
        // (it marks itself under the lock the wait releases).
        while !cell.state.lock().map(|s| s.blocked).unwrap_or(false) {
            std::thread::yield_now();
        }
        signal.complete(Ok(()));
        // Bounded so that a lost wake-up fails instead of hanging the suite.
        let woken = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert_eq!(woken, Ok(Ok(())));
    }
}
