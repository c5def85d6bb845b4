//! One chunkserver node assembled from its parts: chunk store, journal,
//! chunk service, metadata replica, extent primary, gossip, and the fabric
//! listener in front of them. `weft-chunkserver` runs one per process;
//! the deterministic simulation (`tests/sim`, `docs/simulation.md`) runs
//! four in one process, so the wiring lives here once.
//!
//! Start-up order matters: the store (and journal) are opened and
//! recovered before the fabric listener binds, so a peer that can connect
//! is talking to a node that is ready.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fabric::gossip::{DriverConfig, Gossip};
use fabric::identity::Role;
use fabric::rpc::{Client, NodeAddrs, Router, RpcConfig, Server};
use fabric::TlsConfig;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Config;
use crate::journal::{Journal, JournalConfig, SEGMENT_BYTES_DEFAULT};
use crate::meta::{self, Meta, MetaConfig};
use crate::primary::{Primary, PrimaryTiming};
use crate::service::{spawn_capacity_publisher, ChunkService};
use crate::store::ChunkStore;

/// Time allowed for in-flight work to finish on shutdown before the store
/// is closed anyway.
const SHUTDOWN_GRACE_MS: u64 = 2_000;

/// A running chunkserver. [`Node::stop`] shuts it down cleanly; dropping it
/// (or the runtime under it) is a crash, which the store, journal and
/// metadata recover from on the next start.
pub struct Node {
    server: Server,
    meta: Arc<Meta>,
    gossip: Option<Arc<Gossip>>,
    primary: Option<Arc<Primary>>,
    journal: Arc<Journal>,
    store: Arc<ChunkStore>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Opens and recovers the store and journal, starts the metadata
    /// replica, binds the fabric listener and starts the background work.
    pub async fn start(cfg: &Config, tls: &TlsConfig) -> Result<Node> {
        let store_cfg = cfg.store.clone();
        let store = fabric::env::blocking(move || ChunkStore::open(store_cfg))
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
        // Inline in the simulation (no blocking pool there); elsewhere the
        // replay's reads and the directory's fsyncs go to the pool.
        let (journal, replay) = if fabric::env::simulated() {
            Journal::open(journal_cfg)
        } else {
            tokio::task::spawn_blocking(move || Journal::open(journal_cfg))
                .await
                .context("opening the journal")?
        }
        .with_context(|| format!("opening the journal in {}", cfg.journal_dir.display()))?;
        let journal = Arc::new(journal);

        let mut router = Router::new();
        let lease = Arc::new(meta::agent::Lease::default());
        let service = ChunkService::new(store.clone());
        let fences = service.fences();
        // Without metadata (a bare chunk store) there is no lease to honour.
        let service = if cfg.voters.is_empty() {
            service
        } else {
            service.with_lease(lease.clone())
        };
        service
            .register(&mut router)
            .context("registering the chunk service")?;
        // Chunk I/O counters for `weft top` (published below, with gossip).
        let io = service.io_meter();
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
        let client = Client::new(tls, RpcConfig::default());
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
                    PrimaryTiming {
                        replace_after: (cfg.replace_after_secs > 0)
                            .then(|| Duration::from_secs(cfg.replace_after_secs)),
                        flush_after: Duration::from_secs(cfg.journal_flush_after_secs),
                    },
                );
                // The primary reaches the chunks this node holds through
                // the router, taken before the primary's own handlers are
                // in it: a router holding them would hold the primary, and
                // the primary holds this router, a cycle that keeps the
                // store (and its LMDB environment) open after the node
                // stops or crashes (weft-sim: "environment already open").
                p.set_local(router.clone());
                p.register(&mut router)
                    .context("registering the extent primary")?;
                Some(p)
            }
            None => {
                warn!("gossip disabled: this node cannot act as an extent primary");
                None
            }
        };
        let server = Server::bind(cfg.listen, tls, router, RpcConfig::default())
            .await
            .with_context(|| format!("binding the fabric listener on {}", cfg.listen))?;
        let mut tasks = Vec::new();
        meta.bootstrap()
            .await
            .context("initializing the metadata cluster")?;
        if let Some(p) = &primary {
            p.spawn_replay(replay, journal.settled_at_open(), store.lost_cache());
            tasks.push(p.spawn_repair());
            tasks.push(p.spawn_checkpoint());
        } else if !replay.is_empty() {
            warn!(
                records = replay.len(),
                "journal records kept: no extent primary to replay them"
            );
        }
        if cfg.voters.is_empty() {
            warn!("no [metadata] voters configured: this node serves chunks only");
        } else {
            if cfg.gc_interval_secs > 0 {
                tasks.push(crate::gc::spawn(
                    meta.clone(),
                    cfg.node_id.clone(),
                    store.clone(),
                    Duration::from_secs(cfg.gc_interval_secs),
                ));
            }
            tasks.push(meta::agent::spawn(
                meta.clone(),
                cfg.node_id.clone(),
                lease.clone(),
                meta::agent::Serving {
                    store: store.clone(),
                    fences,
                    primary: primary.clone(),
                },
            ));
        }
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
            tasks.push(fabric::gossip::spawn_io_publisher(
                g.clone(),
                Duration::from_millis(fabric::gossip::io::IO_PUBLISH_INTERVAL_MS_DEFAULT),
                move || vec![(fabric::gossip::state::keys::IO.to_string(), io.clone())],
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
        Ok(Node {
            server,
            meta,
            gossip,
            primary,
            journal,
            store,
            tasks,
        })
    }

    /// The fabric address actually bound.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    /// The chunk store (for status and tests).
    pub fn store(&self) -> &Arc<ChunkStore> {
        &self.store
    }

    /// Stops cleanly: the listener closes first, then the metadata replica
    /// and background work, then the journal and the store are flushed and
    /// closed (so the next start needs no crash recovery).
    pub async fn stop(self) -> Result<()> {
        let Node {
            server,
            meta,
            gossip,
            primary,
            journal,
            store,
            tasks,
        } = self;
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
                fabric::env::blocking(move || drop(store))
                    .await
                    .context("closing the chunk store")?;
                info!("weft-chunkserver stopped cleanly");
            }
            Err(_) => warn!("requests still running at exit: the next start will recover"),
        }
        Ok(())
    }
}
