//! The refcount engine of the writer: cluster allocation, refcount updates
//! kept in a write-back cache of refcount blocks, refcount table growth, and
//! deferred frees.
//!
//! Invariants (the writer's crash-safety rules rely on them):
//! - An allocated cluster gets its refcount raised in memory at once; the
//!   raised refcount reaches the disk in [`Allocator::write_back`], which the
//!   writer calls before it writes any L2 table or L1 entry that could point
//!   to the cluster.
//! - A new refcount block is written before the table entry that points to
//!   it, and a moved refcount table is written whole before the header names
//!   it (with a sync between, see [`Allocator::write_back`]).
//! - A cluster is freed only through [`Allocator::queue_free`]: the decrement
//!   waits in a list until the writer has made durable every table that
//!   stopped referencing it, then [`Allocator::apply_frees`] applies it. A
//!   queued cluster keeps its refcount in the meantime, so it cannot be
//!   handed out again while an old reference may still be on disk.
//! - Refcounts never wrap: a cluster at the largest refcount of the width
//!   cannot gain another reference (an error, as in QEMU).

use std::collections::HashMap;

use super::header::{Header, MAX_REFTABLE_SIZE};
use super::refcount::{block_entry, REFT_OFFSET_MASK};
use crate::io::Storage;
use crate::{Error, Result};

/// One cached refcount block.
struct Block {
    offset: u64,
    data: Vec<u8>,
    dirty: bool,
}

/// Refcount blocks cached at most, unless dirty ones need to stay.
const MAX_CACHED_BLOCKS: usize = 256;

/// Queued frees after which the writer should flush.
pub const FREE_QUEUE_LIMIT: usize = 65536;

/// The refcount state of an image open for writing.
pub struct Allocator {
    cluster_bits: u32,
    order: u32,
    /// In-memory refcount table.
    table: Vec<u64>,
    table_offset: u64,
    table_clusters: u64,
    /// Table entries `[lo, hi)` changed since the last write-back.
    table_dirty: Option<(usize, usize)>,
    /// The table moved: the header must name the new one.
    table_moved: bool,
    blocks: HashMap<u64, Block>,
    /// Where the search for free clusters starts (cluster index).
    free_hint: u64,
    /// Clusters at or past this index have never held anything: they read
    /// as zeros (past the end of the file at open, not allocated since).
    zero_from: u64,
    /// One past the highest cluster index allocated.
    end: u64,
    /// Decrements waiting until no durable reference remains.
    pending: Vec<(u64, u64)>,
    /// Clusters whose refcount reached zero in the last `apply_frees`.
    freed: Vec<u64>,
    /// Offsets of refcount blocks created since the last `take_new_blocks`.
    new_blocks: Vec<u64>,
}

fn be_u64s(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Stores entry `index` of a refcount block of `1 << order`-bit entries.
pub fn set_block_entry(block: &mut [u8], index: u64, order: u32, value: u64) {
    let bits = 1u64 << order;
    let bit = index * bits;
    let byte = (bit / 8) as usize;
    if bits < 8 {
        let shift = bit % 8;
        let mask = (((1u64 << bits) - 1) << shift) as u8;
        if let Some(b) = block.get_mut(byte) {
            *b = (*b & !mask) | (((value << shift) as u8) & mask);
        }
    } else {
        let n = (bits / 8) as usize;
        if let Some(s) = block.get_mut(byte..byte + n) {
            let be = value.to_be_bytes();
            s.copy_from_slice(&be[8 - n..]);
        }
    }
}

impl Allocator {
    /// Loads the refcount table of the image described by `h`.
    pub fn load(storage: &dyn Storage, h: &Header) -> Result<Self> {
        let clusters = u64::from(h.refcount_table_clusters);
        let bytes = clusters << h.cluster_bits;
        if bytes > MAX_REFTABLE_SIZE {
            return Err(Error::invalid(format!(
                "Reference count table too large (qcow2 '{}')",
                storage.name()
            )));
        }
        let mut buf = vec![0u8; bytes as usize];
        storage.read_at(&mut buf, h.refcount_table_offset)?;
        let file_clusters = storage.len()?.div_ceil(h.cluster_size());
        Ok(Allocator {
            cluster_bits: h.cluster_bits,
            order: h.refcount_order,
            table: be_u64s(&buf),
            table_offset: h.refcount_table_offset,
            table_clusters: clusters,
            table_dirty: None,
            table_moved: false,
            blocks: HashMap::new(),
            free_hint: 0,
            zero_from: file_clusters,
            end: file_clusters,
            pending: Vec::new(),
            freed: Vec::new(),
            new_blocks: Vec::new(),
        })
    }

    fn cs(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// log2 of the entries in one refcount block.
    fn block_bits(&self) -> u32 {
        self.cluster_bits + 3 - self.order
    }

    /// The largest refcount the width can hold.
    fn max_refcount(&self) -> u64 {
        if self.order >= 6 {
            u64::MAX
        } else {
            (1u64 << (1u64 << self.order)) - 1
        }
    }

    /// Where the refcount table is and how many clusters it has.
    pub fn table_location(&self) -> (u64, u64) {
        (self.table_offset, self.table_clusters)
    }

    /// Whether enough work piled up that the writer should flush.
    pub fn wants_flush(&self) -> bool {
        self.pending.len() >= FREE_QUEUE_LIMIT
            || self.blocks.len() > MAX_CACHED_BLOCKS && self.blocks.values().any(|b| b.dirty)
    }

    /// Offsets of the refcount blocks the table names now.
    pub fn block_offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.table
            .iter()
            .map(|e| e & REFT_OFFSET_MASK)
            .filter(|&o| o != 0)
    }

    /// The refcount blocks created since the last call.
    pub fn take_new_blocks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.new_blocks)
    }

    /// Whether frees wait for [`Allocator::apply_frees`].
    pub fn has_pending_frees(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Loads (if needed) the block with table index `bi`; `None` when the
    /// table has no block there.
    fn block(&mut self, storage: &dyn Storage, bi: u64) -> Result<Option<&mut Block>> {
        if !self.blocks.contains_key(&bi) {
            let Some(&e) = usize::try_from(bi).ok().and_then(|i| self.table.get(i)) else {
                return Ok(None);
            };
            let off = e & REFT_OFFSET_MASK;
            if off == 0 {
                return Ok(None);
            }
            if off & (self.cs() - 1) != 0 {
                return Err(Error::invalid(format!(
                    "Refblock offset {off:#x} unaligned (reftable index: {bi:#x}) in '{}'",
                    storage.name()
                )));
            }
            if off >> self.cluster_bits == 0 {
                return Err(Error::invalid(format!(
                    "Refblock at offset 0 (reftable index: {bi:#x}) in '{}': the header cluster cannot be a refcount block",
                    storage.name()
                )));
            }
            let mut data = vec![0u8; self.cs() as usize];
            storage.read_at(&mut data, off)?;
            self.trim_cache();
            self.blocks.insert(
                bi,
                Block {
                    offset: off,
                    data,
                    dirty: false,
                },
            );
        }
        Ok(self.blocks.get_mut(&bi))
    }

    /// Drops clean blocks when the cache is over its size.
    fn trim_cache(&mut self) {
        if self.blocks.len() >= MAX_CACHED_BLOCKS {
            self.blocks.retain(|_, b| b.dirty);
        }
    }

    /// The refcount of cluster `index`.
    pub fn refcount(&mut self, storage: &dyn Storage, index: u64) -> Result<u64> {
        let bb = self.block_bits();
        let order = self.order;
        Ok(match self.block(storage, index >> bb)? {
            Some(b) => block_entry(&b.data, index & ((1 << bb) - 1), order),
            None => 0,
        })
    }

    /// Sets the refcount of cluster `index`, creating its refcount block
    /// when there is none.
    pub fn set_refcount(&mut self, storage: &dyn Storage, index: u64, value: u64) -> Result<()> {
        let bb = self.block_bits();
        let bi = index >> bb;
        if self.block(storage, bi)?.is_none() {
            self.new_block(storage, bi)?;
        }
        let order = self.order;
        let b = self
            .block(storage, bi)?
            .ok_or_else(|| Error::invalid("refcount block vanished"))?;
        set_block_entry(&mut b.data, index & ((1 << bb) - 1), order, value);
        b.dirty = true;
        if value != 0 {
            self.end = self.end.max(index + 1);
        }
        Ok(())
    }

    /// Changes the refcount of cluster `index` by `delta`, refusing to wrap.
    pub fn adjust(&mut self, storage: &dyn Storage, index: u64, delta: i64) -> Result<u64> {
        let cur = self.refcount(storage, index)?;
        let new = if delta >= 0 {
            cur.checked_add(delta as u64)
                .filter(|&n| n <= self.max_refcount())
        } else {
            cur.checked_sub(delta.unsigned_abs())
        };
        let Some(new) = new else {
            return Err(Error::invalid(format!(
                "refcount of the cluster at offset {:#x} in '{}' would {} ({cur} {delta:+})",
                index << self.cluster_bits,
                storage.name(),
                if delta >= 0 {
                    "overflow"
                } else {
                    "drop below zero"
                }
            )));
        };
        self.set_refcount(storage, index, new)?;
        Ok(new)
    }

    /// Creates refcount block `bi`, placing it in the first cluster it
    /// covers itself, so that it needs no other block.
    fn new_block(&mut self, storage: &dyn Storage, bi: u64) -> Result<()> {
        if usize::try_from(bi).map_or(true, |i| i >= self.table.len()) {
            self.grow_table(storage, bi + 1)?;
            if self.block(storage, bi)?.is_some() {
                return Ok(());
            }
        }
        let bb = self.block_bits();
        let at = bi << bb;
        if at == 0 {
            return Err(Error::invalid(format!(
                "the refcount table of '{}' has no block for the header cluster (reftable index 0)",
                storage.name()
            )));
        }
        let offset = at << self.cluster_bits;
        let mut data = vec![0u8; self.cs() as usize];
        set_block_entry(&mut data, 0, self.order, 1);
        self.trim_cache();
        self.blocks.insert(
            bi,
            Block {
                offset,
                data,
                dirty: true,
            },
        );
        self.set_table_entry(bi as usize, offset);
        self.end = self.end.max(at + 1);
        Ok(())
    }

    fn set_table_entry(&mut self, i: usize, value: u64) {
        self.table[i] = value;
        self.new_blocks.push(value & REFT_OFFSET_MASK);
        self.table_dirty = Some(match self.table_dirty {
            Some((lo, hi)) => (lo.min(i), hi.max(i + 1)),
            None => (i, i + 1),
        });
    }

    /// Replaces the refcount table by one of at least `min_entries`
    /// entries, placed at the end of the image together with the refcount
    /// blocks that describe it. The old table is freed later.
    fn grow_table(&mut self, storage: &dyn Storage, min_entries: u64) -> Result<()> {
        let cs = self.cs();
        let per_cluster = cs / 8;
        let bb = self.block_bits();
        let mut n = min_entries
            .max(self.table.len() as u64 * 2)
            .max(per_cluster)
            .div_ceil(per_cluster)
            * per_cluster;
        let mut start = self.end.max(1);
        let (clusters, new_blocks) = loop {
            if n * 8 > MAX_REFTABLE_SIZE {
                return Err(Error::invalid(format!(
                    "the refcount table of '{}' would exceed {} MiB",
                    storage.name(),
                    MAX_REFTABLE_SIZE >> 20
                )));
            }
            let k = n * 8 / cs;
            // Blocks describing [start, start + k + nb): placed after the table.
            let mut nb = 0u64;
            loop {
                let last = start + k + nb - 1;
                let missing = ((start >> bb)..=(last >> bb))
                    .filter(|&bi| {
                        usize::try_from(bi)
                            .ok()
                            .and_then(|i| self.table.get(i))
                            .is_none_or(|e| e & REFT_OFFSET_MASK == 0)
                    })
                    .count() as u64;
                if missing == nb {
                    break;
                }
                nb = missing;
            }
            let last = start + k + nb - 1;
            // The region must be free (an odd image may count clusters past
            // the end of its file).
            let mut busy = None;
            for c in start..=last {
                if self.refcount(storage, c)? != 0 {
                    busy = Some(c);
                }
            }
            if let Some(c) = busy {
                start = c + 1;
                continue;
            }
            if (last >> bb) < n {
                break (k, nb);
            }
            n *= 2;
        };
        let mut table = self.table.clone();
        table.resize(n as usize, 0);
        let mut next = start + clusters;
        let last = start + clusters + new_blocks - 1;
        for bi in (start >> bb)..=(last >> bb) {
            if table[bi as usize] & REFT_OFFSET_MASK == 0 {
                let offset = next << self.cluster_bits;
                next += 1;
                table[bi as usize] = offset;
                self.new_blocks.push(offset);
                self.blocks.insert(
                    bi,
                    Block {
                        offset,
                        data: vec![0u8; cs as usize],
                        dirty: true,
                    },
                );
            }
        }
        let old = (self.table_offset, self.table_clusters);
        self.table = table;
        self.table_offset = start << self.cluster_bits;
        self.table_clusters = clusters;
        self.table_moved = true;
        self.table_dirty = Some((0, n as usize));
        self.end = self.end.max(next);
        for c in start..next {
            self.set_refcount(storage, c, 1)?;
        }
        self.queue_free(old.0 >> self.cluster_bits, old.1);
        Ok(())
    }

    /// Whether refcount block `bi` exists.
    fn has_block(&self, bi: u64) -> bool {
        self.blocks.contains_key(&bi)
            || usize::try_from(bi)
                .ok()
                .and_then(|i| self.table.get(i))
                .is_some_and(|e| e & REFT_OFFSET_MASK != 0)
    }

    /// Allocates `n` contiguous clusters (refcount 1 each) and returns the
    /// host offset of the first and whether they read as zeros. Refcount
    /// blocks missing for the run are created right after it (a block
    /// placed inside the run would break it: with small clusters and wide
    /// refcounts one block covers only 64 clusters).
    pub fn allocate(&mut self, storage: &dyn Storage, n: u64) -> Result<(u64, bool)> {
        let bb = self.block_bits();
        let cb = self.cluster_bits;
        let limit = 1u64 << (56 - cb);
        let mut start = self.free_hint.max(1);
        'search: loop {
            let mut run = 0;
            while run < n {
                let c = start + run;
                if c >= limit {
                    return Err(Error::invalid(format!(
                        "no free clusters left in '{}' (host offsets are limited to 2^56)",
                        storage.name()
                    )));
                }
                if self.refcount(storage, c)? != 0 {
                    start = c + 1;
                    continue 'search;
                }
                run += 1;
            }
            // The blocks missing for the run and for themselves.
            let mut nb = 0u64;
            let missing: Vec<u64> = loop {
                let last = start + n + nb - 1;
                let miss: Vec<u64> = ((start >> bb)..=(last >> bb))
                    .filter(|&bi| !self.has_block(bi))
                    .collect();
                if miss.len() as u64 == nb {
                    break miss;
                }
                nb = miss.len() as u64;
            };
            let Some(&max_bi) = missing.last() else {
                break;
            };
            if usize::try_from(max_bi).map_or(true, |i| i >= self.table.len()) {
                self.grow_table(storage, max_bi + 1)?;
                continue 'search;
            }
            for c in start + n..start + n + nb {
                if c >= limit || self.refcount(storage, c)? != 0 {
                    start = c + 1;
                    continue 'search;
                }
            }
            for (j, &bi) in missing.iter().enumerate() {
                let offset = (start + n + j as u64) << cb;
                self.trim_cache();
                self.blocks.insert(
                    bi,
                    Block {
                        offset,
                        data: vec![0u8; self.cs() as usize],
                        dirty: true,
                    },
                );
                self.set_table_entry(bi as usize, offset);
            }
            for c in start + n..start + n + nb {
                self.set_refcount(storage, c, 1)?;
            }
            break;
        }
        for c in start..start + n {
            self.set_refcount(storage, c, 1)?;
        }
        let fresh = start >= self.zero_from;
        self.zero_from = self.zero_from.max(start + n);
        self.free_hint = start + n;
        self.end = self.end.max(start + n);
        Ok((start << cb, fresh))
    }

    /// Takes the `n` clusters from index `first` when they are all free and
    /// their refcount blocks exist; returns whether it did.
    pub fn allocate_at(&mut self, storage: &dyn Storage, first: u64, n: u64) -> Result<bool> {
        let bb = self.block_bits();
        for bi in (first >> bb)..=((first + n - 1) >> bb) {
            if self.block(storage, bi)?.is_none() {
                return Ok(false);
            }
        }
        for c in first..first + n {
            if self.refcount(storage, c)? != 0 {
                return Ok(false);
            }
        }
        for c in first..first + n {
            self.set_refcount(storage, c, 1)?;
        }
        self.zero_from = self.zero_from.max(first + n);
        self.end = self.end.max(first + n);
        if self.free_hint == first {
            self.free_hint = first + n;
        }
        Ok(true)
    }

    /// Queues the release of `n` clusters from index `first`: the decrement
    /// waits for [`Allocator::apply_frees`].
    pub fn queue_free(&mut self, first: u64, n: u64) {
        if n > 0 {
            self.pending.push((first, n));
        }
    }

    /// Applies the queued decrements (call only once no durable table
    /// references the clusters). Returns the host ranges that became free,
    /// for the caller to punch out of the file.
    pub fn apply_frees(&mut self, storage: &dyn Storage) -> Result<Vec<(u64, u64)>> {
        let pending = std::mem::take(&mut self.pending);
        self.freed.clear();
        for (first, n) in pending {
            for c in first..first + n {
                if self.adjust(storage, c, -1)? == 0 {
                    self.freed.push(c);
                    self.free_hint = self.free_hint.min(c);
                }
            }
        }
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        self.freed.sort_unstable();
        for &c in &self.freed {
            let off = c << self.cluster_bits;
            match ranges.last_mut() {
                Some((s, l)) if *s + *l == off => *l += self.cs(),
                _ => ranges.push((off, self.cs())),
            }
        }
        Ok(ranges)
    }

    /// Writes the dirty refcount blocks, then (after `sync`) the changed
    /// table entries; when the table moved, the caller must sync and then
    /// point the header at [`Allocator::table_location`] (see
    /// [`Allocator::take_table_moved`]). Returns whether anything was written.
    pub fn write_back(
        &mut self,
        storage: &dyn Storage,
        sync: &mut dyn FnMut() -> Result<()>,
    ) -> Result<bool> {
        let mut wrote = false;
        let mut dirty: Vec<_> = self
            .blocks
            .values_mut()
            .filter(|b| b.dirty)
            .map(|b| {
                b.dirty = false;
                (b.offset, b.data.clone())
            })
            .collect();
        dirty.sort_unstable_by_key(|(o, _)| *o);
        for (off, data) in &dirty {
            storage.write_at(data, *off)?;
            wrote = true;
        }
        if let Some((lo, hi)) = self.table_dirty.take() {
            if wrote {
                sync()?;
            }
            let (lo, hi) = if self.table_moved {
                (0, self.table.len())
            } else {
                (lo, hi)
            };
            let mut buf = Vec::with_capacity((hi - lo) * 8);
            for e in &self.table[lo..hi] {
                buf.extend_from_slice(&e.to_be_bytes());
            }
            storage.write_at(&buf, self.table_offset + lo as u64 * 8)?;
            wrote = true;
        }
        self.trim_cache();
        Ok(wrote)
    }

    /// Whether the table moved since the last call (the header must be
    /// updated once the new table is durable).
    pub fn take_table_moved(&mut self) -> bool {
        std::mem::replace(&mut self.table_moved, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_entries_round_trip_for_every_width() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1u64 << order)) - 1
            };
            let n = (512 * 8) >> order;
            for i in 0..n {
                set_block_entry(&mut block, i, order, (i * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    block_entry(&block, i, order),
                    (i * 7) & max,
                    "order {order} index {i}"
                );
            }
        }
    }
}
