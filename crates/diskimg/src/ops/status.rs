//! The status of a guest range through a backing chain.
//!
//! Two walks exist, as in QEMU:
//! - [`chain_status`] is `qemu-img map`'s: ask each layer from the top down
//!   and stop at the first one whose answer is data or zero (a layer with no
//!   backing file, or a range past the end of its backing file, reads as zero
//!   even where it is unallocated);
//! - [`status_above`] is the block layer's `block_status_above` (used by
//!   compare and convert): stop at the first layer that *allocates* the
//!   range; a range past the end of a shorter backing file counts as
//!   allocated zeros there.
//!
//! Both narrow the length as they descend, so the answer holds for the
//! whole returned range.

use std::sync::Arc;

use crate::{BlockDevice, BlockStatus, Result};

/// The status of one range through a chain.
#[derive(Clone)]
pub struct ChainStatus {
    /// Length of the range in bytes (at least 1).
    pub len: u64,
    /// How many layers below the top the answer came from.
    pub depth: usize,
    /// The layer that answered (None when the answer is the implicit
    /// "nothing anywhere" below the bottom).
    pub layer: Option<Arc<dyn BlockDevice>>,
    /// The answering layer's own status.
    pub status: BlockStatus,
}

/// Asks `dev` about `[offset, offset + max_len)`, clamped to its size.
fn layer_status(dev: &Arc<dyn BlockDevice>, offset: u64, max_len: u64) -> Result<BlockStatus> {
    let max_len = max_len.min(dev.size().saturating_sub(offset)).max(1);
    let mut st = dev.block_status(offset, max_len)?;
    st.len = st.len.clamp(1, max_len);
    Ok(st)
}

/// `qemu-img map`'s walk: the first layer from the top whose status is data
/// or zero decides. `offset` must be below `top.size()`.
pub fn chain_status(top: &Arc<dyn BlockDevice>, offset: u64, max_len: u64) -> Result<ChainStatus> {
    let mut bytes = max_len.max(1);
    let mut dev = top.clone();
    let mut depth = 0usize;
    loop {
        let st = layer_status(&dev, offset, bytes)?;
        bytes = st.len;
        if st.data || st.zero {
            return Ok(ChainStatus {
                len: bytes,
                depth,
                layer: Some(dev),
                status: st,
            });
        }
        let next = match dev.backing() {
            Some(b) if offset < b.size() => b.clone(),
            _ => {
                // Nothing below: QEMU reports the range with no flags at all.
                return Ok(ChainStatus {
                    len: bytes,
                    depth,
                    layer: None,
                    status: BlockStatus {
                        len: bytes,
                        allocated: false,
                        data: false,
                        zero: false,
                        compressed: false,
                        offset: None,
                    },
                });
            }
        };
        dev = next;
        depth += 1;
    }
}

/// The block layer's status of a range through a whole chain (QEMU's
/// `bdrv_block_status_above` with no base).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusAbove {
    /// Length of the range (at least 1).
    pub len: u64,
    /// Some layer of the chain allocates the range.
    pub allocated: bool,
    /// The range holds data.
    pub data: bool,
    /// The range reads as zeros.
    pub zero: bool,
    /// A host offset is known for the range.
    pub offset_valid: bool,
    /// The range reaches the end of the top image.
    pub eof: bool,
}

/// QEMU's `bdrv_block_status_above(top, NULL, ...)`. `offset` must be below
/// `top.size()`.
pub fn status_above(top: &Arc<dyn BlockDevice>, offset: u64, max_len: u64) -> Result<StatusAbove> {
    let size = top.size();
    let st = layer_status(top, offset, max_len)?;
    let mut bytes = st.len;
    let mut result = StatusAbove {
        len: bytes,
        allocated: st.allocated,
        data: st.data,
        zero: st.zero,
        offset_valid: st.offset.is_some(),
        eof: false,
    };
    if !st.allocated {
        let mut cur = top.backing().cloned();
        while let Some(dev) = cur {
            if offset >= dev.size() {
                // The backing file is short: what lies past its end reads as
                // zeros allocated there.
                result = StatusAbove {
                    len: bytes,
                    allocated: true,
                    data: false,
                    zero: true,
                    offset_valid: false,
                    eof: false,
                };
                break;
            }
            let st = layer_status(&dev, offset, bytes)?;
            bytes = st.len;
            result = StatusAbove {
                len: bytes,
                allocated: st.allocated,
                data: st.data,
                zero: st.zero,
                offset_valid: st.offset.is_some(),
                eof: false,
            };
            if st.allocated {
                break;
            }
            cur = dev.backing().cloned();
        }
    }
    result.eof = offset.saturating_add(result.len) == size;
    Ok(result)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::ImageInfo;
    use crate::io::{MemoryStorage, Storage};

    /// A layer described by its extents: (length, allocated, data, zero).
    pub(crate) struct Fake {
        pub extents: Vec<(u64, bool, bool, bool)>,
        pub backing: Option<Arc<dyn BlockDevice>>,
        pub storage: Arc<dyn Storage>,
    }

    impl Fake {
        pub(crate) fn device(
            extents: Vec<(u64, bool, bool, bool)>,
            backing: Option<Arc<dyn BlockDevice>>,
        ) -> Arc<dyn BlockDevice> {
            Arc::new(Fake {
                extents,
                backing,
                storage: Arc::new(MemoryStorage::new("fake")),
            })
        }
    }

    impl BlockDevice for Fake {
        fn size(&self) -> u64 {
            self.extents.iter().map(|e| e.0).sum()
        }
        fn read_at(&self, buf: &mut [u8], _offset: u64) -> Result<()> {
            buf.fill(0);
            Ok(())
        }
        fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
            Ok(())
        }
        fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> Result<()> {
            Ok(())
        }
        fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
            Ok(())
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
        fn block_status(&self, offset: u64, max_len: u64) -> Result<BlockStatus> {
            let mut start = 0;
            for &(len, allocated, data, zero) in &self.extents {
                if offset < start + len {
                    let len = (start + len - offset).min(max_len);
                    // Unallocated reads as zero without a backing file or
                    // past its end, as mapped::block_status reports.
                    let zero = zero
                        || (!allocated && self.backing.as_ref().is_none_or(|b| offset >= b.size()));
                    return Ok(BlockStatus {
                        len,
                        allocated,
                        data,
                        zero,
                        compressed: false,
                        offset: if data { Some(offset) } else { None },
                    });
                }
                start += len;
            }
            Err(crate::Error::invalid_argument("past the end"))
        }
        fn info(&self) -> ImageInfo {
            ImageInfo {
                format: "fake",
                filename: "fake".into(),
                virtual_size: self.size(),
                cluster_size: None,
                dirty: false,
                encrypted: false,
                backing: None,
                snapshots: Vec::new(),
                specific: None,
            }
        }
        fn storage(&self) -> &Arc<dyn Storage> {
            &self.storage
        }
        fn backing(&self) -> Option<&Arc<dyn BlockDevice>> {
            self.backing.as_ref()
        }
    }

    const U: (bool, bool, bool) = (false, false, false); // unallocated
    const D: (bool, bool, bool) = (true, true, false); // data
    const Z: (bool, bool, bool) = (true, false, true); // zero

    fn ext(len: u64, k: (bool, bool, bool)) -> (u64, bool, bool, bool) {
        (len, k.0, k.1, k.2)
    }

    #[test]
    fn map_walk_descends_and_narrows() {
        let base = Fake::device(vec![ext(100, D), ext(300, U)], None);
        let top = Fake::device(vec![ext(50, U), ext(50, Z), ext(300, U)], Some(base));
        let s = chain_status(&top, 0, 400).unwrap();
        assert_eq!((s.len, s.depth, s.status.data), (50, 1, true));
        let s = chain_status(&top, 50, 350).unwrap();
        assert_eq!((s.len, s.depth, s.status.zero), (50, 0, true));
        // Unallocated everywhere: the bottom layer reports zero, not present.
        let s = chain_status(&top, 100, 300).unwrap();
        assert_eq!((s.len, s.depth), (300, 1));
        assert!(s.status.zero && !s.status.allocated);
    }

    #[test]
    fn map_walk_stops_above_a_short_backing_file() {
        let base = Fake::device(vec![ext(100, D)], None);
        let top = Fake::device(vec![ext(400, U)], Some(base));
        let s = chain_status(&top, 0, 400).unwrap();
        assert_eq!((s.len, s.depth, s.status.data), (100, 1, true));
        let s = chain_status(&top, 100, 300).unwrap();
        assert_eq!((s.len, s.depth), (300, 0));
        assert!(s.status.zero && !s.status.allocated);
    }

    #[test]
    fn status_above_finds_the_allocating_layer() {
        let base = Fake::device(vec![ext(100, D), ext(300, U)], None);
        let top = Fake::device(vec![ext(50, U), ext(50, Z), ext(300, U)], Some(base));
        let s = status_above(&top, 0, 400).unwrap();
        assert!(s.allocated && s.data && s.offset_valid && !s.eof);
        assert_eq!(s.len, 50);
        let s = status_above(&top, 100, 300).unwrap();
        assert!(!s.allocated && s.zero && s.eof);
        assert_eq!(s.len, 300);
    }

    #[test]
    fn status_above_counts_past_a_short_backing_as_allocated_zeros() {
        let base = Fake::device(vec![ext(100, U)], None);
        let mid = Fake::device(vec![ext(200, U)], Some(base));
        let top = Fake::device(vec![ext(400, U)], Some(mid));
        let s = status_above(&top, 150, 250).unwrap();
        // mid is unallocated at 150 and its backing ends at 100.
        assert!(s.allocated && s.zero && !s.data);
        assert_eq!(s.len, 50);
    }
}
