//! A secured cluster of real `kvd` processes (TLS between nodes and for
//! clients, tokens with roles) and what it refuses. Each case names what it
//! sends and what comes back.

use std::path::Path;
use std::time::{Duration, SystemTime};

use kv_core::NodeId;
use kv_server::endpoint::ConnectSettings;
use kv_server::proto::admin_client::AdminClient;
use kv_server::proto::internal_client::InternalClient;
use kv_server::proto::kv_client::KvClient;
use kv_server::proto::{
    Empty, GetRequest, GossipRequest, MerkleRequest, PutRequest, ReadBatchRequest, RingMember,
    RingState,
};
use kv_server::security::certs::{CertsDir, Validity};
use kv_server::security::{AuthChannel, ClientCredentials, Role};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;

use crate::process::{Nodes, eventually, free_ports, kvd, members};

/// The credentials of a test cluster: its CA and node certificates, one
/// token per role, a read-only client certificate, and the same for a
/// stranger's CA.
pub(crate) struct Creds {
    dir: CertsDir,
    pub(crate) read: String,
    write: String,
    pub(crate) admin: String,
    ca: String,
}

pub(crate) fn make_creds(root: &Path, nodes: u64) -> Creds {
    let dir = CertsDir(root.join("certs"));
    dir.init(1).unwrap();
    for id in 1..=nodes {
        dir.issue_node(NodeId(id), &[], 1).unwrap();
    }
    // Node 9 has a certificate from the cluster's CA but owns no tokens.
    dir.issue_node(NodeId(9), &[], 1).unwrap();
    dir.issue_client("reader", Role::Read, 1).unwrap();
    let read = dir.add_token("app-reader", Role::Read).unwrap();
    let write = dir.add_token("app", Role::Write).unwrap();
    let admin = dir.add_token("ops", Role::Admin).unwrap();
    let ca = std::fs::read_to_string(dir.ca_cert()).unwrap();
    Creds {
        dir,
        read,
        write,
        admin,
        ca,
    }
}

impl Creds {
    pub(crate) fn token(&self, token: &str) -> ClientCredentials {
        ClientCredentials {
            ca_pem: Some(self.ca.clone()),
            identity: None,
            token: Some(token.to_string()),
        }
    }

    fn node(&self, id: u64) -> ClientCredentials {
        let (cert, key) = self.dir.node(NodeId(id));
        ClientCredentials {
            ca_pem: Some(self.ca.clone()),
            identity: Some((
                std::fs::read_to_string(cert).unwrap(),
                std::fs::read_to_string(key).unwrap(),
            )),
            token: None,
        }
    }
}

async fn channel(creds: &ClientCredentials, port: u16) -> Result<AuthChannel, String> {
    let endpoint = creds.endpoint(
        &format!("127.0.0.1:{port}"),
        &ConnectSettings::client(Duration::from_secs(2), Duration::from_secs(5)),
    )?;
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    Ok(InterceptedService::new(channel, creds.bearer()?))
}

/// The outcome of a get through `creds`: the code, or a connection that
/// never carried the request (`Err`).
async fn get_code(creds: &ClientCredentials, port: u16) -> Result<Code, String> {
    let mut kv = KvClient::new(channel(creds, port).await?);
    Ok(kv
        .get(GetRequest {
            key: b"k".to_vec(),
            r: 1,
        })
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok))
}

async fn put_code(creds: &ClientCredentials, port: u16) -> Result<Code, String> {
    let mut kv = KvClient::new(channel(creds, port).await?);
    Ok(kv
        .put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            w: 1,
            ..Default::default()
        })
        .await
        .map_or_else(|s| s.code(), |_| Code::Ok))
}

/// The codes of one pipeline message through `creds`, in order: a get, a
/// put, and an operation without an operation; or the code that refused
/// the pipeline itself (`Err`). A `Batch` call of the same operations
/// answers the same codes (checked here).
async fn pipeline_codes(creds: &ClientCredentials, port: u16) -> Result<Vec<Code>, Code> {
    let codes = pipeline_codes_alone(creds, port).await;
    assert_eq!(batch_codes(creds, port).await, codes, "Batch as a pipeline");
    codes
}

fn three_ops() -> Vec<kv_server::proto::PipelinedOp> {
    use kv_server::proto::PipelinedOp;
    use kv_server::proto::pipelined_op::Op;
    let op = |id, op| PipelinedOp { id, op };
    let get = Op::Get(GetRequest {
        key: b"k".to_vec(),
        r: 1,
    });
    let put = Op::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        w: 1,
        ..Default::default()
    });
    vec![op(1, Some(get)), op(2, Some(put)), op(3, None)]
}

fn result_code(result: &kv_server::proto::PipelinedResult) -> Code {
    use kv_server::proto::pipelined_result::Result as Outcome;
    match &result.result {
        Some(Outcome::Error(e)) => Code::from_i32(e.code),
        Some(_) => Code::Ok,
        None => Code::Internal,
    }
}

async fn batch_codes(creds: &ClientCredentials, port: u16) -> Result<Vec<Code>, Code> {
    let mut kv = KvClient::new(channel(creds, port).await.unwrap());
    let reply = kv
        .batch(kv_server::proto::BatchOpsRequest { ops: three_ops() })
        .await
        .map_err(|s| s.code())?
        .into_inner();
    Ok(reply.results.iter().map(result_code).collect())
}

async fn pipeline_codes_alone(creds: &ClientCredentials, port: u16) -> Result<Vec<Code>, Code> {
    use kv_server::proto::PipelineRequest;
    let mut kv = KvClient::new(channel(creds, port).await.unwrap());
    let message = PipelineRequest { ops: three_ops() };
    let mut replies = kv
        .pipeline(futures_util::stream::iter([message]))
        .await
        .map_err(|s| s.code())?
        .into_inner();
    let mut codes = vec![None; 3];
    while let Some(reply) = replies.message().await.map_err(|s| s.code())? {
        for result in reply.results {
            codes[(result.id - 1) as usize] = Some(result_code(&result));
        }
    }
    Ok(codes
        .into_iter()
        .map(|c| c.expect("every operation answered"))
        .collect())
}

fn gossip_from(from: u64, incarnation: u64) -> GossipRequest {
    let message = kv_gossip::Message {
        from: NodeId(from),
        from_addr: "127.0.0.1:9".into(),
        body: kv_gossip::Body::Ping { seq: 1 },
        updates: vec![kv_gossip::Member {
            id: NodeId(from),
            addr: "127.0.0.1:9".into(),
            incarnation,
            status: kv_gossip::Status::Alive,
            meta: kv_gossip::Meta::default(),
        }],
    };
    GossipRequest {
        message: message.encode(),
    }
}

/// Gossip through `creds`: the code, or `Err` when the connection (its
/// TLS handshake) failed.
async fn gossip_code(
    creds: &ClientCredentials,
    port: u16,
    request: GossipRequest,
) -> Result<Code, String> {
    let mut internal = InternalClient::new(channel(creds, port).await?);
    match internal.gossip(request).await {
        Ok(_) => Ok(Code::Ok),
        // A certificate the server refuses fails the handshake; with TLS
        // 1.3 the client learns it on its first request, as a connection
        // that broke under it (Unknown, Unavailable or Cancelled, by timing),
        // never as an answer of the service.
        Err(s)
            if matches!(
                s.code(),
                Code::Unknown | Code::Unavailable | Code::Cancelled
            ) =>
        {
            Err(format!("{:?}: {}", s.code(), s.message()))
        }
        Err(s) => Ok(s.code()),
    }
}

/// Waits until the node on port `p` sees three alive members (the
/// cluster formed over mutual TLS).
pub(crate) async fn three_alive(admin: &ClientCredentials, p: u16) {
    eventually(30, "three alive members over TLS", || async {
        let Ok(ch) = channel(admin, p).await else {
            return false;
        };
        AdminClient::new(ch).status(Empty {}).await.is_ok_and(|s| {
            s.get_ref()
                .members
                .iter()
                .filter(|m| m.state == "alive")
                .count()
                == 3
        })
    })
    .await;
}

pub(crate) fn secured_kvd(
    id: usize,
    ports: &[u16],
    root: &Path,
    creds: &Creds,
    extra: &[&str],
) -> std::process::Child {
    let mut flags = members(ports, ports.len());
    flags.push("--certs-dir".into());
    flags.push(creds.dir.0.display().to_string());
    flags.extend(extra.iter().map(|s| s.to_string()));
    kvd(id, ports, root, &flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secured_cluster_refuses_strangers_forgers_and_roles_beyond_their_rights() {
    let root = tempfile::tempdir().unwrap();
    let creds = make_creds(root.path(), 3);
    let ports = free_ports(3);
    let _nodes = Nodes(
        (1..=3)
            .map(|id| secured_kvd(id, &ports, root.path(), &creds, &[]))
            .collect(),
    );
    let p = ports[0];
    let admin = creds.token(&creds.admin);
    // The cluster forms over mutual TLS: every node sees three alive.
    three_alive(&admin, p).await;
    let status = AdminClient::new(channel(&admin, p).await.unwrap())
        .status(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.tls && status.authenticates && !status.insecure);
    assert_eq!(put_code(&creds.token(&creds.write), p).await, Ok(Code::Ok));

    // 1. A plaintext client: no TLS, so no request is ever answered.
    let plaintext = ClientCredentials::default();
    assert!(get_code(&plaintext, p).await.is_err_or_not_ok());
    // 2. A plaintext peer's gossip: refused the same way.
    assert!(
        gossip_code(&plaintext, p, gossip_from(2, 1))
            .await
            .is_err_or_not_ok()
    );
    // 3. Node 2's certificate from a stranger's CA: the handshake fails.
    let stranger = CertsDir(root.path().join("stranger"));
    stranger.init(1).unwrap();
    stranger.issue_node(NodeId(2), &[], 1).unwrap();
    let (cert, key) = stranger.node(NodeId(2));
    let forged = ClientCredentials {
        ca_pem: Some(creds.ca.clone()),
        identity: Some((
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        )),
        token: None,
    };
    let outcome = gossip_code(&forged, p, gossip_from(2, 1)).await;
    assert!(outcome.is_err(), "a stranger's certificate: {outcome:?}");
    // 4. Node 2's own certificate, expired yesterday: the handshake fails.
    let ca = creds.dir.authority().unwrap();
    let day = Duration::from_secs(86_400);
    let expired = ca
        .issue_node(
            NodeId(2),
            &[],
            Validity {
                not_before: SystemTime::now() - 2 * day,
                not_after: SystemTime::now() - day,
            },
        )
        .unwrap();
    let late = ClientCredentials {
        identity: Some((expired.cert_pem, expired.key_pem)),
        ..creds.node(2)
    };
    let outcome = gossip_code(&late, p, gossip_from(2, 1)).await;
    assert!(outcome.is_err(), "an expired certificate: {outcome:?}");
    // 5. Node 2's certificate, gossip claiming to come from node 3:
    // PermissionDenied. From node 2 itself: accepted.
    let node2 = creds.node(2);
    assert_eq!(
        gossip_code(&node2, p, gossip_from(3, 1)).await,
        Ok(Code::PermissionDenied)
    );
    assert_eq!(
        gossip_code(&node2, p, gossip_from(2, 1)).await,
        Ok(Code::Ok)
    );
    // 6. Node 2's certificate, a Merkle exchange claiming node 3.
    let refused = InternalClient::new(channel(&node2, p).await.unwrap())
        .merkle_exchange(MerkleRequest {
            from: 3,
            request: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // 7. Node 2 announcing itself at incarnation 2^60: refused at decode.
    assert_eq!(
        gossip_code(&node2, p, gossip_from(2, 1 << 60)).await,
        Ok(Code::InvalidArgument)
    );
    // 8. Node 9 (the cluster's CA, no tokens) offering a ring that hands
    // everything to node 2 alone: it owns tokens in neither ring.
    let grab = RingState {
        epoch: 1 << 40,
        vnodes: 8,
        members: vec![RingMember {
            id: 2,
            addr: "127.0.0.1:9".into(),
            zone: None,
            weight: 1,
            tokens: vec![1, 2, 3],
        }],
    };
    let refused = InternalClient::new(channel(&creds.node(9), p).await.unwrap())
        .install_ring(grab.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // 9. No token over TLS: Unauthenticated. An unknown token: the same.
    let anonymous = ClientCredentials {
        token: None,
        ..creds.token("")
    };
    assert_eq!(get_code(&anonymous, p).await, Ok(Code::Unauthenticated));
    assert_eq!(
        get_code(&creds.token("kv_guess"), p).await,
        Ok(Code::Unauthenticated)
    );
    // 10. A read token reads, and cannot put.
    let reader = creds.token(&creds.read);
    assert_eq!(get_code(&reader, p).await, Ok(Code::Ok));
    assert_eq!(put_code(&reader, p).await, Ok(Code::PermissionDenied));
    // The same in a pipeline: its writes are checked one by one.
    assert_eq!(
        pipeline_codes(&reader, p).await,
        Ok(vec![
            Code::Ok,
            Code::PermissionDenied,
            Code::InvalidArgument
        ])
    );
    assert_eq!(
        pipeline_codes(&creds.token(&creds.write), p).await,
        Ok(vec![Code::Ok, Code::Ok, Code::InvalidArgument])
    );
    assert_eq!(
        pipeline_codes(&anonymous, p).await,
        Err(Code::Unauthenticated)
    );
    // 11. A write token cannot make a node leave, read hints, or install a
    // ring.
    let writer = creds.token(&creds.write);
    let mut as_writer = AdminClient::new(channel(&writer, p).await.unwrap());
    assert_eq!(
        as_writer.leave(Empty {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(
        as_writer.hints(Empty {}).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let refused = InternalClient::new(channel(&writer, p).await.unwrap())
        .install_ring(grab.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    // 12. Even the admin token cannot speak as a node.
    let refused = InternalClient::new(channel(&admin, p).await.unwrap())
        .install_ring(grab)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        AdminClient::new(channel(&admin, p).await.unwrap())
            .hints(Empty {})
            .await
            .is_ok()
    );
    // 13. A node's certificate is not a client credential.
    assert_eq!(put_code(&node2, p).await, Ok(Code::PermissionDenied));
    assert_eq!(pipeline_codes(&node2, p).await, Err(Code::PermissionDenied));
    // 14. A read-only client certificate (no token): reads, cannot put.
    let (cert, key) = creds.dir.client("reader");
    let cert_reader = ClientCredentials {
        ca_pem: Some(creds.ca.clone()),
        identity: Some((
            std::fs::read_to_string(cert).unwrap(),
            std::fs::read_to_string(key).unwrap(),
        )),
        token: None,
    };
    assert_eq!(get_code(&cert_reader, p).await, Ok(Code::Ok));
    assert_eq!(put_code(&cert_reader, p).await, Ok(Code::PermissionDenied));
    // 15. A node's oversized read batch: InvalidArgument before any read.
    let huge = ReadBatchRequest {
        keys: vec![b"k".to_vec(); 100_000],
    };
    let mut replies = InternalClient::new(channel(&creds.node(1), p).await.unwrap())
        .read_stream(futures_util::stream::iter([huge]))
        .await
        .unwrap()
        .into_inner();
    let refused = replies.message().await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    // The node serves on, its view of the cluster untouched (a member may
    // be suspected for a moment on a loaded machine: the view must come
    // back to three alive, and the ring stays the real one).
    eventually(20, "three alive members after the attempts", || async {
        let status = AdminClient::new(channel(&admin, p).await.unwrap())
            .status(Empty {})
            .await
            .unwrap()
            .into_inner();
        assert!(status.ring_epoch < 1 << 40);
        status.members.iter().filter(|m| m.state == "alive").count() == 3
    })
    .await;
    assert_eq!(get_code(&reader, p).await, Ok(Code::Ok));
}

trait ErrOrNotOk {
    fn is_err_or_not_ok(&self) -> bool;
}

impl ErrOrNotOk for Result<Code, String> {
    fn is_err_or_not_ok(&self) -> bool {
        !matches!(self, Ok(Code::Ok))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_off_loopback_without_tls_refuses_to_start_and_insecure_says_so() {
    let root = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    // 16. 0.0.0.0 without TLS: kvd exits with the reason before binding.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args([
            "--node-id",
            "1",
            "--listen",
            &format!("0.0.0.0:{}", ports[0]),
        ])
        .args(["--advertise", &format!("127.0.0.1:{}", ports[0])])
        .arg("--data-dir")
        .arg(root.path().join("n1"))
        .args(["--member", &format!("1@127.0.0.1:{}", ports[0])])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("without TLS") && stderr.contains("--insecure"),
        "{stderr}"
    );
    // 16b. Node 1 given node 9's certificate: exits naming the mismatch,
    // instead of starting with a certificate its peers would refuse.
    let certs = make_creds(root.path(), 1);
    let (cert9, key9) = certs.dir.node(NodeId(9));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kvd"))
        .args([
            "--node-id",
            "1",
            "--listen",
            &format!("127.0.0.1:{}", ports[0]),
        ])
        .arg("--data-dir")
        .arg(root.path().join("n1"))
        .args(["--member", &format!("1@127.0.0.1:{}", ports[0])])
        .arg("--tls-ca")
        .arg(certs.dir.ca_cert())
        .arg("--tls-cert")
        .arg(cert9)
        .arg("--tls-key")
        .arg(key9)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not node 1"), "{stderr}");
    // 17. --insecure (here on loopback): it starts, warns, and says so in
    // its status and metrics; /metrics with --http-token refuses a request
    // without the token.
    let creds = certs;
    let tokens = creds.dir.tokens().display().to_string();
    let http = format!("127.0.0.1:{}", ports[1]);
    let _node = Nodes(vec![kvd(
        1,
        &ports[..1],
        root.path(),
        &[
            "--member".into(),
            format!("1@127.0.0.1:{}", ports[0]),
            "--insecure".into(),
            "--tokens-file".into(),
            tokens,
            "--http".into(),
            http.clone(),
            "--http-token".into(),
        ],
    )]);
    let admin = ClientCredentials {
        token: Some(creds.admin.clone()),
        ..ClientCredentials::default()
    };
    eventually(20, "the insecure node answers", || async {
        get_code(&admin, ports[0]).await == Ok(Code::Ok)
    })
    .await;
    let status = AdminClient::new(channel(&admin, ports[0]).await.unwrap())
        .status(Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.insecure && !status.tls && status.authenticates);
    // Tokens are still checked without TLS.
    assert_eq!(
        put_code(&ClientCredentials::default(), ports[0]).await,
        Ok(Code::Unauthenticated)
    );
    let anonymous = http_get(&http, None).await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    let metrics = http_get(&http, Some(&creds.read)).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("\nkv_insecure 1\n"), "{metrics}");
    assert!(metrics.contains("\nkv_tls_enabled 0\n"), "{metrics}");
    // 18. A client that opens a connection and never finishes its headers
    // is disconnected (header read timeout), and the page serves on.
    let mut slow = tokio::net::TcpStream::connect(&http).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a trickling client is disconnected");
    assert!(
        http_get(&http, Some(&creds.read))
            .await
            .starts_with("HTTP/1.1 200")
    );
}

pub(crate) async fn http_get(addr: &str, token: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// A secured cluster whose nodes send replica batches over framed
/// connections: they shake hands with their node certificates (writes at
/// W=2 need a peer over them), and a stranger who opens a framed
/// connection without TLS gets no hello and is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framed_replica_connections_are_mutual_tls_in_a_secured_cluster() {
    let root = tempfile::tempdir().unwrap();
    let creds = make_creds(root.path(), 3);
    let ports = free_ports(3);
    let _nodes = Nodes(
        (1..=3)
            .map(|id| secured_kvd(id, &ports, root.path(), &creds, &["--internode", "frames"]))
            .collect(),
    );
    let p = ports[0];
    let admin = creds.token(&creds.admin);
    three_alive(&admin, p).await;
    // W=3 and R=3: every write and read needs both peers of its
    // coordinator, over framed TLS (there is no fallback to gRPC).
    let writer = creds.token(&creds.write);
    for (i, port) in ports.iter().enumerate() {
        let mut kv = KvClient::new(channel(&writer, *port).await.unwrap());
        let key = format!("framed-tls:{i}").into_bytes();
        kv.put(PutRequest {
            key: key.clone(),
            value: b"v".to_vec(),
            w: 3,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("W=3 through {port}: {e}"));
        let got = kv
            .get(GetRequest { key, r: 3 })
            .await
            .unwrap_or_else(|e| panic!("R=3 through {port}: {e}"))
            .into_inner();
        assert_eq!(got.values, vec![b"v".to_vec()]);
    }
    // A plaintext framed connection to a TLS node: the node expects a TLS
    // handshake after the magic, so a hello is never answered.
    let (_raw, answer) = crate::framed_hello(([127, 0, 0, 1], p).into()).await;
    assert!(
        !answer.is_some_and(|f| f.kind == kv_server::frames::Kind::Hello),
        "a plaintext framed caller was greeted by a TLS node"
    );
}
