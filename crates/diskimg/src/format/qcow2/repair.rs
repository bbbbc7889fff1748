//! Repairing refcounts (`qemu-img check -r`, and the repair of an image
//! opened for writing while its dirty bit is set).
//!
//! As QEMU: the check runs first and reports what it finds; a refcount that
//! is too high (a leak) or too low but not zero is then set to the number
//! of references found ("Repairing cluster ..."), as the mode allows. When
//! the refcount structure itself is broken (a referenced cluster with
//! refcount 0, a refcount block outside the image or shared), only a
//! rebuild helps: with `-r all` a new refcount table and new blocks are
//! written past everything in use, the header switches to them once they
//! are durable, and the old structures, now leaked, are released.

use std::collections::BTreeSet;

use super::allocator::Allocator;
use super::check::{self, ComputedRefcounts, Mismatch};
use super::header::INCOMPAT_DIRTY;
use super::writer::Meta;
use super::Qcow2;
use crate::format::{CheckReport, RepairMode};
use crate::{Error, Result};

impl Qcow2 {
    /// Checks and repairs as `mode` allows; the report counts what was
    /// fixed and what remains.
    pub(super) fn repair(
        &self,
        mode: RepairMode,
        diag: &mut dyn FnMut(&str),
    ) -> Result<CheckReport> {
        let w = self.write_state().map_err(|_| {
            Error::read_only(format!(
                "'{}' must be opened for writing to be repaired",
                self.name()
            ))
        })?;
        let snapshots = self.snapshots_for_check()?;
        {
            let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
            self.flush_locked(&mut m)?;
        }
        let header = self.current_header();
        let first = check::check_outcome(&self.check_subject(&header, &snapshots), diag, true)?;
        let mut report = first.report.clone();
        let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        if first.rebuild {
            if mode != RepairMode::All {
                diag("ERROR need to rebuild refcount structures");
                return Err(Error::invalid("Input/output error"));
            }
            diag("Rebuilding refcount structure");
            self.rebuild_refcounts(&mut m, &first.computed)?;
            drop(m);
            // The old structures are leaks now: release them.
            let header = self.current_header();
            let second =
                check::check_outcome(&self.check_subject(&header, &snapshots), &mut |_| {}, true)?;
            let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
            for mm in second
                .mismatches
                .iter()
                .filter(|mm| mm.on_disk > mm.computed)
            {
                self.fix(&mut m, mm, diag)?;
            }
            report.corruptions_fixed += report.corruptions;
            report.corruptions = 0;
            report.leaks_fixed += report.leaks;
            report.leaks = 0;
            self.repair_copied_flags(&mut m, mode, &snapshots, &mut report, diag)?;
            self.finish_repair(&mut m, &report)?;
            return Ok(report);
        }
        for mm in &first.mismatches {
            let leak = mm.on_disk > mm.computed;
            let allowed = if leak {
                mode != RepairMode::None
            } else {
                mode == RepairMode::All
            };
            if allowed {
                self.fix(&mut m, mm, diag)?;
                if leak {
                    report.leaks -= 1;
                    report.leaks_fixed += 1;
                } else {
                    report.corruptions -= 1;
                    report.corruptions_fixed += 1;
                }
            } else {
                let what = if leak { "Leaked" } else { "ERROR" };
                diag(&format!(
                    "{what} cluster {} refcount={} reference={}",
                    mm.cluster, mm.on_disk, mm.computed
                ));
            }
        }
        self.repair_copied_flags(&mut m, mode, &snapshots, &mut report, diag)?;
        self.finish_repair(&mut m, &report)?;
        Ok(report)
    }

    /// Judges the COPIED flags against the (repaired) refcounts, as QEMU
    /// does last, and sets or clears them ("Repairing OFLAG_COPIED").
    fn repair_copied_flags(
        &self,
        m: &mut Meta,
        mode: RepairMode,
        snapshots: &[super::snapshot::Snapshot],
        report: &mut CheckReport,
        diag: &mut dyn FnMut(&str),
    ) -> Result<()> {
        use super::l2_entry::OFLAG_COPIED;
        self.flush_locked(m)?;
        let header = self.header_with(m);
        let list = check::copied_mismatches(&self.check_subject(&header, snapshots))?;
        // As QEMU: `-r all` always repairs; `-r leaks` only when the
        // refcounts the flags are judged against came out clean.
        let repair = match mode {
            RepairMode::All => true,
            RepairMode::Leaks => {
                report.check_errors == 0 && report.corruptions == 0 && report.leaks == 0
            }
            RepairMode::None => false,
        };
        for cm in list {
            if !repair {
                diag(&cm.describe("ERROR"));
                report.corruptions += 1;
                continue;
            }
            diag(&cm.describe("Repairing"));
            let flip = |e: u64| {
                if cm.refcount == 1 {
                    e | OFLAG_COPIED
                } else {
                    e & !OFLAG_COPIED
                }
            };
            match cm.l2 {
                None => self.set_l1(m, cm.l1_index as usize, flip(cm.l1_entry)),
                Some((l2off, index, entry)) => {
                    let table = self.l2_table(l2off)?;
                    let (_, bitmap) = self.entry_in(&table, index);
                    drop(table);
                    self.set_entry(l2off, index, flip(entry), bitmap)?;
                }
            }
            report.corruptions_fixed += 1;
        }
        Ok(())
    }

    fn fix(&self, m: &mut Meta, mm: &Mismatch, diag: &mut dyn FnMut(&str)) -> Result<()> {
        diag(&format!(
            "Repairing cluster {} refcount={} reference={}",
            mm.cluster, mm.on_disk, mm.computed
        ));
        m.alloc
            .set_refcount(self.storage.as_ref(), mm.cluster, mm.computed)
    }

    /// Writes the repaired refcounts and, when nothing is left broken,
    /// clears the dirty bit.
    fn finish_repair(&self, m: &mut Meta, report: &CheckReport) -> Result<()> {
        self.flush_locked(m)?;
        if report.corruptions == 0 && report.check_errors == 0 && m.incompat & INCOMPAT_DIRTY != 0 {
            let v = m.incompat & !INCOMPAT_DIRTY;
            self.storage.write_at(&v.to_be_bytes(), 72)?;
            self.sync()?;
            m.incompat = v;
        }
        Ok(())
    }

    /// Writes a new refcount table and blocks holding `computed`, past every
    /// cluster in use, and switches the header to them.
    fn rebuild_refcounts(&self, m: &mut Meta, computed: &ComputedRefcounts) -> Result<()> {
        let h = &self.header;
        let cs = h.cluster_size();
        let cb = h.cluster_bits;
        let order = h.refcount_order;
        let bb = cb + 3 - order;
        let st = self.storage.as_ref();
        let mut used_blocks: BTreeSet<u64> = computed.referenced().map(|(c, _)| c >> bb).collect();
        // Table at [start, start + k), blocks right after it, in the first
        // run of clusters nothing references (as QEMU places them); iterate
        // until the region describes itself.
        let first_fit = |len: u64| -> u64 {
            let mut s = 1u64;
            let mut run = 0u64;
            while run < len {
                if computed.get(s + run) != 0 {
                    s += run + 1;
                    run = 0;
                } else {
                    run += 1;
                }
            }
            s
        };
        let mut k = 1u64;
        let mut nb = 0u64;
        let mut start = first_fit(1);
        let blocks: Vec<u64> = loop {
            let end = start + k + nb;
            let mut all = used_blocks.clone();
            for bi in (start >> bb)..=((end - 1) >> bb) {
                all.insert(bi);
            }
            let max_bi = all.iter().next_back().copied().unwrap_or(0);
            let k2 = ((max_bi + 1) * 8).div_ceil(cs);
            if k2 * cs > super::header::MAX_REFTABLE_SIZE {
                return Err(Error::invalid(format!(
                    "cannot rebuild the refcount structure of '{}': the table would exceed {} MiB",
                    self.name(),
                    super::header::MAX_REFTABLE_SIZE >> 20
                )));
            }
            let s2 = first_fit(k2 + all.len() as u64);
            if k2 == k && all.len() as u64 == nb && s2 == start {
                break all.into_iter().collect();
            }
            k = k2;
            nb = all.len() as u64;
            start = s2;
        };
        used_blocks.clear();
        let region_end = start + k + nb;
        let mut table = vec![0u64; (k * cs / 8) as usize];
        for (j, &bi) in blocks.iter().enumerate() {
            table[bi as usize] = (start + k + j as u64) << cb;
        }
        // Each block: the references found, plus one for the new region.
        let per_block = 1u64 << bb;
        let mut refs = computed.referenced().peekable();
        for (j, &bi) in blocks.iter().enumerate() {
            let mut block = vec![0u8; cs as usize];
            let first = bi * per_block;
            while let Some(&(c, _)) = refs.peek() {
                if c >= first {
                    break;
                }
                refs.next();
            }
            while let Some(&(c, n)) = refs.peek() {
                if c >= first + per_block {
                    break;
                }
                set_entry(&mut block, c - first, order, n);
                refs.next();
            }
            for c in start.max(first)..region_end.min(first + per_block) {
                set_entry(&mut block, c - first, order, 1);
            }
            st.write_at(&block, (start + k + j as u64) << cb)?;
        }
        let mut bytes = Vec::with_capacity(table.len() * 8);
        for e in &table {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        st.write_at(&bytes, start << cb)?;
        self.sync()?;
        let mut f = [0u8; 12];
        f[..8].copy_from_slice(&(start << cb).to_be_bytes());
        f[8..].copy_from_slice(&(k as u32).to_be_bytes());
        st.write_at(&f, 48)?;
        self.sync()?;
        let mut header = self.header_with(m);
        header.refcount_table_offset = start << cb;
        header.refcount_table_clusters = k as u32;
        m.alloc = Allocator::load(st, &header)?;
        self.update_protected(m);
        if let Some(w) = &self.writer {
            let mut t = w.tables.write().unwrap_or_else(|e| e.into_inner());
            t.retain(|&o| {
                // Keep the L2 tables; the old refcount blocks are gone.
                self.l1
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .any(|e| e & super::l2_entry::OFFSET_MASK == o)
            });
            t.extend(m.alloc.block_offsets());
        }
        Ok(())
    }

    /// Repairs an image opened for writing with its dirty bit set (lazy
    /// refcounts after a crash), as QEMU does before first use.
    pub(super) fn repair_dirty_on_open(&self) -> Result<()> {
        let report = self.repair(RepairMode::All, &mut |_| {})?;
        if report.corruptions > 0 || report.check_errors > 0 {
            return Err(Error::invalid(format!(
                "'{}' was not closed cleanly and its repair left {} errors; run 'qemu-img check -r all'",
                self.name(),
                report.corruptions + report.check_errors
            )));
        }
        Ok(())
    }
}

fn set_entry(block: &mut [u8], index: u64, order: u32, value: u64) {
    super::allocator::set_block_entry(block, index, order, value);
}
