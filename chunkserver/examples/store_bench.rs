//! Chunk store throughput next to fio, same filesystem, same block size,
//! same sync settings, in one run.
//!
//! cargo run --release -p chunkserver --example store_bench -- --dir /path
//!
//! Each case runs the store (one chunk of `--size-mib`, `--jobs` tasks each
//! issuing one request at a time) and then fio (`psync`, `--jobs` jobs on
//! one file of the same size). "stable" = `Durability::Stable` for the
//! store and `--fdatasync=1` for fio (one fdatasync per write).

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chunkserver::store::{ChunkId, ChunkMeta, ChunkStore, Durability, StoreConfig};
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
    /// Seconds per case.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Concurrent requests (store tasks / fio jobs).
    #[arg(long, default_value_t = 1)]
    jobs: u64,
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    write: bool,
    random: bool,
    bs: u64,
    stable: bool,
}

const CASES: [Case; 6] = [
    Case {
        name: "seq write 1M",
        write: true,
        random: false,
        bs: MIB,
        stable: false,
    },
    Case {
        name: "seq write 1M stable",
        write: true,
        random: false,
        bs: MIB,
        stable: true,
    },
    Case {
        name: "rand write 4K",
        write: true,
        random: true,
        bs: 4096,
        stable: false,
    },
    Case {
        name: "rand write 4K stable",
        write: true,
        random: true,
        bs: 4096,
        stable: true,
    },
    Case {
        name: "seq read 1M",
        write: false,
        random: false,
        bs: MIB,
        stable: false,
    },
    Case {
        name: "rand read 4K",
        write: false,
        random: true,
        bs: 4096,
        stable: false,
    },
];

/// xorshift: cheap, deterministic offsets.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn run_store(store: Arc<ChunkStore>, id: ChunkId, c: Case, size: u64, a: &Args) -> f64 {
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let blocks = size / c.bs;
    let jobs = a.jobs.max(1);
    let mut tasks = Vec::new();
    for j in 0..jobs {
        let store = store.clone();
        let bytes = bytes.clone();
        tasks.push(tokio::spawn(async move {
            let data = Bytes::from(vec![0x5au8 ^ j as u8; c.bs as usize]);
            let d = if c.stable {
                Durability::Stable
            } else {
                Durability::Buffered
            };
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (j + 1);
            let mut i = j * blocks / jobs;
            while Instant::now() < deadline {
                let b = if c.random {
                    next(&mut x) % blocks
                } else {
                    i % blocks
                };
                i += 1;
                let r = if c.write {
                    store
                        .write(id, b * c.bs, data.clone(), 1, d)
                        .await
                        .map(|_| ())
                } else {
                    store.read(id, b * c.bs, c.bs, 1).await.map(|_| ())
                };
                if let Err(e) = r {
                    eprintln!("store error: {e}");
                    return;
                }
                bytes.fetch_add(c.bs, Ordering::Relaxed);
            }
        }));
    }
    let start = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    bytes.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// fio's bandwidth in bytes/s, from terse v3 output.
fn run_fio(c: Case, a: &Args) -> Option<f64> {
    let file = a.dir.join("fio.dat");
    let rw = match (c.write, c.random) {
        (true, true) => "randwrite",
        (true, false) => "write",
        (false, true) => "randread",
        (false, false) => "read",
    };
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        &format!("--filename={}", file.display()),
        &format!("--size={}M", a.size_mib),
        &format!("--rw={rw}"),
        &format!("--bs={}", c.bs),
        "--ioengine=psync",
        // Lay the file out by writing it (like the store's chunk), not
        // with fallocate: no unwritten-extent conversions in the timings.
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
    if c.stable {
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
    let kib_s: f64 = fields.get(if c.write { 47 } else { 6 })?.parse().ok()?;
    Some(kib_s * 1024.0)
}

fn fmt(bps: f64, bs: u64) -> String {
    format!(
        "{:9.1} MiB/s {:9.0} IOPS",
        bps / MIB as f64,
        bps / bs as f64
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.dir)?;
    let size = a.size_mib * MIB;
    let store_dir = a.dir.join("store");
    let _ = std::fs::remove_dir_all(&store_dir);
    let store = Arc::new(ChunkStore::open(StoreConfig {
        data_dir: store_dir.clone(),
        capacity_bytes: 2 * size,
        reserve_bytes: 0,
        chunk_bytes_max: size,
    })?);
    let id = ChunkId {
        lun: 1,
        extent: 1,
        index: 0,
    };
    store
        .create(
            id,
            ChunkMeta {
                size_bytes: size,
                epoch: 1,
            },
        )
        .await?;
    // Lay the chunk out first, as fio lays out its file.
    let fill = Bytes::from(vec![0xa5u8; MIB as usize]);
    for m in 0..a.size_mib {
        store
            .write(id, m * MIB, fill.clone(), 1, Durability::Buffered)
            .await?;
    }
    store.flush().await?;
    println!(
        "dir {} size {} MiB, {} s per case, {} job(s); store vs fio (psync)",
        a.dir.display(),
        a.size_mib,
        a.secs,
        a.jobs
    );
    println!("{:22} {:>30} {:>30} {:>7}", "case", "store", "fio", "ratio");
    for c in CASES {
        let s = run_store(store.clone(), id, c, size, &a).await;
        store.flush().await?;
        let f = run_fio(c, &a);
        let (fs, ratio) = match f {
            Some(f) => (fmt(f, c.bs), format!("{:6.0}%", 100.0 * s / f)),
            None => ("(fio failed)".into(), "-".into()),
        };
        println!("{:22} {:>30} {:>30} {:>7}", c.name, fmt(s, c.bs), fs, ratio);
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&store_dir);
    let _ = std::fs::remove_file(a.dir.join("fio.dat"));
    Ok(())
}
