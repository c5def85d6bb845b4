//! `weft-gateway --cluster FILE`: targets and LUNs come from the cluster's
//! metadata, LUN data from the chunkservers through the volume client.
//! The gateway keeps no state of its own: kill it, start another with the
//! same file (or another TPGT), and initiators log back in to the same
//! LUN identities.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fabric::gossip::io::{IO_PUBLISH_INTERVAL_MS_DEFAULT, LUN_IO_KEYS_MAX};
use fabric::gossip::state::{keys, Key};
use fabric::gossip::{spawn_io_publisher, DriverConfig, Gossip, IoMeter, Seed};
use fabric::identity::Role;
use fabric::metadata::client::MetaClient;
use fabric::metadata::rpc::{ReadReply, ReadRequest, Summary, WatchReply};
use fabric::metadata::Change;
use fabric::rpc::{Client, NodeAddrs, Router, RpcConfig, Server};
use fabric::volume::{Volume, VolumeConfig};
use fabric::{NodeCredentials, NodeId, TlsConfig};
use iscsi_target::gateway::{Gateway, Target};
use iscsi_target::login::chap::{ChapConfig, ChapCredentials};
use iscsi_target::login::TargetAuth;
use iscsi_target::scsi::{LuConfig, ScsiTarget, ScsiTargetConfig};
use parking_lot::Mutex;
use serde::Deserialize;
use tracing::{info, warn};

use crate::device::{ClusterDevice, Meters};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    gateway: RawGateway,
    cluster: RawCluster,
    #[serde(default)]
    runtime: RawRuntime,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    #[serde(default)]
    worker_threads: usize,
}

/// Most runtime worker threads a config may ask for.
pub const WORKER_THREADS_MAX: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    #[serde(default = "default_portals")]
    portals: Vec<String>,
    #[serde(default = "default_tpgt")]
    tpgt: u16,
}

fn default_portals() -> Vec<String> {
    vec!["127.0.0.1:3260".into()]
}
fn default_tpgt() -> u16 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    /// This gateway's node id (its certificate's).
    node_id: String,
    /// ca.crt, node.crt, node.key (role gateway).
    cert_dir: PathBuf,
    /// Where this gateway listens on the fabric (gossip).
    #[serde(default = "default_fabric_listen")]
    fabric_listen: SocketAddr,
    /// Chunkservers to reach the metadata and gossip through.
    metadata: Vec<RawEndpoint>,
}

fn default_fabric_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    node: String,
    addr: SocketAddr,
}

/// A checked cluster-mode configuration.
pub struct ClusterConfig {
    pub portals: Vec<String>,
    pub tpgt: u16,
    pub node_id: NodeId,
    pub cert_dir: PathBuf,
    pub fabric_listen: SocketAddr,
    pub endpoints: Vec<(NodeId, SocketAddr)>,
    /// `[runtime] worker_threads`; 0: tokio's default (one per CPU, or
    /// `TOKIO_WORKER_THREADS`). 1 costs less CPU per I/O where several
    /// weft processes share a few cores: with 1 the gateway runs on
    /// tokio's current-thread runtime (docs/benchmarks.md).
    pub worker_threads: usize,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: Raw =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let node_id = NodeId::new(&raw.cluster.node_id).context("cluster.node_id")?;
        let mut endpoints = Vec::new();
        for e in &raw.cluster.metadata {
            endpoints.push((NodeId::new(&e.node).context("cluster.metadata")?, e.addr));
        }
        if endpoints.is_empty() {
            bail!("{}: cluster.metadata lists no chunkservers", path.display());
        }
        if raw.runtime.worker_threads > WORKER_THREADS_MAX {
            bail!(
                "{}: runtime.worker_threads: at most {WORKER_THREADS_MAX}",
                path.display()
            );
        }
        for p in &raw.gateway.portals {
            p.parse::<SocketAddr>()
                .with_context(|| format!("portal {p:?} is not ip:port"))?;
        }
        let cert_dir = if raw.cluster.cert_dir.is_absolute() {
            raw.cluster.cert_dir
        } else {
            base.join(raw.cluster.cert_dir)
        };
        Ok(ClusterConfig {
            portals: raw.gateway.portals,
            tpgt: raw.gateway.tpgt,
            node_id,
            cert_dir,
            fabric_listen: raw.cluster.fabric_listen,
            endpoints,
            worker_threads: raw.runtime.worker_threads,
        })
    }
}

/// What the gateway serves from the catalogue.
struct Served {
    ctx: Ctx,
    /// LUN id → its volume (one per LUN, shared by every mapping).
    volumes: HashMap<u64, Arc<Volume>>,
    targets: HashMap<String, ServedTarget>,
    io: Io,
}

/// I/O counters for `weft top`: the gateway's, and one per LUN served
/// (shared with the publisher, which reads the set every interval).
#[derive(Clone, Default)]
struct Io {
    gateway: Arc<IoMeter>,
    luns: Arc<Mutex<BTreeMap<u64, Arc<IoMeter>>>>,
}

impl Io {
    /// The records to publish: the gateway's under `io`, and those of the
    /// LUNs that saw I/O under `io/lun/<id>` — the first
    /// [`LUN_IO_KEYS_MAX`] by id (a gateway's keys are bounded; the
    /// gateway's own record still counts every LUN).
    fn sources(&self) -> Vec<(String, Arc<IoMeter>)> {
        let mut out = vec![(keys::IO.to_string(), self.gateway.clone())];
        let luns = self.luns.lock();
        out.extend(
            luns.iter()
                .filter(|(_, m)| !m.is_idle())
                .take(LUN_IO_KEYS_MAX)
                .map(|(id, m)| (Key::lun_io(*id).as_str().to_string(), m.clone())),
        );
        out
    }

    fn meters(&self, lun: u64) -> Meters {
        let lun = self.luns.lock().entry(lun).or_default().clone();
        Meters {
            lun,
            gateway: self.gateway.clone(),
        }
    }
}

/// Connects to the cluster and builds the gateway from its catalogue.
/// Returns the gateway and a task that follows catalogue changes.
pub async fn start(
    cfg: &ClusterConfig,
) -> Result<(Arc<Gateway>, Vec<tokio::task::JoinHandle<()>>)> {
    let creds = NodeCredentials::load(&cfg.cert_dir)
        .with_context(|| format!("loading certificates from {}", cfg.cert_dir.display()))?;
    let me = creds.identity().context("reading node.crt")?;
    if me.role != Role::Gateway || me.node_id != cfg.node_id {
        bail!(
            "the certificate in {} is for {me}, not gateway {}",
            cfg.cert_dir.display(),
            cfg.node_id
        );
    }
    let tls = TlsConfig::new(&creds).context("TLS configuration")?;
    let client = Client::new(&tls, RpcConfig::default());
    let seeds = cfg
        .endpoints
        .iter()
        .map(|(n, a)| Seed {
            node: n.clone(),
            addr: *a,
        })
        .collect();
    let gossip = Arc::new(
        Gossip::new(
            DriverConfig::new(cfg.node_id.clone(), seeds),
            Role::Gateway,
            env!("CARGO_PKG_VERSION"),
        )
        .context("gossip")?,
    );
    let mut router = Router::new();
    gossip.register(&mut router).context("gossip handler")?;
    let server = Server::bind(cfg.fabric_listen, &tls, router, RpcConfig::default())
        .await
        .with_context(|| format!("binding the fabric listener on {}", cfg.fabric_listen))?;
    gossip
        .start(
            client.clone(),
            NodeAddrs {
                fabric: server.local_addr(),
                public: cfg.portals.first().and_then(|p| p.parse().ok()),
            },
        )
        .context("starting gossip")?;
    let meta = Arc::new(MetaClient::new(client.clone(), cfg.endpoints.clone()));

    // The catalogue, once the metadata answers.
    let summary = loop {
        match meta.read(ReadRequest::Summary).await {
            Ok(ReadReply::Summary(s)) => break *s,
            Ok(_) => bail!("unexpected metadata reply"),
            Err(e) => warn!(%e, "waiting for the metadata"),
        }
    };
    let view = gossip.watch();
    // Chunkserver addresses come by gossip: wait for the ones the
    // catalogue names (briefly; later ones arrive as they come).
    let want: Vec<NodeId> = summary.nodes.iter().map(|n| n.id.clone()).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::time::Instant::now() < until
        && !want
            .iter()
            .all(|n| view.borrow().get(n).and_then(|s| s.addrs()).is_some())
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let gateway = Gateway::new(
        Vec::new(),
        cfg.portals.clone(),
        cfg.tpgt,
        ChapConfig::default(),
    );
    let mut served = Served {
        ctx: Ctx {
            meta: meta.clone(),
            client,
            view,
        },
        volumes: HashMap::new(),
        targets: HashMap::new(),
        io: Io::default(),
    };
    served.sync(&gateway, &summary);
    let io = served.io.clone();
    let publish_io = spawn_io_publisher(
        gossip.clone(),
        Duration::from_millis(IO_PUBLISH_INTERVAL_MS_DEFAULT),
        move || io.sources(),
    );
    if summary.targets.is_empty() {
        warn!(
            "the catalogue has no targets yet (weft target create …): they appear as they are made"
        );
    }
    let follow = tokio::spawn(follow(gateway.clone(), served, summary, server, gossip));
    Ok((gateway, vec![follow, publish_io]))
}

/// What a volume needs besides its LUN record.
struct Ctx {
    meta: Arc<MetaClient>,
    client: Client,
    view: tokio::sync::watch::Receiver<Arc<fabric::gossip::View>>,
}

/// A target as served: the catalogue record it was built from.
struct ServedTarget {
    record: fabric::metadata::Target,
}

impl Served {
    fn volume(&mut self, lun: &fabric::metadata::Lun) -> Option<Arc<Volume>> {
        if let Some(v) = self.volumes.get(&lun.id) {
            return Some(v.clone());
        }
        match Volume::new(
            lun.clone(),
            self.ctx.meta.clone(),
            self.ctx.client.clone(),
            self.ctx.view.clone(),
            VolumeConfig::default(),
        ) {
            Ok(v) => {
                let v = Arc::new(v);
                self.volumes.insert(lun.id, v.clone());
                Some(v)
            }
            Err(e) => {
                warn!(lun = %lun.name, %e, "LUN not served");
                None
            }
        }
    }

    fn lu(&mut self, n: u16, lun: &fabric::metadata::Lun) -> Option<LuConfig> {
        let vol = self.volume(lun)?;
        Some(LuConfig {
            lun: u64::from(n),
            device: Arc::new(ClusterDevice::new(vol, self.io.meters(lun.id))),
            serial: lun.serial.clone(),
            naa: lun.naa,
            vendor: "WEFT".into(),
            product: "weft-lun".into(),
            revision: "0001".into(),
        })
    }

    /// Makes the gateway serve what `summary` says: new targets and LUNs
    /// appear, removed ones go, ACL and CHAP changes apply to new logins,
    /// and a LUN that grew raises CAPACITY DATA HAS CHANGED.
    fn sync(&mut self, gateway: &Arc<Gateway>, summary: &Summary) {
        let luns: HashMap<u64, &fabric::metadata::Lun> =
            summary.luns.iter().map(|l| (l.id, l)).collect();
        for lun in &summary.luns {
            if let Some(vol) = self.volumes.get(&lun.id) {
                if vol.size_bytes() != lun.size_bytes {
                    info!(lun = %lun.name, old = vol.size_bytes(), new = lun.size_bytes, "LUN resized");
                    vol.update(lun.clone());
                    for t in &summary.targets {
                        for (n, id) in &t.luns {
                            if *id == lun.id {
                                if let Some(gt) = gateway.target(&t.iqn) {
                                    gt.scsi.capacity_changed(u64::from(*n));
                                }
                            }
                        }
                    }
                }
            }
        }
        for t in &summary.targets {
            let old = self.targets.get(&t.iqn).map(|s| s.record.clone());
            match (old, gateway.target(&t.iqn)) {
                (Some(old), Some(gt)) => {
                    for (n, id) in &t.luns {
                        if old.luns.get(n) != Some(id) {
                            if let Some(lu) = luns.get(id).and_then(|l| self.lu(*n, l)) {
                                info!(target = %t.iqn, lun = n, "LUN mapped");
                                gt.scsi.add_lu(lu);
                            }
                        }
                    }
                    for n in old.luns.keys() {
                        if !t.luns.contains_key(n) {
                            info!(target = %t.iqn, lun = n, "LUN unmapped");
                            gt.scsi.remove_lu(u64::from(*n));
                        }
                    }
                    if old.acl != t.acl || old.chap != t.chap {
                        info!(target = %t.iqn, "login settings changed (new logins)");
                        gateway.add_target(Target {
                            auth: auth(t),
                            scsi: gt.scsi.clone(),
                        });
                    }
                }
                _ => {
                    let mut lus = Vec::new();
                    for (n, id) in &t.luns {
                        if let Some(lu) = luns.get(id).and_then(|l| self.lu(*n, l)) {
                            lus.push(lu);
                        }
                    }
                    info!(target = %t.iqn, luns = lus.len(), "serving target");
                    gateway.add_target(Target {
                        auth: auth(t),
                        scsi: Arc::new(ScsiTarget::new(ScsiTargetConfig::standalone(
                            t.iqn.clone(),
                            lus,
                        ))),
                    });
                }
            }
            self.targets
                .insert(t.iqn.clone(), ServedTarget { record: t.clone() });
        }
        let gone: Vec<String> = self
            .targets
            .keys()
            .filter(|k| !summary.targets.iter().any(|t| t.iqn == **k))
            .cloned()
            .collect();
        for iqn in gone {
            info!(target = %iqn, "target removed");
            gateway.remove_target(&iqn);
            self.targets.remove(&iqn);
        }
        self.volumes.retain(|id, _| luns.contains_key(id));
        self.io.luns.lock().retain(|id, _| luns.contains_key(id));
    }
}

fn auth(t: &fabric::metadata::Target) -> TargetAuth {
    let chap = match &t.chap {
        Some(c) => ChapConfig {
            initiator: Some(ChapCredentials {
                user: c.user.clone(),
                secret: c.secret.clone(),
            }),
            target: c.mutual.as_ref().map(|(u, s)| ChapCredentials {
                user: u.clone(),
                secret: s.clone(),
            }),
        },
        None => ChapConfig::default(),
    };
    TargetAuth {
        name: t.iqn.clone(),
        alias: None,
        chap,
        allowed_initiators: t.acl.clone(),
    }
}

/// Follows the catalogue: every change to LUNs or targets is applied to
/// the running gateway. Keeps the fabric server and gossip alive for as
/// long as it runs.
async fn follow(
    gateway: Arc<Gateway>,
    mut served: Served,
    summary: Summary,
    _server: Server,
    _gossip: Arc<Gossip>,
) {
    let meta = served.ctx.meta.clone();
    let mut after = summary.revision;
    loop {
        let reply = meta
            .read(ReadRequest::Watch {
                after,
                wait_ms: 30_000,
            })
            .await;
        let (revision, changed) = match reply {
            Ok(ReadReply::Watch(WatchReply::Changes { revision, changes })) => (
                revision,
                changes
                    .iter()
                    .any(|(_, c)| matches!(c, Change::Lun(_) | Change::Target(_))),
            ),
            Ok(ReadReply::Watch(WatchReply::Resync { revision })) => (revision, true),
            Ok(_) => continue,
            Err(e) => {
                warn!(%e, "watching the metadata");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        after = revision;
        if !changed {
            continue;
        }
        match meta.read(ReadRequest::Summary).await {
            Ok(ReadReply::Summary(s)) => served.sync(&gateway, &s),
            Ok(_) => {}
            Err(e) => warn!(%e, "reading the catalogue"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/gateway-cluster.toml");
        let c = ClusterConfig::load(&path).unwrap();
        assert_eq!(c.endpoints.len(), 3);
        assert_eq!(c.tpgt, 1);
        assert_eq!(c.node_id.as_str(), "gw-1");
    }
}
