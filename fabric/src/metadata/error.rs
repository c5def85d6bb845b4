//! Why the catalogue refused a command: each says what to do next.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum CatalogueError {
    #[error("no LUN named {0:?} (weft lun list shows them)")]
    NoSuchLun(String),
    #[error("a LUN named {0:?} exists already")]
    LunExists(String),
    #[error("invalid LUN name {0:?}: 1–64 characters of a-z A-Z 0-9 . _ -, starting with a letter or digit")]
    LunName(String),
    #[error("block size {0} is not supported: use 512 or 4096")]
    BlockSize(u32),
    #[error("LUN size {size} bytes is invalid: it must be a positive multiple of the block size ({block_size}) and at most {max} bytes")]
    LunSize {
        size: u64,
        block_size: u32,
        max: u64,
    },
    #[error("LUN {name:?} is {from} bytes; shrinking to {to} would destroy data, so only growing is allowed")]
    ShrinkRefused { name: String, from: u64, to: u64 },
    #[error("LUN {name:?} is mapped as LUN {lun} of {target}: unmap it first (weft target unmap {target} {lun})")]
    LunMapped {
        name: String,
        target: String,
        lun: u16,
    },
    #[error("LUN {name:?} is already mapped in {target}")]
    AlreadyMapped { name: String, target: String },
    #[error("LUN number {0} is out of range (0–255)")]
    LunNumber(u16),
    #[error("{target} already maps another LUN at number {lun}")]
    LunNumberTaken { target: String, lun: u16 },
    #[error("{target} maps nothing at LUN number {lun}")]
    NotMapped { target: String, lun: u16 },
    #[error("no target {0} (weft target list shows them)")]
    NoSuchTarget(String),
    #[error("target {0} exists already")]
    TargetExists(String),
    #[error("invalid iSCSI name {name:?}: {why}")]
    Iqn { name: String, why: String },
    #[error("{initiator} is not in the ACL of {target}")]
    NotInAcl { target: String, initiator: String },
    #[error("invalid CHAP settings: {0}")]
    Chap(String),
    #[error("invalid placement policy: {0}")]
    Policy(String),
    #[error("no node {0} in the catalogue")]
    NoSuchNode(String),
    #[error("node {0} was removed; a removed node id is never reused")]
    NodeRemoved(String),
    #[error("node {node} still holds chunks of {extents} extents: drain it first (weft node drain {node})")]
    NodeHoldsChunks { node: String, extents: usize },
    #[error("extent {index} of LUN {lun} is past the LUN's end ({extents} extents)")]
    ExtentOutOfRange { lun: u64, index: u64, extents: u64 },
    #[error("extent {index} of LUN {lun} is not allocated")]
    NoSuchExtent { lun: u64, index: u64 },
    #[error("the extent is at epoch {have}, not {expected}: re-read it and retry")]
    EpochMismatch { have: u64, expected: u64 },
    #[error("invalid placement: {0}")]
    BadPlacement(String),
    #[error("node {node} still holds a lease for {for_ms} ms: it may still be serving")]
    LeaseStillValid { node: String, for_ms: u64 },
    #[error(
        "persistent-reservation state is at version {have}, not {expected}: re-read and retry"
    )]
    PrVersion { have: u64, expected: u64 },
    #[error("cannot place the extent: {0}")]
    Placement(String),
    #[error("a {k}+{m} LUN needs {need} chunkservers in service; the cluster has {have}: use a narrower profile (--ec) or add nodes")]
    TooWide {
        k: u8,
        m: u8,
        need: usize,
        have: usize,
    },
    #[error("a {size}-byte LUN can never fit: the cluster holds at most {max} bytes of {k}+{m} data (raw capacity × k/(k+m)); add capacity or create a smaller LUN")]
    LunTooLarge { size: u64, max: u64, k: u8, m: u8 },
    #[error("too many {0} (at most {1})")]
    TooMany(String, usize),
    #[error("{0} too large (at most {1} bytes)")]
    TooLarge(String, usize),
}
