//! The checker: what every acknowledged write must look like on a later
//! read (DESIGN.md's first two invariants), and the run's trace.
//!
//! Each 4 KiB block written carries its write's id, its block number and a
//! pattern derived from both, so a read tells which write it returns and
//! whether the bytes are intact. Each window is written by one gateway, one
//! operation at a time, so the writes to a block are totally ordered; events
//! get a logical time from one counter (every host runs on one thread).
//!
//! A read that starts at `rs` and ends at `re` may return, for each block:
//! the last write acknowledged before `rs` (or zeroes if none), or any
//! later write that started before `re` (in flight, or failed: a failed
//! write may or may not have landed). Anything else — older data, another
//! block's data, corrupt bytes — is a violation.

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub const BLOCK: u64 = 4096;

/// One write of one block, as the model saw it.
#[derive(Clone, Copy, Debug)]
struct WriteRec {
    id: u64,
    start: u64,
    /// Logical time of the answer, and whether it was an acknowledgement.
    end: Option<(u64, bool)>,
}

/// What the run did, for the seed's line.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub hash: u64,
    pub steps: u64,
    pub writes: u64,
    pub writes_acked: u64,
    pub reads: u64,
    pub reads_ok: u64,
    pub faults: u64,
}

#[derive(Debug, Default)]
pub struct Totals {
    pub writes_acked: u64,
    pub reads_ok: u64,
    pub faults: u64,
}

impl Totals {
    pub fn add(&mut self, r: &Report) {
        self.writes_acked += r.writes_acked;
        self.reads_ok += r.reads_ok;
        self.faults += r.faults;
    }
}

/// The model of the LUN's contents, the trace, and the first violation.
#[derive(Default)]
pub struct Model {
    clock: u64,
    next_id: u64,
    blocks: BTreeMap<u64, Vec<WriteRec>>,
    hash: u64,
    pub trace: bool,
    pub violation: Option<String>,
    pub report: Report,
}

/// FNV-1a over the trace: two runs of a seed must give the same value.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    if h == 0 {
        h = 0xcbf2_9ce4_8422_2325;
    }
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The bytes of block `block` as written by write `id` (id 0: never
/// written, zeroes). The filler is SplitMix64, which is not linear over
/// XOR: a block rebuilt from the wrong parity is the XOR of other blocks,
/// and with a linear filler (xorshift) such a XOR can itself look like a
/// valid block of another write.
pub fn pattern(id: u64, block: u64, out: &mut [u8]) {
    if id == 0 {
        out.fill(0);
        return;
    }
    out[0..8].copy_from_slice(&id.to_le_bytes());
    out[8..16].copy_from_slice(&block.to_le_bytes());
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ block.rotate_left(32);
    for chunk in out[16..].chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let b = z.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

impl Model {
    pub fn now(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Records an event in the trace (and prints it with `--trace`).
    pub fn event(&mut self, step: u64, what: &str) {
        let line = format!("{step} {what}");
        self.hash = fnv(self.hash, line.as_bytes());
        self.hash = fnv(self.hash, b"\n");
        if self.trace {
            println!("  {line}");
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn fail(&mut self, why: String) {
        if self.violation.is_none() {
            self.violation = Some(why);
        }
    }

    /// A write of `blocks` blocks from `first` begins: returns its id, its
    /// start time and its data.
    pub fn begin_write(&mut self, first: u64, blocks: u64) -> (u64, u64, Vec<u8>) {
        self.next_id += 1;
        let id = self.next_id;
        let start = self.now();
        let mut data = vec![0u8; (blocks * BLOCK) as usize];
        for (i, b) in data.chunks_mut(BLOCK as usize).enumerate() {
            pattern(id, first + i as u64, b);
        }
        for b in first..first + blocks {
            self.blocks.entry(b).or_default().push(WriteRec {
                id,
                start,
                end: None,
            });
        }
        self.report.writes += 1;
        (id, start, data)
    }

    pub fn end_write(&mut self, id: u64, first: u64, blocks: u64, ok: bool) {
        let end = self.now();
        for b in first..first + blocks {
            if let Some(w) = self
                .blocks
                .get_mut(&b)
                .and_then(|v| v.iter_mut().rev().find(|w| w.id == id))
            {
                w.end = Some((end, ok));
            }
        }
        if ok {
            self.report.writes_acked += 1;
        }
    }

    /// Checks a read of `data` at block `first` that started at `start`
    /// and answered now. `strict`: no write may be in flight or failed
    /// (the final check, after the faults).
    pub fn check_read(&mut self, who: &str, first: u64, start: u64, data: &[u8]) {
        let end = self.now();
        self.report.reads_ok += 1;
        let mut want = vec![0u8; BLOCK as usize];
        for (i, got) in data.chunks(BLOCK as usize).enumerate() {
            let block = first + i as u64;
            let id = if got.iter().all(|b| *b == 0) {
                0
            } else {
                let mut a = [0u8; 8];
                a.copy_from_slice(&got[0..8]);
                u64::from_le_bytes(a)
            };
            pattern(id, block, &mut want);
            if got != want.as_slice() {
                let mut bb = [0u8; 8];
                bb.copy_from_slice(&got[8..16]);
                let other = u64::from_le_bytes(bb);
                self.fail(format!(
                    "{who}: block {block} read corrupt or misplaced bytes (header says write {id}, block {other})"
                ));
                return;
            }
            let hist = self.blocks.get(&block).map(Vec::as_slice).unwrap_or(&[]);
            // The last write acknowledged before the read started.
            let floor = hist
                .iter()
                .rposition(|w| matches!(w.end, Some((e, true)) if e < start));
            let base_id = floor.map_or(0, |i| hist[i].id);
            let later = &hist[floor.map_or(0, |i| i + 1)..];
            let allowed = id == base_id || later.iter().any(|w| w.id == id && w.start < end);
            if !allowed {
                let mut desc = String::new();
                for w in hist {
                    let _ = write!(desc, " [write {} start {} end {:?}]", w.id, w.start, w.end);
                }
                let begun = self.next_id;
                let (lo, hi) = self
                    .blocks
                    .iter()
                    .filter(|(_, h)| h.iter().any(|w| w.id == id))
                    .fold((u64::MAX, 0), |(lo, hi), (b, _)| (lo.min(*b), hi.max(*b)));
                let _ = write!(desc, "; write {id} covers blocks {lo}..={hi}");
                self.fail(format!(
                    "{who}: block {block} read write {id} in a read [{start}, {end}]; \
                     the last acknowledged write before it is {base_id} ({begun} writes begun); history:{desc}"
                ));
                return;
            }
        }
    }
}
