//! Security tests on real loopback sockets: every bad peer is refused with a
//! logged reason while a good client keeps being served concurrently.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fabric::identity::Role;
use fabric::rpc::{Client, Response, Router, RpcConfig, RpcError, Server, ServerStats};
use fabric::wire::{
    error_code, flags, ErrorBody, FrameType, Inbound, Kind, Ping, PingRequest, WIRE_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A server with an admin-only handler, plus a good client pinging it in a
/// loop until told to stop; returns the count of its successful calls.
struct Harness {
    cluster: Cluster,
    server: Server,
    stop: Arc<AtomicBool>,
    good_calls: Arc<AtomicU64>,
    good_task: tokio::task::JoinHandle<Result<(), RpcError>>,
}

impl Harness {
    async fn new() -> Harness {
        logs();
        let cluster = Cluster::new("home");
        let mut router = Router::new();
        router
            .register_raw(Kind::METADATA_WRITE, |_peer, _req| async {
                Ok(Response::default())
            })
            .unwrap();
        let server = start(
            &cluster.tls(Role::Chunkserver, "cs-1"),
            router,
            RpcConfig::default(),
        )
        .await;
        let good = Client::new(&cluster.tls(Role::Gateway, "gw-good"), RpcConfig::default());
        let addr = server.local_addr();
        let stop = Arc::new(AtomicBool::new(false));
        let good_calls = Arc::new(AtomicU64::new(0));
        let (stop2, calls2) = (stop.clone(), good_calls.clone());
        let good_task = tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let (_, payload) = good
                    .call::<Ping>(
                        addr,
                        &id("cs-1"),
                        &PingRequest { echo: true },
                        Bytes::from_static(b"still here"),
                        deadline_in(2_000),
                    )
                    .await?;
                assert_eq!(&payload[..], b"still here");
                calls2.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(())
        });
        let h = Harness {
            cluster,
            server,
            stop,
            good_calls,
            good_task,
        };
        // The good client is connected and served before the bad ones come.
        assert!(wait_until(|| h.good_calls.load(Ordering::Relaxed) >= 1).await);
        h
    }

    /// Asserts the good client kept succeeding through whatever happened.
    async fn finish(self) {
        self.finish_with(0).await
    }
}

#[tokio::test]
async fn plaintext_client_is_refused() {
    let h = Harness::new().await;
    let mut tcp = TcpStream::connect(h.server.local_addr()).await.unwrap();
    // A well-formed weft frame, but not inside TLS.
    tcp.write_all(&encode(ping_frame(1))).await.unwrap();
    assert!(closed_by_peer(&mut tcp).await);
    let line = wait_for_log(&[
        "TLS handshake failed",
        &tcp.local_addr().unwrap().to_string(),
    ])
    .await;
    assert!(
        line.contains("corrupt message") || line.contains("InvalidContentType"),
        "{line}"
    );
    assert_eq!(ServerStats::get(&h.server.stats().handshakes_refused), 1);
    h.finish().await;
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let h = Harness::new().await;
    let other = Cluster::new("other");
    let tls = foreign_client_tls(&h.cluster, &other, Role::Admin, "intruder");
    let client = Client::new(&tls, RpcConfig::default());
    let r = client
        .call::<Ping>(
            h.server.local_addr(),
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await;
    assert!(r.is_err(), "{r:?}");
    let line = wait_for_log(&["TLS handshake failed", "UnknownIssuer"]).await;
    eprintln!("refused: {line}");
    assert_eq!(ServerStats::get(&h.server.stats().handshakes_refused), 1);
    h.finish().await;
}

#[tokio::test]
async fn server_from_another_ca_is_refused_by_the_client() {
    logs();
    let home = Cluster::new("home");
    let other = Cluster::new("other");
    let impostor = start(
        &other.tls(Role::Chunkserver, "cs-1"),
        Router::new(),
        RpcConfig::default(),
    )
    .await;
    let client = Client::new(&home.tls(Role::Gateway, "gw"), RpcConfig::default());
    let r = client
        .call::<Ping>(
            impostor.local_addr(),
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await;
    match r {
        Err(RpcError::Connect { reason, .. }) => {
            assert!(reason.contains("UnknownIssuer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let h = Harness::new().await;
    let tls = h.cluster.expired_tls(Role::Admin, "old-admin");
    let client = Client::new(&tls, RpcConfig::default());
    let r = client
        .call::<Ping>(
            h.server.local_addr(),
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await;
    assert!(r.is_err(), "{r:?}");
    let line = wait_for_log(&["TLS handshake failed", "certificate expired"]).await;
    eprintln!("refused: {line}");
    h.finish().await;
}

#[tokio::test]
async fn expired_server_certificate_is_refused_by_the_client() {
    logs();
    let cluster = Cluster::new("home");
    let server = start(
        &cluster.expired_tls(Role::Chunkserver, "cs-1"),
        Router::new(),
        RpcConfig::default(),
    )
    .await;
    let client = Client::new(&cluster.tls(Role::Gateway, "gw"), RpcConfig::default());
    let r = client
        .call::<Ping>(
            server.local_addr(),
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await;
    match r {
        Err(RpcError::Connect { reason, .. }) => {
            assert!(reason.contains("certificate expired"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn server_with_another_node_id_is_refused_by_the_client() {
    logs();
    let cluster = Cluster::new("home");
    let server = start(
        &cluster.tls(Role::Chunkserver, "cs-2"),
        Router::new(),
        RpcConfig::default(),
    )
    .await;
    let client = Client::new(&cluster.tls(Role::Gateway, "gw"), RpcConfig::default());
    let r = client
        .call::<Ping>(
            server.local_addr(),
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await;
    match r {
        Err(RpcError::Connect { reason, .. }) => {
            assert!(
                reason.contains("peer is cs-2, but we dialled cs-1"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    // The right id works.
    client
        .call::<Ping>(
            server.local_addr(),
            &id("cs-2"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn gateway_may_not_write_metadata_but_admin_may() {
    let h = Harness::new().await;
    let addr = h.server.local_addr();
    for (role, name) in [(Role::Gateway, "gw-2"), (Role::Chunkserver, "cs-9")] {
        let client = Client::new(&h.cluster.tls(role, name), RpcConfig::default());
        let r = client
            .call_raw(
                addr,
                &id("cs-1"),
                Kind::METADATA_WRITE,
                Bytes::new(),
                Bytes::new(),
                deadline_in(2_000),
            )
            .await;
        match r {
            Err(RpcError::Forbidden(detail)) => {
                assert_eq!(detail, format!("role {role} may not send MetadataWrite"))
            }
            other => panic!("{other:?}"),
        }
        wait_for_log(&["role may not send this kind", name]).await;
    }
    assert_eq!(ServerStats::get(&h.server.stats().forbidden), 2);
    let admin = Client::new(&h.cluster.tls(Role::Admin, "adm"), RpcConfig::default());
    admin
        .call_raw(
            addr,
            &id("cs-1"),
            Kind::METADATA_WRITE,
            Bytes::new(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await
        .unwrap();
    // Three more clients connected: gateway, chunkserver, admin.
    let stats = h.server.stats();
    assert_eq!(ServerStats::get(&stats.connections_accepted), 4);
    h.stop.store(true, Ordering::Relaxed);
    h.good_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn unknown_kind_gets_a_clear_error_and_the_connection_lives() {
    let h = Harness::new().await;
    let client = Client::new(&h.cluster.tls(Role::Admin, "adm"), RpcConfig::default());
    let addr = h.server.local_addr();
    let r = client
        .call_raw(
            addr,
            &id("cs-1"),
            Kind(0x7777),
            Bytes::new(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await;
    assert!(
        matches!(r, Err(RpcError::UnsupportedKind { kind: Kind(0x7777) })),
        "{r:?}"
    );
    wait_for_log(&["unsupported message kind 30583"]).await;
    // Same pooled connection still works.
    client
        .call::<Ping>(
            addr,
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await
        .unwrap();
    assert_eq!(client.open_connections(), 1);
    h.stop.store(true, Ordering::Relaxed);
    h.good_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn newer_wire_version_gets_a_clear_error_and_the_connection_lives() {
    let h = Harness::new().await;
    let tls = h.cluster.tls(Role::Chunkserver, "cs-new");
    let mut s = raw_tls(&tls, h.server.local_addr(), &id("cs-1")).await;
    let mut bytes = encode(ping_frame(7));
    bytes[4] = WIRE_VERSION + 1;
    // Recompute the CRC over the envelope and the 1-byte header (echo: true).
    let header_len = u32::from_be_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]) as usize;
    assert_eq!(header_len, 1);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..32]), &bytes[36..36 + header_len]);
    bytes[32..36].copy_from_slice(&crc.to_be_bytes());
    s.write_all(&bytes).await.unwrap();
    match read_one(&mut s).await {
        Some(Inbound::Frame(f)) => {
            assert_eq!(f.frame_type, FrameType::Response);
            assert_eq!(f.request_id, 7);
            assert_eq!(f.flags, flags::ERROR);
            let body: ErrorBody = postcard::from_bytes(&f.header).unwrap();
            assert_eq!(body.code, error_code::UNSUPPORTED_VERSION);
            assert_eq!(body.app_code, u32::from(WIRE_VERSION));
            assert!(body.detail.contains("wire version 2"), "{}", body.detail);
        }
        other => panic!("{other:?}"),
    }
    wait_for_log(&["unsupported wire version 2"]).await;
    // The connection is still usable with version 1.
    s.write_all(&encode(ping_frame(8))).await.unwrap();
    match read_one(&mut s).await {
        Some(Inbound::Frame(f)) => {
            assert_eq!((f.request_id, f.flags), (8, 0));
            assert_eq!(&f.payload[..], b"hello");
        }
        other => panic!("{other:?}"),
    }
    h.stop.store(true, Ordering::Relaxed);
    h.good_task.await.unwrap().unwrap();
}

#[tokio::test]
async fn tampered_frame_is_refused() {
    let h = Harness::new().await;
    let tls = h.cluster.tls(Role::Chunkserver, "cs-flip");
    let mut s = raw_tls(&tls, h.server.local_addr(), &id("cs-1")).await;
    let mut bytes = encode(ping_frame(1));
    bytes[10] ^= 0x01; // a request-id byte: only the CRC can tell
    s.write_all(&bytes).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
    wait_for_log(&["frame refused", "cs-flip", "CRC mismatch"]).await;
    assert_eq!(ServerStats::get(&h.server.stats().frames_rejected), 1);
    h.finish_with(1).await;
}

#[tokio::test]
async fn truncated_frame_is_refused() {
    let h = Harness::new().await;
    let tls = h.cluster.tls(Role::Chunkserver, "cs-cut");
    let mut s = raw_tls(&tls, h.server.local_addr(), &id("cs-1")).await;
    let bytes = encode(ping_frame(1));
    s.write_all(&bytes[..bytes.len() - 3]).await.unwrap();
    s.shutdown().await.unwrap(); // close_notify: a clean end, mid-frame
    assert!(closed_by_peer(&mut s).await);
    wait_for_log(&["frame refused", "cs-cut", "stream ended inside a frame"]).await;
    assert_eq!(ServerStats::get(&h.server.stats().frames_rejected), 1);
    h.finish_with(1).await;
}

#[tokio::test]
async fn garbage_after_handshake_is_refused() {
    let h = Harness::new().await;
    let tls = h.cluster.tls(Role::Gateway, "gw-junk");
    let mut s = raw_tls(&tls, h.server.local_addr(), &id("cs-1")).await;
    s.write_all(&[0xAB; 100]).await.unwrap();
    assert!(closed_by_peer(&mut s).await);
    wait_for_log(&["frame refused", "gw-junk", "bad magic"]).await;
    h.finish_with(1).await;
}

impl Harness {
    /// `finish`, with `n` extra accepted connections.
    async fn finish_with(self, n: u64) {
        let before = self.good_calls.load(Ordering::Relaxed);
        assert!(
            wait_until(|| self.good_calls.load(Ordering::Relaxed) >= before + 5).await,
            "good client stalled"
        );
        self.stop.store(true, Ordering::Relaxed);
        self.good_task.await.unwrap().unwrap();
        assert_eq!(
            ServerStats::get(&self.server.stats().connections_accepted),
            1 + n
        );
    }
}
