//! Writing compressed clusters (`convert -c`, qemu-io `write -c`).
//!
//! Compression runs in the calling thread without any lock, so callers that
//! write from several threads compress on several cores. Compressed data is
//! packed back to back at byte granularity into host clusters kept for it
//! (`Meta::compressed_next`); each compressed cluster adds one to the
//! refcount of every host cluster its sectors touch, which is how QEMU
//! counts them. The data is written before the L2 entry names it, and the
//! refcounts reach the disk before the entry (see the writer's flush).

use std::cell::RefCell;

use super::compress::compress_cluster;
use super::l2_entry::encode_compressed;
use super::writer::Meta;
use super::Qcow2;
use crate::{Error, Result};

thread_local! {
    /// Each writing thread's output buffer for compression: reused, so a
    /// cluster costs neither an allocation nor zeroing the buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Qcow2 {
    /// Writes one cluster (or the disk's partial last cluster) compressed;
    /// a cluster that does not shrink is written as a normal cluster.
    pub(super) fn write_compressed_cluster(&self, buf: &[u8], offset: u64) -> Result<()> {
        let w = self.write_state()?;
        if self.has_data_file {
            return Err(Error::unsupported(format!(
                "Cannot write compressed clusters to '{}': it has an external data file",
                self.name()
            )));
        }
        let cs = self.header.cluster_size();
        let cb = self.header.cluster_bits;
        let tail = offset + buf.len() as u64 == self.disk_size();
        if !offset.is_multiple_of(cs) || buf.len() as u64 > cs || (buf.len() as u64 != cs && !tail)
        {
            return Err(Error::invalid_argument(format!(
                "compressed writes to '{}' must cover exactly one cluster ({cs} bytes) at a cluster boundary (got {} bytes at offset {offset})",
                self.name(),
                buf.len()
            )));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let mut padded;
        let input = if buf.len() as u64 == cs {
            buf
        } else {
            padded = vec![0u8; cs as usize];
            padded[..buf.len()].copy_from_slice(buf);
            &padded[..]
        };
        // The thread's scratch buffer, taken for the call (a call that
        // fails leaves a fresh one behind).
        let mut scratch = SCRATCH.with(|s| s.take());
        let Some(n) = compress_cluster(self.header.compression_type, input, &mut scratch) else {
            SCRATCH.with(|s| s.replace(scratch));
            return self.write(buf, offset);
        };
        let out = scratch.get(..n).unwrap_or_default();
        let _g = w.ranges.lock(offset, offset + cs);
        let (l1_index, l2_index) = self.indices(offset);
        let mut m = self.meta(w)?;
        self.mark_dirty(&mut m)?;
        let l2off = self.l2_for_write(&mut m, l1_index)?;
        let table = self.l2_table(l2off)?;
        let (old, _) = self.entry_in(&table, l2_index);
        drop(table);
        let host = self.alloc_compressed_bytes(&mut m, n as u64)?;
        drop(m);
        self.write_data(w, out, host)?;
        SCRATCH.with(|s| s.replace(scratch));
        let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
        self.set_entry(l2off, l2_index, encode_compressed(host, n as u64, cb), 0)?;
        self.free_entry(&mut m, old);
        drop(m);
        drop(_g);
        self.flush_if_needed(w)
    }

    /// Reserves `size` bytes (at most a cluster) for compressed data,
    /// packed after the previous compressed cluster when they fit there or
    /// in the free clusters right after it.
    fn alloc_compressed_bytes(&self, m: &mut Meta, size: u64) -> Result<u64> {
        let cs = self.header.cluster_size();
        let cb = self.header.cluster_bits;
        let st = self.storage.as_ref();
        let after = |end: u64| (!end.is_multiple_of(cs)).then_some(end);
        if let Some(next) = m.compressed_next {
            let cluster_end = (next | (cs - 1)) + 1;
            let end = next + size;
            let fits = end <= cluster_end
                || m.alloc
                    .allocate_at(st, cluster_end >> cb, (end - cluster_end).div_ceil(cs))?;
            if fits {
                m.alloc.adjust(st, next >> cb, 1)?;
                m.compressed_next = after(end);
                return Ok(next);
            }
        }
        let (start, _) = m.alloc.allocate(st, size.div_ceil(cs))?;
        m.compressed_next = after(start + size);
        Ok(start)
    }
}
