//! Just enough qcow2 parsing to locate structures in an image that QEMU
//! made, so the hostile-image tests can patch them. Offsets follow
//! docs/interop/qcow2.rst; this is test scaffolding and trusts its input
//! (it only ever reads images built by qemu-img in the test itself).

use super::{be32, be64};
use std::path::Path;

/// Header byte offsets.
pub mod off {
    /// u32 magic
    pub const MAGIC: u64 = 0;
    /// u32 version
    pub const VERSION: u64 = 4;
    /// u64 backing_file_offset
    pub const BACKING_OFFSET: u64 = 8;
    /// u32 backing_file_size
    pub const BACKING_SIZE: u64 = 16;
    /// u32 cluster_bits
    pub const CLUSTER_BITS: u64 = 20;
    /// u64 size
    pub const SIZE: u64 = 24;
    /// u32 crypt_method
    pub const CRYPT: u64 = 32;
    /// u32 l1_size
    pub const L1_SIZE: u64 = 36;
    /// u64 l1_table_offset
    pub const L1_OFFSET: u64 = 40;
    /// u64 refcount_table_offset
    pub const RT_OFFSET: u64 = 48;
    /// u32 refcount_table_clusters
    pub const RT_CLUSTERS: u64 = 56;
    /// u32 nb_snapshots
    pub const NB_SNAPSHOTS: u64 = 60;
    /// u64 snapshots_offset
    pub const SNAPSHOTS_OFFSET: u64 = 64;
    /// u64 incompatible_features (v3)
    pub const INCOMPAT: u64 = 72;
    /// u64 compatible_features (v3)
    pub const COMPAT: u64 = 80;
    /// u64 autoclear_features (v3)
    pub const AUTOCLEAR: u64 = 88;
    /// u32 refcount_order (v3)
    pub const REFCOUNT_ORDER: u64 = 96;
    /// u32 header_length (v3)
    pub const HEADER_LENGTH: u64 = 100;
    /// u8 compression_type (v3, header_length > 104)
    pub const COMPRESSION_TYPE: u64 = 104;
}

/// Header extension magics.
pub mod ext {
    /// Backing file format name.
    pub const BACKING_FORMAT: u32 = 0xE279_2ACA;
    /// Feature name table.
    pub const FEATURE_TABLE: u32 = 0x6803_F857;
    /// Bitmaps.
    pub const BITMAPS: u32 = 0x2385_2875;
    /// Full disk encryption header pointer.
    pub const CRYPTO: u32 = 0x0537_BE77;
    /// External data file name.
    pub const DATA_FILE: u32 = 0x4441_5441;
}

/// One header extension: type, offset of its data in the file, data length.
#[derive(Debug, Clone, Copy)]
pub struct Ext {
    /// Extension magic.
    pub kind: u32,
    /// File offset of the extension header (type field).
    pub at: u64,
    /// File offset of the data.
    pub data: u64,
    /// Data length.
    pub len: u32,
}

/// The parsed fields of a (trusted) qcow2 header.
#[derive(Debug, Clone)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 cluster size.
    pub cluster_bits: u32,
    /// Virtual size.
    pub size: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// L1 offset.
    pub l1_offset: u64,
    /// Refcount table offset.
    pub rt_offset: u64,
    /// Refcount table clusters.
    pub rt_clusters: u32,
    /// Snapshot count.
    pub nb_snapshots: u32,
    /// Snapshot table offset.
    pub snapshots_offset: u64,
    /// Incompatible features (0 for v2).
    pub incompat: u64,
    /// Header length (72 for v2).
    pub header_length: u32,
    /// Header extensions in file order.
    pub exts: Vec<Ext>,
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Finds an extension by magic.
    pub fn ext(&self, kind: u32) -> Option<Ext> {
        self.exts.iter().copied().find(|e| e.kind == kind)
    }
    /// True when extended L2 entries are in use.
    pub fn extended_l2(&self) -> bool {
        self.incompat & (1 << 4) != 0
    }
    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }
}

/// Parses the header of the qcow2 file at `p`.
pub fn header(p: &Path) -> Header {
    let d = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let version = be32(&d, 4);
    let header_length = if version >= 3 { be32(&d, 100) } else { 72 };
    let cluster_bits = be32(&d, 20);
    let mut h = Header {
        version,
        cluster_bits,
        size: be64(&d, 24),
        l1_size: be32(&d, 36),
        l1_offset: be64(&d, 40),
        rt_offset: be64(&d, 48),
        rt_clusters: be32(&d, 56),
        nb_snapshots: be32(&d, 60),
        snapshots_offset: be64(&d, 64),
        incompat: if version >= 3 { be64(&d, 72) } else { 0 },
        header_length,
        exts: Vec::new(),
    };
    let mut at = header_length as usize;
    let end = (1usize << cluster_bits).min(d.len());
    while at + 8 <= end {
        let kind = be32(&d, at);
        let len = be32(&d, at + 4);
        if kind == 0 {
            break;
        }
        h.exts.push(Ext {
            kind,
            at: at as u64,
            data: at as u64 + 8,
            len,
        });
        at += 8 + (len as usize).div_ceil(8) * 8;
    }
    h
}

/// The host offset stored in L1 entry `i`.
pub fn l1_entry(p: &Path, h: &Header, i: u64) -> u64 {
    let d = std::fs::read(p).expect("read image");
    be64(&d, (h.l1_offset + 8 * i) as usize)
}

/// File offset of L2 entry `idx` (of the table L1[0] points to).
pub fn l2_entry_pos(p: &Path, h: &Header, idx: u64) -> u64 {
    let l2 = l1_entry(p, h, 0) & 0x00ff_ffff_ffff_fe00;
    assert!(l2 != 0, "L1[0] of {} is unallocated", p.display());
    l2 + idx * h.l2_entry_size()
}

/// The raw u64 at file offset `at`.
pub fn read64(p: &Path, at: u64) -> u64 {
    let d = std::fs::read(p).expect("read image");
    be64(&d, at as usize)
}
