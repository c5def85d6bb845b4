//! Who a node is and how it proves it.
//!
//! A cluster has one certificate authority (CA). Every node holds a
//! certificate signed by it that names the node's **role** and **node id** in
//! one subject-alternative-name URI:
//!
//! ```text
//! weft://<role>/<node-id>        e.g. weft://chunkserver/cs-01
//! ```
//!
//! A peer's identity is read from the certificate it presented during the
//! mutually authenticated TLS handshake ([`PeerIdentity::from_cert`]), never
//! from anything it says in a message. The common name carries the node id
//! too, for humans (`openssl x509 -text`); only the URI is authoritative.
//!
//! Node certificates carry both the `serverAuth` and `clientAuth` extended
//! key usages: every node both dials and accepts fabric connections.
//!
//! This module also holds the file helpers the `weft cert` CLI calls: keys
//! are written with mode 0600, atomically (temp file + rename).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

/// Longest node id, in bytes: one DNS label, so an id can also be a host name.
pub const NODE_ID_LEN_MAX: usize = 63;

/// Scheme of the SAN URI that names a node's role and id.
pub const SAN_URI_SCHEME: &str = "weft://";

/// Validity of a freshly generated cluster CA: ten years. Rotating a CA means
/// re-issuing every node certificate, so it is long-lived on purpose.
pub const CA_VALIDITY_DAYS_DEFAULT: u64 = 3650;

/// Validity of a node certificate when the operator names none: one year.
pub const NODE_CERT_VALIDITY_DAYS_DEFAULT: u64 = 365;

/// Backdating of `not_before`, so that a peer whose clock is a little behind
/// ours accepts a certificate issued a moment ago.
pub const CERT_BACKDATE_SECS: u64 = 300;

/// Longest cluster name, in bytes (it goes in the CA's subject).
pub const CLUSTER_NAME_LEN_MAX: usize = 64;

/// File names used by [`NodeCredentials::save`] / [`NodeCredentials::load`]
/// and [`Ca::save`] / [`Ca::load`].
pub const CA_CERT_FILE: &str = "ca.crt";
/// The CA's private key (only on the machine where certificates are issued).
pub const CA_KEY_FILE: &str = "ca.key";
/// A node's own certificate.
pub const NODE_CERT_FILE: &str = "node.crt";
/// A node's private key.
pub const NODE_KEY_FILE: &str = "node.key";

/// Mode of every private key file: readable and writable by its owner only.
pub const KEY_FILE_MODE: u32 = 0o600;

/// Everything that can go wrong creating, reading or checking an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid node id {id:?}: {reason}")]
    InvalidNodeId { id: String, reason: &'static str },
    #[error("invalid role {0:?} (expected chunkserver, gateway or admin)")]
    InvalidRole(String),
    #[error("invalid cluster name {name:?}: {reason}")]
    InvalidClusterName { name: String, reason: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate cannot be parsed: {0}")]
    Parse(String),
    #[error("certificate has no weft identity (SAN URI {SAN_URI_SCHEME}<role>/<node-id>)")]
    NoIdentity,
    #[error("certificate names more than one weft identity")]
    AmbiguousIdentity,
    #[error("malformed weft identity URI {0:?}")]
    BadIdentityUri(String),
    #[error("no PEM {what} found")]
    NoPem { what: &'static str },
    #[error("validity period is empty or before the Unix epoch")]
    BadValidity,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A node's name in the cluster: 1 to 63 bytes of lowercase ASCII letters,
/// digits and `-`, starting and ending with a letter or digit (a DNS label).
///
/// Why so strict: it appears in certificate URIs, log lines, file names and
/// metric labels, and must be unambiguous in all of them.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Checks `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<NodeId, IdentityError> {
        let id = id.into();
        let bad = |reason| IdentityError::InvalidNodeId {
            id: id.clone(),
            reason,
        };
        if id.is_empty() {
            return Err(bad("empty"));
        }
        if id.len() > NODE_ID_LEN_MAX {
            return Err(bad("longer than 63 bytes"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only a-z, 0-9 and '-' are allowed"));
        }
        if id.starts_with('-') || id.ends_with('-') {
            return Err(bad("must start and end with a letter or digit"));
        }
        Ok(NodeId(id))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.0)
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NodeId::new(s)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

/// What a node is, and so what it may ask of others (see
/// `wire::kinds::KIND_TABLE` for who may send what).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Holds chunks and metadata replicas.
    Chunkserver,
    /// Stateless iSCSI gateway: reads and writes data, never changes metadata.
    Gateway,
    /// An operator's tool (`weft`): the only role that may change metadata.
    Admin,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Chunkserver, Role::Gateway, Role::Admin];

    /// The name used in certificate URIs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Chunkserver => "chunkserver",
            Role::Gateway => "gateway",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::InvalidRole(s.to_owned()))
    }
}

/// The identity URI for a node: `weft://<role>/<node-id>`.
pub fn identity_uri(role: Role, node_id: &NodeId) -> String {
    format!("{SAN_URI_SCHEME}{role}/{node_id}")
}

/// Parses `weft://<role>/<node-id>`; strict: no port, query, or trailing '/'.
pub fn parse_identity_uri(uri: &str) -> Result<(Role, NodeId), IdentityError> {
    let bad = || IdentityError::BadIdentityUri(uri.to_owned());
    let rest = uri.strip_prefix(SAN_URI_SCHEME).ok_or_else(bad)?;
    let (role, id) = rest.split_once('/').ok_or_else(bad)?;
    let role = Role::from_str(role).map_err(|_| bad())?;
    let id = NodeId::new(id).map_err(|_| bad())?;
    Ok((role, id))
}

/// Validity period of a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a few minutes ago (clock skew, [`CERT_BACKDATE_SECS`]) until
    /// `days` days from `now`.
    pub fn days_from(now: SystemTime, days: u64) -> Validity {
        let backdate = Duration::from_secs(CERT_BACKDATE_SECS);
        Validity {
            not_before: now.checked_sub(backdate).unwrap_or(UNIX_EPOCH),
            not_after: now + Duration::from_secs(days.saturating_mul(86_400)),
        }
    }

    fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, IdentityError> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityError::BadValidity)?
            .as_secs();
        let secs = i64::try_from(secs).map_err(|_| IdentityError::BadValidity)?;
        time::OffsetDateTime::from_unix_timestamp(secs).map_err(|_| IdentityError::BadValidity)
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), IdentityError> {
        if self.not_after <= self.not_before {
            return Err(IdentityError::BadValidity);
        }
        params.not_before = Self::to_offset(self.not_before)?;
        params.not_after = Self::to_offset(self.not_after)?;
        Ok(())
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a private key.
        f.debug_struct("CertAndKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The cluster's certificate authority.
#[derive(Clone, Debug)]
pub struct Ca {
    pem: CertAndKey,
}

impl Ca {
    /// Generates a new CA (ECDSA P-256) for the cluster `cluster_name`, valid
    /// for [`CA_VALIDITY_DAYS_DEFAULT`] days.
    pub fn generate(cluster_name: &str) -> Result<Ca, IdentityError> {
        Ca::generate_with_validity(
            cluster_name,
            Validity::days_from(SystemTime::now(), CA_VALIDITY_DAYS_DEFAULT),
        )
    }

    /// Like [`Ca::generate`] with an explicit validity (tests use this).
    pub fn generate_with_validity(
        cluster_name: &str,
        validity: Validity,
    ) -> Result<Ca, IdentityError> {
        check_cluster_name(cluster_name)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("weft cluster CA {cluster_name}"),
        );
        dn.push(DnType::OrganizationName, cluster_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity.apply(&mut params)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: CertAndKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    /// An existing CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, IdentityError> {
        // Check both parse now rather than at the first issue.
        let key = KeyPair::from_pem(key_pem)?;
        Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            pem: CertAndKey {
                cert_pem: cert_pem.to_owned(),
                key_pem: key_pem.to_owned(),
            },
        })
    }

    /// The CA certificate, PEM: what every node trusts.
    pub fn cert_pem(&self) -> &str {
        &self.pem.cert_pem
    }

    /// The CA private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.pem.key_pem
    }

    /// Issues a certificate for `node_id` acting as `role`, with a fresh
    /// ECDSA P-256 key.
    pub fn issue(
        &self,
        role: Role,
        node_id: &NodeId,
        validity: Validity,
    ) -> Result<CertAndKey, IdentityError> {
        let ca_key = KeyPair::from_pem(&self.pem.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.pem.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id.as_str());
        params.distinguished_name = dn;
        let uri = identity_uri(role, node_id)
            .try_into()
            .map_err(IdentityError::Generate)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params)?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.crt` (0644) and `ca.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        write_public_file(&dir.join(CA_CERT_FILE), self.cert_pem())?;
        write_secret_file(&dir.join(CA_KEY_FILE), self.key_pem())
    }

    /// Reads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, IdentityError> {
        let cert = read_file(&dir.join(CA_CERT_FILE))?;
        let key = read_file(&dir.join(CA_KEY_FILE))?;
        Ca::from_pem(&cert, &key)
    }
}

fn check_cluster_name(name: &str) -> Result<(), IdentityError> {
    let bad = |reason| IdentityError::InvalidClusterName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > CLUSTER_NAME_LEN_MAX {
        return Err(bad("longer than 64 bytes"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

/// What a node needs to join the fabric: the CA certificate it trusts, and
/// its own certificate and key.
#[derive(Clone, Debug)]
pub struct NodeCredentials {
    pub ca_cert_pem: String,
    pub node: CertAndKey,
}

impl NodeCredentials {
    /// Writes `ca.crt`, `node.crt` (0644) and `node.key` (0600) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        write_public_file(&dir.join(CA_CERT_FILE), &self.ca_cert_pem)?;
        write_public_file(&dir.join(NODE_CERT_FILE), &self.node.cert_pem)?;
        write_secret_file(&dir.join(NODE_KEY_FILE), &self.node.key_pem)
    }

    /// Reads `ca.crt`, `node.crt` and `node.key` from `dir`.
    pub fn load(dir: &Path) -> Result<NodeCredentials, IdentityError> {
        Ok(NodeCredentials {
            ca_cert_pem: read_file(&dir.join(CA_CERT_FILE))?,
            node: CertAndKey {
                cert_pem: read_file(&dir.join(NODE_CERT_FILE))?,
                key_pem: read_file(&dir.join(NODE_KEY_FILE))?,
            },
        })
    }

    /// The identity named by our own certificate.
    pub fn identity(&self) -> Result<PeerIdentity, IdentityError> {
        let der = first_cert_der(&self.node.cert_pem)?;
        PeerIdentity::from_cert(&der)
    }
}

/// Who is at the other end of a fabric connection, as read from the
/// certificate it presented (already verified against the cluster CA by the
/// TLS layer before this is built).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub node_id: NodeId,
    pub role: Role,
}

impl PeerIdentity {
    /// Reads the role and node id from a DER certificate's SAN URI.
    ///
    /// Exactly one `weft://` URI must be present: two would let a
    /// certificate claim two identities. This does not verify the signature
    /// or validity; the TLS verifiers have done that by the time it is
    /// called on a peer's certificate.
    pub fn from_cert(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Parse(e.to_string()))?
            .ok_or(IdentityError::NoIdentity)?;
        let mut found = None;
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if uri.starts_with(SAN_URI_SCHEME) {
                    if found.is_some() {
                        return Err(IdentityError::AmbiguousIdentity);
                    }
                    found = Some(parse_identity_uri(uri)?);
                }
            }
        }
        let (role, node_id) = found.ok_or(IdentityError::NoIdentity)?;
        Ok(PeerIdentity { node_id, role })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.node_id)
    }
}

/// A human summary of a certificate, for `weft cert show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub is_ca: bool,
    /// The weft identity, if the certificate names one.
    pub identity: Option<PeerIdentity>,
    /// Seconds since the Unix epoch.
    pub not_before_unix: i64,
    pub not_after_unix: i64,
}

/// Summarises the first certificate in `pem`.
pub fn describe_cert_pem(pem: &str) -> Result<CertSummary, IdentityError> {
    let der = first_cert_der(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        is_ca: cert.is_ca(),
        identity: PeerIdentity::from_cert(&der).ok(),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// The DER of the first `CERTIFICATE` block in `pem`.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    certs_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or(IdentityError::NoPem {
            what: "certificate",
        })
}

/// Every `CERTIFICATE` block in `pem`, as DER.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Parse(e.to_string()))
}

fn read_file(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes a certificate (public) file, mode 0644, atomically.
pub fn write_public_file(path: &Path, contents: &str) -> Result<(), IdentityError> {
    write_atomic(path, contents, 0o644)
}

/// Writes a private key file, mode 0600 from its creation (never briefly
/// world-readable), atomically.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), IdentityError> {
    write_atomic(path, contents, KEY_FILE_MODE)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), IdentityError> {
    let io_err = |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io_err)?;
    // `mode` is filtered by the umask at creation and an existing temp file
    // keeps its old mode: set it explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err)?;
    }
    f.write_all(contents.as_bytes()).map_err(io_err)?;
    f.sync_all().map_err(io_err)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        for ok in ["a", "cs-01", "0", "gw1", &"a".repeat(63)] {
            assert!(NodeId::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "a/b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(NodeId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_uris() {
        let id = NodeId::new("cs-1").unwrap();
        let uri = identity_uri(Role::Chunkserver, &id);
        assert_eq!(uri, "weft://chunkserver/cs-1");
        assert_eq!(parse_identity_uri(&uri).unwrap(), (Role::Chunkserver, id));
        for bad in [
            "weft://chunkserver/",
            "weft://king/cs-1",
            "weft://admin/a/b",
            "weft://admin",
            "http://admin/a",
            "weft://admin/a:1",
        ] {
            assert!(parse_identity_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issue_and_read_back() {
        let ca = Ca::generate("test").unwrap();
        let id = NodeId::new("gw-7").unwrap();
        let issued = ca
            .issue(
                Role::Gateway,
                &id,
                Validity::days_from(SystemTime::now(), 1),
            )
            .unwrap();
        let der = first_cert_der(&issued.cert_pem).unwrap();
        let peer = PeerIdentity::from_cert(&der).unwrap();
        assert_eq!(peer.node_id, id);
        assert_eq!(peer.role, Role::Gateway);
        let ca_summary = describe_cert_pem(ca.cert_pem()).unwrap();
        assert!(ca_summary.is_ca);
        assert_eq!(ca_summary.identity, None);
        let summary = describe_cert_pem(&issued.cert_pem).unwrap();
        assert!(!summary.is_ca);
        assert_eq!(summary.issuer, ca_summary.subject);
        // A CA reloaded from PEM issues certificates that chain the same way.
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let issued2 = again
            .issue(Role::Admin, &id, Validity::days_from(SystemTime::now(), 1))
            .unwrap();
        assert_eq!(
            describe_cert_pem(&issued2.cert_pem).unwrap().issuer,
            ca_summary.subject
        );
    }

    #[test]
    fn garbage_is_not_an_identity() {
        assert!(PeerIdentity::from_cert(b"").is_err());
        assert!(PeerIdentity::from_cert(&[0x30, 0x82, 0xff, 0xff, 0]).is_err());
        // A certificate without a weft URI.
        let ca = Ca::generate("test").unwrap();
        let der = first_cert_der(ca.cert_pem()).unwrap();
        assert!(matches!(
            PeerIdentity::from_cert(&der),
            Err(IdentityError::NoIdentity)
        ));
    }

    #[test]
    fn files_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("files").unwrap();
        ca.save(dir.path()).unwrap();
        let id = NodeId::new("n1").unwrap();
        let creds = NodeCredentials {
            ca_cert_pem: ca.cert_pem().to_owned(),
            node: ca
                .issue(
                    Role::Chunkserver,
                    &id,
                    Validity::days_from(SystemTime::now(), 1),
                )
                .unwrap(),
        };
        let node_dir = dir.path().join("node");
        fs::create_dir(&node_dir).unwrap();
        creds.save(&node_dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [dir.path().join(CA_KEY_FILE), node_dir.join(NODE_KEY_FILE)] {
                let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", p.display());
            }
        }
        let loaded = NodeCredentials::load(&node_dir).unwrap();
        assert_eq!(loaded.identity().unwrap().node_id, id);
        let ca2 = Ca::load(dir.path()).unwrap();
        assert_eq!(ca2.cert_pem(), ca.cert_pem());
    }
}
