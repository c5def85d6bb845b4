//! The primary's record of what each out-of-service chunk missed, so that
//! a holder that comes back is caught up with those ranges only instead of
//! the whole chunk rebuilt (DESIGN.md: "a short absence is caught up with
//! only the ranges it missed").
//!
//! A record may name more than the chunk missed, never less: a range left
//! out would leave the returning chunk holding old bytes that its parity no
//! longer covers. So it is trusted only when it was kept by this process,
//! through one unbroken lease, from before the chunk's first missed write
//! until now:
//!
//! - it is opened when a write to the chunk fails, before the chunk is
//!   marked missing, with that write's columns;
//! - every later write, punch or failed write of the extent adds its
//!   columns to the records of the chunks it skips, *before* any chunk
//!   sees it (a write cancelled half way is still covered);
//! - it is bound to the chunk's `since_epoch` once this primary has marked
//!   it missing, and used only while the metadata still names that epoch
//!   and that node: a chunk marked missing by anyone else (a takeover, a
//!   flush that failed, a move to another node) has no bound record and is
//!   rebuilt whole — except one marked by this primary's takeover from
//!   its holder, opened at that marking ([`Missed::taken_over`]): the
//!   writes the old primary had not finished are not in it, but the old
//!   primary's journal names their rows, and the catch-up adds them;
//! - it follows the extent's epoch through every change this primary
//!   makes to the extent's record, and is used only if the metadata's
//!   epoch is still the last one it followed: any change by another node
//!   (a takeover while this node's lease had lapsed, after which that node
//!   wrote) leaves it behind.

use std::collections::{BTreeMap, HashMap};

use fabric::metadata::{ChunkState, Extent};
use fabric::NodeId;
use parking_lot::Mutex;

/// Ranges kept per chunk; more, and the chunk is rebuilt whole (a record
/// that fragmented is no cheaper to replay than the chunk).
pub const RANGES_MAX: usize = 4096;

/// One out-of-service chunk's missed ranges (chunk offsets).
#[derive(Debug)]
struct Record {
    node: NodeId,
    /// The chunk's `since_epoch` once this primary has marked it missing.
    since_epoch: Option<u64>,
    /// The extent's epoch after the last change this primary made to its
    /// record since then.
    epoch: u64,
    /// Start → end, disjoint and not touching.
    ranges: BTreeMap<u64, u64>,
    /// Not to be trusted (too many ranges, or the chunk was marked missing
    /// twice): rebuild whole.
    whole: bool,
    /// Opened by this primary's takeover from the chunk's holder: the rows
    /// that holder's journal names must be caught up too.
    takeover: bool,
}

impl Record {
    fn add(&mut self, a: u64, b: u64) {
        if a >= b || self.whole {
            return;
        }
        let (mut a, mut b) = (a, b);
        // Merge with every range that overlaps or touches [a, b).
        let touching: Vec<u64> = self
            .ranges
            .range(..=b)
            .rev()
            .take_while(|(_, end)| **end >= a)
            .map(|(start, _)| *start)
            .collect();
        for start in touching {
            if let Some(end) = self.ranges.remove(&start) {
                a = a.min(start);
                b = b.max(end);
            }
        }
        self.ranges.insert(a, b);
        if self.ranges.len() > RANGES_MAX {
            self.whole = true;
            self.ranges.clear();
        }
    }
}

/// Records by `(lun, extent, slot)`.
#[derive(Default)]
pub struct Missed {
    records: Mutex<HashMap<(u64, u64, usize), Record>>,
}

impl Missed {
    /// `slots` of `e` did not take a write over chunk ranges `cols`: opens
    /// their records if need be (before they are marked missing).
    pub fn failed(&self, e: &Extent, slots: &[usize], cols: &[(u64, u64)]) {
        let mut records = self.records.lock();
        for &slot in slots {
            let Some(node) = e.nodes.get(slot) else {
                continue;
            };
            let r = records
                .entry((e.lun, e.index, slot))
                .or_insert_with(|| Record {
                    node: node.clone(),
                    since_epoch: None,
                    epoch: 0,
                    ranges: BTreeMap::new(),
                    whole: false,
                    takeover: false,
                });
            if r.node != *node {
                r.whole = true;
            }
            for &(a, b) in cols {
                r.add(a, b);
            }
        }
    }

    /// A write, punch or rebuild-free change over chunk ranges `cols` of
    /// `e` is about to go out: the chunks it skips (out of service) will
    /// miss it.
    pub fn skipped(&self, e: &Extent, cols: &[(u64, u64)]) {
        let mut records = self.records.lock();
        for (slot, st) in e.chunks.iter().enumerate() {
            if *st == ChunkState::Ok {
                continue;
            }
            if let Some(r) = records.get_mut(&(e.lun, e.index, slot)) {
                for &(a, b) in cols {
                    r.add(a, b);
                }
            }
        }
    }

    /// This primary has just marked `slots` of `e` missing: binds their
    /// open records to the epoch the metadata names. `before` is the
    /// extent's chunk states just before the marking (with the extent held
    /// alone): a slot that was out already was marked by someone else, and
    /// its record is trusted only if bound to that marking already.
    pub fn bind(&self, e: &Extent, before: &[ChunkState], slots: &[usize]) {
        let mut records = self.records.lock();
        for &slot in slots {
            let Some(r) = records.get_mut(&(e.lun, e.index, slot)) else {
                continue;
            };
            let Some(ChunkState::Missing { since_epoch }) = e.chunks.get(slot) else {
                continue;
            };
            let newly = before.get(slot) == Some(&ChunkState::Ok);
            match r.since_epoch {
                None if newly && *since_epoch > 0 => {
                    r.since_epoch = Some(*since_epoch);
                    r.epoch = e.epoch;
                }
                Some(s) if s == *since_epoch && r.epoch == e.epoch => {}
                _ => r.whole = true,
            }
        }
    }

    /// This primary changed the record of extent `(lun, index)` from epoch
    /// `from` to `to`: bound records that had followed it to `from` follow
    /// it on; the others missed a change made by another node.
    pub fn advanced(&self, lun: u64, index: u64, from: u64, to: u64) {
        for ((l, i, _), r) in self.records.lock().iter_mut() {
            if (*l, *i) != (lun, index) || r.since_epoch.is_none() {
                continue;
            }
            if r.epoch == from {
                r.epoch = to;
            } else {
                r.whole = true;
            }
        }
    }

    /// The chunk may have lost more than any record says (a flush failed):
    /// rebuild it whole.
    pub fn distrust(&self, e: &Extent, slots: &[usize]) {
        self.failed(e, slots, &[]);
        let mut records = self.records.lock();
        for &slot in slots {
            if let Some(r) = records.get_mut(&(e.lun, e.index, slot)) {
                r.whole = true;
                r.ranges.clear();
            }
        }
    }

    /// The ranges chunk `slot` of `e` missed, if the record can be trusted
    /// for the chunk as the metadata has it now; `None`: rebuild whole.
    pub fn ranges(&self, e: &Extent, slot: usize) -> Option<Vec<(u64, u64)>> {
        let records = self.records.lock();
        let r = records.get(&(e.lun, e.index, slot))?;
        let ChunkState::Missing { since_epoch } = e.chunks.get(slot)? else {
            return None;
        };
        if r.whole
            || r.since_epoch != Some(*since_epoch)
            || r.epoch != e.epoch
            || e.nodes.get(slot) != Some(&r.node)
        {
            return None;
        }
        Some(r.ranges.iter().map(|(a, b)| (*a, *b)).collect())
    }

    /// This primary has just taken `e` over and marked chunk `slot`, the
    /// old primary's, missing (`e` as the metadata has it after that): its
    /// record opens bound to that marking, empty.
    pub fn taken_over(&self, e: &Extent, slot: usize) {
        let (Some(node), Some(ChunkState::Missing { since_epoch })) =
            (e.nodes.get(slot), e.chunks.get(slot))
        else {
            return;
        };
        self.records.lock().insert(
            (e.lun, e.index, slot),
            Record {
                node: node.clone(),
                since_epoch: Some(*since_epoch),
                epoch: e.epoch,
                ranges: BTreeMap::new(),
                whole: false,
                takeover: true,
            },
        );
    }

    /// Whether the record of chunk `slot` of `e` was opened by a takeover
    /// ([`Self::taken_over`]): its ranges lack the rows the old primary
    /// left in doubt.
    pub fn opened_by_takeover(&self, e: &Extent, slot: usize) -> bool {
        self.records
            .lock()
            .get(&(e.lun, e.index, slot))
            .is_some_and(|r| r.takeover)
    }

    /// Chunk `slot` of extent `(lun, index)` is back in service (or gone).
    pub fn forget(&self, lun: u64, index: u64, slot: usize) {
        self.records.lock().remove(&(lun, index, slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(chunks: Vec<ChunkState>) -> Extent {
        let nodes = (0..chunks.len())
            .map(|i| NodeId::new(format!("n{i}")).unwrap())
            .collect();
        Extent {
            lun: 1,
            index: 0,
            epoch: 5,
            nodes,
            primary: 3,
            chunks,
        }
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let m = Missed::default();
        let e = extent(vec![ChunkState::Ok; 4]);
        m.failed(&e, &[1], &[(0, 4096), (8192, 12288)]);
        let mut e2 = e.clone();
        e2.chunks[1] = ChunkState::Missing { since_epoch: 6 };
        m.bind(&e2, &e.chunks, &[1]);
        m.skipped(&e2, &[(4096, 8192), (20480, 24576)]);
        assert_eq!(m.ranges(&e2, 1), Some(vec![(0, 12288), (20480, 24576)]));
    }

    #[test]
    fn only_a_record_bound_to_the_chunks_epoch_and_node_is_trusted() {
        let m = Missed::default();
        let e = extent(vec![ChunkState::Ok; 4]);
        // Marked missing by someone else: no record at all.
        let mut other = e.clone();
        other.chunks[0] = ChunkState::Missing { since_epoch: 6 };
        m.skipped(&other, &[(0, 4096)]);
        assert_eq!(m.ranges(&other, 0), None);
        // Opened but never bound (the marking failed).
        m.failed(&e, &[1], &[(0, 4096)]);
        let mut e2 = e.clone();
        e2.chunks[1] = ChunkState::Missing { since_epoch: 6 };
        assert_eq!(m.ranges(&e2, 1), None);
        m.bind(&e2, &e.chunks, &[1]);
        assert_eq!(m.ranges(&e2, 1), Some(vec![(0, 4096)]));
        // Moved to another node.
        let mut moved = e2.clone();
        moved.nodes[1] = NodeId::new("n9").unwrap();
        assert_eq!(m.ranges(&moved, 1), None);
        // Another marking, at another epoch.
        let mut later = e2.clone();
        later.chunks[1] = ChunkState::Missing { since_epoch: 9 };
        assert_eq!(m.ranges(&later, 1), None);
        m.bind(&later, &e.chunks, &[1]);
        assert_eq!(m.ranges(&e2, 1), None, "bound twice: not trusted");
        // A record opened by a write that failed after someone else (a
        // failed flush) had marked the chunk missing is not trusted.
        m.forget(1, 0, 1);
        m.failed(&e, &[1], &[(0, 4096)]);
        m.bind(&e2, &e2.chunks, &[1]);
        assert_eq!(m.ranges(&e2, 1), None);
    }

    #[test]
    fn a_takeover_opens_a_record_of_the_old_primarys_chunk_that_asks_for_its_doubts() {
        let m = Missed::default();
        // Taken over at epoch 6: the old primary's chunk 3 marked missing.
        let mut e = extent(vec![ChunkState::Ok; 4]);
        e.epoch = 6;
        e.chunks[3] = ChunkState::Missing { since_epoch: 6 };
        assert!(!m.opened_by_takeover(&e, 3));
        m.taken_over(&e, 3);
        assert!(m.opened_by_takeover(&e, 3));
        assert_eq!(m.ranges(&e, 3), Some(vec![]));
        m.skipped(&e, &[(0, 4096)]);
        m.advanced(1, 0, 6, 7);
        e.epoch = 7;
        assert_eq!(m.ranges(&e, 3), Some(vec![(0, 4096)]));
        // A change made elsewhere since: rebuilt whole after all.
        e.epoch = 9;
        assert_eq!(m.ranges(&e, 3), None);
        // A chunk that was out already is not the takeover's to record.
        let mut out = extent(vec![ChunkState::Ok; 4]);
        out.chunks[2] = ChunkState::Missing { since_epoch: 3 };
        m.taken_over(&out, 1);
        assert!(!m.opened_by_takeover(&out, 1));
        m.forget(1, 0, 3);
        assert!(!m.opened_by_takeover(&e, 3));
    }

    #[test]
    fn a_failed_flush_a_change_made_elsewhere_or_too_many_ranges_mean_a_whole_rebuild() {
        let m = Missed::default();
        let e = extent(vec![ChunkState::Ok; 4]);
        let mut e2 = e.clone();
        e2.chunks[2] = ChunkState::Missing { since_epoch: 6 };
        m.failed(&e, &[2], &[(0, 4096)]);
        m.bind(&e2, &e.chunks, &[2]);
        m.distrust(&e2, &[2]);
        assert_eq!(m.ranges(&e2, 2), None);

        m.forget(1, 0, 2);
        m.failed(&e, &[2], &[(0, 4096)]);
        m.bind(&e2, &e.chunks, &[2]);
        // Changes this primary made follow; one made elsewhere does not.
        m.advanced(1, 0, 5, 6);
        let mut e3 = e2.clone();
        e3.epoch = 6;
        assert_eq!(m.ranges(&e3, 2), Some(vec![(0, 4096)]));
        e3.epoch = 8;
        assert_eq!(m.ranges(&e3, 2), None, "changed by another node");
        m.advanced(1, 0, 7, 8);
        assert_eq!(m.ranges(&e3, 2), None, "a change in between was missed");

        m.forget(1, 0, 2);
        m.failed(&e, &[2], &[]);
        m.bind(&e2, &e.chunks, &[2]);
        for i in 0..RANGES_MAX as u64 {
            m.skipped(&e2, &[(i * 8192, i * 8192 + 4096)]);
        }
        assert_eq!(m.ranges(&e2, 2).map(|r| r.len()), Some(RANGES_MAX));
        m.skipped(&e2, &[(u64::MAX - 4096, u64::MAX)]);
        assert_eq!(m.ranges(&e2, 2), None);
    }
}
