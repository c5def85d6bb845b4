//! Deterministic simulation of gossip on fake time: 16 to 1,000 nodes of
//! the real sans-IO core (`fabric::gossip::core::Node`) exchanging real
//! messages through an in-process network with a fixed one-way latency.
//! Bandwidth is counted from the encoded (postcard) size of every message.
//!
//! `cargo run --release -p fabric --example gossip_sim [-- SEED [N...]]`
//!
//! For each size it measures, on fake time:
//! - cold start: every node started from 3 seeds until all hold all;
//! - join: one more node until it knows all and all know it;
//! - value change: one node's capacity until every node has it;
//! - death: a node stops until every other marks it dead;
//!
//! and the bytes/s each node sends meanwhile.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use fabric::gossip::core::{Config, Millis, Node};
use fabric::gossip::state::{keys, Capacity, LinkState, Location, Performance, QosClass};
use fabric::gossip::{Availability, Message};
use fabric::identity::{NodeId, Role};
use fabric::rpc::NodeAddrs;
use rand::{RngCore, SeedableRng};

/// One-way network latency of the simulated fabric.
const LATENCY_MS: Millis = 1;
/// Gossip interval used at every size (the tests use the same).
const INTERVAL_MS: Millis = 200;
/// Link records each simulated node publishes (real nodes publish up to
/// `LINKS_MAX_DEFAULT`; 8 keeps 1,000 views × 1,000 nodes in memory).
const SIM_LINKS: usize = 8;
/// How often convergence is checked.
const CHECK_MS: Millis = 50;
/// Give up on a phase after this much fake time.
const PHASE_MS_MAX: Millis = 120_000;

enum Event {
    Tick(usize),
    Deliver {
        from: usize,
        to: usize,
        msg: Message,
    },
}

struct Sim {
    now: Millis,
    seq: u64,
    ids: Vec<NodeId>,
    index: HashMap<NodeId, usize>,
    nodes: Vec<Option<Node>>,
    queue: BinaryHeap<Reverse<(Millis, u64, usize)>>,
    events: HashMap<u64, Event>,
    bytes_sent: u64,
    /// Largest encoded message seen.
    msg_bytes_max: usize,
    seed: u64,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            now: 0,
            seq: 0,
            ids: Vec::new(),
            index: HashMap::new(),
            nodes: Vec::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            bytes_sent: 0,
            msg_bytes_max: 0,
            seed,
        }
    }

    fn push(&mut self, at: Millis, ev: Event) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq, 0)));
    }

    /// Adds a node that starts at `at` with seeds 0, 1, 2.
    fn add_node(&mut self, at: Millis) -> usize {
        let i = self.ids.len();
        let id = NodeId::new(format!("node-{i:04}")).unwrap_or_else(|_| unreachable!());
        let seeds = (0..3)
            .map(|s| NodeId::new(format!("node-{s:04}")).unwrap_or_else(|_| unreachable!()))
            .collect();
        let mut cfg = Config::new(id.clone(), 1, seeds);
        cfg.gossip_interval_ms = INTERVAL_MS;
        // Links are preloaded below; no probes in the simulation.
        cfg.probe_interval_ms = u64::MAX / 4;
        cfg.link_publish_interval_ms = u64::MAX / 4;
        let rng = Box::new(rand::rngs::StdRng::seed_from_u64(
            self.seed ^ (i as u64) << 20,
        ));
        let mut node = Node::new(cfg, rng, at);
        publish_initial_state(&mut node, i);
        self.ids.push(id.clone());
        self.index.insert(id, i);
        self.nodes.push(Some(node));
        self.push(at, Event::Tick(i));
        i
    }

    fn run_until(&mut self, until: Millis) {
        while let Some(Reverse((at, seq, _))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            match ev {
                Event::Tick(i) => {
                    let Some(node) = self.nodes.get_mut(i).and_then(Option::as_mut) else {
                        continue;
                    };
                    node.tick(at);
                    let mut out = Vec::new();
                    while let Some((to, msg)) = node.poll_transmit() {
                        out.push((to, msg));
                    }
                    let next = node.poll_timeout();
                    for (to, msg) in out {
                        if let Some(&j) = self.index.get(&to) {
                            let len = msg.encoded_len();
                            self.msg_bytes_max = self.msg_bytes_max.max(len);
                            self.bytes_sent += len as u64;
                            self.push(
                                at + LATENCY_MS,
                                Event::Deliver {
                                    from: i,
                                    to: j,
                                    msg,
                                },
                            );
                        }
                    }
                    self.push(next, Event::Tick(i));
                }
                Event::Deliver { from, to, msg } => {
                    let from_id = self.ids[from].clone();
                    let Some(node) = self.nodes.get_mut(to).and_then(Option::as_mut) else {
                        continue;
                    };
                    if let Ok(Some(reply)) = node.handle_message(&from_id, msg, at) {
                        let len = reply.encoded_len();
                        self.msg_bytes_max = self.msg_bytes_max.max(len);
                        self.bytes_sent += len as u64;
                        self.push(
                            at + LATENCY_MS,
                            Event::Deliver {
                                from: to,
                                to: from,
                                msg: reply,
                            },
                        );
                    }
                }
            }
        }
        self.now = until;
    }

    /// Runs until `done` holds (checked every `CHECK_MS`); returns the
    /// fake time it took and the bytes/s per live node meanwhile.
    fn measure(&mut self, mut done: impl FnMut(&Sim) -> bool) -> (Option<Millis>, f64) {
        let start = self.now;
        let bytes0 = self.bytes_sent;
        let mut t = start;
        let took = loop {
            if done(self) {
                break Some(t - start);
            }
            if t - start > PHASE_MS_MAX {
                break None;
            }
            t += CHECK_MS;
            self.run_until(t);
        };
        let secs = ((t - start).max(1)) as f64 / 1000.0;
        let live = self.nodes.iter().filter(|n| n.is_some()).count().max(1);
        let rate = (self.bytes_sent - bytes0) as f64 / secs / live as f64;
        (took, rate)
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter_map(Option::as_ref)
    }
}

fn publish_initial_state(node: &mut Node, i: usize) {
    let port = 7000 + (i % 50_000) as u16;
    let addr = format!("10.0.{}.{}:{port}", i / 250, i % 250 + 1)
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let set = |node: &mut Node, key: &str, r: &dyn erased::Rec| {
        if let Err(e) = r.set(node, key) {
            eprintln!("set {key}: {e}");
        }
    };
    set(node, keys::ROLE, &Role::Chunkserver);
    set(
        node,
        keys::ADDRS,
        &NodeAddrs {
            fabric: addr,
            public: None,
        },
    );
    set(node, keys::SOFTWARE_VERSION, &"0.1.0".to_string());
    set(
        node,
        keys::CAPACITY,
        &Capacity {
            bytes_total: 16 << 40,
            bytes_used: (i as u64) << 30,
            bytes_reserved: 0,
            chunks: i as u64 * 100,
        },
    );
    set(
        node,
        keys::PERFORMANCE,
        &Performance {
            read_latency_us_p50: 180,
            read_latency_us_p99: 900,
            write_latency_us_p50: 250,
            write_latency_us_p99: 1_400,
            iops: 12_000,
            bytes_per_s: 400 << 20,
            queue_depth: 4,
            qos_class: QosClass::Standard,
        },
    );
    set(
        node,
        keys::LOCATION,
        &Location {
            region: "eu-west".into(),
            site: format!("site-{}", i % 3),
            rack: format!("rack-{}", i % 40),
            host: format!("host-{i}"),
            lat_long: Some((48.85, 2.35)),
        },
    );
    for l in 1..=SIM_LINKS {
        let peer =
            NodeId::new(format!("node-{:04}", (i + l) % 1_000)).unwrap_or_else(|_| unreachable!());
        let link = LinkState {
            rtt_us_p50: 180,
            rtt_us_p99: 400,
            loss_permille: 0,
            throughput_bytes_per_s: 1 << 30,
            samples: 16,
        };
        set(
            node,
            fabric::gossip::state::Key::link(&peer).as_str(),
            &link,
        );
    }
}

/// Lets `publish_initial_state` take records of any type in one table.
mod erased {
    use fabric::gossip::{GossipError, Node};
    pub trait Rec {
        fn set(&self, node: &mut Node, key: &str) -> Result<(), GossipError>;
    }
    impl<T: serde::Serialize> Rec for T {
        fn set(&self, node: &mut Node, key: &str) -> Result<(), GossipError> {
            node.set_record(key, self)
        }
    }
}

fn fmt_ms(t: Option<Millis>) -> String {
    match t {
        Some(t) => format!("{:.2} s", t as f64 / 1000.0),
        None => format!("> {} s", PHASE_MS_MAX / 1000),
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1024.0 * 1024.0 {
        format!("{:.1} MiB/s", r / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB/s", r / 1024.0)
    }
}

fn run(n: usize, seed: u64) -> Vec<String> {
    let wall = Instant::now();
    let mut sim = Sim::new(seed);
    let mut jitter = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let at = jitter.next_u64() % INTERVAL_MS;
        sim.add_node(at);
    }
    // Cold start: every node holds every node at its owner's version.
    let owners: Vec<(NodeId, u64)> = sim
        .live()
        .map(|node| {
            let v = node.knows(node.id()).map_or(0, |k| k.0);
            (node.id().clone(), v)
        })
        .collect();
    sim.run_until(INTERVAL_MS);
    let (cold, cold_rate) = sim.measure(|s| {
        s.live().all(|node| {
            node.known_nodes() == owners.len()
                && owners
                    .iter()
                    .all(|(id, v)| node.knows(id).is_some_and(|k| k.0 >= *v))
        })
    });
    // Steady state: 5 s of nothing new.
    let (_, idle_rate) = {
        let mut until = 0;
        sim.measure(|_| {
            until += 1;
            until > (5_000 / CHECK_MS) as i32
        })
    };
    // Join.
    let joiner = sim.add_node(sim.now + 1);
    let jid = sim.ids[joiner].clone();
    let jv = sim.nodes[joiner]
        .as_ref()
        .and_then(|n| n.knows(n.id()))
        .map_or(0, |k| k.0);
    let total = n + 1;
    let (join, join_rate) = sim.measure(|s| {
        s.live()
            .all(|node| node.known_nodes() == total && node.knows(&jid).is_some_and(|k| k.0 >= jv))
    });
    // Value change on a random node.
    let changer = (jitter.next_u64() % n as u64) as usize;
    let cid = sim.ids[changer].clone();
    if let Some(node) = sim.nodes[changer].as_mut() {
        let _ = node.set_record(
            keys::CAPACITY,
            &Capacity {
                bytes_total: 16 << 40,
                bytes_used: 1 << 40,
                bytes_reserved: 1 << 30,
                chunks: 123_456,
            },
        );
    }
    let want = sim.nodes[changer]
        .as_ref()
        .and_then(|n| n.version_of(&cid, keys::CAPACITY))
        .unwrap_or(0);
    let (change, change_rate) = sim.measure(|s| {
        s.live().all(|node| {
            node.version_of(&cid, keys::CAPACITY)
                .is_some_and(|v| v >= want)
        })
    });
    // Death of a random node (not a seed).
    let victim = 3 + (jitter.next_u64() % (n as u64 - 3)) as usize;
    let vid = sim.ids[victim].clone();
    sim.nodes[victim] = None;
    let (death, _) = sim.measure(|s| {
        s.live()
            .all(|node| node.knows(&vid).is_none_or(|k| k.1 == Availability::Dead))
    });
    eprintln!(
        "n={n}: simulated {:.1} s in {:.1?}",
        sim.now as f64 / 1000.0,
        wall.elapsed()
    );
    vec![
        n.to_string(),
        fmt_ms(cold),
        fmt_rate(cold_rate),
        fmt_rate(idle_rate),
        fmt_ms(join),
        fmt_rate(join_rate),
        fmt_ms(change),
        fmt_rate(change_rate),
        fmt_ms(death),
        format!("{:.1} KiB", sim.msg_bytes_max as f64 / 1024.0),
    ]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut sizes: Vec<usize> = args.filter_map(|s| s.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![16, 64, 256, 1_000];
    }
    println!(
        "seed {seed}; gossip interval {INTERVAL_MS} ms; one-way latency {LATENCY_MS} ms; \
         {} keys per node ({SIM_LINKS} links)\n",
        6 + SIM_LINKS
    );
    println!(
        "| nodes | cold start | B/s per node | idle B/s per node | join | B/s per node | \
         value change | B/s per node | dead everywhere | largest message |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let row = run(n.max(4), seed);
        println!("| {} |", row.join(" | "));
    }
}
