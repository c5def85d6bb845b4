//! `weft-gateway --cluster FILE`: targets and LUNs come from the cluster's
//! metadata, LUN data from the chunkservers through the volume client.
//! The gateway keeps no state of its own: kill it, start another with the
//! same file (or another TPGT), and initiators log back in to the same
//! LUN identities.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fabric::gossip::{DriverConfig, Gossip, Seed};
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
use serde::Deserialize;
use tracing::{info, warn};

use crate::device::ClusterDevice;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    gateway: RawGateway,
    cluster: RawCluster,
}

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
        })
    }
}

/// What the gateway serves from the catalogue.
struct Served {
    /// LUN id → its volume.
    volumes: HashMap<u64, Arc<Volume>>,
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

    let mut served = Served {
        volumes: HashMap::new(),
    };
    let mut targets = Vec::new();
    for t in &summary.targets {
        let mut lus = Vec::new();
        for (n, id) in &t.luns {
            let Some(lun) = summary.luns.iter().find(|l| l.id == *id) else {
                continue;
            };
            let vol = Arc::new(
                Volume::new(
                    lun.clone(),
                    meta.clone(),
                    client.clone(),
                    view.clone(),
                    VolumeConfig::default(),
                )
                .with_context(|| format!("LUN {}", lun.name))?,
            );
            served.volumes.insert(lun.id, vol.clone());
            lus.push(LuConfig {
                lun: u64::from(*n),
                device: Arc::new(ClusterDevice::new(vol)),
                serial: lun.serial.clone(),
                naa: lun.naa,
                vendor: "WEFT".into(),
                product: "weft-lun".into(),
                revision: "0001".into(),
            });
        }
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
        targets.push(Target {
            auth: TargetAuth {
                name: t.iqn.clone(),
                alias: None,
                chap,
                allowed_initiators: t.acl.clone(),
            },
            scsi: Arc::new(ScsiTarget::new(ScsiTargetConfig::standalone(
                t.iqn.clone(),
                lus,
            ))),
        });
    }
    if targets.is_empty() {
        warn!("the catalogue has no targets yet (weft target create …); serving none");
    }
    let gateway = Gateway::new(
        targets,
        cfg.portals.clone(),
        cfg.tpgt,
        ChapConfig::default(),
    );
    let follow = tokio::spawn(follow(
        meta.clone(),
        gateway.clone(),
        served,
        summary,
        server,
        gossip,
    ));
    Ok((gateway, vec![follow]))
}

/// Follows the catalogue: a LUN that grows raises CAPACITY DATA HAS
/// CHANGED on every target mapping it. Keeps the fabric server and gossip
/// alive for as long as it runs.
async fn follow(
    meta: Arc<MetaClient>,
    gateway: Arc<Gateway>,
    served: Served,
    mut summary: Summary,
    _server: Server,
    _gossip: Arc<Gossip>,
) {
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
        let fresh = match meta.read(ReadRequest::Summary).await {
            Ok(ReadReply::Summary(s)) => *s,
            _ => continue,
        };
        for lun in &fresh.luns {
            let Some(vol) = served.volumes.get(&lun.id) else {
                continue;
            };
            let old = vol.size_bytes();
            if lun.size_bytes != old {
                info!(lun = %lun.name, old, new = lun.size_bytes, "LUN resized");
                vol.update(lun.clone());
                for t in gateway.targets() {
                    if let Some(ct) = fresh.targets.iter().find(|x| x.iqn == t.auth.name) {
                        for (n, id) in &ct.luns {
                            if *id == lun.id {
                                t.scsi.capacity_changed(u64::from(*n));
                            }
                        }
                    }
                }
            }
        }
        let new_targets = fresh.targets.len() != summary.targets.len()
            || fresh
                .targets
                .iter()
                .zip(&summary.targets)
                .any(|(a, b)| a.iqn != b.iqn || a.luns != b.luns);
        if new_targets {
            warn!("targets or LUN maps changed: restart this gateway to serve them");
        }
        summary = fresh;
    }
}
