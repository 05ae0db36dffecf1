//! The client's half of a pipeline.

use std::collections::HashMap;
use std::time::Duration;

use kv_coordinator::batch::with_ready;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::{MAX_PIPELINED_OPS, op_status};
use crate::proto::kv_client::KvClient;
use crate::proto::pipelined_op::Op;
use crate::proto::pipelined_result::Result as Outcome;
use crate::proto::{PipelineReply, PipelineRequest, PipelinedOp};
use crate::security::AuthChannel;

/// What a caller waits on: its operation's result.
type Answer = oneshot::Sender<Result<Outcome, Status>>;

/// One operation waiting to be sent.
struct Queued {
    op: Op,
    answer: Answer,
}

/// A pipeline to one node: operations queue, a driver task sends whatever
/// queued meanwhile in one message and hands each result to its caller.
/// The stream is opened on first use and again after it breaks.
pub struct Pipe {
    kv: KvClient<AuthChannel>,
    addr: String,
    queue: Mutex<Option<mpsc::UnboundedSender<Queued>>>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipe").field("addr", &self.addr).finish()
    }
}

impl Pipe {
    /// A pipeline to the node at `addr` through `kv`, whose channel must
    /// set no per-call deadline (it would end the stream).
    pub fn new(kv: KvClient<AuthChannel>, addr: String) -> Self {
        Pipe {
            kv,
            addr,
            queue: Mutex::new(None),
        }
    }

    /// Sends `op` and waits at most `timeout` for its result.
    ///
    /// # Errors
    /// The status the node answered the operation with; `Unavailable` when
    /// the stream could not be opened (with the connection's error) or
    /// broke before the answer; `DeadlineExceeded` after `timeout`.
    pub async fn call(&self, op: Op, timeout: Duration) -> Result<Outcome, Status> {
        let (answer, result) = oneshot::channel();
        if let Err(unsent) = self.sender().send(Queued { op, answer }) {
            // The driver ended just now: one more, fresh.
            let _ = self.sender().send(unsent.0);
        }
        match tokio::time::timeout(timeout, result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Status::unavailable(format!(
                "the pipeline to {} closed before answering",
                self.addr
            ))),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from {} within {timeout:?}",
                self.addr
            ))),
        }
    }

    /// The queue of the running driver, started if there is none.
    fn sender(&self) -> mpsc::UnboundedSender<Queued> {
        let mut slot = self.queue.lock();
        if let Some(queue) = slot.as_ref().filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(drive(self.kv.clone(), queued, self.addr.clone()));
        *slot = Some(queue.clone());
        queue
    }
}

/// Runs one stream: opens it, sends queued operations in messages of
/// whatever queued together, and completes callers as results arrive.
/// When the stream cannot be opened or breaks, every caller waiting on it
/// fails with the reason, and the queue closes (the next call opens a new
/// stream).
async fn drive(
    mut kv: KvClient<AuthChannel>,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    addr: String,
) {
    let (out, outbound) = mpsc::unbounded_channel::<PipelineRequest>();
    let outbound = futures_util::stream::unfold(outbound, |mut outbound| async move {
        outbound.recv().await.map(|message| (message, outbound))
    });
    let mut inbound = match kv.pipeline(outbound).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            // Nothing was sent: the connection's own error (a refused
            // connection reads as never sent, and is retried elsewhere).
            fail_queued(&mut queued, &status);
            return;
        }
    };
    let mut out = Some(out);
    let mut pending: HashMap<u64, Answer> = HashMap::new();
    let mut next_id = 0u64;
    let ended = loop {
        tokio::select! {
            first = queued.recv(), if out.is_some() => {
                let Some(first) = first else {
                    // Every client handle is gone: end the stream once the
                    // node has answered what is under way.
                    out = None;
                    continue;
                };
                // With the operations of callers woken by the last reply.
                let batch = with_ready(first, &mut queued, MAX_PIPELINED_OPS).await;
                let mut ops = Vec::with_capacity(batch.len());
                for q in batch {
                    next_id += 1;
                    pending.insert(next_id, q.answer);
                    ops.push(PipelinedOp { id: next_id, op: Some(q.op) });
                }
                if let Some(out) = &out
                    && out.send(PipelineRequest { ops }).is_err()
                {
                    break Status::unavailable(format!("the pipeline to {addr} closed"));
                }
            }
            reply = inbound.message() => match reply {
                Ok(Some(PipelineReply { results })) => {
                    for result in results {
                        if let Some(answer) = pending.remove(&result.id) {
                            let _ = answer.send(outcome(result.result));
                        }
                    }
                    if out.is_none() && pending.is_empty() {
                        return;
                    }
                }
                Ok(None) => break Status::unavailable(format!("{addr} ended the pipeline")),
                Err(status) => break Status::unavailable(format!(
                    "the pipeline to {addr} broke: {}",
                    status.message()
                )),
            }
        }
    };
    for (_, answer) in pending.drain() {
        let _ = answer.send(Err(ended.clone()));
    }
    fail_queued(&mut queued, &ended);
}

/// Closes the queue and fails whatever waits in it.
fn fail_queued(queued: &mut mpsc::UnboundedReceiver<Queued>, status: &Status) {
    queued.close();
    while let Ok(q) = queued.try_recv() {
        let _ = q.answer.send(Err(status.clone()));
    }
}

/// A result as the caller takes it.
fn outcome(result: Option<Outcome>) -> Result<Outcome, Status> {
    match result {
        Some(Outcome::Error(error)) => Err(op_status(&error)),
        Some(outcome) => Ok(outcome),
        None => Err(Status::internal("a pipelined result without a result")),
    }
}
