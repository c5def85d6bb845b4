//! The chunk index in LMDB (heed): chunk id → size, epoch, version, bad
//! blocks. One named database `chunks` (key: [`ChunkId::to_key`], value:
//! a record-version byte then postcard) and one `meta` (format version,
//! clean-shutdown flag). Every write is one LMDB transaction = one fsync, so
//! callers batch: only structural changes (create, delete, epoch, repair
//! marks) and `flush` write here, never an ordinary data write.

use std::path::Path;

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions};
use serde::{Deserialize, Serialize};

use super::{ChunkId, StoreError};

/// Version of the whole on-disk format (index + chunk file layout).
pub const FORMAT_VERSION: u32 = 1;
/// Version byte in front of every index record.
pub const RECORD_VERSION: u8 = 1;
/// Virtual size of the LMDB map: an upper bound on the index, not an
/// allocation. ~100 bytes per chunk → room for millions of chunks.
pub const INDEX_MAP_BYTES: usize = 1 << 30;

const META_FORMAT_VERSION: &[u8] = b"format_version";
const META_CLEAN: &[u8] = b"clean";
/// The kernel's boot id at the last open.
const META_BOOT_ID: &[u8] = b"boot_id";
/// Raised at each open that follows a loss of the page cache (u64 LE).
const META_INCARNATION: &[u8] = b"incarnation";

/// One chunk's durable record (record version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub size_bytes: u64,
    pub epoch: u64,
    pub version: u64,
    /// Blocks known bad (failed verification, or lost): never served until
    /// rewritten.
    pub bad_blocks: Vec<u64>,
}

impl Record {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![RECORD_VERSION];
        let body = postcard::to_stdvec(self).map_err(|e| StoreError::Index(e.to_string()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, body)) => {
                postcard::from_bytes(body).map_err(|e| StoreError::Index(e.to_string()))
            }
            Some((v, _)) => Err(StoreError::Index(format!(
                "unknown index record version {v}"
            ))),
            None => Err(StoreError::Index("empty index record".into())),
        }
    }
}

fn ix(e: heed::Error) -> StoreError {
    StoreError::Index(e.to_string())
}

pub struct Index {
    env: Env,
    chunks: Database<'static, Bytes, Bytes>,
    meta: Database<'static, Bytes, Bytes>,
}

/// What `Index::open` found.
pub struct Opened {
    pub index: Index,
    /// The previous process closed the store cleanly (versions exact).
    pub was_clean: bool,
    /// The store was not closed cleanly in an earlier boot of the kernel:
    /// writes the last process had not synced may be lost.
    pub lost_cache: bool,
    /// Raised each time `lost_cache` is found (1 for a new store).
    pub incarnation: u64,
    pub records: Vec<(ChunkId, Record)>,
}

impl Index {
    /// Open (or create) the index in `dir`, check the format version, load
    /// every record, and mark the store "not clean" until `set_clean`.
    /// `boot_id` names this boot of the kernel (empty: unknown, never taken
    /// for another boot).
    pub fn open(dir: &Path, boot_id: &str) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(dir)?;
        // SAFETY: the index directory belongs to this store alone (one
        // process per data_dir); nothing else maps or modifies these files.
        let env = unsafe {
            EnvOpenOptions::new()
                .map_size(INDEX_MAP_BYTES)
                .max_dbs(4)
                .open(dir)
        }
        .map_err(ix)?;
        let wtxn = env.write_txn().map_err(ix)?;
        let (chunks, meta) = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| -> Result<_, heed::Error> {
                let c = dbo.create_database::<Bytes, Bytes>(wtxn, Some("chunks"))?;
                let m = dbo.create_database::<Bytes, Bytes>(wtxn, Some("meta"))?;
                Ok(CommitOrAbort::<_, ()>::Commit((c, m)))
            })
            .map_err(ix)?
            .unwrap_commit();
        let index = Index { env, chunks, meta };

        let mut wtxn = index.env.write_txn().map_err(ix)?;
        let version = index.meta.get(&wtxn, META_FORMAT_VERSION).map_err(ix)?;
        match version {
            None => {
                let n = index.chunks.len(&wtxn).map_err(ix)?;
                if n != 0 {
                    return Err(StoreError::Index(
                        "index has chunks but no format version".into(),
                    ));
                }
                index
                    .meta
                    .put(
                        &mut wtxn,
                        META_FORMAT_VERSION,
                        &FORMAT_VERSION.to_le_bytes(),
                    )
                    .map_err(ix)?;
                // A brand-new store is "clean": there is nothing to lose.
                index.meta.put(&mut wtxn, META_CLEAN, &[1]).map_err(ix)?;
            }
            Some(v) => {
                let v: [u8; 4] = v
                    .try_into()
                    .map_err(|_| StoreError::Index("bad format_version value".into()))?;
                let v = u32::from_le_bytes(v);
                if v != FORMAT_VERSION {
                    return Err(StoreError::Index(format!(
                        "index format version {v}, this build reads {FORMAT_VERSION}"
                    )));
                }
            }
        }
        let was_clean = index.meta.get(&wtxn, META_CLEAN).map_err(ix)? == Some(&[1][..]);
        index.meta.put(&mut wtxn, META_CLEAN, &[0]).map_err(ix)?;
        let last_boot = index.meta.get(&wtxn, META_BOOT_ID).map_err(ix)?;
        let lost_cache = !was_clean
            && !boot_id.is_empty()
            && last_boot.is_some_and(|b| !b.is_empty() && b != boot_id.as_bytes());
        let mut incarnation = match index.meta.get(&wtxn, META_INCARNATION).map_err(ix)? {
            Some(v) => u64::from_le_bytes(
                v.try_into()
                    .map_err(|_| StoreError::Index("bad incarnation value".into()))?,
            ),
            None => 1,
        };
        if lost_cache {
            incarnation = incarnation.saturating_add(1);
        }
        index
            .meta
            .put(&mut wtxn, META_INCARNATION, &incarnation.to_le_bytes())
            .map_err(ix)?;
        if !boot_id.is_empty() {
            index
                .meta
                .put(&mut wtxn, META_BOOT_ID, boot_id.as_bytes())
                .map_err(ix)?;
        }
        let mut records = Vec::new();
        for item in index.chunks.iter(&wtxn).map_err(ix)? {
            let (k, v) = item.map_err(ix)?;
            let id = ChunkId::from_key(k)
                .ok_or_else(|| StoreError::Index(format!("bad chunk key {k:02x?}")))?;
            records.push((id, Record::decode(v)?));
        }
        wtxn.commit().map_err(ix)?;
        Ok(Opened {
            index,
            was_clean,
            lost_cache,
            incarnation,
            records,
        })
    }

    /// Write some records and delete others in one transaction (one fsync).
    pub fn apply(&self, put: &[(ChunkId, Record)], del: &[ChunkId]) -> Result<(), StoreError> {
        if put.is_empty() && del.is_empty() {
            return Ok(());
        }
        let mut wtxn = self.env.write_txn().map_err(ix)?;
        for (id, rec) in put {
            self.chunks
                .put(&mut wtxn, &id.to_key(), &rec.encode()?)
                .map_err(ix)?;
        }
        for id in del {
            self.chunks.delete(&mut wtxn, &id.to_key()).map_err(ix)?;
        }
        wtxn.commit().map_err(ix)
    }

    pub fn set_clean(&self, clean: bool) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn().map_err(ix)?;
        self.meta
            .put(&mut wtxn, META_CLEAN, &[u8::from(clean)])
            .map_err(ix)?;
        wtxn.commit().map_err(ix)
    }

    /// Test hook: overwrite the stored format version.
    #[cfg(test)]
    pub fn set_format_version(&self, v: u32) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn().map_err(ix)?;
        self.meta
            .put(&mut wtxn, META_FORMAT_VERSION, &v.to_le_bytes())
            .map_err(ix)?;
        wtxn.commit().map_err(ix)
    }
}
