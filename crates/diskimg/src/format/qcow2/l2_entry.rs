//! L1/L2 entries and compressed cluster descriptors.
//!
//! Decoding follows QEMU's cluster and subcluster types
//! (`qcow2_get_cluster_type`, `qcow2_get_subcluster_type`). Pure functions
//! of the entry bits: no I/O, no panics on any input.

/// Offset bits of an L1 or standard L2 entry (bits 9..55).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 63: refcount is exactly one.
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62: compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0: all-zero cluster (v3, standard L2 entries only).
pub const OFLAG_ZERO: u64 = 1;
/// Subcluster allocation bits of an extended L2 bitmap.
pub const L2_BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;

/// The state of one subcluster (or cluster, without extended L2), as QEMU's
/// `QCow2SubclusterType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubclusterType {
    /// Data at the host offset.
    Normal,
    /// Reads as zeros; no host offset.
    ZeroPlain,
    /// Reads as zeros; host space preallocated.
    ZeroAlloc,
    /// Not in this layer; no host offset.
    UnallocatedPlain,
    /// Not in this layer, though the cluster has host space (extended L2).
    UnallocatedAlloc,
    /// A compressed cluster.
    Compressed,
    /// An impossible combination of bits.
    Invalid,
}

impl SubclusterType {
    /// Whether the host offset of the entry is meaningful for this type.
    pub fn has_host_offset(self) -> bool {
        matches!(
            self,
            SubclusterType::Normal | SubclusterType::ZeroAlloc | SubclusterType::UnallocatedAlloc
        )
    }
}

/// The cluster-level type of a standard L2 entry (QEMU's `QCow2ClusterType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterType {
    /// No host offset.
    Unallocated,
    /// Zero flag, no offset.
    ZeroPlain,
    /// Zero flag with an offset.
    ZeroAlloc,
    /// Allocated.
    Normal,
    /// Compressed.
    Compressed,
}

/// The cluster type of `entry`. With extended L2 the zero flag is not used;
/// with an external data file, offset 0 with the COPIED flag is allocated.
pub fn cluster_type(entry: u64, extended_l2: bool, has_data_file: bool) -> ClusterType {
    if entry & OFLAG_COMPRESSED != 0 {
        ClusterType::Compressed
    } else if entry & OFLAG_ZERO != 0 && !extended_l2 {
        if entry & OFFSET_MASK != 0 {
            ClusterType::ZeroAlloc
        } else {
            ClusterType::ZeroPlain
        }
    } else if entry & OFFSET_MASK == 0 {
        if has_data_file && entry & OFLAG_COPIED != 0 {
            ClusterType::Normal
        } else {
            ClusterType::Unallocated
        }
    } else {
        ClusterType::Normal
    }
}

/// The type of subcluster `sc` (0..32) of an entry; `bitmap` is the second
/// half of an extended entry (ignored without extended L2).
pub fn subcluster_type(
    entry: u64,
    bitmap: u64,
    sc: u32,
    extended_l2: bool,
    has_data_file: bool,
) -> SubclusterType {
    let ct = cluster_type(entry, extended_l2, has_data_file);
    if !extended_l2 {
        return match ct {
            ClusterType::Compressed => SubclusterType::Compressed,
            ClusterType::ZeroPlain => SubclusterType::ZeroPlain,
            ClusterType::ZeroAlloc => SubclusterType::ZeroAlloc,
            ClusterType::Normal => SubclusterType::Normal,
            ClusterType::Unallocated => SubclusterType::UnallocatedPlain,
        };
    }
    let sc = sc % 32;
    let alloc = bitmap & (1u64 << sc) != 0;
    let zero = bitmap & (1u64 << (sc + 32)) != 0;
    match ct {
        ClusterType::Compressed => SubclusterType::Compressed,
        ClusterType::Normal => {
            if (bitmap >> 32) & bitmap & L2_BITMAP_ALL_ALLOC != 0 {
                SubclusterType::Invalid
            } else if zero {
                SubclusterType::ZeroAlloc
            } else if alloc {
                SubclusterType::Normal
            } else {
                SubclusterType::UnallocatedAlloc
            }
        }
        // The zero flag is not used with extended L2, so only these remain.
        ClusterType::Unallocated | ClusterType::ZeroPlain | ClusterType::ZeroAlloc => {
            if bitmap & L2_BITMAP_ALL_ALLOC != 0 {
                SubclusterType::Invalid
            } else if zero {
                SubclusterType::ZeroPlain
            } else {
                SubclusterType::UnallocatedPlain
            }
        }
    }
}

/// Where a compressed cluster's bytes are on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressedDescriptor {
    /// Host byte offset of the compressed data (not aligned).
    pub offset: u64,
    /// Bytes to read from `offset` (the data may end before this).
    pub size: u64,
}

/// Decodes the descriptor of a compressed L2 entry for `cluster_bits`
/// (9..=21): `x = 62 - (cluster_bits - 8)` offset bits, then the count of
/// additional 512-byte sectors.
pub fn compressed_descriptor(entry: u64, cluster_bits: u32) -> CompressedDescriptor {
    let cluster_bits = cluster_bits.clamp(9, 21);
    let shift = 62 - (cluster_bits - 8);
    let count_mask = (1u64 << (cluster_bits - 8)) - 1;
    let offset = entry & ((1u64 << shift) - 1);
    let sectors = ((entry >> shift) & count_mask) + 1;
    CompressedDescriptor {
        offset,
        size: sectors * 512 - (offset & 511),
    }
}

/// Encodes a compressed descriptor (for tests and the writer): `size`
/// bytes of compressed data at `offset`.
pub fn encode_compressed(offset: u64, size: u64, cluster_bits: u32) -> u64 {
    let shift = 62 - (cluster_bits - 8);
    let last = (offset + size.max(1) - 1) / 512;
    let sectors = last - offset / 512;
    OFLAG_COMPRESSED | (sectors << shift) | offset
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubclusterType::*;

    #[test]
    fn standard_entries() {
        for bits in [9u32, 12, 16, 21] {
            let off = 5u64 << bits;
            let t = |e: u64| subcluster_type(e, 0, 0, false, false);
            assert_eq!(t(0), UnallocatedPlain);
            assert_eq!(t(OFLAG_COPIED), UnallocatedPlain);
            assert_eq!(t(OFLAG_ZERO), ZeroPlain);
            assert_eq!(t(off | OFLAG_ZERO), ZeroAlloc);
            assert_eq!(t(off | OFLAG_COPIED), Normal);
            assert_eq!(t(off), Normal);
            assert_eq!(t(OFLAG_COMPRESSED | off), Compressed);
            // With a data file, offset 0 + COPIED is guest cluster 0.
            assert_eq!(subcluster_type(OFLAG_COPIED, 0, 0, false, true), Normal);
            assert_eq!(subcluster_type(0, 0, 0, false, true), UnallocatedPlain);
        }
    }

    #[test]
    fn extended_entries() {
        let off = 7u64 << 16;
        let t = |e: u64, b: u64, sc: u32| subcluster_type(e, b, sc, true, false);
        // Allocated cluster.
        assert_eq!(t(off, 1, 0), Normal);
        assert_eq!(t(off, 1, 1), UnallocatedAlloc);
        assert_eq!(t(off, 1 << 33, 1), ZeroAlloc);
        assert_eq!(t(off, (1 << 33) | 1, 0), Normal);
        // alloc and zero for the same subcluster: the whole cluster is invalid.
        assert_eq!(t(off, (1 << 32) | 1, 5), Invalid);
        // Unallocated cluster.
        assert_eq!(t(0, 0, 3), UnallocatedPlain);
        assert_eq!(t(0, 1 << 35, 3), ZeroPlain);
        assert_eq!(t(0, 1 << 35, 4), UnallocatedPlain);
        assert_eq!(t(0, 1 << 4, 3), Invalid);
        // The zero flag is ignored with extended L2.
        assert_eq!(t(OFLAG_ZERO, 0, 0), UnallocatedPlain);
        assert_eq!(t(off | OFLAG_ZERO, 1, 0), Normal);
        // Compressed ignores the bitmap.
        assert_eq!(t(OFLAG_COMPRESSED | 1234, u64::MAX, 31), Compressed);
        // sc beyond 31 never panics.
        let _ = t(off, u64::MAX, 1000);
    }

    #[test]
    fn compressed_descriptors() {
        // cluster_bits 16: 54 offset bits, 8 count bits.
        let d = compressed_descriptor(0x4000_0000_0005_0000, 16);
        assert_eq!(
            d,
            CompressedDescriptor {
                offset: 0x50000,
                size: 512
            }
        );
        let d = compressed_descriptor(0x4000_0000_0005_004f, 16);
        assert_eq!(d.offset, 0x5004f);
        assert_eq!(d.size, 512 - 0x4f);
        let e = OFLAG_COMPRESSED | (3u64 << 54) | 0x1234_5600;
        assert_eq!(compressed_descriptor(e, 16).size, 4 * 512);
        // cluster_bits 9: 61 offset bits, 1 count bit.
        let e = OFLAG_COMPRESSED | (1u64 << 61) | 0x200;
        let d = compressed_descriptor(e, 9);
        assert_eq!(
            d,
            CompressedDescriptor {
                offset: 0x200,
                size: 1024
            }
        );
        // cluster_bits 21: 49 offset bits, 13 count bits.
        let e = OFLAG_COMPRESSED | (0x1fffu64 << 49) | ((1u64 << 49) - 1);
        let d = compressed_descriptor(e, 21);
        assert_eq!(d.offset, (1u64 << 49) - 1);
        assert_eq!(d.size, 0x2000 * 512 - 511);
        for bits in [9u32, 16, 21] {
            for (off, size) in [(0u64, 1u64), (511, 2), (4096 + 17, 700), (1 << 40, 512)] {
                let size = size.min(1u64 << bits);
                let d = compressed_descriptor(encode_compressed(off, size, bits), bits);
                assert_eq!(d.offset, off);
                assert!(
                    d.size >= size && d.size < size + 512,
                    "{bits} {off} {size} {d:?}"
                );
            }
        }
        // Any entry and any cluster_bits decode without panicking.
        for bits in [0u32, 8, 22, 64] {
            let _ = compressed_descriptor(u64::MAX, bits);
        }
    }
}
