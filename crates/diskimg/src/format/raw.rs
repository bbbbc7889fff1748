//! The raw format: guest byte N is file byte N.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::create::{preallocate, Preallocation};
use super::{BackingLink, BlockDevice, BlockStatus, ImageInfo, Layer};
use crate::io::Storage;
use crate::{Error, Result};

/// A raw image.
pub struct Raw {
    storage: Arc<dyn Storage>,
    /// Guest size; changes only through `truncate`.
    size: AtomicU64,
}

impl Raw {
    /// Opens the raw image held in `storage`. Its size is the file's,
    /// rounded up to whole 512-byte sectors as QEMU does; the tail past the
    /// end of the file reads as zeros.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self> {
        let size = storage.len()?.div_ceil(512) * 512;
        Ok(Raw {
            storage,
            size: AtomicU64::new(size),
        })
    }

    fn len(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::invalid_argument(format!(
                "request at offset {offset}, length {len} is past the end of '{}' ({} bytes)",
                self.storage.name(),
                self.len()
            ))),
        }
    }
}

impl BlockDevice for Raw {
    fn size(&self) -> u64 {
        self.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.storage.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.storage.write_at(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        // A punched hole reads as zeros; the file keeps its size.
        self.storage.punch_hole(offset, len)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        self.storage.punch_hole(offset, len)
    }

    fn flush(&self) -> Result<()> {
        self.storage.flush()
    }

    fn truncate(&self, size: u64, prealloc: Preallocation) -> Result<()> {
        if prealloc == Preallocation::Metadata {
            return Err(Error::unsupported(
                "Unsupported preallocation mode: metadata",
            ));
        }
        if !self.storage.is_writable() {
            return Err(Error::read_only(format!(
                "'{}' is opened read-only",
                self.storage.name()
            )));
        }
        let old = self.storage.len()?;
        self.storage.set_len(size)?;
        if size > old {
            preallocate(self.storage.as_ref(), old, size - old, prealloc)?;
        }
        // As on open: the guest size is the file's in whole sectors.
        self.size.store(size.div_ceil(512) * 512, Ordering::Release);
        Ok(())
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<BlockStatus> {
        let max_len = max_len.min(self.len().saturating_sub(offset)).max(1);
        let ext = self.storage.host_extent(offset, max_len)?;
        Ok(BlockStatus {
            len: ext.len.clamp(1, max_len),
            allocated: true,
            data: ext.data,
            zero: !ext.data,
            compressed: false,
            offset: Some(offset),
        })
    }

    fn info(&self) -> ImageInfo {
        ImageInfo {
            format: "raw",
            filename: self.storage.name().to_string(),
            virtual_size: self.len(),
            cluster_size: None,
            dirty: false,
            encrypted: false,
            backing: None,
            snapshots: Vec::new(),
            specific: None,
        }
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn backing(&self) -> Option<&Arc<dyn BlockDevice>> {
        None
    }
}

impl Layer for Raw {
    fn backing_link(&self) -> Option<BackingLink> {
        None
    }

    fn set_backing(&mut self, _backing: Arc<dyn BlockDevice>) {}

    fn into_device(self: Box<Self>) -> Arc<dyn BlockDevice> {
        Arc::new(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemoryStorage;

    #[test]
    fn reads_what_the_file_holds_and_refuses_past_the_end() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes("r", vec![5u8; 1000]));
        let raw = Raw::open(s).unwrap();
        assert_eq!(raw.size(), 1024);
        let mut tail = [9u8; 24];
        raw.read_at(&mut tail, 1000).unwrap();
        assert_eq!(tail, [0u8; 24]);
        let mut buf = [0u8; 16];
        raw.read_at(&mut buf, 900).unwrap();
        assert_eq!(buf, [5u8; 16]);
        assert!(raw.read_at(&mut buf, 1020).is_err());
    }

    #[test]
    fn truncate_keeps_whole_sectors_as_open_does() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::new("r"));
        let raw = Raw::open(s).unwrap();
        raw.truncate(1000, Preallocation::Off).unwrap();
        assert_eq!(raw.size(), 1024);
        assert_eq!(raw.storage().len().unwrap(), 1000);
        let mut tail = [9u8; 24];
        raw.read_at(&mut tail, 1000).unwrap();
        assert_eq!(tail, [0u8; 24]);
    }
}
