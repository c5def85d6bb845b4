//! The extent primary: the node holding an extent's first parity chunk
//! orders every write to the extent and journals it before touching any
//! chunk. Whole stripe rows are written with parity computed from the new
//! data; for partial rows each data chunk applies its new data and returns
//! `old ⊕ new`, and the primary folds those deltas into each parity chunk.
//! It answers only once every chunk has the write. It also serves the reads a volume client could not
//! do directly (a chunk missing, slow or corrupt): it reconstructs the
//! range from the other chunks of each row and rewrites corrupt blocks.
//!
//! Parity with `m = 1` is the XOR of the row's data units, with `m ≥ 2`
//! Reed–Solomon ([`codec`]; `docs/data-path.md` says why not
//! reed-solomon-erasure's `m = 1` code).
//! A restarted primary replays its journal: for every write that was
//! journaled but not acknowledged (after a power loss of its node: not
//! yet flushed everywhere) it recomputes the parity of the rows the write
//! touched from the data chunks, so data and parity never disagree (no
//! write hole). Records are kept until every chunk of their extent is
//! flushed, and a flush that finds a holder lost its page cache since the
//! last one rebuilds those rows on it (`docs/data-path.md`, "Power
//! loss").
//!
//! Writes to the same stripe rows are serialized ([`lock`]): the ordering
//! every gateway sees is the primary's, and writes to different rows of
//! one extent run side by side. The chunk the primary holds itself (the
//! parity) is reached through its own router, not the network.

pub mod codec;
pub mod lock;
mod missed;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fabric::gossip::View;
use fabric::identity::{PeerIdentity, Role};
use fabric::metadata::rpc::MetaError;
use fabric::metadata::rpc::{ReadReply, ReadRequest};
use fabric::metadata::{CatalogueError, ChunkState, Command, Extent, Outcome};
use fabric::rpc::{Client, RouterError, RpcError};
use fabric::volume::layout::{align, Layout};
use fabric::wire::chunk::{
    chunk_error, ChunkApplyDelta, ChunkApplyDeltaRequest, ChunkCreate, ChunkCreateRequest,
    ChunkFlush, ChunkFlushRequest, ChunkOverwrite, ChunkPunch, ChunkPunchRequest, ChunkRead,
    ChunkReadRequest, ChunkRef, ChunkWrite, ChunkWriteRequest, Durability,
};
use fabric::wire::extent::{
    extent_error, ExtentDone, ExtentDoubts, ExtentDoubtsDone, ExtentDoubtsRequest, ExtentFlush,
    ExtentFlushRequest, ExtentPunch, ExtentPunchRequest, ExtentRead, ExtentReadRequest, ExtentRef,
    ExtentTakeover, ExtentTakeoverRequest, ExtentWrite, ExtentWriteRequest,
    EXTENT_DOUBTS_RANGES_MAX, EXTENT_IO_BYTES_MAX,
};
use fabric::wire::Rpc;
use fabric::{NodeId, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::journal::{Journal, Record};
use crate::meta::agent::Lease;
use crate::meta::raft_rpc::Origin;
use crate::meta::Meta;
use crate::service::LEASE_MARGIN_MS;
use codec::{Codec, CodecError};
use lock::{ExtentLock, Held};
use missed::Missed;

/// Deadline of one chunk call made by the primary.
const CHUNK_CALL_MS: u64 = 10_000;
/// Deadline of the calls of one try at mending a missed write in place
/// ([`Primary::mend`]): short, since a holder that is not back is tried
/// again a moment later.
const MEND_CALL_MS: u64 = 1_000;
/// Pause between proposals of an extent change that waits for a lease.
const PROPOSE_RETRY_MS: u64 = 250;
/// How long a read waits for a chunk before rebuilding the range from the
/// others instead (a slow or stopped holder).
const HEDGE_MS: u64 = 500;
/// Extent writes, punches, flushes and takeovers run at once at most. Each
/// runs to its end even if its caller leaves (see [`Primary::register`]),
/// so they are counted here rather than by the caller's connection.
const CHANGES_IN_FLIGHT_MAX: usize = 1024;
/// Test hook: `journal:N` aborts the process after journaling its N-th
/// write, before sending it to any chunk; `parity:N` after the N-th
/// write's data chunks have it, before its parity does; `chunk-write:N`
/// (the chunk service) after applying its N-th delta write, before
/// answering it. Only for tests; unset in every real deployment.
pub const CRASH_POINT_ENV: &str = "WEFT_TEST_CRASH_POINT";

/// Where the test hook aborts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    AfterJournal(u64),
    BeforeParity(u64),
}

fn crash_point() -> Option<CrashPoint> {
    let v = std::env::var(CRASH_POINT_ENV).ok()?;
    let (at, n) = v.split_once(':')?;
    let n = n.parse().ok()?;
    match at {
        "journal" => Some(CrashPoint::AfterJournal(n)),
        "parity" => Some(CrashPoint::BeforeParity(n)),
        _ => None,
    }
}

/// What the journal keeps of a write: which rows to reconcile if the
/// primary dies (or the cluster loses power) before every chunk has it
/// durably.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct JournalEntry {
    lun: u64,
    extent: u64,
    offset: u64,
    len: u64,
}

/// What a reconcile knows of the rows it settles.
#[derive(Clone, Copy)]
enum Known<'a> {
    /// Rows a past run of this node (journal replay) or another primary
    /// (takeover) left: any chunk may disagree there.
    Nothing,
    /// Rows of a write of this process that failed: only chunks of a
    /// doubt over them ([`Primary::doubts`]) may disagree there.
    Failed,
    /// Rows of a doubt: only these chunks may disagree there.
    Doubt(&'a [usize]),
}

/// Rows of a write (`entry`) where chunks `slots` may disagree with the
/// rest of their stripe.
#[derive(Clone, Debug)]
struct Doubt {
    id: u64,
    entry: JournalEntry,
    slots: Vec<usize>,
}

impl Doubt {
    /// Whether these rows overlap chunk ranges `cols` of `e`, while a
    /// chunk in doubt is in service there (once all are out, the chunks
    /// in service agree and define them).
    fn holds(&self, e: &Extent, layout: &Layout, cols: &[(u64, u64)]) -> bool {
        self.entry.lun == e.lun
            && self.entry.extent == e.index
            && self
                .slots
                .iter()
                .any(|s| e.chunks.get(*s) == Some(&ChunkState::Ok))
            && parity_columns(layout, self.entry.offset, self.entry.len)
                .iter()
                .any(|&(x, y)| cols.iter().any(|&(a, b)| x < b && a < y))
    }
}

fn app(code: u32, detail: impl Into<String>) -> RpcError {
    RpcError::Application {
        code,
        detail: detail.into(),
    }
}

/// A stripe that could not be coded: too few chunks to rebuild it is the
/// usual cause, which another try may not meet.
fn coding(err: CodecError) -> RpcError {
    unavailable(err.to_string())
}

fn unavailable(detail: impl Into<String>) -> RpcError {
    app(extent_error::UNAVAILABLE, detail)
}

/// A journal record's seq and what it says.
type SeqEntry = (u64, JournalEntry);
/// A chunk of an extent: `(lun, extent, slot)`.
type SlotKey = (u64, u64, usize);

/// Per extent, the journal records to replay and the byte ranges they
/// cover (merged, so that rows many records touched are reconciled once).
type ExtentRecords = BTreeMap<(u64, u64), (Vec<SeqEntry>, VecDeque<JournalEntry>)>;

/// The ranges of `entries` (of one extent), merged where they overlap or
/// touch, in offset order.
fn merge_ranges(mut entries: Vec<JournalEntry>) -> Vec<JournalEntry> {
    entries.sort_unstable_by_key(|e| e.offset);
    let mut out: Vec<JournalEntry> = Vec::with_capacity(entries.len());
    for e in entries {
        match out.last_mut() {
            Some(last) if e.offset <= last.offset.saturating_add(last.len) => {
                let end = last
                    .offset
                    .saturating_add(last.len)
                    .max(e.offset.saturating_add(e.len));
                last.len = end - last.offset;
            }
            _ => out.push(e),
        }
    }
    out
}

/// How the primary reaches the holder of one chunk: itself through its
/// own router (same checks, no socket), or another node over the fabric.
#[derive(Clone)]
enum Route {
    Local(Arc<Router>, PeerIdentity),
    Remote(Client, NodeId, SocketAddr),
}

impl Route {
    async fn call<R: Rpc>(
        &self,
        req: &R::Request,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<(R::Response, Bytes), RpcError> {
        match self {
            Route::Local(router, me) => router.call_local::<R>(me, req, payload, deadline).await,
            Route::Remote(rpc, node, addr) => {
                rpc.call::<R>(*addr, node, req, payload, deadline).await
            }
        }
    }
}

/// Whether a flush marks missing the chunks whose flush failed
/// ([`Primary::flush_chunks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MarkFailed {
    Always,
    /// Only if every such holder is away in gossip.
    IfAway,
    Never,
}

/// When the primary's background tasks act.
#[derive(Clone, Copy, Debug)]
pub struct PrimaryTiming {
    /// A missing chunk whose holder has been away this long moves to
    /// another node; `None`: never.
    pub replace_after: Option<Duration>,
    /// Writes the initiator has not flushed are flushed on every chunk of
    /// their extent (and their journal records trimmed) this long after,
    /// give or take as much again.
    pub flush_after: Duration,
}

/// The primary role of one chunkserver.
pub struct Primary {
    me: NodeId,
    meta: Arc<Meta>,
    rpc: Client,
    /// This node's own router, for the chunks it holds itself (set once
    /// every service is registered).
    local: OnceLock<Arc<Router>>,
    view: watch::Receiver<Arc<View>>,
    journal: Arc<Journal>,
    /// This node acts as a primary only while its lease is valid: once it
    /// lapses another holder may have taken over.
    lease: Arc<Lease>,
    locks: Mutex<HashMap<(u64, u64), Arc<ExtentLock>>>,
    extents: Mutex<BTreeMap<(u64, u64), Extent>>,
    layouts: Mutex<HashMap<u64, Layout>>,
    /// One code per profile `(k, m)` in use.
    codecs: Mutex<HashMap<(u64, u64), Arc<Codec>>>,
    /// Extents whose chunks are known to exist.
    created: Mutex<std::collections::HashSet<(u64, u64, u64)>>,
    /// Journal sequence numbers of writes in flight (and of records being
    /// replayed or reconciled). The journal is trimmed only below the
    /// oldest of them and of [`Self::unflushed`], and settled below the
    /// oldest of them ([`Journal::mark_settled`]).
    inflight: Mutex<BTreeSet<u64>>,
    /// Lower bounds of the seqs of appends under way (an append's seq is
    /// known only once it is durable), counted: nothing from them up is
    /// trimmed or settled meanwhile.
    appending: Mutex<BTreeMap<u64, usize>>,
    /// Per extent, the records of writes done (or rows reconciled) since
    /// the extent's chunks were last flushed. Their chunks may hold them
    /// only in the page cache, so a holder that loses power (or the whole
    /// cluster) may lose them on some chunks of a stripe and not on others;
    /// the record stays in the journal until a flush makes every chunk
    /// durable, so the replay after such a crash reconciles those rows.
    unflushed: Mutex<BTreeMap<(u64, u64), Vec<SeqEntry>>>,
    /// Every journal record not retired yet, by seq: what this node tells
    /// a primary that took over from it ([`Self::doubts_of`]).
    kept: Mutex<BTreeMap<u64, JournalEntry>>,
    /// What [`Self::kept`] says cannot be trusted to name every row where
    /// this node's chunks may lack a write: its store lost its page cache
    /// at open (with it writes of other primaries too), or a record was
    /// unreadable. A primary that took over from it rebuilds them whole.
    kept_incomplete: AtomicBool,
    /// Extents whose journal records this node keeps for a primary that
    /// took them over (see [`Self::handed_over`]), with the epoch at which
    /// it saw its chunk out: once that chunk is back in service at a later
    /// epoch, that primary caught it up with those rows, and replaying them
    /// here is moot.
    handed: Mutex<HashMap<(u64, u64), u64>>,
    /// Per chunk `(lun, extent, slot)`, its holder and the incarnation
    /// its store answered the last flush with (or the first, for a chunk
    /// new to this process): a holder whose incarnation changed since lost
    /// its page cache, with it perhaps writes of [`Self::unflushed`].
    incarnations: Mutex<HashMap<SlotKey, (NodeId, u64)>>,
    /// An extent's unflushed records are flushed at most about this long
    /// after the write ([`Self::spawn_checkpoint`]), when the initiator
    /// does not flush sooner.
    flush_after: Duration,
    crash: Option<CrashPoint>,
    journaled: AtomicU64,
    /// Extents whose records in the journal left by the last run are not
    /// replayed yet: until then some of their stripes may have parity that
    /// disagrees with their data, so this node does not serve them. `None`
    /// until the journal has been read (no extent is served).
    replay_pending: Mutex<Option<HashSet<(u64, u64)>>>,
    /// Writes that failed after their journal record: their rows may have
    /// parity that disagrees with their data (a chunk that missed a
    /// full-row write while marking it missing failed too), so the repair
    /// task reconciles them before the record is retired.
    unsettled: Mutex<Vec<(u64, JournalEntry)>>,
    /// Rows where chunks may disagree with the rest of their stripe: a
    /// write's call to them failed (the holder may have applied it or not)
    /// and the record does not say they are out, while it is being changed
    /// or since that failed. See [`Self::in_doubt`].
    doubts: Mutex<Vec<Doubt>>,
    doubt_ids: AtomicU64,
    /// A missing chunk whose holder has been away this long moves to
    /// another node; `None`: never.
    replace_after: Option<Duration>,
    /// Since when each holder of a missing chunk has been seen away (not
    /// alive in gossip), by the repair task.
    away: Mutex<BTreeMap<NodeId, Instant>>,
    /// What each out-of-service chunk of this node's extents missed, for
    /// catching it up when its holder returns.
    missed: Missed,
    changes: Arc<tokio::sync::Semaphore>,
}

impl Primary {
    pub fn new(
        me: NodeId,
        meta: Arc<Meta>,
        rpc: Client,
        view: watch::Receiver<Arc<View>>,
        journal: Arc<Journal>,
        lease: Arc<Lease>,
        timing: PrimaryTiming,
    ) -> Arc<Primary> {
        let crash = crash_point();
        Arc::new(Primary {
            me,
            meta,
            rpc,
            local: OnceLock::new(),
            view,
            journal,
            lease,
            locks: Mutex::new(HashMap::new()),
            extents: Mutex::new(BTreeMap::new()),
            layouts: Mutex::new(HashMap::new()),
            codecs: Mutex::new(HashMap::new()),
            created: Mutex::new(Default::default()),
            inflight: Mutex::new(BTreeSet::new()),
            appending: Mutex::new(BTreeMap::new()),
            unflushed: Mutex::new(BTreeMap::new()),
            kept: Mutex::new(BTreeMap::new()),
            kept_incomplete: AtomicBool::new(false),
            handed: Mutex::new(HashMap::new()),
            incarnations: Mutex::new(HashMap::new()),
            flush_after: timing.flush_after,
            crash,
            journaled: AtomicU64::new(0),
            replay_pending: Mutex::new(None),
            unsettled: Mutex::new(Vec::new()),
            doubts: Mutex::new(Vec::new()),
            doubt_ids: AtomicU64::new(0),
            replace_after: timing.replace_after,
            away: Mutex::new(BTreeMap::new()),
            missed: Missed::default(),
            changes: Arc::new(tokio::sync::Semaphore::new(CHANGES_IN_FLIGHT_MAX)),
        })
    }

    /// Whether the extent may have rows left unreconciled by the last run
    /// (true for every extent until the journal has been read).
    fn replaying(&self, lun: u64, extent: u64) -> bool {
        self.replay_pending
            .lock()
            .as_ref()
            .is_none_or(|p| p.contains(&(lun, extent)))
    }

    /// Replaces what this node remembers of extents by `fresh` (read from
    /// the metadata), dropping those it does not hold: called when the node
    /// comes back to serving after its lease lapsed, since another holder
    /// may have taken over or chunks may have been marked missing
    /// meanwhile. Refreshed rather than dropped, so the data path needs no
    /// metadata read while the metadata is what was in trouble. (`created`
    /// stays: it is keyed by epoch, and clearing it would send chunk
    /// creations to every holder, a stopped one too.)
    pub fn refresh_cached(&self, fresh: &HashMap<(u64, u64), Extent>) {
        let mut cached = self.extents.lock();
        cached.retain(|k, _| fresh.contains_key(k));
        for (k, e) in cached.iter_mut() {
            if let Some(f) = fresh.get(k) {
                e.clone_from(f);
            }
        }
    }

    /// Serves the extent calls. A call that changes chunks or the
    /// extent's record (write, punch, flush, takeover) runs in a task of
    /// its own, to its end, even when its caller gives up (a deadline, a
    /// closed connection): cut between its journal record and its parity,
    /// or between a failed chunk and the record saying so, it would leave a
    /// chunk in service without the write and nothing to reconcile it
    /// (`weft-sim --ec 3+2 --seeds 33, 43`: a parity chunk that missed a
    /// delta stayed in service for good). Reads stay cancellable.
    pub fn register(self: &Arc<Self>, router: &mut Router) -> Result<(), RouterError> {
        let p = self.clone();
        router.register::<ExtentWrite, _, _>(move |_peer, req, payload| {
            let p = p.clone();
            async move {
                p.clone()
                    .detached(async move { p.write(req, payload).await })
                    .await
            }
        })?;
        let p = self.clone();
        router.register::<ExtentRead, _, _>(move |_peer, req, _| {
            let p = p.clone();
            async move { p.read(req).await }
        })?;
        let p = self.clone();
        router.register::<ExtentPunch, _, _>(move |_peer, req, _| {
            let p = p.clone();
            async move { p.clone().detached(async move { p.punch(req).await }).await }
        })?;
        let p = self.clone();
        router.register::<ExtentFlush, _, _>(move |_peer, req, _| {
            let p = p.clone();
            async move { p.clone().detached(async move { p.flush(req).await }).await }
        })?;
        let p = self.clone();
        router.register::<ExtentTakeover, _, _>(move |_peer, req, _| {
            let p = p.clone();
            async move {
                p.clone()
                    .detached(async move { p.takeover(req).await })
                    .await
            }
        })?;
        let p = self.clone();
        router.register::<ExtentDoubts, _, _>(move |_peer, req, _| {
            let p = p.clone();
            async move { p.doubts_of(req) }
        })?;
        Ok(())
    }

    /// Runs `change` in a task of its own, which the caller's going away
    /// does not cancel; at most [`CHANGES_IN_FLIGHT_MAX`] at once.
    async fn detached<T: Send + 'static>(
        self: Arc<Self>,
        change: impl std::future::Future<Output = Result<T, RpcError>> + Send + 'static,
    ) -> Result<T, RpcError> {
        let permit = self
            .changes
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| unavailable("the primary is shutting down"))?;
        tokio::spawn(async move {
            let r = change.await;
            drop(permit);
            r
        })
        .await
        .map_err(|e| unavailable(format!("extent call failed: {e}")))?
    }

    /// Lets the primary reach the chunks this node holds without the
    /// network: `router` must have the chunk service registered.
    pub fn set_local(&self, router: Router) {
        if self.local.set(Arc::new(router)).is_err() {
            warn!("extent primary: local router set twice; keeping the first");
        }
    }

    /// The way to `node`, if there is one.
    fn route(&self, node: &NodeId) -> Option<Route> {
        if *node == self.me {
            if let Some(r) = self.local.get() {
                let me = PeerIdentity {
                    node_id: self.me.clone(),
                    role: Role::Chunkserver,
                };
                return Some(Route::Local(r.clone(), me));
            }
        }
        let addr = self.addr(node)?;
        Some(Route::Remote(self.rpc.clone(), node.clone(), addr))
    }

    fn lock(&self, lun: u64, extent: u64) -> Arc<ExtentLock> {
        self.locks.lock().entry((lun, extent)).or_default().clone()
    }

    fn addr(&self, node: &NodeId) -> Option<SocketAddr> {
        self.view
            .borrow()
            .get(node)
            .and_then(|n| n.addrs())
            .map(|a| a.fabric)
    }

    /// Whether gossip says `node` is alive (not suspect, not dead).
    fn alive(&self, node: &NodeId) -> bool {
        self.view.borrow().availability(node) == Some(fabric::gossip::Availability::Alive)
    }

    async fn layout(&self, lun: u64) -> Result<Layout, RpcError> {
        if let Some(l) = self.layouts.lock().get(&lun) {
            return Ok(*l);
        }
        let s = match self.meta.read(ReadRequest::Summary, 0).await {
            Ok(ReadReply::Summary(s)) => s,
            Ok(_) => return Err(unavailable("unexpected metadata reply")),
            Err(e) => return Err(unavailable(format!("metadata: {e}"))),
        };
        let mut map = self.layouts.lock();
        for l in &s.luns {
            if let Ok(layout) = Layout::of(l) {
                map.insert(l.id, layout);
            }
        }
        map.get(&lun)
            .copied()
            .ok_or_else(|| app(extent_error::INVALID, format!("no LUN with id {lun}")))
    }

    /// The extent as the metadata has it, at the caller's epoch or newer;
    /// refuses a stale caller and a caller that took us for the primary
    /// when we are not.
    async fn extent(&self, r: &ExtentRef) -> Result<(Extent, Layout), RpcError> {
        if !self.lease.valid(LEASE_MARGIN_MS) {
            return Err(unavailable("this node's lease has lapsed"));
        }
        if self.replaying(r.lun, r.extent) {
            return Err(unavailable("replaying the write journal"));
        }
        let layout = self.layout(r.lun).await?;
        let cached = self.extents.lock().get(&(r.lun, r.extent)).cloned();
        let e = match cached {
            Some(e) if e.epoch >= r.epoch => e,
            _ => self.fresh_extent(r.lun, r.extent).await?,
        };
        if r.epoch < e.epoch {
            return Err(app(
                extent_error::STALE_EPOCH,
                format!("extent at epoch {}, request at {}", e.epoch, r.epoch),
            ));
        }
        if e.primary_node() != Some(&self.me) {
            return Err(app(
                extent_error::NOT_PRIMARY,
                format!("{} is not the primary of {}/{}", self.me, r.lun, r.extent),
            ));
        }
        if layout.width() != e.nodes.len() {
            return Err(app(
                extent_error::INVALID,
                "extent width differs from its LUN's",
            ));
        }
        Ok((e, layout))
    }

    fn chunk_ref(e: &Extent, slot: usize) -> ChunkRef {
        ChunkRef {
            lun: e.lun,
            extent: e.index,
            index: slot as u8,
        }
    }

    /// Calls `R` on the holder of `slot`.
    async fn call<R: Rpc>(
        &self,
        e: &Extent,
        slot: usize,
        req: &R::Request,
        payload: Bytes,
    ) -> Result<Bytes, RpcError> {
        self.call_by::<R>(e, slot, req, payload, Self::chunk_deadline())
            .await
    }

    /// Calls `R` on the holder of `slot`, giving up at `deadline`.
    async fn call_by<R: Rpc>(
        &self,
        e: &Extent,
        slot: usize,
        req: &R::Request,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, RpcError> {
        self.route_to(e, slot)?
            .call::<R>(req, payload, deadline)
            .await
            .map(|(_, b)| b)
    }

    /// How to reach the holder of chunk `slot` of `e`.
    fn route_to(&self, e: &Extent, slot: usize) -> Result<Route, RpcError> {
        let node = e
            .nodes
            .get(slot)
            .ok_or_else(|| app(extent_error::INVALID, "no such slot"))?;
        self.route(node)
            .ok_or_else(|| unavailable(format!("no address for {node}")))
    }

    /// Flushes the holder of chunk `slot` of `e`; answers its store's
    /// incarnation.
    async fn flush_one(&self, e: &Extent, slot: usize) -> Result<u64, RpcError> {
        let (done, _) = self
            .route_to(e, slot)?
            .call::<ChunkFlush>(&ChunkFlushRequest {}, Bytes::new(), Self::chunk_deadline())
            .await?;
        Ok(done.incarnation)
    }

    /// Calls `R` on every chunk of `e` in service at once, with the
    /// request `make(slot)` gives and no payload; answers the slots whose
    /// call failed, in slot order. (A flush of a 3+1 stripe waits for one
    /// `fdatasync`, not four in a row.)
    async fn call_in_service<R: Rpc + 'static>(
        &self,
        e: &Extent,
        make: impl Fn(usize) -> R::Request,
    ) -> Vec<(usize, RpcError)> {
        self.answers_in_service::<R>(e, make)
            .await
            .into_iter()
            .filter_map(|(slot, res)| res.err().map(|err| (slot, err)))
            .collect()
    }

    /// Like [`Self::call_in_service`], answering every slot called, in
    /// slot order.
    async fn answers_in_service<R: Rpc + 'static>(
        &self,
        e: &Extent,
        make: impl Fn(usize) -> R::Request,
    ) -> Vec<(usize, Result<R::Response, RpcError>)> {
        let mut set = JoinSet::new();
        let mut pending = BTreeSet::new();
        for slot in 0..e.nodes.len() {
            if e.chunks.get(slot) != Some(&ChunkState::Ok) {
                continue;
            }
            let req = make(slot);
            let route = e.nodes.get(slot).and_then(|n| self.route(n));
            let deadline = Self::chunk_deadline();
            pending.insert(slot);
            set.spawn(async move {
                let res = match route {
                    Some(route) => route
                        .call::<R>(&req, Bytes::new(), deadline)
                        .await
                        .map(|(r, _)| r),
                    None => Err(unavailable(format!("no address for chunk {slot}"))),
                };
                (slot, res)
            });
        }
        let mut out = Vec::new();
        let mut lost = None;
        while let Some(res) = set.join_next().await {
            match res {
                Ok((slot, res)) => {
                    pending.remove(&slot);
                    out.push((slot, res));
                }
                Err(err) => lost = Some(err.to_string()),
            }
        }
        if let Some(err) = lost {
            out.extend(
                pending
                    .into_iter()
                    .map(|s| (s, Err(unavailable(err.clone())))),
            );
        }
        out.sort_unstable_by_key(|(s, _)| *s);
        out
    }

    /// Creates the extent's chunks on their holders the first time. A
    /// holder that cannot create its chunk (down when the extent was
    /// placed) has it marked missing, as a write would.
    async fn ensure_chunks(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
    ) -> Result<(), RpcError> {
        if self.created.lock().contains(&(e.lun, e.index, e.epoch)) {
            return Ok(());
        }
        let mut failed = Vec::new();
        let make = |slot| ChunkCreateRequest {
            chunk: Self::chunk_ref(e, slot),
            size_bytes: layout.chunk_bytes,
            epoch: e.epoch,
        };
        for (slot, err) in self.call_in_service::<ChunkCreate>(e, make).await {
            match err {
                RpcError::Application { code, .. } if code == chunk_error::EXISTS => {}
                err => {
                    warn!(chunk = %Self::chunk_ref(e, slot), %err, "creating a chunk failed");
                    failed.push(slot);
                }
            }
        }
        if !failed.is_empty() {
            self.escalate(held, e).await;
            *e = self.mark_missing(e, layout, &failed).await?;
        }
        // The incarnation of each holder before this epoch's first write,
        // for the flushes to come to compare with (a chunk already known
        // keeps its value: a change is theirs to find).
        for (slot, res) in self
            .answers_in_service::<ChunkFlush>(e, |_| ChunkFlushRequest {})
            .await
        {
            if let (Ok(done), None) = (res, self.incarnation_seen(e, slot)) {
                self.see_incarnation(e, slot, done.incarnation);
            }
        }
        self.created.lock().insert((e.lun, e.index, e.epoch));
        Ok(())
    }

    /// Overwrites chunk `slot` of `e` from chunk offset `at` with `buf`,
    /// giving up at `deadline`.
    async fn overwrite(
        &self,
        e: &Extent,
        slot: usize,
        at: u64,
        buf: Bytes,
        durability: Durability,
        deadline: Instant,
    ) -> Result<(), RpcError> {
        let req = ChunkWriteRequest {
            chunk: Self::chunk_ref(e, slot),
            epoch: e.epoch,
            offset: at,
            durability,
        };
        self.call_by::<ChunkOverwrite>(e, slot, &req, buf, deadline)
            .await
            .map(|_| ())
    }

    /// The deadline of a chunk call made now.
    fn chunk_deadline() -> Instant {
        Instant::now() + Duration::from_millis(CHUNK_CALL_MS)
    }

    async fn read_chunk(&self, e: &Extent, slot: usize, a: u64, b: u64) -> Result<Bytes, RpcError> {
        self.read_chunk_by(e, slot, a, b, Self::chunk_deadline())
            .await
    }

    async fn read_chunk_by(
        &self,
        e: &Extent,
        slot: usize,
        a: u64,
        b: u64,
        deadline: Instant,
    ) -> Result<Bytes, RpcError> {
        if e.chunks.get(slot) != Some(&ChunkState::Ok) {
            return Err(unavailable(format!("chunk {slot} is not in service")));
        }
        let req = ChunkReadRequest {
            chunk: Self::chunk_ref(e, slot),
            epoch: e.epoch,
            offset: a,
            len: (b - a) as u32,
        };
        self.call_by::<ChunkRead>(e, slot, &req, Bytes::new(), deadline)
            .await
    }

    /// The chunk range `[a, b)` (block aligned) of data chunk `slot`,
    /// reconstructed from the other chunks if its holder cannot give it.
    /// A range that failed its checksum is rewritten with what was rebuilt.
    async fn read_or_rebuild(
        &self,
        e: &Extent,
        layout: &Layout,
        slot: usize,
        a: u64,
        b: u64,
    ) -> Result<Bytes, RpcError> {
        let holder_alive = e.nodes.get(slot).is_some_and(|n| self.alive(n));
        let err = if holder_alive {
            match tokio::time::timeout(
                Duration::from_millis(HEDGE_MS),
                self.read_chunk(e, slot, a, b),
            )
            .await
            {
                Ok(Ok(d)) => return Ok(d),
                Ok(Err(err)) => err,
                Err(_) => unavailable(format!("chunk {slot} slower than {HEDGE_MS} ms")),
            }
        } else {
            unavailable(format!("the holder of chunk {slot} is not alive"))
        };
        warn!(chunk = %Self::chunk_ref(e, slot), %err, "rebuilding a chunk range from parity");
        let rebuilt = Bytes::from(self.rebuild_range(e, layout, slot, a, b).await?);
        if matches!(&err, RpcError::Application { code, .. } if *code == chunk_error::CHECKSUM) {
            let chunk = Self::chunk_ref(e, slot);
            let deadline = Self::chunk_deadline();
            match self
                .overwrite(e, slot, a, rebuilt.clone(), Durability::Stable, deadline)
                .await
            {
                Ok(()) => {
                    info!(%chunk, offset = a, len = b - a, "repaired corrupt blocks")
                }
                Err(e2) => warn!(%chunk, %e2, "repair failed"),
            }
        }
        Ok(rebuilt)
    }

    /// Reads `[offset, offset+len)` of the extent, rebuilding what a
    /// chunk cannot give.
    async fn read_range(
        &self,
        e: &Extent,
        layout: &Layout,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, RpcError> {
        let ranges = layout.chunk_ranges(offset, len);
        let mut bufs = HashMap::new();
        for (j, r) in ranges.iter().enumerate() {
            let Some((a, b)) = *r else { continue };
            let (a, b) = align(a, b);
            bufs.insert(
                j as u64,
                (a, self.read_or_rebuild(e, layout, j, a, b).await?),
            );
        }
        let mut out = BytesMut::zeroed(len as usize);
        for p in layout.pieces(offset, len) {
            let (a, data) = bufs
                .get(&p.chunk)
                .ok_or_else(|| unavailable("piece without data"))?;
            let from = (p.chunk_off - a) as usize;
            let src = data
                .get(from..from + p.len as usize)
                .ok_or_else(|| unavailable("short chunk read"))?;
            out[p.buf as usize..(p.buf + p.len) as usize].copy_from_slice(src);
        }
        Ok(out.freeze())
    }

    async fn read(&self, r: ExtentReadRequest) -> Result<(ExtentDone, Bytes), RpcError> {
        if r.len > EXTENT_IO_BYTES_MAX {
            return Err(app(extent_error::INVALID, "read too long"));
        }
        let (mut e, layout) = self.extent(&r.extent).await?;
        check_range(&layout, r.offset, u64::from(r.len))?;
        let (first, last) = rows(&layout, r.offset, u64::from(r.len));
        let mut held = self.lock(e.lun, e.index).io(first, last).await;
        self.newest(&mut e);
        self.ensure_chunks(&mut held, &mut e, &layout).await?;
        let data = self
            .read_range(&e, &layout, r.offset, u64::from(r.len))
            .await?;
        Ok((ExtentDone { epoch: e.epoch }, data))
    }

    async fn write(
        &self,
        r: ExtentWriteRequest,
        payload: Bytes,
    ) -> Result<(ExtentDone, Bytes), RpcError> {
        let (compare, data) = if r.compare_len > 0 {
            let n = r.compare_len as usize;
            if payload.len() != 2 * n {
                return Err(app(
                    extent_error::INVALID,
                    "COMPARE AND WRITE payload must be twice compare_len",
                ));
            }
            (Some(payload.slice(..n)), payload.slice(n..))
        } else {
            (None, payload)
        };
        if data.len() > EXTENT_IO_BYTES_MAX as usize || data.is_empty() {
            return Err(app(extent_error::INVALID, "write length out of bounds"));
        }
        let (mut e, layout) = self.extent(&r.extent).await?;
        check_range(&layout, r.offset, data.len() as u64)?;
        let (first, last) = rows(&layout, r.offset, data.len() as u64);
        let mut held = self.lock(e.lun, e.index).io(first, last).await;
        self.newest(&mut e);
        self.ensure_chunks(&mut held, &mut e, &layout).await?;
        self.settle_doubts_over(&mut held, &mut e, &layout, r.offset, data.len() as u64)
            .await?;
        if let Some(c) = compare {
            let cur = self
                .read_range(&e, &layout, r.offset, c.len() as u64)
                .await?;
            if let Some(i) = cur.iter().zip(c.iter()).position(|(x, y)| x != y) {
                return Err(app(extent_error::MISCOMPARE, i.to_string()));
            }
        }
        let seq = self.journal_append(&e, r.offset, data.len() as u64).await?;
        let res = self
            .apply(&mut held, &mut e, &layout, r.offset, &data, r.durability)
            .await;
        self.settle(seq, &e, r.offset, data.len() as u64, res.is_ok())
            .await;
        res?;
        Ok((ExtentDone { epoch: e.epoch }, Bytes::new()))
    }

    async fn journal_append(&self, e: &Extent, offset: u64, len: u64) -> Result<u64, RpcError> {
        let entry = JournalEntry {
            lun: e.lun,
            extent: e.index,
            offset,
            len,
        };
        let bytes = postcard::to_stdvec(&entry).map_err(|x| unavailable(x.to_string()))?;
        let lower = self.journal.next_seq();
        *self.appending.lock().entry(lower).or_default() += 1;
        let appended = self.journal.append(Bytes::from(bytes)).await;
        {
            let mut a = self.appending.lock();
            if let Some(n) = a.get_mut(&lower) {
                *n -= 1;
                if *n == 0 {
                    a.remove(&lower);
                }
            }
            if let Ok(seq) = appended {
                self.inflight.lock().insert(seq);
                self.kept.lock().insert(seq, entry);
            }
        }
        let seq = appended.map_err(|x| unavailable(format!("journal: {x}")))?;
        let n = self.journaled.fetch_add(1, Ordering::Relaxed) + 1;
        if self.crash == Some(CrashPoint::AfterJournal(n)) {
            warn!("test hook: aborting after the journal, before the chunks");
            std::process::abort();
        }
        Ok(seq)
    }

    /// Keeps the journal record `seq` of a write to `e` at `offset..+len`
    /// that is done until the extent's next flush; a failed one is left to
    /// the repair task ([`Self::settle_failed`]), which reconciles its rows
    /// first.
    async fn settle(&self, seq: u64, e: &Extent, offset: u64, len: u64, done: bool) {
        let entry = JournalEntry {
            lun: e.lun,
            extent: e.index,
            offset,
            len,
        };
        if done {
            self.done(seq, entry);
        } else {
            self.unsettled.lock().push((seq, entry));
        }
    }

    /// Reconciles the rows of writes that failed, and retires their
    /// records; what cannot be reconciled yet (a data chunk unreachable or
    /// out of service: until it is back or rebuilt) stays for the next
    /// round. Recomputing from the data is right whatever failed: each
    /// data chunk holds the failed write's data or its old data, both
    /// allowed for a write that was not acknowledged. Rows in doubt
    /// ([`Self::in_doubt`]) go first: until they are settled nothing is
    /// rebuilt from them and no write goes over them.
    async fn settle_failed(&self) {
        let doubts = self.doubts.lock().clone();
        for d in doubts {
            match self.reconcile(&d.entry, Known::Doubt(&d.slots)).await {
                Ok(()) => self.doubts.lock().retain(|x| x.id != d.id),
                Err(err) => {
                    warn!(lun = d.entry.lun, extent = d.entry.extent, slots = ?d.slots, %err,
                        "reconciling rows where chunks may disagree with their parity; will retry");
                    self.mark_doubted_away(&d).await;
                }
            }
        }
        let failed = self.unsettled.lock().clone();
        for (seq, entry) in failed {
            match self.reconcile(&entry, Known::Failed).await {
                Ok(()) => {
                    self.unsettled.lock().retain(|(s, _)| *s != seq);
                    self.done(seq, entry.clone());
                    info!(
                        lun = entry.lun,
                        extent = entry.extent,
                        offset = entry.offset,
                        len = entry.len,
                        "the rows of a failed write are settled: its journal record is retired at the next flush"
                    );
                }
                Err(err) => {
                    warn!(lun = entry.lun, extent = entry.extent, %err,
                        "reconciling the rows of a failed write; will retry");
                    // To the back, behind records added meanwhile.
                    let mut u = self.unsettled.lock();
                    u.retain(|(s, _)| *s != seq);
                    u.push((seq, entry));
                }
            }
        }
    }

    /// Marks missing the chunks of doubt `d` that are still in service
    /// while gossip says their holders are away: their rows cannot be
    /// reconciled without them, and until the record says they are out,
    /// no write may go over those rows ([`Self::settle_doubts_over`]).
    /// Tried once per round; the metadata refuses while a lease is valid.
    async fn mark_doubted_away(&self, d: &Doubt) {
        let Ok(layout) = self.layout(d.entry.lun).await else {
            return;
        };
        let _held = self.lock(d.entry.lun, d.entry.extent).exclusive().await;
        let Some(mut e) = self
            .extents
            .lock()
            .get(&(d.entry.lun, d.entry.extent))
            .cloned()
        else {
            return;
        };
        self.newest(&mut e);
        let away: Vec<usize> = d
            .slots
            .iter()
            .copied()
            .filter(|s| e.chunks.get(*s) == Some(&ChunkState::Ok))
            .filter(|s| e.nodes.get(*s).is_some_and(|n| !self.alive(n)))
            .collect();
        if away.is_empty()
            || e.primary_node() != Some(&self.me)
            || !self.lease.valid(LEASE_MARGIN_MS)
        {
            return;
        }
        let Ok(Some(cmd)) = self.missing_command(&e, &layout, &away) else {
            return;
        };
        if let Ok(Ok(marked)) = self.propose_once(&cmd).await {
            log_marked(&marked, &away);
            self.missed.bind(&marked, &e.chunks, &away);
        }
    }

    /// Whether chunk range `[a, b)` of `e` holds rows where a chunk in
    /// service may disagree with the rest of its stripe (a write's call to
    /// it failed, and it is not recorded as out yet): nothing is rebuilt
    /// from them until they are reconciled. A chunk rebuilt from a stripe
    /// that disagrees gets wrong bytes, and a read repair writes them
    /// (`weft-sim --ec 3+2 --seed 163`: a parity chunk that missed a delta
    /// rebuilt another chunk wrong).
    fn in_doubt(&self, e: &Extent, layout: &Layout, a: u64, b: u64) -> bool {
        self.doubts
            .lock()
            .iter()
            .any(|d| d.holds(e, layout, &[(a, b)]))
    }

    /// Reconciles, before a write to `[offset, +len)` of `e`, the rows it
    /// overlaps where chunks may disagree with their parity. The write's
    /// deltas would be taken against data the parity does not cover: a
    /// retry of a write whose chunk applied it but whose reply was lost
    /// finds `old ⊕ new` = 0 and would be acknowledged over a stripe that
    /// a later rebuild turns back into the old data. Fails (retryable)
    /// while they cannot be reconciled.
    async fn settle_doubts_over(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
        offset: u64,
        len: u64,
    ) -> Result<(), RpcError> {
        // Every write passes here; almost always there is no doubt at all.
        if self.doubts.lock().is_empty() {
            return Ok(());
        }
        let cols = parity_columns(layout, offset, len);
        if !self.doubts.lock().iter().any(|d| d.holds(e, layout, &cols)) {
            return Ok(());
        }
        self.escalate(held, e).await;
        let over: Vec<Doubt> = self
            .doubts
            .lock()
            .iter()
            .filter(|d| d.holds(e, layout, &cols))
            .cloned()
            .collect();
        for d in over {
            self.reconcile_held(&d.entry, Known::Doubt(&d.slots))
                .await
                .map_err(|err| {
                    unavailable(format!(
                        "rows of a failed write are not reconciled yet: {err}"
                    ))
                })?;
            self.doubts.lock().retain(|x| x.id != d.id);
            info!(
                lun = e.lun,
                extent = e.index,
                offset = d.entry.offset,
                len = d.entry.len,
                "reconciled the rows of a failed write before writing over them"
            );
        }
        Ok(())
    }

    /// Records `slots` of `e`, which missed the write at `range` (extent
    /// offset, length), as missing. Until the record says so, the rows of
    /// `unsure` (those of `slots` that may now disagree with the rest of
    /// the stripe: every slot but a data chunk that surely did not take a
    /// delta write) are in doubt ([`Self::in_doubt`]); and if this fails,
    /// they stay so until reconciled.
    #[allow(clippy::too_many_arguments)]
    async fn record_missed(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
        range: (u64, u64),
        slots: &[usize],
        unsure: &[usize],
        mend: Option<Mend<'_>>,
    ) -> Result<(), RpcError> {
        let id = self.doubt_ids.fetch_add(1, Ordering::Relaxed);
        if !unsure.is_empty() {
            self.doubts.lock().push(Doubt {
                id,
                entry: JournalEntry {
                    lun: e.lun,
                    extent: e.index,
                    offset: range.0,
                    len: range.1,
                },
                slots: unsure.to_vec(),
            });
        }
        let res = self
            .mark_or_mend_missed(held, e, layout, range, slots, mend)
            .await;
        if res.is_ok() {
            self.doubts.lock().retain(|d| d.id != id);
        }
        res
    }

    /// [`Self::record_missed`]'s work, once its rows are listed in doubt.
    async fn mark_or_mend_missed(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
        range: (u64, u64),
        slots: &[usize],
        mend: Option<Mend<'_>>,
    ) -> Result<(), RpcError> {
        self.missed
            .failed(e, slots, &parity_columns(layout, range.0, range.1));
        self.escalate(held, e).await;
        let before = e.chunks.clone();
        let marked = match (self.missing_command(e, layout, slots)?, mend) {
            (None, _) => e.clone(),
            (Some(cmd), None) => self.propose_extent(cmd).await?,
            (Some(cmd), Some(mend)) => {
                match self.mark_or_mend(cmd, e, layout, slots, mend).await? {
                    Some(marked) => marked,
                    None => return Ok(()),
                }
            }
        };
        if marked.epoch != e.epoch {
            log_marked(&marked, slots);
        }
        *e = marked;
        self.missed.bind(e, &before, slots);
        Ok(())
    }

    /// Proposes `cmd`, which marks `slots` of `e` missing, like
    /// [`Self::propose_extent`]; but while a holder's lease has not lapsed
    /// (or the metadata cannot answer), it tries between proposals to
    /// mend the write in place ([`Self::mend`]). A holder whose process
    /// restarted at once renews its lease: marking it would wait until the
    /// proposal gives up (2 × lease + 10 s) with the extent held, and then
    /// fail the write. `None`: mended, nothing marked.
    async fn mark_or_mend(
        &self,
        cmd: Command,
        e: &Extent,
        layout: &Layout,
        slots: &[usize],
        mend: Mend<'_>,
    ) -> Result<Option<Extent>, RpcError> {
        let end = self.proposal_end();
        loop {
            match self.propose_once(&cmd).await? {
                Ok(marked) => return Ok(Some(marked)),
                Err(err) if Instant::now() >= end => {
                    return Err(unavailable(format!("metadata: {err}")))
                }
                Err(_) => {}
            }
            match self.mend(e, layout, slots, mend).await {
                Ok(()) => {
                    info!(
                        lun = e.lun,
                        extent = e.index,
                        ?slots,
                        "a write that chunks missed was mended in place: their holders are back"
                    );
                    return Ok(None);
                }
                Err(err) => {
                    debug!(lun = e.lun, extent = e.index, ?slots, %err, "mending a missed write in place failed");
                }
            }
            tokio::time::sleep(Duration::from_millis(PROPOSE_RETRY_MS)).await;
        }
    }

    /// Brings `slots` of `e`, which did not take a write, up to date in
    /// place, if gossip says their holders are alive. Every call is an
    /// overwrite, so it is right whether or not a chunk took the write
    /// before its call failed. The caller holds the extent alone.
    async fn mend(
        &self,
        e: &Extent,
        layout: &Layout,
        slots: &[usize],
        mend: Mend<'_>,
    ) -> Result<(), RpcError> {
        if let Some(s) = slots
            .iter()
            .find(|s| !e.nodes.get(**s).is_some_and(|n| self.alive(n)))
        {
            return Err(unavailable(format!("the holder of chunk {s} is not alive")));
        }
        let deadline = Instant::now() + Duration::from_millis(MEND_CALL_MS);
        let overwrite = |slot: usize, at: u64, buf: Bytes| {
            self.overwrite(e, slot, at, buf, Durability::Stable, deadline)
        };
        match mend {
            Mend::Punch {
                at,
                len,
                durability,
            } => {
                for &slot in slots {
                    let req = ChunkPunchRequest {
                        chunk: Self::chunk_ref(e, slot),
                        epoch: e.epoch,
                        offset: at,
                        len,
                        durability,
                    };
                    self.call_by::<ChunkPunch>(e, slot, &req, Bytes::new(), deadline)
                        .await?;
                }
            }
            Mend::Rows { at, bufs } => {
                for (slot, buf) in bufs.iter().filter(|(s, _)| slots.contains(s)) {
                    overwrite(*slot, at, buf.clone()).await?;
                }
            }
            Mend::Partial { news, cols } => {
                // Parity is recomputed from the data chunks, so all must
                // be in service.
                if e.chunks.iter().any(|c| *c != ChunkState::Ok) {
                    return Err(unavailable("another chunk of the stripe is out"));
                }
                // Everything is read before anything is written: a mend
                // cut short by a failed read (a bad block) must not leave a
                // chunk with the write that its parity lacks, as an
                // overwrite before the reads did (`weft-sim --seed 13`: the
                // gateway's retry of the write then found nothing to fold,
                // and a rebuild from the stale parity undid it).
                let codec = self.codec(layout)?;
                let mut parity_data = Vec::with_capacity(cols.len());
                for &(a, b) in cols {
                    let mut data = Vec::with_capacity(codec.k());
                    for j in 0..codec.k() {
                        let new = news
                            .iter()
                            .find(|(x, at, buf)| *x == j && *at <= a && b <= at + buf.len() as u64)
                            .filter(|_| slots.contains(&j));
                        data.push(match new {
                            Some((_, at, buf)) => buf.slice((a - at) as usize..(b - at) as usize),
                            None => {
                                let mut cur = self.read_chunk_by(e, j, a, b, deadline).await?;
                                if slots.contains(&j) {
                                    cur = overlay(cur, a, news.iter().filter(|(x, _, _)| *x == j));
                                }
                                cur
                            }
                        });
                    }
                    parity_data.push((a, data));
                }
                for (j, at, buf) in news.iter().filter(|(j, _, _)| slots.contains(j)) {
                    overwrite(*j, *at, buf.clone()).await?;
                }
                for (a, data) in &parity_data {
                    self.write_parity(e, &codec, *a, data, deadline).await?;
                }
            }
        }
        Ok(())
    }

    /// Keeps record `seq` of a write to extent `(lun, extent)` whose rows
    /// agree until the extent's chunks are flushed ([`Self::unflushed`]).
    fn done(&self, seq: u64, entry: JournalEntry) {
        self.unflushed
            .lock()
            .entry((entry.lun, entry.extent))
            .or_default()
            .push((seq, entry));
        self.inflight.lock().remove(&seq);
        self.journal.mark_settled(self.below(false));
    }

    /// The highest seq below which every record is done: below the oldest
    /// in flight or being appended; with `flushed`, also below the oldest
    /// waiting for a flush (the trim point).
    fn below(&self, flushed: bool) -> u64 {
        let appending = self.appending.lock();
        let inflight = self.inflight.lock();
        let mut oldest = [appending.keys().next(), inflight.first()]
            .into_iter()
            .flatten()
            .copied()
            .min();
        if flushed {
            let u = self.unflushed.lock();
            let waiting = u.values().flat_map(|l| l.iter().map(|(s, _)| *s)).min();
            oldest = [oldest, waiting].into_iter().flatten().min();
        }
        match oldest {
            Some(o) => o.saturating_sub(1),
            // Every seq handed out so far (all below the journal's next)
            // is done.
            None => self.journal.next_seq().saturating_sub(1),
        }
    }

    /// Takes `seqs` off the in-flight set (if there) and trims the journal
    /// below the oldest record in flight, being appended or waiting for a
    /// flush.
    async fn retire(&self, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        {
            let mut f = self.inflight.lock();
            let mut kept = self.kept.lock();
            for seq in seqs {
                f.remove(seq);
                kept.remove(seq);
            }
        }
        let upto = self.below(true);
        if upto > 0 {
            if let Err(e) = self.journal.trim(upto).await {
                warn!(%e, "journal trim failed");
            }
        }
    }

    /// Writes `data` at extent offset `offset`: the whole stripe rows in
    /// the middle by [`Self::apply_full_rows`], the partial rows at either
    /// end by [`Self::apply_write`].
    async fn apply(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
        offset: u64,
        data: &Bytes,
        durability: Durability,
    ) -> Result<(), RpcError> {
        let row = layout.row_bytes();
        let end = offset + data.len() as u64;
        let (a, b) = (offset.div_ceil(row) * row, end / row * row);
        if a >= b {
            return self
                .apply_write(held, e, layout, offset, data, durability)
                .await;
        }
        let at = |x: u64| (x - offset) as usize;
        if offset < a {
            let head = data.slice(..at(a));
            self.apply_write(held, e, layout, offset, &head, durability)
                .await?;
        }
        let rows = data.slice(at(a)..at(b));
        self.apply_full_rows(held, e, layout, a, &rows, durability)
            .await?;
        if b < end {
            let tail = data.slice(at(b)..);
            self.apply_write(held, e, layout, b, &tail, durability)
                .await?;
        }
        Ok(())
    }

    /// Writes whole stripe rows: each data chunk's part overwrites it
    /// (no old data read, no delta sent back) and the parity chunk gets
    /// the XOR of those parts, all at once. Parity computed from the new
    /// data is right whichever data chunk does not take its part; such a
    /// chunk is marked missing as in [`Self::apply_write`].
    async fn apply_full_rows(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
        offset: u64,
        data: &Bytes,
        durability: Durability,
    ) -> Result<(), RpcError> {
        let k = layout.k as usize;
        let first = offset / layout.row_bytes() * layout.unit;
        let n = (data.len() as u64 / layout.row_bytes() * layout.unit) as usize;
        let mut parts: Vec<BytesMut> = (0..k).map(|_| BytesMut::zeroed(n)).collect();
        for p in layout.pieces(offset, data.len() as u64) {
            let src = data
                .get(p.buf as usize..(p.buf + p.len) as usize)
                .ok_or_else(|| unavailable("piece beyond data"))?;
            let at = (p.chunk_off - first) as usize;
            let dst = parts
                .get_mut(p.chunk as usize)
                .and_then(|b| b.get_mut(at..at + src.len()))
                .ok_or_else(|| unavailable("piece beyond row"))?;
            dst.copy_from_slice(src);
        }
        let parts: Vec<Bytes> = parts.into_iter().map(BytesMut::freeze).collect();
        let mut slots: Vec<(usize, Bytes)> = parts.iter().cloned().enumerate().collect();
        let refs: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
        let parity = self.codec(layout)?.parity(&refs).map_err(coding)?;
        slots.extend(
            parity
                .into_iter()
                .enumerate()
                .map(|(p, buf)| (k + p, Bytes::from(buf))),
        );
        // The write-hole test hook needs the data chunks written before
        // the parity; otherwise all go at once.
        let hooked = matches!(self.crash, Some(CrashPoint::BeforeParity(_)));
        self.missed
            .skipped(e, &parity_columns(layout, offset, data.len() as u64));
        let mut failed = Vec::new();
        let mut set = JoinSet::new();
        for (slot, buf) in slots.iter().cloned() {
            if e.chunks.get(slot) != Some(&ChunkState::Ok) {
                continue;
            }
            if hooked && slot == k {
                failed.extend(Self::join_writes(&mut set, e).await?);
                self.crash_before_parity();
            }
            let req = ChunkWriteRequest {
                chunk: Self::chunk_ref(e, slot),
                epoch: e.epoch,
                offset: first,
                durability,
            };
            let route = e.nodes.get(slot).and_then(|n| self.route(n));
            set.spawn(async move {
                let Some(route) = route else {
                    let err = unavailable(format!("no address for chunk {slot}"));
                    return (slot, Err(err));
                };
                let deadline = Instant::now() + Duration::from_millis(CHUNK_CALL_MS);
                let r = route.call::<ChunkOverwrite>(&req, buf, deadline).await;
                (slot, r.map(|_| ()))
            });
        }
        failed.extend(Self::join_writes(&mut set, e).await?);
        if !failed.is_empty() {
            failed.sort_unstable();
            let mend = Mend::Rows {
                at: first,
                bufs: &slots,
            };
            let range = (offset, data.len() as u64);
            self.record_missed(held, e, layout, range, &failed, &failed, Some(mend))
                .await?;
        }
        Ok(())
    }

    /// Waits for the chunk writes in `set`; answers the slots that did
    /// not take theirs.
    async fn join_writes(
        set: &mut JoinSet<(usize, Result<(), RpcError>)>,
        e: &Extent,
    ) -> Result<Vec<usize>, RpcError> {
        let mut failed = Vec::new();
        while let Some(res) = set.join_next().await {
            match res {
                Ok((_, Ok(()))) => {}
                Ok((j, Err(err))) => {
                    warn!(chunk = %Self::chunk_ref(e, j), %err, "chunk write failed");
                    failed.push(j);
                }
                Err(err) => return Err(unavailable(err.to_string())),
            }
        }
        Ok(failed)
    }

    /// Test hook `parity:N` (see [`CRASH_POINT_ENV`]).
    fn crash_before_parity(&self) {
        if let Some(CrashPoint::BeforeParity(n)) = self.crash {
            if self.journaled.load(Ordering::Relaxed) >= n {
                warn!("test hook: aborting after the data chunks, before the parity");
                std::process::abort();
            }
        }
    }

    /// Writes `data` at extent offset `offset`: each touched data chunk
    /// writes its part and returns `old ⊕ new`; the deltas fold into the
    /// parity chunk at the same chunk offsets.
    ///
    /// A data chunk that cannot be written (its holder is down, or already
    /// marked missing) is recorded as missing at a new epoch — once its
    /// holder's lease has lapsed — and the parity over its range is
    /// recomputed from the other data chunks and its new contents, so that
    /// it can be rebuilt from the stripe later. With more than `m` chunks
    /// out the write fails (retryable) and stays in the journal.
    async fn apply_write(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
        offset: u64,
        data: &Bytes,
        durability: Durability,
    ) -> Result<(), RpcError> {
        let ranges = layout.chunk_ranges(offset, data.len() as u64);
        // New contents of each touched chunk range, widened to whole
        // blocks (the edges read back, or rebuilt, before anything is
        // written).
        let mut news: Vec<(usize, u64, BytesMut)> = Vec::new();
        for (j, r) in ranges.iter().enumerate() {
            let Some((a, b)) = *r else { continue };
            let (aa, bb) = align(a, b);
            let buf = if (aa, bb) != (a, b) {
                BytesMut::from(&self.read_or_rebuild(e, layout, j, aa, bb).await?[..])
            } else {
                BytesMut::zeroed((bb - aa) as usize)
            };
            news.push((j, aa, buf));
        }
        for p in layout.pieces(offset, data.len() as u64) {
            if let Some((_, aa, buf)) = news.iter_mut().find(|(j, _, _)| *j as u64 == p.chunk) {
                let at = (p.chunk_off - *aa) as usize;
                let src = data
                    .get(p.buf as usize..(p.buf + p.len) as usize)
                    .ok_or_else(|| unavailable("piece beyond data"))?;
                buf[at..at + p.len as usize].copy_from_slice(src);
            }
        }
        let news: Vec<(usize, u64, Bytes)> = news
            .into_iter()
            .map(|(j, a, b)| (j, a, b.freeze()))
            .collect();
        self.missed
            .skipped(e, &parity_columns(layout, offset, data.len() as u64));
        // Data chunks in parallel; each answers its delta.
        let mut set = JoinSet::new();
        for (j, aa, buf) in &news {
            if e.chunks.get(*j) != Some(&ChunkState::Ok) {
                continue;
            }
            let req = ChunkWriteRequest {
                chunk: Self::chunk_ref(e, *j),
                epoch: e.epoch,
                offset: *aa,
                durability,
            };
            let route = e.nodes.get(*j).and_then(|n| self.route(n));
            let (j, aa, buf) = (*j, *aa, buf.clone());
            set.spawn(async move {
                let Some(route) = route else {
                    return (j, aa, Err(unavailable(format!("no address for chunk {j}"))));
                };
                let deadline = Instant::now() + Duration::from_millis(CHUNK_CALL_MS);
                let r = route
                    .call::<ChunkWrite>(&req, buf, deadline)
                    .await
                    .map(|(_, d)| d);
                (j, aa, r)
            });
        }
        let mut deltas = Vec::new();
        let mut failed = Vec::new();
        // Data chunks that surely did not take the write: they hold their
        // old data, which parity (without their deltas) still covers.
        let mut untouched = Vec::new();
        let mut corrupt = Vec::new();
        while let Some(res) = set.join_next().await {
            match res {
                Ok((j, aa, Ok(d))) => deltas.push((j, aa, d)),
                Ok((j, _, Err(RpcError::Application { code, .. })))
                    if code == chunk_error::CHECKSUM =>
                {
                    corrupt.push(j);
                }
                Ok((j, _, Err(err))) => {
                    warn!(chunk = %Self::chunk_ref(e, j), %err, "chunk write failed");
                    if refused(&err) {
                        untouched.push(j);
                    }
                    failed.push(j);
                }
                Err(err) => return Err(unavailable(err.to_string())),
            }
        }
        self.crash_before_parity();
        // The deltas of the chunks that took the write go into parity
        // before anything else can fail: a chunk that did not take it
        // still holds its old data, so the stripe stays consistent even
        // if marking that chunk missing fails below (weft-sim seed 13: a
        // write that failed there left parity without its deltas, and the
        // retry's deltas were zero).
        let k = layout.k as usize;
        let codec = self.codec(layout)?;
        self.fold_into_parity(e, layout, &codec, &deltas, durability, &mut failed)
            .await;
        for j in corrupt {
            let Some((_, aa, buf)) = news.iter().find(|(x, _, _)| *x == j) else {
                continue;
            };
            if let Err(err) = self
                .write_over_corrupt(e, layout, &codec, j, *aa, buf, durability, &mut failed)
                .await
            {
                warn!(chunk = %Self::chunk_ref(e, j), %err, "chunk write over a corrupt block failed");
                failed.push(j);
            }
        }
        if !failed.is_empty() {
            let cols = parity_columns(layout, offset, data.len() as u64);
            let mend = Mend::Partial {
                news: &news,
                cols: &cols,
            };
            let range = (offset, data.len() as u64);
            let unsure: Vec<usize> = failed
                .iter()
                .copied()
                .filter(|s| !untouched.contains(s))
                .collect();
            self.record_missed(held, e, layout, range, &failed, &unsure, Some(mend))
                .await?;
        }
        let parity_slots: Vec<usize> = (k..layout.width())
            .filter(|s| e.chunks.get(*s) == Some(&ChunkState::Ok))
            .collect();
        if parity_slots.is_empty() {
            return Ok(());
        }
        // Over the range of each data chunk that did not take the write,
        // parity is recomputed from that chunk's new contents and the
        // other data chunks as they are now (one also out is rebuilt from
        // the stripe, which is consistent at each step). A parity chunk
        // that misses one of these writes is marked missing; if the data
        // cannot be read, all are, which fails the write (retryable).
        let mut stale: Vec<usize> = Vec::new();
        // Those of `stale` whose overwrite may have been applied: a parity
        // chunk never sent one (the data unreadable) still agrees with the
        // data chunks in service, the out one taken as it was.
        let mut unsure: Vec<usize> = Vec::new();
        for (j, aa, buf) in &news {
            if e.chunks.get(*j) == Some(&ChunkState::Ok) {
                continue;
            }
            if parity_slots.iter().all(|s| stale.contains(s)) {
                break;
            }
            let bb = aa + buf.len() as u64;
            let cols = async {
                let mut cols: Vec<Vec<u8>> = Vec::with_capacity(k);
                for i in 0..k {
                    cols.push(if i == *j {
                        buf.to_vec()
                    } else if e.chunks.get(i) == Some(&ChunkState::Ok) {
                        self.read_chunk(e, i, *aa, bb).await?.to_vec()
                    } else {
                        self.rebuild_range(e, layout, i, *aa, bb).await?
                    });
                }
                let refs: Vec<&[u8]> = cols.iter().map(|c| &c[..]).collect();
                codec.parity(&refs).map_err(coding)
            };
            let parity = match cols.await {
                Ok(p) => p,
                Err(err) => {
                    warn!(chunk = %Self::chunk_ref(e, *j), %err, "parity update failed: data unreadable");
                    stale = parity_slots.clone();
                    break;
                }
            };
            for (p, par) in parity.into_iter().enumerate() {
                let slot = k + p;
                if !parity_slots.contains(&slot) || stale.contains(&slot) {
                    continue;
                }
                let deadline = Self::chunk_deadline();
                if let Err(err) = self
                    .overwrite(e, slot, *aa, Bytes::from(par), durability, deadline)
                    .await
                {
                    warn!(chunk = %Self::chunk_ref(e, slot), %err, "parity update failed");
                    if !refused(&err) {
                        unsure.push(slot);
                    }
                    stale.push(slot);
                }
            }
        }
        if !stale.is_empty() {
            stale.sort_unstable();
            let range = (offset, data.len() as u64);
            self.record_missed(held, e, layout, range, &stale, &unsure, None)
                .await?;
        }
        Ok(())
    }

    /// Writes `new` at `aa` of data chunk `j`, whose old contents there
    /// failed their checksum (so it could not answer `old ⊕ new`): the old
    /// contents rebuilt from the stripe (consistent again once the other
    /// chunks' deltas are in parity), the range overwritten, which also
    /// repairs the block, and the delta folded into each parity chunk in
    /// service. A parity chunk that does not take it joins `failed`. A
    /// holder that is alive and answers is not marked missing for one bad
    /// block (that waited for a lease that never lapses, holding the
    /// extent: `weft-sim --seed 78`).
    #[allow(clippy::too_many_arguments)]
    async fn write_over_corrupt(
        &self,
        e: &Extent,
        layout: &Layout,
        codec: &Codec,
        j: usize,
        aa: u64,
        new: &Bytes,
        durability: Durability,
        failed: &mut Vec<usize>,
    ) -> Result<(), RpcError> {
        let bb = aa + new.len() as u64;
        let mut delta = self.rebuild_range(e, layout, j, aa, bb).await?;
        self.overwrite(e, j, aa, new.clone(), durability, Self::chunk_deadline())
            .await?;
        info!(chunk = %Self::chunk_ref(e, j), offset = aa, len = bb - aa, "wrote over corrupt blocks");
        for (d, n) in delta.iter_mut().zip(new.iter()) {
            *d ^= n;
        }
        self.fold_into_parity(
            e,
            layout,
            codec,
            &[(j, aa, Bytes::from(delta))],
            durability,
            failed,
        )
        .await;
        Ok(())
    }

    /// Folds `deltas` (data chunk, chunk offset, `old ⊕ new`) into every
    /// parity chunk in service that has not failed yet, as one range from
    /// the lowest offset to the highest end; a parity chunk that does not
    /// take it joins `failed`.
    async fn fold_into_parity(
        &self,
        e: &Extent,
        layout: &Layout,
        codec: &Codec,
        deltas: &[(usize, u64, Bytes)],
        durability: Durability,
        failed: &mut Vec<usize>,
    ) {
        let Some(lo) = deltas.iter().map(|(_, a, _)| *a).min() else {
            return;
        };
        let hi = deltas
            .iter()
            .map(|(_, a, d)| a + d.len() as u64)
            .max()
            .unwrap_or(lo);
        let k = layout.k as usize;
        for p in 0..layout.m as usize {
            let slot = k + p;
            if e.chunks.get(slot) != Some(&ChunkState::Ok) || failed.contains(&slot) {
                continue;
            }
            let mut acc = vec![0u8; (hi - lo) as usize];
            for (j, a, d) in deltas {
                let at = (a - lo) as usize;
                codec.fold_delta(p, *j, d, &mut acc[at..at + d.len()]);
            }
            let req = ChunkApplyDeltaRequest {
                chunk: Self::chunk_ref(e, slot),
                epoch: e.epoch,
                offset: lo,
                durability,
            };
            if let Err(err) = self
                .call::<ChunkApplyDelta>(e, slot, &req, Bytes::from(acc))
                .await
            {
                warn!(chunk = %req.chunk, %err, "parity update failed");
                failed.push(slot);
            }
        }
    }

    /// The code of `layout`'s profile.
    fn codec(&self, layout: &Layout) -> Result<Arc<Codec>, RpcError> {
        let key = (layout.k, layout.m);
        if let Some(c) = self.codecs.lock().get(&key) {
            return Ok(c.clone());
        }
        let k = u8::try_from(layout.k).map_err(|_| app(extent_error::INVALID, "k too large"))?;
        let m = u8::try_from(layout.m).map_err(|_| app(extent_error::INVALID, "m too large"))?;
        let c = Arc::new(Codec::new(k, m).map_err(|e| app(extent_error::INVALID, e.to_string()))?);
        self.codecs.lock().insert(key, c.clone());
        Ok(c)
    }

    /// Chunk `slot`'s range `[a, b)` rebuilt from the other chunks of the
    /// stripe: read in slot order, skipping those out of service or
    /// failing, until `k` are in hand (stopping early once too few are
    /// left).
    async fn rebuild_range(
        &self,
        e: &Extent,
        layout: &Layout,
        slot: usize,
        a: u64,
        b: u64,
    ) -> Result<Vec<u8>, RpcError> {
        if self.in_doubt(e, layout, a, b) {
            return Err(unavailable(
                "cannot rebuild: rows of a failed write are not reconciled yet",
            ));
        }
        let codec = self.codec(layout)?;
        let (k, width) = (layout.k as usize, layout.width());
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; width];
        let mut have = 0;
        let mut last = None;
        let others: Vec<usize> = (0..width).filter(|o| *o != slot).collect();
        for (n, &other) in others.iter().enumerate() {
            let left = others.len() - n;
            if have == k || have + left < k {
                break;
            }
            match self.read_chunk(e, other, a, b).await {
                Ok(d) => {
                    if let Some(s) = shards.get_mut(other) {
                        *s = Some(d.to_vec());
                        have += 1;
                    }
                }
                Err(err) => last = Some((other, err)),
            }
        }
        if have < k {
            let why = last.map_or_else(
                || "too few chunks".to_owned(),
                |(o, err)| format!("chunk {o}: {err}"),
            );
            return Err(unavailable(format!("cannot rebuild: {why}")));
        }
        codec.rebuild(&mut shards).map_err(coding)?;
        shards
            .get_mut(slot)
            .and_then(Option::take)
            .ok_or_else(|| unavailable("cannot rebuild: no result"))
    }

    /// Holds `e` alone (to change its record) and takes its newest
    /// record: another write may have changed it while this one waited.
    async fn escalate(&self, held: &mut Held, e: &mut Extent) {
        held.escalate().await;
        self.newest(e);
    }

    /// Takes `e`'s newest record, once the lock is held: it may have
    /// changed while the caller waited for it. A read that rebuilt a range
    /// from the record it had before the wait could read a parity chunk
    /// marked missing meanwhile, which missed the write that held the
    /// rows (`weft-sim --ec 3+2 --seed 36`: another block's bytes).
    fn newest(&self, e: &mut Extent) {
        if let Some(cur) = self.extents.lock().get(&(e.lun, e.index)) {
            if cur.epoch > e.epoch {
                *e = cur.clone();
            }
        }
    }

    /// Records `slots` of `e` as missing at the next epoch, waiting (a few
    /// seconds at most) until their holders' leases have lapsed, as the
    /// metadata requires. Fails if that leaves more than `m` chunks out.
    async fn mark_missing(
        &self,
        e: &Extent,
        layout: &Layout,
        slots: &[usize],
    ) -> Result<Extent, RpcError> {
        let Some(cmd) = self.missing_command(e, layout, slots)? else {
            return Ok(e.clone());
        };
        let marked = self.propose_extent(cmd).await?;
        log_marked(&marked, slots);
        Ok(marked)
    }

    /// The change that records `slots` of `e` as missing at the next
    /// epoch; `None` if they are already. Fails if that leaves more than
    /// `m` chunks out.
    fn missing_command(
        &self,
        e: &Extent,
        layout: &Layout,
        slots: &[usize],
    ) -> Result<Option<Command>, RpcError> {
        let mut chunks = e.chunks.clone();
        for s in slots {
            if let Some(c) = chunks.get_mut(*s) {
                if *c == ChunkState::Ok {
                    *c = ChunkState::Missing {
                        since_epoch: e.epoch + 1,
                    };
                }
            }
        }
        let out = chunks.iter().filter(|c| **c != ChunkState::Ok).count();
        if out > layout.m as usize {
            // Not recorded: a stripe with more than `m` chunks out could
            // never be rebuilt. The write fails (retryable) and the chunks
            // that did not take it keep their old data, which the parity
            // still covers (deltas are folded before this is called).
            return Err(unavailable(format!(
                "{out} chunks of {}/{} would be out; the stripe cannot take writes",
                e.lun, e.index
            )));
        }
        if chunks == e.chunks {
            // Another write marked them already.
            return Ok(None);
        }
        Ok(Some(Command::UpdateExtent {
            lun: e.lun,
            index: e.index,
            expected_epoch: e.epoch,
            nodes: e.nodes.clone(),
            primary: e.primary,
            chunks,
            now_ms: 0,
        }))
    }

    /// Until when an extent change is proposed again while a lease has not
    /// lapsed: a lease lapses within its length, plus time for the
    /// metadata to move.
    fn proposal_end(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.meta.lease_ms() * 2 + 10_000)
    }

    /// Proposes an extent change, retrying while a lease has not lapsed.
    async fn propose_extent(&self, cmd: Command) -> Result<Extent, RpcError> {
        let end = self.proposal_end();
        loop {
            match self.propose_once(&cmd).await? {
                Ok(e2) => return Ok(e2),
                Err(err) if Instant::now() >= end => {
                    return Err(unavailable(format!("metadata: {err}")))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(PROPOSE_RETRY_MS)).await,
            }
        }
    }

    /// Proposes an extent change once. `Ok(Err(_))`: a lease has not
    /// lapsed, or the metadata cannot answer now; worth trying again.
    async fn propose_once(&self, cmd: &Command) -> Result<Result<Extent, MetaError>, RpcError> {
        let from = match cmd {
            Command::UpdateExtent { expected_epoch, .. }
            | Command::ReplaceChunk { expected_epoch, .. } => Some(*expected_epoch),
            _ => None,
        };
        match self.meta.write(Origin::Node, cmd.clone(), 0).await {
            Ok(r) => {
                let Outcome::Extent(e2) = r.outcome else {
                    return Err(unavailable("unexpected metadata outcome"));
                };
                if let Some(from) = from {
                    self.missed.advanced(e2.lun, e2.index, from, e2.epoch);
                }
                self.extents.lock().insert((e2.lun, e2.index), e2.clone());
                Ok(Ok(e2))
            }
            Err(
                err @ (MetaError::Catalogue(CatalogueError::LeaseStillValid { .. })
                | MetaError::Unavailable(_)),
            ) => Ok(Err(err)),
            Err(err) => Err(unavailable(format!("metadata: {err}"))),
        }
    }

    async fn punch(&self, r: ExtentPunchRequest) -> Result<(ExtentDone, Bytes), RpcError> {
        let (mut e, layout) = self.extent(&r.extent).await?;
        check_range(&layout, r.offset, r.len)?;
        let mut held = self.lock(e.lun, e.index).exclusive().await;
        self.newest(&mut e);
        self.ensure_chunks(&mut held, &mut e, &layout).await?;
        self.settle_doubts_over(&mut held, &mut e, &layout, r.offset, r.len)
            .await?;
        let row = layout.row_bytes();
        let first_full = r.offset.div_ceil(row) * row;
        let end = r.offset + r.len;
        let last_full = end / row * row;
        // Partial rows at the edges: written as zeroes, so parity follows.
        let mut edges = Vec::new();
        if first_full >= last_full {
            edges.push((r.offset, r.len));
        } else {
            if r.offset < first_full {
                edges.push((r.offset, first_full - r.offset));
            }
            if last_full < end {
                edges.push((last_full, end - last_full));
            }
        }
        for (off, len) in edges {
            let mut pos = off;
            while pos < off + len {
                let n = u64::from(EXTENT_IO_BYTES_MAX).min(off + len - pos);
                let zeros = Bytes::from(vec![0u8; n as usize]);
                let seq = self.journal_append(&e, pos, n).await?;
                let res = self
                    .apply_write(&mut held, &mut e, &layout, pos, &zeros, r.durability)
                    .await;
                self.settle(seq, &e, pos, n, res.is_ok()).await;
                res?;
                pos += n;
            }
        }
        // Whole rows: every chunk (data and parity: the XOR of zeroes is
        // zeroes) punched at the same chunk range.
        if first_full < last_full {
            // Journaled like a write: a primary that dies half way leaves
            // some chunks punched and others not, which its replay
            // reconciles.
            let seq = self
                .journal_append(&e, first_full, last_full - first_full)
                .await?;
            let res = self
                .punch_rows(
                    &mut held,
                    &mut e,
                    &layout,
                    first_full,
                    last_full,
                    r.durability,
                )
                .await;
            self.settle(seq, &e, first_full, last_full - first_full, res.is_ok())
                .await;
            res?;
        }
        Ok((ExtentDone { epoch: e.epoch }, Bytes::new()))
    }

    /// Punches whole stripe rows `[first_full, last_full)` (extent
    /// offsets) of every chunk in service, data and parity alike: the XOR
    /// of zeroes is zeroes.
    async fn punch_rows(
        &self,
        held: &mut Held,
        e: &mut Extent,
        layout: &Layout,
        first_full: u64,
        last_full: u64,
        durability: Durability,
    ) -> Result<(), RpcError> {
        let row = layout.row_bytes();
        let a = first_full / row * layout.unit;
        let b = last_full / row * layout.unit;
        self.missed.skipped(e, &[(a, b)]);
        let make = |slot| ChunkPunchRequest {
            chunk: Self::chunk_ref(e, slot),
            epoch: e.epoch,
            offset: a,
            len: b - a,
            durability,
        };
        let mut failed = Vec::new();
        for (slot, err) in self.call_in_service::<ChunkPunch>(e, make).await {
            warn!(chunk = %Self::chunk_ref(e, slot), %err, "chunk punch failed");
            failed.push(slot);
        }
        // A chunk that did not take the punch is rebuilt from the others
        // later: zeroes, as data and parity over these rows are.
        if !failed.is_empty() {
            let range = (first_full, last_full - first_full);
            let mend = Mend::Punch {
                at: a,
                len: b - a,
                durability,
            };
            self.record_missed(held, e, layout, range, &failed, &failed, Some(mend))
                .await?;
        }
        Ok(())
    }

    /// Makes every write acknowledged so far durable on every chunk in
    /// service. A chunk that cannot flush is marked missing: the stripe's
    /// other chunks, durable, rebuild it.
    async fn flush(&self, r: ExtentFlushRequest) -> Result<(ExtentDone, Bytes), RpcError> {
        let (e, layout) = self.extent(&r.extent).await?;
        // The records of writes done before the chunks are flushed: each
        // chunk then holds them durably, or is marked missing.
        let seqs = self.unflushed_seqs(e.lun, e.index);
        let done = self.flush_chunks(e, &layout, MarkFailed::Always).await?;
        self.flushed(done.lun, done.index, &seqs).await;
        Ok((ExtentDone { epoch: done.epoch }, Bytes::new()))
    }

    /// The records of extent `(lun, extent)` waiting for a flush.
    fn unflushed_seqs(&self, lun: u64, extent: u64) -> Vec<u64> {
        self.unflushed
            .lock()
            .get(&(lun, extent))
            .map(|l| l.iter().map(|(s, _)| *s).collect())
            .unwrap_or_default()
    }

    /// Retires the records `seqs` of extent `(lun, extent)`, written before
    /// a flush of all its chunks that succeeded.
    async fn flushed(&self, lun: u64, extent: u64, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        {
            let gone: HashSet<u64> = seqs.iter().copied().collect();
            let mut u = self.unflushed.lock();
            if let Some(list) = u.get_mut(&(lun, extent)) {
                list.retain(|(s, _)| !gone.contains(s));
                if list.is_empty() {
                    u.remove(&(lun, extent));
                }
            }
        }
        self.retire(seqs).await;
    }

    /// Flushes every chunk of `e` in service. One whose flush fails is
    /// marked missing if `mark` says so (else the flush fails): caught up on its
    /// return with what it missed from then on, or rebuilt whole if its
    /// holder answered with an error (its `fdatasync` failed: the kernel
    /// may have dropped what it buffered) or lost its page cache meanwhile
    /// ([`Self::rebuild`]). One whose holder lost its page cache since the
    /// last flush has the rows written since rebuilt from the others
    /// ([`Self::repair_lost`]). Answers the extent as it is afterwards.
    async fn flush_chunks(
        &self,
        e: Extent,
        layout: &Layout,
        mark: MarkFailed,
    ) -> Result<Extent, RpcError> {
        let mut failed = Vec::new();
        let mut refused = Vec::new();
        let mut lost = Vec::new();
        for (slot, res) in self
            .answers_in_service::<ChunkFlush>(&e, |_| ChunkFlushRequest {})
            .await
        {
            match res {
                Ok(done) => match self.incarnation_seen(&e, slot) {
                    Some(seen) if seen != done.incarnation => lost.push((slot, done.incarnation)),
                    _ => self.see_incarnation(&e, slot, done.incarnation),
                },
                Err(err) => {
                    warn!(chunk = %Self::chunk_ref(&e, slot), %err, "chunk flush failed");
                    if matches!(err, RpcError::Application { .. }) {
                        refused.push(slot);
                    }
                    failed.push(slot);
                }
            }
        }
        if !lost.is_empty() {
            self.repair_lost(&e, layout, &lost).await?;
        }
        if failed.is_empty() {
            return Ok(e);
        }
        let away = |slot: &usize| e.nodes.get(*slot).is_none_or(|n| !self.alive(n));
        if mark == MarkFailed::Never || (mark == MarkFailed::IfAway && !failed.iter().all(away)) {
            return Err(unavailable(format!("flushing chunks {failed:?} failed")));
        }
        let _held = self.lock(e.lun, e.index).exclusive().await;
        let e = self.fresh_extent(e.lun, e.index).await?;
        let before = e.chunks.clone();
        self.missed.failed(&e, &failed, &[]);
        self.missed.distrust(&e, &refused);
        let marked = self.mark_missing(&e, layout, &failed).await?;
        self.missed.bind(&marked, &before, &failed);
        Ok(marked)
    }

    /// The incarnation chunk `slot` of `e` was last seen at, if its holder
    /// is still the one seen.
    fn incarnation_seen(&self, e: &Extent, slot: usize) -> Option<u64> {
        let node = e.nodes.get(slot)?;
        match self.incarnations.lock().get(&(e.lun, e.index, slot)) {
            Some((n, i)) if n == node => Some(*i),
            _ => None,
        }
    }

    fn see_incarnation(&self, e: &Extent, slot: usize, incarnation: u64) {
        if let Some(node) = e.nodes.get(slot) {
            self.incarnations
                .lock()
                .insert((e.lun, e.index, slot), (node.clone(), incarnation));
        }
    }

    /// Chunks of `e` whose holders lost their page cache since the last
    /// flush (`lost`: slot, new incarnation) may miss any write of
    /// [`Self::unflushed`] while the other chunks have it. With one such
    /// chunk, those rows of it are rebuilt from the others, so no
    /// acknowledged write is lost; with more, the parity of those rows is
    /// recomputed from the data (writes not flushed may be lost, which is
    /// allowed, but the stripes agree). With the extent held alone, every
    /// write done is in `unflushed`.
    async fn repair_lost(
        &self,
        e: &Extent,
        layout: &Layout,
        lost: &[(usize, u64)],
    ) -> Result<(), RpcError> {
        let _held = self.lock(e.lun, e.index).exclusive().await;
        let e = self.fresh_extent(e.lun, e.index).await?;
        let entries: Vec<JournalEntry> = self
            .unflushed
            .lock()
            .get(&(e.lun, e.index))
            .map(|l| l.iter().map(|(_, x)| x.clone()).collect())
            .unwrap_or_default();
        let ranges = merge_ranges(entries);
        let slots: Vec<usize> = lost.iter().map(|(s, _)| *s).collect();
        warn!(
            lun = e.lun,
            extent = e.index,
            ?slots,
            ranges = ranges.len(),
            "holders lost their page cache since the last flush: repairing the rows written since"
        );
        match slots[..] {
            [slot] => {
                let cols: Vec<(u64, u64)> = ranges
                    .iter()
                    .flat_map(|r| parity_columns(layout, r.offset, r.len))
                    .collect();
                self.rebuild_onto(&e, layout, slot, &cols, Durability::Stable)
                    .await?;
            }
            _ => {
                for r in &ranges {
                    self.reconcile_held(r, Known::Nothing).await?;
                }
            }
        }
        for (slot, incarnation) in lost {
            self.see_incarnation(&e, *slot, *incarnation);
        }
        Ok(())
    }

    /// Rebuilds chunk ranges `ranges` of chunk `slot` of `e` from the other
    /// chunks and overwrites them on it, a bounded piece at a time.
    async fn rebuild_onto(
        &self,
        e: &Extent,
        layout: &Layout,
        slot: usize,
        ranges: &[(u64, u64)],
        durability: Durability,
    ) -> Result<(), RpcError> {
        let step = u64::from(EXTENT_IO_BYTES_MAX);
        for &(a, b) in ranges {
            let (mut pos, b) = (a, b.min(layout.chunk_bytes));
            while pos < b {
                let n = step.min(b - pos);
                let acc = self.rebuild_range(e, layout, slot, pos, pos + n).await?;
                let deadline = Self::chunk_deadline();
                self.overwrite(e, slot, pos, Bytes::from(acc), durability, deadline)
                    .await?;
                pos += n;
            }
        }
        Ok(())
    }

    /// Flushes, every `flush_after`, the extents with writes done since
    /// their last flush, and retires those writes' journal records: an
    /// initiator that never flushes must not pin the journal, nor leave
    /// its writes only in the page cache of every chunk for long.
    pub fn spawn_checkpoint(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let p = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(p.flush_after).await;
                let due: Vec<(u64, u64)> = p.unflushed.lock().keys().copied().collect();
                for (lun, extent) in due {
                    let seqs = p.unflushed_seqs(lun, extent);
                    if let Err(err) = p.checkpoint(lun, extent, &seqs).await {
                        debug!(lun, extent, %err, "flushing an extent's writes; will retry");
                    }
                }
            }
        })
    }

    /// Flushes extent `(lun, extent)` and retires `seqs`; records of an
    /// extent this node no longer leads (taken over: the new primary
    /// recomputed its parity) or that was deleted are retired at once.
    async fn checkpoint(&self, lun: u64, extent: u64, seqs: &[u64]) -> Result<(), RpcError> {
        if !self.lease.valid(LEASE_MARGIN_MS) {
            return Err(unavailable("this node's lease has lapsed"));
        }
        match self.fresh_extent(lun, extent).await {
            Ok(e) if e.primary_node() == Some(&self.me) => {
                let layout = self.layout(lun).await?;
                // Marking a chunk missing waits for its holder's lease,
                // with the extent held: worth it only for a holder gone
                // (else the next round finds it back), and not while rows
                // of the extent are in doubt (it could not be rebuilt
                // there). Otherwise the flush is tried again next round.
                let doubt = self
                    .doubts
                    .lock()
                    .iter()
                    .any(|d| (d.entry.lun, d.entry.extent) == (lun, extent));
                let mark = if doubt {
                    MarkFailed::Never
                } else {
                    MarkFailed::IfAway
                };
                self.flush_chunks(e, &layout, mark).await?;
            }
            Ok(e) => self.handed_over(&e)?,
            Err(RpcError::Application { code, .. }) if code == extent_error::NOT_ALLOCATED => {}
            Err(err) => return Err(err),
        }
        self.flushed(lun, extent, seqs).await;
        Ok(())
    }

    /// Whether this node, no longer the primary of `e`, may let go of its
    /// journal records of `e`: not while a chunk of its own there is out
    /// of service. A primary that took over from this node marked that
    /// chunk missing, and will ask which rows this node's records name
    /// ([`Self::doubts_of`]) to catch it up with those and not rebuild it
    /// whole.
    fn handed_over(&self, e: &Extent) -> Result<(), RpcError> {
        let out = e
            .nodes
            .iter()
            .zip(&e.chunks)
            .any(|(n, c)| *n == self.me && *c != ChunkState::Ok);
        if out {
            self.handed.lock().insert((e.lun, e.index), e.epoch);
            return Err(unavailable(format!(
                "this node's chunk of {}/{} is out of service: its journal records wait for the primary to catch it up",
                e.lun, e.index
            )));
        }
        Ok(())
    }

    /// Whether another primary has caught up this node's chunk of extent
    /// `(lun, index)` since this node kept its records for it
    /// ([`Self::handed`]): they are then done, also if this node leads the
    /// extent again (its parity chunk back in service makes it primary).
    /// Replayed as primary, they would wait for every data chunk, and a
    /// data chunk out meanwhile could be rebuilt only once they were
    /// (`weft-sim --seed 711`).
    async fn caught_up_elsewhere(&self, lun: u64, index: u64) -> bool {
        let Some(seen) = self.handed.lock().get(&(lun, index)).copied() else {
            return false;
        };
        match self.fresh_extent(lun, index).await {
            Ok(e) => {
                e.epoch > seen
                    && e.nodes
                        .iter()
                        .zip(&e.chunks)
                        .any(|(n, c)| *n == self.me && *c == ChunkState::Ok)
            }
            Err(_) => false,
        }
    }

    /// Answers a primary that took an extent over from this node: the
    /// rows its journal still holds records of, where its chunk may lack
    /// a write or disagree with the stripe (rows of writes in flight when
    /// it lost the extent, and of writes not flushed yet). Unavailable
    /// while the journal is not read yet or cannot say
    /// ([`Self::kept_incomplete`]): the chunk is then rebuilt whole.
    fn doubts_of(&self, r: ExtentDoubtsRequest) -> Result<(ExtentDoubtsDone, Bytes), RpcError> {
        if self.replay_pending.lock().is_none() {
            return Err(unavailable("the journal is not read yet"));
        }
        if self.kept_incomplete.load(Ordering::Relaxed) {
            return Err(unavailable(
                "this node lost its page cache or a journal record since it started: its records do not name every row it may lack",
            ));
        }
        let entries: Vec<JournalEntry> = self
            .kept
            .lock()
            .values()
            .filter(|x| (x.lun, x.extent) == (r.extent.lun, r.extent.extent))
            .cloned()
            .collect();
        let ranges: Vec<(u64, u64)> = merge_ranges(entries)
            .into_iter()
            .map(|x| (x.offset, x.len))
            .collect();
        if ranges.len() > EXTENT_DOUBTS_RANGES_MAX {
            return Err(unavailable(format!(
                "{} ranges of records: more than {EXTENT_DOUBTS_RANGES_MAX}",
                ranges.len()
            )));
        }
        // The asker catches this node's chunk up with these rows and puts
        // it back in service at a later epoch: the records are done then,
        // even if this node's replay never saw the chunk out.
        self.handed
            .lock()
            .entry((r.extent.lun, r.extent.extent))
            .or_insert(r.extent.epoch);
        Ok((ExtentDoubtsDone { ranges }, Bytes::new()))
    }

    /// Takes over as primary of an extent whose primary the caller (a
    /// gateway) cannot reach — if this node cannot reach it either. The
    /// metadata makes the change only once the old primary's lease has
    /// lapsed, so two primaries never serve the same extent.
    async fn takeover(
        self: &Arc<Self>,
        r: ExtentTakeoverRequest,
    ) -> Result<(ExtentDone, Bytes), RpcError> {
        let e = self.fresh_extent(r.extent.lun, r.extent.extent).await?;
        if e.primary_node() == Some(&self.me) {
            return Ok((ExtentDone { epoch: e.epoch }, Bytes::new()));
        }
        let mine = e
            .nodes
            .iter()
            .position(|n| *n == self.me)
            .ok_or_else(|| app(extent_error::INVALID, "not a holder of this extent"))?;
        if e.chunks.get(mine) != Some(&ChunkState::Ok) {
            return Err(app(
                extent_error::INVALID,
                "this holder's chunk is not in service",
            ));
        }
        let old = usize::from(e.primary);
        if let Some(node) = e.nodes.get(old) {
            if let Some(addr) = self.addr(node) {
                let deadline = Instant::now() + Duration::from_secs(1);
                let ping = fabric::wire::PingRequest { echo: false };
                if self
                    .rpc
                    .call::<fabric::wire::Ping>(addr, node, &ping, Bytes::new(), deadline)
                    .await
                    .is_ok()
                {
                    return Err(app(
                        extent_error::NOT_PRIMARY,
                        format!("the primary {node} answers here"),
                    ));
                }
            }
        }
        let _held = self.lock(e.lun, e.index).exclusive().await;
        let layout = self.layout(e.lun).await?;
        let mut chunks = e.chunks.clone();
        let mut marked_old = false;
        if let Some(c) = chunks.get_mut(old) {
            if *c == ChunkState::Ok {
                *c = ChunkState::Missing {
                    since_epoch: e.epoch + 1,
                };
                marked_old = true;
            }
        }
        // The old primary's chunk and whatever rows it left in doubt are
        // out with it: with another chunk already out that is more than
        // the stripe can rebuild, and a new primary could only serve it
        // wrong. The extent waits for the old primary, which has its
        // chunk and its journal.
        let out = chunks.iter().filter(|c| **c != ChunkState::Ok).count();
        // With more than one parity chunk, the rows in doubt may have
        // reached some of the others and not all, and which rows those are
        // went with the old primary's journal: the new primary recomputes
        // all their parity from the data before serving, so every data
        // chunk must be in service.
        let data_out = chunks
            .iter()
            .take(layout.k as usize)
            .any(|c| *c != ChunkState::Ok);
        if layout.m > 1 && data_out {
            return Err(unavailable(format!(
                "a data chunk of {}/{} is out: its parity cannot be recomputed without its primary; waiting for it",
                e.lun, e.index
            )));
        }
        if out > layout.m as usize {
            return Err(unavailable(format!(
                "{out} chunks of {}/{} would be out without its primary; waiting for it",
                e.lun, e.index
            )));
        }
        let e2 = self
            .propose_extent(Command::UpdateExtent {
                lun: e.lun,
                index: e.index,
                expected_epoch: e.epoch,
                nodes: e.nodes.clone(),
                primary: mine as u8,
                chunks,
                now_ms: 0,
            })
            .await?;
        if marked_old {
            self.missed.taken_over(&e2, old);
        }
        warn!(
            lun = e.lun,
            extent = e.index,
            epoch = e2.epoch,
            "took over as primary"
        );
        if layout.m > 1 {
            self.reconcile_whole(&layout, &e2, marked_old.then_some(old));
        }
        Ok((ExtentDone { epoch: e2.epoch }, Bytes::new()))
    }

    async fn fresh_extent(&self, lun: u64, index: u64) -> Result<Extent, RpcError> {
        match self.meta.read(ReadRequest::Extent { lun, index }, 0).await {
            Ok(ReadReply::Extent(Some(e))) => {
                self.extents.lock().insert((lun, index), e.clone());
                Ok(e)
            }
            Ok(_) => Err(app(
                extent_error::NOT_ALLOCATED,
                format!("extent {lun}/{index} is not allocated"),
            )),
            Err(e) => Err(unavailable(format!("metadata: {e}"))),
        }
    }

    /// Keeps the extents this node leads whole: every few seconds, rebuilds
    /// missing chunks whose holders are alive again, and moves to another
    /// node the chunks whose holders have stayed away longer than
    /// `replace_after` (rebuilt there on a later pass), whether or not a
    /// write has found them missing yet: an extent nobody writes must not
    /// stay one failure from loss.
    pub fn spawn_repair(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let p = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                p.settle_failed().await;
                let mine: Vec<Extent> = p
                    .extents
                    .lock()
                    .values()
                    .filter(|e| e.primary_node() == Some(&p.me))
                    .filter(|e| {
                        e.chunks.iter().any(|c| *c != ChunkState::Ok)
                            || (p.replace_after.is_some() && e.nodes.iter().any(|n| !p.alive(n)))
                    })
                    .cloned()
                    .collect();
                let mut away = p.note_away(&mine);
                for e in mine {
                    for (slot, st) in e.chunks.iter().enumerate() {
                        let Some(holder) = e.nodes.get(slot) else {
                            continue;
                        };
                        if p.alive(holder) {
                            if *st == ChunkState::Ok {
                                continue;
                            }
                            if let Err(err) = p.rebuild(&e, slot).await {
                                warn!(lun = e.lun, extent = e.index, slot, %err, "rebuild failed; will retry");
                            }
                        } else if away.contains(holder) {
                            if let Err(err) = p.replace(&e, slot).await {
                                // Most likely no node can take it (as many
                                // nodes as chunks): try again only after
                                // another `replace_after`, and not for this
                                // holder's other chunks now.
                                warn!(lun = e.lun, extent = e.index, slot, %holder, %err,
                                    "chunk not moved off a node that stays away; will retry later");
                                away.remove(holder);
                                p.away.lock().insert(holder.clone(), Instant::now());
                            }
                        }
                    }
                }
            }
        })
    }

    /// Notes since when each holder of a chunk of `extents` has been away
    /// (not alive in gossip), and returns those away longer than
    /// `replace_after`.
    fn note_away(&self, extents: &[Extent]) -> BTreeSet<NodeId> {
        let Some(after) = self.replace_after else {
            return BTreeSet::new();
        };
        let gone: BTreeSet<&NodeId> = extents
            .iter()
            .flat_map(|e| e.nodes.iter())
            .filter(|n| **n != self.me && !self.alive(n))
            .collect();
        let now = Instant::now();
        let mut away = self.away.lock();
        away.retain(|n, _| gone.contains(n));
        for n in gone {
            away.entry(n.clone()).or_insert(now);
        }
        away.iter()
            .filter(|(_, since)| now.duration_since(**since) >= after)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Moves chunk `slot` of `e`, whose holder has stayed away, to another
    /// node, chosen by the metadata leader as for a new extent (in service
    /// or already missing: one command, so a cluster with no node to take
    /// it changes nothing). The chunk stays missing, now on that node,
    /// until the repair task rebuilds it there. The old holder, if it
    /// returns, finds the chunk on another node and is fenced off it.
    async fn replace(&self, e: &Extent, slot: usize) -> Result<(), RpcError> {
        let _held = self.lock(e.lun, e.index).exclusive().await;
        if self.replaying(e.lun, e.index) {
            return Err(unavailable("replaying the write journal"));
        }
        if !self.lease.valid(LEASE_MARGIN_MS) {
            return Err(unavailable("this node's lease has lapsed"));
        }
        let e = self.fresh_extent(e.lun, e.index).await?;
        let Some(holder) = e.nodes.get(slot).cloned() else {
            return Ok(());
        };
        if e.primary_node() != Some(&self.me) || holder == self.me || self.alive(&holder) {
            return Ok(());
        }
        let e2 = self
            .propose_extent(Command::ReplaceChunk {
                lun: e.lun,
                index: e.index,
                expected_epoch: e.epoch,
                slot: slot as u8,
                node: None,
                now_ms: 0,
            })
            .await?;
        let to = e2
            .nodes
            .get(slot)
            .map(|n| n.to_string())
            .unwrap_or_default();
        info!(
            lun = e.lun,
            extent = e.index,
            slot,
            from = %holder,
            %to,
            epoch = e2.epoch,
            "chunk moved: its holder stayed away; rebuilding it on another node"
        );
        Ok(())
    }

    /// Rebuilds chunk `slot` of `e` from the others (its holder is back)
    /// and returns it to service at a new epoch.
    async fn rebuild(&self, e: &Extent, slot: usize) -> Result<(), RpcError> {
        let layout = self.layout(e.lun).await?;
        let _held = self.lock(e.lun, e.index).exclusive().await;
        if self.replaying(e.lun, e.index) {
            // Its parity may disagree with its data until replayed.
            return Err(unavailable("replaying the write journal"));
        }
        if !self.lease.valid(LEASE_MARGIN_MS) {
            return Err(unavailable("this node's lease has lapsed"));
        }
        let e = self.fresh_extent(e.lun, e.index).await?;
        if e.primary_node() != Some(&self.me) || e.chunks.get(slot) == Some(&ChunkState::Ok) {
            return Ok(());
        }
        let create = ChunkCreateRequest {
            chunk: Self::chunk_ref(&e, slot),
            size_bytes: layout.chunk_bytes,
            epoch: e.epoch,
        };
        let existed = match self
            .call::<ChunkCreate>(&e, slot, &create, Bytes::new())
            .await
        {
            Ok(_) => false,
            Err(RpcError::Application { code, .. }) if code == chunk_error::EXISTS => true,
            Err(err) => return Err(err),
        };
        // Caught up with what it missed if this primary kept the record,
        // the holder still has the chunk and did not lose its page cache
        // meanwhile (its store's incarnation is the one last seen: what it
        // had buffered is still there); otherwise rebuilt whole.
        let incarnation = self.flush_one(&e, slot).await?;
        let kept = self.incarnation_seen(&e, slot) == Some(incarnation);
        let all = vec![(0, layout.chunk_bytes)];
        let ranges = match self.missed.ranges(&e, slot) {
            // Taken over from its holder: what it missed since, and the
            // rows its own journal names (it knows whether its page cache
            // survived).
            Some(mut r) if existed && self.missed.opened_by_takeover(&e, slot) => {
                match self.doubts_from(&e, &layout, slot).await {
                    Ok(doubts) => {
                        r.extend(
                            doubts
                                .iter()
                                .flat_map(|d| parity_columns(&layout, d.offset, d.len)),
                        );
                        r
                    }
                    Err(err) => {
                        info!(lun = e.lun, extent = e.index, slot, %err,
                            "the old primary cannot say which rows it left in doubt: rebuilding its chunk whole");
                        all
                    }
                }
            }
            Some(r) if existed && kept => r,
            _ => all,
        };
        let bytes: u64 = ranges.iter().map(|(a, b)| b - a).sum();
        let whole = ranges == [(0, layout.chunk_bytes)];
        info!(
            lun = e.lun,
            extent = e.index,
            slot,
            ranges = ranges.len(),
            bytes,
            "{}",
            if whole {
                "rebuilding a chunk"
            } else {
                "catching up a chunk"
            }
        );
        self.rebuild_onto(&e, &layout, slot, &ranges, Durability::Buffered)
            .await?;
        let incarnation = self.flush_one(&e, slot).await?;
        self.see_incarnation(&e, slot, incarnation);
        let mut chunks = e.chunks.clone();
        if let Some(c) = chunks.get_mut(slot) {
            *c = ChunkState::Ok;
        }
        let e2 = self
            .propose_extent(Command::UpdateExtent {
                lun: e.lun,
                index: e.index,
                expected_epoch: e.epoch,
                nodes: e.nodes.clone(),
                primary: primary_after_rebuild(&layout, e.primary, slot),
                chunks,
                now_ms: 0,
            })
            .await?;
        self.created.lock().remove(&(e.lun, e.index, e.epoch));
        self.missed.forget(e.lun, e.index, slot);
        info!(
            lun = e.lun,
            extent = e.index,
            slot,
            bytes,
            epoch = e2.epoch,
            primary = %e2.primary_node().map(|n| n.to_string()).unwrap_or_default(),
            "{}",
            if whole {
                "chunk rebuilt and back in service"
            } else {
                "chunk caught up and back in service"
            }
        );
        Ok(())
    }

    /// The rows of `e` that the holder of chunk `slot`, the primary this
    /// node took the extent over from, names as possibly in doubt
    /// ([`Self::doubts_of`]), as extent ranges.
    async fn doubts_from(
        &self,
        e: &Extent,
        layout: &Layout,
        slot: usize,
    ) -> Result<Vec<JournalEntry>, RpcError> {
        let req = ExtentDoubtsRequest {
            extent: ExtentRef {
                lun: e.lun,
                extent: e.index,
                epoch: e.epoch,
            },
        };
        let (done, _) = self
            .route_to(e, slot)?
            .call::<ExtentDoubts>(&req, Bytes::new(), Self::chunk_deadline())
            .await?;
        if done.ranges.len() > EXTENT_DOUBTS_RANGES_MAX {
            return Err(unavailable("too many ranges"));
        }
        done.ranges
            .into_iter()
            .map(|(offset, len)| {
                check_range(layout, offset, len)?;
                Ok(JournalEntry {
                    lun: e.lun,
                    extent: e.index,
                    offset,
                    len,
                })
            })
            .collect()
    }

    /// Reconciles the rows of every write left in the journal by a crash:
    /// parity recomputed from the data chunks, extent by extent, in journal
    /// order within an extent. An extent is served again as soon as its
    /// own records are reconciled; one that cannot be yet (a chunk
    /// unreachable or unreadable) is retried without holding up the others.
    pub fn spawn_replay(self: &Arc<Self>, records: Vec<Record>, settled: u64, lost_cache: bool) {
        let mut by_extent: BTreeMap<(u64, u64), Vec<SeqEntry>> = BTreeMap::new();
        let mut unreadable = Vec::new();
        let mut kept = 0usize;
        // Live writes trim (and settle) the journal only below the oldest
        // record in flight: these are, until they are reconciled (and
        // flushed) — in flight before any is taken off.
        self.inflight.lock().extend(records.iter().map(|r| r.seq));
        for rec in &records {
            let Ok(entry) = postcard::from_bytes::<JournalEntry>(&rec.payload) else {
                warn!(seq = rec.seq, "unreadable journal record skipped");
                unreadable.push(rec.seq);
                continue;
            };
            self.kept.lock().insert(rec.seq, entry.clone());
            // A write acknowledged (its rows agreed) and kept only until a
            // flush needs nothing after a process crash: every chunk still
            // has it in its page cache. After a power loss here, its rows
            // may disagree like the others'.
            if rec.seq <= settled && !lost_cache {
                self.done(rec.seq, entry);
                kept += 1;
                continue;
            }
            by_extent
                .entry((entry.lun, entry.extent))
                .or_default()
                .push((rec.seq, entry));
        }
        let mut todo: ExtentRecords = by_extent
            .into_iter()
            .map(|(k, recs)| {
                let ranges = merge_ranges(recs.iter().map(|(_, e)| e.clone()).collect());
                (k, (recs, ranges.into()))
            })
            .collect();
        if kept > 0 {
            info!(
                records = kept,
                "journal records of writes acknowledged before the restart kept until a flush"
            );
        }
        if lost_cache || !unreadable.is_empty() {
            self.kept_incomplete.store(true, Ordering::Relaxed);
        }
        *self.replay_pending.lock() = Some(todo.keys().copied().collect());
        let p = self.clone();
        tokio::spawn(async move {
            p.retire(&unreadable).await;
            if todo.is_empty() {
                return;
            }
            info!(
                records = records.len(),
                extents = todo.len(),
                ranges = todo.values().map(|(_, r)| r.len()).sum::<usize>(),
                "replaying the write journal"
            );
            loop {
                for (key, (seqs, ranges)) in todo.iter_mut() {
                    if p.caught_up_elsewhere(key.0, key.1).await {
                        info!(lun = key.0, extent = key.1,
                            "journal replay: the primary that took the extent over caught this node's chunk up with these rows");
                        ranges.clear();
                        p.handed.lock().remove(key);
                    }
                    while let Some(entry) = ranges.front() {
                        match p.reconcile(entry, Known::Nothing).await {
                            Ok(()) => {
                                ranges.pop_front();
                            }
                            Err(e) => {
                                warn!(lun = key.0, extent = key.1, %e, "journal replay: retrying");
                                break;
                            }
                        }
                    }
                    if ranges.is_empty() {
                        for (seq, entry) in seqs.drain(..) {
                            p.done(seq, entry);
                        }
                        if let Some(pending) = p.replay_pending.lock().as_mut() {
                            pending.remove(key);
                        }
                    }
                }
                todo.retain(|_, (_, ranges)| !ranges.is_empty());
                if todo.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            info!("journal replayed: data and parity agree");
        });
    }

    /// Recomputes every parity chunk of extent `e` (just taken over from
    /// the holder of chunk `old`) from its data, retrying until done; the
    /// extent is not served meanwhile. Called with the extent's lock held,
    /// so no write comes between. A data block that fails its checksum
    /// stops that: its row may be one the old primary left in doubt, where
    /// the parity cannot say what it held. Once the old primary answers
    /// which rows those are ([`Self::doubts_from`]), only they are
    /// recomputed; the parity of the others agrees with the data and
    /// repairs the bad block when it is read.
    fn reconcile_whole(self: &Arc<Self>, layout: &Layout, e: &Extent, old: Option<usize>) {
        let (lun, index) = (e.lun, e.index);
        if let Some(pending) = self.replay_pending.lock().as_mut() {
            pending.insert((lun, index));
        }
        let entry = JournalEntry {
            lun,
            extent: index,
            offset: 0,
            len: layout.chunk_bytes * layout.k,
        };
        let p = self.clone();
        let (e, layout) = (e.clone(), *layout);
        tokio::spawn(async move {
            let mut todo = vec![entry];
            let mut narrowed = false;
            while let Some(entry) = todo.last() {
                match p.reconcile(entry, Known::Nothing).await {
                    Ok(()) => {
                        todo.pop();
                        continue;
                    }
                    Err(err) => {
                        warn!(lun, extent = index, %err, "recomputing the parity after a takeover; will retry");
                    }
                }
                if let (Some(old), false) = (old, narrowed) {
                    match p.doubts_from(&e, &layout, old).await {
                        Ok(doubts) => {
                            info!(lun, extent = index, ranges = doubts.len(),
                                "the old primary named the rows it left in doubt: recomputing only their parity");
                            todo = doubts;
                            narrowed = true;
                            continue;
                        }
                        Err(err) => {
                            debug!(lun, extent = index, %err, "asking the old primary which rows it left in doubt")
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if let Some(pending) = p.replay_pending.lock().as_mut() {
                pending.remove(&(lun, index));
            }
            info!(
                lun,
                extent = index,
                "parity recomputed from the data after a takeover"
            );
        });
    }

    /// Recomputes the parity of the rows `entry` touched (see
    /// [`Self::reconcile_held`]).
    async fn reconcile(&self, entry: &JournalEntry, known: Known<'_>) -> Result<(), RpcError> {
        let _held = self.lock(entry.lun, entry.extent).exclusive().await;
        self.reconcile_held(entry, known).await
    }

    /// Recomputes the parity of the rows `entry` touched, with the extent
    /// held alone, unless what is `known` of them says nothing can
    /// disagree there: rows of a doubt once none of its chunks is in
    /// service (the chunks in service agree, and define them), or rows of
    /// a failed write of this process with no doubt over them.
    async fn reconcile_held(&self, entry: &JournalEntry, known: Known<'_>) -> Result<(), RpcError> {
        let layout = self.layout(entry.lun).await?;
        if layout.m == 0 {
            return Ok(());
        }
        // Like every primary action, only under a valid lease: a node back
        // from a crash replays before it has one, and meanwhile another
        // holder may take over and write this parity at a newer epoch.
        if !self.lease.valid(LEASE_MARGIN_MS) {
            return Err(unavailable("this node's lease has lapsed"));
        }
        let e = match self.fresh_extent(entry.lun, entry.extent).await {
            Ok(e) => e,
            Err(RpcError::Application { code, .. }) if code == extent_error::NOT_ALLOCATED => {
                return Ok(()); // deleted since
            }
            Err(err) => return Err(err),
        };
        if e.primary_node() != Some(&self.me) {
            return self.handed_over(&e);
        }
        let columns = parity_columns(&layout, entry.offset, entry.len);
        let out_data = (0..layout.k as usize).any(|j| e.chunks.get(j) != Some(&ChunkState::Ok));
        match known {
            Known::Doubt(d) if d.iter().all(|s| e.chunks.get(*s) != Some(&ChunkState::Ok)) => {
                return Ok(());
            }
            // The data cannot all be read, and needs not be: with no
            // doubt over its rows, each chunk took the write whole or
            // surely not at all. Waiting would pin the journal until the
            // chunk is back or rebuilt elsewhere (ten minutes by default).
            Known::Failed
                if out_data
                    && !self
                        .doubts
                        .lock()
                        .iter()
                        .any(|d| d.holds(&e, &layout, &columns)) =>
            {
                return Ok(());
            }
            _ => {}
        }
        let codec = self.codec(&layout)?;
        let k = layout.k as usize;
        let step = u64::from(EXTENT_IO_BYTES_MAX);
        let pieces = columns.iter().flat_map(|&(a, b)| {
            (a..b)
                .step_by(step as usize)
                .map(move |x| (x, (x + step).min(b)))
        });
        let out: Vec<usize> = (0..k)
            .filter(|j| e.chunks.get(*j) != Some(&ChunkState::Ok))
            .collect();
        let parity_in: Vec<usize> = (k..layout.width())
            .filter(|s| e.chunks.get(*s) == Some(&ChunkState::Ok))
            .collect();
        if let ([j], true) = (&out[..], parity_in.len() >= 2) {
            for (a, b) in pieces {
                self.parity_agrees(&e, &codec, *j, &parity_in, a, b).await?;
            }
            return Ok(());
        }
        'piece: for (a, b) in pieces {
            let mut data = Vec::with_capacity(k);
            for j in 0..k {
                match self.read_chunk(&e, j, a, b).await {
                    Ok(d) => data.push(d),
                    // A bad block in a data chunk: agreeing parity chunks
                    // say what it held (and the block is rewritten);
                    // otherwise the rows stay in doubt.
                    Err(RpcError::Application { code, .. })
                        if code == chunk_error::CHECKSUM && parity_in.len() >= 2 =>
                    {
                        let held = self.parity_agrees(&e, &codec, j, &parity_in, a, b).await?;
                        let deadline = Self::chunk_deadline();
                        self.overwrite(&e, j, a, Bytes::from(held), Durability::Stable, deadline)
                            .await?;
                        info!(chunk = %Self::chunk_ref(&e, j), offset = a, len = b - a,
                            "repaired corrupt blocks from agreeing parity chunks");
                        continue 'piece;
                    }
                    Err(err) => return Err(err),
                }
            }
            self.write_parity(&e, &codec, a, &data, Self::chunk_deadline())
                .await?;
        }
        Ok(())
    }

    /// Writes the parity of `data` (the `k` data chunks of `e` at chunk
    /// offset `a`) to each parity chunk in service; one out of service is
    /// rebuilt from the data when it returns.
    async fn write_parity(
        &self,
        e: &Extent,
        codec: &Codec,
        a: u64,
        data: &[Bytes],
        deadline: Instant,
    ) -> Result<(), RpcError> {
        let refs: Vec<&[u8]> = data.iter().map(|d| &d[..]).collect();
        let parity = codec.parity(&refs).map_err(coding)?;
        for (p, par) in parity.into_iter().enumerate() {
            let slot = codec.k() + p;
            if e.chunks.get(slot) != Some(&ChunkState::Ok) {
                continue;
            }
            self.overwrite(e, slot, a, Bytes::from(par), Durability::Stable, deadline)
                .await?;
        }
        Ok(())
    }

    /// With data chunk `out` out of service, a failed write's rows cannot
    /// be recomputed from the data; but they need nothing if the parity
    /// chunks in service (two at least) agree there: each of them, with
    /// the data chunks in service, gives the same contents for `out`
    /// (`m ≥ 2` leaves one equation to spare). A parity chunk that missed
    /// a delta another took, or a data chunk that took the write while no
    /// parity did, makes them disagree: the rows stay in doubt.
    async fn parity_agrees(
        &self,
        e: &Extent,
        codec: &Codec,
        out: usize,
        parity_in: &[usize],
        a: u64,
        b: u64,
    ) -> Result<Vec<u8>, RpcError> {
        let (k, width) = (codec.k(), codec.k() + codec.m());
        let mut stripe: Vec<Option<Vec<u8>>> = vec![None; width];
        // Read here rather than through `rebuild_range`: these rows are in
        // doubt, which is what this settles.
        for slot in (0..k)
            .filter(|j| *j != out)
            .chain(parity_in.iter().copied())
        {
            let d = self.read_chunk(e, slot, a, b).await?;
            if let Some(s) = stripe.get_mut(slot) {
                *s = Some(d.to_vec());
            }
        }
        codec.solve_if_agreed(&stripe, out).ok_or_else(|| {
            unavailable(format!(
                "parity chunks disagree over chunk {out} at {a}..{b}: \
                 rows of a failed write stay in doubt"
            ))
        })
    }
}

/// How a write can bring chunks that did not take it up to date in place
/// ([`Primary::mend`]).
#[derive(Clone, Copy)]
enum Mend<'a> {
    /// Whole rows: each slot's new contents (data and parity) at chunk
    /// offset `at`.
    Rows { at: u64, bufs: &'a [(usize, Bytes)] },
    /// Partial rows: the new contents of the data chunks written (slot,
    /// chunk offset, bytes), block aligned; the parity over the write's
    /// chunk columns `cols` is recomputed from the data.
    Partial {
        news: &'a [(usize, u64, Bytes)],
        cols: &'a [(u64, u64)],
    },
    /// Whole rows punched: chunk range `at..at + len` of every chunk (data
    /// and parity alike end as zeroes).
    Punch {
        at: u64,
        len: u64,
        durability: Durability,
    },
}

/// `cur` (chunk bytes from offset `a`) with the parts of `news` (chunk
/// offset, bytes) that fall within it written over it.
fn overlay<'a>(cur: Bytes, a: u64, news: impl Iterator<Item = &'a (usize, u64, Bytes)>) -> Bytes {
    let mut out = BytesMut::from(&cur[..]);
    let b = a + out.len() as u64;
    for (_, at, buf) in news {
        let (x, y) = ((*at).max(a), (at + buf.len() as u64).min(b));
        if x < y {
            out[(x - a) as usize..(y - a) as usize]
                .copy_from_slice(&buf[(x - at) as usize..(y - at) as usize]);
        }
    }
    out.freeze()
}

fn log_marked(e: &Extent, slots: &[usize]) {
    info!(
        lun = e.lun,
        extent = e.index,
        ?slots,
        epoch = e.epoch,
        "chunks marked missing"
    );
}

/// Whether a chunk call surely did not change the chunk: it reached no
/// handler, or the chunk refused the request before touching its data.
fn refused(err: &RpcError) -> bool {
    match err {
        RpcError::Application { code, .. } => matches!(
            *code,
            chunk_error::NOT_FOUND
                | chunk_error::STALE_EPOCH
                | chunk_error::OUT_OF_RANGE
                | chunk_error::MISALIGNED
                | chunk_error::TOO_LARGE
                | chunk_error::INVALID
                | chunk_error::NO_LEASE
        ),
        other => other.never_handled(),
    }
}

/// The chunk ranges (block aligned, merged) whose parity a write to extent
/// range `[offset, offset+len)` may have changed: the columns its pieces
/// fall in, not their whole rows. Reconciling only these needs only these
/// blocks of the data chunks, so a bad block elsewhere in the row (another
/// fault) does not stop a replay.
fn parity_columns(layout: &Layout, offset: u64, len: u64) -> Vec<(u64, u64)> {
    let mut cols: Vec<(u64, u64)> = layout
        .pieces(offset, len)
        .iter()
        .map(|p| align(p.chunk_off, p.chunk_off + p.len))
        .collect();
    cols.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(cols.len());
    for (a, b) in cols {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// The primary slot once chunk `rebuilt` is back in service: the parity
/// holder's again if a data holder had taken over while it was out. A data
/// holder that is primary takes its own chunk down with it when it crashes,
/// and leaves the parity of the rows it was writing in doubt: two unknowns
/// in those columns, which `m = 1` cannot rebuild (a later rebuild from
/// that parity returned another block's bytes: `weft-sim --seed 258`). The
/// parity holder's crash leaves only parity in doubt, recomputed from the
/// data. So a data holder stays primary only while the parity is out, when
/// its crash is a double fault anyway and the extent waits for it.
fn primary_after_rebuild(layout: &Layout, primary: u8, rebuilt: usize) -> u8 {
    let parity = layout.k as usize;
    if layout.m > 0 && rebuilt >= parity && usize::from(primary) < parity {
        rebuilt as u8
    } else {
        primary
    }
}

/// The stripe rows `[first, last]` that extent range `[offset, offset+len)`
/// touches.
fn rows(layout: &Layout, offset: u64, len: u64) -> (u64, u64) {
    let row = layout.row_bytes();
    (offset / row, (offset + len.max(1) - 1) / row)
}

fn check_range(layout: &Layout, offset: u64, len: u64) -> Result<(), RpcError> {
    if offset
        .checked_add(len)
        .is_none_or(|end| end > layout.extent_bytes())
    {
        return Err(app(
            extent_error::INVALID,
            format!("range {offset}+{len} beyond the extent"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_ranges_merge_where_they_overlap_or_touch() {
        let e = |offset, len| JournalEntry {
            lun: 1,
            extent: 2,
            offset,
            len,
        };
        let merged = merge_ranges(vec![e(100, 10), e(0, 50), e(50, 10), e(30, 5), e(200, 1)]);
        assert_eq!(merged, vec![e(0, 60), e(100, 10), e(200, 1)]);
        assert_eq!(merge_ranges(vec![e(u64::MAX - 1, 5), e(0, 1)]).len(), 2);
    }

    #[test]
    fn parity_columns_are_the_written_columns_not_whole_rows() {
        // 3+1, 64 KiB units: a row is 192 KiB of the extent.
        let l = Layout::new(3, 1, 1 << 20, 64 << 10).unwrap();
        assert_eq!(parity_columns(&l, 0, 4096), vec![(0, 4096)]);
        // 1 KiB inside chunk 1's first block: that block's column only.
        assert_eq!(parity_columns(&l, (64 << 10) + 512, 1024), vec![(0, 4096)]);
        // A whole row: the whole unit column of that row.
        assert_eq!(parity_columns(&l, 0, 192 << 10), vec![(0, 64 << 10)]);
        // The end of row 0 (chunk 2) and the start of row 1 (chunk 0).
        assert_eq!(
            parity_columns(&l, 188 << 10, 8 << 10),
            vec![(60 << 10, 68 << 10)]
        );
        // Two chunks of one row at different offsets: two columns.
        assert_eq!(
            parity_columns(&l, 60 << 10, 8 << 10),
            vec![(0, 4096), (60 << 10, 64 << 10)]
        );
        // Overlapping columns merge.
        assert_eq!(parity_columns(&l, 4096, 68 << 10), vec![(0, 64 << 10)]);
    }

    #[test]
    fn the_parity_holder_is_primary_again_once_its_chunk_is_rebuilt() {
        let l = Layout::new(3, 1, 1 << 20, 64 << 10).unwrap();
        // Data holder 1 took over; parity (slot 3) rebuilt: back to 3.
        assert_eq!(primary_after_rebuild(&l, 1, 3), 3);
        // A data chunk rebuilt: the primary stays where it is.
        assert_eq!(primary_after_rebuild(&l, 1, 0), 1);
        assert_eq!(primary_after_rebuild(&l, 3, 0), 3);
        // No parity: nothing to hand back to.
        let plain = Layout::new(3, 0, 1 << 20, 64 << 10).unwrap();
        assert_eq!(primary_after_rebuild(&plain, 0, 2), 0);
    }
}
