//! Messages between metadata replicas (kind `METADATA_RAFT`, chunkservers
//! only): Raft's own RPCs, and requests forwarded to the leader.

use fabric::metadata::rpc::{
    AdminRequest, MetaError, ReadReply, ReadRequest, WriteReply, WriteRequest,
};
use fabric::wire::{Kind, Rpc};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use super::types::{RaftNodeId, TypeConfig};

pub struct MetaRaft;
impl Rpc for MetaRaft {
    const KIND: Kind = Kind::METADATA_RAFT;
    type Request = RaftRequest;
    type Response = Result<RaftReply, String>;
}

/// Who originally sent a forwarded change (the replica that forwards has
/// checked the sender's certificate).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    Admin,
    Node,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<RaftNodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// A change for the leader to propose.
    /// `hops`: forwards so far (bounded, so a stale leader hint cannot
    /// bounce a request for ever).
    Write {
        origin: Origin,
        write: WriteRequest,
        hops: u8,
    },
    /// A change of the replicas for the leader to make.
    Membership {
        req: AdminRequest,
        hops: u8,
    },
    /// A read for the leader to serve linearizably, with its hops.
    Read(ReadRequest, u8),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(AppendEntriesResponse<RaftNodeId>),
    Vote(VoteResponse<RaftNodeId>),
    Snapshot(InstallSnapshotResponse<RaftNodeId>),
    Write(Result<WriteReply, MetaError>),
    Read(Result<ReadReply, MetaError>),
}
