//! The cluster's certificate authority and the certificates it issues.
//!
//! One CA per cluster signs every node's certificate and the client
//! certificates operators hand out. A certificate names what it is for in
//! a URI subject alternative name:
//!
//! - a node: `kv://node/<id>`, with the DNS names `kv-node` (any node, for
//!   clients and for peers dialled by address) and `node-<id>.kv` (this
//!   node, for peers dialled by id), and the hosts it was issued for;
//! - a client: `kv://client/<role>/<name>`.
//!
//! [`identity_of`] reads that name back from a peer's certificate (the TLS
//! layer has already checked the signature and the validity period).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kv_core::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::{Role, SecurityError};

/// The DNS name every node certificate carries: what a client or a peer
/// that knows only an address checks the node's certificate against.
pub const ANY_NODE: &str = "kv-node";

/// The DNS name of node `id`'s certificate: a peer dialling node `id`
/// checks that the certificate is that node's.
pub fn node_name(id: NodeId) -> String {
    format!("node-{}.kv", id.0)
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertIdentity {
    /// A node of the cluster.
    Node(NodeId),
    /// A client with a role.
    Client {
        /// The name it was issued to.
        name: String,
        /// What it may do.
        role: Role,
    },
}

/// How long a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not valid before.
    pub not_before: SystemTime,
    /// Not valid after.
    pub not_after: SystemTime,
}

impl Validity {
    /// From now (less a minute, for clocks slightly behind) for `days`.
    pub fn days(days: u64) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(days * 86_400),
        }
    }
}

fn offset(t: SystemTime) -> Result<time::OffsetDateTime, SecurityError> {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| SecurityError::Certificate(format!("validity time: {e}")))
}

fn rc(context: &str) -> impl Fn(rcgen::Error) -> SecurityError + '_ {
    move |e| SecurityError::Certificate(format!("{context}: {e}"))
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// The cluster's certificate authority: its certificate and signing key.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA (ECDSA P-256) named `name`, valid for `validity`.
    ///
    /// # Errors
    /// [`SecurityError::Certificate`] if the certificate cannot be made.
    pub fn create(name: &str, validity: Validity) -> Result<(Self, Issued), SecurityError> {
        let key = KeyPair::generate().map_err(rc("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = offset(validity.not_before)?;
        params.not_after = offset(validity.not_after)?;
        let cert = params.self_signed(&key).map_err(rc("CA certificate"))?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok((
            Authority {
                cert_pem: issued.cert_pem.clone(),
                issuer: Issuer::new(params, key),
            },
            issued,
        ))
    }

    /// The CA of a certificate and key (PEM), as [`create`](Self::create)
    /// wrote them.
    ///
    /// # Errors
    /// [`SecurityError::Certificate`] for PEM that does not parse.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, SecurityError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc("CA certificate"))?;
        Ok(Authority {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA's certificate (PEM): what every node and client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        validity: Validity,
    ) -> Result<Issued, SecurityError> {
        params.not_before = offset(validity.not_before)?;
        params.not_after = offset(validity.not_after)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(rc("key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rc("certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A certificate for node `id`, valid as a server (to clients and
    /// peers) and as a client (to peers), also for `hosts` (DNS names or
    /// IP addresses).
    ///
    /// # Errors
    /// [`SecurityError::Certificate`] for a host that is not a valid name.
    pub fn issue_node(
        &self,
        id: NodeId,
        hosts: &[String],
        validity: Validity,
    ) -> Result<Issued, SecurityError> {
        let mut names = vec![ANY_NODE.to_string(), node_name(id)];
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(names).map_err(rc("host name"))?;
        params
            .subject_alt_names
            .push(uri(&format!("kv://node/{}", id.0))?);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kv node {}", id.0));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, validity)
    }

    /// A client certificate for `name` with `role`.
    ///
    /// # Errors
    /// [`SecurityError::Certificate`] for a name that is not plain ASCII
    /// without `/`.
    pub fn issue_client(
        &self,
        name: &str,
        role: Role,
        validity: Validity,
    ) -> Result<Issued, SecurityError> {
        if name.is_empty() || name.contains('/') || !name.is_ascii() || name.contains(' ') {
            return Err(SecurityError::Certificate(format!(
                "client name {name:?}: use ASCII letters, digits, '-' or '_'"
            )));
        }
        let mut params = CertificateParams::default();
        params
            .subject_alt_names
            .push(uri(&format!("kv://client/{role}/{name}"))?);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("kv client {name}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }
}

fn uri(text: &str) -> Result<SanType, SecurityError> {
    Ok(SanType::URI(text.try_into().map_err(
        |e: rcgen::Error| SecurityError::Certificate(format!("{text}: {e}")),
    )?))
}

/// Who the certificate `der` names (its `kv://` URI), if anyone.
///
/// # Errors
/// [`SecurityError::Certificate`] for bytes that are not a certificate, or
/// a `kv://` name that does not parse.
pub fn identity_of(der: &[u8]) -> Result<Option<CertIdentity>, SecurityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| SecurityError::Certificate(format!("peer certificate: {e}")))?;
    let Ok(Some(sans)) = cert.subject_alternative_name() else {
        return Ok(None);
    };
    for name in &sans.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(rest) = uri.strip_prefix("kv://")
        {
            return parse_identity(rest).map(Some);
        }
    }
    Ok(None)
}

/// When the certificate in `cert_pem` expires, in Unix seconds.
pub fn expiry_of(cert_pem: &str) -> Option<u64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// Checks that `cert_pem` is node `id`'s certificate and valid now (a node
/// must not start with a certificate its peers will refuse); returns when
/// it expires, in Unix seconds.
///
/// # Errors
/// [`SecurityError::Certificate`] naming what is wrong: not PEM, not a
/// certificate, another node's, a client's, not yet or no longer valid.
pub fn check_node_cert(cert_pem: &str, id: NodeId) -> Result<u64, SecurityError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| SecurityError::Certificate(format!("node certificate is not PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents)
        .map_err(|e| SecurityError::Certificate(format!("node certificate: {e}")))?;
    match identity_of(&pem.contents)? {
        Some(CertIdentity::Node(named)) if named == id => {}
        Some(other) => {
            return Err(SecurityError::Certificate(format!(
                "the certificate is for {other:?}, not node {}",
                id.0
            )));
        }
        None => {
            return Err(SecurityError::Certificate(
                "the certificate names no node (kv://node/<id>): issue one with kvctl certs node"
                    .into(),
            ));
        }
    }
    let validity = cert.validity();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let not_before = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
    let not_after = u64::try_from(validity.not_after.timestamp()).unwrap_or(0);
    if now < not_before {
        return Err(SecurityError::Certificate(format!(
            "node {}'s certificate is valid only from {} (Unix seconds; is the clock right?)",
            id.0, not_before
        )));
    }
    if now > not_after {
        return Err(SecurityError::Certificate(format!(
            "node {}'s certificate expired {} s ago: issue a new one (kvctl certs node)",
            id.0,
            now - not_after
        )));
    }
    Ok(not_after)
}

fn parse_identity(rest: &str) -> Result<CertIdentity, SecurityError> {
    let bad = || {
        SecurityError::Certificate(format!(
            "certificate name kv://{rest} is not kv://node/<id> or kv://client/<role>/<name>"
        ))
    };
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("node"), Some(id), None, None) => {
            Ok(CertIdentity::Node(NodeId(id.parse().map_err(|_| bad())?)))
        }
        (Some("client"), Some(role), Some(name), None) if !name.is_empty() => {
            Ok(CertIdentity::Client {
                name: name.to_string(),
                role: role.parse().map_err(|_| bad())?,
            })
        }
        _ => Err(bad()),
    }
}

/// The files of a certificates directory (as `kvctl certs` writes them and
/// `kvd --certs-dir`, `kvctl` and `kv-bench` read them).
#[derive(Debug, Clone)]
pub struct CertsDir(pub PathBuf);

impl CertsDir {
    /// The CA's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    /// The CA's key (kept only where certificates are issued).
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    /// Node `id`'s certificate and key.
    pub fn node(&self, id: NodeId) -> (PathBuf, PathBuf) {
        (
            self.0.join(format!("node-{}.pem", id.0)),
            self.0.join(format!("node-{}.key", id.0)),
        )
    }
    /// Client `name`'s certificate and key.
    pub fn client(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.0.join(format!("client-{name}.pem")),
            self.0.join(format!("client-{name}.key")),
        )
    }
    /// The token table of the nodes (hashes only).
    pub fn tokens(&self) -> PathBuf {
        self.0.join("tokens.toml")
    }
    /// The admin token itself, for `kvctl` on an operator's machine.
    pub fn admin_token(&self) -> PathBuf {
        self.0.join("admin.token")
    }

    /// The directory's CA.
    ///
    /// # Errors
    /// [`SecurityError`] if the CA's files are missing or damaged.
    pub fn authority(&self) -> Result<Authority, SecurityError> {
        Authority::from_pem(&read(&self.ca_cert())?, &read(&self.ca_key())?)
    }

    /// Creates the directory (readable by its owner only) with a new CA,
    /// valid for `days`; refuses a directory that already holds one.
    ///
    /// # Errors
    /// [`SecurityError`] if a CA exists there or a file cannot be written.
    pub fn init(&self, days: u64) -> Result<(), SecurityError> {
        if self.ca_cert().exists() {
            return Err(SecurityError::Io(format!(
                "{} exists: this directory already has a CA",
                self.ca_cert().display()
            )));
        }
        let (_, issued) = Authority::create("kv cluster CA", Validity::days(days))?;
        self.write((&self.ca_cert(), &self.ca_key()), &issued)
    }

    /// Issues node `id`'s certificate (also valid for `hosts`) with the
    /// directory's CA and writes it; returns the certificate's and key's
    /// paths.
    ///
    /// # Errors
    /// [`SecurityError`] if the CA cannot be read or the node's files exist.
    pub fn issue_node(
        &self,
        id: NodeId,
        hosts: &[String],
        days: u64,
    ) -> Result<(PathBuf, PathBuf), SecurityError> {
        let issued = self
            .authority()?
            .issue_node(id, hosts, Validity::days(days))?;
        let (cert, key) = self.node(id);
        self.write((&cert, &key), &issued)?;
        Ok((cert, key))
    }

    /// Issues a client certificate for `name` with `role` and writes it;
    /// returns the certificate's and key's paths.
    ///
    /// # Errors
    /// [`SecurityError`] if the CA cannot be read or the files exist.
    pub fn issue_client(
        &self,
        name: &str,
        role: Role,
        days: u64,
    ) -> Result<(PathBuf, PathBuf), SecurityError> {
        let issued = self
            .authority()?
            .issue_client(name, role, Validity::days(days))?;
        let (cert, key) = self.client(name);
        self.write((&cert, &key), &issued)?;
        Ok((cert, key))
    }

    /// A new token for `name` with `role`: its hash is appended to the
    /// directory's `tokens.toml` (which the nodes read at start); the
    /// token itself is returned, and stored nowhere else.
    ///
    /// # Errors
    /// [`SecurityError`] if `name` already has a token, or the file cannot
    /// be written.
    pub fn add_token(&self, name: &str, role: Role) -> Result<String, SecurityError> {
        use std::io::Write as _;
        let path = self.tokens();
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&path, &e)),
        };
        let token = super::new_token()?;
        let entry = super::TokenEntry {
            name: name.to_string(),
            role: role.to_string(),
            sha256: super::hash_token(&token),
        };
        // The file with the new entry must still be a valid table (a name
        // given twice is refused here, not at the nodes' next start).
        let text = format!(
            "{existing}{}{}",
            if existing.is_empty() { "" } else { "\n" },
            entry.to_toml()
        );
        super::TokenTable::from_toml(&text)?;
        kv_core::files::create_private_dir(&self.0).map_err(|e| io(&self.0, &e))?;
        let mut file = kv_core::files::private_file()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| io(&path, &e))?;
        file.write_all(&text.as_bytes()[existing.len()..])
            .and_then(|()| file.sync_all())
            .map_err(|e| io(&path, &e))?;
        Ok(token)
    }

    /// Writes `token` to `admin.token` (readable by its owner only), where
    /// `kvctl --certs-dir` finds it; refuses to overwrite one.
    ///
    /// # Errors
    /// [`SecurityError::Io`] if the file exists or cannot be written.
    pub fn write_admin_token(&self, token: &str) -> Result<(), SecurityError> {
        write_new(&self.admin_token(), &format!("{token}\n"))
    }

    /// Writes a certificate and its key (the key readable by its owner
    /// only), refusing to overwrite either.
    ///
    /// # Errors
    /// [`SecurityError::Io`] if a file exists or cannot be written.
    pub fn write(&self, paths: (&Path, &Path), issued: &Issued) -> Result<(), SecurityError> {
        kv_core::files::create_private_dir(&self.0).map_err(|e| io(&self.0, &e))?;
        write_new(paths.0, &issued.cert_pem)?;
        write_new(paths.1, &issued.key_pem)
    }
}

pub(crate) fn io(path: &Path, e: &std::io::Error) -> SecurityError {
    SecurityError::Io(format!("{}: {e}", path.display()))
}

/// Reads a text file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<String, SecurityError> {
    std::fs::read_to_string(path).map_err(|e| io(path, &e))
}

/// Creates `path` (readable by its owner only) with `text`; an existing
/// file is an error, never overwritten.
pub(crate) fn write_new(path: &Path, text: &str) -> Result<(), SecurityError> {
    use std::io::Write as _;
    let mut file = kv_core::files::private_file()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io(path, &e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io(path, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn issued_certificates_name_their_holder_and_another_name_does_not_parse() {
        let (ca, _) = Authority::create("test CA", Validity::days(1)).unwrap();
        let node = ca
            .issue_node(NodeId(7), &["127.0.0.1".into()], Validity::days(1))
            .unwrap();
        assert_eq!(
            identity_of(&der(&node.cert_pem)).unwrap(),
            Some(CertIdentity::Node(NodeId(7)))
        );
        let client = ca
            .issue_client("ops", Role::Admin, Validity::days(1))
            .unwrap();
        assert_eq!(
            identity_of(&der(&client.cert_pem)).unwrap(),
            Some(CertIdentity::Client {
                name: "ops".into(),
                role: Role::Admin
            })
        );
        assert!(
            ca.issue_client("a/b", Role::Read, Validity::days(1))
                .is_err()
        );
        assert!(parse_identity("node/x").is_err());
        assert!(parse_identity("client/root/x").is_err());
        assert!(parse_identity("node/1/2").is_err());
        assert!(identity_of(b"not a certificate").is_err());
        // A node starts only with its own certificate, valid now.
        let expires = check_node_cert(&node.cert_pem, NodeId(7)).unwrap();
        assert!(expires > 0);
        let e = check_node_cert(&node.cert_pem, NodeId(8)).unwrap_err();
        assert!(e.to_string().contains("not node 8"), "{e}");
        let e = check_node_cert(&client.cert_pem, NodeId(7)).unwrap_err();
        assert!(e.to_string().contains("Client"), "{e}");
        let day = Duration::from_secs(86_400);
        let old = ca
            .issue_node(
                NodeId(7),
                &[],
                Validity {
                    not_before: SystemTime::now() - 3 * day,
                    not_after: SystemTime::now() - day,
                },
            )
            .unwrap();
        let e = check_node_cert(&old.cert_pem, NodeId(7)).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");
        assert!(check_node_cert("garbage", NodeId(7)).is_err());
        // A CA loaded back from its PEM files issues certificates that
        // name their holder the same way.
        let (_, files) = Authority::create("test CA", Validity::days(1)).unwrap();
        let again = Authority::from_pem(&files.cert_pem, &files.key_pem).unwrap();
        let node = again.issue_node(NodeId(2), &[], Validity::days(1)).unwrap();
        assert_eq!(
            identity_of(&der(&node.cert_pem)).unwrap(),
            Some(CertIdentity::Node(NodeId(2)))
        );
    }
}
