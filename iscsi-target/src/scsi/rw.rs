//! Block I/O: READ, WRITE, WRITE AND VERIFY, VERIFY, COMPARE AND WRITE,
//! SYNCHRONIZE CACHE, PRE-FETCH and READ CAPACITY.

use super::cdb::{put_be, Buf};
use super::sense::SenseReason;
use super::target::{CmdResult, Ctx, Lu, Xfer};
use crate::backend::first_difference;
use bytes::Bytes;

/// Largest READ/WRITE we serve in one command (VPD B0 MAXIMUM TRANSFER
/// LENGTH is this divided by the block size). Bounds per-command memory.
pub const TRANSFER_BYTES_MAX: u32 = 8 << 20;
/// VPD B0 OPTIMAL TRANSFER LENGTH, in bytes.
pub const TRANSFER_BYTES_OPTIMAL: u32 = 1 << 20;
/// COMPARE AND WRITE is atomic over this many blocks at most: one block is
/// what VMware ATS uses, and keeps the cluster's compare within one stripe.
pub const COMPARE_AND_WRITE_BLOCKS_MAX: u8 = 1;

/// LBA and transfer length (blocks) of any LBA-addressed command, by opcode.
pub fn decode_lba_len(cdb: Buf) -> (u64, u32) {
    match cdb.u8(0) {
        // 6-byte: 21-bit LBA, 0 blocks means 256.
        0x08 | 0x0a => {
            let lba = (u64::from(cdb.u8(1) & 0x1f) << 16) | u64::from(cdb.be16(2));
            let n = match cdb.u8(4) {
                0 => 256,
                n => u32::from(n),
            };
            (lba, n)
        }
        0x89 => (cdb.be64(2), u32::from(cdb.u8(13))),
        op if op >> 5 == 4 => (cdb.be64(2), cdb.be32(10)),
        op if op >> 5 == 5 => (u64::from(cdb.be32(2)), cdb.be32(6)),
        _ => (u64::from(cdb.be32(2)), u32::from(cdb.be16(7))),
    }
}

/// Byte index of the transfer length field, for sense field pointers.
fn length_field_byte(opcode: u8) -> u16 {
    match opcode >> 5 {
        0 => 4,
        4 => 10,
        5 => 6,
        _ => 7,
    }
}

pub fn check_range(lu: &Lu, lba: u64, blocks: u64) -> Result<(), SenseReason> {
    match lba.checked_add(blocks) {
        Some(end) if end <= lu.cfg.device.num_blocks() => Ok(()),
        _ => Err(SenseReason::LbaOutOfRange),
    }
}

fn check_transfer(ctx: &Ctx, lu: &Lu, blocks: u32) -> Result<(), SenseReason> {
    let bytes = u64::from(blocks) * u64::from(lu.cfg.device.block_size());
    if bytes > u64::from(TRANSFER_BYTES_MAX) {
        return Err(SenseReason::InvalidFieldInCdb {
            byte: length_field_byte(ctx.spec.opcode),
            bit: None,
        });
    }
    Ok(())
}

/// Forced unit access: the FUA bit, or always when the write cache is off.
fn fua(ctx: &Ctx, lu: &Lu) -> bool {
    let has_fua_bit = !matches!(ctx.spec.opcode, 0x0a);
    (has_fua_bit && ctx.cdb.bit(1, 3)) || !lu.mode.lock().wce
}

pub async fn read(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks) = decode_lba_len(ctx.cdb);
    check_range(lu, lba, u64::from(blocks))?;
    if blocks == 0 {
        return Ok(Xfer::In(Bytes::new()));
    }
    check_transfer(ctx, lu, blocks)?;
    let data = lu
        .cfg
        .device
        .read(lba, blocks)
        .await
        .map_err(|e| SenseReason::from_block(&e, false))?;
    Ok(Xfer::In(data))
}

/// WRITE and WRITE AND VERIFY. When the initiator sends less data than the
/// CDB asks for (iSCSI overflow), only the whole blocks it sent are written
/// and the command succeeds with an overflow residual, as libiscsi's
/// `test_write10_residuals` and LIO expect; extra data is ignored.
pub async fn write(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks) = decode_lba_len(ctx.cdb);
    check_range(lu, lba, u64::from(blocks))?;
    if blocks == 0 {
        return Ok(Xfer::Out(0));
    }
    check_transfer(ctx, lu, blocks)?;
    let bs = lu.cfg.device.block_size() as usize;
    let needed = blocks as usize * bs;
    let have = ctx.data_out.len().min(needed) / bs * bs;
    // WRITE AND VERIFY: the verification is the medium's; make it durable.
    let fua = fua(ctx, lu) || ctx.spec.handler == super::table::Handler::WriteAndVerify;
    if have > 0 {
        lu.cfg
            .device
            .write(lba, ctx.data_out.slice(..have), fua)
            .await
            .map_err(|e| SenseReason::from_block(&e, true))?;
    }
    Ok(Xfer::Out(needed as u64))
}

/// VERIFY: BYTCHK 00b checks the range only (the backend verifies
/// checksums on every read), 01b compares the data-out with the medium,
/// 11b compares one data-out block with every block.
pub async fn verify(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks) = decode_lba_len(ctx.cdb);
    let bytchk = (ctx.cdb.u8(1) >> 1) & 0x03;
    if bytchk == 0x02 {
        return Err(SenseReason::InvalidFieldInCdb {
            byte: 1,
            bit: Some(2),
        });
    }
    check_range(lu, lba, u64::from(blocks))?;
    if blocks == 0 || bytchk == 0 {
        return Ok(Xfer::None);
    }
    check_transfer(ctx, lu, blocks)?;
    let bs = lu.cfg.device.block_size() as usize;
    let medium = lu
        .cfg
        .device
        .read(lba, blocks)
        .await
        .map_err(|e| SenseReason::from_block(&e, false))?;
    let (expected, needed): (Vec<u8>, usize) = if bytchk == 0x01 {
        (ctx.data_out.to_vec(), blocks as usize * bs)
    } else {
        let one = ctx.data_out.get(..bs).unwrap_or(&ctx.data_out[..]);
        (one.repeat(blocks as usize), bs)
    };
    let n = expected.len().min(medium.len());
    if let Some(offset) = first_difference(&medium[..n], &expected[..n]) {
        return Err(SenseReason::Miscompare { offset });
    }
    Ok(Xfer::Out(needed as u64))
}

/// COMPARE AND WRITE: the data-out holds the compare blocks, then the
/// write blocks; the backend makes the pair atomic.
pub async fn compare_and_write(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks) = decode_lba_len(ctx.cdb);
    if blocks > u32::from(COMPARE_AND_WRITE_BLOCKS_MAX) {
        return Err(SenseReason::InvalidFieldInCdb {
            byte: 13,
            bit: None,
        });
    }
    check_range(lu, lba, u64::from(blocks))?;
    let half = blocks as usize * lu.cfg.device.block_size() as usize;
    let needed = 2 * half;
    // A data-out that does not match the CDB (e.g. 256 blocks, which the
    // one-byte field encodes as 0) is refused rather than guessed at.
    if ctx.expected_len as usize != needed || ctx.data_out.len() < needed {
        return Err(SenseReason::InvalidFieldInCdb {
            byte: 13,
            bit: None,
        });
    }
    if blocks == 0 {
        return Ok(Xfer::Out(0));
    }
    let compare = ctx.data_out.slice(..half);
    let write = ctx.data_out.slice(half..needed);
    lu.cfg
        .device
        .compare_and_write(lba, compare, write, fua(ctx, lu))
        .await
        .map_err(|e| SenseReason::from_block(&e, true))?;
    Ok(Xfer::Out(needed as u64))
}

/// The range is checked (0 blocks: to the end) but the whole device is
/// flushed: backends have no cheaper ranged flush.
pub async fn synchronize_cache(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks) = decode_lba_len(ctx.cdb);
    check_range(lu, lba, u64::from(blocks))?;
    lu.cfg
        .device
        .flush()
        .await
        .map_err(|e| SenseReason::from_block(&e, true))?;
    Ok(Xfer::None)
}

/// PRE-FETCH: nothing to prefetch into; GOOD says "no room in cache".
pub fn pre_fetch(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    let (lba, blocks) = decode_lba_len(ctx.cdb);
    check_range(lu, lba, u64::from(blocks))?;
    Ok(Xfer::None)
}

pub fn read_capacity10(ctx: &Ctx) -> CmdResult {
    let lu = ctx.lu()?;
    if !ctx.cdb.bit(8, 0) && ctx.cdb.be32(2) != 0 {
        return Err(SenseReason::InvalidFieldInCdb { byte: 2, bit: None });
    }
    let dev = &lu.cfg.device;
    let last = dev.num_blocks().saturating_sub(1).min(u64::from(u32::MAX));
    let mut out = Vec::with_capacity(8);
    put_be(&mut out, last, 4);
    put_be(&mut out, u64::from(dev.block_size()), 4);
    Ok(Xfer::data(out))
}

pub fn read_capacity16(ctx: &Ctx) -> CmdResult {
    const LBPME: u8 = 0x80;
    const LBPRZ: u8 = 0x40;
    let lu = ctx.lu()?;
    let dev = &lu.cfg.device;
    let mut out = Vec::with_capacity(32);
    put_be(&mut out, dev.num_blocks().saturating_sub(1), 8);
    put_be(&mut out, u64::from(dev.block_size()), 4);
    out.push(0); // no protection information
    out.push(0); // one logical block per physical block
    out.push(LBPME | if dev.unmap_reads_zeroes() { LBPRZ } else { 0 });
    out.push(0);
    out.resize(32, 0);
    Ok(Xfer::data(out))
}
