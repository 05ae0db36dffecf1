//! A request's attempts under way: at most one per node, so a handful,
//! polled together.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// Futures polled together, the first to finish taken first. Every one is
/// polled on every wake-up: with one attempt per node that is a few polls,
/// and it spares each request the task bookkeeping of a
/// `FuturesUnordered` (its own allocation, a task per future, a queue of
/// woken ones), which the SDK paid on every operation although nearly all
/// of them finish with their first attempt.
pub(super) struct Attempts<F> {
    under_way: Vec<Pin<Box<F>>>,
}

impl<F: Future> Attempts<F> {
    /// Room for `n` attempts before it grows.
    pub(super) fn with_capacity(n: usize) -> Self {
        Attempts {
            under_way: Vec::with_capacity(n),
        }
    }

    pub(super) fn push(&mut self, attempt: F) {
        self.under_way.push(Box::pin(attempt));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.under_way.is_empty()
    }

    /// The output of the first attempt to finish, which is dropped from
    /// the set; `None` at once when none is under way.
    pub(super) async fn next(&mut self) -> Option<F::Output> {
        if self.under_way.is_empty() {
            return None;
        }
        std::future::poll_fn(|cx| {
            for i in 0..self.under_way.len() {
                if let Poll::Ready(output) = self.under_way[i].as_mut().poll(cx) {
                    // Order among the others does not matter: they are
                    // all polled on every wake-up.
                    drop(self.under_way.swap_remove(i));
                    return Poll::Ready(Some(output));
                }
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test(start_paused = true)]
    async fn the_first_to_finish_comes_first_and_the_rest_stay_under_way() {
        let mut attempts = Attempts::with_capacity(3);
        assert!(attempts.next().await.is_none(), "none under way");
        let (slow_tx, slow) = oneshot::channel::<u32>();
        let (fast_tx, fast) = oneshot::channel::<u32>();
        attempts.push(Box::pin(async move { slow.await.unwrap_or(0) })
            as Pin<Box<dyn Future<Output = u32> + Send>>);
        attempts.push(Box::pin(async move { fast.await.unwrap_or(0) }));
        attempts.push(Box::pin(async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            3
        }));
        // The second answers first, though pushed after the first.
        fast_tx.send(2).unwrap_or_default();
        assert_eq!(attempts.next().await, Some(2));
        assert!(!attempts.is_empty());
        // Nothing answers until the timer's attempt ends, five seconds on
        // (the clock is paused and advances only when all are waiting).
        let before = tokio::time::Instant::now();
        assert_eq!(attempts.next().await, Some(3));
        assert_eq!(before.elapsed(), Duration::from_secs(5));
        // The first stayed under way through both: it answers when told.
        slow_tx.send(1).unwrap_or_default();
        assert_eq!(attempts.next().await, Some(1));
        assert!(attempts.is_empty());
        assert!(attempts.next().await.is_none());
    }
}
