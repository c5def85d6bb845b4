//! The RPC client: one pooled connection set per peer, bounded in-flight
//! calls per peer, reconnect with back-off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::transport::Stream;
use super::{encode_header, Backoff, Connection, Response, RpcConfig, RpcError};
use crate::identity::NodeId;
use crate::tls::{self, TlsConfig};
use crate::wire::{Kind, Rpc};

enum Connector {
    Tls(TlsConnector),
    /// Bench only: plain TCP, the peer assumed to be who we dialled.
    #[cfg(feature = "bench-plaintext")]
    Plain,
}

/// One connection slot of a peer.
struct Slot {
    conn: Option<Arc<Connection>>,
    backoff: Backoff,
    /// No connect attempt before this (back-off after a failure).
    retry_at: Option<Instant>,
    last_error: String,
}

/// Everything the client keeps about one peer.
struct PeerState {
    /// Bounds calls in flight to this peer.
    inflight: Arc<Semaphore>,
    slots: Vec<tokio::sync::Mutex<Slot>>,
    next_slot: AtomicUsize,
}

struct ClientInner {
    connector: Connector,
    config: RpcConfig,
    peers: Mutex<BTreeMap<(NodeId, SocketAddr), Arc<PeerState>>>,
}

/// Calls peers. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("peers", &self.inner.peers.lock().len())
            .finish()
    }
}

impl Client {
    /// A client that authenticates with `tls` and checks every peer's
    /// certificate against the cluster CA and the node id dialled.
    pub fn new(tls: &TlsConfig, config: RpcConfig) -> Client {
        Client::with_connector(
            Connector::Tls(TlsConnector::from(tls.client_config())),
            config,
        )
    }

    /// Bench only: the same client over plain TCP. Never in a product.
    #[cfg(feature = "bench-plaintext")]
    pub fn new_plaintext_for_bench(config: RpcConfig) -> Client {
        Client::with_connector(Connector::Plain, config)
    }

    fn with_connector(connector: Connector, config: RpcConfig) -> Client {
        Client {
            inner: Arc::new(ClientInner {
                connector,
                config,
                peers: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Calls `R` on `node` at `addr`: sends `msg` with `payload` beside it,
    /// returns the response message and payload, or fails by `deadline`.
    pub async fn call<R: Rpc>(
        &self,
        addr: SocketAddr,
        node: &NodeId,
        msg: &R::Request,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<(R::Response, Bytes), RpcError> {
        let header = encode_header(msg)?;
        let resp = self
            .call_raw(addr, node, R::KIND, header, payload, deadline)
            .await?;
        let msg = resp.decode::<R::Response>()?;
        Ok((msg, resp.payload))
    }

    /// Like [`Client::call`] with an already-encoded header, for any kind
    /// (including kinds this build does not know: the peer may).
    ///
    /// Waits for an in-flight slot to the peer (back-pressure), reuses or
    /// opens a pooled connection, and sends. Dropping the future cancels the
    /// call. A peer that could not be reached is not dialled again until its
    /// back-off delay has passed: calls meanwhile fail at once with
    /// [`RpcError::Unreachable`], so a caller can go elsewhere (read parity).
    pub async fn call_raw(
        &self,
        addr: SocketAddr,
        node: &NodeId,
        kind: Kind,
        header: Bytes,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Response, RpcError> {
        let call = async {
            let peer = self.peer_state(node, addr);
            let _permit = peer
                .inflight
                .acquire()
                .await
                .map_err(|_| RpcError::ConnectionClosed("client shut down".into()))?;
            let conn = self.connection(&peer, node, addr).await?;
            conn.call_raw(kind, header, payload, deadline).await
        };
        timeout_at(deadline, call)
            .await
            .unwrap_or(Err(RpcError::DeadlineExceeded))
    }

    /// Open connections over all peers (for tests and status).
    pub fn open_connections(&self) -> usize {
        let peers: Vec<Arc<PeerState>> = self.inner.peers.lock().values().cloned().collect();
        peers
            .iter()
            .flat_map(|p| p.slots.iter())
            .filter(|s| {
                s.try_lock()
                    .map(|s| s.conn.as_ref().is_some_and(|c| !c.is_closed()))
                    .unwrap_or(true)
            })
            .count()
    }

    fn peer_state(&self, node: &NodeId, addr: SocketAddr) -> Arc<PeerState> {
        let cfg = &self.inner.config;
        self.inner
            .peers
            .lock()
            .entry((node.clone(), addr))
            .or_insert_with(|| {
                Arc::new(PeerState {
                    inflight: Arc::new(Semaphore::new(cfg.inflight_rpcs_per_peer_max.max(1))),
                    slots: (0..cfg.connections_per_peer.max(1))
                        .map(|_| {
                            tokio::sync::Mutex::new(Slot {
                                conn: None,
                                backoff: Backoff::new(cfg.backoff_initial_ms, cfg.backoff_max_ms),
                                retry_at: None,
                                last_error: String::new(),
                            })
                        })
                        .collect(),
                    next_slot: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// A live connection from one of the peer's slots, (re)connecting if
    /// needed and allowed by the back-off.
    async fn connection(
        &self,
        peer: &PeerState,
        node: &NodeId,
        addr: SocketAddr,
    ) -> Result<Arc<Connection>, RpcError> {
        let i = peer.next_slot.fetch_add(1, Ordering::Relaxed) % peer.slots.len().max(1);
        let slot = peer
            .slots
            .get(i)
            .ok_or_else(|| RpcError::Internal("no connection slot".into()))?;
        let mut slot = slot.lock().await;
        if let Some(conn) = &slot.conn {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            debug!(%node, %addr, "fabric: pooled connection closed; reconnecting");
            slot.conn = None;
        }
        let now = Instant::now();
        if let Some(at) = slot.retry_at {
            if at > now {
                return Err(RpcError::Unreachable {
                    node: node.clone(),
                    addr,
                    retry_in_ms: at.saturating_duration_since(now).as_millis() as u64,
                    last_error: slot.last_error.clone(),
                });
            }
        }
        match self.connect(node, addr).await {
            Ok(conn) => {
                slot.backoff.reset();
                slot.retry_at = None;
                let conn = Arc::new(conn);
                slot.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                let delay = slot.backoff.on_failure(crate::env::random_f64());
                slot.retry_at = Some(Instant::now() + delay);
                slot.last_error = e.to_string();
                warn!(%node, %addr, error = %e, retry_in_ms = delay.as_millis() as u64,
                    failures = slot.backoff.failures(), "fabric: connect failed");
                Err(e)
            }
        }
    }

    async fn connect(&self, node: &NodeId, addr: SocketAddr) -> Result<Connection, RpcError> {
        let cfg = &self.inner.config;
        let fail = |reason: String| RpcError::Connect {
            node: node.clone(),
            addr,
            reason,
        };
        let tcp = match timeout(
            Duration::from_millis(cfg.connect_timeout_ms),
            Stream::connect(addr),
        )
        .await
        {
            Err(_) => return Err(fail("TCP connect timed out".into())),
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok(tcp)) => tcp,
        };
        tcp.set_nodelay();
        match &self.inner.connector {
            Connector::Tls(connector) => {
                let handshake = connector.connect(tls::server_name_for(node), tcp);
                let stream =
                    match timeout(Duration::from_millis(cfg.handshake_timeout_ms), handshake).await
                    {
                        Err(_) => return Err(fail("TLS handshake timed out".into())),
                        Ok(Err(e)) => return Err(fail(format!("TLS handshake: {e}"))),
                        Ok(Ok(stream)) => stream,
                    };
                // The verifier checked the node id during the handshake;
                // read the identity for the connection (and check again).
                let peer =
                    tls::peer_identity(stream.get_ref().1).map_err(|e| fail(e.to_string()))?;
                if &peer.node_id != node {
                    return Err(fail(format!("peer is {}, not {node}", peer.node_id)));
                }
                debug!(%peer, %addr, "fabric: connected");
                Ok(Connection::start(stream, peer))
            }
            #[cfg(feature = "bench-plaintext")]
            Connector::Plain => Ok(Connection::start(
                tcp,
                crate::identity::PeerIdentity {
                    node_id: node.clone(),
                    role: crate::identity::Role::Chunkserver,
                },
            )),
        }
    }
}
