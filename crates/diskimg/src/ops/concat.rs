//! Several images read as one, back to back (qemu-img convert's several
//! sources). Read-only; each part is seen through its whole chain.

use std::sync::Arc;

use super::status::status_above;
use crate::format::ImageInfo;
use crate::io::Storage;
use crate::{BlockDevice, BlockStatus, Error, Result};

/// Images concatenated into one guest address space.
pub struct Concat {
    /// (start offset, image), in order.
    parts: Vec<(u64, Arc<dyn BlockDevice>)>,
    size: u64,
}

impl Concat {
    /// Concatenates `parts` (at least one).
    pub fn new(parts: Vec<Arc<dyn BlockDevice>>) -> Result<Concat> {
        if parts.is_empty() {
            return Err(Error::invalid_argument("no source image to concatenate"));
        }
        let mut start = 0u64;
        let mut v = Vec::with_capacity(parts.len());
        for p in parts {
            let size = p.size();
            v.push((start, p));
            start = start
                .checked_add(size)
                .ok_or_else(|| Error::invalid_argument("concatenated size overflows"))?;
        }
        Ok(Concat {
            parts: v,
            size: start,
        })
    }

    /// The part holding `offset` (< size) and the offset within it.
    fn part(&self, offset: u64) -> Result<(&Arc<dyn BlockDevice>, u64, u64)> {
        let i = self.parts.partition_point(|(start, _)| *start <= offset);
        let (start, dev) = i
            .checked_sub(1)
            .and_then(|i| self.parts.get(i))
            .ok_or_else(|| Error::invalid_argument(format!("offset {offset} out of range")))?;
        let end = start + dev.size();
        if offset >= end {
            return Err(Error::invalid_argument(format!(
                "offset {offset} is past the end ({})",
                self.size
            )));
        }
        Ok((dev, offset - start, end - offset))
    }

    fn read_only() -> Error {
        Error::read_only("concatenated source images are read-only")
    }
}

impl BlockDevice for Concat {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (dev, inner, left) = self.part(pos)?;
            let n = ((buf.len() - done) as u64).min(left) as usize;
            dev.read_at(&mut buf[done..done + n], inner)?;
            done += n;
        }
        Ok(())
    }

    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(Self::read_only())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _unmap: bool) -> Result<()> {
        Err(Self::read_only())
    }

    fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(Self::read_only())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// The status through each part's whole chain; never "unallocated"
    /// with a backing file to ask, as a concatenation has none.
    fn block_status(&self, offset: u64, max_len: u64) -> Result<BlockStatus> {
        let (dev, inner, left) = self.part(offset)?;
        let st = status_above(dev, inner, max_len.min(left).max(1))?;
        Ok(BlockStatus {
            len: st.len,
            allocated: st.allocated,
            data: st.data,
            zero: st.zero,
            compressed: false,
            offset: None,
        })
    }

    fn info(&self) -> ImageInfo {
        let mut info = self.parts[0].1.info();
        info.virtual_size = self.size;
        info
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        self.parts[0].1.storage()
    }

    fn backing(&self) -> Option<&Arc<dyn BlockDevice>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::raw::Raw;
    use crate::io::MemoryStorage;

    fn raw(name: &str, bytes: Vec<u8>) -> Arc<dyn BlockDevice> {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes(name, bytes));
        Arc::new(Raw::open(s).unwrap())
    }

    #[test]
    fn reads_across_parts() {
        let c = Concat::new(vec![
            raw("a", vec![1; 1024]),
            raw("e", vec![]),
            raw("b", vec![2; 512]),
        ])
        .unwrap();
        assert_eq!(c.size(), 1536);
        let mut buf = [0u8; 10];
        c.read_at(&mut buf, 1019).unwrap();
        assert_eq!(buf, [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
        let st = c.block_status(1014, 100).unwrap();
        assert_eq!(st.len, 10);
        assert!(c.read_at(&mut buf, 1530).is_err());
        assert!(Concat::new(vec![]).is_err());
    }
}
