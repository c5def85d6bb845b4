//! iSCSI PDUs (RFC 7143 §11): the 48-byte Basic Header Segment, additional
//! header segments, the data segment, padding and digests.
//!
//! A [`Pdu`] keeps its BHS as the raw 48 bytes and offers typed accessors
//! named after the RFC's fields, so a field can be found by its name in the
//! specification. [`codec`] turns bytes into PDUs and back and never panics
//! on what the network sends.

pub mod codec;

pub use codec::{decode, encode_header, DigestConfig, PduError};

use bytes::Bytes;

/// Size of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// ITT / TTT value meaning "none".
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (RFC 7143 §11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    NopOut,
    ScsiCommand,
    TaskMgmtRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    NopIn,
    ScsiResponse,
    TaskMgmtResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    ReadyToTransfer,
    AsyncMessage,
    Reject,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v & 0x3f {
            0x00 => Opcode::NopOut,
            0x01 => Opcode::ScsiCommand,
            0x02 => Opcode::TaskMgmtRequest,
            0x03 => Opcode::LoginRequest,
            0x04 => Opcode::TextRequest,
            0x05 => Opcode::DataOut,
            0x06 => Opcode::LogoutRequest,
            0x10 => Opcode::SnackRequest,
            0x20 => Opcode::NopIn,
            0x21 => Opcode::ScsiResponse,
            0x22 => Opcode::TaskMgmtResponse,
            0x23 => Opcode::LoginResponse,
            0x24 => Opcode::TextResponse,
            0x25 => Opcode::DataIn,
            0x26 => Opcode::LogoutResponse,
            0x31 => Opcode::ReadyToTransfer,
            0x32 => Opcode::AsyncMessage,
            0x3f => Opcode::Reject,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::NopOut => 0x00,
            Opcode::ScsiCommand => 0x01,
            Opcode::TaskMgmtRequest => 0x02,
            Opcode::LoginRequest => 0x03,
            Opcode::TextRequest => 0x04,
            Opcode::DataOut => 0x05,
            Opcode::LogoutRequest => 0x06,
            Opcode::SnackRequest => 0x10,
            Opcode::NopIn => 0x20,
            Opcode::ScsiResponse => 0x21,
            Opcode::TaskMgmtResponse => 0x22,
            Opcode::LoginResponse => 0x23,
            Opcode::TextResponse => 0x24,
            Opcode::DataIn => 0x25,
            Opcode::LogoutResponse => 0x26,
            Opcode::ReadyToTransfer => 0x31,
            Opcode::AsyncMessage => 0x32,
            Opcode::Reject => 0x3f,
        }
    }

    /// Whether an initiator may send this opcode.
    pub fn is_initiator(self) -> bool {
        self.as_u8() < 0x20
    }

    /// Target PDUs that carry a StatSN which the target advances (RFC 7143
    /// §4.2.2.2); an unsolicited NOP-In carries StatSN without advancing it.
    pub fn advances_stat_sn(self) -> bool {
        matches!(
            self,
            Opcode::ScsiResponse
                | Opcode::TaskMgmtResponse
                | Opcode::LoginResponse
                | Opcode::TextResponse
                | Opcode::LogoutResponse
                | Opcode::Reject
        )
    }
}

/// Reject reasons (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RejectReason {
    DataDigestError = 0x02,
    SnackReject = 0x03,
    ProtocolError = 0x04,
    CommandNotSupported = 0x05,
    ImmediateCommandReject = 0x06,
    TaskInProgress = 0x07,
    InvalidDataAck = 0x08,
    InvalidPduField = 0x09,
    OutOfResources = 0x0a,
    WaitingForLogout = 0x0c,
}

/// One PDU: BHS, AHS and data segment (without padding or digests).
#[derive(Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments, a multiple of 4 bytes.
    pub ahs: Bytes,
    pub data: Bytes,
}

impl std::fmt::Debug for Pdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdu")
            .field("opcode", &self.opcode())
            .field("itt", &format_args!("{:#x}", self.itt()))
            .field("flags", &format_args!("{:#04x}", self.bhs[1]))
            .field("ahs_len", &self.ahs.len())
            .field("data_len", &self.data.len())
            .finish()
    }
}

fn be32(b: &[u8; BHS_LEN], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

macro_rules! u32_field {
    ($get:ident, $set:ident, $at:expr) => {
        pub fn $get(&self) -> u32 {
            be32(&self.bhs, $at)
        }
        pub fn $set(&mut self, v: u32) -> &mut Self {
            self.bhs[$at..$at + 4].copy_from_slice(&v.to_be_bytes());
            self
        }
    };
}

impl Pdu {
    /// A PDU with the given opcode and all other fields zero.
    pub fn new(opcode: Opcode) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode.as_u8();
        Pdu {
            bhs,
            ahs: Bytes::new(),
            data: Bytes::new(),
        }
    }

    /// The opcode; `None` for an opcode RFC 7143 does not define.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.bhs[0])
    }

    /// The I bit: an immediate command, outside CmdSN ordering.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    /// The F (final) bit of byte 1; also the T (transit) bit of login PDUs.
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    /// Byte 1, whose bits each opcode defines.
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    pub fn set_flags(&mut self, v: u8) -> &mut Self {
        self.bhs[1] = v;
        self
    }

    /// TotalAHSLength in bytes.
    pub fn total_ahs_len(&self) -> usize {
        usize::from(self.bhs[4]) * 4
    }

    /// DataSegmentLength as written in the header.
    pub fn data_segment_len(&self) -> usize {
        (usize::from(self.bhs[5]) << 16)
            | (usize::from(self.bhs[6]) << 8)
            | usize::from(self.bhs[7])
    }

    /// The 8-byte LUN field (bytes 8–15).
    pub fn lun_field(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bhs[8..16]);
        u64::from_be_bytes(b)
    }

    pub fn set_lun_field(&mut self, v: u64) -> &mut Self {
        self.bhs[8..16].copy_from_slice(&v.to_be_bytes());
        self
    }

    u32_field!(itt, set_itt, 16);
    // Bytes 20–23: TTT, EDTL, RTT or (login) CID, by opcode.
    u32_field!(word20, set_word20, 20);
    // Bytes 24–27: CmdSN (from initiator) or StatSN (from target).
    u32_field!(word24, set_word24, 24);
    // Bytes 28–31: ExpStatSN (from initiator) or ExpCmdSN (from target).
    u32_field!(word28, set_word28, 28);
    // Bytes 32–35: MaxCmdSN (from target), RefCmdSN (TMF request).
    u32_field!(word32, set_word32, 32);
    // Bytes 36–39: DataSN, R2TSN, ExpDataSN.
    u32_field!(word36, set_word36, 36);
    // Bytes 40–43: Buffer Offset.
    u32_field!(word40, set_word40, 40);
    // Bytes 44–47: Residual Count or Desired Data Transfer Length.
    u32_field!(word44, set_word44, 44);

    // Names from the RFC for the fields above, by the PDUs that carry them.
    pub fn ttt(&self) -> u32 {
        self.word20()
    }
    pub fn expected_data_transfer_length(&self) -> u32 {
        self.word20()
    }
    pub fn referenced_task_tag(&self) -> u32 {
        self.word20()
    }
    pub fn cmd_sn(&self) -> u32 {
        self.word24()
    }
    pub fn exp_stat_sn(&self) -> u32 {
        self.word28()
    }
    pub fn data_sn(&self) -> u32 {
        self.word36()
    }
    pub fn buffer_offset(&self) -> u32 {
        self.word40()
    }

    /// Sets data and DataSegmentLength together.
    pub fn set_data(&mut self, data: Bytes) -> &mut Self {
        let len = data.len();
        assert!(
            len < 1 << 24,
            "data segment of {len} bytes cannot be encoded"
        );
        self.bhs[5] = (len >> 16) as u8;
        self.bhs[6] = (len >> 8) as u8;
        self.bhs[7] = len as u8;
        self.data = data;
        self
    }

    /// Sets AHS and TotalAHSLength together.
    pub fn set_ahs(&mut self, ahs: Bytes) -> &mut Self {
        assert!(ahs.len().is_multiple_of(4) && ahs.len() / 4 <= 255);
        self.bhs[4] = (ahs.len() / 4) as u8;
        self.ahs = ahs;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_round_trip() {
        for v in 0..=0xffu8 {
            if let Some(op) = Opcode::from_u8(v) {
                assert_eq!(op.as_u8(), v & 0x3f);
            }
        }
    }
}
