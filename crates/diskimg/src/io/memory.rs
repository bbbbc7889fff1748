//! An in-memory storage, for tests and for building images in memory.

use std::sync::RwLock;

use super::Storage;
use crate::{Error, Result};

/// A storage held in memory. Grows on writes past its end.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    name: String,
    bytes: RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemoryStorage {
    /// An empty writable storage called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        MemoryStorage {
            name: name.into(),
            bytes: RwLock::new(Vec::new()),
            read_only: false,
        }
    }

    /// A read-only storage holding `bytes`.
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Self {
        MemoryStorage {
            name: name.into(),
            bytes: RwLock::new(bytes),
            read_only: true,
        }
    }

    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::read_only(format!("'{}' is read-only", self.name)));
        }
        Ok(())
    }
}

fn end_of(offset: u64, len: usize, name: &str) -> Result<usize> {
    offset
        .checked_add(len as u64)
        .and_then(|e| usize::try_from(e).ok())
        .ok_or_else(|| Error::invalid_argument(format!("offset {offset} out of range in '{name}'")))
}

impl Storage for MemoryStorage {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> Result<u64> {
        Ok(self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        buf.fill(0);
        if offset < bytes.len() as u64 {
            let start = offset as usize;
            let n = buf.len().min(bytes.len() - start);
            buf[..n].copy_from_slice(&bytes[start..start + n]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        let end = end_of(offset, buf.len(), &self.name)?;
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.check_writable()?;
        let len = end_of(len, 0, &self.name)?;
        self.bytes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len, 0);
        Ok(())
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        let size = bytes.len() as u64;
        let start = offset.min(size) as usize;
        let end = offset.saturating_add(len).min(size) as usize;
        bytes[start..end].fill(0);
        Ok(())
    }

    fn allocated_size(&self) -> Result<u64> {
        self.len()
    }

    fn is_writable(&self) -> bool {
        !self.read_only
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_zero() {
        let s = MemoryStorage::from_bytes("m", vec![1, 2, 3]);
        let mut buf = [9u8; 5];
        s.read_at(&mut buf, 1).unwrap();
        assert_eq!(buf, [2, 3, 0, 0, 0]);
        s.read_at(&mut buf, 100).unwrap();
        assert_eq!(buf, [0; 5]);
    }

    #[test]
    fn writes_grow_and_read_only_refuses() {
        let s = MemoryStorage::new("m");
        s.write_at(&[7, 7], 3).unwrap();
        assert_eq!(s.to_vec(), vec![0, 0, 0, 7, 7]);
        let r = MemoryStorage::from_bytes("r", vec![]);
        assert!(r.write_at(&[1], 0).is_err());
    }
}
