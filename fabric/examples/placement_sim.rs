//! Placement at scale: 1,000 chunkservers (4 sites × 10 racks × 25 hosts,
//! one node per host, 4–20 TiB each, 0–60 % used) and 100,000 extents,
//! under several EC profiles and spreads.
//!
//! `cargo run --release -p fabric --example placement_sim`
//!
//! Prints, per profile and spread: time per placement (one prepared
//! `Placer` reused, as the metadata leader does for a batch; and one-shot
//! `place()`, which prepares every time), memory of the candidate set,
//! how fill follows free capacity, failure-domain violations (must be 0),
//! how parity spreads, and how many placements move when 10 nodes join.
//! Everything is deterministic: the same run prints the same counts
//! (times vary).

use std::collections::BTreeSet;
use std::mem::size_of;
use std::time::{Duration, Instant};

use fabric::gossip::state::{Availability, Capacity, Location};
use fabric::identity::NodeId;
use fabric::metadata::AdminState;
use fabric::placement::{place, Candidate, EcProfile, ExtentKey, Perf, Placer, Policy, Spread};

const SITES: usize = 4;
const RACKS_PER_SITE: usize = 10;
const HOSTS_PER_RACK: usize = 25;
const EXTENTS: u64 = 100_000;
/// One chunk: a 64 MiB extent at k = 4.
const CHUNK_BYTES: u64 = 16 << 20;
const RESERVE_BYTES: u64 = 64 << 30;
/// Nodes added for the movement measurement.
const ADDED_NODES: usize = 10;
/// One-shot `place()` calls timed (each prepares the whole candidate set).
const ONE_SHOT_SAMPLES: u64 = 1_000;
/// `Placer::new` calls timed.
const PREPARE_SAMPLES: usize = 21;
const TIB: u64 = 1 << 40;

/// splitmix64: the simulation's only source of variety, seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn node(id: String, site: usize, rack: usize, host: String, rng: &mut Rng) -> Candidate {
    let total = (4 + 4 * rng.below(5)) * TIB;
    let used = total / 100 * rng.below(61);
    Candidate {
        node: NodeId::new(id).expect("valid id"),
        admin: AdminState::In,
        availability: Availability::Alive,
        capacity: Capacity {
            bytes_total: total,
            bytes_used: used,
            bytes_reserved: 0,
            chunks: 0,
        },
        reserve_bytes: RESERVE_BYTES,
        location: Location {
            region: format!("region-{}", site / 2),
            site: format!("site-{site}"),
            rack: format!("rack-{site}-{rack}"),
            host,
            lat_long: None,
        },
        perf: Some(Perf {
            latency_us_p99: 500 + rng.below(20_000) as u32,
            queue_depth: rng.below(64) as u32,
        }),
    }
}

fn cluster(rng: &mut Rng) -> Vec<Candidate> {
    let mut out = Vec::new();
    for s in 0..SITES {
        for r in 0..RACKS_PER_SITE {
            for h in 0..HOSTS_PER_RACK {
                let host = format!("host-{s}-{r}-{h}");
                out.push(node(format!("cs-{s}-{r}-{h}"), s, r, host, rng));
            }
        }
    }
    out
}

/// Bytes of a candidate set: the structs and the strings they own.
fn candidate_bytes(cs: &[Candidate]) -> usize {
    cs.iter()
        .map(|c| {
            let l = &c.location;
            size_of::<Candidate>()
                + c.node.as_str().len()
                + l.region.len()
                + l.site.len()
                + l.rack.len()
                + l.host.len()
        })
        .sum()
}

/// The failure domain, written out again (not the library's) for the
/// violation check.
fn domain(c: &Candidate, spread: Spread) -> String {
    let l = &c.location;
    match spread {
        Spread::Host => l.host.clone(),
        Spread::Rack => format!("{}/{}", l.site, l.rack),
        Spread::Site => format!("{}/{}", l.region, l.site),
    }
}

fn key(i: u64) -> ExtentKey {
    ExtentKey {
        lun: 1 + i / 16_384,
        index: i % 16_384,
    }
}

struct Row {
    name: String,
    prepare: Duration,
    mean: Duration,
    p99: Duration,
    total: Duration,
    one_shot: Duration,
    candidate_bytes: usize,
    placer_bytes: usize,
    fill: (f64, f64, f64),
    noise: f64,
    violations: u64,
    parity: (f64, f64),
    /// Per fifth of the nodes by weight, lightest first: (fill got/share,
    /// parity share over m/(k+m)), summed over the fifth's nodes.
    fifths: Vec<(f64, f64)>,
    moved_slots: f64,
    moved_expected: f64,
    moved_extents: f64,
    collateral: u64,
}

fn run(
    cs: &[Candidate],
    grown: &[Candidate],
    ec: EcProfile,
    spread: Spread,
) -> Result<Row, String> {
    let policy = Policy {
        ec,
        spread,
        sites: Vec::new(),
        regions: Vec::new(),
    };
    // Preparing: the median of PREPARE_SAMPLES builds (one is at the
    // mercy of the allocator and the other tenants of the machine).
    let mut builds = Vec::new();
    for _ in 0..PREPARE_SAMPLES {
        let started = Instant::now();
        let placer = Placer::new(cs, &policy, CHUNK_BYTES).map_err(|e| e.to_string())?;
        builds.push((started.elapsed(), placer));
    }
    builds.sort_by_key(|(t, _)| *t);
    let (prepare, placer) = builds.swap_remove(PREPARE_SAMPLES / 2);
    drop(builds);

    let index: std::collections::HashMap<&NodeId, usize> =
        cs.iter().enumerate().map(|(i, c)| (&c.node, i)).collect();
    let mut chunks = vec![0u64; cs.len()];
    let mut parity = vec![0u64; cs.len()];
    let mut times = Vec::with_capacity(EXTENTS as usize);
    let mut placements = Vec::with_capacity(EXTENTS as usize);
    let mut violations = 0;
    let all = Instant::now();
    for i in 0..EXTENTS {
        let t = Instant::now();
        let nodes = placer.place(key(i)).map_err(|e| e.to_string())?;
        times.push(t.elapsed());
        let mut domains = BTreeSet::new();
        for (pos, n) in nodes.iter().enumerate() {
            let j = index[n];
            chunks[j] += 1;
            if pos >= usize::from(ec.k) {
                parity[j] += 1;
            }
            if !domains.insert(domain(&cs[j], spread)) {
                violations += 1;
            }
        }
        placements.push(nodes);
    }
    let total = all.elapsed();
    times.sort_unstable();
    let mean = total / EXTENTS as u32;
    let p99 = times[times.len() * 99 / 100];

    let started = Instant::now();
    for i in 0..ONE_SHOT_SAMPLES {
        place(cs, &policy, key(i), CHUNK_BYTES).map_err(|e| e.to_string())?;
    }
    let one_shot = started.elapsed() / ONE_SHOT_SAMPLES as u32;

    // Fill: chunks a node got over what its share of the weight (room ×
    // performance factor) promises.
    let weight: Vec<f64> = cs
        .iter()
        .map(|c| c.room_bytes() as f64 * c.perf_factor())
        .collect();
    let weight_total: f64 = weight.iter().sum();
    let chunks_total = (EXTENTS * ec.width() as u64) as f64;
    let ratios: Vec<f64> = chunks
        .iter()
        .zip(&weight)
        .map(|(&c, &w)| c as f64 / (chunks_total * w / weight_total))
        .collect();
    let (lo, hi, sd) = spread_of(&ratios);
    // What binomial noise alone gives at this many chunks per node.
    let noise = (cs.len() as f64 / chunks_total).sqrt();
    let parity_share: Vec<f64> = parity
        .iter()
        .zip(&chunks)
        .filter(|(_, &c)| c > 0)
        .map(|(&p, &c)| p as f64 / c as f64 / (f64::from(ec.m) / ec.width() as f64))
        .collect();
    let (plo, phi, _) = spread_of(&parity_share);
    let mut by_weight: Vec<usize> = (0..cs.len()).collect();
    by_weight.sort_by(|&a, &b| weight[a].total_cmp(&weight[b]));
    let fifths = by_weight
        .chunks(cs.len().div_ceil(5))
        .map(|group| {
            let got: u64 = group.iter().map(|&j| chunks[j]).sum();
            let par: u64 = group.iter().map(|&j| parity[j]).sum();
            let share: f64 = group.iter().map(|&j| weight[j]).sum::<f64>() / weight_total;
            let q = f64::from(ec.m) / ec.width() as f64;
            (
                got as f64 / (chunks_total * share),
                par as f64 / got.max(1) as f64 / q,
            )
        })
        .collect();

    // Movement: the same extents with ADDED_NODES more nodes.
    let after = Placer::new(grown, &policy, CHUNK_BYTES).map_err(|e| e.to_string())?;
    let new: BTreeSet<&NodeId> = grown[cs.len()..].iter().map(|c| &c.node).collect();
    let (mut moved, mut extents_moved, mut collateral) = (0u64, 0u64, 0u64);
    for (i, before) in placements.iter().enumerate() {
        let before: BTreeSet<&NodeId> = before.iter().collect();
        let now = after.place(key(i as u64)).map_err(|e| e.to_string())?;
        let m = now.iter().filter(|n| !before.contains(n)).count() as u64;
        moved += m;
        if m > 0 {
            extents_moved += 1;
            if !now.iter().any(|n| new.contains(n)) {
                collateral += 1;
            }
        }
    }
    let w = |c: &Candidate| c.room_bytes() as f64 * c.perf_factor();
    let added: f64 = grown[cs.len()..].iter().map(w).sum();
    let moved_expected = added / grown.iter().map(w).sum::<f64>();

    Ok(Row {
        name: format!("{ec} {spread}"),
        prepare,
        mean,
        p99,
        total,
        one_shot,
        candidate_bytes: candidate_bytes(cs),
        placer_bytes: placer.memory_bytes(),
        fill: (lo, hi, sd),
        noise,
        violations,
        parity: (plo, phi),
        fifths,
        moved_slots: moved as f64 / chunks_total,
        moved_expected,
        moved_extents: extents_moved as f64 / EXTENTS as f64,
        collateral,
    })
}

fn spread_of(xs: &[f64]) -> (f64, f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi, var.sqrt())
}

/// Catalogue sizes (bytes of metadata per extent and per TiB of LUN) are
/// measured by the metadata side and printed here when it lands.
/// Resident memory of this process, in bytes (Linux; 0 elsewhere).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The catalogue at the same scale: 1,000 registered nodes and 100,000
/// extents (4+1, 16 MiB chunks, so 64 MiB of LUN per extent) applied as
/// the replicas apply them, then sized as a snapshot.
fn catalogue_sizes() {
    use fabric::metadata::{Catalogue, Command};
    use fabric::placement::{EcProfile, Policy};
    let nodes: Vec<NodeId> = (0..1_000)
        .map(|i| NodeId::new(format!("cs-{i:04}")).expect("valid id"))
        .collect();
    let before = rss_bytes();
    let mut cat = Catalogue::default();
    let mut index = 0u64;
    let mut apply = |cat: &mut Catalogue, cmd: Command| {
        index += 1;
        let (r, _) = cat.apply(index, &cmd);
        r.expect("applies");
    };
    for n in &nodes {
        apply(
            &mut cat,
            Command::RegisterNode {
                node: n.clone(),
                now_ms: 0,
            },
        );
    }
    let luns = 10u64;
    let extents_per_lun = 10_000u64;
    let lun_bytes = extents_per_lun * 4 * (16 << 20);
    for l in 0..luns {
        apply(
            &mut cat,
            Command::CreateLun {
                name: format!("lun-{l}"),
                size_bytes: lun_bytes,
                block_size: 4096,
                policy: Policy::new(EcProfile { k: 4, m: 1 }),
                naa: [0x60; 16],
                serial: format!("{l:032x}"),
                now_ms: 0,
            },
        );
    }
    let t = Instant::now();
    for l in 1..=luns {
        for e in 0..extents_per_lun {
            let at = ((l * extents_per_lun + e) * 7) as usize;
            let chosen = (0..5)
                .map(|i| nodes[(at + i * 197) % nodes.len()].clone())
                .collect();
            apply(
                &mut cat,
                Command::AllocateExtent {
                    lun: l,
                    index: e,
                    nodes: chosen,
                },
            );
        }
    }
    let apply_time = t.elapsed();
    let extents = luns * extents_per_lun;
    let snapshot = postcard::to_stdvec(&cat).map(|v| v.len()).unwrap_or(0) as u64;
    let one = cat
        .extents
        .values()
        .next()
        .and_then(|e| postcard::to_stdvec(e).ok())
        .map_or(0, |v| v.len());
    let rss = rss_bytes().saturating_sub(before);
    let tib = (luns * lun_bytes) as f64 / (1u64 << 40) as f64;
    println!();
    println!("catalogue at 1,000 nodes and {extents} extents (4+1, 16 MiB chunks; {tib:.1} TiB of LUNs):");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| apply {extents} extent allocations | {:.0} ms ({:.2} µs each) |",
        apply_time.as_secs_f64() * 1e3,
        apply_time.as_secs_f64() * 1e6 / extents as f64
    );
    println!("| one extent record (postcard, as stored in LMDB) | {one} bytes + 17-byte key |");
    println!(
        "| whole catalogue as a snapshot | {:.1} MiB |",
        snapshot as f64 / (1u64 << 20) as f64
    );
    println!(
        "| metadata per TiB of LUN (snapshot bytes / TiB) | {:.0} KiB |",
        snapshot as f64 / tib / 1024.0
    );
    println!(
        "| resident memory of the catalogue (RSS growth) | {:.1} MiB |",
        rss as f64 / (1u64 << 20) as f64
    );
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    let mut rng = Rng(0x0070_6c61_6365);
    let cs = cluster(&mut rng);
    let mut grown = cs.clone();
    for i in 0..ADDED_NODES {
        let (s, r) = (i % SITES, i % RACKS_PER_SITE);
        let host = format!("host-new-{i}");
        grown.push(node(format!("cs-new-{i}"), s, r, host, &mut rng));
    }
    let capacity: u64 = cs.iter().map(|c| c.capacity.bytes_total).sum();
    let free: u64 = cs.iter().map(|c| c.free_bytes()).sum();
    println!(
        "placement_sim: {} nodes ({SITES} sites × {RACKS_PER_SITE} racks × {HOSTS_PER_RACK} hosts), \
         {:.1} PiB raw, {:.1} PiB free; {EXTENTS} extents, {} MiB chunks; +{ADDED_NODES} nodes for movement",
        cs.len(),
        capacity as f64 / (1u64 << 50) as f64,
        free as f64 / (1u64 << 50) as f64,
        CHUNK_BYTES >> 20,
    );
    println!();

    let configs = [
        (EcProfile { k: 4, m: 1 }, Spread::Host),
        (EcProfile { k: 3, m: 1 }, Spread::Host),
        (EcProfile { k: 4, m: 1 }, Spread::Rack),
        (EcProfile { k: 3, m: 1 }, Spread::Site),
        (EcProfile { k: 4, m: 1 }, Spread::Site),
    ];
    let mut rows = Vec::new();
    let mut refused = Vec::new();
    for (ec, spread) in configs {
        match run(&cs, &grown, ec, spread) {
            Ok(row) => rows.push(row),
            Err(e) => refused.push(format!("{ec} {spread}: refused: {e}")),
        }
    }
    let header = [
        "profile",
        "prepare µs",
        "place µs mean",
        "p99",
        "one-shot µs",
        "100k total s",
        "candidates KiB",
        "placer KiB",
    ];
    println!(
        "{:<10} {:>10} {:>13} {:>6} {:>11} {:>12} {:>14} {:>10}",
        header[0], header[1], header[2], header[3], header[4], header[5], header[6], header[7]
    );
    for r in &rows {
        println!(
            "{:<10} {:>10} {:>13} {:>6} {:>11} {:>12.2} {:>14.1} {:>10.1}",
            r.name,
            us(r.prepare),
            us(r.mean),
            us(r.p99),
            us(r.one_shot),
            r.total.as_secs_f64(),
            r.candidate_bytes as f64 / 1024.0,
            r.placer_bytes as f64 / 1024.0
        );
    }
    println!();
    println!(
        "{:<10} {:>21} {:>8} {:>7} {:>10} {:>15} {:>12} {:>12} {:>14} {:>10}",
        "profile",
        "fill got/share min-max",
        "stddev",
        "noise",
        "violations",
        "parity min-max",
        "moved slots",
        "expected",
        "moved extents",
        "collateral"
    );
    for r in &rows {
        println!(
            "{:<10} {:>21} {:>8.3} {:>7.3} {:>10} {:>15} {:>12.4} {:>12.4} {:>14.4} {:>10}",
            r.name,
            format!("{:.3}-{:.3}", r.fill.0, r.fill.1),
            r.fill.2,
            r.noise,
            r.violations,
            format!("{:.3}-{:.3}", r.parity.0, r.parity.1),
            r.moved_slots,
            r.moved_expected,
            r.moved_extents,
            r.collateral
        );
    }
    println!();
    println!(
        "{:<10} {:>43} {:>43}",
        "profile",
        "fill got/share by fifth of nodes by weight",
        "parity share by fifth of nodes by weight"
    );
    for r in &rows {
        let f: Vec<String> = r.fifths.iter().map(|x| format!("{:.3}", x.0)).collect();
        let p: Vec<String> = r.fifths.iter().map(|x| format!("{:.3}", x.1)).collect();
        println!("{:<10} {:>43} {:>43}", r.name, f.join(" "), p.join(" "));
    }
    println!();
    println!("fill: a node's chunks over what its share of free capacity (× performance factor) promises;");
    println!("noise: the stddev binomial sampling alone gives at this many chunks per node.");
    println!("parity: a node's parity share of its chunks over m/(k+m).");
    println!("moved slots: chunks on a different node after {ADDED_NODES} nodes join (expected: their share of");
    println!("free capacity); collateral: extents that changed without a new node in them.");
    println!();
    for r in &refused {
        println!("{r}");
    }
    catalogue_sizes();
}
