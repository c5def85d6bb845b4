//! Where a LUN's bytes live: LUN offset → extent → stripe row → data
//! chunk and chunk offset. Pure arithmetic, shared by the volume client
//! and the extent primary.
//!
//! An extent holds `k × chunk_bytes` of the LUN. Within it, stripe unit
//! `U` rotates over the `k` data chunks: extent offset `o` lies in row
//! `o / (k·U)`, on data chunk `(o mod k·U) / U`, at chunk offset
//! `row·U + o mod U`. Parity of row `r` is at chunk offset `r·U` of each
//! parity chunk. Consecutive rows of one chunk are adjacent in the chunk,
//! so a contiguous LUN range touches one contiguous range of each chunk.

use crate::metadata::Lun;

/// Checksum block of the chunk store: chunk I/O is aligned to it.
pub const CHUNK_BLOCK: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub k: u64,
    pub m: u64,
    pub chunk_bytes: u64,
    pub unit: u64,
}

/// Part of a request that falls in one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtentSpan {
    pub extent: u64,
    /// Offset within the extent.
    pub offset: u64,
    pub len: u64,
    /// Offset of this part in the caller's buffer.
    pub buf: u64,
}

/// One contiguous piece of one data chunk: `len` bytes at `chunk_off`,
/// coming from (or going to) `buf` in the extent-relative buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub chunk: u64,
    pub chunk_off: u64,
    pub len: u64,
    pub buf: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("invalid layout: {0}")]
    Invalid(String),
}

impl Layout {
    pub fn of(lun: &Lun) -> Result<Layout, LayoutError> {
        Layout::new(
            u64::from(lun.policy.ec.k),
            u64::from(lun.policy.ec.m),
            lun.chunk_bytes,
            u64::from(lun.stripe_unit),
        )
    }

    pub fn new(k: u64, m: u64, chunk_bytes: u64, unit: u64) -> Result<Layout, LayoutError> {
        let bad = |s: String| Err(LayoutError::Invalid(s));
        if k == 0 || k > 16 || m > 4 {
            return bad(format!("{k}+{m}"));
        }
        if unit == 0 || !unit.is_multiple_of(CHUNK_BLOCK) {
            return bad(format!(
                "stripe unit {unit} is not a multiple of {CHUNK_BLOCK}"
            ));
        }
        if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(unit) {
            return bad(format!(
                "chunk size {chunk_bytes} is not a multiple of the unit {unit}"
            ));
        }
        Ok(Layout {
            k,
            m,
            chunk_bytes,
            unit,
        })
    }

    pub fn width(&self) -> usize {
        (self.k + self.m) as usize
    }
    pub fn extent_bytes(&self) -> u64 {
        self.k * self.chunk_bytes
    }
    pub fn row_bytes(&self) -> u64 {
        self.k * self.unit
    }

    /// Splits the LUN range `[offset, offset+len)` by extent.
    pub fn extents(&self, offset: u64, len: u64) -> Vec<ExtentSpan> {
        let eb = self.extent_bytes();
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset.saturating_add(len);
        while pos < end {
            let extent = pos / eb;
            let off = pos % eb;
            let n = (eb - off).min(end - pos);
            out.push(ExtentSpan {
                extent,
                offset: off,
                len: n,
                buf: pos - offset,
            });
            pos += n;
        }
        out
    }

    /// Splits the extent range `[offset, offset+len)` into pieces of
    /// single stripe units, in order.
    pub fn pieces(&self, offset: u64, len: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset.saturating_add(len).min(self.extent_bytes());
        while pos < end {
            let row = pos / self.row_bytes();
            let in_row = pos % self.row_bytes();
            let chunk = in_row / self.unit;
            let in_unit = in_row % self.unit;
            let n = (self.unit - in_unit).min(end - pos);
            out.push(Piece {
                chunk,
                chunk_off: row * self.unit + in_unit,
                len: n,
                buf: pos - offset,
            });
            pos += n;
        }
        out
    }

    /// The range of each data chunk that `[offset, offset+len)` touches
    /// (`None` for chunks it does not), as `(start, end)` chunk offsets.
    pub fn chunk_ranges(&self, offset: u64, len: u64) -> Vec<Option<(u64, u64)>> {
        let mut r: Vec<Option<(u64, u64)>> = vec![None; self.k as usize];
        for p in self.pieces(offset, len) {
            if let Some(slot) = r.get_mut(p.chunk as usize) {
                let (a, b) = slot.unwrap_or((p.chunk_off, p.chunk_off));
                *slot = Some((a.min(p.chunk_off), b.max(p.chunk_off + p.len)));
            }
        }
        r
    }
}

/// `[a, b)` widened to whole chunk blocks.
pub fn align(a: u64, b: u64) -> (u64, u64) {
    (a - a % CHUNK_BLOCK, b.div_ceil(CHUNK_BLOCK) * CHUNK_BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l() -> Layout {
        Layout::new(3, 1, 1 << 20, 64 << 10).unwrap()
    }

    #[test]
    fn pieces_cover_the_range_once_and_map_back() {
        let l = l();
        for (off, len) in [(0, 4096), (65_000, 200_000), (0, 3 << 20), (123, 1)] {
            let ps = l.pieces(off, len);
            let total: u64 = ps.iter().map(|p| p.len).sum();
            assert_eq!(total, len.min(l.extent_bytes() - off));
            for p in ps {
                // Map the chunk offset back to the extent offset.
                let row = p.chunk_off / l.unit;
                let back = row * l.row_bytes() + p.chunk * l.unit + p.chunk_off % l.unit;
                assert_eq!(back, off + p.buf);
            }
        }
    }

    #[test]
    fn a_contiguous_range_touches_each_chunk_contiguously() {
        let l = l();
        let (off, len) = (100_000, 500_000);
        let ranges = l.chunk_ranges(off, len);
        for (j, r) in ranges.iter().enumerate() {
            let (a, b) = r.unwrap();
            let sum: u64 = l
                .pieces(off, len)
                .iter()
                .filter(|p| p.chunk == j as u64)
                .map(|p| p.len)
                .sum();
            assert_eq!(b - a, sum, "chunk {j} range has a hole");
        }
    }

    #[test]
    fn extents_split_at_boundaries() {
        let l = l();
        let eb = l.extent_bytes();
        let s = l.extents(eb - 10, 30);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].extent, s[0].offset, s[0].len, s[0].buf),
            (0, eb - 10, 10, 0)
        );
        assert_eq!(
            (s[1].extent, s[1].offset, s[1].len, s[1].buf),
            (1, 0, 20, 10)
        );
    }
}
