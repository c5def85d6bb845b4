//! Capacity into gossip: placement weighs nodes by free space and skips
//! full ones, from the gossiped view. The store's numbers change with every
//! create and delete; publishing them on a timer (not per change) bounds
//! the gossip traffic they cause.

use std::sync::Arc;
use std::time::Duration;

use fabric::gossip::driver::Gossip;
use fabric::gossip::state::Capacity;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::store::{ChunkStore, StoreStats};

/// How often capacity is published, by default.
pub const CAPACITY_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// The gossip record for the store's numbers. `bytes_reserved` carries the
/// reserve: space placement must not count as free, since the node refuses
/// new chunks inside it (in-flight promises are not tracked yet).
pub fn capacity_of(s: &StoreStats) -> Capacity {
    Capacity {
        bytes_total: s.capacity_bytes,
        bytes_used: s.used_bytes,
        bytes_reserved: s.reserve_bytes,
        chunks: s.chunks,
    }
}

/// Publishes the store's capacity now and every `interval`, when changed.
pub fn spawn_capacity_publisher(
    gossip: Arc<Gossip>,
    store: Arc<ChunkStore>,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let c = capacity_of(&store.stats());
            if last != Some(c) {
                match gossip.set_capacity(&c) {
                    Ok(()) => last = Some(c),
                    Err(e) => debug!(error = %e, "gossip: capacity not published"),
                }
            }
            tokio::time::sleep(interval).await;
        }
    })
}
