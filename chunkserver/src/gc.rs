//! Garbage collection of chunk files this node no longer holds for any
//! extent: a chunk moved to another node (its holder stayed away, or was
//! drained) once it is in service there, and the chunks of a LUN deleted
//! while this node was down. The fence (`service::fence`) already keeps
//! them from being served; this gives their space back.
//!
//! A file is deleted only on two readings of the metadata (linearizable,
//! from the leader): the paged scan that finds it, then a read of its
//! extent alone just before the delete. Nothing can put a chunk back on
//! this node between the second reading and the delete without a metadata
//! change the second reading would have seen first (a move back is proposed
//! before any rebuild starts writing to it). A chunk moved away but not yet
//! rebuilt on its new node is kept: it is not needed, but deleting it
//! gains nothing a few seconds later is not also gained.

use std::sync::Arc;
use std::time::Duration;

use fabric::metadata::{ChunkState, Extent, ReadReply, ReadRequest};
use fabric::NodeId;
use tracing::{debug, info, warn};

use crate::meta::agent::fence_chunks;
use crate::meta::Meta;
use crate::store::{ChunkId, ChunkStore};

/// Why a chunk file is no longer this node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orphan {
    /// Its extent (so its LUN) is gone.
    Gone,
    /// Its slot is on another node, in service there.
    Moved,
}

/// Whether chunk `id`, held here, is garbage given its extent as the
/// metadata has it (`None`: no such extent).
pub fn orphan(me: &NodeId, id: ChunkId, extent: Option<&Extent>) -> Option<Orphan> {
    let Some(e) = extent else {
        return Some(Orphan::Gone);
    };
    let slot = usize::from(id.index);
    match (e.nodes.get(slot), e.chunks.get(slot)) {
        (Some(holder), Some(ChunkState::Ok)) if holder != me => Some(Orphan::Moved),
        // Out of range: the extent has no such slot (a LUN re-created
        // with another profile under the same id cannot happen; ids are
        // never reused), so this file was never one of its chunks.
        (None, _) => Some(Orphan::Gone),
        _ => None,
    }
}

/// One pass: deletes the chunk files the metadata gives to no one here.
/// Returns how many were deleted.
pub async fn collect_once(meta: &Meta, me: &NodeId, store: &ChunkStore) -> usize {
    // The fenced chunks (out of service here, moved, or gone) are the
    // candidates: the chunks listed once, by the fence.
    let (fenced, extents) = match fence_chunks(meta, me, store).await {
        Ok(f) => f,
        Err(e) => {
            debug!(%e, "chunk garbage collection: metadata unreadable; next time");
            return 0;
        }
    };
    let mut deleted = 0;
    // In id order, as the store lists them (a run of `weft-sim` must not
    // depend on a hash map's order).
    let mut candidates: Vec<ChunkId> = fenced.into_keys().collect();
    candidates.sort_unstable();
    for id in candidates {
        if orphan(me, id, extents.get(&(id.lun, id.extent))).is_none() {
            continue;
        }
        // Read again, alone, just before the delete.
        let fresh = match meta
            .read(
                ReadRequest::Extent {
                    lun: id.lun,
                    index: id.extent,
                },
                0,
            )
            .await
        {
            Ok(ReadReply::Extent(e)) => e,
            _ => continue,
        };
        let Some(why) = orphan(me, id, fresh.as_ref()) else {
            continue;
        };
        let bytes = store.info(id).map_or(0, |i| i.allocated_bytes);
        match store.delete(id).await {
            Ok(()) => {
                deleted += 1;
                info!(chunk = %id, ?why, bytes,
                    "chunk file deleted: this node no longer holds it");
            }
            Err(e) => warn!(chunk = %id, %e, "deleting a chunk this node no longer holds"),
        }
    }
    deleted
}

/// Runs [`collect_once`] every `every`.
pub fn spawn(
    meta: Arc<Meta>,
    me: NodeId,
    store: Arc<ChunkStore>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            collect_once(&meta, &me, &store).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chunks_gone_or_in_service_elsewhere_are_garbage() {
        let me = NodeId::new("cs-1").unwrap();
        let other = NodeId::new("cs-9").unwrap();
        let e = Extent {
            lun: 1,
            index: 0,
            nodes: vec![me.clone(), other.clone(), other.clone(), me.clone()],
            primary: 3,
            epoch: 7,
            chunks: vec![
                ChunkState::Missing { since_epoch: 6 },
                ChunkState::Ok,
                ChunkState::Missing { since_epoch: 0 },
                ChunkState::Ok,
            ],
        };
        let id = |index| ChunkId {
            lun: 1,
            extent: 0,
            index,
        };
        // Mine, even out of service: kept.
        assert_eq!(orphan(&me, id(0), Some(&e)), None);
        assert_eq!(orphan(&me, id(3), Some(&e)), None);
        // Moved, in service there: garbage.
        assert_eq!(orphan(&me, id(1), Some(&e)), Some(Orphan::Moved));
        // Moved, not rebuilt there yet: kept for now.
        assert_eq!(orphan(&me, id(2), Some(&e)), None);
        // No such slot, or no such extent.
        assert_eq!(orphan(&me, id(4), Some(&e)), Some(Orphan::Gone));
        assert_eq!(orphan(&me, id(0), None), Some(Orphan::Gone));
    }
}
