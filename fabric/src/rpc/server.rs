//! The RPC server: a TLS listener, one task per connection, one task per
//! request. Every refusal is logged with its reason and counted.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::conn::{read_frame, write_loop};
use super::transport::{Listener, Stream};
use super::{
    Request, Response, Router, RpcConfig, RpcError, READ_BUFFER_BYTES, WRITE_QUEUE_FRAMES,
};
use crate::identity::PeerIdentity;
use crate::tls::{self, TlsConfig};
use crate::wire::{self, flags, Frame, FrameCodec, FrameType, Inbound, Kind, WIRE_VERSION};

/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Counters of what a server did and refused; read them with
/// [`Server::stats`]. (They are what metrics will export.)
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections_accepted: AtomicU64,
    pub connections_over_limit: AtomicU64,
    pub handshakes_refused: AtomicU64,
    pub identities_refused: AtomicU64,
    /// Fatal framing errors (bad magic, CRC, length, truncation): each closed
    /// its connection.
    pub frames_rejected: AtomicU64,
    pub unsupported_kinds: AtomicU64,
    pub unsupported_versions: AtomicU64,
    pub forbidden: AtomicU64,
    pub requests_handled: AtomicU64,
    pub deadlines_exceeded: AtomicU64,
    pub cancelled: AtomicU64,
}

impl ServerStats {
    /// Reads one counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
enum Acceptor {
    Tls(TlsAcceptor),
    /// Bench only: serve plain TCP, every peer assumed to be this identity.
    #[cfg(feature = "bench-plaintext")]
    Plain(PeerIdentity),
}

/// A running RPC server. Dropping it stops accepting and closes every
/// connection it holds.
pub struct Server {
    local_addr: SocketAddr,
    stats: Arc<ServerStats>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Listens on `addr` (the node's fabric address) with mutual TLS.
    pub async fn bind(
        addr: SocketAddr,
        tls: &TlsConfig,
        router: Router,
        config: RpcConfig,
    ) -> io::Result<Server> {
        let listener = Listener::bind(addr).await?;
        let acceptor = Acceptor::Tls(TlsAcceptor::from(tls.server_config()));
        Server::start(listener, acceptor, router, config)
    }

    /// Bench only: the same server over plain TCP, every peer taken to be
    /// `assumed_peer`. Exists to measure what TLS costs; never in a product.
    #[cfg(feature = "bench-plaintext")]
    pub async fn bind_plaintext_for_bench(
        addr: SocketAddr,
        assumed_peer: PeerIdentity,
        router: Router,
        config: RpcConfig,
    ) -> io::Result<Server> {
        let listener = Listener::bind(addr).await?;
        Server::start(listener, Acceptor::Plain(assumed_peer), router, config)
    }

    fn start(
        listener: Listener,
        acceptor: Acceptor,
        router: Router,
        config: RpcConfig,
    ) -> io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            Arc::new(router),
            Arc::new(config),
            stats.clone(),
        ));
        Ok(Server {
            local_addr,
            stats,
            task,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

async fn accept_loop(
    listener: Listener,
    acceptor: Acceptor,
    router: Arc<Router>,
    config: Arc<RpcConfig>,
    stats: Arc<ServerStats>,
) {
    let limit = Arc::new(Semaphore::new(config.server_connections_max));
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        ServerStats::bump(&stats.connections_over_limit);
                        warn!(%remote, limit = config.server_connections_max,
                            "fabric: connection refused: too many connections");
                        continue;
                    };
                    conns.spawn(handle_connection(
                        tcp,
                        remote,
                        acceptor.clone(),
                        router.clone(),
                        config.clone(),
                        stats.clone(),
                        permit,
                    ));
                }
                Err(e) => {
                    warn!(error = %e, "fabric: accept failed");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                }
            }
        }
    }
}

async fn handle_connection(
    tcp: Stream,
    remote: SocketAddr,
    acceptor: Acceptor,
    router: Arc<Router>,
    config: Arc<RpcConfig>,
    stats: Arc<ServerStats>,
    _permit: OwnedSemaphorePermit,
) {
    // Latency matters more than packet count for RPC.
    tcp.set_nodelay();
    match acceptor {
        Acceptor::Tls(acceptor) => {
            let handshake = Duration::from_millis(config.handshake_timeout_ms);
            let stream = match timeout(handshake, acceptor.accept(tcp)).await {
                Err(_) => {
                    ServerStats::bump(&stats.handshakes_refused);
                    warn!(%remote, timeout_ms = config.handshake_timeout_ms,
                        "fabric: connection refused: TLS handshake timed out");
                    return;
                }
                Ok(Err(e)) => {
                    ServerStats::bump(&stats.handshakes_refused);
                    warn!(%remote, error = %e, "fabric: connection refused: TLS handshake failed");
                    return;
                }
                Ok(Ok(stream)) => stream,
            };
            let peer = match tls::peer_identity(stream.get_ref().1) {
                Ok(peer) => peer,
                Err(e) => {
                    ServerStats::bump(&stats.identities_refused);
                    warn!(%remote, error = %e,
                        "fabric: connection refused: certificate names no weft identity");
                    return;
                }
            };
            ServerStats::bump(&stats.connections_accepted);
            info!(%remote, %peer, "fabric: connection accepted");
            serve_connection(stream, peer, remote, router, config, stats).await;
        }
        #[cfg(feature = "bench-plaintext")]
        Acceptor::Plain(peer) => {
            ServerStats::bump(&stats.connections_accepted);
            serve_connection(tcp, peer, remote, router, config, stats).await;
        }
    }
}

type Active = Arc<Mutex<BTreeMap<u64, AbortHandle>>>;

/// Serves one authenticated connection until it closes or breaks the
/// protocol.
async fn serve_connection<S>(
    stream: S,
    peer: PeerIdentity,
    remote: SocketAddr,
    router: Arc<Router>,
    config: Arc<RpcConfig>,
    stats: Arc<ServerStats>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
    let mut writer = tokio::spawn(write_loop(wr, rx));
    let active: Active = Arc::new(Mutex::new(BTreeMap::new()));
    let inflight = Arc::new(Semaphore::new(
        config.server_inflight_rpcs_per_connection_max,
    ));
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let conn = Conn {
        peer: &peer,
        remote,
        router: &router,
        config: &config,
        stats: &stats,
        tx: &tx,
        active: &active,
        inflight: &inflight,
    };
    let reason = loop {
        let item = tokio::select! {
            item = read_frame(&mut rd, &mut codec, &mut buf) => item,
            w = &mut writer => break format!("writer ended: {w:?}"),
        };
        match item {
            Ok(None) => break "peer closed the connection".to_owned(),
            Err(e) => {
                ServerStats::bump(&stats.frames_rejected);
                warn!(%remote, %peer, error = %e, "fabric: frame refused; closing connection");
                break e.to_string();
            }
            Ok(Some(Inbound::Unsupported(u))) => {
                ServerStats::bump(&stats.unsupported_versions);
                warn!(%remote, %peer, version = u.version, kind = %u.kind,
                    "fabric: unsupported wire version {} (this node reads up to {})",
                    u.version, WIRE_VERSION);
                if u.frame_type == FrameType::Request as u8 {
                    let err = RpcError::UnsupportedVersion {
                        version: u.version,
                        max_supported: WIRE_VERSION,
                    };
                    conn.respond(u.request_id, u.kind, Err(err)).await;
                }
            }
            Ok(Some(Inbound::Frame(frame))) => match frame.frame_type {
                FrameType::Request => conn.dispatch(frame).await,
                FrameType::Cancel => {
                    let handle = active.lock().remove(&frame.request_id);
                    if let Some(h) = handle {
                        h.abort();
                        ServerStats::bump(&stats.cancelled);
                        debug!(%peer, request_id = frame.request_id, "fabric: request cancelled");
                    }
                }
                FrameType::Response => {
                    ServerStats::bump(&stats.frames_rejected);
                    warn!(%remote, %peer, "fabric: response frame sent to a server; closing connection");
                    break "protocol violation: response frame from client".to_owned();
                }
            },
        }
    };
    debug!(%remote, %peer, reason, "fabric: server connection closed");
    // The caller is gone: nobody can receive what in-flight handlers return.
    let aborted = std::mem::take(&mut *active.lock());
    for h in aborted.into_values() {
        h.abort();
    }
    writer.abort();
}

/// Borrowed state of one server connection.
struct Conn<'a> {
    peer: &'a PeerIdentity,
    remote: SocketAddr,
    router: &'a Router,
    config: &'a RpcConfig,
    stats: &'a Arc<ServerStats>,
    tx: &'a mpsc::Sender<Frame>,
    active: &'a Active,
    inflight: &'a Arc<Semaphore>,
}

impl Conn<'_> {
    async fn respond(&self, request_id: u64, kind: Kind, result: Result<Response, RpcError>) {
        // Send fails only when the writer is gone, and then the loop ends.
        let _ = self.tx.send(response_frame(request_id, kind, result)).await;
    }

    async fn dispatch(&self, frame: Frame) {
        let (peer, remote, kind, request_id) =
            (self.peer, self.remote, frame.kind, frame.request_id);
        let Some(spec) = wire::spec(kind) else {
            ServerStats::bump(&self.stats.unsupported_kinds);
            warn!(%remote, %peer, %kind, "fabric: unsupported message kind {}", kind.0);
            return self
                .respond(request_id, kind, Err(RpcError::UnsupportedKind { kind }))
                .await;
        };
        if !spec.allowed.contains(peer.role) {
            ServerStats::bump(&self.stats.forbidden);
            warn!(%remote, %peer, %kind, allowed = ?spec.allowed,
                "fabric: request refused: role may not send this kind");
            let detail = format!("role {} may not send {}", peer.role, spec.name);
            return self
                .respond(request_id, kind, Err(RpcError::Forbidden(detail)))
                .await;
        }
        let Some(handler) = self.router.get(kind).cloned() else {
            debug!(%peer, %kind, "fabric: no handler for this kind on this node");
            return self
                .respond(request_id, kind, Err(RpcError::NoHandler { kind }))
                .await;
        };
        if frame.deadline_ms == 0 {
            let err = RpcError::BadRequest("request without a deadline".into());
            return self.respond(request_id, kind, Err(err)).await;
        }
        let budget_ms = frame.deadline_ms.min(self.config.deadline_ms_max);
        let deadline = Instant::now() + Duration::from_millis(u64::from(budget_ms));
        if self.active.lock().contains_key(&request_id) {
            let err = RpcError::BadRequest(format!("request id {request_id} already in flight"));
            return self.respond(request_id, kind, Err(err)).await;
        }
        // Back-pressure: at the per-connection limit, stop reading until a
        // handler finishes (the peer's TCP window fills and it slows down).
        let permit = match timeout_at(deadline, self.inflight.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return,
            Err(_) => {
                ServerStats::bump(&self.stats.deadlines_exceeded);
                return self
                    .respond(request_id, kind, Err(RpcError::DeadlineExceeded))
                    .await;
            }
        };
        let request = Request {
            kind,
            request_id,
            header: frame.header,
            payload: frame.payload,
            deadline,
        };
        let mut handling = handler(peer.clone(), request);
        // A handler that is done when first polled (chunk I/O on a memory
        // store, cached reads, refusals) is answered from here: no task to
        // spawn, schedule and wake for it. One that must wait becomes a
        // task as before (which polls it again, so its wake-ups go there).
        let first = std::future::poll_fn(|cx| Poll::Ready(handling.as_mut().poll(cx))).await;
        if let Poll::Ready(result) = first {
            drop(permit);
            ServerStats::bump(&self.stats.requests_handled);
            return self.respond(request_id, kind, result).await;
        }
        let (tx, active, stats) = (self.tx.clone(), self.active.clone(), self.stats.clone());
        // Hold the map lock across spawn so the task cannot remove its entry
        // before it is inserted.
        let mut map = self.active.lock();
        let task = tokio::spawn(async move {
            let _permit = permit;
            let result = match timeout_at(deadline, handling).await {
                Ok(result) => result,
                Err(_) => {
                    ServerStats::bump(&stats.deadlines_exceeded);
                    Err(RpcError::DeadlineExceeded)
                }
            };
            ServerStats::bump(&stats.requests_handled);
            active.lock().remove(&request_id);
            let _ = tx.send(response_frame(request_id, kind, result)).await;
        });
        map.insert(request_id, task.abort_handle());
    }
}

fn error_frame(request_id: u64, kind: Kind, err: &RpcError) -> Frame {
    let header = postcard::to_stdvec(&err.to_body(kind))
        .map(Bytes::from)
        .unwrap_or_default();
    Frame {
        frame_type: FrameType::Response,
        kind,
        request_id,
        deadline_ms: 0,
        flags: flags::ERROR,
        header,
        payload: Bytes::new(),
    }
}

fn response_frame(request_id: u64, kind: Kind, result: Result<Response, RpcError>) -> Frame {
    match result {
        Ok(resp) => {
            let frame = Frame {
                frame_type: FrameType::Response,
                kind,
                request_id,
                deadline_ms: 0,
                flags: 0,
                header: resp.header,
                payload: resp.payload,
            };
            match frame.check_limits() {
                Ok(()) => frame,
                Err(e) => {
                    warn!(%kind, error = %e, "fabric: handler returned an unsendable response");
                    error_frame(request_id, kind, &RpcError::Internal(e.to_string()))
                }
            }
        }
        Err(e) => error_frame(request_id, kind, &e),
    }
}
