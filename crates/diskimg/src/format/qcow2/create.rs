//! Creating qcow2 images: option validation with QEMU's messages, the
//! layout of a new image, and writing it.
//!
//! Layout of a new image (all clusters contiguous from 0, each referenced
//! once): cluster 0 holds the header, its extensions and the backing file
//! name; then the refcount table, the refcount blocks, the L1 table, and
//! with preallocation every L2 table and every data cluster (data clusters
//! live in the external data file when there is one, and are not
//! refcounted then). The refcount blocks cover every one of those clusters
//! with refcount 1, so `qemu-img check` finds neither leaks nor errors.
//!
//! Invariant: [`plan`] validates every option and every size before
//! [`create`] creates a file; the metadata is written one cluster at a time
//! (memory is bounded by the cluster size and the 8 MiB refcount table
//! limit); a failed create removes the files it created.

use std::path::Path;

use super::extensions::{
    encode, feature_entry, EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FEATURE_TABLE,
};
use super::header::{
    CompressionType, Header, AUTOCLEAR_DATA_FILE_RAW, COMPAT_LAZY_REFCOUNTS, INCOMPAT_COMPRESSION,
    INCOMPAT_DATA_FILE, INCOMPAT_EXTL2, MAX_CLUSTER_BITS, MAX_L1_SIZE, MAX_REFTABLE_SIZE,
    MIN_CLUSTER_BITS,
};
use super::l2_entry::OFLAG_COPIED;
use crate::format::create::{preallocate, Preallocation};
use crate::io::{FileStorage, Storage};
use crate::{Error, Result};

/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: usize = 1023;
/// Smallest cluster size for which QEMU writes the feature name table.
const FEATURE_TABLE_MIN_CLUSTER: u64 = 8192;

/// qcow2-specific creation options, with QEMU's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2CreateOptions {
    /// 2 (compat=0.10) or 3 (compat=1.1).
    pub version: u32,
    /// Bytes per cluster: a power of two in 512..=2 MiB.
    pub cluster_size: u64,
    /// Width of a refcount entry: a power of two in 1..=64 (16 for v2).
    pub refcount_bits: u64,
    /// 128-bit L2 entries with subclusters (v3, clusters >= 16 KiB).
    pub extended_l2: bool,
    /// How compressed clusters are encoded (zstd needs v3).
    pub compression_type: CompressionType,
    /// Lazy refcounts (v3).
    pub lazy_refcounts: bool,
    /// Backing file name, stored as given.
    pub backing_file: Option<String>,
    /// Backing file format, stored in the backing format extension.
    pub backing_fmt: Option<String>,
    /// External data file name (v3), stored as given and created.
    pub data_file: Option<String>,
    /// The data file stays a valid raw image (needs a data file, no backing).
    pub data_file_raw: bool,
}

impl Default for Qcow2CreateOptions {
    fn default() -> Self {
        Qcow2CreateOptions {
            version: 3,
            cluster_size: 65536,
            refcount_bits: 16,
            extended_l2: false,
            compression_type: CompressionType::Zlib,
            lazy_refcounts: false,
            backing_file: None,
            backing_fmt: None,
            data_file: None,
            data_file_raw: false,
        }
    }
}

/// Where everything of a new image goes, in clusters (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The header as it will be written.
    pub header: Header,
    /// Cluster 0: header, extensions, backing name.
    pub cluster0: Vec<u8>,
    /// The preallocation mode after QEMU's adjustment (data_file_raw
    /// implies metadata).
    pub preallocation: Preallocation,
    /// First cluster of the refcount blocks.
    pub refblock_start: u64,
    /// Number of refcount blocks.
    pub refblocks: u64,
    /// First cluster of the L1 table.
    pub l1_start: u64,
    /// Clusters of the L1 table.
    pub l1_clusters: u64,
    /// First L2 table (preallocation only).
    pub l2_start: u64,
    /// Number of L2 tables (0 without preallocation).
    pub l2_tables: u64,
    /// First data cluster in the image file (preallocation without data file).
    pub data_start: u64,
    /// Data clusters in the image file.
    pub data_clusters: u64,
    /// Clusters in use in the image file.
    pub total_clusters: u64,
}

fn arg(msg: &str) -> Error {
    Error::invalid_argument(msg)
}

const V3_HINT: &str = "(use version=v3 or greater)";

/// Validates `o` for an image of `size` bytes (a multiple of 512) and
/// computes its layout. The checks and messages follow QEMU's
/// `qcow2_co_create`, in its order.
pub fn plan(o: &Qcow2CreateOptions, size: u64, prealloc: Preallocation) -> Result<Plan> {
    if o.version != 2 && o.version != 3 {
        return Err(arg(&format!(
            "Parameter 'version' does not accept value '{}'",
            o.version
        )));
    }
    let v3 = o.version == 3;
    if o.extended_l2 && !v3 {
        return Err(arg(&format!(
            "Extended L2 entries are only supported with compatibility level 1.1 and above {V3_HINT}"
        )));
    }
    let cs = o.cluster_size;
    if !cs.is_power_of_two() || !((1 << MIN_CLUSTER_BITS)..=(1 << MAX_CLUSTER_BITS)).contains(&cs) {
        return Err(arg(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if o.extended_l2 && cs < 16384 {
        return Err(arg(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    let mut prealloc = prealloc;
    if o.backing_file.is_some() && prealloc != Preallocation::Off && !o.extended_l2 {
        return Err(arg(
            "Backing file and preallocation can only be used at the same time if extended_l2 is on",
        ));
    }
    if o.backing_fmt.is_some() && o.backing_file.is_none() {
        return Err(arg("Backing format cannot be used without backing file"));
    }
    if !v3 && o.lazy_refcounts {
        return Err(arg(&format!(
            "Lazy refcounts only supported with compatibility level 1.1 and above {V3_HINT}"
        )));
    }
    let rb = o.refcount_bits;
    if rb > 64 || !rb.is_power_of_two() {
        return Err(arg(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if !v3 && rb != 16 {
        return Err(arg(&format!(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above {V3_HINT}"
        )));
    }
    if o.data_file_raw && o.data_file.is_none() {
        return Err(arg("data-file-raw requires data-file"));
    }
    if o.data_file_raw && o.backing_file.is_some() {
        return Err(arg(
            "Backing file and data-file-raw cannot be used at the same time",
        ));
    }
    if o.data_file_raw && prealloc == Preallocation::Off {
        // The data file must be a valid raw image: map it all at once.
        prealloc = Preallocation::Metadata;
    }
    if !v3 && o.data_file.is_some() {
        return Err(arg(&format!(
            "External data files are only supported with compatibility level 1.1 and above {V3_HINT}"
        )));
    }
    if !v3 && o.compression_type != CompressionType::Zlib {
        return Err(arg(&format!(
            "Non-zlib compression type is only supported with compatibility level 1.1 and above {V3_HINT}"
        )));
    }
    if !size.is_multiple_of(512) {
        return Err(arg("Image size must be a multiple of 512 bytes"));
    }

    let cluster_bits = cs.trailing_zeros();
    let entry_size: u64 = if o.extended_l2 { 16 } else { 8 };
    let l2_entries = cs / entry_size;
    let l1_span = u128::from(cs) * u128::from(l2_entries);
    let l1_size = u128::from(size).div_ceil(l1_span);
    if l1_size > u128::from(MAX_L1_SIZE / 8) {
        return Err(arg(
            "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
        ));
    }
    let l1_size = l1_size as u64; // <= 4 Mi
                                  // An empty image (size 0) has no L1 cluster; its offset is just past
                                  // the refcount blocks.
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let guest_clusters = size.div_ceil(cs);
    let meta_prealloc = prealloc != Preallocation::Off;
    let l2_tables = if meta_prealloc { l1_size } else { 0 };
    let data_clusters = if meta_prealloc && o.data_file.is_none() {
        guest_clusters
    } else {
        0
    };

    // Refcount structures must also count themselves: iterate to a fixed point.
    let per_block = cs * 8 / rb;
    let fixed = 1 + l1_clusters + l2_tables + data_clusters;
    let (mut reftable_clusters, mut refblocks) = (1u64, 1u64);
    loop {
        let total = fixed
            .checked_add(reftable_clusters + refblocks)
            .ok_or_else(|| arg("Image is too big"))?;
        let rbs = total.div_ceil(per_block);
        let rts = (rbs * 8).div_ceil(cs).max(1);
        if rbs == refblocks && rts == reftable_clusters {
            break;
        }
        refblocks = rbs;
        reftable_clusters = rts;
        if reftable_clusters * cs > MAX_REFTABLE_SIZE {
            return Err(arg(
                "The image size is too large for file format 'qcow2' (the refcount table would exceed 8 MiB; try using a larger cluster size)",
            ));
        }
    }
    let refblock_start = 1 + reftable_clusters;
    let l1_start = refblock_start + refblocks;
    let l2_start = l1_start + l1_clusters;
    let data_start = l2_start + l2_tables;
    let total_clusters = data_start + data_clusters;
    if total_clusters
        .checked_mul(cs)
        .is_none_or(|b| b > (1u64 << 56))
    {
        return Err(arg("Image is too big"));
    }

    let mut incompat = 0;
    let mut autoclear = 0;
    if o.data_file.is_some() {
        incompat |= INCOMPAT_DATA_FILE;
    }
    if o.data_file_raw {
        autoclear |= AUTOCLEAR_DATA_FILE_RAW;
    }
    if o.compression_type != CompressionType::Zlib {
        incompat |= INCOMPAT_COMPRESSION;
    }
    if o.extended_l2 {
        incompat |= INCOMPAT_EXTL2;
    }
    let mut header = Header {
        version: o.version,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size,
        crypt_method: 0,
        l1_size: l1_size as u32,
        l1_table_offset: l1_start * cs,
        refcount_table_offset: cs,
        refcount_table_clusters: reftable_clusters as u32,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: incompat,
        compatible_features: if o.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        autoclear_features: autoclear,
        refcount_order: rb.trailing_zeros(),
        header_length: if v3 { 112 } else { 72 },
        compression_type: o.compression_type,
    };

    // Extensions in QEMU's order: backing format, data file, feature table.
    let mut ext = Vec::new();
    if let (Some(_), Some(fmt)) = (&o.backing_file, &o.backing_fmt) {
        if fmt.len() >= 16 {
            return Err(arg(&format!(
                "Backing format name '{fmt}' is too long for the backing format extension (at most 15 bytes)"
            )));
        }
        ext.extend(encode(EXT_BACKING_FORMAT, fmt.as_bytes()));
    }
    if let Some(df) = &o.data_file {
        ext.extend(encode(EXT_DATA_FILE, df.as_bytes()));
    }
    if v3 && cs >= FEATURE_TABLE_MIN_CLUSTER {
        let names: [(u8, u8, &str); 8] = [
            (0, 0, "dirty bit"),
            (0, 1, "corrupt bit"),
            (0, 2, "external data file"),
            (0, 3, "compression type"),
            (0, 4, "extended L2 entries"),
            (1, 0, "lazy refcounts"),
            (2, 0, "bitmaps"),
            (2, 1, "raw external data"),
        ];
        let table: Vec<u8> = names
            .iter()
            .flat_map(|&(k, b, n)| feature_entry(k, b, n))
            .collect();
        ext.extend(encode(EXT_FEATURE_TABLE, &table));
    }
    ext.extend([0u8; 8]);
    let ext_end = u64::from(header.header_length) + ext.len() as u64;
    let backing = o.backing_file.as_deref().unwrap_or("");
    if backing.len() > MAX_BACKING_NAME {
        return Err(arg("Backing file name too long"));
    }
    if ext_end + backing.len() as u64 > cs {
        return Err(arg(
            "Header extensions and backing file name do not fit in the first cluster (try using a larger cluster size)",
        ));
    }
    if !backing.is_empty() {
        header.backing_file_offset = ext_end;
        header.backing_file_size = backing.len() as u32;
    }
    let mut cluster0 = header.to_bytes();
    cluster0.extend(ext);
    cluster0.extend(backing.as_bytes());

    Ok(Plan {
        header,
        cluster0,
        preallocation: prealloc,
        refblock_start,
        refblocks,
        l1_start,
        l1_clusters,
        l2_start,
        l2_tables,
        data_start,
        data_clusters,
        total_clusters,
    })
}

/// Sets entry `index` of a refcount block of `bits`-bit entries to 1
/// (sub-byte widths LSB first, wider ones big-endian).
fn set_refcount_one(block: &mut [u8], index: u64, bits: u64) {
    let bit = index * bits;
    if bits < 8 {
        if let Some(b) = block.get_mut((bit / 8) as usize) {
            *b |= 1 << (bit % 8);
        }
    } else if let Some(b) = block.get_mut(((bit + bits) / 8 - 1) as usize) {
        *b = 1;
    }
}

/// Writes the image of `plan` into `storage`; guest data (for
/// preallocation) goes to `data` when there is an external data file.
fn write_image(
    storage: &FileStorage,
    data: Option<&FileStorage>,
    o: &Qcow2CreateOptions,
    plan: &Plan,
) -> Result<()> {
    let h = &plan.header;
    let cs = h.cluster_size();
    let size = h.size;
    storage.write_at(&plan.cluster0, 0)?;

    // Refcount table: one entry per refcount block.
    let mut reftable = vec![0u8; (u64::from(h.refcount_table_clusters) * cs) as usize];
    for i in 0..plan.refblocks {
        let off = (plan.refblock_start + i) * cs;
        let at = (i * 8) as usize;
        reftable[at..at + 8].copy_from_slice(&off.to_be_bytes());
    }
    storage.write_at(&reftable, h.refcount_table_offset)?;

    // Refcount blocks: clusters 0..total_clusters have refcount 1.
    let bits = o.refcount_bits;
    let per_block = cs * 8 / bits;
    let mut block = vec![0u8; cs as usize];
    for i in 0..plan.refblocks {
        block.fill(0);
        let first = i * per_block;
        let n = plan.total_clusters.saturating_sub(first).min(per_block);
        for j in 0..n {
            set_refcount_one(&mut block, j, bits);
        }
        storage.write_at(&block, (plan.refblock_start + i) * cs)?;
    }

    // L1 table, one cluster at a time: with preallocation entry i points at
    // L2 table i.
    let l1_per_cluster = cs / 8;
    for c in 0..plan.l1_clusters {
        block.fill(0);
        if plan.l2_tables > 0 {
            for k in 0..l1_per_cluster {
                let i = c * l1_per_cluster + k;
                if i >= plan.l2_tables {
                    break;
                }
                let e = ((plan.l2_start + i) * cs) | OFLAG_COPIED;
                let at = (k * 8) as usize;
                block[at..at + 8].copy_from_slice(&e.to_be_bytes());
            }
        }
        storage.write_at(&block, (plan.l1_start + c) * cs)?;
    }

    // L2 tables: every guest cluster mapped, to the image's data clusters or
    // to the same offset in the data file. With extended L2 the subcluster
    // bitmap stays 0 (allocated but not yet written, as QEMU does).
    let entry_size = h.l2_entry_size();
    let l2_entries = cs / entry_size;
    let guest_clusters = size.div_ceil(cs);
    for t in 0..plan.l2_tables {
        block.fill(0);
        for j in 0..l2_entries {
            let g = t * l2_entries + j;
            if g >= guest_clusters {
                break;
            }
            let host = if o.data_file.is_some() {
                g * cs
            } else {
                (plan.data_start + g) * cs
            };
            let e = host | OFLAG_COPIED;
            let at = (j * entry_size) as usize;
            block[at..at + 8].copy_from_slice(&e.to_be_bytes());
        }
        storage.write_at(&block, (plan.l2_start + t) * cs)?;
    }

    // The file ends with the last cluster in use (data clusters are holes
    // unless falloc/full fills them).
    let end = if plan.data_clusters > 0 {
        plan.total_clusters * cs
    } else {
        (plan.l1_start * cs) + u64::from(h.l1_size) * 8
    };
    storage.set_len(end.max(storage.len()?))?;
    if plan.data_clusters > 0 {
        preallocate(
            storage,
            plan.data_start * cs,
            plan.data_clusters * cs,
            plan.preallocation,
        )?;
    }
    if let Some(d) = data {
        d.set_len(size)?;
        preallocate(d, 0, size, plan.preallocation)?;
        d.flush()?;
    }
    storage.flush()
}

/// Creates the qcow2 image `path` of `size` bytes (a multiple of 512) and
/// its data file, after validating everything. On failure the files this
/// call created are removed.
pub fn create(
    path: &Path,
    o: &Qcow2CreateOptions,
    size: u64,
    prealloc: Preallocation,
) -> Result<()> {
    let plan = plan(o, size, prealloc)?;
    let storage = FileStorage::create(path)?;
    let data = match &o.data_file {
        Some(df) => match FileStorage::create(df) {
            Ok(d) => Some(d),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        },
        None => None,
    };
    let r = write_image(&storage, data.as_ref(), o, &plan);
    if r.is_err() {
        let _ = std::fs::remove_file(path);
        if let Some(df) = &o.data_file {
            let _ = std::fs::remove_file(df);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::super::extensions::Extensions;
    use super::super::refcount::block_entry;
    use super::*;

    fn msg(o: &Qcow2CreateOptions, size: u64, p: Preallocation) -> String {
        plan(o, size, p).unwrap_err().message().to_string()
    }

    #[test]
    fn refuses_what_qemu_refuses() {
        let d = Qcow2CreateOptions::default;
        let mut o = d();
        o.cluster_size = 1000;
        assert!(msg(&o, 1 << 20, Preallocation::Off).starts_with("Cluster size must be"));
        o.cluster_size = 4 << 20;
        assert!(msg(&o, 1 << 20, Preallocation::Off).starts_with("Cluster size must be"));
        let mut o = d();
        o.extended_l2 = true;
        o.cluster_size = 8192;
        assert!(msg(&o, 1 << 20, Preallocation::Off).contains("at least 16384 bytes"));
        o.version = 2;
        assert!(msg(&o, 1 << 20, Preallocation::Off).starts_with("Extended L2 entries are only"));
        let mut o = d();
        o.refcount_bits = 3;
        assert!(msg(&o, 1 << 20, Preallocation::Off).starts_with("Refcount width"));
        o.refcount_bits = 0;
        assert!(msg(&o, 1 << 20, Preallocation::Off).starts_with("Refcount width"));
        o.refcount_bits = 8;
        o.version = 2;
        assert!(msg(&o, 1 << 20, Preallocation::Off).starts_with("Different refcount widths"));
        let mut o = d();
        o.data_file_raw = true;
        assert_eq!(
            msg(&o, 1 << 20, Preallocation::Off),
            "data-file-raw requires data-file"
        );
        let mut o = d();
        o.backing_file = Some("b".into());
        assert!(msg(&o, 1 << 20, Preallocation::Metadata).starts_with("Backing file and prealloc"));
        let mut o = d();
        o.cluster_size = 512;
        plan(&o, 128 << 30, Preallocation::Off).unwrap();
        assert!(msg(&o, (128 << 30) + 512, Preallocation::Off)
            .starts_with("The image size is too large"));
    }

    #[test]
    fn layout_parses_back_and_counts_every_cluster() {
        for (cs, rb, ext, v) in [
            (65536u64, 16u64, false, 3u32),
            (512, 1, false, 3),
            (16384, 64, true, 3),
            (65536, 16, false, 2),
            (2 << 20, 2, true, 3),
        ] {
            let o = Qcow2CreateOptions {
                version: v,
                cluster_size: cs,
                refcount_bits: rb,
                extended_l2: ext,
                backing_file: Some("base.raw".into()),
                backing_fmt: Some("raw".into()),
                ..Qcow2CreateOptions::default()
            };
            let p = plan(&o, 64 << 20, Preallocation::Off).unwrap();
            let h = Header::parse(&p.cluster0).unwrap();
            h.validate_layout().unwrap();
            assert_eq!(h, p.header);
            let e = Extensions::parse(&p.cluster0, &h).unwrap();
            assert_eq!(e.backing_format.as_deref(), Some("raw"));
            assert_eq!(e.has_feature_table, v == 3 && cs >= 8192);
            let off = h.backing_file_offset as usize;
            assert_eq!(&p.cluster0[off..], b"base.raw");
            assert!(p.refblocks * cs * 8 / rb >= p.total_clusters);
        }
    }

    #[test]
    fn created_images_open_read_zeros_and_check_clean() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, Qcow2CreateOptions, Preallocation)] = &[
            ("v3", Qcow2CreateOptions::default(), Preallocation::Off),
            (
                "v2m",
                Qcow2CreateOptions {
                    version: 2,
                    ..Qcow2CreateOptions::default()
                },
                Preallocation::Metadata,
            ),
            (
                "small",
                Qcow2CreateOptions {
                    cluster_size: 512,
                    refcount_bits: 1,
                    ..Qcow2CreateOptions::default()
                },
                Preallocation::Full,
            ),
            (
                "ext",
                Qcow2CreateOptions {
                    cluster_size: 16384,
                    extended_l2: true,
                    refcount_bits: 64,
                    compression_type: CompressionType::Zstd,
                    lazy_refcounts: true,
                    ..Qcow2CreateOptions::default()
                },
                Preallocation::Metadata,
            ),
        ];
        let size = 3 << 20;
        for (name, o, p) in cases {
            let path = dir.path().join(format!("{name}.qcow2"));
            create(&path, o, size, *p).unwrap();
            let img = crate::open(&path, &crate::OpenOptions::default()).unwrap();
            assert_eq!(img.size(), size, "{name}");
            let mut buf = vec![1u8; 65536];
            img.read_at(&mut buf, size - 65536).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "{name}");
            let r = img.check(crate::RepairMode::None, &mut |_| {}).unwrap();
            assert_eq!(
                (r.corruptions, r.leaks, r.check_errors),
                (0, 0, 0),
                "{name}"
            );
        }
        // A failed create removes what it made.
        let o = Qcow2CreateOptions {
            data_file: Some(dir.path().join("no/such/dir/d").display().to_string()),
            ..Qcow2CreateOptions::default()
        };
        let path = dir.path().join("failed.qcow2");
        assert!(create(&path, &o, size, Preallocation::Off).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn refcount_entries_of_every_width() {
        for order in 0..=6u32 {
            let bits = 1u64 << order;
            let mut b = vec![0u8; 512];
            for i in 0..5 {
                set_refcount_one(&mut b, i, bits);
            }
            for i in 0..5 {
                assert_eq!(block_entry(&b, i, order), 1, "width {bits} entry {i}");
            }
            assert_eq!(block_entry(&b, 5, order), 0);
        }
    }
}
