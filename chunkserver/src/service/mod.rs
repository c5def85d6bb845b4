//! The chunk RPC service: the chunk store served over the fabric.
//!
//! Each kind of `fabric::wire::chunk` gets one handler: decode (done by the
//! router), check what can be checked without the disk ([`check_request`]:
//! pure, also the fuzz entry point), then one store call. Every failure is
//! a [`ChunkError`], mapped to an RPC error in one place (`error.rs`), so a
//! caller always gets a typed code (stale epoch, checksum, full, ...) with
//! a detail naming the numbers, and nothing a peer sends can panic a
//! handler.
//!
//! Who may send what is decided by `fabric::wire::KIND_TABLE` before a
//! handler runs (see `docs/chunkserver.md`).

mod capacity;
mod error;
pub mod fence;
pub mod io_stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use fabric::gossip::IoMeter;
use fabric::identity::{PeerIdentity, Role};
use fabric::rpc::{Router, RouterError};
use fabric::wire::chunk::{
    BadBlocks, ChunkApplyDelta, ChunkApplyDeltaRequest, ChunkCreate, ChunkCreateRequest,
    ChunkDelete, ChunkDeleteRequest, ChunkDescriptor, ChunkFetch, ChunkFetchRequest,
    ChunkFetchResponse, ChunkFlush, ChunkList, ChunkListRequest, ChunkListResponse, ChunkOverwrite,
    ChunkPunch, ChunkPunchRequest, ChunkPut, ChunkPutRequest, ChunkRead, ChunkReadRequest,
    ChunkRef, ChunkScrub, ChunkScrubRequest, ChunkScrubResponse, ChunkSetEpoch,
    ChunkSetEpochRequest, ChunkStats, ChunkStatsResponse, ChunkWrite, ChunkWriteRequest, Done,
    Durability as WireDurability, CHUNK_IO_BYTES_MAX, CHUNK_LIST_PAGE_MAX,
    SCRUB_BAD_BLOCKS_LISTED_MAX,
};
use fabric::wire::{Kind, Rpc, PAYLOAD_BYTES_MAX};
use fabric::RpcError;
use tracing::{debug, warn};

use crate::meta::agent::Lease;
use crate::store::{ChunkId, ChunkInfo, ChunkMeta, ChunkState, ChunkStore, Durability};

pub use capacity::{capacity_of, spawn_capacity_publisher, CAPACITY_INTERVAL_MS_DEFAULT};
pub use error::{code_name, ChunkError};
pub use fence::Fences;

impl From<ChunkRef> for ChunkId {
    fn from(c: ChunkRef) -> ChunkId {
        ChunkId {
            lun: c.lun,
            extent: c.extent,
            index: c.index,
        }
    }
}

impl From<ChunkId> for ChunkRef {
    fn from(c: ChunkId) -> ChunkRef {
        ChunkRef {
            lun: c.lun,
            extent: c.extent,
            index: c.index,
        }
    }
}

fn durability(d: WireDurability) -> Durability {
    match d {
        WireDurability::Buffered => Durability::Buffered,
        WireDurability::Stable => Durability::Stable,
    }
}

fn descriptor(info: ChunkInfo) -> ChunkDescriptor {
    ChunkDescriptor {
        chunk: info.id.into(),
        size_bytes: info.size_bytes,
        epoch: info.epoch,
        version: info.version,
        state: match info.state {
            ChunkState::Ok => "Ok".into(),
            ChunkState::NeedsRepair { blocks } => format!("NeedsRepair({} blocks)", blocks.len()),
        },
        allocated_bytes: info.allocated_bytes,
    }
}

fn too_large(what: &'static str, bytes: u64, max_bytes: u64) -> Result<(), ChunkError> {
    if bytes > max_bytes {
        return Err(ChunkError::TooLarge {
            what,
            bytes,
            max_bytes,
        });
    }
    Ok(())
}

/// A decoded chunk request, for the checks that need no disk.
#[derive(Debug)]
pub enum ChunkRequest<'a> {
    Read(&'a ChunkReadRequest),
    Write(&'a ChunkWriteRequest),
    ApplyDelta(&'a ChunkApplyDeltaRequest),
    Put(&'a ChunkPutRequest),
    Other,
}

/// The service's own checks of a request and its payload, before the store
/// sees it: lengths against `CHUNK_IO_BYTES_MAX` (what one request may
/// make this node buffer), payloads that should be empty. Range, alignment
/// and epoch checks need the chunk and are the store's.
pub fn check_request(req: ChunkRequest<'_>, payload_bytes: usize) -> Result<(), ChunkError> {
    let io_max = u64::from(CHUNK_IO_BYTES_MAX);
    let payload = payload_bytes as u64;
    match req {
        ChunkRequest::Read(r) => {
            too_large("read", u64::from(r.len), io_max)?;
            if payload != 0 {
                return Err(ChunkError::Invalid(format!(
                    "a read carries no payload ({payload} bytes sent)"
                )));
            }
        }
        ChunkRequest::Write(_) => too_large("write", payload, io_max)?,
        ChunkRequest::ApplyDelta(_) => too_large("parity delta", payload, io_max)?,
        ChunkRequest::Put(p) => {
            too_large("chunk stream", p.size_bytes, PAYLOAD_BYTES_MAX as u64)?;
            if payload > p.size_bytes {
                return Err(ChunkError::Invalid(format!(
                    "{payload} bytes of data for a chunk of {} bytes",
                    p.size_bytes
                )));
            }
        }
        ChunkRequest::Other => {}
    }
    Ok(())
}

/// Fuzz entry point: decodes `header` as the request of chunk kind `kind`
/// and runs [`check_request`] on it with a payload of `payload_bytes`.
/// Never panics; the result is for the fuzzer to ignore.
pub fn decode_request_for_fuzz(kind: u16, header: &[u8], payload_bytes: usize) -> bool {
    fn dec<R: Rpc>(header: &[u8]) -> Option<R::Request> {
        postcard::from_bytes::<R::Request>(header).ok()
    }
    let checked = match Kind(kind) {
        Kind::CHUNK_READ => dec::<ChunkRead>(header)
            .map(|r| check_request(ChunkRequest::Read(&r), payload_bytes).is_ok()),
        Kind::CHUNK_WRITE => dec::<ChunkWrite>(header)
            .map(|r| check_request(ChunkRequest::Write(&r), payload_bytes).is_ok()),
        Kind::CHUNK_OVERWRITE => dec::<ChunkOverwrite>(header)
            .map(|r| check_request(ChunkRequest::Write(&r), payload_bytes).is_ok()),
        Kind::CHUNK_APPLY_DELTA => dec::<ChunkApplyDelta>(header)
            .map(|r| check_request(ChunkRequest::ApplyDelta(&r), payload_bytes).is_ok()),
        Kind::CHUNK_PUT => dec::<ChunkPut>(header)
            .map(|r| check_request(ChunkRequest::Put(&r), payload_bytes).is_ok()),
        Kind::CHUNK_PUNCH => dec::<ChunkPunch>(header).map(|_| true),
        Kind::CHUNK_CREATE => dec::<ChunkCreate>(header).map(|_| true),
        Kind::CHUNK_DELETE => dec::<ChunkDelete>(header).map(|_| true),
        Kind::CHUNK_SET_EPOCH => dec::<ChunkSetEpoch>(header).map(|_| true),
        Kind::CHUNK_FETCH => dec::<ChunkFetch>(header).map(|_| true),
        Kind::CHUNK_LIST => dec::<ChunkList>(header).map(|_| true),
        Kind::CHUNK_STATS => dec::<ChunkStats>(header).map(|_| true),
        Kind::CHUNK_FLUSH => dec::<ChunkFlush>(header).map(|_| true),
        Kind::CHUNK_SCRUB => dec::<ChunkScrub>(header).map(|_| true),
        _ => None,
    };
    checked.unwrap_or(false)
}

/// The chunk service over one store.
#[derive(Clone)]
pub struct ChunkService {
    store: Arc<ChunkStore>,
    /// When set, gateways are served only while it is valid (DESIGN.md:
    /// a node stops serving when its lease lapses, so a replaced chunk is
    /// never read from its old holder).
    lease: Option<Arc<Lease>>,
    /// Chunks not served to gateways below an epoch (`fence.rs`).
    fences: Arc<Fences>,
    /// Every chunk request handled, for `weft top` (`io_stats`).
    io: Arc<IoMeter>,
    /// Test hook `chunk-write:N` of [`crate::primary::CRASH_POINT_ENV`],
    /// and the delta writes taken so far.
    crash_after_write: Option<u64>,
    writes: Arc<AtomicU64>,
}

/// Test hook `chunk-write:N`: the process aborts once its N-th delta
/// write is applied, before answering it (a write applied whose answer is
/// lost). Unset in every real deployment.
fn crash_after_write() -> Option<u64> {
    std::env::var(crate::primary::CRASH_POINT_ENV)
        .ok()?
        .strip_prefix("chunk-write:")?
        .parse()
        .ok()
}

impl std::fmt::Debug for ChunkService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkService").finish_non_exhaustive()
    }
}

/// Logs a refused request (at debug for the expected refusals, warn for
/// local failures) and maps it.
fn refuse(kind: Kind, peer: &PeerIdentity, e: ChunkError) -> RpcError {
    match &e {
        ChunkError::Store(crate::store::StoreError::Io(_))
        | ChunkError::Store(crate::store::StoreError::Index(_)) => {
            warn!(%kind, %peer, error = %e, "chunk request failed")
        }
        _ => debug!(%kind, %peer, error = %e, code = code_name(e.code()), "chunk request refused"),
    }
    e.to_rpc()
}

/// `route!(router, svc, Rpc, method)` calls `svc.method(req, payload)`;
/// `route!(router, svc, Rpc, peer => method(&peer))` also hands the
/// handler the peer (reads: gateways are fenced, `fence.rs`).
macro_rules! route {
    ($router:expr, $svc:expr, $rpc:ty, $method:ident) => {
        route!($router, $svc, $rpc, peer => $method())
    };
    ($router:expr, $svc:expr, $rpc:ty, $peer:ident => $method:ident($($arg:expr)?)) => {{
        let svc = $svc.clone();
        $router.register::<$rpc, _, _>(move |$peer, req, payload| {
            let svc = svc.clone();
            async move {
                let started = tokio::time::Instant::now();
                let request_bytes = payload.len();
                let served = match svc.check_lease(&$peer) {
                    Ok(()) => svc.$method($($arg,)? req, payload).await,
                    Err(e) => Err(e),
                };
                io_stats::count(
                    &svc.io,
                    <$rpc as Rpc>::KIND,
                    request_bytes,
                    &served,
                    started,
                );
                served.map_err(|e| refuse(<$rpc as Rpc>::KIND, &$peer, e))
            }
        })?;
    }};
}

type Answer<T> = Result<(T, Bytes), ChunkError>;

/// Room for clock skew between this node and the leader that granted
/// the lease: the node stops serving this much before the lease ends.
pub const LEASE_MARGIN_MS: u64 = 500;

impl ChunkService {
    pub fn new(store: Arc<ChunkStore>) -> ChunkService {
        ChunkService {
            store,
            lease: None,
            fences: Arc::new(Fences::default()),
            io: Arc::new(IoMeter::new()),
            crash_after_write: crash_after_write(),
            writes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The counters of every chunk request this service handles (its
    /// clones share them), for gossip.
    pub fn io_meter(&self) -> Arc<IoMeter> {
        self.io.clone()
    }

    /// Serve gateways only while `lease` is valid.
    pub fn with_lease(mut self, lease: Arc<Lease>) -> ChunkService {
        self.lease = Some(lease);
        self
    }

    /// The fences this service honours (the lease agent fills them).
    pub fn fences(&self) -> Arc<Fences> {
        self.fences.clone()
    }

    fn check_lease(&self, peer: &PeerIdentity) -> Result<(), ChunkError> {
        match &self.lease {
            Some(l) if peer.role == Role::Gateway && !l.valid(LEASE_MARGIN_MS) => {
                Err(ChunkError::NoLease)
            }
            _ => Ok(()),
        }
    }

    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// Installs a handler for every chunk kind.
    pub fn register(&self, router: &mut Router) -> Result<(), RouterError> {
        route!(router, self, ChunkRead, peer => read(&peer));
        route!(router, self, ChunkWrite, write);
        route!(router, self, ChunkOverwrite, overwrite);
        route!(router, self, ChunkApplyDelta, apply_delta);
        route!(router, self, ChunkPunch, punch);
        route!(router, self, ChunkCreate, create);
        route!(router, self, ChunkDelete, delete);
        route!(router, self, ChunkSetEpoch, set_epoch);
        route!(router, self, ChunkFetch, fetch);
        route!(router, self, ChunkPut, put);
        route!(router, self, ChunkList, list);
        route!(router, self, ChunkStats, stats);
        route!(router, self, ChunkFlush, flush);
        route!(router, self, ChunkScrub, scrub);
        Ok(())
    }

    async fn read(&self, peer: &PeerIdentity, r: ChunkReadRequest, payload: Bytes) -> Answer<Done> {
        check_request(ChunkRequest::Read(&r), payload.len())?;
        if peer.role == Role::Gateway {
            self.fences.check(r.chunk.into(), r.epoch)?;
        }
        let data = self
            .store
            .read(r.chunk.into(), r.offset, u64::from(r.len), r.epoch)
            .await?;
        Ok((Done {}, data))
    }

    async fn write(&self, r: ChunkWriteRequest, payload: Bytes) -> Answer<Done> {
        check_request(ChunkRequest::Write(&r), payload.len())?;
        let delta = self
            .store
            .write(
                r.chunk.into(),
                r.offset,
                payload,
                r.epoch,
                durability(r.durability),
            )
            .await?;
        if let Some(n) = self.crash_after_write {
            if self.writes.fetch_add(1, Ordering::Relaxed) + 1 == n {
                warn!("test hook: aborting after a chunk write, before answering it");
                std::process::abort();
            }
        }
        Ok((Done {}, delta))
    }

    async fn overwrite(&self, r: ChunkWriteRequest, payload: Bytes) -> Answer<Done> {
        check_request(ChunkRequest::Write(&r), payload.len())?;
        self.store
            .overwrite(
                r.chunk.into(),
                r.offset,
                payload,
                r.epoch,
                durability(r.durability),
            )
            .await?;
        Ok((Done {}, Bytes::new()))
    }

    async fn apply_delta(&self, r: ChunkApplyDeltaRequest, payload: Bytes) -> Answer<Done> {
        check_request(ChunkRequest::ApplyDelta(&r), payload.len())?;
        self.store
            .apply_delta(
                r.chunk.into(),
                r.offset,
                payload,
                r.epoch,
                durability(r.durability),
            )
            .await?;
        Ok((Done {}, Bytes::new()))
    }

    async fn punch(&self, r: ChunkPunchRequest, _payload: Bytes) -> Answer<Done> {
        self.store
            .punch(
                r.chunk.into(),
                r.offset,
                r.len,
                r.epoch,
                durability(r.durability),
            )
            .await?;
        Ok((Done {}, Bytes::new()))
    }

    async fn create(&self, r: ChunkCreateRequest, _payload: Bytes) -> Answer<Done> {
        let meta = ChunkMeta {
            size_bytes: r.size_bytes,
            epoch: r.epoch,
        };
        self.store.create(r.chunk.into(), meta).await?;
        Ok((Done {}, Bytes::new()))
    }

    /// Refuses `epoch` if the chunk is at a newer one.
    fn check_epoch(&self, id: ChunkId, epoch: u64) -> Result<ChunkInfo, ChunkError> {
        let info = self
            .store
            .info(id)
            .ok_or(crate::store::StoreError::NotFound(id))?;
        if epoch < info.epoch {
            return Err(crate::store::StoreError::StaleEpoch {
                id,
                have: info.epoch,
                got: epoch,
            }
            .into());
        }
        Ok(info)
    }

    async fn delete(&self, r: ChunkDeleteRequest, _payload: Bytes) -> Answer<Done> {
        let id = r.chunk.into();
        self.check_epoch(id, r.epoch)?;
        self.store.delete(id).await?;
        Ok((Done {}, Bytes::new()))
    }

    async fn set_epoch(&self, r: ChunkSetEpochRequest, _payload: Bytes) -> Answer<Done> {
        self.store.set_epoch(r.chunk.into(), r.epoch).await?;
        Ok((Done {}, Bytes::new()))
    }

    async fn fetch(&self, r: ChunkFetchRequest, _payload: Bytes) -> Answer<ChunkFetchResponse> {
        let id = r.chunk.into();
        let info = self.check_epoch(id, r.epoch)?;
        // Whole chunks travel in one frame for now (see docs: streaming in
        // pieces is left for chunks over the payload limit).
        too_large("chunk stream", info.size_bytes, PAYLOAD_BYTES_MAX as u64)?;
        let (info, data) = self.store.read_whole(id).await?;
        Ok((
            ChunkFetchResponse {
                descriptor: descriptor(info),
            },
            data,
        ))
    }

    async fn put(&self, r: ChunkPutRequest, payload: Bytes) -> Answer<Done> {
        check_request(ChunkRequest::Put(&r), payload.len())?;
        let meta = ChunkMeta {
            size_bytes: r.size_bytes,
            epoch: r.epoch,
        };
        self.store
            .write_whole(r.chunk.into(), meta, payload, durability(r.durability))
            .await?;
        Ok((Done {}, Bytes::new()))
    }

    async fn list(&self, r: ChunkListRequest, _payload: Bytes) -> Answer<ChunkListResponse> {
        let limit = match r.limit {
            0 => CHUNK_LIST_PAGE_MAX,
            n => n.min(CHUNK_LIST_PAGE_MAX),
        } as usize;
        let after: Option<ChunkId> = r.after.map(Into::into);
        let mut all = self.store.list();
        all.retain(|i| after.is_none_or(|a| i.id > a));
        let more = all.len() > limit;
        all.truncate(limit);
        Ok((
            ChunkListResponse {
                chunks: all.into_iter().map(descriptor).collect(),
                more,
            },
            Bytes::new(),
        ))
    }

    async fn stats(
        &self,
        _r: fabric::wire::chunk::ChunkStatsRequest,
        _payload: Bytes,
    ) -> Answer<ChunkStatsResponse> {
        let s = self.store.stats();
        Ok((
            ChunkStatsResponse {
                capacity_bytes: s.capacity_bytes,
                used_bytes: s.used_bytes,
                reserve_bytes: s.reserve_bytes,
                chunks: s.chunks,
                checksum_errors: s.checksum_errors,
                full: s.full,
            },
            Bytes::new(),
        ))
    }

    async fn flush(
        &self,
        _r: fabric::wire::chunk::ChunkFlushRequest,
        _payload: Bytes,
    ) -> Answer<fabric::wire::chunk::FlushDone> {
        self.store.flush().await?;
        let incarnation = self.store.incarnation();
        Ok((fabric::wire::chunk::FlushDone { incarnation }, Bytes::new()))
    }

    async fn scrub(&self, r: ChunkScrubRequest, _payload: Bytes) -> Answer<ChunkScrubResponse> {
        let report = self.store.scrub_once(r.blocks_per_sec).await?;
        let mut out = ChunkScrubResponse {
            checked_blocks: report.checked_blocks,
            ..ChunkScrubResponse::default()
        };
        let mut listed = 0usize;
        for (id, blocks) in report.bad {
            out.bad_blocks_total += blocks.len() as u64;
            let room = SCRUB_BAD_BLOCKS_LISTED_MAX.saturating_sub(listed);
            if room == 0 {
                continue;
            }
            let blocks: Vec<u64> = blocks.into_iter().take(room).collect();
            listed += blocks.len();
            out.bad.push(BadBlocks {
                chunk: id.into(),
                blocks,
            });
        }
        Ok((out, Bytes::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checks_and_fuzz_entry_never_panic() {
        let c = ChunkRef {
            lun: 1,
            extent: 1,
            index: 0,
        };
        let read = ChunkReadRequest {
            chunk: c,
            epoch: 1,
            offset: 0,
            len: u32::MAX,
        };
        let e = check_request(ChunkRequest::Read(&read), 0).unwrap_err();
        assert_eq!(code_name(e.code()), "TooLarge");
        assert!(e.to_string().contains(&u32::MAX.to_string()), "{e}");
        let put = ChunkPutRequest {
            chunk: c,
            size_bytes: 4096,
            epoch: 1,
            durability: WireDurability::Stable,
        };
        assert_eq!(
            code_name(
                check_request(ChunkRequest::Put(&put), 8192)
                    .unwrap_err()
                    .code()
            ),
            "Invalid"
        );
        let header = postcard::to_stdvec(&read).unwrap();
        assert!(!decode_request_for_fuzz(Kind::CHUNK_READ.0, &header, 0));
        for kind in 0x0300..=0x030d {
            for len in 0..header.len() {
                decode_request_for_fuzz(kind, &header[..len], usize::MAX);
            }
            decode_request_for_fuzz(kind, &[0xff; 64], 0);
        }
    }
}
