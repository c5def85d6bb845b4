//! The gateway's TOML configuration (see `etc/gateway.toml`) and the
//! `--lun` quick-start specs, turned into a [`Gateway`]. Errors name the
//! offending field; nothing here panics on bad input.

use crate::backend::{parse_size, BlockDevice, FileDevice, RamDevice};
use crate::gateway::{Gateway, Target};
use crate::login::chap::{ChapConfig, ChapCredentials};
use crate::login::TargetAuth;
use crate::scsi::{LuConfig, ScsiTarget, ScsiTargetConfig};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("LUN {lun} of {iqn}: cannot open backend: {source}")]
    Backend {
        iqn: String,
        lun: u64,
        source: std::io::Error,
    },
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(msg.into()))
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub discovery: DiscoverySection,
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Addresses to listen on (`ip:port`).
    #[serde(default = "default_portals")]
    pub portals: Vec<String>,
    /// Addresses announced by SendTargets; defaults to the portals (a
    /// wildcard portal announces the address the initiator connected to).
    #[serde(default)]
    pub advertise: Vec<String>,
    /// Target portal group tag of this gateway (unique per gateway).
    #[serde(default = "default_tpgt")]
    pub tpgt: u16,
    /// Directory for persistent reservations with APTPL.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            portals: default_portals(),
            advertise: Vec::new(),
            tpgt: default_tpgt(),
            state_dir: None,
        }
    }
}

fn default_portals() -> Vec<String> {
    vec!["127.0.0.1:3260".into()]
}

fn default_tpgt() -> u16 {
    1
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    #[serde(default)]
    pub chap: Option<ChapSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapSection {
    /// Name and secret the initiator must present.
    pub user: String,
    pub secret: String,
    /// Name and secret the target presents for mutual CHAP.
    pub mutual_user: Option<String>,
    pub mutual_secret: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub iqn: String,
    pub alias: Option<String>,
    /// Initiator names allowed to log in; empty allows all.
    #[serde(default)]
    pub allowed_initiators: Vec<String>,
    pub chap: Option<ChapSection>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunSection {
    pub lun: u64,
    /// `ram:SIZE` or `file:PATH` (with `size` to create or grow the file).
    pub backend: String,
    pub size: Option<String>,
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Unit serial number; derived from the target and LUN when absent.
    pub serial: Option<String>,
}

fn default_block_size() -> u32 {
    512
}

/// CHAP secrets must be 12–16 bytes by RFC 7143 §12.1.3 for interoperability;
/// we insist on at least 12 and at most 255.
const CHAP_SECRET_BYTES_MIN: usize = 12;
const CHAP_SECRET_BYTES_MAX: usize = 255;
/// LUNs per target.
const LUNS_PER_TARGET_MAX: usize = 256;

impl ChapSection {
    fn to_config(&self, what: &str) -> Result<ChapConfig, ConfigError> {
        let check = |secret: &str| -> Result<(), ConfigError> {
            if !(CHAP_SECRET_BYTES_MIN..=CHAP_SECRET_BYTES_MAX).contains(&secret.len()) {
                return invalid(format!(
                    "{what}: CHAP secrets must be {CHAP_SECRET_BYTES_MIN} to {CHAP_SECRET_BYTES_MAX} characters"
                ));
            }
            Ok(())
        };
        check(&self.secret)?;
        if self.user.is_empty() {
            return invalid(format!("{what}: CHAP user is empty"));
        }
        let target = match (&self.mutual_user, &self.mutual_secret) {
            (Some(u), Some(s)) => {
                check(s)?;
                if s == &self.secret {
                    return invalid(format!(
                        "{what}: mutual CHAP secret must differ from the initiator's"
                    ));
                }
                Some(ChapCredentials {
                    user: u.clone(),
                    secret: s.clone(),
                })
            }
            (None, None) => None,
            _ => return invalid(format!("{what}: mutual_user and mutual_secret go together")),
        };
        Ok(ChapConfig {
            initiator: Some(ChapCredentials {
                user: self.user.clone(),
                secret: self.secret.clone(),
            }),
            target,
        })
    }
}

/// Parses `USER:SECRET` from the command line.
pub fn parse_chap_pair(s: &str) -> Result<(String, String), ConfigError> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => invalid(format!("expected USER:SECRET, got {s:?}")),
    }
}

/// Parses a quick-start LUN spec: `ram:SIZE` or `file:PATH[,size=SIZE][,bs=N]`
/// (`ram:SIZE` also takes `,bs=N`).
pub fn parse_lun_spec(lun: u64, spec: &str, block_size: u32) -> Result<LunSection, ConfigError> {
    let mut parts = spec.split(',');
    let backend = parts.next().unwrap_or_default().to_string();
    let mut size = None;
    let mut bs = block_size;
    for opt in parts {
        match opt.split_once('=') {
            Some(("size", v)) => size = Some(v.to_string()),
            Some(("bs", v)) => {
                bs = v.parse().map_err(|_| {
                    ConfigError::Invalid(format!("bad block size {v:?} in {spec:?}"))
                })?
            }
            _ => return invalid(format!("unknown option {opt:?} in LUN spec {spec:?}")),
        }
    }
    Ok(LunSection {
        lun,
        backend,
        size,
        block_size: bs,
        serial: None,
    })
}

/// A stable 64-bit hash (FNV-1a): identities must not change between runs
/// or builds, which `std`'s hasher does not promise.
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(b"\0") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The IEEE company id in our NAA designators (a locally administered
/// placeholder until weft registers one).
const NAA_COMPANY_ID: u32 = 0x00_1405;

/// NAA IEEE Registered Extended designator (type 6) derived from the target
/// and LUN, so every gateway with the same config gives the same identity.
pub fn naa_for(iqn: &str, lun: u64) -> [u8; 16] {
    let a = fnv64(&[iqn.as_bytes(), &lun.to_be_bytes()]);
    let b = fnv64(&[&lun.to_be_bytes(), iqn.as_bytes()]);
    let mut naa = [0u8; 16];
    // NAA 6 | 24-bit company id | 36-bit vendor specific | 64-bit extension.
    let head: u64 = (0x6u64 << 60) | (u64::from(NAA_COMPANY_ID) << 36) | (a & 0xf_ffff_ffff);
    naa[..8].copy_from_slice(&head.to_be_bytes());
    naa[8..].copy_from_slice(&b.to_be_bytes());
    naa
}

pub fn serial_for(iqn: &str, lun: u64) -> String {
    format!(
        "weft{:016x}",
        fnv64(&[iqn.as_bytes(), &lun.to_be_bytes(), b"serial"])
    )
}

fn open_backend(iqn: &str, l: &LunSection) -> Result<Arc<dyn BlockDevice>, ConfigError> {
    if l.block_size != 512 && l.block_size != 4096 {
        return invalid(format!(
            "LUN {} of {iqn}: block_size must be 512 or 4096",
            l.lun
        ));
    }
    let size = match &l.size {
        Some(s) => Some(parse_size(s).ok_or_else(|| {
            ConfigError::Invalid(format!("LUN {} of {iqn}: bad size {s:?}", l.lun))
        })?),
        None => None,
    };
    let (kind, arg) = l.backend.split_once(':').ok_or_else(|| {
        ConfigError::Invalid(format!(
            "LUN {} of {iqn}: backend must be ram:SIZE or file:PATH, got {:?}",
            l.lun, l.backend
        ))
    })?;
    match kind {
        "ram" => {
            let bytes = parse_size(arg).ok_or_else(|| {
                ConfigError::Invalid(format!("LUN {} of {iqn}: bad RAM size {arg:?}", l.lun))
            })?;
            if bytes < u64::from(l.block_size) {
                return invalid(format!(
                    "LUN {} of {iqn}: size is smaller than one block",
                    l.lun
                ));
            }
            Ok(Arc::new(RamDevice::new(bytes, l.block_size)))
        }
        "file" => {
            if arg.is_empty() {
                return invalid(format!("LUN {} of {iqn}: file backend needs a path", l.lun));
            }
            let dev = FileDevice::open(std::path::Path::new(arg), size, l.block_size).map_err(
                |source| ConfigError::Backend {
                    iqn: iqn.to_string(),
                    lun: l.lun,
                    source,
                },
            )?;
            Ok(Arc::new(dev))
        }
        other => invalid(format!(
            "LUN {} of {iqn}: unknown backend kind {other:?} (ram or file)",
            l.lun
        )),
    }
}

/// Checks an iSCSI name (RFC 7143 §4.2.7): `iqn.`, `eui.` or `naa.` form.
fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = name.len() <= 223
        && (name.starts_with("iqn.") || name.starts_with("eui.") || name.starts_with("naa."))
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.:".contains(&b));
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "{name:?} is not a valid iSCSI name (iqn.YYYY-MM.reversed.domain[:id], lower case)"
        ))
    }
}

impl Config {
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Opens every backend and builds the gateway.
    pub fn build(&self) -> Result<Arc<Gateway>, ConfigError> {
        if self.gateway.portals.is_empty() {
            return invalid("gateway.portals is empty");
        }
        if self.targets.is_empty() {
            return invalid("no [[target]] configured");
        }
        let mut targets = Vec::new();
        let mut names = std::collections::HashSet::new();
        for t in &self.targets {
            check_name(&t.iqn)?;
            if !names.insert(t.iqn.clone()) {
                return invalid(format!("target {} is configured twice", t.iqn));
            }
            for i in &t.allowed_initiators {
                check_name(i)?;
            }
            if t.luns.len() > LUNS_PER_TARGET_MAX {
                return invalid(format!(
                    "target {} has more than {LUNS_PER_TARGET_MAX} LUNs",
                    t.iqn
                ));
            }
            let mut lus = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for l in &t.luns {
                if l.lun >= 16384 {
                    return invalid(format!("target {}: LUN {} is beyond 16383", t.iqn, l.lun));
                }
                if !seen.insert(l.lun) {
                    return invalid(format!(
                        "target {}: LUN {} is configured twice",
                        t.iqn, l.lun
                    ));
                }
                lus.push(LuConfig {
                    lun: l.lun,
                    device: open_backend(&t.iqn, l)?,
                    serial: l
                        .serial
                        .clone()
                        .unwrap_or_else(|| serial_for(&t.iqn, l.lun)),
                    naa: naa_for(&t.iqn, l.lun),
                    vendor: "WEFT".into(),
                    product: "weft-lun".into(),
                    revision: "0001".into(),
                });
            }
            let chap = match &t.chap {
                Some(c) => c.to_config(&format!("target {}", t.iqn))?,
                None => ChapConfig::default(),
            };
            let mut scsi_cfg = ScsiTargetConfig::standalone(t.iqn.clone(), lus);
            if let Some(dir) = &self.gateway.state_dir {
                let store = crate::scsi::FilePrStore::open(dir.join(&t.iqn)).map_err(|e| {
                    ConfigError::Invalid(format!("state_dir {}: {e}", dir.display()))
                })?;
                scsi_cfg.pr_store = Arc::new(store);
            }
            targets.push(Target {
                auth: TargetAuth {
                    name: t.iqn.clone(),
                    alias: t.alias.clone(),
                    chap,
                    allowed_initiators: t.allowed_initiators.clone(),
                },
                scsi: Arc::new(ScsiTarget::new(scsi_cfg)),
            });
        }
        let discovery_chap = match &self.discovery.chap {
            Some(c) => c.to_config("discovery")?,
            None => ChapConfig::default(),
        };
        let advertise = if self.gateway.advertise.is_empty() {
            self.gateway.portals.clone()
        } else {
            self.gateway.advertise.clone()
        };
        for p in self.gateway.portals.iter().chain(&advertise) {
            if p.parse::<std::net::SocketAddr>().is_err() {
                return invalid(format!("portal {p:?} is not ip:port"));
            }
        }
        Ok(Gateway::new(
            targets,
            advertise,
            self.gateway.tpgt,
            discovery_chap,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses_and_builds() {
        let cfg = Config::parse(include_str!("../../etc/gateway.toml")).unwrap();
        assert_eq!(cfg.targets.len(), 1);
        cfg.build().unwrap();
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("[[target]]\niqn = \"bad name\"\n", "not a valid iSCSI name"),
            ("[[target]]\niqn = \"iqn.2026-11.org.weft:a\"\n[[target.lun]]\nlun = 0\nbackend = \"disk:1G\"\n", "unknown backend"),
            ("[[target]]\niqn = \"iqn.2026-11.org.weft:a\"\n[[target.lun]]\nlun = 0\nbackend = \"ram:1Q\"\n", "bad RAM size"),
            ("[[target]]\niqn = \"iqn.2026-11.org.weft:a\"\n[target.chap]\nuser = \"u\"\nsecret = \"short\"\n", "CHAP secrets"),
            ("[gateway]\nportals = [\"nowhere\"]\n[[target]]\niqn = \"iqn.2026-11.org.weft:a\"\n", "not ip:port"),
            ("", "no [[target]]"),
        ];
        for (text, want) in cases {
            let err = Config::parse(text)
                .and_then(|c| c.build())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
        assert!(
            Config::parse("[gateway]\nbogus = 1\n").is_err(),
            "unknown keys are errors"
        );
    }

    #[test]
    fn identities_are_stable_and_distinct() {
        assert_eq!(naa_for("iqn.a", 0), naa_for("iqn.a", 0));
        assert_ne!(naa_for("iqn.a", 0), naa_for("iqn.a", 1));
        assert_eq!(naa_for("iqn.a", 0)[0] >> 4, 6);
        assert_ne!(serial_for("iqn.a", 0), serial_for("iqn.b", 0));
    }

    #[test]
    fn lun_specs() {
        let l = parse_lun_spec(2, "file:/tmp/x.img,size=1G,bs=4096", 512).unwrap();
        assert_eq!(
            (l.lun, l.backend.as_str(), l.size.as_deref(), l.block_size),
            (2, "file:/tmp/x.img", Some("1G"), 4096)
        );
        assert!(parse_lun_spec(0, "ram:1G,colour=blue", 512).is_err());
    }
}
