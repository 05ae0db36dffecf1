//! The node's half of a pipeline (see [`crate::pipeline`]).

use kv_coordinator::batch::with_ready;
use kv_core::{Partitioner, StorageEngine, Transport};
use tokio::sync::mpsc;
use tonic::{Request, Status};

use super::{KvService, ReplyStream};
use crate::pipeline::{BATCH_WINDOW, MAX_BATCH_BYTES, MAX_BATCH_OPS, MAX_PIPELINED_OPS, op_error};
use crate::proto::pipelined_op::Op;
use crate::proto::pipelined_result::Result as Outcome;
use crate::proto::{
    BatchOpsReply, BatchOpsRequest, PipelineReply, PipelineRequest, PipelinedOp, PipelinedResult,
};
use crate::security::{Caller, Role};
use crate::stopping::stopped;

/// Whether the caller of a pipeline may write in it: the gate admitted it
/// with the read role at least; a client credential must also carry the
/// write role (no gate, or one that authenticates no client, admits all).
fn may_write(caller: Option<&Caller>) -> bool {
    match caller {
        Some(Caller::Client { role, .. }) => role.allows(Role::Write),
        Some(Caller::Node(_) | Caller::Anyone) | None => true,
    }
}

/// Serves one pipeline: every operation of every inbound message runs as
/// its own task (admitted like a call of its own), and the replies stream
/// carries their results as they finish, as many per message as are ready.
/// The replies end once the inbound stream has ended (or the node stops)
/// and every operation under way has answered.
pub(crate) fn serve<E, T, P>(
    service: KvService<E, T, P>,
    request: Request<tonic::Streaming<PipelineRequest>>,
) -> ReplyStream<PipelineReply>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    let writes = may_write(request.extensions().get::<Caller>());
    let mut inbound = request.into_inner();
    let (done, results) = mpsc::unbounded_channel::<PipelinedResult>();
    let mut stopping = service.stopping();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                message = inbound.message() => message,
                () = stopped(&mut stopping) => break,
            };
            let Ok(Some(message)) = message else {
                break;
            };
            if message.ops.len() > MAX_PIPELINED_OPS {
                let refusal = Status::invalid_argument(format!(
                    "a pipeline message of {} operations, above the limit of {MAX_PIPELINED_OPS}",
                    message.ops.len()
                ));
                for op in message.ops {
                    let _ = done.send(failed(op.id, &refusal));
                }
                continue;
            }
            for op in message.ops {
                let (service, done) = (service.clone(), done.clone());
                tokio::spawn(async move {
                    let _ = done.send(run(&service, op, writes).await);
                });
            }
        }
    });
    Box::pin(futures_util::stream::unfold(
        results,
        |mut results| async move {
            let first = results.recv().await?;
            let ready = with_ready(first, &mut results, MAX_PIPELINED_OPS).await;
            Some((Ok(PipelineReply { results: ready }), results))
        },
    ))
}

/// Serves one `Batch` call: every operation as its own unary call would
/// run, [`BATCH_WINDOW`] at a time; one result per operation in the
/// request's order.
///
/// # Errors
///
/// `InvalidArgument` for more than [`MAX_BATCH_OPS`] operations or more
/// than [`MAX_BATCH_BYTES`] of keys and values (nothing runs).
pub(crate) async fn batch<E, T, P>(
    service: &KvService<E, T, P>,
    request: Request<BatchOpsRequest>,
) -> Result<BatchOpsReply, Status>
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    let writes = may_write(request.extensions().get::<Caller>());
    let ops = request.into_inner().ops;
    if ops.len() > MAX_BATCH_OPS {
        return Err(Status::invalid_argument(format!(
            "a batch of {} operations, above the limit of {MAX_BATCH_OPS}: split it",
            ops.len()
        )));
    }
    let bytes: usize = ops.iter().map(op_bytes).sum();
    if bytes > MAX_BATCH_BYTES {
        return Err(Status::invalid_argument(format!(
            "a batch of {bytes} bytes of keys and values, above the limit of \
             {MAX_BATCH_BYTES}: split it"
        )));
    }
    let results: Vec<PipelinedResult> = {
        use futures_util::StreamExt as _;
        futures_util::stream::iter(ops.into_iter().map(|op| run(service, op, writes)))
            .buffered(BATCH_WINDOW)
            .collect()
            .await
    };
    // The reply stays within the limit: results past it fail on their own.
    let mut left = MAX_BATCH_BYTES;
    let results = results
        .into_iter()
        .map(|result| {
            let size = result_bytes(&result);
            if size > left {
                let status = Status::resource_exhausted(format!(
                    "the batch's reply reached {MAX_BATCH_BYTES} bytes before this result: \
                     ask for fewer keys at a time"
                ));
                failed(result.id, &status)
            } else {
                left -= size;
                result
            }
        })
        .collect();
    Ok(BatchOpsReply { results })
}

/// Bytes of keys, values and contexts an operation carries.
fn op_bytes(op: &PipelinedOp) -> usize {
    match &op.op {
        Some(Op::Get(r)) => r.key.len(),
        Some(Op::Put(r)) => r.key.len() + r.value.len() + r.context.len(),
        Some(Op::Delete(r)) => r.key.len() + r.context.len(),
        None => 0,
    }
}

/// Bytes of values and contexts a result carries.
fn result_bytes(result: &PipelinedResult) -> usize {
    match &result.result {
        Some(Outcome::Get(r)) => r.values.iter().map(Vec::len).sum::<usize>() + r.context.len(),
        Some(Outcome::Put(r)) => r.context.len(),
        Some(Outcome::Error(e)) => e.message.len(),
        None => 0,
    }
}

fn failed(id: u64, status: &Status) -> PipelinedResult {
    PipelinedResult {
        id,
        result: Some(Outcome::Error(op_error(status))),
    }
}

/// One operation, as the unary call would run it.
async fn run<E, T, P>(
    service: &KvService<E, T, P>,
    op: PipelinedOp,
    writes: bool,
) -> PipelinedResult
where
    E: StorageEngine + 'static,
    T: Transport + 'static,
    P: Partitioner + Send + Sync + 'static,
{
    let refused = || {
        Status::permission_denied(
            "this credential may read, not write: a write needs the write role",
        )
    };
    let result = match op.op {
        Some(Op::Get(r)) => service.read(r).await.map(Outcome::Get),
        Some(Op::Put(_) | Op::Delete(_)) if !writes => Err(refused()),
        Some(Op::Put(r)) => service.put_op(&r).await.map(Outcome::Put),
        Some(Op::Delete(r)) => service.delete_op(&r).await.map(Outcome::Put),
        None => Err(Status::invalid_argument(
            "a pipelined operation without an operation",
        )),
    };
    match result {
        Ok(outcome) => PipelinedResult {
            id: op.id,
            result: Some(outcome),
        },
        Err(status) => failed(op.id, &status),
    }
}
