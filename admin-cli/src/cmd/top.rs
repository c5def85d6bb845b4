//! `weft top`: live IOPS, bandwidth and latency per node and per LUN.
//!
//! Nothing is asked of the nodes: every chunkserver and gateway publishes
//! cumulative I/O counters in gossip (`io`, and `io/lun/<id>` on gateways;
//! `fabric::gossip::io`, `docs/gossip.md`), and the CLI joins gossip as an
//! observer and turns the two latest records of each key into rates:
//! Δcounter / Δ`uptime_ms`, both from the publisher, so the rates are
//! exact however late gossip brings them. A key that did not move since
//! the CLI started watching is idle (zero). The catalogue gives the names
//! of LUNs and the admin state of chunkservers.
//!
//! On a terminal the screen is redrawn every interval until `q` or Ctrl-C;
//! otherwise each sample is printed (text, or one JSON document per line
//! with `-o json`); `--once` or `-n N` stop after 1 or N samples.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use fabric::gossip::io::IO_PUBLISH_INTERVAL_MS_DEFAULT;
use fabric::gossip::state::keys;
use fabric::gossip::{Availability, IoCounters, View};
use fabric::identity::Role;
use fabric::metadata::catalogue::AdminState;
use fabric::metadata::rpc::{ReadReply, ReadRequest, Summary};
use fabric::NodeId;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::datapath::Fabric;
use crate::error::{CliError, CliResult};
use crate::render::{now_ms, rfc3339, table, Output, OutputArg};
use crate::session::Prepared;
use crate::terminal::Screen;
use crate::units::parse_duration;
use crate::GlobalArgs;

/// The first sample waits this long after joining gossip: one publication
/// interval, gossip's delivery (≤ 0.6 s measured), and room. By then every
/// busy key has brought a second record (a rate), and a key that brought
/// none is idle.
pub const FIRST_SAMPLE_MS: u64 = 2 * IO_PUBLISH_INTERVAL_MS_DEFAULT;
/// Shortest interval: records change once a second, so faster only
/// repeats them.
pub const INTERVAL_MS_MIN: u64 = 100;
/// How often the catalogue (LUN names, nodes' admin state) is read again.
const CATALOGUE_REFRESH_MS: u64 = 10_000;

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Time between samples, e.g. 1s, 500ms, 5s (rates move once a second:
    /// nodes publish their counters every second).
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "1s",
          value_parser = parse_interval)]
    pub interval: Duration,
    /// Print one sample and exit.
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// Print N samples and exit (default: until q or Ctrl-C).
    #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    #[command(flatten)]
    pub out: OutputArg,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(INTERVAL_MS_MIN) {
        return Err(format!(
            "{text:?}: the interval is {INTERVAL_MS_MIN} ms at least"
        ));
    }
    Ok(d)
}

// ---- rates from records ----

/// The two latest records of one publisher's key, as they arrived.
#[derive(Clone, Debug)]
struct Track {
    generation: u64,
    prev: Option<IoCounters>,
    cur: IoCounters,
}

/// Every I/O key of every node in the view, followed from view to view.
#[derive(Default, Debug)]
pub struct Tracker {
    tracks: BTreeMap<(NodeId, String), Track>,
}

impl Tracker {
    /// Takes in what `view` holds: a newer record of a key pushes the
    /// current one back; a restarted publisher (new generation, or its
    /// clock gone back) starts its key again.
    pub fn observe(&mut self, view: &View) {
        let mut seen = BTreeSet::new();
        for (id, n) in &view.nodes {
            for (key, (_, value)) in &n.keys {
                let key = key.as_str();
                if key != keys::IO && !key.starts_with(keys::IO_LUN_PREFIX) {
                    continue;
                }
                let Some(rec) = value.decode_record::<IoCounters>() else {
                    continue;
                };
                let k = (id.clone(), key.to_string());
                match self.tracks.get_mut(&k) {
                    Some(t) if t.generation == n.generation && rec.uptime_ms > t.cur.uptime_ms => {
                        t.prev = Some(t.cur);
                        t.cur = rec;
                    }
                    Some(t) if t.generation == n.generation && rec.uptime_ms == t.cur.uptime_ms => {
                    }
                    _ => {
                        self.tracks.insert(
                            k.clone(),
                            Track {
                                generation: n.generation,
                                prev: None,
                                cur: rec,
                            },
                        );
                    }
                }
                seen.insert(k);
            }
        }
        self.tracks.retain(|k, _| seen.contains(k));
    }

    /// The rates of `key` of `node`, `None` if it publishes none.
    pub fn rates(&self, node: &NodeId, key: &str) -> Option<Rates> {
        let t = self.tracks.get(&(node.clone(), key.to_string()))?;
        Some(Rates::between(t.prev.as_ref(), &t.cur))
    }
}

/// Rates over one publisher interval, and the totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub read_ops_per_s: f64,
    pub write_ops_per_s: f64,
    pub other_ops_per_s: f64,
    pub errors_per_s: f64,
    pub read_bytes_per_s: f64,
    pub write_bytes_per_s: f64,
    /// Mean latency, µs, when there were reads.
    pub read_us_avg: Option<f64>,
    pub read_us_p99: Option<u32>,
    pub write_us_avg: Option<f64>,
    pub write_us_p99: Option<u32>,
    pub totals: IoCounters,
}

impl Rates {
    /// From `prev` to `cur`; with no `prev` (no record came while we
    /// watched) the key is idle.
    pub fn between(prev: Option<&IoCounters>, cur: &IoCounters) -> Rates {
        let mut r = Rates {
            totals: *cur,
            ..Rates::default()
        };
        let Some(prev) = prev else { return r };
        let ms = cur.uptime_ms.saturating_sub(prev.uptime_ms);
        if ms == 0 {
            return r;
        }
        let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 * 1000.0 / ms as f64;
        r.read_ops_per_s = per_s(cur.read_ops, prev.read_ops);
        r.write_ops_per_s = per_s(cur.write_ops, prev.write_ops);
        r.other_ops_per_s = per_s(cur.other_ops, prev.other_ops);
        r.errors_per_s = per_s(cur.errors, prev.errors);
        r.read_bytes_per_s = per_s(cur.read_bytes, prev.read_bytes);
        r.write_bytes_per_s = per_s(cur.write_bytes, prev.write_bytes);
        let reads = cur.read_ops.saturating_sub(prev.read_ops);
        if reads > 0 {
            r.read_us_avg = Some(cur.read_us.saturating_sub(prev.read_us) as f64 / reads as f64);
            r.read_us_p99 = Some(cur.read_us_p99);
        }
        let writes = cur.write_ops.saturating_sub(prev.write_ops);
        if writes > 0 {
            r.write_us_avg =
                Some(cur.write_us.saturating_sub(prev.write_us) as f64 / writes as f64);
            r.write_us_p99 = Some(cur.write_us_p99);
        }
        r
    }

    /// Several publishers of one thing (the gateways serving a LUN): rates
    /// and totals add up, mean latencies are weighted by operations, and
    /// the 99th percentile is the worst one's (percentiles do not add).
    pub fn sum(all: &[Rates]) -> Rates {
        let mut r = Rates::default();
        let (mut read_w, mut write_w) = (0.0, 0.0);
        for x in all {
            r.read_ops_per_s += x.read_ops_per_s;
            r.write_ops_per_s += x.write_ops_per_s;
            r.other_ops_per_s += x.other_ops_per_s;
            r.errors_per_s += x.errors_per_s;
            r.read_bytes_per_s += x.read_bytes_per_s;
            r.write_bytes_per_s += x.write_bytes_per_s;
            if let Some(a) = x.read_us_avg {
                read_w += a * x.read_ops_per_s;
            }
            if let Some(a) = x.write_us_avg {
                write_w += a * x.write_ops_per_s;
            }
            r.read_us_p99 = r.read_us_p99.max(x.read_us_p99);
            r.write_us_p99 = r.write_us_p99.max(x.write_us_p99);
            let t = &mut r.totals;
            t.read_ops += x.totals.read_ops;
            t.read_bytes += x.totals.read_bytes;
            t.write_ops += x.totals.write_ops;
            t.write_bytes += x.totals.write_bytes;
            t.other_ops += x.totals.other_ops;
            t.errors += x.totals.errors;
        }
        if r.read_ops_per_s > 0.0 && r.read_us_p99.is_some() {
            r.read_us_avg = Some(read_w / r.read_ops_per_s);
        }
        if r.write_ops_per_s > 0.0 && r.write_us_p99.is_some() {
            r.write_us_avg = Some(write_w / r.write_ops_per_s);
        }
        r
    }
}

// ---- one sample ----

/// One sample, as `-o json` prints it (one document per line).
#[derive(Serialize, Debug)]
pub struct Sample {
    pub time: String,
    pub time_ms: u64,
    pub interval_ms: u64,
    pub nodes: Vec<NodeRow>,
    pub luns: Vec<LunRow>,
}

#[derive(Serialize, Debug)]
pub struct NodeRow {
    pub node: String,
    /// `chunkserver` or `gateway`.
    pub role: String,
    /// `alive`, `suspect` or `dead` as gossip judges it; `unknown` for a
    /// chunkserver of the catalogue that gossip has not shown.
    pub state: &'static str,
    /// A chunkserver's admin state (`in`, `draining`, `out`).
    pub admin: Option<&'static str>,
    /// `null` when the node publishes no counters (or is dead).
    pub io: Option<IoRow>,
}

#[derive(Serialize, Debug)]
pub struct LunRow {
    pub name: String,
    pub id: u64,
    /// The gateways that publish counters for this LUN.
    pub gateways: Vec<String>,
    /// `null` when no gateway publishes counters for it.
    pub io: Option<IoRow>,
}

/// Rates per second over the publishers' last interval, and totals since
/// they started.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct IoRow {
    pub read_ops_per_s: f64,
    pub write_ops_per_s: f64,
    pub other_ops_per_s: f64,
    pub errors_per_s: f64,
    pub read_bytes_per_s: u64,
    pub write_bytes_per_s: u64,
    pub read_latency_us_avg: Option<u64>,
    pub read_latency_us_p99: Option<u32>,
    pub write_latency_us_avg: Option<u64>,
    pub write_latency_us_p99: Option<u32>,
    pub read_ops_total: u64,
    pub write_ops_total: u64,
    pub other_ops_total: u64,
    pub errors_total: u64,
    pub read_bytes_total: u64,
    pub write_bytes_total: u64,
}

/// One decimal: enough for people, stable for scripts.
fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl From<Rates> for IoRow {
    fn from(r: Rates) -> IoRow {
        IoRow {
            read_ops_per_s: tenth(r.read_ops_per_s),
            write_ops_per_s: tenth(r.write_ops_per_s),
            other_ops_per_s: tenth(r.other_ops_per_s),
            errors_per_s: tenth(r.errors_per_s),
            read_bytes_per_s: r.read_bytes_per_s.round() as u64,
            write_bytes_per_s: r.write_bytes_per_s.round() as u64,
            read_latency_us_avg: r.read_us_avg.map(|x| x.round() as u64),
            read_latency_us_p99: r.read_us_p99,
            write_latency_us_avg: r.write_us_avg.map(|x| x.round() as u64),
            write_latency_us_p99: r.write_us_p99,
            read_ops_total: r.totals.read_ops,
            write_ops_total: r.totals.write_ops,
            other_ops_total: r.totals.other_ops,
            errors_total: r.totals.errors,
            read_bytes_total: r.totals.read_bytes,
            write_bytes_total: r.totals.write_bytes,
        }
    }
}

fn state_name(a: Availability) -> &'static str {
    match a {
        Availability::Alive => "alive",
        Availability::Suspect => "suspect",
        Availability::Dead => "dead",
    }
}

fn admin_name(a: AdminState) -> &'static str {
    match a {
        AdminState::In => "in",
        AdminState::Draining => "draining",
        AdminState::Out => "out",
        AdminState::Removed => "removed",
    }
}

/// The sample of `tracker` at `now_ms`: chunkservers of the catalogue and
/// every chunkserver and gateway of the view (chunkservers first, then by
/// id), and every LUN of the catalogue by name.
pub fn sample(
    tracker: &Tracker,
    view: &View,
    summary: &Summary,
    now_ms: u64,
    interval: Duration,
) -> Sample {
    let mut rows: BTreeMap<(u8, NodeId), NodeRow> = BTreeMap::new();
    for n in &summary.nodes {
        if n.admin == AdminState::Removed {
            continue;
        }
        rows.insert(
            (0, n.id.clone()),
            NodeRow {
                node: n.id.to_string(),
                role: Role::Chunkserver.to_string(),
                state: "unknown",
                admin: Some(admin_name(n.admin)),
                io: None,
            },
        );
    }
    let removed: BTreeSet<&NodeId> = summary
        .nodes
        .iter()
        .filter(|n| n.admin == AdminState::Removed)
        .map(|n| &n.id)
        .collect();
    for (id, n) in &view.nodes {
        let order = match n.role() {
            Some(Role::Chunkserver) if !removed.contains(id) => 0,
            Some(Role::Gateway) => 1,
            _ => continue,
        };
        let row = rows.entry((order, id.clone())).or_insert_with(|| NodeRow {
            node: id.to_string(),
            role: n.role().map_or("", Role::as_str).to_string(),
            state: "unknown",
            admin: None,
            io: None,
        });
        row.state = state_name(n.availability);
        if n.availability != Availability::Dead {
            row.io = tracker.rates(id, keys::IO).map(IoRow::from);
        }
    }
    let mut luns: Vec<LunRow> = summary
        .luns
        .iter()
        .map(|l| {
            let key = format!("{}{}", keys::IO_LUN_PREFIX, l.id);
            let mut gateways = Vec::new();
            let mut rates = Vec::new();
            for (id, n) in &view.nodes {
                if n.availability == Availability::Dead {
                    continue;
                }
                if let Some(r) = tracker.rates(id, &key) {
                    gateways.push(id.to_string());
                    rates.push(r);
                }
            }
            LunRow {
                name: l.name.clone(),
                id: l.id,
                io: (!rates.is_empty()).then(|| IoRow::from(Rates::sum(&rates))),
                gateways,
            }
        })
        .collect();
    luns.sort_by(|a, b| a.name.cmp(&b.name));
    Sample {
        time: rfc3339((now_ms / 1000) as i64),
        time_ms: now_ms,
        interval_ms: interval.as_millis() as u64,
        nodes: rows.into_values().collect(),
        luns,
    }
}

// ---- text ----

/// `0`, `7.5`, `1234`: a decimal only where it means something.
fn ops(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// A latency for people: `412 µs`, `1.2 ms`, `2.31 s`.
pub fn format_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1_000.0)
    } else {
        format!("{:.2} s", us / 1_000_000.0)
    }
}

fn latency(avg: Option<u64>, p99: Option<u32>) -> String {
    match (avg, p99) {
        (Some(a), Some(p)) => format!("{} / {}", format_us(a as f64), format_us(f64::from(p))),
        (Some(a), None) => format_us(a as f64),
        _ => "-".into(),
    }
}

/// Bytes per second for people, three significant digits at most:
/// `0 B/s`, `512 B/s`, `6.38 MiB/s`, `24.5 MiB/s`, `959 KiB/s`.
pub fn format_rate(bytes_per_s: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes_per_s < 1024 {
        return format!("{bytes_per_s} B/s");
    }
    let mut x = bytes_per_s as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if x < 1024.0 {
            break;
        }
        x /= 1024.0;
        unit = u;
    }
    if x < 10.0 {
        format!("{x:.2} {unit}/s")
    } else if x < 100.0 {
        format!("{x:.1} {unit}/s")
    } else {
        format!("{x:.0} {unit}/s")
    }
}

fn io_cells(io: Option<&IoRow>) -> Vec<String> {
    match io {
        None => vec!["-".into(); 7],
        Some(r) => vec![
            ops(r.read_ops_per_s),
            ops(r.write_ops_per_s),
            format_rate(r.read_bytes_per_s),
            format_rate(r.write_bytes_per_s),
            latency(r.read_latency_us_avg, r.read_latency_us_p99),
            latency(r.write_latency_us_avg, r.write_latency_us_p99),
            ops(r.errors_per_s),
        ],
    }
}

const IO_HEADER: [&str; 7] = [
    "READ/s",
    "WRITE/s",
    "READ",
    "WRITE",
    "READ LAT avg/p99",
    "WRITE LAT avg/p99",
    "ERR/s",
];

/// The sample for people: a header line, the nodes, the LUNs.
pub fn text(s: &Sample, quit_hint: bool) -> String {
    let count = |role: &str| s.nodes.iter().filter(|n| n.role == role).count();
    let mut t = format!(
        "weft top  {}  every {}  {} chunkservers, {} gateways, {} LUNs{}\n\n",
        s.time,
        crate::units::format_ms(s.interval_ms),
        count("chunkserver"),
        count("gateway"),
        s.luns.len(),
        if quit_hint { "  (q quits)" } else { "" }
    );
    let mut header = vec!["NODE", "ROLE", "STATE"];
    header.extend(IO_HEADER);
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let state = match n.admin {
                Some(a) if a != "in" => format!("{}, {a}", n.state),
                _ => n.state.to_string(),
            };
            let mut r = vec![n.node.clone(), n.role.clone(), state];
            r.extend(io_cells(n.io.as_ref()));
            r
        })
        .collect();
    t.push_str(&table(&header, &rows));
    if s.luns.is_empty() {
        t.push_str("\nno LUNs\n");
        return t;
    }
    let mut header = vec!["LUN", "GATEWAYS"];
    header.extend(IO_HEADER);
    let rows: Vec<Vec<String>> = s
        .luns
        .iter()
        .map(|l| {
            let gws = if l.gateways.is_empty() {
                "-".to_string()
            } else {
                l.gateways.join(",")
            };
            let mut r = vec![l.name.clone(), gws];
            r.extend(io_cells(l.io.as_ref()));
            r
        })
        .collect();
    t.push('\n');
    t.push_str(&table(&header, &rows));
    t
}

// ---- the command ----

pub fn run(global: &GlobalArgs, a: TopArgs) -> CliResult<()> {
    let p = Prepared::open(global)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start a runtime: {e}")))?;
    rt.block_on(top(&p, a))
}

async fn read_summary(fabric: &Fabric, p: &Prepared) -> CliResult<Summary> {
    match fabric.meta.read(ReadRequest::Summary).await {
        Ok(ReadReply::Summary(s)) => Ok(*s),
        Ok(_) => Err(CliError::Failed(anyhow::anyhow!(
            "the cluster answered a Summary read with something else: is it running another version of weft?"
        ))),
        Err(e) => Err(CliError::from_client(e, &p.config_path)),
    }
}

/// Where samples go.
enum Sink {
    /// Redrawn in place; q quits.
    Screen(Screen),
    /// One after the other (text separated by a blank line, or JSON lines).
    Lines(Output),
}

impl Sink {
    fn show(&self, s: &Sample, first: bool) {
        match self {
            Sink::Screen(screen) => screen.draw(&text(s, true)),
            Sink::Lines(Output::Json) => {
                let line = serde_json::to_string(s).unwrap_or_default();
                print_flush(&format!("{line}\n"));
            }
            Sink::Lines(Output::Text) => {
                let gap = if first { "" } else { "\n" };
                print_flush(&format!("{gap}{}", text(s, false)));
            }
        }
    }
}

/// Prints and flushes at once: a pipe reader sees each sample when it is
/// taken. A closed stdout (`weft top | head`) is not an error.
fn print_flush(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

async fn top(p: &Prepared, a: TopArgs) -> CliResult<()> {
    let fabric = p.fabric().await?;
    // The catalogue first: an unreachable cluster is exit 3 at once.
    let mut summary = read_summary(&fabric, p).await?;
    let mut summary_at = Instant::now();
    let limit = if a.once { Some(1) } else { a.iterations };
    let on_terminal = a.out.output == Output::Text && std::io::stdout().is_terminal();
    let (sink, mut keys) = if on_terminal {
        let (screen, keys) = Screen::open();
        screen.draw("weft top: gathering the first sample…");
        (Sink::Screen(screen), Some(keys))
    } else {
        (Sink::Lines(a.out.output), None)
    };
    let signal_err =
        |e: std::io::Error| CliError::Failed(anyhow::anyhow!("installing a signal handler: {e}"));
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut views = fabric.view();
    let mut tracker = Tracker::default();
    tracker.observe(&views.borrow_and_update());
    let first = Duration::from_millis(FIRST_SAMPLE_MS).max(a.interval);
    let mut next = Instant::now() + first;
    let mut shown = 0u64;
    loop {
        let key = async {
            match keys.as_mut() {
                Some(k) => k.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = views.changed() => {
                if changed.is_ok() {
                    let view: Arc<View> = views.borrow_and_update().clone();
                    tracker.observe(&view);
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let view = fabric.gossip.view();
                tracker.observe(&view);
                if summary_at.elapsed() >= Duration::from_millis(CATALOGUE_REFRESH_MS) {
                    // A catalogue that cannot be read now is read next time.
                    if let Ok(s) = read_summary(&fabric, p).await {
                        summary = s;
                    }
                    summary_at = Instant::now();
                }
                let s = sample(&tracker, &view, &summary, now_ms(), a.interval);
                sink.show(&s, shown == 0);
                shown += 1;
                if limit.is_some_and(|n| shown >= n) {
                    break;
                }
                next += a.interval;
            }
            k = key => {
                if matches!(k, Some(b'q') | Some(b'Q') | None) {
                    break;
                }
            }
            _ = int.recv() => break,
            _ = term.recv() => break,
        }
    }
    drop(sink);
    if on_terminal {
        print_flush("\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fabric::gossip::state::{Key, NodeState, Value};
    use fabric::metadata::catalogue::NodeEntry;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn rec(uptime_ms: u64, writes: u64, write_us: u64) -> IoCounters {
        IoCounters {
            uptime_ms,
            write_ops: writes,
            write_bytes: writes * 4096,
            write_us,
            write_us_p99: 900,
            ..IoCounters::default()
        }
    }

    fn node(role: Role, generation: u64, a: Availability, kv: &[(&str, IoCounters)]) -> NodeState {
        let mut keys = BTreeMap::new();
        keys.insert(
            Key::new(keys::ROLE),
            (1, Value::encode_record(&role).unwrap()),
        );
        for (i, (k, v)) in kv.iter().enumerate() {
            keys.insert(
                Key::new(k),
                (i as u64 + 2, Value::encode_record(v).unwrap()),
            );
        }
        NodeState {
            generation,
            availability: a,
            keys,
        }
    }

    fn lun(id: u64, name: &str) -> fabric::metadata::Lun {
        fabric::metadata::Lun {
            id,
            name: name.into(),
            size_bytes: 1 << 30,
            block_size: 512,
            policy: fabric::placement::Policy::new(
                fabric::placement::EcProfile::new(2, 1).unwrap(),
            ),
            chunk_bytes: 16 << 20,
            stripe_unit: 4096,
            naa: [0; 16],
            serial: String::new(),
            created_ms: 0,
        }
    }

    fn view(nodes: Vec<(&str, NodeState)>) -> View {
        View {
            nodes: nodes.into_iter().map(|(n, s)| (id(n), s)).collect(),
        }
    }

    /// One row per step: what gossip shows of cs-1's `io`, and the write
    /// rate `weft top` gives.
    #[test]
    fn rates_from_successive_records() {
        let alive = Availability::Alive;
        let steps: Vec<(&str, u64, IoCounters, Option<f64>)> = vec![
            (
                "first record: idle until another comes",
                1,
                rec(5_000, 100, 0),
                Some(0.0),
            ),
            ("the same record again", 1, rec(5_000, 100, 0), Some(0.0)),
            ("200 writes in 1 s", 1, rec(6_000, 300, 80_000), Some(200.0)),
            (
                "100 writes in 0.5 s",
                1,
                rec(6_500, 350, 100_000),
                Some(100.0),
            ),
            (
                "closing record: stopped",
                1,
                rec(7_500, 350, 100_000),
                Some(0.0),
            ),
            (
                "restarted: counters from zero",
                2,
                rec(1_000, 10, 0),
                Some(0.0),
            ),
            ("after the restart", 2, rec(2_000, 60, 5_000), Some(50.0)),
        ];
        let mut t = Tracker::default();
        for (what, generation, r, want) in steps {
            t.observe(&view(vec![(
                "cs-1",
                node(Role::Chunkserver, generation, alive, &[(keys::IO, r)]),
            )]));
            let got = t.rates(&id("cs-1"), keys::IO).map(|r| r.write_ops_per_s);
            assert_eq!(got, want, "{what}");
        }
        let r = t.rates(&id("cs-1"), keys::IO).unwrap();
        assert_eq!(r.write_us_avg, Some(100.0));
        assert_eq!(r.write_bytes_per_s, 50.0 * 4096.0);
        assert_eq!(r.totals.write_ops, 60);
        // A key that goes away is forgotten.
        t.observe(&view(vec![(
            "cs-1",
            node(Role::Chunkserver, 2, alive, &[]),
        )]));
        assert_eq!(t.rates(&id("cs-1"), keys::IO), None);
    }

    #[test]
    fn a_lun_served_by_two_gateways_adds_up() {
        let a = Rates {
            write_ops_per_s: 100.0,
            write_us_avg: Some(1_000.0),
            write_us_p99: Some(3_000),
            totals: rec(1, 10, 0),
            ..Rates::default()
        };
        let b = Rates {
            write_ops_per_s: 300.0,
            write_us_avg: Some(200.0),
            write_us_p99: Some(500),
            totals: rec(1, 30, 0),
            ..Rates::default()
        };
        let s = Rates::sum(&[a, b]);
        assert_eq!(s.write_ops_per_s, 400.0);
        assert_eq!(s.write_us_avg, Some(400.0), "weighted by operations");
        assert_eq!(s.write_us_p99, Some(3_000), "the worst");
        assert_eq!(s.totals.write_ops, 40);
        assert_eq!(s.read_us_avg, None);
    }

    #[test]
    fn a_sample_has_every_node_and_lun() {
        let alive = Availability::Alive;
        let v = view(vec![
            (
                "cs-1",
                node(Role::Chunkserver, 1, alive, &[(keys::IO, rec(1_000, 5, 0))]),
            ),
            (
                "gw-1",
                node(
                    Role::Gateway,
                    1,
                    alive,
                    &[(keys::IO, rec(1_000, 5, 0)), ("io/lun/7", rec(1_000, 5, 0))],
                ),
            ),
            ("ops", node(Role::Admin, 1, alive, &[])),
        ]);
        let mut t = Tracker::default();
        t.observe(&v);
        let mut later = v.clone();
        for (n, k) in [("cs-1", keys::IO), ("gw-1", keys::IO), ("gw-1", "io/lun/7")] {
            let s = later.nodes.get_mut(&id(n)).unwrap();
            s.keys.insert(
                Key::new(k),
                (9, Value::encode_record(&rec(2_000, 25, 10_000)).unwrap()),
            );
        }
        t.observe(&later);
        let summary = Summary {
            nodes: vec![
                NodeEntry {
                    id: id("cs-1"),
                    admin: AdminState::In,
                    added_ms: 0,
                },
                NodeEntry {
                    id: id("cs-2"),
                    admin: AdminState::Draining,
                    added_ms: 0,
                },
            ],
            luns: vec![lun(7, "db"), lun(8, "cold")],
            ..Summary::default()
        };
        let s = sample(
            &t,
            &later,
            &summary,
            1_700_000_000_000,
            Duration::from_secs(1),
        );
        let nodes: Vec<(&str, &str, &str)> = s
            .nodes
            .iter()
            .map(|n| (n.node.as_str(), n.role.as_str(), n.state))
            .collect();
        assert_eq!(
            nodes,
            [
                ("cs-1", "chunkserver", "alive"),
                ("cs-2", "chunkserver", "unknown"),
                ("gw-1", "gateway", "alive")
            ],
            "admins are not nodes of the cluster"
        );
        let io = s.nodes[0].io.as_ref().unwrap();
        assert_eq!(io.write_ops_per_s, 20.0);
        assert_eq!(io.write_latency_us_avg, Some(500));
        assert_eq!(io.write_ops_total, 25);
        assert!(s.nodes[1].io.is_none());
        assert_eq!(s.luns.len(), 2);
        assert_eq!(
            (s.luns[0].name.as_str(), s.luns[0].io.is_none()),
            ("cold", true)
        );
        assert_eq!(s.luns[1].gateways, ["gw-1"]);
        assert_eq!(s.luns[1].io.as_ref().unwrap().write_bytes_per_s, 20 * 4096);
        let txt = text(&s, false);
        assert!(txt.contains("2 chunkservers, 1 gateways, 2 LUNs"), "{txt}");
        let cs2 = txt.lines().find(|l| l.starts_with("cs-2")).unwrap();
        assert!(cs2.contains("unknown, draining"), "{txt}");
        let db = txt.lines().find(|l| l.starts_with("db ")).unwrap();
        assert!(db.contains("gw-1") && db.contains("80.0 KiB/s"), "{txt}");
        assert!(db.contains("500 µs / 900 µs"), "{txt}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["luns"][1]["io"]["write_ops_per_s"], 20.0);
        assert_eq!(json["time"], "2023-11-14T22:13:20Z");
    }

    #[test]
    fn latencies_and_rates_for_people() {
        assert_eq!(format_us(412.0), "412 µs");
        assert_eq!(format_us(1_234.0), "1.2 ms");
        assert_eq!(format_us(2_310_000.0), "2.31 s");
        assert_eq!(format_rate(0), "0 B/s");
        assert_eq!(format_rate(512), "512 B/s");
        assert_eq!(format_rate(982_057), "959 KiB/s");
        assert_eq!(format_rate(25_690_112), "24.5 MiB/s");
        assert_eq!(format_rate(6_689_915), "6.38 MiB/s");
        assert_eq!(format_rate(u64::MAX), "16384 PiB/s");
        assert_eq!(ops(0.0), "0");
        assert_eq!(ops(7.54), "7.5");
        assert_eq!(ops(1234.4), "1234");
        assert!(parse_interval("50ms").is_err());
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
    }
}
