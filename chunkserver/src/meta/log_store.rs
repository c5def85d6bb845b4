//! The Raft log in LMDB. Every append, vote and truncation is one LMDB
//! commit (an fsync) before openraft is told it is done: a vote or an
//! entry acknowledged to a peer survives a crash.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{RaftLogId, StorageIOError};

use super::lmdb::{read_err, write_err, Store};
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(write_err)
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(b).map_err(read_err)
}

#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

impl LogStore {
    pub fn new(store: Store) -> LogStore {
        LogStore { store }
    }

    fn get_raft<T: serde::de::DeserializeOwned>(
        &self,
        k: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let rtxn = self.store.env.read_txn().map_err(read_err)?;
        match self.store.raft.get(&rtxn, k).map_err(read_err)? {
            Some(b) => Ok(Some(dec(b)?)),
            None => Ok(None),
        }
    }

    fn put_raft<T: serde::Serialize>(&self, k: &[u8], v: &T) -> Result<(), StorageError> {
        let mut wtxn = self.store.env.write_txn().map_err(write_err)?;
        self.store
            .raft
            .put(&mut wtxn, k, &enc(v)?)
            .map_err(write_err)?;
        wtxn.commit().map_err(write_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let rtxn = self.store.env.read_txn().map_err(read_err)?;
        let mut out = Vec::new();
        for item in self.store.log.range(&rtxn, &(start..)).map_err(read_err)? {
            let (idx, v) = item.map_err(read_err)?;
            if !range.contains(&idx) {
                break;
            }
            out.push(dec::<Entry>(v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.get_raft(KEY_PURGED)?;
        let rtxn = self.store.env.read_txn().map_err(read_err)?;
        let last = match self.store.log.last(&rtxn).map_err(read_err)? {
            Some((_, v)) => Some(*dec::<Entry>(v)?.get_log_id()),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_raft(KEY_VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_raft(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_raft(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_raft::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let res = (|| {
            let mut wtxn = self.store.env.write_txn().map_err(write_err)?;
            for e in entries {
                let idx = e.get_log_id().index;
                self.store
                    .log
                    .put(&mut wtxn, &idx, &enc(&e)?)
                    .map_err(write_err)?;
            }
            wtxn.commit().map_err(write_err)
        })();
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut wtxn = self.store.env.write_txn().map_err(write_err)?;
        self.store
            .log
            .delete_range(&mut wtxn, &(log_id.index..))
            .map_err(write_err)?;
        wtxn.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut wtxn = self.store.env.write_txn().map_err(write_err)?;
        self.store
            .raft
            .put(&mut wtxn, KEY_PURGED, &enc(&log_id)?)
            .map_err(write_err)?;
        self.store
            .log
            .delete_range(&mut wtxn, &(..=log_id.index))
            .map_err(|e| {
                StorageError::from(StorageIOError::write_logs(openraft::AnyError::error(e)))
            })?;
        wtxn.commit().map_err(write_err)
    }
}
