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
