//! The Raft type configuration: what a log entry carries (a catalogue
//! [`Command`]), what applying it returns, and who the members are.

use std::fmt;
use std::io::Cursor;

use fabric::metadata::{CatalogueError, Command, Outcome};
use serde::{Deserialize, Serialize};

/// A Raft member as the membership config records it: its fabric node id
/// and address (each replica may override the address from its own
/// config, see `network`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.addr)
    }
}

openraft::declare_raft_types!(
    /// weft's metadata Raft.
    pub TypeConfig:
        D = Command,
        R = Result<Outcome, CatalogueError>,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftNodeId = u64;
pub type LogId = openraft::LogId<RaftNodeId>;
pub type Vote = openraft::Vote<RaftNodeId>;
pub type StorageError = openraft::StorageError<RaftNodeId>;
pub type StoredMembership = openraft::StoredMembership<RaftNodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<RaftNodeId, Member>;
pub type Entry = openraft::Entry<TypeConfig>;

/// The Raft id of a fabric node: FNV-1a of its node id, so no second
/// numbering has to be configured and kept in step. Collisions among the
/// voters of one cluster are checked at start-up.
pub fn raft_id(node: &str) -> RaftNodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 reads as "no node" in some of openraft's displays; keep clear.
    h.max(1)
}
