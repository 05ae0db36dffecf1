//! The gate in front of a node's services: who is calling, and whether
//! they may call this method.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use kv_core::NodeId;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::certs::{CertIdentity, identity_of};
use super::{Role, TokenTable};

/// Who made a request, as the gate established it; handlers find it in the
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node of the cluster (its certificate names it).
    Node(NodeId),
    /// A client or operator (by token or client certificate).
    Client {
        /// The token's or certificate's holder.
        name: String,
        /// What it may do.
        role: Role,
    },
    /// Nobody in particular: the node authenticates no one (insecure).
    Anyone,
}

impl Caller {
    /// The node calling, when a certificate proved one.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            Caller::Node(id) => Some(*id),
            _ => None,
        }
    }
}

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// A client or operator with at least this role.
    Role(Role),
    /// A node of the cluster.
    Node,
    /// A node, or an operator with at least this role (read-only internal
    /// calls that inspect replicas: `kv-bench`'s checker, debugging).
    NodeOrRole(Role),
}

/// Every method the node serves, with what it needs; a method not listed
/// is refused.
fn need(path: &str) -> Option<Need> {
    Some(match path {
        // A pipeline or a batch carries reads and writes: each write in it
        // is checked for the write role (`pipeline::serve`, `batch`).
        "/kv.v1.Kv/Get" | "/kv.v1.Kv/Pipeline" | "/kv.v1.Kv/Batch" | "/kv.v1.Kv/List"
        | "/kv.v1.Kv/Watch" => Need::Role(Role::Read),
        "/kv.v1.Kv/Put" | "/kv.v1.Kv/Delete" => Need::Role(Role::Write),
        "/kv.v1.Admin/Status" => Need::Role(Role::Read),
        "/kv.v1.Admin/Hints"
        | "/kv.v1.Admin/Join"
        | "/kv.v1.Admin/Leave"
        | "/kv.v1.Admin/Remove"
        | "/kv.v1.Admin/Repair"
        | "/kv.v1.Admin/Snapshot" => Need::Role(Role::Admin),
        "/kv.v1.Internal/Read" | "/kv.v1.Internal/GetRing" => Need::NodeOrRole(Role::Admin),
        p if p.starts_with("/kv.v1.Internal/") => Need::Node,
        _ => return None,
    })
}

fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The rules of one node: which tokens it knows, and whether clients and
/// nodes must prove who they are.
#[derive(Debug)]
pub struct Policy {
    /// Tokens of clients and operators.
    pub(crate) tokens: TokenTable,
    /// Clients and operators need a token or a client certificate.
    pub(crate) clients_authenticate: bool,
    /// The internal service needs a node certificate (TLS is on).
    pub(crate) nodes_authenticate: bool,
}

impl Policy {
    /// Who is calling, from the certificate the TLS layer verified (first
    /// in `certs`) or the `authorization` header.
    fn identify(
        &self,
        cert: Option<&[u8]>,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, Status> {
        if let Some(der) = cert {
            return match identity_of(der) {
                Ok(Some(CertIdentity::Node(id))) => Ok(Caller::Node(id)),
                Ok(Some(CertIdentity::Client { name, role })) => Ok(Caller::Client { name, role }),
                Ok(None) => Err(Status::unauthenticated(
                    "the client certificate names no node or client (kv://...)",
                )),
                Err(e) => Err(Status::unauthenticated(e.to_string())),
            };
        }
        let Some(header) = authorization else {
            return Ok(Caller::Anyone);
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        match self.tokens.check(token.trim()) {
            Some((name, role)) => Ok(Caller::Client {
                name: name.to_string(),
                role,
            }),
            None => Err(Status::unauthenticated("unknown token")),
        }
    }

    /// Whether the caller of `path` may call it: the caller, or the
    /// status that refuses it.
    ///
    /// # Errors
    /// `Unauthenticated` for missing or unknown credentials,
    /// `PermissionDenied` for credentials without the right.
    pub fn admit(
        &self,
        path: &str,
        cert: Option<&[u8]>,
        authorization: Option<&[u8]>,
    ) -> Result<Caller, Status> {
        if !self.clients_authenticate && !self.nodes_authenticate {
            return Ok(Caller::Anyone);
        }
        let caller = self.identify(cert, authorization)?;
        let Some(need) = need(path) else {
            return Err(Status::permission_denied(format!("no such method: {path}")));
        };
        let role_ok = |needed: Role| match &caller {
            Caller::Client { role, .. } => role.allows(needed),
            _ => false,
        };
        let allowed = match need {
            Need::Node => !self.nodes_authenticate || caller.node().is_some(),
            Need::NodeOrRole(needed) => {
                !self.nodes_authenticate || caller.node().is_some() || role_ok(needed)
            }
            Need::Role(needed) => !self.clients_authenticate || role_ok(needed),
        };
        if allowed {
            return Ok(caller);
        }
        let name = method(path);
        Err(match (&caller, need) {
            (Caller::Anyone, Need::Role(needed)) => Status::unauthenticated(format!(
                "{name} needs a token or client certificate with the {needed} role"
            )),
            (Caller::Client { name: who, role }, Need::Role(needed)) => Status::permission_denied(
                format!("{who} has the {role} role; {name} needs {needed}"),
            ),
            (Caller::Node(id), Need::Role(_)) => Status::permission_denied(format!(
                "{name} is for clients; node {id}'s certificate is not a client credential"
            )),
            _ => Status::permission_denied(format!(
                "{name} is internal: it answers only nodes of the cluster (a node certificate)"
            )),
        })
    }
}

/// Puts a [`Gate`] in front of a service.
#[derive(Debug, Clone)]
pub struct GateLayer(Arc<Policy>);

impl GateLayer {
    /// The gate of `policy`.
    pub fn new(policy: Arc<Policy>) -> Self {
        GateLayer(policy)
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            policy: self.0.clone(),
        }
    }
}

/// Admits a request to the services behind it (with its [`Caller`] in
/// the extensions) or answers it with the refusal.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S, B> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, std::future::Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // Internal calls carry the calling node's versions: one too far
        // from this node's is refused before anything is read.
        if request.uri().path().starts_with("/kv.v1.Internal/") {
            let versions = crate::version::Versions::from_user_agent(
                request
                    .headers()
                    .get(http::header::USER_AGENT)
                    .map(http::HeaderValue::as_bytes),
            );
            if let Err(why) = versions.check() {
                tracing::warn!(
                    path = request.uri().path(),
                    why,
                    "refused an incompatible peer"
                );
                return Either::Right(std::future::ready(Ok(
                    Status::failed_precondition(why).into_http()
                )));
            }
            request.extensions_mut().insert(versions);
            if let Some(page) = crate::version::PeerPage::from_user_agent(
                request
                    .headers()
                    .get(http::header::USER_AGENT)
                    .map(http::HeaderValue::as_bytes),
            ) {
                request.extensions_mut().insert(page);
            }
        }
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let cert = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        match self.policy.admit(request.uri().path(), cert, authorization) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Left(self.inner.call(request))
            }
            Err(status) => {
                tracing::debug!(path = request.uri().path(), %status, "refused");
                Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The node calling, when the gate established one (`None` when nodes are
/// not authenticated: no TLS).
pub(crate) fn calling_node<T>(request: &tonic::Request<T>) -> Option<NodeId> {
    request.extensions().get::<Caller>().and_then(Caller::node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(tls: bool) -> Policy {
        Policy {
            tokens: crate::security::tokens::table_of(&[
                ("reader", "read", "r"),
                ("writer", "write", "w"),
                ("ops", "admin", "a"),
            ])
            .unwrap(),
            clients_authenticate: true,
            nodes_authenticate: tls,
        }
    }

    fn code(r: Result<Caller, Status>) -> tonic::Code {
        r.map_or_else(|s| s.code(), |_| tonic::Code::Ok)
    }

    #[test]
    fn each_role_reaches_its_methods_and_no_further() {
        use tonic::Code::{Ok, PermissionDenied, Unauthenticated};
        let p = policy(true);
        let cases: &[(&str, Option<&[u8]>, tonic::Code)] = &[
            ("/kv.v1.Kv/Get", None, Unauthenticated),
            ("/kv.v1.Kv/Get", Some(b"Bearer nope"), Unauthenticated),
            ("/kv.v1.Kv/Get", Some(b"Basic r"), Unauthenticated),
            ("/kv.v1.Kv/Get", Some(b"Bearer r"), Ok),
            ("/kv.v1.Kv/Put", Some(b"Bearer r"), PermissionDenied),
            ("/kv.v1.Kv/Delete", Some(b"Bearer r"), PermissionDenied),
            ("/kv.v1.Admin/Status", Some(b"Bearer r"), Ok),
            ("/kv.v1.Kv/Put", Some(b"Bearer w"), Ok),
            ("/kv.v1.Admin/Leave", Some(b"Bearer w"), PermissionDenied),
            ("/kv.v1.Admin/Hints", Some(b"Bearer w"), PermissionDenied),
            (
                "/kv.v1.Internal/InstallRing",
                Some(b"Bearer w"),
                PermissionDenied,
            ),
            ("/kv.v1.Admin/Leave", Some(b"Bearer a"), Ok),
            ("/kv.v1.Admin/Repair", Some(b"Bearer w"), PermissionDenied),
            ("/kv.v1.Admin/Repair", Some(b"Bearer a"), Ok),
            ("/kv.v1.Admin/Remove", Some(b"Bearer w"), PermissionDenied),
            ("/kv.v1.Admin/Remove", Some(b"Bearer a"), Ok),
            ("/kv.v1.Admin/Snapshot", Some(b"Bearer w"), PermissionDenied),
            ("/kv.v1.Admin/Snapshot", Some(b"Bearer a"), Ok),
            (
                "/kv.v1.Internal/ProposeRing",
                Some(b"Bearer a"),
                PermissionDenied,
            ),
            (
                "/kv.v1.Internal/InstallRing",
                Some(b"Bearer a"),
                PermissionDenied,
            ),
            (
                "/kv.v1.Internal/Gossip",
                Some(b"Bearer a"),
                PermissionDenied,
            ),
            ("/kv.v1.Internal/Read", Some(b"Bearer a"), Ok),
            ("/kv.v1.Internal/Read", Some(b"Bearer w"), PermissionDenied),
            ("/kv.v1.Internal/Gossip", None, PermissionDenied),
            ("/kv.v1.Other/Thing", Some(b"Bearer a"), PermissionDenied),
        ];
        for (path, auth, want) in cases {
            assert_eq!(code(p.admit(path, None, *auth)), *want, "{path} {auth:?}");
        }
        // Without TLS the internal service cannot know nodes: it is open
        // (and the node must be on loopback or run --insecure).
        let p = policy(false);
        assert_eq!(code(p.admit("/kv.v1.Internal/Gossip", None, None)), Ok);
        assert_eq!(code(p.admit("/kv.v1.Kv/Put", None, None)), Unauthenticated);
        // No tokens, no TLS: everything open.
        let open = Policy {
            tokens: TokenTable::default(),
            clients_authenticate: false,
            nodes_authenticate: false,
        };
        assert_eq!(
            open.admit("/kv.v1.Admin/Leave", None, None).ok(),
            Some(Caller::Anyone)
        );
        // A certificate that is not one is refused, not taken as nobody.
        assert_eq!(
            code(policy(true).admit("/kv.v1.Kv/Get", Some(b"garbage"), None)),
            Unauthenticated
        );
    }
}
