//! The generic half of every mapping format driver.
//!
//! A [`Mapper`] only answers "where are the guest bytes at this offset": in
//! its data storage, zero, compressed, or not in this layer. This module turns
//! those answers into reads (walking into the backing file, reading zeros
//! past its end) and into block status, so each format decodes its tables and
//! nothing more.

use std::sync::Arc;

use super::{BlockDevice, BlockStatus};
use crate::io::Storage;
use crate::Result;

/// Where one guest extent of a layer lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The bytes are at `offset` in the data storage.
    Data {
        /// Host offset of the first byte of the extent.
        offset: u64,
    },
    /// The extent reads as zeros; `offset` is the preallocated host range, if any.
    Zero {
        /// Preallocated host offset of the first byte of the extent.
        offset: Option<u64>,
    },
    /// The extent is not in this layer: read the backing file, or zeros.
    /// `offset` is set when host space is allocated nonetheless (qcow2
    /// extended L2 subclusters that are allocated but not written).
    Unallocated {
        /// Host offset of the first byte of the extent, when allocated.
        offset: Option<u64>,
    },
    /// The extent lies within one compressed cluster. The mapper decodes it
    /// with [`Mapper::read_compressed`].
    Compressed {
        /// Guest offset of the start of the compressed cluster.
        cluster_guest_offset: u64,
        /// The format's raw descriptor of the cluster (for qcow2: the L2 entry).
        descriptor: u64,
    },
}

/// The format-specific half of a driver that maps guest ranges.
pub trait Mapper: Send + Sync {
    /// Guest-visible size.
    fn guest_size(&self) -> u64;

    /// The mapping at `offset` (< guest size) and how many bytes, at most
    /// `max_len` and at least 1, share it (contiguously on the host for
    /// `Data`).
    fn map(&self, offset: u64, max_len: u64) -> Result<(Mapping, u64)>;

    /// The storage `Mapping::Data` offsets refer to.
    fn data_storage(&self) -> &Arc<dyn Storage>;

    /// Decompresses the cluster described by a `Mapping::Compressed` and
    /// copies `buf.len()` bytes starting `offset_in_cluster` into `buf`.
    fn read_compressed(
        &self,
        cluster_guest_offset: u64,
        descriptor: u64,
        offset_in_cluster: u64,
        buf: &mut [u8],
    ) -> Result<()>;

    /// Whether `Data` extents should be refined with the host file's holes
    /// (QEMU does so for qcow2 images with preallocated metadata): a data
    /// extent over a host hole then reports `zero` as well.
    fn refine_data_with_host_holes(&self) -> bool {
        false
    }
}

/// Reads `buf.len()` guest bytes at `offset` from `mapper`, taking what is
/// not in this layer from `backing` (zeros past its end or without one).
pub fn read(
    mapper: &dyn Mapper,
    backing: Option<&Arc<dyn BlockDevice>>,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let pos = offset + done as u64;
        let want = (buf.len() - done) as u64;
        let (mapping, n) = mapper.map(pos, want)?;
        let n = n.clamp(1, want) as usize;
        let chunk = &mut buf[done..done + n];
        match mapping {
            Mapping::Data { offset: host } => mapper.data_storage().read_at(chunk, host)?,
            Mapping::Zero { .. } => chunk.fill(0),
            Mapping::Unallocated { .. } => read_backing(backing, chunk, pos)?,
            Mapping::Compressed {
                cluster_guest_offset,
                descriptor,
            } => mapper.read_compressed(
                cluster_guest_offset,
                descriptor,
                pos - cluster_guest_offset,
                chunk,
            )?,
        }
        done += n;
    }
    Ok(())
}

/// Reads from a backing file, with zeros past its end or when there is none.
pub fn read_backing(
    backing: Option<&Arc<dyn BlockDevice>>,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let Some(b) = backing else {
        buf.fill(0);
        return Ok(());
    };
    let size = b.size();
    if offset >= size {
        buf.fill(0);
        return Ok(());
    }
    let n = (size - offset).min(buf.len() as u64) as usize;
    b.read_at(&mut buf[..n], offset)?;
    buf[n..].fill(0);
    Ok(())
}

/// The block status of `mapper`'s layer at `offset`, as QEMU computes it:
/// unallocated extents read as zero when there is no backing file or when
/// they start at or past its end.
pub fn block_status(
    mapper: &dyn Mapper,
    backing: Option<&Arc<dyn BlockDevice>>,
    offset: u64,
    max_len: u64,
) -> Result<BlockStatus> {
    let (mapping, len) = mapper.map(offset, max_len)?;
    let len = len.clamp(1, max_len.max(1));
    let mut st = BlockStatus {
        len,
        allocated: true,
        data: false,
        zero: false,
        compressed: false,
        offset: None,
    };
    match mapping {
        Mapping::Data { offset: host } => {
            st.data = true;
            st.offset = Some(host);
            if mapper.refine_data_with_host_holes() {
                let storage = mapper.data_storage();
                let end = storage.len()?;
                if host >= end {
                    st.zero = true;
                } else {
                    let ext = storage.host_extent(host, len.min(end - host))?;
                    st.len = ext.len.clamp(1, len);
                    st.zero = !ext.data;
                }
            }
        }
        Mapping::Zero { offset: host } => {
            st.zero = true;
            st.offset = host;
        }
        Mapping::Unallocated { offset: host } => {
            st.allocated = false;
            st.offset = host;
            st.zero = match backing {
                None => true,
                Some(b) => offset >= b.size(),
            };
        }
        Mapping::Compressed { .. } => {
            st.data = true;
            st.compressed = true;
        }
    }
    Ok(st)
}
