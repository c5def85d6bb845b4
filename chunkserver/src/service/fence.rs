//! Chunks this node must not serve to gateways at an old epoch.
//!
//! A chunk is recorded missing only once its holder's lease has lapsed, so
//! a holder that was away can come back holding a chunk the metadata no
//! longer counts as in service: it missed writes. The store's own epoch
//! for that chunk is still the old one (nobody could tell it), so a gateway
//! whose cached extent is as old would be served the stale bytes
//! (weft-sim seed 292). Before such a node serves again (a new lease after
//! one that lapsed, or the first after a start), the lease agent reads its
//! chunks' records from the metadata and fences every chunk that is not
//! `Ok` there, or is no longer this node's: a gateway read naming an epoch
//! older than the extent's epoch at that time is refused as stale, and the
//! gateway reads around it (through the primary) and refreshes its extent.
//! A gateway at that epoch or newer already knows the chunk is out of
//! service, or it has been rebuilt since.
//!
//! The fences live in memory: every start begins without a lease, so the
//! agent fences again before anything is served.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::store::{ChunkId, StoreError};

/// The epoch below which each fenced chunk is not served to gateways.
#[derive(Debug, Default)]
pub struct Fences {
    min_epoch: RwLock<HashMap<ChunkId, u64>>,
}

impl Fences {
    /// Replaces every fence (the agent computes the whole set each time).
    pub fn replace(&self, fences: HashMap<ChunkId, u64>) {
        *self.min_epoch.write() = fences;
    }

    /// How many chunks are fenced.
    pub fn len(&self) -> usize {
        self.min_epoch.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses a gateway's request for `id` at `epoch` if it is fenced
    /// above it.
    pub fn check(&self, id: ChunkId, epoch: u64) -> Result<(), StoreError> {
        match self.min_epoch.read().get(&id) {
            Some(&have) if epoch < have => Err(StoreError::StaleEpoch {
                id,
                have,
                got: epoch,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(extent: u64) -> ChunkId {
        ChunkId {
            lun: 1,
            extent,
            index: 0,
        }
    }

    #[test]
    fn refuses_only_older_epochs_of_fenced_chunks() {
        let f = Fences::default();
        f.replace(HashMap::from([(id(1), 3)]));
        assert!(matches!(
            f.check(id(1), 2),
            Err(StoreError::StaleEpoch {
                have: 3,
                got: 2,
                ..
            })
        ));
        assert!(f.check(id(1), 3).is_ok());
        assert!(f.check(id(1), 4).is_ok());
        assert!(f.check(id(2), 0).is_ok());
        f.replace(HashMap::new());
        assert!(f.check(id(1), 0).is_ok());
    }
}
