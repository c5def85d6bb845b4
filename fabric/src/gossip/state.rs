//! What gossip carries: versioned key/value state per node, the typed
//! records stored under well-known keys, and the read-only [`View`].
//!
//! Values are opaque bytes on the wire (so a node can carry keys that a
//! newer build added without understanding them); the typed records below
//! are postcard-encoded behind a one-byte record format version.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::identity::{NodeId, Role};
use crate::rpc::NodeAddrs;

/// Longest key, in bytes: `link/` plus a 63-byte node id fits.
pub const KEY_BYTES_MAX: usize = 80;
/// Longest value, in bytes. Small on purpose: gossip is for soft state
/// that every node holds for every other node (1,000 nodes × 64 keys).
pub const VALUE_BYTES_MAX: usize = 256;
/// Keys one node may publish (live keys plus tombstones). Bounds the size
/// of one node's full state, so that a full state always fits in one
/// message (see `message::MESSAGE_BYTES_MAX`).
pub const KEYS_PER_NODE_MAX: usize = 64;
/// Format byte in front of every typed record value.
pub const RECORD_FORMAT_V1: u8 = 1;

/// Well-known keys.
pub mod keys {
    pub const ROLE: &str = "role";
    pub const ADDRS: &str = "addrs";
    pub const SOFTWARE_VERSION: &str = "sw_version";
    pub const CAPACITY: &str = "capacity";
    pub const PERFORMANCE: &str = "perf";
    pub const LOCATION: &str = "location";
    /// `link/<peer node id>`: a [`super::LinkState`].
    pub const LINK_PREFIX: &str = "link/";
    /// [`super::IoCounters`] of the node's own I/O: chunk I/O served by a
    /// chunkserver, iSCSI I/O served by a gateway.
    pub const IO: &str = "io";
    /// `io/lun/<LUN id>`: [`super::IoCounters`] of one LUN as this gateway
    /// serves it (`gossip::io::LUN_IO_KEYS_MAX` LUNs at most).
    pub const IO_LUN_PREFIX: &str = "io/lun/";
}

/// A key. Shared (`Arc`) because a 1,000-node view holds a million copies
/// of the same few names.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Arc<str>);

impl Key {
    pub fn new(s: &str) -> Key {
        Key(Arc::from(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The link key for `peer`.
    pub fn link(peer: &NodeId) -> Key {
        Key::new(&format!("{}{}", keys::LINK_PREFIX, peer))
    }
    /// The I/O key of LUN `lun` (its catalogue id: short, and stable
    /// across renames).
    pub fn lun_io(lun: u64) -> Key {
        Key::new(&format!("{}{}", keys::IO_LUN_PREFIX, lun))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.len() > KEY_BYTES_MAX {
            return Err(de::Error::custom("gossip key empty or too long"));
        }
        Ok(Key(Arc::from(s)))
    }
}

/// A value: opaque bytes, shared (`Arc`) so that forwarding a value to
/// many peers and holding it in many views costs no copies.
#[derive(Clone, PartialEq, Eq)]
pub struct Value(Arc<[u8]>);

impl Value {
    pub fn new(bytes: &[u8]) -> Value {
        Value(Arc::from(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Encodes a typed record: format byte, then postcard.
    pub fn encode_record<T: Serialize>(record: &T) -> Result<Value, postcard::Error> {
        let mut out = vec![RECORD_FORMAT_V1];
        out.extend_from_slice(&postcard::to_stdvec(record)?);
        Ok(Value(Arc::from(out)))
    }

    /// Decodes a typed record; `None` if the format is unknown (a newer
    /// node) or the bytes do not decode.
    pub fn decode_record<T: for<'a> Deserialize<'a>>(&self) -> Option<T> {
        match self.0.split_first() {
            Some((&RECORD_FORMAT_V1, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({} bytes)", self.0.len())
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {VALUE_BYTES_MAX} bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
                if v.len() > VALUE_BYTES_MAX {
                    return Err(E::custom("gossip value too long"));
                }
                Ok(Value::new(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    if out.len() >= VALUE_BYTES_MAX {
                        return Err(de::Error::custom("gossip value too long"));
                    }
                    out.push(b);
                }
                Ok(Value::new(&out))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Storage capacity of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub bytes_total: u64,
    pub bytes_used: u64,
    /// Promised to writes in flight and moves, not yet used.
    pub bytes_reserved: u64,
    pub chunks: u64,
}

/// A configured quality-of-service class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum QosClass {
    #[default]
    Standard,
    /// Latency-sensitive: placement prefers these nodes for hot LUNs.
    Performance,
    /// Capacity-oriented (slow disks): placement avoids them for hot LUNs.
    Capacity,
}

/// Recent performance as the node itself measures it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Performance {
    pub read_latency_us_p50: u32,
    pub read_latency_us_p99: u32,
    pub write_latency_us_p50: u32,
    pub write_latency_us_p99: u32,
    pub iops: u32,
    pub bytes_per_s: u64,
    pub queue_depth: u32,
    pub qos_class: QosClass,
}

/// Cumulative I/O counters since the publishing process started, for
/// `weft top`. Cumulative rather than rates so that a reader gets exact
/// rates from any two samples however late gossip delivers them: rate =
/// Δcounter / Δ`uptime_ms`, both taken by the publisher. A restart (new
/// generation, or `uptime_ms` going back) starts the counters again.
///
/// Encoded size (postcard varints, with the format byte): ≤ 102 bytes,
/// about 40–50 while a node is busy; published at most once a second and
/// only while the counters move (`gossip::io`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounters {
    /// The publisher's monotonic clock, in ms since its counters started.
    pub uptime_ms: u64,
    pub read_ops: u64,
    pub read_bytes: u64,
    /// Sum of the latencies of `read_ops`, in µs (mean = Δ`read_us` / Δ`read_ops`).
    pub read_us: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    /// Sum of the latencies of `write_ops`, in µs.
    pub write_us: u64,
    /// Operations that are neither (flush, unmap, chunk create/delete…).
    pub other_ops: u64,
    /// Operations that failed (not counted above).
    pub errors: u64,
    /// 99th percentile of read latency over the publisher's last interval,
    /// in µs (0 when there was no read). Percentiles do not add up, so it
    /// is the publisher's, from its own histogram.
    pub read_us_p99: u32,
    /// 99th percentile of write latency over the last interval, in µs.
    pub write_us_p99: u32,
}

impl IoCounters {
    /// Whether any counter (not the clock or the percentiles) differs.
    pub fn counts_differ(&self, other: &IoCounters) -> bool {
        (
            self.read_ops,
            self.read_bytes,
            self.read_us,
            self.write_ops,
            self.write_bytes,
            self.write_us,
            self.other_ops,
            self.errors,
        ) != (
            other.read_ops,
            other.read_bytes,
            other.read_us,
            other.write_ops,
            other.write_bytes,
            other.write_us,
            other.other_ops,
            other.errors,
        )
    }
}

/// Where a node is: failure-domain labels from its config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub region: String,
    pub site: String,
    pub rack: String,
    pub host: String,
    /// Latitude and longitude in degrees, if configured.
    pub lat_long: Option<(f64, f64)>,
}

/// A summary of probes from the publishing node to one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    pub rtt_us_p50: u32,
    pub rtt_us_p99: u32,
    /// Probes lost (not answered within the probe timeout), per mille.
    pub loss_permille: u16,
    /// Probe payload bytes (both ways) per second of round trip: a lower
    /// bound of what the link carries, at the probe's size.
    pub throughput_bytes_per_s: u64,
    /// Probes the summary is made of.
    pub samples: u16,
}

/// A node's availability, as this node's failure detector sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Availability {
    Alive,
    /// phi crossed `PHI_SUSPECT`: heartbeats are late; do not place new
    /// data there, hedge reads sooner.
    Suspect,
    /// phi crossed `PHI_DEAD`: heartbeats stopped.
    Dead,
}

/// One node in the [`View`]: its published keys and its availability.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeState {
    /// Incarnation: a restarted node has a higher one and replaces the old.
    pub generation: u64,
    pub availability: Availability,
    /// Live keys with their versions (tombstones left out).
    pub keys: BTreeMap<Key, (u64, Value)>,
}

impl NodeState {
    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(&Key::new(key)).map(|(_, v)| v)
    }

    fn record<T: for<'a> Deserialize<'a>>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.decode_record())
    }

    pub fn role(&self) -> Option<Role> {
        self.record(keys::ROLE)
    }
    pub fn addrs(&self) -> Option<NodeAddrs> {
        self.record(keys::ADDRS)
    }
    pub fn software_version(&self) -> Option<String> {
        self.record(keys::SOFTWARE_VERSION)
    }
    pub fn capacity(&self) -> Option<Capacity> {
        self.record(keys::CAPACITY)
    }
    pub fn performance(&self) -> Option<Performance> {
        self.record(keys::PERFORMANCE)
    }
    pub fn location(&self) -> Option<Location> {
        self.record(keys::LOCATION)
    }
    /// The node's own I/O counters (see [`keys::IO`]).
    pub fn io(&self) -> Option<IoCounters> {
        self.record(keys::IO)
    }
    /// Per-LUN I/O counters this node (a gateway) publishes, by LUN id.
    pub fn lun_io(&self) -> BTreeMap<u64, IoCounters> {
        self.keys
            .iter()
            .filter_map(|(k, (_, v))| {
                let lun = k.as_str().strip_prefix(keys::IO_LUN_PREFIX)?;
                Some((lun.parse().ok()?, v.decode_record()?))
            })
            .collect()
    }
    /// The link from this node to `peer`.
    pub fn link(&self, peer: &NodeId) -> Option<LinkState> {
        self.keys
            .get(&Key::link(peer))
            .and_then(|(_, v)| v.decode_record())
    }
    /// Every link this node publishes, by peer.
    pub fn links(&self) -> BTreeMap<NodeId, LinkState> {
        self.keys
            .iter()
            .filter_map(|(k, (_, v))| {
                let peer = k.as_str().strip_prefix(keys::LINK_PREFIX)?;
                Some((NodeId::new(peer).ok()?, v.decode_record()?))
            })
            .collect()
    }
}

/// The whole cluster as one node sees it. Cheap to read: placement, the
/// balancer, `weft status` and gateways take it from a `watch` channel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub nodes: BTreeMap<NodeId, NodeState>,
}

impl View {
    pub fn availability(&self, node: &NodeId) -> Option<Availability> {
        self.nodes.get(node).map(|n| n.availability)
    }
    pub fn get(&self, node: &NodeId) -> Option<&NodeState> {
        self.nodes.get(node)
    }
    /// Nodes currently alive.
    pub fn alive(&self) -> impl Iterator<Item = (&NodeId, &NodeState)> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.availability == Availability::Alive)
    }
    /// The link from `from` to `to`, as `from` measured and published it.
    pub fn link(&self, from: &NodeId, to: &NodeId) -> Option<LinkState> {
        self.nodes.get(from).and_then(|n| n.link(to))
    }
}
