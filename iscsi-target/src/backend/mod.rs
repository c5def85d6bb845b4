//! Block storage behind a logical unit.
//!
//! The SCSI layer speaks only to [`BlockDevice`]; the standalone gateway uses
//! the RAM and file backends here, the cluster gateway a volume client from
//! `fabric`. Addresses are in logical blocks of [`BlockDevice::block_size`].

mod file;
mod ram;

pub use file::FileDevice;
pub use ram::RamDevice;

use async_trait::async_trait;
use bytes::Bytes;

/// Why a backend operation failed. Mapped to sense data once, in the SCSI layer.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("LBA range {lba}+{blocks} is beyond the device's {num_blocks} blocks")]
    OutOfRange {
        lba: u64,
        blocks: u64,
        num_blocks: u64,
    },
    /// COMPARE AND WRITE found different data; `offset` is the byte offset of
    /// the first differing byte within the compared range.
    #[error("miscompare at byte offset {offset}")]
    Miscompare { offset: u64 },
    #[error("data length {len} is not a whole number of {block_size}-byte blocks")]
    Misaligned { len: usize, block_size: u32 },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The device cannot serve right now but may later (the initiator should retry).
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

/// Whether a range of blocks is backed by storage (GET LBA STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisioningStatus {
    Mapped,
    Deallocated,
}

/// A run of blocks with one provisioning status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaStatus {
    pub lba: u64,
    pub blocks: u64,
    pub status: ProvisioningStatus,
}

/// An array of fixed-size logical blocks.
///
/// Every method may be called concurrently. A write that returns `Ok` must be
/// readable by any later read; with `fua` (and after `flush`) it must also
/// survive power loss.
#[async_trait]
pub trait BlockDevice: Send + Sync + 'static {
    /// Logical block size in bytes: 512 or 4096.
    fn block_size(&self) -> u32;

    /// Number of logical blocks.
    fn num_blocks(&self) -> u64;

    /// Whether unmapped blocks read back as zeroes (READ CAPACITY(16) LBPRZ).
    fn unmap_reads_zeroes(&self) -> bool {
        true
    }

    /// Reads `blocks` blocks starting at `lba`.
    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BlockError>;

    /// Writes `data` (a whole number of blocks) at `lba`. With `fua`, returns
    /// only once the data is on stable storage.
    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), BlockError>;

    /// Makes every completed write durable.
    async fn flush(&self) -> Result<(), BlockError>;

    /// Deallocates `blocks` blocks at `lba`; they then read as zeroes.
    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError>;

    /// Atomically compares the blocks at `lba` with `compare` and, only if
    /// they are equal, writes `write` (same length) there. No other write to
    /// the range can interleave.
    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<(), BlockError>;

    /// Provisioning status of the blocks starting at `lba` (at least one run).
    async fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        check_range(lba, 1, self.num_blocks())?;
        Ok(LbaStatus {
            lba,
            blocks: self.num_blocks() - lba,
            status: ProvisioningStatus::Mapped,
        })
    }
}

/// Checks that `lba + blocks` lies within a device of `num_blocks` blocks.
pub fn check_range(lba: u64, blocks: u64, num_blocks: u64) -> Result<(), BlockError> {
    match lba.checked_add(blocks) {
        Some(end) if end <= num_blocks => Ok(()),
        _ => Err(BlockError::OutOfRange {
            lba,
            blocks,
            num_blocks,
        }),
    }
}

/// Byte offset of the first difference between `a` and `b`, if any.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    a.iter()
        .zip(b.iter())
        .position(|(x, y)| x != y)
        .map(|p| p as u64)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len()) as u64))
}

/// Parses a size such as `1G`, `512M`, `4096`, `2T` (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        (i, 'T' | 't') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("1G", Some(1u64 << 30)),
            ("512M", Some(512 << 20)),
            ("4096", Some(4096)),
            ("", None),
            ("G", None),
            ("99999999999T", None),
            ("1.5G", None),
        ] {
            assert_eq!(parse_size(s), want, "{s}");
        }
    }

    #[test]
    fn differences() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"ab", b"abd"), Some(2));
    }
}
