//! Format drivers. Each format implements [`BlockDevice`]; the chain code
//! (`crate::chain`) stacks them, and `crate::ops` works on any of them.
//!
//! Drivers that map guest ranges to host ranges (qcow2, and later QED and
//! add-cow) implement [`Mapper`] and get reads and block status from the
//! generic code in [`mapped`], which also walks into the backing file. They
//! then only decode their tables.

pub mod create;
pub mod mapped;
pub mod probe;
pub mod qcow2;
pub mod raw;

use std::sync::Arc;

use crate::io::Storage;
use crate::Result;

pub use mapped::{Mapper, Mapping};

/// The allocation state of one extent of one layer, as `qemu-img map`
/// reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatus {
    /// Length of the extent in bytes (at least 1).
    pub len: u64,
    /// The extent is decided in this layer (QEMU's "allocated"); when false
    /// reads go to the backing file.
    pub allocated: bool,
    /// The extent holds data (false for unallocated and zero extents).
    pub data: bool,
    /// The extent reads as zeros.
    pub zero: bool,
    /// The data is compressed.
    pub compressed: bool,
    /// Where the bytes are in the layer's data file, when that is meaningful.
    pub offset: Option<u64>,
}

/// The name of a backing file as an image records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingLink {
    /// The name as stored in the image (relative names are relative to the
    /// image's directory).
    pub filename: String,
    /// The backing format recorded in the image, if any.
    pub format: Option<String>,
}

/// One internal snapshot, as `info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's ID string.
    pub id: String,
    /// The snapshot's name (tag).
    pub name: String,
    /// Size of the saved VM state in bytes.
    pub vm_state_size: u64,
    /// Creation date, seconds since the epoch.
    pub date_sec: u64,
    /// Creation date, nanoseconds part.
    pub date_nsec: u64,
    /// Guest run time at the snapshot, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Instruction count for record/replay, when recorded.
    pub icount: Option<u64>,
}

/// One persistent dirty bitmap, as `info` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    /// The bitmap's name.
    pub name: String,
    /// Bytes covered by one bit.
    pub granularity: u64,
    /// Flags by QEMU's names: "in-use", "auto".
    pub flags: Vec<&'static str>,
}

/// qcow2's format-specific information (QAPI `ImageInfoSpecificQCow2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Specific {
    /// "0.10" for version 2, "1.1" for version 3.
    pub compat: &'static str,
    /// "zlib" or "zstd".
    pub compression_type: &'static str,
    /// The encryption format ("aes", "luks") of an encrypted image.
    pub encrypt_format: Option<&'static str>,
    /// v3 only.
    pub lazy_refcounts: Option<bool>,
    /// Width of a refcount entry in bits.
    pub refcount_bits: u32,
    /// v3 only.
    pub corrupt: Option<bool>,
    /// v3 only.
    pub extended_l2: Option<bool>,
    /// The external data file name, when there is one.
    pub data_file: Option<String>,
    /// With an external data file: whether it is a valid raw image.
    pub data_file_raw: Option<bool>,
    /// Persistent bitmaps, when the image has the bitmaps extension.
    pub bitmaps: Option<Vec<BitmapInfo>>,
}

/// Format-specific information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatSpecific {
    /// qcow2
    Qcow2(Qcow2Specific),
}

/// What `info` shows about one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Format name as QEMU spells it: "qcow2", "raw", "qed", "add-cow".
    pub format: &'static str,
    /// The image's file name as given.
    pub filename: String,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// Cluster size, for formats that have one.
    pub cluster_size: Option<u64>,
    /// The image was not closed cleanly (qcow2 dirty bit, QED need-check).
    pub dirty: bool,
    /// The image is encrypted.
    pub encrypted: bool,
    /// The backing file recorded in the image.
    pub backing: Option<BackingLink>,
    /// Internal snapshots (empty when the format has none).
    pub snapshots: Vec<SnapshotInfo>,
    /// Format-specific information.
    pub specific: Option<FormatSpecific>,
}

/// How far `check` may go in repairing what it finds (`qemu-img check -r`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepairMode {
    /// Only report.
    #[default]
    None,
    /// Repair leaked clusters.
    Leaks,
    /// Repair leaks and corruptions.
    All,
}

/// The result of a consistency check (QAPI `ImageCheck` / QEMU's
/// `BdrvCheckResult`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Corruptions found and not repaired.
    pub corruptions: u64,
    /// Leaked clusters found and not repaired.
    pub leaks: u64,
    /// Errors that kept the check from completing a part of its work.
    pub check_errors: u64,
    /// Corruptions repaired.
    pub corruptions_fixed: u64,
    /// Leaks repaired.
    pub leaks_fixed: u64,
    /// One past the highest used byte of the image file, rounded to clusters.
    pub image_end_offset: u64,
    /// Guest clusters in the image.
    pub total_clusters: u64,
    /// Guest clusters allocated in this layer.
    pub allocated_clusters: u64,
    /// Allocated clusters not contiguous with their predecessor.
    pub fragmented_clusters: u64,
    /// Compressed clusters.
    pub compressed_clusters: u64,
}

/// An open image: one layer of a chain, with its backing file (if opened)
/// beneath it.
///
/// All methods take `&self`: a device is shared between threads, and
/// requests on disjoint ranges proceed in parallel.
pub trait BlockDevice: Send + Sync {
    /// Guest-visible size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the guest bytes at `offset`, through the backing
    /// chain. The range must lie within `size()`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// Makes `[offset, offset + len)` read as zeros; with `unmap` the space
    /// may be deallocated.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()>;

    /// Tells the image the range is no longer needed. Afterwards the range
    /// reads as zeros or as the backing file.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<()>;

    /// Writes `buf` at `offset` compressed (`convert -c`, qemu-io `write
    /// -c`): `offset` must start a cluster and `buf` must be one cluster, or
    /// the tail of the disk. Formats without compression refuse.
    fn write_compressed(&self, buf: &[u8], offset: u64) -> Result<()> {
        let _ = (buf, offset);
        Err(crate::Error::unsupported(
            "Compression not supported for this file format",
        ))
    }

    /// The size of the units compressed writes take (the cluster size), for
    /// formats that can compress.
    fn compression_unit(&self) -> Option<u64> {
        None
    }

    /// Changes the guest-visible size (`qemu-img resize`, qemu-io's
    /// `truncate`). New space reads as zeros; `prealloc` says how much of it
    /// to allocate. Whether shrinking is allowed is the caller's decision
    /// (qemu-img asks for `--shrink`); a driver that cannot shrink refuses.
    fn truncate(&self, size: u64, prealloc: create::Preallocation) -> Result<()> {
        let _ = (size, prealloc);
        Err(crate::Error::unsupported(
            "Image format driver does not support resize",
        ))
    }

    /// The status of this layer at `offset`, for at most `max_len` bytes
    /// (`offset < size()`, `max_len >= 1`). Does not look into the backing file.
    fn block_status(&self, offset: u64, max_len: u64) -> Result<BlockStatus>;

    /// What `info` shows about this layer.
    fn info(&self) -> ImageInfo;

    /// The storage holding the image's metadata (the qcow2 file itself).
    fn storage(&self) -> &Arc<dyn Storage>;

    /// The backing file, when it was opened.
    fn backing(&self) -> Option<&Arc<dyn BlockDevice>>;

    /// The storage that [`BlockStatus::offset`] points into: an external
    /// data file when the image has one open, else the image's own storage.
    /// `qemu-img map` names this file for data extents.
    fn data_storage(&self) -> &Arc<dyn Storage> {
        self.storage()
    }

    /// Checks the image's metadata for consistency, as `qemu-img check`.
    /// Per-cluster diagnostics (QEMU's stderr lines) go to `diagnostic`.
    /// Formats without a check return an `Unsupported` error saying
    /// `This image format does not support checks`.
    fn check(&self, repair: RepairMode, diagnostic: &mut dyn FnMut(&str)) -> Result<CheckReport> {
        let _ = (repair, diagnostic);
        Err(crate::Error::unsupported(
            "This image format does not support checks",
        ))
    }
}

/// A layer while its chain is being opened: the chain code reads the link to
/// the backing file, opens it, and attaches it before sealing the layer.
pub trait Layer: BlockDevice {
    /// The backing file the image names, if any.
    fn backing_link(&self) -> Option<BackingLink>;

    /// Attaches the opened backing file.
    fn set_backing(&mut self, backing: Arc<dyn BlockDevice>);

    /// Converts into a shared device.
    fn into_device(self: Box<Self>) -> Arc<dyn BlockDevice>;
}
