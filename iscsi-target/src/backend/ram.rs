//! A thin in-memory device: segments are allocated on first write and freed
//! by unmap, so a large RAM LUN costs only what has been written.

use super::{
    check_range, first_difference, BlockDevice, BlockError, LbaStatus, ProvisioningStatus,
};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::RwLock;

/// Allocation unit of the RAM device.
const SEGMENT_BYTES: usize = 64 * 1024;

pub struct RamDevice {
    block_size: u32,
    num_blocks: u64,
    segments: RwLock<Vec<Option<Box<[u8]>>>>,
}

impl RamDevice {
    /// A zero-filled device of `size_bytes` (rounded down to whole blocks).
    pub fn new(size_bytes: u64, block_size: u32) -> Self {
        assert!(block_size == 512 || block_size == 4096);
        let num_blocks = size_bytes / u64::from(block_size);
        let bytes = num_blocks * u64::from(block_size);
        let nsegs = bytes.div_ceil(SEGMENT_BYTES as u64) as usize;
        RamDevice {
            block_size,
            num_blocks,
            segments: RwLock::new((0..nsegs).map(|_| None).collect()),
        }
    }

    fn byte_range(&self, lba: u64, blocks: u64) -> Result<(u64, usize), BlockError> {
        check_range(lba, blocks, self.num_blocks)?;
        let bs = u64::from(self.block_size);
        Ok((lba * bs, (blocks * bs) as usize))
    }

    fn check_len(&self, len: usize) -> Result<u64, BlockError> {
        if !len.is_multiple_of(self.block_size as usize) {
            return Err(BlockError::Misaligned {
                len,
                block_size: self.block_size,
            });
        }
        Ok((len / self.block_size as usize) as u64)
    }
}

/// Appends `len` bytes from `off` to `out`, without zero-filling first.
fn append_out(segments: &[Option<Box<[u8]>>], mut off: u64, len: usize, out: &mut Vec<u8>) {
    let end = out.len() + len;
    while out.len() < end {
        let seg = (off / SEGMENT_BYTES as u64) as usize;
        let in_seg = (off % SEGMENT_BYTES as u64) as usize;
        let n = (SEGMENT_BYTES - in_seg).min(end - out.len());
        match &segments[seg] {
            Some(s) => out.extend_from_slice(&s[in_seg..in_seg + n]),
            None => out.resize(out.len() + n, 0),
        }
        off += n as u64;
    }
}

fn copy_out(segments: &[Option<Box<[u8]>>], mut off: u64, out: &mut [u8]) {
    let mut done = 0;
    while done < out.len() {
        let seg = (off / SEGMENT_BYTES as u64) as usize;
        let in_seg = (off % SEGMENT_BYTES as u64) as usize;
        let n = (SEGMENT_BYTES - in_seg).min(out.len() - done);
        match &segments[seg] {
            Some(s) => out[done..done + n].copy_from_slice(&s[in_seg..in_seg + n]),
            None => out[done..done + n].fill(0),
        }
        done += n;
        off += n as u64;
    }
}

fn copy_in(segments: &mut [Option<Box<[u8]>>], mut off: u64, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let seg = (off / SEGMENT_BYTES as u64) as usize;
        let in_seg = (off % SEGMENT_BYTES as u64) as usize;
        let n = (SEGMENT_BYTES - in_seg).min(data.len() - done);
        let s = segments[seg].get_or_insert_with(|| vec![0u8; SEGMENT_BYTES].into_boxed_slice());
        s[in_seg..in_seg + n].copy_from_slice(&data[done..done + n]);
        done += n;
        off += n as u64;
    }
}

#[async_trait]
impl BlockDevice for RamDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BlockError> {
        let (off, len) = self.byte_range(lba, u64::from(blocks))?;
        let mut out = Vec::with_capacity(len);
        append_out(&self.segments.read(), off, len, &mut out);
        Ok(Bytes::from(out))
    }

    async fn write(&self, lba: u64, data: Bytes, _fua: bool) -> Result<(), BlockError> {
        let blocks = self.check_len(data.len())?;
        let (off, _) = self.byte_range(lba, blocks)?;
        copy_in(&mut self.segments.write(), off, &data);
        Ok(())
    }

    async fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        let (off, len) = self.byte_range(lba, blocks)?;
        let mut segs = self.segments.write();
        let end = off + len as u64;
        let mut pos = off;
        while pos < end {
            let seg = (pos / SEGMENT_BYTES as u64) as usize;
            let seg_start = seg as u64 * SEGMENT_BYTES as u64;
            let seg_end = seg_start + SEGMENT_BYTES as u64;
            let stop = end.min(seg_end);
            if pos == seg_start && stop == seg_end {
                segs[seg] = None;
            } else if let Some(s) = &mut segs[seg] {
                s[(pos - seg_start) as usize..(stop - seg_start) as usize].fill(0);
            }
            pos = stop;
        }
        Ok(())
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        _fua: bool,
    ) -> Result<(), BlockError> {
        let blocks = self.check_len(compare.len())?;
        if write.len() != compare.len() {
            return Err(BlockError::Misaligned {
                len: write.len(),
                block_size: self.block_size,
            });
        }
        let (off, len) = self.byte_range(lba, blocks)?;
        // One write lock over compare and write makes the pair atomic.
        let mut segs = self.segments.write();
        let mut current = vec![0u8; len];
        copy_out(&segs, off, &mut current);
        if let Some(offset) = first_difference(&current, &compare) {
            return Err(BlockError::Miscompare { offset });
        }
        copy_in(&mut segs, off, &write);
        Ok(())
    }

    async fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        check_range(lba, 1, self.num_blocks)?;
        let bs = u64::from(self.block_size);
        let segs = self.segments.read();
        let seg_of = |l: u64| ((l * bs) / SEGMENT_BYTES as u64) as usize;
        let mapped = segs[seg_of(lba)].is_some();
        let mut end = lba;
        while end < self.num_blocks && segs[seg_of(end)].is_some() == mapped {
            // Jump to the first block of the next segment.
            let next_seg_byte = (seg_of(end) as u64 + 1) * SEGMENT_BYTES as u64;
            end = next_seg_byte.div_ceil(bs).min(self.num_blocks);
        }
        Ok(LbaStatus {
            lba,
            blocks: end - lba,
            status: if mapped {
                ProvisioningStatus::Mapped
            } else {
                ProvisioningStatus::Deallocated
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_read_unmap() {
        let d = RamDevice::new(1 << 20, 512);
        assert_eq!(d.num_blocks(), 2048);
        let data = Bytes::from(vec![7u8; 512 * 200]);
        d.write(100, data.clone(), false).await.unwrap();
        assert_eq!(d.read(100, 200).await.unwrap(), data);
        assert!(d.read(2000, 49).await.is_err());
        d.unmap(0, 2048).await.unwrap();
        assert!(d.read(100, 200).await.unwrap().iter().all(|&b| b == 0));
        assert_eq!(
            d.lba_status(0).await.unwrap().status,
            ProvisioningStatus::Deallocated
        );
    }

    #[tokio::test]
    async fn caw_miscompare_reports_offset() {
        let d = RamDevice::new(1 << 20, 512);
        let mut cmp = vec![0u8; 512];
        cmp[37] = 1;
        let err = d
            .compare_and_write(3, cmp.into(), vec![9u8; 512].into(), false)
            .await
            .unwrap_err();
        assert!(matches!(err, BlockError::Miscompare { offset: 37 }));
        d.compare_and_write(3, vec![0u8; 512].into(), vec![9u8; 512].into(), false)
            .await
            .unwrap();
        assert_eq!(d.read(3, 1).await.unwrap()[0], 9);
    }
}
