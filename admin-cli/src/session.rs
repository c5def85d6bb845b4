//! A command's connection to the cluster: the config found, the admin
//! certificate loaded, a metadata client over the fabric, and a small
//! runtime to drive it. Every call maps its failure to a [`CliError`] here.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fabric::gossip::{DriverConfig, Gossip, Seed, View};
use fabric::identity::NodeCredentials;
use fabric::identity::Role;
use fabric::metadata::client::MetaClient;
use fabric::metadata::rpc::{ClusterInfo, ReadReply, ReadRequest, Summary};
use fabric::metadata::{Command, Extent, Lun, Outcome};
use fabric::rpc::{Client, RpcConfig};
use fabric::{NodeId, TlsConfig};

use crate::config::{find_config, ClientConfig, TIMEOUT_MS_DEFAULT};
use crate::error::{CliError, CliResult};
use crate::GlobalArgs;

/// Connect timeout per replica: a replica that does not accept within
/// this is skipped for the next.
const CONNECT_TIMEOUT_MS_MAX: u64 = 3_000;
/// Reconnect back-off at most: a command lives for seconds, so a replica
/// that refused once is tried again soon.
const BACKOFF_MAX_MS: u64 = 1_000;

pub struct Session {
    rt: tokio::runtime::Runtime,
    client: MetaClient,
    config_path: PathBuf,
    /// For gossip (soft state the metadata does not hold).
    rpc: Client,
    node_id: NodeId,
    endpoints: Vec<(NodeId, SocketAddr)>,
}

/// How often to look at the gossiped view while waiting for it.
const VIEW_POLL_MS: u64 = 50;

/// What every connection to the cluster starts from: the config found and
/// checked, the admin certificate loaded, the endpoints resolved.
pub struct Prepared {
    pub config_path: PathBuf,
    pub config: ClientConfig,
    pub timeout: Duration,
    pub tls: TlsConfig,
    /// The certificate's node id (gossip speaks as this node).
    pub node_id: NodeId,
    pub endpoints: Vec<(NodeId, SocketAddr)>,
}

impl Prepared {
    /// Joins the fabric as this certificate's node (gossip observer and
    /// metadata client), for the commands that need the data path or the
    /// gossiped view.
    pub async fn fabric(&self) -> CliResult<crate::datapath::Fabric> {
        crate::datapath::Fabric::start(
            &self.tls,
            self.node_id.clone(),
            self.endpoints.clone(),
            self.rpc_config(),
            self.timeout,
        )
        .await
        .map_err(CliError::Failed)
    }

    pub fn open(global: &GlobalArgs) -> CliResult<Prepared> {
        let config_path = find_config(global.config.as_deref())?;
        let config = ClientConfig::load(&config_path)?;
        let timeout = global.timeout.unwrap_or(Duration::from_millis(
            config.timeout_ms.unwrap_or(TIMEOUT_MS_DEFAULT),
        ));
        let creds = NodeCredentials::load(&config.cert_dir).map_err(|e| {
            CliError::Unreachable(format!(
                "cannot load the admin certificate from {} (cert_dir in {}): {e}; issue one with weft cert issue --role admin --node-id NAME --out {}",
                config.cert_dir.display(),
                config_path.display(),
                config.cert_dir.display()
            ))
        })?;
        let unusable = |e: String| {
            CliError::Unreachable(format!(
                "the certificate in {} cannot be used: {e}",
                config.cert_dir.display()
            ))
        };
        let tls = TlsConfig::new(&creds).map_err(|e| unusable(e.to_string()))?;
        let node_id = creds
            .identity()
            .map_err(|e| unusable(e.to_string()))?
            .node_id;
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for e in &config.endpoints {
            endpoints.push((e.node.clone(), resolve(&e.addr, &config_path)?));
        }
        Ok(Prepared {
            config_path,
            config,
            timeout,
            tls,
            node_id,
            endpoints,
        })
    }

    /// RPC settings for a command: connect within the timeout (at most
    /// [`CONNECT_TIMEOUT_MS_MAX`] per replica), back off briefly.
    pub fn rpc_config(&self) -> RpcConfig {
        let timeout_ms = self.timeout.as_millis() as u64;
        RpcConfig {
            connect_timeout_ms: timeout_ms.clamp(1, CONNECT_TIMEOUT_MS_MAX),
            backoff_max_ms: BACKOFF_MAX_MS,
            ..RpcConfig::default()
        }
    }
}

impl Session {
    pub fn open(global: &GlobalArgs) -> CliResult<Session> {
        let p = Prepared::open(global)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start a runtime: {e}")))?;
        // The client spawns its connection tasks: build it on the runtime.
        let (rpc, client) = {
            let _guard = rt.enter();
            let rpc = Client::new(&p.tls, p.rpc_config());
            let client = MetaClient::new(rpc.clone(), p.endpoints.clone()).with_timeout(p.timeout);
            (rpc, client)
        };
        Ok(Session {
            rt,
            client,
            config_path: p.config_path,
            rpc,
            node_id: p.node_id,
            endpoints: p.endpoints,
        })
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The gossiped view, as soon as it holds every node of `nodes` with
    /// its capacity, or what it holds after `within`. The CLI gossips as
    /// an observer (nothing of it stays in the cluster's views); the first
    /// exchange with an endpoint brings the whole state, in tens of ms.
    pub fn gossip_view(&self, nodes: &[NodeId], within: Duration) -> Option<Arc<View>> {
        let seeds = self
            .endpoints
            .iter()
            .map(|(node, addr)| Seed {
                node: node.clone(),
                addr: *addr,
            })
            .collect();
        let gossip = Gossip::new(
            DriverConfig::observer(self.node_id.clone(), seeds),
            Role::Admin,
            env!("CARGO_PKG_VERSION"),
        )
        .ok()?;
        {
            let _guard = self.rt.enter();
            gossip.start_observing(self.rpc.clone());
        }
        self.rt.block_on(async {
            let until = tokio::time::Instant::now() + within;
            loop {
                let view = gossip.view();
                let complete = nodes
                    .iter()
                    .all(|n| view.get(n).is_some_and(|s| s.capacity().is_some()));
                if complete || tokio::time::Instant::now() >= until {
                    return Some(view);
                }
                tokio::time::sleep(Duration::from_millis(VIEW_POLL_MS)).await;
            }
        })
    }

    pub fn read(&self, req: ReadRequest) -> CliResult<ReadReply> {
        self.rt
            .block_on(self.client.read(req))
            .map_err(|e| CliError::from_client(e, &self.config_path))
    }

    /// Nodes, LUNs, targets, leases and extent counts.
    pub fn summary(&self) -> CliResult<Summary> {
        match self.read(ReadRequest::Summary)? {
            ReadReply::Summary(s) => Ok(*s),
            other => Err(unexpected("Summary", &other)),
        }
    }

    /// The Raft group as the answering replica sees it.
    pub fn cluster(&self) -> CliResult<ClusterInfo> {
        match self.read(ReadRequest::Cluster)? {
            ReadReply::Cluster(c) => Ok(c),
            other => Err(unexpected("Cluster", &other)),
        }
    }

    pub fn lun(&self, name: &str) -> CliResult<Lun> {
        match self.read(ReadRequest::Lun {
            name: name.to_string(),
        })? {
            ReadReply::Lun(l) => Ok(l),
            other => Err(unexpected("Lun", &other)),
        }
    }

    /// Every allocated extent of LUN `lun`, page by page.
    pub fn extents(&self, lun: u64) -> CliResult<Vec<Extent>> {
        let page = fabric::metadata::rpc::EXTENTS_PER_PAGE_MAX;
        let mut all = Vec::new();
        let mut from = 0;
        loop {
            let got = match self.read(ReadRequest::Extents {
                lun,
                from,
                max: page,
            })? {
                ReadReply::Extents(e) => e,
                other => return Err(unexpected("Extents", &other)),
            };
            let next = if got.len() >= page as usize {
                got.last().map(|e| e.index + 1)
            } else {
                None
            };
            all.extend(got);
            match next {
                Some(n) => from = n,
                None => return Ok(all),
            }
        }
    }

    /// An operator change.
    pub fn admin(&self, command: Command) -> CliResult<Outcome> {
        self.rt
            .block_on(self.client.admin(command))
            .map(|r| r.outcome)
            .map_err(|e| CliError::from_client(e, &self.config_path))
    }
}

fn resolve(addr: &str, config: &Path) -> CliResult<SocketAddr> {
    let bad = |why: String| {
        CliError::Unreachable(format!(
            "cannot resolve endpoint address {addr:?} (in {}): {why}",
            config.display()
        ))
    };
    addr.to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

fn unexpected(asked: &str, got: &ReadReply) -> CliError {
    let got = match got {
        ReadReply::Summary(_) => "Summary",
        ReadReply::Lun(_) => "Lun",
        ReadReply::Extent(_) => "Extent",
        ReadReply::Extents(_) => "Extents",
        ReadReply::Watch(_) => "Watch",
        ReadReply::Cluster(_) => "Cluster",
    };
    CliError::Failed(anyhow::anyhow!(
        "the cluster answered a {asked} read with {got}: is it running another version of weft?"
    ))
}

/// An outcome other than the one a command produces: a version mismatch.
pub fn unexpected_outcome(what: &str, got: &Outcome) -> CliError {
    CliError::Failed(anyhow::anyhow!(
        "the cluster answered {what} with {got:?}: is it running another version of weft?"
    ))
}
