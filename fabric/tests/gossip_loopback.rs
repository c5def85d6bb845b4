//! Gossip on real sockets: 16 nodes on loopback, each with its own
//! certificate from a test CA, the real RPC over mutual TLS, 200 ms
//! gossip interval. One test walks through the scenarios in order, so
//! the 2-core machine runs one cluster at a time:
//!
//! | scenario | bound |
//! |---|---|
//! | 16 nodes started from 3 seeds hold the same view | 5 s |
//! | a value set on one node reaches all others | 3 s |
//! | a node added later is discovered by all (and knows all) | 5 s |
//! | a killed node (server and driver dropped) is dead everywhere | 12 s |
//! | a link delayed by a proxy (+50 ms each way) shows its RTT | 10 s |
//! | a link whose proxy stalls 900 ms of every 1,200 shows loss | 15 s |
//!
//! Why 12 s for death: phi reaches `PHI_DEAD` (8) after 18.4 mean
//! heartbeat gaps; a remote node sees a new heartbeat every ~300 ms here
//! (measured in the simulation), so ≈ 5.5 s, plus the spread of when
//! each node last heard of the victim and slack for a loaded CI machine.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fabric::gossip::state::keys;
use fabric::gossip::{Availability, Capacity, DriverConfig, Gossip, Seed, View};
use fabric::identity::{NodeId, Role};
use fabric::rpc::{Client, NodeAddrs, Router, RpcConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const INTERVAL_MS: u64 = 200;

struct TestNode {
    id: NodeId,
    addr: SocketAddr,
    gossip: Gossip,
    _server: Server,
}

async fn start_node(
    cluster: &Cluster,
    name: &str,
    seeds: &[&TestNode],
    overrides: &[(&TestNode, SocketAddr)],
) -> TestNode {
    let tls = cluster.tls(Role::Chunkserver, name);
    let seeds = seeds
        .iter()
        .map(|n| Seed {
            node: n.id.clone(),
            addr: n.addr,
        })
        .collect();
    let mut cfg = DriverConfig::new(id(name), seeds);
    cfg.core.gossip_interval_ms = INTERVAL_MS;
    cfg.core.probe_interval_ms = 500;
    cfg.core.link_publish_interval_ms = 500;
    cfg.probe_timeout_ms = 400;
    cfg.probe_payload_bytes = 4096;
    cfg.rpc_deadline_ms = 1_000;
    for (n, a) in overrides {
        cfg.addr_overrides.insert(n.id.clone(), *a);
    }
    let gossip = Gossip::new(cfg, Role::Chunkserver, "0.1.0-test").unwrap();
    let mut router = Router::new();
    gossip.register(&mut router).unwrap();
    let server = start(&tls, router, RpcConfig::default()).await;
    let client = Client::new(
        &tls,
        RpcConfig {
            backoff_max_ms: 1_000,
            ..RpcConfig::default()
        },
    );
    let addr = server.local_addr();
    gossip
        .start(
            client,
            NodeAddrs {
                fabric: addr,
                public: None,
            },
        )
        .unwrap();
    TestNode {
        id: id(name),
        addr,
        gossip,
        _server: server,
    }
}

/// Polls `cond` every 50 ms until it holds (true) or `bound_ms` passes
/// (false); logs the time it took.
async fn within(what: &str, bound_ms: u64, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            let took = start.elapsed();
            eprintln!("{what}: {took:?} (bound {bound_ms} ms)");
            return true;
        }
        if start.elapsed() >= Duration::from_millis(bound_ms) {
            eprintln!("{what}: not within {bound_ms} ms");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A view reduced to what must agree everywhere: per node, generation,
/// availability and the versions of its keys (links excepted: they are
/// republished as probes move, and are checked on their own).
/// Per node: generation, availability, (key, version) pairs.
type Summary = BTreeMap<NodeId, (u64, Availability, Vec<(String, u64)>)>;

fn summary(v: &View) -> Summary {
    v.nodes
        .iter()
        .map(|(id, n)| {
            let keys = n
                .keys
                .iter()
                .filter(|(k, _)| !k.as_str().starts_with(keys::LINK_PREFIX))
                .map(|(k, (ver, _))| (k.as_str().to_owned(), *ver))
                .collect();
            (id.clone(), (n.generation, n.availability, keys))
        })
        .collect()
}

fn all_agree(nodes: &[TestNode], expect_nodes: usize, verbose: bool) -> bool {
    let first = summary(&nodes[0].gossip.view());
    let ok = first.len() == expect_nodes
        && first.values().all(|(_, a, _)| *a == Availability::Alive)
        && nodes.iter().all(|n| summary(&n.gossip.view()) == first);
    if !ok && verbose {
        // What is still missing, for the log of a failed run.
        for n in nodes {
            let v = n.gossip.view();
            let not_alive: Vec<_> = v
                .nodes
                .iter()
                .filter(|(_, s)| s.availability != Availability::Alive)
                .map(|(id, s)| format!("{id}:{:?}", s.availability))
                .collect();
            if v.nodes.len() != expect_nodes || !not_alive.is_empty() {
                eprintln!(
                    "{}: knows {}, not alive: {not_alive:?}",
                    n.id,
                    v.nodes.len()
                );
            }
        }
    }
    ok
}

/// A TCP proxy for one link that adds a delay to every chunk it forwards
/// and can stall (stop forwarding) altogether. It cannot drop bytes of a
/// TLS stream without breaking it, so loss is made by stalls: a probe
/// caught in a stall is not answered within its timeout, which is what
/// `loss` means in the link state.
struct Proxy {
    addr: SocketAddr,
    delay_ms: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
}

async fn proxy_to(target: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let delay_ms = Arc::new(AtomicU64::new(0));
    let stalled = Arc::new(AtomicBool::new(false));
    let (d, s) = (delay_ms.clone(), stalled.clone());
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(target).await else {
                continue;
            };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pump(ri, wo, d.clone(), s.clone()));
            tokio::spawn(pump(ro, wi, d.clone(), s.clone()));
        }
    });
    Proxy {
        addr,
        delay_ms,
        stalled,
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        while stalled.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_nodes_on_loopback() {
    logs();
    let cluster = Cluster::new("gossip");
    let mut nodes: Vec<TestNode> = Vec::new();
    // Three seeds: the first alone, the next two seeded by it.
    nodes.push(start_node(&cluster, "node-00", &[], &[]).await);
    for i in 1..3 {
        let n = start_node(&cluster, &format!("node-{i:02}"), &[&nodes[0]], &[]).await;
        nodes.push(n);
    }
    // node-15 reaches node-03 through a proxy (the link under test).
    let mut proxy = None;
    for i in 3..16 {
        let seeds = [&nodes[0], &nodes[1], &nodes[2]];
        let n = if i == 15 {
            let p = proxy_to(nodes[3].addr).await;
            let via = p.addr;
            proxy = Some(p);
            start_node(&cluster, "node-15", &seeds, &[(&nodes[3], via)]).await
        } else {
            start_node(&cluster, &format!("node-{i:02}"), &seeds, &[]).await
        };
        nodes.push(n);
    }
    let proxy = proxy.unwrap();

    // 1. Convergence.
    let ok = within("16 nodes converge", 5_000, || all_agree(&nodes, 16, false));
    if !ok.await {
        all_agree(&nodes, 16, true);
        panic!("16 nodes did not converge within 5 s");
    }
    let v = nodes[7].gossip.view();
    let n3 = v.get(&id("node-03")).unwrap();
    assert_eq!(n3.role(), Some(Role::Chunkserver));
    assert_eq!(n3.addrs().unwrap().fabric, nodes[3].addr);
    assert_eq!(n3.software_version().as_deref(), Some("0.1.0-test"));

    // 2. A value set on one node reaches all others.
    let cap = Capacity {
        bytes_total: 1 << 40,
        bytes_used: 123 << 30,
        bytes_reserved: 1 << 30,
        chunks: 4242,
    };
    nodes[9].gossip.set_capacity(&cap).unwrap();
    let n9 = id("node-09");
    assert!(
        within("capacity of node-09 everywhere", 3_000, || {
            nodes
                .iter()
                .all(|n| n.gossip.view().get(&n9).and_then(|s| s.capacity()) == Some(cap))
        })
        .await
    );

    // 3. A node added later is discovered.
    let seeds = [&nodes[0], &nodes[1], &nodes[2]];
    let late = start_node(&cluster, "node-16", &seeds, &[]).await;
    nodes.push(late);
    let ok = within("node-16 discovered by all and knows all", 5_000, || {
        all_agree(&nodes, 17, false)
    });
    if !ok.await {
        all_agree(&nodes, 17, true);
        panic!("node-16 not discovered within 5 s");
    }

    // 4. A killed node is marked dead everywhere.
    let victim = nodes.remove(12);
    let vid = victim.id.clone();
    drop(victim);
    assert!(
        within("node-12 dead everywhere", 12_000, || {
            nodes
                .iter()
                .all(|n| n.gossip.view().availability(&vid) == Some(Availability::Dead))
        })
        .await
    );

    // 5. A slow link: +50 ms each way between node-15 and node-03 only.
    let (n15, n3, n4) = (id("node-15"), id("node-03"), id("node-04"));
    let before = nodes[0].gossip.view().link(&n15, &n3);
    eprintln!("link node-15 -> node-03 before: {before:?}");
    proxy.delay_ms.store(50, Ordering::Relaxed);
    assert!(
        within(
            "delay seen in node-15 -> node-03, everywhere",
            10_000,
            || {
                nodes.iter().all(|n| {
                    n.gossip
                        .view()
                        .link(&n15, &n3)
                        .is_some_and(|l| l.rtt_us_p50 >= 90_000)
                })
            },
        )
        .await
    );
    let other = nodes[0].gossip.view().link(&n15, &n4).unwrap();
    assert!(
        other.rtt_us_p50 < 50_000,
        "other links stay fast: {other:?}"
    );
    eprintln!(
        "link node-15 -> node-03 delayed: {:?}",
        nodes[0].gossip.view().link(&n15, &n3)
    );

    // 6. A lossy link: the proxy stalls 900 ms of every 1,200 ms.
    proxy.delay_ms.store(0, Ordering::Relaxed);
    let stalled = proxy.stalled.clone();
    let flapper = tokio::spawn(async move {
        loop {
            stalled.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(900)).await;
            stalled.store(false, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    within(
        "loss seen in node-15 -> node-03, everywhere",
        15_000,
        || {
            nodes.iter().all(|n| {
                n.gossip
                    .view()
                    .link(&n15, &n3)
                    .is_some_and(|l| l.loss_permille >= 250)
            })
        },
    )
    .await;
    flapper.abort();
    proxy.stalled.store(false, Ordering::Relaxed);
    eprintln!(
        "link node-15 -> node-03 lossy: {:?}",
        nodes[0].gossip.view().link(&n15, &n3)
    );
    let other = nodes[0].gossip.view().link(&n15, &n4).unwrap();
    assert!(
        other.loss_permille < 250,
        "other links lose nothing: {other:?}"
    );
}
