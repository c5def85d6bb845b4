//! The client config: where the cluster's metadata replicas are and which
//! admin certificate `weft` proves itself with. `weft up` writes it
//! ([`write_client_config`]); every command reads it ([`find_config`],
//! [`ClientConfig::load`]).
//!
//! ```toml
//! version = 1
//!
//! [cluster]
//! cert_dir = "admin"          # ca.crt, node.crt, node.key; relative to this file
//! # timeout_ms = 10000        # how long a command keeps trying
//!
//! [[cluster.endpoints]]
//! node = "cs-1"               # the node id in its certificate
//! addr = "127.0.0.1:7400"     # its [fabric] listen address
//! ```
//!
//! Unknown keys are errors (a typo must not be ignored). The format is
//! versioned: a file written by a later weft says so instead of being
//! misread.

use std::io::Write;
use std::path::{Path, PathBuf};

use fabric::identity::NodeId;
use serde::Deserialize;

/// The format this weft reads and writes.
pub const CONFIG_VERSION: u32 = 1;
/// Names the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "WEFT_CONFIG";
/// How long a command keeps trying the replicas, unless the config or
/// `--timeout` says otherwise: longer than a leader election and the
/// client's retry after it (3–4 s measured), short enough for a person.
pub const TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest timeout a config may give.
pub const TIMEOUT_MS_MAX: u64 = 3_600_000;
/// Endpoints one config may list.
pub const ENDPOINTS_MAX: usize = 64;

/// One metadata replica (any chunkserver will do: each forwards).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Its node id: the fabric checks the certificate it presents.
    pub node: NodeId,
    /// `host:port` of its `[fabric] listen` address.
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Directory holding `ca.crt`, `node.crt`, `node.key` of an admin
    /// certificate. When loaded: relative paths are already resolved
    /// against the file's directory.
    pub cert_dir: PathBuf,
    pub endpoints: Vec<Endpoint>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no cluster config: {tried}; give --config FILE or set {CONFIG_ENV} (weft up writes one; see docs/cli.md)")]
    NotFound { tried: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<u32>,
    cluster: RawCluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    cert_dir: PathBuf,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    node: String,
    addr: String,
}

impl ClientConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<ClientConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        ClientConfig::parse(&text, base).map_err(|why| ConfigError::Invalid {
            path: path.to_path_buf(),
            why,
        })
    }

    /// Parses `text`; a relative `cert_dir` is taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ClientConfig, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        match raw.version {
            None | Some(CONFIG_VERSION) => {}
            Some(v) => {
                return Err(format!(
                    "config version {v} is not understood by this weft (it reads version {CONFIG_VERSION}): upgrade weft"
                ))
            }
        }
        let c = raw.cluster;
        if c.endpoints.is_empty() {
            return Err(
                "no [[cluster.endpoints]]: list at least one chunkserver (node = \"cs-1\", addr = \"10.0.0.1:7400\")"
                    .into(),
            );
        }
        if c.endpoints.len() > ENDPOINTS_MAX {
            return Err(format!("more than {ENDPOINTS_MAX} endpoints"));
        }
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        for e in c.endpoints {
            let node = NodeId::new(e.node).map_err(|e| format!("cluster.endpoints: {e}"))?;
            if !e.addr.contains(':') {
                return Err(format!(
                    "cluster.endpoints: addr {:?} of {node} needs a port (host:port)",
                    e.addr
                ));
            }
            endpoints.push(Endpoint { node, addr: e.addr });
        }
        if let Some(t) = c.timeout_ms {
            if t == 0 || t > TIMEOUT_MS_MAX {
                return Err(format!(
                    "cluster.timeout_ms must be 1–{TIMEOUT_MS_MAX}, not {t}"
                ));
            }
        }
        Ok(ClientConfig {
            cert_dir: base.join(c.cert_dir),
            endpoints,
            timeout_ms: c.timeout_ms,
        })
    }

    /// The file's text, with comments; `cert_dir` is written as given (a
    /// relative path stays relative to the file).
    pub fn to_toml(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut out = String::new();
        out.push_str("# weft client config: where the cluster is, and the admin certificate\n");
        out.push_str("# weft proves itself with. See docs/cli.md.\n");
        out.push_str(&format!("version = {CONFIG_VERSION}\n\n[cluster]\n"));
        out.push_str("# ca.crt, node.crt and node.key of an admin certificate\n");
        out.push_str("# (weft cert issue --role admin); relative to this file.\n");
        out.push_str(&format!(
            "cert_dir = {}\n",
            quote(&self.cert_dir.to_string_lossy())
        ));
        if let Some(t) = self.timeout_ms {
            out.push_str(&format!("timeout_ms = {t}\n"));
        }
        out.push_str("\n# Metadata replicas to ask (any chunkserver answers): the node id in\n");
        out.push_str("# its certificate and its [fabric] listen address.\n");
        for e in &self.endpoints {
            out.push_str(&format!(
                "[[cluster.endpoints]]\nnode = {}\naddr = {}\n",
                quote(e.node.as_str()),
                quote(&e.addr)
            ));
        }
        out
    }
}

/// Writes `config` to `path` (creating its directory), atomically: a
/// reader sees the old file or the new one, never half of one.
pub fn write_client_config(path: &Path, config: &ClientConfig) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weft.toml".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(config.to_toml().as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// `~/.config/weft/weft.toml`, if there is a home directory.
pub fn default_config_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".config/weft/weft.toml"))
}

/// Which config file to use: `--config`, else `$WEFT_CONFIG`, else
/// `~/.config/weft/weft.toml`. Only the default must exist to be chosen;
/// a file named explicitly that is missing is an error naming it.
pub fn find_config(flag: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match default_config_path() {
        Some(p) if p.exists() => Ok(p),
        Some(p) => Err(ConfigError::NotFound {
            tried: format!(
                "no --config, {CONFIG_ENV} is not set and {} does not exist",
                p.display()
            ),
        }),
        None => Err(ConfigError::NotFound {
            tried: format!("no --config, {CONFIG_ENV} is not set and HOME is not set"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> ClientConfig {
        ClientConfig {
            cert_dir: PathBuf::from("admin"),
            endpoints: vec![
                Endpoint {
                    node: NodeId::new("cs-1").unwrap(),
                    addr: "127.0.0.1:7400".into(),
                },
                Endpoint {
                    node: NodeId::new("cs-2").unwrap(),
                    addr: "cs-2.example.net:7400".into(),
                },
            ],
            timeout_ms: Some(5_000),
        }
    }

    #[test]
    fn written_is_read_back() {
        let c = example();
        let back = ClientConfig::parse(&c.to_toml(), Path::new("/etc/weft")).unwrap();
        assert_eq!(back.cert_dir, PathBuf::from("/etc/weft/admin"));
        assert_eq!(back.endpoints, c.endpoints);
        assert_eq!(back.timeout_ms, c.timeout_ms);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/weft.toml");
        write_client_config(&path, &c).unwrap();
        let loaded = ClientConfig::load(&path).unwrap();
        assert_eq!(loaded.cert_dir, dir.path().join("sub/admin"));
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["weft.toml"]);
    }

    /// The example shipped beside the crate parses.
    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../weft.toml.example");
        let c = ClientConfig::parse(text, Path::new("/x")).unwrap();
        assert_eq!(c.endpoints.len(), 3);
    }

    /// One row per broken file: the part of the error that must show.
    #[test]
    fn bad_files() {
        let ep = "[[cluster.endpoints]]\nnode = \"cs-1\"\naddr = \"127.0.0.1:7400\"\n";
        let table: &[(String, &str)] = &[
            ("version = 2\n[cluster]\ncert_dir = \"a\"\n".to_string() + ep, "version 2"),
            ("[cluster]\ncert_dir = \"a\"\n".into(), "no [[cluster.endpoints]]"),
            ("[cluster]\ncert_dir = \"a\"\ncolour = 1\n".to_string() + ep, "colour"),
            ("[cluster]\n".to_string() + ep, "cert_dir"),
            (
                "[cluster]\ncert_dir = \"a\"\n[[cluster.endpoints]]\nnode = \"CS_1\"\naddr = \"h:1\"\n".into(),
                "CS_1",
            ),
            (
                "[cluster]\ncert_dir = \"a\"\n[[cluster.endpoints]]\nnode = \"cs-1\"\naddr = \"h\"\n".into(),
                "needs a port",
            ),
            (
                "[cluster]\ncert_dir = \"a\"\ntimeout_ms = 0\n".to_string() + ep,
                "timeout_ms",
            ),
            ("cluster = 3".into(), "invalid type"),
        ];
        for (text, want) in table {
            let err = ClientConfig::parse(text, Path::new("/")).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
