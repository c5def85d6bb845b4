//! Thin provisioning: UNMAP, WRITE SAME (with UNMAP and NDOB), GET LBA STATUS.

use super::cdb::{put_be, Buf};
use super::rw::{check_range, decode_lba_len, TRANSFER_BYTES_MAX};
use super::sense::SenseReason;
use super::target::{CmdResult, Ctx, Xfer};
use crate::backend::ProvisioningStatus;
use bytes::{Bytes, BytesMut};

/// Largest range one UNMAP block descriptor may cover (VPD B0); libiscsi's
/// BlockLimits test wants at most 1 Mi blocks.
pub const UNMAP_BLOCKS_MAX: u32 = 1 << 20;
/// Most block descriptors in one UNMAP parameter list (VPD B0).
pub const UNMAP_DESCRIPTORS_MAX: u32 = 256;
/// Largest WRITE SAME (VPD B0 MAXIMUM WRITE SAME LENGTH), in blocks. Kept
/// below 64 Ki so that initiators (and libiscsi's WriteSame16.Unmap) do not
/// pair it with single WRITEs beyond the maximum transfer length; larger
/// discards go through UNMAP.
pub const WRITE_SAME_BLOCKS_MAX: u64 = 0xffff;
/// Most descriptors one GET LBA STATUS returns; the initiator asks again
/// from where we stopped.
pub const LBA_STATUS_DESCRIPTORS_MAX: usize = 64;

const UNMAP_HEADER_LEN_BYTES: usize = 8;
const UNMAP_DESCRIPTOR_LEN_BYTES: usize = 16;

pub async fn unmap(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let list_len = usize::from(ctx.cdb.be16(7));
    if list_len == 0 {
        return Ok(Xfer::None);
    }
    if list_len < UNMAP_HEADER_LEN_BYTES {
        return Err(SenseReason::ParameterListLengthError);
    }
    let data = ctx
        .data_out
        .get(..list_len)
        .ok_or(SenseReason::ParameterListLengthError)?;
    let b = Buf(data);
    // Descriptors end where the list or its stated length ends, whichever
    // is first (a longer stated length is tolerated, as LIO does).
    let bd_len = usize::from(b.be16(2)).min(list_len - UNMAP_HEADER_LEN_BYTES);
    let count = bd_len / UNMAP_DESCRIPTOR_LEN_BYTES;
    if count > UNMAP_DESCRIPTORS_MAX as usize {
        return Err(SenseReason::InvalidFieldInParameterList { byte: 2, bit: None });
    }
    let mut ranges = Vec::with_capacity(count);
    for i in 0..count {
        let off = UNMAP_HEADER_LEN_BYTES + i * UNMAP_DESCRIPTOR_LEN_BYTES;
        let (lba, blocks) = (b.be64(off), b.be32(off + 8));
        if blocks > UNMAP_BLOCKS_MAX {
            return Err(SenseReason::InvalidFieldInParameterList {
                byte: (off + 8) as u16,
                bit: None,
            });
        }
        check_range(lu, lba, u64::from(blocks))?;
        if blocks > 0 {
            ranges.push((lba, u64::from(blocks)));
        }
    }
    for (lba, blocks) in ranges {
        lu.cfg
            .device
            .unmap(lba, blocks)
            .await
            .map_err(|e| SenseReason::from_block(&e, true))?;
    }
    Ok(Xfer::Out(list_len as u64))
}

pub async fn write_same(ctx: &Ctx<'_>) -> CmdResult {
    let lu = ctx.lu()?;
    let dev = &lu.cfg.device;
    let (lba, blocks) = decode_lba_len(ctx.cdb);
    let unmap = ctx.cdb.bit(1, 3);
    let ndob = ctx.spec.opcode == 0x93 && ctx.cdb.bit(1, 0);
    let len_byte = if ctx.spec.opcode == 0x93 { 10 } else { 7 };
    check_range(lu, lba, u64::from(blocks))?;
    // WSNZ is set in VPD B0: zero blocks does not mean "to the end".
    if blocks == 0 || u64::from(blocks) > WRITE_SAME_BLOCKS_MAX {
        return Err(SenseReason::InvalidFieldInCdb {
            byte: len_byte,
            bit: None,
        });
    }
    let bs = dev.block_size() as usize;
    let block: Bytes = if ndob {
        Bytes::from(vec![0u8; bs])
    } else {
        ctx.data_out
            .get(..bs)
            .map(Bytes::copy_from_slice)
            .ok_or(SenseReason::ParameterListLengthError)?
    };
    let xfer = if ndob { 0 } else { bs as u64 };
    let zero = block.iter().all(|&b| b == 0);
    if unmap && zero && dev.unmap_reads_zeroes() {
        dev.unmap(lba, u64::from(blocks))
            .await
            .map_err(|e| SenseReason::from_block(&e, true))?;
        return Ok(Xfer::Out(xfer));
    }
    let fua = !lu.mode.lock().wce;
    let chunk_blocks = (TRANSFER_BYTES_MAX as usize / bs).max(1);
    let mut buf = BytesMut::with_capacity(chunk_blocks.min(blocks as usize) * bs);
    for _ in 0..chunk_blocks.min(blocks as usize) {
        buf.extend_from_slice(&block);
    }
    let buf = buf.freeze();
    let mut done: u64 = 0;
    while done < u64::from(blocks) {
        let n = (u64::from(blocks) - done).min(chunk_blocks as u64) as usize;
        dev.write(lba + done, buf.slice(..n * bs), fua)
            .await
            .map_err(|e| SenseReason::from_block(&e, true))?;
        done += n as u64;
    }
    Ok(Xfer::Out(xfer))
}

pub async fn get_lba_status(ctx: &Ctx<'_>) -> CmdResult {
    const HEADER_LEN_BYTES: usize = 8;
    const DESCRIPTOR_LEN_BYTES: usize = 16;
    let lu = ctx.lu()?;
    let dev = &lu.cfg.device;
    let start = ctx.cdb.be64(2);
    let alloc = ctx.cdb.be32(10) as usize;
    if start >= dev.num_blocks() {
        return Err(SenseReason::LbaOutOfRange);
    }
    let room = alloc.saturating_sub(HEADER_LEN_BYTES) / DESCRIPTOR_LEN_BYTES;
    let wanted = room.clamp(1, LBA_STATUS_DESCRIPTORS_MAX);
    let mut descriptors = Vec::new();
    let mut lba = start;
    while descriptors.len() < wanted * DESCRIPTOR_LEN_BYTES && lba < dev.num_blocks() {
        let st = dev
            .lba_status(lba)
            .await
            .map_err(|e| SenseReason::from_block(&e, false))?;
        let blocks = st.blocks.clamp(1, u64::from(u32::MAX));
        put_be(&mut descriptors, lba, 8);
        put_be(&mut descriptors, blocks, 4);
        descriptors.push(match st.status {
            ProvisioningStatus::Mapped => 0,
            ProvisioningStatus::Deallocated => 1,
        });
        descriptors.extend_from_slice(&[0; 3]);
        lba = lba.saturating_add(blocks);
    }
    let mut out = Vec::with_capacity(HEADER_LEN_BYTES + descriptors.len());
    put_be(&mut out, (descriptors.len() + 4) as u64, 4);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&descriptors);
    Ok(Xfer::data(out))
}
