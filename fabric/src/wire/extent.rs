//! Extent messages: what the volume client (a gateway) asks of an
//! extent's primary, which orders writes, keeps parity in step, and serves
//! reads it has to reconstruct.
//!
//! Offsets here are logical bytes within the extent (`0..k × chunk_bytes`),
//! not chunk offsets: the primary maps them to stripe rows and chunks.

use serde::{Deserialize, Serialize};

use super::chunk::Durability;
use super::kinds::Kind;
use super::messages::Rpc;

/// Longest range of one extent request (its payload, both ways).
pub const EXTENT_IO_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// Which extent, at which epoch the caller knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExtentRef {
    pub lun: u64,
    pub extent: u64,
    pub epoch: u64,
}

/// Write the payload at `offset`. With `compare_len > 0` the payload is
/// `compare ‖ write` (each `compare_len` bytes): COMPARE AND WRITE, done
/// atomically under the primary's ordering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentWriteRequest {
    pub extent: ExtentRef,
    pub offset: u64,
    pub durability: Durability,
    pub compare_len: u32,
}

/// Read `len` bytes at `offset` through the primary: it reads each chunk
/// and reconstructs what a missing or corrupt chunk cannot give (and
/// rewrites corrupt blocks). The response payload is the data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentReadRequest {
    pub extent: ExtentRef,
    pub offset: u64,
    pub len: u32,
}

/// Deallocate `len` bytes at `offset`: whole stripe rows are punched on
/// every chunk, partial rows written as zeroes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentPunchRequest {
    pub extent: ExtentRef,
    pub offset: u64,
    pub len: u64,
    pub durability: Durability,
}

/// Make every chunk of the extent stable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentFlushRequest {
    pub extent: ExtentRef,
}

/// Ask a holder of the extent to take over as its primary: the caller
/// could not reach the primary. The holder checks that it cannot either,
/// records the old primary's chunk as missing (once its lease has lapsed)
/// and itself as primary, at a new epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentTakeoverRequest {
    pub extent: ExtentRef,
}

/// Ask the holder of an extent's chunk, once the extent's primary, which
/// rows its journal still holds records of: a primary that took over from
/// it catches its chunk up with those rows and the ones written since,
/// instead of rebuilding the whole chunk (which a single bad block
/// elsewhere in the stripe would stop for good).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentDoubtsRequest {
    pub extent: ExtentRef,
}

/// Most ranges in an [`ExtentDoubtsDone`]; a holder with more answers
/// [`extent_error::UNAVAILABLE`] and its chunk is rebuilt whole.
pub const EXTENT_DOUBTS_RANGES_MAX: usize = 4096;

/// The rows of the extent where the answering node's chunk may disagree
/// with the rest of its stripe, as `(offset, len)` extent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentDoubtsDone {
    pub ranges: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtentDone {
    /// The extent's epoch as the primary acted on it.
    pub epoch: u64,
}

/// Application error codes of the extent kinds.
pub mod extent_error {
    /// The caller's epoch is older than the primary's: re-read the extent.
    pub const STALE_EPOCH: u32 = 101;
    /// This node is not the extent's primary (any more): re-read it.
    pub const NOT_PRIMARY: u32 = 102;
    /// COMPARE AND WRITE found different data; the detail is the byte
    /// offset of the first difference.
    pub const MISCOMPARE: u32 = 103;
    /// Too many chunks unavailable to serve now: retry later.
    pub const UNAVAILABLE: u32 = 104;
    /// The request's fields contradict each other or a limit.
    pub const INVALID: u32 = 105;
    /// The extent is not allocated (nothing to do; reads are zeroes).
    pub const NOT_ALLOCATED: u32 = 106;
}

macro_rules! extent_rpc {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $req:ty, $resp:ty) => {
        $(#[$doc])*
        pub struct $name;
        impl Rpc for $name {
            const KIND: Kind = $kind;
            type Request = $req;
            type Response = $resp;
        }
    };
}

extent_rpc!(
    /// A write through the primary.
    ExtentWrite, Kind::EXTENT_WRITE, ExtentWriteRequest, ExtentDone
);
extent_rpc!(
    /// A read through the primary (degraded or repairing).
    ExtentRead, Kind::EXTENT_READ, ExtentReadRequest, ExtentDone
);
extent_rpc!(
    /// UNMAP through the primary.
    ExtentPunch, Kind::EXTENT_PUNCH, ExtentPunchRequest, ExtentDone
);
extent_rpc!(
    /// Make the extent's chunks stable.
    ExtentFlush, Kind::EXTENT_FLUSH, ExtentFlushRequest, ExtentDone
);

extent_rpc!(
    /// Replace an unreachable primary.
    ExtentTakeover, Kind::EXTENT_TAKEOVER, ExtentTakeoverRequest, ExtentDone
);

extent_rpc!(
    /// What an old primary's journal holds of an extent it no longer leads.
    ExtentDoubts, Kind::EXTENT_DOUBTS, ExtentDoubtsRequest, ExtentDoubtsDone
);

/// Decodes `header` as every extent message of `kind` (fuzzing).
pub(crate) fn decode_headers_for_fuzz(kind: Kind, header: &[u8]) {
    match kind {
        Kind::EXTENT_WRITE => {
            let _ = postcard::from_bytes::<ExtentWriteRequest>(header);
        }
        Kind::EXTENT_READ => {
            let _ = postcard::from_bytes::<ExtentReadRequest>(header);
        }
        Kind::EXTENT_PUNCH => {
            let _ = postcard::from_bytes::<ExtentPunchRequest>(header);
        }
        Kind::EXTENT_FLUSH => {
            let _ = postcard::from_bytes::<ExtentFlushRequest>(header);
        }
        Kind::EXTENT_TAKEOVER => {
            let _ = postcard::from_bytes::<ExtentTakeoverRequest>(header);
        }
        Kind::EXTENT_DOUBTS => {
            let _ = postcard::from_bytes::<ExtentDoubtsRequest>(header);
            let _ = postcard::from_bytes::<ExtentDoubtsDone>(header);
        }
        _ => return,
    }
    let _ = postcard::from_bytes::<ExtentDone>(header);
}
