//! INQUIRY: standard data and the vital product data pages.

use super::cdb::put_be;
use super::provisioning::{UNMAP_BLOCKS_MAX, UNMAP_DESCRIPTORS_MAX, WRITE_SAME_BLOCKS_MAX};
use super::rw::{COMPARE_AND_WRITE_BLOCKS_MAX, TRANSFER_BYTES_MAX, TRANSFER_BYTES_OPTIMAL};
use super::sense::SenseReason;
use super::target::{CmdResult, Ctx, Lu, Xfer};

/// Length of our standard INQUIRY data (with version descriptors).
const STANDARD_INQUIRY_LEN_BYTES: usize = 96;
/// The VPD pages we serve, in ascending order (page 0x00 lists them).
const VPD_PAGES: &[u8] = &[0x00, 0x80, 0x83, 0x86, 0xb0, 0xb1, 0xb2];
/// iSCSI protocol identifier (SPC-4 table 362).
pub const PROTOCOL_ISCSI: u8 = 0x5;
/// Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: &[u16] = &[0x00a0, 0x0960, 0x0460, 0x04c0];

pub fn inquiry(ctx: &Ctx) -> CmdResult {
    let evpd = ctx.cdb.bit(1, 0);
    let page = ctx.cdb.u8(2);
    if !evpd {
        if page != 0 {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: 2,
                bit: Some(7),
            });
        }
        return Ok(Xfer::data(standard(ctx.lu)));
    }
    let lu = ctx.lu()?;
    let body = match page {
        0x00 => VPD_PAGES.to_vec(),
        0x80 => lu.cfg.serial.as_bytes().to_vec(),
        0x83 => device_identification(ctx, lu),
        0x86 => extended_inquiry(),
        0xb0 => block_limits(lu),
        0xb1 => block_device_characteristics(),
        0xb2 => logical_block_provisioning(lu),
        _ => {
            return Err(SenseReason::InvalidFieldInCdb {
                byte: 2,
                bit: Some(7),
            })
        }
    };
    let mut out = vec![0x00, page];
    put_be(&mut out, body.len() as u64, 2);
    out.extend_from_slice(&body);
    Ok(Xfer::data(out))
}

fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if b.is_ascii_graphic() { b } else { b' ' })
        .take(len)
        .collect();
    v.resize(len, b' ');
    v
}

fn standard(lu: Option<&Lu>) -> Vec<u8> {
    let mut d = vec![0u8; STANDARD_INQUIRY_LEN_BYTES];
    // Peripheral qualifier 011b, type 1Fh: no logical unit at this LUN.
    d[0] = if lu.is_some() { 0x00 } else { 0x7f };
    d[2] = 0x06; // SPC-4
    d[3] = 0x10 | 0x02; // HISUP, response data format 2
    d[4] = (STANDARD_INQUIRY_LEN_BYTES - 5) as u8;
    d[5] = 0x10; // TPGS = 01b: implicit ALUA only
    d[6] = 0x10; // MULTIP: reachable through several gateways
    d[7] = 0x02; // CMDQUE
    let (vendor, product, revision) = match lu {
        Some(lu) => (
            lu.cfg.vendor.as_str(),
            lu.cfg.product.as_str(),
            lu.cfg.revision.as_str(),
        ),
        None => ("WEFT", "NO LUN", "0"),
    };
    d[8..16].copy_from_slice(&padded(vendor, 8));
    d[16..32].copy_from_slice(&padded(product, 16));
    d[32..36].copy_from_slice(&padded(revision, 4));
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// One designation descriptor (SPC-4 7.8.6.1). `piv` carries the protocol
/// identifier for port and target-device associations.
fn designator(out: &mut Vec<u8>, code_set: u8, association: u8, kind: u8, id: &[u8]) {
    let piv = association != 0;
    let proto = if piv { PROTOCOL_ISCSI << 4 } else { 0 };
    out.push(proto | code_set);
    out.push(if piv { 0x80 } else { 0 } | (association << 4) | kind);
    out.push(0);
    out.push(id.len() as u8);
    out.extend_from_slice(id);
}

/// A null-terminated UTF-8 SCSI name string padded to a multiple of 4 bytes.
fn scsi_name(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(251).collect();
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn device_identification(ctx: &Ctx, lu: &Lu) -> Vec<u8> {
    const BINARY: u8 = 1;
    const UTF8: u8 = 3;
    const LU: u8 = 0;
    const PORT: u8 = 1;
    const TARGET: u8 = 2;
    let rel_port = ctx.target.alua.relative_port_id(ctx.nexus);
    let tpg = ctx.target.alua.port_group_id(ctx.nexus);
    let mut out = Vec::new();
    designator(&mut out, BINARY, LU, 0x3, &lu.cfg.naa);
    designator(
        &mut out,
        BINARY,
        PORT,
        0x4,
        &[0, 0, (rel_port >> 8) as u8, rel_port as u8],
    );
    designator(
        &mut out,
        BINARY,
        PORT,
        0x5,
        &[0, 0, (tpg >> 8) as u8, tpg as u8],
    );
    let port_name = format!("{},t,0x{:04x}", ctx.target.target_name, ctx.nexus.tpgt);
    designator(&mut out, UTF8, PORT, 0x8, &scsi_name(&port_name));
    designator(
        &mut out,
        UTF8,
        TARGET,
        0x8,
        &scsi_name(&ctx.target.target_name),
    );
    out
}

fn extended_inquiry() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    d[1] = 0x07; // HEADSUP, ORDSUP, SIMPSUP
    d
}

fn block_limits(lu: &Lu) -> Vec<u8> {
    let bs = lu.cfg.device.block_size();
    let mut d = Vec::with_capacity(0x3c);
    d.push(0x01); // WSNZ: WRITE SAME with zero blocks is not "whole LUN"
    d.push(COMPARE_AND_WRITE_BLOCKS_MAX);
    put_be(&mut d, 1, 2); // optimal transfer length granularity (blocks)
    put_be(&mut d, u64::from(TRANSFER_BYTES_MAX / bs), 4);
    put_be(&mut d, u64::from(TRANSFER_BYTES_OPTIMAL / bs), 4);
    put_be(&mut d, 0, 4); // maximum prefetch length
    put_be(&mut d, u64::from(UNMAP_BLOCKS_MAX), 4);
    put_be(&mut d, u64::from(UNMAP_DESCRIPTORS_MAX), 4);
    put_be(&mut d, 1, 4); // optimal unmap granularity
    put_be(&mut d, 0, 4); // UGAVALID = 0
    put_be(&mut d, WRITE_SAME_BLOCKS_MAX, 8);
    d.resize(0x3c, 0);
    d
}

fn block_device_characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    d[1] = 0x01; // medium rotation rate: non-rotating
    d
}

fn logical_block_provisioning(lu: &Lu) -> Vec<u8> {
    const LBPU: u8 = 0x80;
    const LBPWS: u8 = 0x40;
    const LBPWS10: u8 = 0x20;
    const LBPRZ: u8 = 0x04;
    const THIN: u8 = 0x02;
    let mut flags = LBPU | LBPWS | LBPWS10;
    if lu.cfg.device.unmap_reads_zeroes() {
        flags |= LBPRZ;
    }
    vec![0, flags, THIN, 0]
}
