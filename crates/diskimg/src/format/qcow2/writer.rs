//! The qcow2 write path: allocating writes with copy-on-write, writes in
//! place, zero writes, discards, flushes, and the clean close.
//!
//! How a write proceeds. The request takes a lock on its guest clusters
//! ([`RangeLocks`]), so the L2 entries of those clusters change under this
//! request only. Clusters that are allocated, not shared (COPIED flag) and
//! not compressed are written in place without any other lock. Any other
//! cluster goes through three phases:
//! 1. under the metadata lock: make the L2 table exclusive (allocate it, or
//!    copy a table shared with a snapshot), read the entry, allocate a new
//!    host cluster when the data cannot go where it is;
//! 2. without the lock: read what copy-on-write needs (the old cluster, the
//!    backing file, the decompressed cluster) and write the data;
//! 3. under the metadata lock: update the L2 entry in the cache, queue the
//!    old host cluster for freeing.
//!
//! Crash safety, by ordering (see [`Qcow2::flush_locked`]): metadata is
//! written back at flush time (or when the caches fill) in stages separated
//! by syncs: refcount increments and new refcount blocks, then the refcount
//! table and header, then L2 tables, then L1 entries, and only then the
//! decrements of freed clusters. A crash at any point leaves every durable
//! reference pointing at a cluster whose durable refcount covers it; the
//! worst case is leaked clusters. Guest data written before a successful
//! flush is durable after it.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, RwLock};

use super::allocator::Allocator;
use super::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::l2_cache::L2Table;
use super::l2_entry::{self, ClusterType, SubclusterType, OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO};
use super::range_lock::RangeLocks;
use super::Qcow2;
use crate::format::mapped::{read_backing, Mapper};
use crate::{Error, ErrorKind, Result};

/// The most bytes of whole new clusters allocated and written at once.
const MAX_NEW_RUN: usize = 16 << 20;

/// Zero bits of an extended L2 bitmap (all 32 subclusters read as zeros).
const BITMAP_ALL_ZERO: u64 = 0xffff_ffff_0000_0000;

/// What an image opened for writing keeps beside the reader's state.
pub(super) struct WriteState {
    pub(super) meta: Mutex<Meta>,
    pub(super) ranges: RangeLocks,
    /// Host ranges guest data must never be written to: the header
    /// cluster, the L1 table, the refcount table, the snapshot table.
    pub(super) protected: RwLock<Vec<(u64, u64)>>,
    /// Host offsets of the active L2 tables and of the refcount blocks:
    /// guest data must not be written there either (QEMU's default overlap
    /// check covers the same structures).
    pub(super) tables: RwLock<HashSet<u64>>,
}

/// Metadata state changed under the metadata lock.
pub(in crate::format) struct Meta {
    pub(super) alloc: Allocator,
    /// L1 entries `[lo, hi)` changed since the last write-back.
    pub(super) l1_dirty: Option<(usize, usize)>,
    /// Incompatible feature bits as they are on disk.
    pub(super) incompat: u64,
    /// lazy_refcounts is on: the dirty bit is set before the first change.
    pub(super) lazy: bool,
    /// The image was marked corrupt: writes are refused.
    pub(super) corrupt: bool,
    /// Where the L1 table is, and its size in entries.
    pub(super) l1_offset: u64,
    /// The next free byte for compressed data, inside a host cluster that
    /// already holds compressed data (None: start a new cluster).
    pub(super) compressed_next: Option<u64>,
}

/// Where the bytes of one subcluster come from when its cluster is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Data in the old host cluster.
    Old,
    /// Zeros.
    Zero,
    /// The backing file (zeros without one).
    Backing,
    /// The old cluster is compressed.
    Compressed,
    /// Not materialized: stays unallocated.
    Nothing,
}

impl WriteState {
    pub(super) fn new(meta: Meta, protected: Vec<(u64, u64)>, tables: HashSet<u64>) -> Self {
        WriteState {
            meta: Mutex::new(meta),
            ranges: RangeLocks::default(),
            protected: RwLock::new(protected),
            tables: RwLock::new(tables),
        }
    }
}

/// The fixed metadata ranges of `h` that data writes must not touch.
pub(super) fn protected_ranges(
    h: &Header,
    l1_offset: u64,
    l1_size: u64,
    reftable: (u64, u64),
) -> Vec<(u64, u64)> {
    let cs = h.cluster_size();
    let mut v = vec![(0, cs)];
    if l1_size > 0 {
        v.push((l1_offset, (l1_size * 8).div_ceil(cs) * cs));
    }
    v.push((reftable.0, reftable.1 * cs));
    if h.nb_snapshots > 0 {
        v.push((h.snapshots_offset, cs));
    }
    v
}

fn mask_range(first: u64, last: u64) -> u64 {
    // Bits first..=last of a 32-bit subcluster mask.
    let hi = if last >= 31 {
        u64::MAX >> 32
    } else {
        (1u64 << (last + 1)) - 1
    };
    hi & !((1u64 << first) - 1)
}

impl Qcow2 {
    pub(super) fn write_state(&self) -> Result<&WriteState> {
        match &self.writer {
            Some(w) => Ok(w),
            None => Err(self.read_only_error()),
        }
    }

    fn read_only_error(&self) -> Error {
        if let Some(why) = &self.write_refusal {
            return Error::unsupported(why.clone());
        }
        Error::read_only(format!("'{}' is opened read-only", self.name()))
    }

    /// Takes the metadata lock, refusing when the image was marked corrupt.
    pub(super) fn meta<'a>(&self, w: &'a WriteState) -> Result<MutexGuard<'a, Meta>> {
        let m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        if m.corrupt {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!(
                    "'{}' was marked corrupt; writes are refused (check it with 'qemu-img check')",
                    self.name()
                ),
            ));
        }
        Ok(m)
    }

    /// Writes `value` at `offset` in the header.
    fn write_header_field(&self, offset: u64, value: &[u8]) -> Result<()> {
        self.storage.write_at(value, offset)
    }

    /// Sets the dirty bit before the first metadata change of a
    /// lazy_refcounts image.
    pub(super) fn mark_dirty(&self, m: &mut Meta) -> Result<()> {
        if m.lazy && m.incompat & INCOMPAT_DIRTY == 0 {
            let v = m.incompat | INCOMPAT_DIRTY;
            self.write_header_field(72, &v.to_be_bytes())?;
            self.sync()?;
            m.incompat = v;
        }
        Ok(())
    }

    /// Marks the image corrupt (as QEMU does when it catches a write that
    /// would destroy metadata) and returns the error to report.
    fn mark_corrupt(&self, m: &mut Meta, what: String) -> Error {
        m.corrupt = true;
        if self.header.version >= 3 {
            let v = m.incompat | INCOMPAT_CORRUPT;
            if self.write_header_field(72, &v.to_be_bytes()).is_ok() {
                let _ = self.sync();
                m.incompat = v;
            }
        }
        Error::invalid(format!(
            "qcow2: Marking image as corrupt: {what} in '{}'; further writes are refused",
            self.name()
        ))
    }

    /// Refuses guest data writes to metadata.
    fn check_overlap(&self, w: &WriteState, host: u64, len: u64) -> Result<()> {
        let hit = {
            let p = w.protected.read().unwrap_or_else(|e| e.into_inner());
            p.iter()
                .find(|&&(s, l)| host < s.saturating_add(l) && s < host.saturating_add(len))
                .copied()
        };
        let cs = self.header.cluster_size();
        let hit = hit.or_else(|| {
            let t = w.tables.read().unwrap_or_else(|e| e.into_inner());
            let first = host & !(cs - 1);
            let end = host.saturating_add(len);
            (first..end)
                .step_by(cs as usize)
                .find(|c| t.contains(c))
                .map(|c| (c, cs))
        });
        if let Some((s, _)) = hit {
            let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
            return Err(self.mark_corrupt(
                &mut m,
                format!(
                    "Preventing invalid write on metadata (guest data at host offset {host:#x} overlaps the metadata at {s:#x})"
                ),
            ));
        }
        Ok(())
    }

    pub(super) fn write_data(&self, w: &WriteState, buf: &[u8], host: u64) -> Result<()> {
        // Guest data in an external data file cannot hit the metadata.
        if !self.has_data_file {
            self.check_overlap(w, host, buf.len() as u64)?;
        }
        self.data.write_at(buf, host)
    }

    /// The L1 entry at `index` (0 past the table).
    pub(super) fn l1_entry(&self, index: u64) -> u64 {
        let l1 = self.l1.read().unwrap_or_else(|e| e.into_inner());
        usize::try_from(index)
            .ok()
            .and_then(|i| l1.get(i))
            .copied()
            .unwrap_or(0)
    }

    /// Sets L1 entry `index` in memory; it is written back at flush.
    pub(super) fn set_l1(&self, m: &mut Meta, index: usize, value: u64) {
        let mut l1 = self.l1.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = l1.get_mut(index) {
            *e = value;
            m.l1_dirty = Some(match m.l1_dirty {
                Some((lo, hi)) => (lo.min(index), hi.max(index + 1)),
                None => (index, index + 1),
            });
        }
    }

    /// Records metadata clusters for the overlap check: a new active L2
    /// table, one that stopped being active, and new refcount blocks.
    pub(super) fn note_tables(&self, m: &mut Meta, added: Option<u64>, removed: Option<u64>) {
        let Some(w) = &self.writer else { return };
        let mut t = w.tables.write().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = removed {
            t.remove(&r);
        }
        t.extend(added);
        t.extend(m.alloc.take_new_blocks());
    }

    /// Makes the L2 table for L1 index `l1_index` exclusive to the active
    /// L1 table and returns its offset: allocated when missing, copied when
    /// shared with a snapshot.
    pub(super) fn l2_for_write(&self, m: &mut Meta, l1_index: u64) -> Result<u64> {
        let cs = self.header.cluster_size();
        let cb = self.header.cluster_bits;
        let Some(i) = usize::try_from(l1_index)
            .ok()
            .filter(|&i| i < self.l1.read().unwrap_or_else(|e| e.into_inner()).len())
        else {
            return Err(Error::invalid(format!(
                "L1 index {l1_index} is past the L1 table of '{}'",
                self.name()
            )));
        };
        let e = self.l1_entry(l1_index);
        let off = e & OFFSET_MASK;
        let entries = (cs / 8) as usize;
        if off == 0 {
            self.mark_dirty(m)?;
            let (new, _) = m.alloc.allocate(self.storage.as_ref(), 1)?;
            self.cache
                .store_dirty(new, L2Table::from(vec![0u64; entries]));
            self.set_l1(m, i, new | OFLAG_COPIED);
            self.note_tables(m, Some(new), None);
            return Ok(new);
        }
        if off & (cs - 1) != 0 {
            return Err(self.corrupt(format!(
                "L2 table offset {off:#x} unaligned (L1 index: {l1_index:#x})"
            )));
        }
        if off < cs {
            return Err(self.mark_corrupt(
                m,
                format!(
                    "L2 table at offset {off:#x} overlaps the header (L1 index: {l1_index:#x})"
                ),
            ));
        }
        if e & OFLAG_COPIED != 0 {
            return Ok(off);
        }
        self.mark_dirty(m)?;
        if m.alloc.refcount(self.storage.as_ref(), off >> cb)? == 1 {
            self.set_l1(m, i, off | OFLAG_COPIED);
            return Ok(off);
        }
        let table = self.l2_table(off)?;
        let (new, _) = m.alloc.allocate(self.storage.as_ref(), 1)?;
        self.cache.store_dirty(new, table);
        self.set_l1(m, i, new | OFLAG_COPIED);
        m.alloc.queue_free(off >> cb, 1);
        self.note_tables(m, Some(new), Some(off));
        Ok(new)
    }

    pub(super) fn entry_in(&self, table: &[u64], l2_index: usize) -> (u64, u64) {
        if self.header.extended_l2() {
            (
                table.get(l2_index * 2).copied().unwrap_or(0),
                table.get(l2_index * 2 + 1).copied().unwrap_or(0),
            )
        } else {
            (table.get(l2_index).copied().unwrap_or(0), 0)
        }
    }

    /// Sets L2 entry `l2_index` (and its bitmap, with extended L2) of the
    /// exclusive table at `l2off`; call under the metadata lock.
    pub(super) fn set_entry(
        &self,
        l2off: u64,
        l2_index: usize,
        entry: u64,
        bitmap: u64,
    ) -> Result<()> {
        // Hold no reference to a cached table, so it is patched in place.
        let base = if self.cache.contains(l2off) {
            None
        } else {
            Some(self.l2_table(l2off)?)
        };
        let ext = self.header.extended_l2();
        self.cache
            .patch(l2off, base, |t| put_entry(t, l2_index, ext, entry, bitmap));
        Ok(())
    }

    pub(super) fn indices(&self, guest: u64) -> (u64, usize) {
        let cb = self.header.cluster_bits;
        let l2_bits = self.header.l2_bits();
        (
            guest >> (cb + l2_bits),
            ((guest >> cb) & ((1u64 << l2_bits) - 1)) as usize,
        )
    }

    /// Queues the release of whatever host space `entry` holds.
    pub(super) fn free_entry(&self, m: &mut Meta, entry: u64) {
        let cb = self.header.cluster_bits;
        match l2_entry::cluster_type(entry, self.header.extended_l2(), self.has_data_file) {
            ClusterType::Compressed => {
                let d = l2_entry::compressed_descriptor(entry, cb);
                if d.size == 0 {
                    return;
                }
                let first = d.offset >> cb;
                let last = (d.offset + d.size - 1) >> cb;
                m.alloc.queue_free(first, last - first + 1);
            }
            ClusterType::Normal | ClusterType::ZeroAlloc => {
                let host = entry & OFFSET_MASK;
                if host != 0 && !self.has_data_file {
                    m.alloc.queue_free(host >> cb, 1);
                }
            }
            _ => {}
        }
    }

    /// Where a write of `len` bytes at `pos` (within one cluster) can go in
    /// place, if it can: the host offset.
    fn in_place_host(&self, pos: u64, len: u64) -> Result<Option<u64>> {
        let h = &self.header;
        let cs = h.cluster_size();
        let (l1_index, l2_index) = self.indices(pos);
        let l1e = self.l1_entry(l1_index);
        let l2off = l1e & OFFSET_MASK;
        if l2off == 0 || l2off & (cs - 1) != 0 {
            return Ok(None);
        }
        let table = self.l2_table(l2off)?;
        let (entry, bitmap) = self.entry_in(&table, l2_index);
        if entry & OFLAG_COPIED == 0 {
            return Ok(None);
        }
        let ext = h.extended_l2();
        let in_off = pos & (cs - 1);
        match l2_entry::cluster_type(entry, ext, self.has_data_file) {
            ClusterType::Normal => {}
            _ => return Ok(None),
        }
        let host = entry & OFFSET_MASK;
        if host & (cs - 1) != 0 || (host == 0 && !self.has_data_file) {
            return Ok(None);
        }
        if ext {
            let scs = h.subcluster_size();
            let want = mask_range(in_off / scs, (in_off + len - 1) / scs);
            if bitmap & want != want || (bitmap >> 32) & want != 0 {
                return Ok(None);
            }
        }
        Ok(Some(host + in_off))
    }

    /// Writes `buf` at guest offset `offset` (within the disk).
    pub(super) fn write(&self, buf: &[u8], offset: u64) -> Result<()> {
        let w = self.write_state()?;
        self.refuse_if_corrupt(w)?;
        if buf.is_empty() {
            return Ok(());
        }
        let cs = self.header.cluster_size();
        let end = offset + buf.len() as u64;
        let _g = w.ranges.lock(offset & !(cs - 1), end.div_ceil(cs) * cs);
        let mut pos = offset;
        // A run of in-place clusters contiguous on the host: (host, start
        // in buf, len); a run of whole clusters to allocate: (start in buf,
        // len).
        let mut run: Option<(u64, usize, usize)> = None;
        let mut fresh: Option<(usize, usize)> = None;
        while pos < end {
            let n = ((pos | (cs - 1)) + 1).min(end) - pos;
            let at = (pos - offset) as usize;
            let place = self.in_place_host(pos, n)?;
            if place.is_some() || n < cs || fresh.is_some_and(|(_, l)| l >= MAX_NEW_RUN) {
                if let Some((s, l)) = fresh.take() {
                    self.write_new_clusters(w, offset + s as u64, &buf[s..s + l])?;
                }
            }
            if place.is_none() {
                if let Some((h, s, l)) = run.take() {
                    self.write_data(w, &buf[s..s + l], h)?;
                }
            }
            match place {
                Some(host) => match &mut run {
                    Some((h, s, l)) if *h + *l as u64 == host && *s + *l == at => *l += n as usize,
                    _ => {
                        if let Some((h, s, l)) = run.take() {
                            self.write_data(w, &buf[s..s + l], h)?;
                        }
                        run = Some((host, at, n as usize));
                    }
                },
                None if n == cs => match &mut fresh {
                    Some((_, l)) => *l += n as usize,
                    None => fresh = Some((at, n as usize)),
                },
                None => self.write_cluster(w, pos, &buf[at..at + n as usize])?,
            }
            pos += n;
        }
        if let Some((h, s, l)) = run.take() {
            self.write_data(w, &buf[s..s + l], h)?;
        }
        if let Some((s, l)) = fresh.take() {
            self.write_new_clusters(w, offset + s as u64, &buf[s..s + l])?;
        }
        self.flush_if_needed(w)
    }

    /// Writes whole clusters that cannot be written in place into newly
    /// allocated, contiguous host clusters: one allocation, one write, then
    /// the entries; the old clusters are freed.
    fn write_new_clusters(&self, w: &WriteState, pos: u64, data: &[u8]) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let cb = h.cluster_bits;
        let ext = h.extended_l2();
        let k = data.len() as u64 / cs;
        let mut m = self.meta(w)?;
        self.mark_dirty(&mut m)?;
        let mut slots: Vec<(u64, usize, u64)> = Vec::with_capacity(k as usize);
        let mut current: Option<(u64, u64)> = None;
        for i in 0..k {
            let g = pos + i * cs;
            let (l1_index, l2_index) = self.indices(g);
            let l2off = match current {
                Some((l1, off)) if l1 == l1_index => off,
                _ => {
                    let off = self.l2_for_write(&mut m, l1_index)?;
                    current = Some((l1_index, off));
                    off
                }
            };
            let table = self.l2_table(l2off)?;
            let (entry, _) = self.entry_in(&table, l2_index);
            let ct = l2_entry::cluster_type(entry, ext, self.has_data_file);
            let host = entry & OFFSET_MASK;
            if matches!(ct, ClusterType::Normal | ClusterType::ZeroAlloc) && host & (cs - 1) != 0 {
                return Err(self.mark_corrupt(
                    &mut m,
                    format!(
                        "Cluster allocation offset {host:#x} unaligned (L2 offset: {l2off:#x}, L2 index: {l2_index:#x}, guest offset {g:#x})"
                    ),
                ));
            }
            slots.push((l2off, l2_index, entry));
        }
        let (host, fresh) = if self.has_data_file {
            (pos, false)
        } else {
            m.alloc.allocate(self.storage.as_ref(), k)?
        };
        drop(m);
        // Clusters past the old end of the file are reserved (fallocate)
        // before the data goes in, so that ext4 maps the page-cache pages
        // to blocks that exist instead of making a delayed allocation per
        // page. Measured on chain flatten and raw-to-qcow2 converts (9
        // interleaved runs each): fast runs 0.18-0.22 s against 0.23-0.26 s
        // (workload f) and 0.27-0.35 s against 0.35-0.44 s (workload g).
        // Where the file system cannot reserve, nothing is done (no zeros
        // are written ahead of the data).
        let reserved = if fresh {
            self.data.reserve(host, k * cs).map(drop)
        } else {
            Ok(())
        };
        let io = reserved.and_then(|()| self.write_data(w, data, host));
        let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = io {
            if !self.has_data_file {
                m.alloc.queue_free(host >> cb, k);
            }
            return Err(e);
        }
        let bitmap = if ext {
            l2_entry::L2_BITMAP_ALL_ALLOC
        } else {
            0
        };
        for (i, (l2off, l2_index, old)) in slots.into_iter().enumerate() {
            self.set_entry(
                l2off,
                l2_index,
                (host + i as u64 * cs) | OFLAG_COPIED,
                bitmap,
            )?;
            self.free_entry(&mut m, old);
        }
        Ok(())
    }

    fn refuse_if_corrupt(&self, w: &WriteState) -> Result<()> {
        drop(self.meta(w)?);
        Ok(())
    }

    /// The slow path of a write within one cluster: copy-on-write,
    /// allocation, subcluster bookkeeping.
    fn write_cluster(&self, w: &WriteState, pos: u64, data: &[u8]) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let cb = h.cluster_bits;
        let ext = h.extended_l2();
        let nsc: u64 = if ext { 32 } else { 1 };
        let scs = cs / nsc;
        let gcluster = pos & !(cs - 1);
        let in_off = pos - gcluster;
        let end_in = in_off + data.len() as u64;
        let first_sc = in_off / scs;
        let last_sc = (end_in - 1) / scs;
        let touched = mask_range(first_sc, last_sc);
        let (l1_index, l2_index) = self.indices(gcluster);

        // Phase 1: decide, under the metadata lock.
        let mut m = self.meta(w)?;
        self.mark_dirty(&mut m)?;
        let l2off = self.l2_for_write(&mut m, l1_index)?;
        let table = self.l2_table(l2off)?;
        let (entry, bitmap) = self.entry_in(&table, l2_index);
        // No reference may outlive the read, or the update would copy the table.
        drop(table);
        let ct = l2_entry::cluster_type(entry, ext, self.has_data_file);
        let old_host = entry & OFFSET_MASK;
        let fail = |what: &str| {
            self.corrupt(format!(
                "{what} (L2 offset: {l2off:#x}, L2 index: {l2_index:#x}, guest offset {gcluster:#x})"
            ))
        };
        if matches!(ct, ClusterType::Normal | ClusterType::ZeroAlloc) && old_host & (cs - 1) != 0 {
            return Err(self.mark_corrupt(
                &mut m,
                format!(
                    "Cluster allocation offset {old_host:#x} unaligned (L2 offset: {l2off:#x}, L2 index: {l2_index:#x}, guest offset {gcluster:#x})"
                ),
            ));
        }
        if matches!(ct, ClusterType::ZeroAlloc | ClusterType::ZeroPlain) && h.version < 3 {
            return Err(fail("Zero cluster entry found in pre-v3 image"));
        }
        let mut sources = [Source::Nothing; 32];
        for sc in 0..nsc {
            let ty = l2_entry::subcluster_type(entry, bitmap, sc as u32, ext, self.has_data_file);
            sources[sc as usize] = match ty {
                SubclusterType::Normal => Source::Old,
                SubclusterType::ZeroPlain | SubclusterType::ZeroAlloc => Source::Zero,
                SubclusterType::UnallocatedPlain | SubclusterType::UnallocatedAlloc => {
                    Source::Backing
                }
                SubclusterType::Compressed => Source::Compressed,
                SubclusterType::Invalid => return Err(fail("Invalid cluster entry found")),
            };
        }
        let reuse = entry & OFLAG_COPIED != 0
            && matches!(ct, ClusterType::Normal | ClusterType::ZeroAlloc)
            && (old_host != 0 || self.has_data_file);
        let (host, fresh) = if reuse {
            (old_host, false)
        } else {
            if self.has_data_file {
                // Data clusters in an external data file sit at their guest
                // offset and are not refcounted (as QEMU lays them out).
                (gcluster, false)
            } else {
                m.alloc.allocate(self.storage.as_ref(), 1)?
            }
        };
        drop(m);

        // Phase 2: the data, without the lock.
        let io = self.write_cluster_data(
            w, gcluster, in_off, data, host, reuse, fresh, &sources, entry, old_host, touched,
        );

        // Phase 3: publish.
        let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        let materialized = match io {
            Ok(mask) => mask,
            Err(e) => {
                if !reuse && !self.has_data_file {
                    m.alloc.queue_free(host >> cb, 1);
                }
                return Err(e);
            }
        };
        let (new_entry, new_bitmap) = if ext {
            let old_alloc = if reuse { bitmap & 0xffff_ffff } else { 0 };
            let alloc = old_alloc | materialized;
            let zero = if ct == ClusterType::Compressed {
                0
            } else {
                (bitmap >> 32) & !alloc & 0xffff_ffff
            };
            (host | OFLAG_COPIED, alloc | (zero << 32))
        } else {
            (host | OFLAG_COPIED, 0)
        };
        if new_entry != entry || (ext && new_bitmap != bitmap) {
            self.set_entry(l2off, l2_index, new_entry, new_bitmap)?;
        }
        if !reuse {
            self.free_entry(&mut m, entry);
        }
        Ok(())
    }

    /// Phase 2 of [`Qcow2::write_cluster`]: writes the data and whatever
    /// copy-on-write needs; returns the subclusters now holding data.
    #[allow(clippy::too_many_arguments)]
    fn write_cluster_data(
        &self,
        w: &WriteState,
        gcluster: u64,
        in_off: u64,
        data: &[u8],
        host: u64,
        reuse: bool,
        fresh: bool,
        sources: &[Source; 32],
        entry: u64,
        old_host: u64,
        touched: u64,
    ) -> Result<u64> {
        let h = &self.header;
        let cs = h.cluster_size();
        let ext = h.extended_l2();
        let nsc: u64 = if ext { 32 } else { 1 };
        let scs = cs / nsc;
        let end_in = in_off + data.len() as u64;
        let first_sc = in_off / scs;
        let last_sc = (end_in - 1) / scs;
        let backing = self.backing.as_ref();
        let fill = |buf: &mut [u8], src: Source, at: u64| -> Result<()> {
            match src {
                Source::Zero | Source::Nothing => {
                    buf.fill(0);
                    Ok(())
                }
                Source::Backing => read_backing(backing, buf, gcluster + at),
                Source::Old => self.data.read_at(buf, old_host + at),
                Source::Compressed => self.read_compressed(gcluster, entry, at, buf),
            }
        };
        if reuse {
            // In place: the data, plus the untouched parts of partly
            // written subclusters that held no data.
            self.write_data(w, data, host + in_off)?;
            let head = first_sc * scs;
            if head < in_off && sources[first_sc as usize] != Source::Old {
                let mut b = vec![0u8; (in_off - head) as usize];
                fill(&mut b, sources[first_sc as usize], head)?;
                self.write_data(w, &b, host + head)?;
            }
            let tail = (last_sc + 1) * scs;
            if end_in < tail && sources[last_sc as usize] != Source::Old {
                let mut b = vec![0u8; (tail - end_in) as usize];
                fill(&mut b, sources[last_sc as usize], end_in)?;
                self.write_data(w, &b, host + end_in)?;
            }
            return Ok(touched);
        }
        // A new cluster: materialize the touched subclusters and, when the
        // old cluster held data (shared or compressed), all of its data.
        let mut mat = touched;
        for sc in 0..nsc {
            if matches!(sources[sc as usize], Source::Old | Source::Compressed) {
                mat |= 1 << sc;
            }
        }
        if !ext {
            mat = 1;
        }
        let s0 = u64::from(mat.trailing_zeros());
        let s1 = 63 - u64::from(mat.leading_zeros());
        let span_start = s0 * scs;
        let span_end = ((s1 + 1) * scs).min(cs);
        let needs_fill = (s0..=s1).any(|sc| {
            let (a, b) = (sc * scs, (sc + 1) * scs);
            let covered = in_off <= a && b <= end_in;
            let src = sources[sc as usize];
            let material = mat & (1 << sc) != 0;
            !covered
                && material
                && !(fresh
                    && (src == Source::Zero || (src == Source::Backing && backing.is_none())))
        });
        if !needs_fill {
            // Fresh space reads as zeros: only the data needs writing.
            // A partial write first reserves the whole cluster (fallocate,
            // as QEMU writes zeroes over a new cluster), so that the data
            // write does not grow the file: ext4 runs a growing O_DIRECT
            // write under the exclusive inode lock for its whole I/O, which
            // made `bench -t none -d 64` run one write at a time.
            if fresh && (data.len() as u64) < cs {
                self.data.allocate(host, cs)?;
            }
            self.write_data(w, data, host + in_off)?;
            return Ok(mat);
        }
        let mut buf = vec![0u8; (span_end - span_start) as usize];
        for sc in s0..=s1 {
            let (a, b) = (sc * scs, (sc + 1) * scs);
            if in_off <= a && b <= end_in || mat & (1 << sc) == 0 {
                continue;
            }
            let part = &mut buf[(a - span_start) as usize..(b - span_start) as usize];
            fill(part, sources[sc as usize], a)?;
        }
        buf[(in_off - span_start) as usize..(end_in - span_start) as usize].copy_from_slice(data);
        self.write_data(w, &buf, host + span_start)?;
        Ok(mat)
    }

    /// Flushes when the write-back caches hold too much.
    pub(super) fn flush_if_needed(&self, w: &WriteState) -> Result<()> {
        let l2_pressure = self.cache.dirty_count() * 2 > self.cache.capacity();
        let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        if l2_pressure || m.alloc.wants_flush() {
            self.flush_locked(&mut m)?;
        }
        Ok(())
    }

    /// Makes what was written durable (skipped with cache=unsafe).
    pub(super) fn sync(&self) -> Result<()> {
        if self.ignore_flush {
            return Ok(());
        }
        self.storage.flush()?;
        if self.has_data_file {
            self.data.flush()?;
        }
        Ok(())
    }

    /// Writes back every piece of dirty metadata in the crash-safe order
    /// and makes it durable (see the module documentation).
    pub(super) fn flush_locked(&self, m: &mut Meta) -> Result<()> {
        let st = self.storage.as_ref();
        let mut sync = || self.sync();
        self.note_tables(m, None, None);
        // 1. Refcount blocks, then table entries (a sync between, inside).
        m.alloc.write_back(st, &mut sync)?;
        if m.alloc.take_table_moved() {
            self.sync()?;
            let (off, clusters) = m.alloc.table_location();
            let mut f = [0u8; 12];
            f[..8].copy_from_slice(&off.to_be_bytes());
            f[8..].copy_from_slice(&(clusters as u32).to_be_bytes());
            self.write_header_field(48, &f)?;
            self.update_protected(m);
        }
        // 2. L2 tables, once what they point to is durable.
        let dirty = self.cache.take_dirty();
        if !dirty.is_empty() {
            self.sync()?;
            let mut bytes = Vec::with_capacity(self.header.cluster_size() as usize);
            for (off, table) in dirty {
                bytes.clear();
                for e in table.iter() {
                    bytes.extend_from_slice(&e.to_be_bytes());
                }
                st.write_at(&bytes, off)?;
            }
        }
        // 3. L1 entries, once the tables they name are durable.
        if let Some((lo, hi)) = m.l1_dirty.take() {
            self.sync()?;
            let l1 = self.l1.read().unwrap_or_else(|e| e.into_inner());
            let mut bytes = Vec::with_capacity((hi - lo) * 8);
            for e in l1.get(lo..hi).unwrap_or(&[]) {
                bytes.extend_from_slice(&e.to_be_bytes());
            }
            drop(l1);
            st.write_at(&bytes, m.l1_offset + lo as u64 * 8)?;
        }
        // 4. Frees, once no durable table references the clusters.
        if m.alloc.has_pending_frees() {
            self.sync()?;
            let freed = m.alloc.apply_frees(st)?;
            // The cluster compressed data was being packed into may be free now.
            m.compressed_next = None;
            let mut sync = || self.sync();
            m.alloc.write_back(st, &mut sync)?;
            for (off, len) in freed {
                // Reclaim the space; the clusters are free either way.
                let _ = st.punch_hole(off, len);
            }
        }
        self.sync()
    }

    pub(super) fn update_protected(&self, m: &Meta) {
        if let Some(w) = &self.writer {
            let l1_len = self.l1.read().unwrap_or_else(|e| e.into_inner()).len() as u64;
            let v = protected_ranges(&self.header, m.l1_offset, l1_len, m.alloc.table_location());
            *w.protected.write().unwrap_or_else(|e| e.into_inner()) = v;
        }
    }

    /// Flush for [`crate::BlockDevice::flush`].
    pub(super) fn flush_all(&self) -> Result<()> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_locked(&mut m)
    }

    /// The clean close: everything written back, the dirty bit cleared.
    pub(super) fn close_writer(&self) -> Result<()> {
        let Some(w) = &self.writer else {
            return Ok(());
        };
        let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        if m.corrupt {
            return Ok(());
        }
        self.flush_locked(&mut m)?;
        if m.incompat & INCOMPAT_DIRTY != 0 {
            let v = m.incompat & !INCOMPAT_DIRTY;
            self.write_header_field(72, &v.to_be_bytes())?;
            self.sync()?;
            m.incompat = v;
        }
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeros.
    pub(super) fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        let w = self.write_state()?;
        self.refuse_if_corrupt(w)?;
        if len == 0 {
            return Ok(());
        }
        let h = &self.header;
        let cs = h.cluster_size();
        let end = offset + len;
        if h.version < 3 {
            // No zero flag: unallocate where nothing lies beneath, else
            // write zeros.
            if unmap && self.backing.is_none() {
                let (a, b) = self.whole_units(offset, end, cs);
                if a < b {
                    self.write_zero_bytes(offset, a.min(end) - offset)?;
                    self.set_clusters(w, a, b, Update::Unallocate)?;
                    return self.write_zero_bytes(b.min(end), end - b.min(end));
                }
            }
            return self.write_zero_bytes(offset, len);
        }
        let unit = if h.extended_l2() {
            h.subcluster_size()
        } else {
            cs
        };
        let (a, b) = self.whole_units(offset, end, unit);
        if a >= b {
            return self.write_zero_bytes(offset, len);
        }
        self.write_zero_bytes(offset, a - offset)?;
        // Whole clusters by their entries; partial clusters (extended L2:
        // whole subclusters) by their bitmaps.
        let mut pos = a;
        while pos < b {
            let cend = ((pos | (cs - 1)) + 1).min(b);
            if pos & (cs - 1) == 0 && cend - pos == cs {
                // A run of whole clusters.
                let mut run_end = cend;
                while run_end + cs <= b {
                    run_end += cs;
                }
                self.set_clusters(w, pos, run_end, Update::Zero { unmap })?;
                self.zero_data_file(pos, run_end)?;
                pos = run_end;
            } else {
                self.zero_subclusters(w, pos, cend)?;
                self.zero_data_file(pos, cend)?;
                pos = cend;
            }
        }
        self.write_zero_bytes(b.min(end), end - b.min(end))
    }

    /// The whole `unit`s within `[offset, end)`; a range reaching the end of
    /// the disk counts its partial last unit.
    fn whole_units(&self, offset: u64, end: u64, unit: u64) -> (u64, u64) {
        let a = offset.div_ceil(unit) * unit;
        let b = if end == self.disk_size() {
            end.div_ceil(unit) * unit
        } else {
            end & !(unit - 1)
        };
        (a, b)
    }

    /// With an external data file, makes `[a, b)` of it read as zeros too,
    /// so that a raw data file (data_file_raw) stays the guest's image.
    fn zero_data_file(&self, a: u64, b: u64) -> Result<()> {
        if !self.has_data_file {
            return Ok(());
        }
        let end = b.min(self.data.len()?);
        if a < end {
            self.data.punch_hole(a, end - a)?;
        }
        Ok(())
    }

    /// Writes real zeros, in bounded requests.
    fn write_zero_bytes(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let chunk = len.min(1 << 20) as usize;
        let zeros = vec![0u8; chunk];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(chunk as u64) as usize;
            self.write(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Sets the zero bits of whole subclusters `[a, b)` within one cluster
    /// (extended L2), falling back to writing zeros where the cluster is
    /// shared or compressed.
    fn zero_subclusters(&self, w: &WriteState, a: u64, b: u64) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let scs = h.subcluster_size();
        let gcluster = a & !(cs - 1);
        let (l1_index, l2_index) = self.indices(gcluster);
        let _g = w.ranges.lock(gcluster, gcluster + cs);
        let mut m = self.meta(w)?;
        let l2off = self.l2_for_write(&mut m, l1_index)?;
        let table = self.l2_table(l2off)?;
        let (entry, bitmap) = self.entry_in(&table, l2_index);
        let ct = l2_entry::cluster_type(entry, true, self.has_data_file);
        let shared = ct == ClusterType::Compressed
            || (ct == ClusterType::Normal && entry & OFLAG_COPIED == 0);
        if shared || !h.extended_l2() {
            drop(m);
            drop(_g);
            return self.write_zero_bytes(a, b - a);
        }
        self.mark_dirty(&mut m)?;
        let mask = mask_range((a - gcluster) / scs, (b - gcluster - 1) / scs);
        let new_bitmap = (bitmap & !mask) | (mask << 32);
        self.cache.patch(l2off, Some(table), |t| {
            if let Some(bm) = t.get_mut(l2_index * 2 + 1) {
                *bm = new_bitmap;
            }
        });
        Ok(())
    }

    /// Discards whole clusters of `[offset, offset + len)`, as QEMU: the
    /// clusters are freed and read as zeros (v3) or from the backing file.
    pub(super) fn discard_range(&self, offset: u64, len: u64) -> Result<()> {
        let w = self.write_state()?;
        self.refuse_if_corrupt(w)?;
        let cs = self.header.cluster_size();
        let end = offset + len;
        let (a, b) = self.whole_units(offset, end, cs);
        if a >= b {
            return Ok(());
        }
        self.set_clusters(w, a, b, Update::Discard)?;
        self.zero_data_file(a, b)
    }

    /// Drops the entries of the whole clusters `[a, b)`, freeing their space.
    pub(super) fn unallocate(&self, w: &WriteState, a: u64, b: u64) -> Result<()> {
        self.set_clusters(w, a, b, Update::Unallocate)
    }

    /// Rewrites the entries of the whole clusters `[a, b)`.
    fn set_clusters(&self, w: &WriteState, a: u64, b: u64, up: Update) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let cb = h.cluster_bits;
        let ext = h.extended_l2();
        let span = 1u64 << (cb + h.l2_bits());
        let v3 = h.version >= 3;
        let has_backing = self.backing.is_some();
        let _g = w.ranges.lock(a, b);
        let mut pos = a;
        while pos < b {
            let tend = ((pos / span) + 1).saturating_mul(span).min(b);
            let (l1_index, first) = self.indices(pos);
            let count = ((tend - pos).div_ceil(cs)) as usize;
            let mut m = self.meta(w)?;
            let l1e = self.l1_entry(l1_index);
            if l1e & OFFSET_MASK == 0 {
                // Nothing allocated here: only zeroing over a backing file
                // needs entries.
                let needed = matches!(up, Update::Zero { .. }) && has_backing;
                if !needed {
                    pos = tend;
                    continue;
                }
            }
            let l2off = self.l2_for_write(&mut m, l1_index)?;
            let table = self.l2_table(l2off)?;
            let mut changes: Vec<(usize, u64, u64)> = Vec::new();
            for i in first..first + count {
                let (entry, bitmap) = self.entry_in(&table, i);
                let ct = l2_entry::cluster_type(entry, ext, self.has_data_file);
                let allocated = matches!(
                    ct,
                    ClusterType::Normal | ClusterType::ZeroAlloc | ClusterType::Compressed
                );
                let exclusive = entry & OFLAG_COPIED != 0
                    && matches!(ct, ClusterType::Normal | ClusterType::ZeroAlloc);
                let zero_entry = if ext {
                    (0, BITMAP_ALL_ZERO)
                } else {
                    (OFLAG_ZERO, 0)
                };
                let (ne, nb, free) = match up {
                    Update::Zero { unmap } => {
                        if exclusive && !unmap && !self.has_data_file {
                            let host = entry & OFFSET_MASK;
                            if ext {
                                (host | OFLAG_COPIED, BITMAP_ALL_ZERO, false)
                            } else {
                                (host | OFLAG_COPIED | OFLAG_ZERO, 0, false)
                            }
                        } else {
                            (zero_entry.0, zero_entry.1, allocated)
                        }
                    }
                    Update::Discard => {
                        if has_backing || allocated {
                            if v3 {
                                (zero_entry.0, zero_entry.1, allocated)
                            } else {
                                (0, 0, allocated)
                            }
                        } else {
                            (entry, bitmap, false)
                        }
                    }
                    Update::Unallocate => (0, 0, allocated),
                };
                if ne != entry || nb != bitmap {
                    changes.push((i, ne, nb));
                    if free {
                        self.free_entry(&mut m, entry);
                    }
                }
            }
            if !changes.is_empty() {
                self.mark_dirty(&mut m)?;
                self.cache.patch(l2off, Some(table), |t| {
                    for &(i, e, bm) in &changes {
                        put_entry(t, i, ext, e, bm);
                    }
                });
            }
            let pressure =
                self.cache.dirty_count() * 2 > self.cache.capacity() || m.alloc.wants_flush();
            if pressure {
                self.flush_locked(&mut m)?;
            }
            pos = tend;
        }
        Ok(())
    }
}

/// Stores an entry (and bitmap, with extended L2) at `i` of a table.
fn put_entry(t: &mut [u64], i: usize, ext: bool, entry: u64, bitmap: u64) {
    if ext {
        if let Some(x) = t.get_mut(i * 2) {
            *x = entry;
        }
        if let Some(x) = t.get_mut(i * 2 + 1) {
            *x = bitmap;
        }
    } else if let Some(x) = t.get_mut(i) {
        *x = entry;
    }
}

/// What [`Qcow2::set_clusters`] does to each whole cluster.
#[derive(Debug, Clone, Copy)]
enum Update {
    /// Read as zeros; keep the allocation unless `unmap`.
    Zero { unmap: bool },
    /// QEMU's discard.
    Discard,
    /// Drop the entry (v2 zeroing without a backing file).
    Unallocate,
}
