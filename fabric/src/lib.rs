//! What every weft node shares: who it is and how it proves it, how messages
//! travel between nodes (mutually authenticated TLS 1.3, framed RPC), and how
//! every node comes to hold the same view of the cluster (gossip).
//!
//! `fabric` knows nothing of iSCSI.
//!
//! - [`identity`]: node ids, roles, the cluster CA, node certificates
//!   (`weft://<role>/<node-id>` SAN URI), and reading a peer's identity
//!   from its certificate.
//! - [`tls`]: rustls configurations (TLS 1.3, ring, mutual auth).
//! - [`wire`]: the versioned frame format, message kinds and the role table
//!   (sans-IO).
//! - [`rpc`]: the multiplexed RPC server and pooled client.
//! - [`placement`]: the pure function from the gossiped view and a LUN's
//!   policy to the nodes of an extent.
//! - [`metadata`]: the catalogue's records and commands, and its client.

pub mod env;
pub mod gossip;
pub mod identity;
pub mod metadata;
pub mod placement;
pub mod rpc;
pub mod tls;
pub mod volume;
pub mod wire;

pub use identity::{Ca, CertAndKey, NodeCredentials, NodeId, PeerIdentity, Role, Validity};
pub use rpc::{Client, NodeAddrs, Request, Response, Router, RpcConfig, RpcError, Server};
pub use tls::TlsConfig;
pub use wire::decode_frame_for_fuzz;
