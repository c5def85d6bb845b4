//! [`ScsiTarget`]: the logical units of one iSCSI target and the shared
//! checks every command goes through before its handler runs.

use super::alua::{AluaProvider, StandaloneAlua};
use super::cdb::Buf;
use super::mode::ModeState;
use super::pr::{self, MemoryPrStore, PrStore};
use super::sense::SenseReason;
use super::table::{self, CommandSpec, Handler};
use super::ua::{UaKind, UaQueues};
use super::{alua, inquiry, misc, mode, provisioning, rw};
use super::{ItNexus, LuConfig, Residual, ScsiRequest, ScsiResponse, ScsiStatus};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub struct ScsiTargetConfig {
    /// iSCSI target name (SCSI name string in VPD 0x83).
    pub target_name: String,
    pub lus: Vec<LuConfig>,
    /// Where persistent reservations live (per LUN).
    pub pr_store: Arc<dyn PrStore>,
    /// Target port groups and relative port ids.
    pub alua: Arc<dyn AluaProvider>,
}

impl ScsiTargetConfig {
    /// A standalone gateway: reservations in memory, one port group.
    pub fn standalone(target_name: impl Into<String>, lus: Vec<LuConfig>) -> Self {
        ScsiTargetConfig {
            target_name: target_name.into(),
            lus,
            pr_store: Arc::new(MemoryPrStore::default()),
            alua: Arc::new(StandaloneAlua),
        }
    }
}

/// Per-LU state held by this gateway.
pub(crate) struct Lu {
    pub cfg: LuConfig,
    pub ua: Mutex<UaQueues>,
    pub mode: Mutex<ModeState>,
    /// Holder of a RESERVE(6)/RESERVE(10) reservation.
    pub legacy_holder: Mutex<Option<ItNexus>>,
    /// Serializes persistent-reservation read-modify-write cycles against
    /// the `PrStore`. Enough while one gateway serves the LU; the cluster
    /// store will do the compare-and-set itself (DESIGN.md "Metadata").
    pub pr_lock: tokio::sync::Mutex<()>,
    /// Nexuses that sent PREVENT ALLOW MEDIUM REMOVAL with PREVENT set.
    pub prevent: Mutex<HashSet<ItNexus>>,
}

impl Lu {
    fn new(cfg: LuConfig) -> Lu {
        Lu {
            mode: Mutex::new(ModeState::default()),
            ua: Mutex::new(UaQueues::default()),
            legacy_holder: Mutex::new(None),
            pr_lock: tokio::sync::Mutex::new(()),
            prevent: Mutex::new(HashSet::new()),
            cfg,
        }
    }
}

/// What a handler moved, for the generic residual computation.
pub(crate) enum Xfer {
    None,
    /// Data-in as produced, before truncation by allocation length.
    In(Bytes),
    /// Data-out length in bytes that the CDB called for.
    Out(u64),
}

impl Xfer {
    pub fn data(v: Vec<u8>) -> Self {
        Xfer::In(Bytes::from(v))
    }
}

pub(crate) type CmdResult = Result<Xfer, SenseReason>;

/// Everything a handler may look at.
pub(crate) struct Ctx<'a> {
    pub target: &'a ScsiTarget,
    pub lu: Option<&'a Lu>,
    pub nexus: &'a ItNexus,
    pub cdb: Buf<'a>,
    pub spec: &'static CommandSpec,
    pub data_out: &'a Bytes,
    /// iSCSI Expected Data Transfer Length.
    pub expected_len: u32,
}

impl<'a> Ctx<'a> {
    pub fn lu(&self) -> Result<&'a Lu, SenseReason> {
        self.lu.ok_or(SenseReason::LuNotSupported)
    }
}

/// Aborts tasks of other I_T nexuses (PREEMPT AND ABORT): the transport owns
/// the task sets, so the device server asks it.
pub trait TaskAborter: Send + Sync {
    fn abort_tasks(&self, target_name: &str, lun: u64, nexus_matches: &dyn Fn(&ItNexus) -> bool);
}

pub struct ScsiTarget {
    pub(crate) target_name: String,
    /// Logical units by LUN; a cluster gateway adds and removes them as
    /// the catalogue changes.
    pub(crate) lus: parking_lot::RwLock<BTreeMap<u64, Arc<Lu>>>,
    pub(crate) pr_store: Arc<dyn PrStore>,
    pub(crate) alua: Arc<dyn AluaProvider>,
    /// Set once by the transport that owns this target; weak because the
    /// transport owns the target.
    aborter: std::sync::OnceLock<std::sync::Weak<dyn TaskAborter>>,
}

impl ScsiTarget {
    pub fn new(cfg: ScsiTargetConfig) -> Self {
        let lus = cfg
            .lus
            .into_iter()
            .map(|c| (c.lun, Arc::new(Lu::new(c))))
            .collect();
        ScsiTarget {
            target_name: cfg.target_name,
            lus: parking_lot::RwLock::new(lus),
            pr_store: cfg.pr_store,
            alua: cfg.alua,
            aborter: std::sync::OnceLock::new(),
        }
    }

    /// Names who aborts other nexuses' tasks; only the first call counts.
    pub fn set_task_aborter(&self, aborter: std::sync::Weak<dyn TaskAborter>) {
        let _ = self.aborter.set(aborter);
    }

    pub(crate) fn abort_tasks(&self, lun: u64, nexus_matches: &dyn Fn(&ItNexus) -> bool) {
        if let Some(a) = self.aborter.get().and_then(|w| w.upgrade()) {
            a.abort_tasks(&self.target_name, lun, nexus_matches);
        }
    }

    pub fn luns(&self) -> Vec<u64> {
        self.lus.read().keys().copied().collect()
    }

    pub fn has_lun(&self, lun: u64) -> bool {
        self.lus.read().contains_key(&lun)
    }

    /// Adds (or replaces) a logical unit; every nexus of the other LUs
    /// sees REPORTED LUNS DATA HAS CHANGED.
    pub fn add_lu(&self, cfg: LuConfig) {
        let mut lus = self.lus.write();
        lus.insert(cfg.lun, Arc::new(Lu::new(cfg)));
        for lu in lus.values() {
            lu.ua
                .lock()
                .push_where(UaKind::ReportedLunsDataChanged, |_| true);
        }
    }

    /// Removes a logical unit (commands to it then fail with LOGICAL UNIT
    /// NOT SUPPORTED); the others report the change.
    pub fn remove_lu(&self, lun: u64) {
        let mut lus = self.lus.write();
        if lus.remove(&lun).is_some() {
            for lu in lus.values() {
                lu.ua
                    .lock()
                    .push_where(UaKind::ReportedLunsDataChanged, |_| true);
            }
        }
    }

    fn lu(&self, lun: u64) -> Option<Arc<Lu>> {
        self.lus.read().get(&lun).cloned()
    }

    fn all_lus(&self) -> Vec<Arc<Lu>> {
        self.lus.read().values().cloned().collect()
    }

    /// LOGICAL UNIT RESET: every nexus sees BUS DEVICE RESET; RESERVE(6/10)
    /// reservations and medium-removal prevention end; persistent
    /// reservations survive (SPC-4 5.13.1).
    pub fn lu_reset(&self, lun: u64) {
        if let Some(lu) = self.lu(lun) {
            Self::reset_lu(&lu, UaKind::BusDeviceReset);
        }
    }

    /// TARGET WARM/COLD RESET: a reset of every logical unit.
    pub fn target_reset(&self) {
        for lu in self.all_lus() {
            Self::reset_lu(&lu, UaKind::PowerOnReset);
        }
    }

    fn reset_lu(lu: &Lu, kind: UaKind) {
        lu.ua.lock().push_where(kind, |_| true);
        *lu.legacy_holder.lock() = None;
        lu.prevent.lock().clear();
    }

    /// The session of `nexus` ended: its unit attentions, RESERVE(6/10)
    /// reservation and PREVENT go; persistent registrations stay.
    pub fn nexus_gone(&self, nexus: &ItNexus) {
        for lu in self.all_lus() {
            lu.ua.lock().forget(nexus);
            lu.prevent.lock().remove(nexus);
            let mut holder = lu.legacy_holder.lock();
            if holder.as_ref() == Some(nexus) {
                *holder = None;
            }
        }
    }

    /// The LU's size changed: every nexus sees CAPACITY DATA HAS CHANGED.
    pub fn capacity_changed(&self, lun: u64) {
        if let Some(lu) = self.lu(lun) {
            lu.ua
                .lock()
                .push_where(UaKind::CapacityDataChanged, |_| true);
        }
    }

    /// Raises a unit attention on one LU for every known nexus that `pred` accepts.
    pub(crate) fn raise_ua(lu: &Lu, kind: UaKind, pred: impl Fn(&ItNexus) -> bool) {
        lu.ua.lock().push_where(kind, pred);
    }

    /// Serves one command. Never panics, whatever the CDB and data-out.
    pub async fn execute(&self, nexus: &ItNexus, req: ScsiRequest) -> ScsiResponse {
        match self.run(nexus, &req).await {
            Ok(xfer) => {
                let (data, transfer_len) = match xfer {
                    Xfer::None => (Bytes::new(), 0u64),
                    Xfer::In(mut d) => {
                        if let Some(alloc) = table::allocation_length_of(&req.cdb) {
                            d.truncate(alloc as usize);
                        }
                        let n = d.len() as u64;
                        (d, n)
                    }
                    Xfer::Out(n) => (Bytes::new(), n),
                };
                let expected = u64::from(req.expected_len);
                let mut data_in = data;
                data_in.truncate(req.expected_len as usize);
                let residual = if expected > transfer_len {
                    Residual::Underflow(clamp_u32(expected - transfer_len))
                } else if expected < transfer_len {
                    Residual::Overflow(clamp_u32(transfer_len - expected))
                } else {
                    Residual::None
                };
                ScsiResponse {
                    status: ScsiStatus::Good,
                    data_in,
                    sense: None,
                    residual,
                }
            }
            Err(reason) => {
                tracing::debug!(lun = req.lun, cdb = ?req.cdb, %reason, "SCSI command failed");
                ScsiResponse {
                    status: reason.status(),
                    data_in: Bytes::new(),
                    sense: reason.sense(),
                    residual: Residual::None,
                }
            }
        }
    }

    async fn run(&self, nexus: &ItNexus, req: &ScsiRequest) -> CmdResult {
        let lu = self.lu(req.lun);
        let lu = lu.as_deref();
        let spec = match table::lookup(&req.cdb) {
            Ok(spec) => spec,
            Err(_) if lu.is_none() => return Err(SenseReason::LuNotSupported),
            Err(e) => return Err(e),
        };
        if lu.is_none() && !spec.without_lu {
            return Err(SenseReason::LuNotSupported);
        }
        table::check_cdb_bits(spec, &req.cdb)?;
        if let Some(lu) = lu {
            let mut ua = lu.ua.lock();
            ua.touch(nexus);
            if !spec.ua_exempt && spec.handler != Handler::RequestSense {
                if let Some(kind) = ua.pop(nexus) {
                    return Err(SenseReason::UnitAttention(kind));
                }
            }
        }
        if let Some(lu) = lu {
            self.check_reservations(lu, nexus, spec)?;
            if spec.writes_medium && lu.mode.lock().swp {
                return Err(SenseReason::WriteProtected);
            }
        }
        let ctx = Ctx {
            target: self,
            lu,
            nexus,
            cdb: Buf(&req.cdb),
            spec,
            data_out: &req.data_out,
            expected_len: req.expected_len,
        };
        self.dispatch(&ctx).await
    }

    fn check_reservations(
        &self,
        lu: &Lu,
        nexus: &ItNexus,
        spec: &CommandSpec,
    ) -> Result<(), SenseReason> {
        if !spec.legacy_ok {
            if let Some(holder) = lu.legacy_holder.lock().as_ref() {
                if holder != nexus {
                    return Err(SenseReason::ReservationConflict);
                }
            }
        }
        let state = self.pr_store.load(lu.cfg.lun);
        // The common case, no reservation, conflicts with nothing: skip
        // building this nexus' key (it formats the initiator port name).
        if state.reservation.is_none() {
            return Ok(());
        }
        let me = pr::RegKey::of(nexus, self.alua.relative_port_id(nexus));
        if pr::conflicts(&state, &me, spec.pr) {
            return Err(SenseReason::ReservationConflict);
        }
        Ok(())
    }

    async fn dispatch(&self, ctx: &Ctx<'_>) -> CmdResult {
        match ctx.spec.handler {
            Handler::TestUnitReady => misc::test_unit_ready(ctx),
            Handler::RequestSense => misc::request_sense(ctx),
            Handler::Inquiry => inquiry::inquiry(ctx),
            Handler::ModeSelect => mode::mode_select(ctx),
            Handler::ModeSense => mode::mode_sense(ctx),
            Handler::Reserve => pr::reserve_legacy(ctx),
            Handler::Release => pr::release_legacy(ctx),
            Handler::StartStopUnit => misc::start_stop_unit(ctx),
            Handler::PreventAllowMediumRemoval => misc::prevent_allow(ctx),
            Handler::Read => rw::read(ctx).await,
            Handler::Write => rw::write(ctx).await,
            Handler::WriteAndVerify => rw::write(ctx).await,
            Handler::Verify => rw::verify(ctx).await,
            Handler::ReadCapacity10 => rw::read_capacity10(ctx),
            Handler::ReadCapacity16 => rw::read_capacity16(ctx),
            Handler::SynchronizeCache => rw::synchronize_cache(ctx).await,
            Handler::PreFetch => rw::pre_fetch(ctx),
            Handler::CompareAndWrite => rw::compare_and_write(ctx).await,
            Handler::WriteSame => provisioning::write_same(ctx).await,
            Handler::Unmap => provisioning::unmap(ctx).await,
            Handler::GetLbaStatus => provisioning::get_lba_status(ctx).await,
            Handler::PersistentReserveIn => pr::persistent_reserve_in(ctx),
            Handler::PersistentReserveOut => pr::persistent_reserve_out(ctx).await,
            Handler::ReportLuns => misc::report_luns(ctx),
            Handler::ReportTargetPortGroups => alua::report_target_port_groups(ctx),
            Handler::ReportSupportedOpcodes => {
                table::report_supported_opcodes(ctx.cdb).map(Xfer::data)
            }
            Handler::ReportSupportedTmfs => Ok(Xfer::data(table::report_supported_tmfs(ctx.cdb))),
        }
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
