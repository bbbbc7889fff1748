//! `qemu-img check` for qcow2: rebuilds the reference counts from the
//! metadata (header, L1/L2 tables, snapshots, refcount structures, bitmaps,
//! encryption header) and compares them with the refcounts on disk.
//!
//! The counts and the diagnostics follow QEMU's check (block/qcow2-refcount.c)
//! so that `diskimg check` and `qemu-img check` report the same numbers and
//! exit codes: a leak is a cluster whose refcount is higher than the number of
//! references to it, a corruption one whose refcount is lower, or a metadata
//! entry that breaks the spec's rules.
//!
//! Memory is bounded by the metadata actually referenced, not by the file
//! size: the in-memory reference counts are kept in chunks allocated on first
//! use, and the comparison visits only clusters that are referenced or
//! covered by an allocated refcount block.

use std::collections::BTreeMap;

use super::extensions::{BitmapsExt, CryptoExt};
use super::header::Header;
use super::l2_entry::{
    cluster_type, compressed_descriptor, ClusterType, L2_BITMAP_ALL_ALLOC, OFFSET_MASK,
    OFLAG_COPIED, OFLAG_ZERO,
};
use super::refcount::{block_entry, REFT_OFFSET_MASK};
use super::snapshot::Snapshot;
use crate::format::CheckReport;
use crate::io::Storage;
use crate::Result;

/// Reserved bits of an L1 entry.
const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Reserved bits of a standard (non-compressed) L2 entry.
const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Reserved bits of a refcount table entry.
const REFT_RESERVED_MASK: u64 = 0x1ff;
/// Largest L1 table, in entries (QEMU's QCOW_MAX_L1_SIZE / 8).
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;
/// Reserved bits of a bitmap table entry.
const BME_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
/// Table entries (L1, bitmap table) read at once.
const L1_CHUNK: u64 = 1 << 16;

/// Everything the check needs to know about an open image.
pub struct CheckSubject<'a> {
    /// The qcow2 file (metadata).
    pub storage: &'a dyn Storage,
    /// The validated header.
    pub header: &'a Header,
    /// The snapshot table entries.
    pub snapshots: &'a [Snapshot],
    /// The encryption header area, if any.
    pub crypto: Option<CryptoExt>,
    /// The bitmaps extension, if present and consistent.
    pub bitmaps: Option<BitmapsExt>,
    /// (offset, entries) of every bitmap table in the bitmap directory.
    pub bitmap_tables: Vec<(u64, u64)>,
    /// Guest data lives in an external data file (its clusters are not
    /// refcounted).
    pub has_data_file: bool,
}

/// Clusters per chunk of the in-memory refcount table.
const CHUNK_BITS: u32 = 12;

/// Reference counts computed from the metadata, allocated in chunks on first
/// use so that memory follows the metadata, not the file size.
pub struct ComputedRefcounts {
    chunks: BTreeMap<u64, Box<[u32]>>,
    /// One past the highest cluster referenced (QEMU's in-memory table size
    /// grows to it).
    end: u64,
    /// Largest value a refcount may hold on disk.
    max: u64,
}

impl ComputedRefcounts {
    /// One past the highest cluster referenced.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The clusters with at least one reference, in order.
    pub fn referenced(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.chunks.iter().flat_map(|(&k, c)| {
            c.iter()
                .enumerate()
                .filter(|(_, &n)| n != 0)
                .map(move |(i, &n)| ((k << CHUNK_BITS) + i as u64, u64::from(n)))
        })
    }

    /// The references counted to `cluster`.
    pub fn get(&self, cluster: u64) -> u64 {
        self.chunks.get(&(cluster >> CHUNK_BITS)).map_or(0, |c| {
            u64::from(c[(cluster & ((1 << CHUNK_BITS) - 1)) as usize])
        })
    }

    /// Adds one reference; false when the refcount would overflow its width.
    fn inc(&mut self, cluster: u64) -> bool {
        self.end = self.end.max(cluster + 1);
        let chunk = self
            .chunks
            .entry(cluster >> CHUNK_BITS)
            .or_insert_with(|| vec![0u32; 1 << CHUNK_BITS].into_boxed_slice());
        let slot = &mut chunk[(cluster & ((1 << CHUNK_BITS) - 1)) as usize];
        if u64::from(*slot) >= self.max.min(u64::from(u32::MAX)) {
            return false;
        }
        *slot += 1;
        true
    }
}

/// The running check.
struct Checker<'a, 'd> {
    s: &'a CheckSubject<'a>,
    cluster_bits: u32,
    cluster_size: u64,
    file_len: u64,
    refs: ComputedRefcounts,
    report: CheckReport,
    diag: &'d mut dyn FnMut(&str),
    /// Refcount table entries, as on disk.
    reftable: Vec<u64>,
    /// The last refcount block read: (offset, bytes).
    refblock_cache: Option<(u64, Vec<u8>)>,
    /// Refcounts that differ from the references.
    mismatches: Vec<Mismatch>,
    /// The refcount structure itself is broken: only a rebuild repairs it.
    rebuild: bool,
}

/// A cluster whose refcount on disk differs from its references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch {
    /// Cluster index.
    pub cluster: u64,
    /// The refcount on disk.
    pub on_disk: u64,
    /// The references found.
    pub computed: u64,
}

/// An active L1 or L2 entry whose COPIED flag disagrees with the refcount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopiedMismatch {
    /// The L1 index (of the entry, or of the table holding the L2 entry).
    pub l1_index: u64,
    /// That L1 entry.
    pub l1_entry: u64,
    /// For a data cluster: the L2 table's offset, the index and the entry.
    pub l2: Option<(u64, usize, u64)>,
    /// The refcount of the cluster the entry points to.
    pub refcount: u64,
}

impl CopiedMismatch {
    /// QEMU's diagnostic line, starting with `what` ("ERROR", "Repairing").
    pub fn describe(&self, what: &str) -> String {
        match self.l2 {
            None => format!(
                "{what} OFLAG_COPIED L2 cluster: l1_index={} l1_entry={:x} refcount={}",
                self.l1_index, self.l1_entry, self.refcount
            ),
            Some((_, _, entry)) => format!(
                "{what} OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={}",
                self.refcount
            ),
        }
    }
}

/// The COPIED flags that disagree with the refcounts on disk (for a
/// repair, after the refcounts were fixed).
pub fn copied_mismatches(s: &CheckSubject<'_>) -> Result<Vec<CopiedMismatch>> {
    Ok(check_outcome_inner(s, &mut |_| {}, true, false)?.copied)
}

/// Everything a check found, for a repair to act on.
pub struct Outcome {
    /// The report as a read-only check gives it.
    pub report: CheckReport,
    /// Every refcount that differs from its references.
    pub mismatches: Vec<Mismatch>,
    /// A refcount block is missing or broken where references exist: the
    /// refcount structure must be rebuilt (QEMU's rule).
    pub rebuild: bool,
    /// The references counted.
    pub computed: ComputedRefcounts,
    /// COPIED flag mismatches (only from [`copied_mismatches`]).
    pub copied: Vec<CopiedMismatch>,
}

/// Runs a read-only check of the image described by `s`.
pub fn check(s: &CheckSubject<'_>, diag: &mut dyn FnMut(&str)) -> Result<CheckReport> {
    check_outcome(s, diag, false).map(|o| o.report)
}

/// Runs a read-only check and returns what a repair needs as well. For a
/// repair (`repairing`), the COPIED flags are not checked when the refcount
/// structure must be rebuilt: as QEMU, they are judged against the rebuilt
/// refcounts.
pub fn check_outcome(
    s: &CheckSubject<'_>,
    diag: &mut dyn FnMut(&str),
    repairing: bool,
) -> Result<Outcome> {
    check_outcome_inner(s, diag, repairing, true)
}

fn check_outcome_inner(
    s: &CheckSubject<'_>,
    diag: &mut dyn FnMut(&str),
    repairing: bool,
    count: bool,
) -> Result<Outcome> {
    let h = s.header;
    let cluster_bits = h.cluster_bits;
    let cluster_size = 1u64 << cluster_bits;
    // QEMU sees files in whole 512-byte sectors.
    let file_len = s.storage.len()?.div_ceil(512) * 512;
    let refcount_bits = 1u32 << h.refcount_order;
    let max = if refcount_bits >= 64 {
        u64::MAX
    } else {
        (1u64 << refcount_bits) - 1
    };
    let reftable_bytes = u64::from(h.refcount_table_clusters) << cluster_bits;
    let reftable = if reftable_bytes <= super::header::MAX_REFTABLE_SIZE {
        let mut buf = vec![0u8; reftable_bytes as usize];
        s.storage.read_at(&mut buf, h.refcount_table_offset)?;
        buf.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect()
    } else {
        Vec::new()
    };
    let mut c = Checker {
        s,
        cluster_bits,
        cluster_size,
        file_len,
        refs: ComputedRefcounts {
            chunks: BTreeMap::new(),
            end: 0,
            max,
        },
        report: CheckReport {
            total_clusters: h.size.div_ceil(cluster_size),
            ..CheckReport::default()
        },
        diag,
        reftable,
        refblock_cache: None,
        mismatches: Vec::new(),
        rebuild: false,
    };
    // Every v3 snapshot table entry must carry at least 16 bytes of extra
    // data (the 64-bit VM state size and the disk size).
    if h.version >= 3 {
        for (i, sn) in s.snapshots.iter().enumerate() {
            if sn.extra_data_size < super::snapshot::V3_MIN_EXTRA_DATA {
                c.say(&format!("ERROR snapshot table entry {i} is incomplete"));
                c.report.corruptions += 1;
            }
        }
    }
    c.calculate_refcounts()?;
    let highest = c.compare_refcounts()?;
    // A repair judges the COPIED flags itself, once the refcounts are fixed.
    let mut copied = Vec::new();
    if !repairing {
        c.check_oflag_copied()?;
    } else if !count {
        copied = c.copied_mismatches()?;
    }
    c.report.image_end_offset = (highest + 1) << cluster_bits;
    Ok(Outcome {
        report: c.report,
        mismatches: c.mismatches,
        rebuild: c.rebuild,
        computed: c.refs,
        copied,
    })
}

impl Checker<'_, '_> {
    fn say(&mut self, msg: &str) {
        (self.diag)(msg);
    }

    fn read_u64s(&self, offset: u64, count: u64, entry_size: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; (count * entry_size) as usize];
        self.s.storage.read_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Counts one reference to every cluster of `[offset, offset + size)`.
    fn inc_range(&mut self, offset: u64, size: u64) {
        if size == 0 {
            return;
        }
        // A reference may reach into the last, partly written cluster, but
        // not a whole cluster or more past the end of the file.
        let end = u128::from(offset) + u128::from(size);
        if end >= u128::from(self.file_len) + u128::from(self.cluster_size) {
            self.say(&format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{offset:x} size 0x{size:x}"
            ));
            self.report.corruptions += 1;
            return;
        }
        let first = offset >> self.cluster_bits;
        let last = (offset + size - 1) >> self.cluster_bits;
        for k in first..=last {
            if !self.refs.inc(k) {
                self.say(&format!(
                    "ERROR: overflow cluster offset=0x{:x}",
                    k << self.cluster_bits
                ));
                self.say("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing");
                self.report.corruptions += 1;
            }
        }
    }

    fn calculate_refcounts(&mut self) -> Result<()> {
        let h = self.s.header;
        self.inc_range(0, self.cluster_size);
        self.check_l1(h.l1_table_offset, u64::from(h.l1_size), true)?;

        if self.s.has_data_file && !self.s.snapshots.is_empty() {
            let n = self.s.snapshots.len();
            self.say(&format!("ERROR {n} snapshots in image with data file"));
            self.report.corruptions += 1;
        }
        for sn in self.s.snapshots {
            if sn.l1_table_offset % self.cluster_size != 0 {
                self.say(&format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                    sn.id, sn.name, sn.l1_table_offset
                ));
                self.report.corruptions += 1;
                continue;
            }
            if u64::from(sn.l1_size) > MAX_L1_ENTRIES {
                self.say(&format!(
                    "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                    sn.id, sn.name, sn.l1_size
                ));
                self.report.corruptions += 1;
                continue;
            }
            self.check_l1(sn.l1_table_offset, u64::from(sn.l1_size), false)?;
        }
        let table_size = self.snapshot_table_size()?;
        self.inc_range(h.snapshots_offset, table_size);

        self.inc_range(
            h.refcount_table_offset,
            u64::from(h.refcount_table_clusters) << self.cluster_bits,
        );
        if let Some(crypto) = self.s.crypto {
            self.inc_range(crypto.offset, crypto.length);
        }
        self.check_bitmaps()?;
        self.check_refblocks();
        Ok(())
    }

    /// Counts an L1 table, its L2 tables and their clusters. `active` also
    /// gathers the allocation statistics.
    fn check_l1(&mut self, l1_offset: u64, l1_size: u64, active: bool) -> Result<()> {
        if l1_size == 0 {
            return Ok(());
        }
        self.inc_range(l1_offset, l1_size * 8);
        let mut done = 0;
        while done < l1_size {
            let n = (l1_size - done).min(L1_CHUNK);
            let buf = self.read_u64s(l1_offset + done * 8, n, 8)?;
            for e in buf.chunks_exact(8) {
                let entry = u64::from_be_bytes(e.try_into().unwrap_or([0; 8]));
                if entry == 0 {
                    continue;
                }
                if entry & L1E_RESERVED_MASK != 0 {
                    self.say(&format!(
                        "ERROR found L1 entry with reserved bits set: {entry:x}"
                    ));
                    self.report.corruptions += 1;
                }
                let l2_offset = entry & OFFSET_MASK;
                self.inc_range(l2_offset, self.cluster_size);
                if !l2_offset.is_multiple_of(self.cluster_size) {
                    self.say(&format!(
                        "ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry corrupted"
                    ));
                    self.report.corruptions += 1;
                }
                self.check_l2(l2_offset, active)?;
            }
            done += n;
        }
        Ok(())
    }

    /// Counts the clusters an L2 table references and checks its entries.
    fn check_l2(&mut self, l2_offset: u64, active: bool) -> Result<()> {
        let h = self.s.header;
        let extended = h.extended_l2();
        let entry_size = if extended { 16 } else { 8 };
        let table = self.read_u64s(l2_offset, self.cluster_size / entry_size, entry_size)?;
        let mut next_contiguous = 0u64;
        for (i, e) in table.chunks_exact(entry_size as usize).enumerate() {
            let entry = u64::from_be_bytes(e[..8].try_into().unwrap_or([0; 8]));
            let bitmap = if extended {
                u64::from_be_bytes(e[8..16].try_into().unwrap_or([0; 8]))
            } else {
                0
            };
            let ty = cluster_type(entry, extended, self.s.has_data_file);
            if ty != ClusterType::Compressed && entry & L2E_STD_RESERVED_MASK != 0 {
                self.say(&format!(
                    "ERROR found l2 entry with reserved bits set: {entry:x}"
                ));
                self.report.corruptions += 1;
            }
            match ty {
                ClusterType::Compressed => {
                    let desc = compressed_descriptor(entry, self.cluster_bits);
                    if entry & OFLAG_COPIED != 0 {
                        self.say(&format!(
                            "ERROR: coffset=0x{:x}: copied flag must never be set for compressed clusters",
                            desc.offset
                        ));
                        self.report.corruptions += 1;
                    }
                    if self.s.has_data_file {
                        self.say(&format!(
                            "ERROR compressed cluster {i} with data file, entry=0x{:x}",
                            entry & !OFLAG_COPIED
                        ));
                        self.report.corruptions += 1;
                        continue;
                    }
                    if bitmap != 0 {
                        self.say(&format!(
                            "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry=0x{:x}",
                            entry & !OFLAG_COPIED
                        ));
                        self.report.corruptions += 1;
                        continue;
                    }
                    self.inc_range(desc.offset, desc.size);
                    if active {
                        self.report.allocated_clusters += 1;
                        self.report.compressed_clusters += 1;
                        self.report.fragmented_clusters += 1;
                    }
                }
                ClusterType::Normal | ClusterType::ZeroAlloc => {
                    let offset = entry & OFFSET_MASK;
                    if (bitmap >> 32) & bitmap != 0 {
                        self.say(&format!(
                            "ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                        ));
                        self.report.corruptions += 1;
                    }
                    if !offset.is_multiple_of(self.cluster_size) {
                        self.report.corruptions += 1;
                        let contains_data = if extended {
                            bitmap & L2_BITMAP_ALL_ALLOC != 0
                        } else {
                            entry & OFLAG_ZERO == 0
                        };
                        let what = if contains_data {
                            "Data"
                        } else {
                            "Preallocated"
                        };
                        self.say(&format!(
                            "ERROR offset={offset:x}: {what} cluster is not properly aligned; L2 entry corrupted."
                        ));
                    }
                    if active {
                        self.report.allocated_clusters += 1;
                        if next_contiguous != 0 && offset != next_contiguous {
                            self.report.fragmented_clusters += 1;
                        }
                        next_contiguous = offset + self.cluster_size;
                    }
                    if !self.s.has_data_file {
                        self.inc_range(offset, self.cluster_size);
                    }
                }
                ClusterType::ZeroPlain => {}
                ClusterType::Unallocated => {
                    if bitmap & L2_BITMAP_ALL_ALLOC != 0 {
                        self.say(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map",
                        );
                        self.report.corruptions += 1;
                    }
                }
            }
        }
        Ok(())
    }

    /// Counts the bitmap directory, the bitmap tables and the bitmap data.
    fn check_bitmaps(&mut self) -> Result<()> {
        let Some(ext) = self.s.bitmaps else {
            return Ok(());
        };
        self.inc_range(ext.directory_offset, ext.directory_size);
        let tables = self.s.bitmap_tables.clone();
        for (table_offset, table_size) in tables {
            self.inc_range(table_offset, table_size * 8);
            // A bitmap table may hold up to 2^27 entries: read it in chunks
            // so memory stays bounded whatever the image claims.
            let mut done = 0;
            while done < table_size {
                let n = (table_size - done).min(L1_CHUNK);
                let table = self.read_u64s(table_offset + done * 8, n, 8)?;
                for e in table.chunks_exact(8) {
                    let entry = u64::from_be_bytes(e.try_into().unwrap_or([0; 8]));
                    let offset = entry & OFFSET_MASK;
                    let bad = entry & BME_RESERVED_MASK != 0
                        || (offset != 0
                            && (entry & 1 != 0 || !offset.is_multiple_of(self.cluster_size)));
                    if bad {
                        self.report.corruptions += 1;
                        continue;
                    }
                    if offset != 0 {
                        self.inc_range(offset, self.cluster_size);
                    }
                }
                done += n;
            }
        }
        Ok(())
    }

    /// Bytes the snapshot table occupies, as QEMU counts them: from its
    /// start to the end of the last entry's name (entries start 8-aligned).
    fn snapshot_table_size(&self) -> Result<u64> {
        let h = self.s.header;
        let mut off = h.snapshots_offset;
        for _ in 0..self.s.snapshots.len() {
            off = off.div_ceil(8) * 8;
            let mut fixed = [0u8; 40];
            self.s.storage.read_at(&mut fixed, off)?;
            let extra = u64::from(u32::from_be_bytes([
                fixed[36], fixed[37], fixed[38], fixed[39],
            ]));
            let id = u64::from(u16::from_be_bytes([fixed[12], fixed[13]]));
            let name = u64::from(u16::from_be_bytes([fixed[14], fixed[15]]));
            off += 40 + extra + id + name;
        }
        Ok(off - h.snapshots_offset)
    }

    /// Checks the refcount table's entries and counts the refcount blocks.
    fn check_refblocks(&mut self) {
        let file_clusters = self.file_len.div_ceil(self.cluster_size);
        for i in 0..self.reftable.len() {
            let raw = self.reftable[i];
            let offset = raw & REFT_OFFSET_MASK;
            if raw & REFT_RESERVED_MASK != 0 {
                self.say(&format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                self.report.corruptions += 1;
                continue;
            }
            // Whole clusters only: REFT_OFFSET_MASK already cleared bits 0..8.
            if !offset.is_multiple_of(self.cluster_size) {
                self.say(&format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                self.report.corruptions += 1;
                self.rebuild = true;
                continue;
            }
            let cluster = offset >> self.cluster_bits;
            if cluster >= file_clusters.max(self.refs.end) {
                self.say(&format!("ERROR refcount block {i} is outside image"));
                self.report.corruptions += 1;
                self.rebuild = true;
                continue;
            }
            if offset != 0 {
                self.inc_range(offset, self.cluster_size);
                let n = self.refs.get(cluster);
                if n != 1 {
                    self.say(&format!("ERROR refcount block {i} refcount={n}"));
                    self.report.corruptions += 1;
                    self.rebuild = true;
                }
            }
        }
    }

    /// The refcount on disk of `cluster`: `Err` when its refcount block
    /// cannot be used.
    fn disk_refcount(&mut self, cluster: u64) -> Result<u64, String> {
        let h = self.s.header;
        let block_bits = (self.cluster_bits + 3).saturating_sub(h.refcount_order);
        let idx = cluster >> block_bits;
        let Some(&raw) = usize::try_from(idx).ok().and_then(|i| self.reftable.get(i)) else {
            return Ok(0);
        };
        let offset = raw & REFT_OFFSET_MASK;
        if offset == 0 {
            return Ok(0);
        }
        if !offset.is_multiple_of(self.cluster_size) {
            return Err("Input/output error".into());
        }
        let hit = matches!(&self.refblock_cache, Some((o, _)) if *o == offset);
        if !hit {
            let mut b = vec![0u8; self.cluster_size as usize];
            self.s
                .storage
                .read_at(&mut b, offset)
                .map_err(|e| e.to_string())?;
            self.refblock_cache = Some((offset, b));
        }
        let block = self
            .refblock_cache
            .as_ref()
            .map(|(_, b)| b.as_slice())
            .unwrap_or(&[]);
        Ok(block_entry(
            block,
            cluster & ((1 << block_bits) - 1),
            h.refcount_order,
        ))
    }

    /// Compares computed and on-disk refcounts; returns the highest cluster
    /// in use by either.
    fn compare_refcounts(&mut self) -> Result<u64> {
        let h = self.s.header;
        let block_bits = (self.cluster_bits + 3).saturating_sub(h.refcount_order);
        let file_clusters = self.file_len.div_ceil(self.cluster_size);
        let nb_clusters = file_clusters.max(self.refs.end);
        // The ranges worth visiting: those covered by an allocated refcount
        // block or by a chunk of computed refcounts. Elsewhere both are 0.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (i, &raw) in self.reftable.iter().enumerate() {
            if raw & REFT_OFFSET_MASK != 0 || raw & REFT_RESERVED_MASK != 0 {
                let start = (i as u64) << block_bits;
                ranges.push((start, start.saturating_add(1 << block_bits)));
            }
        }
        for &k in self.refs.chunks.keys() {
            ranges.push((k << CHUNK_BITS, (k + 1) << CHUNK_BITS));
        }
        ranges.sort_unstable();
        let mut highest = 0u64;
        let mut pos = 0u64;
        for (start, end) in ranges {
            let start = start.max(pos);
            let end = end.min(nb_clusters);
            for i in start..end {
                let on_disk = match self.disk_refcount(i) {
                    Ok(v) => v,
                    Err(e) => {
                        self.say(&format!("Can't get refcount for cluster {i}: {e}"));
                        self.report.check_errors += 1;
                        continue;
                    }
                };
                let computed = self.refs.get(i);
                if on_disk > 0 || computed > 0 {
                    highest = i;
                }
                if on_disk != computed {
                    self.mismatches.push(Mismatch {
                        cluster: i,
                        on_disk,
                        computed,
                    });
                    if on_disk == 0 {
                        self.rebuild = true;
                    }
                    let what = if on_disk < computed {
                        "ERROR"
                    } else {
                        "Leaked"
                    };
                    self.say(&format!(
                        "{what} cluster {i} refcount={on_disk} reference={computed}"
                    ));
                    if on_disk < computed {
                        self.report.corruptions += 1;
                    } else {
                        self.report.leaks += 1;
                    }
                }
            }
            pos = pos.max(end);
        }
        Ok(highest)
    }

    /// Checks that the COPIED flag of active L1 and L2 entries is set exactly
    /// when the refcount is 1; reports each mismatch.
    fn check_oflag_copied(&mut self) -> Result<()> {
        for m in self.copied_mismatches()? {
            self.say(&m.describe("ERROR"));
            self.report.corruptions += 1;
        }
        Ok(())
    }

    /// The active L1 and L2 entries whose COPIED flag disagrees with the
    /// refcount of what they point to.
    fn copied_mismatches(&mut self) -> Result<Vec<CopiedMismatch>> {
        let h = self.s.header;
        let extended = h.extended_l2();
        let entry_size = if extended { 16 } else { 8 };
        let l1_size = u64::from(h.l1_size);
        let mut found = Vec::new();
        let mut done = 0;
        while done < l1_size {
            let n = (l1_size - done).min(L1_CHUNK);
            let l1 = self.read_u64s(h.l1_table_offset + done * 8, n, 8)?;
            for (j, e) in l1.chunks_exact(8).enumerate() {
                let l1_index = done + j as u64;
                let l1_entry = u64::from_be_bytes(e.try_into().unwrap_or([0; 8]));
                let l2_offset = l1_entry & OFFSET_MASK;
                if l2_offset == 0 {
                    continue;
                }
                if let Ok(rc) = self.disk_refcount(l2_offset >> self.cluster_bits) {
                    if (rc == 1) != (l1_entry & OFLAG_COPIED != 0) {
                        found.push(CopiedMismatch {
                            l1_index,
                            l1_entry,
                            l2: None,
                            refcount: rc,
                        });
                    }
                }
                let table =
                    self.read_u64s(l2_offset, self.cluster_size / entry_size, entry_size)?;
                for (k, e) in table.chunks_exact(entry_size as usize).enumerate() {
                    let entry = u64::from_be_bytes(e[..8].try_into().unwrap_or([0; 8]));
                    let ty = cluster_type(entry, extended, self.s.has_data_file);
                    if !matches!(ty, ClusterType::Normal | ClusterType::ZeroAlloc) {
                        continue;
                    }
                    let rc = if self.s.has_data_file {
                        1
                    } else {
                        match self.disk_refcount((entry & OFFSET_MASK) >> self.cluster_bits) {
                            Ok(rc) => rc,
                            Err(_) => continue,
                        }
                    };
                    if (rc == 1) != (entry & OFLAG_COPIED != 0) {
                        found.push(CopiedMismatch {
                            l1_index,
                            l1_entry,
                            l2: Some((l2_offset, k, entry)),
                            refcount: rc,
                        });
                    }
                }
            }
            done += n;
        }
        Ok(found)
    }
}
