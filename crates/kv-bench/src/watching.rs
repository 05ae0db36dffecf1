//! A run's watch: a watch of every workload key from before the load to
//! after convergence, each change it delivers recorded in the history (the
//! checker holds it to every acknowledged write), and a wait at the end
//! until every acknowledged write was delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kv_clock::VectorClock;
use kv_core::ActorId;
use kv_server::client::{Client, ClientError};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::record::{Event, hex};
use crate::workload::value_id;

/// Where a run's changes go (its history).
pub(crate) type Sink = Arc<dyn Fn(Event) + Send + Sync>;

/// The running watch of a run.
pub(crate) struct RunWatch {
    task: tokio::task::JoinHandle<()>,
    /// Per key, the join of the clocks of the changes delivered.
    delivered: Arc<Mutex<HashMap<Vec<u8>, VectorClock>>>,
    /// Every acknowledged write: key and dot.
    acked: Mutex<Vec<(Vec<u8>, ActorId, u64)>>,
}

impl RunWatch {
    /// Starts watching the keys with `prefix`; returns once the watch has
    /// begun (a write acknowledged after this is to be delivered).
    pub(crate) async fn start(
        client: &Client,
        prefix: &[u8],
        started: Instant,
        sink: Sink,
    ) -> Result<Self, String> {
        let mut watcher = client
            .watch(prefix)
            .await
            .map_err(|e| format!("starting the watch: {e}"))?;
        let delivered: Arc<Mutex<HashMap<Vec<u8>, VectorClock>>> = Arc::default();
        let seen = delivered.clone();
        let task = tokio::spawn(async move {
            loop {
                let changes = match watcher.next().await {
                    Ok(changes) => changes,
                    // Every node tried failed (faults): the watch keeps its
                    // cursor; try again.
                    Err(ClientError::Unavailable { .. } | ClientError::Timeout(_)) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    Err(e) => {
                        eprintln!("kv-bench: the watch failed: {e}");
                        return;
                    }
                };
                for c in changes {
                    if let Ok(clock) = VectorClock::from_bytes(&c.context.0) {
                        seen.lock().entry(c.key.clone()).or_default().merge(&clock);
                    }
                    sink(Event::Change {
                        key: hex(&c.key),
                        values: c.values.iter().filter_map(|v| value_id(v)).collect(),
                        context: hex(&c.context.0),
                        resync: c.resync,
                        at_us: started.elapsed().as_micros() as u64,
                    });
                }
            }
        });
        Ok(RunWatch {
            task,
            delivered,
            acked: Mutex::default(),
        })
    }

    /// Notes an acknowledged write of `key` with the dot `(actor, counter)`.
    pub(crate) fn acked(&self, key: &[u8], actor: u64, counter: u64) {
        self.acked
            .lock()
            .push((key.to_vec(), ActorId(actor), counter));
    }

    /// Waits until every acknowledged write was delivered (a delivered
    /// change of its key covers its dot), at most `limit`; stops the
    /// watch and returns how many were not.
    pub(crate) async fn finish(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let missing = {
                let delivered = self.delivered.lock();
                self.acked
                    .lock()
                    .iter()
                    .filter(|(key, actor, counter)| {
                        !delivered
                            .get(key)
                            .is_some_and(|c| c.covers(*actor, *counter))
                    })
                    .count()
            };
            if missing == 0 || Instant::now() >= deadline {
                self.task.abort();
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
