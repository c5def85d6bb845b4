//! A device in a sparse file: nothing allocated until written, holes punched
//! on unmap, `fdatasync` on flush and FUA.

use super::{
    check_range, first_difference, BlockDevice, BlockError, LbaStatus, ProvisioningStatus,
};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::RwLock;

pub struct FileDevice {
    file: Arc<File>,
    block_size: u32,
    num_blocks: u64,
    /// Writes hold it shared, COMPARE AND WRITE exclusively, so that nothing
    /// interleaves between its compare and its write.
    order: RwLock<()>,
}

impl FileDevice {
    /// Opens (creating if needed) `path`. With `size_bytes`, the file is
    /// extended (sparsely) to that size if it is smaller; without, the file's
    /// current size is used.
    pub fn open(path: &Path, size_bytes: Option<u64>, block_size: u32) -> std::io::Result<Self> {
        assert!(block_size == 512 || block_size == 4096);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size_bytes.is_some())
            .truncate(false)
            .open(path)?;
        let mut len = file.metadata()?.len();
        if let Some(want) = size_bytes {
            if len < want {
                file.set_len(want)?;
                len = want;
            }
        }
        let num_blocks = len / u64::from(block_size);
        if num_blocks == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} holds no whole {block_size}-byte block", path.display()),
            ));
        }
        Ok(FileDevice {
            file: Arc::new(file),
            block_size,
            num_blocks,
            order: RwLock::new(()),
        })
    }

    fn bytes_of(&self, len: usize) -> Result<u64, BlockError> {
        if !len.is_multiple_of(self.block_size as usize) {
            return Err(BlockError::Misaligned {
                len,
                block_size: self.block_size,
            });
        }
        Ok((len / self.block_size as usize) as u64)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, BlockError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || f(&file))
            .await
            .map_err(|e| BlockError::Io(std::io::Error::other(e)))?
            .map_err(BlockError::Io)
    }

    async fn write_at(&self, off: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        self.blocking(move |f| {
            f.write_all_at(&data, off)?;
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn read_at(&self, off: u64, len: usize) -> Result<Bytes, BlockError> {
        self.blocking(move |f| {
            let mut buf = BytesMut::zeroed(len);
            f.read_exact_at(&mut buf, off)?;
            Ok(buf.freeze())
        })
        .await
    }
}

#[async_trait]
impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    async fn read(&self, lba: u64, blocks: u32) -> Result<Bytes, BlockError> {
        check_range(lba, u64::from(blocks), self.num_blocks)?;
        let bs = u64::from(self.block_size);
        self.read_at(lba * bs, (u64::from(blocks) * bs) as usize)
            .await
    }

    async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<(), BlockError> {
        let blocks = self.bytes_of(data.len())?;
        check_range(lba, blocks, self.num_blocks)?;
        let _shared = self.order.read().await;
        self.write_at(lba * u64::from(self.block_size), data, fua)
            .await
    }

    async fn flush(&self) -> Result<(), BlockError> {
        self.blocking(|f| f.sync_data()).await
    }

    async fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BlockError> {
        check_range(lba, blocks, self.num_blocks)?;
        let bs = u64::from(self.block_size);
        let (off, len) = (lba * bs, blocks * bs);
        let _shared = self.order.read().await;
        self.blocking(move |f| punch_hole(f, off, len)).await
    }

    async fn compare_and_write(
        &self,
        lba: u64,
        compare: Bytes,
        write: Bytes,
        fua: bool,
    ) -> Result<(), BlockError> {
        let blocks = self.bytes_of(compare.len())?;
        if write.len() != compare.len() {
            return Err(BlockError::Misaligned {
                len: write.len(),
                block_size: self.block_size,
            });
        }
        check_range(lba, blocks, self.num_blocks)?;
        let off = lba * u64::from(self.block_size);
        let _exclusive = self.order.write().await;
        let current = self.read_at(off, compare.len()).await?;
        if let Some(offset) = first_difference(&current, &compare) {
            return Err(BlockError::Miscompare { offset });
        }
        self.write_at(off, write, fua).await
    }

    async fn lba_status(&self, lba: u64) -> Result<LbaStatus, BlockError> {
        check_range(lba, 1, self.num_blocks)?;
        let bs = u64::from(self.block_size);
        let size = self.num_blocks * bs;
        let off = lba * bs;
        let (data_at, hole_at) = self
            .blocking(move |f| Ok((seek(f, off, libc::SEEK_DATA), seek(f, off, libc::SEEK_HOLE))))
            .await?;
        // SEEK_DATA fails (ENXIO) when only a hole follows `off`.
        let data_at = data_at.unwrap_or(size).min(size);
        let hole_at = hole_at.unwrap_or(size).min(size);
        let (status, end) = if data_at == off {
            (ProvisioningStatus::Mapped, hole_at.div_ceil(bs))
        } else {
            (ProvisioningStatus::Deallocated, (data_at / bs).max(lba + 1))
        };
        Ok(LbaStatus {
            lba,
            blocks: end.min(self.num_blocks).max(lba + 1) - lba,
            status,
        })
    }
}

fn seek(f: &File, off: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on a file descriptor we own; it reads no memory of ours.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    (r >= 0).then_some(r as u64)
}

fn punch_hole(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on a file descriptor we own; it reads no memory of ours.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // The filesystem cannot punch holes: zeroes keep the contract.
        let zeroes = vec![0u8; 1 << 20];
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(zeroes.len() as u64) as usize;
            f.write_all_at(&zeroes[..n], pos)?;
            pos += n as u64;
        }
        return Ok(());
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sparse_write_unmap_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let d = FileDevice::open(&path, Some(16 << 20), 4096).unwrap();
        assert_eq!(d.num_blocks(), 4096);
        assert_eq!(
            d.lba_status(0).await.unwrap().status,
            ProvisioningStatus::Deallocated
        );
        let data = Bytes::from(vec![0xabu8; 4096 * 16]);
        d.write(256, data.clone(), true).await.unwrap();
        assert_eq!(d.read(256, 16).await.unwrap(), data);
        let st = d.lba_status(256).await.unwrap();
        assert_eq!(st.status, ProvisioningStatus::Mapped);
        assert_eq!(st.blocks, 16);
        let before = d.lba_status(0).await.unwrap();
        assert_eq!(
            (before.status, before.blocks),
            (ProvisioningStatus::Deallocated, 256)
        );
        d.unmap(256, 16).await.unwrap();
        assert!(d.read(256, 16).await.unwrap().iter().all(|&b| b == 0));
        d.flush().await.unwrap();
    }
}
