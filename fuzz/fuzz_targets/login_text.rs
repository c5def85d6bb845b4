//! Login text, key negotiation, the login state machine and the connection
//! state machine, on arbitrary bytes. The property is that none of them
//! panics (plus a few cheap invariants noted inline).
//!
//! Input: byte 0 chooses the mode and the directory's CHAP settings.
//!   bits 0..=1  target CHAP: none, one-way, mutual, mutual + ACL
//!   bit 2       discovery sessions require CHAP
//!   bit 7       0: login mode, 1: connection mode
//!
//! Login mode: the rest is split at 0xff bytes (never part of UTF-8 text)
//! into chunks. Every chunk goes through `text::parse`; its values through
//! `parse_number` / `parse_binary`; its pairs through a fresh
//! `Negotiator::respond` for each `Phase` and through one negotiator that
//! lives across chunks. Each chunk is also one Login Request for one
//! `Login`: chunk[0] is BHS byte 1 (T, C, CSG, NSG), chunk[1] picks
//! odd header fields (see `login_pdu`), the rest is the data segment.
//!
//! Connection mode: byte 1 is a count k (mod 32), the next k bytes are a
//! control stream, and the rest is a PDU stream (decoded without digests,
//! up to 64 KiB data segments) fed to one `Connection`. Before PDU i the
//! control byte ctrl[i % k] advances the virtual clock and completes or
//! aborts outstanding commands (see `Control`).
#![no_main]

use bytes::{Bytes, BytesMut};
use iscsi_target::login::chap::{ChapConfig, ChapCredentials};
use iscsi_target::login::keys::{Negotiator, Phase, TargetOffer};
use iscsi_target::login::text::{parse, parse_binary, parse_number};
use iscsi_target::login::{ChallengeSource, Directory, Login, LoginStep, TargetAuth};
use iscsi_target::pdu::{decode, DigestConfig, Opcode, Pdu};
use iscsi_target::scsi::{Residual, ScsiResponse, ScsiStatus};
use iscsi_target::session::{Connection, ConnectionConfig, Event, TmfResponse};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub const TARGET: &str = "iqn.2024-01.test:target";
pub const INITIATOR: &str = "iqn.2024-01.test:init";

struct Dir {
    chap: ChapConfig,
    discovery_chap: ChapConfig,
    acl: Vec<String>,
}

impl Directory for Dir {
    fn target(&self, name: &str) -> Option<TargetAuth> {
        (name == TARGET).then(|| TargetAuth {
            name: name.into(),
            alias: Some("fuzz".into()),
            chap: self.chap.clone(),
            allowed_initiators: self.acl.clone(),
        })
    }
    fn discovery_chap(&self) -> ChapConfig {
        self.discovery_chap.clone()
    }
    fn send_targets(&self, _: &str) -> Vec<(String, Vec<String>)> {
        vec![
            (TARGET.into(), vec!["127.0.0.1:3260,1".into(), "[::1]:3260,1".into()]),
            ("iqn.2024-01.test:other".into(), vec!["127.0.0.1:3261,2".into()]),
        ]
    }
    /// TSIH 1 of our initiator exists (login_pdu's odd bit 4 asks for it).
    fn session_exists(&self, initiator: &str, isid: [u8; 6], tsih: u16) -> bool {
        initiator == INITIATOR && isid[0] == 0x80 && tsih == 1
    }
}

/// CHAP credentials: initiator "u" / "secretsecret", target "t" /
/// "tsecrettsecret" (the seeds carry responses computed with them).
fn directory(sel: u8) -> Arc<dyn Directory> {
    let initiator = Some(ChapCredentials { user: "u".into(), secret: "secretsecret".into() });
    let target = Some(ChapCredentials { user: "t".into(), secret: "tsecrettsecret".into() });
    let chap = match sel & 3 {
        0 => ChapConfig::default(),
        1 => ChapConfig { initiator: initiator.clone(), target: None },
        _ => ChapConfig { initiator: initiator.clone(), target: target.clone() },
    };
    let discovery_chap = if sel & 4 != 0 {
        ChapConfig { initiator, target }
    } else {
        ChapConfig::default()
    };
    let acl = if sel & 3 == 3 { vec![INITIATOR.to_string(), "iqn.x".into()] } else { vec![] };
    Arc::new(Dir { chap, discovery_chap, acl })
}

/// A fixed CHAP challenge so that seeds can carry a valid response.
struct FixedChallenge;
impl ChallengeSource for FixedChallenge {
    fn challenge(&mut self) -> (u8, [u8; 16]) {
        (7, [0x55; 16])
    }
}

/// `WEFT_FUZZ_DEBUG=1` prints what happens (for checking seeds and triage).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("WEFT_FUZZ_DEBUG").is_some())
}

/// The one clock base; everything else is an offset from it.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn text_checks(chunk: &[u8], lasting: &mut Negotiator) {
    if let Ok(s) = std::str::from_utf8(chunk) {
        let _ = parse_number(s);
        let _ = parse_binary(s);
    }
    let Ok(pairs) = parse(chunk) else { return };
    for (k, v) in &pairs {
        assert!(!k.is_empty() && k.len() <= 63);
        if let Some(n) = parse_number(v) {
            // Decimal numbers round-trip.
            if !v.starts_with("0x") && !v.starts_with("0X") && !v.starts_with('0') {
                assert_eq!(n.to_string(), *v);
            }
        }
        let _ = parse_binary(v);
    }
    for phase in [Phase::LoginNormal, Phase::LoginDiscovery, Phase::FullFeature] {
        let mut n = Negotiator::new(TargetOffer::default());
        if let Ok(answers) = n.respond(&pairs, phase) {
            n.declarations(phase);
            n.finish();
            assert!(n.params.first_burst_len <= n.params.max_burst_len);
            // Every answer names a key that was asked about.
            for (k, _) in &answers {
                assert!(pairs.iter().any(|(pk, _)| pk == k), "answer for unasked key {k}");
            }
        }
    }
    let _ = lasting.respond(&pairs, Phase::LoginNormal);
}

/// A Login Request from one chunk: [BHS byte 1][odd fields][data...].
/// Odd-field bits: 0 not a Login Request (a Text Request), 1 Version-min 1,
/// 2 other ISID, 3 other CID, 4 TSIH 1, 5 clear the I bit.
fn login_pdu(chunk: &[u8]) -> Pdu {
    let flags = chunk.first().copied().unwrap_or(0x87);
    let odd = chunk.get(1).copied().unwrap_or(0);
    let data = chunk.get(2..).unwrap_or(&[]);
    let mut p = Pdu::new(if odd & 1 != 0 { Opcode::TextRequest } else { Opcode::LoginRequest });
    if odd & 0x20 == 0 {
        p.bhs[0] |= 0x40;
    }
    p.bhs[1] = flags;
    p.bhs[3] = (odd >> 1) & 1;
    p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, if odd & 4 != 0 { 2 } else { 1 }]);
    p.bhs[15] = (odd >> 4) & 1;
    p.bhs[21] = (odd >> 3) & 1;
    p.set_itt(1);
    // A data segment longer than 2^24 - 1 bytes cannot be encoded.
    p.set_data(Bytes::copy_from_slice(&data[..data.len().min((1 << 24) - 1)]));
    p
}

fn login_mode(sel: u8, rest: &[u8]) {
    let mut login = Login::new(directory(sel), 1, 42, TargetOffer::default());
    let mut lasting = Negotiator::new(TargetOffer::default());
    let mut done = false;
    for chunk in rest.split(|&b| b == 0xff) {
        text_checks(chunk, &mut lasting);
        text_checks(chunk.get(2..).unwrap_or(&[]), &mut lasting);
        if done {
            continue;
        }
        let req = login_pdu(chunk);
        let step = login.handle(&req, &mut FixedChallenge);
        if debug() {
            eprintln!("login {req:?} -> {step:?}");
        }
        let resp = match step {
            LoginStep::Continue(r) => r,
            LoginStep::Complete(r, outcome) => {
                done = true;
                assert!(outcome.params.first_burst_len <= outcome.params.max_burst_len);
                r
            }
            LoginStep::Fail(r, _) => {
                done = true;
                r
            }
        };
        assert_eq!(resp.opcode(), Some(Opcode::LoginResponse));
        assert_eq!(resp.itt(), req.itt());
        // Our own response text must parse.
        parse(&resp.data).expect("login response text does not parse");
    }
}

/// One control byte of connection mode.
///   bits 0..=1  outstanding commands: keep; complete the oldest GOOD (with
///               data-in); complete the oldest CHECK CONDITION; complete all
///   bits 2..=4  clock advance, from `STEPS_MS`
///   bit 5       abort_tasks on LUN 0 (bit 6 clear) or on every LUN (bit 6 set)
///   bit 7       answer pending resets with TMF "function complete"
struct Control(u8);

const STEPS_MS: [u64; 8] = [0, 1, 49, 51, 1_000, 5_001, 15_001, 30_001];

fn response(ctl: u8, expected_len: u32, good: bool) -> ScsiResponse {
    if good {
        let n = (expected_len as usize).min(70_000) >> (ctl >> 6);
        ScsiResponse {
            status: ScsiStatus::Good,
            data_in: Bytes::from(vec![0xa5; n]),
            sense: None,
            residual: match (ctl >> 3) & 3 {
                0 => Residual::None,
                1 => Residual::Underflow(expected_len.saturating_sub(n as u32)),
                _ => Residual::Overflow(u32::from(ctl)),
            },
        }
    } else {
        let mut sense = vec![0u8; 18];
        sense[0] = 0x70;
        sense[2] = 0x05;
        sense[7] = 10;
        sense[12] = 0x24;
        ScsiResponse {
            status: ScsiStatus::CheckCondition,
            data_in: Bytes::new(),
            sense: Some(Bytes::from(sense)),
            residual: Residual::None,
        }
    }
}

fn drain(conn: &mut Connection, running: &mut Vec<(u32, u32)>, resets: &mut Vec<(u32, iscsi_target::session::TmfFunction)>) {
    let mut n = 0;
    while let Some(p) = conn.poll_transmit() {
        if debug() {
            eprintln!("  tx {p:?}");
        }
        let op = p.opcode().expect("we sent an undefined opcode");
        assert!(!op.is_initiator(), "we sent an initiator opcode {op:?}");
        n += 1;
        assert!(n < 1_000_000);
    }
    while let Some(ev) = conn.poll_event() {
        if debug() {
            eprintln!("  event {ev:?}");
        }
        match ev {
            Event::Execute { itt, request } => {
                assert!(request.data_out.len() <= request.expected_len as usize);
                running.push((itt, request.expected_len));
            }
            Event::Abort(itts) => running.retain(|(i, _)| !itts.contains(i)),
            Event::Reset { itt, function, .. } => resets.push((itt, function)),
            Event::LoggedIn(_) | Event::Close => {}
        }
    }
}

fn connection_mode(sel: u8, rest: &[u8]) {
    let Some((&k, rest)) = rest.split_first() else { return };
    let k = usize::from(k % 32).min(rest.len());
    let (ctrl, wire) = rest.split_at(k);
    let mut now = base();
    let cfg = ConnectionConfig {
        directory: directory(sel),
        tpgt: 1,
        offer: TargetOffer::default(),
        tsih: 42,
    };
    let mut conn = Connection::new(cfg, now);
    let codec = DigestConfig { header_digest: false, data_digest: false, max_data_segment_len: 64 * 1024 };
    let mut buf = BytesMut::from(wire);
    let mut running: Vec<(u32, u32)> = Vec::new();
    let mut resets = Vec::new();
    let mut i = 0usize;
    while let Ok(Some(pdu)) = decode(&mut buf, &codec) {
        let c = if ctrl.is_empty() { Control(0) } else { Control(ctrl[i % ctrl.len()]) };
        i += 1;
        now += Duration::from_millis(STEPS_MS[usize::from((c.0 >> 2) & 7)]);
        if conn.poll_timeout().is_some_and(|t| t <= now) {
            conn.handle_timeout(now);
        }
        match c.0 & 3 {
            0 => {}
            1 | 2 if !running.is_empty() => {
                let (itt, len) = running.remove(0);
                conn.complete(itt, response(c.0, len, c.0 & 3 == 1), now);
            }
            3 => {
                for (itt, len) in running.drain(..) {
                    conn.complete(itt, response(c.0, len, itt & 1 == 0), now);
                }
            }
            _ => {}
        }
        if c.0 & 0x20 != 0 {
            conn.abort_tasks(if c.0 & 0x40 != 0 { None } else { Some(0) });
        }
        if c.0 & 0x80 != 0 {
            for (itt, function) in resets.drain(..) {
                conn.tmf_done(itt, TmfResponse::FunctionComplete, function);
            }
        }
        drain(&mut conn, &mut running, &mut resets);
        if debug() {
            eprintln!("rx {pdu:?}");
        }
        conn.handle_pdu(pdu, now, &mut FixedChallenge);
        drain(&mut conn, &mut running, &mut resets);
    }
    // Whatever is left: complete it, let every timer fire.
    for (itt, len) in running.drain(..) {
        conn.complete(itt, response(0, len, true), now);
    }
    now += Duration::from_secs(60);
    conn.handle_timeout(now);
    let mut resets = Vec::new();
    drain(&mut conn, &mut running, &mut resets);
}

fuzz_target!(|data: &[u8]| {
    let _ = base();
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel & 0x80 == 0 {
        login_mode(sel, rest);
    } else {
        connection_mode(sel, rest);
    }
});
