//! Helpers of the multi-process tests: a cluster CA, a real
//! `weft-chunkserver` process with its config and certificates in a temp
//! dir, and an mTLS client.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fabric::identity::{Ca, NodeCredentials, NodeId, Role, Validity};
use fabric::rpc::{Client, RpcConfig, RpcError};
use fabric::wire::chunk::*;
use fabric::wire::{Ping, PingRequest, Rpc};
use fabric::TlsConfig;
use tokio::time::Instant;

pub const SERVER_ID: &str = "cs-test";
pub const CALL_MS: u64 = 5_000;

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

pub fn chunk(lun: u64, extent: u64, index: u8) -> ChunkRef {
    ChunkRef { lun, extent, index }
}

/// A free loopback port (bound, then released for the server).
/// A loopback port no listener holds now and that no other test of this
/// process was given: tests run in parallel, and the kernel hands a
/// released port out again (two clusters' nodes on one port).
pub fn free_port() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
}

/// One chunkserver under test.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub config: PathBuf,
    pub ca: Ca,
    child: Option<Child>,
    starts: usize,
}

pub struct Settings {
    pub capacity: &'static str,
    pub reserve: &'static str,
    pub scrub: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capacity: "1G",
            reserve: "0",
            scrub: false,
        }
    }
}

impl Node {
    pub fn new(settings: Settings) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("test").unwrap();
        let creds = NodeCredentials {
            ca_cert_pem: ca.cert_pem().to_owned(),
            node: ca
                .issue(
                    Role::Chunkserver,
                    &id(SERVER_ID),
                    Validity::days_from(SystemTime::now(), 1),
                )
                .unwrap(),
        };
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        creds.save(&dir.path().join("certs")).unwrap();
        let addr = free_port();
        let config = dir.path().join("chunkserver.toml");
        let text = format!(
            r#"
[node]
id = "{SERVER_ID}"
labels = {{ site = "test", host = "localhost" }}
[fabric]
listen = "{addr}"
cert_dir = "certs"
[store]
data_dir = "data"
capacity = "{cap}"
reserve = "{res}"
chunk_bytes_max = "16M"
[scrub]
enabled = {scrub}
blocks_per_sec = 0
interval_secs = 3600
[gossip]
capacity_interval_ms = 200
"#,
            cap = settings.capacity,
            res = settings.reserve,
            scrub = settings.scrub,
        );
        std::fs::write(&config, text).unwrap();
        Node {
            dir,
            addr,
            config,
            ca,
            child: None,
            starts: 0,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Starts the process (logs appended to `server.log`).
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weft-chunkserver"))
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,fabric=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.starts += 1;
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let status = c.wait().unwrap();
            assert!(status.success(), "exit {status}; log:\n{}", self.log_tail());
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// An mTLS client with `role`, which reconnects quickly (the server
    /// restarts a lot in these tests).
    pub fn client(&self, role: Role, name: &str) -> Tester {
        let creds = NodeCredentials {
            ca_cert_pem: self.ca.cert_pem().to_owned(),
            node: self
                .ca
                .issue(role, &id(name), Validity::days_from(SystemTime::now(), 1))
                .unwrap(),
        };
        let tls = TlsConfig::new(&creds).unwrap();
        Tester {
            client: Client::new(
                &tls,
                RpcConfig {
                    backoff_initial_ms: 1,
                    backoff_max_ms: 10,
                    connect_timeout_ms: 1_000,
                    ..RpcConfig::default()
                },
            ),
            addr: self.addr,
            server: id(SERVER_ID),
        }
    }

    /// Starts and waits until the server answers a ping.
    pub async fn start_ready(&mut self, t: &Tester) {
        self.start();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if t.ping().await.is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("server exited {status}; log:\n{}", self.log_tail());
                }
            }
            assert!(
                Instant::now() < until,
                "server not ready; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client of one server.
#[derive(Clone)]
pub struct Tester {
    pub client: Client,
    pub addr: SocketAddr,
    pub server: NodeId,
}

/// The chunk error code of an RPC error, if it is one.
pub fn app_code(e: &RpcError) -> Option<u32> {
    match e {
        RpcError::Application { code, .. } => Some(*code),
        _ => None,
    }
}

impl Tester {
    pub async fn call<R: Rpc>(
        &self,
        req: &R::Request,
        payload: Bytes,
    ) -> Result<(R::Response, Bytes), RpcError> {
        let deadline = Instant::now() + Duration::from_millis(CALL_MS);
        self.client
            .call::<R>(self.addr, &self.server, req, payload, deadline)
            .await
    }

    pub async fn ping(&self) -> Result<(), RpcError> {
        let deadline = Instant::now() + Duration::from_millis(200);
        self.client
            .call::<Ping>(
                self.addr,
                &self.server,
                &PingRequest { echo: false },
                Bytes::new(),
                deadline,
            )
            .await
            .map(|_| ())
    }

    pub async fn create(&self, c: ChunkRef, size_bytes: u64, epoch: u64) -> Result<(), RpcError> {
        self.call::<ChunkCreate>(
            &ChunkCreateRequest {
                chunk: c,
                size_bytes,
                epoch,
            },
            Bytes::new(),
        )
        .await
        .map(|_| ())
    }

    pub async fn read(
        &self,
        c: ChunkRef,
        epoch: u64,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, RpcError> {
        self.call::<ChunkRead>(
            &ChunkReadRequest {
                chunk: c,
                epoch,
                offset,
                len,
            },
            Bytes::new(),
        )
        .await
        .map(|(_, b)| b)
    }

    pub async fn write(
        &self,
        c: ChunkRef,
        epoch: u64,
        offset: u64,
        data: Bytes,
        durability: Durability,
    ) -> Result<Bytes, RpcError> {
        self.call::<ChunkWrite>(
            &ChunkWriteRequest {
                chunk: c,
                epoch,
                offset,
                durability,
            },
            data,
        )
        .await
        .map(|(_, b)| b)
    }

    pub async fn punch(
        &self,
        c: ChunkRef,
        epoch: u64,
        offset: u64,
        len: u64,
    ) -> Result<(), RpcError> {
        self.call::<ChunkPunch>(
            &ChunkPunchRequest {
                chunk: c,
                epoch,
                offset,
                len,
                durability: Durability::Stable,
            },
            Bytes::new(),
        )
        .await
        .map(|_| ())
    }

    pub async fn stats(&self) -> ChunkStatsResponse {
        self.call::<ChunkStats>(&ChunkStatsRequest {}, Bytes::new())
            .await
            .unwrap()
            .0
    }
}

/// Deterministic block contents of write `tag` to block `block`.
pub fn block_pattern(tag: u64, block: u64) -> Vec<u8> {
    let mut v = vec![0u8; 4096];
    let mut x = tag
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(block.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        | 1;
    for chunk in v.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    v
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
