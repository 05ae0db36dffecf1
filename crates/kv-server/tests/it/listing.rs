//! Key listing through gRPC: the `List` stream's pages and cursors, the
//! SDK's `list` resuming across nodes, and a node down.

use kv_server::client::{BatchWrite, Client, ClientConfig};
use kv_server::proto::ListRequest;

use crate::{client, cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_listed_by_prefix_in_pages_with_cursors_that_resume() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(3, dir.path()).await;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let sdk = Client::new(&addrs, ClientConfig::default()).unwrap();
    let names: Vec<String> = (0..2_500).map(|i| format!("l:{i:05}")).collect();
    let mut writes: Vec<BatchWrite> = names
        .iter()
        .map(|k| BatchWrite::put(k.as_str(), "x", None))
        .collect();
    writes.extend((0..30).map(|i| BatchWrite::put(format!("m:{i}"), "x", None)));
    for result in sdk.write_many(writes).await {
        result.unwrap();
    }
    // Every 9th is deleted: not listed.
    let mut expected = Vec::new();
    for (i, name) in names.iter().enumerate() {
        if i % 9 == 0 {
            let read = sdk.get(name.as_bytes()).await.unwrap();
            sdk.delete(name.as_bytes(), &read.context).await.unwrap();
        } else {
            expected.push(name.clone().into_bytes());
        }
    }

    // The stream: pages of at most 1,000 keys, each with the cursor of
    // its last key; the last says no more follow.
    let mut raw = client(&nodes[1]).await;
    let mut stream = raw
        .list(ListRequest {
            prefix: b"l:".to_vec(),
            after: Vec::new(),
            limit: 0,
            end: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut listed: Vec<Vec<u8>> = Vec::new();
    let mut pages = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        assert!(page.keys.len() <= 1_000);
        listed.extend(page.keys.iter().cloned());
        pages.push(page);
    }
    assert_eq!(listed, expected);
    assert!(pages.len() >= 3, "2,222 keys come in several pages");
    let (last, earlier) = pages.split_last().unwrap();
    assert!(!last.more);
    for page in earlier {
        assert!(page.more);
        assert_eq!(
            Some(&page.cursor),
            page.keys.last(),
            "a cursor is the page's last key"
        );
    }

    // The SDK: a limit, then on from the cursor.
    let first = sdk.list(b"l:", None, 1_200).await.unwrap();
    assert_eq!(first.keys, expected[..1_200]);
    assert_eq!(first.next.as_ref(), Some(&expected[1_199]));
    let rest = sdk.list(b"l:", first.next.as_deref(), 0).await.unwrap();
    assert_eq!(rest.keys, expected[1_200..]);
    assert_eq!(rest.next, None);
    assert_eq!(
        sdk.list(b"", None, 0).await.unwrap().keys.len(),
        expected.len() + 30
    );
    assert!(sdk.list(b"zz", None, 0).await.unwrap().keys.is_empty());
    // A range: after one key and before another, across prefixes.
    let range = sdk
        .list_range(Some(b"l:02490"), Some(b"m:1"), 0)
        .await
        .unwrap();
    let mut wanted: Vec<Vec<u8>> = expected
        .iter()
        .filter(|k| k.as_slice() > b"l:02490".as_slice())
        .cloned()
        .collect();
    wanted.push(b"m:0".to_vec());
    assert_eq!(range.keys, wanted);
    assert_eq!(range.next, None);

    // A node down: the listing goes to the next node and is complete
    // (with three nodes and N=3, every node replicates every range).
    let down = nodes[2].addr.to_string();
    let mut nodes = nodes;
    nodes.pop().unwrap().shutdown().await.unwrap();
    let through_down = Client::new(
        [down.as_str(), &addrs[0]],
        ClientConfig {
            route_by_key: false,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let listed = through_down.list(b"l:", None, 0).await.unwrap();
    assert_eq!(listed.keys, expected);
    // An oversize prefix is refused as such.
    let huge = vec![b'k'; 70_000];
    let err = sdk.list(&huge, None, 0).await.unwrap_err();
    assert!(
        matches!(err, kv_server::client::ClientError::InvalidArgument(_)),
        "{err}"
    );
    for n in nodes {
        n.shutdown().await.unwrap();
    }
}
