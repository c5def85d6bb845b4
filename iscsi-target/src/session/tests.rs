//! Protocol tests: the connection state machine driven by scripted PDUs on a
//! virtual clock, no sockets.

use super::*;
use crate::login::chap::ChapConfig;
use crate::login::TargetAuth;
use crate::scsi::Residual;

struct Dir;

impl Directory for Dir {
    fn target(&self, name: &str) -> Option<TargetAuth> {
        (name == "iqn.t").then(|| TargetAuth {
            name: name.into(),
            alias: None,
            chap: ChapConfig::default(),
            allowed_initiators: vec![],
        })
    }
    fn discovery_chap(&self) -> ChapConfig {
        ChapConfig::default()
    }
    fn send_targets(&self, _: &str) -> Vec<(String, Vec<String>)> {
        vec![
            (
                "iqn.t".into(),
                vec!["127.0.0.1:3260,1".into(), "10.0.0.1:3260,1".into()],
            ),
            ("iqn.u".into(), vec!["127.0.0.1:3260,1".into()]),
        ]
    }
    fn session_exists(&self, _: &str, _: [u8; 6], _: u16) -> bool {
        false
    }
}

struct Rng0;
impl ChallengeSource for Rng0 {
    fn challenge(&mut self) -> (u8, [u8; 16]) {
        (0, [1; 16])
    }
}

struct Harness {
    conn: Connection,
    now: Instant,
    cmd_sn: u32,
}

impl Harness {
    fn login(keys: &[(&str, &str)]) -> Harness {
        let now = Instant::now();
        let cfg = ConnectionConfig {
            directory: Arc::new(Dir),
            tpgt: 1,
            offer: TargetOffer::default(),
            tsih: 9,
        };
        let mut h = Harness {
            conn: Connection::new(cfg, now),
            now,
            cmd_sn: 100,
        };
        let mut all = vec![("InitiatorName", "iqn.i"), ("TargetName", "iqn.t")];
        all.extend_from_slice(keys);
        let mut p = Pdu::new(Opcode::LoginRequest);
        p.bhs[0] |= 0x40;
        p.bhs[1] = 0x80 | (1 << 2) | 3;
        p.set_word24(h.cmd_sn).set_word28(500);
        p.set_data(text::encode(&all));
        h.send(p);
        let resp = h.recv().expect("login response");
        assert_eq!(resp.opcode(), Some(Opcode::LoginResponse));
        assert_eq!(
            u16::from_be_bytes([resp.bhs[36], resp.bhs[37]]),
            0,
            "login succeeds"
        );
        assert_eq!(
            resp.word24(),
            500,
            "StatSN starts at the initiator's ExpStatSN"
        );
        assert!(matches!(h.conn.poll_event(), Some(Event::LoggedIn(_))));
        h
    }

    fn send(&mut self, p: Pdu) {
        self.conn.handle_pdu(p, self.now, &mut Rng0);
    }

    fn recv(&mut self) -> Option<Pdu> {
        self.conn.poll_transmit()
    }

    fn drain(&mut self) -> Vec<Pdu> {
        std::iter::from_fn(|| self.conn.poll_transmit()).collect()
    }

    fn command(&mut self, itt: u32, cdb: &[u8], flags: u8, edtl: u32, data: &[u8]) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        p.set_flags(flags)
            .set_itt(itt)
            .set_word20(edtl)
            .set_word24(self.cmd_sn);
        self.cmd_sn += 1;
        p.bhs[32..32 + cdb.len()].copy_from_slice(cdb);
        p.set_data(Bytes::copy_from_slice(data));
        p
    }

    fn execute_event(&mut self) -> (u32, ScsiRequest) {
        loop {
            match self.conn.poll_event() {
                Some(Event::Execute { itt, request }) => return (itt, request),
                Some(_) => continue,
                None => panic!("no Execute event"),
            }
        }
    }
}

fn good(data: &[u8], residual: Residual) -> ScsiResponse {
    ScsiResponse {
        status: ScsiStatus::Good,
        data_in: Bytes::copy_from_slice(data),
        sense: None,
        residual,
    }
}

const READ10_8: [u8; 10] = [0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0];
const WRITE10_8: [u8; 10] = [0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0];

#[test]
fn read_is_split_into_data_in_with_collapsed_status() {
    let mut h = Harness::login(&[
        ("MaxRecvDataSegmentLength", "1024"),
        ("MaxBurstLength", "2048"),
    ]);
    let cmd = h.command(1, &READ10_8, 0x80 | 0x40 | 1, 8192, &[]);
    h.send(cmd);
    let (itt, req) = h.execute_event();
    assert_eq!((itt, req.expected_len, req.read), (1, 8192, true));
    let data: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    h.conn
        .complete(1, good(&data, Residual::Underflow(4096)), h.now);
    let pdus = h.drain();
    assert_eq!(pdus.len(), 4, "4 KiB in 1 KiB segments");
    for (i, p) in pdus.iter().enumerate() {
        assert_eq!(p.opcode(), Some(Opcode::DataIn));
        assert_eq!(p.data_sn(), i as u32);
        assert_eq!(p.buffer_offset(), i as u32 * 1024);
        assert_eq!(&p.data[..], &data[i * 1024..(i + 1) * 1024]);
        // F at the end of each 2 KiB burst.
        assert_eq!(p.final_bit(), i % 2 == 1, "pdu {i}");
    }
    let last = &pdus[3];
    assert_eq!(last.flags() & 0x01, 0x01, "status in the last Data-In");
    assert_eq!(last.flags() & 0x02, 0x02, "underflow flag");
    assert_eq!(last.word44(), 4096, "residual count");
    assert_eq!(last.word24(), 501, "StatSN after the login response's 500");
    assert_eq!(
        last.word28(),
        101,
        "ExpCmdSN moved past the command (CmdSN 100)"
    );
}

#[test]
fn check_condition_goes_in_a_scsi_response_with_sense() {
    let mut h = Harness::login(&[]);
    let cmd = h.command(7, &[0xff; 10], 0x80 | 1, 0, &[]);
    h.send(cmd);
    h.execute_event();
    let sense = Bytes::from_static(&[0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0]);
    h.conn.complete(
        7,
        ScsiResponse {
            status: ScsiStatus::CheckCondition,
            data_in: Bytes::new(),
            sense: Some(sense.clone()),
            residual: Residual::None,
        },
        h.now,
    );
    let p = h.recv().unwrap();
    assert_eq!(p.opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(p.bhs[3], 0x02);
    assert_eq!(&p.data[..2], &(sense.len() as u16).to_be_bytes());
    assert_eq!(&p.data[2..], &sense[..]);
}

#[test]
fn write_collects_immediate_unsolicited_and_solicited_data() {
    // FirstBurstLength 1024: 512 immediate + 512 unsolicited, then R2Ts of
    // MaxBurstLength 1024 for the remaining 3 KiB, two at a time.
    let mut h = Harness::login(&[
        ("InitialR2T", "No"),
        ("ImmediateData", "Yes"),
        ("FirstBurstLength", "1024"),
        ("MaxBurstLength", "1024"),
        ("MaxOutstandingR2T", "2"),
    ]);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let cmd = h.command(3, &WRITE10_8, 0x20 | 1, 4096, &data[..512]);
    h.send(cmd);
    assert!(
        h.recv().is_none(),
        "no R2T while unsolicited data is still due"
    );
    let mut d = Pdu::new(Opcode::DataOut);
    d.set_flags(0x80)
        .set_itt(3)
        .set_word20(RESERVED_TAG)
        .set_word36(0)
        .set_word40(512);
    d.set_data(Bytes::copy_from_slice(&data[512..1024]));
    h.send(d);
    let r2ts = h.drain();
    assert_eq!(r2ts.len(), 2, "MaxOutstandingR2T");
    let mut expect_offset = 1024;
    let mut pending: VecDeque<Pdu> = r2ts.into();
    let mut sent = 0;
    while let Some(r2t) = pending.pop_front() {
        assert_eq!(r2t.opcode(), Some(Opcode::ReadyToTransfer));
        assert_eq!((r2t.buffer_offset(), r2t.word44()), (expect_offset, 1024));
        assert_eq!(r2t.word36(), sent, "R2TSN");
        let mut d = Pdu::new(Opcode::DataOut);
        let off = r2t.buffer_offset() as usize;
        d.set_flags(0x80)
            .set_itt(3)
            .set_word20(r2t.ttt())
            .set_word36(0)
            .set_word40(off as u32);
        d.set_data(Bytes::copy_from_slice(&data[off..off + 1024]));
        h.send(d);
        pending.extend(h.drain());
        expect_offset += 1024;
        sent += 1;
    }
    assert_eq!(sent, 3);
    let (itt, req) = h.execute_event();
    assert_eq!(itt, 3);
    assert_eq!(&req.data_out[..], &data[..]);
}

#[test]
fn data_out_out_of_sequence_ends_the_command_not_the_connection() {
    let mut h = Harness::login(&[("InitialR2T", "Yes"), ("ImmediateData", "No")]);
    let cmd = h.command(4, &WRITE10_8, 0x80 | 0x20 | 1, 4096, &[]);
    h.send(cmd);
    let r2t = h.recv().unwrap();
    let mut d = Pdu::new(Opcode::DataOut);
    d.set_flags(0x80)
        .set_itt(4)
        .set_word20(r2t.ttt())
        .set_word36(27)
        .set_word40(0);
    d.set_data(Bytes::from(vec![0u8; 4096]));
    h.send(d);
    let out = h.drain();
    assert_eq!(out[0].opcode(), Some(Opcode::Reject));
    assert_eq!(out[0].bhs[2], RejectReason::ProtocolError as u8);
    assert_eq!(out[1].opcode(), Some(Opcode::ScsiResponse));
    assert_eq!(out[1].bhs[3], ScsiStatus::CheckCondition as u8);
    assert!(!h.conn.is_closing());
}

#[test]
fn cmd_sn_orders_commands_and_ignores_those_outside_the_window() {
    let mut h = Harness::login(&[]);
    let tur = [0u8; 6];
    let first = h.command(10, &tur, 0x80, 0, &[]); // CmdSN 100
    let second = h.command(11, &tur, 0x80, 0, &[]); // CmdSN 101
    h.send(second);
    assert!(h.conn.poll_event().is_none(), "101 waits for 100");
    h.send(first);
    let order: Vec<u32> = std::iter::from_fn(|| match h.conn.poll_event() {
        Some(Event::Execute { itt, .. }) => Some(itt),
        _ => None,
    })
    .collect();
    assert_eq!(order, vec![10, 11]);
    let mut stale = h.command(12, &tur, 0x80, 0, &[]);
    stale.set_word24(50);
    h.send(stale);
    let mut far = h.command(13, &tur, 0x80, 0, &[]);
    far.set_word24(100_000);
    h.send(far);
    assert!(h.conn.poll_event().is_none(), "outside the window: ignored");
}

#[test]
fn max_cmd_sn_never_moves_backwards_and_window_bounds_in_flight() {
    let mut h = Harness::login(&[]);
    let _ = h.drain();
    let tur = [0u8; 6];
    let mut last_max = 0;
    for i in 0..40 {
        let c = h.command(100 + i, &tur, 0x80, 0, &[]);
        h.send(c);
        let mut nop = Pdu::new(Opcode::NopOut);
        nop.bhs[0] |= 0x40;
        nop.set_flags(0x80)
            .set_itt(1000 + i)
            .set_word20(RESERVED_TAG)
            .set_word24(h.cmd_sn);
        h.send(nop);
        let p = h.recv().unwrap();
        let max = p.word32();
        assert!(i == 0 || window::sn_le(last_max, max));
        last_max = max;
    }
    // 40 commands in flight, window 32: MaxCmdSN stopped growing.
    assert!(window::sn_lt(last_max, h.cmd_sn + 32));
}

#[test]
fn nop_out_is_answered_ahead_of_queued_data() {
    let mut h = Harness::login(&[("MaxRecvDataSegmentLength", "512")]);
    let _ = h.drain();
    let cmd = h.command(1, &READ10_8, 0x80 | 0x40 | 1, 65536, &[]);
    h.send(cmd);
    h.execute_event();
    h.conn
        .complete(1, good(&[0u8; 65536], Residual::None), h.now);
    let mut nop = Pdu::new(Opcode::NopOut);
    nop.bhs[0] |= 0x40;
    nop.set_flags(0x80)
        .set_itt(77)
        .set_word20(RESERVED_TAG)
        .set_word24(h.cmd_sn);
    nop.set_data(Bytes::from_static(b"ping"));
    h.send(nop);
    let p = h.recv().unwrap();
    assert_eq!(p.opcode(), Some(Opcode::NopIn));
    assert_eq!((p.itt(), &p.data[..]), (77, &b"ping"[..]));
    assert_eq!(h.drain().len(), 128, "then the 128 Data-In PDUs");
}

#[test]
fn idle_connection_is_pinged_and_dropped_when_silent() {
    let mut h = Harness::login(&[]);
    let _ = h.drain();
    let t0 = h.now;
    let deadline = h.conn.poll_timeout().unwrap();
    assert_eq!(
        deadline,
        t0 + Duration::from_millis(limits::NOP_IN_INTERVAL_MS)
    );
    h.conn.handle_timeout(deadline);
    let ping = h.recv().unwrap();
    assert_eq!(
        (ping.opcode(), ping.itt()),
        (Some(Opcode::NopIn), RESERVED_TAG)
    );
    assert_ne!(ping.ttt(), RESERVED_TAG);
    // Answered: no drop.
    let mut answer = Pdu::new(Opcode::NopOut);
    answer.bhs[0] |= 0x40;
    answer
        .set_flags(0x80)
        .set_itt(RESERVED_TAG)
        .set_word20(ping.ttt());
    h.now = deadline;
    h.send(answer);
    let next = h.conn.poll_timeout().unwrap();
    h.conn.handle_timeout(next);
    let ping2 = h.recv().unwrap();
    // Not answered: dropped after the timeout.
    h.conn
        .handle_timeout(next + Duration::from_millis(limits::NOP_IN_TIMEOUT_MS));
    assert!(
        h.conn.is_closing(),
        "unanswered ping {ping2:?} closes the connection"
    );
}

#[test]
fn abort_task_cancels_and_suppresses_the_result() {
    let mut h = Harness::login(&[]);
    let _ = h.drain();
    let cmd = h.command(5, &READ10_8, 0x80 | 0x40 | 1, 4096, &[]);
    h.send(cmd);
    h.execute_event();
    let mut tmf = Pdu::new(Opcode::TaskMgmtRequest);
    tmf.bhs[0] |= 0x40;
    tmf.set_flags(0x80 | 1)
        .set_itt(6)
        .set_word20(5)
        .set_word24(h.cmd_sn);
    h.send(tmf);
    assert!(matches!(h.conn.poll_event(), Some(Event::Abort(v)) if v == vec![5]));
    let r = h.recv().unwrap();
    assert_eq!((r.opcode(), r.bhs[2]), (Some(Opcode::TaskMgmtResponse), 0));
    h.conn
        .complete(5, good(&[0u8; 4096], Residual::None), h.now);
    assert!(h.recv().is_none(), "an aborted task answers nothing");
    // Unknown task, outside the window.
    let mut tmf = Pdu::new(Opcode::TaskMgmtRequest);
    tmf.bhs[0] |= 0x40;
    tmf.set_flags(0x80 | 1)
        .set_itt(8)
        .set_word20(999)
        .set_word24(h.cmd_sn)
        .set_word32(1);
    h.send(tmf);
    assert_eq!(
        h.recv().unwrap().bhs[2],
        TmfResponse::TaskDoesNotExist as u8
    );
}

#[test]
fn lun_reset_goes_to_the_driver() {
    let mut h = Harness::login(&[]);
    let _ = h.drain();
    let mut tmf = Pdu::new(Opcode::TaskMgmtRequest);
    tmf.bhs[0] |= 0x40;
    tmf.set_flags(0x80 | 5).set_itt(6).set_word24(h.cmd_sn);
    h.send(tmf);
    let Some(Event::Reset { itt, function, lun }) = h.conn.poll_event() else {
        panic!()
    };
    assert_eq!((itt, function, lun), (6, TmfFunction::LogicalUnitReset, 0));
    h.conn
        .tmf_done(itt, TmfResponse::FunctionComplete, function);
    assert_eq!(h.recv().unwrap().opcode(), Some(Opcode::TaskMgmtResponse));
}

#[test]
fn logout_answers_then_closes() {
    let mut h = Harness::login(&[]);
    let _ = h.drain();
    let mut p = Pdu::new(Opcode::LogoutRequest);
    p.bhs[0] |= 0x40;
    p.set_flags(0x80).set_itt(9).set_word24(h.cmd_sn);
    h.send(p);
    let r = h.recv().unwrap();
    assert_eq!(
        (r.opcode(), r.bhs[2], r.itt()),
        (Some(Opcode::LogoutResponse), 0, 9)
    );
    assert!(h.conn.is_closing());
}

#[test]
fn send_targets_in_a_normal_session_names_only_its_target() {
    let mut h = Harness::login(&[]);
    let _ = h.drain();
    let mut p = Pdu::new(Opcode::TextRequest);
    p.bhs[0] |= 0x40;
    p.set_flags(0x80)
        .set_itt(3)
        .set_word20(RESERVED_TAG)
        .set_word24(h.cmd_sn);
    p.set_data(text::encode(&[("SendTargets", "All")]));
    h.send(p);
    let r = h.recv().unwrap();
    let keys = text::parse(&r.data).unwrap();
    // "All" in a normal session is not allowed to reveal other targets.
    assert!(keys.iter().all(|(_, v)| v != "iqn.u"));
}

/// A connection logged in to a discovery session with `keys` besides the
/// initiator name and session type.
fn discovery_session(keys: &[(&str, &str)]) -> (Connection, Instant) {
    let now = Instant::now();
    let cfg = ConnectionConfig {
        directory: Arc::new(Dir),
        tpgt: 1,
        offer: TargetOffer::default(),
        tsih: 3,
    };
    let mut conn = Connection::new(cfg, now);
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.bhs[0] |= 0x40;
    p.bhs[1] = 0x80 | (1 << 2) | 3;
    let mut all = vec![("InitiatorName", "iqn.i"), ("SessionType", "Discovery")];
    all.extend_from_slice(keys);
    p.set_data(text::encode(&all));
    conn.handle_pdu(p, now, &mut Rng0);
    let r = conn.poll_transmit().expect("login response");
    assert_eq!(
        u16::from_be_bytes([r.bhs[36], r.bhs[37]]),
        0,
        "discovery login succeeds"
    );
    (conn, now)
}

#[test]
fn long_text_answers_continue_across_pdus() {
    let (mut conn, now) = discovery_session(&[("MaxRecvDataSegmentLength", "512")]);
    let mut t = Pdu::new(Opcode::TextRequest);
    t.bhs[0] |= 0x40;
    t.set_flags(0x80).set_itt(1).set_word20(RESERVED_TAG);
    // Pad the request with an unknown key so the answer exceeds 512 bytes.
    let filler = "x".repeat(200);
    t.set_data(text::encode(&[
        ("SendTargets", "All"),
        ("X-a", &filler),
        ("X-b", &filler),
        ("X-c", &filler),
    ]));
    conn.handle_pdu(t, now, &mut Rng0);
    let mut all = Vec::new();
    loop {
        let r = conn.poll_transmit().unwrap();
        assert!(r.data.len() <= 512);
        all.extend_from_slice(&r.data);
        if r.final_bit() {
            break;
        }
        assert_eq!(r.flags() & 0x40, 0x40, "C set while more follows");
        let mut more = Pdu::new(Opcode::TextRequest);
        more.bhs[0] |= 0x40;
        more.set_flags(0x80).set_itt(1).set_word20(r.ttt());
        conn.handle_pdu(more, now, &mut Rng0);
    }
    let keys = text::parse(&all).unwrap();
    let addrs: Vec<_> = keys.iter().filter(|(k, _)| k == "TargetAddress").collect();
    assert_eq!(addrs.len(), 3, "every portal of every target: {keys:?}");
    assert!(keys.iter().any(|(k, v)| k == "X-a" && v == "NotUnderstood"));
}

#[test]
fn scsi_command_in_discovery_session_is_rejected() {
    let (mut conn, now) = discovery_session(&[]);
    let mut c = Pdu::new(Opcode::ScsiCommand);
    c.set_flags(0x80).set_itt(1);
    conn.handle_pdu(c, now, &mut Rng0);
    let r = conn.poll_transmit().unwrap();
    assert_eq!(
        (r.opcode(), r.bhs[2]),
        (Some(Opcode::Reject), RejectReason::ProtocolError as u8)
    );
}

#[test]
fn lun_field_decoding() {
    assert_eq!(decode_lun(encode_lun(0)), 0);
    assert_eq!(decode_lun(encode_lun(255)), 255);
    assert_eq!(decode_lun(encode_lun(300)), 300);
    assert_eq!(decode_lun(0x0001_0000_0000_0000), 1);
    assert_eq!(
        decode_lun(0x0000_0000_0000_0001),
        u64::MAX,
        "trailing levels are not ours"
    );
    assert_eq!(decode_lun(0xc000_0000_0000_0000), u64::MAX);
}

#[test]
fn solicited_data_is_bounded_per_session() {
    let mut h = Harness::login(&[
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxBurstLength", "1048576"),
        ("MaxOutstandingR2T", "8"),
    ]);
    let _ = h.drain();
    let per_task: u32 = 4 << 20;
    let tasks = (limits::SESSION_SOLICITED_BYTES_MAX / u64::from(per_task)) as u32 + 2;
    let write16 = |blocks: u32| {
        let mut c = [0u8; 16];
        c[0] = 0x8a;
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    };
    for i in 0..tasks {
        let cmd = h.command(
            100 + i,
            &write16(per_task / 512),
            0x80 | 0x20 | 1,
            per_task,
            &[],
        );
        h.send(cmd);
    }
    let r2ts = h.drain();
    let asked: u64 = r2ts.iter().map(|p| u64::from(p.word44())).sum();
    assert_eq!(
        asked,
        limits::SESSION_SOLICITED_BYTES_MAX,
        "R2Ts stop at the bound"
    );
    let served: std::collections::BTreeSet<u32> = r2ts.iter().map(|p| p.itt()).collect();
    assert_eq!(served.len() as u32, tasks - 2, "two tasks wait for room");
    // Data for the first R2T frees room: a waiting task gets its R2T.
    let first = &r2ts[0];
    let mut d = Pdu::new(Opcode::DataOut);
    d.set_flags(0x80)
        .set_itt(first.itt())
        .set_word20(first.ttt())
        .set_word40(first.buffer_offset());
    d.set_data(Bytes::from(vec![0u8; first.word44() as usize]));
    h.send(d);
    let more = h.drain();
    assert!(!more.is_empty(), "room freed, more R2Ts");
    assert!(more
        .iter()
        .all(|p| p.opcode() == Some(Opcode::ReadyToTransfer)));
    let asked_now: u64 = more.iter().map(|p| u64::from(p.word44())).sum();
    assert_eq!(
        asked_now,
        u64::from(first.word44()),
        "exactly the freed room is asked for again"
    );
}
