//! One seed's run: the hosts (four chunkservers, two gateways), the
//! workload, and the loop that steps the simulation, injects faults and
//! stops at the first violation.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use chunkserver::config::Config;
use chunkserver::node::Node;
use chunkserver::store::StoreConfig;
use fabric::gossip::{DriverConfig, Gossip, Location, Seed};
use fabric::identity::{Ca, Role, Validity};
use fabric::metadata::{ChunkState, Command, MetaClient, Outcome, ReadReply, ReadRequest};
use fabric::placement::{EcProfile, Policy};
use fabric::rpc::{Client, NodeAddrs, Router, RpcConfig, Server};
use fabric::volume::{Volume, VolumeConfig};
use fabric::wire::chunk::{ChunkRead, ChunkReadRequest, ChunkRef};
use fabric::{NodeCredentials, NodeId, TlsConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::{Model, Report, BLOCK};
use crate::faults::Faults;

pub const GATEWAYS: usize = 2;

/// The cluster a run simulates: its LUN's profile, its chunkservers, and
/// when a chunk whose holder stays away moves (`--ec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub k: u8,
    pub m: u8,
    pub chunkservers: usize,
    pub replace_after_secs: u64,
}

impl Shape {
    /// `3+1` on four nodes: no node could take a moved chunk.
    pub const XOR: Shape = Shape {
        k: 3,
        m: 1,
        chunkservers: 4,
        replace_after_secs: 0,
    };
    /// `3+2` (Reed–Solomon) on six nodes, chunks of a node away for 4 s
    /// moved to the spare one (crashes last 0.3–6 s).
    pub const RS: Shape = Shape {
        k: 3,
        m: 2,
        chunkservers: 6,
        replace_after_secs: 4,
    };

    pub fn parse(text: &str) -> Option<Shape> {
        match text {
            "3+1" => Some(Shape::XOR),
            "3+2" => Some(Shape::RS),
            _ => None,
        }
    }
}
/// Every host listens on this port of its own address.
const PORT: u16 = 7400;
/// One simulation step.
const TICK_MS: u64 = 1;
/// Faults are injected for this long once the LUN is being written.
pub const FAULT_PHASE_MS: u64 = 15_000;
/// After the faults heal, time for leases, rebuilds and replays to finish
/// before the final read.
const SETTLE_MS: u64 = 8_000;
/// A seed that has not finished in this much simulated time is stuck.
const RUN_MS_MAX: u64 = 180_000;
const LUN_NAME: &str = "sim";
/// Two extents (3 × 16 MiB each): each gateway writes a window in one.
const LUN_BYTES: u64 = 96 * 1024 * 1024;
const EXTENT_BYTES: u64 = 48 * 1024 * 1024;
/// Blocks in each gateway's window.
const WINDOW_BLOCKS: u64 = 384;
const WRITE_BLOCKS_MAX: u64 = 32;
const READ_BLOCKS_MAX: u64 = 64;
/// Lease and election timing of the simulated cluster (the multi-process
/// tests use the same).
const LEASE_MS: u64 = 3_000;
const ELECTION_TIMEOUT_MS: u64 = 1_000;

/// The simulation's fixed start of time (so leases and timestamps are the
/// same in every run of a seed).
fn epoch() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// Certificates are made once per process: key generation is slow and
/// nothing in the run depends on the key bytes.
///
/// The TLS configurations themselves are built per seed: a client
/// configuration keeps TLS session tickets, and a ticket from an earlier
/// seed would change this seed's handshakes.
pub struct Certs {
    chunkservers: Vec<NodeCredentials>,
    gateways: Vec<NodeCredentials>,
    admin: NodeCredentials,
}

fn tls(creds: &NodeCredentials) -> TlsConfig {
    TlsConfig::new(creds).expect("tls")
}

impl Certs {
    pub fn generate(shape: Shape) -> Certs {
        let ca = Ca::generate("weft-sim").expect("CA");
        let make = |role: Role, id: &str| {
            let node = ca
                .issue(
                    role,
                    &NodeId::new(id).expect("node id"),
                    Validity::days_from(SystemTime::now(), 30),
                )
                .expect("issue");
            NodeCredentials {
                ca_cert_pem: ca.cert_pem().to_owned(),
                node,
            }
        };
        Certs {
            chunkservers: (1..=shape.chunkservers)
                .map(|i| make(Role::Chunkserver, &cs_name(i)))
                .collect(),
            gateways: (1..=GATEWAYS)
                .map(|i| make(Role::Gateway, &gw_name(i)))
                .collect(),
            admin: make(Role::Admin, "sim-admin"),
        }
    }
}

pub fn cs_name(i: usize) -> String {
    format!("cs{i}")
}

fn gw_name(i: usize) -> String {
    format!("gw{i}")
}

/// Turmoil hands out 192.168.0.1, .2, ... in the order hosts are added.
fn host_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 168, 0, n as u8))
}

fn cs_addr(i: usize) -> SocketAddr {
    SocketAddr::new(host_ip(i), PORT)
}

fn seeds(shape: Shape) -> Vec<Seed> {
    (1..=shape.chunkservers)
        .map(|i| Seed {
            node: NodeId::new(cs_name(i)).expect("node id"),
            addr: cs_addr(i),
        })
        .collect()
}

fn node_config(i: usize, root: &Path, shape: Shape) -> Config {
    let dir = root.join(cs_name(i));
    let seeds = seeds(shape);
    Config {
        node_id: NodeId::new(cs_name(i)).expect("node id"),
        location: Location {
            host: cs_name(i),
            ..Location::default()
        },
        listen: cs_addr(i),
        public: None,
        cert_dir: PathBuf::new(),
        seeds: seeds.clone(),
        store: StoreConfig {
            data_dir: dir.join("store"),
            capacity_bytes: 8 << 30,
            reserve_bytes: 0,
            chunk_bytes_max: 64 << 20,
            boot_id_path: chunkserver::store::BOOT_ID_PATH.into(),
        },
        scrub_blocks_per_sec: 0,
        scrub_interval_secs: 86_400,
        gossip: true,
        capacity_interval_ms: 1_000,
        journal_dir: dir.join("journal"),
        journal_bytes_max: 64 << 20,
        journal_flush_after_secs: chunkserver::config::JOURNAL_FLUSH_AFTER_SECS_DEFAULT,
        voters: seeds.into_iter().take(3).collect(),
        meta_dir: dir.join("meta"),
        lease_ms: LEASE_MS,
        election_timeout_ms: ELECTION_TIMEOUT_MS,
        replace_after_secs: shape.replace_after_secs,
        // Often, so that deleting a chunk file still needed would show.
        gc_interval_secs: 5,
    }
}

/// Where a node keeps its files (for the fault injector).
pub fn node_dir(root: &Path, i: usize) -> PathBuf {
    root.join(cs_name(i))
}

/// Phases of the run, shared between the loop and the gateways (one
/// thread: every host runs on it in turn).
#[derive(Default)]
pub struct Shared {
    pub model: Model,
    /// Gateways that have the LUN open.
    pub ready: usize,
    /// The faults are over: gateways stop the workload and do the final read.
    pub healed: bool,
    pub finished: usize,
    pub step: u64,
    /// Since when gw1 has seen every chunk of both extents in service (its
    /// metadata watch): a new fault waits for the last one to be repaired,
    /// so no stripe ever has two chunks out.
    pub healthy_since: Option<u64>,
    /// The step of gw1's latest check, if it found every chunk in service.
    pub healthy_checked: Option<u64>,
}

type SharedRef = Rc<RefCell<Shared>>;

fn sim_err(e: impl std::fmt::Display) -> Box<dyn std::error::Error> {
    e.to_string().into()
}

/// tokio numbers tasks from one process-wide counter and, when a runtime
/// shuts down (a simulated crash), drops its tasks shard by shard, the shard
/// being the task id modulo a power of two: so the order in which a crashed
/// host's connections close depends on how many tasks earlier seeds
/// spawned. Starting every seed at the same residue makes a seed's run the
/// same whether it runs first or after others.
fn align_task_ids() {
    const RESIDUE: u64 = 1024;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        loop {
            let h = tokio::spawn(async {});
            let id: u64 = h.id().to_string().parse().expect("task id");
            let _ = h.await;
            if id % RESIDUE == RESIDUE - 1 {
                break;
            }
        }
    });
}

pub fn run_seed(seed: u64, certs: &Certs, trace: bool, shape: Shape) -> Result<Report> {
    let root_parent = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let root = tempfile::Builder::new()
        .prefix("weft-sim-")
        .tempdir_in(root_parent)
        .context("temp dir")?;
    fabric::env::reseed(seed);
    align_task_ids();
    let mut rng = StdRng::seed_from_u64(seed);
    let max_latency_ms = rng.random_range(1..=20);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(epoch())
        .tick_duration(Duration::from_millis(TICK_MS))
        .simulation_duration(Duration::from_millis(RUN_MS_MAX))
        .min_message_latency(Duration::from_millis(0))
        .max_message_latency(Duration::from_millis(max_latency_ms))
        .build();
    let shared: SharedRef = Rc::new(RefCell::new(Shared::default()));
    shared.borrow_mut().model.trace = trace;
    shared
        .borrow_mut()
        .model
        .event(0, &format!("seed {seed} max latency {max_latency_ms} ms"));

    for i in 1..=shape.chunkservers {
        let cfg = node_config(i, root.path(), shape);
        let tls = tls(&certs.chunkservers[i - 1]);
        sim.host(cs_name(i), move || {
            let cfg = cfg.clone();
            let tls = tls.clone();
            async move {
                let node = Node::start(&cfg, &tls)
                    .await
                    .map_err(|e| sim_err(format!("{} did not start: {e:#}", cfg.node_id)))?;
                std::future::pending::<()>().await;
                drop(node);
                Ok(())
            }
        });
    }
    for g in 1..=GATEWAYS {
        let tls = tls(&certs.gateways[g - 1]);
        let admin = (g == 1).then(|| self::tls(&certs.admin));
        let sh = shared.clone();
        let gseed = seed ^ (g as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        sim.client(gw_name(g), async move {
            gateway(g, tls, admin, sh, gseed, shape)
                .await
                .map_err(sim_err)
        });
    }
    for i in 1..=shape.chunkservers {
        let ip = sim.lookup(cs_name(i));
        if ip != host_ip(i) {
            bail!(
                "turmoil gave {} address {ip}, expected {}",
                cs_name(i),
                host_ip(i)
            );
        }
    }

    let mut faults = Faults::new(seed, root.path().to_owned(), max_latency_ms, shape);
    let ticks_max = RUN_MS_MAX / TICK_MS;
    let mut fault_end: Option<u64> = None;
    let mut step = 0u64;
    loop {
        step += 1;
        shared.borrow_mut().step = step;
        let done = match sim.step() {
            Ok(done) => done,
            Err(e) => {
                let v = shared.borrow_mut().model.violation.take();
                return Err(match v {
                    Some(v) => anyhow!("{v}"),
                    None => anyhow!("at step {step}: {e}"),
                });
            }
        };
        if let Some(v) = shared.borrow_mut().model.violation.take() {
            return Err(anyhow!("at step {step}: {v}"));
        }
        if done {
            break;
        }
        if step >= ticks_max {
            bail!("no progress: the run did not finish in {RUN_MS_MAX} ms of simulated time");
        }
        let ready = shared.borrow().ready == GATEWAYS;
        if !ready {
            continue;
        }
        let end = *fault_end.get_or_insert_with(|| {
            shared
                .borrow_mut()
                .model
                .event(step, "workload and faults start");
            step + FAULT_PHASE_MS / TICK_MS
        });
        if step < end {
            let mut sh = shared.borrow_mut();
            let healthy = sh.healthy_checked;
            faults.tick(&mut sim, step, healthy, &mut sh.model)?;
        } else if !shared.borrow().healed {
            let mut sh = shared.borrow_mut();
            faults.heal(&mut sim, step, &mut sh.model)?;
            sh.model.event(step, "healed: final read after settling");
            sh.healed = true;
        }
    }
    let sh = shared.borrow();
    let mut report = sh.model.report.clone();
    report.hash = sh.model.hash();
    report.steps = step;
    report.faults = faults.count;
    drop(sh);
    drop(sim);
    Ok(report)
}

/// A gateway: gossip, the metadata client and the real volume client; it
/// writes its window and reads both, checking every read, until the faults
/// heal; then it reads everything back.
async fn gateway(
    g: usize,
    tls: TlsConfig,
    admin: Option<TlsConfig>,
    sh: SharedRef,
    seed: u64,
    shape: Shape,
) -> Result<()> {
    let me = NodeId::new(gw_name(g))?;
    let client = Client::new(&tls, RpcConfig::default());
    let gossip = Arc::new(Gossip::new(
        DriverConfig::new(me.clone(), seeds(shape)),
        Role::Gateway,
        "sim",
    )?);
    let mut router = Router::new();
    gossip.register(&mut router)?;
    let ip = turmoil::lookup(gw_name(g));
    let server = Server::bind(
        SocketAddr::new(ip, PORT),
        &tls,
        router,
        RpcConfig::default(),
    )
    .await?;
    gossip.start(
        client.clone(),
        NodeAddrs {
            fabric: server.local_addr(),
            public: None,
        },
    )?;
    let endpoints: Vec<(NodeId, SocketAddr)> =
        seeds(shape).into_iter().map(|s| (s.node, s.addr)).collect();
    let meta = Arc::new(MetaClient::new(client.clone(), endpoints.clone()));
    if let Some(admin) = admin {
        let admin = MetaClient::new(Client::new(&admin, RpcConfig::default()), endpoints);
        loop {
            let r = admin
                .admin(Command::CreateLun {
                    name: LUN_NAME.into(),
                    size_bytes: LUN_BYTES,
                    block_size: 4096,
                    policy: Policy::new(EcProfile {
                        k: shape.k,
                        m: shape.m,
                    }),
                    naa: [0; 16],
                    serial: String::new(),
                    now_ms: 0,
                })
                .await;
            match r {
                Ok(reply) if matches!(reply.outcome, Outcome::Lun(_)) => break,
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
    let lun = loop {
        match meta
            .read(ReadRequest::Lun {
                name: LUN_NAME.into(),
            })
            .await
        {
            Ok(ReadReply::Lun(l)) => break l,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    if g == 1 {
        tokio::task::spawn_local(watch_health(meta.clone(), lun.id, sh.clone()));
    }
    let (vol_meta, lun_id) = (meta.clone(), lun.id);
    let vol = std::sync::Arc::new(Volume::new(
        lun,
        meta,
        client.clone(),
        gossip.watch(),
        VolumeConfig::default(),
    )?);
    {
        let mut s = sh.borrow_mut();
        s.ready += 1;
        let step = s.step;
        s.model.event(step, &format!("gw{g} has the LUN open"));
    }
    // Gateway g writes blocks [base(g), base(g) + WINDOW_BLOCKS): each in
    // its own extent, so the two extents have different primaries.
    let base = |g: usize| (g as u64 - 1) * (EXTENT_BYTES / BLOCK);
    let mine = base(g);
    let mut rng = StdRng::seed_from_u64(seed);
    while !sh.borrow().healed {
        let op = rng.random_range(0..10);
        if op < 5 {
            let n = rng.random_range(1..=WRITE_BLOCKS_MAX);
            let first = mine + rng.random_range(0..=WINDOW_BLOCKS - n);
            let stable = rng.random_bool(0.3);
            write(&vol, &sh, g, first, n, stable).await;
        } else if op < 9 {
            let n = rng.random_range(1..=READ_BLOCKS_MAX);
            let w = base(rng.random_range(1..=GATEWAYS));
            let first = w + rng.random_range(0..=WINDOW_BLOCKS - n);
            read(&vol, &sh, g, first, n).await;
        } else {
            let r = vol.flush().await;
            let mut s = sh.borrow_mut();
            let step = s.step;
            s.model.event(
                step,
                &format!("gw{g} flush {}", if r.is_ok() { "ok" } else { "failed" }),
            );
        }
        let pause = rng.random_range(0..50);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    tokio::time::sleep(Duration::from_millis(SETTLE_MS)).await;
    // The final read: every block of both windows, and nothing may fail.
    for w in 1..=GATEWAYS {
        let mut first = base(w);
        let end = base(w) + WINDOW_BLOCKS;
        while first < end {
            let n = READ_BLOCKS_MAX.min(end - first);
            let start = sh.borrow_mut().model.now();
            sh.borrow_mut().model.report.reads += 1;
            let r = vol.read(first * BLOCK, n * BLOCK).await;
            let mut s = sh.borrow_mut();
            match r {
                Ok(data) => s
                    .model
                    .check_read(&format!("gw{g} final"), first, start, &data),
                Err(e) => {
                    s.model.fail(format!(
                        "gw{g}: final read of blocks {first}+{n} failed after healing: {e}"
                    ));
                }
            }
            first += n;
        }
    }
    if g == 1 {
        check_stripes(&client, &vol_meta, lun_id, shape, &sh).await;
    }
    let mut s = sh.borrow_mut();
    s.finished += 1;
    let step = s.step;
    s.model.event(step, &format!("gw{g} final read done"));
    drop(s);
    drop(server);
    Ok(())
}

/// Chunk bytes of each extent that the windows' blocks fall in.
const WINDOW_CHUNK_BYTES: u64 = 512 * 1024;

/// After the final read: every stripe of the windows' extents whose chunks
/// are all in service has parity that agrees with its data (DESIGN.md: no
/// write hole; a chunk caught up or rebuilt holds what it missed). A stale
/// parity block is otherwise seen only if a later fault rebuilds from it.
///
/// A write the gateway gave up on may still be in a primary's hands (its
/// parity chunk missed it and is about to be marked missing), so a
/// disagreement fails the run only if it outlasts `STRIPE_CHECK_MS` with
/// the chunks still in service. Chunks that cannot be read (a bad block not
/// repaired yet) are passed over: reads, checked above, go around them.
async fn check_stripes(client: &Client, meta: &MetaClient, lun: u64, shape: Shape, sh: &SharedRef) {
    let Ok(codec) = chunkserver::primary::codec::Codec::new(shape.k, shape.m) else {
        sh.borrow_mut().model.fail("no codec for the shape".into());
        return;
    };
    for index in 0..GATEWAYS as u64 {
        let mut waited = 0;
        loop {
            match stripe_disagrees(client, meta, lun, index, shape, &codec).await {
                None => break,
                Some(why) if waited >= STRIPE_CHECK_MS => {
                    sh.borrow_mut().model.fail(why);
                    return;
                }
                Some(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    waited += 500;
                }
            }
        }
    }
}

/// How long a stripe may disagree with its parity after the final read.
const STRIPE_CHECK_MS: u64 = 30_000;

/// Why extent `index`'s stripes over the windows disagree with their
/// parity, if they do (with all its chunks in service and readable).
async fn stripe_disagrees(
    client: &Client,
    meta: &MetaClient,
    lun: u64,
    index: u64,
    shape: Shape,
    codec: &chunkserver::primary::codec::Codec,
) -> Option<String> {
    let Ok(ReadReply::Extent(Some(e))) = meta.read(ReadRequest::Extent { lun, index }).await else {
        return None;
    };
    if !e.chunks.iter().all(|c| matches!(c, ChunkState::Ok)) {
        return None;
    }
    let mut stripe = Vec::new();
    for (slot, node) in e.nodes.iter().enumerate() {
        let i = (1..=shape.chunkservers).find(|i| cs_name(*i) == node.as_str())?;
        let req = ChunkReadRequest {
            chunk: ChunkRef {
                lun,
                extent: index,
                index: slot as u8,
            },
            epoch: e.epoch,
            offset: 0,
            len: WINDOW_CHUNK_BYTES as u32,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let (_, d) = client
            .call::<ChunkRead>(cs_addr(i), node, &req, Bytes::new(), deadline)
            .await
            .ok()?;
        stripe.push(d.to_vec());
    }
    let k = usize::from(shape.k);
    let data: Vec<&[u8]> = stripe.iter().take(k).map(|d| &d[..]).collect();
    let parity = codec.parity(&data).ok()?;
    parity.iter().enumerate().find_map(|(p, par)| {
        let held = stripe.get(k + p)?;
        let at = par.iter().zip(held).position(|(a, b)| a != b)?;
        Some(format!(
            "extent {index}: parity chunk {} disagrees with the data at chunk offset {at} \
             after healing (epoch {}, {:?})",
            k + p,
            e.epoch,
            e.nodes
        ))
    })
}

/// Publishes whether every chunk of the windows' extents is in service.
async fn watch_health(meta: Arc<MetaClient>, lun: u64, sh: SharedRef) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mut healthy = true;
        for index in 0..GATEWAYS as u64 {
            match meta.read(ReadRequest::Extent { lun, index }).await {
                Ok(ReadReply::Extent(Some(e))) => {
                    healthy &= e.chunks.iter().all(|c| matches!(c, ChunkState::Ok));
                }
                // Not written yet: nothing to repair.
                Ok(ReadReply::Extent(None)) => {}
                _ => healthy = false,
            }
        }
        let mut s = sh.borrow_mut();
        let step = s.step;
        s.healthy_checked = healthy.then_some(step);
        match (healthy, s.healthy_since) {
            (true, None) => {
                s.healthy_since = Some(step);
                s.model.event(step, "every chunk in service");
            }
            (false, Some(_)) => {
                s.healthy_since = None;
                s.model.event(step, "a chunk is out of service");
            }
            _ => {}
        }
    }
}

async fn write(vol: &Volume, sh: &SharedRef, g: usize, first: u64, n: u64, stable: bool) {
    let (id, _start, data) = sh.borrow_mut().model.begin_write(first, n);
    let r = vol.write(first * BLOCK, Bytes::from(data), stable).await;
    let mut s = sh.borrow_mut();
    s.model.end_write(id, first, n, r.is_ok());
    let step = s.step;
    let what = match &r {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("failed: {e}"),
    };
    s.model.event(
        step,
        &format!("gw{g} write #{id} blocks {first}+{n} {what}"),
    );
}

async fn read(vol: &Volume, sh: &SharedRef, g: usize, first: u64, n: u64) {
    let start = sh.borrow_mut().model.now();
    sh.borrow_mut().model.report.reads += 1;
    let r = vol.read(first * BLOCK, n * BLOCK).await;
    let mut s = sh.borrow_mut();
    let step = s.step;
    match r {
        Ok(data) => {
            s.model.check_read(&format!("gw{g}"), first, start, &data);
            s.model
                .event(step, &format!("gw{g} read blocks {first}+{n} ok"));
        }
        Err(e) => s
            .model
            .event(step, &format!("gw{g} read blocks {first}+{n} failed: {e}")),
    }
}
