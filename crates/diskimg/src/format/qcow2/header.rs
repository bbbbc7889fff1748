//! The qcow2 header (versions 2 and 3): field layout, decoding and the
//! open-time validation QEMU applies, with QEMU's wording.
//!
//! Invariants enforced by [`Header::parse`] (everything after relies on them):
//! - version is 2 or 3; `9 <= cluster_bits <= 21`;
//! - `header_length` is 72 for v2, in `104..=cluster_size` for v3;
//! - `backing_file_offset <= cluster_size`;
//! - `refcount_order <= 6` (v2: 4);
//! - the compression type is zlib or zstd and agrees with incompatible bit 3;
//! - with extended L2 entries the subcluster size is at least 512 bytes;
//! - the refcount table is non-empty, at most 8 MiB, aligned, not overflowing;
//! - the snapshot table offset is aligned and at most 65536 entries are announced;
//! - the active L1 table is at most 32 MiB, aligned, not overflowing, and
//!   covers `size`; the L1 index of `size` fits in an `i32`.
//!
//! Unknown incompatible bits, the corrupt bit and encryption are handled by
//! the driver (they need the feature name table or the open mode).

use crate::{Error, Result};

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49FB;
/// Smallest cluster_bits QEMU accepts.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits QEMU accepts.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Length of a version 2 header.
pub const V2_HEADER_LENGTH: u32 = 72;
/// Smallest version 3 header.
pub const V3_MIN_HEADER_LENGTH: u32 = 104;
/// Largest refcount table QEMU accepts, in bytes.
pub const MAX_REFTABLE_SIZE: u64 = 8 << 20;
/// Largest active L1 table QEMU accepts, in bytes.
pub const MAX_L1_SIZE: u64 = 32 << 20;
/// Most snapshots QEMU accepts.
pub const MAX_SNAPSHOTS: u64 = 65536;
/// Size of the fixed part of a snapshot table entry.
pub const SNAPSHOT_HEADER_SIZE: u64 = 40;
/// Host offsets in tables are below this.
pub const MAX_CLUSTER_OFFSET: u64 = (1 << 56) - 1;

/// Incompatible feature bit 0: refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image may be corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: byte 104 names the compression type.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: 128-bit L2 entries with 32 subclusters.
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// Every incompatible bit this reader knows.
pub const INCOMPAT_MASK: u64 = 0x1f;
/// Compatible feature bit 0: lazy refcounts.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear bit 0: the bitmaps extension is consistent.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
/// Autoclear bit 1: the external data file is a valid raw image.
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

/// How compressed clusters are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (QEMU's "zlib").
    Zlib,
    /// zstd frames.
    Zstd,
}

impl CompressionType {
    /// QEMU's name.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        }
    }
}

/// A decoded and validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name, 0 when there is none.
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
    /// Entries in the active L1 table.
    pub l1_size: u32,
    /// Offset of the active L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters in the refcount table.
    pub refcount_table_clusters: u32,
    /// Number of internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits (0 for v2).
    pub incompatible_features: u64,
    /// Compatible feature bits (0 for v2).
    pub compatible_features: u64,
    /// Autoclear feature bits (0 for v2).
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits (4 for v2).
    pub refcount_order: u32,
    /// Length of the header; header extensions start here.
    pub header_length: u32,
    /// Compression type (byte 104 when present).
    pub compression_type: CompressionType,
}

fn be32(buf: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = buf.get(off..off + 4) {
        b.copy_from_slice(s);
    }
    u32::from_be_bytes(b)
}

fn be64(buf: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = buf.get(off..off + 8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

/// An invalid-image error with QEMU's text and the field it is about.
fn bad(qemu: impl std::fmt::Display, field: &str, offset: usize) -> Error {
    Error::invalid(format!(
        "{qemu} (qcow2 header, field {field} at offset {offset})"
    ))
}

/// QEMU's `qcow2_validate_table`: a table of `entries` entries of
/// `entry_len` bytes at `offset`.
#[allow(clippy::too_many_arguments)] // mirrors QEMU's helper plus the field named in messages
fn validate_table(
    offset: u64,
    entries: u64,
    entry_len: u64,
    max_bytes: u64,
    cluster_size: u64,
    name: &str,
    count_field: (&str, usize),
    offset_field: (&str, usize),
) -> Result<()> {
    if entries > max_bytes / entry_len {
        return Err(bad(
            format_args!("{name} too large"),
            count_field.0,
            count_field.1,
        ));
    }
    let bytes = entries * entry_len;
    if (i64::MAX as u64) - bytes < offset || offset & (cluster_size - 1) != 0 {
        return Err(bad(
            format_args!("{name} offset invalid"),
            offset_field.0,
            offset_field.1,
        ));
    }
    Ok(())
}

impl Header {
    /// Decodes and validates the header at the start of `buf` (bytes missing
    /// from `buf` read as zeros, as past the end of a file).
    pub fn parse(buf: &[u8]) -> Result<Header> {
        let magic = be32(buf, 0);
        if magic != MAGIC {
            return Err(bad("Image is not in qcow2 format", "magic", 0));
        }
        let version = be32(buf, 4);
        if !(2..=3).contains(&version) {
            return Err(bad(
                format_args!("Unsupported qcow2 version {version}"),
                "version",
                4,
            ));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(
                format_args!("Unsupported cluster size: 2^{cluster_bits}"),
                "cluster_bits",
                20,
            ));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            crypt_method: be32(buf, 32),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LENGTH,
            compression_type: CompressionType::Zlib,
        };
        if version == 3 {
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < V3_MIN_HEADER_LENGTH {
                return Err(bad("qcow2 header too short", "header_length", 100));
            }
        }
        if u64::from(h.header_length) > cluster_size {
            return Err(bad(
                "qcow2 header exceeds cluster size",
                "header_length",
                100,
            ));
        }
        if h.backing_file_offset > cluster_size {
            return Err(bad("Invalid backing file offset", "backing_file_offset", 8));
        }
        let ctype = if h.header_length > 104 {
            buf.get(104).copied().unwrap_or(0)
        } else {
            0
        };
        h.compression_type = match ctype {
            0 => CompressionType::Zlib,
            1 => CompressionType::Zstd,
            n => {
                return Err(bad(
                    format_args!("qcow2: unknown compression type: {n}"),
                    "compression_type",
                    104,
                ))
            }
        };
        let bit = h.incompatible_features & INCOMPAT_COMPRESSION != 0;
        if h.compression_type == CompressionType::Zlib && bit {
            return Err(bad(
                "qcow2: Compression type incompatible feature bit must not be set",
                "incompatible_features",
                72,
            ));
        }
        if h.compression_type != CompressionType::Zlib && !bit {
            return Err(bad(
                "qcow2: Compression type incompatible feature bit must be set",
                "incompatible_features",
                72,
            ));
        }
        Ok(h)
    }

    /// The checks QEMU makes after the feature bits (which the driver checks
    /// in between, as they need the feature name table): refcount width,
    /// encryption method, subcluster size, table placement and sizes.
    pub fn validate_layout(&self) -> Result<()> {
        self.validate_layout_for(false)
    }

    /// [`Header::validate_layout`]; with `for_check` (QEMU's BDRV_O_CHECK)
    /// an empty refcount table and a bad snapshot table are tolerated, so
    /// that `check` can report and repair them.
    pub fn validate_layout_for(&self, for_check: bool) -> Result<()> {
        let cluster_size = self.cluster_size();
        if self.refcount_order > 6 {
            return Err(bad(
                "Reference count entry width too large; may not exceed 64 bits",
                "refcount_order",
                96,
            ));
        }
        if self.crypt_method > 2 {
            return Err(Error::unsupported(format!(
                "Unsupported encryption method {} (qcow2 header, field crypt_method at offset 32)",
                self.crypt_method
            )));
        }
        if self.subcluster_size() < 512 {
            return Err(bad(
                format_args!("Unsupported subcluster size: {}", self.subcluster_size()),
                "cluster_bits",
                20,
            ));
        }
        if self.refcount_table_clusters == 0 && !for_check {
            return Err(bad(
                "Image does not contain a reference count table",
                "refcount_table_clusters",
                56,
            ));
        }
        validate_table(
            self.refcount_table_offset,
            u64::from(self.refcount_table_clusters),
            cluster_size,
            MAX_REFTABLE_SIZE,
            cluster_size,
            "Reference count table",
            ("refcount_table_clusters", 56),
            ("refcount_table_offset", 48),
        )?;
        if !for_check {
            validate_table(
                self.snapshots_offset,
                u64::from(self.nb_snapshots),
                SNAPSHOT_HEADER_SIZE,
                SNAPSHOT_HEADER_SIZE * MAX_SNAPSHOTS,
                cluster_size,
                "Snapshot table",
                ("nb_snapshots", 60),
                ("snapshots_offset", 64),
            )?;
        }
        validate_table(
            self.l1_table_offset,
            u64::from(self.l1_size),
            8,
            MAX_L1_SIZE,
            cluster_size,
            "Active L1 table",
            ("l1_size", 36),
            ("l1_table_offset", 40),
        )?;
        let needed = self.l1_entries_needed();
        if needed > i32::MAX as u64 {
            return Err(bad("Image is too big", "size", 24));
        }
        if u64::from(self.l1_size) < needed {
            return Err(bad("L1 table is too small", "l1_size", 36));
        }
        Ok(())
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Whether L2 entries are 128 bits wide with 32 subclusters.
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// log2 of the number of entries in one L2 table.
    pub fn l2_bits(&self) -> u32 {
        self.cluster_bits - if self.extended_l2() { 4 } else { 3 }
    }

    /// Subclusters per cluster (32 with extended L2, else 1).
    pub fn subclusters_per_cluster(&self) -> u64 {
        if self.extended_l2() {
            32
        } else {
            1
        }
    }

    /// Bytes per subcluster.
    pub fn subcluster_size(&self) -> u64 {
        self.cluster_size() / self.subclusters_per_cluster()
    }

    /// L1 entries needed to map `size` bytes (QEMU's `size_to_l1`).
    pub fn l1_entries_needed(&self) -> u64 {
        let shift = self.cluster_bits + self.l2_bits();
        (self.size >> shift) + u64::from(self.size & ((1u64 << shift) - 1) != 0)
    }

    /// Width of a refcount entry in bits.
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order.min(6)
    }

    /// Where the header extension area ends: the backing file name, else
    /// the end of cluster 0.
    pub fn extensions_end(&self) -> u64 {
        if self.backing_file_offset != 0 {
            self.backing_file_offset
        } else {
            self.cluster_size()
        }
    }

    /// Encodes the header into `header_length` bytes (for tests and, later,
    /// the writer). Fields past the v2 header are written only for v3.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; (self.header_length as usize).max(72)];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&self.version.to_be_bytes());
        b[8..16].copy_from_slice(&self.backing_file_offset.to_be_bytes());
        b[16..20].copy_from_slice(&self.backing_file_size.to_be_bytes());
        b[20..24].copy_from_slice(&self.cluster_bits.to_be_bytes());
        b[24..32].copy_from_slice(&self.size.to_be_bytes());
        b[32..36].copy_from_slice(&self.crypt_method.to_be_bytes());
        b[36..40].copy_from_slice(&self.l1_size.to_be_bytes());
        b[40..48].copy_from_slice(&self.l1_table_offset.to_be_bytes());
        b[48..56].copy_from_slice(&self.refcount_table_offset.to_be_bytes());
        b[56..60].copy_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b[60..64].copy_from_slice(&self.nb_snapshots.to_be_bytes());
        b[64..72].copy_from_slice(&self.snapshots_offset.to_be_bytes());
        if self.version >= 3 && b.len() >= 104 {
            b[72..80].copy_from_slice(&self.incompatible_features.to_be_bytes());
            b[80..88].copy_from_slice(&self.compatible_features.to_be_bytes());
            b[88..96].copy_from_slice(&self.autoclear_features.to_be_bytes());
            b[96..100].copy_from_slice(&self.refcount_order.to_be_bytes());
            b[100..104].copy_from_slice(&self.header_length.to_be_bytes());
            if b.len() > 104 {
                b[104] = match self.compression_type {
                    CompressionType::Zlib => 0,
                    CompressionType::Zstd => 1,
                };
            }
        }
        b
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid v3 header: 64 KiB clusters, 1 GiB, reftable at 64K, L1 at 192K.
    pub(crate) fn v3() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 30,
            crypt_method: 0,
            l1_size: 2,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: CompressionType::Zlib,
        }
    }

    fn check(h: &Header) -> Result<Header> {
        let p = Header::parse(&h.to_bytes())?;
        p.validate_layout()?;
        Ok(p)
    }

    fn msg(h: &Header) -> String {
        check(h).unwrap_err().to_string()
    }

    #[test]
    fn round_trips_v2_and_v3() {
        let h = v3();
        assert_eq!(check(&h).unwrap(), h);
        let mut z = v3();
        z.compression_type = CompressionType::Zstd;
        z.incompatible_features = INCOMPAT_COMPRESSION;
        assert_eq!(check(&z).unwrap(), z);
        let mut v2 = v3();
        v2.version = 2;
        v2.header_length = 72;
        let p = check(&v2).unwrap();
        assert_eq!(p, v2);
        assert_eq!(p.refcount_order, 4);
    }

    #[test]
    fn magic_and_version() {
        assert!(Header::parse(b"QFI")
            .unwrap_err()
            .to_string()
            .contains("Image is not in qcow2 format"));
        for v in [1u32, 4] {
            let mut h = v3();
            h.version = v;
            let mut b = h.to_bytes();
            b[4..8].copy_from_slice(&v.to_be_bytes());
            let e = Header::parse(&b).unwrap_err().to_string();
            assert!(e.contains(&format!("Unsupported qcow2 version {v}")), "{e}");
        }
    }

    #[test]
    fn cluster_bits_limits() {
        for (bits, ok) in [(8, false), (9, true), (21, true), (22, false)] {
            let mut h = v3();
            h.cluster_bits = bits;
            h.refcount_table_offset = 1 << bits;
            h.l1_table_offset = 3 << bits;
            h.l1_size = 1 << 12;
            h.size = 1 << 20;
            let r = check(&h);
            if ok {
                r.unwrap();
            } else {
                let e = r.unwrap_err().to_string();
                assert!(
                    e.contains(&format!("Unsupported cluster size: 2^{bits}")),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn header_length_limits() {
        let mut h = v3();
        h.header_length = 104;
        check(&h).unwrap();
        h.header_length = 103;
        assert!(msg(&h).contains("qcow2 header too short"));
        let mut h = v3();
        h.cluster_bits = 9;
        h.refcount_table_offset = 512;
        h.l1_table_offset = 1024;
        h.l1_size = 1 << 15;
        h.header_length = 512;
        check(&h).unwrap();
        h.header_length = 520;
        assert!(msg(&h).contains("qcow2 header exceeds cluster size"));
    }

    #[test]
    fn backing_offset_limit() {
        let mut h = v3();
        h.backing_file_offset = 65536;
        check(&h).unwrap();
        h.backing_file_offset = 65537;
        assert!(msg(&h).contains("Invalid backing file offset"));
    }

    #[test]
    fn refcount_order_limit() {
        let mut h = v3();
        h.refcount_order = 6;
        check(&h).unwrap();
        h.refcount_order = 7;
        assert!(msg(&h).contains("Reference count entry width too large; may not exceed 64 bits"));
    }

    #[test]
    fn compression_type_rules() {
        let mut h = v3();
        h.incompatible_features = INCOMPAT_COMPRESSION;
        assert!(msg(&h).contains("bit must not be set"));
        let mut b = v3().to_bytes();
        b[104] = 1;
        assert!(Header::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("qcow2: Compression type incompatible feature bit must be set"));
        b[104] = 2;
        assert!(Header::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("qcow2: unknown compression type: 2"));
        // header_length 104: byte 104 is not part of the header.
        let mut h = v3();
        h.header_length = 104;
        let mut b = h.to_bytes();
        b.push(1);
        assert_eq!(
            Header::parse(&b).unwrap().compression_type,
            CompressionType::Zlib
        );
    }

    #[test]
    fn crypt_method_and_subclusters() {
        let mut h = v3();
        h.crypt_method = 3;
        assert!(msg(&h).contains("Unsupported encryption method 3"));
        let mut h = v3();
        h.cluster_bits = 14;
        h.refcount_table_offset = 1 << 14;
        h.l1_table_offset = 3 << 14;
        h.l1_size = 1024;
        h.incompatible_features = INCOMPAT_EXTL2;
        check(&h).unwrap();
        h.cluster_bits = 13;
        h.refcount_table_offset = 1 << 13;
        h.l1_table_offset = 3 << 13;
        h.l1_size = 8192;
        assert!(msg(&h).contains("Unsupported subcluster size: 256"));
    }

    #[test]
    fn reftable_limits() {
        let mut h = v3();
        h.refcount_table_clusters = 0;
        assert!(msg(&h).contains("Image does not contain a reference count table"));
        h.refcount_table_clusters = 128;
        check(&h).unwrap();
        h.refcount_table_clusters = 129;
        assert!(msg(&h).contains("Reference count table too large"));
        let mut h = v3();
        h.refcount_table_offset = 0x10200;
        assert!(msg(&h).contains("Reference count table offset invalid"));
        h.refcount_table_offset = (i64::MAX as u64) & !0xffff;
        assert!(msg(&h).contains("Reference count table offset invalid"));
    }

    #[test]
    fn check_mode_tolerates_what_check_repairs() {
        let mut h = v3();
        h.refcount_table_clusters = 0;
        h.nb_snapshots = 70000;
        h.snapshots_offset = 0x50008;
        assert!(h.validate_layout().is_err());
        h.validate_layout_for(true).unwrap();
    }

    #[test]
    fn snapshot_table_limits() {
        let mut h = v3();
        h.nb_snapshots = 65536;
        h.snapshots_offset = 0x50000;
        check(&h).unwrap();
        h.nb_snapshots = 65537;
        assert!(msg(&h).contains("Snapshot table too large"));
        h.nb_snapshots = 1;
        h.snapshots_offset = 0x50008;
        assert!(msg(&h).contains("Snapshot table offset invalid"));
    }

    #[test]
    fn l1_limits() {
        let mut h = v3();
        h.l1_size = 4 << 20;
        check(&h).unwrap();
        h.l1_size = (4 << 20) + 1;
        assert!(msg(&h).contains("Active L1 table too large"));
        let mut h = v3();
        h.l1_size = 1;
        assert!(msg(&h).contains("L1 table is too small"));
        h.l1_size = 2;
        h.l1_table_offset = 0x30008;
        assert!(msg(&h).contains("Active L1 table offset invalid"));
        let mut h = v3();
        h.size = 1 << 62;
        h.cluster_bits = 9;
        h.refcount_table_offset = 512;
        h.l1_table_offset = 1024;
        h.l1_size = 4 << 20;
        assert!(msg(&h).contains("Image is too big"));
        // "Image is too big" starts one byte past i32::MAX L1 entries.
        let mut h = v3();
        h.l1_size = 4 << 20;
        h.size = (i32::MAX as u64) << 29;
        assert!(msg(&h).contains("L1 table is too small"));
        h.size += 1;
        assert!(msg(&h).contains("Image is too big"));
        // Exactly the L1 entries needed for the size.
        let mut h = v3();
        h.size = (2 << 29) + 1;
        assert!(msg(&h).contains("L1 table is too small"));
    }

    #[test]
    fn v2_ignores_v3_fields() {
        let mut h = v3();
        h.incompatible_features = 0xff;
        h.refcount_order = 9;
        let mut b = h.to_bytes();
        b[4..8].copy_from_slice(&2u32.to_be_bytes());
        let p = Header::parse(&b).unwrap();
        assert_eq!(p.incompatible_features, 0);
        assert_eq!(p.refcount_order, 4);
        assert_eq!(p.header_length, 72);
    }
}
