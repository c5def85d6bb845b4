//! A LUN of the cluster as the SCSI layer's block device: logical blocks
//! over the volume client's bytes, each operation counted for `weft top`.

use async_trait::async_trait;
use bytes::Bytes;
use fabric::gossip::{IoMeter, IoOp};
use fabric::volume::{Volume, VolumeError};
use iscsi_target::backend::{check_range, BlockDevice, BlockError, LbaStatus, ProvisioningStatus};
use std::sync::Arc;
use tokio::time::Instant;

/// Where a LUN's I/O is counted: its own meter (`io/lun/<id>` in gossip)
/// and the gateway's (`io`).
#[derive(Clone, Debug)]
pub struct Meters {
    pub lun: Arc<IoMeter>,
    pub gateway: Arc<IoMeter>,
}

impl Meters {
    fn count<T>(&self, op: IoOp, bytes: usize, started: Instant, r: &Result<T, BlockError>) {
        for m in [&self.lun, &self.gateway] {
            match r {
                Ok(_) => m.record(op, bytes as u64, started.elapsed()),
                Err(_) => m.record_error(),
            }
        }
    }
}

pub struct ClusterDevice {
    pub volume: Arc<Volume>,
    block_size: u32,
    meters: Meters,
}

impl ClusterDevice {
    pub fn new(volume: Arc<Volume>, meters: Meters) -> ClusterDevice {
        let block_size = volume.lun().block_size;
        ClusterDevice {
            volume,
            block_size,
            meters,
        }
    }

    fn bytes(&self, lba: u64, blocks: u64) -> Result<(u64, u64), BlockError> {
        check_range(lba, blocks, self.num_blocks())?;
        let bs = u64::from(self.block_size);
        Ok((lba * bs, blocks * bs))
    }
}

fn map(e: VolumeError) -> BlockError {
    match e {
        VolumeError::Miscompare(offset) => BlockError::Miscompare { offset },
        VolumeError::OutOfRange { offset, len, size } => BlockError::OutOfRange {
            lba: offset,
            blocks: len,
            num_blocks: size,
        },
        other => BlockError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl BlockDevice for ClusterDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.volume.size_bytes() / u64::from(self.block_size)
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BlockError> {
        let started = Instant::now();
        let (off, len) = self.bytes(lba, u64::from(blocks))?;
        let r = self.volume.read(off, len).await.map_err(map);
        let bytes = r.as_ref().map_or(0, Bytes::len);
        self.meters.count(IoOp::Read, bytes, started, &r);
        r
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        let bs = self.block_size as usize;
        if !data.len().is_multiple_of(bs) {
            return Err(BlockError::Misaligned {
                len: data.len(),
                block_size: self.block_size,
            });
        }
        let (off, _) = self.bytes(lba, (data.len() / bs) as u64)?;
        let (started, bytes) = (Instant::now(), data.len());
        let r = self.volume.write(off, data, fua).await.map_err(map);
        self.meters.count(IoOp::Write, bytes, started, &r);
        r
    }

    async fn flush(&self) -> Result<(), BlockError> {
        let started = Instant::now();
        let r = self.volume.flush().await.map_err(map);
        self.meters.count(IoOp::Other, 0, started, &r);
        r
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        let (off, len) = self.bytes(lba, blocks)?;
        let started = Instant::now();
        let r = self.volume.unmap(off, len).await.map_err(map);
        self.meters.count(IoOp::Other, 0, started, &r);
        r
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<(), BlockError> {
        let bs = self.block_size as usize;
        if !write.len().is_multiple_of(bs) || compare.len() != write.len() {
            return Err(BlockError::Misaligned {
                len: write.len(),
                block_size: self.block_size,
            });
        }
        let (off, _) = self.bytes(lba, (write.len() / bs) as u64)?;
        let (started, bytes) = (Instant::now(), write.len());
        let r = self
            .volume
            .compare_and_write(off, compare, write, fua)
            .await
            .map_err(map);
        self.meters.count(IoOp::Write, bytes, started, &r);
        r
    }

    async fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        let (off, _) = self.bytes(lba, 1)?;
        let (allocated, len) = self.volume.allocated(off).await.map_err(map)?;
        let bs = u64::from(self.block_size);
        Ok(LbaStatus {
            lba,
            blocks: (len / bs).max(1),
            status: if allocated {
                ProvisioningStatus::Mapped
            } else {
                ProvisioningStatus::Deallocated
            },
        })
    }
}
