//! MODE SENSE / MODE SELECT with the caching, control and informational
//! exceptions pages. Only WCE and SWP are changeable; nothing can be saved.

use super::cdb::{put_be, Buf};
use super::sense::SenseReason;
use super::target::{CmdResult, Ctx, Lu, ScsiTarget, Xfer};
use super::ua::UaKind;

/// Mode parameters of one logical unit that initiators may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeState {
    /// Write cache enabled. Off means every write is forced unit access.
    pub wce: bool,
    /// Software write protect (control page): commands that change the
    /// medium fail with DATA PROTECT.
    pub swp: bool,
}

impl Default for ModeState {
    fn default() -> Self {
        ModeState {
            wce: true,
            swp: false,
        }
    }
}

const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0a;
const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
const PAGE_ALL: u8 = 0x3f;
const SUBPAGE_ALL: u8 = 0xff;
/// Pages in the order MODE SENSE returns them for "all pages".
const PAGES: &[u8] = &[PAGE_CACHING, PAGE_CONTROL, PAGE_INFORMATIONAL_EXCEPTIONS];
const WCE: u8 = 0x04;
/// Control page byte 4.
const SWP: u8 = 0x08;
/// Device-specific parameter: WP.
const DEVICE_SPECIFIC_WP: u8 = 0x80;
/// Device-specific parameter: DPOFUA (we honour DPO and FUA).
const DEVICE_SPECIFIC_DPOFUA: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageControl {
    Current,
    Changeable,
    Default,
}

fn page(code: u8, pc: PageControl, state: ModeState) -> Option<Vec<u8>> {
    let mut p = match code {
        PAGE_CACHING => vec![0u8; 0x14],
        PAGE_CONTROL => vec![0u8; 0x0c],
        PAGE_INFORMATIONAL_EXCEPTIONS => vec![0u8; 0x0c],
        _ => return None,
    };
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    match (code, pc) {
        (PAGE_CACHING, PageControl::Changeable) => p[2] = WCE,
        (PAGE_CACHING, PageControl::Current) => p[2] = if state.wce { WCE } else { 0 },
        (PAGE_CACHING, PageControl::Default) => p[2] = WCE,
        // Queue algorithm modifier 1: unrestricted reordering.
        (PAGE_CONTROL, PageControl::Current) => {
            p[3] = 0x10;
            p[4] = if state.swp { SWP } else { 0 };
        }
        (PAGE_CONTROL, PageControl::Default) => p[3] = 0x10,
        (PAGE_CONTROL, PageControl::Changeable) => p[4] = SWP,
        _ => {}
    }
    Some(p)
}

pub fn mode_sense(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    let six = ctx.spec.opcode == 0x1a;
    let dbd = ctx.cdb.bit(1, 3);
    let llbaa = !six && ctx.cdb.bit(1, 4);
    let pc = match ctx.cdb.u8(2) >> 6 {
        0 => PageControl::Current,
        1 => PageControl::Changeable,
        2 => PageControl::Default,
        _ => return Err(SenseReason::SavingParametersNotSupported),
    };
    let code = ctx.cdb.u8(2) & 0x3f;
    let subpage = ctx.cdb.u8(3);
    let state = *lu.mode.lock();
    let mut pages = Vec::new();
    if code == PAGE_ALL {
        if subpage != 0 && subpage != SUBPAGE_ALL {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: 3,
                bit: Some(7),
            });
        }
        for c in PAGES {
            pages.extend(page(*c, pc, state).unwrap_or_default());
        }
    } else {
        let p = page(code, pc, state).ok_or(SenseReason::InvalidFieldInCdb {
            byte: 2,
            bit: Some(5),
        })?;
        if subpage != 0 {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: 3,
                bit: Some(7),
            });
        }
        pages = p;
    }
    let mut bd = Vec::new();
    if !dbd {
        let dev = &lu.cfg.device;
        if llbaa {
            put_be(&mut bd, dev.num_blocks(), 8);
            put_be(&mut bd, 0, 4);
            put_be(&mut bd, u64::from(dev.block_size()), 4);
        } else {
            put_be(&mut bd, dev.num_blocks().min(u64::from(u32::MAX)), 4);
            bd.push(0);
            put_be(&mut bd, u64::from(dev.block_size()), 3);
        }
    }
    let device_specific = DEVICE_SPECIFIC_DPOFUA | if state.swp { DEVICE_SPECIFIC_WP } else { 0 };
    let mut out = Vec::new();
    if six {
        let len = 3 + bd.len() + pages.len();
        out.push(len.min(255) as u8);
        out.push(0);
        out.push(device_specific);
        out.push(bd.len() as u8);
    } else {
        let len = 6 + bd.len() + pages.len();
        put_be(&mut out, len as u64, 2);
        out.push(0);
        out.push(device_specific);
        out.push(u8::from(llbaa && !dbd));
        out.push(0);
        put_be(&mut out, bd.len() as u64, 2);
    }
    out.extend_from_slice(&bd);
    out.extend_from_slice(&pages);
    Ok(Xfer::data(out))
}

pub fn mode_select(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    let six = ctx.spec.opcode == 0x15;
    if ctx.cdb.bit(1, 0) {
        // SP: we cannot save parameters.
        return Err(SenseReason::InvalidFieldInCdb {
            byte: 1,
            bit: Some(0),
        });
    }
    let list_len = if six {
        usize::from(ctx.cdb.u8(4))
    } else {
        usize::from(ctx.cdb.be16(7))
    };
    if list_len == 0 {
        return Ok(Xfer::None);
    }
    let data = ctx
        .data_out
        .get(..list_len)
        .ok_or(SenseReason::ParameterListLengthError)?;
    let changed = apply_mode_parameters(lu, Buf(data), six)?;
    if changed {
        let me = ctx.nexus.clone();
        ScsiTarget::raise_ua(lu, UaKind::ModeParametersChanged, |n| *n != me);
    }
    Ok(Xfer::Out(list_len as u64))
}

/// Validates a whole parameter list before changing anything; returns
/// whether a current value changed.
fn apply_mode_parameters(lu: &Lu, b: Buf, six: bool) -> Result<bool, SenseReason> {
    let invalid = |byte: usize| SenseReason::InvalidFieldInParameterList {
        byte: u16::try_from(byte).unwrap_or(u16::MAX),
        bit: None,
    };
    let (header_len, bd_len) = if six {
        (4usize, usize::from(b.u8(3)))
    } else {
        (8usize, usize::from(b.be16(6)))
    };
    if b.len() < header_len + bd_len {
        return Err(SenseReason::ParameterListLengthError);
    }
    let long_lba = !six && b.bit(4, 0);
    let bd_size = if long_lba { 16 } else { 8 };
    if bd_len % bd_size != 0 {
        return Err(invalid(if six { 3 } else { 6 }));
    }
    let block_size = u64::from(lu.cfg.device.block_size());
    let mut off = header_len;
    while off < header_len + bd_len {
        let len = if long_lba {
            u64::from(b.be32(off + 12))
        } else {
            u64::from(b.be24(off + 5))
        };
        if len != block_size {
            return Err(invalid(off + if long_lba { 12 } else { 5 }));
        }
        off += bd_size;
    }
    let current = *lu.mode.lock();
    let mut next = current;
    while off < b.len() {
        let code = b.u8(off) & 0x3f;
        if b.bit(off, 6) {
            return Err(invalid(off)); // subpage format
        }
        let plen = usize::from(b.u8(off + 1)) + 2;
        let new = b
            .get(off, plen)
            .ok_or(SenseReason::ParameterListLengthError)?;
        let cur = page(code, PageControl::Current, current).ok_or(invalid(off))?;
        let changeable = page(code, PageControl::Changeable, current).ok_or(invalid(off))?;
        if cur.len() != plen {
            return Err(invalid(off + 1));
        }
        for i in 2..plen {
            let (n, c, m) = (
                new.get(i).copied().unwrap_or(0),
                cur.get(i).copied().unwrap_or(0),
                changeable.get(i).copied().unwrap_or(0),
            );
            if (n ^ c) & !m != 0 {
                return Err(invalid(off + i));
            }
        }
        if code == PAGE_CACHING {
            next.wce = new.get(2).is_some_and(|v| v & WCE != 0);
        }
        if code == PAGE_CONTROL {
            next.swp = new.get(4).is_some_and(|v| v & SWP != 0);
        }
        off += plen;
    }
    *lu.mode.lock() = next;
    Ok(next != current)
}
