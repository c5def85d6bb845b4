//! What the leader does to a change before proposing it: stamp the time,
//! choose the placement of a new extent (or of a chunk that moves) from
//! its gossiped view, make the
//! LUN's identifiers, and refuse what the soft state says can never work
//! (a LUN larger than the cluster, a profile wider than its nodes). Apply
//! itself stays deterministic; all of this happens once, here.

use fabric::gossip::View;
use fabric::identity::Role;
use fabric::metadata::catalogue::AdminState;
use fabric::metadata::rpc::MetaError;
use fabric::metadata::{Catalogue, CatalogueError, Command, Extent, Outcome};
use fabric::placement::{self, ExtentKey};
use fabric::rpc::Client;
use fabric::wire::chunk::{ChunkDelete, ChunkDeleteRequest, ChunkRef};
use rand::RngCore;
use tokio::time::Instant;
use tracing::{debug, warn};

/// IEEE OUI in every LUN's NAA designator: the CID block "locally
/// administered" range is not allowed in NAA 6, so weft uses the IEEE
/// company id space's documentation value. The 100 bits after it are
/// random per LUN.
const NAA_OUI: u32 = 0x00_1E_E5;

/// The wall clock in ms, or the simulation's clock inside `weft-sim`
/// (leases and timestamps must replay from a seed).
pub fn now_ms() -> u64 {
    fabric::env::unix_now_ms()
}

pub enum Prepared {
    /// Nothing to change: answer at once (a node registering again, an
    /// extent already allocated).
    Answer(Outcome),
    Propose(Command),
}

pub fn prepare(
    cmd: Command,
    cat: &Catalogue,
    view: Option<&View>,
    lease_ms: u64,
    now: u64,
) -> Result<Prepared, MetaError> {
    Ok(Prepared::Propose(match cmd {
        Command::RegisterNode { node, .. } => {
            if let Some(n) = cat.nodes.get(&node) {
                if n.admin != AdminState::Removed {
                    return Ok(Prepared::Answer(Outcome::Node(n.clone())));
                }
            }
            Command::RegisterNode { node, now_ms: now }
        }
        Command::CreateLun {
            name,
            size_bytes,
            block_size,
            policy,
            ..
        } => {
            if cat.lun_by_name(&name).is_some() {
                return Err(CatalogueError::LunExists(name).into());
            }
            let (k, m) = (policy.ec.k, policy.ec.m);
            let width = policy.ec.width();
            let in_service = cat
                .nodes
                .values()
                .filter(|n| n.admin == AdminState::In)
                .count();
            if width > in_service {
                return Err(CatalogueError::TooWide {
                    k,
                    m,
                    need: width,
                    have: in_service,
                }
                .into());
            }
            if let Some(view) = view {
                let raw: u64 = view
                    .nodes
                    .iter()
                    .filter(|(id, n)| {
                        n.role() == Some(Role::Chunkserver)
                            && cat.nodes.get(id).is_some_and(|e| {
                                matches!(e.admin, AdminState::In | AdminState::Draining)
                            })
                    })
                    .filter_map(|(_, n)| n.capacity())
                    .map(|c| c.bytes_total)
                    .sum();
                let max = (u128::from(raw) * u128::from(k) / width.max(1) as u128) as u64;
                if raw > 0 && size_bytes > max {
                    return Err(CatalogueError::LunTooLarge {
                        size: size_bytes,
                        max,
                        k,
                        m,
                    }
                    .into());
                }
            }
            let (naa, serial) = identifiers();
            Command::CreateLun {
                name,
                size_bytes,
                block_size,
                policy,
                naa,
                serial,
                now_ms: now,
            }
        }
        Command::AllocateExtent { lun, index, .. } => {
            if let Some(e) = cat.extents.get(&(lun, index)) {
                return Ok(Prepared::Answer(Outcome::Extent(e.clone())));
            }
            let l = cat
                .luns
                .get(&lun)
                .ok_or_else(|| CatalogueError::NoSuchLun(format!("id {lun}")))?;
            let cands = candidates(cat, view)?;
            let key = ExtentKey { lun, index };
            let nodes = match placement::place(&cands, &l.policy, key, l.chunk_bytes) {
                Ok(nodes) => nodes,
                Err(err) => place_degraded(&cands, &l.policy, key, l.chunk_bytes)
                    .ok_or_else(|| CatalogueError::Placement(err.to_string()))?,
            };
            Command::AllocateExtent { lun, index, nodes }
        }
        Command::UpdateExtent {
            lun,
            index,
            expected_epoch,
            nodes,
            primary,
            chunks,
            ..
        } => Command::UpdateExtent {
            lun,
            index,
            expected_epoch,
            nodes,
            primary,
            chunks,
            now_ms: now,
        },
        Command::ReplaceChunk {
            lun,
            index,
            expected_epoch,
            slot,
            ..
        } => {
            let e = cat
                .extents
                .get(&(lun, index))
                .ok_or(CatalogueError::NoSuchExtent { lun, index })?;
            let l = cat
                .luns
                .get(&lun)
                .ok_or_else(|| CatalogueError::NoSuchLun(format!("id {lun}")))?;
            let cands = candidates(cat, view)?;
            let node = placement::replace(
                &cands,
                &l.policy,
                ExtentKey { lun, index },
                l.chunk_bytes,
                &e.nodes,
                usize::from(slot),
            )
            .map_err(|err| CatalogueError::Placement(err.to_string()))?;
            Command::ReplaceChunk {
                lun,
                index,
                expected_epoch,
                slot,
                node: Some(node),
                now_ms: now,
            }
        }
        Command::CreateTarget { iqn, .. } => Command::CreateTarget { iqn, now_ms: now },
        Command::RenewLease { node, .. } => Command::RenewLease {
            node,
            expires_ms: now.saturating_add(lease_ms),
        },
        other => other,
    }))
}

/// The nodes placement may choose from, by the leader's gossiped view and
/// the catalogue's admin states. A node the catalogue does not know is
/// treated as out: it has not registered (and holds no lease) yet.
fn candidates(
    cat: &Catalogue,
    view: Option<&View>,
) -> Result<Vec<placement::Candidate>, MetaError> {
    let Some(view) = view else {
        return Err(MetaError::Unavailable(
            "the leader has no view of the cluster yet (gossip)".into(),
        ));
    };
    let admin = |n: &fabric::NodeId| cat.nodes.get(n).map_or(AdminState::Out, |e| e.admin);
    Ok(placement::candidates(view, admin, 0))
}

/// Placement for a new extent while nodes in service are down (a 3+1 LUN
/// on four nodes, one of them dead): place as if they were alive, and
/// accept the answer if at most `m` of its nodes are down and the primary
/// (slot `k`) is not one of them — swapped with a live data slot if need
/// be. The primary cannot create the down nodes' chunks and marks them
/// missing, as a write does; they are rebuilt when their nodes return. A
/// stripe written degraded beats a LUN that cannot take new writes while
/// its old extents can.
fn place_degraded(
    cands: &[placement::Candidate],
    policy: &placement::Policy,
    key: ExtentKey,
    chunk_bytes: u64,
) -> Option<Vec<fabric::NodeId>> {
    use fabric::gossip::state::Availability;
    let down: Vec<fabric::NodeId> = cands
        .iter()
        .filter(|c| c.admin == AdminState::In && c.availability != Availability::Alive)
        .map(|c| c.node.clone())
        .collect();
    if down.is_empty() {
        return None;
    }
    let revived: Vec<placement::Candidate> = cands
        .iter()
        .cloned()
        .map(|mut c| {
            if down.contains(&c.node) {
                c.availability = Availability::Alive;
            }
            c
        })
        .collect();
    let mut nodes = placement::place(&revived, policy, key, chunk_bytes).ok()?;
    let k = policy.ec.k as usize;
    let is_down = |n: &fabric::NodeId| down.contains(n);
    if nodes.iter().filter(|n| is_down(n)).count() > policy.ec.m as usize {
        return None;
    }
    if nodes.get(k).is_some_and(is_down) {
        let live = nodes.iter().take(k).position(|n| !is_down(n))?;
        nodes.swap(live, k);
    }
    warn!(
        lun = key.lun,
        extent = key.index,
        ?down,
        "extent placed degraded: nodes down"
    );
    Some(nodes)
}

/// A new LUN's NAA IEEE Registered Extended designator (type 6: OUI then
/// 100 random bits) and a serial number made of the same random bits.
fn identifiers() -> ([u8; 16], String) {
    let mut naa = [0u8; 16];
    rand::rng().fill_bytes(&mut naa);
    let oui = NAA_OUI.to_be_bytes();
    // NAA 6 in the top nibble, then the 24-bit OUI.
    naa[0] = 0x60 | (oui[1] >> 4);
    naa[1] = (oui[1] << 4) | (oui[2] >> 4);
    naa[2] = (oui[2] << 4) | (oui[3] >> 4);
    naa[3] = (oui[3] << 4) | (naa[3] & 0x0f);
    let serial: String = naa[8..].iter().map(|b| format!("{b:02x}")).collect();
    (naa, serial)
}

/// After a LUN is deleted: ask each holder to delete its chunks. Best
/// effort: a holder that is down keeps an orphan chunk, which no extent
/// references; it deletes them itself when it is back (`crate::gc`).
pub fn free_chunks(client: Client, view: Option<std::sync::Arc<View>>, freed: Vec<Extent>) {
    let Some(view) = view else {
        warn!(
            extents = freed.len(),
            "LUN deleted with no view of the cluster: chunks not freed"
        );
        return;
    };
    tokio::spawn(async move {
        for e in freed {
            for (i, node) in e.nodes.iter().enumerate() {
                let Some(addr) = view.get(node).and_then(|n| n.addrs()) else {
                    continue;
                };
                let req = ChunkDeleteRequest {
                    chunk: ChunkRef {
                        lun: e.lun,
                        extent: e.index,
                        index: i as u8,
                    },
                    epoch: e.epoch,
                };
                let deadline = Instant::now() + std::time::Duration::from_secs(5);
                if let Err(err) = client
                    .call::<ChunkDelete>(addr.fabric, node, &req, bytes::Bytes::new(), deadline)
                    .await
                {
                    debug!(%node, chunk = %req.chunk, %err, "chunk not freed");
                }
            }
        }
    });
}
