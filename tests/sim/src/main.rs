//! `weft-sim`: the deterministic simulation of issue 6 (`docs/simulation.md`).
//!
//! Four real chunkservers (`chunkserver::node::Node`: store, journal, chunk
//! service, extent primary, metadata Raft on LMDB, gossip) and two gateway
//! hosts running the real volume client, all over the real RPC and mutual
//! TLS, in one process on turmoil's simulated network and clock. One seed
//! fixes the network's latencies and losses, the faults (crashes, restarts,
//! partitions, stalled links, torn journal tails, flipped bytes on disk) and
//! the workload; the checker verifies every read against the acknowledged
//! writes as it happens, and after the faults stop every byte of both
//! windows must read back.
//!
//! Usage: `weft-sim --seeds 500 --from 1` runs seeds 1..=500 and prints one
//! line per seed (its trace hash); a failure prints the seed and the command
//! that replays it. `--seed S --trace` replays one seed and prints its events.

mod checker;
mod cluster;
mod faults;

use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ! {
    eprintln!(
        "usage: weft-sim [--seeds N] [--from S] [--seed S] [--trace] [--quiet]\n\
         \x20                [--keep-going] [--twice] [--known-failures FILE]\n\
         \x20                [--ec 3+1|3+2]\n\
         \n\
         Runs N seeds starting at S (default: 20 from 1), or one seed with\n\
         --seed. Prints `seed S ok hash H` per seed; on a failure prints the\n\
         seed and exits 1 (--keep-going: runs the rest first). --twice runs\n\
         each seed twice and fails if the two traces differ. --trace prints\n\
         every event of the run. RUST_LOG shows the nodes' logs (noisy).\n\
         --known-failures FILE: seeds (one per line, `SEED reason`) that fail\n\
         for a known reason: their failure is reported, not counted.\n\
         --ec: the LUN's profile: 3+1 (XOR, four nodes; the default) or 3+2\n\
         (Reed-Solomon, six nodes, a node's chunks moved after 4 s away)."
    );
    std::process::exit(2)
}

fn main() -> ExitCode {
    // Die quietly when the output is piped into `head`.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let mut seeds = 20u64;
    let mut from = 1u64;
    let mut trace = false;
    let mut quiet = false;
    let mut keep_going = false;
    let mut twice = false;
    let mut shape = cluster::Shape::XOR;
    let mut known: std::collections::BTreeMap<u64, String> = Default::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match a.as_str() {
            "--seeds" => seeds = num(),
            "--from" => from = num(),
            "--seed" => {
                from = num();
                seeds = 1;
            }
            "--trace" => trace = true,
            "--quiet" => quiet = true,
            "--keep-going" => keep_going = true,
            "--twice" => twice = true,
            "--ec" => {
                shape = args
                    .next()
                    .and_then(|v| cluster::Shape::parse(&v))
                    .unwrap_or_else(|| usage())
            }
            "--known-failures" => {
                let path = args.next().unwrap_or_else(|| usage());
                let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                    eprintln!("weft-sim: {path}: {e}");
                    std::process::exit(2)
                });
                for line in text.lines().map(str::trim) {
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (seed, why) = line.split_once(' ').unwrap_or((line, ""));
                    let seed = seed.parse().unwrap_or_else(|_| usage());
                    known.insert(seed, why.trim().to_owned());
                }
            }
            _ => usage(),
        }
    }
    if let Ok(filter) = std::env::var("RUST_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_timer(SimTime)
            .init();
    }
    let certs = cluster::Certs::generate(shape);
    let started = Instant::now();
    let mut stats = checker::Totals::default();
    let mut failed = Vec::new();
    for seed in from..from.saturating_add(seeds) {
        let t = Instant::now();
        let mut result = cluster::run_seed(seed, &certs, trace, shape);
        if twice {
            if let Ok(first) = &result {
                result = match cluster::run_seed(seed, &certs, false, shape) {
                    Ok(again) if again.hash == first.hash => result,
                    Ok(again) => Err(anyhow::anyhow!(
                        "not deterministic: trace hash {:016x} then {:016x}",
                        first.hash,
                        again.hash
                    )),
                    Err(e) => Err(e.context("the second run failed where the first passed")),
                };
            }
        }
        if let Some(why) = known.get(&seed) {
            match &result {
                Err(e) => println!("seed {seed} failed as known ({why}): {e:#}"),
                Ok(_) => println!("seed {seed} passes now: take it off the known failures ({why})"),
            }
            continue;
        }
        match result {
            Ok(report) => {
                stats.add(&report);
                if !quiet {
                    println!(
                        "seed {seed} ok hash {:016x} steps {} writes {}/{} reads {}/{} faults {} ({:.2}s)",
                        report.hash,
                        report.steps,
                        report.writes_acked,
                        report.writes,
                        report.reads_ok,
                        report.reads,
                        report.faults,
                        t.elapsed().as_secs_f64()
                    );
                }
            }
            Err(e) => {
                println!("seed {seed} FAILED: {e:#}");
                println!("replay: cargo run --release -p weft-sim -- --seed {seed} --trace");
                failed.push(seed);
                if !keep_going {
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if !failed.is_empty() {
        println!("{} of {seeds} seeds FAILED: {failed:?}", failed.len());
        return ExitCode::FAILURE;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{seeds} seeds done in {secs:.1}s ({:.2} seeds/s): {} writes acknowledged, {} reads checked, {} faults",
        seeds as f64 / secs.max(1e-9),
        stats.writes_acked,
        stats.reads_ok,
        stats.faults
    );
    ExitCode::SUCCESS
}

/// Log lines carry the simulated time, so two runs of a seed can be diffed.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "{:>9.3}", t.as_secs_f64()),
            None => write!(w, "{:>9}", "-"),
        }
    }
}
