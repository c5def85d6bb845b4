//! `etc/chunkserver.toml`: what one chunkserver is and where it keeps its
//! data. Unknown keys are errors (a misspelt `reserve` must not silently
//! mean "no reserve"); every error names the file and the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fabric::gossip::state::Location;
use fabric::gossip::Seed;
use fabric::NodeId;
use serde::Deserialize;

use crate::journal::JOURNAL_BYTES_MAX_DEFAULT;
use crate::service::CAPACITY_INTERVAL_MS_DEFAULT;
use crate::store::{StoreConfig, BLOCK_BYTES, BOOT_ID_PATH};

/// Largest chunk accepted by default: a 64 MiB extent over k = 1.
pub const CHUNK_BYTES_MAX_DEFAULT: u64 = 64 * 1024 * 1024;
/// Scrub pace by default: 2,560 blocks/s = 10 MiB/s, a full pass of 1 TiB
/// in about 29 hours, without hurting foreground I/O.
pub const SCRUB_BLOCKS_PER_SEC_DEFAULT: u64 = 2_560;
/// Pause between scrub passes by default (one day).
pub const SCRUB_INTERVAL_SECS_DEFAULT: u64 = 86_400;
/// How long a chunk's holder may stay away before its chunks are rebuilt
/// on other nodes, by default (Ceph's `mon_osd_down_out_interval` and
/// Longhorn's replica replenishment wait are also ten minutes): long
/// enough for a reboot, short enough that a second failure rarely lands
/// while a stripe is degraded.
pub const REPLACE_AFTER_SECS_DEFAULT: u64 = 600;
/// How long after a write the extent primary flushes its chunks, when the
/// initiator did not, by default: ext4 commits its journal every 5 s. A
/// node that loses power loses its page cache; until that flush the
/// journal keeps the write's record, so its rows are reconciled after.
pub const JOURNAL_FLUSH_AFTER_SECS_DEFAULT: u64 = 5;
/// How often a chunkserver looks for chunk files it no longer holds (moved
/// to another node, or of a LUN deleted while it was down), by default.
pub const GC_INTERVAL_SECS_DEFAULT: u64 = 300;
/// Largest config file read, in bytes (it is a few lines).
pub const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Metadata replicas at most (Raft voters): 3 or 5 is the sane range.
pub const META_VOTERS_MAX: usize = 7;
/// How long a chunkserver's lease lasts; it renews every third of that.
pub const LEASE_MS_DEFAULT: u64 = 6_000;
/// Raft election timeout (the lower bound; the upper is twice it).
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Most runtime worker threads a config may ask for.
pub const WORKER_THREADS_MAX: usize = 1024;

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {CONFIG_FILE_BYTES_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// A byte count written as an integer (bytes) or a string with a binary
/// suffix: `"512K"`, `"64M"`, `"1G"`, `"2T"` (also `KiB`, `MiB`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_bytes(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"64M"`-style sizes.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 4096, \"64M\", \"1G\")"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?} (K, M, G, T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} overflows 64 bits"))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: RawNode,
    fabric: RawFabric,
    store: RawStore,
    #[serde(default)]
    scrub: RawScrub,
    #[serde(default)]
    gossip: RawGossip,
    #[serde(default)]
    journal: RawJournal,
    #[serde(default)]
    metadata: RawMetadata,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    repair: RawRepair,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRepair {
    #[serde(default = "replace_after")]
    replace_after_secs: u64,
    #[serde(default = "gc_interval")]
    gc_interval_secs: u64,
}

impl Default for RawRepair {
    fn default() -> Self {
        RawRepair {
            replace_after_secs: replace_after(),
            gc_interval_secs: gc_interval(),
        }
    }
}

fn gc_interval() -> u64 {
    GC_INTERVAL_SECS_DEFAULT
}

fn replace_after() -> u64 {
    REPLACE_AFTER_SECS_DEFAULT
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    #[serde(default)]
    worker_threads: usize,
}

/// `[runtime]`: how the process's async runtime is built. Apart from
/// [`Config`] because it is needed before the runtime starts, and
/// [`Config`] is what a node (or the simulation) starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Runtime worker threads; 0: tokio's default (one per CPU, or
    /// `TOKIO_WORKER_THREADS`). Where several weft processes share a few
    /// cores (`weft up`), 1 costs less CPU per I/O: with 1 the process
    /// runs on tokio's current-thread runtime, its main thread alone, so
    /// no wake-up crosses threads (measured in docs/benchmarks.md).
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// Reads the `[runtime]` table of the chunkserver config at `path`
    /// (the whole file is parsed, so its errors show here first).
    pub fn load(path: &Path) -> Result<RuntimeConfig, ConfigError> {
        let text = read_config(path)?;
        let raw = parse_raw(&text, path)?;
        if raw.runtime.worker_threads > WORKER_THREADS_MAX {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: "runtime.worker_threads",
                message: format!("at most {WORKER_THREADS_MAX}"),
            });
        }
        Ok(RuntimeConfig {
            worker_threads: raw.runtime.worker_threads,
        })
    }
}

fn read_config(path: &Path) -> Result<String, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(read)
}

fn parse_raw(text: &str, path: &Path) -> Result<Raw, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    /// The metadata replicas (3 or 5), the same list on every node.
    #[serde(default)]
    voters: Vec<RawSeed>,
    dir: Option<PathBuf>,
    lease_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    #[serde(default)]
    labels: RawLabels,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabels {
    #[serde(default)]
    region: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    rack: String,
    #[serde(default)]
    host: String,
    lat_long: Option<(f64, f64)>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFabric {
    listen: SocketAddr,
    public: Option<SocketAddr>,
    cert_dir: PathBuf,
    #[serde(default)]
    seeds: Vec<RawSeed>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeed {
    node: String,
    addr: SocketAddr,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    data_dir: PathBuf,
    capacity: ByteSize,
    #[serde(default = "zero")]
    reserve: ByteSize,
    chunk_bytes_max: Option<ByteSize>,
    boot_id_path: Option<PathBuf>,
}

fn zero() -> ByteSize {
    ByteSize(0)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScrub {
    #[serde(default = "scrub_rate")]
    blocks_per_sec: u64,
    #[serde(default = "scrub_interval")]
    interval_secs: u64,
    #[serde(default = "yes")]
    enabled: bool,
}

impl Default for RawScrub {
    fn default() -> Self {
        RawScrub {
            blocks_per_sec: scrub_rate(),
            interval_secs: scrub_interval(),
            enabled: true,
        }
    }
}

fn scrub_rate() -> u64 {
    SCRUB_BLOCKS_PER_SEC_DEFAULT
}
fn scrub_interval() -> u64 {
    SCRUB_INTERVAL_SECS_DEFAULT
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGossip {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "capacity_interval")]
    capacity_interval_ms: u64,
}

impl Default for RawGossip {
    fn default() -> Self {
        RawGossip {
            enabled: true,
            capacity_interval_ms: capacity_interval(),
        }
    }
}

fn capacity_interval() -> u64 {
    CAPACITY_INTERVAL_MS_DEFAULT
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    dir: Option<PathBuf>,
    bytes_max: Option<ByteSize>,
    flush_after_secs: Option<u64>,
}

/// A checked chunkserver configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: NodeId,
    pub location: Location,
    pub listen: SocketAddr,
    pub public: Option<SocketAddr>,
    pub cert_dir: PathBuf,
    pub seeds: Vec<Seed>,
    pub store: StoreConfig,
    /// 0: no background scrubber.
    pub scrub_blocks_per_sec: u64,
    pub scrub_interval_secs: u64,
    pub gossip: bool,
    pub capacity_interval_ms: u64,
    pub journal_dir: PathBuf,
    pub journal_bytes_max: u64,
    /// Writes the initiator has not flushed are flushed this long after.
    pub journal_flush_after_secs: u64,
    /// The metadata replicas; this node runs one if it is listed.
    pub voters: Vec<Seed>,
    pub meta_dir: PathBuf,
    pub lease_ms: u64,
    pub election_timeout_ms: u64,
    /// A missing chunk whose holder has been away this long is rebuilt on
    /// another node; 0: never (only on its holder, once back).
    pub replace_after_secs: u64,
    /// How often to delete chunk files this node no longer holds; 0: never.
    pub gc_interval_secs: u64,
}

impl Config {
    /// Reads and checks `path`. Relative paths inside are taken relative to
    /// the file's directory, so a config and its data can move together.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_config(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, path, base)
    }

    /// Parses `text` (named `path` in errors), resolving relative paths
    /// against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let raw = parse_raw(text, path)?;
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        let node_id =
            NodeId::new(raw.node.id.clone()).map_err(|e| invalid("node.id", e.to_string()))?;
        let mut seeds = Vec::new();
        for s in &raw.fabric.seeds {
            let node =
                NodeId::new(s.node.clone()).map_err(|e| invalid("fabric.seeds", e.to_string()))?;
            seeds.push(Seed { node, addr: s.addr });
        }
        let capacity = raw.store.capacity.0;
        let reserve = raw.store.reserve.0;
        if reserve >= capacity {
            return Err(invalid(
                "store.reserve",
                format!("{reserve} bytes leaves nothing of a {capacity}-byte capacity"),
            ));
        }
        let chunk_bytes_max = raw
            .store
            .chunk_bytes_max
            .map_or(CHUNK_BYTES_MAX_DEFAULT, |b| b.0);
        if chunk_bytes_max == 0 || !chunk_bytes_max.is_multiple_of(BLOCK_BYTES) {
            return Err(invalid(
                "store.chunk_bytes_max",
                format!("{chunk_bytes_max} is not a positive multiple of {BLOCK_BYTES}"),
            ));
        }
        let journal_flush_after_secs = raw
            .journal
            .flush_after_secs
            .unwrap_or(JOURNAL_FLUSH_AFTER_SECS_DEFAULT);
        if !(1..=3600).contains(&journal_flush_after_secs) {
            return Err(invalid(
                "journal.flush_after_secs",
                format!("{journal_flush_after_secs} is not between 1 and 3600"),
            ));
        }
        if raw.gossip.capacity_interval_ms == 0 {
            return Err(invalid(
                "gossip.capacity_interval_ms",
                "must be positive".into(),
            ));
        }
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        let data_dir = resolve(&raw.store.data_dir);
        let journal_dir = raw
            .journal
            .dir
            .as_deref()
            .map_or_else(|| data_dir.join("journal"), resolve);
        let mut voters = Vec::new();
        for s in &raw.metadata.voters {
            let node = NodeId::new(s.node.clone())
                .map_err(|e| invalid("metadata.voters", e.to_string()))?;
            if voters.iter().any(|v: &Seed| v.node == node) {
                return Err(invalid(
                    "metadata.voters",
                    format!("{node} is listed twice"),
                ));
            }
            voters.push(Seed { node, addr: s.addr });
        }
        if voters.len() > META_VOTERS_MAX {
            return Err(invalid(
                "metadata.voters",
                format!("{} voters; at most {META_VOTERS_MAX}", voters.len()),
            ));
        }
        let lease_ms = raw.metadata.lease_ms.unwrap_or(LEASE_MS_DEFAULT);
        let election_timeout_ms = raw
            .metadata
            .election_timeout_ms
            .unwrap_or(ELECTION_TIMEOUT_MS_DEFAULT);
        if !(1_000..=600_000).contains(&lease_ms) {
            return Err(invalid("metadata.lease_ms", "must be 1000–600000".into()));
        }
        if !(200..=60_000).contains(&election_timeout_ms) {
            return Err(invalid(
                "metadata.election_timeout_ms",
                "must be 200–60000".into(),
            ));
        }
        let meta_dir = raw
            .metadata
            .dir
            .as_deref()
            .map_or_else(|| data_dir.join("meta"), resolve);
        let l = raw.node.labels;
        Ok(Config {
            voters,
            meta_dir,
            lease_ms,
            election_timeout_ms,
            node_id,
            location: Location {
                region: l.region,
                site: l.site,
                rack: l.rack,
                host: l.host,
                lat_long: l.lat_long,
            },
            listen: raw.fabric.listen,
            public: raw.fabric.public,
            cert_dir: resolve(&raw.fabric.cert_dir),
            seeds,
            store: StoreConfig {
                data_dir,
                capacity_bytes: capacity,
                reserve_bytes: reserve,
                chunk_bytes_max,
                boot_id_path: raw
                    .store
                    .boot_id_path
                    .as_deref()
                    .map_or_else(|| BOOT_ID_PATH.into(), resolve),
            },
            scrub_blocks_per_sec: if raw.scrub.enabled {
                raw.scrub.blocks_per_sec
            } else {
                0
            },
            scrub_interval_secs: raw.scrub.interval_secs,
            gossip: raw.gossip.enabled,
            capacity_interval_ms: raw.gossip.capacity_interval_ms,
            journal_dir,
            journal_bytes_max: raw
                .journal
                .bytes_max
                .map_or(JOURNAL_BYTES_MAX_DEFAULT, |b| b.0),
            journal_flush_after_secs,
            replace_after_secs: raw.repair.replace_after_secs,
            gc_interval_secs: raw.repair.gc_interval_secs,
        })
    }
}

/// Seed lists as `BTreeMap` for logs.
pub fn describe_seeds(seeds: &[Seed]) -> BTreeMap<String, SocketAddr> {
    seeds
        .iter()
        .map(|s| (s.node.as_str().to_owned(), s.addr))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
id = "cs-1"
labels = { site = "a", rack = "r1" }
[fabric]
listen = "127.0.0.1:7400"
cert_dir = "certs"
seeds = [{ node = "cs-2", addr = "127.0.0.1:7401" }]
[store]
data_dir = "/var/lib/weft"
capacity = "1G"
reserve = "64M"
[scrub]
blocks_per_sec = 100
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"), Path::new("/etc/weft"))
    }

    #[test]
    fn parses_and_resolves() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node_id.as_str(), "cs-1");
        assert_eq!(c.store.capacity_bytes, 1 << 30);
        assert_eq!(c.store.reserve_bytes, 64 << 20);
        assert_eq!(c.cert_dir, PathBuf::from("/etc/weft/certs"));
        assert_eq!(c.journal_dir, PathBuf::from("/var/lib/weft/journal"));
        assert_eq!(c.location.rack, "r1");
        assert_eq!(c.seeds.len(), 1);
        assert_eq!(c.scrub_blocks_per_sec, 100);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("reserve", "reserv"), "reserv"),
            (GOOD.replace("\"64M\"", "\"2G\""), "store.reserve"),
            (GOOD.replace("\"1G\"", "\"1Q\""), "unknown size unit"),
            (GOOD.replace("cs-1", "CS_1"), "node.id"),
            (GOOD.replace("127.0.0.1:7400", "nowhere"), "listen"),
            (format!("{GOOD}\n[extra]\n"), "extra"),
        ];
        for (text, needle) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle:?} not in {e}");
            assert!(e.contains("t.toml"), "{e}");
        }
    }

    #[test]
    fn the_sample_config_parses() {
        let text = include_str!("../../etc/chunkserver.toml");
        let c = Config::parse(text, Path::new("chunkserver.toml"), Path::new("/etc/weft")).unwrap();
        assert_eq!(c.store.reserve_bytes, 20 << 30);
        assert_eq!(c.scrub_blocks_per_sec, SCRUB_BLOCKS_PER_SEC_DEFAULT);
        assert_eq!(c.replace_after_secs, REPLACE_AFTER_SECS_DEFAULT);
        assert_eq!(c.journal_flush_after_secs, JOURNAL_FLUSH_AFTER_SECS_DEFAULT);
        assert_eq!(c.gc_interval_secs, GC_INTERVAL_SECS_DEFAULT);
    }

    #[test]
    fn runtime_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cs.toml");
        std::fs::write(&path, GOOD).unwrap();
        assert_eq!(RuntimeConfig::load(&path).unwrap().worker_threads, 0);
        std::fs::write(&path, format!("{GOOD}\n[runtime]\nworker_threads = 1\n")).unwrap();
        assert_eq!(RuntimeConfig::load(&path).unwrap().worker_threads, 1);
        assert!(Config::load(&path).is_ok());
        std::fs::write(&path, format!("{GOOD}\n[runtime]\nworker_threads = 5000\n")).unwrap();
        let e = RuntimeConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("runtime.worker_threads"), "{e}");
        std::fs::write(&path, format!("{GOOD}\n[runtime]\nthreads = 1\n")).unwrap();
        assert!(RuntimeConfig::load(&path).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert_eq!(parse_bytes("2MiB"), Ok(2 << 20));
        assert!(parse_bytes("99999999999T").is_err());
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("-1").is_err());
    }
}
