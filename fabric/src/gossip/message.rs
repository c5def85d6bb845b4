//! Gossip messages (the scuttlebutt exchange) and their limits.
//!
//! A round between an initiator A and a peer B, squeezed into two RPCs:
//!
//! 1. A → B `Syn { digest_A }` — per node A knows: generation, heartbeat,
//!    highest version.
//! 2. B → A `SynAck { digest_B, delta B→A }` — the reply to the `Syn`:
//!    what A lacks, and what B has (so A can answer in kind).
//! 3. A → B `Ack { delta A→B }` — a second request, with an empty reply.

use serde::{Deserialize, Serialize};

use super::state::{Key, Value, KEYS_PER_NODE_MAX};
use crate::identity::NodeId;

/// Format of [`Envelope`]; a peer with another format gets a clear error.
pub const GOSSIP_FORMAT_VERSION: u8 = 1;
/// Longest encoded gossip message (digest plus delta), in bytes. A full
/// digest of `NODES_MAX` nodes (≤ 96 KiB with the longest ids; ≈ 22 KiB
/// with 1,000 ten-byte ids) plus one node's full state (≤ 23 KiB) fits:
/// checked below.
pub const MESSAGE_BYTES_MAX: usize = 128 * 1024;
/// Nodes one view holds (and so digest entries and delta nodes one
/// message may carry).
pub const NODES_MAX: usize = 1024;

/// Upper bound of one digest entry: a 63-byte id with its length byte and
/// three 10-byte varints.
pub const DIGEST_ENTRY_BYTES_MAX: usize = 64 + 3 * 10;
/// Upper bound of one node's full state in a delta.
pub const NODE_STATE_BYTES_MAX: usize = 64
    + 6 * 10
    + KEYS_PER_NODE_MAX
        * (1 + super::state::KEY_BYTES_MAX + 10 + 1 + 2 + super::state::VALUE_BYTES_MAX);
/// Bytes of an envelope besides digest and delta (format, tags, counts).
pub const ENVELOPE_SLACK_BYTES: usize = 16;

const _: () = assert!(
    NODES_MAX * DIGEST_ENTRY_BYTES_MAX + NODE_STATE_BYTES_MAX + ENVELOPE_SLACK_BYTES
        <= MESSAGE_BYTES_MAX,
    "a full digest plus one full node state must fit in one message"
);

/// What the RPC carries, both ways.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub format: u8,
    /// `None` in the reply to an `Ack`.
    pub message: Option<Message>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Syn { digest: Digest },
    SynAck { digest: Digest, delta: Delta },
    Ack { delta: Delta },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    pub entries: Vec<DigestEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigestEntry {
    pub node: NodeId,
    pub generation: u64,
    pub heartbeat: u64,
    pub max_version: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub nodes: Vec<NodeDelta>,
}

/// Updates of one node's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDelta {
    pub node: NodeId,
    pub generation: u64,
    pub heartbeat: u64,
    /// The recipient's `max_version` the sender assumed: entries are every
    /// version in `(from_version, max_version]`, so a recipient that holds
    /// less than `from_version` must not apply them (it would skip some).
    pub from_version: u64,
    /// After applying, the recipient holds everything up to this version.
    pub max_version: u64,
    /// The entries are the node's whole live state up to `max_version`:
    /// drop keys not in it (their tombstones were collected).
    pub reset: bool,
    /// Versions up to this had tombstones collected (with `reset`).
    pub gc_floor: u64,
    /// In ascending version order.
    pub entries: Vec<Entry>,
}

/// One key at one version; `value: None` is a tombstone (deleted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: Key,
    pub version: u64,
    pub value: Option<Value>,
}

/// Why a gossip message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GossipError {
    #[error("gossip message of {bytes} bytes exceeds {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("gossip message has {count} {what}, more than {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("gossip format {0} not supported (this node reads {GOSSIP_FORMAT_VERSION})")]
    UnsupportedFormat(u8),
    #[error("{0} keys per node at most")]
    TooManyKeys(usize),
    #[error("key or value too long")]
    KeyOrValueTooLong,
    #[error("encoding: {0}")]
    Codec(String),
}

impl Message {
    /// Checks the counts a decoder cannot (sizes of keys and values are
    /// checked while decoding).
    pub fn validate(&self) -> Result<(), GossipError> {
        let (digest, delta) = match self {
            Message::Syn { digest } => (Some(digest), None),
            Message::SynAck { digest, delta } => (Some(digest), Some(delta)),
            Message::Ack { delta } => (None, Some(delta)),
        };
        let too_many = |what, count, max| {
            if count > max {
                Err(GossipError::TooMany { what, count, max })
            } else {
                Ok(())
            }
        };
        if let Some(d) = digest {
            too_many("digest entries", d.entries.len(), NODES_MAX)?;
        }
        if let Some(d) = delta {
            too_many("delta nodes", d.nodes.len(), NODES_MAX)?;
            for n in &d.nodes {
                too_many("keys in one node delta", n.entries.len(), KEYS_PER_NODE_MAX)?;
            }
        }
        Ok(())
    }

    /// Encoded size in bytes (postcard), as the RPC header carries it.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self)
    }
}

impl Envelope {
    pub fn new(message: Option<Message>) -> Envelope {
        Envelope {
            format: GOSSIP_FORMAT_VERSION,
            message,
        }
    }

    /// The message, if the format is ours and it is within limits.
    pub fn open(self) -> Result<Option<Message>, GossipError> {
        if self.format != GOSSIP_FORMAT_VERSION {
            return Err(GossipError::UnsupportedFormat(self.format));
        }
        if let Some(m) = &self.message {
            let bytes = m.encoded_len();
            if bytes > MESSAGE_BYTES_MAX {
                return Err(GossipError::TooLarge {
                    bytes,
                    max: MESSAGE_BYTES_MAX,
                });
            }
            m.validate()?;
        }
        Ok(self.message)
    }
}

/// Encoded (postcard) size of `value`, without building it.
pub fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    postcard::to_io(value, Count(0)).map_or(usize::MAX, |c| c.0)
}
