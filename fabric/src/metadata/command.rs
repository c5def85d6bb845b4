//! Commands: the only way the catalogue changes. Each is one Raft log
//! entry; [`Catalogue::apply`](super::Catalogue::apply) gives its
//! [`Outcome`]. A command carries everything apply needs (times, the
//! placement the leader chose) so that every replica computes the same.

use serde::{Deserialize, Serialize};

use super::catalogue::{
    AdminState, ChapSecrets, ChunkState, Extent, Lease, Lun, NodeEntry, PrRecord, Target,
};
use crate::identity::NodeId;
use crate::placement::Policy;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A chunkserver joins the catalogue (idempotent).
    RegisterNode {
        node: NodeId,
        now_ms: u64,
    },
    SetNodeAdmin {
        node: NodeId,
        admin: AdminState,
    },
    CreateLun {
        name: String,
        size_bytes: u64,
        block_size: u32,
        policy: Policy,
        naa: [u8; 16],
        serial: String,
        now_ms: u64,
    },
    /// Grow only: shrinking a LUN under a file system destroys it.
    ResizeLun {
        name: String,
        size_bytes: u64,
    },
    /// Refused while the LUN is mapped; frees its extents.
    DeleteLun {
        name: String,
    },
    CreateTarget {
        iqn: String,
        now_ms: u64,
    },
    DeleteTarget {
        iqn: String,
    },
    MapLun {
        iqn: String,
        lun: u16,
        name: String,
    },
    UnmapLun {
        iqn: String,
        lun: u16,
    },
    AclAdd {
        iqn: String,
        initiator: String,
    },
    AclRemove {
        iqn: String,
        initiator: String,
    },
    SetChap {
        iqn: String,
        chap: Option<ChapSecrets>,
    },
    /// Place an extent on first write (idempotent: the first placement
    /// stays).
    AllocateExtent {
        lun: u64,
        index: u64,
        nodes: Vec<NodeId>,
    },
    /// Compare-and-set of an extent at `expected_epoch`; the epoch rises by
    /// one. Marking a chunk missing needs its holder's lease lapsed at
    /// `now_ms`.
    UpdateExtent {
        lun: u64,
        index: u64,
        expected_epoch: u64,
        nodes: Vec<NodeId>,
        primary: u8,
        chunks: Vec<ChunkState>,
        now_ms: u64,
    },
    RenewLease {
        node: NodeId,
        expires_ms: u64,
    },
    /// Compare-and-set of a LUN's persistent-reservation state.
    SetPr {
        lun: u64,
        expected_version: u64,
        bytes: Vec<u8>,
    },
    /// Moves chunk `slot` of an extent, whose holder stayed away, to
    /// another node: compare-and-set at `expected_epoch`, the epoch rises
    /// by one and the chunk is missing until the primary has rebuilt it
    /// there. The leader fills `node` from its view (placement), as it
    /// does for a new extent. A chunk still in service moves only once
    /// its holder's lease has lapsed at `now_ms`, and only if that leaves
    /// at most `m` chunks of the extent out.
    ReplaceChunk {
        lun: u64,
        index: u64,
        expected_epoch: u64,
        slot: u8,
        node: Option<NodeId>,
        now_ms: u64,
    },
}

impl Command {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::RegisterNode { .. } => "register node",
            Command::SetNodeAdmin { .. } => "set node admin state",
            Command::CreateLun { .. } => "create LUN",
            Command::ResizeLun { .. } => "resize LUN",
            Command::DeleteLun { .. } => "delete LUN",
            Command::CreateTarget { .. } => "create target",
            Command::DeleteTarget { .. } => "delete target",
            Command::MapLun { .. } => "map LUN",
            Command::UnmapLun { .. } => "unmap LUN",
            Command::AclAdd { .. } => "add to ACL",
            Command::AclRemove { .. } => "remove from ACL",
            Command::SetChap { .. } => "set CHAP",
            Command::AllocateExtent { .. } => "allocate extent",
            Command::UpdateExtent { .. } => "update extent",
            Command::RenewLease { .. } => "renew lease",
            Command::SetPr { .. } => "set PR state",
            Command::ReplaceChunk { .. } => "replace chunk",
        }
    }

    /// Commands only an operator (admin certificate) may send; the rest
    /// come from chunkservers and gateways in the course of their work.
    pub fn needs_admin(&self) -> bool {
        !matches!(
            self,
            Command::RegisterNode { .. }
                | Command::AllocateExtent { .. }
                | Command::UpdateExtent { .. }
                | Command::ReplaceChunk { .. }
                | Command::RenewLease { .. }
                | Command::SetPr { .. }
        )
    }
}

/// What an applied command produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    Node(NodeEntry),
    Lun(Lun),
    Target(Target),
    Extent(Extent),
    Lease(Lease),
    Pr(PrRecord),
    /// A LUN deleted: the extents whose chunks are to be freed.
    Deleted {
        freed: Vec<Extent>,
    },
}
