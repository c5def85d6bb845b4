//! The tokio driver: runs a [`Node`] over the fabric RPC (mTLS).
//!
//! Every `gossip_interval_ms` the core picks a peer; the driver calls it
//! with `Syn` (the reply is `SynAck`) and then sends `Ack`: scuttlebutt's
//! three-way exchange as two request/response calls. Incoming calls are
//! answered by the handler [`Gossip::register`] installs. Link probes are
//! `Ping` calls with an echoed payload: RTT, loss (no answer within
//! `probe_timeout_ms`) and throughput at the probe's size.
//!
//! The core is behind a `parking_lot::Mutex` held only for synchronous
//! calls, never across an await.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::debug;

use super::core::{Config, Millis, Node};
use super::link::ProbeOutcome;
use super::message::{Envelope, GossipError, Message};
use super::state::{keys, Capacity, Location, Performance, View};
use crate::identity::{NodeId, Role};
use crate::rpc::{Client, NodeAddrs, Router, RouterError, RpcError};
use crate::wire::{Kind, Ping, PingRequest, Rpc};

/// Deadline of one gossip call.
pub const GOSSIP_RPC_DEADLINE_MS_DEFAULT: u64 = 1_000;
/// A probe not answered within this is lost.
pub const PROBE_TIMEOUT_MS_DEFAULT: u64 = 1_000;
/// Probe payload, echoed back: big enough that throughput means
/// something, small enough to cost nothing (32 peers × 32 KiB / 2 s).
pub const PROBE_PAYLOAD_BYTES_DEFAULT: usize = 16 * 1024;
/// Exchanges this node has open at once (a slow peer must not let them
/// pile up).
pub const EXCHANGES_INFLIGHT_MAX: usize = 4;

/// The gossip RPC: an [`Envelope`] each way.
pub struct GossipRpc;

impl Rpc for GossipRpc {
    const KIND: Kind = Kind::GOSSIP;
    type Request = Envelope;
    type Response = Envelope;
}

/// A peer to contact first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub node: NodeId,
    pub addr: SocketAddr,
}

/// Configuration of the driver around the core.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub core: Config,
    pub seeds: Vec<Seed>,
    /// Fabric addresses to use instead of the gossiped ones (NAT; tests
    /// put a fault-injecting proxy in one link this way).
    pub addr_overrides: HashMap<NodeId, SocketAddr>,
    pub rpc_deadline_ms: u64,
    pub probe_timeout_ms: u64,
    pub probe_payload_bytes: usize,
}

impl DriverConfig {
    /// Defaults, with this start's generation taken from the wall clock.
    pub fn new(node_id: NodeId, seeds: Vec<Seed>) -> DriverConfig {
        let generation = crate::env::unix_now_ms().max(1);
        DriverConfig {
            core: Config::new(
                node_id,
                generation,
                seeds.iter().map(|s| s.node.clone()).collect(),
            ),
            seeds,
            addr_overrides: HashMap::new(),
            rpc_deadline_ms: GOSSIP_RPC_DEADLINE_MS_DEFAULT,
            probe_timeout_ms: PROBE_TIMEOUT_MS_DEFAULT,
            probe_payload_bytes: PROBE_PAYLOAD_BYTES_DEFAULT,
        }
    }

    /// An observer's config (`core::Config::observer`): it learns the
    /// view through `seeds` and never appears in it. Start it with
    /// [`Gossip::start_observing`]; it needs no listener.
    pub fn observer(node_id: NodeId, seeds: Vec<Seed>) -> DriverConfig {
        let mut cfg = DriverConfig::new(node_id, seeds);
        cfg.core.observer = true;
        cfg
    }
}

struct Shared {
    node: Mutex<Node>,
    origin: Instant,
    view_tx: watch::Sender<Arc<View>>,
    cfg: DriverConfig,
}

impl Shared {
    fn now(&self) -> Millis {
        self.origin.elapsed().as_millis() as Millis
    }

    /// Sends the view to watchers if it changed.
    fn publish_view(&self) {
        let view = self.node.lock().take_view_if_changed();
        if let Some(v) = view {
            self.view_tx.send_replace(Arc::new(v));
        }
    }

    fn addr_of(&self, peer: &NodeId) -> Option<SocketAddr> {
        if let Some(a) = self.cfg.addr_overrides.get(peer) {
            return Some(*a);
        }
        let gossiped = self
            .node
            .lock()
            .value_of(peer, keys::ADDRS)
            .and_then(|v| v.decode_record::<NodeAddrs>());
        gossiped.map(|a| a.fabric).or_else(|| {
            self.cfg
                .seeds
                .iter()
                .find(|s| &s.node == peer)
                .map(|s| s.addr)
        })
    }
}

/// A node's gossip: the core, its RPC handler and its driver task.
/// Dropping it stops the driver (the node then falls silent and is
/// marked dead by the others).
pub struct Gossip {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Gossip {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().take() {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("node", &self.shared.cfg.core.node_id)
            .finish()
    }
}

impl Gossip {
    /// A gossip node publishing `role` and `software_version`. Not yet
    /// running: [`Gossip::register`] its handler, bind the server, then
    /// [`Gossip::start`].
    pub fn new(
        cfg: DriverConfig,
        role: Role,
        software_version: &str,
    ) -> Result<Gossip, GossipError> {
        let rng = Box::new(rand::rngs::StdRng::seed_from_u64(crate::env::random_u64()));
        let mut node = Node::new(cfg.core.clone(), rng, 0);
        node.set_record(keys::ROLE, &role)?;
        node.set_record(keys::SOFTWARE_VERSION, &software_version.to_owned())?;
        let view = node.view();
        let (view_tx, _) = watch::channel(Arc::new(view));
        Ok(Gossip {
            shared: Arc::new(Shared {
                node: Mutex::new(node),
                origin: Instant::now(),
                view_tx,
                cfg,
            }),
            task: Mutex::new(None),
        })
    }

    /// Installs the handler that answers peers' exchanges.
    pub fn register(&self, router: &mut Router) -> Result<(), RouterError> {
        let shared = self.shared.clone();
        router.register::<GossipRpc, _, _>(move |peer, env, _payload| {
            let shared = shared.clone();
            async move {
                let bad = |e: GossipError| RpcError::BadRequest(e.to_string());
                let Some(msg) = env.open().map_err(bad)? else {
                    return Ok((Envelope::new(None), Bytes::new()));
                };
                let now = shared.now();
                let reply = shared
                    .node
                    .lock()
                    .handle_message(&peer.node_id, msg, now)
                    .map_err(bad)?;
                shared.publish_view();
                Ok((Envelope::new(reply), Bytes::new()))
            }
        })
    }

    /// Publishes this node's addresses and starts the driver task.
    pub fn start(&self, client: Client, addrs: NodeAddrs) -> Result<(), GossipError> {
        self.set_record(keys::ADDRS, &addrs)?;
        let task = tokio::spawn(drive(self.shared.clone(), client));
        if let Some(old) = self.task.lock().replace(task) {
            old.abort();
        }
        Ok(())
    }

    /// Starts the driver of an observer ([`DriverConfig::observer`]): it
    /// opens every exchange itself, so no peer ever calls it and it needs
    /// no handler, listener or published address.
    pub fn start_observing(&self, client: Client) {
        let task = tokio::spawn(drive(self.shared.clone(), client));
        if let Some(old) = self.task.lock().replace(task) {
            old.abort();
        }
    }

    /// The view, updated whenever it changes (not on heartbeats alone).
    pub fn watch(&self) -> watch::Receiver<Arc<View>> {
        self.shared.view_tx.subscribe()
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.shared.view_tx.borrow().clone()
    }

    pub fn node_id(&self) -> &NodeId {
        &self.shared.cfg.core.node_id
    }

    /// Publishes a typed record under `key` (see `state::keys`).
    pub fn set_record<T: Serialize>(&self, key: &str, record: &T) -> Result<(), GossipError> {
        self.shared.node.lock().set_record(key, record)?;
        self.shared.publish_view();
        Ok(())
    }

    /// Deletes one of this node's keys (a tombstone that spreads like a
    /// value, collected after `tombstone_gc_ms`).
    pub fn delete(&self, key: &str) -> Result<(), GossipError> {
        let now = self.shared.now();
        self.shared.node.lock().delete(key, now)?;
        self.shared.publish_view();
        Ok(())
    }

    pub fn set_capacity(&self, c: &Capacity) -> Result<(), GossipError> {
        self.set_record(keys::CAPACITY, c)
    }
    pub fn set_performance(&self, p: &Performance) -> Result<(), GossipError> {
        self.set_record(keys::PERFORMANCE, p)
    }
    pub fn set_location(&self, l: &Location) -> Result<(), GossipError> {
        self.set_record(keys::LOCATION, l)
    }

    /// Core counters.
    pub fn stats(&self) -> super::core::Stats {
        self.shared.node.lock().stats()
    }
}

async fn drive(shared: Arc<Shared>, client: Client) {
    let mut exchanges: JoinSet<()> = JoinSet::new();
    let mut probes: JoinSet<()> = JoinSet::new();
    let payload = Bytes::from(vec![0x5a; shared.cfg.probe_payload_bytes]);
    loop {
        while exchanges.try_join_next().is_some() {}
        while probes.try_join_next().is_some() {}
        let now = shared.now();
        let (syns, targets, wake) = {
            let mut node = shared.node.lock();
            node.tick(now);
            let mut syns = Vec::new();
            while let Some(t) = node.poll_transmit() {
                syns.push(t);
            }
            let mut targets = Vec::new();
            while let Some(p) = node.poll_probe() {
                targets.push(p);
            }
            (syns, targets, node.poll_timeout())
        };
        shared.publish_view();
        for (peer, syn) in syns {
            if exchanges.len() >= EXCHANGES_INFLIGHT_MAX {
                debug!(%peer, "gossip: exchanges in flight at their limit; round skipped");
                continue;
            }
            let Some(addr) = shared.addr_of(&peer) else {
                continue;
            };
            exchanges.spawn(exchange(shared.clone(), client.clone(), peer, addr, syn));
        }
        for peer in targets {
            if probes.len() >= shared.cfg.core.links_max.max(1) {
                break;
            }
            let Some(addr) = shared.addr_of(&peer) else {
                continue;
            };
            probes.spawn(probe(
                shared.clone(),
                client.clone(),
                peer,
                addr,
                payload.clone(),
            ));
        }
        let wake = shared.origin + Duration::from_millis(wake.max(now + 1));
        tokio::time::sleep_until(wake).await;
    }
}

async fn exchange(
    shared: Arc<Shared>,
    client: Client,
    peer: NodeId,
    addr: SocketAddr,
    syn: Message,
) {
    let deadline = || Instant::now() + Duration::from_millis(shared.cfg.rpc_deadline_ms);
    let reply = client
        .call::<GossipRpc>(
            addr,
            &peer,
            &Envelope::new(Some(syn)),
            Bytes::new(),
            deadline(),
        )
        .await;
    let msg = match reply.map(|(env, _)| env.open()) {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "gossip: bad reply");
            return;
        }
        Err(e) => {
            debug!(%peer, %addr, error = %e, "gossip: exchange failed");
            return;
        }
    };
    let now = shared.now();
    let ack = shared.node.lock().handle_message(&peer, msg, now);
    shared.publish_view();
    if let Ok(Some(ack)) = ack {
        if let Err(e) = client
            .call::<GossipRpc>(
                addr,
                &peer,
                &Envelope::new(Some(ack)),
                Bytes::new(),
                deadline(),
            )
            .await
        {
            debug!(%peer, %addr, error = %e, "gossip: ack failed");
        }
    }
}

async fn probe(
    shared: Arc<Shared>,
    client: Client,
    peer: NodeId,
    addr: SocketAddr,
    payload: Bytes,
) {
    let started = Instant::now();
    let deadline = started + Duration::from_millis(shared.cfg.probe_timeout_ms);
    let bytes = payload.len();
    let outcome = match client
        .call::<Ping>(addr, &peer, &PingRequest { echo: true }, payload, deadline)
        .await
    {
        Ok((_, echoed)) if echoed.len() == bytes => ProbeOutcome::Answered {
            rtt_us: u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX),
            payload_bytes: u32::try_from(bytes).unwrap_or(u32::MAX),
        },
        Ok(_) => ProbeOutcome::Lost,
        Err(e) => {
            debug!(%peer, %addr, error = %e, "gossip: probe lost");
            ProbeOutcome::Lost
        }
    };
    let now = shared.now();
    shared.node.lock().handle_probe(&peer, outcome, now);
}
