//! The client side of one multiplexed connection, and the read/write loops
//! both sides share. Generic over the byte stream: the product only ever
//! hands it a TLS stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};
use tokio_util::codec::Decoder;
use tracing::{debug, warn};

use super::{Response, RpcError, READ_BUFFER_BYTES, WRITE_BUFFER_BYTES, WRITE_QUEUE_FRAMES};
use crate::identity::PeerIdentity;
use crate::wire::{
    flags, ErrorBody, Frame, FrameCodec, FrameType, Inbound, Kind, WireError, WIRE_VERSION,
};

/// Free space below which the read buffer grows before the next read.
const READ_SPACE_MIN_BYTES: usize = 4 * 1024;

/// Reads the next frame. `Ok(None)` is a clean end of stream between frames;
/// an end inside a frame is `WireError::Truncated`.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    codec: &mut FrameCodec,
    buf: &mut BytesMut,
) -> Result<Option<Inbound>, WireError> {
    loop {
        if let Some(item) = codec.decode(buf)? {
            return Ok(Some(item));
        }
        // `decode` has reserved room for the rest of a large frame already.
        if buf.capacity() - buf.len() < READ_SPACE_MIN_BYTES {
            buf.reserve(READ_BUFFER_BYTES);
        }
        if r.read_buf(buf).await? == 0 {
            return codec.decode_eof(buf);
        }
    }
}

/// Writes frames from `rx` until it closes. Small frames are coalesced in a
/// buffer and flushed when the queue runs dry; payloads larger than the
/// buffer go straight from their `Bytes` to the stream.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Frame>,
) -> Result<(), WireError> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, w);
    let mut head = BytesMut::with_capacity(1024);
    while let Some(frame) = rx.recv().await {
        write_frame(&mut w, &mut head, &frame).await?;
        while let Ok(frame) = rx.try_recv() {
            write_frame(&mut w, &mut head, &frame).await?;
        }
        w.flush().await?;
    }
    w.shutdown().await?;
    Ok(())
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut BufWriter<W>,
    head: &mut BytesMut,
    frame: &Frame,
) -> Result<(), WireError> {
    head.clear();
    if let Err(e) = frame.encode_head(head) {
        // Senders check limits before queueing; never put a frame the
        // receiver would refuse on the wire (it would close the connection).
        warn!(error = %e, kind = %frame.kind, "fabric: dropping an unsendable frame");
        return Ok(());
    }
    w.write_all(head).await?;
    if !frame.payload.is_empty() {
        w.write_all(&frame.payload).await?;
    }
    Ok(())
}

type Pending = oneshot::Sender<Result<Frame, RpcError>>;

struct State {
    pending: BTreeMap<u64, Pending>,
    /// Why the connection closed, once it has.
    closed: Option<String>,
}

struct Inner {
    tx: mpsc::Sender<Frame>,
    state: Mutex<State>,
    next_id: AtomicU64,
    peer: PeerIdentity,
}

impl Inner {
    fn close(&self, reason: String) {
        let pending: Vec<Pending> = {
            let mut st = self.state.lock();
            if st.closed.is_none() {
                st.closed = Some(reason.clone());
            }
            std::mem::take(&mut st.pending).into_values().collect()
        };
        for p in pending {
            let _ = p.send(Err(RpcError::ConnectionClosed(reason.clone())));
        }
    }

    fn closed_reason(&self) -> String {
        self.state
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| "connection closed".to_owned())
    }
}

/// One connection to a peer, shared by many concurrent calls (multiplexed by
/// request id). Dropping it stops its tasks and closes the stream.
pub struct Connection {
    inner: Arc<Inner>,
    tasks: [AbortHandle; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.inner.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Starts the reader and writer tasks over `stream`, whose far end was
    /// authenticated as `peer`.
    pub(crate) fn start<S>(stream: S, peer: PeerIdentity) -> Connection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let inner = Arc::new(Inner {
            tx,
            state: Mutex::new(State {
                pending: BTreeMap::new(),
                closed: None,
            }),
            next_id: AtomicU64::new(1),
            peer,
        });
        let w_inner = inner.clone();
        let writer = tokio::spawn(async move {
            let reason = match write_loop(wr, rx).await {
                Ok(()) => "writer finished".to_owned(),
                Err(e) => format!("write failed: {e}"),
            };
            w_inner.close(reason);
        });
        let reader = tokio::spawn(client_read_loop(rd, inner.clone()));
        Connection {
            inner,
            tasks: [writer.abort_handle(), reader.abort_handle()],
        }
    }

    /// The peer, as its certificate names it.
    pub fn peer(&self) -> &PeerIdentity {
        &self.inner.peer
    }

    /// Whether the connection has closed (calls on it fail at once).
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed.is_some()
    }

    /// Calls in flight on this connection.
    pub fn pending_calls(&self) -> usize {
        self.inner.state.lock().pending.len()
    }

    /// Sends a request and waits for its response until `deadline`.
    /// Dropping the returned future before it completes sends a cancel frame.
    pub async fn call_raw(
        &self,
        kind: Kind,
        header: Bytes,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Response, RpcError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(RpcError::DeadlineExceeded);
        }
        let request_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = Frame {
            frame_type: FrameType::Request,
            kind,
            request_id,
            deadline_ms: u32::try_from(remaining.as_millis())
                .unwrap_or(u32::MAX)
                .max(1),
            flags: 0,
            header,
            payload,
        };
        frame.check_limits()?;
        let (otx, orx) = oneshot::channel();
        {
            let mut st = self.inner.state.lock();
            if let Some(reason) = &st.closed {
                return Err(RpcError::ConnectionClosed(reason.clone()));
            }
            st.pending.insert(request_id, otx);
        }
        let mut guard = PendingGuard {
            inner: &self.inner,
            request_id,
            kind,
            sent: false,
            done: false,
        };
        match timeout_at(deadline, self.inner.tx.send(frame)).await {
            Err(_) => return Err(RpcError::DeadlineExceeded),
            Ok(Err(_)) => return Err(RpcError::ConnectionClosed(self.inner.closed_reason())),
            Ok(Ok(())) => guard.sent = true,
        }
        let frame = match timeout_at(deadline, orx).await {
            Err(_) => return Err(RpcError::DeadlineExceeded),
            Ok(Err(_)) => return Err(RpcError::ConnectionClosed(self.inner.closed_reason())),
            Ok(Ok(result)) => {
                guard.done = true;
                result?
            }
        };
        if frame.flags & flags::ERROR != 0 {
            let body: ErrorBody = postcard::from_bytes(&frame.header)
                .map_err(|e| RpcError::Codec(format!("error response: {e}")))?;
            return Err(RpcError::from_body(body, kind));
        }
        Ok(Response {
            header: frame.header,
            payload: frame.payload,
        })
    }
}

/// Forgets a call that ended without its response (deadline, dropped
/// future) and tells the server, so it can stop the handler.
struct PendingGuard<'a> {
    inner: &'a Inner,
    request_id: u64,
    kind: Kind,
    sent: bool,
    done: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.inner.state.lock().pending.remove(&self.request_id);
        if self.sent {
            // Best effort: if the queue is full the cancel is lost, and the
            // server's own copy of the deadline frees the handler instead.
            let _ = self.inner.tx.try_send(Frame {
                frame_type: FrameType::Cancel,
                kind: self.kind,
                request_id: self.request_id,
                deadline_ms: 0,
                flags: 0,
                header: Bytes::new(),
                payload: Bytes::new(),
            });
        }
    }
}

async fn client_read_loop<R: AsyncRead + Unpin>(mut rd: R, inner: Arc<Inner>) {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let reason = loop {
        match read_frame(&mut rd, &mut codec, &mut buf).await {
            Ok(Some(Inbound::Frame(frame))) => match frame.frame_type {
                FrameType::Response => {
                    let p = inner.state.lock().pending.remove(&frame.request_id);
                    // None: a late answer to a call that gave up; dropped.
                    if let Some(p) = p {
                        let _ = p.send(Ok(frame));
                    }
                }
                other => {
                    warn!(peer = %inner.peer, frame_type = ?other,
                        "fabric: peer sent a non-response frame on a client connection; closing");
                    break format!("protocol violation: {other:?} frame from server");
                }
            },
            Ok(Some(Inbound::Unsupported(u))) => {
                warn!(peer = %inner.peer, version = u.version, kind = %u.kind,
                    "fabric: response in an unsupported wire version");
                let p = inner.state.lock().pending.remove(&u.request_id);
                if let Some(p) = p {
                    let _ = p.send(Err(RpcError::UnsupportedVersion {
                        version: u.version,
                        max_supported: WIRE_VERSION,
                    }));
                }
            }
            Ok(None) => break "peer closed the connection".to_owned(),
            Err(e) => {
                warn!(peer = %inner.peer, error = %e, "fabric: closing client connection");
                break e.to_string();
            }
        }
    };
    debug!(peer = %inner.peer, reason, "fabric: client connection closed");
    inner.close(reason);
}
