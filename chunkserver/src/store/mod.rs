//! The chunk store: chunks on local disk, a CRC32C per 4 KiB block verified
//! on every read, an LMDB index, group-committed durability, a scrubber.
//!
//! Layout, crash-safety argument and numbers: `docs/chunk-store.md`.
//!
//! The data path is synchronous underneath: `read_blocking`,
//! `write_blocking`, `overwrite_blocking`, ... run on the caller's thread
//! with the caller's buffers; the async data calls run the same core on the
//! calling task's thread: inline when the store lives on a memory file
//! system (tmpfs, ramfs: no device behind it, so no call can wait for a
//! disk), else in `block_in_place` on a multi-thread runtime, else (a
//! current-thread runtime) on tokio's blocking pool. Both of the first two
//! save the hop to the pool and back (measured in `docs/chunk-store.md`).
//!
//! Invariant: no byte of a block is returned unless the block verifies
//! against its checksum entry and is not marked bad. Boundary: this module
//! knows chunks and epochs, not extents' placement, parity or the network.

mod crc;
mod file;
mod index;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use file::Entry;
pub use file::{CRC_ENTRY_BYTES, CRC_TABLE_ALIGN_BYTES};
use index::{Index, Record};
pub use index::{FORMAT_VERSION, RECORD_VERSION};

/// Checksum granularity; every offset and length is a multiple of it.
pub const BLOCK_BYTES: u64 = 4096;
/// Added to every chunk's version when the store was not closed cleanly:
/// versions bumped in memory since the last flush were lost, and a version
/// must never repeat for different contents.
pub const VERSION_CRASH_BUMP: u64 = 1 << 32;
/// Where Linux names this boot of the kernel: a store that finds another
/// name there after an unclean shutdown lost its page cache.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// Largest boot id read, in bytes (Linux's is 37).
const BOOT_ID_BYTES_MAX: u64 = 256;
/// Blocks the scrubber verifies per read.
pub const SCRUB_BATCH_BLOCKS: u64 = 256;
/// Bytes of checksum tables mapped at once (see [`TableCache`]). A table
/// is 1/512 of its chunk (8 bytes per 4 KiB block), so 64 MiB holds the
/// tables of 32 GiB of recently used chunks: the hot set of a node, not
/// its disk. Chunks beyond it work as before, one `pread` and one `pwrite`
/// of their entries per request.
pub const TABLE_CACHE_BYTES_MAX: u64 = 64 << 20;

/// Longest read served on the caller's (runtime) thread when its bytes are
/// cached (`Inner::read_cached`): copying and checking it takes a few tens
/// of µs; longer reads go through `ChunkStore::data_io`, whose hand-off
/// costs less than they do.
const CACHED_READ_BYTES_MAX: u64 = 256 << 10;

/// One node's share of one extent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ChunkId {
    pub lun: u64,
    pub extent: u64,
    /// Index in the stripe (0..k+m).
    pub index: u8,
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.lun, self.extent, self.index)
    }
}

impl ChunkId {
    /// Index key: big-endian so LMDB order is (lun, extent, index).
    fn to_key(self) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[..8].copy_from_slice(&self.lun.to_be_bytes());
        k[8..16].copy_from_slice(&self.extent.to_be_bytes());
        k[16] = self.index;
        k
    }

    fn from_key(k: &[u8]) -> Option<ChunkId> {
        let k: &[u8; 17] = k.try_into().ok()?;
        let (lun, rest) = k.split_first_chunk::<8>()?;
        let (extent, index) = rest.split_first_chunk::<8>()?;
        Some(ChunkId {
            lun: u64::from_be_bytes(*lun),
            extent: u64::from_be_bytes(*extent),
            index: *index.first()?,
        })
    }

    fn rel_path(self) -> PathBuf {
        PathBuf::from(format!("{:016x}", self.lun))
            .join(format!("{:016x}-{:02x}.chunk", self.extent, self.index))
    }
}

/// How durable a mutation must be before it is acknowledged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Durability {
    /// In the page cache: survives the process dying, not the machine.
    Buffered,
    /// FUA: on stable storage before Ok (group-committed fdatasync).
    Stable,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Bytes this store may use (sum of chunk sizes).
    pub capacity_bytes: u64,
    /// New chunks are refused once `used + size > capacity - reserve`.
    pub reserve_bytes: u64,
    /// Largest chunk accepted.
    pub chunk_bytes_max: u64,
    /// Where the kernel's boot id is read ([`BOOT_ID_PATH`]; tests name a
    /// file of their own to play a reboot).
    pub boot_id_path: PathBuf,
}

/// The boot id at `path`, or empty (unknown) if it cannot be read.
fn read_boot_id(path: &Path) -> String {
    use std::io::Read;
    let mut text = String::new();
    let read = File::open(path).and_then(|f| f.take(BOOT_ID_BYTES_MAX).read_to_string(&mut text));
    match read {
        Ok(_) => text.trim().to_owned(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "cannot read the kernel's boot id: a power loss will not be told from a process crash");
            String::new()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChunkMeta {
    pub size_bytes: u64,
    pub epoch: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ChunkState {
    Ok,
    /// These blocks failed verification (or were lost) and are never served
    /// until rewritten by `overwrite`, `write_whole` or `punch`.
    NeedsRepair {
        blocks: Vec<u64>,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ChunkInfo {
    pub id: ChunkId,
    pub size_bytes: u64,
    pub epoch: u64,
    pub version: u64,
    pub state: ChunkState,
    pub allocated_bytes: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct StoreStats {
    pub capacity_bytes: u64,
    /// Sum of chunk sizes (thin chunks are accounted at full size).
    pub used_bytes: u64,
    pub reserve_bytes: u64,
    pub chunks: u64,
    /// Blocks that failed verification since open (reads and scrubs).
    pub checksum_errors: u64,
    /// `used >= capacity - reserve`: no new chunks accepted.
    pub full: bool,
}

#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ScrubReport {
    pub checked_blocks: u64,
    pub bad: Vec<(ChunkId, Vec<u64>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} not found")]
    NotFound(ChunkId),
    #[error("chunk {0} already exists")]
    Exists(ChunkId),
    #[error("chunk {id}: stale epoch {got}, chunk is at {have}")]
    StaleEpoch { id: ChunkId, have: u64, got: u64 },
    #[error("chunk {id}: range {offset}+{len} outside its {size_bytes} bytes")]
    OutOfRange {
        id: ChunkId,
        offset: u64,
        len: u64,
        size_bytes: u64,
    },
    #[error("offset {offset} / length {len} not multiples of {BLOCK_BYTES}")]
    Misaligned { offset: u64, len: u64 },
    #[error("chunk {id}: checksum mismatch in blocks {blocks:?}")]
    Checksum { id: ChunkId, blocks: Vec<u64> },
    #[error("store full: {used} bytes used of {capacity}, {reserve} reserved")]
    Full {
        used: u64,
        capacity: u64,
        reserve: u64,
    },
    #[error("chunk of {size_bytes} bytes exceeds the {max_bytes} byte limit")]
    TooLarge { size_bytes: u64, max_bytes: u64 },
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("index: {0}")]
    Index(String),
}

/// A chunk's whole checksum table mapped into memory, when cached (see
/// [`TableCache`]).
type CachedTable = Option<file::TableMap>;

/// In-memory state of one open chunk.
struct Chunk {
    id: ChunkId,
    size_bytes: u64,
    file: File,
    /// Shared by reads, exclusive for mutations: a read sees each block's
    /// data and checksum entry from the same moment. It guards the mapping
    /// of the checksum table when cached, which is written only under the
    /// exclusive lock.
    io: RwLock<CachedTable>,
    /// Set by every use of the cached table, cleared by the eviction
    /// clock: the "recently used" bit of [`TableCache`].
    table_used: AtomicBool,
    /// Requests that read their entries from the file since the table was
    /// last loaded or evicted (see [`Chunk::table_wanted`]).
    table_misses: AtomicU64,
    state: Mutex<ChunkMut>,
}

struct ChunkMut {
    epoch: u64,
    version: u64,
    bad: BTreeSet<u64>,
    /// Removed or replaced: operations through this handle answer NotFound.
    gone: bool,
}

impl Chunk {
    /// A live handle on an open chunk file.
    fn new(
        id: ChunkId,
        size_bytes: u64,
        file: File,
        epoch: u64,
        version: u64,
        bad: BTreeSet<u64>,
    ) -> Arc<Chunk> {
        Arc::new(Chunk {
            id,
            size_bytes,
            file,
            io: RwLock::new(None),
            table_used: AtomicBool::new(false),
            table_misses: AtomicU64::new(0),
            state: Mutex::new(ChunkMut {
                epoch,
                version,
                bad,
                gone: false,
            }),
        })
    }

    fn record(&self) -> Record {
        let s = self.state.lock();
        Record {
            size_bytes: self.size_bytes,
            epoch: s.epoch,
            version: s.version,
            bad_blocks: s.bad.iter().copied().collect(),
        }
    }

    fn info(&self) -> ChunkInfo {
        let s = self.state.lock();
        ChunkInfo {
            id: self.id,
            size_bytes: self.size_bytes,
            epoch: s.epoch,
            version: s.version,
            state: if s.bad.is_empty() {
                ChunkState::Ok
            } else {
                ChunkState::NeedsRepair {
                    blocks: s.bad.iter().copied().collect(),
                }
            },
            allocated_bytes: file::allocated_bytes(&self.file),
        }
    }

    /// Check the epoch; a newer one is accepted and raised (returns true:
    /// the caller persists the record before acknowledging).
    fn admit(&self, epoch: u64) -> Result<bool, StoreError> {
        let mut s = self.state.lock();
        if s.gone {
            return Err(StoreError::NotFound(self.id));
        }
        if epoch < s.epoch {
            return Err(StoreError::StaleEpoch {
                id: self.id,
                have: s.epoch,
                got: epoch,
            });
        }
        let raised = epoch > s.epoch;
        s.epoch = epoch;
        Ok(raised)
    }

    fn table_bytes(&self) -> u64 {
        file::table_bytes(self.size_bytes)
    }

    /// Whether to load this chunk's table into memory: once the requests
    /// that read their own entries since the last load or eviction would
    /// together have read (page by page) as many bytes as the whole table.
    /// A table is then loaded at most once per `table / 4 KiB` uncached
    /// requests, so a working set larger than the cache costs at most
    /// twice the entry reads it costs without one, never a table per
    /// request.
    fn table_wanted(&self) -> bool {
        let table = self.table_bytes();
        table <= TABLE_CACHE_BYTES_MAX
            && self.table_misses.load(Ordering::Relaxed) >= (table / BLOCK_BYTES).max(1)
    }

    /// The cached entries `[first, first + n)`, marking the table used;
    /// None if the table is not cached.
    fn cached_entries<'t>(&self, table: &'t CachedTable, first: u64, n: u64) -> Option<&'t [u8]> {
        let range = file::table_range(first, n)?;
        let entries = table.as_deref()?.get(range)?;
        // Load first: the cache line is only written once per clock sweep.
        if !self.table_used.load(Ordering::Relaxed) {
            self.table_used.store(true, Ordering::Relaxed);
        }
        Some(entries)
    }

    /// Entries `[first, first + n)` for a mutation: a copy of the cached
    /// ones, else one `pread` (counted towards loading the table).
    fn entries_for_update(
        &self,
        table: &CachedTable,
        first: u64,
        n: u64,
    ) -> Result<file::Entries, StoreError> {
        if let Some(e) = self
            .cached_entries(table, first, n)
            .and_then(file::Entries::from_bytes)
        {
            return Ok(e);
        }
        self.table_misses.fetch_add(1, Ordering::Relaxed);
        Ok(file::Entries::read(&self.file, self.size_bytes, first, n)?)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        if !offset.is_multiple_of(BLOCK_BYTES) || !len.is_multiple_of(BLOCK_BYTES) {
            return Err(StoreError::Misaligned { offset, len });
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(StoreError::OutOfRange {
                id: self.id,
                offset,
                len,
                size_bytes: self.size_bytes,
            }),
        }
    }
}

/// What a mutation does to the range's old contents.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mutation {
    /// Replace, return old ⊕ new (old must verify).
    Write,
    /// new = old ⊕ data (old must verify).
    Xor,
    /// Replace without looking at the old contents (repair, replay).
    Overwrite,
}

/// Where a read takes the checksum entries it verifies against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum EntriesFrom {
    /// The cached table if there is one (requests).
    CacheOrFile,
    /// The file, always (the scrubber: it neither loads nor marks tables,
    /// so a pass over every chunk does not churn the cache).
    File,
}

/// Where a Write mutation reads the old data, which becomes the delta.
enum OldData<'a> {
    /// The caller's buffer, exactly as long as the data.
    Caller(&'a mut [u8]),
    /// A vector filled without zeroing first (the async API hands it out).
    Owned(&'a mut Vec<u8>),
}

/// Group commit: mutations register their chunk here after their pwrite; a
/// syncer takes everything registered so far, fdatasyncs it once, and
/// publishes the sequence number it covered.
struct SyncState {
    /// (last sequence number handed out, chunks written since last sync)
    dirty: Mutex<(u64, BTreeMap<ChunkId, Arc<Chunk>>)>,
    synced: AtomicU64,
    /// Held by the caller running the fdatasyncs (a blocking lock: the
    /// data path is synchronous, see `mutate`).
    leader: Mutex<()>,
}

/// The checksum tables of recently used chunks, mapped into memory
/// (`file::map_table`), so that a request reads and writes its entries
/// with no system call. A mapped table is the file's page cache itself:
/// a store into it is the `pwrite` of the uncached path without the call
/// (same bytes, same place, same order relative to the data: the
/// crash-safety argument is unchanged). A table is the chunk's `io`
/// lock's value (see [`Chunk::io`]): it is read under the shared lock and
/// written under the exclusive one.
///
/// Whole tables, evicted by a clock (second chance: an approximation of
/// least recently used whose cost on a hit is one relaxed load of a bit
/// in the chunk). Lock order: a chunk's `io`, then this; eviction only
/// `try_write`s other chunks' `io` (a chunk busy right now is in use, so
/// it is skipped like a used one).
struct TableCache {
    /// Chunks whose table is cached, in the clock's order (the front is
    /// the hand). Exactly the chunks whose `io` holds a table.
    ring: VecDeque<Arc<Chunk>>,
    /// Sum of the cached tables' sizes; at most `limit_bytes`.
    bytes: u64,
    /// `TABLE_CACHE_BYTES_MAX` (tests lower it).
    limit_bytes: u64,
}

impl TableCache {
    /// Evict tables until `need` more bytes fit; false if they cannot
    /// (the clock went round twice without finding an idle table).
    fn make_room(&mut self, need: u64) -> bool {
        let mut turns = 2 * self.ring.len();
        while self.bytes.saturating_add(need) > self.limit_bytes {
            if turns == 0 {
                return false;
            }
            turns -= 1;
            let Some(c) = self.ring.pop_front() else {
                return false;
            };
            if c.table_used.swap(false, Ordering::Relaxed) {
                self.ring.push_back(c);
                continue;
            }
            let evicted = match c.io.try_write() {
                Some(mut table) => {
                    if table.take().is_some() {
                        self.bytes = self.bytes.saturating_sub(c.table_bytes());
                    }
                    c.table_misses.store(0, Ordering::Relaxed);
                    true
                }
                None => false,
            };
            if !evicted {
                self.ring.push_back(c);
            }
        }
        true
    }
}

struct Inner {
    cfg: StoreConfig,
    chunks_dir: PathBuf,
    index: Index,
    chunks: RwLock<HashMap<ChunkId, Arc<Chunk>>>,
    used_bytes: AtomicU64,
    checksum_errors: AtomicU64,
    sync: SyncState,
    /// Chunks whose version moved since their record was last written.
    versions_dirty: Mutex<BTreeSet<ChunkId>>,
    /// Serializes create, write_whole and delete (file creation/rename).
    admin: Mutex<()>,
    /// Cleared by `abandon`: drop without the clean-close step.
    close_on_drop: std::sync::atomic::AtomicBool,
    /// The data directory is on a memory file system: the data path's
    /// async calls run inline (see [`ChunkStore::data_io`]).
    memory_backed: bool,
    /// See [`ChunkStore::incarnation`].
    incarnation: u64,
    /// See [`ChunkStore::lost_cache`].
    lost_cache: bool,
    tables: Mutex<TableCache>,
}

/// The chunk store. Cheap to share behind an `Arc`.
pub struct ChunkStore {
    inner: Arc<Inner>,
}

fn io_other(e: impl fmt::Display) -> StoreError {
    StoreError::Io(io::Error::other(e.to_string()))
}

async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    // Inline inside the deterministic simulation (fabric::env::blocking).
    fabric::env::blocking(f).await.map_err(io_other)?
}

/// Whether `dir` is on a memory file system (tmpfs, ramfs), where file I/O
/// is memory copies and never waits for a device. False if unsure.
fn is_memory_fs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string that outlives the call and
    // `st` is a properly sized, writable statfs buffer owned by this frame.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs only writes into `st`.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_chunk_file(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl ChunkStore {
    /// Open (or create) the store under `cfg.data_dir` and recover:
    /// check the format version, load the index, recreate files of chunks
    /// whose file vanished (all blocks marked bad), remove files the index
    /// does not know (a create or delete cut short), and if the last
    /// process did not close cleanly, bump every version and sync every
    /// chunk file.
    pub fn open(cfg: StoreConfig) -> Result<ChunkStore, StoreError> {
        let chunks_dir = cfg.data_dir.join("chunks");
        std::fs::create_dir_all(&chunks_dir)?;
        let boot_id = read_boot_id(&cfg.boot_id_path);
        let opened = Index::open(&cfg.data_dir.join("index"), &boot_id)?;
        let index = opened.index;
        let mut chunks = HashMap::new();
        let mut used = 0u64;
        let mut rewrite = Vec::new();
        for (id, mut rec) in opened.records {
            let path = chunks_dir.join(id.rel_path());
            let mut changed = false;
            let file = match open_chunk_file(&path, false) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::error!(chunk = %id, "chunk file missing: every block needs repair");
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    let f = open_chunk_file(&path, true)?;
                    f.set_len(file::file_len(rec.size_bytes))?;
                    rec.bad_blocks = (0..rec.size_bytes / BLOCK_BYTES).collect();
                    changed = true;
                    f
                }
                Err(e) => return Err(e.into()),
            };
            if file.metadata()?.len() < file::file_len(rec.size_bytes) {
                file.set_len(file::file_len(rec.size_bytes))?;
            }
            if !opened.was_clean {
                rec.version = rec.version.saturating_add(VERSION_CRASH_BUMP);
                changed = true;
                // What the last process wrote may still be only in the page
                // cache, and a flush syncs only the chunks written since
                // this process started: a flush acknowledged later would
                // not cover those writes.
                file.sync_data()?;
            }
            if changed {
                rewrite.push((id, rec.clone()));
            }
            used = used.saturating_add(rec.size_bytes);
            let bad = rec.bad_blocks.iter().copied().collect();
            chunks.insert(
                id,
                Chunk::new(id, rec.size_bytes, file, rec.epoch, rec.version, bad),
            );
        }
        index.apply(&rewrite, &[])?;
        remove_orphans(&chunks_dir, &chunks)?;
        if opened.lost_cache {
            tracing::warn!(
                chunks = chunks.len(),
                incarnation = opened.incarnation,
                "chunk store was not closed cleanly, in an earlier boot: writes not yet flushed may be lost (primaries rebuild what they wrote since their last flush)"
            );
        } else if !opened.was_clean {
            tracing::warn!(chunks = chunks.len(), "chunk store was not closed cleanly");
        }
        let memory_backed = is_memory_fs(&chunks_dir);
        tracing::info!(
            memory_backed,
            "chunk store opened (memory-backed: data-path calls inline)"
        );
        Ok(ChunkStore {
            inner: Arc::new(Inner {
                cfg,
                chunks_dir,
                index,
                chunks: RwLock::new(chunks),
                used_bytes: AtomicU64::new(used),
                checksum_errors: AtomicU64::new(0),
                sync: SyncState {
                    dirty: Mutex::new((0, BTreeMap::new())),
                    synced: AtomicU64::new(0),
                    leader: Mutex::new(()),
                },
                versions_dirty: Mutex::new(BTreeSet::new()),
                admin: Mutex::new(()),
                close_on_drop: std::sync::atomic::AtomicBool::new(true),
                memory_backed,
                incarnation: opened.incarnation,
                lost_cache: opened.lost_cache,
                tables: Mutex::new(TableCache {
                    ring: VecDeque::new(),
                    bytes: 0,
                    limit_bytes: TABLE_CACHE_BYTES_MAX,
                }),
            }),
        })
    }

    /// Drop the store as if the process had died: no sync, versions not
    /// persisted, the index stays marked unclean (the next `open` recovers
    /// as after a crash). Page-cache contents survive, as with SIGKILL.
    pub fn abandon(self) {
        self.inner.close_on_drop.store(false, Ordering::SeqCst);
    }

    /// Raised each time the store opens after losing its page cache (not
    /// closed cleanly, in an earlier boot of the kernel); 1 for a new
    /// store. Buffered writes acknowledged under an older incarnation may
    /// be gone.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Whether this open followed a loss of the page cache (the event
    /// that raised the incarnation).
    pub fn lost_cache(&self) -> bool {
        self.inner.lost_cache
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    fn get(&self, id: ChunkId) -> Result<Arc<Chunk>, StoreError> {
        self.inner.get(id)
    }

    fn check_size(&self, size_bytes: u64) -> Result<(), StoreError> {
        if !size_bytes.is_multiple_of(BLOCK_BYTES) {
            return Err(StoreError::Misaligned {
                offset: 0,
                len: size_bytes,
            });
        }
        if size_bytes > self.inner.cfg.chunk_bytes_max {
            return Err(StoreError::TooLarge {
                size_bytes,
                max_bytes: self.inner.cfg.chunk_bytes_max,
            });
        }
        Ok(())
    }

    /// Reserve `extra` bytes for a new chunk or refuse with Full.
    fn admit_bytes(&self, extra: u64) -> Result<(), StoreError> {
        let cfg = &self.inner.cfg;
        let limit = cfg.capacity_bytes.saturating_sub(cfg.reserve_bytes);
        self.inner
            .used_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(extra).filter(|n| *n <= limit)
            })
            .map(|_| ())
            .map_err(|used| StoreError::Full {
                used,
                capacity: cfg.capacity_bytes,
                reserve: cfg.reserve_bytes,
            })
    }

    /// Create an empty (all-zero, unallocated) chunk. Durable on return.
    pub async fn create(&self, id: ChunkId, meta: ChunkMeta) -> Result<(), StoreError> {
        self.check_size(meta.size_bytes)?;
        if self.inner.chunks.read().contains_key(&id) {
            return Err(StoreError::Exists(id));
        }
        self.admit_bytes(meta.size_bytes)?;
        let inner = self.inner.clone();
        let res = blocking(move || {
            let _admin = inner.admin.lock();
            if inner.chunks.read().contains_key(&id) {
                return Err(StoreError::Exists(id));
            }
            let path = inner.chunks_dir.join(id.rel_path());
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            std::fs::create_dir_all(&dir)?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path);
            let f = match f {
                Ok(f) => f,
                // A file the index does not know: left by a create cut short.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let f = open_chunk_file(&path, false)?;
                    f.set_len(0)?;
                    f
                }
                Err(e) => return Err(e.into()),
            };
            f.set_len(file::file_len(meta.size_bytes))?;
            f.sync_all()?;
            sync_dir(&dir)?;
            sync_dir(&inner.chunks_dir)?;
            let chunk = Chunk::new(id, meta.size_bytes, f, meta.epoch, 0, BTreeSet::new());
            let mut map = inner.chunks.write();
            if map.contains_key(&id) {
                return Err(StoreError::Exists(id));
            }
            inner.index.apply(&[(id, chunk.record())], &[])?;
            map.insert(id, chunk);
            Ok(())
        })
        .await;
        if res.is_err() {
            self.inner
                .used_bytes
                .fetch_sub(meta.size_bytes, Ordering::SeqCst);
        }
        res
    }

    // The data path. Each operation has a synchronous core (`*_blocking`,
    // for callers on their own threads: no hop, no allocation per request)
    // and an async form that runs the same core through `data_io`.

    /// Write `data` at `offset`; returns `old ⊕ new` of the range (the
    /// parity delta). Every old block must verify (else `Checksum`, nothing
    /// written). A newer epoch is accepted and raised durably.
    pub async fn write(
        &self,
        id: ChunkId,
        offset: u64,
        data: Bytes,
        epoch: u64,
        d: Durability,
    ) -> Result<Bytes, StoreError> {
        self.data_io(move |inner| {
            let mut delta = Vec::new();
            let out = OldData::Owned(&mut delta);
            inner.mutate(id, offset, &data, Some(out), epoch, d, Mutation::Write)?;
            Ok(Bytes::from(delta))
        })
        .await
    }

    /// Runs one data-path call (`write`, `apply_delta`, `overwrite`, `read`:
    /// at most `CHUNK_IO_BYTES_MAX` of memory copies and CRCs) without a
    /// hop to another thread where it can:
    /// - on a memory file system, inline: it can only wait for the chunk's
    ///   lock, held at most for another such call, or a whole-chunk call or
    ///   scrub step of the same chunk (milliseconds);
    /// - on a worker of a multi-thread runtime, in `block_in_place`: the
    ///   worker first hands its other tasks to another thread, so a call
    ///   that waits for the disk stalls nothing else, and the call itself
    ///   waits for no wake-up (the pool's round trip took 15–80 µs here,
    ///   against ~8 µs for a cached 4 KiB write);
    /// - else (a current-thread runtime, where `block_in_place` is not
    ///   allowed) on the blocking pool.
    ///
    /// Everything else (create, delete, whole chunks, flush) keeps the pool.
    async fn data_io<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.memory_backed {
            return f(&self.inner);
        }
        if fabric::env::can_block_in_place() {
            return tokio::task::block_in_place(|| f(&self.inner));
        }
        let inner = self.inner.clone();
        blocking(move || f(&inner)).await
    }

    /// `write` on the calling thread: the delta goes to `delta` (as long as
    /// `data`). On error `delta` is zeroed: it never holds unverified bytes.
    pub fn write_blocking(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        delta: &mut [u8],
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        assert_eq!(data.len(), delta.len(), "delta buffer must match data");
        let out = OldData::Caller(&mut *delta);
        let res = self
            .inner
            .mutate(id, offset, data, Some(out), epoch, d, Mutation::Write);
        if res.is_err() {
            delta.fill(0);
        }
        res
    }

    /// XOR `delta` into the range (parity update). Old blocks must verify.
    pub async fn apply_delta(
        &self,
        id: ChunkId,
        offset: u64,
        delta: Bytes,
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.data_io(move |inner| inner.mutate(id, offset, &delta, None, epoch, d, Mutation::Xor))
            .await
    }

    /// `apply_delta` on the calling thread.
    pub fn apply_delta_blocking(
        &self,
        id: ChunkId,
        offset: u64,
        delta: &[u8],
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.inner
            .mutate(id, offset, delta, None, epoch, d, Mutation::Xor)
    }

    /// Write `data` at `offset` without reading or verifying the old
    /// contents; clears the range's bad marks. For writers that do not need
    /// the delta: full-row writes, repair and journal replay (where the old
    /// contents may be torn or unknown).
    pub async fn overwrite(
        &self,
        id: ChunkId,
        offset: u64,
        data: Bytes,
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.data_io(move |inner| {
            inner.mutate(id, offset, &data, None, epoch, d, Mutation::Overwrite)
        })
        .await
    }

    /// `overwrite` on the calling thread.
    pub fn overwrite_blocking(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.inner
            .mutate(id, offset, data, None, epoch, d, Mutation::Overwrite)
    }

    /// Read `len` bytes at `offset`. Every block is verified; if any fails
    /// (or is marked bad) the answer is `Checksum` naming them, never bytes.
    pub async fn read(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
        epoch: u64,
    ) -> Result<Bytes, StoreError> {
        // Checked before allocating `len` bytes.
        let chunk = self.inner.admit_read(id, offset, len, epoch)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if !self.inner.memory_backed && len <= CACHED_READ_BYTES_MAX {
            if let Some(buf) = self.inner.read_cached(&chunk, offset, len) {
                return Ok(Bytes::from(buf));
            }
        }
        self.data_io(move |inner| {
            inner
                .read_verified(&chunk, offset, len, EntriesFrom::CacheOrFile)
                .map(Bytes::from)
        })
        .await
    }

    /// `read` of `buf.len()` bytes into `buf`, on the calling thread. On
    /// error `buf` is zeroed: it never holds unverified bytes.
    pub fn read_blocking(
        &self,
        id: ChunkId,
        offset: u64,
        buf: &mut [u8],
        epoch: u64,
    ) -> Result<(), StoreError> {
        let res = self
            .inner
            .admit_read(id, offset, buf.len() as u64, epoch)
            .and_then(|chunk| match buf.is_empty() {
                true => Ok(()),
                false => self.inner.read_verified_into(&chunk, offset, buf),
            });
        if res.is_err() {
            buf.fill(0);
        }
        res
    }

    /// Deallocate the range; it reads back as zeroes.
    pub async fn punch(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.punch(id, offset, len, epoch, d)).await
    }

    /// `punch` on the calling thread.
    pub fn punch_blocking(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.inner.punch(id, offset, len, epoch, d)
    }

    /// Make every mutation completed before this call durable (shared
    /// fdatasyncs), and persist chunk versions.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        blocking(move || inner.flush()).await
    }

    /// `flush` on the calling thread.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }

    /// Raise the chunk's epoch (durable on return). Never lowers it.
    pub async fn set_epoch(&self, id: ChunkId, epoch: u64) -> Result<(), StoreError> {
        let chunk = self.get(id)?;
        if !chunk.admit(epoch)? {
            return Ok(());
        }
        let inner = self.inner.clone();
        blocking(move || inner.index.apply(&[(chunk.id, chunk.record())], &[])).await
    }

    /// Remove the chunk and its file; its bytes return to the free pool.
    pub async fn delete(&self, id: ChunkId) -> Result<(), StoreError> {
        let chunk = self
            .inner
            .chunks
            .write()
            .remove(&id)
            .ok_or(StoreError::NotFound(id))?;
        let inner = self.inner.clone();
        blocking(move || {
            let _admin = inner.admin.lock();
            let mut table = chunk.io.write();
            chunk.state.lock().gone = true;
            inner.drop_table(&chunk, &mut table);
            inner.sync.dirty.lock().1.remove(&id);
            inner.versions_dirty.lock().remove(&id);
            inner.index.apply(&[], &[id])?;
            inner
                .used_bytes
                .fetch_sub(chunk.size_bytes, Ordering::SeqCst);
            let path = inner.chunks_dir.join(id.rel_path());
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Every chunk, sorted by id. Does one fstat per chunk.
    pub fn list(&self) -> Vec<ChunkInfo> {
        let chunks: Vec<Arc<Chunk>> = self.inner.chunks.read().values().cloned().collect();
        let mut out: Vec<ChunkInfo> = chunks.iter().map(|c| c.info()).collect();
        out.sort_by_key(|i| i.id);
        out
    }

    pub fn info(&self, id: ChunkId) -> Option<ChunkInfo> {
        self.get(id).ok().map(|c| c.info())
    }

    pub fn stats(&self) -> StoreStats {
        let cfg = &self.inner.cfg;
        let used = self.inner.used_bytes.load(Ordering::SeqCst);
        StoreStats {
            capacity_bytes: cfg.capacity_bytes,
            used_bytes: used,
            reserve_bytes: cfg.reserve_bytes,
            chunks: self.inner.chunks.read().len() as u64,
            checksum_errors: self.inner.checksum_errors.load(Ordering::Relaxed),
            full: used >= cfg.capacity_bytes.saturating_sub(cfg.reserve_bytes),
        }
    }

    /// Blocks needing repair, per chunk (found by reads, the scrubber, or
    /// recovery), sorted.
    pub fn bad_blocks(&self) -> Vec<(ChunkId, Vec<u64>)> {
        let mut out: Vec<(ChunkId, Vec<u64>)> = self
            .inner
            .chunks
            .read()
            .values()
            .filter_map(|c| {
                let s = c.state.lock();
                (!s.bad.is_empty()).then(|| (c.id, s.bad.iter().copied().collect()))
            })
            .collect();
        out.sort();
        out
    }

    /// The whole chunk, verified (for repair and migration).
    pub async fn read_whole(&self, id: ChunkId) -> Result<(ChunkInfo, Bytes), StoreError> {
        let chunk = self.get(id)?;
        let inner = self.inner.clone();
        blocking(move || {
            let data =
                inner.read_verified(&chunk, 0, chunk.size_bytes, EntriesFrom::CacheOrFile)?;
            Ok((chunk.info(), Bytes::from(data)))
        })
        .await
    }

    /// Replace (or create) the whole chunk with `data` (≤ size_bytes;
    /// the rest is zero) at `meta.epoch`, atomically: a new file is
    /// written, then renamed over the old one. All-zero blocks stay holes.
    pub async fn write_whole(
        &self,
        id: ChunkId,
        meta: ChunkMeta,
        data: Bytes,
        d: Durability,
    ) -> Result<(), StoreError> {
        self.check_size(meta.size_bytes)?;
        let len = data.len() as u64;
        if !len.is_multiple_of(BLOCK_BYTES) {
            return Err(StoreError::Misaligned { offset: 0, len });
        }
        if len > meta.size_bytes {
            return Err(StoreError::OutOfRange {
                id,
                offset: 0,
                len,
                size_bytes: meta.size_bytes,
            });
        }
        let old = self.inner.chunks.read().get(&id).cloned();
        if let Some(old) = &old {
            let have = old.state.lock().epoch;
            if meta.epoch < have {
                return Err(StoreError::StaleEpoch {
                    id,
                    have,
                    got: meta.epoch,
                });
            }
        }
        let old_size = old.as_ref().map_or(0, |c| c.size_bytes);
        let grow = meta.size_bytes.saturating_sub(old_size);
        self.admit_bytes(grow)?;
        let inner = self.inner.clone();
        let res = blocking(move || {
            let _admin = inner.admin.lock();
            let path = inner.chunks_dir.join(id.rel_path());
            let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            std::fs::create_dir_all(&dir)?;
            let tmp = path.with_extension("tmp");
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.set_len(file::file_len(meta.size_bytes))?;
            let mut entries = vec![Entry::default(); (meta.size_bytes / BLOCK_BYTES) as usize];
            for (i, block) in data.chunks_exact(BLOCK_BYTES as usize).enumerate() {
                let sum = file::block_sum(block);
                if sum != 0 {
                    f.write_all_at(block, i as u64 * BLOCK_BYTES)?;
                    if let Some(e) = entries.get_mut(i) {
                        *e = Entry { prev: 0, cur: sum };
                    }
                }
            }
            file::write_entries(&f, meta.size_bytes, 0, &entries)?;
            // The rename must not become durable before the contents (else
            // a crash could leave a renamed file of garbage): always sync.
            f.sync_data()?;
            let prev = inner.chunks.read().get(&id).cloned();
            let mut io_guard = prev.as_ref().map(|c| c.io.write());
            let version = match &prev {
                Some(c) => {
                    let mut s = c.state.lock();
                    if meta.epoch < s.epoch {
                        return Err(StoreError::StaleEpoch {
                            id,
                            have: s.epoch,
                            got: meta.epoch,
                        });
                    }
                    s.gone = true;
                    s.version + 1
                }
                None => 0,
            };
            if let (Some(c), Some(table)) = (&prev, io_guard.as_mut()) {
                // The old handle is gone: its table goes with it.
                inner.drop_table(c, table);
            }
            std::fs::rename(&tmp, &path)?;
            if d == Durability::Stable || prev.is_none() {
                sync_dir(&dir)?;
                sync_dir(&inner.chunks_dir)?;
            }
            let chunk = Chunk::new(id, meta.size_bytes, f, meta.epoch, version, BTreeSet::new());
            inner.index.apply(&[(id, chunk.record())], &[])?;
            inner.sync.dirty.lock().1.remove(&id);
            inner.chunks.write().insert(id, chunk);
            drop(io_guard);
            if let Some(p) = prev {
                // Shrinking returns bytes (growing was admitted above).
                let shrink = p.size_bytes.saturating_sub(meta.size_bytes);
                inner.used_bytes.fetch_sub(shrink, Ordering::SeqCst);
            }
            Ok(())
        })
        .await;
        if res.is_err() {
            self.inner.used_bytes.fetch_sub(grow, Ordering::SeqCst);
        }
        res
    }

    /// Verify every block of every chunk once, at most `blocks_per_sec`
    /// (0 = unpaced). Bad blocks are marked (never served), counted, logged
    /// and listed in the report and in `bad_blocks()`.
    pub async fn scrub_once(&self, blocks_per_sec: u64) -> Result<ScrubReport, StoreError> {
        let mut ids: Vec<ChunkId> = self.inner.chunks.read().keys().copied().collect();
        ids.sort();
        let mut report = ScrubReport::default();
        let start = Instant::now();
        for id in ids {
            let Ok(chunk) = self.get(id) else { continue };
            let blocks = chunk.size_bytes / BLOCK_BYTES;
            let mut bad = Vec::new();
            let mut b = 0;
            while b < blocks {
                let n = SCRUB_BATCH_BLOCKS.min(blocks - b);
                let inner = self.inner.clone();
                let c = chunk.clone();
                let found = blocking(move || inner.scrub_range(&c, b, n)).await?;
                bad.extend(found);
                b += n;
                report.checked_blocks += n;
                if blocks_per_sec > 0 {
                    let due = Duration::from_secs_f64(
                        report.checked_blocks as f64 / blocks_per_sec as f64,
                    );
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            if !bad.is_empty() {
                report.bad.push((id, bad));
            }
        }
        Ok(report)
    }

    /// Scrub forever: one pass, then `interval`, then again.
    pub fn spawn_scrubber(
        self: Arc<Self>,
        blocks_per_sec: u64,
        interval: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.scrub_once(blocks_per_sec).await {
                    Ok(r) => tracing::info!(
                        checked_blocks = r.checked_blocks,
                        bad_chunks = r.bad.len(),
                        "scrub pass done"
                    ),
                    Err(e) => tracing::error!(error = %e, "scrub pass failed"),
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

/// Test hooks on the table cache.
#[cfg(test)]
impl ChunkStore {
    fn set_table_cache_limit(&self, bytes: u64) {
        self.inner.tables.lock().limit_bytes = bytes;
    }

    fn table_cached(&self, id: ChunkId) -> bool {
        self.get(id).is_ok_and(|c| c.io.read().is_some())
    }

    /// Check the cache's invariants; returns the bytes cached.
    fn check_table_cache(&self) -> u64 {
        // Copied out: the lock order is a chunk's io, then the cache.
        let (ring, bytes, limit) = {
            let cache = self.inner.tables.lock();
            (cache.ring.clone(), cache.bytes, cache.limit_bytes)
        };
        let mut sum = 0;
        for c in &ring {
            let table = c.io.read();
            let t = table.as_deref().expect("a chunk in the ring has a table");
            assert_eq!(t.len() as u64, c.table_bytes());
            // The copy is exactly the file's table.
            assert!(*t == *file::read_table(&c.file, c.size_bytes).expect("table"));
            sum += c.table_bytes();
        }
        let ids: BTreeSet<ChunkId> = ring.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), ring.len(), "a chunk twice in the ring");
        assert_eq!(sum, bytes);
        assert!(bytes <= limit);
        for c in self.inner.chunks.read().values() {
            if !ids.contains(&c.id) {
                assert!(c.io.read().is_none(), "a table outside the ring");
            }
        }
        bytes
    }
}

impl Inner {
    fn get(&self, id: ChunkId) -> Result<Arc<Chunk>, StoreError> {
        self.chunks
            .read()
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound(id))
    }

    /// Raise a chunk's epoch if `epoch` is newer, durably before returning;
    /// refuse an older one.
    fn admit_epoch(&self, c: &Arc<Chunk>, epoch: u64) -> Result<(), StoreError> {
        if c.admit(epoch)? {
            self.index.apply(&[(c.id, c.record())], &[])?;
        }
        Ok(())
    }

    /// The chunk, if `[offset, offset + len)` is a valid range of it and
    /// `epoch` is not stale (reads never raise the epoch).
    fn admit_read(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
        epoch: u64,
    ) -> Result<Arc<Chunk>, StoreError> {
        let chunk = self.get(id)?;
        chunk.check_range(offset, len)?;
        let have = chunk.state.lock().epoch;
        if epoch < have {
            return Err(StoreError::StaleEpoch {
                id,
                have,
                got: epoch,
            });
        }
        Ok(chunk)
    }

    /// The write path of `write`, `apply_delta` and `overwrite` (see
    /// docs/chunk-store.md, write protocol): under the chunk's exclusive
    /// lock, read the entries (and for Write/Xor the old data, which must
    /// verify), write the new entries, then the data; register for the
    /// group commit and, for Stable, wait for a sync covering it.
    /// `delta` (Write only) receives `old ⊕ new` (on error it may hold
    /// unverified bytes: the public callers zero or drop it).
    #[allow(clippy::too_many_arguments)]
    fn mutate(
        &self,
        id: ChunkId,
        offset: u64,
        data: &[u8],
        delta: Option<OldData<'_>>,
        epoch: u64,
        d: Durability,
        m: Mutation,
    ) -> Result<(), StoreError> {
        assert_eq!(delta.is_some(), m == Mutation::Write);
        let c = self.get(id)?;
        c.check_range(offset, data.len() as u64)?;
        self.admit_epoch(&c, epoch)?;
        if data.is_empty() {
            return Ok(());
        }
        let mut delta = delta;
        self.mutate_locked(&c, offset, data, delta.as_mut(), m)?;
        let seq = self.mark_dirty(&c);
        if d == Durability::Stable {
            self.sync_through(seq)?;
        }
        Ok(())
    }

    fn mutate_locked(
        &self,
        c: &Arc<Chunk>,
        offset: u64,
        data: &[u8],
        delta: Option<&mut OldData<'_>>,
        m: Mutation,
    ) -> Result<(), StoreError> {
        self.load_table_if_wanted(c);
        let mut table = c.io.write();
        if c.state.lock().gone {
            return Err(StoreError::NotFound(c.id));
        }
        let first = offset / BLOCK_BYTES;
        let n = data.len() as u64 / BLOCK_BYTES;
        let mut entries = c.entries_for_update(&table, first, n)?;
        // The new contents: `data` itself, or (Xor) old ⊕ data.
        let mut xored;
        let new: &[u8] = match m {
            Mutation::Overwrite => {
                // The old contents are not read: `prev` is the old `cur`.
                for i in 0..entries.len() {
                    let e = entries.get(i);
                    entries.set(
                        i,
                        Entry {
                            prev: e.cur,
                            cur: 0,
                        },
                    );
                }
                data
            }
            Mutation::Write | Mutation::Xor => {
                let old: &mut [u8] = match delta {
                    Some(OldData::Caller(out)) => {
                        c.file.read_exact_at(out, offset)?;
                        out
                    }
                    Some(OldData::Owned(v)) => {
                        file::read_to_vec(&c.file, v, data.len(), offset)?;
                        v
                    }
                    None => {
                        xored = Vec::new();
                        file::read_to_vec(&c.file, &mut xored, data.len(), offset)?;
                        &mut xored
                    }
                };
                // One CRC per old block: it verifies the block and becomes
                // the new entry's `prev`.
                let mut bad = Vec::new();
                for (i, block) in old.chunks_exact(BLOCK_BYTES as usize).enumerate() {
                    let sum = file::block_sum(block);
                    if !entries.get(i).accepts(sum) {
                        bad.push(first + i as u64);
                    }
                    entries.set(i, Entry { prev: sum, cur: 0 });
                }
                {
                    let s = c.state.lock();
                    bad.extend(s.bad.range(first..first + n).copied());
                }
                if !bad.is_empty() {
                    bad.sort_unstable();
                    bad.dedup();
                    self.note_bad(c, &bad);
                    return Err(StoreError::Checksum {
                        id: c.id,
                        blocks: bad,
                    });
                }
                file::xor_into(old, data);
                if m == Mutation::Write {
                    data
                } else {
                    old
                }
            }
        };
        for (i, block) in new.chunks_exact(BLOCK_BYTES as usize).enumerate() {
            let prev = entries.get(i).prev;
            entries.set(
                i,
                Entry {
                    prev,
                    cur: file::block_sum(block),
                },
            );
        }
        // Checksums first, then data: a process dying in between leaves
        // the old data, which still matches `prev`.
        self.write_entries(c, &mut table, first, &entries)?;
        c.file.write_all_at(new, offset)?;
        let cleared = {
            let mut s = c.state.lock();
            s.version += 1;
            let before = s.bad.len();
            if m == Mutation::Overwrite && before > 0 {
                let fixed: Vec<u64> = s.bad.range(first..first + n).copied().collect();
                for b in fixed {
                    s.bad.remove(&b);
                }
            }
            before != s.bad.len()
        };
        if cleared {
            self.index.apply(&[(c.id, c.record())], &[])?;
        }
        Ok(())
    }

    fn punch(
        &self,
        id: ChunkId,
        offset: u64,
        len: u64,
        epoch: u64,
        d: Durability,
    ) -> Result<(), StoreError> {
        let c = self.get(id)?;
        c.check_range(offset, len)?;
        self.admit_epoch(&c, epoch)?;
        if len == 0 {
            return Ok(());
        }
        self.load_table_if_wanted(&c);
        {
            let mut table = c.io.write();
            if c.state.lock().gone {
                return Err(StoreError::NotFound(c.id));
            }
            let first = offset / BLOCK_BYTES;
            let n = len / BLOCK_BYTES;
            let mut entries = c.entries_for_update(&table, first, n)?;
            for i in 0..entries.len() {
                let e = entries.get(i);
                entries.set(
                    i,
                    Entry {
                        prev: e.cur,
                        cur: 0,
                    },
                );
            }
            self.write_entries(&c, &mut table, first, &entries)?;
            file::punch_hole(&c.file, offset, len)?;
            let cleared = {
                let mut s = c.state.lock();
                s.version += 1;
                let before = s.bad.len();
                for b in first..first + n {
                    s.bad.remove(&b);
                }
                before != s.bad.len()
            };
            if cleared {
                self.index.apply(&[(c.id, c.record())], &[])?;
            }
        }
        let seq = self.mark_dirty(&c);
        if d == Durability::Stable {
            self.sync_through(seq)?;
        }
        Ok(())
    }

    /// Write a mutation's new entries to the file: a store into the
    /// mapped table when it is cached (no system call; the same bytes in
    /// the same page cache as a `pwrite`), else a `pwrite`.
    fn write_entries(
        &self,
        c: &Chunk,
        table: &mut CachedTable,
        first: u64,
        entries: &file::Entries,
    ) -> Result<(), StoreError> {
        let n = entries.len() as u64;
        let slot = file::table_range(first, n)
            .and_then(|r| table.as_deref_mut().and_then(|t| t.get_mut(r)));
        if let Some(slot) = slot {
            slot.copy_from_slice(entries.bytes());
            return Ok(());
        }
        // Not cached (or, impossibly, a range outside the mapping: then
        // the mapping is not used again).
        self.drop_table(c, table);
        entries.write(&c.file, c.size_bytes, first)?;
        Ok(())
    }

    /// Load the chunk's table into memory if it has been read from the
    /// file often enough (see [`Chunk::table_wanted`]) and fits. Best
    /// effort: a table that cannot be read or find room is not cached,
    /// and the chunk keeps reading its entries from the file.
    fn load_table_if_wanted(&self, c: &Arc<Chunk>) {
        if !c.table_wanted() {
            return;
        }
        let mut table = c.io.write();
        c.table_misses.store(0, Ordering::Relaxed);
        if table.is_some() || c.state.lock().gone {
            return;
        }
        let loaded = match file::map_table(&c.file, c.size_bytes) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(chunk = %c.id, error = %e, "could not map checksum table");
                return;
            }
        };
        let mut cache = self.tables.lock();
        if !cache.make_room(c.table_bytes()) {
            return;
        }
        cache.bytes += c.table_bytes();
        cache.ring.push_back(c.clone());
        c.table_used.store(true, Ordering::Relaxed);
        *table = Some(loaded);
    }

    /// Forget the chunk's cached table, if any (under its `io` lock held
    /// exclusively: `table` is its value). Linear in the cached tables:
    /// only delete and replacement find one to drop.
    fn drop_table(&self, c: &Chunk, table: &mut CachedTable) {
        if table.take().is_none() {
            return;
        }
        let mut cache = self.tables.lock();
        cache.ring.retain(|x| !std::ptr::eq(Arc::as_ptr(x), c));
        cache.bytes = cache.bytes.saturating_sub(c.table_bytes());
    }

    fn flush(&self) -> Result<(), StoreError> {
        let seq = self.sync.dirty.lock().0;
        self.sync_through(seq)?;
        self.persist_versions()
    }

    /// Group commit: return once every mutation with sequence ≤ `seq` is on
    /// stable storage. One caller at a time syncs everything dirty so far;
    /// the others wait on the leader lock and usually find themselves
    /// covered when they get it.
    fn sync_through(&self, seq: u64) -> Result<(), StoreError> {
        let sync = &self.sync;
        if sync.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let _leader = sync.leader.lock();
        if sync.synced.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let (upto, files) = {
            let mut g = sync.dirty.lock();
            (g.0, std::mem::take(&mut g.1))
        };
        let mut failed = None;
        for c in files.values() {
            if let Err(e) = c.file.sync_data() {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            // Keep them dirty so a later flush retries (and fails loudly).
            let mut g = sync.dirty.lock();
            for (id, c) in files {
                g.1.entry(id).or_insert(c);
            }
            return Err(e.into());
        }
        sync.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Register a completed mutation for the next group commit.
    fn mark_dirty(&self, chunk: &Arc<Chunk>) -> u64 {
        self.versions_dirty.lock().insert(chunk.id);
        let mut g = self.sync.dirty.lock();
        g.0 += 1;
        g.1.entry(chunk.id).or_insert_with(|| chunk.clone());
        g.0
    }

    fn persist_versions(&self) -> Result<(), StoreError> {
        let ids = std::mem::take(&mut *self.versions_dirty.lock());
        let map = self.chunks.read();
        let recs: Vec<(ChunkId, Record)> = ids
            .iter()
            .filter_map(|id| map.get(id).map(|c| (*id, c.record())))
            .collect();
        drop(map);
        self.index.apply(&recs, &[])
    }

    /// Record bad blocks: memory, counter, log, index (so they survive a
    /// restart). Persisting is best effort: the blocks still fail to verify.
    fn note_bad(&self, c: &Chunk, blocks: &[u64]) {
        let new = {
            let mut s = c.state.lock();
            blocks.iter().filter(|b| s.bad.insert(**b)).count()
        };
        self.checksum_errors
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        tracing::error!(chunk = %c.id, ?blocks, "checksum mismatch: blocks need repair");
        if new > 0 {
            if let Err(e) = self.index.apply(&[(c.id, c.record())], &[]) {
                tracing::error!(chunk = %c.id, error = %e, "could not persist bad blocks");
            }
        }
    }

    /// A new vector of `len` verified bytes at `offset`, verified against
    /// the entries in the file when `from` says so (the scrubber), else
    /// against the cached table if there is one.
    fn read_verified(
        &self,
        c: &Arc<Chunk>,
        offset: u64,
        len: u64,
        from: EntriesFrom,
    ) -> Result<Vec<u8>, StoreError> {
        let len = usize::try_from(len).map_err(io_other)?;
        let mut buf = Vec::new();
        if from == EntriesFrom::CacheOrFile {
            self.load_table_if_wanted(c);
        }
        let table = c.io.read();
        file::read_to_vec(&c.file, &mut buf, len, offset)?;
        // On error `buf` is dropped here: its bytes never leave.
        self.verify_locked(c, &table, offset, &buf, from)?;
        Ok(buf)
    }

    /// `read_verified` on a runtime thread, if nothing there can wait for
    /// the device: the chunk's checksum table is cached, no mutation holds
    /// its io lock, every byte is in the page cache (`RWF_NOWAIT`), and
    /// every block verifies. `None`: take `ChunkStore::data_io`, which also
    /// reports bad blocks. Saves the hand-off of `block_in_place` (or the
    /// pool's two thread hops) on each cached read.
    fn read_cached(&self, c: &Arc<Chunk>, offset: u64, len: u64) -> Option<Vec<u8>> {
        let len = usize::try_from(len).ok()?;
        let table = c.io.try_read()?;
        let first = offset / BLOCK_BYTES;
        let n = len as u64 / BLOCK_BYTES;
        let entries = c.cached_entries(&table, first, n)?;
        let mut buf = Vec::new();
        file::read_cached_to_vec(&c.file, &mut buf, len, offset).ok()?;
        if !file::verify_bytes(&buf, entries).is_empty() {
            return None;
        }
        let s = c.state.lock();
        if s.gone || s.bad.range(first..first + n).next().is_some() {
            return None;
        }
        Some(buf)
    }

    /// Fill `buf` from `offset` and verify every block against its entry
    /// (and the bad marks). On error `buf` holds unverified bytes: the
    /// caller zeroes it.
    fn read_verified_into(
        &self,
        c: &Arc<Chunk>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), StoreError> {
        self.load_table_if_wanted(c);
        let table = c.io.read();
        c.file.read_exact_at(buf, offset)?;
        self.verify_locked(c, &table, offset, buf, EntriesFrom::CacheOrFile)
    }

    /// Verify `buf`, just read at `offset`, under the chunk's io lock
    /// (held by the caller, shared or exclusive; `table` is its value).
    fn verify_locked(
        &self,
        c: &Chunk,
        table: &CachedTable,
        offset: u64,
        buf: &[u8],
        from: EntriesFrom,
    ) -> Result<(), StoreError> {
        let first = offset / BLOCK_BYTES;
        let n = buf.len() as u64 / BLOCK_BYTES;
        let cached = match from {
            EntriesFrom::CacheOrFile => c.cached_entries(table, first, n),
            EntriesFrom::File => None,
        };
        let bad = match cached {
            Some(entries) => file::verify_bytes(buf, entries),
            None => {
                if from == EntriesFrom::CacheOrFile {
                    c.table_misses.fetch_add(1, Ordering::Relaxed);
                }
                let entries = file::Entries::read(&c.file, c.size_bytes, first, n)?;
                file::verify_entries(buf, &entries)
            }
        };
        let mut bad: Vec<u64> = bad.into_iter().map(|b| b + first).collect();
        // Under the io lock `gone` cannot change: checked once, after.
        let known: Vec<u64> = {
            let s = c.state.lock();
            if s.gone {
                return Err(StoreError::NotFound(c.id));
            }
            s.bad.range(first..first + n).copied().collect()
        };
        if bad.is_empty() && known.is_empty() {
            return Ok(());
        }
        if !bad.is_empty() {
            self.note_bad(c, &bad);
        }
        bad.extend(known);
        bad.sort_unstable();
        bad.dedup();
        Err(StoreError::Checksum {
            id: c.id,
            blocks: bad,
        })
    }

    /// Verify blocks `[first, first + n)` against the file's entries, not
    /// the cached table: the scrubber checks what is on disk, the table
    /// included.
    fn scrub_range(&self, c: &Arc<Chunk>, first: u64, n: u64) -> Result<Vec<u64>, StoreError> {
        match self.read_verified(c, first * BLOCK_BYTES, n * BLOCK_BYTES, EntriesFrom::File) {
            Ok(_) => Ok(Vec::new()),
            Err(StoreError::Checksum { blocks, .. }) => Ok(blocks),
            Err(StoreError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Clean close: sync every dirty file, persist versions, mark clean.
    fn close(&self) -> Result<(), StoreError> {
        let files = std::mem::take(&mut self.sync.dirty.lock().1);
        for c in files.values() {
            c.file.sync_data()?;
        }
        self.persist_versions()?;
        self.index.set_clean(true)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.close_on_drop.load(Ordering::SeqCst) {
            return;
        }
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "chunk store did not close cleanly");
        }
    }
}

/// Remove chunk files (and `.tmp` leftovers) that the index does not know.
fn remove_orphans(
    chunks_dir: &Path,
    known: &HashMap<ChunkId, Arc<Chunk>>,
) -> Result<(), StoreError> {
    let known_paths: std::collections::HashSet<PathBuf> = known
        .keys()
        .map(|id| chunks_dir.join(id.rel_path()))
        .collect();
    for lun in std::fs::read_dir(chunks_dir)? {
        let lun = lun?.path();
        if !lun.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&lun)? {
            let p = f?.path();
            if !known_paths.contains(&p) {
                tracing::warn!(path = %p.display(), "removing chunk file unknown to the index");
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}
