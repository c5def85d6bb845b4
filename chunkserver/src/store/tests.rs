//! Store tests: one data-driven helper (`Harness::step`) checks every
//! operation against an in-memory model; the model also predicts outcomes
//! for the property test. File-level faults (bit flips, torn writes) are
//! injected into the real files, then the store is reopened.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;

use super::*;

const MIB: u64 = 1 << 20;
const B: u64 = BLOCK_BYTES;

fn id(n: u64) -> ChunkId {
    ChunkId {
        lun: 1,
        extent: n,
        index: (n % 3) as u8,
    }
}

/// Deterministic non-zero contents for a range.
fn pat(seed: u8, len: u64) -> Bytes {
    (0..len)
        .map(|i| (seed as u64 * 131 + i * 7 + 1) as u8 | 1)
        .collect()
}

fn cfg(dir: &Path, capacity: u64, reserve: u64) -> StoreConfig {
    StoreConfig {
        data_dir: dir.to_path_buf(),
        capacity_bytes: capacity,
        reserve_bytes: reserve,
        chunk_bytes_max: 4 * MIB,
        boot_id_path: BOOT_ID_PATH.into(),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        c: u64,
        size: u64,
        epoch: u64,
    },
    Write {
        c: u64,
        off: u64,
        len: u64,
        seed: u8,
        epoch: u64,
        d: Durability,
    },
    Overwrite {
        c: u64,
        off: u64,
        len: u64,
        seed: u8,
        epoch: u64,
    },
    Delta {
        c: u64,
        off: u64,
        len: u64,
        seed: u8,
        epoch: u64,
    },
    Read {
        c: u64,
        off: u64,
        len: u64,
        epoch: u64,
    },
    Punch {
        c: u64,
        off: u64,
        len: u64,
        epoch: u64,
    },
    SetEpoch {
        c: u64,
        epoch: u64,
    },
    Delete {
        c: u64,
    },
    WriteWhole {
        c: u64,
        size: u64,
        len: u64,
        seed: u8,
        epoch: u64,
    },
    Flush,
}

#[derive(Clone, Default)]
struct ModelChunk {
    epoch: u64,
    data: Vec<u8>,
}

/// The oracle: what the store must answer.
#[derive(Default)]
struct Model {
    chunks: HashMap<u64, ModelChunk>,
    capacity: u64,
    reserve: u64,
    max: u64,
}

fn name(e: &StoreError) -> &'static str {
    match e {
        StoreError::NotFound(_) => "NotFound",
        StoreError::Exists(_) => "Exists",
        StoreError::StaleEpoch { .. } => "StaleEpoch",
        StoreError::OutOfRange { .. } => "OutOfRange",
        StoreError::Misaligned { .. } => "Misaligned",
        StoreError::Checksum { .. } => "Checksum",
        StoreError::Full { .. } => "Full",
        StoreError::TooLarge { .. } => "TooLarge",
        StoreError::Io(_) => "Io",
        StoreError::Index(_) => "Index",
    }
}

impl Model {
    fn used(&self) -> u64 {
        self.chunks.values().map(|c| c.data.len() as u64).sum()
    }

    fn range(&self, c: u64, off: u64, len: u64, epoch: u64) -> Result<&ModelChunk, &'static str> {
        let ch = self.chunks.get(&c).ok_or("NotFound")?;
        if !off.is_multiple_of(B) || !len.is_multiple_of(B) {
            return Err("Misaligned");
        }
        if off
            .checked_add(len)
            .is_none_or(|e| e > ch.data.len() as u64)
        {
            return Err("OutOfRange");
        }
        if epoch < ch.epoch {
            return Err("StaleEpoch");
        }
        Ok(ch)
    }

    fn size_ok(&self, size: u64) -> Result<(), &'static str> {
        if !size.is_multiple_of(B) {
            return Err("Misaligned");
        }
        if size > self.max {
            return Err("TooLarge");
        }
        Ok(())
    }

    /// Apply `op`; returns the expected outcome and, for reads/writes, the
    /// expected bytes (read data or write delta).
    fn apply(&mut self, op: &Op) -> (Result<(), &'static str>, Option<Vec<u8>>) {
        let limit = self.capacity.saturating_sub(self.reserve);
        match *op {
            Op::Create { c, size, epoch } => {
                let r = self.size_ok(size).and_then(|_| {
                    if self.chunks.contains_key(&c) {
                        Err("Exists")
                    } else if self.used() + size > limit {
                        Err("Full")
                    } else {
                        self.chunks.insert(
                            c,
                            ModelChunk {
                                epoch,
                                data: vec![0; size as usize],
                            },
                        );
                        Ok(())
                    }
                });
                (r, None)
            }
            Op::Write {
                c,
                off,
                len,
                seed,
                epoch,
                ..
            }
            | Op::Overwrite {
                c,
                off,
                len,
                seed,
                epoch,
            }
            | Op::Delta {
                c,
                off,
                len,
                seed,
                epoch,
            } => {
                if let Err(e) = self.range(c, off, len, epoch) {
                    return (Err(e), None);
                }
                let ch = self.chunks.get_mut(&c).expect("checked");
                ch.epoch = epoch;
                let new = pat(seed, len);
                let r = &mut ch.data[off as usize..(off + len) as usize];
                let delta: Vec<u8> = r.iter().zip(new.iter()).map(|(a, b)| a ^ b).collect();
                match op {
                    Op::Delta { .. } => r.copy_from_slice(&delta),
                    _ => r.copy_from_slice(&new),
                }
                let out = matches!(op, Op::Write { .. }).then_some(delta);
                (Ok(()), out)
            }
            Op::Read { c, off, len, epoch } => match self.range(c, off, len, epoch) {
                Err(e) => (Err(e), None),
                Ok(ch) => (
                    Ok(()),
                    Some(ch.data[off as usize..(off + len) as usize].to_vec()),
                ),
            },
            Op::Punch { c, off, len, epoch } => {
                if let Err(e) = self.range(c, off, len, epoch) {
                    return (Err(e), None);
                }
                let ch = self.chunks.get_mut(&c).expect("checked");
                ch.epoch = epoch;
                ch.data[off as usize..(off + len) as usize].fill(0);
                (Ok(()), None)
            }
            Op::SetEpoch { c, epoch } => match self.chunks.get_mut(&c) {
                None => (Err("NotFound"), None),
                Some(ch) if epoch < ch.epoch => (Err("StaleEpoch"), None),
                Some(ch) => {
                    ch.epoch = epoch;
                    (Ok(()), None)
                }
            },
            Op::Delete { c } => (self.chunks.remove(&c).map(|_| ()).ok_or("NotFound"), None),
            Op::WriteWhole {
                c,
                size,
                len,
                seed,
                epoch,
            } => {
                if let Err(e) = self.size_ok(size) {
                    return (Err(e), None);
                }
                if !len.is_multiple_of(B) {
                    return (Err("Misaligned"), None);
                }
                if len > size {
                    return (Err("OutOfRange"), None);
                }
                let old = self.chunks.get(&c).map_or(0, |ch| ch.data.len() as u64);
                if let Some(ch) = self.chunks.get(&c) {
                    if epoch < ch.epoch {
                        return (Err("StaleEpoch"), None);
                    }
                }
                if size > old && self.used() + (size - old) > limit {
                    return (Err("Full"), None);
                }
                let mut data = pat(seed, len).to_vec();
                data.resize(size as usize, 0);
                self.chunks.insert(c, ModelChunk { epoch, data });
                (Ok(()), None)
            }
            Op::Flush => (Ok(()), None),
        }
    }
}

struct Harness {
    dir: tempfile::TempDir,
    store: Option<ChunkStore>,
    model: Model,
    capacity: u64,
    reserve: u64,
    /// Steps run so far: every other data operation goes through the
    /// synchronous API (`*_blocking`), the others through the async one.
    steps: u64,
}

impl Harness {
    fn new(capacity: u64, reserve: u64) -> Harness {
        Harness::new_in(tempfile::tempdir().expect("tempdir"), capacity, reserve)
    }

    fn new_in(dir: tempfile::TempDir, capacity: u64, reserve: u64) -> Harness {
        let store = ChunkStore::open(cfg(dir.path(), capacity, reserve)).expect("open");
        let model = Model {
            capacity,
            reserve,
            max: 4 * MIB,
            ..Model::default()
        };
        Harness {
            dir,
            store: Some(store),
            model,
            capacity,
            reserve,
            steps: 0,
        }
    }

    fn store(&self) -> &ChunkStore {
        self.store.as_ref().expect("open")
    }

    fn reopen(&mut self) {
        self.store = None;
        let c = cfg(self.dir.path(), self.capacity, self.reserve);
        self.store = Some(ChunkStore::open(c).expect("reopen"));
    }

    /// Run `op` against the store; returns "ok" or the error's name, and
    /// checks returned bytes against the model.
    async fn step(&mut self, op: Op) -> String {
        let (want, bytes) = self.model.apply(&op);
        self.steps += 1;
        let got_data = if self.steps.is_multiple_of(2) {
            self.step_blocking(&op)
        } else {
            None
        };
        let s = self.store();
        let (got, data): (Result<(), StoreError>, Option<Bytes>) = match op {
            _ if got_data.is_some() => got_data.expect("checked"),
            Op::Create { c, size, epoch } => (
                s.create(
                    id(c),
                    ChunkMeta {
                        size_bytes: size,
                        epoch,
                    },
                )
                .await,
                None,
            ),
            Op::Write {
                c,
                off,
                len,
                seed,
                epoch,
                d,
            } => match s.write(id(c), off, pat(seed, len), epoch, d).await {
                Ok(b) => (Ok(()), Some(b)),
                Err(e) => (Err(e), None),
            },
            Op::Overwrite {
                c,
                off,
                len,
                seed,
                epoch,
            } => (
                s.overwrite(id(c), off, pat(seed, len), epoch, Durability::Buffered)
                    .await,
                None,
            ),
            Op::Delta {
                c,
                off,
                len,
                seed,
                epoch,
            } => (
                s.apply_delta(id(c), off, pat(seed, len), epoch, Durability::Buffered)
                    .await,
                None,
            ),
            Op::Read { c, off, len, epoch } => match s.read(id(c), off, len, epoch).await {
                Ok(b) => (Ok(()), Some(b)),
                Err(e) => (Err(e), None),
            },
            Op::Punch { c, off, len, epoch } => (
                s.punch(id(c), off, len, epoch, Durability::Buffered).await,
                None,
            ),
            Op::SetEpoch { c, epoch } => (s.set_epoch(id(c), epoch).await, None),
            Op::Delete { c } => (s.delete(id(c)).await, None),
            Op::WriteWhole {
                c,
                size,
                len,
                seed,
                epoch,
            } => {
                let meta = ChunkMeta {
                    size_bytes: size,
                    epoch,
                };
                (
                    s.write_whole(id(c), meta, pat(seed, len), Durability::Buffered)
                        .await,
                    None,
                )
            }
            Op::Flush => (s.flush().await, None),
        };
        let got_s = match &got {
            Ok(()) => "ok",
            Err(e) => name(e),
        };
        let want_s = match want {
            Ok(()) => "ok",
            Err(e) => e,
        };
        assert_eq!(
            got_s, want_s,
            "{op:?}: store says {got:?}, model says {want_s}"
        );
        if let (Some(want), Some(got)) = (bytes, data) {
            assert!(want == got.as_ref(), "{op:?}: bytes differ from the model");
        }
        got_s.to_string()
    }

    /// The data operations through the synchronous API (None: `op` has no
    /// synchronous form here). Output buffers start as garbage and must
    /// come back zeroed on error: they never hold unverified bytes.
    fn step_blocking(&self, op: &Op) -> Option<(Result<(), StoreError>, Option<Bytes>)> {
        const GARBAGE: u8 = 0xee;
        let s = self.store();
        let zeroed = |b: &[u8]| b.iter().all(|x| *x == 0);
        Some(match *op {
            Op::Write {
                c,
                off,
                len,
                seed,
                epoch,
                d,
            } => {
                let data = pat(seed, len);
                let mut delta = vec![GARBAGE; len as usize];
                match s.write_blocking(id(c), off, &data, &mut delta, epoch, d) {
                    Ok(()) => (Ok(()), Some(Bytes::from(delta))),
                    Err(e) => {
                        assert!(zeroed(&delta), "{op:?}: delta not zeroed on {e}");
                        (Err(e), None)
                    }
                }
            }
            Op::Overwrite {
                c,
                off,
                len,
                seed,
                epoch,
            } => (
                s.overwrite_blocking(id(c), off, &pat(seed, len), epoch, Buffered),
                None,
            ),
            Op::Delta {
                c,
                off,
                len,
                seed,
                epoch,
            } => (
                s.apply_delta_blocking(id(c), off, &pat(seed, len), epoch, Buffered),
                None,
            ),
            // Huge lengths (errors by design) stay on the async path, which
            // checks the range before allocating.
            Op::Read { c, off, len, epoch } if len <= 64 * MIB => {
                let mut buf = vec![GARBAGE; len as usize];
                match s.read_blocking(id(c), off, &mut buf, epoch) {
                    Ok(()) => (Ok(()), Some(Bytes::from(buf))),
                    Err(e) => {
                        assert!(zeroed(&buf), "{op:?}: buffer not zeroed on {e}");
                        (Err(e), None)
                    }
                }
            }
            Op::Punch { c, off, len, epoch } => {
                (s.punch_blocking(id(c), off, len, epoch, Buffered), None)
            }
            Op::Flush => (s.flush_blocking(), None),
            _ => return None,
        })
    }

    /// Every chunk reads back exactly as the model says, and list() agrees.
    async fn check_all(&self) {
        let list = self.store().list();
        assert_eq!(list.len(), self.model.chunks.len());
        for (c, ch) in &self.model.chunks {
            let (info, data) = self.store().read_whole(id(*c)).await.expect("read_whole");
            assert!(data.as_ref() == ch.data.as_slice(), "chunk {c} differs");
            assert_eq!(info.epoch, ch.epoch);
            assert_eq!(info.state, ChunkState::Ok);
        }
        assert_eq!(self.store().stats().used_bytes, self.model.used());
        self.store().check_table_cache();
    }

    /// Run a script of (op, expected outcome).
    async fn script(&mut self, steps: Vec<(Op, &str)>) {
        for (i, (op, want)) in steps.into_iter().enumerate() {
            let dbg = format!("{op:?}");
            let got = self.step(op).await;
            assert_eq!(got, want, "step {i}: {dbg}");
        }
        self.check_all().await;
    }

    fn chunk_path(&self, c: u64) -> PathBuf {
        self.dir.path().join("chunks").join(id(c).rel_path())
    }
}

use Durability::{Buffered, Stable};

/// On tmpfs the data path runs inline (no blocking pool); same results.
#[tokio::test]
async fn memory_fs_data_path_inline() {
    assert!(!is_memory_fs(Path::new("/proc")));
    let shm = Path::new("/dev/shm");
    if !is_memory_fs(shm) {
        eprintln!("no tmpfs at /dev/shm: skipped");
        return;
    }
    let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let mut h = Harness::new_in(dir, 64 * MIB, 0);
    assert!(h.store().inner.memory_backed);
    let (off, len) = (8 * B, 3 * B);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off,
                len,
                seed: 1,
                epoch: 1,
                d: Buffered,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 16 * B,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Delta {
                c: 1,
                off,
                len,
                seed: 2,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: 16 * B,
                seed: 3,
                epoch: 1,
                d: Stable,
            },
            "ok",
        ),
        (
            Op::Overwrite {
                c: 1,
                off: B,
                len: B,
                seed: 4,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 16 * B,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: B,
                epoch: 0,
            },
            "StaleEpoch",
        ),
    ])
    .await;
    h.check_all().await;
    h.reopen();
    h.check_all().await;
}

#[tokio::test]
async fn script_basic_ops_and_errors() {
    let mut h = Harness::new(64 * MIB, 0);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 3,
            },
            "ok",
        ),
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 3,
            },
            "Exists",
        ),
        (
            Op::Create {
                c: 2,
                size: 5 * MIB,
                epoch: 1,
            },
            "TooLarge",
        ),
        (
            Op::Create {
                c: 2,
                size: 1000,
                epoch: 1,
            },
            "Misaligned",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 8 * B,
                epoch: 3,
            },
            "ok",
        ), // holes read zero
        (
            Op::Write {
                c: 1,
                off: B,
                len: 2 * B,
                seed: 1,
                epoch: 3,
                d: Buffered,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 2 * B,
                len: 2 * B,
                seed: 2,
                epoch: 3,
                d: Stable,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 8 * B,
                epoch: 3,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 100,
                len: B,
                seed: 1,
                epoch: 3,
                d: Buffered,
            },
            "Misaligned",
        ),
        (
            Op::Write {
                c: 1,
                off: MIB - B,
                len: 2 * B,
                seed: 1,
                epoch: 3,
                d: Buffered,
            },
            "OutOfRange",
        ),
        (
            Op::Read {
                c: 1,
                off: u64::MAX - B + 1,
                len: 2 * B,
                epoch: 3,
            },
            "OutOfRange",
        ),
        (
            Op::Read {
                c: 9,
                off: 0,
                len: B,
                epoch: 3,
            },
            "NotFound",
        ),
        (
            Op::Delta {
                c: 1,
                off: 0,
                len: 4 * B,
                seed: 5,
                epoch: 3,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 4 * B,
                epoch: 3,
            },
            "ok",
        ),
        (
            Op::Punch {
                c: 1,
                off: 2 * B,
                len: B,
                epoch: 3,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 4 * B,
                epoch: 3,
            },
            "ok",
        ),
        (
            Op::Overwrite {
                c: 1,
                off: 8 * B,
                len: B,
                seed: 9,
                epoch: 3,
            },
            "ok",
        ),
        (Op::Flush, "ok"),
        (Op::Delete { c: 1 }, "ok"),
        (Op::Delete { c: 1 }, "NotFound"),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: B,
                epoch: 3,
            },
            "NotFound",
        ),
    ])
    .await;
}

#[tokio::test]
async fn script_epochs() {
    let mut h = Harness::new(64 * MIB, 0);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 5,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: B,
                seed: 1,
                epoch: 4,
                d: Buffered,
            },
            "StaleEpoch",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: B,
                epoch: 4,
            },
            "StaleEpoch",
        ),
        (
            Op::Punch {
                c: 1,
                off: 0,
                len: B,
                epoch: 4,
            },
            "StaleEpoch",
        ),
        (
            Op::Delta {
                c: 1,
                off: 0,
                len: B,
                seed: 1,
                epoch: 4,
            },
            "StaleEpoch",
        ),
        // A newer epoch on a write is accepted and raises the chunk's.
        (
            Op::Write {
                c: 1,
                off: 0,
                len: B,
                seed: 1,
                epoch: 7,
                d: Buffered,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: B,
                seed: 1,
                epoch: 6,
                d: Buffered,
            },
            "StaleEpoch",
        ),
        (Op::SetEpoch { c: 1, epoch: 6 }, "StaleEpoch"),
        (Op::SetEpoch { c: 1, epoch: 9 }, "ok"),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: B,
                epoch: 8,
            },
            "StaleEpoch",
        ),
        (
            Op::WriteWhole {
                c: 1,
                size: MIB,
                len: 4 * B,
                seed: 3,
                epoch: 8,
            },
            "StaleEpoch",
        ),
        (
            Op::WriteWhole {
                c: 1,
                size: 2 * MIB,
                len: 4 * B,
                seed: 3,
                epoch: 10,
            },
            "ok",
        ),
        (
            Op::WriteWhole {
                c: 2,
                size: MIB,
                len: MIB,
                seed: 4,
                epoch: 1,
            },
            "ok",
        ),
        (Op::SetEpoch { c: 3, epoch: 1 }, "NotFound"),
    ])
    .await;
    // Epochs are durable.
    h.reopen();
    h.check_all().await;
    assert_eq!(
        h.step(Op::Read {
            c: 1,
            off: 0,
            len: B,
            epoch: 9
        })
        .await,
        "StaleEpoch"
    );
}

#[tokio::test]
async fn reopen_keeps_everything_and_versions_move_forward() {
    let mut h = Harness::new(64 * MIB, 0);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Create {
                c: 2,
                size: 2 * MIB,
                epoch: 2,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: 16 * B,
                seed: 1,
                epoch: 1,
                d: Buffered,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 2,
                off: MIB,
                len: 16 * B,
                seed: 2,
                epoch: 2,
                d: Stable,
            },
            "ok",
        ),
        (
            Op::Punch {
                c: 1,
                off: 4 * B,
                len: 4 * B,
                epoch: 1,
            },
            "ok",
        ),
    ])
    .await;
    let v1 = h.store().info(id(1)).expect("info").version;
    assert_eq!(v1, 2);
    h.reopen();
    h.check_all().await;
    // Clean close: versions exact.
    assert_eq!(h.store().info(id(1)).expect("info").version, v1);
    assert!(h.store().info(id(1)).expect("info").allocated_bytes >= 12 * B);
    // Unclean close (index not marked clean): versions jump forward.
    h.step(Op::Write {
        c: 1,
        off: 0,
        len: B,
        seed: 3,
        epoch: 1,
        d: Buffered,
    })
    .await;
    h.store.take().expect("store").abandon(); // no clean close, like SIGKILL
    h.reopen();
    assert!(h.store().info(id(1)).expect("info").version >= v1 + VERSION_CRASH_BUMP);
    h.check_all().await;
}

/// The incarnation moves only when the page cache may be gone: an
/// unclean shutdown followed by an open in another boot of the kernel. A
/// process kill (same boot) or a clean close (whatever the boot) keeps it.
#[tokio::test]
async fn the_incarnation_moves_only_after_an_unclean_shutdown_in_another_boot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let boot = tmp.path().join("boot_id");
    let open = |id: &str| {
        std::fs::write(&boot, format!("{id}\n")).expect("boot id");
        let mut c = cfg(&data, 64 * MIB, 0);
        c.boot_id_path = boot.clone();
        ChunkStore::open(c).expect("open")
    };
    let s = open("boot-a");
    assert_eq!(s.incarnation(), 1, "a new store");
    s.abandon(); // a process kill
    let s = open("boot-a");
    assert_eq!(
        s.incarnation(),
        1,
        "killed, same boot: the page cache survived"
    );
    s.abandon(); // a power loss
    let s = open("boot-b");
    assert_eq!(s.incarnation(), 2, "unclean shutdown, another boot");
    drop(s); // clean close
    let s = open("boot-c");
    assert_eq!(s.incarnation(), 2, "closed cleanly: nothing was buffered");
    s.abandon();
    // A boot id that cannot be read is never taken for another boot.
    let mut c = cfg(&data, 64 * MIB, 0);
    c.boot_id_path = tmp.path().join("no-such-file");
    let s = ChunkStore::open(c).expect("open");
    assert_eq!(s.incarnation(), 2, "unknown boot");
    s.abandon();
    let s = open("boot-d");
    assert_eq!(s.incarnation(), 3, "the last known boot was c");
}

#[tokio::test]
async fn unknown_format_version_is_refused() {
    let h = Harness::new(64 * MIB, 0);
    h.store()
        .inner
        .index
        .set_format_version(FORMAT_VERSION + 1)
        .expect("set");
    let dir = h.dir.path().to_path_buf();
    drop(h.store);
    match ChunkStore::open(cfg(&dir, 64 * MIB, 0)) {
        Err(StoreError::Index(msg)) => assert!(msg.contains("format version"), "{msg}"),
        other => panic!("expected Index error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn record_encoding_is_versioned() {
    let rec = Record {
        size_bytes: MIB,
        epoch: 3,
        version: 7,
        bad_blocks: vec![1, 9],
    };
    let enc = rec.encode().expect("encode");
    assert_eq!(enc.first(), Some(&RECORD_VERSION));
    assert_eq!(Record::decode(&enc).expect("decode"), rec);
    let mut future = enc.clone();
    future[0] = RECORD_VERSION + 1;
    assert!(matches!(Record::decode(&future), Err(StoreError::Index(_))));
    assert!(Record::decode(&[]).is_err());
    assert!(Record::decode(&[RECORD_VERSION, 0xff]).is_err());
    let k = id(5).to_key();
    assert_eq!(ChunkId::from_key(&k), Some(id(5)));
    assert_eq!(ChunkId::from_key(&k[..16]), None);
    assert_eq!(id(5).to_string(), "1/5/2");
}

fn flip_bit(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).expect("write");
}

#[tokio::test]
async fn flipped_bits_fail_reads_and_scrub_finds_exactly_them() {
    let mut h = Harness::new(64 * MIB, 0);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Create {
                c: 2,
                size: MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: 64 * B,
                seed: 1,
                epoch: 1,
                d: Stable,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 2,
                off: 0,
                len: 64 * B,
                seed: 2,
                epoch: 1,
                d: Stable,
            },
            "ok",
        ),
    ])
    .await;
    h.store = None;
    // Chunk 1: blocks 3 and 40 (data); block 100 is a hole: flipping a
    // byte in it allocates it with non-zero data. Chunk 2: block 0.
    flip_bit(&h.chunk_path(1), 3 * B + 17);
    flip_bit(&h.chunk_path(1), 40 * B + 4095);
    flip_bit(&h.chunk_path(1), 100 * B);
    flip_bit(&h.chunk_path(2), 0);
    h.reopen();
    let s = h.store();
    match s.read(id(1), 0, 8 * B, 1).await {
        Err(StoreError::Checksum { id: cid, blocks }) => {
            assert_eq!(cid, id(1));
            assert_eq!(blocks, vec![3]);
        }
        other => panic!("expected Checksum, got {other:?}"),
    }
    // Neighbouring blocks still read fine.
    assert!(s.read(id(1), 4 * B, 4 * B, 1).await.is_ok());
    assert!(s.stats().checksum_errors >= 1);
    let report = s.scrub_once(0).await.expect("scrub");
    assert_eq!(report.checked_blocks, 2 * MIB / B);
    assert_eq!(
        report.bad,
        vec![(id(1), vec![3, 40, 100]), (id(2), vec![0])]
    );
    assert_eq!(s.bad_blocks(), report.bad);
    assert_eq!(
        s.info(id(1)).expect("info").state,
        ChunkState::NeedsRepair {
            blocks: vec![3, 40, 100]
        }
    );
    // Bad marks survive a restart.
    h.reopen();
    let s = h.store();
    assert_eq!(s.bad_blocks().len(), 2);
    assert!(matches!(
        s.read(id(2), 0, B, 1).await,
        Err(StoreError::Checksum { .. })
    ));
    // A delta write can't use a bad old block; overwrite repairs it.
    assert!(matches!(
        s.write(id(2), 0, pat(1, B), 1, Buffered).await,
        Err(StoreError::Checksum { .. })
    ));
    s.overwrite(id(2), 0, pat(7, B), 1, Buffered)
        .await
        .expect("overwrite");
    assert_eq!(s.read(id(2), 0, B, 1).await.expect("read"), pat(7, B));
    assert_eq!(s.bad_blocks(), vec![(id(1), vec![3, 40, 100])]);
}

/// Simulate a crash between the checksum update and the data write, in
/// both orders, by editing the real file.
/// The synchronous API on a bad block: no unverified byte reaches the
/// caller's buffers, nothing is written, overwrite repairs.
#[tokio::test]
async fn blocking_api_on_bad_blocks_hands_out_nothing() {
    let mut h = Harness::new(64 * MIB, 0);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: 8 * B,
                seed: 1,
                epoch: 1,
                d: Stable,
            },
            "ok",
        ),
    ])
    .await;
    h.store = None;
    flip_bit(&h.chunk_path(1), 3 * B + 5);
    h.reopen();
    let s = h.store();
    let old = pat(1, 8 * B);
    let bad = |r: Result<(), StoreError>| match r {
        Err(StoreError::Checksum { blocks, .. }) => assert_eq!(blocks, vec![3]),
        other => panic!("expected Checksum, got {other:?}"),
    };
    let mut buf = vec![0xeeu8; (4 * B) as usize];
    bad(s.read_blocking(id(1), 2 * B, &mut buf, 1));
    assert!(buf.iter().all(|b| *b == 0));
    let mut delta = vec![0xeeu8; (4 * B) as usize];
    bad(s.write_blocking(id(1), 2 * B, &pat(7, 4 * B), &mut delta, 1, Stable));
    assert!(delta.iter().all(|b| *b == 0));
    bad(s.apply_delta_blocking(id(1), 2 * B, &pat(7, 4 * B), 1, Buffered));
    // Nothing was written: block 2 still holds the old data.
    let mut one = vec![0u8; B as usize];
    s.read_blocking(id(1), 2 * B, &mut one, 1).expect("block 2");
    assert_eq!(one, old[(2 * B) as usize..(3 * B) as usize]);
    s.overwrite_blocking(id(1), 3 * B, &pat(9, B), 1, Stable)
        .expect("repair");
    s.read_blocking(id(1), 3 * B, &mut one, 1)
        .expect("repaired");
    assert_eq!(one, pat(9, B));
    assert!(s.bad_blocks().is_empty());
}

#[tokio::test]
async fn torn_writes_are_detected_never_served() {
    let mut h = Harness::new(64 * MIB, 0);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: 8 * B,
                seed: 1,
                epoch: 1,
                d: Stable,
            },
            "ok",
        ),
    ])
    .await;
    h.store = None;
    let path = h.chunk_path(1);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let new = pat(9, B);
    let old = pat(1, 8 * B);
    // Block 2: new data reached the file, its checksum did not (power loss
    // with pages written back out of order).
    f.write_all_at(&new, 2 * B).expect("data");
    // Block 3: half the block's sectors are new (torn sector writes).
    f.write_all_at(&new[..2048], 3 * B).expect("half");
    // Block 5: the store's own order, cut short: checksum entry {old, new}
    // written, data not yet (process killed between the two pwrites).
    let e = file::read_entries(&f, MIB, 5, 1).expect("entries")[0];
    file::write_entries(
        &f,
        MIB,
        5,
        &[Entry {
            prev: e.cur,
            cur: file::block_sum(&new),
        }],
    )
    .expect("entry");
    // Block 6: the store's order, completed for the entry, then data
    // landed too (kill after both): new data, valid.
    file::write_entries(
        &f,
        MIB,
        6,
        &[Entry {
            prev: e.cur,
            cur: file::block_sum(&new),
        }],
    )
    .expect("entry");
    f.write_all_at(&new, 6 * B).expect("data");
    drop(f);
    h.reopen();
    let s = h.store();
    match s.read(id(1), 0, 8 * B, 1).await {
        Err(StoreError::Checksum { blocks, .. }) => assert_eq!(blocks, vec![2, 3]),
        other => panic!("expected Checksum, got {other:?}"),
    }
    let old5 = &old[(5 * B) as usize..(6 * B) as usize];
    assert_eq!(
        s.read(id(1), 5 * B, B, 1).await.expect("old data").as_ref(),
        old5
    );
    assert_eq!(s.read(id(1), 6 * B, B, 1).await.expect("new data"), new);
    let report = s.scrub_once(0).await.expect("scrub");
    assert_eq!(report.bad, vec![(id(1), vec![2, 3])]);
    // Replay of the lost write repairs the blocks.
    s.overwrite(id(1), 2 * B, pat(9, 2 * B), 1, Stable)
        .await
        .expect("replay");
    assert_eq!(
        s.read(id(1), 2 * B, 2 * B, 1).await.expect("read"),
        pat(9, 2 * B)
    );
    assert!(s.bad_blocks().is_empty());
}

#[tokio::test]
async fn fill_to_reserve_refuses_new_chunks_only() {
    let mut h = Harness::new(10 * MIB, 3 * MIB);
    h.script(vec![
        (
            Op::Create {
                c: 1,
                size: 4 * MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Create {
                c: 2,
                size: 3 * MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Create {
                c: 3,
                size: B,
                epoch: 1,
            },
            "Full",
        ),
        (
            Op::WriteWhole {
                c: 4,
                size: B,
                len: B,
                seed: 1,
                epoch: 1,
            },
            "Full",
        ),
        (
            Op::Write {
                c: 1,
                off: 0,
                len: 4 * MIB,
                seed: 1,
                epoch: 1,
                d: Buffered,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 2,
                off: 3 * MIB - B,
                len: B,
                seed: 2,
                epoch: 1,
                d: Stable,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 4 * MIB,
                epoch: 1,
            },
            "ok",
        ),
    ])
    .await;
    let st = h.store().stats();
    assert!(st.full);
    assert_eq!(
        (st.used_bytes, st.capacity_bytes, st.reserve_bytes),
        (7 * MIB, 10 * MIB, 3 * MIB)
    );
    match h
        .store()
        .create(
            id(3),
            ChunkMeta {
                size_bytes: B,
                epoch: 1,
            },
        )
        .await
    {
        Err(StoreError::Full {
            used,
            capacity,
            reserve,
        }) => {
            assert_eq!((used, capacity, reserve), (7 * MIB, 10 * MIB, 3 * MIB));
        }
        other => panic!("expected Full, got {other:?}"),
    }
    h.script(vec![
        (Op::Delete { c: 2 }, "ok"),
        (
            Op::Create {
                c: 3,
                size: 2 * MIB,
                epoch: 1,
            },
            "ok",
        ),
    ])
    .await;
    assert!(!h.store().stats().full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stable_writers_share_syncs() {
    let h = Harness::new(64 * MIB, 0);
    let s = Arc::new(h.store.expect("store"));
    for c in 0..4 {
        s.create(
            id(c),
            ChunkMeta {
                size_bytes: MIB,
                epoch: 1,
            },
        )
        .await
        .expect("create");
    }
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let d = if i % 2 == 0 { Stable } else { Buffered };
                s.write(id(c), i * B, pat(i as u8, B), 1, d)
                    .await
                    .expect("write");
            }
            s.flush().await.expect("flush");
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    for c in 0..4u64 {
        for i in 0..20u64 {
            assert_eq!(
                s.read(id(c), i * B, B, 1).await.expect("read"),
                pat(i as u8, B)
            );
        }
    }
    let seq = s.inner.sync.dirty.lock().0;
    assert_eq!(s.inner.sync.synced.load(Ordering::SeqCst), seq);
}

/// An async data call that waits (here for its chunk's lock, as it would
/// for the disk) stalls no other task, even on a runtime of one worker:
/// the call gives its worker's tasks to another thread (`block_in_place`)
/// instead of blocking them.
#[test]
fn a_data_call_that_waits_stalls_no_other_task() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("rt");
    let h = Harness::new(64 * MIB, 0);
    let s = Arc::new(h.store.expect("store"));
    let meta = ChunkMeta {
        size_bytes: MIB,
        epoch: 1,
    };
    rt.block_on(s.create(id(0), meta)).expect("create");
    let chunk = s.inner.get(id(0)).expect("chunk");
    let held = chunk.io.write();
    let writer = {
        let s = s.clone();
        rt.spawn(async move { s.write(id(0), 0, pat(1, B), 1, Buffered).await })
    };
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let during = ticks.load(Ordering::SeqCst);
    assert!(!writer.is_finished(), "the write did not wait for the lock");
    drop(held);
    let delta = rt.block_on(writer).expect("join").expect("write");
    assert_eq!(delta, pat(1, B), "old contents were zeroes");
    ticker.abort();
    assert!(
        during >= 50,
        "other tasks stalled while a data call waited: {during} ticks in 300 ms"
    );
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let c = 0u64..3;
    let blk = 0u64..20; // chunks are 16 blocks: some ops run past the end
    let n = 0u64..5;
    let ep = 0u64..4;
    prop_oneof![
        (c.clone(), 1u64..17, ep.clone()).prop_map(|(c, b, epoch)| Op::Create {
            c,
            size: b * B,
            epoch
        }),
        (
            c.clone(),
            blk.clone(),
            n.clone(),
            any::<u8>(),
            ep.clone(),
            any::<bool>()
        )
            .prop_map(|(c, b, n, seed, epoch, st)| Op::Write {
                c,
                off: b * B,
                len: n * B,
                seed,
                epoch,
                d: if st { Stable } else { Buffered }
            }),
        (c.clone(), blk.clone(), n.clone(), any::<u8>(), ep.clone()).prop_map(
            |(c, b, n, seed, epoch)| Op::Delta {
                c,
                off: b * B,
                len: n * B,
                seed,
                epoch
            }
        ),
        (c.clone(), blk.clone(), n.clone(), any::<u8>(), ep.clone()).prop_map(
            |(c, b, n, seed, epoch)| Op::Overwrite {
                c,
                off: b * B,
                len: n * B,
                seed,
                epoch
            }
        ),
        (c.clone(), blk.clone(), n.clone(), ep.clone()).prop_map(|(c, b, n, epoch)| Op::Read {
            c,
            off: b * B,
            len: n * B,
            epoch
        }),
        (c.clone(), blk.clone(), n.clone(), ep.clone()).prop_map(|(c, b, n, epoch)| Op::Punch {
            c,
            off: b * B,
            len: n * B,
            epoch
        }),
        (c.clone(), ep.clone()).prop_map(|(c, epoch)| Op::SetEpoch { c, epoch }),
        c.clone().prop_map(|c| Op::Delete { c }),
        (c, 1u64..17, 0u64..17, any::<u8>(), ep).prop_map(|(c, s, l, seed, epoch)| {
            Op::WriteWhole {
                c,
                size: s * B,
                len: l * B,
                seed,
                epoch,
            }
        }),
        Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_ops_match_the_model(ops in proptest::collection::vec(op_strategy(), 1..40), reopen_at in 0usize..40, tiny_cache in any::<bool>(), multi_thread in any::<bool>()) {
        // The async data calls run in `block_in_place` on a multi-thread
        // runtime and on the blocking pool on a current-thread one.
        let rt = fabric::env::runtime_builder(if multi_thread { 2 } else { 1 })
            .build()
            .expect("rt");
        rt.block_on(async {
            // Capacity of 2.5 chunks of 16 blocks: creates sometimes hit Full.
            let mut h = Harness::new(40 * B, 0);
            // Room for one table of 16 blocks: every other chunk evicts it.
            let tables = |h: &Harness| if tiny_cache { h.store().set_table_cache_limit(16 * CRC_ENTRY_BYTES) };
            tables(&h);
            for (i, op) in ops.into_iter().enumerate() {
                if i == reopen_at {
                    h.reopen();
                    tables(&h);
                }
                h.step(op).await;
            }
            h.check_all().await;
            h.reopen();
            h.check_all().await;
        });
    }
}

/// Two writes of blocks 0..8 (so every entry's `prev` and `cur` are both
/// non-zero), then a read that loads the chunk's table into memory.
async fn cached_chunk(h: &mut Harness) {
    for seed in [1, 2] {
        h.step(Op::Write {
            c: 1,
            off: 0,
            len: 8 * B,
            seed,
            epoch: 1,
            d: Buffered,
        })
        .await;
    }
    assert_eq!(
        h.step(Op::Read {
            c: 1,
            off: 0,
            len: 8 * B,
            epoch: 1
        })
        .await,
        "ok"
    );
    assert!(h.store().table_cached(id(1)), "the table was not loaded");
}

fn new_cached_harness() -> Harness {
    Harness::new(64 * MIB, 0)
}

/// A harness whose chunk 1, of `size`, has its table cached.
async fn harness_with_cached_chunk(size: u64) -> Harness {
    let mut h = new_cached_harness();
    h.step(Op::Create {
        c: 1,
        size,
        epoch: 1,
    })
    .await;
    cached_chunk(&mut h).await;
    h
}

/// What the mapping is for: with the chunk's table mapped, a request's
/// entries cost no system call, so an overwrite is one `pwrite` (its
/// data), a delta write one `pread` and one `pwrite`, a read one `pread`.
/// The kernel counts them per thread (`/proc/thread-self/io`), and these
/// calls run on the test's thread, so other tests' threads do not count.
#[tokio::test]
async fn a_mapped_table_costs_no_system_call() {
    let h = harness_with_cached_chunk(MIB).await;
    let s = h.store();
    const N: u64 = 50;
    // Reading the counters is itself a few `read`s, counted in the next
    // reading: reads are checked up to this slack.
    const SLACK: u64 = 8;
    let calls = |what: &str, f: &mut dyn FnMut(u64)| {
        let (r0, w0) = thread_syscalls();
        for i in 0..N {
            f(i);
        }
        let (r1, w1) = thread_syscalls();
        let (reads, writes) = (r1 - r0, w1 - w0);
        eprintln!("{N} {what}: {reads} reads, {writes} writes");
        (reads, writes)
    };
    let (reads, writes) = calls("overwrites", &mut |i| {
        s.overwrite_blocking(id(1), (i % 8) * B, &pat(3, B), 1, Buffered)
            .expect("overwrite")
    });
    assert!(
        reads <= SLACK && writes == N,
        "{reads} reads, {writes} writes"
    );
    let mut delta = vec![0u8; B as usize];
    let (reads, writes) = calls("delta writes", &mut |i| {
        s.write_blocking(id(1), (i % 8) * B, &pat(4, B), &mut delta, 1, Buffered)
            .expect("write")
    });
    assert!(
        (N..=N + SLACK).contains(&reads) && writes == N,
        "{reads} reads, {writes} writes"
    );
    let mut buf = vec![0u8; B as usize];
    let (reads, writes) = calls("reads", &mut |i| {
        s.read_blocking(id(1), (i % 8) * B, &mut buf, 1)
            .expect("read")
    });
    assert!(
        (N..=N + SLACK).contains(&reads) && writes == 0,
        "{reads} reads, {writes} writes"
    );
    assert!(s.table_cached(id(1)));
    s.check_table_cache();
}

/// A mapped table's blocks are allocated when it is mapped, so that on a
/// full file system no store into it can fault for space (that would be
/// SIGBUS, and the process would die): a write to a hole fails on its
/// data with ENOSPC, the block reads back as before, and blocks that have
/// space still take writes. On a tmpfs small enough to fill, mounted for
/// the test (needs root, as CI is; skipped otherwise). The chunk is 4 MiB,
/// so its table is two pages, and the writes before it is mapped touch
/// only the first: without the allocation, the store into the second
/// would be the first use of a page the full file system cannot give.
#[tokio::test]
async fn a_full_disk_fails_writes_through_a_mapped_table_cleanly() {
    let mount = tempfile::tempdir().expect("tempdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "weft-test"])
        .arg(mount.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("cannot mount a tmpfs (not root?): skipped");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.path());
    let dir = tempfile::tempdir_in(mount.path()).expect("tempdir in tmpfs");
    let mut h = Harness::new_in(dir, 64 * MIB, 0);
    h.step(Op::Create {
        c: 1,
        size: 4 * MIB,
        epoch: 1,
    })
    .await;
    cached_chunk(&mut h).await;
    // Fill the file system.
    let filler = mount.path().join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    for len in [MIB, B] {
        use std::io::Write;
        let fill = vec![1u8; len as usize];
        while f.write_all(&fill).is_ok() {}
    }
    let mut page = vec![1u8; B as usize];
    let s = h.store();
    // Block 600's entry is in the table's second page; its data is a hole.
    let far = 600 * B;
    match s.overwrite_blocking(id(1), far, &pat(5, B), 1, Buffered) {
        Err(StoreError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}"),
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    s.read_blocking(id(1), far, &mut page, 1)
        .expect("the block reads back as before");
    assert!(page.iter().all(|b| *b == 0));
    // Block 3 has its space: it takes the write.
    s.overwrite_blocking(id(1), 3 * B, &pat(6, B), 1, Buffered)
        .expect("overwrite of an allocated block");
    s.read_blocking(id(1), 3 * B, &mut page, 1).expect("read");
    assert_eq!(page, pat(6, B));
    // With space again, the write that failed goes through.
    drop(f);
    std::fs::remove_file(&filler).expect("remove filler");
    s.overwrite_blocking(id(1), far, &pat(5, B), 1, Buffered)
        .expect("overwrite with space");
    s.read_blocking(id(1), far, &mut page, 1).expect("read");
    assert_eq!(page, pat(5, B));
    assert!(s.table_cached(id(1)));
    s.check_table_cache();
    drop(h);
}

/// This thread's (read, write) system calls so far.
fn thread_syscalls() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    let field = |name: &str| {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in {io}"))
    };
    (field("syscr:"), field("syscw:"))
}

/// With the chunk's table in memory, data flipped on disk still fails
/// reads and delta writes (the bytes are read from the file, the entries
/// from the mapped table), and nothing is handed out.
#[tokio::test]
async fn cached_table_still_catches_flipped_data() {
    let h = harness_with_cached_chunk(MIB).await;
    flip_bit(&h.chunk_path(1), 3 * B + 9);
    let s = h.store();
    let mut buf = vec![0xeeu8; (8 * B) as usize];
    match s.read_blocking(id(1), 0, &mut buf, 1) {
        Err(StoreError::Checksum { blocks, .. }) => assert_eq!(blocks, vec![3]),
        other => panic!("expected Checksum, got {other:?}"),
    }
    assert!(buf.iter().all(|b| *b == 0));
    assert!(matches!(
        s.write(id(1), 3 * B, pat(5, B), 1, Buffered).await,
        Err(StoreError::Checksum { .. })
    ));
    // Another block, not yet marked: found by the read itself.
    flip_bit(&h.chunk_path(1), 6 * B);
    match s.read(id(1), 6 * B, B, 1).await {
        Err(StoreError::Checksum { blocks, .. }) => assert_eq!(blocks, vec![6]),
        other => panic!("expected Checksum, got {other:?}"),
    }
    // Flipped back, block 3 verifies again, but it is marked bad: the
    // async read (served from the page cache on the caller's thread when
    // it can) still refuses it until it is rewritten.
    flip_bit(&h.chunk_path(1), 3 * B + 9);
    match s.read(id(1), 2 * B, 2 * B, 1).await {
        Err(StoreError::Checksum { blocks, .. }) => assert_eq!(blocks, vec![3]),
        other => panic!("expected Checksum, got {other:?}"),
    }
    assert!(s.read(id(1), 0, 3 * B, 1).await.is_ok());
    assert!(s.table_cached(id(1)));
    s.check_table_cache();
}

/// Every mutation updates the mapped table: punch (whose new entry
/// `{cur, 0}` is not accepted by the stale `{prev, cur}`), overwrite,
/// delta, write.
#[tokio::test]
async fn cached_table_follows_every_mutation() {
    let mut h = harness_with_cached_chunk(MIB).await;
    h.script(vec![
        (
            Op::Punch {
                c: 1,
                off: 2 * B,
                len: 2 * B,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 8 * B,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Overwrite {
                c: 1,
                off: 0,
                len: B,
                seed: 3,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Overwrite {
                c: 1,
                off: 0,
                len: B,
                seed: 4,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 8 * B,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Delta {
                c: 1,
                off: 4 * B,
                len: 2 * B,
                seed: 5,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Delta {
                c: 1,
                off: 4 * B,
                len: 2 * B,
                seed: 6,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 7 * B,
                len: B,
                seed: 7,
                epoch: 2,
                d: Stable,
            },
            "ok",
        ),
        (
            Op::Write {
                c: 1,
                off: 7 * B,
                len: B,
                seed: 8,
                epoch: 2,
                d: Stable,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 8 * B,
                epoch: 2,
            },
            "ok",
        ),
        (
            Op::Punch {
                c: 1,
                off: 0,
                len: MIB,
                epoch: 2,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: MIB,
                epoch: 2,
            },
            "ok",
        ),
    ])
    .await;
    assert!(h.store().table_cached(id(1)));
}

/// Delete and write_whole drop the old table (and its bytes); the chunk
/// that takes the id starts uncached and reads its own entries.
#[tokio::test]
async fn cached_table_goes_with_delete_and_write_whole() {
    let mut h = harness_with_cached_chunk(MIB).await;
    assert_eq!(h.store().check_table_cache(), 2 * 1024);
    h.script(vec![
        (
            Op::WriteWhole {
                c: 1,
                size: 2 * MIB,
                len: 8 * B,
                seed: 9,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 16 * B,
                epoch: 1,
            },
            "ok",
        ),
    ])
    .await;
    // The new chunk's table (4 KiB) was loaded by the read, the old one is gone.
    assert_eq!(h.store().check_table_cache(), 4 * 1024);
    h.script(vec![
        (Op::Delete { c: 1 }, "ok"),
        (
            Op::Create {
                c: 1,
                size: MIB,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Read {
                c: 1,
                off: 0,
                len: 8 * B,
                epoch: 1,
            },
            "ok",
        ),
    ])
    .await;
    assert_eq!(h.store().check_table_cache(), 2 * 1024);
    h.step(Op::Delete { c: 1 }).await;
    assert_eq!(h.store().check_table_cache(), 0);
}

/// A mapped table is the file's table: a flip in the table on disk fails
/// reads at once, cached as the table is, and the scrubber finds it.
#[tokio::test]
async fn a_mapped_table_is_the_table_on_disk() {
    let h = harness_with_cached_chunk(MIB).await;
    // Block 5's `cur` (its data was written with seed 2; `prev` is seed 1).
    flip_bit(
        &h.chunk_path(1),
        file::table_offset(MIB) + 5 * CRC_ENTRY_BYTES + 4,
    );
    let s = h.store();
    assert!(s.table_cached(id(1)));
    assert!(matches!(
        s.read(id(1), 5 * B, B, 1).await,
        Err(StoreError::Checksum { .. })
    ));
    let report = s.scrub_once(0).await.expect("scrub");
    assert_eq!(report.bad, vec![(id(1), vec![5])]);
    assert!(matches!(
        s.read(id(1), 5 * B, B, 1).await,
        Err(StoreError::Checksum { .. })
    ));
    // Overwrite repairs: it stores a new entry through the mapping.
    s.overwrite(id(1), 5 * B, pat(3, B), 1, Buffered)
        .await
        .expect("repair");
    assert_eq!(s.read(id(1), 5 * B, B, 1).await.expect("read"), pat(3, B));
    assert!(s.scrub_once(0).await.expect("scrub").bad.is_empty());
    s.check_table_cache();
}

/// Writes through a cached table are in the file: after a kill (no clean
/// close) and a reopen, which starts with no table in memory, they read
/// back, and flipped data is still caught.
#[tokio::test]
async fn reopen_after_writes_through_a_cached_table() {
    let mut h = harness_with_cached_chunk(MIB).await;
    h.script(vec![
        (
            Op::Overwrite {
                c: 1,
                off: B,
                len: 2 * B,
                seed: 3,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Delta {
                c: 1,
                off: 4 * B,
                len: B,
                seed: 4,
                epoch: 1,
            },
            "ok",
        ),
        (
            Op::Punch {
                c: 1,
                off: 6 * B,
                len: B,
                epoch: 1,
            },
            "ok",
        ),
    ])
    .await;
    h.store.take().expect("store").abandon();
    h.reopen();
    assert!(!h.store().table_cached(id(1)));
    h.check_all().await;
    flip_bit(&h.chunk_path(1), B);
    assert!(matches!(
        h.store().read(id(1), 0, 8 * B, 1).await,
        Err(StoreError::Checksum { .. })
    ));
}

/// Memory stays within the limit: with room for two tables, four chunks
/// used in turn evict one another, and every answer stays right.
#[tokio::test]
async fn table_cache_is_bounded() {
    let mut h = new_cached_harness();
    h.store().set_table_cache_limit(2 * 2 * 1024);
    for c in 1..=4 {
        h.step(Op::Create {
            c,
            size: MIB,
            epoch: 1,
        })
        .await;
    }
    for round in 0..6u8 {
        for c in 1..=4 {
            let off = u64::from(round) * B;
            let seed = round * 4 + c as u8;
            let write = Op::Write {
                c,
                off,
                len: B,
                seed,
                epoch: 1,
                d: Buffered,
            };
            assert_eq!(h.step(write).await, "ok");
            assert_eq!(
                h.step(Op::Read {
                    c,
                    off: 0,
                    len: 8 * B,
                    epoch: 1
                })
                .await,
                "ok"
            );
            assert!(h.store().check_table_cache() <= 2 * 2 * 1024);
        }
    }
    let cached = (1..=4).filter(|c| h.store().table_cached(id(*c))).count();
    assert_eq!(cached, 2);
    h.check_all().await;
}
