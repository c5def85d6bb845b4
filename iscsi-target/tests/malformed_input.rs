//! Malformed and hostile input against the real `weft-gateway` binary over
//! loopback: each case checks the RFC 7143 answer, then that a session
//! opened beforehand still writes and reads correctly (the gateway keeps
//! serving everyone else and the process stays up).

mod common;

use bytes::Bytes;
use common::*;
use iscsi_target::login::text;
use iscsi_target::pdu::{Opcode, Pdu};
use std::time::Duration;

/// Login status codes (RFC 7143 §11.13.5).
const INITIATOR_ERROR: u16 = 0x0200;
const NOT_FOUND: u16 = 0x0203;
const UNSUPPORTED_VERSION: u16 = 0x0205;
const MISSING_PARAMETER: u16 = 0x0207;
const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
const INVALID_DURING_LOGIN: u16 = 0x020b;

/// Reject reasons (RFC 7143 §11.17.1).
const REJECT_DATA_DIGEST_ERROR: u8 = 0x02;
const REJECT_PROTOCOL_ERROR: u8 = 0x04;

const CHECK_CONDITION: u8 = 0x02;
const ILLEGAL_REQUEST: u8 = 0x05;

/// Asserts `p` is a Reject with `reason` whose data segment is `header`
/// (RFC 7143 §11.17: the complete header of the bad PDU).
fn assert_reject(p: &Pdu, reason: u8, header: &[u8]) {
    assert_eq!(
        p.opcode(),
        Some(Opcode::Reject),
        "expected a Reject, got {p:?}"
    );
    assert_eq!(p.flags(), 0x80, "Reject flags");
    assert_eq!(p.bhs[2], reason, "Reject reason");
    assert_eq!(p.itt(), RESERVED_TAG, "Reject ITT");
    assert_eq!(
        &p.data[..],
        header,
        "Reject must carry the rejected PDU's header"
    );
}

fn recv(c: &mut Client, what: &str) -> Pdu {
    c.recv().unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// A NOP-Out ping (immediate) carrying `data`.
fn nop_out(c: &Client, itt: u32, data: &[u8]) -> Pdu {
    let mut p = Pdu::new(Opcode::NopOut);
    p.bhs[0] |= 0x40;
    p.set_flags(0x80)
        .set_itt(itt)
        .set_word20(RESERVED_TAG)
        .set_word24(c.cmd_sn)
        .set_word28(c.exp_stat_sn);
    p.set_data(Bytes::copy_from_slice(data));
    p
}

fn assert_nop_in_echo(p: &Pdu, itt: u32, data: &[u8]) {
    assert_eq!(
        p.opcode(),
        Some(Opcode::NopIn),
        "expected NOP-In, got {p:?}"
    );
    assert_eq!(p.itt(), itt, "NOP-In must echo the ITT");
    assert_eq!(
        p.ttt(),
        RESERVED_TAG,
        "NOP-In answering a ping has TTT 0xffffffff"
    );
    assert_eq!(&p.data[..], data, "NOP-In must echo the ping data");
}

// ---------------------------------------------------------------- framing

#[test]
fn truncated_bhs_then_eof_closes_connection() {
    let mut f = Fixture::start();
    let mut c = f.client("truncated-bhs", 1);
    let tur = c.scsi_pdu(7, &cdb16(&[0; 6]), false, false, 0, &[]);
    let wire = c.wire(&tur);
    c.send_raw(&wire[..24]);
    c.shutdown_write();
    c.expect_closed("half a BHS then EOF");
    f.assert_still_serving();
}

#[test]
fn truncated_data_segment_then_eof_closes_connection() {
    let mut f = Fixture::start();
    let mut c = f.client("truncated-data", 1);
    let data = pattern(1, 8);
    let itt = c.alloc_itt();
    let cmd = c.scsi_pdu(
        itt,
        &write10_cdb(3000, 8),
        false,
        true,
        data.len() as u32,
        &data,
    );
    let wire = c.wire(&cmd);
    assert_eq!(wire.len(), 48 + 4096);
    c.send_raw(&wire[..48 + 2048]);
    c.shutdown_write();
    c.expect_closed("half a data segment then EOF");
    f.assert_still_serving();
    // The half-received WRITE never reached the LUN.
    let r = f.bystander.read10(3000, 8);
    assert_eq!(r.status, 0);
    assert!(
        r.data.iter().all(|&b| b == 0),
        "a truncated WRITE changed the LUN"
    );
}

#[test]
fn oversized_data_segment_is_rejected_then_closed() {
    let mut f = Fixture::start();
    let mut c = f.client("oversized", 1);
    // Exactly MaxRecvDataSegmentLength (262144) of immediate data is fine.
    c.write_read_check(4000, MRDSL_BYTES / BLOCK_BYTES, 42);
    // One byte more: the header claims 262145 bytes; nothing follows it.
    // session::Connection::handle_decode_error answers DataSegmentTooLong
    // with a Reject (Protocol Error) carrying the header, then closes.
    let itt = c.alloc_itt();
    let mut cmd = c.scsi_pdu(itt, &write10_cdb(4000, 513), false, true, 513 * 512, &[]);
    let len = MRDSL_BYTES + 1;
    cmd.bhs[5] = (len >> 16) as u8;
    cmd.bhs[6] = (len >> 8) as u8;
    cmd.bhs[7] = len as u8;
    c.send_raw(&cmd.bhs);
    let p = recv(&mut c, "answer to an oversized data segment");
    assert_reject(&p, REJECT_PROTOCOL_ERROR, &cmd.bhs);
    c.expect_closed("after the Reject of an oversized data segment");
    f.assert_still_serving();
}

#[test]
fn bad_header_digest_closes_without_response() {
    let mut f = Fixture::start();
    let mut c = Client::login(&f.gw, &LoginOptions::new("bad-hd", 1).digests(true, false));
    // A well-formed ping works with header digests on.
    let ping = nop_out(&c, 0x51, b"hello");
    c.send(&ping);
    let p = recv(&mut c, "answer to a good ping");
    assert_nop_in_echo(&p, 0x51, b"hello");
    // The same ping with one byte of its header digest flipped.
    let ping = nop_out(&c, 0x52, b"hello");
    let mut wire = c.wire(&ping).to_vec();
    wire[48] ^= 0x01;
    c.send_raw(&wire);
    c.expect_closed("PDU with a bad header digest");
    f.assert_still_serving();
}

#[test]
fn bad_data_digest_on_immediate_data_is_rejected_then_closed() {
    let mut f = Fixture::start();
    let mut c = Client::login(&f.gw, &LoginOptions::new("bad-dd", 1).digests(true, true));
    // Digests work for a correct WRITE/READ.
    c.write_read_check(5000, 8, 5);
    let data = pattern(6, 8);
    let itt = c.alloc_itt();
    let cmd = c.scsi_pdu(
        itt,
        &write10_cdb(20_000, 8),
        false,
        true,
        data.len() as u32,
        &data,
    );
    let mut wire = c.wire(&cmd).to_vec();
    assert_eq!(wire.len(), 48 + 4 + 4096 + 4);
    let last = wire.len() - 1;
    wire[last] ^= 0x80; // in the data digest
    c.send_raw(&wire);
    let p = recv(&mut c, "answer to a bad data digest");
    assert_reject(&p, REJECT_DATA_DIGEST_ERROR, &cmd.bhs);
    c.expect_closed("after the Reject of a data digest error");
    f.assert_still_serving();
    let r = f.bystander.read10(20_000, 8);
    assert_eq!(r.status, 0);
    assert!(
        r.data.iter().all(|&b| b == 0),
        "a WRITE with a bad data digest changed the LUN"
    );
}

// ---------------------------------------------------------------- login

/// Connects and passes the security stage as `name`; the next request is
/// in the operational stage.
fn after_security(f: &Fixture, name: &str) -> Client {
    let mut c = Client::connect(&f.gw);
    c.isid = LoginOptions::new(name, 1).isid;
    let security = text::encode(&[
        (
            "InitiatorName",
            format!("iqn.2026-11.org.weft.test:{name}").as_str(),
        ),
        ("TargetName", TARGET_IQN),
        ("SessionType", "Normal"),
        ("AuthMethod", "None"),
    ]);
    let resp = c.login_exchange(0x81, security);
    assert_eq!(login_status(&resp), 0);
    c
}

/// Sends operational-stage text (T=1, NSG=3) and returns the response.
fn operational(c: &mut Client, data: Bytes) -> Pdu {
    c.login_exchange(0x87, data)
}

#[test]
fn illegal_key_values_are_answered_with_reject_or_not_understood() {
    let mut f = Fixture::start();
    let cases: &[(&str, &str, &str)] = &[
        ("MaxBurstLength", "abc", "Reject"),
        // Below the 512-byte minimum of RFC 7143 §13.12.
        ("MaxRecvDataSegmentLength", "1", "Reject"),
        ("Foo", "1", "NotUnderstood"),
    ];
    for (i, (k, v, want)) in cases.iter().enumerate() {
        let mut c = after_security(&f, &format!("bad-value-{i}"));
        let resp = operational(&mut c, text::encode(&[(*k, *v)]));
        assert_eq!(login_status(&resp), 0, "{k}={v}: the login goes on");
        assert_eq!(key(&keys(&resp), k), Some(*want), "{k}={v}");
        assert_eq!(
            resp.flags() & 0x8f,
            0x87,
            "{k}={v}: login still reaches full feature phase"
        );
    }
    f.assert_still_serving();
}

#[test]
fn malformed_login_text_fails_with_initiator_error() {
    let mut f = Fixture::start();
    let cases: &[(&str, &[u8])] = &[
        ("key without '='", b"MaxBurstLength\0"),
        (
            "duplicate key",
            b"MaxBurstLength=65536\0MaxBurstLength=131072\0",
        ),
    ];
    for (i, (what, data)) in cases.iter().enumerate() {
        let mut c = after_security(&f, &format!("bad-text-{i}"));
        let resp = operational(&mut c, Bytes::from_static(data));
        assert_eq!(login_status(&resp), INITIATOR_ERROR, "{what}");
        c.expect_closed(what);
    }
    f.assert_still_serving();
}

fn first_login_text(initiator: Option<&str>, target: &str) -> Bytes {
    let mut pairs = Vec::new();
    if let Some(i) = initiator {
        pairs.push(("InitiatorName", i));
    }
    pairs.push(("TargetName", target));
    pairs.push(("SessionType", "Normal"));
    pairs.push(("AuthMethod", "None"));
    text::encode(&pairs)
}

/// Sends `req` as a first login request on a new connection; asserts a
/// Login Response with `status` (echoing the ITT), then connection close.
fn login_fails(f: &Fixture, what: &str, req: Pdu, status: u16) {
    let mut c = Client::connect(&f.gw);
    c.send(&req);
    let resp = recv(&mut c, what);
    assert_eq!(
        resp.opcode(),
        Some(Opcode::LoginResponse),
        "{what}: {resp:?}"
    );
    assert_eq!(login_status(&resp), status, "{what}");
    assert_eq!(resp.itt(), req.itt(), "{what}: ITT echoed");
    c.expect_closed(what);
}

#[test]
fn logins_out_of_order_or_invalid_fail_with_the_rfc_status() {
    let mut f = Fixture::start();
    let isid = [0x80, 0, 0, 0, 0x10, 0x01];
    let good = || first_login_text(Some("iqn.2026-11.org.weft.test:order"), TARGET_IQN);

    // CSG=1 (operational, T=0) accepted, then back to CSG=0.
    let mut c = Client::connect(&f.gw);
    let no_auth = text::encode(&[
        ("InitiatorName", "iqn.2026-11.org.weft.test:order"),
        ("TargetName", TARGET_IQN),
        ("SessionType", "Normal"),
    ]);
    c.send(&login_request(0x04, isid, 0, 1, 0, no_auth));
    let resp = recv(&mut c, "CSG=1 first");
    assert_eq!(
        login_status(&resp),
        0,
        "starting in the operational stage is allowed"
    );
    let back = login_request(
        0x81,
        isid,
        0,
        1,
        c.exp_stat_sn,
        text::encode(&[("AuthMethod", "None")]),
    );
    c.send(&back);
    let resp = recv(&mut c, "CSG=0 after CSG=1");
    assert_eq!(resp.opcode(), Some(Opcode::LoginResponse));
    assert_eq!(login_status(&resp), INITIATOR_ERROR, "CSG going backwards");
    c.expect_closed("CSG going backwards");

    // T and C both set.
    login_fails(
        &f,
        "T and C",
        login_request(0xc1, isid, 0, 1, 0, good()),
        INITIATOR_ERROR,
    );
    // NSG=2 (reserved stage).
    login_fails(
        &f,
        "NSG=2",
        login_request(0x82, isid, 0, 1, 0, good()),
        INITIATOR_ERROR,
    );
    // Version-min 1 (and version-max 1): RFC 7143 is version 0.
    let mut v = login_request(0x81, isid, 0, 1, 0, good());
    v.bhs[2] = 1;
    v.bhs[3] = 1;
    login_fails(&f, "version-min 1", v, UNSUPPORTED_VERSION);
    // A target this gateway does not serve.
    let unknown = first_login_text(
        Some("iqn.2026-11.org.weft.test:order"),
        "iqn.2026-11.org.weft:nosuch",
    );
    login_fails(
        &f,
        "unknown target",
        login_request(0x81, isid, 0, 1, 0, unknown),
        NOT_FOUND,
    );
    // No InitiatorName.
    let anonymous = first_login_text(None, TARGET_IQN);
    login_fails(
        &f,
        "missing InitiatorName",
        login_request(0x81, isid, 0, 1, 0, anonymous),
        MISSING_PARAMETER,
    );

    // A non-zero TSIH that names no live session.
    let stale = login_request(0x81, isid, 0x7777, 1, 0, good());
    login_fails(&f, "unknown TSIH", stale, SESSION_DOES_NOT_EXIST);

    f.assert_still_serving();
}

#[test]
fn scsi_command_before_login_fails_with_invalid_during_login() {
    let mut f = Fixture::start();
    let mut c = Client::connect(&f.gw);
    let cmd = c.scsi_pdu(0x77, &cdb16(&[0; 6]), false, false, 0, &[]);
    c.send(&cmd);
    let resp = recv(&mut c, "SCSI command as first PDU");
    assert_eq!(resp.opcode(), Some(Opcode::LoginResponse), "{resp:?}");
    assert_eq!(login_status(&resp), INVALID_DURING_LOGIN);
    assert_eq!(resp.itt(), 0x77);
    c.expect_closed("after a SCSI command during login");
    f.assert_still_serving();
}

// ---------------------------------------------------------------- full feature phase

#[test]
fn out_of_window_cmd_sn_is_silently_ignored() {
    let mut f = Fixture::start();
    let mut c = f.client("window", 1);
    assert_eq!(c.test_unit_ready().status, 0);
    let (exp, max) = (c.exp_cmd_sn, c.max_cmd_sn);
    assert_eq!(c.cmd_sn, exp);
    // Far above MaxCmdSN.
    c.cmd_sn = max.wrapping_add(1000);
    let above = c.scsi_pdu(0x100, &cdb16(&[0; 6]), false, false, 0, &[]);
    // Below ExpCmdSN (already used).
    c.cmd_sn = exp.wrapping_sub(1);
    let below = c.scsi_pdu(0x101, &cdb16(&[0; 6]), false, false, 0, &[]);
    c.send(&above);
    c.send(&below);
    c.expect_silence(Duration::from_secs(1), "commands outside the CmdSN window");
    // The next in-window command is answered normally.
    c.cmd_sn = exp;
    assert_eq!(c.test_unit_ready().status, 0);
    assert_eq!(
        c.exp_cmd_sn,
        exp.wrapping_add(1),
        "ignored commands must not advance ExpCmdSN"
    );
    c.write_read_check(6000, 8, 7);
    f.assert_still_serving();
}

#[test]
fn cdbs_with_bad_fields_get_check_condition() {
    let mut f = Fixture::start();
    let mut c = f.client("bad-cdb", 1);

    let r = c.scsi(&cdb16(&[0xff]), 0, &[]);
    assert_eq!(r.status, CHECK_CONDITION, "opcode 0xFF");
    assert_eq!(
        r.key_asc_ascq(),
        Some((ILLEGAL_REQUEST, 0x20, 0x00)),
        "INVALID COMMAND OPERATION CODE"
    );

    let last = (LUN_BLOCKS - 1) as u32;
    assert_eq!(c.read10(last, 1).status, 0, "the last block is readable");
    for (lba, blocks) in [(last + 1, 1u16), (last, 2)] {
        let r = c.read10(lba, blocks);
        assert_eq!(r.status, CHECK_CONDITION, "READ(10) LBA {lba} x {blocks}");
        assert_eq!(
            r.key_asc_ascq(),
            Some((ILLEGAL_REQUEST, 0x21, 0x00)),
            "LBA OUT OF RANGE"
        );
        assert!(r.data.is_empty());
    }

    let ok = c.scsi(&cdb16(&[0x12, 0x00, 0x00, 0x00, 0xff, 0x00]), 255, &[]);
    assert_eq!(ok.status, 0, "standard INQUIRY");
    let r = c.scsi(&cdb16(&[0x12, 0x00, 0x80, 0x00, 0xff, 0x00]), 255, &[]);
    assert_eq!(r.status, CHECK_CONDITION, "INQUIRY EVPD=0 page 0x80");
    assert_eq!(
        r.key_asc_ascq(),
        Some((ILLEGAL_REQUEST, 0x24, 0x00)),
        "INVALID FIELD IN CDB"
    );
    let s = r.sense.unwrap();
    assert!(
        s.len() >= 18,
        "sense of {} bytes has no sense-key-specific field",
        s.len()
    );
    assert_eq!(s[0] & 0x7f, 0x70, "fixed format, current error");
    assert_eq!(s[15] & 0xc0, 0xc0, "SKSV and C/D (error in the CDB)");
    assert_eq!(
        u16::from_be_bytes([s[16], s[17]]),
        2,
        "field pointer: CDB byte 2"
    );
    assert_eq!(
        s[15] & 0x0f,
        0x0f,
        "BPV with bit pointer 7 (the page code's top bit)"
    );

    c.write_read_check(7000, 8, 8);
    f.assert_still_serving();
}

#[test]
fn snack_at_erl0_and_target_opcodes_are_rejected() {
    let mut f = Fixture::start();
    let mut c = f.client("reject", 1);

    // Data/R2T SNACK (type 0): ErrorRecoveryLevel 0 was negotiated.
    let mut snack = Pdu::new(Opcode::SnackRequest);
    snack
        .set_flags(0x80)
        .set_itt(0x200)
        .set_word20(RESERVED_TAG)
        .set_word28(c.exp_stat_sn);
    c.send(&snack);
    let p = recv(&mut c, "SNACK at ERL 0");
    assert_reject(&p, REJECT_PROTOCOL_ERROR, &snack.bhs);
    assert_eq!(
        c.test_unit_ready().status,
        0,
        "the connection lives on after the Reject"
    );

    // A SCSI Response (0x21) is a target opcode.
    let mut bogus = Pdu::new(Opcode::ScsiResponse);
    bogus
        .set_flags(0x80)
        .set_itt(0x201)
        .set_word24(c.cmd_sn)
        .set_word28(c.exp_stat_sn);
    assert_eq!(bogus.bhs[0], 0x21);
    c.send(&bogus);
    let p = recv(&mut c, "target opcode 0x21 from the initiator");
    assert_reject(&p, REJECT_PROTOCOL_ERROR, &bogus.bhs);

    c.write_read_check(8000, 8, 9);
    f.assert_still_serving();
}

#[test]
fn nop_out_is_answered_while_a_large_read_is_outstanding() {
    let mut f = Fixture::start();
    let mut c = f.client("nop", 1);
    const BLOCKS: u16 = 16384; // 8 MiB
    let data = pattern(10, usize::from(BLOCKS));
    let w = c.write10(30_000, &data);
    assert_eq!((w.status, w.sense), (0, None), "8 MiB WRITE(10) with R2Ts");

    let read_itt = c.alloc_itt();
    let read = c.scsi_pdu(
        read_itt,
        &read10_cdb(30_000, BLOCKS),
        true,
        false,
        data.len() as u32,
        &[],
    );
    let ping_data = b"ping payload of 23 byte";
    let ping = nop_out(&c, 0xabc, ping_data);
    // Both in one write: the ping arrives while the READ is running.
    let mut wire = c.wire(&read).to_vec();
    wire.extend_from_slice(&c.wire(&ping));
    c.send_raw(&wire);

    let mut got = vec![0u8; data.len()];
    let mut nop_seen = false;
    loop {
        let p = recv(&mut c, "READ data or NOP-In");
        match p.opcode() {
            Some(Opcode::NopIn) => {
                assert!(!nop_seen, "two NOP-Ins for one ping");
                assert_nop_in_echo(&p, 0xabc, ping_data);
                nop_seen = true;
            }
            Some(Opcode::DataIn) => {
                assert_eq!(p.itt(), read_itt);
                let off = p.buffer_offset() as usize;
                got[off..off + p.data.len()].copy_from_slice(&p.data);
                if p.flags() & 0x01 != 0 {
                    assert_eq!(p.bhs[3], 0, "READ status");
                    assert!(nop_seen, "the NOP-In waited for the whole 8 MiB READ");
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(got == data, "8 MiB READ returned other data than written");
    f.assert_still_serving();
}

#[test]
fn session_reinstatement_closes_the_old_connection() {
    let mut f = Fixture::start();
    let opts = LoginOptions::new("reinstate", 7);
    let mut old = Client::login(&f.gw, &opts);
    old.write_read_check(9000, 8, 11);
    // Same InitiatorName and ISID, TSIH 0: reinstatement (RFC 7143 §6.3.5).
    let mut new = Client::login(&f.gw, &opts);
    old.expect_closed("the reinstated session's old connection");
    new.write_read_check(9000, 8, 12);
    f.assert_still_serving();
}

#[test]
fn twenty_concurrent_sessions_keep_their_data_apart() {
    let mut f = Fixture::start();
    const SESSIONS: u16 = 20;
    const BLOCKS: usize = 128;
    let lba = |i: u16| 40_000 + u32::from(i) * 256;
    let gw = &f.gw;
    std::thread::scope(|s| {
        for i in 0..SESSIONS {
            s.spawn(move || {
                let mut c = Client::login(gw, &LoginOptions::new("concurrent", i));
                for round in 0..3 {
                    c.write_read_check(lba(i), BLOCKS, 100 + u32::from(i) * 10 + round);
                }
            });
        }
    });
    // Each range holds its session's last write.
    for i in 0..SESSIONS {
        let r = f.bystander.read10(lba(i), BLOCKS as u16);
        assert_eq!(r.status, 0);
        assert!(
            r.data == pattern(100 + u32::from(i) * 10 + 2, BLOCKS),
            "session {i}'s range"
        );
    }
    f.assert_still_serving();
}
