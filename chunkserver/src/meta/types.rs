//! The Raft type configuration: what a log entry carries (a catalogue
//! [`Command`]), what applying it returns, and who the members are.

use std::fmt;
use std::io::Cursor;

use fabric::metadata::{CatalogueError, Command, Outcome};
use serde::{Deserialize, Serialize};

/// A Raft member as the membership config records it: its fabric node id
/// and address (each replica may override the address from its own
/// config, see `network`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node: String,
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.addr)
    }
}

openraft::declare_raft_types!(
    /// weft's metadata Raft.
    pub TypeConfig:
        D = Command,
        R = Result<Outcome, CatalogueError>,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = WeftRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type RaftNodeId = u64;
pub type LogId = openraft::LogId<RaftNodeId>;
pub type Vote = openraft::Vote<RaftNodeId>;
pub type StorageError = openraft::StorageError<RaftNodeId>;
pub type StoredMembership = openraft::StoredMembership<RaftNodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<RaftNodeId, Member>;
pub type Entry = openraft::Entry<TypeConfig>;

/// The Raft id of a fabric node: FNV-1a of its node id, so no second
/// numbering has to be configured and kept in step. Collisions among the
/// voters of one cluster are checked at start-up.
pub fn raft_id(node: &str) -> RaftNodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // 0 reads as "no node" in some of openraft's displays; keep clear.
    h.max(1)
}

/// openraft's tokio runtime with one change: the random numbers behind the
/// election timeouts come from `fabric::env::random_u64`, so that inside
/// the deterministic simulation (`docs/simulation.md`) elections replay from
/// the seed. Outside it they come from the OS, as before.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WeftRuntime;

/// The generator openraft gets from [`WeftRuntime`].
pub struct EnvRng;

impl rand08::RngCore for EnvRng {
    fn next_u32(&mut self) -> u32 {
        fabric::env::random_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        fabric::env::random_u64()
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for c in dest.chunks_mut(8) {
            let b = fabric::env::random_u64().to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand08::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

type Tokio = openraft::TokioRuntime;

impl openraft::AsyncRuntime for WeftRuntime {
    type JoinError = <Tokio as openraft::AsyncRuntime>::JoinError;
    type JoinHandle<T: openraft::OptionalSend + 'static> =
        <Tokio as openraft::AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as openraft::AsyncRuntime>::Sleep;
    type Instant = <Tokio as openraft::AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as openraft::AsyncRuntime>::TimeoutError;
    type Timeout<R, T: std::future::Future<Output = R> + openraft::OptionalSend> =
        <Tokio as openraft::AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = EnvRng;
    type OneshotSender<T: openraft::OptionalSend> =
        <Tokio as openraft::AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as openraft::AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: openraft::OptionalSend> =
        <Tokio as openraft::AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: std::future::Future + openraft::OptionalSend + 'static,
        T::Output: openraft::OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: std::time::Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: std::future::Future<Output = R> + openraft::OptionalSend>(
        duration: std::time::Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: std::future::Future<Output = R> + openraft::OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        EnvRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: openraft::OptionalSend,
    {
        Tokio::oneshot()
    }
}
