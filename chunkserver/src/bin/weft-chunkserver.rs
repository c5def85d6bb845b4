//! `weft-chunkserver`: one node's chunk store, served over the fabric.
//!
//! Start-up order matters: the store (and journal) are opened and
//! recovered before the fabric listener binds, so a peer that can connect
//! is talking to a node that is ready. On SIGTERM or SIGINT the listener
//! closes first, then the store is flushed and closed cleanly (so the next
//! start needs no crash recovery).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chunkserver::config::{describe_seeds, Config};
use chunkserver::journal::{Journal, JournalConfig, SEGMENT_BYTES_DEFAULT};
use chunkserver::meta::{self, Meta, MetaConfig};
use chunkserver::primary::Primary;
use chunkserver::service::{spawn_capacity_publisher, ChunkService};
use chunkserver::store::ChunkStore;
use clap::Parser;
use fabric::gossip::{DriverConfig, Gossip};
use fabric::identity::Role;
use fabric::rpc::{Client, NodeAddrs, Router, RpcConfig, Server};
use fabric::{NodeCredentials, TlsConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// Time allowed for in-flight work to finish on shutdown before the store
/// is closed anyway.
const SHUTDOWN_GRACE_MS: u64 = 2_000;

const EXAMPLE: &str = "\
Example:
  weft cert issue --role chunkserver --node-id cs-1 --out /etc/weft/cs-1
  weft-chunkserver --config /etc/weft/chunkserver.toml

A minimal config (see etc/chunkserver.toml for every key):
  [node]
  id = \"cs-1\"
  [fabric]
  listen = \"0.0.0.0:7400\"
  cert_dir = \"/etc/weft/cs-1\"     # ca.crt, node.crt, node.key
  [store]
  data_dir = \"/var/lib/weft/cs-1\"
  capacity = \"1T\"
  reserve = \"20G\"

Logs: RUST_LOG=debug for more. Exit codes: 0 clean stop, 1 error (bad
config, unreadable certificates, store that cannot be opened).";

/// weft chunkserver: keeps chunks on local disk and serves them over the
/// mutually authenticated fabric.
#[derive(Debug, Parser)]
#[command(name = "weft-chunkserver", version, after_help = EXAMPLE)]
struct Args {
    /// Path of the TOML configuration.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration and certificates, then exit.
    #[arg(long)]
    check: bool,
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-chunkserver: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("weft-chunkserver: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let cfg = Config::load(&args.config).context("bad configuration")?;
    let creds = NodeCredentials::load(&cfg.cert_dir)
        .with_context(|| format!("loading certificates from {}", cfg.cert_dir.display()))?;
    let me = creds
        .identity()
        .with_context(|| format!("reading node.crt in {}", cfg.cert_dir.display()))?;
    if me.node_id != cfg.node_id || me.role != Role::Chunkserver {
        bail!(
            "the certificate in {} is for {me}, but the config says chunkserver {}",
            cfg.cert_dir.display(),
            cfg.node_id
        );
    }
    let tls = TlsConfig::new(&creds).context("building the TLS configuration")?;
    if args.check {
        println!("configuration and certificates OK: {}", cfg.node_id);
        return Ok(());
    }
    info!(node = %cfg.node_id, listen = %cfg.listen, data_dir = %cfg.store.data_dir.display(),
        capacity_bytes = cfg.store.capacity_bytes, reserve_bytes = cfg.store.reserve_bytes,
        seeds = ?describe_seeds(&cfg.seeds), "weft-chunkserver starting");

    let store_cfg = cfg.store.clone();
    let store = tokio::task::spawn_blocking(move || ChunkStore::open(store_cfg))
        .await
        .context("opening the chunk store")?
        .with_context(|| {
            format!(
                "opening the chunk store in {}",
                cfg.store.data_dir.display()
            )
        })?;
    let store = Arc::new(store);
    let journal_cfg = JournalConfig {
        dir: cfg.journal_dir.clone(),
        segment_bytes: SEGMENT_BYTES_DEFAULT,
        bytes_max: cfg.journal_bytes_max,
    };
    let (journal, replay) = tokio::task::spawn_blocking(move || Journal::open(journal_cfg))
        .await
        .context("opening the journal")?
        .with_context(|| format!("opening the journal in {}", cfg.journal_dir.display()))?;
    let journal = Arc::new(journal);

    let mut router = Router::new();
    let lease = Arc::new(meta::agent::Lease::default());
    let service = ChunkService::new(store.clone());
    // Without metadata (a bare chunk store) there is no lease to honour.
    let service = if cfg.voters.is_empty() {
        service
    } else {
        service.with_lease(lease.clone())
    };
    service
        .register(&mut router)
        .context("registering the chunk service")?;
    // The router holds its own handles; the store must be ours alone at exit.
    drop(service);
    let gossip = if cfg.gossip {
        let g = Gossip::new(
            DriverConfig::new(cfg.node_id.clone(), cfg.seeds.clone()),
            Role::Chunkserver,
            env!("CARGO_PKG_VERSION"),
        )
        .context("starting gossip")?;
        g.register(&mut router)
            .context("registering the gossip handler")?;
        if let Err(e) = g.set_location(&cfg.location) {
            warn!(error = %e, "gossip: location not published");
        }
        Some(Arc::new(g))
    } else {
        None
    };
    let client = Client::new(&tls, RpcConfig::default());
    let meta = Meta::start(
        MetaConfig {
            me: cfg.node_id.clone(),
            voters: cfg
                .voters
                .iter()
                .map(|s| (s.node.clone(), s.addr))
                .collect(),
            dir: cfg.meta_dir.clone(),
            lease_ms: cfg.lease_ms,
            election_timeout_ms: cfg.election_timeout_ms,
        },
        client.clone(),
        gossip.as_ref().map(|g| g.watch()),
    )
    .await
    .context("starting the metadata replica")?;
    meta.register(&mut router)
        .context("registering the metadata service")?;
    let primary = match &gossip {
        Some(g) => {
            let p = Primary::new(
                cfg.node_id.clone(),
                meta.clone(),
                client.clone(),
                g.watch(),
                journal.clone(),
                lease.clone(),
            );
            p.register(&mut router)
                .context("registering the extent primary")?;
            Some(p)
        }
        None => {
            warn!("gossip disabled: this node cannot act as an extent primary");
            None
        }
    };
    let server = Server::bind(cfg.listen, &tls, router, RpcConfig::default())
        .await
        .with_context(|| format!("binding the fabric listener on {}", cfg.listen))?;
    let mut tasks = Vec::new();
    meta.bootstrap()
        .await
        .context("initializing the metadata cluster")?;
    if let Some(p) = &primary {
        p.spawn_replay(replay);
        tasks.push(p.spawn_repair());
    } else if !replay.is_empty() {
        warn!(
            records = replay.len(),
            "journal records kept: no extent primary to replay them"
        );
    }
    let _lease = if cfg.voters.is_empty() {
        warn!("no [metadata] voters configured: this node serves chunks only");
        None
    } else {
        Some(meta::agent::spawn(
            meta.clone(),
            cfg.node_id.clone(),
            lease.clone(),
        ))
    };
    if let Some(g) = &gossip {
        g.start(
            client.clone(),
            NodeAddrs {
                fabric: server.local_addr(),
                public: cfg.public,
            },
        )
        .context("starting gossip")?;
        tasks.push(spawn_capacity_publisher(
            g.clone(),
            store.clone(),
            Duration::from_millis(cfg.capacity_interval_ms),
        ));
    }
    if cfg.scrub_blocks_per_sec > 0 {
        tasks.push(store.clone().spawn_scrubber(
            cfg.scrub_blocks_per_sec,
            Duration::from_secs(cfg.scrub_interval_secs),
        ));
    }
    info!(node = %cfg.node_id, addr = %server.local_addr(), chunks = store.stats().chunks,
        "weft-chunkserver ready");

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, "weft-chunkserver stopping");
    drop(server);
    meta.shutdown().await;
    drop(gossip);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(primary);
    match Arc::try_unwrap(journal) {
        Ok(j) => j.close().await,
        Err(_) => warn!("journal still in use at exit: the next start replays it"),
    }
    // Handlers still running hold the store; give them a moment, then
    // flush whatever they did and close.
    let grace = tokio::time::Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
    while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store.flush().await.context("flushing the chunk store")?;
    match Arc::try_unwrap(store) {
        Ok(store) => {
            tokio::task::spawn_blocking(move || drop(store))
                .await
                .context("closing the chunk store")?;
            info!("weft-chunkserver stopped cleanly");
        }
        Err(_) => warn!("requests still running at exit: the next start will recover"),
    }
    Ok(())
}
