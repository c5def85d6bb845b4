//! One chunk file: data blocks and their checksum table in one sparse file,
//! so that one `fdatasync` makes both durable.
//!
//! ```text
//! [0, size)                      data, block b at b * BLOCK_BYTES
//! [table, table + 8 * blocks)    entry b = { prev: u32 LE, cur: u32 LE }
//! table = round_up(size, CRC_TABLE_ALIGN_BYTES)
//! ```
//!
//! A stored checksum is `crc32c(block) ^ crc32c(zero block)`, so an entry
//! never written (reads as zero) is exactly the checksum of a never-written
//! block (reads as zeroes): holes verify with no special case. A block is
//! valid when its stored-form checksum equals `cur` or `prev`: a mutation
//! writes `{prev: old, cur: new}` *before* the data, so a process killed
//! between the two leaves old data that still verifies, and any torn mix
//! matches neither (see docs/chunk-store.md, crash safety).
//!
//! All functions here block; callers run them in `spawn_blocking`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::LazyLock;

use super::BLOCK_BYTES;

/// Alignment of the checksum table's start within the chunk file.
pub const CRC_TABLE_ALIGN_BYTES: u64 = 1 << 20;
/// Bytes per checksum-table entry (prev + cur).
pub const CRC_ENTRY_BYTES: u64 = 8;

static ZERO_BLOCK_CRC: LazyLock<u32> =
    LazyLock::new(|| crc32c::crc32c(&[0u8; BLOCK_BYTES as usize]));

/// Stored form of a block's checksum (0 for a zero block).
pub fn block_sum(block: &[u8]) -> u32 {
    crc32c::crc32c(block) ^ *ZERO_BLOCK_CRC
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub prev: u32,
    pub cur: u32,
}

impl Entry {
    pub fn accepts(self, sum: u32) -> bool {
        sum == self.cur || sum == self.prev
    }
}

pub fn table_offset(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(CRC_TABLE_ALIGN_BYTES) * CRC_TABLE_ALIGN_BYTES
}

pub fn file_len(size_bytes: u64) -> u64 {
    table_offset(size_bytes) + size_bytes / BLOCK_BYTES * CRC_ENTRY_BYTES
}

pub fn read_entries(f: &File, size_bytes: u64, first: u64, n: u64) -> io::Result<Vec<Entry>> {
    let mut buf = vec![0u8; (n * CRC_ENTRY_BYTES) as usize];
    f.read_exact_at(&mut buf, table_offset(size_bytes) + first * CRC_ENTRY_BYTES)?;
    Ok(buf
        .chunks_exact(CRC_ENTRY_BYTES as usize)
        .map(|e| Entry {
            prev: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            cur: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        })
        .collect())
}

pub fn write_entries(f: &File, size_bytes: u64, first: u64, entries: &[Entry]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(entries.len() * CRC_ENTRY_BYTES as usize);
    for e in entries {
        buf.extend_from_slice(&e.prev.to_le_bytes());
        buf.extend_from_slice(&e.cur.to_le_bytes());
    }
    f.write_all_at(&buf, table_offset(size_bytes) + first * CRC_ENTRY_BYTES)
}

pub fn read_data(f: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// Indexes (relative to the range) of blocks that fail verification.
pub fn verify(data: &[u8], entries: &[Entry]) -> Vec<u64> {
    data.chunks_exact(BLOCK_BYTES as usize)
        .zip(entries)
        .enumerate()
        .filter(|(_, (b, e))| !e.accepts(block_sum(b)))
        .map(|(i, _)| i as u64)
        .collect()
}

/// Deallocate `[offset, offset + len)`; it reads back as zeroes.
pub fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: plain syscall on a valid, open file descriptor.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            l,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes actually allocated on disk for the file.
pub fn allocated_bytes(f: &File) -> u64 {
    use std::os::unix::fs::MetadataExt;
    f.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
}
