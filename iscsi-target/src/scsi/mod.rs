//! The SCSI device server (SPC-4 / SBC-3) for a direct-access block device.
//!
//! INTERFACE CONTRACT (used by the iSCSI session layer; keep it stable):
//!
//! - [`ItNexus`] names who asks through which port.
//! - [`ScsiTarget`] holds a target's logical units and serves
//!   [`ScsiTarget::execute`], one call per SCSI command, concurrently.
//! - [`ScsiRequest`] carries the CDB, the data-out the initiator sent (all of
//!   it, at most the iSCSI Expected Data Transfer Length) and that length.
//! - [`ScsiResponse`] carries status, data-in (already at most the expected
//!   length), sense bytes and the residual, so the iSCSI layer copies them
//!   into its PDUs without knowing any CDB.
//! - Task management: [`ScsiTarget::lu_reset`], [`ScsiTarget::target_reset`]
//!   and [`ScsiTarget::nexus_gone`]; the iSCSI layer aborts the tasks itself.
//!
//! Layout: `table` is the command set (one entry per opcode/service action:
//! handler, CDB usage bits, data-out, reservation class, allocation length);
//! `target` runs the shared checks in this order — command lookup, LUN
//! exists, CDB bits, unit attention, reservation conflict — then dispatches.
//! Handlers live in `inquiry`, `mode`, `rw`, `provisioning`, `pr`, `alua`
//! and `misc`; each returns `Result<Xfer, SenseReason>` and `sense` is the
//! one table from reason to status/sense. `cdb` reads untrusted bytes
//! without panicking; `ua` holds unit attentions per (LU, I_T nexus).
//!
//! Invariant: `execute` never panics and never returns more data-in than
//! the expected length. Boundary: no I/O here except through
//! `BlockDevice`, `PrStore` and `AluaProvider`.

mod alua;
mod cdb;
mod inquiry;
mod misc;
mod mode;
mod pr;
mod provisioning;
mod rw;
mod sense;
mod table;
mod target;
#[cfg(test)]
mod tests;
mod ua;

pub use alua::{AluaProvider, AsymmetricAccessState, StandaloneAlua, TargetPortGroup};
pub use cdb::parse_cdb_for_fuzz;
pub use pr::{
    FilePrStore, MemoryPrStore, PrState, PrStore, PrStoreError, PrType, Registration, Reservation,
};
pub use sense::{check_condition, SenseReason};
pub use target::{ScsiTarget, ScsiTargetConfig, TaskAborter};
pub use ua::UaKind;

use crate::backend::BlockDevice;
use bytes::Bytes;
use std::sync::Arc;

/// An I_T nexus: the initiator port (initiator name + ISID) and the target
/// port (target name + portal group tag) it reaches us through.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItNexus {
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub target_name: String,
    pub tpgt: u16,
}

/// SAM task attribute from the SCSI Command PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskAttr {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

/// One SCSI command as the transport received it.
#[derive(Debug, Clone)]
pub struct ScsiRequest {
    /// Logical unit number (flat, already decoded from the 8-byte LUN field).
    pub lun: u64,
    /// The CDB; 16 bytes from the BHS, longer with an extended-CDB AHS.
    pub cdb: Bytes,
    /// Data-out received from the initiator (empty for reads).
    pub data_out: Bytes,
    /// iSCSI Expected Data Transfer Length.
    pub expected_len: u32,
    /// Whether the initiator announced a read (R bit) and/or write (W bit).
    pub read: bool,
    pub write: bool,
    pub attr: TaskAttr,
}

/// SAM status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ScsiStatus {
    Good = 0x00,
    CheckCondition = 0x02,
    ConditionMet = 0x04,
    Busy = 0x08,
    ReservationConflict = 0x18,
    TaskSetFull = 0x28,
    AcaActive = 0x30,
    TaskAborted = 0x40,
}

/// Difference between the expected transfer length and what the CDB called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    /// The command moved fewer bytes than expected (iSCSI U bit).
    Underflow(u32),
    /// The command wanted more bytes than expected (iSCSI O bit).
    Overflow(u32),
}

#[derive(Debug, Clone)]
pub struct ScsiResponse {
    pub status: ScsiStatus,
    /// Data-in, at most `expected_len` bytes.
    pub data_in: Bytes,
    /// Sense data (fixed format, 18+ bytes) for CHECK CONDITION.
    pub sense: Option<Bytes>,
    pub residual: Residual,
}

/// Static description of one logical unit.
#[derive(Clone)]
pub struct LuConfig {
    pub lun: u64,
    pub device: Arc<dyn BlockDevice>,
    /// Unit serial number (VPD 0x80); stable across restarts and gateways.
    pub serial: String,
    /// NAA IEEE Registered Extended identifier (VPD 0x83), 16 bytes, stable.
    pub naa: [u8; 16],
    pub vendor: String,
    pub product: String,
    pub revision: String,
}
