//! Message kinds and the one table that says which roles may send each.
//!
//! Every kind a node serves must have a row here: the RPC server refuses to
//! register a handler for a kind without one, and checks the sender's role
//! (from its certificate) against the row before any handler runs. So the
//! whole access policy of the fabric is this table.
//!
//! Kind numbers are ranges by subsystem, so that new kinds never collide:
//!
//! | range | subsystem |
//! |---|---|
//! | `0x0001..=0x00ff` | transport (ping) |
//! | `0x0100..=0x01ff` | gossip of node state (reserved for the gossip module) |
//! | `0x0200..=0x02ff` | metadata |
//! | `0x0300..=0x03ff` | chunk data |

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::Role;

/// A message kind: the `kind` field of a frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Kind(pub u16);

impl Kind {
    /// Liveness and round-trip probe; echoes the payload if asked.
    pub const PING: Kind = Kind(0x0001);
    /// Gossip of node state (`gossip::message::Envelope` both ways).
    pub const GOSSIP: Kind = Kind(0x0100);
    /// Read metadata (LUN maps, placements): anyone in the cluster.
    pub const METADATA_READ: Kind = Kind(0x0200);
    /// Change metadata (LUNs, targets, ACLs, node admin state): admins only.
    pub const METADATA_WRITE: Kind = Kind(0x0201);
    /// Raft traffic between metadata replicas: chunkservers only.
    pub const METADATA_RAFT: Kind = Kind(0x0202);
    /// Metadata changes nodes make as they work (register, leases, extent
    /// allocation and epochs, PR state): chunkservers and gateways.
    pub const METADATA_NODE: Kind = Kind(0x0203);
    /// Read chunk data.
    pub const CHUNK_READ: Kind = Kind(0x0300);
    /// Write chunk data (to an extent primary, or primary to chunk holder).
    pub const CHUNK_WRITE: Kind = Kind(0x0301);
    /// XOR a parity delta into a chunk (extent primary to parity holder).
    pub const CHUNK_APPLY_DELTA: Kind = Kind(0x0302);
    /// Punch (deallocate) a range of a chunk: UNMAP.
    pub const CHUNK_PUNCH: Kind = Kind(0x0303);
    /// Create an empty chunk.
    pub const CHUNK_CREATE: Kind = Kind(0x0304);
    /// Delete a chunk.
    pub const CHUNK_DELETE: Kind = Kind(0x0305);
    /// Raise a chunk's epoch.
    pub const CHUNK_SET_EPOCH: Kind = Kind(0x0306);
    /// Stream a whole chunk out (repair, migration).
    pub const CHUNK_FETCH: Kind = Kind(0x0307);
    /// Stream a whole chunk in (repair, migration).
    pub const CHUNK_PUT: Kind = Kind(0x0308);
    /// List the chunks a node holds.
    pub const CHUNK_LIST: Kind = Kind(0x0309);
    /// A chunkserver's capacity and counters.
    pub const CHUNK_STATS: Kind = Kind(0x030a);
    /// Make buffered chunk writes stable.
    pub const CHUNK_FLUSH: Kind = Kind(0x030b);
    /// Scrub every chunk now and report bad blocks.
    pub const CHUNK_SCRUB: Kind = Kind(0x030c);
    /// Write without returning (or reading) the old data: full-row parity,
    /// repair of corrupt blocks, journal replay.
    pub const CHUNK_OVERWRITE: Kind = Kind(0x030d);
    /// Write through an extent's primary (the volume client's writes).
    pub const EXTENT_WRITE: Kind = Kind(0x0310);
    /// Read through an extent's primary (degraded, repairing).
    pub const EXTENT_READ: Kind = Kind(0x0311);
    /// UNMAP through an extent's primary.
    pub const EXTENT_PUNCH: Kind = Kind(0x0312);
    /// Make an extent's chunks stable (SYNCHRONIZE CACHE).
    pub const EXTENT_FLUSH: Kind = Kind(0x0313);
    /// Ask a holder to replace an unreachable extent primary.
    pub const EXTENT_TAKEOVER: Kind = Kind(0x0314);
    /// Ask an extent's old primary which rows it may have left in doubt.
    pub const EXTENT_DOUBTS: Kind = Kind(0x0315);
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match spec(*self) {
            Some(s) => write!(f, "{}({:#06x})", s.name, self.0),
            None => write!(f, "Kind({:#06x})", self.0),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A set of roles, as a bit set (one bit per [`Role`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoleSet(u8);

impl RoleSet {
    pub const NONE: RoleSet = RoleSet(0);
    pub const CHUNKSERVER: RoleSet = RoleSet(1 << 0);
    pub const GATEWAY: RoleSet = RoleSet(1 << 1);
    pub const ADMIN: RoleSet = RoleSet(1 << 2);
    pub const ALL: RoleSet = RoleSet(0b111);

    pub const fn union(self, other: RoleSet) -> RoleSet {
        RoleSet(self.0 | other.0)
    }

    pub const fn of(role: Role) -> RoleSet {
        match role {
            Role::Chunkserver => RoleSet::CHUNKSERVER,
            Role::Gateway => RoleSet::GATEWAY,
            Role::Admin => RoleSet::ADMIN,
        }
    }

    pub const fn contains(self, role: Role) -> bool {
        self.0 & RoleSet::of(role).0 != 0
    }
}

impl fmt::Debug for RoleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Role::ALL.into_iter().filter(|r| self.contains(*r)))
            .finish()
    }
}

/// One row of the kind table.
#[derive(Clone, Copy, Debug)]
pub struct KindSpec {
    pub kind: Kind,
    pub name: &'static str,
    /// Roles whose certificates may send this kind.
    pub allowed: RoleSet,
}

/// Who may send what. Reasons:
/// - a gateway reads and writes data and reads metadata, but can never
///   change metadata (a compromised gateway cannot remap LUNs);
/// - only an admin changes metadata; a chunkserver cannot act as admin;
/// - Raft is between chunkservers (the metadata replicas) only;
/// - an admin may read chunks (image export) and write them (import).
pub static KIND_TABLE: &[KindSpec] = &[
    KindSpec {
        kind: Kind::PING,
        name: "Ping",
        allowed: RoleSet::ALL,
    },
    // Every node publishes its state; `weft status` (admin) reads the view.
    KindSpec {
        kind: Kind::GOSSIP,
        name: "Gossip",
        allowed: RoleSet::ALL,
    },
    KindSpec {
        kind: Kind::METADATA_READ,
        name: "MetadataRead",
        allowed: RoleSet::ALL,
    },
    KindSpec {
        kind: Kind::METADATA_WRITE,
        name: "MetadataWrite",
        allowed: RoleSet::ADMIN,
    },
    KindSpec {
        kind: Kind::METADATA_RAFT,
        name: "MetadataRaft",
        allowed: RoleSet::CHUNKSERVER,
    },
    // What a node may change about itself or the data it serves; each
    // command is checked again against the sender (a node renews only its
    // own lease; only chunkservers change extents).
    KindSpec {
        kind: Kind::METADATA_NODE,
        name: "MetadataNode",
        allowed: RoleSet::CHUNKSERVER.union(RoleSet::GATEWAY),
    },
    KindSpec {
        kind: Kind::CHUNK_READ,
        name: "ChunkRead",
        allowed: RoleSet::ALL,
    },
    // Chunk writes come from the extent primary (which keeps parity in
    // step with data) or an operator's tools; a gateway writes through the
    // primary (`ExtentWrite`), never to a chunk directly.
    KindSpec {
        kind: Kind::CHUNK_WRITE,
        name: "ChunkWrite",
        allowed: RoleSet::CHUNKSERVER.union(RoleSet::ADMIN),
    },
    // Chunk kinds beyond read/write (messages in `wire::chunk`, served by
    // the chunkserver; `docs/chunkserver.md` has the reasons in full).
    // Punch is UNMAP, write's counterpart: same senders as write.
    KindSpec {
        kind: Kind::CHUNK_PUNCH,
        name: "ChunkPunch",
        allowed: RoleSet::CHUNKSERVER.union(RoleSet::ADMIN),
    },
    // Parity deltas, whole-chunk streams and epoch changes come only from
    // other chunkservers (the extent primary, repair, migration, the
    // metadata replicas): a gateway that sent them could make parity
    // disagree with data or roll a chunk back.
    KindSpec {
        kind: Kind::CHUNK_APPLY_DELTA,
        name: "ChunkApplyDelta",
        allowed: RoleSet::CHUNKSERVER,
    },
    KindSpec {
        kind: Kind::CHUNK_SET_EPOCH,
        name: "ChunkSetEpoch",
        allowed: RoleSet::CHUNKSERVER,
    },
    KindSpec {
        kind: Kind::CHUNK_FETCH,
        name: "ChunkFetch",
        allowed: RoleSet::CHUNKSERVER,
    },
    KindSpec {
        kind: Kind::CHUNK_PUT,
        name: "ChunkPut",
        allowed: RoleSet::CHUNKSERVER,
    },
    // Creating and deleting chunks follows placement (chunkservers) or an
    // operator; a gateway can never delete data wholesale.
    KindSpec {
        kind: Kind::CHUNK_CREATE,
        name: "ChunkCreate",
        allowed: RoleSet::CHUNKSERVER.union(RoleSet::ADMIN),
    },
    KindSpec {
        kind: Kind::CHUNK_DELETE,
        name: "ChunkDelete",
        allowed: RoleSet::CHUNKSERVER.union(RoleSet::ADMIN),
    },
    // Listing and scrubbing are for repair (chunkservers) and operators.
    KindSpec {
        kind: Kind::CHUNK_LIST,
        name: "ChunkList",
        allowed: RoleSet::CHUNKSERVER.union(RoleSet::ADMIN),
    },
    KindSpec {
        kind: Kind::CHUNK_SCRUB,
        name: "ChunkScrub",
        allowed: RoleSet::CHUNKSERVER.union(RoleSet::ADMIN),
    },
    // Read-only counters and a flush (SYNCHRONIZE CACHE) harm no one.
    KindSpec {
        kind: Kind::CHUNK_STATS,
        name: "ChunkStats",
        allowed: RoleSet::ALL,
    },
    KindSpec {
        kind: Kind::CHUNK_FLUSH,
        name: "ChunkFlush",
        allowed: RoleSet::ALL,
    },
    // Overwrites skip the old data (and its checksums): only the extent
    // primary, which computes the parity itself, may send them.
    KindSpec {
        kind: Kind::CHUNK_OVERWRITE,
        name: "ChunkOverwrite",
        allowed: RoleSet::CHUNKSERVER,
    },
    // The volume client's way in: every write and degraded read of a LUN
    // goes through the extent's primary, which orders them.
    KindSpec {
        kind: Kind::EXTENT_WRITE,
        name: "ExtentWrite",
        allowed: RoleSet::ALL,
    },
    KindSpec {
        kind: Kind::EXTENT_READ,
        name: "ExtentRead",
        allowed: RoleSet::ALL,
    },
    KindSpec {
        kind: Kind::EXTENT_PUNCH,
        name: "ExtentPunch",
        allowed: RoleSet::ALL,
    },
    KindSpec {
        kind: Kind::EXTENT_FLUSH,
        name: "ExtentFlush",
        allowed: RoleSet::ALL,
    },
    // A gateway that cannot reach a primary asks a holder to take over;
    // the holder checks for itself and the metadata's lease rule decides.
    KindSpec {
        kind: Kind::EXTENT_TAKEOVER,
        name: "ExtentTakeover",
        allowed: RoleSet::ALL,
    },
    // Between primaries only: a new primary catching up the chunk of
    // the one it took over from.
    KindSpec {
        kind: Kind::EXTENT_DOUBTS,
        name: "ExtentDoubts",
        allowed: RoleSet::CHUNKSERVER,
    },
];

/// The table row for `kind`, if this build knows it.
pub fn spec(kind: Kind) -> Option<&'static KindSpec> {
    KIND_TABLE.iter().find(|s| s.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, a) in KIND_TABLE.iter().enumerate() {
            for b in &KIND_TABLE[i + 1..] {
                assert_ne!(a.kind, b.kind, "duplicate kind {}", a.name);
                assert_ne!(a.name, b.name);
            }
        }
        let w = spec(Kind::METADATA_WRITE).unwrap();
        assert!(w.allowed.contains(Role::Admin));
        assert!(!w.allowed.contains(Role::Gateway));
        assert!(!w.allowed.contains(Role::Chunkserver));
        assert_eq!(format!("{:?}", Kind::PING), "Ping(0x0001)");
        assert_eq!(format!("{:?}", Kind(0x7777)), "Kind(0x7777)");
    }
}
