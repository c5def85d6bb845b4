//! The catalogue as a Raft state machine, kept in memory for reads and in
//! LMDB for restarts: every batch of applied entries writes the records it
//! changed and the applied log id in one commit, so a restarted replica
//! resumes from exactly what it had applied (no re-application: applying
//! twice would, for example, allocate a LUN id twice).

use std::io::Cursor;
use std::sync::Arc;

use fabric::metadata::{Catalogue, Change};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftLogId, RaftSnapshotBuilder};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::lmdb::{read_err, write_err, Store};
use super::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use fabric::metadata::{CatalogueError, Outcome};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const KEY_COUNTERS: &[u8] = b"counters";

/// What the replica has applied, persisted beside the records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Applied {
    log_id: Option<LogId>,
    membership: StoredMembership,
}

/// Catalogue fields that are not records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Counters {
    next_lun_id: u64,
    revision: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The record key of a change: a type byte, then the record's id.
fn key_of(c: &Change) -> Vec<u8> {
    let mut k = Vec::with_capacity(24);
    match c {
        Change::Node(n) => {
            k.push(b'n');
            k.extend_from_slice(n.as_str().as_bytes());
        }
        Change::Lun(id) => {
            k.push(b'l');
            k.extend_from_slice(&id.to_be_bytes());
        }
        Change::Target(iqn) => {
            k.push(b't');
            k.extend_from_slice(iqn.as_bytes());
        }
        Change::Extent(l, i) => {
            k.push(b'e');
            k.extend_from_slice(&l.to_be_bytes());
            k.extend_from_slice(&i.to_be_bytes());
        }
        Change::Lease(n) => {
            k.push(b's');
            k.extend_from_slice(n.as_str().as_bytes());
        }
        Change::Pr(l) => {
            k.push(b'p');
            k.extend_from_slice(&l.to_be_bytes());
        }
    }
    k
}

/// The record's current value, or `None` when it was deleted.
fn value_of(cat: &Catalogue, c: &Change) -> Result<Option<Vec<u8>>, StorageError> {
    Ok(match c {
        Change::Node(n) => cat.nodes.get(n).map(enc).transpose()?,
        Change::Lun(id) => cat.luns.get(id).map(enc).transpose()?,
        Change::Target(iqn) => cat.targets.get(iqn).map(enc).transpose()?,
        Change::Extent(l, i) => cat.extents.get(&(*l, *i)).map(enc).transpose()?,
        Change::Lease(n) => cat.leases.get(n).map(enc).transpose()?,
        Change::Pr(l) => cat.pr.get(l).map(enc).transpose()?,
    })
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_stdvec(v).map_err(write_err)
}

fn dec<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StorageError> {
    postcard::from_bytes(b).map_err(read_err)
}

/// Loads the catalogue from its records.
fn load(store: &Store) -> Result<(Catalogue, Applied), StorageError> {
    let rtxn = store.env.read_txn().map_err(read_err)?;
    let mut cat = Catalogue::default();
    let mut applied = Applied::default();
    for item in store.sm.iter(&rtxn).map_err(read_err)? {
        let (k, v) = item.map_err(read_err)?;
        let Some((&t, id)) = k.split_first() else {
            continue;
        };
        match t {
            b'n' => {
                let r: fabric::metadata::catalogue::NodeEntry = dec(v)?;
                cat.nodes.insert(r.id.clone(), r);
            }
            b'l' => {
                let r: fabric::metadata::Lun = dec(v)?;
                cat.luns.insert(r.id, r);
            }
            b't' => {
                let r: fabric::metadata::Target = dec(v)?;
                cat.targets.insert(r.iqn.clone(), r);
            }
            b'e' => {
                let r: fabric::metadata::Extent = dec(v)?;
                cat.extents.insert((r.lun, r.index), r);
            }
            b's' => {
                let r: fabric::metadata::catalogue::Lease = dec(v)?;
                cat.leases.insert(r.node.clone(), r);
            }
            b'p' => {
                let lun =
                    u64::from_be_bytes(id.try_into().map_err(|_| read_err("bad PR record key"))?);
                cat.pr.insert(lun, dec(v)?);
            }
            _ => {
                if k == KEY_APPLIED {
                    applied = dec(v)?;
                } else if k == KEY_COUNTERS {
                    let c: Counters = dec(v)?;
                    cat.next_lun_id = c.next_lun_id;
                    cat.revision = c.revision;
                }
            }
        }
    }
    Ok((cat, applied))
}

/// The state machine openraft drives. Reads go through [`Shared`].
pub struct StateMachine {
    store: Store,
    shared: Shared,
    applied: Applied,
}

/// What the service reads: the catalogue and a signal on every change.
#[derive(Clone)]
pub struct Shared {
    pub catalogue: Arc<RwLock<Catalogue>>,
    /// The catalogue's revision, bumped after every applied change.
    pub revision: watch::Sender<u64>,
}

impl StateMachine {
    pub fn open(store: Store) -> Result<(StateMachine, Shared), StorageError> {
        let (cat, applied) = load(&store)?;
        let (revision, _) = watch::channel(cat.revision);
        let shared = Shared {
            catalogue: Arc::new(RwLock::new(cat)),
            revision,
        };
        Ok((
            StateMachine {
                store,
                shared: shared.clone(),
                applied,
            },
            shared,
        ))
    }

    fn persist(&self, changes: &[Change]) -> Result<(), StorageError> {
        let cat = self.shared.catalogue.read();
        let mut wtxn = self.store.env.write_txn().map_err(write_err)?;
        for c in changes {
            let k = key_of(c);
            match value_of(&cat, c)? {
                Some(v) => self.store.sm.put(&mut wtxn, &k, &v).map_err(write_err)?,
                None => {
                    self.store.sm.delete(&mut wtxn, &k).map_err(write_err)?;
                }
            }
        }
        self.put_state(&mut wtxn, &cat)?;
        drop(cat);
        wtxn.commit().map_err(write_err)
    }

    /// Writes what is not a record — the catalogue's counters and the
    /// applied log id — into `wtxn`, beside the records it commits.
    fn put_state(&self, wtxn: &mut heed::RwTxn, cat: &Catalogue) -> Result<(), StorageError> {
        let counters = Counters {
            next_lun_id: cat.next_lun_id,
            revision: cat.revision,
        };
        self.store
            .sm
            .put(wtxn, KEY_COUNTERS, &enc(&counters)?)
            .map_err(write_err)?;
        self.store
            .sm
            .put(wtxn, KEY_APPLIED, &enc(&self.applied)?)
            .map_err(write_err)
    }
}

pub struct SnapshotBuilder {
    store: Store,
    catalogue: Catalogue,
    applied: Applied,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let data = postcard::to_stdvec(&self.catalogue).map_err(write_err)?;
        let last = self.applied.log_id;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: self.applied.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let mut wtxn = self.store.env.write_txn().map_err(write_err)?;
        self.store
            .raft
            .put(
                &mut wtxn,
                KEY_SNAPSHOT,
                &postcard::to_stdvec(&stored).map_err(write_err)?,
            )
            .map_err(write_err)?;
        wtxn.commit().map_err(write_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied.log_id, self.applied.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<Result<Outcome, CatalogueError>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut changes = Vec::new();
        {
            let mut cat = self.shared.catalogue.write();
            for e in entries {
                let log_id = *e.get_log_id();
                self.applied.log_id = Some(log_id);
                match e.payload {
                    EntryPayload::Blank => out.push(Ok(Outcome::Done)),
                    EntryPayload::Normal(cmd) => {
                        let (res, changed) = cat.apply(log_id.index, &cmd);
                        changes.extend(changed);
                        out.push(res);
                    }
                    EntryPayload::Membership(m) => {
                        self.applied.membership = StoredMembership::new(Some(log_id), m);
                        out.push(Ok(Outcome::Done));
                    }
                }
            }
        }
        changes.sort();
        changes.dedup();
        self.persist(&changes)?;
        let rev = self.shared.catalogue.read().revision;
        self.shared.revision.send_replace(rev);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            catalogue: self.shared.catalogue.read().clone(),
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let cat: Catalogue = dec(&data)?;
        self.applied = Applied {
            log_id: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        // Rewrite every record: the snapshot replaces the state wholesale.
        let mut wtxn = self.store.env.write_txn().map_err(write_err)?;
        self.store.sm.clear(&mut wtxn).map_err(write_err)?;
        let mut all: Vec<Change> = Vec::new();
        all.extend(cat.nodes.keys().cloned().map(Change::Node));
        all.extend(cat.luns.keys().map(|k| Change::Lun(*k)));
        all.extend(cat.targets.keys().cloned().map(Change::Target));
        all.extend(cat.extents.keys().map(|(l, i)| Change::Extent(*l, *i)));
        all.extend(cat.leases.keys().cloned().map(Change::Lease));
        all.extend(cat.pr.keys().map(|k| Change::Pr(*k)));
        for c in &all {
            if let Some(v) = value_of(&cat, c)? {
                self.store
                    .sm
                    .put(&mut wtxn, &key_of(c), &v)
                    .map_err(write_err)?;
            }
        }
        self.put_state(&mut wtxn, &cat)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.store
            .raft
            .put(&mut wtxn, KEY_SNAPSHOT, &enc(&stored)?)
            .map_err(write_err)?;
        wtxn.commit().map_err(write_err)?;
        let rev = cat.revision;
        *self.shared.catalogue.write() = cat;
        self.shared.revision.send_replace(rev);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let rtxn = self.store.env.read_txn().map_err(read_err)?;
        let stored: Option<StoredSnapshot> =
            match self.store.raft.get(&rtxn, KEY_SNAPSHOT).map_err(read_err)? {
                Some(b) => Some(dec(b)?),
                None => None,
            };
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
