//! Resizing a qcow2 image (`qemu-img resize`, qemu-io's `truncate`).
//!
//! Growing: the L1 table grows first (moved to a new place when it must:
//! the new table is written and made durable before the header names it,
//! and the old one is freed afterwards), then the size field changes; the
//! new space reads as zeros, also where the old last cluster held bytes
//! past the old end. With a preallocation mode the new clusters are
//! allocated (and their space reserved or zeroed) before the size changes.
//! Shrinking: the clusters past the new end are freed first, then the size
//! field changes.

use super::header::MAX_L1_SIZE;
use super::l2_entry::{self, ClusterType, OFFSET_MASK, OFLAG_COPIED};
use super::Qcow2;
use crate::format::create::Preallocation;
use crate::{Error, Result};

impl Qcow2 {
    /// Changes the guest size to `size` bytes.
    pub(super) fn resize(&self, size: u64, prealloc: Preallocation) -> Result<()> {
        let w = self.write_state()?;
        if !size.is_multiple_of(512) {
            return Err(Error::invalid_argument(
                "The new size must be a multiple of 512",
            ));
        }
        if self.bitmaps.as_ref().is_some_and(|b| !b.is_empty()) {
            return Err(Error::unsupported(format!(
                "Cannot resize '{}': it has persistent bitmaps, which diskimg does not update",
                self.name()
            )));
        }
        let h = &self.header;
        let cs = h.cluster_size();
        let span = 1u64 << (h.cluster_bits + h.l2_bits());
        let old = self.disk_size();
        if size < old {
            // Free what lies past the new end, then shrink.
            let a = size.div_ceil(cs) * cs;
            let b = old.div_ceil(cs) * cs;
            if a < b {
                self.unallocate(w, a, b)?;
            }
            let mut m = self.meta(w)?;
            // L2 tables wholly past the end go too.
            let first_free = size.div_ceil(span);
            let len = self.l1.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
            for i in first_free..len {
                let e = self.l1_entry(i);
                let off = e & OFFSET_MASK;
                if off != 0 {
                    self.set_l1(&mut m, i as usize, 0);
                    self.cache.remove(off);
                    m.alloc.queue_free(off >> h.cluster_bits, 1);
                    self.note_tables(&mut m, None, Some(off));
                }
            }
            self.flush_locked(&mut m)?;
            self.write_size(size)?;
            if self.has_data_file {
                self.data.set_len(size)?;
            }
            return Ok(());
        }
        if size == old {
            return Ok(());
        }
        let needed = size.div_ceil(span);
        if needed * 8 > MAX_L1_SIZE {
            return Err(Error::invalid_argument(format!(
                "Could not resize '{}': the L1 table would exceed {} MiB",
                self.name(),
                MAX_L1_SIZE >> 20
            )));
        }
        {
            let mut m = self.meta(w)?;
            let cur = self.l1.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
            if needed > cur {
                self.grow_l1(&mut m, needed)?;
            }
        }
        if self.has_data_file && self.data.len()? < size {
            // The data file grows with the image (QEMU resizes both).
            self.data.set_len(size)?;
        }
        // Bytes of the old last cluster past the old end must read as zeros.
        let tail_end = old.div_ceil(cs) * cs;
        self.size.store(size, std::sync::atomic::Ordering::Release);
        if old < tail_end.min(size) {
            self.zero_range(old, tail_end.min(size) - old, false)?;
        }
        // A backing file that reaches into the new space must not show
        // through it: that space reads as zeros (as QEMU's generic resize).
        if let Some(b) = &self.backing {
            let reach = b.size().min(size);
            let from = tail_end.min(size);
            if reach > from {
                self.zero_range(from, reach - from, false)?;
            }
        }
        if prealloc != Preallocation::Off {
            self.preallocate_clusters(w, tail_end.min(size), size, prealloc)?;
        }
        {
            let mut m = self.meta(w)?;
            self.flush_locked(&mut m)?;
        }
        self.write_size(size)
    }

    fn write_size(&self, size: u64) -> Result<()> {
        self.storage.write_at(&size.to_be_bytes(), 24)?;
        self.sync()?;
        self.size.store(size, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Moves the L1 table to a new place with `entries` entries.
    fn grow_l1(&self, m: &mut super::writer::Meta, entries: u64) -> Result<()> {
        let cs = self.header.cluster_size();
        let cb = self.header.cluster_bits;
        // Everything pending first, so the table copied is the durable one.
        self.flush_locked(m)?;
        let clusters = (entries * 8).div_ceil(cs);
        let (new_off, _) = m.alloc.allocate(self.storage.as_ref(), clusters)?;
        // The new table's refcounts are durable before anything names it.
        self.flush_locked(m)?;
        let mut table = self.l1.read().unwrap_or_else(|e| e.into_inner()).clone();
        table.resize(entries as usize, 0);
        let mut bytes = Vec::with_capacity((clusters * cs) as usize);
        for e in &table {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        bytes.resize((clusters * cs) as usize, 0);
        self.storage.write_at(&bytes, new_off)?;
        self.sync()?;
        let mut f = [0u8; 12];
        f[..4].copy_from_slice(&(entries as u32).to_be_bytes());
        f[4..].copy_from_slice(&new_off.to_be_bytes());
        self.storage.write_at(&f, 36)?;
        self.sync()?;
        let old_off = m.l1_offset;
        let old_clusters =
            (self.l1.read().unwrap_or_else(|e| e.into_inner()).len() as u64 * 8).div_ceil(cs);
        *self.l1.write().unwrap_or_else(|e| e.into_inner()) = table;
        m.l1_offset = new_off;
        m.l1_dirty = None;
        if old_off != 0 && old_clusters > 0 {
            m.alloc.queue_free(old_off >> cb, old_clusters);
        }
        self.update_protected(m);
        self.flush_locked(m)
    }

    /// Allocates the unallocated clusters of `[a, b)` as data clusters
    /// reading as zeros, reserving (falloc) or writing (full) their space.
    fn preallocate_clusters(
        &self,
        w: &super::writer::WriteState,
        a: u64,
        b: u64,
        mode: Preallocation,
    ) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let ext = h.extended_l2();
        let mut pos = a;
        let mut host_end = 0u64;
        while pos < b {
            let (l1_index, l2_index) = self.indices(pos);
            let mut m = self.meta(w)?;
            let l2off = self.l2_for_write(&mut m, l1_index)?;
            let table = self.l2_table(l2off)?;
            let (entry, _) = self.entry_in(&table, l2_index);
            let ct = l2_entry::cluster_type(entry, ext, self.has_data_file);
            if matches!(ct, ClusterType::Unallocated | ClusterType::ZeroPlain) {
                let (host, fresh) = if self.has_data_file {
                    (pos, false)
                } else {
                    m.alloc.allocate(self.storage.as_ref(), 1)?
                };
                host_end = host_end.max(host + cs);
                drop(m);
                match mode {
                    Preallocation::Full => self.write_zeros_at(host, cs)?,
                    Preallocation::Falloc => {
                        self.data.allocate(host, cs)?;
                        if !fresh {
                            self.write_zeros_at(host, cs)?;
                        }
                    }
                    _ => {
                        if !fresh {
                            self.write_zeros_at(host, cs)?;
                        }
                    }
                }
                let m = self.meta(w)?;
                let bitmap = if ext {
                    l2_entry::L2_BITMAP_ALL_ALLOC
                } else {
                    0
                };
                self.set_entry(l2off, l2_index, host | OFLAG_COPIED, bitmap)?;
                drop(m);
            }
            pos += cs;
        }
        // The file covers every cluster the tables now name (QEMU's check
        // counts clusters past the end of the file as errors).
        if !self.has_data_file && self.storage.len()? < host_end {
            self.storage.set_len(host_end)?;
        }
        Ok(())
    }

    fn write_zeros_at(&self, host: u64, len: u64) -> Result<()> {
        crate::format::create::write_zeros(self.data.as_ref(), host, len)
    }
}
