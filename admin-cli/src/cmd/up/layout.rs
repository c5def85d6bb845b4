//! The data directory of `weft up` and everything written into it. The
//! first run chooses the shape and the ports and records them in
//! `up.toml`; every later run reads them back, so the chunkservers come
//! back on the same fabric addresses (the metadata voters know each other
//! by them) with the same data.
//!
//! ```text
//! DIR/up.toml                  shape and ports, chosen by the first run
//! DIR/up.lock                  held while weft up runs
//! DIR/weft.toml                client config (admin certificate), once ready
//! DIR/ready.json               while the cluster is ready (the scripts' contract)
//! DIR/certs/ca/                cluster CA: ca.crt, ca.key
//! DIR/certs/admin/             admin certificate for weft commands (weft.toml)
//! DIR/certs/weft-up/           weft up's own admin certificate (its status line)
//! DIR/certs/cs-N/, gw-N/       each process's certificate
//! DIR/cs-N/chunkserver.toml    chunkserver config, rewritten on every run
//! DIR/cs-N/data/               its chunks, journal and metadata replica
//! DIR/gw-N/gateway.toml        gateway config (weft-gateway --cluster)
//! DIR/logs/cs-N.log, gw-N.log  the processes' logs (appended)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fabric::identity::{Ca, NodeId, Role, CA_KEY_FILE, NODE_CERT_VALIDITY_DAYS_DEFAULT};
use fabric::placement::EcProfile;
use serde::{Deserialize, Serialize};

use crate::cmd::cert::issue_into;
use crate::cmd::lun::DEFAULT_K_MAX;

/// The format of `up.toml` this weft reads and writes.
pub const STATE_VERSION: u32 = 1;
/// Metadata voters at most (the first nodes).
pub const VOTERS_MAX: usize = 3;
/// Chunkservers one `weft up` runs at most.
pub const NODES_MAX: u16 = 16;
/// Gateways one `weft up` runs at most; their portals take the ports
/// from `--port` on, so the chunkservers' fabric ports avoid this many.
pub const GATEWAYS_MAX: u16 = 8;
/// The first chunkserver's fabric port is the portal port plus this:
/// 3260 → 7400, the fabric's usual port (etc/chunkserver.toml).
pub const FABRIC_PORT_OFFSET: u16 = 4140;
/// Where fabric ports are looked for when `--port` is too high for the
/// offset.
pub const FABRIC_PORT_FALLBACK: u16 = 7400;
/// Smallest chunk capacity given to a node: room to write a few GiB of
/// test data (the store is thin: capacity is a limit, not an allocation).
pub const CAPACITY_BYTES_MIN: u64 = 16 << 30;
/// Lease of each chunkserver: short, so that a node stopped by hand is
/// noticed within seconds on a laptop.
pub const LEASE_MS: u64 = 3_000;
/// How often chunkservers gossip their capacity (the status line shows it).
pub const CAPACITY_INTERVAL_MS: u64 = 1_000;
/// The supervisor's own certificate (an admin one, distinct from the
/// operator's so that both can gossip at once).
pub const SUPERVISOR_ID: &str = "weft-up";
pub const ADMIN_ID: &str = "admin";

/// One chunkserver's place in the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSlot {
    pub id: String,
    /// Its fabric listen address (127.0.0.1 and a port fixed by the first run).
    pub fabric: SocketAddr,
}

/// `up.toml`: what the first run chose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpState {
    pub version: u32,
    /// The first gateway's iSCSI port (the last `--port` given).
    pub port: u16,
    /// Gateways started (the last `--gateways` given).
    pub gateways: u16,
    /// Chunk capacity of each chunkserver, in bytes.
    pub capacity_bytes: u64,
    pub nodes: Vec<NodeSlot>,
}

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn state(&self) -> PathBuf {
        self.dir.join("up.toml")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("up.lock")
    }
    pub fn client_config(&self) -> PathBuf {
        self.dir.join("weft.toml")
    }
    pub fn ready(&self) -> PathBuf {
        self.dir.join("ready.json")
    }
    pub fn certs(&self, id: &str) -> PathBuf {
        self.dir.join("certs").join(id)
    }
    pub fn ca(&self) -> PathBuf {
        self.certs("ca")
    }
    pub fn node_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }
    pub fn chunkserver_config(&self, id: &str) -> PathBuf {
        self.node_dir(id).join("chunkserver.toml")
    }
    pub fn data(&self, id: &str) -> PathBuf {
        self.node_dir(id).join("data")
    }
    pub fn gateway_config(&self, id: &str) -> PathBuf {
        self.node_dir(id).join("gateway.toml")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log(&self, id: &str) -> PathBuf {
        self.logs().join(format!("{id}.log"))
    }

    /// `DIR/x` as the user sees it: relative to DIR.
    pub fn short(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}

pub fn node_id(i: usize) -> String {
    format!("cs-{}", i + 1)
}

pub fn gateway_id(g: usize) -> String {
    format!("gw-{}", g + 1)
}

/// The LUN profile for `nodes` chunkservers: `k+1`, `k` = nodes − 1 (at
/// most 8); a single node gets `1+0` (nothing to put parity on).
pub fn profile(nodes: usize) -> EcProfile {
    if nodes <= 1 {
        return EcProfile { k: 1, m: 0 };
    }
    let k = (nodes - 1).min(usize::from(DEFAULT_K_MAX)) as u8;
    EcProfile { k, m: 1 }
}

/// Each node's capacity: twice its share of the LUN's raw bytes, at
/// least [`CAPACITY_BYTES_MIN`], in whole GiB.
pub fn capacity_bytes(nodes: usize, lun_bytes: u64) -> u64 {
    let p = profile(nodes);
    let raw = u128::from(lun_bytes) * u128::from(p.k + p.m) / u128::from(p.k);
    let share = (2 * raw).div_ceil(nodes.max(1) as u128);
    let share = u64::try_from(share).unwrap_or(u64::MAX);
    share.max(CAPACITY_BYTES_MIN).next_multiple_of(1 << 30)
}

/// `n` fabric ports for a cluster whose first portal is `port`: from
/// `port + FABRIC_PORT_OFFSET` upward (or [`FABRIC_PORT_FALLBACK`]),
/// skipping the gateways' portal ports and any port `free` refuses.
pub fn choose_fabric_ports(port: u16, n: usize, free: impl Fn(u16) -> bool) -> Result<Vec<u16>> {
    let portals = u32::from(port)..u32::from(port) + u32::from(GATEWAYS_MAX);
    let base = match port.checked_add(FABRIC_PORT_OFFSET) {
        Some(b) if u32::from(b) + 256 <= 65_535 => b,
        _ => FABRIC_PORT_FALLBACK,
    };
    let mut out = Vec::with_capacity(n);
    let mut p = u32::from(base);
    while out.len() < n {
        if p > 65_535 {
            bail!("no free port for the chunkservers' fabric from {base} up: free some ports or pick another --port");
        }
        if !portals.contains(&p) && free(p as u16) {
            out.push(p as u16);
        }
        p += 1;
    }
    Ok(out)
}

/// Whether 127.0.0.1:`port` can be bound now.
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl UpState {
    pub fn new(port: u16, nodes: usize, gateways: u16, lun_bytes: u64) -> Result<UpState> {
        let ports = choose_fabric_ports(port, nodes, port_is_free)?;
        Ok(UpState {
            version: STATE_VERSION,
            port,
            gateways,
            capacity_bytes: capacity_bytes(nodes, lun_bytes),
            nodes: ports
                .iter()
                .enumerate()
                .map(|(i, p)| NodeSlot {
                    id: node_id(i),
                    fabric: SocketAddr::from(([127, 0, 0, 1], *p)),
                })
                .collect(),
        })
    }

    pub fn load(path: &Path) -> Result<UpState> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let s: UpState = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        if s.version != STATE_VERSION {
            bail!(
                "{}: version {} is not understood by this weft (it reads version {STATE_VERSION}): use the weft that made it, or another --dir",
                path.display(),
                s.version
            );
        }
        if s.nodes.is_empty() || s.nodes.len() > usize::from(NODES_MAX) {
            bail!("{}: it lists {} nodes", path.display(), s.nodes.len());
        }
        Ok(s)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(self).context("writing up.toml")?;
        let text = format!(
            "# weft up: the shape and ports of this cluster, chosen by its first run.\n\
             # Every run reuses them (the chunkservers keep their fabric addresses).\n{body}"
        );
        write_atomic(path, text.as_bytes())
    }

    pub fn voters(&self) -> &[NodeSlot] {
        &self.nodes[..self.nodes.len().min(VOTERS_MAX)]
    }

    pub fn portals(&self) -> Vec<SocketAddr> {
        (0..self.gateways)
            .map(|g| SocketAddr::from(([127, 0, 0, 1], self.port + g)))
            .collect()
    }
}

/// Writes `path` through a temporary file and a rename: a reader sees
/// the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn endpoints_toml(slots: &[&NodeSlot]) -> String {
    slots
        .iter()
        .map(|s| format!("  {{ node = \"{}\", addr = \"{}\" }},\n", s.id, s.fabric))
        .collect()
}

/// The config of chunkserver `i`.
pub fn chunkserver_toml(state: &UpState, i: usize) -> String {
    let me = &state.nodes[i];
    let seeds: Vec<&NodeSlot> = state.nodes.iter().filter(|s| s.id != me.id).collect();
    let voters: Vec<&NodeSlot> = state.voters().iter().collect();
    format!(
        r#"# weft up: chunkserver {id}. Rewritten on every run of weft up
# (the shape and ports come from ../up.toml).
[node]
id = "{id}"
# One host per node, so that placement spreads a stripe over all of them.
labels = {{ host = "{id}" }}

[fabric]
listen = "{addr}"
cert_dir = "../certs/{id}"
seeds = [
{seeds}]

[store]
data_dir = "data"
capacity = {capacity}
reserve = 0

[gossip]
capacity_interval_ms = {CAPACITY_INTERVAL_MS}

[metadata]
voters = [
{voters}]
lease_ms = {LEASE_MS}

[runtime]
# Every process of weft up shares this machine's cores.
worker_threads = {threads}
"#,
        id = me.id,
        addr = me.fabric,
        seeds = endpoints_toml(&seeds),
        capacity = state.capacity_bytes,
        voters = endpoints_toml(&voters),
        threads = worker_threads(state),
    )
}

/// Runtime threads for each process of weft up: the machine's cores shared
/// among its chunkservers and gateways, at least one. Each process taking
/// one per core (tokio's default) made them contend: with 4 chunkservers
/// and a gateway on 2 cores, one thread each gave 10–20 % more 4 KiB random
/// writes for less CPU (`docs/benchmarks.md`).
pub fn worker_threads(state: &UpState) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let processes = state.nodes.len() + usize::from(state.gateways);
    (cores / processes.max(1)).max(1)
}

/// The config of gateway `g` (`weft-gateway --cluster`).
pub fn gateway_toml(state: &UpState, g: usize) -> String {
    let id = gateway_id(g);
    let voters: Vec<&NodeSlot> = state.voters().iter().collect();
    format!(
        r#"# weft up: gateway {id}. Rewritten on every run of weft up.
[gateway]
portals = ["{portal}"]
tpgt = {tpgt}

[cluster]
node_id = "{id}"
cert_dir = "../certs/{id}"
metadata = [
{voters}]

[runtime]
# Every process of weft up shares this machine's cores.
worker_threads = {threads}
"#,
        portal = state.portals()[g],
        tpgt = g + 1,
        voters = endpoints_toml(&voters),
        threads = worker_threads(state),
    )
}

/// What [`ensure_certs`] made.
#[derive(Debug, Default)]
pub struct CertsMade {
    pub ca: bool,
    pub issued: Vec<String>,
}

/// The cluster CA and one certificate per process, the operator and the
/// supervisor: made where missing, kept where present.
pub fn ensure_certs(layout: &Layout, state: &UpState) -> Result<CertsMade> {
    let mut made = CertsMade::default();
    let ca_dir = layout.ca();
    let ca = if ca_dir.join(CA_KEY_FILE).exists() {
        Ca::load(&ca_dir).with_context(|| format!("cannot load the CA in {}", ca_dir.display()))?
    } else {
        std::fs::create_dir_all(&ca_dir)
            .with_context(|| format!("cannot create {}", ca_dir.display()))?;
        let ca = Ca::generate("weft-up")?;
        ca.save(&ca_dir)?;
        made.ca = true;
        ca
    };
    let mut wanted: Vec<(Role, String)> = state
        .nodes
        .iter()
        .map(|n| (Role::Chunkserver, n.id.clone()))
        .collect();
    wanted.extend((0..usize::from(state.gateways)).map(|g| (Role::Gateway, gateway_id(g))));
    wanted.push((Role::Admin, ADMIN_ID.to_string()));
    wanted.push((Role::Admin, SUPERVISOR_ID.to_string()));
    for (role, id) in wanted {
        let out = layout.certs(&id);
        if out.join("node.crt").exists() && out.join("node.key").exists() {
            continue;
        }
        let node = NodeId::new(&id)?;
        issue_into(&ca, role, &node, &out, NODE_CERT_VALIDITY_DAYS_DEFAULT)?;
        made.issued.push(id);
    }
    Ok(made)
}

/// Writes every chunkserver's and gateway's config (the same text for the
/// same state: a restart changes nothing).
pub fn write_configs(layout: &Layout, state: &UpState) -> Result<()> {
    std::fs::create_dir_all(layout.logs())
        .with_context(|| format!("cannot create {}", layout.logs().display()))?;
    for (i, n) in state.nodes.iter().enumerate() {
        std::fs::create_dir_all(layout.data(&n.id))
            .with_context(|| format!("cannot create {}", layout.data(&n.id).display()))?;
        write_atomic(
            &layout.chunkserver_config(&n.id),
            chunkserver_toml(state, i).as_bytes(),
        )?;
    }
    for g in 0..usize::from(state.gateways) {
        let id = gateway_id(g);
        std::fs::create_dir_all(layout.node_dir(&id))
            .with_context(|| format!("cannot create {}", layout.node_dir(&id).display()))?;
        write_atomic(
            &layout.gateway_config(&id),
            gateway_toml(state, g).as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_capacity() {
        let table: &[(usize, (u8, u8), u64, u64)] = &[
            // nodes, profile, LUN bytes, capacity per node
            (1, (1, 0), 1 << 30, 16 << 30),
            (2, (1, 1), 1 << 30, 16 << 30),
            (4, (3, 1), 1 << 30, 16 << 30),
            (12, (8, 1), 1 << 30, 16 << 30),
            // 100 GiB 3+1: 133.3 GiB raw, ×2 over 4 nodes = 66.7 → 67 GiB.
            (4, (3, 1), 100 << 30, 67 << 30),
        ];
        for (nodes, (k, m), lun, cap) in table {
            assert_eq!(profile(*nodes), EcProfile { k: *k, m: *m }, "{nodes}");
            assert_eq!(capacity_bytes(*nodes, *lun), *cap, "{nodes} {lun}");
        }
    }

    #[test]
    fn fabric_ports() {
        // 3260 → 7400 on; busy ones skipped.
        let got = choose_fabric_ports(3260, 4, |p| p != 7401).unwrap();
        assert_eq!(got, [7400, 7402, 7403, 7404]);
        // Too high for the offset: the fallback.
        let got = choose_fabric_ports(65_000, 1, |_| true).unwrap();
        assert_eq!(got, [FABRIC_PORT_FALLBACK]);
        assert!(choose_fabric_ports(3260, 1, |_| false).is_err());
    }

    #[test]
    fn state_round_trip_and_configs() {
        let dir = tempfile::tempdir().unwrap();
        let state = UpState {
            version: STATE_VERSION,
            port: 3260,
            gateways: 2,
            capacity_bytes: 16 << 30,
            nodes: (0..4)
                .map(|i| NodeSlot {
                    id: node_id(i),
                    fabric: SocketAddr::from(([127, 0, 0, 1], 7400 + i as u16)),
                })
                .collect(),
        };
        let path = dir.path().join("up.toml");
        state.save(&path).unwrap();
        assert_eq!(UpState::load(&path).unwrap(), state);
        assert_eq!(state.voters().len(), 3);
        assert_eq!(
            state.portals(),
            [
                "127.0.0.1:3260".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:3261".parse().unwrap()
            ]
        );
        let cs = chunkserver_toml(&state, 3);
        assert!(cs.contains("id = \"cs-4\""), "{cs}");
        assert!(cs.contains("listen = \"127.0.0.1:7403\""), "{cs}");
        assert!(cs.contains("{ node = \"cs-1\", addr = \"127.0.0.1:7400\" }"));
        assert!(
            !cs.contains("{ node = \"cs-4\""),
            "a node is not its own seed: {cs}"
        );
        assert!(toml::from_str::<toml::Value>(&cs).is_ok(), "{cs}");
        let gw = gateway_toml(&state, 1);
        assert!(gw.contains("portals = [\"127.0.0.1:3261\"]") && gw.contains("tpgt = 2"));
        assert!(toml::from_str::<toml::Value>(&gw).is_ok(), "{gw}");
        // Six processes share the cores: one thread each up to 11 cores.
        let threads = format!("worker_threads = {}", worker_threads(&state));
        assert!(cs.contains(&threads) && gw.contains(&threads), "{cs}{gw}");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_threads(&state), (cores / 6).max(1));

        std::fs::write(
            &path,
            "version = 9\nport = 1\ngateways = 1\ncapacity_bytes = 1\nnodes = []\n",
        )
        .unwrap();
        let e = UpState::load(&path).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
    }
}
