//! Spans of a client request, for whoever subscribes to them.
//!
//! Every client request a coordinator serves (a get, put or delete, its
//! own or forwarded to it) is a `request` span with target
//! [`TARGET`] (with the quorum, `r` or `w`, and the key's replicas when
//! this node coordinates it); inside it, `engine_read` and `engine_write`
//! (this node's own copy:
//! the engine call, its batch and its sync), `ask` and `replicate` (one
//! per other replica: the round trip to it), `forward` (the hop to the
//! key's coordinator) and `read_repair`. Fields recorded as the request
//! goes: `outcome` (`ok`, or the error) on each, `coordinator` on the
//! request when another node coordinated it.
//!
//! Nothing is recorded unless a `tracing` subscriber enables the target:
//! `kv-server`'s slow-request log does (`kv_server::trace`), and so can an
//! OpenTelemetry layer. Replica calls made after the reply (a write's
//! replicas beyond W) stay children of their request and close later.

use tracing::Span;
use tracing::field::Empty;

/// The target of every span this crate makes for a client request.
pub const TARGET: &str = "kv::request";

/// The root span of one client request: `op` (`get`, `put`, `delete`),
/// `key_hash` (the key's ring token: which replicas, without the key),
/// `forwarded` (true when another node sent it here).
/// `key_hash` is called only when a subscriber takes the span; an
/// untraced request (`traced` false, [`crate::Config::trace_every`]) gets
/// no span, and its steps none ([`step!`]).
pub(crate) fn request(
    op: &'static str,
    key_hash: impl FnOnce() -> u64,
    forwarded: bool,
    traced: bool,
) -> Span {
    if !traced {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "kv::request",
        "request",
        op,
        key_hash = key_hash(),
        forwarded = Empty,
        r = Empty,
        w = Empty,
        replicas = Empty,
        outcome = Empty,
        coordinator = Empty
    );
    if forwarded {
        span.record("forwarded", true);
    }
    span
}

/// Nodes as a span field: `[n1, n3]`.
pub(crate) fn nodes(nodes: &[kv_core::NodeId]) -> impl std::fmt::Display + '_ {
    struct Nodes<'a>(&'a [kv_core::NodeId]);
    impl std::fmt::Display for Nodes<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("[")?;
            for (i, n) in self.0.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{n}")?;
            }
            f.write_str("]")
        }
    }
    Nodes(nodes)
}

/// A step of a request: a child span of `$parent` (the request's span),
/// none when the request is not traced.
macro_rules! step {
    ($parent:expr, $($rest:tt)*) => {
        if $parent.is_disabled() {
            tracing::Span::none()
        } else {
            tracing::info_span!(target: "kv::request", parent: $parent, $($rest)*)
        }
    };
}
pub(crate) use step;

/// Records how a span's work ended: `ok`, or the error.
pub(crate) fn outcome<T, E: std::fmt::Display>(span: &Span, result: &Result<T, E>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(_) => span.record("outcome", "ok"),
        Err(e) => span.record("outcome", tracing::field::display(e)),
    };
}

/// `op` for a write of `value` (`None`: a delete).
pub(crate) fn write_op(value: Option<&[u8]>) -> &'static str {
    if value.is_some() { "put" } else { "delete" }
}
