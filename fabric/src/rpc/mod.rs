//! Multiplexed request/response RPC over mutually authenticated TLS.
//!
//! - [`Server`]: a TLS listener; one task per connection; each request is
//!   checked against the kind table (known kind, sender's role allowed,
//!   deadline present) and dispatched to the handler registered in the
//!   [`Router`] for its kind, in its own task, under its deadline.
//! - [`Client`]: one pooled connection set per peer, multiplexed by request
//!   id; a semaphore per peer bounds calls in flight (back-pressure: a call
//!   waits for a slot, within its deadline); reconnect with exponential
//!   back-off and jitter; dropping a call's future sends a cancel frame and
//!   frees its slot.
//!
//! A handler is `Fn(PeerIdentity, Request) -> Future<Result<Response,
//! RpcError>>`; the typed layer ([`Router::register`], [`Client::call`])
//! encodes and decodes the postcard headers of an [`Rpc`] pair around it.

mod backoff;
mod client;
mod conn;
mod error;
mod server;
mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::identity::PeerIdentity;
use crate::wire::{self, Kind, Ping, PingResponse, Rpc};

pub use backoff::Backoff;
pub use client::Client;
pub use conn::Connection;
pub use error::RpcError;
pub use server::{Server, ServerStats};

/// Calls in flight to one peer at once, by default. More wait (back-pressure).
pub const INFLIGHT_RPCS_PER_PEER_MAX_DEFAULT: usize = 256;
/// Requests one server connection runs at once; past this the server stops
/// reading from that connection until one finishes (TCP back-pressure).
pub const SERVER_INFLIGHT_RPCS_PER_CONNECTION_MAX_DEFAULT: usize = 1024;
/// Connections a server accepts at once; more are closed at once.
pub const SERVER_CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// TCP connections kept to one peer; calls spread over them round-robin.
pub const CONNECTIONS_PER_PEER_DEFAULT: usize = 1;
/// Time to establish TCP.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;
/// Time for the TLS handshake (both sides), so a silent peer cannot hold a
/// connection slot.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// First reconnect delay after a failed connect.
pub const BACKOFF_INITIAL_MS_DEFAULT: u64 = 50;
/// Longest reconnect delay.
pub const BACKOFF_MAX_MS_DEFAULT: u64 = 5_000;
/// Longest deadline a server honours; longer ones are cut to this, so a
/// peer cannot pin a handler slot for ever.
pub const DEADLINE_MS_MAX_DEFAULT: u32 = 300_000;
/// Frames queued for a connection's writer task.
pub const WRITE_QUEUE_FRAMES: usize = 256;
/// Buffer between the writer and TLS: small frames are coalesced into it,
/// large payloads bypass it.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Initial read buffer of a connection.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A node's addresses: the private fabric (mTLS, node to node) and the
/// public service address (iSCSI, for gateways), which may be on different
/// networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeAddrs {
    pub fabric: SocketAddr,
    pub public: Option<SocketAddr>,
}

/// Limits and timeouts of clients and servers.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    pub inflight_rpcs_per_peer_max: usize,
    pub server_inflight_rpcs_per_connection_max: usize,
    pub server_connections_max: usize,
    pub connections_per_peer: usize,
    pub connect_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub deadline_ms_max: u32,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            inflight_rpcs_per_peer_max: INFLIGHT_RPCS_PER_PEER_MAX_DEFAULT,
            server_inflight_rpcs_per_connection_max:
                SERVER_INFLIGHT_RPCS_PER_CONNECTION_MAX_DEFAULT,
            server_connections_max: SERVER_CONNECTIONS_MAX_DEFAULT,
            connections_per_peer: CONNECTIONS_PER_PEER_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            backoff_initial_ms: BACKOFF_INITIAL_MS_DEFAULT,
            backoff_max_ms: BACKOFF_MAX_MS_DEFAULT,
            deadline_ms_max: DEADLINE_MS_MAX_DEFAULT,
        }
    }
}

/// A request as a handler sees it.
#[derive(Clone, Debug)]
pub struct Request {
    pub kind: Kind,
    pub request_id: u64,
    /// postcard-encoded message header.
    pub header: Bytes,
    pub payload: Bytes,
    /// When the caller stops waiting (the server also stops the handler).
    pub deadline: Instant,
}

impl Request {
    /// Decodes the message header as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        postcard::from_bytes(&self.header).map_err(|e| RpcError::BadRequest(e.to_string()))
    }
}

/// A response: postcard message header plus raw payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub header: Bytes,
    pub payload: Bytes,
}

impl Response {
    /// Encodes `msg` as the header, with `payload` beside it.
    pub fn encode<T: Serialize>(msg: &T, payload: Bytes) -> Result<Response, RpcError> {
        Ok(Response {
            header: encode_header(msg)?,
            payload,
        })
    }

    /// Decodes the header as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, RpcError> {
        postcard::from_bytes(&self.header).map_err(|e| RpcError::Codec(e.to_string()))
    }
}

/// postcard-encodes a message header.
pub fn encode_header<T: Serialize>(msg: &T) -> Result<Bytes, RpcError> {
    postcard::to_stdvec(msg)
        .map(Bytes::from)
        .map_err(|e| RpcError::Codec(e.to_string()))
}

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Response, RpcError>> + Send>>;
/// A registered handler.
pub type Handler = Arc<dyn Fn(PeerIdentity, Request) -> HandlerFuture + Send + Sync>;

/// Why a handler could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{0} has no row in wire::KIND_TABLE: add one (with its allowed roles) first")]
    NotInKindTable(Kind),
    #[error("a handler for {0} is already registered")]
    AlreadyRegistered(Kind),
}

/// Handlers by message kind. Built before the server starts; every server
/// answers [`Ping`].
#[derive(Clone)]
pub struct Router {
    handlers: HashMap<Kind, Handler>,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Router {
    /// A router that answers `Ping` (echoing the payload if asked).
    pub fn new() -> Router {
        let mut r = Router {
            handlers: HashMap::new(),
        };
        let ping = r.register::<Ping, _, _>(|_peer, req, payload| async move {
            let payload = if req.echo { payload } else { Bytes::new() };
            Ok((PingResponse {}, payload))
        });
        assert!(ping.is_ok(), "Ping has a row in KIND_TABLE");
        r
    }

    /// Registers a raw handler for `kind`, which must have a row in the
    /// kind table (that row decides who may call it).
    pub fn register_raw<F, Fut>(&mut self, kind: Kind, handler: F) -> Result<(), RouterError>
    where
        F: Fn(PeerIdentity, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response, RpcError>> + Send + 'static,
    {
        if wire::spec(kind).is_none() {
            return Err(RouterError::NotInKindTable(kind));
        }
        if self.handlers.contains_key(&kind) {
            return Err(RouterError::AlreadyRegistered(kind));
        }
        let h: Handler = Arc::new(move |peer, req| Box::pin(handler(peer, req)));
        self.handlers.insert(kind, h);
        Ok(())
    }

    /// Registers a typed handler for the [`Rpc`] pair `R`.
    pub fn register<R, F, Fut>(&mut self, handler: F) -> Result<(), RouterError>
    where
        R: Rpc,
        F: Fn(PeerIdentity, R::Request, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(R::Response, Bytes), RpcError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        self.register_raw(R::KIND, move |peer, req: Request| {
            let handler = handler.clone();
            async move {
                let msg: R::Request = req.decode()?;
                let (resp, payload) = handler(peer, msg, req.payload).await?;
                Response::encode(&resp, payload)
            }
        })
    }

    /// Runs the handler for `R` in this process, as `peer`: how a node
    /// calls itself (an extent primary writing the chunk it holds). Same
    /// role check, handler and deadline as over the network, without the
    /// socket, the TLS records and the task wake-ups on both sides.
    pub async fn call_local<R: Rpc>(
        &self,
        peer: &PeerIdentity,
        req: &R::Request,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<(R::Response, Bytes), RpcError> {
        let kind = R::KIND;
        let spec = wire::spec(kind).ok_or(RpcError::UnsupportedKind { kind })?;
        if !spec.allowed.contains(peer.role) {
            return Err(RpcError::Forbidden(format!(
                "role {} may not send {}",
                peer.role, spec.name
            )));
        }
        let handler = self
            .get(kind)
            .cloned()
            .ok_or(RpcError::NoHandler { kind })?;
        let request = Request {
            kind,
            request_id: 0,
            header: encode_header(req)?,
            payload,
            deadline,
        };
        let response = tokio::time::timeout_at(deadline, handler(peer.clone(), request))
            .await
            .map_err(|_| RpcError::DeadlineExceeded)??;
        Ok((response.decode()?, response.payload))
    }

    pub(crate) fn get(&self, kind: Kind) -> Option<&Handler> {
        self.handlers.get(&kind)
    }
}
