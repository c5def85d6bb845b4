//! The volume client. Reads go straight to the holders of the data chunks
//! they touch, in parallel; a holder that fails, is marked missing, or is
//! slower than the hedge bound is read around through the extent's primary
//! (which reconstructs from the other chunks and repairs corrupt blocks).
//! Writes, UNMAP and COMPARE AND WRITE go to the primary, which orders
//! them and keeps parity in step. Extents are allocated (placed) by the
//! metadata on first write.
//!
//! A read of an extent this client has never seen allocated asks the
//! metadata (a linearizable read): another gateway may have just written
//! there, and a read must never return data older than an acknowledged
//! write.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::debug;

use super::layout::{align, Layout, LayoutError};
use crate::gossip::{Availability, View};
use crate::identity::NodeId;
use crate::metadata::client::{MetaClient, MetaClientError};
use crate::metadata::rpc::{ReadReply, ReadRequest};
use crate::metadata::{ChunkState, Command, Extent, Lun, Outcome};
use crate::rpc::{Client, RpcError};
use crate::wire::chunk::{ChunkRead, ChunkReadRequest, ChunkRef, Durability};
use crate::wire::extent::{
    extent_error, ExtentFlush, ExtentFlushRequest, ExtentPunch, ExtentPunchRequest, ExtentRead,
    ExtentReadRequest, ExtentRef, ExtentTakeover, ExtentTakeoverRequest, ExtentWrite,
    ExtentWriteRequest, EXTENT_IO_BYTES_MAX,
};
use crate::wire::Rpc;

#[derive(Clone, Debug)]
pub struct VolumeConfig {
    /// A chunk read slower than this is read around through the primary.
    pub hedge_after: Duration,
    /// Deadline of one chunk or extent call.
    pub call_timeout: Duration,
    /// How long a write keeps retrying while the extent has no reachable
    /// primary (a failover), before it fails as retryable.
    pub write_patience: Duration,
    /// Allocate extents with an admin certificate (`weft lun import`)
    /// rather than as a gateway.
    pub allocate_as_admin: bool,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            hedge_after: Duration::from_millis(300),
            call_timeout: Duration::from_secs(10),
            write_patience: Duration::from_secs(20),
            allocate_as_admin: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("range {offset}+{len} is beyond the LUN's {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("COMPARE AND WRITE miscompare at byte {0}")]
    Miscompare(u64),
    /// Cannot be served now; the initiator should retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("metadata: {0}")]
    Meta(#[from] MetaClientError),
    #[error("{0}")]
    Layout(#[from] LayoutError),
    #[error("{0}")]
    Invalid(String),
}

/// One LUN, served from the cluster.
pub struct Volume {
    lun: Mutex<Lun>,
    layout: Layout,
    meta: Arc<MetaClient>,
    rpc: Client,
    view: watch::Receiver<Arc<View>>,
    config: VolumeConfig,
    /// Allocated extents as last seen (never "not allocated": see above).
    extents: Mutex<HashMap<u64, Extent>>,
    /// Extents written since the last flush.
    dirty: Mutex<BTreeSet<u64>>,
}

impl Volume {
    pub fn new(
        lun: Lun,
        meta: Arc<MetaClient>,
        rpc: Client,
        view: watch::Receiver<Arc<View>>,
        config: VolumeConfig,
    ) -> Result<Volume, VolumeError> {
        let layout = Layout::of(&lun)?;
        Ok(Volume {
            lun: Mutex::new(lun),
            layout,
            meta,
            rpc,
            view,
            config,
            extents: Mutex::new(HashMap::new()),
            dirty: Mutex::new(BTreeSet::new()),
        })
    }

    pub fn lun(&self) -> Lun {
        self.lun.lock().clone()
    }

    pub fn size_bytes(&self) -> u64 {
        self.lun.lock().size_bytes
    }

    /// Takes a new LUN record (a resize).
    pub fn update(&self, lun: Lun) {
        *self.lun.lock() = lun;
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let size = self.size_bytes();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(VolumeError::OutOfRange { offset, len, size });
        }
        Ok(())
    }

    fn addr(&self, node: &NodeId) -> Option<SocketAddr> {
        self.view
            .borrow()
            .get(node)
            .and_then(|n| n.addrs())
            .map(|a| a.fabric)
    }

    /// The extent as allocated, asking the metadata if this client has
    /// not seen it (or `refresh`); with `allocate`, placing it if it is not.
    async fn extent(
        &self,
        index: u64,
        allocate: bool,
        refresh: bool,
    ) -> Result<Option<Extent>, VolumeError> {
        if !refresh {
            if let Some(e) = self.extents.lock().get(&index) {
                return Ok(Some(e.clone()));
            }
        }
        let lun = self.lun.lock().id;
        let found = match self.meta.read(ReadRequest::Extent { lun, index }).await? {
            ReadReply::Extent(e) => e,
            _ => None,
        };
        let e = match (found, allocate) {
            (Some(e), _) => Some(e),
            (None, false) => None,
            (None, true) => {
                let cmd = Command::AllocateExtent {
                    lun,
                    index,
                    nodes: Vec::new(),
                };
                let reply = if self.config.allocate_as_admin {
                    self.meta.admin(cmd).await?
                } else {
                    self.meta.node(cmd).await?
                };
                match reply.outcome {
                    Outcome::Extent(e) => Some(e),
                    o => return Err(VolumeError::Invalid(format!("allocation answered {o:?}"))),
                }
            }
        };
        if let Some(e) = &e {
            self.extents.lock().insert(index, e.clone());
        }
        Ok(e)
    }

    fn eref(&self, e: &Extent) -> ExtentRef {
        ExtentRef {
            lun: e.lun,
            extent: e.index,
            epoch: e.epoch,
        }
    }

    /// Reads `len` bytes at LUN offset `offset`.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, VolumeError> {
        self.check(offset, len)?;
        let mut out = BytesMut::zeroed(len as usize);
        for span in self.layout.extents(offset, len) {
            let Some(e) = self.extent(span.extent, false, false).await? else {
                continue; // never written: zeroes
            };
            let data = match self.read_direct(&e, span.offset, span.len).await {
                Some(d) => d,
                None => {
                    self.read_via_primary(span.extent, span.offset, span.len)
                        .await?
                }
            };
            let at = span.buf as usize;
            out[at..at + data.len()].copy_from_slice(&data);
        }
        Ok(out.freeze())
    }

    /// Reads each touched data chunk from its holder, in parallel; `None`
    /// if any chunk cannot be read that way within the hedge bound.
    async fn read_direct(&self, e: &Extent, offset: u64, len: u64) -> Option<Bytes> {
        let ranges = self.layout.chunk_ranges(offset, len);
        let mut set = JoinSet::new();
        for (j, r) in ranges.iter().enumerate() {
            let Some((a, b)) = *r else { continue };
            if e.chunks.get(j) != Some(&ChunkState::Ok) {
                return None;
            }
            let node = e.nodes.get(j)?.clone();
            // A holder gossip suspects is read around at once.
            if self.view.borrow().availability(&node) != Some(Availability::Alive) {
                return None;
            }
            let addr = self.addr(&node)?;
            let (a, b) = align(a, b);
            let req = ChunkReadRequest {
                chunk: ChunkRef {
                    lun: e.lun,
                    extent: e.index,
                    index: j as u8,
                },
                epoch: e.epoch,
                offset: a,
                len: (b - a) as u32,
            };
            let rpc = self.rpc.clone();
            let deadline = Instant::now() + self.config.hedge_after;
            set.spawn(async move {
                let r = rpc
                    .call::<ChunkRead>(addr, &node, &req, Bytes::new(), deadline)
                    .await;
                (j, a, r)
            });
        }
        let mut bufs: HashMap<usize, (u64, Bytes)> = HashMap::new();
        while let Some(res) = set.join_next().await {
            let (j, a, r) = res.ok()?;
            match r {
                Ok((_, data)) => {
                    bufs.insert(j, (a, data));
                }
                Err(err) => {
                    debug!(chunk = j, %err, "direct read failed: reading through the primary");
                    return None;
                }
            }
        }
        let mut out = BytesMut::zeroed(len as usize);
        for p in self.layout.pieces(offset, len) {
            let (a, data) = bufs.get(&(p.chunk as usize))?;
            let from = (p.chunk_off - a) as usize;
            let src = data.get(from..from + p.len as usize)?;
            out[p.buf as usize..(p.buf + p.len) as usize].copy_from_slice(src);
        }
        Some(out.freeze())
    }

    async fn read_via_primary(
        &self,
        index: u64,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, VolumeError> {
        let mut out = BytesMut::with_capacity(len as usize);
        let step = u64::from(EXTENT_IO_BYTES_MAX);
        let mut pos = offset;
        while pos < offset + len {
            let n = step.min(offset + len - pos);
            let data = self
                .via_primary::<ExtentRead, _>(
                    index,
                    false,
                    |r| ExtentReadRequest {
                        extent: r,
                        offset: pos,
                        len: n as u32,
                    },
                    Bytes::new(),
                )
                .await?;
            if data.len() as u64 != n {
                return Err(VolumeError::Unavailable(format!(
                    "primary returned {} bytes for {n}",
                    data.len()
                )));
            }
            out.extend_from_slice(&data);
            pos += n;
        }
        Ok(out.freeze())
    }

    /// Calls the extent's primary, following epoch and primary changes and
    /// waiting out a failover (within `write_patience`). A primary that
    /// cannot be reached twice in a row is replaced: another holder is
    /// asked to take over (it checks for itself; the metadata's lease rule
    /// decides when).
    async fn via_primary<R, F>(
        &self,
        index: u64,
        allocate: bool,
        make: F,
        payload: Bytes,
    ) -> Result<Bytes, VolumeError>
    where
        R: Rpc,
        F: Fn(ExtentRef) -> R::Request,
    {
        let end = Instant::now() + self.config.write_patience;
        let mut refresh = false;
        let mut unreachable = 0;
        let mut last;
        loop {
            let e = match self.extent(index, allocate, refresh).await {
                Ok(Some(e)) => e,
                Ok(None) => {
                    return Err(VolumeError::Invalid(format!(
                        "extent {index} is not allocated"
                    )))
                }
                // A placement can fail while the cluster converges (the
                // leader's gossip has not yet seen enough nodes alive), and
                // the metadata can be between leaders: both pass; wait.
                Err(err @ VolumeError::Meta(_)) if Instant::now() < end => {
                    debug!(%err, extent = index, "extent not available yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            refresh = true;
            let primary = e.primary_node().cloned();
            let target = primary
                .as_ref()
                .and_then(|p| Some((p.clone(), self.addr(p)?)));
            if let Some((node, addr)) = target {
                let deadline = Instant::now() + self.config.call_timeout;
                match self
                    .rpc
                    .call::<R>(addr, &node, &make(self.eref(&e)), payload.clone(), deadline)
                    .await
                {
                    Ok((_, data)) => return Ok(data),
                    Err(RpcError::Application { code, detail }) => {
                        unreachable = 0;
                        match code {
                            extent_error::MISCOMPARE => {
                                return Err(VolumeError::Miscompare(
                                    detail.trim().parse().unwrap_or(0),
                                ))
                            }
                            extent_error::INVALID => return Err(VolumeError::Invalid(detail)),
                            _ => last = format!("{node}: {detail}"),
                        }
                    }
                    Err(err) => {
                        unreachable += 1;
                        last = format!("{node}: {err}");
                    }
                }
            } else {
                unreachable += 1;
                last = format!("primary {primary:?} has no known address");
            }
            if unreachable >= 2 {
                self.takeover(&e).await;
                unreachable = 0;
            }
            if Instant::now() >= end {
                return Err(VolumeError::Unavailable(last));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks the holders of `e` in turn to take over as its primary:
    /// parity holders first (a data holder as primary risks its own chunk
    /// with the rows in doubt when it crashes: `docs/data-path.md`).
    async fn takeover(&self, e: &Extent) {
        let k = self.layout.k as usize;
        let order = (k..e.nodes.len()).chain(0..k.min(e.nodes.len()));
        for slot in order {
            let Some(node) = e.nodes.get(slot) else {
                continue;
            };
            if slot == usize::from(e.primary) || e.chunks.get(slot) != Some(&ChunkState::Ok) {
                continue;
            }
            let Some(addr) = self.addr(node) else {
                continue;
            };
            let req = ExtentTakeoverRequest {
                extent: self.eref(e),
            };
            // The holder waits for the old primary's lease to lapse.
            let deadline = Instant::now() + self.config.write_patience;
            match self
                .rpc
                .call::<ExtentTakeover>(addr, node, &req, Bytes::new(), deadline)
                .await
            {
                Ok(_) => {
                    debug!(%node, extent = e.index, "took over as primary");
                    return;
                }
                Err(err) => debug!(%node, %err, "takeover refused"),
            }
        }
    }

    /// Writes `data` at LUN offset `offset`; with `stable`, only once it is
    /// on stable storage on every available chunk.
    pub async fn write(&self, offset: u64, data: Bytes, stable: bool) -> Result<(), VolumeError> {
        self.check(offset, data.len() as u64)?;
        let durability = if stable {
            Durability::Stable
        } else {
            Durability::Buffered
        };
        let step = u64::from(EXTENT_IO_BYTES_MAX);
        for span in self.layout.extents(offset, data.len() as u64) {
            let mut pos = 0;
            while pos < span.len {
                let n = step.min(span.len - pos);
                let from = (span.buf + pos) as usize;
                let part = data.slice(from..from + n as usize);
                let at = span.offset + pos;
                self.via_primary::<ExtentWrite, _>(
                    span.extent,
                    true,
                    |r| ExtentWriteRequest {
                        extent: r,
                        offset: at,
                        durability,
                        compare_len: 0,
                    },
                    part,
                )
                .await?;
                pos += n;
            }
            if !stable {
                self.dirty.lock().insert(span.extent);
            }
        }
        Ok(())
    }

    /// COMPARE AND WRITE: atomic at the extent's primary. The range must
    /// lie within one extent.
    pub async fn compare_and_write(
        &self,
        offset: u64,
        compare: Bytes,
        write: Bytes,
        stable: bool,
    ) -> Result<(), VolumeError> {
        let len = write.len() as u64;
        self.check(offset, len)?;
        let spans = self.layout.extents(offset, len);
        let [span] = spans.as_slice() else {
            return Err(VolumeError::Invalid(
                "COMPARE AND WRITE across an extent boundary".into(),
            ));
        };
        let mut payload = BytesMut::with_capacity(2 * len as usize);
        payload.extend_from_slice(&compare);
        payload.extend_from_slice(&write);
        let durability = if stable {
            Durability::Stable
        } else {
            Durability::Buffered
        };
        self.via_primary::<ExtentWrite, _>(
            span.extent,
            true,
            |r| ExtentWriteRequest {
                extent: r,
                offset: span.offset,
                durability,
                compare_len: len as u32,
            },
            payload.freeze(),
        )
        .await?;
        if !stable {
            self.dirty.lock().insert(span.extent);
        }
        Ok(())
    }

    /// Deallocates a range: it reads back as zeroes.
    pub async fn unmap(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.check(offset, len)?;
        for span in self.layout.extents(offset, len) {
            if self.extent(span.extent, false, true).await?.is_none() {
                continue;
            }
            self.via_primary::<ExtentPunch, _>(
                span.extent,
                false,
                |r| ExtentPunchRequest {
                    extent: r,
                    offset: span.offset,
                    len: span.len,
                    durability: Durability::Buffered,
                },
                Bytes::new(),
            )
            .await?;
            self.dirty.lock().insert(span.extent);
        }
        Ok(())
    }

    /// Makes every write completed so far durable: every extent written
    /// since the last flush is flushed by its primary, all at once (a
    /// random write load dirties every extent of the LUN, and one after
    /// another a flush waited for the sum of their syncs).
    pub async fn flush(self: &Arc<Self>) -> Result<(), VolumeError> {
        let dirty = std::mem::take(&mut *self.dirty.lock());
        let mut set = JoinSet::new();
        for index in dirty.iter().copied() {
            let v = self.clone();
            set.spawn(async move {
                let r = v
                    .via_primary::<ExtentFlush, _>(
                        index,
                        false,
                        |r| ExtentFlushRequest { extent: r },
                        Bytes::new(),
                    )
                    .await;
                (index, r)
            });
        }
        let mut left = dirty;
        let mut first_err = None;
        while let Some(res) = set.join_next().await {
            match res {
                Ok((index, Ok(_))) => {
                    left.remove(&index);
                }
                Ok((_, Err(e))) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(VolumeError::Unavailable(format!("flush task: {e}")));
                }
            }
        }
        match first_err {
            None => Ok(()),
            Some(e) => {
                // Whatever was not flushed stays dirty for the next try.
                self.dirty.lock().extend(left);
                Err(e)
            }
        }
    }

    /// Whether any byte of the range may be allocated (GET LBA STATUS):
    /// an extent that was never placed is certainly deallocated.
    pub async fn allocated(&self, offset: u64) -> Result<(bool, u64), VolumeError> {
        let eb = self.layout.extent_bytes();
        let index = offset / eb;
        let end = ((index + 1) * eb).min(self.size_bytes());
        let e = self.extent(index, false, false).await?;
        Ok((e.is_some(), end - offset))
    }
}
