//! `weft-chunkserver`: one node's chunk store, served over the fabric.
//!
//! The wiring is `chunkserver::node` (shared with the deterministic
//! simulation); this binary reads the config and certificates, starts a
//! [`Node`], and on SIGTERM or SIGINT stops it cleanly: the listener closes
//! first, then the store is flushed and closed (so the next start needs no
//! crash recovery).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chunkserver::config::{describe_seeds, Config, RuntimeConfig};
use chunkserver::node::Node;
use clap::Parser;
use fabric::identity::Role;
use fabric::{NodeCredentials, TlsConfig};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

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
    let rt_cfg = match RuntimeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-chunkserver: error: bad configuration: {e}");
            std::process::exit(1);
        }
    };
    let runtime = match fabric::env::runtime_builder(rt_cfg.worker_threads).build() {
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
    let node = Node::start(&cfg, &tls).await?;

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(signal = which, "weft-chunkserver stopping");
    node.stop().await
}
