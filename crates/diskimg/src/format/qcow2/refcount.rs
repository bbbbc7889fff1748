//! Refcount table and refcount blocks: decoding for every width (1..64 bits).
//!
//! Used by `info`-level checks now (QEMU's metadata preallocation detection)
//! and by `check` later. Invariants: the table is read whole only after the
//! header validated its size (<= 8 MiB); a refblock offset is used only when
//! cluster aligned; entries are read with checked indices.

use super::header::Header;
use crate::io::Storage;
use crate::{Error, Result};

/// Offset bits of a refcount table entry (bits 9..63).
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;

/// The refcount table of an image.
#[derive(Debug, Clone)]
pub struct RefcountTable {
    /// Raw entries.
    pub entries: Vec<u64>,
    cluster_bits: u32,
    refcount_order: u32,
}

/// Entry `index` of a refcount block of `1 << order`-bit entries; sub-byte
/// widths are LSB first. Out-of-range indices read as 0.
pub fn block_entry(block: &[u8], index: u64, order: u32) -> u64 {
    let bits = 1u64 << order.min(6);
    let Some(bit) = index.checked_mul(bits) else {
        return 0;
    };
    let byte = usize::try_from(bit / 8).unwrap_or(usize::MAX);
    if bits < 8 {
        let Some(&b) = block.get(byte) else { return 0 };
        let shift = bit % 8;
        (u64::from(b) >> shift) & ((1 << bits) - 1)
    } else {
        let n = (bits / 8) as usize;
        let Some(s) = byte.checked_add(n).and_then(|end| block.get(byte..end)) else {
            return 0;
        };
        s.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }
}

impl RefcountTable {
    /// Reads the refcount table named by `h` from `storage`.
    pub fn load(storage: &dyn Storage, h: &Header) -> Result<Self> {
        let bytes = u64::from(h.refcount_table_clusters) << h.cluster_bits;
        if bytes > super::header::MAX_REFTABLE_SIZE {
            return Err(Error::invalid(format!(
                "Reference count table too large (qcow2 '{}')",
                storage.name()
            )));
        }
        let mut buf = vec![0u8; bytes as usize];
        storage.read_at(&mut buf, h.refcount_table_offset)?;
        Ok(RefcountTable {
            entries: buf
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            cluster_bits: h.cluster_bits,
            refcount_order: h.refcount_order,
        })
    }

    /// log2 of the number of entries in one refcount block.
    pub fn block_bits(&self) -> u32 {
        // cluster_bits + 3 (bits per byte) - refcount_order; >= 6 for valid headers.
        (self.cluster_bits + 3).saturating_sub(self.refcount_order)
    }

    /// The aligned offset of the refcount block covering `cluster_index`,
    /// or `None` when the block is not allocated.
    pub fn block_offset(&self, storage: &dyn Storage, cluster_index: u64) -> Result<Option<u64>> {
        let idx = cluster_index >> self.block_bits();
        let Some(&e) = usize::try_from(idx).ok().and_then(|i| self.entries.get(i)) else {
            return Ok(None);
        };
        let off = e & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(None);
        }
        if off & ((1u64 << self.cluster_bits) - 1) != 0 {
            return Err(Error::invalid(format!(
                "Refblock offset {off:#x} unaligned (reftable index: {idx:#x}) in '{}'",
                storage.name()
            )));
        }
        Ok(Some(off))
    }

    /// Reads one refcount block.
    pub fn read_block(&self, storage: &dyn Storage, offset: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; 1usize << self.cluster_bits];
        storage.read_at(&mut b, offset)?;
        Ok(b)
    }

    /// The refcount of the cluster at `cluster_index`.
    pub fn refcount(&self, storage: &dyn Storage, cluster_index: u64) -> Result<u64> {
        let Some(off) = self.block_offset(storage, cluster_index)? else {
            return Ok(0);
        };
        let block = self.read_block(storage, off)?;
        let mask = (1u64 << self.block_bits()) - 1;
        Ok(block_entry(
            &block,
            cluster_index & mask,
            self.refcount_order,
        ))
    }

    /// Counts clusters in `0..end_cluster` with a non-zero refcount, stopping
    /// once `limit` is reached. Each distinct refcount block is read at most
    /// once, and blocks past the end of the file (zeros) are not read, so a
    /// hostile table costs at most one read of the file.
    pub fn count_referenced(
        &self,
        storage: &dyn Storage,
        end_cluster: u64,
        limit: u64,
    ) -> Result<u64> {
        let per_block = 1u64 << self.block_bits();
        let file_len = storage.len()?;
        let mut full_counts: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut count = 0u64;
        let mut i = 0u64;
        while i < end_cluster && count < limit {
            let block_start = i - i % per_block;
            let stop = block_start.saturating_add(per_block).min(end_cluster);
            match self.block_offset(storage, i)? {
                Some(off) if off < file_len => {
                    let whole = i == block_start && stop - block_start == per_block;
                    if whole {
                        if let Some(&n) = full_counts.get(&off) {
                            count = count.saturating_add(n);
                            i = stop;
                            continue;
                        }
                    }
                    let block = self.read_block(storage, off)?;
                    let mut n = 0u64;
                    let mut complete = true;
                    // Fast path: an all-zero block counts nothing.
                    let range = if block.iter().all(|&b| b == 0) {
                        stop..stop
                    } else {
                        i..stop
                    };
                    for c in range {
                        if block_entry(&block, c % per_block, self.refcount_order) != 0 {
                            n += 1;
                            if count.saturating_add(n) >= limit {
                                complete = c + 1 == stop;
                                break;
                            }
                        }
                    }
                    // Only a fully scanned block's count can be reused.
                    if whole && complete {
                        full_counts.insert(off, n);
                    }
                    count = count.saturating_add(n);
                }
                _ => {}
            }
            i = stop;
        }
        Ok(count.min(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_of_every_width() {
        let block: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        // 1 bit: byte 0 = 0, byte 1 = 37 = 0b00100101.
        assert_eq!(block_entry(&block, 8, 0), 1);
        assert_eq!(block_entry(&block, 9, 0), 0);
        assert_eq!(block_entry(&block, 10, 0), 1);
        // 2 bits, 4 bits: LSB first within the byte.
        assert_eq!(block_entry(&block, 4, 1), 0b01);
        assert_eq!(block_entry(&block, 5, 1), 0b01);
        assert_eq!(block_entry(&block, 6, 1), 0b10);
        assert_eq!(block_entry(&block, 2, 2), 5);
        assert_eq!(block_entry(&block, 3, 2), 2);
        // 8..64 bits: big endian.
        assert_eq!(block_entry(&block, 1, 3), 37);
        assert_eq!(
            block_entry(&block, 1, 4),
            u64::from_be_bytes([0, 0, 0, 0, 0, 0, 74, 111])
        );
        assert_eq!(
            block_entry(&block, 1, 5),
            u64::from(u32::from_be_bytes([148, 185, 222, 3]))
        );
        assert_eq!(
            block_entry(&block, 1, 6),
            u64::from_be_bytes([40, 77, 114, 151, 188, 225, 6, 43])
        );
        // Out of range reads 0, never panics.
        assert_eq!(block_entry(&block, 1 << 40, 6), 0);
        assert_eq!(block_entry(&block, u64::MAX, 6), 0);
        assert_eq!(block_entry(&block, u64::MAX, 0), 0);
    }
}

#[cfg(test)]
mod count_tests {
    use super::super::header::Header;
    use super::*;
    use crate::io::MemoryStorage;

    #[test]
    fn counts_referenced_clusters_once_per_block() {
        // 512-byte clusters, 16-bit refcounts: 256 entries per block.
        let h = Header {
            cluster_bits: 9,
            size: 1 << 20,
            l1_size: 32,
            l1_table_offset: 1536,
            refcount_table_offset: 512,
            ..super::super::header::tests::v3()
        };
        let mut img = vec![0u8; 4096];
        // Reftable entries 0..64 all point at the block at 1024.
        for i in 0..64 {
            img[512 + i * 8..520 + i * 8].copy_from_slice(&1024u64.to_be_bytes());
        }
        // The block: entries 0, 1 and 255 non-zero.
        img[1024..1026].copy_from_slice(&1u16.to_be_bytes());
        img[1026..1028].copy_from_slice(&7u16.to_be_bytes());
        img[1024 + 510..1024 + 512].copy_from_slice(&1u16.to_be_bytes());
        let s = MemoryStorage::from_bytes("r", img);
        let t = RefcountTable::load(&s, &h).unwrap();
        assert_eq!(t.refcount(&s, 1).unwrap(), 7);
        assert_eq!(t.refcount(&s, 256 + 255).unwrap(), 1);
        assert_eq!(t.count_referenced(&s, 3, 100).unwrap(), 2);
        assert_eq!(t.count_referenced(&s, 256 * 10, 1000).unwrap(), 30);
        assert_eq!(t.count_referenced(&s, 256 * 10, 5).unwrap(), 5);
        // Partial last block: clusters 512..514 -> entries 0, 1.
        assert_eq!(t.count_referenced(&s, 514, 1000).unwrap(), 6 + 2);
    }
}
