//! Shared helpers for the integration tests: a `weft-gateway` process on a
//! loopback port, killed on drop, and a small blocking iSCSI initiator that
//! speaks raw PDUs through the library's own codec.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use iscsi_target::login::text;
use iscsi_target::pdu::codec::{decode, encode};
use iscsi_target::pdu::{DigestConfig, Opcode, Pdu, PduError};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The target name every test gateway serves.
pub const TARGET_IQN: &str = "iqn.2026-11.org.weft:malformed";
/// Size of the one RAM LUN, in 512-byte blocks (64 MiB).
pub const LUN_BLOCKS: u64 = 64 * 1024 * 1024 / 512;
pub const BLOCK_BYTES: usize = 512;
/// Our MaxRecvDataSegmentLength, and the target's (limits.rs).
pub const MRDSL_BYTES: usize = 262_144;
pub const FIRST_BURST_BYTES: usize = 262_144;
/// ITT / TTT meaning "none".
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// How long a read waits before the test calls the target silent.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `weft-gateway`; killed (SIGKILL) and reaped on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts the real binary with one 64 MiB RAM LUN and waits until its
    /// portal accepts connections.
    pub fn start() -> Gateway {
        for _attempt in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let log = std::env::var_os("WEFT_TEST_LOG").is_some();
            let child = Command::new(env!("CARGO_BIN_EXE_weft-gateway"))
                .args([
                    "--portal",
                    &addr.to_string(),
                    "--iqn",
                    TARGET_IQN,
                    "--lun",
                    "ram:64M",
                ])
                .env("RUST_LOG", if log { "debug" } else { "warn" })
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(if log { Stdio::inherit() } else { Stdio::null() })
                .spawn()
                .expect("spawn weft-gateway");
            let mut gw = Gateway { child, addr };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if gw.child.try_wait().unwrap().is_some() {
                    break; // e.g. the port was taken meanwhile: try another
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return gw;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("weft-gateway did not start listening");
    }

    /// Panics unless the process is still running.
    pub fn assert_alive(&mut self) {
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "weft-gateway exited: {status:?}");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why no PDU came back.
#[derive(Debug)]
pub enum RecvError {
    /// The target closed the connection (orderly EOF or reset).
    Closed,
    /// Nothing arrived within the read timeout.
    Timeout,
    Decode(PduError),
    Io(io::Error),
}

/// Login options.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    pub initiator_name: String,
    pub isid: [u8; 6],
    pub header_digest: bool,
    pub data_digest: bool,
}

impl LoginOptions {
    /// A distinct initiator port: `name` and `n` pick name and ISID.
    pub fn new(name: &str, n: u16) -> Self {
        let [hi, lo] = n.to_be_bytes();
        LoginOptions {
            initiator_name: format!("iqn.2026-11.org.weft.test:{name}"),
            isid: [0x80, 0x12, 0x34, 0x56, hi, lo],
            header_digest: false,
            data_digest: false,
        }
    }

    pub fn digests(mut self, header: bool, data: bool) -> Self {
        self.header_digest = header;
        self.data_digest = data;
        self
    }
}

/// Result of one SCSI command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResult {
    pub status: u8,
    pub data: Vec<u8>,
    /// Sense bytes without the 2-byte SenseLength prefix.
    pub sense: Option<Vec<u8>>,
}

impl ScsiResult {
    /// (sense key, ASC, ASCQ) of fixed-format sense data.
    pub fn key_asc_ascq(&self) -> Option<(u8, u8, u8)> {
        let s = self.sense.as_ref()?;
        if s.len() < 14 {
            return None;
        }
        Some((s[2] & 0x0f, s[12], s[13]))
    }
}

/// A blocking iSCSI initiator with one connection.
pub struct Client {
    pub stream: TcpStream,
    rx: BytesMut,
    /// Digests in force for what we send and receive.
    pub digests: DigestConfig,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    next_itt: u32,
    pub isid: [u8; 6],
    pub tsih: u16,
}

/// A CDB padded to the 16 bytes of the BHS.
pub fn cdb16(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

pub fn read10_cdb(lba: u32, blocks: u16) -> [u8; 16] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    cdb16(&[0x28, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0])
}

pub fn write10_cdb(lba: u32, blocks: u16) -> [u8; 16] {
    let l = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    cdb16(&[0x2a, 0, l[0], l[1], l[2], l[3], 0, n[0], n[1], 0])
}

/// Deterministic test data for `blocks` blocks, different per `seed`.
pub fn pattern(seed: u32, blocks: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..blocks * BLOCK_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A Login Request PDU (always immediate, RFC 7143 §11.12).
pub fn login_request(
    flags: u8,
    isid: [u8; 6],
    tsih: u16,
    cmd_sn: u32,
    exp_stat_sn: u32,
    text: Bytes,
) -> Pdu {
    let mut p = Pdu::new(Opcode::LoginRequest);
    p.bhs[0] |= 0x40;
    p.set_flags(flags);
    p.bhs[8..14].copy_from_slice(&isid);
    p.bhs[14..16].copy_from_slice(&tsih.to_be_bytes());
    p.set_itt(0x1000).set_word24(cmd_sn).set_word28(exp_stat_sn);
    // CID 1 in bytes 20-21.
    p.bhs[20..22].copy_from_slice(&1u16.to_be_bytes());
    p.set_data(text);
    p
}

/// Login status (class << 8 | detail) of a Login Response.
pub fn login_status(p: &Pdu) -> u16 {
    u16::from_be_bytes([p.bhs[36], p.bhs[37]])
}

/// The key=value pairs of a text or login response.
pub fn keys(p: &Pdu) -> Vec<(String, String)> {
    text::parse(&p.data).expect("target sent unparsable text")
}

pub fn key<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

impl Client {
    /// A TCP connection without login.
    pub fn connect(gw: &Gateway) -> Client {
        let stream = TcpStream::connect(gw.addr).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            rx: BytesMut::with_capacity(512 * 1024),
            digests: DigestConfig::default(),
            cmd_sn: 1,
            exp_stat_sn: 0,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            next_itt: 1,
            isid: [0; 6],
            tsih: 0,
        }
    }

    /// Connects and logs in to [`TARGET_IQN`]: security stage, operational
    /// stage, full feature phase. Panics if any step fails.
    pub fn login(gw: &Gateway, opts: &LoginOptions) -> Client {
        let mut c = Client::connect(gw);
        c.isid = opts.isid;
        let security = text::encode(&[
            ("InitiatorName", opts.initiator_name.as_str()),
            ("TargetName", TARGET_IQN),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ]);
        // T=1, CSG=0 (security), NSG=1 (operational).
        let resp = c.login_exchange(0x81, security);
        assert_eq!(login_status(&resp), 0, "security stage failed");
        assert_eq!(
            resp.flags() & 0x83,
            0x81,
            "target did not move to the operational stage"
        );
        assert_eq!(key(&keys(&resp), "AuthMethod"), Some("None"));
        let digest = |on: bool| if on { "CRC32C" } else { "None" };
        let mrdsl = MRDSL_BYTES.to_string();
        let first_burst = FIRST_BURST_BYTES.to_string();
        let operational = text::encode(&[
            ("HeaderDigest", digest(opts.header_digest)),
            ("DataDigest", digest(opts.data_digest)),
            ("MaxRecvDataSegmentLength", mrdsl.as_str()),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", first_burst.as_str()),
            ("ErrorRecoveryLevel", "0"),
        ]);
        // T=1, CSG=1 (operational), NSG=3 (full feature).
        let resp = c.login_exchange(0x87, operational);
        assert_eq!(login_status(&resp), 0, "operational stage failed");
        assert_eq!(
            resp.flags() & 0x8f,
            0x87,
            "target did not move to full feature phase"
        );
        let pairs = keys(&resp);
        assert_eq!(
            key(&pairs, "HeaderDigest"),
            Some(digest(opts.header_digest))
        );
        assert_eq!(key(&pairs, "DataDigest"), Some(digest(opts.data_digest)));
        assert_eq!(key(&pairs, "InitialR2T"), Some("No"));
        assert_eq!(key(&pairs, "ImmediateData"), Some("Yes"));
        assert_eq!(key(&pairs, "FirstBurstLength"), Some(first_burst.as_str()));
        assert_eq!(key(&pairs, "ErrorRecoveryLevel"), Some("0"));
        c.tsih = u16::from_be_bytes([resp.bhs[14], resp.bhs[15]]);
        assert_ne!(c.tsih, 0, "final login response without TSIH");
        c.cmd_sn = resp.word28();
        c.digests = DigestConfig {
            header_digest: opts.header_digest,
            data_digest: opts.data_digest,
            max_data_segment_len: MRDSL_BYTES,
        };
        c
    }

    /// Sends one login request (with the client's ISID) and returns the response.
    pub fn login_exchange(&mut self, flags: u8, text: Bytes) -> Pdu {
        let req = login_request(flags, self.isid, 0, self.cmd_sn, self.exp_stat_sn, text);
        self.send(&req);
        let resp = self.recv().expect("login response");
        assert_eq!(resp.opcode(), Some(Opcode::LoginResponse), "{resp:?}");
        resp
    }

    pub fn alloc_itt(&mut self) -> u32 {
        let t = self.next_itt;
        self.next_itt += 1;
        t
    }

    /// Encodes `pdu` with the digests in force.
    pub fn wire(&self, pdu: &Pdu) -> Bytes {
        encode(pdu, &self.digests)
    }

    pub fn send(&mut self, pdu: &Pdu) {
        let bytes = self.wire(pdu);
        self.send_raw(&bytes);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to target");
    }

    /// Half-closes our side: the target reads EOF.
    pub fn shutdown_write(&mut self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    pub fn set_read_timeout(&mut self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// The next PDU from the target, decoded with the digests in force.
    /// Tracks StatSN, ExpCmdSN and MaxCmdSN.
    pub fn recv(&mut self) -> Result<Pdu, RecvError> {
        loop {
            match decode(&mut self.rx, &self.digests) {
                Ok(Some(p)) => {
                    self.track(&p);
                    return Ok(p);
                }
                Ok(None) => {}
                Err(e) => return Err(RecvError::Decode(e)),
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(RecvError::Closed),
                Ok(n) => self.rx.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(RecvError::Timeout)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(RecvError::Closed)
                }
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }

    fn track(&mut self, p: &Pdu) {
        let advances = match p.opcode() {
            Some(Opcode::DataIn) => p.flags() & 0x01 != 0,
            Some(Opcode::NopIn) => p.itt() != RESERVED_TAG,
            Some(o) => o.advances_stat_sn(),
            None => false,
        };
        if advances {
            self.exp_stat_sn = p.word24().wrapping_add(1);
        }
        self.exp_cmd_sn = p.word28();
        self.max_cmd_sn = p.word32();
    }

    /// Asserts the target closes the connection without sending anything.
    pub fn expect_closed(&mut self, what: &str) {
        match self.recv() {
            Err(RecvError::Closed) => {}
            other => panic!("{what}: expected the target to close the connection, got {other:?}"),
        }
    }

    /// Asserts nothing arrives within `wait` (the connection stays open).
    pub fn expect_silence(&mut self, wait: Duration, what: &str) {
        self.set_read_timeout(wait);
        let got = self.recv();
        self.set_read_timeout(READ_TIMEOUT);
        match got {
            Err(RecvError::Timeout) => {}
            other => panic!("{what}: expected no response within {wait:?}, got {other:?}"),
        }
    }

    /// A SCSI Command PDU (not yet sent); takes the next CmdSN.
    pub fn scsi_pdu(
        &mut self,
        itt: u32,
        cdb: &[u8; 16],
        read: bool,
        write: bool,
        edtl: u32,
        immediate: &[u8],
    ) -> Pdu {
        let mut p = Pdu::new(Opcode::ScsiCommand);
        let mut flags = 0x80 | 0x01; // F, SIMPLE
        if read {
            flags |= 0x40;
        }
        if write {
            flags |= 0x20;
        }
        p.set_flags(flags)
            .set_lun_field(0)
            .set_itt(itt)
            .set_word20(edtl)
            .set_word24(self.cmd_sn)
            .set_word28(self.exp_stat_sn);
        p.bhs[32..48].copy_from_slice(cdb);
        p.set_data(Bytes::copy_from_slice(immediate));
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        p
    }

    /// Runs one SCSI command to completion: immediate data up to the first
    /// burst, Data-Out for each R2T, Data-In collected by buffer offset.
    pub fn scsi(&mut self, cdb: &[u8; 16], read_len: u32, data_out: &[u8]) -> ScsiResult {
        let itt = self.alloc_itt();
        let write = !data_out.is_empty();
        let edtl = if write {
            data_out.len() as u32
        } else {
            read_len
        };
        let immediate = &data_out[..data_out.len().min(FIRST_BURST_BYTES)];
        let pdu = self.scsi_pdu(itt, cdb, read_len > 0, write, edtl, immediate);
        self.send(&pdu);
        self.finish_scsi(itt, data_out)
    }

    /// Collects the answer to the command `itt` (sending solicited data).
    pub fn finish_scsi(&mut self, itt: u32, data_out: &[u8]) -> ScsiResult {
        let mut data = Vec::new();
        loop {
            let p = self
                .recv()
                .unwrap_or_else(|e| panic!("waiting for the answer to ITT {itt:#x}: {e:?}"));
            if self.answer_ping(&p) {
                continue;
            }
            assert_eq!(p.itt(), itt, "unexpected PDU {p:?}");
            match p.opcode() {
                Some(Opcode::DataIn) => {
                    let off = p.buffer_offset() as usize;
                    if data.len() < off + p.data.len() {
                        data.resize(off + p.data.len(), 0);
                    }
                    data[off..off + p.data.len()].copy_from_slice(&p.data);
                    if p.flags() & 0x01 != 0 {
                        return ScsiResult {
                            status: p.bhs[3],
                            data,
                            sense: None,
                        };
                    }
                }
                Some(Opcode::ReadyToTransfer) => {
                    let (ttt, off, len) =
                        (p.ttt(), p.buffer_offset() as usize, p.word44() as usize);
                    self.send_data_out(itt, ttt, &data_out[off..off + len], off);
                }
                Some(Opcode::ScsiResponse) => {
                    assert_eq!(p.bhs[2], 0, "iSCSI response code");
                    let sense = (!p.data.is_empty()).then(|| {
                        let len = usize::from(u16::from_be_bytes([p.data[0], p.data[1]]));
                        assert_eq!(
                            len + 2,
                            p.data.len(),
                            "SenseLength prefix disagrees with the segment"
                        );
                        p.data[2..].to_vec()
                    });
                    return ScsiResult {
                        status: p.bhs[3],
                        data,
                        sense,
                    };
                }
                other => panic!("unexpected {other:?} while waiting for ITT {itt:#x}"),
            }
        }
    }

    fn send_data_out(&mut self, itt: u32, ttt: u32, data: &[u8], base: usize) {
        let chunks: Vec<&[u8]> = data.chunks(MRDSL_BYTES).collect();
        let mut off = base;
        for (sn, chunk) in chunks.iter().enumerate() {
            let mut p = Pdu::new(Opcode::DataOut);
            let last = sn + 1 == chunks.len();
            p.set_flags(if last { 0x80 } else { 0 })
                .set_lun_field(0)
                .set_itt(itt)
                .set_word20(ttt)
                .set_word28(self.exp_stat_sn)
                .set_word36(sn as u32)
                .set_word40(off as u32);
            p.set_data(Bytes::copy_from_slice(chunk));
            self.send(&p);
            off += chunk.len();
        }
    }

    /// Answers the target's NOP-In ping; true if `p` was one.
    pub fn answer_ping(&mut self, p: &Pdu) -> bool {
        if p.opcode() != Some(Opcode::NopIn) || p.itt() != RESERVED_TAG {
            return false;
        }
        let mut out = Pdu::new(Opcode::NopOut);
        out.bhs[0] |= 0x40;
        out.set_flags(0x80)
            .set_itt(RESERVED_TAG)
            .set_word20(p.ttt())
            .set_word24(self.cmd_sn)
            .set_word28(self.exp_stat_sn);
        self.send(&out);
        true
    }

    pub fn write10(&mut self, lba: u32, data: &[u8]) -> ScsiResult {
        assert_eq!(data.len() % BLOCK_BYTES, 0);
        self.scsi(
            &write10_cdb(lba, (data.len() / BLOCK_BYTES) as u16),
            0,
            data,
        )
    }

    pub fn read10(&mut self, lba: u32, blocks: u16) -> ScsiResult {
        self.scsi(
            &read10_cdb(lba, blocks),
            u32::from(blocks) * BLOCK_BYTES as u32,
            &[],
        )
    }

    pub fn test_unit_ready(&mut self) -> ScsiResult {
        self.scsi(&cdb16(&[0, 0, 0, 0, 0, 0]), 0, &[])
    }

    /// WRITE(10) then READ(10) of `blocks` blocks of `pattern(seed)` at `lba`,
    /// asserting GOOD status and identical data.
    pub fn write_read_check(&mut self, lba: u32, blocks: usize, seed: u32) {
        let data = pattern(seed, blocks);
        let w = self.write10(lba, &data);
        assert_eq!(
            (w.status, &w.sense),
            (0, &None),
            "WRITE(10) at LBA {lba} failed"
        );
        let r = self.read10(lba, blocks as u16);
        assert_eq!(
            (r.status, &r.sense),
            (0, &None),
            "READ(10) at LBA {lba} failed"
        );
        assert!(
            r.data == data,
            "READ(10) at LBA {lba} returned other data than written"
        );
    }
}

/// A gateway with a healthy session opened before any misbehaviour, to show
/// that the gateway keeps serving others afterwards.
pub struct Fixture {
    pub gw: Gateway,
    pub bystander: Client,
    checks: u32,
}

impl Fixture {
    pub fn start() -> Fixture {
        let gw = Gateway::start();
        let mut bystander = Client::login(&gw, &LoginOptions::new("bystander", 0xb0b));
        bystander.write_read_check(0, 8, 0);
        Fixture {
            gw,
            bystander,
            checks: 0,
        }
    }

    /// A fresh session for the misbehaving side.
    pub fn client(&self, name: &str, n: u16) -> Client {
        Client::login(&self.gw, &LoginOptions::new(name, n))
    }

    /// The gateway is alive and the bystander session still writes and
    /// reads known data correctly.
    pub fn assert_still_serving(&mut self) {
        self.gw.assert_alive();
        self.checks += 1;
        let lba = 1000 + self.checks * 64;
        self.bystander
            .write_read_check(lba, 16, 0x5eed_0000 + self.checks);
        self.gw.assert_alive();
    }
}
