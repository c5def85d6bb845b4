//! Why a command failed, and the one table that turns a reason into SCSI
//! status and fixed-format sense data (SPC-4 4.5.3).

use super::ua::UaKind;
use super::ScsiStatus;
use crate::backend::BlockError;
use bytes::Bytes;

/// Sense keys (SPC-4 table 27) that this device server reports.
pub mod key {
    pub const NO_SENSE: u8 = 0x00;
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const HARDWARE_ERROR: u8 = 0x04;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;
    pub const DATA_PROTECT: u8 = 0x07;
    pub const MISCOMPARE: u8 = 0x0e;
}

/// Length of the fixed-format sense data we build: 8-byte header plus 10
/// additional bytes, enough for the INFORMATION and sense-key-specific fields.
pub const FIXED_SENSE_LEN_BYTES: usize = 18;

/// Why a command did not complete with GOOD status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SenseReason {
    #[error("invalid command operation code")]
    InvalidOpcode,
    /// `bit` is the most significant bit of the offending field, if known.
    #[error("invalid field in CDB (byte {byte}, bit {bit:?})")]
    InvalidFieldInCdb { byte: u16, bit: Option<u8> },
    #[error("invalid field in parameter list (byte {byte}, bit {bit:?})")]
    InvalidFieldInParameterList { byte: u16, bit: Option<u8> },
    #[error("parameter list length error")]
    ParameterListLengthError,
    #[error("logical block address out of range")]
    LbaOutOfRange,
    /// `offset`: byte offset of the first difference within the compared data.
    #[error("miscompare at byte offset {offset}")]
    Miscompare { offset: u64 },
    #[error("reservation conflict")]
    ReservationConflict,
    #[error("unit attention: {0:?}")]
    UnitAttention(UaKind),
    #[error("unrecovered read error")]
    MediumError,
    #[error("write error")]
    WriteError,
    /// The backend cannot serve now; the initiator should retry.
    #[error("logical unit not ready, transitioning")]
    NotReady,
    #[error("insufficient registration resources")]
    InsufficientRegistrationResources,
    #[error("logical unit not supported")]
    LuNotSupported,
    #[error("saving parameters not supported")]
    SavingParametersNotSupported,
    #[error("invalid release of persistent reservation")]
    InvalidReleaseOfPr,
    #[error("medium removal prevented")]
    MediumRemovalPrevented,
    #[error("internal target failure")]
    InternalTargetFailure,
    /// Software write protect (control mode page SWP) is on.
    #[error("logical unit software write protected")]
    WriteProtected,
}

/// Where a sense-key-specific field pointer points.
#[derive(Debug, Clone, Copy)]
enum FieldIn {
    Cdb,
    Parameters,
}

impl SenseReason {
    /// THE table: status, then sense key / ASC / ASCQ (None: no sense data).
    pub fn code(self) -> (ScsiStatus, Option<(u8, u8, u8)>) {
        use ScsiStatus::{CheckCondition as CC, ReservationConflict as RC};
        use SenseReason::*;
        match self {
            InvalidOpcode => (CC, Some((key::ILLEGAL_REQUEST, 0x20, 0x00))),
            InvalidFieldInCdb { .. } => (CC, Some((key::ILLEGAL_REQUEST, 0x24, 0x00))),
            InvalidFieldInParameterList { .. } => (CC, Some((key::ILLEGAL_REQUEST, 0x26, 0x00))),
            ParameterListLengthError => (CC, Some((key::ILLEGAL_REQUEST, 0x1a, 0x00))),
            LbaOutOfRange => (CC, Some((key::ILLEGAL_REQUEST, 0x21, 0x00))),
            Miscompare { .. } => (CC, Some((key::MISCOMPARE, 0x1d, 0x00))),
            ReservationConflict => (RC, None),
            UnitAttention(kind) => {
                let (asc, ascq) = kind.asc_ascq();
                (CC, Some((key::UNIT_ATTENTION, asc, ascq)))
            }
            MediumError => (CC, Some((key::MEDIUM_ERROR, 0x11, 0x00))),
            WriteError => (CC, Some((key::MEDIUM_ERROR, 0x0c, 0x00))),
            // ASYMMETRIC ACCESS STATE TRANSITION: Linux, ESXi and Windows
            // retry it without failing the path.
            NotReady => (CC, Some((key::NOT_READY, 0x04, 0x0a))),
            InsufficientRegistrationResources => (CC, Some((key::ILLEGAL_REQUEST, 0x55, 0x04))),
            LuNotSupported => (CC, Some((key::ILLEGAL_REQUEST, 0x25, 0x00))),
            SavingParametersNotSupported => (CC, Some((key::ILLEGAL_REQUEST, 0x39, 0x00))),
            InvalidReleaseOfPr => (CC, Some((key::ILLEGAL_REQUEST, 0x26, 0x04))),
            MediumRemovalPrevented => (CC, Some((key::ILLEGAL_REQUEST, 0x53, 0x02))),
            InternalTargetFailure => (CC, Some((key::HARDWARE_ERROR, 0x44, 0x00))),
            WriteProtected => (CC, Some((key::DATA_PROTECT, 0x27, 0x02))),
        }
    }

    pub fn status(self) -> ScsiStatus {
        self.code().0
    }

    /// Fixed-format sense data, if this reason carries any.
    pub fn sense(self) -> Option<Bytes> {
        let (_, kcq) = self.code();
        let (k, asc, ascq) = kcq?;
        let mut s = fixed_sense(k, asc, ascq);
        match self {
            SenseReason::InvalidFieldInCdb { byte, bit } => {
                set_field_pointer(&mut s, FieldIn::Cdb, byte, bit)
            }
            SenseReason::InvalidFieldInParameterList { byte, bit } => {
                set_field_pointer(&mut s, FieldIn::Parameters, byte, bit)
            }
            SenseReason::Miscompare { offset } => set_information(&mut s, offset),
            _ => {}
        }
        Some(Bytes::from(s))
    }

    /// Maps a backend failure; `writing` picks the medium error flavour.
    pub fn from_block(e: &BlockError, writing: bool) -> SenseReason {
        match e {
            BlockError::OutOfRange { .. } => SenseReason::LbaOutOfRange,
            BlockError::Miscompare { offset } => SenseReason::Miscompare { offset: *offset },
            BlockError::Misaligned { .. } => SenseReason::InternalTargetFailure,
            BlockError::Io(_) if writing => SenseReason::WriteError,
            BlockError::Io(_) => SenseReason::MediumError,
            BlockError::Unavailable(_) => SenseReason::NotReady,
        }
    }
}

/// CHECK CONDITION with fixed-format sense and nothing else: for errors the
/// transport finds itself, before or around the device server (a transfer
/// too large to buffer, a broken Data-Out sequence, a command that panicked).
pub fn check_condition(sense_key: u8, asc: u8, ascq: u8) -> super::ScsiResponse {
    super::ScsiResponse {
        status: ScsiStatus::CheckCondition,
        data_in: Bytes::new(),
        sense: Some(Bytes::from(fixed_sense(sense_key, asc, ascq))),
        residual: super::Residual::None,
    }
}

/// 18-byte fixed-format sense data, current error.
pub fn fixed_sense(sense_key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; FIXED_SENSE_LEN_BYTES];
    s[0] = 0x70;
    s[2] = sense_key & 0x0f;
    s[7] = (FIXED_SENSE_LEN_BYTES - 8) as u8;
    s[12] = asc;
    s[13] = ascq;
    s
}

fn set_field_pointer(s: &mut [u8], field_in: FieldIn, byte: u16, bit: Option<u8>) {
    let mut b15 = 0x80; // SKSV
    if matches!(field_in, FieldIn::Cdb) {
        b15 |= 0x40; // C/D
    }
    if let Some(bit) = bit {
        b15 |= 0x08 | (bit & 0x07); // BPV + bit pointer
    }
    if let Some(dst) = s.get_mut(15..18) {
        dst[0] = b15;
        dst[1..3].copy_from_slice(&byte.to_be_bytes());
    }
}

/// Sets the VALID bit and the 4-byte INFORMATION field (saturating, as the
/// fixed format has no room for more).
fn set_information(s: &mut [u8], info: u64) {
    let info = u32::try_from(info).unwrap_or(u32::MAX);
    if let Some(dst) = s.get_mut(3..7) {
        dst.copy_from_slice(&info.to_be_bytes());
    }
    if let Some(b0) = s.get_mut(0) {
        *b0 |= 0x80;
    }
}
