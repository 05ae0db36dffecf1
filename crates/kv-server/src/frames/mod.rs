//! The lean internode path: replica writes and reads as length-prefixed
//! frames on a plain TCP connection, beside gRPC on the same port.
//!
//! A connection starts with the four bytes [`MAGIC`] (an HTTP/2 client
//! starts with `PRI `, a TLS one with a handshake record, so the listener
//! tells them apart by peeking) and a hello frame naming the caller's wire
//! version; the node answers with its own hello or an error frame. Then
//! the caller sends one request frame at a time and reads its reply before
//! the next: the transport already sends one batch at a time per peer and
//! kind, so a connection per peer and kind needs no request ids, no
//! connection task and no channel; the task that sends a batch writes it
//! and reads the answer itself.
//!
//! A frame is a 4-byte big-endian length (of what follows), a kind byte
//! and a payload: the protobuf message of the gRPC stream it stands in for
//! (`ReplicateBatchRequest` -> `BatchReply`, `ReadBatchRequest` ->
//! `ReadBatchReply`), or, for an error, a status code byte and a UTF-8
//! message. Frames above [`MAX_FRAME_BYTES`], unknown kinds and payloads
//! that do not decode are refused with an error, never a panic (fuzzed by
//! `fuzz/fuzz_targets/internode_frame.rs`).
//!
//! With TLS on, the magic is followed by a mutual TLS handshake with the
//! node certificates (`tls`) before the hello, and the caller is admitted
//! by the gate's own policy, as a call to the internal service would be:
//! a framed connection reaches no further than a gRPC one.

mod tls;

use std::time::Duration;

use kv_core::NodeId;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::{Code, Status};

use crate::proto::{BatchReply, ReadBatchReply, ReadBatchRequest, ReplicateBatchRequest};
use crate::security::Policy;
use crate::version::{Versions, WIRE_VERSION};
pub(crate) use tls::FrameTls;

/// What a framed connection opens with.
pub const MAGIC: [u8; 4] = *b"KVF1";

/// The largest frame accepted (length of kind and payload), as for gRPC.
pub const MAX_FRAME_BYTES: usize = crate::endpoint::MAX_MESSAGE_BYTES;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A caller's wire version and node id; or the node's answer.
    Hello = 1,
    /// A `ReplicateBatchRequest`.
    Replicate = 2,
    /// A `BatchReply`.
    Replicated = 3,
    /// A `ReadBatchRequest`.
    Read = 4,
    /// A `ReadBatchReply`.
    States = 5,
    /// A failed request: a status code byte and a UTF-8 message.
    Error = 6,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Replicate,
            3 => Kind::Replicated,
            4 => Kind::Read,
            5 => Kind::States,
            6 => Kind::Error,
            _ => return None,
        })
    }
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or ended.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The length is zero or above the limit.
    #[error("a frame of {0} bytes (at most {MAX_FRAME_BYTES}, at least 1)")]
    Length(usize),
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A kind where another was expected.
    #[error("a {got:?} frame where {expected:?} was expected")]
    Unexpected {
        /// What came.
        got: Kind,
        /// What was due.
        expected: Kind,
    },
    /// The payload does not decode.
    #[error("payload: {0}")]
    Payload(String),
}

/// A frame: its kind and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The frame as it goes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + self.payload.len());
        out.extend_from_slice(&((self.payload.len() + 1) as u32).to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&self.payload);
        out
    }

    /// The first frame in `bytes` and how many bytes it took, `None` when
    /// `bytes` holds only part of one.
    ///
    /// # Errors
    ///
    /// [`FrameError`] for a bad length or kind.
    pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let &[a, b, c, d, k, ..] = bytes else {
            return Ok(None);
        };
        let (len, kind) = header_of([a, b, c, d, k])?;
        let Some(payload) = bytes.get(5..4 + len) else {
            return Ok(None);
        };
        Ok(Some((
            Frame {
                kind,
                payload: payload.to_vec(),
            },
            4 + len,
        )))
    }

    fn message<M: Message + Default>(&self, expected: Kind) -> Result<M, FrameError> {
        if self.kind != expected {
            return Err(FrameError::Unexpected {
                got: self.kind,
                expected,
            });
        }
        M::decode(&*self.payload).map_err(|e| FrameError::Payload(e.to_string()))
    }
}

/// The length (of kind and payload) and kind a frame header names.
fn header_of(header: [u8; 5]) -> Result<(usize, Kind), FrameError> {
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 || len > MAX_FRAME_BYTES {
        return Err(FrameError::Length(len));
    }
    let kind = Kind::from_byte(header[4]).ok_or(FrameError::Kind(header[4]))?;
    Ok((len, kind))
}

/// Reads one frame.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let mut header = [0u8; 5];
    r.read_exact(&mut header).await?;
    let (len, kind) = header_of(header)?;
    let mut payload = vec![0u8; len - 1];
    r.read_exact(&mut payload).await?;
    Ok(Frame { kind, payload })
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.encode()).await?;
    w.flush().await
}

impl Frame {
    /// The hello a caller opens with, naming node `node` and this
    /// release's wire version.
    pub fn hello(node: u64) -> Frame {
        Frame {
            kind: Kind::Hello,
            payload: hello_payload(node),
        }
    }
}

fn hello_payload(node: u64) -> Vec<u8> {
    let mut out = WIRE_VERSION.to_be_bytes().to_vec();
    out.extend_from_slice(&node.to_be_bytes());
    out
}

/// A hello's wire version and node id.
fn parse_hello(payload: &[u8]) -> Result<(u32, u64), FrameError> {
    if payload.len() != 12 {
        return Err(FrameError::Payload(format!(
            "a hello of {} bytes (12 expected)",
            payload.len()
        )));
    }
    let mut wire = [0u8; 4];
    let mut node = [0u8; 8];
    wire.copy_from_slice(&payload[..4]);
    node.copy_from_slice(&payload[4..]);
    let (wire, node) = (u32::from_be_bytes(wire), u64::from_be_bytes(node));
    Ok((wire, node))
}

fn error_frame(status: &Status) -> Frame {
    let mut payload = vec![status.code() as u8];
    payload.extend_from_slice(status.message().as_bytes());
    Frame {
        kind: Kind::Error,
        payload,
    }
}

/// The status an error frame carries.
fn status_of(frame: &Frame) -> Status {
    match frame.payload.split_first() {
        Some((&code, message)) => Status::new(
            Code::from_i32(i32::from(code)),
            String::from_utf8_lossy(message).into_owned(),
        ),
        None => Status::internal("an empty error frame"),
    }
}

/// A request type of the framed path, with its kind and its reply's.
pub(crate) trait Request: Message + Sized + 'static {
    /// Its frame kind.
    const KIND: Kind;
    /// Its reply's frame kind.
    const REPLY: Kind;
    /// Its reply.
    type Reply: Message + Default + 'static;
}

impl Request for ReplicateBatchRequest {
    const KIND: Kind = Kind::Replicate;
    const REPLY: Kind = Kind::Replicated;
    type Reply = BatchReply;
}

impl Request for ReadBatchRequest {
    const KIND: Kind = Kind::Read;
    const REPLY: Kind = Kind::States;
    type Reply = ReadBatchReply;
}

/// A framed connection, plaintext or TLS (made by [`framed`]).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `stream` as a framed connection, read through a buffer: a frame's
/// header and payload in one read from the socket, not two.
fn framed<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S) -> Box<dyn Io> {
    Box::new(BufReader::new(stream))
}

/// The caller's side: one connection to a peer, opened on first use and
/// again after any failure, one request at a time.
pub(crate) struct FramedPeer {
    addr: String,
    peer: NodeId,
    me: NodeId,
    tls: Option<FrameTls>,
    conn: tokio::sync::Mutex<Option<Box<dyn Io>>>,
    /// Until when the peer is taken not to speak frames (it closed or
    /// garbled a framed connection before its hello: a release before
    /// them), so its gRPC streams are used.
    no_frames_until: parking_lot::Mutex<Option<tokio::time::Instant>>,
}

/// How long a peer found not to speak frames is left on gRPC before the
/// next try (it may have been upgraded meanwhile).
const NO_FRAMES_RETRY: Duration = Duration::from_secs(60);

impl FramedPeer {
    /// Node `peer` at `addr`, called by node `me`, over mutual TLS when
    /// `tls` is set.
    pub(crate) fn new(addr: String, peer: NodeId, me: NodeId, tls: Option<FrameTls>) -> Self {
        FramedPeer {
            addr,
            peer,
            me,
            tls,
            conn: tokio::sync::Mutex::new(None),
            no_frames_until: parking_lot::Mutex::new(None),
        }
    }

    /// Whether to try frames with this peer now.
    pub(crate) fn speaks_frames(&self) -> bool {
        let mut until = self.no_frames_until.lock();
        match *until {
            Some(t) if tokio::time::Instant::now() < t => false,
            Some(_) => {
                *until = None;
                true
            }
            None => true,
        }
    }

    /// Sends `request` and waits at most `timeout` for its reply. A
    /// failure or a late reply closes the connection. `Unimplemented`
    /// when the peer does not speak frames (nothing was sent; see
    /// [`speaks_frames`](Self::speaks_frames)).
    pub(crate) async fn call<R: Request>(
        &self,
        request: &R,
        timeout: Duration,
    ) -> Result<R::Reply, Status> {
        let mut slot = self.conn.lock().await;
        let frame = Frame {
            kind: R::KIND,
            payload: request.encode_to_vec(),
        };
        let exchange = async {
            let conn = match slot.as_mut() {
                Some(conn) => conn,
                None => slot.insert(self.connect().await?),
            };
            write_frame(conn, &frame)
                .await
                .map_err(|e| unavailable(e.into()))?;
            let reply = read_frame(conn).await.map_err(unavailable)?;
            if reply.kind == Kind::Error {
                return Err(status_of(&reply));
            }
            reply
                .message::<R::Reply>(R::REPLY)
                .map_err(|e| Status::internal(e.to_string()))
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded("no framed reply in time")),
        };
        if let Err(status) = &result {
            *slot = None;
            if status.code() == Code::Unimplemented {
                *self.no_frames_until.lock() = Some(tokio::time::Instant::now() + NO_FRAMES_RETRY);
            }
        }
        result
    }

    async fn connect(&self) -> Result<Box<dyn Io>, Status> {
        let mut tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| Status::unavailable(format!("connect to {}: {e}", self.addr)))?;
        tcp.set_nodelay(true).map_err(|e| unavailable(e.into()))?;
        tcp.write_all(&MAGIC)
            .await
            .map_err(|e| unavailable(e.into()))?;
        // From here, a peer that closes or answers garbage is taken for
        // one that does not speak frames (its gRPC server saw a bad
        // preface or TLS record).
        let peer = self.peer;
        let no_frames = |e: &dyn std::fmt::Display| {
            Status::unimplemented(format!(
                "node {peer} did not take a framed connection ({e}); its gRPC streams are used"
            ))
        };
        let mut conn = match &self.tls {
            Some(tls) => framed(
                tls.connect(tcp, self.peer)
                    .await
                    .map_err(|e| no_frames(&e))?,
            ),
            None => framed(tcp),
        };
        let hello = Frame::hello(self.me.0);
        write_frame(&mut conn, &hello)
            .await
            .map_err(|e| no_frames(&e))?;
        let answer = read_frame(&mut conn).await.map_err(|e| no_frames(&e))?;
        match answer.kind {
            Kind::Hello => Ok(conn),
            Kind::Error => Err(status_of(&answer)),
            other => Err(Status::internal(format!(
                "a {other:?} frame answered a hello"
            ))),
        }
    }
}

fn unavailable(e: FrameError) -> Status {
    Status::unavailable(format!("framed connection: {e}"))
}

/// The node's side of one framed connection (the magic already read):
/// answers the hello, then each request with `answer`, until the caller
/// closes, a frame is refused (the connection is closed after an error
/// frame saying why), or `stopping` turns true.
pub(crate) async fn serve<S, A, F>(
    mut conn: S,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    answer: A,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Fn(Frame) -> F,
    F: std::future::Future<Output = Result<Frame, Status>>,
{
    let hello = tokio::select! {
        frame = read_frame(&mut conn) => frame,
        () = crate::stopping::stopped(&mut stopping) => return,
    };
    let greeting = match hello.and_then(|f| {
        if f.kind == Kind::Hello {
            parse_hello(&f.payload)
        } else {
            Err(FrameError::Unexpected {
                got: f.kind,
                expected: Kind::Hello,
            })
        }
    }) {
        Ok((wire, _node)) => Versions { wire, format: 0 }
            .check()
            .map_err(Status::failed_precondition),
        Err(e) => Err(Status::invalid_argument(e.to_string())),
    };
    if let Err(status) = greeting {
        let _ = write_frame(&mut conn, &error_frame(&status)).await;
        return;
    }
    let ours = Frame::hello(0);
    if write_frame(&mut conn, &ours).await.is_err() {
        return;
    }
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut conn) => frame,
            () = crate::stopping::stopped(&mut stopping) => return,
        };
        let (reply, fatal) = match frame {
            Ok(frame) => match answer(frame).await {
                Ok(reply) => (reply, false),
                Err(status) => (error_frame(&status), false),
            },
            Err(FrameError::Io(_)) => return,
            Err(e) => (error_frame(&Status::invalid_argument(e.to_string())), true),
        };
        if write_frame(&mut conn, &reply).await.is_err() || fatal {
            return;
        }
    }
}

/// The path a framed connection is admitted as: the gRPC stream it
/// stands in for (the gate's rules for it: only nodes, when TLS is on).
const ADMITTED_AS: &str = "/kv.v1.Internal/ReplicateStream";

/// Takes a framed connection accepted by [`split_listener`] through TLS
/// (when `tls` is set) and the gate's `policy`, then serves it with
/// `answer`. A caller that fails the policy is told why in an error frame
/// and dropped; one that fails the handshake is dropped.
pub(crate) async fn admit_and_serve<A, F>(
    conn: TcpStream,
    tls: Option<FrameTls>,
    policy: std::sync::Arc<Policy>,
    stopping: tokio::sync::watch::Receiver<bool>,
    answer: A,
) where
    A: Fn(Frame) -> F,
    F: std::future::Future<Output = Result<Frame, Status>>,
{
    let (mut conn, cert): (Box<dyn Io>, Option<Vec<u8>>) = match tls {
        Some(tls) => match tokio::time::timeout(CLASSIFY_TIMEOUT, tls.accept(conn)).await {
            Ok(Ok((stream, cert))) => (framed(stream), cert),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "framed TLS handshake failed");
                return;
            }
            Err(_) => return,
        },
        None => (framed(conn), None),
    };
    if let Err(status) = policy.admit(ADMITTED_AS, cert.as_deref(), None) {
        tracing::debug!(%status, "framed connection refused");
        let _ = write_frame(&mut conn, &error_frame(&status)).await;
        return;
    }
    serve(conn, stopping, answer).await;
}

/// Decodes a request frame of type `R`, or says why not.
pub(crate) fn request<R: Request + Default>(frame: &Frame) -> Result<R, Status> {
    frame
        .message::<R>(R::KIND)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// A reply frame for request type `R`.
pub(crate) fn reply<R: Request>(reply: &R::Reply) -> Frame {
    Frame {
        kind: R::REPLY,
        payload: reply.encode_to_vec(),
    }
}

/// How long a new connection may take to send its first four bytes
/// before it is handed to gRPC as it is.
const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections on `listener` and sorts them by their first four
/// bytes: framed ones (the magic read) to the second half, every other to
/// the first, a stream of connections for gRPC. Each connection is sorted
/// in a task of its own, so one that sends nothing holds up no other. The
/// accept loop ends when the gRPC half is dropped.
pub(crate) fn split_listener(
    listener: tokio::net::TcpListener,
) -> (
    impl futures_util::Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
    tokio::sync::mpsc::Receiver<TcpStream>,
) {
    let (grpc_tx, grpc_rx) = tokio::sync::mpsc::channel::<TcpStream>(256);
    let (framed_tx, framed_rx) = tokio::sync::mpsc::channel::<TcpStream>(256);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = grpc_tx.closed() => return,
            };
            let conn = match accepted {
                Ok((conn, _)) => conn,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = conn.set_nodelay(true);
            let (grpc_tx, framed_tx) = (grpc_tx.clone(), framed_tx.clone());
            tokio::spawn(async move {
                if opens_with_magic(&conn).await {
                    let mut conn = conn;
                    let mut magic = [0u8; 4];
                    if conn.read_exact(&mut magic).await.is_ok() {
                        let _ = framed_tx.send(conn).await;
                    }
                } else {
                    let _ = grpc_tx.send(conn).await;
                }
            });
        }
    });
    let incoming = futures_util::stream::unfold(grpc_rx, |mut rx| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), rx))
    });
    (incoming, framed_rx)
}

/// Whether `conn`'s first four bytes are the magic (false for anything
/// else, for a connection that closes first, and for one that sends fewer
/// than four bytes in time).
async fn opens_with_magic(conn: &TcpStream) -> bool {
    let peek = async {
        let mut first = [0u8; 4];
        loop {
            match conn.peek(&mut first).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if n >= 4 => return first == MAGIC,
                Ok(n) if first[..n] != MAGIC[..n] => return false,
                // A prefix of the magic so far: wait for the rest.
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(CLASSIFY_TIMEOUT, peek)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let frame = Frame {
            kind: Kind::Read,
            payload: b"abc".to_vec(),
        };
        let bytes = frame.encode();
        assert_eq!(Frame::decode(&bytes).unwrap(), Some((frame, bytes.len())));
        // Partial frames wait for more.
        for cut in 0..bytes.len() {
            assert_eq!(Frame::decode(&bytes[..cut]).unwrap(), None, "cut {cut}");
        }
        assert!(matches!(
            Frame::decode(&[0, 0, 0, 0, 2]),
            Err(FrameError::Length(0))
        ));
        assert!(matches!(
            Frame::decode(&[0xff, 0xff, 0xff, 0xff, 2]),
            Err(FrameError::Length(_))
        ));
        assert!(matches!(
            Frame::decode(&[0, 0, 0, 1, 99]),
            Err(FrameError::Kind(99))
        ));
        let garbage = Frame {
            kind: Kind::Replicate,
            payload: vec![0xff; 7],
        };
        assert!(request::<ReplicateBatchRequest>(&garbage).is_err());
        let wrong = Frame {
            kind: Kind::Read,
            payload: Vec::new(),
        };
        assert!(request::<ReplicateBatchRequest>(&wrong).is_err());
        let status = status_of(&error_frame(&Status::invalid_argument("no")));
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "no")
        );
        assert_eq!(parse_hello(&hello_payload(7)).unwrap(), (WIRE_VERSION, 7));
        assert!(parse_hello(b"short").is_err());
    }

    /// A caller and a node over an in-memory pipe: a request answered, an
    /// error passed on as its status, garbage refused and the connection
    /// closed, a caller of a far wire version refused at hello.
    #[tokio::test]
    async fn a_connection_answers_requests_and_refuses_garbage() {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let node = tokio::spawn(serve(server, stopping.clone(), |frame| async move {
            let r: ReadBatchRequest = request(&frame)?;
            if r.keys.is_empty() {
                return Err(Status::invalid_argument("no keys"));
            }
            Ok(reply::<ReadBatchRequest>(&ReadBatchReply {
                items: r
                    .keys
                    .into_iter()
                    .map(|k| crate::proto::ReadReply { state: Some(k) })
                    .collect(),
            }))
        }));
        let hello = Frame {
            kind: Kind::Hello,
            payload: hello_payload(1),
        };
        write_frame(&mut client, &hello).await.unwrap();
        assert_eq!(read_frame(&mut client).await.unwrap().kind, Kind::Hello);
        let ask = Frame {
            kind: Kind::Read,
            payload: ReadBatchRequest {
                keys: vec![b"k".to_vec()],
            }
            .encode_to_vec(),
        };
        write_frame(&mut client, &ask).await.unwrap();
        let answer = read_frame(&mut client).await.unwrap();
        let states: ReadBatchReply = answer.message(Kind::States).unwrap();
        assert_eq!(states.items[0].state.as_deref(), Some(&b"k"[..]));
        let empty = Frame {
            kind: Kind::Read,
            payload: Vec::new(),
        };
        write_frame(&mut client, &empty).await.unwrap();
        let refused = read_frame(&mut client).await.unwrap();
        assert_eq!(status_of(&refused).code(), Code::InvalidArgument);
        // A bad kind byte: an error frame, then the connection closes.
        client.write_all(&[0, 0, 0, 1, 42]).await.unwrap();
        let refused = read_frame(&mut client).await.unwrap();
        assert!(status_of(&refused).message().contains("kind 42"));
        assert!(read_frame(&mut client).await.is_err(), "closed");
        node.await.unwrap();

        // A caller three wire versions ahead.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let node = tokio::spawn(serve(server, stopping, |_frame| async move {
            Err::<Frame, _>(Status::internal("never asked"))
        }));
        let mut far = (WIRE_VERSION + 3).to_be_bytes().to_vec();
        far.extend_from_slice(&1u64.to_be_bytes());
        write_frame(
            &mut client,
            &Frame {
                kind: Kind::Hello,
                payload: far,
            },
        )
        .await
        .unwrap();
        let refused = read_frame(&mut client).await.unwrap();
        assert_eq!(status_of(&refused).code(), Code::FailedPrecondition);
        node.await.unwrap();
        drop(stop);
    }
}
