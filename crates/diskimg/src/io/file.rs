//! A storage backed by a host file, through positional I/O (pread/pwrite), so
//! that any number of threads can read and write at once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{HostExtent, Storage};
use crate::{Error, Result};

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only.
    ReadOnly,
    /// Read and write an existing file.
    ReadWrite,
}

/// A host file used through positional I/O.
#[derive(Debug)]
pub struct FileStorage {
    name: String,
    path: PathBuf,
    file: File,
    writable: bool,
}

impl FileStorage {
    /// Opens `path`; `name` is how messages call it (usually the path as given).
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let writable = mode == OpenMode::ReadWrite;
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(e, format!("Could not open '{name}'")))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(e, format!("Could not open '{name}'")))?;
        if meta.is_dir() {
            return Err(Error::invalid_argument(format!(
                "'file' driver requires '{name}' to be a regular file"
            )));
        }
        Ok(FileStorage {
            name,
            path: path.to_path_buf(),
            file,
            writable,
        })
    }

    /// Creates (or truncates) `path` and opens it for writing.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io(e, format!("Could not create '{name}'")))?;
        Ok(FileStorage {
            name,
            path: path.to_path_buf(),
            file,
            writable: true,
        })
    }

    /// The path the file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn seek(&self, offset: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
        // lseek moves the shared file position, which this type never uses:
        // all data I/O is positional, so concurrent calls are harmless.
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: plain system call on a descriptor we own.
        let r = unsafe { libc::lseek(self.file.as_raw_fd(), off, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(r as u64))
    }
}

impl Storage for FileStorage {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io(e, format!("stat '{}'", self.name)))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::io(
                        e,
                        format!("reading '{}' at offset {}", self.name, offset + done as u64),
                    ))
                }
            }
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if !self.writable {
            return Err(Error::read_only(format!(
                "'{}' is opened read-only",
                self.name
            )));
        }
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| Error::io(e, format!("writing '{}' at offset {}", self.name, offset)))
    }

    fn flush(&self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io(e, format!("flushing '{}'", self.name)))
    }

    fn set_len(&self, len: u64) -> Result<()> {
        self.file
            .set_len(len)
            .map_err(|e| Error::io(e, format!("resizing '{}' to {} bytes", self.name, len)))
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(Error::invalid_argument(format!(
                "discard range {offset}+{len} out of range in '{}'",
                self.name
            )));
        };
        // SAFETY: plain system call on a descriptor we own.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // No hole punching here: write zeros so the range still reads as zeros.
            let zeros = vec![0u8; 1 << 20];
            let end = offset.saturating_add(len).min(self.len()?);
            let mut pos = offset;
            while pos < end {
                let n = (end - pos).min(zeros.len() as u64) as usize;
                self.write_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            return Ok(());
        }
        Err(Error::io(
            e,
            format!("punching a hole in '{}' at offset {}", self.name, offset),
        ))
    }

    fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(Error::invalid_argument(format!(
                "allocation range {offset}+{len} out of range in '{}'",
                self.name
            )));
        };
        // SAFETY: plain system call on a descriptor we own.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, off, l) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            // No fallocate here: write zeros over what is not yet in the file.
            let zeros = vec![0u8; 1 << 20];
            let end = offset.saturating_add(len);
            let mut pos = offset.max(self.len()?);
            while pos < end {
                let n = (end - pos).min(zeros.len() as u64) as usize;
                self.write_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            return Ok(());
        }
        Err(Error::io(
            e,
            format!("allocating space in '{}' at offset {}", self.name, offset),
        ))
    }

    fn allocated_size(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.blocks() * 512)
            .map_err(|e| Error::io(e, format!("stat '{}'", self.name)))
    }

    fn is_writable(&self) -> bool {
        self.writable
    }

    fn host_extent(&self, offset: u64, max_len: u64) -> Result<HostExtent> {
        let ctx = || {
            format!(
                "querying allocation of '{}' at offset {}",
                self.name, offset
            )
        };
        let all_data = HostExtent {
            len: max_len,
            data: true,
        };
        let data = match self.seek(offset, libc::SEEK_DATA) {
            Ok(d) => d,
            // A file system without SEEK_DATA: say everything is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(all_data),
            Err(e) => return Err(Error::io(e, ctx())),
        };
        match data {
            // No data at or after offset: a hole to the end of the file.
            None => Ok(HostExtent {
                len: max_len,
                data: false,
            }),
            Some(d) if d > offset => Ok(HostExtent {
                len: (d - offset).min(max_len),
                data: false,
            }),
            Some(_) => {
                let hole = self
                    .seek(offset, libc::SEEK_HOLE)
                    .map_err(|e| Error::io(e, ctx()))?;
                let end = hole.unwrap_or(offset + max_len);
                Ok(HostExtent {
                    len: end.saturating_sub(offset).clamp(1, max_len.max(1)),
                    data: true,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_file_reports_holes_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let s = FileStorage::create(&p).unwrap();
        s.set_len(4 << 20).unwrap();
        s.write_at(&[1u8; 4096], 1 << 20).unwrap();
        let e = s.host_extent(0, 4 << 20).unwrap();
        assert!(!e.data);
        assert_eq!(e.len, 1 << 20);
        let e = s.host_extent(1 << 20, 3 << 20).unwrap();
        assert!(e.data);
        assert!(e.len >= 4096);
        let mut buf = [7u8; 8];
        s.read_at(&mut buf, (4 << 20) - 4).unwrap();
        assert_eq!(buf, [0; 8]);
    }

    #[test]
    fn missing_file_names_it() {
        let e = FileStorage::open("/nonexistent/x.qcow2", OpenMode::ReadOnly).unwrap_err();
        assert_eq!(
            e.message(),
            "Could not open '/nonexistent/x.qcow2': No such file or directory"
        );
    }
}
