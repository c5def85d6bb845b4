//! A metadata client for gateways, the CLI and chunkservers: reaches any
//! replica in its list (each forwards to the Raft leader), moves on to the
//! next when one is unreachable or has no leader, within one deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::command::Command;
use super::rpc::{
    AdminRequest, MetaError, MetaNode, MetaRead, MetaWrite, ReadReply, ReadRequest, WriteReply,
    WriteRequest,
};
use crate::identity::NodeId;
use crate::rpc::{Client, RpcError};
use crate::wire::Rpc;

/// How long a call keeps trying replicas, by default. Longer than an
/// election (a few seconds), shorter than an initiator's command timeout.
pub const CALL_TIMEOUT_MS_DEFAULT: u64 = 20_000;
/// Pause between rounds over all replicas.
const RETRY_PAUSE_MS: u64 = 200;
/// Deadline of one attempt at one replica.
const ATTEMPT_TIMEOUT_MS: u64 = 8_000;

#[derive(Debug, thiserror::Error)]
pub enum MetaClientError {
    /// The metadata answered: this is its verdict.
    #[error("{0}")]
    Meta(#[from] MetaError),
    /// No replica answered in time.
    #[error("no metadata replica answered within {waited_ms} ms (tried {tried}): {last}")]
    Unreachable {
        waited_ms: u64,
        tried: String,
        last: String,
    },
    #[error("no metadata replicas configured")]
    NoEndpoints,
}

/// A client of the metadata replicas.
#[derive(Debug)]
pub struct MetaClient {
    client: Client,
    endpoints: Vec<(NodeId, SocketAddr)>,
    next: AtomicUsize,
    timeout: Duration,
}

impl MetaClient {
    /// `endpoints`: chunkservers to ask (any subset of the replicas will
    /// do; more is more available).
    pub fn new(client: Client, endpoints: Vec<(NodeId, SocketAddr)>) -> MetaClient {
        MetaClient {
            client,
            endpoints,
            next: AtomicUsize::new(0),
            timeout: Duration::from_millis(CALL_TIMEOUT_MS_DEFAULT),
        }
    }

    /// Keep trying for at most `timeout` per call.
    pub fn with_timeout(mut self, timeout: Duration) -> MetaClient {
        self.timeout = timeout;
        self
    }

    pub fn endpoints(&self) -> &[(NodeId, SocketAddr)] {
        &self.endpoints
    }

    /// A linearizable read.
    pub async fn read(&self, req: ReadRequest) -> Result<ReadReply, MetaClientError> {
        let wait = match &req {
            ReadRequest::Watch { wait_ms, .. } => u64::from(*wait_ms),
            _ => 0,
        };
        self.call::<MetaRead, _>(&req, wait).await
    }

    /// An operator change (needs an admin certificate).
    pub async fn admin(&self, command: Command) -> Result<WriteReply, MetaClientError> {
        self.call::<MetaWrite, _>(&AdminRequest::Command(command), 0)
            .await
    }

    /// Adds a metadata voter (admin).
    pub async fn add_voter(
        &self,
        node: NodeId,
        addr: SocketAddr,
    ) -> Result<WriteReply, MetaClientError> {
        self.call::<MetaWrite, _>(&AdminRequest::AddVoter { node, addr }, 0)
            .await
    }

    /// Removes a metadata voter (admin).
    pub async fn remove_voter(&self, node: NodeId) -> Result<WriteReply, MetaClientError> {
        self.call::<MetaWrite, _>(&AdminRequest::RemoveVoter { node }, 0)
            .await
    }

    /// A change a node makes as it works (leases, extents, PR state).
    pub async fn node(&self, command: Command) -> Result<WriteReply, MetaClientError> {
        self.call::<MetaNode, _>(&WriteRequest { command }, 0).await
    }

    /// Tries replicas in turn until one gives the metadata's answer.
    /// Transport failures and `Unavailable` (no leader yet, no quorum) move
    /// on; every other answer is final.
    async fn call<R, T>(&self, req: &R::Request, extra_ms: u64) -> Result<T, MetaClientError>
    where
        R: Rpc<Response = Result<T, MetaError>>,
    {
        if self.endpoints.is_empty() {
            return Err(MetaClientError::NoEndpoints);
        }
        let start = Instant::now();
        let end = start + self.timeout + Duration::from_millis(extra_ms);
        let mut last = String::from("not tried");
        loop {
            for _ in 0..self.endpoints.len() {
                let i = self.next.load(Ordering::Relaxed) % self.endpoints.len();
                let Some((node, addr)) = self.endpoints.get(i) else {
                    return Err(MetaClientError::NoEndpoints);
                };
                let attempt_end = (Instant::now()
                    + Duration::from_millis(ATTEMPT_TIMEOUT_MS + extra_ms))
                .min(end);
                match self
                    .client
                    .call::<R>(*addr, node, req, Bytes::new(), attempt_end)
                    .await
                {
                    Ok((Ok(v), _)) => return Ok(v),
                    Ok((Err(MetaError::Unavailable(why)), _)) => {
                        last = format!("{node}: {why}");
                    }
                    Ok((Err(MetaError::NotReplica), _)) => {
                        last = format!("{node}: not a metadata replica");
                    }
                    Ok((Err(e), _)) => return Err(e.into()),
                    Err(e @ RpcError::Forbidden(_)) => {
                        return Err(MetaError::Forbidden(e.to_string()).into())
                    }
                    Err(e) => last = format!("{node}: {e}"),
                }
                // Stick with a replica that answers; move on from one that
                // did not.
                self.next.store(i + 1, Ordering::Relaxed);
                if Instant::now() >= end {
                    break;
                }
            }
            if Instant::now() + Duration::from_millis(RETRY_PAUSE_MS) >= end {
                let tried = self
                    .endpoints
                    .iter()
                    .map(|(n, a)| format!("{n}@{a}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(MetaClientError::Unreachable {
                    waited_ms: start.elapsed().as_millis() as u64,
                    tried,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MS)).await;
        }
    }
}
