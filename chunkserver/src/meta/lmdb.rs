//! The metadata replica's LMDB environment: the Raft log, Raft's own
//! state (vote, committed, purged, snapshot), and the catalogue's records.
//! One environment, so one fsync commits a batch of applied entries
//! together with the applied log id.

use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, U64};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions};
use openraft::{AnyError, StorageIOError};

use super::types::StorageError;

/// Virtual size of the map: an upper bound, not an allocation.
pub const META_MAP_BYTES: usize = 8 << 30;

#[derive(Clone)]
pub struct Store {
    pub env: Env,
    /// Log index (big-endian u64) → entry.
    pub log: Database<'static, U64<BigEndian>, Bytes>,
    /// Raft state: vote, committed, purged, snapshot.
    pub raft: Database<'static, Bytes, Bytes>,
    /// Catalogue records (`state_machine::key_of`) and the applied state.
    pub sm: Database<'static, Bytes, Bytes>,
}

pub fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read(AnyError::error(e)).into()
}

pub fn write_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write(AnyError::error(e)).into()
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        std::fs::create_dir_all(dir).map_err(write_err)?;
        // SAFETY: this directory belongs to this process's metadata replica
        // alone (one process per data directory); nothing else maps or
        // modifies these files.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(META_MAP_BYTES)
                .max_dbs(4)
                .open(dir)
        }
        .map_err(write_err)?;
        let wtxn = env.write_txn().map_err(write_err)?;
        let (log, raft, sm) = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| -> Result<_, heed::Error> {
                let l = dbo.create_database::<U64<BigEndian>, Bytes>(wtxn, Some("log"))?;
                let r = dbo.create_database::<Bytes, Bytes>(wtxn, Some("raft"))?;
                let s = dbo.create_database::<Bytes, Bytes>(wtxn, Some("sm"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((l, r, s)))
            })
            .map_err(write_err)?
            .unwrap_commit();
        Ok(Store { env, log, raft, sm })
    }
}
