//! Why a chunk request failed, and the one table that turns it into an RPC
//! error (`RpcError::Application` with a `wire::chunk::chunk_error` code
//! and a detail that names the numbers).

use fabric::wire::chunk::chunk_error;
use fabric::RpcError;

use crate::store::StoreError;

/// A chunk request's failure: the store's, or the service's own checks
/// made before the store is asked.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A length over a limit of the service (not of the store).
    #[error("{what} of {bytes} bytes exceeds the {max_bytes} byte limit")]
    TooLarge {
        what: &'static str,
        bytes: u64,
        max_bytes: u64,
    },
    /// The request contradicts itself.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// This node's metadata lease has lapsed.
    #[error("this node's lease has lapsed: it serves gateways again once renewed")]
    NoLease,
}

impl ChunkError {
    /// The `chunk_error` code of this failure: the whole mapping.
    pub fn code(&self) -> u32 {
        match self {
            ChunkError::Store(e) => match e {
                StoreError::NotFound(_) => chunk_error::NOT_FOUND,
                StoreError::Exists(_) => chunk_error::EXISTS,
                StoreError::StaleEpoch { .. } => chunk_error::STALE_EPOCH,
                StoreError::OutOfRange { .. } => chunk_error::OUT_OF_RANGE,
                StoreError::Misaligned { .. } => chunk_error::MISALIGNED,
                StoreError::Checksum { .. } => chunk_error::CHECKSUM,
                StoreError::Full { .. } => chunk_error::FULL,
                StoreError::TooLarge { .. } => chunk_error::TOO_LARGE,
                StoreError::Io(_) => chunk_error::IO,
                StoreError::Index(_) => chunk_error::INDEX,
            },
            ChunkError::TooLarge { .. } => chunk_error::TOO_LARGE,
            ChunkError::Invalid(_) => chunk_error::INVALID,
            ChunkError::NoLease => chunk_error::NO_LEASE,
        }
    }

    /// The error sent back to the caller.
    pub fn to_rpc(&self) -> RpcError {
        RpcError::Application {
            code: self.code(),
            detail: self.to_string(),
        }
    }
}

impl From<ChunkError> for RpcError {
    fn from(e: ChunkError) -> RpcError {
        e.to_rpc()
    }
}

/// The name of a `chunk_error` code, for logs and tests.
pub fn code_name(code: u32) -> &'static str {
    match code {
        chunk_error::NOT_FOUND => "NotFound",
        chunk_error::EXISTS => "Exists",
        chunk_error::STALE_EPOCH => "StaleEpoch",
        chunk_error::OUT_OF_RANGE => "OutOfRange",
        chunk_error::MISALIGNED => "Misaligned",
        chunk_error::CHECKSUM => "Checksum",
        chunk_error::NO_LEASE => "NoLease",
        chunk_error::FULL => "Full",
        chunk_error::TOO_LARGE => "TooLarge",
        chunk_error::IO => "Io",
        chunk_error::INDEX => "Index",
        chunk_error::INVALID => "Invalid",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChunkId;

    #[test]
    fn every_store_error_has_its_own_code() {
        let id = ChunkId {
            lun: 1,
            extent: 2,
            index: 0,
        };
        let cases: Vec<(ChunkError, &str)> = vec![
            (StoreError::NotFound(id).into(), "NotFound"),
            (StoreError::Exists(id).into(), "Exists"),
            (
                StoreError::StaleEpoch {
                    id,
                    have: 5,
                    got: 4,
                }
                .into(),
                "StaleEpoch",
            ),
            (
                StoreError::OutOfRange {
                    id,
                    offset: 0,
                    len: 1,
                    size_bytes: 0,
                }
                .into(),
                "OutOfRange",
            ),
            (
                StoreError::Misaligned { offset: 1, len: 1 }.into(),
                "Misaligned",
            ),
            (
                StoreError::Checksum {
                    id,
                    blocks: vec![3],
                }
                .into(),
                "Checksum",
            ),
            (
                StoreError::Full {
                    used: 1,
                    capacity: 2,
                    reserve: 1,
                }
                .into(),
                "Full",
            ),
            (
                StoreError::TooLarge {
                    size_bytes: 9,
                    max_bytes: 8,
                }
                .into(),
                "TooLarge",
            ),
            (StoreError::Io(std::io::Error::other("disk")).into(), "Io"),
            (StoreError::Index("lmdb".into()).into(), "Index"),
            (
                ChunkError::TooLarge {
                    what: "read",
                    bytes: 9,
                    max_bytes: 8,
                },
                "TooLarge",
            ),
            (ChunkError::Invalid("x".into()), "Invalid"),
        ];
        for (e, name) in cases {
            assert_eq!(code_name(e.code()), name, "{e}");
            match e.to_rpc() {
                RpcError::Application { code, detail } => {
                    assert_eq!(code, e.code());
                    assert_eq!(detail, e.to_string());
                }
                other => panic!("{other:?}"),
            }
        }
        let stale: ChunkError = StoreError::StaleEpoch {
            id,
            have: 5,
            got: 4,
        }
        .into();
        assert!(stale.to_string().contains("stale epoch 4, chunk is at 5"));
    }
}
