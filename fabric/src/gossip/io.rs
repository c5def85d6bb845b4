//! I/O counters for `weft top`: measured where I/O is served (a
//! chunkserver's chunk service, a gateway's LUNs), published as
//! [`IoCounters`] records in gossip, read by the CLI from its gossip view.
//!
//! - [`IoMeter`]: lock-free cumulative counters and a latency histogram,
//!   updated on every operation (a few relaxed atomic adds).
//! - [`IoPublisher`]: decides, once per interval, which records to publish
//!   (pure, tested): a record only while its counters move, plus one
//!   closing record once they stop, so that readers see the rate fall to
//!   zero and an idle cluster costs no gossip at all.
//! - [`spawn_io_publisher`]: the timer that runs it against a [`Gossip`].
//!
//! Gossip carries every key to every node, so the records are small
//! (≤ 102 bytes, see [`IoCounters`]) and a gateway publishes at most
//! [`LUN_IO_KEYS_MAX`] LUNs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use super::driver::Gossip;
use super::state::IoCounters;

/// How often I/O counters are published by default: `weft top` refreshes
/// every second.
pub const IO_PUBLISH_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// LUNs one gateway publishes counters for (`io/lun/<id>` keys). Keys per
/// node are bounded (`KEYS_PER_NODE_MAX` = 64, with 32 links and the fixed
/// keys), and every key reaches every node.
pub const LUN_IO_KEYS_MAX: usize = 16;
/// Latency histogram buckets: 4 per power of two, up to [`LATENCY_US_MAX`]
/// (a percentile is off by at most a quarter of its power of two).
pub const LATENCY_BUCKETS: usize = 100;
/// Latencies above this (about 67 s) fall in the last bucket.
pub const LATENCY_US_MAX: u64 = (1 << 26) - 1;

/// The histogram bucket of a latency in µs.
fn bucket(us: u64) -> usize {
    let us = us.min(LATENCY_US_MAX);
    if us < 4 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    let sub = ((us >> (e - 2)) & 3) as usize;
    4 * (e - 1) + sub
}

/// The largest latency in µs that falls in bucket `i`.
fn bucket_upper_us(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let e = i / 4 + 1;
    let sub = (i % 4) as u64;
    ((4 + sub + 1) << (e - 2)) - 1
}

/// What an operation was, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoOp {
    Read,
    Write,
    /// Neither: flush, unmap, chunk create or delete, …
    Other,
}

struct Histogram([AtomicU64; LATENCY_BUCKETS]);

impl Histogram {
    fn new() -> Histogram {
        Histogram(std::array::from_fn(|_| AtomicU64::new(0)))
    }
    fn add(&self, us: u64) {
        if let Some(b) = self.0.get(bucket(us)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn load(&self) -> [u64; LATENCY_BUCKETS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// The 99th percentile (upper bound of its bucket) of the operations
/// counted in `now` but not in `before`; 0 when there are none.
fn p99_since(now: &[u64; LATENCY_BUCKETS], before: &[u64; LATENCY_BUCKETS]) -> u32 {
    let delta: Vec<u64> = now
        .iter()
        .zip(before)
        .map(|(n, b)| n.saturating_sub(*b))
        .collect();
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return 0;
    }
    let rank = total - total / 100;
    let mut seen = 0;
    for (i, n) in delta.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return u32::try_from(bucket_upper_us(i)).unwrap_or(u32::MAX);
        }
    }
    u32::try_from(LATENCY_US_MAX).unwrap_or(u32::MAX)
}

/// Cumulative I/O counters of one thing that serves I/O (a node, a LUN).
/// Shared by the code that serves (which records) and the publisher.
pub struct IoMeter {
    origin: Instant,
    read_ops: AtomicU64,
    read_bytes: AtomicU64,
    read_us: AtomicU64,
    write_ops: AtomicU64,
    write_bytes: AtomicU64,
    write_us: AtomicU64,
    other_ops: AtomicU64,
    errors: AtomicU64,
    read_hist: Histogram,
    write_hist: Histogram,
}

impl std::fmt::Debug for IoMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoMeter")
            .field("counters", &self.counters())
            .finish()
    }
}

impl Default for IoMeter {
    fn default() -> IoMeter {
        IoMeter::new()
    }
}

/// The histograms as last sampled, to take percentiles over an interval.
#[derive(Clone)]
pub struct Since {
    read: [u64; LATENCY_BUCKETS],
    write: [u64; LATENCY_BUCKETS],
}

impl Default for Since {
    fn default() -> Since {
        Since {
            read: [0; LATENCY_BUCKETS],
            write: [0; LATENCY_BUCKETS],
        }
    }
}

impl IoMeter {
    pub fn new() -> IoMeter {
        IoMeter {
            origin: Instant::now(),
            read_ops: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            read_us: AtomicU64::new(0),
            write_ops: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            write_us: AtomicU64::new(0),
            other_ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            read_hist: Histogram::new(),
            write_hist: Histogram::new(),
        }
    }

    /// Counts one operation that succeeded, of `bytes` bytes (data read
    /// or written), served in `latency`.
    pub fn record(&self, op: IoOp, bytes: u64, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let (ops, total_bytes, total_us, hist) = match op {
            IoOp::Read => (
                &self.read_ops,
                &self.read_bytes,
                &self.read_us,
                &self.read_hist,
            ),
            IoOp::Write => (
                &self.write_ops,
                &self.write_bytes,
                &self.write_us,
                &self.write_hist,
            ),
            IoOp::Other => {
                self.other_ops.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        ops.fetch_add(1, Ordering::Relaxed);
        total_bytes.fetch_add(bytes, Ordering::Relaxed);
        total_us.fetch_add(us, Ordering::Relaxed);
        hist.add(us);
    }

    /// Counts one operation that failed.
    pub fn record_error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now, without percentiles.
    pub fn counters(&self) -> IoCounters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IoCounters {
            uptime_ms: u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX),
            read_ops: l(&self.read_ops),
            read_bytes: l(&self.read_bytes),
            read_us: l(&self.read_us),
            write_ops: l(&self.write_ops),
            write_bytes: l(&self.write_bytes),
            write_us: l(&self.write_us),
            other_ops: l(&self.other_ops),
            errors: l(&self.errors),
            read_us_p99: 0,
            write_us_p99: 0,
        }
    }

    /// The counters now, with the percentiles of what happened since
    /// `since` (which moves to now).
    pub fn sample(&self, since: &mut Since) -> IoCounters {
        let mut c = self.counters();
        let read = self.read_hist.load();
        let write = self.write_hist.load();
        c.read_us_p99 = p99_since(&read, &since.read);
        c.write_us_p99 = p99_since(&write, &since.write);
        since.read = read;
        since.write = write;
        c
    }

    /// Whether anything was counted yet.
    pub fn is_idle(&self) -> bool {
        let c = self.counters();
        !c.counts_differ(&IoCounters::default())
    }
}

/// What the publisher remembers of one key.
struct Published {
    since: Since,
    last: IoCounters,
    /// The last record published showed activity: one more (closing)
    /// record is due once the counters stop.
    active: bool,
}

/// Which records to publish, interval after interval. Pure: the caller
/// supplies the meters and applies the result to gossip.
#[derive(Default)]
pub struct IoPublisher {
    keys: BTreeMap<String, Published>,
}

impl IoPublisher {
    pub fn new() -> IoPublisher {
        IoPublisher::default()
    }

    /// The updates due now for `sources` (key → meter): `Some(record)` to
    /// publish, `None` to delete a key published before whose source is
    /// gone. A source's first record is always published (readers then
    /// know the node counts, and idle reads as zero rather than unknown);
    /// after that, a record while counters move and one more when they
    /// stop.
    pub fn poll(
        &mut self,
        sources: &[(String, Arc<IoMeter>)],
    ) -> Vec<(String, Option<IoCounters>)> {
        let mut out = Vec::new();
        for (key, meter) in sources {
            match self.keys.get_mut(key) {
                None => {
                    let mut since = Since::default();
                    let c = meter.sample(&mut since);
                    self.keys.insert(
                        key.clone(),
                        Published {
                            since,
                            last: c,
                            active: false,
                        },
                    );
                    out.push((key.clone(), Some(c)));
                }
                Some(p) => {
                    let c = meter.sample(&mut p.since);
                    let moved = c.counts_differ(&p.last);
                    if moved || p.active {
                        p.last = c;
                        p.active = moved;
                        out.push((key.clone(), Some(c)));
                    }
                }
            }
        }
        let gone: Vec<String> = self
            .keys
            .keys()
            .filter(|k| !sources.iter().any(|(s, _)| s == *k))
            .cloned()
            .collect();
        for k in gone {
            self.keys.remove(&k);
            out.push((k, None));
        }
        out
    }
}

/// Publishes the meters `sources` returns (called every interval, so the
/// set may change: a gateway's LUNs come and go) every `interval`.
pub fn spawn_io_publisher<F>(gossip: Arc<Gossip>, interval: Duration, sources: F) -> JoinHandle<()>
where
    F: Fn() -> Vec<(String, Arc<IoMeter>)> + Send + 'static,
{
    tokio::spawn(async move {
        let mut publisher = IoPublisher::new();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (key, record) in publisher.poll(&sources()) {
                let done = match &record {
                    Some(r) => gossip.set_record(&key, r),
                    None => gossip.delete(&key),
                };
                if let Err(e) = done {
                    debug!(%key, error = %e, "gossip: I/O counters not published");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::state::{Value, VALUE_BYTES_MAX};

    #[test]
    fn buckets_cover_every_latency_in_order() {
        let mut last = 0;
        for us in 0..100_000u64 {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(us <= bucket_upper_us(b), "{us} above bucket {b}");
            if b > 0 {
                assert!(us > bucket_upper_us(b - 1), "{us} belongs lower");
            }
            last = b;
        }
        assert_eq!(bucket(LATENCY_US_MAX), LATENCY_BUCKETS - 1);
        assert_eq!(bucket(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_upper_us(LATENCY_BUCKETS - 1), LATENCY_US_MAX);
        // A percentile is at most a quarter of its power of two high.
        assert_eq!(bucket_upper_us(bucket(1000)), 1023);
    }

    #[test]
    fn percentile_of_the_interval_only() {
        let m = IoMeter::new();
        let mut since = Since::default();
        for _ in 0..99 {
            m.record(IoOp::Write, 4096, Duration::from_micros(100));
        }
        m.record(IoOp::Write, 4096, Duration::from_millis(50));
        let c = m.sample(&mut since);
        assert_eq!((c.write_ops, c.write_bytes), (100, 409_600));
        assert_eq!(c.write_us, 99 * 100 + 50_000);
        assert_eq!(
            c.write_us_p99, 111,
            "99 of 100 at 100 µs: the bucket 96..=111"
        );
        assert_eq!(c.read_us_p99, 0);
        for _ in 0..10 {
            m.record(IoOp::Write, 512, Duration::from_millis(2));
        }
        m.record(IoOp::Read, 512, Duration::from_micros(10));
        m.record(IoOp::Other, 0, Duration::from_micros(10));
        m.record_error();
        let c = m.sample(&mut since);
        assert_eq!(c.write_us_p99, 2047, "only this interval's 2 ms writes");
        assert_eq!(c.read_us_p99, 11);
        assert_eq!((c.other_ops, c.errors, c.read_ops), (1, 1, 1));
        assert_eq!(m.sample(&mut since).write_us_p99, 0);
    }

    /// One row per interval: what was recorded, and whether a record is
    /// published.
    #[test]
    fn publishes_while_moving_and_once_after() {
        let m = Arc::new(IoMeter::new());
        let sources = vec![("io".to_string(), m.clone())];
        let mut p = IoPublisher::new();
        let table: &[(&str, u64, bool)] = &[
            ("first: always, even idle", 0, true),
            ("idle", 0, false),
            ("busy", 3, true),
            ("busy", 1, true),
            ("stopped: one closing record", 0, true),
            ("idle", 0, false),
            ("idle", 0, false),
            ("busy again", 2, true),
            ("closing", 0, true),
        ];
        let mut total = 0;
        for (what, writes, published) in table {
            for _ in 0..*writes {
                m.record(IoOp::Write, 4096, Duration::from_micros(200));
            }
            total += writes;
            let out = p.poll(&sources);
            assert_eq!(!out.is_empty(), *published, "{what}");
            if let Some((key, Some(c))) = out.first() {
                assert_eq!(key, "io");
                assert_eq!(c.write_ops, total, "{what}");
                assert_eq!(c.write_us_p99 > 0, *writes > 0, "{what}");
            }
        }
        // A source that goes away is deleted once.
        assert_eq!(p.poll(&[]), vec![("io".to_string(), None)]);
        assert!(p.poll(&[]).is_empty());
    }

    #[test]
    fn the_largest_record_fits_a_gossip_value() {
        let max = IoCounters {
            uptime_ms: u64::MAX,
            read_ops: u64::MAX,
            read_bytes: u64::MAX,
            read_us: u64::MAX,
            write_ops: u64::MAX,
            write_bytes: u64::MAX,
            write_us: u64::MAX,
            other_ops: u64::MAX,
            errors: u64::MAX,
            read_us_p99: u32::MAX,
            write_us_p99: u32::MAX,
        };
        let v = Value::encode_record(&max).unwrap();
        assert!(v.len() <= 102 && v.len() <= VALUE_BYTES_MAX, "{}", v.len());
        assert_eq!(v.decode_record::<IoCounters>(), Some(max));
        // What a busy node publishes: an hour up, a million 4 KiB writes.
        let busy = IoCounters {
            uptime_ms: 3_600_000,
            write_ops: 1_000_000,
            write_bytes: 4_096_000_000,
            write_us: 400_000_000,
            write_us_p99: 2_000,
            ..IoCounters::default()
        };
        let n = Value::encode_record(&busy).unwrap().len();
        assert!(n <= 32, "{n}");
    }
}
