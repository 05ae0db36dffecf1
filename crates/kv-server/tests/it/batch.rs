//! The `Batch` call: many reads, writes and deletes in one call, one
//! result per operation in order, a failure failing only its operation,
//! bounded in operations and bytes.

use kv_server::pipeline::{MAX_BATCH_BYTES, MAX_BATCH_OPS};
use kv_server::proto::pipelined_op::Op;
use kv_server::proto::pipelined_result::Result as Outcome;
use kv_server::proto::{
    BatchOpsRequest, DeleteRequest, GetRequest, PipelinedOp, PipelinedResult, PutRequest,
};

use crate::{client, cluster};

fn put(id: u64, key: &[u8], value: &[u8], context: Vec<u8>) -> PipelinedOp {
    PipelinedOp {
        id,
        op: Some(Op::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            context,
            ..PutRequest::default()
        })),
    }
}

fn get(id: u64, key: &[u8]) -> PipelinedOp {
    PipelinedOp {
        id,
        op: Some(Op::Get(GetRequest {
            key: key.to_vec(),
            r: 0,
        })),
    }
}

fn values(result: &PipelinedResult) -> Vec<Vec<u8>> {
    match &result.result {
        Some(Outcome::Get(r)) => r.values.clone(),
        other => panic!("not a read's result: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_operation_in_order_and_fails_only_what_fails() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let mut c = client(&nodes[0]).await;

    // A multi-put as large as a batch may be, with one bad item: the
    // others are written.
    let ops: Vec<PipelinedOp> = (0..MAX_BATCH_OPS as u64)
        .map(|i| {
            let key = if i == 50 {
                Vec::new() // an empty key is refused, alone
            } else {
                format!("b:{i}").into_bytes()
            };
            put(i, &key, &i.to_le_bytes(), Vec::new())
        })
        .collect();
    let reply = c.batch(BatchOpsRequest { ops }).await.unwrap().into_inner();
    assert_eq!(reply.results.len(), MAX_BATCH_OPS);
    let mut contexts = Vec::new();
    for (i, r) in reply.results.iter().enumerate() {
        assert_eq!(r.id, i as u64, "results in request order");
        match (&r.result, i) {
            (Some(Outcome::Error(e)), 50) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
                assert!(e.message.contains("empty key"), "{e:?}");
            }
            (Some(Outcome::Put(p)), _) => contexts.push((i, p.context.clone())),
            other => panic!("item {i}: {other:?}"),
        }
    }
    assert_eq!(contexts.len(), MAX_BATCH_OPS - 1);

    // A mix read from another node: reads, a delete with a read's context,
    // an overwrite; each as its own call would answer.
    let mut c2 = client(&nodes[1]).await;
    let ops: Vec<PipelinedOp> = (0..MAX_BATCH_OPS as u64)
        .map(|i| get(i, format!("b:{i}").as_bytes()))
        .collect();
    let reply = c2
        .batch(BatchOpsRequest { ops })
        .await
        .unwrap()
        .into_inner();
    for (i, r) in reply.results.iter().enumerate() {
        if i == 50 {
            assert_eq!(
                values(r),
                Vec::<Vec<u8>>::new(),
                "the refused put wrote nothing"
            );
        } else {
            assert_eq!(
                values(r),
                vec![(i as u64).to_le_bytes().to_vec()],
                "key {i}"
            );
        }
    }
    let (_, ctx7) = contexts.iter().find(|(i, _)| *i == 7).unwrap().clone();
    let (_, ctx8) = contexts.iter().find(|(i, _)| *i == 8).unwrap().clone();
    let ops = vec![
        PipelinedOp {
            id: 70,
            op: Some(Op::Delete(DeleteRequest {
                key: b"b:7".to_vec(),
                context: ctx7,
                ..DeleteRequest::default()
            })),
        },
        put(80, b"b:8", b"new", ctx8),
    ];
    let reply = c2
        .batch(BatchOpsRequest { ops })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply
            .results
            .iter()
            .all(|r| matches!(r.result, Some(Outcome::Put(_)))),
        "{reply:?}"
    );
    let reply = c
        .batch(BatchOpsRequest {
            ops: vec![get(1, b"b:7"), get(2, b"b:8"), get(3, b"b:missing")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(values(&reply.results[0]), Vec::<Vec<u8>>::new(), "deleted");
    assert_eq!(
        values(&reply.results[1]),
        vec![b"new".to_vec()],
        "superseded, no sibling"
    );
    assert_eq!(values(&reply.results[2]), Vec::<Vec<u8>>::new(), "absent");

    // Bounds: too many operations, or too many bytes, refuse the call
    // and run nothing.
    let ops: Vec<PipelinedOp> = (0..=MAX_BATCH_OPS as u64)
        .map(|i| put(i, format!("over:{i}").as_bytes(), b"x", Vec::new()))
        .collect();
    let err = c.batch(BatchOpsRequest { ops }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("1025 operations"), "{err:?}");
    let big = vec![7u8; 1 << 20];
    let ops: Vec<PipelinedOp> = (0..(MAX_BATCH_BYTES >> 20) as u64 + 1)
        .map(|i| put(i, format!("big:{i}").as_bytes(), &big, Vec::new()))
        .collect();
    let err = c.batch(BatchOpsRequest { ops }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let reply = c
        .batch(BatchOpsRequest {
            ops: vec![get(1, b"over:0"), get(2, b"big:0")],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.results.iter().all(|r| values(r).is_empty()),
        "nothing ran"
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}

/// A refused conditional write answers FAILED_PRECONDITION with the key's
/// current context: in the status metadata of a unary call, in the
/// result of a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_conditional_write_carries_the_current_context() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let mut c = client(&nodes[0]).await;
    let create = || PutRequest {
        key: b"cond".to_vec(),
        value: b"v".to_vec(),
        if_none_match: true,
        ..PutRequest::default()
    };
    let made = c.put(create()).await.unwrap().into_inner();
    let status = c.put(create()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let carried = status
        .metadata()
        .get_bin(kv_server::pipeline::CONTEXT_METADATA)
        .unwrap()
        .to_bytes()
        .unwrap();
    assert_eq!(carried.as_ref(), made.context.as_slice());
    let reply = c
        .batch(BatchOpsRequest {
            ops: vec![PipelinedOp {
                id: 1,
                op: Some(Op::Put(create())),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    match &reply.results[0].result {
        Some(Outcome::Error(e)) => {
            assert_eq!(e.code, tonic::Code::FailedPrecondition as i32);
            assert_eq!(e.context, made.context);
        }
        other => panic!("{other:?}"),
    }
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
