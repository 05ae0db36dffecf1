//! Mutual TLS on framed connections: after the magic, both ends shake
//! hands with the node certificates (TLS 1.3, rustls with ring, as tonic's
//! connections), the caller checking the node it dialled by name and the
//! node checking the caller's certificate against the cluster CA; then the
//! gate's policy decides, as for a gRPC call to the internal service.

use std::sync::Arc;

use kv_core::NodeId;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::security::NodeTls;
use crate::security::certs::node_name;

/// Both ends' TLS settings for framed connections, made once per node.
#[derive(Clone)]
pub(crate) struct FrameTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for FrameTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameTls").finish_non_exhaustive()
    }
}

impl FrameTls {
    /// The settings for a node holding `tls`.
    ///
    /// # Errors
    ///
    /// Why the PEM material does not make a TLS configuration.
    pub(crate) fn new(tls: &NodeTls) -> Result<Self, String> {
        // The provider tonic's connections use (ring): rustls deprecated
        // it for lacking post-quantum key exchange, which tonic's gRPC
        // connections between the same nodes lack too.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("CA certificate: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("CA certificate: {e}"))?;
        }
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("node certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
            .map_err(|e| format!("node key: {e}"))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("node certificate: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("node certificate: {e}"))?;
        Ok(FrameTls {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }

    /// The caller's handshake with node `peer` over `conn`.
    pub(crate) async fn connect(
        &self,
        conn: TcpStream,
        peer: NodeId,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(node_name(peer))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, conn).await
    }

    /// The node's handshake with a caller over `conn`, and the caller's
    /// certificate (DER).
    pub(crate) async fn accept(
        &self,
        conn: TcpStream,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Vec<u8>>)> {
        let stream = self.acceptor.accept(conn).await?;
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        Ok((stream, cert))
    }
}
