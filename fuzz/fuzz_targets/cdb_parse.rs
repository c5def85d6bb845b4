//! CDB parsing (`scsi::parse_cdb_for_fuzz`) and whole commands through
//! `ScsiTarget::execute` on small RAM devices.
//!
//! Input: a sequence of records, all run against one fresh target (so
//! that reservations and unit attentions carry from one command to the next):
//!   byte 0      bits 0..=1 LUN (0, 1, 2 = no such LU, 3 = LUN 0x4001);
//!               bits 2..=3 I_T nexus (initiator 0..=2, 3 = initiator 0 on
//!               another ISID); bit 4 task management before the command
//!               (bit 5: LU reset, else nexus gone); bit 7 expected length
//!               counts down from u32::MAX
//!   byte 1      CDB length, mod 33
//!   bytes 2..=3 expected data transfer length (big-endian, times 16 when
//!               bit 6 of byte 0 is set)
//!   bytes 4..=5 data-out length (big-endian; cut to what is left)
//!   then the CDB and the data-out.
//! Every CDB also goes through `parse_cdb_for_fuzz`, which must agree with
//! `execute` about whether the opcode exists.
//!
//! Properties (from `scsi/mod.rs`): no panic; data-in is never longer than
//! the expected length; CHECK CONDITION exactly when there is sense data.
#![no_main]

use bytes::Bytes;
use iscsi_target::backend::RamDevice;
use iscsi_target::scsi::{
    parse_cdb_for_fuzz, ItNexus, LuConfig, ScsiRequest, ScsiStatus, ScsiTarget, ScsiTargetConfig,
    TaskAttr,
};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const TARGET_NAME: &str = "iqn.2024-01.test:target";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

/// `WEFT_FUZZ_DEBUG=1` prints each command and its result.
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("WEFT_FUZZ_DEBUG").is_some())
}

fn lu(lun: u64, size: u64, bs: u32) -> LuConfig {
    LuConfig {
        lun,
        device: Arc::new(RamDevice::new(size, bs)),
        serial: format!("SER{lun}"),
        naa: [0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, lun as u8],
        vendor: "WEFT".into(),
        product: "VIRTUAL DISK".into(),
        revision: "0001".into(),
    }
}

/// 1 MiB each: LUN 0 with 512-byte blocks, LUN 1 with 4096-byte blocks.
fn target() -> ScsiTarget {
    ScsiTarget::new(ScsiTargetConfig::standalone(
        TARGET_NAME,
        vec![lu(0, 1 << 20, 512), lu(1, 1 << 20, 4096)],
    ))
}

fn nexus(who: u8) -> ItNexus {
    ItNexus {
        initiator_name: format!("iqn.2024-01.test:init{}", who % 3),
        isid: [0x80, 0, 0, 0, 0, who],
        target_name: TARGET_NAME.into(),
        tpgt: 1,
    }
}

const LUNS: [u64; 4] = [0, 1, 2, 0x4001];

fuzz_target!(|data: &[u8]| {
    let rt = runtime();
    let t = target();
    let mut rest = data;
    let mut commands = 0;
    while rest.len() >= 6 && commands < 32 {
        commands += 1;
        let h = &rest[..6];
        rest = &rest[6..];
        let lun = LUNS[usize::from(h[0] & 3)];
        let who = (h[0] >> 2) & 3;
        let cdb_len = usize::from(h[1] % 33).min(rest.len());
        let (cdb, r) = rest.split_at(cdb_len);
        let dout_len = usize::from(u16::from_be_bytes([h[4], h[5]])).min(r.len());
        let (dout, r) = r.split_at(dout_len);
        rest = r;
        let mut expected_len = u32::from(u16::from_be_bytes([h[2], h[3]]));
        if h[0] & 0x40 != 0 {
            expected_len *= 16;
        }
        if h[0] & 0x80 != 0 {
            expected_len = u32::MAX - expected_len;
        }

        let parsed = parse_cdb_for_fuzz(cdb);

        let nx = nexus(who);
        if h[0] & 0x10 != 0 {
            if h[0] & 0x20 != 0 {
                t.lu_reset(lun);
            } else {
                t.nexus_gone(&nx);
            }
        }
        let req = ScsiRequest {
            lun,
            cdb: Bytes::copy_from_slice(cdb),
            data_out: Bytes::copy_from_slice(dout),
            expected_len,
            read: true,
            write: !dout.is_empty(),
            attr: TaskAttr::Simple,
        };
        if debug() {
            eprintln!("lun {lun} nexus {who} cdb {cdb:02x?} dout {} expected {expected_len}", dout.len());
        }
        let r = rt.block_on(t.execute(&nx, req));
        if debug() {
            eprintln!("  -> {:?} data-in {} sense {:02x?} {:?}", r.status, r.data_in.len(), r.sense, r.residual);
        }
        assert!(
            r.data_in.len() <= expected_len as usize,
            "data-in of {} bytes exceeds the expected length {expected_len}",
            r.data_in.len()
        );
        assert_eq!(
            r.status == ScsiStatus::CheckCondition,
            r.sense.is_some(),
            "status {:?} with sense {:?}",
            r.status,
            r.sense
        );
        if r.status == ScsiStatus::Good && lun <= 1 {
            // A command that ran was one the parser accepted.
            assert!(parsed.is_ok(), "execute ran a CDB the parser rejects: {parsed:?}");
        }
    }
});
