//! Raft's network over the fabric: each RPC is one `METADATA_RAFT` call
//! over mutual TLS to the peer's fabric address.
//!
//! A peer's address comes from this replica's own config first, then from
//! the membership record: a replica can reach its peers through whatever
//! path its config names (the partition tests put a proxy there).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric::rpc::{Client, RpcError};
use fabric::NodeId;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use tokio::time::Instant;

use super::raft_rpc::{MetaRaft, RaftReply, RaftRequest};
use super::types::{Member, RaftNodeId, TypeConfig};

/// Where each replica is, by Raft id, as this replica's config says.
pub type Peers = Arc<HashMap<RaftNodeId, (NodeId, SocketAddr)>>;

#[derive(Clone)]
pub struct Network {
    pub client: Client,
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: RaftNodeId, node: &Member) -> Conn {
        let dest = self
            .peers
            .get(&target)
            .cloned()
            .or_else(|| Some((NodeId::new(&node.node).ok()?, node.addr.parse().ok()?)));
        Conn {
            client: self.client.clone(),
            dest,
        }
    }
}

pub struct Conn {
    client: Client,
    dest: Option<(NodeId, SocketAddr)>,
}

type Err<E = openraft::error::Infallible> = RPCError<RaftNodeId, Member, RaftError<RaftNodeId, E>>;

impl Conn {
    async fn call<E: std::error::Error>(
        &self,
        req: RaftRequest,
        ttl: Duration,
    ) -> Result<RaftReply, Err<E>> {
        let Some((node, addr)) = &self.dest else {
            return Err(RPCError::Unreachable(Unreachable::new(&AnyError::error(
                "no address for this replica",
            ))));
        };
        let deadline = Instant::now() + ttl;
        match self
            .client
            .call::<MetaRaft>(*addr, node, &req, Bytes::new(), deadline)
            .await
        {
            Ok((Ok(r), _)) => Ok(r),
            Ok((Err(e), _)) => Err(RPCError::Network(NetworkError::new(&AnyError::error(e)))),
            Err(
                e @ (RpcError::Connect { .. }
                | RpcError::Unreachable { .. }
                | RpcError::ConnectionClosed(_)
                | RpcError::DeadlineExceeded),
            ) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

fn unexpected<E: std::error::Error>() -> Err<E> {
    RPCError::Network(NetworkError::new(&AnyError::error("unexpected reply kind")))
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftNodeId>, Err> {
        match self
            .call(RaftRequest::Append(rpc), option.hard_ttl())
            .await?
        {
            RaftReply::Append(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<RaftNodeId>, Err<InstallSnapshotError>> {
        match self
            .call(RaftRequest::Snapshot(rpc), option.hard_ttl())
            .await?
        {
            RaftReply::Snapshot(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftNodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftNodeId>, Err> {
        match self.call(RaftRequest::Vote(rpc), option.hard_ttl()).await? {
            RaftReply::Vote(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }
}
