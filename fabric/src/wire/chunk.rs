//! Chunk data messages: what a chunkserver serves to extent primaries,
//! gateways (the volume client) and operators.
//!
//! They live in `fabric` rather than in `chunkserver` because both sides
//! need them: the chunkserver serves them, and the volume client (a
//! `fabric` module) calls them. The kind numbers and who may send each are
//! rows of [`super::KIND_TABLE`] (`0x0300..=0x03ff`).
//!
//! Bulk data never goes in a header: a read answers with the bytes as the
//! response payload, a write carries them as the request payload and gets
//! `old ⊕ new` back as the response payload.
//!
//! Versioning: postcard is not self-describing, so these structs change only
//! with a wire-version bump or a new kind (see `messages.rs`).

use serde::{Deserialize, Serialize};

use super::kinds::Kind;
use super::messages::Rpc;

/// Longest range one read, write or parity delta may name, in bytes. It
/// bounds what one request makes a server buffer (the data rides in the
/// payload both ways); a 1 MiB stripe-unit write fits with room to batch.
pub const CHUNK_IO_BYTES_MAX: u32 = 4 * 1024 * 1024;

/// Chunks in one [`ChunkListResponse`] page: keeps the header well under
/// `HEADER_BYTES_MAX` (a descriptor is at most ~60 bytes of postcard).
pub const CHUNK_LIST_PAGE_MAX: u32 = 4096;

/// Bad blocks named in one [`ChunkScrubResponse`]; more are counted in
/// `bad_blocks_total` but not listed (the header must stay bounded).
pub const SCRUB_BAD_BLOCKS_LISTED_MAX: usize = 16 * 1024;

/// One node's share of one extent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkRef {
    pub lun: u64,
    pub extent: u64,
    /// Position in the stripe (data chunks first, then parity).
    pub index: u8,
}

impl std::fmt::Display for ChunkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.lun, self.extent, self.index)
    }
}

/// How durable a mutation must be before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Durability {
    /// In the page cache: survives the process dying, not the machine.
    #[default]
    Buffered,
    /// On stable storage (FUA): survives power loss.
    Stable,
}

/// What a chunkserver reports about one chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDescriptor {
    pub chunk: ChunkRef,
    pub size_bytes: u64,
    pub epoch: u64,
    /// Bumped by every mutation.
    pub version: u64,
    /// The store's state name (e.g. `"Clean"`), for operators.
    pub state: String,
    /// Bytes actually allocated on disk (chunks are thin).
    pub allocated_bytes: u64,
}

/// An answer with nothing to say beyond success.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// Read `len` bytes at `offset`; the response payload is the data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReadRequest {
    pub chunk: ChunkRef,
    pub epoch: u64,
    pub offset: u64,
    pub len: u32,
}

/// Write the request payload at `offset`; the response payload is
/// `old ⊕ new` of that range (the delta a parity update needs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkWriteRequest {
    pub chunk: ChunkRef,
    pub epoch: u64,
    pub offset: u64,
    pub durability: Durability,
}

/// XOR the request payload (a parity delta) into the range at `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkApplyDeltaRequest {
    pub chunk: ChunkRef,
    pub epoch: u64,
    pub offset: u64,
    pub durability: Durability,
}

/// Deallocate a range (it then reads as zeros).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPunchRequest {
    pub chunk: ChunkRef,
    pub epoch: u64,
    pub offset: u64,
    pub len: u64,
    pub durability: Durability,
}

/// Create an empty (all holes) chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkCreateRequest {
    pub chunk: ChunkRef,
    pub size_bytes: u64,
    pub epoch: u64,
}

/// Delete a chunk; refused if the chunk is at a newer epoch than named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDeleteRequest {
    pub chunk: ChunkRef,
    pub epoch: u64,
}

/// Raise a chunk's epoch (a new placement or lease); never lowers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSetEpochRequest {
    pub chunk: ChunkRef,
    pub epoch: u64,
}

/// Stream a whole chunk out (repair, migration): the response payload is
/// its contents, holes as zeros, every block checksum-verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFetchRequest {
    pub chunk: ChunkRef,
    pub epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFetchResponse {
    pub descriptor: ChunkDescriptor,
}

/// Stream a whole chunk in (the payload), replacing any copy held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPutRequest {
    pub chunk: ChunkRef,
    pub size_bytes: u64,
    pub epoch: u64,
    pub durability: Durability,
}

/// One page of the chunks held, in `ChunkRef` order, starting after
/// `after` (the last chunk of the previous page).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkListRequest {
    pub after: Option<ChunkRef>,
    /// At most [`CHUNK_LIST_PAGE_MAX`]; 0 means that.
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkListResponse {
    pub chunks: Vec<ChunkDescriptor>,
    /// More chunks follow the last one listed.
    pub more: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStatsRequest {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStatsResponse {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Below this much free space no new chunk is accepted.
    pub reserve_bytes: u64,
    pub chunks: u64,
    /// Checksum mismatches seen since the process started.
    pub checksum_errors: u64,
    /// The reserve is reached: new chunks are refused.
    pub full: bool,
}

/// Make every acknowledged buffered mutation stable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFlushRequest {}

/// A flush done, and the store's incarnation: raised each time the store
/// opens after losing its page cache (an unclean shutdown in another boot
/// of the kernel: a power loss, a kernel crash). A caller that sees it
/// change knows that buffered writes it sent before may be gone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushDone {
    pub incarnation: u64,
}

/// Run one scrub pass over every chunk now, verifying at most
/// `blocks_per_sec` 4 KiB blocks a second (0: unpaced), and report what it
/// found. The pass must finish within the call's deadline.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkScrubRequest {
    pub blocks_per_sec: u64,
}

/// Blocks of one chunk whose checksum did not match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadBlocks {
    pub chunk: ChunkRef,
    /// Block numbers (4 KiB blocks from the start of the chunk).
    pub blocks: Vec<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkScrubResponse {
    pub checked_blocks: u64,
    pub bad_blocks_total: u64,
    /// At most [`SCRUB_BAD_BLOCKS_LISTED_MAX`] blocks in all.
    pub bad: Vec<BadBlocks>,
}

/// Application error codes (`ErrorBody::app_code` with code
/// `APPLICATION`) of the chunk kinds: one per chunk-store failure, so a
/// caller can act on them (read parity on `CHECKSUM`, refresh placement on
/// `STALE_EPOCH`, place elsewhere on `FULL`). The detail text names the
/// numbers.
pub mod chunk_error {
    pub const NOT_FOUND: u32 = 1;
    pub const EXISTS: u32 = 2;
    /// The request's epoch is older than the chunk's.
    pub const STALE_EPOCH: u32 = 3;
    /// The range runs past the end of the chunk.
    pub const OUT_OF_RANGE: u32 = 4;
    /// Offset or length not a multiple of the 4 KiB block.
    pub const MISALIGNED: u32 = 5;
    /// Stored data failed its checksum: rebuild it from the stripe.
    pub const CHECKSUM: u32 = 6;
    /// The node is at its reserve: no new chunks.
    pub const FULL: u32 = 7;
    /// A length over a limit (`CHUNK_IO_BYTES_MAX`, chunk size, payload).
    pub const TOO_LARGE: u32 = 8;
    /// The local disk failed.
    pub const IO: u32 = 9;
    /// The local index failed.
    pub const INDEX: u32 = 10;
    /// Fields of the request contradict each other (e.g. a payload with a
    /// length other than the one implied).
    pub const INVALID: u32 = 11;
    /// This node's lease from the metadata has lapsed: it serves no
    /// gateway until renewed (another node may have replaced its chunks).
    pub const NO_LEASE: u32 = 12;
}

macro_rules! chunk_rpc {
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

chunk_rpc!(
    /// Read a range of a chunk.
    ChunkRead, Kind::CHUNK_READ, ChunkReadRequest, Done
);
chunk_rpc!(
    /// Write a range; answers `old ⊕ new`.
    ChunkWrite, Kind::CHUNK_WRITE, ChunkWriteRequest, Done
);
chunk_rpc!(
    /// Write a range without the delta (and without reading old data).
    ChunkOverwrite, Kind::CHUNK_OVERWRITE, ChunkWriteRequest, Done
);
chunk_rpc!(
    /// Apply a parity delta.
    ChunkApplyDelta, Kind::CHUNK_APPLY_DELTA, ChunkApplyDeltaRequest, Done
);
chunk_rpc!(
    /// Punch a range.
    ChunkPunch, Kind::CHUNK_PUNCH, ChunkPunchRequest, Done
);
chunk_rpc!(
    /// Create a chunk.
    ChunkCreate, Kind::CHUNK_CREATE, ChunkCreateRequest, Done
);
chunk_rpc!(
    /// Delete a chunk.
    ChunkDelete, Kind::CHUNK_DELETE, ChunkDeleteRequest, Done
);
chunk_rpc!(
    /// Raise a chunk's epoch.
    ChunkSetEpoch, Kind::CHUNK_SET_EPOCH, ChunkSetEpochRequest, Done
);
chunk_rpc!(
    /// Stream a whole chunk out.
    ChunkFetch, Kind::CHUNK_FETCH, ChunkFetchRequest, ChunkFetchResponse
);
chunk_rpc!(
    /// Stream a whole chunk in.
    ChunkPut, Kind::CHUNK_PUT, ChunkPutRequest, Done
);
chunk_rpc!(
    /// List chunks, a page at a time.
    ChunkList, Kind::CHUNK_LIST, ChunkListRequest, ChunkListResponse
);
chunk_rpc!(
    /// Capacity and counters.
    ChunkStats, Kind::CHUNK_STATS, ChunkStatsRequest, ChunkStatsResponse
);
chunk_rpc!(
    /// Make buffered mutations stable.
    ChunkFlush, Kind::CHUNK_FLUSH, ChunkFlushRequest, FlushDone
);
chunk_rpc!(
    /// Scrub every chunk now.
    ChunkScrub, Kind::CHUNK_SCRUB, ChunkScrubRequest, ChunkScrubResponse
);

/// Decodes `header` as the request and the response of chunk kind `kind`
/// (ignoring the results): the fuzz decoder's way to reach them.
pub(crate) fn decode_headers_for_fuzz(kind: Kind, header: &[u8]) {
    fn both<R: Rpc>(header: &[u8]) {
        let _ = postcard::from_bytes::<R::Request>(header);
        let _ = postcard::from_bytes::<R::Response>(header);
    }
    match kind {
        Kind::CHUNK_READ => both::<ChunkRead>(header),
        Kind::CHUNK_WRITE => both::<ChunkWrite>(header),
        Kind::CHUNK_APPLY_DELTA => both::<ChunkApplyDelta>(header),
        Kind::CHUNK_PUNCH => both::<ChunkPunch>(header),
        Kind::CHUNK_CREATE => both::<ChunkCreate>(header),
        Kind::CHUNK_DELETE => both::<ChunkDelete>(header),
        Kind::CHUNK_SET_EPOCH => both::<ChunkSetEpoch>(header),
        Kind::CHUNK_FETCH => both::<ChunkFetch>(header),
        Kind::CHUNK_PUT => both::<ChunkPut>(header),
        Kind::CHUNK_LIST => both::<ChunkList>(header),
        Kind::CHUNK_STATS => both::<ChunkStats>(header),
        Kind::CHUNK_FLUSH => both::<ChunkFlush>(header),
        Kind::CHUNK_SCRUB => both::<ChunkScrub>(header),
        Kind::CHUNK_OVERWRITE => both::<ChunkOverwrite>(header),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_kind_has_a_row_and_round_trips() {
        let c = ChunkRef {
            lun: 7,
            extent: u64::MAX,
            index: 3,
        };
        let req = ChunkWriteRequest {
            chunk: c,
            epoch: 9,
            offset: 4096,
            durability: Durability::Stable,
        };
        let bytes = postcard::to_stdvec(&req).unwrap();
        assert_eq!(
            postcard::from_bytes::<ChunkWriteRequest>(&bytes).unwrap(),
            req
        );
        for k in 0x0300..=0x030c {
            assert!(super::super::spec(Kind(k)).is_some(), "{k:#x}");
            // Garbage and truncation never panic.
            decode_headers_for_fuzz(Kind(k), &bytes[..bytes.len() / 2]);
            decode_headers_for_fuzz(Kind(k), &[0xff; 40]);
        }
        assert_eq!(c.to_string(), format!("7/{}/3", u64::MAX));
    }
}
