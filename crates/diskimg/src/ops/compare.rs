//! Comparing the guest contents of two images, as `qemu-img compare` does.
//!
//! Both chains are walked with [`status_above`]. Ranges that read as zeros
//! in both are equal without reading; ranges allocated in both are read and
//! compared; a range allocated in only one must read as zeros there. The
//! first difference is reported at 512-byte granularity: the offset of the
//! first sector that differs, as qemu-img reports it. When the sizes differ
//! (and not in strict mode) the common part is compared, then the tail of
//! the larger image must read as zeros.

use std::sync::Arc;

use super::status::{status_above, StatusAbove};
use crate::{BlockDevice, Error};

/// Bytes compared at once (qemu-img's IO_BUF_SIZE).
const IO_BUF: u64 = 2 << 20;
/// Granularity of reported offsets.
const SECTOR: usize = 512;

/// How two images compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Same contents.
    Identical,
    /// The contents differ starting in the sector at this offset.
    ContentMismatch(u64),
    /// Strict mode: the sizes differ.
    StrictSizeMismatch,
    /// Strict mode: the allocation status differs at this offset.
    StrictStatusMismatch(u64),
}

/// The result of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// The sizes differ and the common part matched, so qemu-img warns
    /// (`Warning: Image size mismatch!`) before checking the larger tail.
    pub size_mismatch: bool,
    /// The verdict.
    pub verdict: Verdict,
}

/// Which image an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The first image.
    A,
    /// The second image.
    B,
}

/// What failed during a comparison.
#[derive(Debug)]
pub enum CompareError {
    /// Asking for the allocation status failed (qemu-img's exit code 3).
    Status(Side, Error),
    /// Reading failed at `offset` (qemu-img's exit code 4).
    Read(Side, u64, Error),
}

/// Compares `a` and `b`. `progress` receives the fraction done (0..=1).
pub fn compare(
    a: &Arc<dyn BlockDevice>,
    b: &Arc<dyn BlockDevice>,
    strict: bool,
    progress: &mut dyn FnMut(f64),
) -> Result<Comparison, CompareError> {
    let size_a = a.size();
    let size_b = b.size();
    let common = size_a.min(size_b);
    let total = size_a.max(size_b).max(1) as f64;
    let size_mismatch = size_a != size_b;
    if strict && size_mismatch {
        return Ok(Comparison {
            size_mismatch,
            verdict: Verdict::StrictSizeMismatch,
        });
    }
    let buf_len = IO_BUF.min(size_a.max(size_b)).max(SECTOR as u64) as usize;
    let mut buf_a = vec![0u8; buf_len];
    let mut buf_b = vec![0u8; buf_len];
    let done = |verdict| {
        Ok(Comparison {
            size_mismatch: false,
            verdict,
        })
    };
    let mut offset = 0u64;
    while offset < common {
        let sa = status_above(a, offset, size_a - offset)
            .map_err(|e| CompareError::Status(Side::A, e))?;
        let sb = status_above(b, offset, size_b - offset)
            .map_err(|e| CompareError::Status(Side::B, e))?;
        let mut chunk = sa.len.min(sb.len);
        if strict && !same_flags(&sa, &sb) {
            return done(Verdict::StrictStatusMismatch(offset));
        }
        if sa.zero && sb.zero {
            // Both read as zeros.
        } else if sa.allocated == sb.allocated {
            if sa.allocated {
                chunk = chunk.min(IO_BUF);
                let n = chunk as usize;
                a.read_at(&mut buf_a[..n], offset)
                    .map_err(|e| CompareError::Read(Side::A, offset, e))?;
                b.read_at(&mut buf_b[..n], offset)
                    .map_err(|e| CompareError::Read(Side::B, offset, e))?;
                if let Some(at) = first_different_sector(&buf_a[..n], &buf_b[..n]) {
                    return done(Verdict::ContentMismatch(offset + at as u64));
                }
            }
        } else {
            chunk = chunk.min(IO_BUF);
            let (dev, side) = if sa.allocated {
                (a, Side::A)
            } else {
                (b, Side::B)
            };
            let n = chunk as usize;
            dev.read_at(&mut buf_a[..n], offset)
                .map_err(|e| CompareError::Read(side, offset, e))?;
            if let Some(at) = first_nonzero_sector(&buf_a[..n]) {
                return done(Verdict::ContentMismatch(offset + at as u64));
            }
        }
        offset += chunk;
        progress(offset as f64 / total);
    }
    let done = |verdict| {
        Ok(Comparison {
            size_mismatch,
            verdict,
        })
    };
    if size_mismatch {
        let (dev, side, size) = if size_a > size_b {
            (a, Side::A, size_a)
        } else {
            (b, Side::B, size_b)
        };
        while offset < size {
            let st = status_above(dev, offset, size - offset)
                .map_err(|e| CompareError::Status(side, e))?;
            let mut chunk = st.len;
            if st.allocated && !st.zero {
                chunk = chunk.min(IO_BUF);
                let n = chunk as usize;
                dev.read_at(&mut buf_a[..n], offset)
                    .map_err(|e| CompareError::Read(side, offset, e))?;
                if let Some(at) = first_nonzero_sector(&buf_a[..n]) {
                    return done(Verdict::ContentMismatch(offset + at as u64));
                }
            }
            offset += chunk;
            progress(offset as f64 / total);
        }
    }
    done(Verdict::Identical)
}

/// Strict mode compares the whole status word as QEMU does.
fn same_flags(a: &StatusAbove, b: &StatusAbove) -> bool {
    a.allocated == b.allocated
        && a.data == b.data
        && a.zero == b.zero
        && a.offset_valid == b.offset_valid
        && a.eof == b.eof
}

/// The offset of the first 512-byte sector (from the start of the buffers)
/// that differs.
fn first_different_sector(a: &[u8], b: &[u8]) -> Option<usize> {
    a.chunks(SECTOR)
        .zip(b.chunks(SECTOR))
        .position(|(x, y)| x != y)
        .map(|i| i * SECTOR)
}

/// The offset of the first 512-byte sector holding a non-zero byte.
fn first_nonzero_sector(buf: &[u8]) -> Option<usize> {
    buf.chunks(SECTOR)
        .position(|c| !super::convert::is_zero(c))
        .map(|i| i * SECTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_reported_per_sector() {
        let a = vec![0u8; 4096];
        let mut b = a.clone();
        b[1500] = 1;
        assert_eq!(first_different_sector(&a, &b), Some(1024));
        assert_eq!(first_different_sector(&a, &a), None);
        assert_eq!(first_nonzero_sector(&b), Some(1024));
        assert_eq!(first_nonzero_sector(&a), None);
    }
}
