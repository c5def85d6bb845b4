//! openraft's own storage test suite run against the LMDB log and state
//! machine: votes, appends, truncation, purge, membership and snapshots
//! behave as Raft needs.

use openraft::testing::{StoreBuilder, Suite};

use super::lmdb::Store;
use super::log_store::LogStore;
use super::state_machine::StateMachine;
use super::types::{StorageError, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().map_err(super::lmdb::write_err)?;
        let store = Store::open(dir.path())?;
        let (sm, _) = StateMachine::open(store.clone())?;
        Ok((dir, LogStore::new(store), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
