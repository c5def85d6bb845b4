//! The tokio driver: accepts connections, moves bytes between sockets and
//! the [`Connection`] state machine, runs SCSI commands, and carries resets
//! and reinstatement between sessions. Protocol decisions live elsewhere.

use crate::gateway::{Gateway, SessionControl};
use crate::limits;
use crate::login::keys::TargetOffer;
use crate::login::SessionType;
use crate::pdu::{self, DigestConfig, Pdu};
use crate::scsi::{ItNexus, ScsiResponse, ScsiTarget};
use crate::session::{Connection, ConnectionConfig, Event, TmfFunction, TmfResponse};
use bytes::Buf;
use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    offer: TargetOffer,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if gateway.session_count() >= limits::SESSIONS_MAX {
                        tracing::warn!(%peer, "too many sessions; refusing connection");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let gw = gateway.clone();
                    let offer = offer.clone();
                    let sd = shutdown.clone();
                    conns.spawn(async move {
                        tracing::debug!(%peer, "connection accepted");
                        run_connection(stream, gw, offer, sd).await;
                        tracing::debug!(%peer, "connection closed");
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    gateway.close_all();
    // Give connections a moment to send their last PDUs.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// Bytes read from the socket at a time.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// A SCSI command's result, or its panic turned into an error status.
type Completion = (u32, ScsiResponse);

/// Most PDUs gathered into one `writev`.
const WRITE_BATCH_PDUS_MAX: usize = 256;
/// Data segments up to this size are copied next to their header; larger
/// ones go to the socket from their own buffer, uncopied.
const INLINE_DATA_BYTES_MAX: usize = 16 * 1024;
/// iovec entries per `writev` call (Linux's IOV_MAX is 1024).
const IOVECS_MAX: usize = 1024;

/// Sends PDUs as they come, gathering whatever is queued into one `writev`.
async fn write_loop(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<(Pdu, DigestConfig)>,
) {
    let mut segments: VecDeque<Bytes> = VecDeque::new();
    let mut small = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut count = 0;
        while let Some((pdu, digests)) = next.take() {
            let trailer = pdu::codec::encode_header(&pdu, &digests, &mut small);
            if pdu.data.len() <= INLINE_DATA_BYTES_MAX {
                small.extend_from_slice(&pdu.data);
                small.extend_from_slice(trailer.as_bytes());
            } else {
                segments.push_back(small.split().freeze());
                segments.push_back(pdu.data.clone());
                small.extend_from_slice(trailer.as_bytes());
            }
            count += 1;
            if count < WRITE_BATCH_PDUS_MAX {
                next = rx.try_recv().ok();
            }
        }
        if !small.is_empty() {
            segments.push_back(small.split().freeze());
        }
        if write_segments(&mut stream, &mut segments).await.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

async fn write_segments(
    stream: &mut tokio::net::tcp::OwnedWriteHalf,
    segments: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !segments.is_empty() {
        let mut n = {
            let slices: Vec<IoSlice<'_>> = segments
                .iter()
                .take(IOVECS_MAX)
                .map(|b| IoSlice::new(b))
                .collect();
            stream.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let Some(front) = segments.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                segments.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }
    Ok(())
}

struct Driver {
    gateway: Arc<Gateway>,
    conn: Connection,
    tx: mpsc::Sender<(Pdu, DigestConfig)>,
    running: JoinSet<Completion>,
    handles: HashMap<u32, AbortHandle>,
    ids: HashMap<tokio::task::Id, u32>,
    scsi: Option<Arc<ScsiTarget>>,
    nexus: Option<ItNexus>,
    session_id: Option<u64>,
    control_tx: mpsc::UnboundedSender<SessionControl>,
    closing: bool,
}

async fn run_connection(
    stream: TcpStream,
    gateway: Arc<Gateway>,
    offer: TargetOffer,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(limits::TX_QUEUE_PDUS_MAX);
    let writer = tokio::spawn(write_loop(wr, rx));
    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let cfg = ConnectionConfig {
        directory: gateway.clone(),
        tpgt: gateway.tpgt,
        offer,
        tsih: gateway.allocate_tsih(),
    };
    let mut d = Driver {
        gateway: gateway.clone(),
        conn: Connection::new(cfg, Instant::now()),
        tx,
        running: JoinSet::new(),
        handles: HashMap::new(),
        ids: HashMap::new(),
        scsi: None,
        nexus: None,
        session_id: None,
        control_tx,
        closing: false,
    };
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    while !d.closing {
        if d.flush().await.is_err() {
            break;
        }
        if d.closing {
            break;
        }
        let deadline = d.conn.poll_timeout().map(tokio::time::Instant::from_std);
        // Without spare capacity read_buf would grow the buffer 64 bytes at a time.
        buf.reserve(READ_BUFFER_BYTES);
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                match n {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                loop {
                    match pdu::decode(&mut buf, &d.conn.digests()) {
                        Ok(Some(p)) => {
                            d.conn.handle_pdu(p, Instant::now(), &mut rng);
                            // Events may change digests (end of login) before the next PDU.
                            d.handle_events();
                            if d.conn.is_closing() {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            d.conn.handle_decode_error(&e);
                            break;
                        }
                    }
                }
            }
            Some(done) = d.running.join_next_with_id(), if !d.running.is_empty() => {
                let (itt, resp) = match done {
                    Ok((id, (itt, resp))) => {
                        d.ids.remove(&id);
                        (itt, resp)
                    }
                    Err(e) => {
                        let Some(itt) = d.ids.remove(&e.id()) else { continue };
                        if e.is_cancelled() {
                            d.handles.remove(&itt);
                            continue;
                        }
                        tracing::error!(itt, error = %e, "SCSI command panicked");
                        (itt, crate::scsi::check_condition(0x04, 0x44, 0x00)) // HARDWARE ERROR, INTERNAL TARGET FAILURE
                    }
                };
                d.handles.remove(&itt);
                d.conn.complete(itt, resp, Instant::now());
            }
            Some(ctl) = control_rx.recv() => match ctl {
                SessionControl::Close => break,
                SessionControl::AbortTasks(lun) => d.conn.abort_tasks(lun),
            },
            _ = sleep_until(deadline) => d.conn.handle_timeout(Instant::now()),
            _ = shutdown.changed() => break,
        }
        d.handle_events();
    }
    let _ = d.flush().await;
    d.running.abort_all();
    if let Some(id) = d.session_id {
        gateway.unregister(id);
    }
    if let (Some(scsi), Some(nexus)) = (&d.scsi, &d.nexus) {
        scsi.nexus_gone(nexus);
    }
    drop(d);
    let _ = writer.await;
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn flush(&mut self) -> Result<(), ()> {
        while let Some(p) = self.conn.poll_transmit() {
            // Digests apply from the PDU after the final login response.
            let digests = if p.opcode() == Some(pdu::Opcode::LoginResponse) {
                DigestConfig::default()
            } else {
                self.conn.digests()
            };
            self.tx.send((p, digests)).await.map_err(|_| ())?;
        }
        Ok(())
    }

    fn handle_events(&mut self) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::LoggedIn(outcome) => {
                    tracing::info!(
                        initiator = %outcome.initiator_name,
                        target = %outcome.target_name,
                        discovery = outcome.session_type == SessionType::Discovery,
                        "login complete"
                    );
                    if outcome.session_type == SessionType::Normal {
                        let nexus = ItNexus {
                            initiator_name: outcome.initiator_name.clone(),
                            isid: outcome.isid,
                            target_name: outcome.target_name.clone(),
                            tpgt: self.gateway.tpgt,
                        };
                        self.scsi = self
                            .gateway
                            .target(&outcome.target_name)
                            .map(|t| t.scsi.clone());
                        self.session_id = Some(self.gateway.register(
                            nexus.clone(),
                            outcome.tsih,
                            self.control_tx.clone(),
                        ));
                        self.nexus = Some(nexus);
                    }
                }
                Event::Execute { itt, request } => {
                    let (Some(scsi), Some(nexus)) = (self.scsi.clone(), self.nexus.clone()) else {
                        continue;
                    };
                    let mut command =
                        Box::pin(async move { (itt, scsi.execute(&nexus, request).await) });
                    // Most commands on RAM, and many on files, finish without
                    // waiting: answer those here and spare a task and a wake-up.
                    // A command that must wait re-registers its wakers when the
                    // runtime polls it again as a task.
                    let mut cx = Context::from_waker(std::task::Waker::noop());
                    match command.as_mut().poll(&mut cx) {
                        Poll::Ready((itt, resp)) => self.conn.complete(itt, resp, Instant::now()),
                        Poll::Pending => {
                            let handle = self.running.spawn(command);
                            self.ids.insert(handle.id(), itt);
                            self.handles.insert(itt, handle);
                        }
                    }
                }
                Event::Abort(itts) => {
                    for itt in itts {
                        if let Some(h) = self.handles.remove(&itt) {
                            h.abort();
                        }
                    }
                }
                Event::Reset { itt, function, lun } => {
                    let response = self.reset(function, lun);
                    self.conn.tmf_done(itt, response, function);
                }
                Event::Close => self.closing = true,
            }
        }
    }

    fn reset(&self, function: TmfFunction, lun: u64) -> TmfResponse {
        let (Some(scsi), Some(nexus), Some(id)) = (&self.scsi, &self.nexus, self.session_id) else {
            return TmfResponse::Rejected;
        };
        let target = &nexus.target_name;
        match function {
            TmfFunction::ClearTaskSet | TmfFunction::LogicalUnitReset => {
                if !scsi.has_lun(lun) {
                    return TmfResponse::LunDoesNotExist;
                }
                if function == TmfFunction::LogicalUnitReset {
                    scsi.lu_reset(lun);
                }
                self.gateway
                    .broadcast(target, id, SessionControl::AbortTasks(Some(lun)));
            }
            TmfFunction::TargetWarmReset => {
                scsi.target_reset();
                self.gateway
                    .broadcast(target, id, SessionControl::AbortTasks(None));
            }
            TmfFunction::TargetColdReset => {
                scsi.target_reset();
                self.gateway.broadcast(target, id, SessionControl::Close);
            }
            _ => return TmfResponse::NotSupported,
        }
        TmfResponse::FunctionComplete
    }
}
