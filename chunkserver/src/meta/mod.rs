//! The metadata replica: the catalogue replicated by Raft (openraft) on
//! the chunkservers named as voters, its log and state in LMDB, and the
//! metadata API every chunkserver answers (a voter that does not lead
//! forwards to the leader; a chunkserver that is not a voter forwards to
//! the voters).
//!
//! - [`types`]: the Raft type configuration and Raft ids.
//! - [`lmdb`], [`log_store`], [`state_machine`]: durable storage.
//! - [`network`], [`raft_rpc`]: Raft over the fabric.
//! - [`prepare`]: what the leader fills in before proposing (time,
//!   placement, identifiers, checks against the gossiped view).
//! - [`agent`]: this node's registration and lease.
//!
//! See `docs/metadata.md`.

// openraft's storage traits return its `StorageError` (224 bytes); our
// storage helpers return the same type instead of converting at every
// call. Errors there are rare (a failing disk), so the size costs nothing.
#![allow(clippy::result_large_err)]

pub mod agent;
pub mod lmdb;
pub mod log_store;
pub mod network;
pub mod prepare;
pub mod raft_rpc;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric::gossip::View;
use fabric::identity::Role;
use fabric::metadata::rpc::{
    AdminRequest, ClusterInfo, MetaError, MetaNode, MetaRead, MetaWrite, ReadReply, ReadRequest,
    Summary, WatchReply, WriteReply, WriteRequest, EXTENTS_PER_PAGE_MAX, WATCH_WAIT_MS_MAX,
};
use fabric::metadata::{Catalogue, Command};
use fabric::rpc::Client;
use fabric::{NodeId, PeerIdentity, Router};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use self::network::{Network, Peers};
use self::raft_rpc::{MetaRaft, Origin, RaftReply, RaftRequest};
use self::state_machine::Shared;
use self::types::{raft_id, Member, Raft, RaftNodeId};

/// Forwards one request may take (non-voter → voter → leader).
const FORWARD_HOPS_MAX: u8 = 2;
/// Deadline of one forwarded call.
const FORWARD_TIMEOUT_MS: u64 = 10_000;

/// How this node takes part in the metadata.
#[derive(Clone, Debug)]
pub struct MetaConfig {
    pub me: NodeId,
    /// The replicas, in config order; the first initializes a new cluster.
    pub voters: Vec<(NodeId, SocketAddr)>,
    pub dir: PathBuf,
    pub lease_ms: u64,
    pub election_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaStartError {
    #[error("metadata storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("voters {0} and {1} have the same Raft id: rename one")]
    IdCollision(NodeId, NodeId),
    #[error("registering metadata handlers: {0}")]
    Router(String),
}

/// The metadata side of a chunkserver.
pub struct Meta {
    me: NodeId,
    raft: Option<Raft>,
    shared: Option<Shared>,
    client: Client,
    peers: Peers,
    voters: Vec<(NodeId, SocketAddr)>,
    view: Option<watch::Receiver<Arc<View>>>,
    lease_ms: u64,
}

impl Meta {
    /// Opens the replica (if this node is a voter) and returns the service;
    /// call [`Meta::register`] before the fabric server starts and
    /// [`Meta::bootstrap`] after.
    pub async fn start(
        cfg: MetaConfig,
        client: Client,
        view: Option<watch::Receiver<Arc<View>>>,
    ) -> Result<Arc<Meta>, MetaStartError> {
        let mut peers = HashMap::new();
        for (n, a) in &cfg.voters {
            if let Some((other, _)) = peers.insert(raft_id(n.as_str()), (n.clone(), *a)) {
                return Err(MetaStartError::IdCollision(other, n.clone()));
            }
        }
        let peers: Peers = Arc::new(peers);
        let is_voter = cfg.voters.iter().any(|(n, _)| *n == cfg.me);
        let (raft, shared) = if is_voter {
            let store =
                lmdb::Store::open(&cfg.dir).map_err(|e| MetaStartError::Storage(e.to_string()))?;
            let log = log_store::LogStore::new(store.clone());
            let (sm, shared) = state_machine::StateMachine::open(store)
                .map_err(|e| MetaStartError::Storage(e.to_string()))?;
            let et = cfg.election_timeout_ms;
            let config = openraft::Config {
                cluster_name: "weft".into(),
                heartbeat_interval: (et / 4).max(50),
                election_timeout_min: et,
                election_timeout_max: et * 2,
                snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5_000),
                max_in_snapshot_log_to_keep: 1_000,
                ..Default::default()
            }
            .validate()
            .map_err(|e| MetaStartError::Raft(e.to_string()))?;
            let network = Network {
                client: client.clone(),
                peers: peers.clone(),
            };
            let raft = Raft::new(raft_id(cfg.me.as_str()), Arc::new(config), network, log, sm)
                .await
                .map_err(|e| MetaStartError::Raft(e.to_string()))?;
            (Some(raft), Some(shared))
        } else {
            (None, None)
        };
        Ok(Arc::new(Meta {
            me: cfg.me,
            raft,
            shared,
            client,
            peers,
            voters: cfg.voters,
            view,
            lease_ms: cfg.lease_ms,
        }))
    }

    /// On the first voter of a cluster that has never started: make the
    /// configured voters the first membership. Everywhere else a no-op
    /// (a restarted cluster keeps its membership from the log).
    pub async fn bootstrap(&self) -> Result<(), MetaStartError> {
        let Some(raft) = &self.raft else {
            return Ok(());
        };
        if self.voters.first().map(|(n, _)| n) != Some(&self.me) {
            return Ok(());
        }
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| MetaStartError::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: std::collections::BTreeMap<RaftNodeId, Member> = self
            .voters
            .iter()
            .map(|(n, a)| {
                (
                    raft_id(n.as_str()),
                    Member {
                        node: n.to_string(),
                        addr: a.to_string(),
                    },
                )
            })
            .collect();
        info!(
            voters = members.len(),
            "initializing a new metadata cluster"
        );
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            // Another start got there first (a log already exists).
            Err(RaftError::APIError(e)) => {
                info!(%e, "metadata already initialized");
                Ok(())
            }
            Err(e) => Err(MetaStartError::Raft(e.to_string())),
        }
    }

    pub fn is_voter(&self) -> bool {
        self.raft.is_some()
    }

    /// The Raft handle (voters only), for tests and status.
    pub fn raft(&self) -> Option<&Raft> {
        self.raft.as_ref()
    }

    pub fn lease_ms(&self) -> u64 {
        self.lease_ms
    }

    /// Stops Raft (voters), before the process exits.
    pub async fn shutdown(&self) {
        if let Some(r) = &self.raft {
            let _ = r.shutdown().await;
        }
    }

    /// Registers the metadata kinds on the fabric router.
    pub fn register(self: &Arc<Self>, router: &mut Router) -> Result<(), MetaStartError> {
        let rerr = |e: fabric::rpc::RouterError| MetaStartError::Router(e.to_string());
        let m = self.clone();
        router
            .register::<MetaRead, _, _>(move |_peer, req, _| {
                let m = m.clone();
                async move { Ok((m.read(req, 0).await, Bytes::new())) }
            })
            .map_err(rerr)?;
        let m = self.clone();
        router
            .register::<MetaWrite, _, _>(move |_peer, req: AdminRequest, _| {
                let m = m.clone();
                // The kind table admits only admins here.
                async move { Ok((m.admin(req, 0).await, Bytes::new())) }
            })
            .map_err(rerr)?;
        let m = self.clone();
        router
            .register::<MetaNode, _, _>(move |peer, req: WriteRequest, _| {
                let m = m.clone();
                async move {
                    let r = match check_node_command(&peer, &req.command) {
                        Ok(()) => m.write(Origin::Node, req.command, 0).await,
                        Err(e) => Err(e),
                    };
                    Ok((r, Bytes::new()))
                }
            })
            .map_err(rerr)?;
        let m = self.clone();
        router
            .register::<MetaRaft, _, _>(move |_peer, req, _| {
                let m = m.clone();
                async move { Ok((m.raft_request(req).await, Bytes::new())) }
            })
            .map_err(rerr)?;
        Ok(())
    }

    async fn raft_request(&self, req: RaftRequest) -> Result<RaftReply, String> {
        match req {
            RaftRequest::Write {
                origin,
                write,
                hops,
            } => Ok(RaftReply::Write(
                self.write(origin, write.command, hops).await,
            )),
            RaftRequest::Read(r, hops) => Ok(RaftReply::Read(self.read(r, hops).await)),
            RaftRequest::Membership { req, hops } => {
                Ok(RaftReply::Write(self.admin(req, hops).await))
            }
            other => {
                let raft = self.raft.as_ref().ok_or("not a metadata replica")?;
                match other {
                    RaftRequest::Append(r) => raft
                        .append_entries(r)
                        .await
                        .map(RaftReply::Append)
                        .map_err(|e| e.to_string()),
                    RaftRequest::Vote(r) => raft
                        .vote(r)
                        .await
                        .map(RaftReply::Vote)
                        .map_err(|e| e.to_string()),
                    RaftRequest::Snapshot(r) => raft
                        .install_snapshot(r)
                        .await
                        .map(RaftReply::Snapshot)
                        .map_err(|e| e.to_string()),
                    _ => Err("unexpected request".into()),
                }
            }
        }
    }

    /// The leader as this replica knows it, if it is not this one.
    async fn leader(&self) -> Leader {
        let Some(raft) = &self.raft else {
            return Leader::Unknown;
        };
        match raft.current_leader().await {
            Some(id) if id == raft_id(self.me.as_str()) => Leader::Me,
            Some(id) => match self.peers.get(&id) {
                Some(p) => Leader::Other(p.clone()),
                None => {
                    // A voter added later than this node's config.
                    let m = raft.metrics().borrow().membership_config.clone();
                    match m
                        .membership()
                        .get_node(&id)
                        .and_then(|n| Some((NodeId::new(&n.node).ok()?, n.addr.parse().ok()?)))
                    {
                        Some(p) => Leader::Other(p),
                        None => Leader::Unknown,
                    }
                }
            },
            None => Leader::Unknown,
        }
    }

    /// Where to forward: the leader, or (a non-voter, or a voter that
    /// knows no leader yet) every voter in turn.
    async fn forward_targets(&self) -> Result<Vec<(NodeId, SocketAddr)>, MetaError> {
        match self.leader().await {
            Leader::Me => Ok(Vec::new()),
            Leader::Other(p) => Ok(vec![p]),
            // A non-voter, a voter not yet in the group, or one between
            // leaders: any voter that knows better will forward once more.
            // Voters gossip holds alive first: one that is stopped (not
            // dead: it accepts connections) costs a whole forward timeout,
            // which would outlast a lease renewal.
            Leader::Unknown => {
                let mut voters = self.voters.clone();
                if let Some(view) = &self.view {
                    let view = view.borrow();
                    voters.sort_by_key(|(node, _)| {
                        view.availability(node) != Some(fabric::gossip::Availability::Alive)
                    });
                }
                Ok(voters)
            }
        }
    }

    async fn forward(
        &self,
        req: impl Fn() -> RaftRequest,
        hops: u8,
    ) -> Result<RaftReply, MetaError> {
        if hops >= FORWARD_HOPS_MAX {
            return Err(MetaError::Unavailable(
                "the metadata leader moved; retry".into(),
            ));
        }
        let targets = self.forward_targets().await?;
        let mut last = String::from("no voters configured");
        for (node, addr) in targets {
            if node == self.me {
                continue;
            }
            let deadline = Instant::now() + Duration::from_millis(FORWARD_TIMEOUT_MS);
            match self
                .client
                .call::<MetaRaft>(addr, &node, &req(), Bytes::new(), deadline)
                .await
            {
                Ok((Ok(reply), _)) => return Ok(reply),
                Ok((Err(e), _)) => last = format!("{node}: {e}"),
                Err(e) => last = format!("{node}: {e}"),
            }
        }
        Err(MetaError::Unavailable(format!(
            "could not reach the metadata leader: {last}"
        )))
    }

    /// An operator's request: a catalogue change or a change of voters.
    pub async fn admin(&self, req: AdminRequest, hops: u8) -> Result<WriteReply, MetaError> {
        let (node, add) = match req {
            AdminRequest::Command(c) => return self.write(Origin::Admin, c, hops).await,
            AdminRequest::AddVoter { ref node, addr } => (node.clone(), Some(addr)),
            AdminRequest::RemoveVoter { ref node } => (node.clone(), None),
        };
        let (Some(raft), Leader::Me) = (&self.raft, self.leader().await) else {
            let r = req.clone();
            return match self
                .forward(
                    || RaftRequest::Membership {
                        req: r.clone(),
                        hops: hops + 1,
                    },
                    hops,
                )
                .await?
            {
                RaftReply::Write(r) => r,
                _ => Err(MetaError::Unavailable("unexpected reply".into())),
            };
        };
        let id = raft_id(node.as_str());
        let unavailable = |e: RaftError<RaftNodeId, ClientWriteError<RaftNodeId, Member>>| {
            MetaError::Unavailable(format!("changing the voters: {e}"))
        };
        let resp = match add {
            Some(addr) => {
                let member = Member {
                    node: node.to_string(),
                    addr: addr.to_string(),
                };
                // Blocks until the learner has caught up, so the new voter
                // never slows commits down while it copies the log.
                raft.add_learner(id, member, true)
                    .await
                    .map_err(unavailable)?;
                raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map_err(unavailable)?
            }
            None => {
                let voters: BTreeSet<RaftNodeId> = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect();
                if !voters.contains(&id) {
                    return Err(MetaError::Invalid(format!("{node} is not a voter")));
                }
                if voters.len() <= 1 {
                    return Err(MetaError::Invalid("cannot remove the last voter".into()));
                }
                raft.change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    .await
                    .map_err(unavailable)?
            }
        };
        info!(%node, added = add.is_some(), "metadata voters changed");
        Ok(WriteReply {
            outcome: fabric::metadata::Outcome::Done,
            revision: resp.log_id.index,
        })
    }

    /// Proposes a change (on the leader) or forwards it there.
    pub async fn write(
        &self,
        origin: Origin,
        cmd: Command,
        hops: u8,
    ) -> Result<WriteReply, MetaError> {
        if origin == Origin::Node && cmd.needs_admin() {
            return Err(MetaError::Forbidden(format!(
                "{} needs an admin certificate",
                cmd.name()
            )));
        }
        if let (Some(raft), Some(shared), Leader::Me) =
            (&self.raft, &self.shared, self.leader().await)
        {
            let view = self.view.as_ref().map(|v| v.borrow().clone());
            let prepared = {
                let cat = shared.catalogue.read();
                prepare::prepare(cmd, &cat, view.as_deref(), self.lease_ms, prepare::now_ms())?
            };
            let cmd = match prepared {
                prepare::Prepared::Answer(outcome) => {
                    let revision = shared.catalogue.read().revision;
                    return Ok(WriteReply { outcome, revision });
                }
                prepare::Prepared::Propose(cmd) => cmd,
            };
            return match raft.client_write(cmd.clone()).await {
                Ok(resp) => {
                    let outcome = resp.data.map_err(MetaError::Catalogue)?;
                    if let fabric::metadata::Outcome::Deleted { freed } = &outcome {
                        prepare::free_chunks(self.client.clone(), view, freed.clone());
                    }
                    Ok(WriteReply {
                        outcome,
                        revision: resp.log_id.index,
                    })
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    self.forward_write(origin, cmd, hops).await
                }
                Err(e) => Err(MetaError::Unavailable(e.to_string())),
            };
        }
        self.forward_write(origin, cmd, hops).await
    }

    async fn forward_write(
        &self,
        origin: Origin,
        cmd: Command,
        hops: u8,
    ) -> Result<WriteReply, MetaError> {
        let req = || RaftRequest::Write {
            origin,
            write: WriteRequest {
                command: cmd.clone(),
            },
            hops: hops + 1,
        };
        match self.forward(req, hops).await? {
            RaftReply::Write(r) => r,
            _ => Err(MetaError::Unavailable(
                "unexpected reply from the leader".into(),
            )),
        }
    }

    /// Serves a read: linearizable on the leader; watches locally.
    pub async fn read(&self, req: ReadRequest, hops: u8) -> Result<ReadReply, MetaError> {
        let (Some(raft), Some(shared)) = (&self.raft, &self.shared) else {
            return match self
                .forward(|| RaftRequest::Read(req.clone(), hops + 1), hops)
                .await?
            {
                RaftReply::Read(r) => r,
                _ => Err(MetaError::Unavailable("unexpected reply".into())),
            };
        };
        if let ReadRequest::Watch { after, wait_ms } = req {
            return Ok(ReadReply::Watch(watch(shared, after, wait_ms).await));
        }
        if let ReadRequest::Cluster = req {
            return Ok(ReadReply::Cluster(self.cluster_info(raft)));
        }
        match self.leader().await {
            Leader::Me => {}
            _ => {
                return match self
                    .forward(|| RaftRequest::Read(req.clone(), hops + 1), hops)
                    .await?
                {
                    RaftReply::Read(r) => r,
                    _ => Err(MetaError::Unavailable("unexpected reply".into())),
                };
            }
        }
        if let Err(e) = raft.ensure_linearizable().await {
            return Err(MetaError::Unavailable(format!(
                "cannot confirm leadership: {e}"
            )));
        }
        let cat = shared.catalogue.read();
        answer(&cat, req)
    }

    fn cluster_info(&self, raft: &Raft) -> ClusterInfo {
        let m = raft.metrics().borrow().clone();
        let name = |id: &RaftNodeId| {
            m.membership_config
                .membership()
                .get_node(id)
                .and_then(|n| NodeId::new(&n.node).ok())
        };
        let voters: BTreeSet<RaftNodeId> = m.membership_config.membership().voter_ids().collect();
        ClusterInfo {
            leader: m.current_leader.as_ref().and_then(name),
            term: m.current_term,
            voters: voters.iter().filter_map(name).collect(),
            learners: m
                .membership_config
                .membership()
                .learner_ids()
                .filter_map(|id| name(&id))
                .collect(),
            last_applied: m.last_applied.map_or(0, |l| l.index),
        }
    }
}

enum Leader {
    Me,
    Other((NodeId, SocketAddr)),
    Unknown,
}

/// What a node (not an admin) may change: its own registration and lease,
/// extents (chunkservers), extent allocation and PR state (gateways too).
fn check_node_command(peer: &PeerIdentity, cmd: &Command) -> Result<(), MetaError> {
    let forbid = |why: String| Err(MetaError::Forbidden(why));
    match cmd {
        Command::RegisterNode { node, .. } | Command::RenewLease { node, .. } => {
            if peer.role != Role::Chunkserver || *node != peer.node_id {
                return forbid(format!(
                    "{} may register and renew only itself",
                    peer.node_id
                ));
            }
            Ok(())
        }
        Command::UpdateExtent { .. } if peer.role != Role::Chunkserver => {
            forbid("only chunkservers change extents".into())
        }
        c if c.needs_admin() => forbid(format!("{} needs an admin certificate", c.name())),
        _ => Ok(()),
    }
}

async fn watch(shared: &Shared, after: u64, wait_ms: u32) -> WatchReply {
    let mut rx = shared.revision.subscribe();
    let wait = Duration::from_millis(u64::from(wait_ms.min(WATCH_WAIT_MS_MAX)));
    let _ = tokio::time::timeout(wait, rx.wait_for(|r| *r > after)).await;
    let cat = shared.catalogue.read();
    match cat.changes_since(after) {
        Some(changes) => WatchReply::Changes {
            revision: cat.revision,
            changes,
        },
        None => WatchReply::Resync {
            revision: cat.revision,
        },
    }
}

fn answer(cat: &Catalogue, req: ReadRequest) -> Result<ReadReply, MetaError> {
    Ok(match req {
        ReadRequest::Summary => ReadReply::Summary(Box::new(Summary::of(cat))),
        ReadRequest::Lun { name } => ReadReply::Lun(
            cat.lun_by_name(&name)
                .cloned()
                .ok_or(fabric::metadata::CatalogueError::NoSuchLun(name))?,
        ),
        ReadRequest::Extent { lun, index } => {
            ReadReply::Extent(cat.extents.get(&(lun, index)).cloned())
        }
        ReadRequest::Extents { lun, from, max } => ReadReply::Extents(
            cat.extents
                .range((lun, from)..=(lun, u64::MAX))
                .take(max.min(EXTENTS_PER_PAGE_MAX) as usize)
                .map(|(_, e)| e.clone())
                .collect(),
        ),
        ReadRequest::Watch { .. } | ReadRequest::Cluster => {
            return Err(MetaError::Invalid("served elsewhere".into()))
        }
    })
}

#[cfg(test)]
mod tests;
