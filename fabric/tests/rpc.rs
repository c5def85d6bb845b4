//! RPC behaviour on real loopback sockets: multiplexing, back-pressure,
//! deadlines, cancellation, reconnect.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use fabric::identity::Role;
use fabric::rpc::{Client, Response, Router, RpcConfig, RpcError, Server, ServerStats};
use fabric::wire::{
    error_code, flags, ErrorBody, Frame, FrameType, Inbound, Kind, Ping, PingRequest,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Sets a flag when dropped: tells a test that a handler's future was
/// dropped (aborted), not left running.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_calls_share_one_connection_under_a_small_inflight_limit() {
    logs();
    let cluster = Cluster::new("c");
    const LIMIT: usize = 8;
    let current = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let mut router = Router::new();
    let (cur, max) = (current.clone(), max_seen.clone());
    router
        .register_raw(Kind::CHUNK_READ, move |_peer, req| {
            let (cur, max) = (cur.clone(), max.clone());
            async move {
                let now = cur.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                cur.fetch_sub(1, Ordering::SeqCst);
                Ok(Response {
                    header: req.header,
                    payload: req.payload,
                })
            }
        })
        .unwrap();
    let server = start(
        &cluster.tls(Role::Chunkserver, "cs-1"),
        router,
        RpcConfig::default(),
    )
    .await;
    let client = Client::new(
        &cluster.tls(Role::Gateway, "gw"),
        RpcConfig {
            inflight_rpcs_per_peer_max: LIMIT,
            ..RpcConfig::default()
        },
    );
    let addr = server.local_addr();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from(vec![(i % 251) as u8; 4096]);
            let header = Bytes::from(i.to_be_bytes().to_vec());
            let r = client
                .call_raw(
                    addr,
                    &id("cs-1"),
                    Kind::CHUNK_READ,
                    header.clone(),
                    payload.clone(),
                    deadline_in(30_000),
                )
                .await
                .unwrap();
            assert_eq!(r.header, header);
            assert_eq!(r.payload, payload);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("1000 calls in {:?}", started.elapsed());
    assert_eq!(ServerStats::get(&server.stats().connections_accepted), 1);
    assert_eq!(client.open_connections(), 1);
    let max = max_seen.load(Ordering::SeqCst);
    assert!(max <= LIMIT, "{max} handlers ran at once, limit {LIMIT}");
    assert!(max >= 2, "calls were not multiplexed (max {max} at once)");
}

#[tokio::test]
async fn a_call_past_its_deadline_fails_with_deadline_exceeded() {
    logs();
    let cluster = Cluster::new("c");
    let dropped = Arc::new(AtomicBool::new(false));
    let mut router = Router::new();
    let d = dropped.clone();
    router
        .register_raw(Kind::METADATA_READ, move |_peer, _req| {
            let flag = DropFlag(d.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Response::default())
            }
        })
        .unwrap();
    let server = start(
        &cluster.tls(Role::Chunkserver, "cs-1"),
        router,
        RpcConfig::default(),
    )
    .await;
    let client = Client::new(&cluster.tls(Role::Gateway, "gw"), RpcConfig::default());
    let t0 = Instant::now();
    let r = client
        .call_raw(
            server.local_addr(),
            &id("cs-1"),
            Kind::METADATA_READ,
            Bytes::new(),
            Bytes::new(),
            deadline_in(200),
        )
        .await;
    assert!(matches!(r, Err(RpcError::DeadlineExceeded)), "{r:?}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The server stopped the handler too (cancel frame or its own deadline).
    assert!(wait_until(|| dropped.load(Ordering::SeqCst)).await);
    // And the connection is still good.
    client
        .call::<Ping>(
            server.local_addr(),
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(2_000),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn the_server_enforces_the_deadline_in_the_frame() {
    logs();
    let cluster = Cluster::new("c");
    let mut router = Router::new();
    router
        .register_raw(Kind::METADATA_READ, |_peer, _req| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(Response::default())
        })
        .unwrap();
    let server = start(
        &cluster.tls(Role::Chunkserver, "cs-1"),
        router,
        RpcConfig::default(),
    )
    .await;
    let tls = cluster.tls(Role::Gateway, "gw");
    let mut s = raw_tls(&tls, server.local_addr(), &id("cs-1")).await;
    let t0 = Instant::now();
    s.write_all(&encode(Frame {
        frame_type: FrameType::Request,
        kind: Kind::METADATA_READ,
        request_id: 5,
        deadline_ms: 150,
        flags: 0,
        header: Bytes::new(),
        payload: Bytes::new(),
    }))
    .await
    .unwrap();
    match read_one(&mut s).await {
        Some(Inbound::Frame(f)) => {
            assert_eq!((f.request_id, f.flags), (5, flags::ERROR));
            let body: ErrorBody = postcard::from_bytes(&f.header).unwrap();
            assert_eq!(body.code, error_code::DEADLINE_EXCEEDED);
        }
        other => panic!("{other:?}"),
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(ServerStats::get(&server.stats().deadlines_exceeded), 1);
}

#[tokio::test]
async fn dropping_a_call_cancels_it_and_frees_its_slot() {
    logs();
    let cluster = Cluster::new("c");
    let dropped = Arc::new(AtomicBool::new(false));
    let mut router = Router::new();
    let d = dropped.clone();
    router
        .register_raw(Kind::METADATA_READ, move |_peer, _req| {
            let flag = DropFlag(d.clone());
            async move {
                let _flag = flag;
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok(Response::default())
            }
        })
        .unwrap();
    let server = start(
        &cluster.tls(Role::Chunkserver, "cs-1"),
        router,
        RpcConfig::default(),
    )
    .await;
    // One slot only: if the dropped call kept it, the next call would hang.
    let client = Client::new(
        &cluster.tls(Role::Gateway, "gw"),
        RpcConfig {
            inflight_rpcs_per_peer_max: 1,
            ..RpcConfig::default()
        },
    );
    let addr = server.local_addr();
    let cs1 = id("cs-1");
    let slow = client.call_raw(
        addr,
        &cs1,
        Kind::METADATA_READ,
        Bytes::new(),
        Bytes::new(),
        deadline_in(30_000),
    );
    assert!(tokio::time::timeout(Duration::from_millis(200), slow)
        .await
        .is_err());
    assert!(wait_until(|| ServerStats::get(&server.stats().cancelled) == 1).await);
    assert!(wait_until(|| dropped.load(Ordering::SeqCst)).await);
    client
        .call::<Ping>(
            addr,
            &id("cs-1"),
            &PingRequest::default(),
            Bytes::new(),
            deadline_in(1_000),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn reconnects_with_backoff() {
    logs();
    let cluster = Cluster::new("c");
    let server_tls = cluster.tls(Role::Chunkserver, "cs-1");
    // A port with nobody listening.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let client = Client::new(
        &cluster.tls(Role::Gateway, "gw"),
        RpcConfig {
            backoff_initial_ms: 200,
            ..RpcConfig::default()
        },
    );
    let ping = |client: Client| async move {
        client
            .call::<Ping>(
                addr,
                &id("cs-1"),
                &PingRequest::default(),
                Bytes::new(),
                deadline_in(2_000),
            )
            .await
    };
    assert!(matches!(
        ping(client.clone()).await,
        Err(RpcError::Connect { .. })
    ));
    // Within the back-off delay: fail fast, without dialling.
    match ping(client.clone()).await {
        Err(RpcError::Unreachable { retry_in_ms, .. }) => assert!(retry_in_ms <= 200),
        other => panic!("{other:?}"),
    }
    let server = Server::bind(addr, &server_tls, Router::new(), RpcConfig::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(220)).await;
    ping(client.clone()).await.unwrap();
    // The server goes away and comes back: the pooled connection is replaced.
    drop(server);
    assert!(wait_until(|| client.open_connections() == 0).await);
    let server = Server::bind(addr, &server_tls, Router::new(), RpcConfig::default())
        .await
        .unwrap();
    ping(client.clone()).await.unwrap();
    assert_eq!(ServerStats::get(&server.stats().connections_accepted), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_payloads_round_trip() {
    logs();
    let cluster = Cluster::new("c");
    let server = start(
        &cluster.tls(Role::Chunkserver, "cs-1"),
        Router::new(),
        RpcConfig::default(),
    )
    .await;
    let client = Client::new(&cluster.tls(Role::Gateway, "gw"), RpcConfig::default());
    let data: Bytes = (0..(1u32 << 20))
        .map(|i| (i * 7 % 256) as u8)
        .collect::<Vec<u8>>()
        .into();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, data, addr) = (client.clone(), data.clone(), server.local_addr());
        tasks.push(tokio::spawn(async move {
            let (_, back) = client
                .call::<Ping>(
                    addr,
                    &id("cs-1"),
                    &PingRequest { echo: true },
                    data.clone(),
                    deadline_in(10_000),
                )
                .await
                .unwrap();
            assert_eq!(back, data);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Too large for the wire: refused before sending, connection unharmed.
    let huge = Bytes::from(vec![0u8; fabric::wire::PAYLOAD_BYTES_MAX + 1]);
    let r = client
        .call::<Ping>(
            server.local_addr(),
            &id("cs-1"),
            &PingRequest::default(),
            huge,
            deadline_in(2_000),
        )
        .await;
    assert!(matches!(r, Err(RpcError::Wire(_))), "{r:?}");
    assert_eq!(client.open_connections(), 1);
}
