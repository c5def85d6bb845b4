//! The extent primary's write journal (DESIGN.md, write path, step 2 and 4).
//!
//! The primary appends a record for each write before it touches any chunk
//! and gets back a sequence number once the record is on stable storage; it
//! trims the journal up to a sequence number once every chunk of those
//! writes has acknowledged. A primary that restarts replays what is left,
//! so a crash between the data and the parity update never leaves them
//! disagreeing (no RAID-5 write hole).
//!
//! Records are opaque bytes to the journal: the primary defines (and
//! versions) their content.
//!
//! # On disk
//!
//! A directory of segment files `seg-<first seq, 20 digits>.wj` and a trim
//! point file `trimmed`. Big-endian throughout.
//!
//! ```text
//! segment header (24 bytes, written and fsynced when the segment is made)
//!   0   8  magic "WEFTJNL\0"
//!   8   4  format version (1)
//!  12   4  reserved, 0
//!  16   8  first seq of the segment
//! record (16-byte frame + payload), back to back after the header
//!   0   4  payload length
//!   4   4  CRC32C of bytes 0..4, 8..16 and the payload
//!   8   8  seq (consecutive)
//!  16   n  payload
//! trimmed (16 bytes, replaced atomically: temp + fsync + rename)
//!   0   8  seq: every record up to it is trimmed
//!   8   4  format version (1)
//!  12   4  CRC32C of bytes 0..12
//! settled (12 bytes, written in place, never synced)
//!   0   8  seq: every record up to it was settled (see below)
//!   8   4  CRC32C of bytes 0..8
//! ```
//!
//! # Why
//!
//! - **Length + CRC framing**: a crash tears at most the tail of the last
//!   segment (records are appended, then one `fdatasync` covers a whole
//!   batch). Replay stops at the first record whose frame is short, whose
//!   length is impossible, whose CRC does not match or whose seq is not the
//!   next one, and cuts the file there so new records follow intact ones.
//! - **Earlier segments are never torn**: a new segment is made only
//!   between batches, after the previous batch was synced. So a bad record
//!   before the last segment is corruption, reported as an error
//!   (dropping it silently could lose an acknowledged write).
//! - **Group commit, leader/follower**: an appender that finds nobody
//!   writing becomes the leader: on its own thread it takes every append
//!   queued, writes them with one `write`, syncs once, and answers them
//!   all; appenders arriving meanwhile queue behind it and share the next
//!   leader's `fdatasync`. An uncontended append thus costs no thread hop
//!   (a dedicated writer thread cost two wake-ups per append, measured in
//!   `docs/benchmarks.md`). If more is queued when a leader is done, a
//!   task takes over, so no caller waits on others' batches.
//! - **A failed write or sync poisons the journal** (every later call
//!   fails): after a failed `fsync` the kernel may have dropped the dirty
//!   pages, so retrying could report durable what is not. The process must
//!   restart and replay.
//! - **Whole segments are deleted on trim**; the trim point is persisted on
//!   every trim, so replay hands back only records still in flight (each
//!   replayed record holds its extent out of service until reconciled).
//!   It is kept in two copies written in turn in place (16 bytes and one
//!   `fdatasync`): a crash tearing one leaves the trim point before it, so
//!   at worst the last trim's records are reconciled again, which is
//!   harmless (reconciling recomputes parity from the data). Persisting it
//!   lazily (every 256 trims) saved ~12 % of the cluster's CPU per 4 KiB
//!   write but was not kept: in `weft-sim` the extra replay made seeds fail
//!   (a node unavailable for its whole replay) and lose determinism
//!   (`docs/benchmarks.md`, "later still").
//! - **Settled point**: the primary keeps a record until its writes are
//!   flushed on every chunk (so that a power loss can be reconciled), but
//!   most of the records a replay then finds were acknowledged, their rows
//!   agreeing, and need nothing after a mere process crash. The primary
//!   says up to where every record is so ([`Journal::mark_settled`]),
//!   written in place with no sync: a process kill keeps it; a power loss
//!   may take it back or tear it (its CRC then fails and it reads 0), which
//!   only makes the replay do more. Replay reports it
//!   ([`Journal::settled_at_open`]).
//! - **Bounded**: appends past `bytes_max` of live segments fail with
//!   [`JournalError::Full`] (the primary holds writes until trims catch up);
//!   records, batches and the queue have named limits.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Semaphore};
use tracing::{info, warn};

/// Segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"WEFTJNL\0";
/// The format this build writes and reads.
pub const JOURNAL_FORMAT_VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_BYTES: u64 = 24;
/// Bytes of a record frame before its payload.
pub const RECORD_FRAME_BYTES: u64 = 16;
/// Largest record payload: a journaled write carries its data (at most
/// `CHUNK_IO_BYTES_MAX`, 4 MiB) plus the primary's metadata.
pub const RECORD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// A segment is closed and a new one started once it holds this much.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Live journal bytes allowed by default (all segments not yet deleted).
pub const JOURNAL_BYTES_MAX_DEFAULT: u64 = 1024 * 1024 * 1024;
/// Bytes written by one batch (one `write` + one `fdatasync`) at most; a
/// larger backlog is taken in several batches so no appender waits behind
/// an unbounded one.
pub const BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Requests queued for the writer thread; more appenders wait.
pub const QUEUE_REQUESTS_MAX: usize = 1024;
/// On trim, a fully trimmed active segment at least this big is closed and
/// deleted at once (rather than waiting to fill), to give space back.
pub const ROLL_ON_TRIM_BYTES_MIN: u64 = 1024 * 1024;

const TRIM_FILE: &str = "trimmed";
/// The settled point file (see the module doc).
const SETTLED_FILE: &str = "settled";
const SETTLED_FILE_BYTES: usize = 12;
/// One copy of the trim point: seq, format version, CRC32C of both.
const TRIM_SLOT_BYTES: usize = 16;
/// The trim point file holds two copies, written in turn in place: a write
/// torn by a crash spoils only the copy being written, and the other holds
/// the trim point before it (journals of an older build hold one copy).
const TRIM_FILE_BYTES: usize = 2 * TRIM_SLOT_BYTES;

/// Why a journal call failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal segment {path}: format version {version} (this build reads {JOURNAL_FORMAT_VERSION})")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("journal segment {path} is corrupt at byte {offset} (not its tail: the segment was complete when the next one began): {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("journal record of {bytes} bytes exceeds {RECORD_BYTES_MAX}")]
    RecordTooLarge { bytes: usize },
    #[error("journal full: {used_bytes} of {bytes_max} bytes live; trim before appending more")]
    Full { used_bytes: u64, bytes_max: u64 },
    #[error("journal failed earlier ({0}); restart to replay")]
    Poisoned(String),
    #[error("journal closed")]
    Closed,
}

/// Where and how big.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub bytes_max: u64,
}

impl JournalConfig {
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            bytes_max: JOURNAL_BYTES_MAX_DEFAULT,
        }
    }
}

/// One journal record as replay hands it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Bytes,
}

/// What the journal holds right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Last seq appended (0: none ever).
    pub last_seq: u64,
    pub trimmed_seq: u64,
    pub segments: usize,
    pub live_bytes: u64,
    /// `fdatasync` calls made: less than appends when they were grouped.
    pub syncs: u64,
    pub appends: u64,
}

/// The write journal. Cheap to share behind an `Arc`; every method may be
/// called concurrently.
pub struct Journal {
    shared: Arc<Shared>,
    /// The settled point found at open.
    settled_at_open: u64,
    /// The settled point file and the highest point written to it.
    settled: Mutex<(Option<File>, u64)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

/// An append waiting for a leader to write it.
type Pending = (Bytes, oneshot::Sender<Result<u64, JournalError>>);

/// What the callers share: the queue (locked briefly, never across I/O)
/// and the writer (locked only by the one leader, across its I/O).
struct Shared {
    queue: Mutex<Queue>,
    writer: Mutex<Writer>,
    /// The seq the next append gets at least (the writer's, as of its last
    /// batch).
    next_seq: std::sync::atomic::AtomicU64,
    /// Appends queued and not yet taken by a leader: `QUEUE_REQUESTS_MAX`.
    slots: Semaphore,
}

#[derive(Default)]
struct Queue {
    appends: VecDeque<Pending>,
    /// The highest trim asked for and not yet applied (0: none).
    trim_upto: u64,
    /// The trims waiting for it.
    trim_waiters: Vec<oneshot::Sender<Result<(), JournalError>>>,
    /// A caller (or a task it handed over to) is writing: it takes
    /// everything queued before it lets go.
    leading: bool,
    closed: bool,
    /// Answered when the current leader lets go (a `close` waiting).
    close_waiters: Vec<oneshot::Sender<()>>,
    /// The writer's figures after the last batch.
    stats: JournalStats,
    /// The writer's poisoning, as of the last batch.
    poisoned: Option<String>,
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir`, cuts a torn tail,
    /// and returns it with the records to replay (those after the last
    /// persisted trim point, in order). Blocking: call it before serving,
    /// or from `spawn_blocking`.
    pub fn open(config: JournalConfig) -> Result<(Journal, Vec<Record>), JournalError> {
        let path = config.dir.join(SETTLED_FILE);
        let (writer, records) = Writer::open(config)?;
        let queue = Queue {
            stats: writer.stats(),
            ..Queue::default()
        };
        let settled_at_open = read_settled(&path);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            next_seq: std::sync::atomic::AtomicU64::new(writer.next_seq),
            writer: Mutex::new(writer),
            slots: Semaphore::new(QUEUE_REQUESTS_MAX),
        });
        let journal = Journal {
            shared,
            settled_at_open,
            settled: Mutex::new((Some(file), settled_at_open)),
        };
        Ok((journal, records))
    }

    /// The seq the next append will get at least: an append that starts
    /// after this call gets this seq or a higher one.
    pub fn next_seq(&self) -> u64 {
        self.shared
            .next_seq
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The settled point the last run left (0: none, or unreadable).
    pub fn settled_at_open(&self) -> u64 {
        self.settled_at_open
    }

    /// Notes that every record up to `upto` is settled (see the module
    /// doc). Not synced; a failure is logged and makes replay do more.
    pub fn mark_settled(&self, upto: u64) {
        use std::os::unix::fs::FileExt;
        let mut s = self.settled.lock();
        if upto <= s.1 {
            return;
        }
        let Some(file) = &s.0 else {
            return;
        };
        let mut buf = [0u8; SETTLED_FILE_BYTES];
        buf[..8].copy_from_slice(&upto.to_be_bytes());
        let crc = crc32c::crc32c(&buf[..8]);
        buf[8..].copy_from_slice(&crc.to_be_bytes());
        match file.write_all_at(&buf, 0) {
            Ok(()) => s.1 = upto,
            Err(e) => {
                warn!(%e, "journal: cannot write the settled point; a replay will reconcile more");
                s.0 = None;
            }
        }
    }

    /// Appends `payload`; returns its seq once it is on stable storage.
    ///
    /// Leader/follower group commit: an append that finds nobody writing
    /// writes and syncs the queue itself, on the calling thread (no hop to
    /// another thread and back); appends that arrive meanwhile queue up and
    /// are written together by the next leader with one `fdatasync`.
    pub async fn append(&self, payload: Bytes) -> Result<u64, JournalError> {
        if payload.len() > RECORD_BYTES_MAX {
            return Err(JournalError::RecordTooLarge {
                bytes: payload.len(),
            });
        }
        let permit = self
            .shared
            .slots
            .acquire()
            .await
            .map_err(|_| JournalError::Closed)?;
        // The slot is given back when a leader takes the append.
        permit.forget();
        let (tx, mut rx) = oneshot::channel();
        let leading = {
            let mut q = self.shared.queue.lock();
            let refused = match &q.poisoned {
                Some(why) => Some(JournalError::Poisoned(why.clone())),
                None if q.closed => Some(JournalError::Closed),
                None => None,
            };
            if let Some(e) = refused {
                drop(q);
                self.shared.slots.add_permits(1);
                return Err(e);
            }
            q.appends.push_back((payload, tx));
            q.leading
        };
        if !leading {
            // On a current-thread runtime (the simulation, tests) other
            // appenders can only queue while this task yields; on a
            // multi-thread runtime they queue from the other threads while
            // a leader writes, and yielding would only add a reschedule.
            if tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
            {
                tokio::task::yield_now().await;
            }
            self.shared.lead_if_idle();
        }
        if let Ok(r) = rx.try_recv() {
            return r;
        }
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Retires every record up to `upto_seq` (every chunk acknowledged
    /// them): replay will not return them, and segments holding only them
    /// are deleted.
    ///
    /// Like appends, a trim that finds nobody writing does its I/O on the
    /// calling thread; one that finds a leader is done by it (with the
    /// other trims queued: only the highest is written).
    pub async fn trim(&self, upto_seq: u64) -> Result<(), JournalError> {
        let (tx, mut rx) = oneshot::channel();
        let leading = {
            let mut q = self.shared.queue.lock();
            q.trim_upto = q.trim_upto.max(upto_seq);
            q.trim_waiters.push(tx);
            q.leading
        };
        if !leading {
            self.shared.lead_if_idle();
        }
        if let Ok(r) = rx.try_recv() {
            return r;
        }
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// The figures as of the last batch written.
    pub async fn stats(&self) -> Result<JournalStats, JournalError> {
        Ok(self.shared.queue.lock().stats)
    }

    /// Finishes queued work and closes the files.
    pub async fn close(self) {
        let rx = {
            let mut q = self.shared.queue.lock();
            q.closed = true;
            if q.leading {
                let (tx, rx) = oneshot::channel();
                q.close_waiters.push(tx);
                Some(rx)
            } else {
                None
            }
        };
        match rx {
            Some(rx) => {
                let _ = rx.await;
            }
            None => self.shared.lead_if_idle(),
        }
        self.shared.writer.lock().active = None;
    }
}

impl Shared {
    /// Becomes the leader if nobody is, and writes what is queued.
    fn lead_if_idle(self: &Arc<Self>) {
        {
            let mut q = self.queue.lock();
            if q.leading {
                return;
            }
            q.leading = true;
        }
        self.lead();
    }

    /// Writes what is queued as the leader (the caller set `leading`).
    /// If more arrived while it wrote, leadership passes to a task, so that
    /// the caller gets its answer now and no caller leads for long.
    ///
    /// The I/O runs on the calling runtime thread: at most one thread at a
    /// time is in the journal's `write` + `fdatasync` (the leader), so the
    /// other runtime threads go on serving. On tmpfs or a disk with a
    /// power-safe cache that is a few microseconds; the hop to a dedicated
    /// writer thread and back cost two wake-ups per append.
    fn lead(self: &Arc<Self>) {
        if self.lead_one() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let me = self.clone();
                    rt.spawn(async move {
                        loop {
                            tokio::task::yield_now().await;
                            if !me.lead_one() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => while self.lead_one() {},
            }
        }
    }

    /// Takes one batch (appends up to `BATCH_BYTES_MAX`, and the pending
    /// trim) off the queue and handles it, I/O on this thread. Returns
    /// true if more is queued (still leading), false once it let go.
    fn lead_one(&self) -> bool {
        let mut w = self.writer.lock();
        let guard = LeaderGuard(self);
        let (batch, trim, trim_waiters) = {
            let mut q = self.queue.lock();
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while bytes < BATCH_BYTES_MAX {
                let Some(op) = q.appends.pop_front() else {
                    break;
                };
                bytes += op.0.len() + RECORD_FRAME_BYTES as usize;
                batch.push(op);
            }
            let trim = std::mem::take(&mut q.trim_upto);
            (batch, trim, std::mem::take(&mut q.trim_waiters))
        };
        self.slots.add_permits(batch.len());
        if !batch.is_empty() {
            w.append_batch(batch);
            self.next_seq
                .store(w.next_seq, std::sync::atomic::Ordering::Release);
        }
        if trim > 0 || !trim_waiters.is_empty() {
            let r = w.trim(trim);
            if let Err(e) = &r {
                warn!(%e, "journal: trim failed; poisoned until restart");
            }
            for tx in trim_waiters {
                let _ = tx.send(match &r {
                    Ok(()) => Ok(()),
                    Err(e) => Err(JournalError::Poisoned(e.to_string())),
                });
            }
        }
        std::mem::forget(guard);
        let mut q = self.queue.lock();
        q.stats = w.stats();
        q.poisoned.clone_from(&w.poisoned);
        if !q.appends.is_empty() || !q.trim_waiters.is_empty() {
            return true;
        }
        q.leading = false;
        for tx in q.close_waiters.drain(..) {
            let _ = tx.send(());
        }
        false
    }
}

/// Lets go of the leadership if the leader's I/O panics, poisoning the
/// journal: appends fail rather than wait for a leader that is gone.
struct LeaderGuard<'a>(&'a Shared);

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut q = self.0.queue.lock();
        let why = "journal writer panicked".to_string();
        let n = q.appends.len();
        for (_, tx) in q.appends.drain(..) {
            let _ = tx.send(Err(JournalError::Poisoned(why.clone())));
        }
        self.0.slots.add_permits(n);
        q.poisoned = Some(why);
        // Their senders dropped: those trims fail with `Closed`.
        q.trim_waiters.clear();
        q.leading = false;
        for tx in q.close_waiters.drain(..) {
            let _ = tx.send(());
        }
    }
}

/// A segment file as the writer knows it.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    /// Last seq in it (first_seq - 1 when empty).
    last_seq: u64,
    bytes: u64,
}

/// The writer thread's state: owns every file.
struct Writer {
    config: JournalConfig,
    segments: Vec<Segment>,
    /// The last segment, open for appending.
    active: Option<File>,
    next_seq: u64,
    trimmed_seq: u64,
    /// The trim point file, open once it has both copies; and the copy the
    /// next trim overwrites (the older one).
    trim_file: Option<File>,
    trim_slot: u64,
    poisoned: Option<String>,
    syncs: u64,
    appends: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The settled point in the file at `path`; 0 if absent, short or torn.
fn read_settled(path: &Path) -> u64 {
    let Ok(data) = fs::read(path) else {
        return 0;
    };
    let (Some(seq), Some(crc)) = (data.get(..8), data.get(8..SETTLED_FILE_BYTES)) else {
        return 0;
    };
    if crc32c::crc32c(seq) != be_u32(crc) {
        warn!(path = %path.display(), "journal: settled point torn; replaying every record");
        return 0;
    }
    seq.try_into().map_or(0, u64::from_be_bytes)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("seg-{first_seq:020}.wj"))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn record_crc(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&len.to_be_bytes());
    let crc = crc32c::crc32c_append(crc, &seq.to_be_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Appends the frame of one record to `buf`.
pub(crate) fn encode_record(seq: u64, payload: &[u8], buf: &mut Vec<u8>) {
    // Callers bound payloads by RECORD_BYTES_MAX (< 4 GiB).
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&record_crc(len, seq, payload).to_be_bytes());
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(payload);
}

fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_be_bytes());
    h[16..24].copy_from_slice(&first_seq.to_be_bytes());
    h
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The result of scanning one segment.
struct Scan {
    records: Vec<Record>,
    /// Bytes up to the end of the last intact record.
    good_bytes: u64,
    /// Why the scan stopped before the end of the file, if it did.
    torn: Option<String>,
}

/// Reads every intact record of a segment whose header was checked,
/// stopping at the first bad one. Never trusts a length before checking it
/// against the limit and the bytes left.
fn scan_segment(data: &[u8], first_seq: u64) -> Scan {
    let mut records = Vec::new();
    let mut pos = SEGMENT_HEADER_BYTES as usize;
    let mut expect = first_seq;
    let torn = loop {
        let rest = data.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            break None;
        }
        if rest.len() < RECORD_FRAME_BYTES as usize {
            break Some(format!("{} bytes of a record frame", rest.len()));
        }
        let len = be_u32(&rest[0..4]);
        let crc = be_u32(&rest[4..8]);
        let seq = be_u64(&rest[8..16]);
        let len_usize = len as usize;
        if len_usize > RECORD_BYTES_MAX {
            break Some(format!("record length {len} over the limit"));
        }
        let Some(payload) = rest.get(16..16 + len_usize) else {
            break Some(format!("record of {len} bytes cut short"));
        };
        if record_crc(len, seq, payload) != crc {
            break Some(format!("CRC mismatch in record {seq}"));
        }
        if seq != expect {
            break Some(format!("seq {seq} where {expect} was expected"));
        }
        records.push(Record {
            seq,
            payload: Bytes::copy_from_slice(payload),
        });
        expect += 1;
        pos += 16 + len_usize;
    };
    Scan {
        records,
        good_bytes: pos as u64,
        torn,
    }
}

impl Writer {
    fn open(config: JournalConfig) -> Result<(Writer, Vec<Record>), JournalError> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let trimmed_seq = read_trim_point(&dir)?;
        let mut paths = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name
                .strip_prefix("seg-")
                .and_then(|s| s.strip_suffix(".wj"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                paths.push((seq, entry.path()));
            }
        }
        paths.sort();
        let mut segments = Vec::new();
        let mut replay = Vec::new();
        let count = paths.len();
        for (i, (name_seq, path)) in paths.into_iter().enumerate() {
            let last = i + 1 == count;
            let data = fs::read(&path).map_err(io_err(&path))?;
            let corrupt = |offset: u64, reason: String| JournalError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            };
            // The header.
            let header_ok = name_seq > 0
                && data.len() >= SEGMENT_HEADER_BYTES as usize
                && data[0..8] == SEGMENT_MAGIC
                && be_u64(&data[16..24]) == name_seq;
            if !header_ok {
                if last && data.len() <= SEGMENT_HEADER_BYTES as usize {
                    // Made but its header not yet synced when the process
                    // died (short, or zeros): it holds no record, since
                    // records follow only a synced header.
                    warn!(path = %path.display(), "journal: removing a segment with a torn header");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    sync_dir(&dir)?;
                    continue;
                }
                return Err(corrupt(0, "bad segment header".into()));
            }
            let version = be_u32(&data[8..12]);
            if version != JOURNAL_FORMAT_VERSION {
                return Err(JournalError::UnsupportedVersion { path, version });
            }
            if let Some(prev) = segments.last() {
                let prev: &Segment = prev;
                if prev.last_seq + 1 != name_seq {
                    return Err(corrupt(
                        0,
                        format!(
                            "segment starts at seq {name_seq} but the previous one ended at {}",
                            prev.last_seq
                        ),
                    ));
                }
            }
            let scan = scan_segment(&data, name_seq);
            if let Some(reason) = &scan.torn {
                if !last {
                    return Err(corrupt(scan.good_bytes, reason.clone()));
                }
                warn!(path = %path.display(), offset = scan.good_bytes, %reason,
                    "journal: cutting a torn tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(scan.good_bytes).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
            }
            let last_seq = scan.records.last().map_or(name_seq - 1, |r| r.seq);
            replay.extend(scan.records.into_iter().filter(|r| r.seq > trimmed_seq));
            segments.push(Segment {
                path,
                first_seq: name_seq,
                last_seq,
                bytes: scan.good_bytes,
            });
        }
        let next_seq = segments
            .last()
            .map_or(0, |s| s.last_seq)
            .max(trimmed_seq)
            .saturating_add(1);
        let active = match segments.last() {
            Some(s) => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(io_err(&s.path))?,
            ),
            None => None,
        };
        info!(dir = %dir.display(), segments = segments.len(), replay = replay.len(),
            next_seq, trimmed_seq, "journal: opened");
        let writer = Writer {
            config,
            segments,
            active,
            next_seq,
            trimmed_seq,
            trim_file: None,
            trim_slot: 0,
            poisoned: None,
            syncs: 0,
            appends: 0,
        };
        Ok((writer, replay))
    }

    fn stats(&self) -> JournalStats {
        JournalStats {
            last_seq: self.next_seq - 1,
            trimmed_seq: self.trimmed_seq,
            segments: self.segments.len(),
            live_bytes: self.live_bytes(),
            syncs: self.syncs,
            appends: self.appends,
        }
    }

    fn live_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    fn append_batch(&mut self, batch: Vec<(Bytes, oneshot::Sender<Result<u64, JournalError>>)>) {
        if let Some(why) = &self.poisoned {
            for (_, tx) in batch {
                let _ = tx.send(Err(JournalError::Poisoned(why.clone())));
            }
            return;
        }
        // Refuse what does not fit under the bound, keep the rest.
        let mut live = self.live_bytes();
        let mut accepted = Vec::with_capacity(batch.len());
        for (p, tx) in batch {
            let need = p.len() as u64 + RECORD_FRAME_BYTES;
            if live + need > self.config.bytes_max {
                let _ = tx.send(Err(JournalError::Full {
                    used_bytes: live,
                    bytes_max: self.config.bytes_max,
                }));
            } else {
                live += need;
                accepted.push((p, tx));
            }
        }
        if accepted.is_empty() {
            return;
        }
        let first = self.next_seq;
        match self.write_and_sync(&accepted, first) {
            Ok(()) => {
                self.next_seq += accepted.len() as u64;
                self.appends += accepted.len() as u64;
                for (i, (_, tx)) in accepted.into_iter().enumerate() {
                    let _ = tx.send(Ok(first + i as u64));
                }
            }
            Err(e) => {
                let why = e.to_string();
                warn!(error = %why, "journal: write failed; poisoned until restart");
                self.poisoned = Some(why.clone());
                for (_, tx) in accepted {
                    let _ = tx.send(Err(JournalError::Poisoned(why.clone())));
                }
            }
        }
    }

    fn write_and_sync(
        &mut self,
        records: &[(Bytes, oneshot::Sender<Result<u64, JournalError>>)],
        first_seq: u64,
    ) -> Result<(), JournalError> {
        let needs_roll = match self.segments.last() {
            None => true,
            Some(s) => s.bytes >= self.config.segment_bytes,
        };
        if needs_roll || self.active.is_none() {
            self.roll(first_seq)?;
        }
        let mut buf = Vec::new();
        for (i, (p, _)) in records.iter().enumerate() {
            encode_record(first_seq + i as u64, p, &mut buf);
        }
        let (Some(file), Some(seg)) = (self.active.as_mut(), self.segments.last_mut()) else {
            return Err(JournalError::Poisoned("no active segment".into()));
        };
        file.write_all(&buf).map_err(io_err(&seg.path))?;
        file.sync_data().map_err(io_err(&seg.path))?;
        self.syncs += 1;
        seg.bytes += buf.len() as u64;
        seg.last_seq = first_seq + records.len() as u64 - 1;
        Ok(())
    }

    /// Starts a new segment whose first record will be `first_seq`. The
    /// previous one is complete and synced (rolls happen between batches).
    fn roll(&mut self, first_seq: u64) -> Result<(), JournalError> {
        let path = segment_path(&self.config.dir, first_seq);
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(&segment_header(first_seq))
            .map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))?;
        sync_dir(&self.config.dir)?;
        self.active = Some(f);
        self.segments.push(Segment {
            path,
            first_seq,
            last_seq: first_seq - 1,
            bytes: SEGMENT_HEADER_BYTES,
        });
        Ok(())
    }

    fn trim(&mut self, upto: u64) -> Result<(), JournalError> {
        if let Some(why) = &self.poisoned {
            return Err(JournalError::Poisoned(why.clone()));
        }
        let upto = upto.min(self.next_seq - 1);
        if upto <= self.trimmed_seq {
            return Ok(());
        }
        let r = self.trim_inner(upto);
        if let Err(e) = &r {
            self.poisoned = Some(e.to_string());
        }
        r
    }

    fn trim_inner(&mut self, upto: u64) -> Result<(), JournalError> {
        self.write_trim_point(upto)?;
        self.trimmed_seq = upto;
        // Close a fully trimmed, sizeable active segment so it can go too.
        if let Some(active) = self.segments.last() {
            if active.last_seq <= upto
                && active.last_seq >= active.first_seq
                && active.bytes >= ROLL_ON_TRIM_BYTES_MIN
            {
                self.roll(self.next_seq)?;
            }
        }
        let keep_from = self.segments.len().saturating_sub(1);
        let mut deleted = 0;
        for seg in &self.segments[..keep_from] {
            if seg.last_seq > upto {
                break;
            }
            fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
            deleted += 1;
        }
        if deleted > 0 {
            self.segments.drain(..deleted);
            sync_dir(&self.config.dir)?;
        }
        Ok(())
    }
}

/// The trim point: the newer of the file's intact copies (0 without one).
fn read_trim_point(dir: &Path) -> Result<u64, JournalError> {
    let path = dir.join(TRIM_FILE);
    let mut buf = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut buf).map_err(io_err(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(&path)(e)),
    }
    let bad = |reason: &str| JournalError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason: reason.into(),
    };
    if buf.len() != TRIM_FILE_BYTES && buf.len() != TRIM_SLOT_BYTES {
        return Err(bad("trim point file has the wrong size"));
    }
    let mut newest = None;
    for slot in buf.chunks_exact(TRIM_SLOT_BYTES) {
        if crc32c::crc32c(&slot[0..12]) != be_u32(&slot[12..16]) {
            continue; // torn by a crash while written: the other one holds
        }
        let version = be_u32(&slot[8..12]);
        if version != JOURNAL_FORMAT_VERSION {
            return Err(JournalError::UnsupportedVersion { path, version });
        }
        newest = newest.max(Some(be_u64(&slot[0..8])));
    }
    newest.ok_or_else(|| bad("trim point CRC mismatch"))
}

fn trim_slot(seq: u64) -> [u8; TRIM_SLOT_BYTES] {
    let mut slot = [0u8; TRIM_SLOT_BYTES];
    slot[0..8].copy_from_slice(&seq.to_be_bytes());
    slot[8..12].copy_from_slice(&JOURNAL_FORMAT_VERSION.to_be_bytes());
    let crc = crc32c::crc32c(&slot[0..12]);
    slot[12..16].copy_from_slice(&crc.to_be_bytes());
    slot
}

/// Writes the trim point file with both copies holding `seq`, atomically
/// (a temporary file renamed), and opens it for the in-place writes.
fn make_trim_file(dir: &Path, seq: u64) -> Result<File, JournalError> {
    let path = dir.join(TRIM_FILE);
    let tmp = dir.join(format!("{TRIM_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    let slot = trim_slot(seq);
    f.write_all(&[slot, slot].concat()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)?;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err(&path))
}

impl Writer {
    /// Persists the trim point: one 16-byte write in place and one
    /// `fdatasync`, into the older copy. The file is made once, with both
    /// copies, by writing a temporary file and renaming it; making it on
    /// every trim cost ~20 µs of a 4 KiB write (create, rename, two syncs).
    fn write_trim_point(&mut self, seq: u64) -> Result<(), JournalError> {
        use std::os::unix::fs::FileExt;
        let path = self.config.dir.join(TRIM_FILE);
        let f = match &mut self.trim_file {
            Some(f) => f,
            none => none.insert(make_trim_file(&self.config.dir, self.trimmed_seq)?),
        };
        let at = self.trim_slot * TRIM_SLOT_BYTES as u64;
        f.write_all_at(&trim_slot(seq), at).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))?;
        self.trim_slot ^= 1;
        Ok(())
    }
}

/// Test helper: the segment files, oldest first.
#[doc(hidden)]
pub fn segment_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wj"))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn payload(i: u64, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|j| (i as usize * 31 + j) as u8)
                .collect::<Vec<_>>(),
        )
    }

    /// Appends `lens.len()` records (one at a time) and closes.
    fn write_records(cfg: &JournalConfig, lens: &[usize]) -> Vec<Record> {
        rt().block_on(async {
            let (j, replay) = Journal::open(cfg.clone()).unwrap();
            let mut out = replay;
            for (i, &len) in lens.iter().enumerate() {
                let p = payload(i as u64, len);
                let seq = j.append(p.clone()).await.unwrap();
                out.push(Record { seq, payload: p });
            }
            j.close().await;
            out
        })
    }

    fn reopen(cfg: &JournalConfig) -> Result<Vec<Record>, JournalError> {
        rt().block_on(async {
            let (j, replay) = Journal::open(cfg.clone())?;
            j.close().await;
            Ok(replay)
        })
    }

    #[test]
    fn append_replay_trim_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            segment_bytes: 4096,
            ..JournalConfig::new(dir.path())
        };
        let written = write_records(&cfg, &[1000; 20]);
        assert_eq!(written.len(), 20);
        assert_eq!(written[0].seq, 1);
        assert!(segment_files(dir.path()).unwrap().len() >= 4);
        assert_eq!(reopen(&cfg).unwrap(), written);
        rt().block_on(async {
            let (j, replay) = Journal::open(cfg.clone()).unwrap();
            assert_eq!(replay.len(), 20);
            j.trim(12).await.unwrap();
            let s = j.stats().await.unwrap();
            assert_eq!(s.trimmed_seq, 12);
            // Segments wholly at or below 12 are gone.
            assert!(s.segments < 6, "{s:?}");
            assert_eq!(j.append(Bytes::from_static(b"x")).await.unwrap(), 21);
            j.close().await;
        });
        let after = reopen(&cfg).unwrap();
        let seqs: Vec<u64> = after.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (13..=21).collect::<Vec<_>>());
        assert_eq!(after[0], written[12]);
        // Trimming everything keeps seqs going after a restart.
        rt().block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            j.trim(u64::MAX).await.unwrap();
            j.close().await;
        });
        assert!(reopen(&cfg).unwrap().is_empty());
        let more = write_records(&cfg, &[5]);
        assert_eq!(more.last().unwrap().seq, 22);
    }

    #[test]
    fn the_settled_point_survives_a_reopen_and_a_torn_one_reads_zero() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig::new(dir.path());
        rt().block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            assert_eq!(j.settled_at_open(), 0);
            assert_eq!(j.next_seq(), 1);
            for i in 0..3 {
                j.append(payload(i, 10)).await.unwrap();
            }
            assert_eq!(j.next_seq(), 4, "a lower bound that follows the appends");
            j.mark_settled(2);
            j.mark_settled(1); // never goes back
            drop(j); // as a crash: nothing synced
        });
        rt().block_on(async {
            let (j, replay) = Journal::open(cfg.clone()).unwrap();
            assert_eq!(replay.len(), 3, "settling trims nothing");
            assert_eq!(j.settled_at_open(), 2);
            j.close().await;
        });
        let path = dir.path().join(SETTLED_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        rt().block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            assert_eq!(
                j.settled_at_open(),
                0,
                "a torn settled point counts for nothing"
            );
            j.close().await;
        });
    }

    #[test]
    fn concurrent_appends_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig::new(dir.path());
        let stats = rt().block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            let j = Arc::new(j);
            let mut tasks = Vec::new();
            for i in 0..200u64 {
                let j = j.clone();
                tasks.push(tokio::spawn(async move { j.append(payload(i, 100)).await }));
            }
            let mut seqs = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap().unwrap());
            }
            seqs.sort();
            assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
            j.stats().await.unwrap()
        });
        assert_eq!(stats.appends, 200);
        assert!(stats.syncs < 200, "no grouping: {stats:?}");
        assert_eq!(reopen(&cfg).unwrap().len(), 200);
    }

    #[test]
    fn trim_point_is_exact_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig::new(dir.path());
        let n = 300u64;
        write_records(&cfg, &vec![10; n as usize]);
        // Trims one at a time, then a crash (no close): replay starts
        // right after the last trim.
        rt().block_on(async {
            let (j, replay) = Journal::open(cfg.clone()).unwrap();
            assert_eq!(replay.len() as u64, n);
            for seq in 1..=n - 10 {
                j.trim(seq).await.unwrap();
            }
            assert_eq!(j.stats().await.unwrap().trimmed_seq, n - 10);
            drop(j);
        });
        let seqs: Vec<u64> = reopen(&cfg).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (n - 9..=n).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_trim_point_copy_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig::new(dir.path());
        write_records(&cfg, &[10; 20]);
        rt().block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            for seq in [5, 8, 11] {
                j.trim(seq).await.unwrap();
            }
            drop(j);
        });
        let path = dir.path().join(TRIM_FILE);
        let seqs = |cfg: &JournalConfig| -> Vec<u64> {
            reopen(cfg).unwrap().iter().map(|r| r.seq).collect()
        };
        assert_eq!(seqs(&cfg), (12..=20).collect::<Vec<_>>());
        // 5 went to copy 0, 8 to copy 1, 11 to copy 0 again: tear copy 0
        // (the write in progress at a crash) and replay starts after 8.
        let mut data = fs::read(&path).unwrap();
        assert_eq!(data.len(), TRIM_FILE_BYTES);
        data[3] ^= 0x40;
        fs::write(&path, &data).unwrap();
        assert_eq!(seqs(&cfg), (9..=20).collect::<Vec<_>>());
        // Both torn: an error, never a guess.
        data[TRIM_SLOT_BYTES + 3] ^= 0x40;
        fs::write(&path, &data).unwrap();
        let e = reopen(&cfg).unwrap_err();
        assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
        // The one-copy file of an older build still reads, and the next
        // trim makes the two-copy file.
        fs::write(&path, trim_slot(14)).unwrap();
        assert_eq!(seqs(&cfg), (15..=20).collect::<Vec<_>>());
        rt().block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            j.trim(16).await.unwrap();
            j.close().await;
        });
        assert_eq!(fs::read(&path).unwrap().len(), TRIM_FILE_BYTES);
        assert_eq!(seqs(&cfg), (17..=20).collect::<Vec<_>>());
    }

    #[test]
    fn appends_from_many_threads_share_syncs_and_keep_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig::new(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let stats = rt.block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            let j = Arc::new(j);
            let mut tasks = Vec::new();
            for i in 0..400u64 {
                let j = j.clone();
                tasks.push(tokio::spawn(async move {
                    let seq = j.append(payload(i, 64)).await.unwrap();
                    if seq % 7 == 0 {
                        j.trim(seq - 3).await.unwrap();
                    }
                    (seq, i)
                }));
            }
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            got.sort();
            assert_eq!(
                got.iter().map(|g| g.0).collect::<Vec<_>>(),
                (1..=400).collect::<Vec<_>>()
            );
            let stats = j.stats().await.unwrap();
            let j = Arc::try_unwrap(j).unwrap();
            j.close().await;
            (stats, got)
        });
        assert_eq!(stats.0.appends, 400);
        // Every record replays with the payload its seq was given for.
        let replay = {
            let (j, replay) = Journal::open(cfg.clone()).unwrap();
            drop(j);
            replay
        };
        let by_seq: std::collections::HashMap<u64, u64> = stats.1.into_iter().collect();
        for r in &replay {
            assert_eq!(r.payload, payload(by_seq[&r.seq], 64));
        }
        assert_eq!(replay.last().map(|r| r.seq), Some(400));
    }

    #[test]
    fn bounded_size_and_record_limit() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            segment_bytes: 4096,
            bytes_max: 10_000,
            ..JournalConfig::new(dir.path())
        };
        rt().block_on(async {
            let (j, _) = Journal::open(cfg.clone()).unwrap();
            let mut last = 0;
            let err = loop {
                match j.append(payload(0, 1000)).await {
                    Ok(s) => last = s,
                    Err(e) => break e,
                }
            };
            assert!(
                matches!(
                    err,
                    JournalError::Full {
                        bytes_max: 10_000,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("10000"));
            j.trim(last).await.unwrap();
            j.append(payload(1, 1000)).await.unwrap();
            let big = Bytes::from(vec![0u8; RECORD_BYTES_MAX + 1]);
            assert!(matches!(
                j.append(big).await,
                Err(JournalError::RecordTooLarge { .. })
            ));
            j.close().await;
        });
    }

    #[test]
    fn newer_format_and_middle_corruption_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            segment_bytes: 2048,
            ..JournalConfig::new(dir.path())
        };
        write_records(&cfg, &[1000; 6]);
        let segs = segment_files(dir.path()).unwrap();
        assert!(segs.len() >= 2);
        // A flipped byte in a complete (not last) segment is corruption.
        let mut data = fs::read(&segs[0]).unwrap();
        data[40] ^= 1;
        fs::write(&segs[0], &data).unwrap();
        let e = reopen(&cfg).unwrap_err();
        assert!(matches!(e, JournalError::Corrupt { .. }), "{e}");
        data[40] ^= 1;
        // A version this build does not know is refused by name.
        data[11] = 2;
        fs::write(&segs[0], &data).unwrap();
        let e = reopen(&cfg).unwrap_err();
        assert!(
            matches!(e, JournalError::UnsupportedVersion { version: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("version 2"));
    }

    #[test]
    fn torn_segment_header_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig::new(dir.path());
        let written = write_records(&cfg, &[10; 3]);
        fs::write(segment_path(dir.path(), 4), &segment_header(4)[..10]).unwrap();
        assert_eq!(reopen(&cfg).unwrap(), written);
        assert_eq!(segment_files(dir.path()).unwrap().len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever happens to the tail of the last segment (cut anywhere,
        /// or a byte flipped anywhere), replay returns an exact prefix of
        /// what was appended, never a bad record, and appending afterwards
        /// continues from that prefix.
        #[test]
        fn damaged_tail_yields_an_exact_prefix(
            lens in proptest::collection::vec(0usize..600, 1..12),
            cut in any::<prop::sample::Index>(),
            flip in proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let cfg = JournalConfig { segment_bytes: 1500, ..JournalConfig::new(dir.path()) };
            let written = write_records(&cfg, &lens);
            let segs = segment_files(dir.path()).unwrap();
            let last = segs.last().unwrap();
            let mut data = fs::read(last).unwrap();
            let damaged_from = match flip {
                // Records, not the header: a damaged header of a segment
                // holding records is reported as corruption.
                Some((at, x)) => {
                    let i = SEGMENT_HEADER_BYTES as usize
                        + at.index(data.len() - SEGMENT_HEADER_BYTES as usize);
                    data[i] ^= x;
                    i
                }
                None => {
                    let i = cut.index(data.len() + 1);
                    data.truncate(i);
                    i
                }
            };
            fs::write(last, &data).unwrap();
            let got = reopen(&cfg).unwrap();
            prop_assert!(got.len() <= written.len());
            prop_assert_eq!(&got[..], &written[..got.len()]);
            // Records wholly before the damage in the last segment survive.
            let first_in_last: u64 = last.file_stem().unwrap().to_str().unwrap()[4..].parse().unwrap();
            let mut end = SEGMENT_HEADER_BYTES as usize;
            let mut intact = (first_in_last - 1) as usize;
            if damaged_from >= SEGMENT_HEADER_BYTES as usize {
                for r in &written[(first_in_last - 1) as usize..] {
                    end += 16 + r.payload.len();
                    if end > damaged_from { break; }
                    intact += 1;
                }
            }
            prop_assert!(got.len() >= intact, "lost intact records: {} < {}", got.len(), intact);
            // New appends follow the surviving prefix.
            let more = write_records(&cfg, &[7]);
            prop_assert_eq!(more.len(), got.len() + 1);
            prop_assert_eq!(more.last().unwrap().seq, got.len() as u64 + 1);
            prop_assert_eq!(reopen(&cfg).unwrap(), more);
        }
    }
}
