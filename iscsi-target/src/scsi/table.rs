//! The command set as a table (STYLE.md item 5).
//!
//! Each entry names the operation code (and service action), the handler,
//! the CDB bits the device server looks at, whether the command carries
//! data-out, how reservations affect it, and where its allocation length
//! sits. Everything generic reads the table: CDB validation before
//! dispatch, reservation conflicts, data-in truncation and residuals, and
//! REPORT SUPPORTED OPERATION CODES.

use super::cdb::{put_be, Buf};
use super::sense::SenseReason;

/// Which handler serves a command; `ScsiTarget::dispatch` matches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    TestUnitReady,
    RequestSense,
    Inquiry,
    ModeSelect,
    ModeSense,
    Reserve,
    Release,
    StartStopUnit,
    PreventAllowMediumRemoval,
    Read,
    Write,
    WriteAndVerify,
    Verify,
    ReadCapacity10,
    ReadCapacity16,
    SynchronizeCache,
    PreFetch,
    WriteSame,
    Unmap,
    CompareAndWrite,
    GetLbaStatus,
    PersistentReserveIn,
    PersistentReserveOut,
    ReportLuns,
    ReportTargetPortGroups,
    ReportSupportedOpcodes,
    ReportSupportedTmfs,
}

/// How a persistent reservation held by another I_T nexus affects a command
/// (SPC-4 table 66 and SBC-3 table 13, folded into three classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAccess {
    /// Never conflicts (INQUIRY, REPORT LUNS, PR IN/OUT, ...).
    Allowed,
    /// Conflicts under Exclusive Access types only.
    Read,
    /// Conflicts under every reservation type.
    Write,
}

/// Where the allocation length sits in the CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alloc {
    None,
    U8(usize),
    Be16(usize),
    Be32(usize),
}

#[derive(Debug)]
pub struct CommandSpec {
    pub opcode: u8,
    /// Service action (byte 1, bits 4..0), for opcodes that have them.
    pub service_action: Option<u8>,
    pub name: &'static str,
    /// CDB usage data (SPC-4 6.35.3): the bits the device server uses; its
    /// length is the CDB length. A CDB with any other bit set is rejected
    /// with INVALID FIELD IN CDB pointing at the bit.
    pub usage: &'static [u8],
    pub handler: Handler,
    /// Whether the command transfers data-out (parameter list or blocks).
    pub data_out: bool,
    pub pr: PrAccess,
    /// Allowed while another nexus holds a RESERVE(6/10) reservation.
    pub legacy_ok: bool,
    /// Served even for a LUN that does not exist.
    pub without_lu: bool,
    /// Neither blocked by nor consuming a pending unit attention.
    pub ua_exempt: bool,
    pub alloc: Alloc,
    /// Recommended command timeout (REPORT SUPPORTED OPERATION CODES).
    pub timeout_s: u32,
    /// Changes the medium, so refused while software write protect is on.
    pub writes_medium: bool,
}

const fn c(opcode: u8, name: &'static str, usage: &'static [u8], handler: Handler) -> CommandSpec {
    CommandSpec {
        opcode,
        service_action: None,
        name,
        usage,
        handler,
        data_out: false,
        pr: PrAccess::Write,
        legacy_ok: false,
        without_lu: false,
        ua_exempt: false,
        alloc: Alloc::None,
        timeout_s: DEFAULT_TIMEOUT_S,
        writes_medium: false,
    }
}

/// Recommended timeout for ordinary commands: long enough for a degraded
/// cluster read (see DESIGN.md "Write path" 6).
const DEFAULT_TIMEOUT_S: u32 = 30;
/// WRITE SAME, UNMAP and SYNCHRONIZE CACHE may touch a whole LUN.
const LONG_TIMEOUT_S: u32 = 120;

impl CommandSpec {
    const fn sa(mut self, sa: u8) -> Self {
        self.service_action = Some(sa);
        self
    }
    const fn out(mut self) -> Self {
        self.data_out = true;
        self
    }
    const fn pr(mut self, pr: PrAccess) -> Self {
        self.pr = pr;
        self
    }
    const fn legacy_ok(mut self) -> Self {
        self.legacy_ok = true;
        self
    }
    const fn without_lu(mut self) -> Self {
        self.without_lu = true;
        self
    }
    const fn ua_exempt(mut self) -> Self {
        self.ua_exempt = true;
        self
    }
    const fn alloc(mut self, alloc: Alloc) -> Self {
        self.alloc = alloc;
        self
    }
    const fn writes(mut self) -> Self {
        self.writes_medium = true;
        self
    }
    const fn long(mut self) -> Self {
        self.timeout_s = LONG_TIMEOUT_S;
        self
    }
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }
}

use Alloc::{Be16, Be32, U8};
use Handler as H;
use PrAccess::{Allowed, Read};

pub const MAINTENANCE_IN: u8 = 0xa3;
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;

#[rustfmt::skip]
pub static COMMANDS: &[CommandSpec] = &[
    c(0x00, "TEST UNIT READY", &[0x00, 0, 0, 0, 0, 0], H::TestUnitReady).pr(Allowed),
    c(0x03, "REQUEST SENSE", &[0x03, 0, 0, 0, 0xff, 0], H::RequestSense)
        .pr(Allowed).legacy_ok().without_lu().alloc(U8(4)),
    c(0x08, "READ(6)", &[0x08, 0x1f, 0xff, 0xff, 0xff, 0], H::Read).pr(Read),
    c(0x0a, "WRITE(6)", &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0], H::Write)
        .writes().out(),
    c(0x12, "INQUIRY", &[0x12, 0x01, 0xff, 0xff, 0xff, 0], H::Inquiry)
        .pr(Allowed).legacy_ok().without_lu().ua_exempt().alloc(Be16(3)),
    c(0x15, "MODE SELECT(6)", &[0x15, 0x11, 0, 0, 0xff, 0], H::ModeSelect).out(),
    c(0x16, "RESERVE(6)", &[0x16, 0, 0, 0, 0, 0], H::Reserve),
    c(0x17, "RELEASE(6)", &[0x17, 0, 0, 0, 0, 0], H::Release).legacy_ok(),
    c(0x1a, "MODE SENSE(6)", &[0x1a, 0x08, 0xff, 0xff, 0xff, 0], H::ModeSense)
        .pr(Read).alloc(U8(4)),
    c(0x1b, "START STOP UNIT", &[0x1b, 0x01, 0, 0x0f, 0xf7, 0], H::StartStopUnit).pr(Allowed),
    c(0x1e, "PREVENT ALLOW MEDIUM REMOVAL", &[0x1e, 0, 0, 0, 0x03, 0],
        H::PreventAllowMediumRemoval).pr(Allowed),
    c(0x25, "READ CAPACITY(10)", &[0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0],
        H::ReadCapacity10).pr(Allowed),
    c(0x28, "READ(10)", &[0x28, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0], H::Read)
        .pr(Read),
    c(0x2a, "WRITE(10)", &[0x2a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0], H::Write)
        .writes()
        .out(),
    c(0x2e, "WRITE AND VERIFY(10)", &[0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
        H::WriteAndVerify)
        .writes().out(),
    c(0x2f, "VERIFY(10)", &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
        H::Verify).out().pr(Read),
    c(0x34, "PRE-FETCH(10)", &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
        H::PreFetch).pr(Read),
    c(0x35, "SYNCHRONIZE CACHE(10)", &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
        H::SynchronizeCache).long(),
    c(0x41, "WRITE SAME(10)", &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0],
        H::WriteSame)
        .writes().out().long(),
    c(0x42, "UNMAP", &[0x42, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0], H::Unmap)
        .writes().out().long(),
    c(0x55, "MODE SELECT(10)", &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0], H::ModeSelect).out(),
    c(0x56, "RESERVE(10)", &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0], H::Reserve),
    c(0x57, "RELEASE(10)", &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0], H::Release).legacy_ok(),
    c(0x5a, "MODE SENSE(10)", &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0], H::ModeSense)
        .pr(Read).alloc(Be16(7)),
    c(PERSISTENT_RESERVE_IN, "PERSISTENT RESERVE IN - READ KEYS",
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0], H::PersistentReserveIn)
        .sa(0x00).pr(Allowed).alloc(Be16(7)),
    c(PERSISTENT_RESERVE_IN, "PERSISTENT RESERVE IN - READ RESERVATION",
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0], H::PersistentReserveIn)
        .sa(0x01).pr(Allowed).alloc(Be16(7)),
    c(PERSISTENT_RESERVE_IN, "PERSISTENT RESERVE IN - REPORT CAPABILITIES",
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0], H::PersistentReserveIn)
        .sa(0x02).pr(Allowed).alloc(Be16(7)),
    c(PERSISTENT_RESERVE_IN, "PERSISTENT RESERVE IN - READ FULL STATUS",
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0], H::PersistentReserveIn)
        .sa(0x03).pr(Allowed).alloc(Be16(7)),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - REGISTER",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x00).out().pr(Allowed),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - RESERVE",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x01).out().pr(Allowed),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - RELEASE",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x02).out().pr(Allowed),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - CLEAR",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x03).out().pr(Allowed),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - PREEMPT",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x04).out().pr(Allowed),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - PREEMPT AND ABORT",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x05).out().pr(Allowed),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - REGISTER AND IGNORE EXISTING KEY",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x06).out().pr(Allowed),
    c(PERSISTENT_RESERVE_OUT, "PERSISTENT RESERVE OUT - REGISTER AND MOVE",
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0], H::PersistentReserveOut)
        .sa(0x07).out().pr(Allowed),
    c(0x88, "READ(16)", &[0x88, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x1f, 0], H::Read).pr(Read),
    c(0x89, "COMPARE AND WRITE", &[0x89, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0, 0, 0, 0xff, 0x1f, 0], H::CompareAndWrite)
        .writes().out(),
    c(0x8a, "WRITE(16)", &[0x8a, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x1f, 0], H::Write)
        .writes().out(),
    c(0x8e, "WRITE AND VERIFY(16)", &[0x8e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x1f, 0], H::WriteAndVerify)
        .writes().out(),
    c(0x8f, "VERIFY(16)", &[0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x1f, 0], H::Verify).out().pr(Read),
    c(0x90, "PRE-FETCH(16)", &[0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x1f, 0], H::PreFetch).pr(Read),
    c(0x91, "SYNCHRONIZE CACHE(16)", &[0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0], H::SynchronizeCache).long(),
    c(0x93, "WRITE SAME(16)", &[0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0x1f, 0], H::WriteSame)
        .writes().out().long(),
    c(SERVICE_ACTION_IN_16, "READ CAPACITY(16)", &[0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0], H::ReadCapacity16)
        .sa(0x10).pr(Allowed).alloc(Be32(10)),
    c(SERVICE_ACTION_IN_16, "GET LBA STATUS", &[0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0], H::GetLbaStatus)
        .sa(0x12).pr(Read).alloc(Be32(10)),
    c(0xa0, "REPORT LUNS", &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0],
        H::ReportLuns).pr(Allowed).legacy_ok().without_lu().ua_exempt().alloc(Be32(6)),
    c(MAINTENANCE_IN, "REPORT TARGET PORT GROUPS", &[0xa3, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff,
        0xff, 0, 0], H::ReportTargetPortGroups).sa(0x0a).pr(Allowed).legacy_ok().alloc(Be32(6)),
    c(MAINTENANCE_IN, "REPORT SUPPORTED OPERATION CODES", &[0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0, 0], H::ReportSupportedOpcodes)
        .sa(0x0c).pr(Allowed).legacy_ok().alloc(Be32(6)),
    c(MAINTENANCE_IN, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", &[0xa3, 0x1f, 0x80, 0, 0,
        0, 0xff, 0xff, 0xff, 0xff, 0, 0], H::ReportSupportedTmfs)
        .sa(0x0d).pr(Allowed).legacy_ok().alloc(Be32(6)),
    c(0xa8, "READ(12)", &[0xa8, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        H::Read).pr(Read),
    c(0xaa, "WRITE(12)", &[0xaa, 0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        H::Write)
        .writes().out(),
    c(0xae, "WRITE AND VERIFY(12)", &[0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x1f, 0], H::WriteAndVerify)
        .writes().out(),
    c(0xaf, "VERIFY(12)", &[0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0],
        H::Verify).out().pr(Read),
];

fn has_service_actions(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// Finds the table entry for a CDB.
pub fn lookup(cdb: &[u8]) -> Result<&'static CommandSpec, SenseReason> {
    let opcode = *cdb.first().ok_or(SenseReason::InvalidOpcode)?;
    let sa = Buf(cdb).u8(1) & 0x1f;
    lookup_op(opcode, sa)
}

fn lookup_op(opcode: u8, sa: u8) -> Result<&'static CommandSpec, SenseReason> {
    let mut any = false;
    for c in COMMANDS.iter().filter(|c| c.opcode == opcode) {
        any = true;
        match c.service_action {
            None => return Ok(c),
            Some(s) if s == sa => return Ok(c),
            Some(_) => {}
        }
    }
    if any {
        Err(SenseReason::InvalidFieldInCdb {
            byte: 1,
            bit: Some(4),
        })
    } else {
        Err(SenseReason::InvalidOpcode)
    }
}

/// Rejects CDBs with bits set that the entry does not use: reserved bits,
/// unsupported options (RDPROTECT, ANCHOR, LBDATA...), NACA and LINK in the
/// control byte.
pub fn check_cdb_bits(spec: &CommandSpec, cdb: &[u8]) -> Result<(), SenseReason> {
    for (i, mask) in spec.usage.iter().enumerate().skip(1) {
        let bad = cdb.get(i).copied().unwrap_or(0) & !mask;
        if bad != 0 {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: i as u16,
                bit: Some(7 - bad.leading_zeros() as u8),
            });
        }
    }
    Ok(())
}

pub fn allocation_length(spec: &CommandSpec, cdb: Buf) -> Option<u32> {
    match spec.alloc {
        Alloc::None => None,
        Alloc::U8(i) => Some(u32::from(cdb.u8(i))),
        Alloc::Be16(i) => Some(u32::from(cdb.be16(i))),
        Alloc::Be32(i) => Some(cdb.be32(i)),
    }
}

const TIMEOUTS_DESCRIPTOR_LEN_BYTES: u16 = 0x0a;

fn put_timeouts(out: &mut Vec<u8>, c: &CommandSpec) {
    put_be(out, u64::from(TIMEOUTS_DESCRIPTOR_LEN_BYTES), 2);
    out.push(0); // reserved
    out.push(0); // command specific
    put_be(out, u64::from(c.timeout_s), 4); // nominal
    put_be(out, u64::from(c.timeout_s), 4); // recommended
}

/// REPORT SUPPORTED OPERATION CODES parameter data, from [`COMMANDS`].
pub fn report_supported_opcodes(cdb: Buf) -> Result<Vec<u8>, SenseReason> {
    let rctd = cdb.bit(2, 7);
    let options = cdb.u8(2) & 0x07;
    let opcode = cdb.u8(3);
    let sa = cdb.be16(4);
    let invalid = |byte| SenseReason::InvalidFieldInCdb { byte, bit: None };
    let one = |found: Option<&CommandSpec>| {
        let mut out = vec![0u8; 2];
        match found {
            Some(c) => {
                out[1] = 0x03 | if rctd { 0x80 } else { 0 };
                put_be(&mut out, c.cdb_len() as u64, 2);
                out.extend_from_slice(c.usage);
                if rctd {
                    put_timeouts(&mut out, c);
                }
            }
            None => {
                out[1] = 0x01; // not supported
                put_be(&mut out, 0, 2);
            }
        }
        out
    };
    let find = |sa: Option<u8>| {
        COMMANDS
            .iter()
            .find(|c| c.opcode == opcode && c.service_action == sa)
    };
    match options {
        0 => {
            let mut body = Vec::new();
            for c in COMMANDS {
                body.push(c.opcode);
                body.push(0);
                put_be(&mut body, u64::from(c.service_action.unwrap_or(0)), 2);
                body.push(0);
                let mut flags = 0;
                if c.service_action.is_some() {
                    flags |= 0x01; // SERVACTV
                }
                if rctd {
                    flags |= 0x02; // CTDP
                }
                body.push(flags);
                put_be(&mut body, c.cdb_len() as u64, 2);
                if rctd {
                    put_timeouts(&mut body, c);
                }
            }
            let mut out = Vec::with_capacity(body.len() + 4);
            put_be(&mut out, body.len() as u64, 4);
            out.extend_from_slice(&body);
            Ok(out)
        }
        1 => {
            if has_service_actions(opcode) {
                return Err(invalid(2));
            }
            Ok(one(find(None)))
        }
        2 => {
            if !has_service_actions(opcode) && COMMANDS.iter().any(|c| c.opcode == opcode) {
                return Err(invalid(2));
            }
            Ok(one(u8::try_from(sa).ok().and_then(|s| find(Some(s)))))
        }
        3 => {
            if has_service_actions(opcode) {
                Ok(one(u8::try_from(sa).ok().and_then(|s| find(Some(s)))))
            } else {
                Ok(one(find(None)))
            }
        }
        _ => Err(invalid(2)),
    }
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: what the iSCSI layer serves
/// (ABORT TASK, ABORT TASK SET, LOGICAL UNIT RESET, TARGET RESET).
pub fn report_supported_tmfs(cdb: Buf) -> Vec<u8> {
    const ATS: u8 = 0x80;
    const ATSS: u8 = 0x40;
    const LURS: u8 = 0x08;
    const TRS: u8 = 0x02;
    let repd = cdb.bit(2, 7);
    let mut out = vec![ATS | ATSS | LURS | TRS, 0, 0, 0];
    if repd {
        out[3] = 0x0c;
        out.resize(16, 0);
    }
    out
}

/// Allocation length of whatever command `cdb` is, if it has one.
pub fn allocation_length_of(cdb: &[u8]) -> Option<u32> {
    let spec = lookup(cdb).ok()?;
    allocation_length(spec, Buf(cdb))
}
