//! Chunk store throughput next to fio, same filesystem, same block size,
//! same sync settings, in one run.
//!
//! cargo run --release -p chunkserver --example store_bench -- --dir /path [--jobs 2]
//!
//! Each case runs the store on one chunk of `--size-mib`, twice:
//! - **sync**: the synchronous API (`*_blocking`) from `--jobs` OS threads,
//!   each with one request at a time and its own reused buffers, as fio's
//!   `psync` jobs;
//! - **async**: the async API from `--jobs` tokio tasks on a multi-thread
//!   runtime (a request blocks its worker with `block_in_place`, or reads
//!   cached bytes without blocking);
//!
//! then fio (`psync`, `--numjobs=--jobs`, one file of the same size). Before
//! each side its file is laid out afresh by writes of the case's block
//! size, the chunk like fio's file (see `lay_out`), and the filesystem is
//! synced (`settle`). "stable" =
//! `Durability::Stable` for the store and `--fdatasync=1` for fio (one
//! fdatasync per write). Reads come from the page cache on both sides
//! (`--invalidate=0`) and the store verifies every block's CRC32C, always.
//!
//! Write rows name the store operation: `write` returns the parity delta
//! `old ⊕ new`, so it reads and verifies the old data first (a
//! read-modify-write by contract); `overwrite` does not read the old data
//! (full-row writes, replay). fio's plain write is the reference for both;
//! for `write` the last column also compares with fio's read + write of the
//! same block (the least a read-modify-write can cost).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkserver::store::{ChunkId, ChunkMeta, ChunkStore, Durability, StoreConfig, StoreError};
use clap::Parser;

const MIB: u64 = 1 << 20;

#[derive(Parser)]
struct Args {
    /// Directory on the filesystem to measure (created; files removed after).
    #[arg(long)]
    dir: PathBuf,
    /// Size of the chunk and of fio's file, MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Seconds per case and per side.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Concurrent requests (store threads / store tasks / fio jobs).
    #[arg(long, default_value_t = 1)]
    jobs: u64,
    /// Rounds per case (store sync, store async, fio, in turn, each round
    /// starting with the next side); the best round of each side is
    /// printed. On a shared machine the disk and CPUs are busy at random
    /// moments: alternating and taking each side's best compares the least
    /// disturbed runs of all.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Only the cases whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    /// `write`: returns old ⊕ new (reads and verifies the old data).
    Write,
    /// `overwrite`: no delta, old data not read.
    Overwrite,
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    op: Op,
    random: bool,
    bs: u64,
    stable: bool,
}

const fn case(name: &'static str, op: Op, random: bool, bs: u64, stable: bool) -> Case {
    Case {
        name,
        op,
        random,
        bs,
        stable,
    }
}

const CASES: [Case; 10] = [
    case("seq write(delta) 1M", Op::Write, false, MIB, false),
    case("seq overwrite 1M", Op::Overwrite, false, MIB, false),
    case("seq write(delta) 1M st", Op::Write, false, MIB, true),
    case("seq overwrite 1M st", Op::Overwrite, false, MIB, true),
    case("rand write(delta) 4K", Op::Write, true, 4096, false),
    case("rand overwrite 4K", Op::Overwrite, true, 4096, false),
    case("rand write(delta) 4K st", Op::Write, true, 4096, true),
    case("rand overwrite 4K st", Op::Overwrite, true, 4096, true),
    case("seq read 1M", Op::Read, false, MIB, false),
    case("rand read 4K", Op::Read, true, 4096, false),
];

/// xorshift: cheap, deterministic offsets.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Job `j`'s sequence of block numbers.
struct Offsets {
    random: bool,
    blocks: u64,
    x: u64,
    i: u64,
}

impl Offsets {
    fn new(c: Case, size: u64, j: u64, jobs: u64) -> Offsets {
        let blocks = size / c.bs;
        Offsets {
            random: c.random,
            blocks,
            x: 0x9e37_79b9_7f4a_7c15u64 ^ (j + 1),
            i: j * blocks / jobs,
        }
    }

    fn next_offset(&mut self, bs: u64) -> u64 {
        let b = if self.random {
            next(&mut self.x) % self.blocks
        } else {
            self.i % self.blocks
        };
        self.i += 1;
        b * bs
    }
}

fn durability(c: Case) -> Durability {
    if c.stable {
        Durability::Stable
    } else {
        Durability::Buffered
    }
}

/// Write back everything dirty on the filesystem before a measurement, so
/// that no side pays for the writeback of the one before it (fio's buffered
/// random writes would otherwise slow the store's next stable run).
fn settle(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let d = std::fs::File::open(dir)?;
    // SAFETY: plain syscall on a valid, open file descriptor.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Both files are laid out the same way before every side: created anew,
/// written by writes of the case's block size, synced (as fio lays out a
/// file itself, in blocks of its job's size). The size of those writes is
/// the size of the page-cache folios the file gets, and a 4 KiB write into
/// a large folio costs several times one into a small folio (the kernel
/// walks every 4 KiB block of the folio: measured here ~11 µs against
/// ~2 µs). A 4 KiB layout gives small folios only, which stay as they are;
/// a 1 MiB layout gives large ones, which the kernel splits as a run goes
/// on (seen in `/proc/kpageflags`: 2 of fio's 256 within a minute). Until
/// 2026-11-28 every case used the 1 MiB layout, and 4 KiB writes measured
/// the two files' folios more than the store: fio's rate moved between
/// 56k and 215k IOPS from run to run.
fn lay_out(path: &std::path::Path, size: u64, bs: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let fill = vec![0xa5u8; bs as usize];
    for b in 0..size / bs {
        f.write_all_at(&fill, b * bs)?;
    }
    f.sync_all()
}

/// The chunk laid out like fio's file (`lay_out`): created anew (its old
/// file and page-cache folios gone), written by overwrites of `bs`, flushed.
async fn lay_out_chunk(
    store: &ChunkStore,
    id: ChunkId,
    size: u64,
    bs: u64,
) -> Result<(), StoreError> {
    if store.info(id).is_some() {
        store.delete(id).await?;
    }
    store
        .create(
            id,
            ChunkMeta {
                size_bytes: size,
                epoch: 1,
            },
        )
        .await?;
    let fill = Bytes::from(vec![0xa5u8; bs as usize]);
    for b in 0..size / bs {
        store
            .overwrite(id, b * bs, fill.clone(), 1, Durability::Buffered)
            .await?;
    }
    store.flush().await?;
    Ok(())
}

/// The synchronous API from `jobs` OS threads; bytes/s.
fn run_sync(store: &ChunkStore, id: ChunkId, c: Case, size: u64, a: &Args) -> f64 {
    let bytes = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let jobs = a.jobs.max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for j in 0..jobs {
            let bytes = &bytes;
            // Named, so that `perf report --comm sync-job` shows this side
            // alone (the layout runs on the main thread).
            let job = std::thread::Builder::new().name("sync-job".into());
            let spawned = job.spawn_scoped(s, move || {
                let data = vec![0x5au8 ^ j as u8; c.bs as usize];
                let mut buf = vec![0u8; c.bs as usize];
                let mut offsets = Offsets::new(c, size, j, jobs);
                let d = durability(c);
                while Instant::now() < deadline {
                    let off = offsets.next_offset(c.bs);
                    let r = match c.op {
                        Op::Read => store.read_blocking(id, off, &mut buf, 1),
                        Op::Write => store.write_blocking(id, off, &data, &mut buf, 1, d),
                        Op::Overwrite => store.overwrite_blocking(id, off, &data, 1, d),
                    };
                    if let Err(e) = r {
                        eprintln!("store error: {e}");
                        return;
                    }
                    bytes.fetch_add(c.bs, Ordering::Relaxed);
                }
            });
            if let Err(e) = spawned {
                eprintln!("cannot start a sync job: {e}");
            }
        }
    });
    bytes.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// The async API from `jobs` tokio tasks; bytes/s.
async fn run_async(store: Arc<ChunkStore>, id: ChunkId, c: Case, size: u64, a: &Args) -> f64 {
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let jobs = a.jobs.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for j in 0..jobs {
        let store = store.clone();
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let data = Bytes::from(vec![0x5au8 ^ j as u8; c.bs as usize]);
            let mut offsets = Offsets::new(c, size, j, jobs);
            let d = durability(c);
            while Instant::now() < deadline {
                let off = offsets.next_offset(c.bs);
                let r = match c.op {
                    Op::Read => store.read(id, off, c.bs, 1).await.map(|_| ()),
                    Op::Write => store.write(id, off, data.clone(), 1, d).await.map(|_| ()),
                    Op::Overwrite => store.overwrite(id, off, data.clone(), 1, d).await,
                };
                if let Err(e) = r {
                    eprintln!("store error: {e}");
                    return;
                }
                bytes.fetch_add(c.bs, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bytes.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// What fio runs: (rw, block size, fdatasync after each write).
type FioKey = (&'static str, u64, bool);

fn fio_key(c: Case, op: Op) -> FioKey {
    let rw = match (op, c.random) {
        (Op::Read, true) => "randread",
        (Op::Read, false) => "read",
        (_, true) => "randwrite",
        (_, false) => "write",
    };
    (rw, c.bs, c.stable && op != Op::Read)
}

/// fio's bandwidth in bytes/s, from terse v3 output.
fn run_fio((rw, bs, stable): FioKey, a: &Args) -> Option<f64> {
    let file = a.dir.join("fio.dat");
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        &format!("--filename={}", file.display()),
        &format!("--size={}M", a.size_mib),
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        "--ioengine=psync",
        // The file exists, laid out like the chunk (`lay_out`): fio
        // leaves it as it is.
        "--overwrite=1",
        // Both sides read from the page cache.
        "--invalidate=0",
        &format!("--numjobs={}", a.jobs),
        "--group_reporting",
        "--time_based",
        &format!("--runtime={}", a.secs),
        "--output-format=terse",
        "--terse-version=3",
    ]);
    if stable {
        cmd.arg("--fdatasync=1");
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        eprintln!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("3;"))?;
    let fields: Vec<&str> = line.split(';').collect();
    let write = rw.contains("write");
    let kib_s: f64 = fields.get(if write { 47 } else { 6 })?.parse().ok()?;
    Some(kib_s * 1024.0)
}

fn rate(bps: f64, bs: u64) -> String {
    if bs >= MIB {
        format!("{:.0} MiB/s", bps / MIB as f64)
    } else {
        format!("{:.1}k IOPS", bps / bs as f64 / 1000.0)
    }
}

fn pct(a: f64, b: Option<f64>) -> String {
    b.map_or("-".into(), |b| format!("{:.0}%", 100.0 * a / b))
}

fn filesystem(dir: &std::path::Path) -> String {
    Command::new("df")
        .args(["--output=fstype,source"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" on "))
        })
        .unwrap_or_else(|| "?".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    let size = a.size_mib * MIB;
    let store_dir = a.dir.join("store");
    let _ = std::fs::remove_dir_all(&store_dir);
    let store = Arc::new(ChunkStore::open(StoreConfig {
        data_dir: store_dir.clone(),
        capacity_bytes: 2 * size,
        reserve_bytes: 0,
        chunk_bytes_max: size,
        boot_id_path: chunkserver::store::BOOT_ID_PATH.into(),
    })?);
    let id = ChunkId {
        lun: 1,
        extent: 1,
        index: 0,
    };
    let fio_file = a.dir.join("fio.dat");
    println!(
        "dir {} ({}), chunk/file {} MiB, {} s per case and side, {} job(s), best of {} round(s); fio psync",
        a.dir.display(),
        filesystem(&a.dir),
        a.size_mib,
        a.secs,
        a.jobs,
        a.rounds.max(1)
    );
    println!(
        "{:24} {:>12} {:>12} {:>12} {:>9} {:>10} {:>14}",
        "case", "store sync", "store async", "fio", "sync/fio", "async/fio", "sync/fio(r+w)"
    );
    let picked = CASES
        .into_iter()
        .filter(|c| a.only.is_empty() || a.only.iter().any(|o| c.name.contains(o.as_str())));
    for c in picked {
        let (mut s, mut t) = (0f64, 0f64);
        let (mut f, mut r): (Option<f64>, Option<f64>) = (None, None);
        let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for round in 0..a.rounds.max(1) {
            // Whoever runs first after a case of buffered writes pays for
            // the disk still absorbing them (on this VM, a guest flush also
            // waits for the host's writeback): each round starts with the
            // next side, so every side gets a run that is not first.
            for side in 0..3 {
                let side = (round as usize + side) % 3;
                // Every side starts from a file laid out afresh, so all
                // start with the same page-cache folios (see `lay_out`).
                match side {
                    0 | 1 => rt.block_on(lay_out_chunk(&store, id, size, c.bs))?,
                    _ => lay_out(&fio_file, size, c.bs)?,
                }
                settle(&a.dir)?;
                match side {
                    0 => s = s.max(run_sync(&store, id, c, size, &a)),
                    1 => t = t.max(rt.block_on(run_async(store.clone(), id, c, size, &a))),
                    _ => {
                        f = best(f, run_fio(fio_key(c, c.op), &a));
                        if c.op == Op::Write {
                            settle(&a.dir)?;
                            r = best(r, run_fio(fio_key(c, Op::Read), &a));
                        }
                    }
                }
            }
        }
        // A read-modify-write costs at least fio's read plus its write.
        let rmw = r.zip(f).map(|(r, w)| 1.0 / (1.0 / r + 1.0 / w));
        println!(
            "{:24} {:>12} {:>12} {:>12} {:>9} {:>10} {:>14}",
            c.name,
            rate(s, c.bs),
            rate(t, c.bs),
            f.map_or("(fio failed)".into(), |f| rate(f, c.bs)),
            pct(s, f),
            pct(t, f),
            if c.op == Op::Write {
                pct(s, rmw)
            } else {
                String::new()
            },
        );
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&store_dir);
    let _ = std::fs::remove_file(&fio_file);
    Ok(())
}
