//! rustls configuration for the fabric: TLS 1.3 only, the ring provider
//! chosen explicitly, and mutual authentication against the cluster CA.
//!
//! - **Server side**: a client certificate is required and verified against
//!   the cluster CA ([`WebPkiClientVerifier`]: chain, validity,
//!   `clientAuth`). The peer's identity is then read from the certificate
//!   ([`peer_identity`]); a chain-valid certificate without a weft identity
//!   is refused by the caller.
//! - **Client side**: no DNS names are involved. We dial a node *id*: the
//!   id travels to the verifier inside the rustls `ServerName` as the DNS
//!   name `<node-id>.weft` ([`server_name_for`]; SNI is disabled, so it never
//!   goes on the wire). [`NodeServerVerifier`] verifies the chain against
//!   the CA (validity, `serverAuth`) and then checks that the certificate's
//!   SAN URI names exactly the node we dialled, during the handshake, so a
//!   mismatched peer never sees a byte of our requests.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::identity::{certs_from_pem, IdentityError, NodeCredentials, NodeId, PeerIdentity};

/// Suffix that turns a node id into the `ServerName` handed to rustls.
pub const SERVER_NAME_SUFFIX: &str = ".weft";

/// ALPN protocol id of the fabric; a version bump of the *transport* (not of
/// messages: those carry the wire version) would change it.
pub const ALPN_FABRIC: &[u8] = b"weft-fabric/1";

/// Errors building TLS configurations or reading a peer's identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("private key: {0}")]
    Key(String),
    #[error("CA bundle holds no certificate")]
    NoCaCert,
    #[error("peer presented no certificate")]
    NoPeerCert,
    #[error("peer is {got}, but we dialled {expected}")]
    WrongPeer { expected: NodeId, got: NodeId },
}

/// The crypto provider, chosen explicitly (never the process default, which
/// another crate could install).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS configurations, built once from its credentials.
#[derive(Clone)]
pub struct TlsConfig {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    local: PeerIdentity,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Builds server and client configurations from `creds`.
    pub fn new(creds: &NodeCredentials) -> Result<TlsConfig, TlsError> {
        let local = creds.identity()?;
        let provider = provider();
        let mut roots = RootCertStore::empty();
        let ca_certs = certs_from_pem(&creds.ca_cert_pem)?;
        if ca_certs.is_empty() {
            return Err(TlsError::NoCaCert);
        }
        for c in ca_certs {
            roots.add(c)?;
        }
        let roots = Arc::new(roots);
        let chain = certs_from_pem(&creds.node.cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(creds.node.key_pem.as_bytes())
            .map_err(|e| TlsError::Key(e.to_string()))?;

        // Client authentication is mandatory: `WebPkiClientVerifier` requires
        // a certificate unless `allow_unauthenticated` is called, which it
        // never is here.
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN_FABRIC.to_vec()];

        let verifier = Arc::new(NodeServerVerifier {
            roots,
            algs: provider.signature_verification_algorithms,
        });
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous() // Our verifier is stricter than WebPKI's, not looser.
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)?;
        client.enable_sni = false;
        client.alpn_protocols = vec![ALPN_FABRIC.to_vec()];

        Ok(TlsConfig {
            server: Arc::new(server),
            client: Arc::new(client),
            local,
        })
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// Our own identity, from our certificate.
    pub fn local_identity(&self) -> &PeerIdentity {
        &self.local
    }
}

/// The `ServerName` to hand rustls when dialling `node_id`.
pub fn server_name_for(node_id: &NodeId) -> ServerName<'static> {
    // A node id is one DNS label (lowercase letters, digits, '-'), and the
    // suffix makes the last label non-numeric: always a valid DNS name.
    match ServerName::try_from(format!("{node_id}{SERVER_NAME_SUFFIX}")) {
        Ok(name) => name,
        // Unreachable by NodeId's validation; fall back to a name that can
        // never match a node, so a bug fails closed.
        Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
    }
}

/// The node id encoded in a `ServerName` by [`server_name_for`].
pub fn node_id_from_server_name(name: &ServerName<'_>) -> Option<NodeId> {
    match name {
        ServerName::DnsName(dns) => {
            let id = dns.as_ref().strip_suffix(SERVER_NAME_SUFFIX)?;
            NodeId::new(id).ok()
        }
        _ => None,
    }
}

/// The identity in the certificate a peer presented on an established
/// connection. Callers have already had the chain verified by rustls.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<PeerIdentity, TlsError> {
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCert)?;
    Ok(PeerIdentity::from_cert(cert)?)
}

/// Verifies a server's certificate chain against the cluster CA, then that
/// its weft identity names the node we dialled.
#[derive(Debug)]
pub struct NodeServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

/// rustls prints `CertificateError::Other` with `Debug`: this one's `Debug`
/// is the readable message, so logs say "peer is cs-2, but we dialled cs-1".
struct VerifyError(String);

impl std::fmt::Debug for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for VerifyError {}

fn other_cert_error(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(VerifyError(
        e.to_string(),
    )))))
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let expected = node_id_from_server_name(server_name).ok_or(
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        )?;
        let peer = PeerIdentity::from_cert(end_entity).map_err(other_cert_error)?;
        if peer.node_id != expected {
            return Err(other_cert_error(TlsError::WrongPeer {
                expected,
                got: peer.node_id,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configs only enable TLS 1.3; refuse rather than half-support.
        Err(rustls::Error::General("TLS 1.2 is not used by weft".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_round_trip() {
        for id in ["a", "0", "cs-01", &"z".repeat(63)] {
            let id = NodeId::new(id).unwrap();
            let name = server_name_for(&id);
            assert!(matches!(name, ServerName::DnsName(_)), "{id}");
            assert_eq!(node_id_from_server_name(&name), Some(id));
        }
    }
}
