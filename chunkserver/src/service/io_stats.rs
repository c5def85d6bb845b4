//! The chunk service's I/O counters, for `weft top`: every chunk request
//! is counted where it is handled (the RPC handler), so the node's numbers
//! are the chunk I/O its store serves, whoever asked — gateways reading
//! data chunks, primaries writing data and parity, rebuilds. One client
//! write of a `k+1` LUN is two chunk writes here: the data chunk and the
//! parity delta.
//!
//! Published by `fabric::gossip::io::spawn_io_publisher` under the `io`
//! key (`docs/gossip.md`).

use bytes::Bytes;
use fabric::gossip::{IoMeter, IoOp};
use fabric::wire::Kind;
use tokio::time::Instant;

use super::ChunkError;

/// How a chunk kind counts, and whose payload is its data: reads return
/// data, writes carry it. Listing, stats and scrub requests are
/// housekeeping, not I/O, and are not counted.
pub fn op_of(kind: Kind) -> Option<IoOp> {
    Some(match kind {
        Kind::CHUNK_READ | Kind::CHUNK_FETCH => IoOp::Read,
        Kind::CHUNK_WRITE | Kind::CHUNK_OVERWRITE | Kind::CHUNK_APPLY_DELTA | Kind::CHUNK_PUT => {
            IoOp::Write
        }
        Kind::CHUNK_PUNCH
        | Kind::CHUNK_CREATE
        | Kind::CHUNK_DELETE
        | Kind::CHUNK_SET_EPOCH
        | Kind::CHUNK_FLUSH => IoOp::Other,
        _ => return None,
    })
}

/// Counts one handled request of `kind` that carried `request_bytes` of
/// payload and was `served` (its answer, with the payload sent back).
pub fn count<T>(
    meter: &IoMeter,
    kind: Kind,
    request_bytes: usize,
    served: &Result<(T, Bytes), ChunkError>,
    started: Instant,
) {
    let Some(op) = op_of(kind) else { return };
    match served {
        Ok((_, reply)) => {
            let bytes = match op {
                IoOp::Read => reply.len(),
                IoOp::Write => request_bytes,
                IoOp::Other => 0,
            };
            meter.record(op, bytes as u64, started.elapsed());
        }
        Err(_) => meter.record_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_count_what_they_return_writes_what_they_carry() {
        let m = IoMeter::new();
        let started = Instant::now();
        let read: Result<((), Bytes), ChunkError> = Ok(((), Bytes::from(vec![0; 4096])));
        let write: Result<((), Bytes), ChunkError> = Ok(((), Bytes::from(vec![0; 512])));
        let refused: Result<((), Bytes), ChunkError> = Err(ChunkError::NoLease);
        count(&m, Kind::CHUNK_READ, 0, &read, started);
        // A write answers with the old ⊕ new delta: not data written.
        count(&m, Kind::CHUNK_WRITE, 8192, &write, started);
        count(&m, Kind::CHUNK_APPLY_DELTA, 8192, &write, started);
        count(&m, Kind::CHUNK_FLUSH, 0, &write, started);
        count(&m, Kind::CHUNK_LIST, 0, &read, started);
        count(&m, Kind::CHUNK_READ, 0, &refused, started);
        let c = m.counters();
        assert_eq!((c.read_ops, c.read_bytes), (1, 4096));
        assert_eq!((c.write_ops, c.write_bytes), (2, 16384));
        assert_eq!((c.other_ops, c.errors), (1, 1));
    }
}
