//! Table-driven tests of the whole command set through `ScsiTarget::execute`
//! (one helper, [`run`]), plus the never-panics property.

use super::*;
use crate::backend::RamDevice;
use proptest::prelude::*;

const LU0_BLOCKS: u64 = 2048;

fn nexus(who: usize) -> ItNexus {
    ItNexus {
        initiator_name: format!("iqn.2024-01.test:init{who}"),
        isid: [0x80, 0, 0, 0, 0, who as u8],
        target_name: "iqn.2024-01.test:target".into(),
        tpgt: 1,
    }
}

fn lu(lun: u64, size: u64, bs: u32) -> LuConfig {
    LuConfig {
        lun,
        device: Arc::new(RamDevice::new(size, bs)),
        serial: format!("SER{lun}"),
        naa: [
            0x60, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, lun as u8,
        ],
        vendor: "WEFT".into(),
        product: "VIRTUAL DISK".into(),
        revision: "0001".into(),
    }
}

fn target() -> ScsiTarget {
    ScsiTarget::new(ScsiTargetConfig::standalone(
        "iqn.2024-01.test:target",
        vec![lu(0, LU0_BLOCKS * 512, 512), lu(1, 64 << 20, 4096)],
    ))
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|c| c.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Want {
    Good,
    Conflict,
    /// Sense key, ASC, ASCQ.
    Sense(u8, u8, u8),
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Cmd,
    LuReset,
    NexusGone,
}

/// One row: who sends what, and what must come back.
#[derive(Clone, Debug)]
struct Case {
    what: &'static str,
    step: Step,
    who: usize,
    lun: u64,
    cdb: &'static str,
    data_out: Vec<u8>,
    edtl: Option<u32>,
    want: Want,
    data_in: &'static str,
    residual: Option<Residual>,
    sense_prefix: &'static str,
}

fn c(what: &'static str, cdb: &'static str, want: Want) -> Case {
    Case {
        what,
        step: Step::Cmd,
        who: 0,
        lun: 0,
        cdb,
        data_out: Vec::new(),
        edtl: None,
        want,
        data_in: "",
        residual: None,
        sense_prefix: "",
    }
}

impl Case {
    fn data(mut self, prefix: &'static str) -> Self {
        self.data_in = prefix;
        self
    }
    fn out(mut self, d: Vec<u8>) -> Self {
        self.data_out = d;
        self
    }
    fn who(mut self, who: usize) -> Self {
        self.who = who;
        self
    }
    fn lun(mut self, lun: u64) -> Self {
        self.lun = lun;
        self
    }
    fn edtl(mut self, n: u32) -> Self {
        self.edtl = Some(n);
        self
    }
    fn residual(mut self, r: Residual) -> Self {
        self.residual = Some(r);
        self
    }
    fn sense(mut self, prefix: &'static str) -> Self {
        self.sense_prefix = prefix;
        self
    }
}

fn step(what: &'static str, step: Step, who: usize) -> Case {
    Case {
        step,
        who,
        ..c(what, "", Want::Good)
    }
}

const GOOD: Want = Want::Good;
const CONFLICT: Want = Want::Conflict;
const INVALID_OPCODE: Want = Want::Sense(5, 0x20, 0);
const INVALID_CDB: Want = Want::Sense(5, 0x24, 0);
const INVALID_PARAM: Want = Want::Sense(5, 0x26, 0);
const PARAM_LEN: Want = Want::Sense(5, 0x1a, 0);
const OUT_OF_RANGE: Want = Want::Sense(5, 0x21, 0);
const MISCOMPARE: Want = Want::Sense(0x0e, 0x1d, 0);
const NO_LUN: Want = Want::Sense(5, 0x25, 0);

fn fill(b: u8, n: usize) -> Vec<u8> {
    vec![b; n]
}

fn pr_params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&key.to_be_bytes());
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    p
}

/// THE helper: runs the rows in order against one fresh target.
fn run(cases: &[Case]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = target();
    for (i, case) in cases.iter().enumerate() {
        let n = nexus(case.who);
        match case.step {
            Step::LuReset => {
                t.lu_reset(case.lun);
                continue;
            }
            Step::NexusGone => {
                t.nexus_gone(&n);
                continue;
            }
            Step::Cmd => {}
        }
        let cdb = hex(case.cdb);
        let edtl = case.edtl.unwrap_or(if case.data_out.is_empty() {
            4096
        } else {
            case.data_out.len() as u32
        });
        let req = ScsiRequest {
            lun: case.lun,
            cdb: Bytes::from(cdb),
            data_out: Bytes::from(case.data_out.clone()),
            expected_len: edtl,
            read: case.data_out.is_empty(),
            write: !case.data_out.is_empty(),
            attr: TaskAttr::Simple,
        };
        let resp = rt.block_on(t.execute(&n, req));
        let ctx = format!("row {i} ({}): {resp:?}", case.what);
        match case.want {
            Want::Good => assert_eq!(resp.status, ScsiStatus::Good, "{ctx}"),
            Want::Conflict => {
                assert_eq!(resp.status, ScsiStatus::ReservationConflict, "{ctx}");
                assert!(resp.sense.is_none(), "{ctx}");
            }
            Want::Sense(k, asc, ascq) => {
                assert_eq!(resp.status, ScsiStatus::CheckCondition, "{ctx}");
                let s = resp.sense.as_ref().expect("sense");
                assert_eq!(s.len(), sense::FIXED_SENSE_LEN_BYTES, "{ctx}");
                assert_eq!((s[2] & 0x0f, s[12], s[13]), (k, asc, ascq), "{ctx}");
                assert!(s.starts_with(&hex(case.sense_prefix)), "{ctx}");
            }
        }
        assert!(resp.data_in.len() <= edtl as usize, "{ctx}");
        assert!(
            resp.data_in.starts_with(&hex(case.data_in)),
            "{ctx}\nwant prefix {}",
            case.data_in
        );
        if let Some(r) = case.residual {
            assert_eq!(resp.residual, r, "{ctx}");
        }
    }
}

#[test]
fn core_commands() {
    run(&[
        c("TUR", "00 00 00 00 00 00", GOOD),
        c("TUR absent LUN", "00 00 00 00 00 00", NO_LUN).lun(9),
        c("TUR NACA", "00 00 00 00 00 04", INVALID_CDB).sense("70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 ca 00 05"),
        c("FORMAT UNIT", "04 00 00 00 00 00", INVALID_OPCODE),
        c("SANITIZE", "48 01 00 00 00 00 00 00 00 00", INVALID_OPCODE),
        c("SAI unknown SA", "9e 11 00 00 00 00 00 00 00 00 00 00 00 20 00 00", INVALID_CDB),
        c("INQUIRY", "12 00 00 00 60 00", GOOD)
            .data("00 00 06 12 5b 10 10 02 57 45 46 54 20 20 20 20 56 49 52 54")
            .residual(Residual::Underflow(4096 - 96)),
        c("INQUIRY short alloc", "12 00 00 00 05 00", GOOD).data("00 00 06 12 5b"),
        c("INQUIRY absent LUN", "12 00 00 00 60 00", GOOD).lun(9).data("7f 00 06"),
        c("INQUIRY page without EVPD", "12 00 80 00 60 00", INVALID_CDB),
        c("INQUIRY CMDDT", "12 02 00 00 60 00", INVALID_CDB),
        c("VPD 00", "12 01 00 00 ff 00", GOOD).data("00 00 00 07 00 80 83 86 b0 b1 b2"),
        c("VPD 80", "12 01 80 00 ff 00", GOOD).data("00 80 00 04 53 45 52 30"),
        c("VPD 83", "12 01 83 00 ff 00", GOOD)
            .data("00 83 00 68 01 03 00 10 60 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 00 51 94 00 04 00 00 00 01 51 95 00 04 00 00 00 01 53 98"),
        c("VPD 86", "12 01 86 00 ff 00", GOOD).data("00 86 00 3c 00 07"),
        c("VPD b0", "12 01 b0 00 ff 00", GOOD)
            .data("00 b0 00 3c 01 01 00 01 00 00 40 00 00 00 08 00 00 00 00 00 00 10 00 00 00 00 01 00"),
        c("VPD b1", "12 01 b1 00 ff 00", GOOD).data("00 b1 00 3c 00 01"),
        c("VPD b2", "12 01 b2 00 ff 00", GOOD).data("00 b2 00 04 00 e4 02 00"),
        c("VPD unknown", "12 01 99 00 ff 00", INVALID_CDB),
        c("REPORT LUNS", "a0 00 00 00 00 00 00 00 01 00 00 00", GOOD)
            .data("00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 00 00 00 00 00"),
        c("REPORT LUNS absent LUN", "a0 00 00 00 00 00 00 00 01 00 00 00", GOOD).lun(9).data("00 00 00 10"),
        c("REPORT LUNS well known", "a0 00 01 00 00 00 00 00 01 00 00 00", GOOD).data("00 00 00 00"),
        c("REPORT LUNS bad select", "a0 00 05 00 00 00 00 00 01 00 00 00", INVALID_CDB),
        c("REPORT LUNS alloc 8", "a0 00 00 00 00 00 00 00 00 08 00 00", INVALID_CDB),
        c("READ CAPACITY(10)", "25 00 00 00 00 00 00 00 00 00", GOOD).data("00 00 07 ff 00 00 02 00"),
        c("READ CAPACITY(10) LBA without PMI", "25 00 00 00 00 01 00 00 00 00", INVALID_CDB),
        c("READ CAPACITY(10) 4k LU", "25 00 00 00 00 00 00 00 00 00", GOOD).lun(1).data("00 00 3f ff 00 00 10 00"),
        c("READ CAPACITY(16)", "9e 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00", GOOD)
            .data("00 00 00 00 00 00 07 ff 00 00 02 00 00 00 c0 00")
            .residual(Residual::Underflow(4096 - 32)),
        c("READ CAPACITY(16) alloc 8", "9e 10 00 00 00 00 00 00 00 00 00 00 00 08 00 00", GOOD)
            .residual(Residual::Underflow(4096 - 8)),
        c("REQUEST SENSE", "03 00 00 00 12 00", GOOD).data("70 00 00 00 00 00 00 0a"),
        c("REQUEST SENSE DESC", "03 01 00 00 12 00", INVALID_CDB),
        c("REQUEST SENSE absent LUN", "03 00 00 00 12 00", GOOD).lun(9).data("70 00 05 00 00 00 00 0a 00 00 00 00 25 00"),
        c("START STOP UNIT", "1b 01 00 00 01 00", GOOD),
        c("START STOP UNIT eject", "1b 01 00 00 02 00", INVALID_CDB),
        c("PREVENT", "1e 00 00 00 01 00", GOOD),
        c("ALLOW", "1e 00 00 00 00 00", GOOD),
        c("SYNCHRONIZE CACHE(10)", "35 00 00 00 00 00 00 00 00 00", GOOD),
        c("SYNCHRONIZE CACHE(10) past end", "35 00 00 00 08 00 00 00 01 00", OUT_OF_RANGE),
        c("SYNCHRONIZE CACHE(16)", "91 02 00 00 00 00 00 00 00 00 00 00 00 10 00 00", GOOD),
        c("PRE-FETCH(10)", "34 00 00 00 00 00 00 00 10 00", GOOD),
        c("PRE-FETCH(16) past end", "90 00 00 00 00 00 00 00 07 ff 00 00 00 02 00 00", OUT_OF_RANGE),
    ]);
}

#[test]
fn reads_and_writes() {
    run(&[
        c("WRITE(10)", "2a 00 00 00 00 01 00 00 01 00", GOOD).out(fill(0xaa, 512)),
        c("READ(10)", "28 00 00 00 00 01 00 00 01 00", GOOD)
            .edtl(512)
            .data("aa aa aa")
            .residual(Residual::None),
        c("WRITE(6)", "0a 00 00 02 01 00", GOOD).out(fill(0xb6, 512)),
        c("READ(6)", "08 00 00 02 01 00", GOOD)
            .edtl(512)
            .data("b6 b6"),
        c("READ(6) 0 means 256", "08 00 00 00 00 00", GOOD)
            .edtl(256 * 512)
            .residual(Residual::None),
        c("WRITE(12) FUA", "aa 08 00 00 00 03 00 00 00 01 00 00", GOOD).out(fill(0xc1, 512)),
        c("READ(12)", "a8 00 00 00 00 03 00 00 00 01 00 00", GOOD).data("c1"),
        c(
            "WRITE(16) DPO FUA",
            "8a 18 00 00 00 00 00 00 00 04 00 00 00 01 00 00",
            GOOD,
        )
        .out(fill(0xd6, 512)),
        c(
            "READ(16)",
            "88 00 00 00 00 00 00 00 00 04 00 00 00 01 00 00",
            GOOD,
        )
        .data("d6"),
        c("READ(10) 0 blocks", "28 00 00 00 00 00 00 00 00 00", GOOD)
            .edtl(0)
            .residual(Residual::None),
        c(
            "READ(10) 0 blocks past end",
            "28 00 00 00 08 01 00 00 00 00",
            OUT_OF_RANGE,
        ),
        c(
            "READ(10) past end",
            "28 00 00 00 07 ff 00 00 02 00",
            OUT_OF_RANGE,
        ),
        c(
            "READ(16) LBA -1",
            "88 00 ff ff ff ff ff ff ff ff 00 00 00 01 00 00",
            OUT_OF_RANGE,
        ),
        c(
            "READ(10) RDPROTECT",
            "28 20 00 00 00 00 00 00 01 00",
            INVALID_CDB,
        )
        .sense("70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 cd 00 01"),
        c(
            "READ(10) too long",
            "28 00 00 00 00 00 00 ff ff 00",
            OUT_OF_RANGE,
        ),
        c(
            "READ(16) beyond max transfer",
            "88 00 00 00 00 00 00 00 00 00 00 00 08 01 00 00",
            INVALID_CDB,
        )
        .lun(1)
        .edtl(0),
        c("READ(10) EDTL 200", "28 00 00 00 00 01 00 00 01 00", GOOD)
            .edtl(200)
            .residual(Residual::Overflow(312)),
        c("READ(10) EDTL 10000", "28 00 00 00 00 01 00 00 01 00", GOOD)
            .edtl(10000)
            .residual(Residual::Underflow(10000 - 512)),
        c("READ(10) EDTL 0", "28 00 00 00 00 01 00 00 01 00", GOOD)
            .edtl(0)
            .residual(Residual::Overflow(512)),
        c(
            "WRITE(10) 2 blocks of a",
            "2a 00 00 00 00 10 00 00 02 00",
            GOOD,
        )
        .out(fill(b'a', 1024)),
        c(
            "WRITE(10) 2 blocks EDTL 1 block",
            "2a 00 00 00 00 10 00 00 02 00",
            GOOD,
        )
        .out(fill(b'b', 512))
        .residual(Residual::Overflow(512)),
        c("READ back", "28 00 00 00 00 10 00 00 02 00", GOOD)
            .edtl(1024)
            .data("62 62"),
        c(
            "second block untouched",
            "28 00 00 00 00 11 00 00 01 00",
            GOOD,
        )
        .edtl(512)
        .data("61 61"),
        c(
            "WRITE(10) 1 block EDTL 2",
            "2a 00 00 00 00 11 00 00 01 00",
            GOOD,
        )
        .out(fill(b'c', 1024))
        .residual(Residual::Underflow(512)),
        c("WRITE(10) EDTL 0", "2a 00 00 00 00 11 00 00 01 00", GOOD)
            .edtl(0)
            .residual(Residual::Overflow(512)),
        c("READ back 2", "28 00 00 00 00 11 00 00 01 00", GOOD).data("63 63"),
        c(
            "WRITE(10) past end",
            "2a 00 00 00 07 ff 00 00 02 00",
            OUT_OF_RANGE,
        )
        .out(fill(0, 1024)),
        c(
            "WRITE(10) WRPROTECT",
            "2a 20 00 00 00 00 00 00 01 00",
            INVALID_CDB,
        )
        .out(fill(0, 512)),
        c(
            "WRITE AND VERIFY(10)",
            "2e 02 00 00 00 20 00 00 01 00",
            GOOD,
        )
        .out(fill(0x77, 512)),
        c(
            "WRITE AND VERIFY(16)",
            "8e 00 00 00 00 00 00 00 00 21 00 00 00 01 00 00",
            GOOD,
        )
        .out(fill(0x78, 512)),
        c(
            "WRITE AND VERIFY(12)",
            "ae 00 00 00 00 22 00 00 00 01 00 00",
            GOOD,
        )
        .out(fill(0x79, 512)),
        c("VERIFY(10) BYTCHK 0", "2f 00 00 00 00 20 00 00 01 00", GOOD).edtl(0),
        c("VERIFY(10) match", "2f 02 00 00 00 20 00 00 01 00", GOOD).out(fill(0x77, 512)),
        c(
            "VERIFY(16) match",
            "8f 02 00 00 00 00 00 00 00 21 00 00 00 01 00 00",
            GOOD,
        )
        .out(fill(0x78, 512)),
        c(
            "VERIFY(12) mismatch",
            "af 02 00 00 00 22 00 00 00 01 00 00",
            MISCOMPARE,
        )
        .out({
            let mut v = fill(0x79, 512);
            v[100] = 0;
            v
        })
        .sense("f0 00 0e 00 00 00 64"),
        c(
            "VERIFY(10) BYTCHK 11",
            "2f 06 00 00 00 20 00 00 01 00",
            GOOD,
        )
        .out(fill(0x77, 512)),
        c(
            "VERIFY(10) BYTCHK 10",
            "2f 04 00 00 00 20 00 00 01 00",
            INVALID_CDB,
        )
        .out(fill(0x77, 512)),
        c(
            "VERIFY(10) past end",
            "2f 00 00 00 08 00 00 00 01 00",
            OUT_OF_RANGE,
        ),
    ]);
}

fn mode_select_caching(wce: bool, six: bool) -> Vec<u8> {
    let mut v = if six { vec![0; 4] } else { vec![0; 8] };
    let mut page = vec![0u8; 20];
    page[0] = 0x08;
    page[1] = 0x12;
    page[2] = if wce { 0x04 } else { 0 };
    v.extend_from_slice(&page);
    v
}

#[test]
fn mode_pages() {
    run(&[
        c("MODE SENSE(6) all", "1a 00 3f 00 ff 00", GOOD)
            .data("37 00 10 08 00 00 08 00 00 00 02 00 08 12 04"),
        c("MODE SENSE(6) caching DBD", "1a 08 08 00 ff 00", GOOD).data("17 00 10 00 08 12 04"),
        c("MODE SENSE(6) changeable", "1a 08 48 00 ff 00", GOOD).data("17 00 10 00 08 12 04 00"),
        c("MODE SENSE(6) control", "1a 08 0a 00 ff 00", GOOD).data("0f 00 10 00 0a 0a 00 10"),
        c("MODE SENSE(6) IE", "1a 08 1c 00 ff 00", GOOD).data("0f 00 10 00 1c 0a"),
        c("MODE SENSE(6) all subpages", "1a 08 3f ff ff 00", GOOD).data("2f 00 10 00"),
        c(
            "MODE SENSE(6) saved",
            "1a 00 ff 00 ff 00",
            Want::Sense(5, 0x39, 0),
        ),
        c(
            "MODE SENSE(6) unknown page",
            "1a 00 01 00 ff 00",
            INVALID_CDB,
        ),
        c(
            "MODE SENSE(10) LLBAA",
            "5a 10 08 00 00 00 00 00 ff 00",
            GOOD,
        )
        .data("00 2a 00 10 01 00 00 10 00 00 00 00 00 00 08 00 00 00 00 00 00 00 02 00 08 12"),
        c("nexus 1 exists", "00 00 00 00 00 00", GOOD).who(1),
        c("MODE SELECT(6) WCE off", "15 10 00 00 18 00", GOOD)
            .out(mode_select_caching(false, true)),
        c("MODE SENSE shows WCE off", "1a 08 08 00 ff 00", GOOD).data("17 00 10 00 08 12 00"),
        c(
            "other nexus sees mode change",
            "00 00 00 00 00 00",
            Want::Sense(6, 0x2a, 0x01),
        )
        .who(1),
        c("once", "00 00 00 00 00 00", GOOD).who(1),
        c("changer does not", "00 00 00 00 00 00", GOOD),
        c(
            "MODE SELECT(10) WCE on",
            "55 10 00 00 00 00 00 00 1c 00",
            GOOD,
        )
        .out(mode_select_caching(true, false)),
        c(
            "MODE SENSE(10) WCE on",
            "5a 08 08 00 00 00 00 00 ff 00",
            GOOD,
        )
        .data("00 1a 00 10 00 00 00 00 08 12 04"),
        c(
            "MODE SELECT non-changeable",
            "15 10 00 00 18 00",
            INVALID_PARAM,
        )
        .out({
            let mut v = mode_select_caching(true, true);
            v[6] = 0x01;
            v
        })
        .sense("70 00 05 00 00 00 00 0a 00 00 00 00 26 00 00 80 00 06"),
        c("MODE SELECT SP", "15 11 00 00 18 00", INVALID_CDB).out(mode_select_caching(true, true)),
        c("MODE SELECT short list", "15 10 00 00 18 00", PARAM_LEN).out(fill(0, 8)),
        c(
            "MODE SELECT bad block descriptor",
            "15 10 00 00 0c 00",
            INVALID_PARAM,
        )
        .out(hex("00 00 00 08 00 00 00 00 00 00 10 00")),
        c("MODE SELECT zero length", "15 10 00 00 00 00", GOOD),
        c("MODE SELECT SWP on", "15 10 00 00 10 00", GOOD)
            .out(hex("00 00 00 00 0a 0a 00 10 08 00 00 00 00 00 00 00")),
        c("WP in header", "1a 08 0a 00 ff 00", GOOD).data("0f 00 90 00 0a 0a 00 10 08"),
        c(
            "write protected",
            "2a 00 00 00 00 00 00 00 01 00",
            Want::Sense(7, 0x27, 0x02),
        )
        .out(fill(0, 512)),
        c(
            "UNMAP protected",
            "42 00 00 00 00 00 00 00 18 00",
            Want::Sense(7, 0x27, 0x02),
        )
        .out(unmap_list(&[(0, 1)])),
        c("read allowed", "28 00 00 00 00 00 00 00 01 00", GOOD),
        c("MODE SELECT SWP off", "15 10 00 00 10 00", GOOD)
            .out(hex("00 00 00 00 0a 0a 00 10 00 00 00 00 00 00 00 00")),
        c("writable", "2a 00 00 00 00 00 00 00 01 00", GOOD).out(fill(0, 512)),
    ]);
}

fn unmap_list(descs: &[(u64, u32)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
    v.extend_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
    v.extend_from_slice(&[0; 4]);
    for (lba, n) in descs {
        v.extend_from_slice(&lba.to_be_bytes());
        v.extend_from_slice(&n.to_be_bytes());
        v.extend_from_slice(&[0; 4]);
    }
    v
}

#[test]
fn provisioning_and_atomics() {
    run(&[
        c("WRITE", "2a 00 00 00 00 00 00 00 80 00", GOOD).out(fill(0x5a, 128 * 512)),
        c(
            "GET LBA STATUS mapped",
            "9e 12 00 00 00 00 00 00 00 00 00 00 00 20 00 00",
            GOOD,
        )
        .data("00 00 00 14 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 80 00"),
        c("UNMAP", "42 00 00 00 00 00 00 00 18 00", GOOD).out(unmap_list(&[(0, 128)])),
        c("reads zeroes", "28 00 00 00 00 05 00 00 01 00", GOOD).data("00 00 00 00"),
        c(
            "GET LBA STATUS deallocated",
            "9e 12 00 00 00 00 00 00 00 00 00 00 00 20 00 00",
            GOOD,
        )
        .data("00 00 00 14 00 00 00 00 00 00 00 00 00 00 00 00 00 00 08 00 01"),
        c(
            "GET LBA STATUS past end",
            "9e 12 00 00 00 00 00 00 08 00 00 00 00 20 00 00",
            OUT_OF_RANGE,
        ),
        c("UNMAP empty", "42 00 00 00 00 00 00 00 00 00", GOOD),
        c(
            "UNMAP short list",
            "42 00 00 00 00 00 00 00 04 00",
            PARAM_LEN,
        )
        .out(fill(0, 4)),
        c(
            "UNMAP past end",
            "42 00 00 00 00 00 00 00 18 00",
            OUT_OF_RANGE,
        )
        .out(unmap_list(&[(2047, 2)])),
        c(
            "UNMAP too many blocks",
            "42 00 00 00 00 00 00 00 18 00",
            INVALID_PARAM,
        )
        .out(unmap_list(&[(0, u32::MAX)])),
        c("UNMAP ANCHOR", "42 01 00 00 00 00 00 00 18 00", INVALID_CDB).out(unmap_list(&[(0, 1)])),
        c("WRITE SAME(10)", "41 00 00 00 00 10 00 00 04 00", GOOD)
            .out(fill(0xcc, 512))
            .residual(Residual::None),
        c("filled", "28 00 00 00 00 13 00 00 01 00", GOOD).data("cc cc"),
        c(
            "WRITE SAME(10) UNMAP",
            "41 08 00 00 00 10 00 00 04 00",
            GOOD,
        )
        .out(fill(0, 512)),
        c("unmapped", "28 00 00 00 00 13 00 00 01 00", GOOD).data("00 00"),
        c(
            "WRITE SAME(10) LBDATA",
            "41 02 00 00 00 10 00 00 04 00",
            INVALID_CDB,
        )
        .out(fill(0, 512)),
        c(
            "WRITE SAME(10) PBDATA",
            "41 04 00 00 00 10 00 00 04 00",
            INVALID_CDB,
        )
        .out(fill(0, 512)),
        c(
            "WRITE SAME(10) 0 blocks",
            "41 00 00 00 00 10 00 00 00 00",
            INVALID_CDB,
        )
        .out(fill(0, 512)),
        c(
            "WRITE SAME(10) 0 blocks past end",
            "41 00 00 00 08 01 00 00 00 00",
            OUT_OF_RANGE,
        )
        .out(fill(0, 512)),
        c(
            "WRITE SAME(10) past end",
            "41 00 00 00 07 ff 00 00 02 00",
            OUT_OF_RANGE,
        )
        .out(fill(0, 512)),
        c(
            "WRITE SAME(16)",
            "93 00 00 00 00 00 00 00 00 30 00 00 00 02 00 00",
            GOOD,
        )
        .out(fill(0xee, 512)),
        c(
            "WRITE SAME(16) NDOB UNMAP",
            "93 09 00 00 00 00 00 00 00 30 00 00 00 01 00 00",
            GOOD,
        )
        .edtl(0),
        c("NDOB zeroed", "28 00 00 00 00 30 00 00 02 00", GOOD)
            .edtl(1024)
            .data("00 00"),
        c("still ee", "28 00 00 00 00 31 00 00 01 00", GOOD).data("ee ee"),
        c("seed CAW block", "2a 00 00 00 00 40 00 00 01 00", GOOD).out(fill(0x11, 512)),
        c(
            "COMPARE AND WRITE",
            "89 00 00 00 00 00 00 00 00 40 00 00 00 01 00 00",
            GOOD,
        )
        .out([fill(0x11, 512), fill(0x22, 512)].concat()),
        c("written", "28 00 00 00 00 40 00 00 01 00", GOOD).data("22 22"),
        c(
            "COMPARE AND WRITE miscompare",
            "89 00 00 00 00 00 00 00 00 40 00 00 00 01 00 00",
            MISCOMPARE,
        )
        .out([fill(0x22, 7), fill(0x11, 505), fill(0x33, 512)].concat())
        .sense("f0 00 0e 00 00 00 07"),
        c("untouched", "28 00 00 00 00 40 00 00 01 00", GOOD).data("22 22"),
        c(
            "COMPARE AND WRITE 2 blocks",
            "89 00 00 00 00 00 00 00 00 40 00 00 00 02 00 00",
            INVALID_CDB,
        )
        .out(fill(0, 2048)),
        c(
            "COMPARE AND WRITE EDTL mismatch",
            "89 00 00 00 00 00 00 00 00 40 00 00 00 01 00 00",
            INVALID_CDB,
        )
        .out(fill(0, 2048)),
        c(
            "COMPARE AND WRITE 256 blocks (field 0)",
            "89 00 00 00 00 00 00 00 00 40 00 00 00 00 00 00",
            INVALID_CDB,
        )
        .out(fill(0, 512 * 512)),
        c(
            "COMPARE AND WRITE past end",
            "89 00 00 00 00 00 00 00 08 00 00 00 00 01 00 00",
            OUT_OF_RANGE,
        )
        .out(fill(0, 1024)),
    ]);
}

#[test]
fn persistent_reservations() {
    let reg = |k| pr_params(0, k, 0);
    run(&[
        c("REGISTER", "5f 00 00 00 00 00 00 00 18 00", GOOD).out(reg(0x1111)),
        c(
            "REGISTER again needs key",
            "5f 00 00 00 00 00 00 00 18 00",
            CONFLICT,
        )
        .out(reg(0x1111)),
        c(
            "REGISTER bad length",
            "5f 00 00 00 00 00 00 00 10 00",
            PARAM_LEN,
        )
        .out(fill(0, 16)),
        c(
            "REGISTER SPEC_I_PT",
            "5f 00 00 00 00 00 00 00 18 00",
            INVALID_PARAM,
        )
        .out(pr_params(0, 5, 0x08)),
        c("READ KEYS", "5e 00 00 00 00 00 00 10 00 00", GOOD)
            .data("00 00 00 01 00 00 00 08 00 00 00 00 00 00 11 11"),
        c("REPORT CAPABILITIES", "5e 02 00 00 00 00 00 00 08 00", GOOD).data("00 08 15 80 ea 01"),
        c(
            "RESERVE unregistered",
            "5f 01 01 00 00 00 00 00 18 00",
            CONFLICT,
        )
        .who(1)
        .out(pr_params(0, 0, 0)),
        c(
            "RESERVE bad type",
            "5f 01 02 00 00 00 00 00 18 00",
            INVALID_CDB,
        )
        .out(pr_params(0x1111, 0, 0)),
        c("RESERVE WE", "5f 01 01 00 00 00 00 00 18 00", GOOD).out(pr_params(0x1111, 0, 0)),
        c(
            "RESERVE again same type",
            "5f 01 01 00 00 00 00 00 18 00",
            GOOD,
        )
        .out(pr_params(0x1111, 0, 0)),
        c("READ RESERVATION", "5e 01 00 00 00 00 00 00 20 00", GOOD)
            .data("00 00 00 01 00 00 00 10 00 00 00 00 00 00 11 11 00 00 00 00 00 01"),
        c(
            "other may read under WE",
            "28 00 00 00 00 00 00 00 01 00",
            GOOD,
        )
        .who(1),
        c(
            "other may not write",
            "2a 00 00 00 00 00 00 00 01 00",
            CONFLICT,
        )
        .who(1)
        .out(fill(0, 512)),
        c("other INQUIRY", "12 00 00 00 60 00", GOOD).who(1),
        c("holder writes", "2a 00 00 00 00 00 00 00 01 00", GOOD).out(fill(0, 512)),
        c("other registers", "5f 00 00 00 00 00 00 00 18 00", GOOD)
            .who(1)
            .out(reg(0x2222)),
        c(
            "registered non-holder still conflicts under WE",
            "2a 00 00 00 00 00 00 00 01 00",
            CONFLICT,
        )
        .who(1)
        .out(fill(0, 512)),
        c(
            "RELEASE wrong type",
            "5f 02 03 00 00 00 00 00 18 00",
            Want::Sense(5, 0x26, 0x04),
        )
        .out(pr_params(0x1111, 0, 0)),
        c("READ FULL STATUS", "5e 03 00 00 00 00 00 04 00 00", GOOD)
            .data("00 00 00 02 00 00 00 ".trim_end()),
        c("PREEMPT holder", "5f 04 01 00 00 00 00 00 18 00", GOOD)
            .who(1)
            .out(pr_params(0x2222, 0x1111, 0)),
        c(
            "preempted nexus told",
            "00 00 00 00 00 00",
            Want::Sense(6, 0x2a, 0x05),
        ),
        c(
            "preempted cannot write",
            "2a 00 00 00 00 00 00 00 01 00",
            CONFLICT,
        )
        .out(fill(0, 512)),
        c(
            "READ KEYS after preempt",
            "5e 00 00 00 00 00 00 10 00 00",
            GOOD,
        )
        .data("00 00 00 03 00 00 00 08 00 00 00 00 00 00 22 22"),
        c("new holder writes", "2a 00 00 00 00 00 00 00 01 00", GOOD)
            .who(1)
            .out(fill(0, 512)),
        c(
            "unregistered PREEMPT",
            "5f 04 01 00 00 00 00 00 18 00",
            CONFLICT,
        )
        .out(pr_params(0x1111, 0x2222, 0)),
        c("REGISTER 3", "5f 00 00 00 00 00 00 00 18 00", GOOD)
            .who(2)
            .out(reg(0x3333)),
        c("RELEASE by holder", "5f 02 01 00 00 00 00 00 18 00", GOOD)
            .who(1)
            .out(pr_params(0x2222, 0, 0)),
        c("RESERVE EA-RO", "5f 01 06 00 00 00 00 00 18 00", GOOD)
            .who(1)
            .out(pr_params(0x2222, 0, 0)),
        c(
            "registrant reads under EA-RO",
            "28 00 00 00 00 00 00 00 01 00",
            GOOD,
        )
        .who(2),
        c(
            "unregistered read conflicts under EA-RO",
            "28 00 00 00 00 00 00 00 01 00",
            CONFLICT,
        ),
        c("unregistered TUR allowed", "00 00 00 00 00 00", GOOD),
        c("holder unregisters", "5f 00 00 00 00 00 00 00 18 00", GOOD)
            .who(1)
            .out(pr_params(0x2222, 0, 0)),
        c(
            "registrant told of release",
            "00 00 00 00 00 00",
            Want::Sense(6, 0x2a, 0x04),
        )
        .who(2),
        c("REGISTER AND IGNORE", "5f 06 00 00 00 00 00 00 18 00", GOOD)
            .who(2)
            .out(pr_params(0, 0x4444, 0)),
        c("CLEAR", "5f 03 00 00 00 00 00 00 18 00", GOOD)
            .who(2)
            .out(pr_params(0x4444, 0, 0)),
        c("no keys", "5e 00 00 00 00 00 00 10 00 00", GOOD).data("00 00 00 07 00 00 00 00"),
        c("REGISTER EA-AR a", "5f 00 00 00 00 00 00 00 18 00", GOOD).out(reg(0xa)),
        c("REGISTER EA-AR b", "5f 00 00 00 00 00 00 00 18 00", GOOD)
            .who(1)
            .out(reg(0xb)),
        c("RESERVE EA-AR", "5f 01 08 00 00 00 00 00 18 00", GOOD).out(pr_params(0xa, 0, 0)),
        c(
            "all registrants access",
            "2a 00 00 00 00 00 00 00 01 00",
            GOOD,
        )
        .who(1)
        .out(fill(0, 512)),
        c(
            "reservation key 0 for AR",
            "5e 01 00 00 00 00 00 00 20 00",
            GOOD,
        )
        .data("00 00 00 09 00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 00 00 08"),
        c(
            "PREEMPT AR with key 0",
            "5f 05 01 00 00 00 00 00 18 00",
            GOOD,
        )
        .who(1)
        .out(pr_params(0xb, 0, 0)),
        c(
            "everyone else preempted",
            "00 00 00 00 00 00",
            Want::Sense(6, 0x2a, 0x05),
        ),
        c("RESERVE(6) blocked by PR", "16 00 00 00 00 00", CONFLICT).who(1),
        c("CLEAR all", "5f 03 00 00 00 00 00 00 18 00", GOOD)
            .who(1)
            .out(pr_params(0xb, 0, 0)),
        c("RESERVE(6)", "16 00 00 00 00 00", GOOD),
        c(
            "other READ conflicts",
            "28 00 00 00 00 00 00 00 01 00",
            CONFLICT,
        )
        .who(1),
        c("other INQUIRY ok", "12 00 00 00 60 00", GOOD).who(1),
        c(
            "other RESERVE(10) conflicts",
            "56 00 00 00 00 00 00 00 00 00",
            CONFLICT,
        )
        .who(1),
        c("other RELEASE is a no-op", "17 00 00 00 00 00", GOOD).who(1),
        c("still reserved", "28 00 00 00 00 00 00 00 01 00", CONFLICT).who(1),
        c("RELEASE(10)", "57 00 00 00 00 00 00 00 00 00", GOOD),
        c("free", "28 00 00 00 00 00 00 00 01 00", GOOD).who(1),
        c("RESERVE(10) again", "56 00 00 00 00 00 00 00 00 00", GOOD),
        step("LU reset drops RESERVE", Step::LuReset, 0),
        c(
            "UA after reset",
            "00 00 00 00 00 00",
            Want::Sense(6, 0x29, 0x03),
        )
        .who(1),
        c("free after reset", "28 00 00 00 00 00 00 00 01 00", GOOD).who(1),
        c(
            "UA for the other nexus too",
            "28 00 00 00 00 00 00 00 01 00",
            Want::Sense(6, 0x29, 0x03),
        ),
        c("INQUIRY never blocked by UA", "12 00 00 00 60 00", GOOD),
    ]);
}

#[test]
fn register_and_move_and_aptpl() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn PrStore> = Arc::new(FilePrStore::open(dir.path()).unwrap());
    let t = ScsiTarget::new(ScsiTargetConfig {
        target_name: "iqn.2024-01.test:target".into(),
        lus: vec![lu(0, 1 << 20, 512)],
        pr_store: store.clone(),
        alua: Arc::new(StandaloneAlua),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let exec = |who: usize, cdb: &str, out: Vec<u8>| {
        let req = ScsiRequest {
            lun: 0,
            cdb: Bytes::from(hex(cdb)),
            expected_len: out.len().max(4096) as u32,
            data_out: Bytes::from(out),
            read: true,
            write: true,
            attr: TaskAttr::Simple,
        };
        rt.block_on(t.execute(&nexus(who), req))
    };
    let r = exec(
        0,
        "5f 00 00 00 00 00 00 00 18 00",
        pr_params(0, 0xabc, 0x01),
    );
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!(
        exec(0, "5f 01 03 00 00 00 00 00 18 00", pr_params(0xabc, 0, 0)).status,
        ScsiStatus::Good
    );
    // REGISTER AND MOVE to initiator 1 on port 1.
    let name = super::pr::initiator_port_name(&nexus(1).initiator_name, &nexus(1).isid);
    let mut tid = vec![0x45, 0];
    let mut n = name.into_bytes();
    n.push(0);
    while !n.len().is_multiple_of(4) {
        n.push(0);
    }
    tid.extend_from_slice(&(n.len() as u16).to_be_bytes());
    tid.extend_from_slice(&n);
    let mut p = Vec::new();
    p.extend_from_slice(&0xabcu64.to_be_bytes());
    p.extend_from_slice(&0xdefu64.to_be_bytes());
    p.extend_from_slice(&[0, 0x03, 0, 1]); // UNREG + APTPL, relative port 1
    p.extend_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(&tid);
    let cdb = format!("5f 07 03 00 00 {:08x} 00", p.len());
    let cdb: &'static str = Box::leak(cdb.into_boxed_str());
    let r = exec(0, cdb, p);
    assert_eq!(r.status, ScsiStatus::Good, "{r:?}");
    assert_eq!(
        exec(1, "2a 00 00 00 00 00 00 00 01 00", fill(1, 512)).status,
        ScsiStatus::Good
    );
    assert_eq!(
        exec(0, "28 00 00 00 00 00 00 00 01 00", vec![]).status,
        ScsiStatus::ReservationConflict
    );
    // APTPL: a new store over the same directory sees the state.
    let reopened = FilePrStore::open(dir.path()).unwrap();
    let st = reopened.load(0);
    assert!(st.aptpl);
    assert_eq!(st.registrations.len(), 1);
    assert_eq!(st.registrations[0].key, 0xdef);
    assert_eq!(
        st.reservation.as_ref().map(|r| r.kind),
        Some(PrType::ExclusiveAccess)
    );
    assert_eq!(st, store.load(0));
    // Clearing APTPL removes the file.
    let r = exec(
        1,
        "5f 00 00 00 00 00 00 00 18 00",
        pr_params(0xdef, 0xdef, 0),
    );
    assert_eq!(r.status, ScsiStatus::Good);
    assert_eq!(
        FilePrStore::open(dir.path()).unwrap().load(0),
        PrState::default()
    );
}

#[test]
fn pr_file_versions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lun-3.toml"),
        "version = 1\n[state]\ngeneration = 7\naptpl = true\n\
         [[state.registrations]]\nkey = \"0xffffffffffffffff\"\n\
         initiator_port = \"iqn.x,i,0x800000000001\"\nrelative_port = 2\n",
    )
    .unwrap();
    let st = FilePrStore::open(dir.path()).unwrap().load(3);
    assert_eq!(st.generation, 7);
    assert_eq!(st.registrations[0].key, u64::MAX);
    std::fs::write(
        dir.path().join("lun-4.toml"),
        "version = 99\n[state]\ngeneration = 1\n",
    )
    .unwrap();
    assert!(FilePrStore::open(dir.path()).is_err());
}

#[test]
fn rsoc_alua_and_unit_attentions() {
    run(&[
        c("RSOC all", "a3 0c 00 00 00 00 00 00 10 00 00 00", GOOD)
            .data("00 00 01 b0")
            .residual(Residual::Underflow(4096 - 0x1b4)),
        c("RSOC READ(10)", "a3 0c 01 28 00 00 00 00 01 00 00 00", GOOD)
            .data("00 03 00 0a 28 1a ff ff ff ff 1f ff ff 00"),
        c(
            "RSOC READ(10) RCTD",
            "a3 0c 81 28 00 00 00 00 01 00 00 00",
            GOOD,
        )
        .data("00 83 00 0a 28 1a ff ff ff ff 1f ff ff 00 00 0a 00 00 00 00 00 1e 00 00 00 1e"),
        c(
            "RSOC RC16 by SA",
            "a3 0c 02 9e 00 10 00 00 01 00 00 00",
            GOOD,
        )
        .data("00 03 00 10 9e 1f"),
        c(
            "RSOC opcode with SAs, option 1",
            "a3 0c 01 9e 00 00 00 00 01 00 00 00",
            INVALID_CDB,
        ),
        c(
            "RSOC unsupported",
            "a3 0c 01 04 00 00 00 00 01 00 00 00",
            GOOD,
        )
        .data("00 01 00 00"),
        c(
            "RSOC bad option",
            "a3 0c 05 00 00 00 00 00 01 00 00 00",
            INVALID_CDB,
        ),
        c("RSTMF", "a3 0d 00 00 00 00 00 00 00 04 00 00", GOOD).data("ca 00 00 00"),
        c("RSTMF REPD", "a3 0d 80 00 00 00 00 00 00 10 00 00", GOOD).data("ca 00 00 0c"),
        c("REPORT TPG", "a3 0a 00 00 00 00 00 00 01 00 00 00", GOOD)
            .data("00 00 00 0c 00 8f 00 01 00 00 00 01 00 00 00 01"),
        c(
            "REPORT TPG extended",
            "a3 2a 00 00 00 00 00 00 01 00 00 00",
            GOOD,
        )
        .data("00 00 00 10 10 00 00 00 00 8f 00 01"),
        c(
            "REPORT TPG bad format",
            "a3 4a 00 00 00 00 00 00 01 00 00 00",
            INVALID_CDB,
        ),
        c("touch nexus 1", "00 00 00 00 00 00", GOOD).who(1),
        step("reset", Step::LuReset, 0),
        c(
            "REPORT LUNS not blocked",
            "a0 00 00 00 00 00 00 00 01 00 00 00",
            GOOD,
        )
        .who(1),
        c("REQUEST SENSE reports UA", "03 00 00 00 12 00", GOOD)
            .who(1)
            .data("70 00 06 00 00 00 00 0a 00 00 00 00 29 03"),
        c("and clears it", "00 00 00 00 00 00", GOOD).who(1),
        step("nexus gone", Step::NexusGone, 0),
        c("forgotten UA", "00 00 00 00 00 00", GOOD),
    ]);
}

#[test]
fn rsoc_lists_every_table_entry() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = target();
    let req = ScsiRequest {
        lun: 0,
        cdb: Bytes::from(hex("a3 0c 80 00 00 00 00 01 00 00 00 00")),
        data_out: Bytes::new(),
        expected_len: 65536,
        read: true,
        write: false,
        attr: TaskAttr::Simple,
    };
    let r = rt.block_on(t.execute(&nexus(0), req));
    let d = &r.data_in;
    let len = u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize;
    assert_eq!(len, table::COMMANDS.len() * 20);
    assert_eq!(d.len(), len + 4);
    for (i, spec) in table::COMMANDS.iter().enumerate() {
        let e = &d[4 + 20 * i..];
        assert_eq!(e[0], spec.opcode);
        assert_eq!(
            usize::from(u16::from_be_bytes([e[6], e[7]])),
            spec.usage.len()
        );
    }
}

#[test]
fn capacity_change_is_announced() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let t = target();
    let tur = || ScsiRequest {
        lun: 0,
        cdb: Bytes::from_static(&[0; 6]),
        data_out: Bytes::new(),
        expected_len: 0,
        read: false,
        write: false,
        attr: TaskAttr::Simple,
    };
    assert_eq!(
        rt.block_on(t.execute(&nexus(0), tur())).status,
        ScsiStatus::Good
    );
    t.capacity_changed(0);
    let r = rt.block_on(t.execute(&nexus(0), tur()));
    let s = r.sense.unwrap();
    assert_eq!((s[2], s[12], s[13]), (6, 0x2a, 0x09));
    t.target_reset();
    let r = rt.block_on(t.execute(&nexus(0), tur()));
    assert_eq!(r.sense.unwrap()[12], 0x29);
    assert!(t.has_lun(1) && !t.has_lun(2));
    assert_eq!(t.luns(), vec![0, 1]);
}

#[test]
fn every_table_cdb_parses() {
    for spec in table::COMMANDS {
        let mut cdb = spec.usage.to_vec();
        cdb[0] = spec.opcode;
        if let Some(sa) = spec.service_action {
            cdb[1] = sa;
        }
        assert_eq!(parse_cdb_for_fuzz(&cdb), Ok(spec.name));
    }
}

fn cdb_strategy() -> impl Strategy<Value = Vec<u8>> {
    let opcodes: Vec<u8> = table::COMMANDS.iter().map(|c| c.opcode).collect();
    (
        prop_oneof![proptest::sample::select(opcodes), any::<u8>()],
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(op, mut rest)| {
            rest.insert(0, op);
            rest
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn execute_never_panics(
        cdb in cdb_strategy(),
        data_out in proptest::collection::vec(any::<u8>(), 0..1100),
        expected_len in prop_oneof![Just(0u32), 0u32..70000, any::<u32>()],
        lun in 0u64..3,
        who in 0usize..3,
    ) {
        let _ = parse_cdb_for_fuzz(&cdb);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let t = target();
        let req = ScsiRequest {
            lun,
            cdb: Bytes::from(cdb),
            data_out: Bytes::from(data_out),
            expected_len,
            read: true,
            write: true,
            attr: TaskAttr::Simple,
        };
        let r = rt.block_on(t.execute(&nexus(who), req));
        prop_assert!(r.data_in.len() <= expected_len as usize);
        prop_assert_eq!(r.status == ScsiStatus::CheckCondition, r.sense.is_some());
    }
}

/// Records the nexuses a PREEMPT AND ABORT asks the transport to abort.
#[derive(Default)]
struct RecordingAborter {
    calls: parking_lot::Mutex<Vec<(String, u64, Vec<usize>)>>,
}

impl TaskAborter for RecordingAborter {
    fn abort_tasks(&self, target_name: &str, lun: u64, nexus_matches: &dyn Fn(&ItNexus) -> bool) {
        let hit = (0..4).filter(|who| nexus_matches(&nexus(*who))).collect();
        self.calls.lock().push((target_name.to_string(), lun, hit));
    }
}

#[test]
fn preempt_and_abort_aborts_only_the_preempted_nexus() {
    let t = target();
    let aborter = Arc::new(RecordingAborter::default());
    let weak: std::sync::Weak<dyn TaskAborter> = Arc::downgrade(&aborter) as _;
    t.set_task_aborter(weak);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let exec = |who: usize, cdb: &str, out: Vec<u8>| {
        let req = ScsiRequest {
            lun: 0,
            cdb: Bytes::from(hex(cdb)),
            expected_len: out.len() as u32,
            data_out: Bytes::from(out),
            read: false,
            write: true,
            attr: TaskAttr::Simple,
        };
        rt.block_on(t.execute(&nexus(who), req)).status
    };
    // Clear the power-on state, then: 1 and 2 register, 1 reserves (WE-RO).
    for who in [1, 2] {
        let _ = exec(who, "00 00 00 00 00 00", vec![]);
        assert_eq!(
            exec(
                who,
                "5f 00 00 00 00 00 00 00 18 00",
                pr_params(0, 0x10 + who as u64, 0)
            ),
            ScsiStatus::Good
        );
    }
    assert_eq!(
        exec(1, "5f 01 05 00 00 00 00 00 18 00", pr_params(0x11, 0, 0)),
        ScsiStatus::Good
    );
    // PREEMPT (plain) aborts nothing.
    assert_eq!(
        exec(2, "5f 04 05 00 00 00 00 00 18 00", pr_params(0x12, 0x11, 0)),
        ScsiStatus::Good
    );
    assert!(
        aborter.calls.lock().is_empty(),
        "PREEMPT must not abort tasks"
    );
    // 1 registers again (after its REGISTRATIONS PREEMPTED unit attention);
    // 2 holds; PREEMPT AND ABORT of 1's key aborts 1's tasks only.
    assert_eq!(
        exec(1, "00 00 00 00 00 00", vec![]),
        ScsiStatus::CheckCondition
    );
    assert_eq!(
        exec(1, "5f 00 00 00 00 00 00 00 18 00", pr_params(0, 0x11, 0)),
        ScsiStatus::Good
    );
    assert_eq!(
        exec(2, "5f 05 05 00 00 00 00 00 18 00", pr_params(0x12, 0x11, 0)),
        ScsiStatus::Good
    );
    let calls = aborter.calls.lock().clone();
    assert_eq!(
        calls,
        vec![("iqn.2024-01.test:target".to_string(), 0, vec![1])]
    );
}
