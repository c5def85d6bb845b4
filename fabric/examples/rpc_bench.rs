//! RPC micro-benchmark: round-trip latency (p50/p99) and single-connection
//! throughput for 4 KiB and 1 MiB request payloads, over mutual TLS and,
//! in the same run, over plain TCP with the same framing and RPC machinery
//! (the cost of encryption, measured).
//!
//! ```text
//! cargo run --release -p fabric --features bench-plaintext --example rpc_bench [-- --quick]
//! ```
//!
//! Client and server run in one process on loopback, sharing the cores.
//! Each call is a `Ping` carrying the payload; the response is empty (the
//! shape of a chunk write). Plain TCP exists only behind the
//! `bench-plaintext` feature, which no product binary enables.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fabric::identity::{Ca, NodeCredentials, NodeId, PeerIdentity, Role, Validity};
use fabric::rpc::{Client, Router, RpcConfig, Server};
use fabric::tls::TlsConfig;
use fabric::wire::{Ping, PingRequest};
use tokio::sync::Semaphore;
use tokio::time::Instant;

struct Case {
    name: &'static str,
    payload_bytes: usize,
    latency_calls: usize,
    throughput_calls: usize,
    inflight: usize,
}

struct Row {
    mode: &'static str,
    case: &'static str,
    p50_us: u128,
    p99_us: u128,
    calls_per_s: f64,
    mib_per_s: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let cases = [
        Case {
            name: "4 KiB",
            payload_bytes: 4 << 10,
            latency_calls: 5000 / scale,
            throughput_calls: 50_000 / scale,
            inflight: 32,
        },
        Case {
            name: "1 MiB",
            payload_bytes: 1 << 20,
            latency_calls: 300 / scale,
            throughput_calls: 1000 / scale,
            inflight: 8,
        },
    ];

    let ca = Ca::generate("bench")?;
    let creds = |role, id: &str| -> Result<TlsConfig, Box<dyn std::error::Error>> {
        Ok(TlsConfig::new(&NodeCredentials {
            ca_cert_pem: ca.cert_pem().to_owned(),
            node: ca.issue(
                role,
                &NodeId::new(id)?,
                Validity::days_from(SystemTime::now(), 1),
            )?,
        })?)
    };
    let server_id = NodeId::new("cs-1")?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let config = RpcConfig {
        inflight_rpcs_per_peer_max: 64,
        ..RpcConfig::default()
    };
    let tls_server = Server::bind(
        any,
        &creds(Role::Chunkserver, "cs-1")?,
        Router::new(),
        config.clone(),
    )
    .await?;
    let tls_client = Client::new(&creds(Role::Gateway, "gw")?, config.clone());
    let plain_server = Server::bind_plaintext_for_bench(
        any,
        PeerIdentity {
            node_id: NodeId::new("gw")?,
            role: Role::Gateway,
        },
        Router::new(),
        config.clone(),
    )
    .await?;
    let plain_client = Client::new_plaintext_for_bench(config);

    let mut rows = Vec::new();
    for case in &cases {
        let payload = Bytes::from(vec![0x5a; case.payload_bytes]);
        for (mode, client, addr) in [
            ("mTLS", &tls_client, tls_server.local_addr()),
            ("plain", &plain_client, plain_server.local_addr()),
        ] {
            rows.push(run(mode, case, client, addr, &server_id, &payload).await?);
        }
    }

    println!(
        "{:<6} {:>7} {:>9} {:>9} {:>10} {:>9}",
        "mode", "payload", "p50 µs", "p99 µs", "calls/s", "MiB/s"
    );
    for r in rows {
        println!(
            "{:<6} {:>7} {:>9} {:>9} {:>10.0} {:>9.1}",
            r.mode, r.case, r.p50_us, r.p99_us, r.calls_per_s, r.mib_per_s
        );
    }
    Ok(())
}

async fn run(
    mode: &'static str,
    case: &Case,
    client: &Client,
    addr: SocketAddr,
    node: &NodeId,
    payload: &Bytes,
) -> Result<Row, Box<dyn std::error::Error>> {
    let req = PingRequest { echo: false };
    let deadline = || Instant::now() + Duration::from_secs(30);
    // Warm up: connect, handshake, buffers.
    for _ in 0..10 {
        client
            .call::<Ping>(addr, node, &req, payload.clone(), deadline())
            .await?;
    }
    // Latency: one call at a time.
    let mut samples = Vec::with_capacity(case.latency_calls);
    for _ in 0..case.latency_calls {
        let t = Instant::now();
        client
            .call::<Ping>(addr, node, &req, payload.clone(), deadline())
            .await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples.get(i).copied().unwrap_or_default().as_micros()
    };
    // Throughput: `inflight` calls outstanding on the one connection.
    let window = Arc::new(Semaphore::new(case.inflight));
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(case.throughput_calls);
    for _ in 0..case.throughput_calls {
        let permit = window.clone().acquire_owned().await?;
        let (client, node, payload, req) =
            (client.clone(), node.clone(), payload.clone(), req.clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .call::<Ping>(addr, &node, &req, payload, deadline())
                .await;
            drop(permit);
            r.map(|_| ())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let calls_per_s = case.throughput_calls as f64 / secs;
    assert_eq!(client.open_connections(), 1, "one connection per peer");
    Ok(Row {
        mode,
        case: case.name,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        calls_per_s,
        mib_per_s: calls_per_s * case.payload_bytes as f64 / (1 << 20) as f64,
    })
}
