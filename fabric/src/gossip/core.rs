//! The sans-IO gossip node: a state machine that takes messages, probe
//! results and the time, and hands back messages to send and peers to
//! probe. No sockets, no clock, no global RNG: the tokio driver and the
//! simulation feed it the same way.

use std::collections::{BTreeMap, VecDeque};

use rand::RngCore;
use serde::Serialize;
use tracing::{debug, info, warn};

use super::link::{LinkSamples, ProbeOutcome};
use super::message::{
    encoded_len, Delta, Digest, GossipError, Message, NodeDelta, ENVELOPE_SLACK_BYTES,
    MESSAGE_BYTES_MAX, NODES_MAX,
};
use super::phi::{PhiAccrual, PhiConfig, PHI_DEAD, PHI_SUSPECT};
use super::record::{select_delta, NodeRecord, Versioned};
use super::state::{
    keys, Availability, Key, LinkState, NodeState, Value, View, KEYS_PER_NODE_MAX, KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
};
use crate::identity::NodeId;

/// Milliseconds on the driver's clock (monotonic, arbitrary origin).
pub type Millis = u64;

/// How often a node starts an exchange with a random peer.
pub const GOSSIP_INTERVAL_MS_DEFAULT: u64 = 200;
/// How long a dead node stays in the view (marked dead) before it is
/// forgotten: long enough for an operator and the balancer to see it.
pub const DEAD_GC_MS_DEFAULT: u64 = 3_600_000;
/// How long a deleted key's tombstone is kept before collection: far
/// longer than a value takes to spread (seconds), so resets are rare.
pub const TOMBSTONE_GC_MS_DEFAULT: u64 = 600_000;
/// How often each probed peer gets a probe.
pub const PROBE_INTERVAL_MS_DEFAULT: u64 = 2_000;
/// How often link summaries are republished (when they changed enough).
pub const LINK_PUBLISH_INTERVAL_MS_DEFAULT: u64 = 10_000;
/// Peers one node probes and publishes links to. Bounds keys per node
/// and probe traffic; in a large cluster each node sees a random subset.
pub const LINKS_MAX_DEFAULT: usize = 32;
/// Tombstones and forgotten nodes are collected every this many rounds
/// (a scan of every key of every node: not every round).
pub const GC_EVERY_ROUNDS: u64 = 16;
/// Gaps between heartbeats longer than this many intervals are not
/// failure-detector samples.
pub const PHI_GAP_INTERVALS_MAX: u64 = 10;

/// Configuration of one gossip node.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: NodeId,
    /// Incarnation: higher on every restart (the driver uses wall-clock
    /// ms at start), so a restarted node's fresh state replaces the old.
    pub generation: u64,
    /// Peers contacted to join, and now and then to heal partitions.
    pub seeds: Vec<NodeId>,
    pub gossip_interval_ms: u64,
    pub dead_gc_ms: u64,
    pub tombstone_gc_ms: u64,
    pub probe_interval_ms: u64,
    pub link_publish_interval_ms: u64,
    pub links_max: usize,
    /// Largest message this node sends (≤ `MESSAGE_BYTES_MAX`).
    pub message_bytes_max: usize,
    /// Learns the view without being part of it: this node leaves itself
    /// out of the digests and deltas it sends and probes no one, so peers
    /// never hear of it. For short-lived readers (the `weft` CLI): a
    /// member that exits would stay in every view as a dead node until
    /// `dead_gc_ms`, and be gossiped all that time.
    pub observer: bool,
}

impl Config {
    pub fn new(node_id: NodeId, generation: u64, seeds: Vec<NodeId>) -> Config {
        Config {
            node_id,
            generation,
            seeds,
            gossip_interval_ms: GOSSIP_INTERVAL_MS_DEFAULT,
            dead_gc_ms: DEAD_GC_MS_DEFAULT,
            tombstone_gc_ms: TOMBSTONE_GC_MS_DEFAULT,
            probe_interval_ms: PROBE_INTERVAL_MS_DEFAULT,
            link_publish_interval_ms: LINK_PUBLISH_INTERVAL_MS_DEFAULT,
            links_max: LINKS_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX,
            observer: false,
        }
    }

    fn phi(&self) -> PhiConfig {
        PhiConfig {
            prior_mean_ms: self.gossip_interval_ms,
            gap_ms_max: self.gossip_interval_ms * PHI_GAP_INTERVALS_MAX,
            mean_ms_min: self.gossip_interval_ms / 2,
        }
    }
}

/// What this node tracks about one node (itself included).
#[derive(Debug)]
struct Tracked {
    record: NodeRecord,
    detector: PhiAccrual,
    availability: Availability,
    dead_since_ms: Option<Millis>,
    /// Its heartbeat advanced while we watched. Until then a node is at
    /// best `Suspect`: state that merely arrives (a join, or a dead
    /// node's old state from a peer that has not forgotten it) is not a
    /// sign of life.
    heard_alive: bool,
}

/// A forgotten dead node: state about it that is no newer is ignored, so
/// peers that have not forgotten it yet cannot bring it back.
#[derive(Debug, Clone, Copy)]
struct Forgotten {
    generation: u64,
    heartbeat: u64,
    until_ms: Millis,
}

/// Counters, for tests, the simulation and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub messages_in: u64,
    pub messages_refused: u64,
    pub node_deltas_skipped: u64,
    pub nodes_over_limit: u64,
}

/// The gossip state machine of one node.
pub struct Node {
    cfg: Config,
    rng: Box<dyn RngCore + Send>,
    nodes: BTreeMap<NodeId, Tracked>,
    forgotten: BTreeMap<NodeId, Forgotten>,
    outbox: VecDeque<(NodeId, Message)>,
    probes: VecDeque<NodeId>,
    probe_set: Vec<NodeId>,
    links: BTreeMap<NodeId, LinkSamples>,
    next_gossip_ms: Millis,
    next_probe_ms: Millis,
    next_link_publish_ms: Millis,
    view_dirty: bool,
    rounds: u64,
    stats: Stats,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.cfg.node_id)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl Node {
    /// A node that starts gossiping at `now`. `rng` makes every random
    /// choice (peers, tie-breaks), so a seeded one replays exactly.
    pub fn new(cfg: Config, rng: Box<dyn RngCore + Send>, now: Millis) -> Node {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            cfg.node_id.clone(),
            Tracked {
                record: NodeRecord::new(cfg.generation),
                detector: PhiAccrual::new(now),
                availability: Availability::Alive,
                dead_since_ms: None,
                heard_alive: true,
            },
        );
        Node {
            rng,
            nodes,
            forgotten: BTreeMap::new(),
            outbox: VecDeque::new(),
            probes: VecDeque::new(),
            probe_set: Vec::new(),
            links: BTreeMap::new(),
            next_gossip_ms: now,
            next_probe_ms: now + cfg.probe_interval_ms,
            next_link_publish_ms: now + cfg.link_publish_interval_ms.min(cfg.probe_interval_ms),
            view_dirty: true,
            rounds: 0,
            stats: Stats::default(),
            cfg,
        }
    }

    pub fn id(&self) -> &NodeId {
        &self.cfg.node_id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    // ---- publishing this node's own state ----

    /// Sets one of this node's keys (a new version).
    pub fn set(&mut self, key: &str, value: Value) -> Result<(), GossipError> {
        if key.is_empty() || key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(GossipError::KeyOrValueTooLong);
        }
        self.put(Key::new(key), Some(value), 0)
    }

    /// Encodes and sets a typed record (see `state::keys`).
    pub fn set_record<T: Serialize>(&mut self, key: &str, record: &T) -> Result<(), GossipError> {
        let v = Value::encode_record(record).map_err(|e| GossipError::Codec(e.to_string()))?;
        self.set(key, v)
    }

    /// Deletes one of this node's keys (a tombstone, collected later).
    pub fn delete(&mut self, key: &str, now: Millis) -> Result<(), GossipError> {
        self.put(Key::new(key), None, now)
    }

    fn put(&mut self, key: Key, value: Option<Value>, now: Millis) -> Result<(), GossipError> {
        let Some(me) = self.nodes.get_mut(&self.cfg.node_id) else {
            return Ok(());
        };
        let rec = &mut me.record;
        match rec.kvs.get(&key) {
            None if value.is_none() => return Ok(()),
            None if rec.kvs.len() >= KEYS_PER_NODE_MAX => {
                return Err(GossipError::TooManyKeys(KEYS_PER_NODE_MAX))
            }
            Some(cur) if cur.value == value => return Ok(()),
            _ => {}
        }
        rec.max_version += 1;
        let version = rec.max_version;
        rec.kvs.insert(
            key,
            Versioned {
                version,
                value,
                deleted_at_ms: now,
            },
        );
        self.view_dirty = true;
        Ok(())
    }

    // ---- time ----

    /// When `tick` next has work to do.
    pub fn poll_timeout(&self) -> Millis {
        self.next_gossip_ms
            .min(self.next_probe_ms)
            .min(self.next_link_publish_ms)
    }

    /// Advances the node to `now`: starts a gossip round when one is due,
    /// updates availability, schedules probes, publishes links, collects
    /// garbage.
    pub fn tick(&mut self, now: Millis) {
        if now >= self.next_gossip_ms {
            self.next_gossip_ms = now + self.cfg.gossip_interval_ms;
            if let Some(me) = self.nodes.get_mut(&self.cfg.node_id) {
                me.record.heartbeat += 1;
            }
            self.update_availability(now);
            self.rounds += 1;
            if self.rounds.is_multiple_of(GC_EVERY_ROUNDS) {
                self.collect_garbage(now);
            }
            self.start_round();
        }
        if now >= self.next_probe_ms {
            self.next_probe_ms = now + self.cfg.probe_interval_ms;
            if !self.cfg.observer {
                self.schedule_probes();
            }
        }
        if now >= self.next_link_publish_ms {
            self.next_link_publish_ms = now + self.cfg.link_publish_interval_ms;
            if !self.cfg.observer {
                self.publish_links(now);
            }
        }
    }

    fn update_availability(&mut self, now: Millis) {
        let phi_cfg = self.cfg.phi();
        for (id, t) in self.nodes.iter_mut() {
            if *id == self.cfg.node_id {
                continue;
            }
            let phi = t.detector.phi(now, &phi_cfg);
            let a = if phi >= PHI_DEAD {
                Availability::Dead
            } else if phi >= PHI_SUSPECT || !t.heard_alive {
                Availability::Suspect
            } else {
                Availability::Alive
            };
            if a != t.availability {
                let level = if a == Availability::Alive {
                    "alive"
                } else {
                    "not alive"
                };
                debug!(node = %self.cfg.node_id, peer = %id, ?a, phi, level, "gossip: availability");
                if a == Availability::Dead {
                    info!(node = %self.cfg.node_id, peer = %id, phi, "gossip: peer marked dead");
                }
                t.availability = a;
                self.view_dirty = true;
            }
            match (a, t.dead_since_ms) {
                (Availability::Dead, None) => t.dead_since_ms = Some(now),
                (Availability::Dead, Some(_)) => {}
                _ => t.dead_since_ms = None,
            }
        }
    }

    fn collect_garbage(&mut self, now: Millis) {
        let dead_gc_ms = self.cfg.dead_gc_ms;
        let gone: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, t)| {
                t.dead_since_ms
                    .is_some_and(|d| now >= d.saturating_add(dead_gc_ms))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            if let Some(t) = self.nodes.remove(&id) {
                info!(node = %self.cfg.node_id, peer = %id, "gossip: dead peer forgotten");
                self.forgotten.insert(
                    id.clone(),
                    Forgotten {
                        generation: t.record.generation,
                        heartbeat: t.record.heartbeat,
                        until_ms: now.saturating_add(dead_gc_ms),
                    },
                );
                self.view_dirty = true;
            }
        }
        self.forgotten.retain(|_, f| now < f.until_ms);
        let tombstone_gc_ms = self.cfg.tombstone_gc_ms;
        for t in self.nodes.values_mut() {
            t.record.collect_tombstones(now, tombstone_gc_ms);
        }
    }

    /// Picks this round's peers (Cassandra's rules): one random live peer;
    /// a dead one with probability dead / (live + 1), to notice it coming
    /// back; a seed when we know fewer live peers than seeds — even if the
    /// live peer picked is a seed, else nodes that are all each other's
    /// seeds can split into groups that each know only their own, for
    /// ever — or, when no seed is picked yet, with probability seeds /
    /// (live + dead), so partitions heal through the seeds.
    fn start_round(&mut self) {
        let me = &self.cfg.node_id;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (id, t) in &self.nodes {
            if id == me {
                continue;
            }
            if t.availability == Availability::Dead {
                dead.push(id.clone());
            } else {
                live.push(id.clone());
            }
        }
        let seeds: Vec<NodeId> = self
            .cfg
            .seeds
            .iter()
            .filter(|s| *s != me)
            .cloned()
            .collect();
        let mut targets: Vec<NodeId> = Vec::new();
        if let Some(p) = pick(&mut *self.rng, &live) {
            targets.push(p);
        }
        if !dead.is_empty() && chance(&mut *self.rng, dead.len(), live.len() + 1) {
            if let Some(p) = pick(&mut *self.rng, &dead) {
                targets.push(p);
            }
        }
        let few_live = live.len() < seeds.len();
        let seed_due = few_live || chance(&mut *self.rng, seeds.len(), live.len() + dead.len());
        let has_seed = targets.iter().any(|t| seeds.contains(t));
        if seed_due && (few_live || !has_seed) {
            let others: Vec<NodeId> = seeds
                .iter()
                .filter(|s| !targets.contains(s))
                .cloned()
                .collect();
            if let Some(p) = pick(&mut *self.rng, &others) {
                targets.push(p);
            }
        }
        if targets.is_empty() {
            return;
        }
        let digest = self.digest();
        for t in targets {
            self.outbox.push_back((
                t,
                Message::Syn {
                    digest: digest.clone(),
                },
            ));
        }
    }

    /// Everything this node knows, one entry per node (an observer
    /// leaves itself out).
    pub fn digest(&self) -> Digest {
        Digest {
            entries: self
                .gossiped()
                .map(|(id, t)| t.record.digest_entry(id))
                .collect(),
        }
    }

    /// The nodes this node tells peers about: all it knows, but itself
    /// when it is an observer.
    fn gossiped(&self) -> impl Iterator<Item = (&NodeId, &Tracked)> {
        let hidden = self.cfg.observer.then_some(&self.cfg.node_id);
        self.nodes.iter().filter(move |(id, _)| Some(*id) != hidden)
    }

    /// The next message to send: a `Syn` that opens an exchange.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.outbox.pop_front()
    }

    // ---- messages ----

    /// Handles a message from `from` (as its certificate says), and
    /// returns the reply to send back to it, if any.
    pub fn handle_message(
        &mut self,
        from: &NodeId,
        msg: Message,
        now: Millis,
    ) -> Result<Option<Message>, GossipError> {
        self.stats.messages_in += 1;
        if let Err(e) = msg.validate() {
            self.stats.messages_refused += 1;
            warn!(node = %self.cfg.node_id, peer = %from, error = %e, "gossip: message refused");
            return Err(e);
        }
        match msg {
            Message::Syn { digest } => {
                let mine = self.digest();
                let head = encoded_len(&mine);
                let delta = self.delta_for(&digest, head);
                Ok(Some(Message::SynAck {
                    digest: mine,
                    delta,
                }))
            }
            Message::SynAck { digest, delta } => {
                self.apply_delta(from, delta, now);
                let delta = self.delta_for(&digest, 0);
                Ok(Some(Message::Ack { delta }))
            }
            Message::Ack { delta } => {
                self.apply_delta(from, delta, now);
                Ok(None)
            }
        }
    }

    fn delta_for(&mut self, peer_digest: &Digest, head_bytes: usize) -> Delta {
        let budget = self
            .cfg
            .message_bytes_max
            .min(MESSAGE_BYTES_MAX)
            .saturating_sub(head_bytes + ENVELOPE_SLACK_BYTES);
        let hidden = self.cfg.observer.then_some(&self.cfg.node_id);
        let records = self
            .nodes
            .iter()
            .filter(|(id, _)| Some(*id) != hidden)
            .map(|(id, t)| (id, &t.record));
        select_delta(records, peer_digest, budget, &mut *self.rng)
    }

    fn apply_delta(&mut self, from: &NodeId, delta: Delta, now: Millis) {
        let phi_cfg = self.cfg.phi();
        for nd in delta.nodes {
            self.apply_node_delta(from, nd, now, &phi_cfg);
        }
    }

    fn apply_node_delta(&mut self, from: &NodeId, nd: NodeDelta, now: Millis, phi: &PhiConfig) {
        if nd.node == self.cfg.node_id {
            if nd.generation > self.cfg.generation {
                warn!(node = %self.cfg.node_id, peer = %from, generation = nd.generation,
                    "gossip: a newer incarnation of this node id is gossiped: two nodes with one id?");
            }
            return;
        }
        // A forgotten node gossiped back by a peer that has not forgotten
        // it yet: no newer than we knew it, ignored; newer but the same
        // generation (that peer heard a later heartbeat than we did), taken
        // back as dead: only a heartbeat that advances while we watch, or
        // a new generation, is a sign of life.
        let mut back_as_dead = false;
        if let Some(f) = self.forgotten.get(&nd.node) {
            if nd.generation < f.generation
                || (nd.generation == f.generation && nd.heartbeat <= f.heartbeat)
            {
                return;
            }
            back_as_dead = nd.generation == f.generation;
            self.forgotten.remove(&nd.node);
        }
        let fresh = |nd: &NodeDelta, now| {
            let mut record = NodeRecord::new(nd.generation);
            record.apply(nd, now);
            Tracked {
                record,
                detector: PhiAccrual::new(now),
                availability: Availability::Suspect,
                dead_since_ms: None,
                heard_alive: false,
            }
        };
        match self.nodes.get_mut(&nd.node) {
            None => {
                if nd.from_version != 0 {
                    self.stats.node_deltas_skipped += 1;
                    return;
                }
                if self.nodes.len() >= NODES_MAX {
                    self.stats.nodes_over_limit += 1;
                    warn!(node = %self.cfg.node_id, peer = %nd.node, max = NODES_MAX,
                        "gossip: view full; node ignored");
                    return;
                }
                debug!(node = %self.cfg.node_id, peer = %nd.node, via = %from, "gossip: node discovered");
                let mut t = fresh(&nd, now);
                if back_as_dead {
                    t.availability = Availability::Dead;
                    t.dead_since_ms = Some(now);
                }
                self.nodes.insert(nd.node, t);
                self.view_dirty = true;
            }
            Some(t) if nd.generation < t.record.generation => {}
            Some(t) if nd.generation > t.record.generation => {
                if nd.from_version != 0 {
                    self.stats.node_deltas_skipped += 1;
                    return;
                }
                info!(node = %self.cfg.node_id, peer = %nd.node, generation = nd.generation,
                    "gossip: peer restarted");
                *t = fresh(&nd, now);
                self.view_dirty = true;
            }
            Some(t) => {
                let a = t.record.apply(&nd, now);
                if a.skipped {
                    self.stats.node_deltas_skipped += 1;
                }
                if a.heartbeat_advanced {
                    t.detector.heartbeat(now, phi);
                    t.heard_alive = true;
                    if t.availability != Availability::Alive {
                        t.availability = Availability::Alive;
                        t.dead_since_ms = None;
                        self.view_dirty = true;
                    }
                }
                if a.keys_changed {
                    self.view_dirty = true;
                }
            }
        }
    }

    // ---- link probes ----

    fn schedule_probes(&mut self) {
        let me = self.cfg.node_id.clone();
        let nodes = &self.nodes;
        self.probe_set.retain(|p| {
            nodes
                .get(p)
                .is_some_and(|t| t.availability != Availability::Dead)
        });
        let mut candidates: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, t)| {
                **id != me && t.availability != Availability::Dead && !self.probe_set.contains(id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        while self.probe_set.len() < self.cfg.links_max && !candidates.is_empty() {
            let i = (self.rng.next_u64() % candidates.len() as u64) as usize;
            self.probe_set.push(candidates.swap_remove(i));
        }
        self.probes.extend(self.probe_set.iter().cloned());
    }

    /// The next peer to probe (the driver sends a probe RPC with a payload
    /// and reports with [`Node::handle_probe`]).
    pub fn poll_probe(&mut self) -> Option<NodeId> {
        self.probes.pop_front()
    }

    /// Records a probe's outcome.
    pub fn handle_probe(&mut self, peer: &NodeId, outcome: ProbeOutcome, _now: Millis) {
        if !self.probe_set.contains(peer) {
            return;
        }
        self.links.entry(peer.clone()).or_default().push(outcome);
    }

    /// Publishes link summaries that changed enough (hysteresis: probe
    /// noise must not become a stream of versions), and deletes the links
    /// of peers no longer probed.
    fn publish_links(&mut self, now: Millis) {
        let probed = self.probe_set.clone();
        self.links.retain(|p, _| probed.contains(p));
        let me = self.cfg.node_id.clone();
        let published: Vec<(NodeId, Option<LinkState>)> = self
            .nodes
            .get(&me)
            .map(|t| {
                t.record
                    .kvs
                    .iter()
                    .filter_map(|(k, v)| {
                        let peer = k.as_str().strip_prefix(keys::LINK_PREFIX)?;
                        let state = v.value.as_ref().and_then(|v| v.decode_record());
                        Some((NodeId::new(peer).ok()?, state))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (peer, state) in &published {
            if state.is_some() && !self.links.contains_key(peer) {
                let _ = self.delete(Key::link(peer).as_str(), now);
            }
        }
        let updates: Vec<(NodeId, LinkState)> = self
            .links
            .iter()
            .filter_map(|(peer, samples)| {
                let new = samples.summary()?;
                let old = published
                    .iter()
                    .find(|(p, _)| p == peer)
                    .and_then(|(_, s)| *s);
                match old {
                    Some(old) if !super::link::changed_enough(&old, &new) => None,
                    _ => Some((peer.clone(), new)),
                }
            })
            .collect();
        for (peer, state) in updates {
            if let Err(e) = self.set_record(Key::link(&peer).as_str(), &state) {
                debug!(node = %me, %peer, error = %e, "gossip: link not published");
            }
        }
    }

    // ---- reading ----

    /// The whole view, if it changed since the last call (heartbeats alone
    /// do not count: they change every round).
    pub fn take_view_if_changed(&mut self) -> Option<View> {
        if !self.view_dirty {
            return None;
        }
        self.view_dirty = false;
        Some(self.view())
    }

    /// The whole view.
    pub fn view(&self) -> View {
        View {
            nodes: self
                .nodes
                .iter()
                .map(|(id, t)| {
                    let keys = t
                        .record
                        .kvs
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), (v.version, v.value.clone()?))))
                        .collect();
                    let state = NodeState {
                        generation: t.record.generation,
                        availability: t.availability,
                        keys,
                    };
                    (id.clone(), state)
                })
                .collect(),
        }
    }

    /// Cheap reads for the simulation: does this node know `node`, at
    /// which version, and how does it judge it.
    pub fn knows(&self, node: &NodeId) -> Option<(u64, Availability)> {
        self.nodes
            .get(node)
            .map(|t| (t.record.max_version, t.availability))
    }

    /// The value of `key` of `node`, as this node holds it.
    pub fn value_of(&self, node: &NodeId, key: &str) -> Option<Value> {
        self.nodes
            .get(node)?
            .record
            .kvs
            .get(&Key::new(key))?
            .value
            .clone()
    }

    /// Number of nodes in the view (this one included).
    pub fn known_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The version of `key` of `node`, as this node holds it.
    pub fn version_of(&self, node: &NodeId, key: &str) -> Option<u64> {
        self.nodes
            .get(node)?
            .record
            .kvs
            .get(&Key::new(key))
            .map(|v| v.version)
    }
}

fn pick(rng: &mut dyn RngCore, from: &[NodeId]) -> Option<NodeId> {
    if from.is_empty() {
        return None;
    }
    from.get((rng.next_u64() % from.len() as u64) as usize)
        .cloned()
}

/// True with probability `num / den` (true when `den` is 0 and `num` not).
fn chance(rng: &mut dyn RngCore, num: usize, den: usize) -> bool {
    if den == 0 {
        return num > 0;
    }
    (rng.next_u64() % den as u64) < num as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Nodes on a virtual network that delivers at once, stepped on a
    /// virtual clock; an exchange over a `cut` link (either way) fails.
    struct Net {
        nodes: Vec<Option<Node>>,
        cut: Vec<(NodeId, NodeId)>,
    }

    fn node(name: &str, generation: u64, dead_gc_ms: u64, now: Millis) -> Node {
        let mut cfg = Config::new(
            NodeId::new(name).unwrap(),
            generation,
            vec![NodeId::new("a").unwrap()],
        );
        cfg.gossip_interval_ms = 100;
        cfg.dead_gc_ms = dead_gc_ms;
        let rng = Box::new(rand::rngs::StdRng::seed_from_u64(
            generation * 31 + name.len() as u64,
        ));
        Node::new(cfg, rng, now)
    }

    impl Net {
        fn index(&self, id: &NodeId) -> Option<usize> {
            self.nodes
                .iter()
                .position(|n| n.as_ref().is_some_and(|n| n.id() == id))
        }

        fn run(&mut self, from: Millis, to: Millis) {
            let mut now = from;
            while now <= to {
                for i in 0..self.nodes.len() {
                    let mut out = Vec::new();
                    if let Some(n) = self.nodes[i].as_mut() {
                        n.tick(now);
                        while let Some(t) = n.poll_transmit() {
                            out.push(t);
                        }
                    }
                    for (to, syn) in out {
                        let from_id = self.nodes[i].as_ref().unwrap().id().clone();
                        if self.cut.iter().any(|(x, y)| {
                            (*x == from_id && *y == to) || (*x == to && *y == from_id)
                        }) {
                            continue;
                        }
                        let Some(j) = self.index(&to) else { continue };
                        let Some(ack) = self.nodes[j]
                            .as_mut()
                            .and_then(|n| n.handle_message(&from_id, syn, now).unwrap())
                            .and_then(|synack| {
                                self.nodes[i]
                                    .as_mut()
                                    .unwrap()
                                    .handle_message(&to, synack, now)
                                    .unwrap()
                            })
                        else {
                            continue;
                        };
                        let r = self.nodes[j]
                            .as_mut()
                            .unwrap()
                            .handle_message(&from_id, ack, now);
                        assert_eq!(r, Ok(None));
                    }
                }
                now += 50;
            }
        }

        fn view_of(&self, i: usize) -> View {
            self.nodes[i].as_ref().unwrap().view()
        }
    }

    #[test]
    fn dead_node_is_forgotten_and_stays_forgotten_until_it_returns() {
        let (a, c) = (NodeId::new("a").unwrap(), NodeId::new("c").unwrap());
        // a forgets dead nodes after 2 s, b only after 60 s: b keeps
        // gossiping c's old state to a, which must not bring it back.
        let mut net = Net {
            nodes: vec![
                Some(node("a", 1, 2_000, 0)),
                Some(node("b", 1, 60_000, 0)),
                Some(node("c", 1, 60_000, 0)),
            ],
            cut: vec![],
        };
        net.run(0, 2_000);
        assert_eq!(net.view_of(0).nodes.len(), 3);
        assert_eq!(net.view_of(1).availability(&a), Some(Availability::Alive));
        net.nodes[2] = None;
        let mut forgotten_seen = false;
        for t in (2_050..15_000).step_by(250) {
            net.run(t, t + 200);
            let at_a = net.view_of(0).availability(&c);
            if t > 8_000 {
                // b's stale state may bring c back at a, but only as dead.
                assert_ne!(at_a, Some(Availability::Alive), "c came back alive at {t}");
                assert_eq!(net.view_of(1).availability(&c), Some(Availability::Dead));
            }
            forgotten_seen |= at_a.is_none();
        }
        assert!(forgotten_seen, "a forgot c at some point");
        // c restarts (a new generation): back everywhere.
        net.nodes[2] = Some(node("c", 2, 60_000, 15_000));
        net.run(15_050, 17_000);
        for i in 0..2 {
            let v = net.view_of(i);
            assert_eq!(v.availability(&c), Some(Availability::Alive));
            assert_eq!(v.get(&c).map(|s| s.generation), Some(2));
        }
    }

    /// Four nodes, each a seed of the others (as `weft up` configures
    /// them), that first met in pairs — {a, c} and {b, d}: the first
    /// exchanges across were refused while the peers were still starting.
    /// Each knows one live peer, a seed, of three seeds: it must still
    /// call the other seeds, or the pairs never meet.
    #[test]
    fn nodes_that_are_all_seeds_do_not_stay_split() {
        let names = ["a", "b", "c", "d"];
        let ids: Vec<NodeId> = names.iter().map(|n| NodeId::new(*n).unwrap()).collect();
        let nodes = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut n = node(name, 1, 60_000, 0);
                n.cfg.seeds = ids
                    .iter()
                    .filter(|s| s.as_str() != *name)
                    .cloned()
                    .collect();
                n.rng = Box::new(rand::rngs::StdRng::seed_from_u64(i as u64 + 7));
                Some(n)
            })
            .collect();
        let across = |x: usize, y: usize| (ids[x].clone(), ids[y].clone());
        let mut net = Net {
            nodes,
            cut: vec![across(0, 1), across(0, 3), across(2, 1), across(2, 3)],
        };
        net.run(0, 1_000);
        assert_eq!(net.view_of(0).nodes.len(), 2, "a knows only c");
        assert_eq!(net.view_of(1).nodes.len(), 2, "b knows only d");
        net.cut.clear();
        net.run(1_050, 4_000);
        for (i, id) in ids.iter().enumerate() {
            let v = net.view_of(i);
            assert_eq!(v.nodes.len(), 4, "{id} knows {:?}", v.nodes.keys());
            assert_eq!(v.alive().count(), 4, "{id}");
        }
    }

    /// The CLI's node (an observer) learns every node's state but is
    /// never in a peer's view: nothing of it is left when it exits. A
    /// member in its place is seen by all and lingers, dead, once gone.
    #[test]
    fn an_observer_learns_everything_and_leaves_no_trace() {
        let (b, cli) = (NodeId::new("b").unwrap(), NodeId::new("cli").unwrap());
        for observer in [true, false] {
            let mut watcher = node("cli", 1, 60_000, 0);
            watcher.cfg.observer = observer;
            let mut net = Net {
                nodes: vec![
                    Some(node("a", 1, 60_000, 0)),
                    Some(node("b", 1, 60_000, 0)),
                    Some(watcher),
                ],
                cut: vec![],
            };
            net.nodes[1]
                .as_mut()
                .unwrap()
                .set("io", Value::new(b"42"))
                .unwrap();
            net.run(0, 2_000);
            let seen = net.view_of(2);
            assert_eq!(
                seen.nodes.len(),
                3,
                "observer {observer}: knows a, b, itself"
            );
            assert_eq!(
                seen.get(&b).and_then(|s| s.get("io")),
                Some(&Value::new(b"42"))
            );
            assert_eq!(seen.availability(&b), Some(Availability::Alive));
            // The CLI exits; peers gossip on.
            net.nodes[2] = None;
            net.run(2_050, 12_000);
            for i in 0..2 {
                let at_peer = net.view_of(i).availability(&cli);
                if observer {
                    assert_eq!(at_peer, None, "peer {i} heard of the observer");
                } else {
                    assert_eq!(at_peer, Some(Availability::Dead), "the control");
                }
            }
        }
    }

    #[test]
    fn deleted_keys_disappear_everywhere() {
        let b = NodeId::new("b").unwrap();
        let mut net = Net {
            nodes: vec![Some(node("a", 1, 60_000, 0)), Some(node("b", 1, 60_000, 0))],
            cut: vec![],
        };
        let nb = net.nodes[1].as_mut().unwrap();
        nb.set("x", Value::new(b"1")).unwrap();
        net.run(0, 1_000);
        assert!(net.view_of(0).get(&b).unwrap().get("x").is_some());
        net.nodes[1].as_mut().unwrap().delete("x", 1_000).unwrap();
        net.run(1_050, 2_000);
        assert!(net.view_of(0).get(&b).unwrap().get("x").is_none());
    }
}
