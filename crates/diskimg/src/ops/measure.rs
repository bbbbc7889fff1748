//! `qemu-img measure`: how large a new image would be, for a given virtual
//! size or to hold a copy of an existing image.
//!
//! The figures are QEMU's, computed the way QEMU computes them (they are
//! estimates, and scripts compare them with QEMU's exactly):
//!
//! - `fully-allocated`: a header cluster, every L2 table, the L1 table, the
//!   refcount structures that count all of that plus every data cluster,
//!   plus the data clusters (the virtual size rounded up to clusters);
//! - `required`: `fully-allocated` minus the data clusters that would not
//!   be written: with a source, only the clusters holding data somewhere in
//!   its chain count (zeros and unallocated ranges do not); with a backing
//!   file every cluster counts (what the backing file shares is unknown);
//!   with falloc or full preallocation every cluster counts;
//! - `bitmaps`: the space to copy the source's persistent dirty bitmaps,
//!   shown only when the source and the target (qcow2 v3) both keep them.
//!
//! A raw target needs the virtual size, rounded up to sectors.
//!
//! Invariants: every figure is computed with checked arithmetic (sizes come
//! from the command line or from a possibly hostile image); option checks
//! run in QEMU's order with QEMU's messages.

use std::sync::Arc;

use super::status::status_above;
use crate::format::create::{CreateOptions, Preallocation, SECTOR_SIZE};
use crate::format::qcow2::header::{MAX_CLUSTER_BITS, MAX_L1_SIZE, MIN_CLUSTER_BITS};
use crate::format::{FormatSpecific, ImageInfo};
use crate::{BlockDevice, Error, Format, Result};

/// What a new image would take (QAPI `BlockMeasureInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measurement {
    /// Bytes the new image needs for the data it would hold.
    pub required: u64,
    /// Bytes the image needs when every cluster is allocated.
    pub fully_allocated: u64,
    /// Bytes for the source's persistent bitmaps, when both the source and
    /// the target support them.
    pub bitmaps: Option<u64>,
}

/// Size of an L1 entry and of a refcount table entry.
const ENTRY: u64 = 8;
/// Size of a bitmap directory entry without its name (qcow2 spec).
const BITMAP_DIR_ENTRY_HEADER: u64 = 24;

fn too_big() -> Error {
    Error::invalid_argument("Image size is too big to measure")
}

fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).ok_or_else(too_big)
}

fn mul(a: u64, b: u64) -> Result<u64> {
    a.checked_mul(b).ok_or_else(too_big)
}

fn round_up(v: u64, align: u64) -> Result<u64> {
    mul(v.div_ceil(align), align)
}

/// Checks a qcow2 cluster size as QEMU does before anything else.
pub fn check_cluster_size(cluster_size: u64, extended_l2: bool) -> Result<()> {
    let ok = cluster_size.is_power_of_two()
        && ((1u64 << MIN_CLUSTER_BITS)..=(1u64 << MAX_CLUSTER_BITS)).contains(&cluster_size);
    if !ok {
        return Err(Error::invalid_argument(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if extended_l2 && cluster_size < 16384 {
        return Err(Error::invalid_argument(
            "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
        ));
    }
    Ok(())
}

/// Measures an image created with `opts`, either empty (`source` None) or
/// holding a copy of `source` (its whole chain, flattened). `opts.size` is
/// the `size` option (`--size` or `-o size`); with a source, the source's
/// size is the image's size.
pub fn measure(opts: &CreateOptions, source: Option<&Arc<dyn BlockDevice>>) -> Result<Measurement> {
    match opts.format {
        Format::Raw => {
            let required = match source {
                Some(s) => round_up(s.size(), SECTOR_SIZE)?,
                None => round_up(opts.size, SECTOR_SIZE)?,
            };
            Ok(Measurement {
                required,
                fully_allocated: required,
                bitmaps: None,
            })
        }
        Format::Qcow2 => measure_qcow2(opts, source),
        other => Err(Error::unsupported(format!(
            "Block driver '{other}' does not support size measurement"
        ))),
    }
}

fn measure_qcow2(
    opts: &CreateOptions,
    source: Option<&Arc<dyn BlockDevice>>,
) -> Result<Measurement> {
    let q = &opts.qcow2;
    let cs = q.cluster_size;
    check_cluster_size(cs, q.extended_l2)?;
    if q.version != 2 && q.version != 3 {
        return Err(Error::invalid_argument(format!(
            "Invalid compatibility level: '{}'",
            q.version
        )));
    }
    let rb = q.refcount_bits;
    if rb > 64 || !rb.is_power_of_two() {
        return Err(Error::invalid_argument(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if q.version < 3 && rb != 16 {
        return Err(Error::invalid_argument(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
        ));
    }
    let l2e: u64 = if q.extended_l2 { 16 } else { 8 };

    // The size option is checked against the L1 limit even when a source
    // gives the real size (QEMU checks before it looks at the source).
    let mut virtual_size = round_up(opts.size, cs)?;
    let l2_tables = (virtual_size / cs).div_ceil(cs / l2e);
    if l2_tables.checked_mul(ENTRY).is_none_or(|b| b > MAX_L1_SIZE) {
        return Err(Error::invalid_argument(
            "The image size is too large (try using a larger cluster size)",
        ));
    }

    let mut required = 0u64;
    if let Some(src) = source {
        let ssize = src.size();
        virtual_size = round_up(ssize, cs)?;
        if q.backing_file.is_some() {
            // What the new backing file shares with the source is unknown:
            // every cluster may have to be written.
            required = virtual_size;
        } else {
            required = allocated_bytes(src, cs)?;
        }
    }
    if matches!(
        opts.preallocation,
        Preallocation::Full | Preallocation::Falloc
    ) {
        required = virtual_size;
    }

    let fully_allocated = prealloc_size(virtual_size, cs, rb, l2e)?;
    let required = add(fully_allocated - virtual_size, required)?;
    let bitmaps = match source {
        Some(src) if q.version >= 3 => bitmaps_size(&src.info(), src.size(), cs)?,
        _ => None,
    };
    Ok(Measurement {
        required,
        fully_allocated,
        bitmaps,
    })
}

/// Bytes of `cs`-sized clusters that hold data somewhere in `src`'s chain:
/// a cluster counts once if any of its bytes is allocated data that does
/// not read as zeros.
fn allocated_bytes(src: &Arc<dyn BlockDevice>, cs: u64) -> Result<u64> {
    let ssize = src.size();
    let mut offset = 0u64;
    let mut total = 0u64;
    while offset < ssize {
        let st = status_above(src, offset, ssize - offset)?;
        let mut len = st.len.max(1);
        if !st.zero && st.data && st.allocated {
            // Count from the start of the cluster to the end of the cluster
            // where the data ends, and go on from there.
            let end = round_up(add(offset, len)?, cs)?;
            len = end - offset;
            total = add(total, (offset % cs) + len)?;
        }
        offset = add(offset, len)?;
    }
    Ok(total)
}

/// QEMU's fully allocated size of a qcow2 image of `size` bytes (a multiple
/// of `cs`): header cluster, L2 tables, L1 table, refcount table and blocks
/// counting everything, and the data.
fn prealloc_size(size: u64, cs: u64, refcount_bits: u64, l2e: u64) -> Result<u64> {
    let mut meta = cs;
    let l2_entries = round_up(size / cs, cs / l2e)?;
    meta = add(meta, mul(l2_entries, l2e)?)?;
    let l1_entries = round_up(mul(l2_entries, l2e)? / cs, cs / ENTRY)?;
    meta = add(meta, mul(l1_entries, ENTRY)?)?;
    let clusters = add(meta, size)? / cs;
    meta = add(meta, refcount_metadata_size(clusters, cs, refcount_bits)?)?;
    add(meta, size)
}

/// Bytes of refcount blocks and table needed to count `clusters` clusters
/// and themselves (the fixed point of the count).
fn refcount_metadata_size(clusters: u64, cs: u64, refcount_bits: u64) -> Result<u64> {
    let per_table_cluster = cs / ENTRY;
    let per_block = cs * 8 / refcount_bits;
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = add(add(clusters, table)?, blocks)?.div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = add(add(clusters, blocks)?, table)?;
        if n == last {
            break;
        }
    }
    mul(add(blocks, table)?, cs)
}

/// The space to copy the persistent bitmaps of `info`'s image (of `size`
/// guest bytes) into a qcow2 image with `cs` clusters; None when the
/// source cannot hold persistent bitmaps (not qcow2 v3).
fn bitmaps_size(info: &ImageInfo, size: u64, cs: u64) -> Result<Option<u64>> {
    let Some(FormatSpecific::Qcow2(q)) = &info.specific else {
        return Ok(None);
    };
    if q.compat != "1.1" {
        return Ok(None);
    }
    let mut total = 0u64;
    let mut dir = 0u64;
    for bm in q.bitmaps.iter().flatten() {
        if bm.granularity == 0 {
            return Err(Error::invalid(format!(
                "Bitmap '{}' of '{}' has granularity 0",
                bm.name, info.filename
            )));
        }
        let bytes = size.div_ceil(bm.granularity).div_ceil(8);
        let clusters = bytes.div_ceil(cs);
        total = add(total, mul(clusters, cs)?)?;
        total = add(total, round_up(mul(clusters, ENTRY)?, cs)?)?;
        dir = add(
            dir,
            round_up(BITMAP_DIR_ENTRY_HEADER + bm.name.len() as u64, 8)?,
        )?;
    }
    Ok(Some(add(total, round_up(dir, cs)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(size: u64) -> CreateOptions {
        CreateOptions::new(Format::Qcow2, size)
    }

    #[test]
    fn empty_images_match_qemu() {
        // Figures printed by qemu-img 10.0.2 measure --size.
        let m = measure(&q(1 << 30), None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (393216, 1074135040));
        assert_eq!(m.bitmaps, None);
        let m = measure(&q(0), None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (196608, 196608));
        let m = measure(&q(1000), None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (327680, 393216));
        let mut o = q(1 << 30);
        o.qcow2.extended_l2 = true;
        let m = measure(&o, None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (524288, 1074266112));
        let mut o = q(1 << 30);
        o.qcow2.refcount_bits = 1;
        o.qcow2.cluster_size = 512;
        let m = measure(&o, None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (17311232, 1091053056));
        let mut o = q(1 << 20);
        o.preallocation = Preallocation::Falloc;
        let m = measure(&o, None).unwrap();
        assert_eq!((m.required, m.fully_allocated), (1376256, 1376256));
        let mut o = q(1 << 50);
        o.qcow2.cluster_size = 2 << 20;
        let m = measure(&o, None).unwrap();
        assert_eq!(
            (m.required, m.fully_allocated),
            (5377097728, 1125905283940352)
        );
    }

    #[test]
    fn limits_and_option_errors() {
        let e = measure(&q(4 << 50), None).unwrap_err();
        assert_eq!(
            e.message(),
            "The image size is too large (try using a larger cluster size)"
        );
        let mut o = q(1 << 20);
        o.qcow2.cluster_size = 3072;
        assert!(measure(&o, None)
            .unwrap_err()
            .message()
            .starts_with("Cluster size must be"));
        let mut o = q(1 << 20);
        o.qcow2.refcount_bits = 3;
        assert!(measure(&o, None)
            .unwrap_err()
            .message()
            .starts_with("Refcount width"));
        let mut o = q(1 << 20);
        o.qcow2.version = 2;
        o.qcow2.refcount_bits = 8;
        assert!(measure(&o, None)
            .unwrap_err()
            .message()
            .starts_with("Different refcount widths"));
        // The largest sizes do not overflow.
        let mut o = q(i64::MAX as u64);
        o.qcow2.cluster_size = 2 << 20;
        assert!(measure(&o, None).is_err());
        let r = CreateOptions::new(Format::Raw, i64::MAX as u64);
        assert_eq!(measure(&r, None).unwrap().required, (i64::MAX as u64 + 1));
    }

    #[test]
    fn raw_rounds_to_sectors() {
        let m = measure(&CreateOptions::new(Format::Raw, 1000), None).unwrap();
        assert_eq!(
            (m.required, m.fully_allocated, m.bitmaps),
            (1024, 1024, None)
        );
    }

    #[test]
    fn counts_data_clusters_once() {
        use crate::ops::status::tests::Fake;
        // 64 KiB clusters: data [4k, 8k) and [60k, 70k) touch clusters 0
        // and 1; [200k, 201k) touches cluster 3.
        let dev = Fake::device(
            vec![
                (4096, true, false, true),
                (4096, true, true, false),
                (53248, false, false, false),
                (10240, true, true, false),
                (133120, false, false, false),
                (1024, true, true, false),
                (55296, true, false, true),
            ],
            None,
        );
        assert_eq!(allocated_bytes(&dev, 65536).unwrap(), 3 * 65536);
    }
}
