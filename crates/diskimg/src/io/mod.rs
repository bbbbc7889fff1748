//! Storage: the byte containers an image lives in.
//!
//! A [`Storage`] is a flat, growable array of bytes addressed by offset, used
//! through positional I/O so that many threads can read at once without a
//! shared file position. Format drivers keep their metadata and data in one
//! or more storages; they never see a path or a file descriptor.
//!
//! Invariant kept by every implementation: reads past the end of the storage
//! return zeros (as QEMU's file driver does), so a truncated image reads as
//! if its tail were zeroed rather than failing half-way through a table.

mod aligned;
mod direct;
mod file;
mod memory;

pub use aligned::AlignedBuf;
pub use direct::BOUNCE_MAX;
pub use file::{FileStorage, OpenMode, BUFFERED_WRITE_MAX};
pub use memory::MemoryStorage;

use crate::Result;

/// One extent of a storage as the host file system allocates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostExtent {
    /// Length of the extent in bytes (at least 1).
    pub len: u64,
    /// True when the extent holds data; false for a hole (reads as zeros).
    pub data: bool,
}

/// A byte container an image lives in: a file, or memory in tests.
pub trait Storage: Send + Sync {
    /// The name used in messages (the path as the user gave it).
    fn name(&self) -> &str;

    /// Current length in bytes.
    fn len(&self) -> Result<u64>;

    /// Whether the storage is empty.
    fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Fills `buf` from `offset`; bytes past the end read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes all of `buf` at `offset`, growing the storage if needed.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;

    /// Sets the length, truncating or extending with zeros.
    fn set_len(&self, len: u64) -> Result<()>;

    /// Deallocates `[offset, offset + len)` so that it reads as zeros.
    fn punch_hole(&self, offset: u64, len: u64) -> Result<()>;

    /// Reserves space for `[offset, offset + len)` without changing what it
    /// reads as (fallocate for a file), growing the storage if the range
    /// ends past its end. Storages that cannot reserve write zeros over the
    /// part past their end.
    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset.saturating_add(len);
        let cur = self.len()?;
        if end > cur {
            self.set_len(end)?;
        }
        Ok(())
    }

    /// Reserves space for `[offset, offset + len)` where the storage can do
    /// so cheaply (fallocate for a file), without changing what the range
    /// reads as and growing the storage if the range ends past its end;
    /// returns false, having changed nothing, where it cannot. A hint for a
    /// caller about to write the whole range: unlike
    /// [`allocate`](Storage::allocate) it never falls back to writing
    /// zeros.
    fn reserve(&self, offset: u64, len: u64) -> Result<bool> {
        let _ = (offset, len);
        Ok(false)
    }

    /// Bytes the host really allocates for the storage (`st_blocks * 512`
    /// for a file), as qemu-img's "disk size" / `actual-size`.
    fn allocated_size(&self) -> Result<u64>;

    /// Whether the storage was opened for writing.
    fn is_writable(&self) -> bool;

    /// The allocation extent that starts at `offset` (which must be below
    /// `len()`), at most `max_len` bytes long. Storages that cannot tell
    /// report everything as data.
    fn host_extent(&self, offset: u64, max_len: u64) -> Result<HostExtent> {
        let _ = offset;
        Ok(HostExtent {
            len: max_len,
            data: true,
        })
    }
}
