//! Helpers shared by the fabric integration tests: a test cluster CA, nodes
//! with certificates, servers on loopback, raw TLS clients, captured logs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use fabric::identity::{Ca, NodeCredentials, NodeId, Role, Validity};
use fabric::rpc::{Router, RpcConfig, Server};
use fabric::tls::{server_name_for, TlsConfig};
use fabric::wire::{Frame, FrameCodec, FrameType, Inbound, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::codec::{Decoder, Encoder};

pub struct Cluster {
    pub ca: Ca,
}

impl Cluster {
    pub fn new(name: &str) -> Cluster {
        Cluster {
            ca: Ca::generate(name).unwrap(),
        }
    }

    pub fn creds_with(&self, role: Role, id: &str, validity: Validity) -> NodeCredentials {
        NodeCredentials {
            ca_cert_pem: self.ca.cert_pem().to_owned(),
            node: self
                .ca
                .issue(role, &NodeId::new(id).unwrap(), validity)
                .unwrap(),
        }
    }

    pub fn tls(&self, role: Role, id: &str) -> TlsConfig {
        TlsConfig::new(&self.creds_with(role, id, Validity::days_from(SystemTime::now(), 1)))
            .unwrap()
    }

    /// A certificate that expired yesterday.
    pub fn expired_tls(&self, role: Role, id: &str) -> TlsConfig {
        let now = SystemTime::now();
        let validity = Validity {
            not_before: now - Duration::from_secs(3 * 86_400),
            not_after: now - Duration::from_secs(86_400),
        };
        TlsConfig::new(&self.creds_with(role, id, validity)).unwrap()
    }
}

/// A node certificate from `foreign`'s CA that trusts `home`'s CA: it can
/// verify our servers but they cannot verify it.
pub fn foreign_client_tls(home: &Cluster, foreign: &Cluster, role: Role, id: &str) -> TlsConfig {
    let mut creds = foreign.creds_with(role, id, Validity::days_from(SystemTime::now(), 1));
    creds.ca_cert_pem = home.ca.cert_pem().to_owned();
    TlsConfig::new(&creds).unwrap()
}

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

pub fn deadline_in(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

pub async fn start(tls: &TlsConfig, router: Router, config: RpcConfig) -> Server {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Server::bind(addr, tls, router, config).await.unwrap()
}

/// Captured log lines of this test binary (WARN and above from fabric).
pub fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(w.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        // Also show them when a test fails.
        eprint!("{}", String::from_utf8_lossy(data));
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits up to 3 s for a log line containing every one of `needles`.
pub async fn wait_for_log(needles: &[&str]) -> String {
    let logs = logs();
    for _ in 0..300 {
        {
            let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no log line with {needles:?}");
}

/// Waits up to 3 s for `cond`.
pub async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

pub type RawTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A raw TLS connection (valid certificate), for writing arbitrary bytes.
pub async fn raw_tls(tls: &TlsConfig, addr: SocketAddr, server: &NodeId) -> RawTls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(tls.client_config())
        .connect(server_name_for(server), tcp)
        .await
        .unwrap()
}

pub fn encode(frame: Frame) -> BytesMut {
    let mut b = BytesMut::new();
    FrameCodec::new().encode(frame, &mut b).unwrap();
    b
}

pub fn ping_frame(request_id: u64) -> Frame {
    Frame {
        frame_type: FrameType::Request,
        kind: Kind::PING,
        request_id,
        deadline_ms: 5_000,
        flags: 0,
        header: postcard::to_stdvec(&fabric::wire::PingRequest { echo: true })
            .unwrap()
            .into(),
        payload: bytes::Bytes::from_static(b"hello"),
    }
}

/// Reads one frame (or None on EOF/error) within 3 s.
pub async fn read_one<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Inbound> {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::with_capacity(4096);
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(item) = codec.decode(&mut buf).unwrap() {
                return Some(item);
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap()
}

/// True if the peer closes the stream within 3 s (EOF or error on read).
pub async fn closed_by_peer<S: tokio::io::AsyncRead + AsyncWriteExt + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}
