//! diskimg: virtual disk images in QEMU's formats.
//!
//! Open an image with its backing chain with [`open`]; the result is a
//! [`BlockDevice`] that any number of threads may read at once. Whole-image
//! operations (map, convert, compare, ...) live in [`ops`] and work on any
//! `BlockDevice`.
//!
//! ```no_run
//! let img = diskimg::open("disk.qcow2", &diskimg::OpenOptions::default())?;
//! let mut buf = vec![0u8; 4096];
//! img.read_at(&mut buf, 0)?;
//! # Ok::<(), diskimg::Error>(())
//! ```

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cache;
pub mod chain;
pub mod error;
pub mod format;
pub mod io;
pub mod ops;

use std::sync::Arc;

pub use cache::CacheMode;
pub use chain::{open, MAX_CHAIN_DEPTH};
pub use error::{Error, ErrorKind, Result};
pub use format::create::{create, CreateOptions, Preallocation};
pub use format::probe::Format;
pub use format::qcow2::create::Qcow2CreateOptions;
pub use format::{BlockDevice, BlockStatus, CheckReport, ImageInfo, RepairMode};

/// A callback that receives warnings (e.g. a probed backing format).
pub type WarningSink = Arc<dyn Fn(&str) + Send + Sync>;

/// How to open an image and its chain.
#[derive(Clone)]
pub struct OpenOptions {
    /// The top image's format; probed when `None`.
    pub format: Option<Format>,
    /// Open the top image for writing (backing files are always read-only).
    pub writable: bool,
    /// Open the backing chain. `info` without `--backing-chain` does not.
    pub open_backing: bool,
    /// Open external data files. `info` does not (as QEMU since CVE-2024-4467).
    /// False also means no guest I/O is intended (QEMU's BDRV_O_NO_IO): an
    /// image whose data cannot be read (encrypted, for one) still opens for
    /// its metadata, and reads are refused.
    pub open_data_file: bool,
    /// Bytes of L2 tables to cache per qcow2 layer (QEMU's `l2-cache-size`);
    /// `None` for QEMU's default: enough to map the whole image, capped at
    /// [`DEFAULT_L2_CACHE_MAX`].
    pub l2_cache_size: Option<u64>,
    /// Open for `check`: tolerate damage that a normal open refuses but a
    /// check must report (QEMU's BDRV_O_CHECK: e.g. a refcount table of zero
    /// clusters, an oversized snapshot table).
    pub for_check: bool,
    /// Where warnings go; dropped when `None`.
    pub warnings: Option<WarningSink>,
    /// QEMU's `cache=unsafe`: `flush` writes metadata back (in the same
    /// order) but does not wait for the disk. A process crash still leaves
    /// a consistent image; a power loss may not. qemu-img convert writes its
    /// target this way unless `-t` says otherwise.
    pub ignore_flush: bool,
    /// QEMU's `cache.direct=on` (cache modes `none` and `directsync`):
    /// every file the open creates (the image, its data file, its backing
    /// files) is opened with O_DIRECT. See [`CacheMode`].
    pub direct: bool,
}

/// The largest default L2 cache, per layer.
pub const DEFAULT_L2_CACHE_MAX: u64 = 32 << 20;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            format: None,
            writable: false,
            open_backing: true,
            open_data_file: true,
            l2_cache_size: None,
            for_check: false,
            warnings: None,
            ignore_flush: false,
            direct: false,
        }
    }
}

impl OpenOptions {
    /// Sends `msg` to the warning sink.
    pub fn warn(&self, msg: &str) {
        if let Some(w) = &self.warnings {
            w(msg);
        }
    }
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("format", &self.format)
            .field("writable", &self.writable)
            .field("open_backing", &self.open_backing)
            .field("open_data_file", &self.open_data_file)
            .field("l2_cache_size", &self.l2_cache_size)
            .field("for_check", &self.for_check)
            .field("ignore_flush", &self.ignore_flush)
            .field("direct", &self.direct)
            .finish()
    }
}
