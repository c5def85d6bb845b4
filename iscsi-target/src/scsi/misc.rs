//! Commands about the logical unit as a whole: TEST UNIT READY, REQUEST
//! SENSE, REPORT LUNS, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL.

use super::cdb::put_be;
use super::sense::{fixed_sense, key, SenseReason};
use super::target::{CmdResult, Ctx, Xfer};

/// The smallest REPORT LUNS allocation length SPC-4 6.33 lets us serve.
const REPORT_LUNS_ALLOC_MIN_BYTES: u32 = 16;

pub fn test_unit_ready(ctx: &Ctx) -> CmdResult {
    ctx.lu()?;
    Ok(Xfer::None)
}

/// Reports (and thereby clears) the oldest pending unit attention; a LUN we
/// do not have answers with LOGICAL UNIT NOT SUPPORTED as parameter data.
pub fn request_sense(ctx: &Ctx) -> CmdResult {
    let sense = match ctx.lu {
        None => SenseReason::LuNotSupported.sense().map(|b| b.to_vec()),
        Some(lu) => lu
            .ua
            .lock()
            .pop(ctx.nexus)
            .and_then(|k| SenseReason::UnitAttention(k).sense().map(|b| b.to_vec())),
    };
    Ok(Xfer::data(
        sense.unwrap_or_else(|| fixed_sense(key::NO_SENSE, 0, 0)),
    ))
}

/// SAM-5 4.7.3: LUNs below 256 use peripheral device addressing, larger
/// ones flat space addressing; beyond flat space the raw 64-bit value.
pub fn encode_lun(lun: u64) -> [u8; 8] {
    let mut out = [0u8; 8];
    if lun < 256 {
        out[1] = lun as u8;
    } else if lun < 0x4000 {
        out[0] = 0x40 | (lun >> 8) as u8;
        out[1] = lun as u8;
    } else {
        out = lun.to_be_bytes();
    }
    out
}

pub fn report_luns(ctx: &Ctx) -> CmdResult {
    let select = ctx.cdb.u8(2);
    if ctx.cdb.be32(6) < REPORT_LUNS_ALLOC_MIN_BYTES {
        return Err(SenseReason::InvalidFieldInCdb { byte: 6, bit: None });
    }
    let luns = match select {
        0x00 | 0x02 => ctx.target.luns(),
        // Well-known logical units only: we have none.
        0x01 => Vec::new(),
        _ => {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: 2,
                bit: Some(7),
            })
        }
    };
    let mut out = Vec::with_capacity(8 + 8 * luns.len());
    put_be(&mut out, (luns.len() * 8) as u64, 4);
    out.extend_from_slice(&[0; 4]);
    for lun in luns {
        out.extend_from_slice(&encode_lun(lun));
    }
    Ok(Xfer::data(out))
}

/// The medium is not removable (RMB=0): eject/load (LOEJ) is refused, a
/// power condition or START is accepted and has no effect.
pub fn start_stop_unit(ctx: &Ctx) -> CmdResult {
    ctx.lu()?;
    if ctx.cdb.bit(4, 1) {
        return Err(SenseReason::InvalidFieldInCdb {
            byte: 4,
            bit: Some(1),
        });
    }
    Ok(Xfer::None)
}

pub fn prevent_allow(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    let mut prevent = lu.prevent.lock();
    if ctx.cdb.u8(4) & 0x03 == 0x01 {
        prevent.insert(ctx.nexus.clone());
    } else {
        prevent.remove(ctx.nexus);
    }
    Ok(Xfer::None)
}
