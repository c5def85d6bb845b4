//! Persistent reservations (SPC-4 5.13, PERSISTENT RESERVE IN/OUT) and the
//! older RESERVE/RELEASE(6/10).
//!
//! The state of each LU lives behind [`PrStore`] so that the cluster can
//! hold it for every gateway. `ScsiTarget` does each PERSISTENT RESERVE OUT
//! as load → change → store under a per-LU lock; that is atomic while one
//! gateway serves the LU, and the cluster store will have to make `store`
//! a compare-and-set on `generation`.
//!
//! PREEMPT AND ABORT preempts like PREEMPT, then asks the transport (which
//! owns the task sets) to abort the preempted nexuses' tasks on the LU.

use super::cdb::{put_be, Buf};
use super::inquiry::PROTOCOL_ISCSI;
use super::sense::SenseReason;
use super::table::PrAccess;
use super::target::{CmdResult, Ctx, Lu, ScsiTarget, Xfer};
use super::ua::UaKind;
use super::ItNexus;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Registrations kept per LU; beyond this REGISTER fails with
/// INSUFFICIENT REGISTRATION RESOURCES.
pub const REGISTRATIONS_MAX: usize = 128;
/// The only PERSISTENT RESERVE OUT parameter list length without SPEC_I_PT
/// (REGISTER AND MOVE adds a TransportID).
const PROUT_PARAMETER_LIST_LEN_BYTES: usize = 24;
/// Version of the on-disk APTPL file.
pub const PR_FILE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrType {
    WriteExclusive,
    ExclusiveAccess,
    WriteExclusiveRegistrantsOnly,
    ExclusiveAccessRegistrantsOnly,
    WriteExclusiveAllRegistrants,
    ExclusiveAccessAllRegistrants,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x1 => PrType::WriteExclusive,
            0x3 => PrType::ExclusiveAccess,
            0x5 => PrType::WriteExclusiveRegistrantsOnly,
            0x6 => PrType::ExclusiveAccessRegistrantsOnly,
            0x7 => PrType::WriteExclusiveAllRegistrants,
            0x8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            PrType::WriteExclusive => 0x1,
            PrType::ExclusiveAccess => 0x3,
            PrType::WriteExclusiveRegistrantsOnly => 0x5,
            PrType::ExclusiveAccessRegistrantsOnly => 0x6,
            PrType::WriteExclusiveAllRegistrants => 0x7,
            PrType::ExclusiveAccessAllRegistrants => 0x8,
        }
    }

    /// Every registrant is a holder.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants other than the holder have access.
    fn registrants_have_access(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess
                | PrType::ExclusiveAccessRegistrantsOnly
                | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// One registered I_T nexus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(with = "hex_key")]
    pub key: u64,
    /// iSCSI initiator port name: `iqn...,i,0x<ISID>`.
    pub initiator_port: String,
    /// Relative target port id; None when registered with ALL_TG_PT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub kind: PrType,
    /// The holder's registration identity (ignored for all-registrants types).
    pub initiator_port: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_port: Option<u16>,
}

/// Persistent reservation state of one LU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrState {
    /// PRgeneration: bumped by every registration change.
    pub generation: u32,
    #[serde(default)]
    pub registrations: Vec<Registration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<Reservation>,
    /// Activate persist through power loss.
    #[serde(default)]
    pub aptpl: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PrStoreError {
    #[error("persistent reservation store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("persistent reservation file {path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Where each LU's reservation state lives.
pub trait PrStore: Send + Sync {
    /// Current state (default when the LU has none).
    fn load(&self, lun: u64) -> PrState;
    fn store(&self, lun: u64, state: &PrState) -> Result<(), PrStoreError>;
}

#[derive(Debug, Default)]
pub struct MemoryPrStore {
    states: Mutex<HashMap<u64, PrState>>,
}

impl PrStore for MemoryPrStore {
    fn load(&self, lun: u64) -> PrState {
        self.states.lock().get(&lun).cloned().unwrap_or_default()
    }

    fn store(&self, lun: u64, state: &PrState) -> Result<(), PrStoreError> {
        self.states.lock().insert(lun, state.clone());
        Ok(())
    }
}

/// Keeps state in memory and, while APTPL is set, in `<dir>/lun-<n>.toml`
/// too, so that it survives a restart (power loss); with APTPL clear the
/// file is removed, as SPC-4 wants the state gone after power loss.
#[derive(Debug)]
pub struct FilePrStore {
    dir: PathBuf,
    cache: MemoryPrStore,
}

#[derive(Serialize, Deserialize)]
struct PrFile {
    version: u32,
    state: PrState,
}

impl FilePrStore {
    /// Opens `dir` (creating it) and loads every persisted LU.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, PrStoreError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let store = FilePrStore {
            dir,
            cache: MemoryPrStore::default(),
        };
        for entry in std::fs::read_dir(&store.dir)? {
            let path = entry?.path();
            let lun = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("lun-"))
                .and_then(|n| n.strip_suffix(".toml"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(lun) = lun {
                let state = Self::read_file(&path)?;
                store.cache.store(lun, &state)?;
            }
        }
        Ok(store)
    }

    fn path(&self, lun: u64) -> PathBuf {
        self.dir.join(format!("lun-{lun}.toml"))
    }

    fn read_file(path: &Path) -> Result<PrState, PrStoreError> {
        let text = std::fs::read_to_string(path)?;
        let format = |reason: String| PrStoreError::Format {
            path: path.to_owned(),
            reason,
        };
        let file: PrFile = toml::from_str(&text).map_err(|e| format(e.to_string()))?;
        if file.version != PR_FILE_VERSION {
            return Err(format(format!("unknown version {}", file.version)));
        }
        Ok(file.state)
    }

    fn write_file(&self, lun: u64, state: &PrState) -> Result<(), PrStoreError> {
        let path = self.path(lun);
        let text = toml::to_string(&PrFile {
            version: PR_FILE_VERSION,
            state: state.clone(),
        })
        .map_err(|e| PrStoreError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let tmp = self.dir.join(format!(".lun-{lun}.toml.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

impl PrStore for FilePrStore {
    fn load(&self, lun: u64) -> PrState {
        self.cache.load(lun)
    }

    fn store(&self, lun: u64, state: &PrState) -> Result<(), PrStoreError> {
        if state.aptpl {
            self.write_file(lun, state)?;
        } else {
            match std::fs::remove_file(self.path(lun)) {
                Ok(()) => std::fs::File::open(&self.dir)?.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.cache.store(lun, state)
    }
}

/// Reservation keys are u64, which TOML integers (i64) cannot hold.
mod hex_key {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("0x{v:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        let digits = s.strip_prefix("0x").unwrap_or(&s);
        u64::from_str_radix(digits, 16).map_err(serde::de::Error::custom)
    }
}

/// Who is asking, in registration terms: initiator port and relative
/// target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegKey {
    pub initiator_port: String,
    pub rel_port: u16,
}

impl RegKey {
    pub fn of(nexus: &ItNexus, rel_port: u16) -> Self {
        RegKey {
            initiator_port: initiator_port_name(&nexus.initiator_name, &nexus.isid),
            rel_port,
        }
    }
}

/// iSCSI initiator port name (RFC 7143 §13.? / SPC-4 TransportID format 01b).
pub fn initiator_port_name(initiator_name: &str, isid: &[u8; 6]) -> String {
    let hex: String = isid.iter().map(|b| format!("{b:02x}")).collect();
    format!("{},i,0x{}", initiator_name.to_ascii_lowercase(), hex)
}

fn same_port(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

impl Registration {
    fn matches(&self, me: &RegKey) -> bool {
        same_port(&self.initiator_port, &me.initiator_port)
            && self.relative_port.is_none_or(|p| p == me.rel_port)
    }
}

fn find_reg<'s>(state: &'s PrState, me: &RegKey) -> Option<&'s Registration> {
    state.registrations.iter().find(|r| r.matches(me))
}

fn is_holder(state: &PrState, res: &Reservation, me: &RegKey) -> bool {
    if res.kind.all_registrants() {
        return find_reg(state, me).is_some();
    }
    same_port(&res.initiator_port, &me.initiator_port)
        && res.relative_port.is_none_or(|p| p == me.rel_port)
}

fn holds(res: &Reservation, reg: &Registration) -> bool {
    same_port(&res.initiator_port, &reg.initiator_port) && res.relative_port == reg.relative_port
}

/// Whether a command of class `access` from `me` conflicts with the
/// persistent reservation (SPC-4 table 66).
pub(crate) fn conflicts(state: &PrState, me: &RegKey, access: PrAccess) -> bool {
    let Some(res) = &state.reservation else {
        return false;
    };
    if access == PrAccess::Allowed || is_holder(state, res, me) {
        return false;
    }
    if res.kind.registrants_have_access() && find_reg(state, me).is_some() {
        return false;
    }
    access == PrAccess::Write || res.kind.exclusive_access()
}

fn me(ctx: &Ctx) -> RegKey {
    RegKey::of(ctx.nexus, ctx.target.alua.relative_port_id(ctx.nexus))
}

/// Raises `kind` on every known nexus of `lu` that one of `regs` covers.
fn raise_for(ctx: &Ctx, lu: &Lu, regs: &[Registration], kind: UaKind) {
    if regs.is_empty() {
        return;
    }
    let alua = &ctx.target.alua;
    ScsiTarget::raise_ua(lu, kind, |n| {
        let key = RegKey::of(n, alua.relative_port_id(n));
        regs.iter().any(|r| r.matches(&key))
    });
}

pub fn persistent_reserve_in(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    let state = ctx.target.pr_store.load(lu.cfg.lun);
    let sa = ctx.cdb.u8(1) & 0x1f;
    let mut out = Vec::new();
    match sa {
        0x00 => {
            put_be(&mut out, u64::from(state.generation), 4);
            put_be(&mut out, (state.registrations.len() * 8) as u64, 4);
            for r in &state.registrations {
                put_be(&mut out, r.key, 8);
            }
        }
        0x01 => {
            put_be(&mut out, u64::from(state.generation), 4);
            match &state.reservation {
                None => put_be(&mut out, 0, 4),
                Some(res) => {
                    put_be(&mut out, 16, 4);
                    let key = if res.kind.all_registrants() {
                        0
                    } else {
                        state
                            .registrations
                            .iter()
                            .find(|r| holds(res, r))
                            .map_or(0, |r| r.key)
                    };
                    put_be(&mut out, key, 8);
                    put_be(&mut out, 0, 4); // obsolete
                    out.push(0);
                    out.push(res.kind.code()); // scope 0: LU_SCOPE
                    out.extend_from_slice(&[0, 0]);
                }
            }
        }
        0x02 => {
            const CRH: u8 = 0x10;
            const ATP_C: u8 = 0x04;
            const PTPL_C: u8 = 0x01;
            const TMV: u8 = 0x80;
            put_be(&mut out, 8, 2);
            out.push(CRH | ATP_C | PTPL_C);
            out.push(TMV | u8::from(state.aptpl));
            // WR_EX_AR, EX_AC_RO, WR_EX_RO, EX_AC, WR_EX; EX_AC_AR.
            out.push(0x80 | 0x40 | 0x20 | 0x08 | 0x02);
            out.push(0x01);
            out.extend_from_slice(&[0, 0]);
        }
        _ => {
            let mut body = Vec::new();
            for r in &state.registrations {
                let holder = state
                    .reservation
                    .as_ref()
                    .filter(|res| res.kind.all_registrants() || holds(res, r));
                put_be(&mut body, r.key, 8);
                put_be(&mut body, 0, 4);
                let all_tg_pt = if r.relative_port.is_none() { 0x02 } else { 0 };
                body.push(all_tg_pt | u8::from(holder.is_some()));
                body.push(holder.map_or(0, |h| h.kind.code()));
                put_be(&mut body, 0, 4);
                put_be(&mut body, u64::from(r.relative_port.unwrap_or(0)), 2);
                let tid = transport_id(&r.initiator_port);
                put_be(&mut body, tid.len() as u64, 4);
                body.extend_from_slice(&tid);
            }
            put_be(&mut out, u64::from(state.generation), 4);
            put_be(&mut out, body.len() as u64, 4);
            out.extend_from_slice(&body);
        }
    }
    Ok(Xfer::data(out))
}

/// iSCSI TransportID, format 01b (initiator port name with ISID).
fn transport_id(initiator_port: &str) -> Vec<u8> {
    let mut name: Vec<u8> = initiator_port.bytes().collect();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut out = vec![0x40 | PROTOCOL_ISCSI, 0];
    put_be(&mut out, name.len() as u64, 2);
    out.extend_from_slice(&name);
    out
}

/// Parses an iSCSI TransportID; only format 01b names one initiator port.
fn parse_transport_id(b: &[u8]) -> Option<String> {
    let buf = Buf(b);
    if buf.u8(0) != (0x40 | PROTOCOL_ISCSI) {
        return None;
    }
    let len = usize::from(buf.be16(2));
    let name = buf.get(4, len)?;
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    let s = std::str::from_utf8(name.get(..end)?).ok()?;
    let (iname, isid) = s.split_once(",i,0x").or_else(|| s.split_once(",I,0X"))?;
    if iname.is_empty() || isid.len() != 12 || !isid.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{},i,0x{}",
        iname.to_ascii_lowercase(),
        isid.to_ascii_lowercase()
    ))
}

fn param_invalid(byte: u16, bit: Option<u8>) -> SenseReason {
    SenseReason::InvalidFieldInParameterList { byte, bit }
}

pub async fn persistent_reserve_out(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let sa = ctx.cdb.u8(1) & 0x1f;
    let scope = ctx.cdb.u8(2) >> 4;
    let type_code = ctx.cdb.u8(2) & 0x0f;
    let list_len = ctx.cdb.be32(5) as usize;
    let moving = sa == 0x07;
    if (!moving && list_len != PROUT_PARAMETER_LIST_LEN_BYTES)
        || (moving && list_len < PROUT_PARAMETER_LIST_LEN_BYTES)
    {
        return Err(SenseReason::ParameterListLengthError);
    }
    let data = ctx
        .data_out
        .get(..list_len)
        .ok_or(SenseReason::ParameterListLengthError)?;
    let p = Buf(data);
    let res_key = p.be64(0);
    let sa_key = p.be64(8);
    if !moving && p.bit(20, 3) {
        // SPEC_I_PT: not supported (REPORT CAPABILITIES says SIP_C=0).
        return Err(param_invalid(20, Some(3)));
    }
    let all_tg_pt = !moving && p.bit(20, 2);
    let aptpl = if moving { p.bit(17, 0) } else { p.bit(20, 0) };
    let needs_type = matches!(sa, 0x01 | 0x02 | 0x04 | 0x05 | 0x07);
    let kind = if needs_type {
        if scope != 0 {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: 2,
                bit: Some(7),
            });
        }
        Some(
            PrType::from_code(type_code).ok_or(SenseReason::InvalidFieldInCdb {
                byte: 2,
                bit: Some(3),
            })?,
        )
    } else {
        None
    };

    let me = me(ctx);
    let _guard = lu.pr_lock.lock().await;
    let mut st = ctx.target.pr_store.load(lu.cfg.lun);
    let mine = find_reg(&st, &me).cloned();
    // Everything but registering needs the caller registered, with its key.
    if !matches!(sa, 0x00 | 0x06) {
        match &mine {
            Some(r) if r.key == res_key => {}
            _ => return Err(SenseReason::ReservationConflict),
        }
    }
    let mut changed = false;
    match sa {
        0x00 | 0x06 => {
            let ignore = sa == 0x06;
            match &mine {
                None => {
                    if !ignore && res_key != 0 {
                        return Err(SenseReason::ReservationConflict);
                    }
                    if sa_key != 0 {
                        if st.registrations.len() >= REGISTRATIONS_MAX {
                            return Err(SenseReason::InsufficientRegistrationResources);
                        }
                        st.registrations.push(Registration {
                            key: sa_key,
                            initiator_port: me.initiator_port.clone(),
                            relative_port: (!all_tg_pt).then_some(me.rel_port),
                        });
                        st.generation = st.generation.wrapping_add(1);
                        st.aptpl = aptpl;
                        changed = true;
                    }
                }
                Some(r) => {
                    if !ignore && r.key != res_key {
                        return Err(SenseReason::ReservationConflict);
                    }
                    if sa_key == 0 {
                        unregister(ctx, lu, &mut st, r);
                    } else if let Some(m) = st.registrations.iter_mut().find(|x| *x == r) {
                        m.key = sa_key;
                    }
                    st.generation = st.generation.wrapping_add(1);
                    st.aptpl = aptpl;
                    changed = true;
                }
            }
        }
        0x01 => {
            let kind = kind.ok_or(SenseReason::InternalTargetFailure)?;
            let mine = mine.ok_or(SenseReason::ReservationConflict)?;
            match &st.reservation {
                Some(res) if is_holder(&st, res, &me) && res.kind == kind => {}
                Some(_) => return Err(SenseReason::ReservationConflict),
                None => {
                    st.reservation = Some(Reservation {
                        kind,
                        initiator_port: mine.initiator_port.clone(),
                        relative_port: mine.relative_port,
                    });
                    changed = true;
                }
            }
        }
        0x02 => {
            let kind = kind.ok_or(SenseReason::InternalTargetFailure)?;
            if let Some(res) = st.reservation.clone() {
                if is_holder(&st, &res, &me) {
                    if res.kind != kind {
                        return Err(SenseReason::InvalidReleaseOfPr);
                    }
                    st.reservation = None;
                    changed = true;
                    if res.kind.registrants_have_access() {
                        let others: Vec<Registration> = st
                            .registrations
                            .iter()
                            .filter(|r| !r.matches(&me))
                            .cloned()
                            .collect();
                        raise_for(ctx, lu, &others, UaKind::ReservationsReleased);
                    }
                }
            }
        }
        0x03 => {
            let others: Vec<Registration> = st
                .registrations
                .iter()
                .filter(|r| !r.matches(&me))
                .cloned()
                .collect();
            st.registrations.clear();
            st.reservation = None;
            st.generation = st.generation.wrapping_add(1);
            changed = true;
            raise_for(ctx, lu, &others, UaKind::ReservationsPreempted);
        }
        0x04 | 0x05 => {
            let kind = kind.ok_or(SenseReason::InternalTargetFailure)?;
            let mine = mine.ok_or(SenseReason::ReservationConflict)?;
            let removed = preempt(ctx, lu, &mut st, &me, &mine, sa_key, kind)?;
            if sa == 0x05 && !removed.is_empty() {
                let alua = &ctx.target.alua;
                ctx.target.abort_tasks(lu.cfg.lun, &|n| {
                    let key = RegKey::of(n, alua.relative_port_id(n));
                    removed.iter().any(|r| r.matches(&key))
                });
            }
            changed = true;
        }
        0x07 => {
            let kind = kind.ok_or(SenseReason::InternalTargetFailure)?;
            let mine = mine.ok_or(SenseReason::ReservationConflict)?;
            register_and_move(&mut st, &me, &mine, p, list_len, sa_key, kind)?;
            st.aptpl = aptpl;
            changed = true;
        }
        _ => {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: 1,
                bit: Some(4),
            })
        }
    }
    if changed {
        ctx.target.pr_store.store(lu.cfg.lun, &st).map_err(|e| {
            tracing::error!(lun = lu.cfg.lun, error = %e, "storing reservation state");
            SenseReason::InsufficientRegistrationResources
        })?;
    }
    Ok(Xfer::Out(list_len as u64))
}

/// Removes `reg`; a reservation it held goes with it (an all-registrants
/// one only with the last registrant).
fn unregister(ctx: &Ctx, lu: &Lu, st: &mut PrState, reg: &Registration) {
    st.registrations.retain(|r| r != reg);
    let Some(res) = st.reservation.clone() else {
        return;
    };
    let released = if res.kind.all_registrants() {
        st.registrations.is_empty()
    } else {
        holds(&res, reg)
    };
    if released {
        st.reservation = None;
        if res.kind.registrants_have_access() {
            let others = st.registrations.clone();
            raise_for(ctx, lu, &others, UaKind::ReservationsReleased);
        }
    }
}

fn preempt(
    ctx: &Ctx,
    lu: &Lu,
    st: &mut PrState,
    me: &RegKey,
    mine: &Registration,
    sa_key: u64,
    kind: PrType,
) -> Result<Vec<Registration>, SenseReason> {
    let res = st.reservation.clone();
    let holder_key = res.as_ref().and_then(|res| {
        if res.kind.all_registrants() {
            None
        } else {
            st.registrations
                .iter()
                .find(|r| holds(res, r))
                .map(|r| r.key)
        }
    });
    let take_reservation = match &res {
        // All registrants hold it: SA key 0 preempts everyone else.
        Some(res) if res.kind.all_registrants() => sa_key == 0,
        Some(_) => holder_key == Some(sa_key),
        None => false,
    };
    if !take_reservation && sa_key == 0 {
        return Err(param_invalid(8, None));
    }
    let removed: Vec<Registration> = st
        .registrations
        .iter()
        .filter(|r| !r.matches(me) && (r.key == sa_key || (take_reservation && sa_key == 0)))
        .cloned()
        .collect();
    if !take_reservation && removed.is_empty() {
        return Err(SenseReason::ReservationConflict);
    }
    st.registrations.retain(|r| !removed.contains(r));
    if take_reservation {
        let old_kind = res.as_ref().map(|r| r.kind);
        st.reservation = Some(Reservation {
            kind,
            initiator_port: mine.initiator_port.clone(),
            relative_port: mine.relative_port,
        });
        if old_kind != Some(kind) {
            let others: Vec<Registration> = st
                .registrations
                .iter()
                .filter(|r| !r.matches(me))
                .cloned()
                .collect();
            raise_for(ctx, lu, &others, UaKind::ReservationsReleased);
        }
    } else if let Some(r) = &st.reservation {
        // A removed holder loses the reservation too.
        let holder_gone = if r.kind.all_registrants() {
            st.registrations.is_empty()
        } else {
            removed.iter().any(|x| holds(r, x))
        };
        if holder_gone {
            st.reservation = None;
        }
    }
    st.generation = st.generation.wrapping_add(1);
    raise_for(ctx, lu, &removed, UaKind::RegistrationsPreempted);
    Ok(removed)
}

fn register_and_move(
    st: &mut PrState,
    me: &RegKey,
    mine: &Registration,
    p: Buf,
    list_len: usize,
    sa_key: u64,
    kind: PrType,
) -> Result<(), SenseReason> {
    let res = st
        .reservation
        .clone()
        .ok_or(SenseReason::ReservationConflict)?;
    if res.kind.all_registrants() || !is_holder(st, &res, me) {
        return Err(SenseReason::ReservationConflict);
    }
    if sa_key == 0 {
        return Err(param_invalid(8, None));
    }
    let unreg = p.bit(17, 1);
    let rel_port = p.be16(18);
    let tid_len = p.be32(20) as usize;
    if PROUT_PARAMETER_LIST_LEN_BYTES
        .checked_add(tid_len)
        .is_none_or(|end| end > list_len)
    {
        return Err(SenseReason::ParameterListLengthError);
    }
    let tid = p
        .get(PROUT_PARAMETER_LIST_LEN_BYTES, tid_len)
        .ok_or(SenseReason::ParameterListLengthError)?;
    let port = parse_transport_id(tid).ok_or(param_invalid(24, None))?;
    if rel_port == 0 {
        return Err(param_invalid(18, None));
    }
    let dest = RegKey {
        initiator_port: port,
        rel_port,
    };
    if dest == *me {
        return Err(param_invalid(24, None));
    }
    if find_reg(st, &dest).is_none() {
        if st.registrations.len() >= REGISTRATIONS_MAX {
            return Err(SenseReason::InsufficientRegistrationResources);
        }
        st.registrations.push(Registration {
            key: sa_key,
            initiator_port: dest.initiator_port.clone(),
            relative_port: Some(dest.rel_port),
        });
    }
    st.reservation = Some(Reservation {
        kind,
        initiator_port: dest.initiator_port,
        relative_port: Some(dest.rel_port),
    });
    if unreg {
        st.registrations.retain(|r| r != mine);
    }
    st.generation = st.generation.wrapping_add(1);
    Ok(())
}

/// RESERVE(6)/RESERVE(10): refused while a persistent reservation exists
/// (SPC-4 5.13.3); the pipeline already refused it if another nexus holds
/// a RESERVE reservation.
pub fn reserve_legacy(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    if ctx.target.pr_store.load(lu.cfg.lun).reservation.is_some() {
        return Err(SenseReason::ReservationConflict);
    }
    let mut holder = lu.legacy_holder.lock();
    match holder.as_ref() {
        Some(h) if h != ctx.nexus => Err(SenseReason::ReservationConflict),
        _ => {
            *holder = Some(ctx.nexus.clone());
            Ok(Xfer::None)
        }
    }
}

/// RELEASE(6)/RELEASE(10) from a non-holder succeeds and changes nothing.
pub fn release_legacy(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    let mut holder = lu.legacy_holder.lock();
    if holder.as_ref() == Some(ctx.nexus) {
        *holder = None;
    }
    Ok(Xfer::None)
}
