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
//! All functions here block; the store calls them from its synchronous
//! core (on the caller's thread, or a blocking-pool thread for the async
//! API).

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

/// Entries of a request up to this many blocks (1 MiB) are handled on the
/// stack: no allocation per request.
pub const ENTRIES_ON_STACK: usize = 256;

static ZERO_BLOCK_CRC: LazyLock<u32> =
    LazyLock::new(|| super::crc::crc32c(&[0u8; BLOCK_BYTES as usize]));

/// Stored form of a block's checksum (0 for a zero block).
pub fn block_sum(block: &[u8]) -> u32 {
    super::crc::crc32c(block) ^ *ZERO_BLOCK_CRC
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
    table_offset(size_bytes) + table_bytes(size_bytes)
}

/// Bytes of the checksum table of a chunk of `size_bytes`: 1/512 of it.
pub fn table_bytes(size_bytes: u64) -> u64 {
    size_bytes / BLOCK_BYTES * CRC_ENTRY_BYTES
}

/// The whole checksum table, read with one system call.
pub fn read_table(f: &File, size_bytes: u64) -> io::Result<Box<[u8]>> {
    let len = usize::try_from(table_bytes(size_bytes))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut t = vec![0u8; len].into_boxed_slice();
    f.read_exact_at(&mut t, table_offset(size_bytes))?;
    Ok(t)
}

/// A chunk's whole checksum table mapped shared and writable: the store's
/// cached table. Its bytes are the file's page cache, so a store into it
/// leaves the file exactly as a `pwrite` of the same bytes would, without
/// the system call (the second of a write's two; docs/chunk-store.md,
/// "Checksum table cache").
pub type TableMap = memmap2::MmapMut;

/// Map the chunk file's checksum table (see [`TableMap`]). Everything
/// that could fail at a store or a load through the mapping is made to
/// fail here instead, as an error: the table's blocks are allocated first
/// (a store into a page with none would allocate at fault time, and
/// ENOSPC there is SIGBUS), and the table is read once (a page that
/// cannot be read fails this call, and every page is then in the cache).
pub fn map_table(f: &File, size_bytes: u64) -> io::Result<TableMap> {
    let offset = table_offset(size_bytes);
    let len = usize::try_from(table_bytes(size_bytes))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    if len == 0 {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    allocate(f, offset, len as u64)?;
    read_table(f, size_bytes)?;
    // SAFETY: the mapping covers `[offset, offset + len)`, inside the file
    // (`file_len`: a chunk file is never shortened while open). The Rust
    // rule that mapped bytes must not change under a reference holds
    // because nothing else writes them: the store writes a mapped table
    // only through the mapping, under the chunk's exclusive io lock, and
    // reads it under the shared one; no other process writes chunk files
    // (tests that edit them do so between requests).
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_mut(f)
    }
}

/// The on-disk bytes of entries `[first, first + n)` within a whole table;
/// None if the range is outside it.
pub fn table_range(first: u64, n: u64) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(first.checked_mul(CRC_ENTRY_BYTES)?).ok()?;
    let len = usize::try_from(n.checked_mul(CRC_ENTRY_BYTES)?).ok()?;
    Some(start..start.checked_add(len)?)
}

/// The checksum entries of one request's blocks, in their on-disk form,
/// read and written with one system call each.
pub struct Entries {
    stack: [u8; ENTRIES_ON_STACK * CRC_ENTRY_BYTES as usize],
    heap: Vec<u8>,
    n: usize,
}

impl Entries {
    fn zeroed(n: usize) -> Entries {
        let mut e = Entries {
            stack: [0; ENTRIES_ON_STACK * CRC_ENTRY_BYTES as usize],
            heap: Vec::new(),
            n,
        };
        if n > ENTRIES_ON_STACK {
            e.heap = vec![0; n * CRC_ENTRY_BYTES as usize];
        }
        e
    }

    /// Entries `[first, first + n)` of the chunk file's table.
    pub fn read(f: &File, size_bytes: u64, first: u64, n: u64) -> io::Result<Entries> {
        let n = usize::try_from(n).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut e = Entries::zeroed(n);
        f.read_exact_at(
            e.bytes_mut(),
            table_offset(size_bytes) + first * CRC_ENTRY_BYTES,
        )?;
        Ok(e)
    }

    /// A copy of entries in their on-disk form (a slice of a cached
    /// table); None if `bytes` is not a whole number of entries.
    pub fn from_bytes(bytes: &[u8]) -> Option<Entries> {
        let (entries, []) = bytes.as_chunks::<{ CRC_ENTRY_BYTES as usize }>() else {
            return None;
        };
        let mut e = Entries::zeroed(entries.len());
        e.bytes_mut().copy_from_slice(bytes);
        Some(e)
    }

    /// Write them back at `[first, first + n)`.
    pub fn write(&self, f: &File, size_bytes: u64, first: u64) -> io::Result<()> {
        f.write_all_at(
            self.bytes(),
            table_offset(size_bytes) + first * CRC_ENTRY_BYTES,
        )
    }

    /// The entries in their on-disk form.
    pub fn bytes(&self) -> &[u8] {
        let len = self.n * CRC_ENTRY_BYTES as usize;
        if self.n > ENTRIES_ON_STACK {
            &self.heap[..len]
        } else {
            &self.stack[..len]
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.n * CRC_ENTRY_BYTES as usize;
        if self.n > ENTRIES_ON_STACK {
            &mut self.heap[..len]
        } else {
            &mut self.stack[..len]
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn get(&self, i: usize) -> Entry {
        let at = i * CRC_ENTRY_BYTES as usize;
        let e: &[u8; 8] = self.bytes()[at..at + 8].try_into().expect("8 bytes");
        Entry {
            prev: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
            cur: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
        }
    }

    pub fn set(&mut self, i: usize, e: Entry) {
        let at = i * CRC_ENTRY_BYTES as usize;
        let slot = &mut self.bytes_mut()[at..at + 8];
        slot[..4].copy_from_slice(&e.prev.to_le_bytes());
        slot[4..].copy_from_slice(&e.cur.to_le_bytes());
    }
}

/// Sums of `data`'s blocks checked against `entries`: indexes (relative to
/// the range) of the blocks that fail. Allocates only if some fail.
pub fn verify_entries(data: &[u8], entries: &Entries) -> Vec<u64> {
    verify_bytes(data, entries.bytes())
}

/// `verify_entries` against entries in their on-disk form (`entries`
/// holds one 8-byte entry per 4 KiB block of `data`).
pub fn verify_bytes(data: &[u8], entries: &[u8]) -> Vec<u64> {
    assert_eq!(
        data.len() as u64 / BLOCK_BYTES * CRC_ENTRY_BYTES,
        entries.len() as u64
    );
    let (entries, _) = entries.as_chunks::<{ CRC_ENTRY_BYTES as usize }>();
    data.chunks_exact(BLOCK_BYTES as usize)
        .zip(entries)
        .enumerate()
        .filter(|(_, (b, e))| !decode(e).accepts(block_sum(b)))
        .map(|(i, _)| i as u64)
        .collect()
}

fn decode(e: &[u8; CRC_ENTRY_BYTES as usize]) -> Entry {
    Entry {
        prev: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
        cur: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
    }
}

/// Replace `v`'s contents with the `len` bytes at `offset`, without
/// zeroing the memory first (for buffers handed out, not reused).
pub fn read_to_vec(f: &File, v: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
    read_to_vec_with(f, v, len, offset, 0)
}

/// [`read_to_vec`] only from the page cache (`RWF_NOWAIT`): fails with
/// `WouldBlock` instead of waiting for the device, so a runtime thread may
/// call it (`Store::read`).
pub fn read_cached_to_vec(f: &File, v: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
    read_to_vec_with(f, v, len, offset, libc::RWF_NOWAIT)
}

fn read_to_vec_with(
    f: &File,
    v: &mut Vec<u8>,
    len: usize,
    offset: u64,
    flags: libc::c_int,
) -> io::Result<()> {
    v.clear();
    v.reserve_exact(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    let mut done = 0;
    while done < len {
        let rest = &mut spare[done..];
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        // SAFETY: `iov` describes writable memory owned by `v`, `rest.len()`
        // bytes long; preadv2 only writes into it, on a valid open
        // descriptor. (preadv2 with no flags is pread; RWF_NOWAIT needs it:
        // measured in docs/chunk-store.md, "Cached reads without the pool".)
        let r = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, at, flags) };
        match r {
            0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            r => done += r as usize,
        }
    }
    // SAFETY: the loop above initialized the first `len` bytes.
    unsafe { v.set_len(len) };
    Ok(())
}

/// `dst ^= src`, byte for byte.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    const LANE: usize = 64;
    let mut d = dst.chunks_exact_mut(LANE);
    let mut s = src.chunks_exact(LANE);
    for (d, s) in (&mut d).zip(&mut s) {
        for (d, s) in d.iter_mut().zip(s) {
            *d ^= *s;
        }
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d ^= *s;
    }
}

/// The entries as a vector (tests edit files with it).
#[cfg(test)]
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

/// Allocate blocks for `[offset, offset + len)` (the size unchanged):
/// what was a hole still reads as zeroes.
fn allocate(f: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate_keep_size(f, 0, offset, len)
}

/// Deallocate `[offset, offset + len)`; it reads back as zeroes.
pub fn punch_hole(f: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate_keep_size(f, libc::FALLOC_FL_PUNCH_HOLE, offset, len)
}

/// `fallocate` with `mode | FALLOC_FL_KEEP_SIZE` over `[offset, offset +
/// len)`.
fn fallocate_keep_size(f: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: plain syscall on a valid, open file descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode | libc::FALLOC_FL_KEEP_SIZE, off, l) };
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
