//! Who may talk to a node, and how they prove it (docs/security.md).
//!
//! - **Nodes** prove themselves with a certificate the cluster's CA
//!   signed, naming their node id ([`certs`]); connections between nodes
//!   are mutual TLS, and a node's messages are refused when the sender id
//!   they carry is not the one its certificate names.
//! - **Clients and operators** present a bearer token (`authorization:
//!   Bearer <token>`) or a client certificate, each with a [`Role`]: read
//!   (get, status), write (also put and delete) or admin (also hints, join,
//!   leave, and the read-only internal calls that inspect replicas). A
//!   node stores only tokens' SHA-256 hashes ([`TokenTable`]) and compares
//!   them in constant time.
//! - The internal service is refused to anyone without a node certificate:
//!   one listener serves all three services, and the [`Gate`] in front of
//!   them decides per method, denying any method it does not know.

pub mod certs;
mod gate;
mod tokens;

use std::path::Path;
use std::sync::Arc;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

pub(crate) use gate::calling_node;
pub use gate::{Caller, Gate, GateLayer, Policy};
pub use tokens::{TokenEntry, TokenTable, hash_token, new_token};

/// What a client or operator may do; each role may also do everything the
/// roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Get, and the cluster's status (which routes keys).
    Read,
    /// Also put and delete.
    Write,
    /// Also hints, join, leave, and reading replicas' raw states.
    Admin,
}

impl Role {
    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = SecurityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(SecurityError::Config(format!(
                "role {other:?}: expected read, write or admin"
            ))),
        }
    }
}

/// Why certificates, keys or tokens could not be made or loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecurityError {
    /// A file could not be read or written (the message names it).
    #[error("{0}")]
    Io(String),
    /// A certificate or key could not be made or parsed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A token table or role that does not parse.
    #[error("{0}")]
    Config(String),
}

/// A node's TLS material: its certificate and key, and the cluster CA it
/// trusts for peers and client certificates (all PEM).
#[derive(Clone)]
pub struct NodeTls {
    /// The cluster CA's certificate.
    pub ca_pem: String,
    /// This node's certificate.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl NodeTls {
    /// Reads the three PEM files.
    ///
    /// # Errors
    /// [`SecurityError::Io`] naming a file that cannot be read.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, SecurityError> {
        Ok(NodeTls {
            ca_pem: certs::read(ca)?,
            cert_pem: certs::read(cert)?,
            key_pem: certs::read(key)?,
        })
    }

    /// The server side: this node's certificate; client certificates are
    /// checked against the CA when presented (nodes always present one;
    /// clients may use a token instead).
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The client side, towards a peer whose certificate must carry
    /// `server_name` ([`certs::node_name`] of the node dialled, or
    /// [`certs::ANY_NODE`]); this node presents its own certificate.
    pub fn peer(&self, server_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(server_name)
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// How a node protects its services.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS for every connection, with node certificates; `None`: plaintext.
    pub tls: Option<NodeTls>,
    /// Tokens of clients and operators.
    pub tokens: TokenTable,
    /// Runs without TLS or authentication on purpose (`--insecure`); shown
    /// in the status and in `/metrics`.
    pub insecure: bool,
    /// `/metrics` and the status page ask for a token (any role).
    pub http_token: bool,
}

/// How a node protects its services (status, metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Posture {
    /// Connections are TLS; nodes prove themselves with certificates.
    pub tls: bool,
    /// Clients and operators must prove a role.
    pub authenticates: bool,
    /// Started with `--insecure` on purpose.
    pub insecure: bool,
    /// When this node's certificate expires (Unix seconds), with TLS.
    pub cert_expires: Option<u64>,
}

impl Security {
    /// This node's protection, in three flags and a date.
    pub fn posture(&self) -> Posture {
        Posture {
            tls: self.tls.is_some(),
            authenticates: self.authenticates(),
            insecure: self.insecure,
            cert_expires: self
                .tls
                .as_ref()
                .and_then(|t| certs::expiry_of(&t.cert_pem)),
        }
    }

    /// Whether clients and operators must prove a role: a token table is
    /// set, or TLS is on (then a client certificate also proves one).
    pub fn authenticates(&self) -> bool {
        self.tls.is_some() || !self.tokens.is_empty()
    }

    /// The gate in front of the node's services.
    pub fn gate(&self) -> GateLayer {
        GateLayer::new(Arc::new(self.policy()))
    }

    /// Who may call what: the rules of the [`gate`](Self::gate), also
    /// applied to framed internode connections.
    pub fn policy(&self) -> Policy {
        Policy {
            tokens: self.tokens.clone(),
            clients_authenticate: self.authenticates(),
            nodes_authenticate: self.tls.is_some(),
        }
    }
}

/// What a client (the SDK, `kvctl`, `kv-bench`) presents to nodes: the CA
/// it trusts (TLS on when set), optionally a client certificate, and
/// optionally a token.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The cluster CA's certificate (PEM); `None`: plaintext.
    pub ca_pem: Option<String>,
    /// A client certificate and key (PEM).
    pub identity: Option<(String, String)>,
    /// A bearer token.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("tls", &self.ca_pem.is_some())
            .field("certificate", &self.identity.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// The environment variable naming a certificates directory for clients.
pub const CERTS_DIR_ENV: &str = "KV_CERTS_DIR";
/// The environment variable holding a token for clients.
pub const TOKEN_ENV: &str = "KV_TOKEN";

impl ClientCredentials {
    /// From a certificates directory as `kvctl certs` and the example
    /// cluster write it: `ca.pem`, and `admin.token` when present (a
    /// `token` given here wins), and `client-<name>.pem/.key` when `client`
    /// is named.
    ///
    /// # Errors
    /// [`SecurityError::Io`] naming a file that cannot be read.
    pub fn from_dir(
        dir: &Path,
        client: Option<&str>,
        token: Option<String>,
    ) -> Result<Self, SecurityError> {
        let files = certs::CertsDir(dir.to_path_buf());
        let token = match token {
            Some(t) => Some(t),
            None if files.admin_token().exists() => {
                Some(certs::read(&files.admin_token())?.trim().to_string())
            }
            None => None,
        };
        let identity = match client {
            Some(name) => {
                let (cert, key) = files.client(name);
                Some((certs::read(&cert)?, certs::read(&key)?))
            }
            None => None,
        };
        Ok(ClientCredentials {
            ca_pem: Some(certs::read(&files.ca_cert())?),
            identity,
            token,
        })
    }

    /// From `KV_CERTS_DIR` and `KV_TOKEN`, when set: what `kvctl` and
    /// `kv-bench` use when no flag says otherwise.
    ///
    /// # Errors
    /// As [`from_dir`](Self::from_dir).
    pub fn from_env() -> Result<Self, SecurityError> {
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        match std::env::var_os(CERTS_DIR_ENV).filter(|d| !d.is_empty()) {
            Some(dir) => Self::from_dir(Path::new(&dir), None, token),
            None => Ok(ClientCredentials {
                token,
                ..ClientCredentials::default()
            }),
        }
    }

    /// The URL of a node at `addr` (`https` when TLS is on).
    pub fn url(&self, addr: &str) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}")
    }

    /// The TLS settings of a connection to a node, when TLS is on: the
    /// node's certificate must be one the CA signed for a node.
    pub fn tls(&self) -> Option<ClientTlsConfig> {
        let ca = self.ca_pem.as_ref()?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name(certs::ANY_NODE)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Some(tls)
    }

    /// An endpoint for the node at `addr` with TLS as configured and the
    /// given timeouts and keepalives.
    ///
    /// # Errors
    /// The address or the TLS settings are refused.
    pub fn endpoint(
        &self,
        addr: &str,
        settings: &crate::endpoint::ConnectSettings,
    ) -> Result<tonic::transport::Endpoint, String> {
        settings.endpoint(self.url(addr), self.tls())
    }

    /// What adds the token to each request.
    ///
    /// # Errors
    /// A token that is not a valid header value.
    pub fn bearer(&self) -> Result<Bearer, String> {
        match &self.token {
            None => Ok(Bearer(None)),
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| "the token holds characters a header cannot carry".to_string()),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every request (nothing when
/// there is no token).
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Bearer").field(&self.0.is_some()).finish()
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the client's token with every request.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parse_only_their_names() {
        assert!(Role::Admin.allows(Role::Write));
        assert!(Role::Write.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Write));
        assert!(!Role::Write.allows(Role::Admin));
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
        assert!("Admin".parse::<Role>().is_err());
    }
}
