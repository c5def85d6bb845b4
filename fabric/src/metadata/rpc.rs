//! The metadata API on the wire: reads (anyone), operator changes
//! (admins), node changes (chunkservers and gateways in the course of
//! their work). Every chunkserver answers; one that is not the Raft
//! leader forwards to it, so callers need only reach any chunkserver.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::catalogue::{Catalogue, Change, Extent, Lun, NodeEntry, PrRecord, Target};
use super::command::{Command, Outcome};
use super::error::CatalogueError;
use crate::identity::NodeId;
use crate::wire::{Kind, Rpc};

/// Extents returned by one [`ReadRequest::Extents`] page at most.
pub const EXTENTS_PER_PAGE_MAX: u32 = 10_000;
/// Longest a watch waits for a change before answering "nothing new".
pub const WATCH_WAIT_MS_MAX: u32 = 60_000;

/// Reads. Linearizable: served by the leader after it confirms it still
/// leads, so a read sees every change acknowledged before it was sent.
pub struct MetaRead;
impl Rpc for MetaRead {
    const KIND: Kind = Kind::METADATA_READ;
    type Request = ReadRequest;
    type Response = Result<ReadReply, MetaError>;
}

/// Operator changes (admin certificates only).
pub struct MetaWrite;
impl Rpc for MetaWrite {
    const KIND: Kind = Kind::METADATA_WRITE;
    type Request = AdminRequest;
    type Response = Result<WriteReply, MetaError>;
}

/// Changes nodes make as they work: register, leases, extents, PR state.
pub struct MetaNode;
impl Rpc for MetaNode {
    const KIND: Kind = Kind::METADATA_NODE;
    type Request = WriteRequest;
    type Response = Result<WriteReply, MetaError>;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReadRequest {
    /// Nodes, LUNs, targets, leases and PR state; no extents (those are
    /// paged), with extent counts.
    Summary,
    Lun {
        name: String,
    },
    Extent {
        lun: u64,
        index: u64,
    },
    /// Extents of `lun` from index `from`, at most `max`.
    Extents {
        lun: u64,
        from: u64,
        max: u32,
    },
    /// Answers once the catalogue passes `after` (or `wait_ms` passes)
    /// with what changed since.
    Watch {
        after: u64,
        wait_ms: u32,
    },
    /// The Raft group as the answering node sees it.
    Cluster,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReadReply {
    Summary(Box<Summary>),
    Lun(Lun),
    Extent(Option<Extent>),
    Extents(Vec<Extent>),
    Watch(WatchReply),
    Cluster(ClusterInfo),
}

/// The catalogue without its extents.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub revision: u64,
    pub nodes: Vec<NodeEntry>,
    pub luns: Vec<Lun>,
    pub targets: Vec<Target>,
    pub leases: Vec<super::catalogue::Lease>,
    pub pr: Vec<(u64, PrRecord)>,
    /// Extents allocated, per LUN id.
    pub extents: Vec<(u64, u64)>,
    /// Extents with a chunk not `Ok`, per LUN id.
    pub degraded: Vec<(u64, u64)>,
}

impl Summary {
    pub fn of(c: &Catalogue) -> Summary {
        let mut extents = std::collections::BTreeMap::<u64, u64>::new();
        let mut degraded = std::collections::BTreeMap::<u64, u64>::new();
        for e in c.extents.values() {
            *extents.entry(e.lun).or_default() += 1;
            if e.chunks
                .iter()
                .any(|s| *s != super::catalogue::ChunkState::Ok)
            {
                *degraded.entry(e.lun).or_default() += 1;
            }
        }
        Summary {
            revision: c.revision,
            nodes: c.nodes.values().cloned().collect(),
            luns: c.luns.values().cloned().collect(),
            targets: c.targets.values().cloned().collect(),
            leases: c.leases.values().cloned().collect(),
            pr: c.pr.iter().map(|(k, v)| (*k, v.clone())).collect(),
            extents: extents.into_iter().collect(),
            degraded: degraded.into_iter().collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WatchReply {
    /// Changes after the caller's revision, up to `revision`.
    Changes {
        revision: u64,
        changes: Vec<(u64, Change)>,
    },
    /// Too far behind: read everything again (`Summary`).
    Resync { revision: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub last_applied: u64,
}

/// What an operator may ask: a catalogue change, or a change of the
/// metadata replicas themselves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    Command(Command),
    /// Make `node` (running, with itself among its configured voters) a
    /// voter: it first catches up as a learner.
    AddVoter {
        node: NodeId,
        addr: SocketAddr,
    },
    RemoveVoter {
        node: NodeId,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteReply {
    pub outcome: Outcome,
    /// Raft index at which the change was applied.
    pub revision: u64,
}

/// Why a metadata call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MetaError {
    #[error("{0}")]
    Catalogue(#[from] CatalogueError),
    /// The change cannot be made safe now: no leader, or no quorum. Retry.
    #[error("metadata unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("this node is not a metadata replica")]
    NotReplica,
}

/// Decodes `header` as every metadata message of `kind`, ignoring the
/// result (the fuzz target's way in).
pub(crate) fn decode_headers_for_fuzz(kind: Kind, header: &[u8]) {
    match kind {
        Kind::METADATA_READ => {
            let _ = postcard::from_bytes::<ReadRequest>(header);
            let _ = postcard::from_bytes::<Result<ReadReply, MetaError>>(header);
        }
        Kind::METADATA_WRITE => {
            let _ = postcard::from_bytes::<AdminRequest>(header);
            let _ = postcard::from_bytes::<Result<WriteReply, MetaError>>(header);
        }
        Kind::METADATA_NODE => {
            let _ = postcard::from_bytes::<WriteRequest>(header);
            let _ = postcard::from_bytes::<Result<WriteReply, MetaError>>(header);
        }
        _ => {}
    }
}
