//! This chunkserver's standing with the metadata: it registers once, then
//! renews its lease every third of the lease time. The data path serves
//! an extent only while [`Lease::valid`] says so.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fabric::metadata::{Command, Outcome};
use fabric::NodeId;
use tracing::{info, warn};

use super::prepare::now_ms;
use super::raft_rpc::Origin;
use super::Meta;

/// The lease this node holds, as wall-clock milliseconds.
#[derive(Debug, Default)]
pub struct Lease {
    expires_ms: AtomicU64,
}

impl Lease {
    /// Whether the lease is valid now, with `margin_ms` to spare for clock
    /// skew between this node and the leader that granted it.
    pub fn valid(&self, margin_ms: u64) -> bool {
        now_ms().saturating_add(margin_ms) < self.expires_ms.load(Ordering::Relaxed)
    }
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms.load(Ordering::Relaxed)
    }
}

/// Registers `me` and keeps `lease` renewed, for as long as the task
/// runs.
pub fn spawn(meta: Arc<Meta>, me: NodeId, lease: Arc<Lease>) -> tokio::task::JoinHandle<()> {
    let l = lease;
    tokio::spawn(async move {
        let every = Duration::from_millis((meta.lease_ms() / 3).max(100));
        loop {
            let r = meta
                .write(
                    Origin::Node,
                    Command::RegisterNode {
                        node: me.clone(),
                        now_ms: 0,
                    },
                    0,
                )
                .await;
            match r {
                Ok(_) => {
                    info!(node = %me, "registered with the metadata");
                    break;
                }
                Err(e) => warn!(%e, "registering with the metadata; retrying"),
            }
            tokio::time::sleep(every).await;
        }
        loop {
            match meta
                .write(
                    Origin::Node,
                    Command::RenewLease {
                        node: me.clone(),
                        expires_ms: 0,
                    },
                    0,
                )
                .await
            {
                Ok(r) => {
                    if let Outcome::Lease(g) = r.outcome {
                        l.expires_ms.store(g.expires_ms, Ordering::Relaxed);
                    }
                }
                Err(e) => warn!(%e, "lease renewal failed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}
