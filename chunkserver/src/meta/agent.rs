//! This chunkserver's standing with the metadata: it registers once, then
//! renews its lease every third of the lease time. The data path serves
//! an extent only while [`Lease::valid`] says so.
//!
//! A lease granted while this node was not serving (the first one after a
//! start, or one after a lapse) is published only once the node's chunks
//! have been checked against the metadata ([`fence_chunks`]): while it was
//! away some may have been recorded missing, and it must not serve those
//! to gateways that have not heard (`service::fence`). The check reads the
//! metadata after the grant, and no chunk of a node can be recorded missing
//! while its lease is valid, so it sees every such record.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fabric::metadata::rpc::EXTENTS_PER_PAGE_MAX;
use fabric::metadata::{ChunkState, Command, Extent, MetaError, Outcome, ReadReply, ReadRequest};
use fabric::NodeId;
use tracing::{info, warn};

use super::prepare::now_ms;
use super::raft_rpc::Origin;
use super::Meta;
use crate::primary::Primary;
use crate::service::{Fences, LEASE_MARGIN_MS};
use crate::store::{ChunkId, ChunkStore};

/// The lease this node holds, as wall-clock milliseconds.
#[derive(Debug, Default)]
pub struct Lease {
    expires_ms: AtomicU64,
}

impl Lease {
    /// Whether the lease is valid now, with `margin_ms` to spare for clock
    /// skew between this node and the leader that granted it.
    pub fn valid(&self, margin_ms: u64) -> bool {
        now_ms().saturating_add(margin_ms) < self.expires_ms.load(Ordering::Relaxed)
    }
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms.load(Ordering::Relaxed)
    }
}

/// What a newly granted lease must bring up to date before it is
/// published.
pub struct Serving {
    pub store: Arc<ChunkStore>,
    pub fences: Arc<Fences>,
    /// Its cache of extents may predate the absence.
    pub primary: Option<Arc<Primary>>,
}

/// Registers `me` and keeps `lease` renewed, for as long as the task
/// runs.
pub fn spawn(
    meta: Arc<Meta>,
    me: NodeId,
    lease: Arc<Lease>,
    serving: Serving,
) -> tokio::task::JoinHandle<()> {
    let l = lease;
    tokio::spawn(async move {
        let every = Duration::from_millis((meta.lease_ms() / 3).max(100));
        loop {
            let r = meta
                .write(
                    Origin::Node,
                    Command::RegisterNode {
                        node: me.clone(),
                        now_ms: 0,
                    },
                    0,
                )
                .await;
            match r {
                Ok(_) => {
                    info!(node = %me, "registered with the metadata");
                    break;
                }
                Err(e) => warn!(%e, "registering with the metadata; retrying"),
            }
            tokio::time::sleep(every).await;
        }
        loop {
            match meta
                .write(
                    Origin::Node,
                    Command::RenewLease {
                        node: me.clone(),
                        expires_ms: 0,
                    },
                    0,
                )
                .await
            {
                Ok(r) => {
                    if let Outcome::Lease(g) = r.outcome {
                        if l.valid(LEASE_MARGIN_MS) || resume(&meta, &me, &serving).await {
                            l.expires_ms.store(g.expires_ms, Ordering::Relaxed);
                        }
                    }
                }
                Err(e) => warn!(%e, "lease renewal failed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// Brings the node's serving state up to date after a lease was granted
/// while it was not serving; false (not serving yet) if the metadata could
/// not be read.
async fn resume(meta: &Meta, me: &NodeId, serving: &Serving) -> bool {
    let (fences, extents) = match fence_chunks(meta, me, &serving.store).await {
        Ok(f) => f,
        Err(e) => {
            warn!(%e, "lease granted, but this node's chunks could not be checked: not serving yet");
            return false;
        }
    };
    if !fences.is_empty() {
        info!(
            chunks = fences.len(),
            "chunks out of service in the metadata: not served to gateways until rebuilt"
        );
    }
    serving.fences.replace(fences);
    if let Some(p) = &serving.primary {
        p.refresh_cached(&extents);
    }
    true
}

/// For every chunk in `store`, the epoch below which gateways must not be
/// served it: the extent's epoch if the metadata has the chunk out of
/// service or on another node, `u64::MAX` if the extent is gone. Also the
/// extents read, for the primary's cache.
pub async fn fence_chunks(
    meta: &Meta,
    me: &NodeId,
    store: &ChunkStore,
) -> Result<(HashMap<ChunkId, u64>, ExtentMap), MetaError> {
    let held = store.list();
    let luns: BTreeSet<u64> = held.iter().map(|c| c.id.lun).collect();
    let mut extents: HashMap<(u64, u64), Extent> = HashMap::new();
    for lun in luns {
        let mut from = 0;
        loop {
            let page = match meta
                .read(
                    ReadRequest::Extents {
                        lun,
                        from,
                        max: EXTENTS_PER_PAGE_MAX,
                    },
                    0,
                )
                .await?
            {
                ReadReply::Extents(page) => page,
                _ => return Err(MetaError::Unavailable("unexpected metadata reply".into())),
            };
            let Some(last) = page.last().map(|e| e.index) else {
                break;
            };
            let full = page.len() >= EXTENTS_PER_PAGE_MAX as usize;
            extents.extend(page.into_iter().map(|e| ((e.lun, e.index), e)));
            if !full {
                break;
            }
            from = last.saturating_add(1);
        }
    }
    let fences = fences_of(me, held.iter().map(|c| c.id), &extents);
    Ok((fences, extents))
}

/// Extents by (lun, index).
pub type ExtentMap = HashMap<(u64, u64), Extent>;

/// The pure part of [`fence_chunks`].
fn fences_of(
    me: &NodeId,
    held: impl Iterator<Item = ChunkId>,
    extents: &HashMap<(u64, u64), Extent>,
) -> HashMap<ChunkId, u64> {
    held.filter_map(|id| {
        let Some(e) = extents.get(&(id.lun, id.extent)) else {
            return Some((id, u64::MAX));
        };
        let slot = usize::from(id.index);
        let mine = e.nodes.get(slot) == Some(me);
        let in_service = e.chunks.get(slot) == Some(&ChunkState::Ok);
        (!(mine && in_service)).then_some((id, e.epoch))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn fences_chunks_out_of_service_moved_or_gone() {
        let me = node("cs-1");
        let other = node("cs-9");
        let e = Extent {
            lun: 1,
            index: 0,
            nodes: vec![me.clone(), me.clone(), other.clone(), me.clone()],
            primary: 3,
            epoch: 7,
            chunks: vec![
                ChunkState::Ok,
                ChunkState::Missing { since_epoch: 6 },
                ChunkState::Ok,
                ChunkState::Ok,
            ],
        };
        let extents = HashMap::from([((1, 0), e)]);
        let id = |extent, index| ChunkId {
            lun: 1,
            extent,
            index,
        };
        let held = [id(0, 0), id(0, 1), id(0, 2), id(0, 3), id(5, 0)];
        let f = fences_of(&me, held.into_iter(), &extents);
        assert_eq!(
            f,
            HashMap::from([(id(0, 1), 7), (id(0, 2), 7), (id(5, 0), u64::MAX)])
        );
    }
}
