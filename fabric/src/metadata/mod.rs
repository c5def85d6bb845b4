//! The cluster catalogue as every node reads it: nodes and their admin
//! state, LUNs, targets, extents with their placements and epochs, leases;
//! the commands that change it (applied in Raft order on the metadata
//! replicas, `chunkserver::meta`) and the client that reads, changes and
//! watches it.
//!
//! - [`catalogue`]: the records and the deterministic `apply`.
//! - [`command`]: the commands and their outcomes.
//! - [`names`]: LUN names and iSCSI names.
//! - [`rpc`]: the API on the wire.
//! - [`client`]: a client that reaches any replica.

pub mod catalogue;
pub mod client;
pub mod command;
pub mod error;
pub mod names;
pub mod rpc;

pub use catalogue::{AdminState, Catalogue, Change, ChunkState, Extent, Lun, Target};
pub use client::MetaClient;
pub use command::{Command, Outcome};
pub use error::CatalogueError;
pub use rpc::{MetaError, ReadReply, ReadRequest};
