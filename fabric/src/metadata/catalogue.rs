//! The catalogue: everything that must never disagree between nodes, as
//! plain records, and [`Catalogue::apply`], the one function that changes
//! it. Replicas apply the same commands in the same (Raft) order, so apply
//! is deterministic: no clock, no randomness, no I/O — a command carries
//! the time and the placement the leader chose for it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::command::{Command, Outcome};
use super::error::CatalogueError;
use super::names;
use crate::identity::NodeId;
use crate::placement::Policy;

/// Changes remembered for watchers; one that falls further behind gets
/// [`WatchReply::Resync`](super::rpc::WatchReply) and reads everything.
pub const CHANGES_KEPT: usize = 4096;
/// Largest LUN: 1 PiB.
pub const LUN_BYTES_MAX: u64 = 1 << 50;
/// LUN numbers a target maps (SAM flat space addressing, as the gateway
/// reports them).
pub const TARGET_LUNS_MAX: u16 = 256;
/// Initiators in one target's ACL.
pub const ACL_ENTRIES_MAX: usize = 1024;
/// Targets in one cluster, LUNs in one cluster.
pub const TARGETS_MAX: usize = 4096;
pub const LUNS_MAX: usize = 65_536;
/// Persistent-reservation state of one LUN, encoded by the gateway.
pub const PR_BYTES_MAX: usize = 64 * 1024;
/// Default bytes of one chunk (one node's share of an extent): an extent
/// holds `k × chunk_bytes` of the LUN.
pub const CHUNK_BYTES_DEFAULT: u64 = 16 << 20;
/// Default stripe unit: bytes of one data chunk in one stripe row.
pub const STRIPE_UNIT_DEFAULT: u32 = 64 << 10;

/// A node's admin state: set by the operator, kept in the catalogue
/// (gossip says whether a node is alive; this says whether it should be
/// used).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AdminState {
    /// Takes new chunks.
    #[default]
    In,
    /// Takes no new chunks; its chunks are moved away.
    Draining,
    /// Holds no chunks and takes none (drained, or declared out).
    Out,
    /// Gone for good; kept only so its id is never reused by mistake.
    Removed,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::In => "in",
            AdminState::Draining => "draining",
            AdminState::Out => "out",
            AdminState::Removed => "removed",
        }
    }
}

/// A chunkserver the cluster knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: NodeId,
    pub admin: AdminState,
    pub added_ms: u64,
}

/// A LUN: a block device whose extents live on chunkservers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lun {
    pub id: u64,
    pub name: String,
    pub size_bytes: u64,
    pub block_size: u32,
    /// EC profile, spread and pinning.
    pub policy: Policy,
    pub chunk_bytes: u64,
    pub stripe_unit: u32,
    /// NAA IEEE Registered Extended designator (VPD 0x83), the same
    /// through every gateway so multipath groups the paths.
    pub naa: [u8; 16],
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    pub created_ms: u64,
}

impl Lun {
    /// Logical bytes of one extent: `k` chunks of data.
    pub fn extent_bytes(&self) -> u64 {
        self.chunk_bytes.saturating_mul(u64::from(self.policy.ec.k))
    }
    /// Extents the LUN spans.
    pub fn extents(&self) -> u64 {
        self.size_bytes.div_ceil(self.extent_bytes().max(1))
    }
}

/// CHAP secrets of a target: the initiator proves itself with `user` /
/// `secret`; with `mutual`, the target proves itself back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapSecrets {
    pub user: String,
    pub secret: String,
    pub mutual: Option<(String, String)>,
}

/// An iSCSI target: its LUN map, who may log in, how they prove it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub iqn: String,
    /// LUN number → LUN id.
    pub luns: BTreeMap<u16, u64>,
    /// Initiator IQNs allowed; empty = any.
    pub acl: Vec<String>,
    pub chap: Option<ChapSecrets>,
    pub created_ms: u64,
}

/// One chunk of an extent, as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkState {
    Ok,
    /// Its holder missed writes from this epoch on.
    Missing {
        since_epoch: u64,
    },
    /// Being rebuilt (or caught up) onto `to`.
    Rebuilding {
        to: NodeId,
    },
}

/// An extent: where its `k+m` chunks live and at which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub lun: u64,
    pub index: u64,
    /// Holder of each chunk: data chunks `0..k`, then parity.
    pub nodes: Vec<NodeId>,
    /// Slot of the primary (orders writes): the first parity chunk's.
    pub primary: u8,
    pub epoch: u64,
    pub chunks: Vec<ChunkState>,
}

impl Extent {
    pub fn primary_node(&self) -> Option<&NodeId> {
        self.nodes.get(usize::from(self.primary))
    }
}

/// A chunkserver's lease: it serves extents only until `expires_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: NodeId,
    pub expires_ms: u64,
}

/// Persistent-reservation state of a LUN, versioned for compare-and-set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrRecord {
    pub version: u64,
    pub bytes: Vec<u8>,
}

/// What a command changed: watchers learn these.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Change {
    Node(NodeId),
    Lun(u64),
    Target(String),
    Extent(u64, u64),
    Lease(NodeId),
    Pr(u64),
}

/// The whole catalogue. Cloned into snapshots; applied in log order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalogue {
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    pub luns: BTreeMap<u64, Lun>,
    pub targets: BTreeMap<String, Target>,
    pub extents: BTreeMap<(u64, u64), Extent>,
    pub leases: BTreeMap<NodeId, Lease>,
    pub pr: BTreeMap<u64, PrRecord>,
    pub next_lun_id: u64,
    /// Raft index of the last command that changed anything.
    pub revision: u64,
    /// Recent changes, oldest first (not persisted: a restarted replica
    /// starts with none and sends watchers to resync).
    #[serde(skip)]
    pub changes: VecDeque<(u64, Change)>,
}

impl Catalogue {
    /// Extent `(lun, index)`, if it is at `expected_epoch`: the
    /// compare-and-set of every extent change.
    fn extent_at(
        &self,
        lun: u64,
        index: u64,
        expected_epoch: u64,
    ) -> Result<&Extent, CatalogueError> {
        let e = self
            .extents
            .get(&(lun, index))
            .ok_or(CatalogueError::NoSuchExtent { lun, index })?;
        if e.epoch != expected_epoch {
            return Err(CatalogueError::EpochMismatch {
                have: e.epoch,
                expected: expected_epoch,
            });
        }
        Ok(e)
    }

    /// Refuses while `holder`'s lease is still valid at `now_ms`: until
    /// then it may still be serving its chunks.
    fn lease_lapsed(&self, holder: &NodeId, now_ms: u64) -> Result<(), CatalogueError> {
        match self.leases.get(holder) {
            Some(l) if l.expires_ms > now_ms => Err(CatalogueError::LeaseStillValid {
                node: holder.to_string(),
                for_ms: l.expires_ms - now_ms,
            }),
            _ => Ok(()),
        }
    }

    pub fn lun_by_name(&self, name: &str) -> Option<&Lun> {
        self.luns.values().find(|l| l.name == name)
    }

    fn lun_id(&self, name: &str) -> Result<u64, CatalogueError> {
        self.lun_by_name(name)
            .map(|l| l.id)
            .ok_or_else(|| CatalogueError::NoSuchLun(name.to_string()))
    }

    fn target_mut(&mut self, iqn: &str) -> Result<&mut Target, CatalogueError> {
        self.targets
            .get_mut(iqn)
            .ok_or_else(|| CatalogueError::NoSuchTarget(iqn.to_string()))
    }

    /// Targets mapping `lun` (a LUN that is mapped cannot be deleted).
    pub fn maps_of(&self, lun: u64) -> Vec<(String, u16)> {
        let mut out = Vec::new();
        for t in self.targets.values() {
            for (n, id) in &t.luns {
                if *id == lun {
                    out.push((t.iqn.clone(), *n));
                }
            }
        }
        out
    }

    /// Changes after `revision`, or `None` if they are no longer kept.
    pub fn changes_since(&self, revision: u64) -> Option<Vec<(u64, Change)>> {
        if revision >= self.revision {
            return Some(Vec::new());
        }
        match self.changes.front() {
            Some((first, _)) if *first <= revision + 1 => Some(
                self.changes
                    .iter()
                    .filter(|(r, _)| *r > revision)
                    .cloned()
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Applies `cmd`, committed at Raft index `index`. An invalid command
    /// changes nothing and returns why; either way every replica ends in
    /// the same state. Returns what changed beside the outcome.
    pub fn apply(
        &mut self,
        index: u64,
        cmd: &Command,
    ) -> (Result<Outcome, CatalogueError>, Vec<Change>) {
        let mut changed = Vec::new();
        let out = self.apply_inner(cmd, &mut changed);
        if !changed.is_empty() {
            self.revision = index;
            for c in &changed {
                if self.changes.len() >= CHANGES_KEPT {
                    self.changes.pop_front();
                }
                self.changes.push_back((index, c.clone()));
            }
        }
        (out, changed)
    }

    fn apply_inner(
        &mut self,
        cmd: &Command,
        changed: &mut Vec<Change>,
    ) -> Result<Outcome, CatalogueError> {
        match cmd {
            Command::RegisterNode { node, now_ms } => {
                if let Some(n) = self.nodes.get(node) {
                    if n.admin == AdminState::Removed {
                        return Err(CatalogueError::NodeRemoved(node.to_string()));
                    }
                    return Ok(Outcome::Node(n.clone()));
                }
                let n = NodeEntry {
                    id: node.clone(),
                    admin: AdminState::In,
                    added_ms: *now_ms,
                };
                self.nodes.insert(node.clone(), n.clone());
                changed.push(Change::Node(node.clone()));
                Ok(Outcome::Node(n))
            }
            Command::SetNodeAdmin { node, admin } => {
                let n = self
                    .nodes
                    .get_mut(node)
                    .ok_or_else(|| CatalogueError::NoSuchNode(node.to_string()))?;
                if n.admin == AdminState::Removed {
                    return Err(CatalogueError::NodeRemoved(node.to_string()));
                }
                if *admin == AdminState::Removed {
                    let holds = self
                        .extents
                        .values()
                        .filter(|e| e.nodes.contains(node))
                        .count();
                    if holds > 0 {
                        return Err(CatalogueError::NodeHoldsChunks {
                            node: node.to_string(),
                            extents: holds,
                        });
                    }
                }
                n.admin = *admin;
                let n = n.clone();
                changed.push(Change::Node(node.clone()));
                Ok(Outcome::Node(n))
            }
            Command::CreateLun {
                name,
                size_bytes,
                block_size,
                policy,
                naa,
                serial,
                now_ms,
            } => {
                names::check_lun_name(name)?;
                check_lun_size(*size_bytes, *block_size)?;
                policy
                    .check()
                    .map_err(|e| CatalogueError::Policy(e.to_string()))?;
                if self.lun_by_name(name).is_some() {
                    return Err(CatalogueError::LunExists(name.clone()));
                }
                if self.luns.len() >= LUNS_MAX {
                    return Err(CatalogueError::TooMany("LUNs".into(), LUNS_MAX));
                }
                let id = self.next_lun_id.max(1);
                self.next_lun_id = id + 1;
                let lun = Lun {
                    id,
                    name: name.clone(),
                    size_bytes: *size_bytes,
                    block_size: *block_size,
                    policy: policy.clone(),
                    chunk_bytes: CHUNK_BYTES_DEFAULT,
                    stripe_unit: STRIPE_UNIT_DEFAULT,
                    naa: *naa,
                    serial: serial.clone(),
                    created_ms: *now_ms,
                };
                self.luns.insert(id, lun.clone());
                changed.push(Change::Lun(id));
                Ok(Outcome::Lun(lun))
            }
            Command::ResizeLun { name, size_bytes } => {
                let id = self.lun_id(name)?;
                let lun = self
                    .luns
                    .get_mut(&id)
                    .ok_or_else(|| CatalogueError::NoSuchLun(name.clone()))?;
                check_lun_size(*size_bytes, lun.block_size)?;
                if *size_bytes < lun.size_bytes {
                    return Err(CatalogueError::ShrinkRefused {
                        name: name.clone(),
                        from: lun.size_bytes,
                        to: *size_bytes,
                    });
                }
                lun.size_bytes = *size_bytes;
                let lun = lun.clone();
                changed.push(Change::Lun(id));
                Ok(Outcome::Lun(lun))
            }
            Command::DeleteLun { name } => {
                let id = self.lun_id(name)?;
                let maps = self.maps_of(id);
                if let Some((iqn, n)) = maps.first() {
                    return Err(CatalogueError::LunMapped {
                        name: name.clone(),
                        target: iqn.clone(),
                        lun: *n,
                    });
                }
                self.luns.remove(&id);
                self.pr.remove(&id);
                let gone: Vec<(u64, u64)> = self
                    .extents
                    .range((id, 0)..=(id, u64::MAX))
                    .map(|(k, _)| *k)
                    .collect();
                let mut freed = Vec::new();
                for k in gone {
                    if let Some(e) = self.extents.remove(&k) {
                        changed.push(Change::Extent(k.0, k.1));
                        freed.push(e);
                    }
                }
                changed.push(Change::Lun(id));
                Ok(Outcome::Deleted { freed })
            }
            Command::CreateTarget { iqn, now_ms } => {
                names::check_iqn(iqn)?;
                if self.targets.contains_key(iqn) {
                    return Err(CatalogueError::TargetExists(iqn.clone()));
                }
                if self.targets.len() >= TARGETS_MAX {
                    return Err(CatalogueError::TooMany("targets".into(), TARGETS_MAX));
                }
                let t = Target {
                    iqn: iqn.clone(),
                    luns: BTreeMap::new(),
                    acl: Vec::new(),
                    chap: None,
                    created_ms: *now_ms,
                };
                self.targets.insert(iqn.clone(), t.clone());
                changed.push(Change::Target(iqn.clone()));
                Ok(Outcome::Target(t))
            }
            Command::DeleteTarget { iqn } => {
                if self.targets.remove(iqn).is_none() {
                    return Err(CatalogueError::NoSuchTarget(iqn.clone()));
                }
                changed.push(Change::Target(iqn.clone()));
                Ok(Outcome::Done)
            }
            Command::MapLun { iqn, lun, name } => {
                let id = self.lun_id(name)?;
                if *lun >= TARGET_LUNS_MAX {
                    return Err(CatalogueError::LunNumber(*lun));
                }
                let t = self.target_mut(iqn)?;
                if let Some(other) = t.luns.get(lun) {
                    if *other != id {
                        return Err(CatalogueError::LunNumberTaken {
                            target: iqn.clone(),
                            lun: *lun,
                        });
                    }
                }
                if t.luns.iter().any(|(n, l)| *l == id && n != lun) {
                    return Err(CatalogueError::AlreadyMapped {
                        name: name.clone(),
                        target: iqn.clone(),
                    });
                }
                t.luns.insert(*lun, id);
                let t = t.clone();
                changed.push(Change::Target(iqn.clone()));
                Ok(Outcome::Target(t))
            }
            Command::UnmapLun { iqn, lun } => {
                let t = self.target_mut(iqn)?;
                if t.luns.remove(lun).is_none() {
                    return Err(CatalogueError::NotMapped {
                        target: iqn.clone(),
                        lun: *lun,
                    });
                }
                let t = t.clone();
                changed.push(Change::Target(iqn.clone()));
                Ok(Outcome::Target(t))
            }
            Command::AclAdd { iqn, initiator } => {
                names::check_iqn(initiator)?;
                let t = self.target_mut(iqn)?;
                if !t.acl.contains(initiator) {
                    if t.acl.len() >= ACL_ENTRIES_MAX {
                        return Err(CatalogueError::TooMany(
                            "ACL entries".into(),
                            ACL_ENTRIES_MAX,
                        ));
                    }
                    t.acl.push(initiator.clone());
                }
                let t = t.clone();
                changed.push(Change::Target(iqn.clone()));
                Ok(Outcome::Target(t))
            }
            Command::AclRemove { iqn, initiator } => {
                let t = self.target_mut(iqn)?;
                let before = t.acl.len();
                t.acl.retain(|a| a != initiator);
                if t.acl.len() == before {
                    return Err(CatalogueError::NotInAcl {
                        target: iqn.clone(),
                        initiator: initiator.clone(),
                    });
                }
                let t = t.clone();
                changed.push(Change::Target(iqn.clone()));
                Ok(Outcome::Target(t))
            }
            Command::SetChap { iqn, chap } => {
                if let Some(c) = chap {
                    check_chap(c)?;
                }
                let t = self.target_mut(iqn)?;
                t.chap = chap.clone();
                let t = t.clone();
                changed.push(Change::Target(iqn.clone()));
                Ok(Outcome::Target(t))
            }
            Command::AllocateExtent { lun, index, nodes } => {
                let l = self
                    .luns
                    .get(lun)
                    .ok_or_else(|| CatalogueError::NoSuchLun(format!("id {lun}")))?;
                if *index >= l.extents() {
                    return Err(CatalogueError::ExtentOutOfRange {
                        lun: *lun,
                        index: *index,
                        extents: l.extents(),
                    });
                }
                // First allocation wins: a second gateway racing for the
                // same extent gets the first one's placement.
                if let Some(e) = self.extents.get(&(*lun, *index)) {
                    return Ok(Outcome::Extent(e.clone()));
                }
                let width = usize::from(l.policy.ec.k) + usize::from(l.policy.ec.m);
                if nodes.len() != width {
                    return Err(CatalogueError::BadPlacement(format!(
                        "{} nodes for a {}+{} extent",
                        nodes.len(),
                        l.policy.ec.k,
                        l.policy.ec.m
                    )));
                }
                for (i, n) in nodes.iter().enumerate() {
                    if nodes[..i].contains(n) {
                        return Err(CatalogueError::BadPlacement(format!("{n} twice")));
                    }
                    match self.nodes.get(n) {
                        Some(e) if e.admin == AdminState::In => {}
                        Some(e) => {
                            return Err(CatalogueError::BadPlacement(format!(
                                "{n} is {}",
                                e.admin.as_str()
                            )))
                        }
                        None => return Err(CatalogueError::NoSuchNode(n.to_string())),
                    }
                }
                let primary = if l.policy.ec.m > 0 { l.policy.ec.k } else { 0 };
                let e = Extent {
                    lun: *lun,
                    index: *index,
                    nodes: nodes.clone(),
                    primary,
                    epoch: 1,
                    chunks: vec![ChunkState::Ok; width],
                };
                self.extents.insert((*lun, *index), e.clone());
                changed.push(Change::Extent(*lun, *index));
                Ok(Outcome::Extent(e))
            }
            Command::UpdateExtent {
                lun,
                index,
                expected_epoch,
                nodes,
                primary,
                chunks,
                now_ms,
            } => {
                let e = self.extent_at(*lun, *index, *expected_epoch)?;
                if nodes.len() != e.nodes.len()
                    || chunks.len() != e.nodes.len()
                    || usize::from(*primary) >= e.nodes.len()
                {
                    return Err(CatalogueError::BadPlacement(
                        "an extent update must keep the extent's width".into(),
                    ));
                }
                // A holder is declared missing only once its lease could
                // have lapsed: until then it may still be serving. Parity
                // chunks are served to no gateway, only to the primary: one
                // the primary marks missing without a change of primary (a
                // parity chunk that failed a write, its own included) needs
                // no wait. A change of primary (a takeover) always waits
                // for the old primary's lease.
                let k = self
                    .luns
                    .get(lun)
                    .map_or(usize::MAX, |l| usize::from(l.policy.ec.k));
                let same_primary = *primary == e.primary;
                for (slot, st) in chunks.iter().enumerate() {
                    let was_ok = matches!(e.chunks.get(slot), Some(ChunkState::Ok));
                    if slot >= k && same_primary {
                        continue;
                    }
                    if let (ChunkState::Missing { .. }, true) = (st, was_ok) {
                        if let Some(holder) = e.nodes.get(slot) {
                            self.lease_lapsed(holder, *now_ms)?;
                        }
                    }
                }
                let e = Extent {
                    lun: *lun,
                    index: *index,
                    nodes: nodes.clone(),
                    primary: *primary,
                    epoch: expected_epoch + 1,
                    chunks: chunks.clone(),
                };
                self.extents.insert((*lun, *index), e.clone());
                changed.push(Change::Extent(*lun, *index));
                Ok(Outcome::Extent(e))
            }
            Command::RenewLease { node, expires_ms } => {
                match self.nodes.get(node) {
                    Some(n) if n.admin == AdminState::Removed => {
                        return Err(CatalogueError::NodeRemoved(node.to_string()))
                    }
                    Some(_) => {}
                    None => return Err(CatalogueError::NoSuchNode(node.to_string())),
                }
                let l = self.leases.entry(node.clone()).or_insert(Lease {
                    node: node.clone(),
                    expires_ms: 0,
                });
                // Never shortened: a node may rely on what it was granted.
                l.expires_ms = l.expires_ms.max(*expires_ms);
                let l = l.clone();
                changed.push(Change::Lease(node.clone()));
                Ok(Outcome::Lease(l))
            }
            Command::SetPr {
                lun,
                expected_version,
                bytes,
            } => {
                if !self.luns.contains_key(lun) {
                    return Err(CatalogueError::NoSuchLun(format!("id {lun}")));
                }
                if bytes.len() > PR_BYTES_MAX {
                    return Err(CatalogueError::TooLarge("PR state".into(), PR_BYTES_MAX));
                }
                let cur = self.pr.entry(*lun).or_default();
                if cur.version != *expected_version {
                    return Err(CatalogueError::PrVersion {
                        have: cur.version,
                        expected: *expected_version,
                    });
                }
                cur.version += 1;
                cur.bytes = bytes.clone();
                let r = cur.clone();
                changed.push(Change::Pr(*lun));
                Ok(Outcome::Pr(r))
            }
            Command::ReplaceChunk {
                lun,
                index,
                expected_epoch,
                slot,
                node,
                now_ms,
            } => {
                let e = self.extent_at(*lun, *index, *expected_epoch)?;
                let s = usize::from(*slot);
                let Some(node) = node else {
                    return Err(CatalogueError::BadPlacement(
                        "no node chosen for the chunk".into(),
                    ));
                };
                // A chunk in service moves only once nobody serves it: its
                // holder's lease has lapsed, as for marking it missing.
                match e.chunks.get(s) {
                    Some(ChunkState::Ok) => {
                        if let Some(holder) = e.nodes.get(s) {
                            self.lease_lapsed(holder, *now_ms)?;
                        }
                        let out = e.chunks.iter().filter(|c| **c != ChunkState::Ok).count();
                        let m = self.luns.get(lun).map_or(0, |l| usize::from(l.policy.ec.m));
                        if out + 1 > m {
                            return Err(CatalogueError::BadPlacement(format!(
                                "moving chunk {s} of {lun}/{index} would leave {} chunks out, more than m = {m}",
                                out + 1
                            )));
                        }
                    }
                    Some(_) => {}
                    None => {
                        return Err(CatalogueError::BadPlacement(format!(
                            "slot {s} is beyond the extent's width"
                        )))
                    }
                }
                if s == usize::from(e.primary) {
                    return Err(CatalogueError::BadPlacement(
                        "the primary's chunk does not move".into(),
                    ));
                }
                if e.nodes.contains(node) {
                    return Err(CatalogueError::BadPlacement(format!(
                        "{node} already holds a chunk of {lun}/{index}"
                    )));
                }
                match self.nodes.get(node) {
                    Some(n) if n.admin == AdminState::In => {}
                    Some(n) => {
                        return Err(CatalogueError::BadPlacement(format!(
                            "{node} is {}",
                            n.admin.as_str()
                        )))
                    }
                    None => return Err(CatalogueError::NoSuchNode(node.to_string())),
                }
                let mut e = e.clone();
                e.epoch = expected_epoch + 1;
                if let Some(n) = e.nodes.get_mut(s) {
                    *n = node.clone();
                }
                if let Some(c) = e.chunks.get_mut(s) {
                    // The new holder has none of it.
                    *c = ChunkState::Missing { since_epoch: 0 };
                }
                self.extents.insert((*lun, *index), e.clone());
                changed.push(Change::Extent(*lun, *index));
                Ok(Outcome::Extent(e))
            }
        }
    }
}

fn check_lun_size(size: u64, block_size: u32) -> Result<(), CatalogueError> {
    if block_size != 512 && block_size != 4096 {
        return Err(CatalogueError::BlockSize(block_size));
    }
    if size == 0 || size > LUN_BYTES_MAX || !size.is_multiple_of(u64::from(block_size)) {
        return Err(CatalogueError::LunSize {
            size,
            block_size,
            max: LUN_BYTES_MAX,
        });
    }
    Ok(())
}

fn check_chap(c: &ChapSecrets) -> Result<(), CatalogueError> {
    // RFC 7143 §12.1.3: secrets of at least 12 bytes where IPsec is not
    // used (tgt and LIO warn below that; we refuse), and at most 255.
    let secret_ok = |s: &str| (12..=255).contains(&s.len());
    let user_ok = |u: &str| !u.is_empty() && u.len() <= 255 && !u.contains('\0');
    if !user_ok(&c.user) || !secret_ok(&c.secret) {
        return Err(CatalogueError::Chap(
            "user must be 1–255 bytes and secret 12–255 bytes".into(),
        ));
    }
    if let Some((u, s)) = &c.mutual {
        if !user_ok(u) || !secret_ok(s) {
            return Err(CatalogueError::Chap(
                "mutual user must be 1–255 bytes and secret 12–255 bytes".into(),
            ));
        }
        if *s == c.secret {
            return Err(CatalogueError::Chap(
                "the mutual secret must differ from the initiator's".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "catalogue_tests.rs"]
mod tests;
