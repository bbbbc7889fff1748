//! qcow2 (versions 2 and 3). Work in progress: the reader lands next.

use std::path::Path;
use std::sync::Arc;

use super::{BackingLink, BlockDevice, BlockStatus, ImageInfo, Layer};
use crate::io::Storage;
use crate::{Error, OpenOptions, Result};

/// An open qcow2 image.
pub struct Qcow2 {
    storage: Arc<dyn Storage>,
}

impl Qcow2 {
    /// Opens the qcow2 image held in `storage`; `path` locates its data file.
    pub fn open(storage: Arc<dyn Storage>, path: &Path, opts: &OpenOptions) -> Result<Self> {
        let _ = (path, opts);
        Err(Error::unsupported(format!(
            "Could not open '{}': qcow2 reading is not implemented yet",
            storage.name()
        )))
    }
}

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        0
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Err(Error::unsupported("qcow2"))
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Error::unsupported("qcow2"))
    }
    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> Result<()> {
        Err(Error::unsupported("qcow2"))
    }
    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(Error::unsupported("qcow2"))
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn block_status(&self, _offset: u64, _max_len: u64) -> Result<BlockStatus> {
        Err(Error::unsupported("qcow2"))
    }
    fn info(&self) -> ImageInfo {
        unreachable!()
    }
    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }
    fn backing(&self) -> Option<&Arc<dyn BlockDevice>> {
        None
    }
}

impl Layer for Qcow2 {
    fn backing_link(&self) -> Option<BackingLink> {
        None
    }
    fn set_backing(&mut self, _backing: Arc<dyn BlockDevice>) {}
    fn into_device(self: Box<Self>) -> Arc<dyn BlockDevice> {
        Arc::new(*self)
    }
}
