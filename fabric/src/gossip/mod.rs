//! Gossip of node state: every node (chunkserver or gateway) publishes
//! versioned key/value state about itself — role, addresses, version,
//! capacity, performance, location, and the links to its peers — and
//! repeatedly reconciles with random peers (anti-entropy, scuttlebutt)
//! until every node holds the same [`View`]. A phi-accrual failure
//! detector over heartbeats says which nodes are alive.
//!
//! - [`core`]: the sans-IO state machine ([`core::Node`]); the same code
//!   runs in a node and in the simulation (`examples/gossip_sim.rs`).
//! - [`driver`]: the tokio driver over the fabric RPC (mTLS), with link
//!   probes.
//! - [`state`]: keys, values, typed records and the [`View`].
//! - [`message`]: the exchange (`Syn`, `SynAck`, `Ack`) and its limits.
//! - [`record`]: delta selection and application.
//! - [`phi`], [`link`]: failure detection and link summaries.
//! - [`io`]: I/O counters measured where I/O is served and published for
//!   `weft top`.
//!
//! See `docs/gossip.md` for the reasons and the numbers.

pub mod core;
pub mod driver;
pub mod io;
pub mod link;
pub mod message;
pub mod phi;
pub mod record;
pub mod state;

pub use self::core::{Config, Millis, Node};
pub use driver::{DriverConfig, Gossip, GossipRpc, Seed};
pub use io::{spawn_io_publisher, IoMeter, IoOp, IoPublisher};
pub use link::ProbeOutcome;
pub use message::{GossipError, Message};
pub use state::{
    Availability, Capacity, IoCounters, LinkState, Location, NodeState, Performance, QosClass, View,
};
