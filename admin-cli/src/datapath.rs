//! The CLI on the data path: a fabric client of its own (role admin) that
//! gossips, so that it learns the chunkservers' addresses, capacity and
//! I/O counters, and opens LUNs with the volume client. `weft lun
//! import|export` read and write LUN bytes through it; `weft status`,
//! `weft top` and `weft up`'s status line read its view.
//!
//! It gossips as an observer (`fabric::gossip::Config::observer`): it opens
//! every exchange itself and leaves itself out of what it sends, so peers
//! never add it to their views. A CLI that exits leaves nothing behind (a
//! member would stay in every view as a dead node for an hour), and it
//! needs no listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fabric::gossip::{DriverConfig, Gossip, Seed, View};
use fabric::identity::Role;
use fabric::metadata::client::MetaClient;
use fabric::metadata::Lun;
use fabric::rpc::{Client, RpcConfig};
use fabric::volume::{Volume, VolumeConfig, VolumeError};
use fabric::{NodeId, TlsConfig};
use tokio::sync::watch;

/// How often to look at the view while waiting for addresses.
const VIEW_POLL_MS: u64 = 100;

pub struct Fabric {
    pub rpc: Client,
    pub meta: Arc<MetaClient>,
    pub gossip: Arc<Gossip>,
}

impl Fabric {
    /// Joins the fabric as `me` (the certificate's node id), gossiping
    /// through `endpoints` and asking them for metadata. Must run inside
    /// a tokio runtime.
    pub async fn start(
        tls: &TlsConfig,
        me: NodeId,
        endpoints: Vec<(NodeId, SocketAddr)>,
        rpc: RpcConfig,
        timeout: Duration,
    ) -> Result<Fabric> {
        let client = Client::new(tls, rpc.clone());
        let seeds = endpoints
            .iter()
            .map(|(node, addr)| Seed {
                node: node.clone(),
                addr: *addr,
            })
            .collect();
        let gossip = Arc::new(
            Gossip::new(
                DriverConfig::observer(me, seeds),
                Role::Admin,
                env!("CARGO_PKG_VERSION"),
            )
            .context("gossip")?,
        );
        gossip.start_observing(client.clone());
        let meta = Arc::new(MetaClient::new(client.clone(), endpoints).with_timeout(timeout));
        Ok(Fabric {
            rpc: client,
            meta,
            gossip,
        })
    }

    pub fn view(&self) -> watch::Receiver<Arc<View>> {
        self.gossip.watch()
    }

    /// Waits until gossip gave the fabric address of every node in
    /// `nodes`, for `within` at most. Returns the nodes still unknown.
    pub async fn wait_for_addrs(&self, nodes: &[NodeId], within: Duration) -> Vec<NodeId> {
        let until = tokio::time::Instant::now() + within;
        loop {
            let missing: Vec<NodeId> = {
                let view = self.gossip.view();
                nodes
                    .iter()
                    .filter(|n| view.get(n).and_then(|s| s.addrs()).is_none())
                    .cloned()
                    .collect()
            };
            if missing.is_empty() || tokio::time::Instant::now() >= until {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(VIEW_POLL_MS)).await;
        }
    }

    /// The volume client of `lun`, allocating extents as an admin (the
    /// CLI's certificate), as `weft lun import` needs.
    pub fn volume(&self, lun: Lun) -> Result<Volume, VolumeError> {
        Volume::new(
            lun,
            self.meta.clone(),
            self.rpc.clone(),
            self.gossip.watch(),
            VolumeConfig {
                allocate_as_admin: true,
                ..VolumeConfig::default()
            },
        )
    }
}
