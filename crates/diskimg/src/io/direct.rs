//! The O_DIRECT descriptor of a [`super::FileStorage`] opened in a direct
//! cache mode, with the alignment the file system asks of it.
//!
//! This type only moves requests that O_DIRECT accepts: offset and length
//! multiples of [`Direct::block`], and memory aligned to the file system's
//! memory alignment (otherwise through a bounce buffer of at most
//! [`BOUNCE_MAX`] bytes a step). Which requests come here, and why mixing
//! them with buffered ones stays coherent, is decided and written down in
//! `file.rs`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;

use super::aligned::AlignedBuf;
use crate::{Error, ErrorKind, Result};

/// The largest bounce buffer one step of a memory-misaligned request uses.
pub const BOUNCE_MAX: usize = 1 << 20;

/// The largest alignment diskimg honours; a file system asking more gets
/// no direct requests at all (everything goes through the buffered
/// descriptor, which stays correct).
const MAX_ALIGN: u64 = 1 << 20;

/// An O_DIRECT descriptor and its alignments.
#[derive(Debug)]
pub struct Direct {
    file: File,
    /// Offset and length granularity of direct requests: the file system's
    /// offset alignment, at least the page size (see `file.rs`).
    block: u64,
    /// Memory alignment direct requests need.
    mem_align: usize,
}

impl Direct {
    /// Opens the file behind `buffered` (an open descriptor of `name`)
    /// again, with O_DIRECT. Through /proc/self/fd when it can, so that it
    /// is the same inode even if the path was replaced since; else by
    /// `path`. A file system without O_DIRECT gives QEMU's message.
    pub fn open(
        buffered: &File,
        path: &std::path::Path,
        name: &str,
        writable: bool,
    ) -> Result<Self> {
        let open = |p: &std::path::Path| {
            OpenOptions::new()
                .read(true)
                .write(writable)
                .custom_flags(libc::O_DIRECT)
                .open(p)
        };
        let proc = format!("/proc/self/fd/{}", buffered.as_raw_fd());
        let opened = match open(std::path::Path::new(&proc)) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => open(path),
            r => r,
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // The buffered open of the same file worked: O_DIRECT is
                // what the file system refuses (QEMU's qemu_open wording).
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("Could not open '{name}': filesystem does not support O_DIRECT"),
                ));
            }
            Err(e) => return Err(Error::io(e, format!("Could not open '{name}'"))),
        };
        let (offset_align, mem_align) = probe_alignment(&file);
        let block = offset_align.max(page_size());
        Ok(Direct {
            file,
            block,
            mem_align,
        })
    }

    /// The offset and length granularity of direct requests.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// The memory alignment direct requests need.
    pub fn mem_align(&self) -> usize {
        self.mem_align
    }

    /// The descriptor (for tests that check its flags).
    #[cfg(test)]
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether `len` bytes at `offset` may go through O_DIRECT: both
    /// multiples of the block, and not empty.
    pub fn fits(&self, offset: u64, len: usize) -> bool {
        self.block <= MAX_ALIGN
            && len != 0
            && offset.is_multiple_of(self.block)
            && (len as u64).is_multiple_of(self.block)
    }

    fn aligned(&self, p: *const u8) -> bool {
        (p as usize).is_multiple_of(self.mem_align)
    }

    /// The bounce step for a request of `len` bytes: a multiple of the block.
    fn step(&self, len: usize) -> usize {
        let max = (BOUNCE_MAX as u64 / self.block).max(1) * self.block;
        len.min(max as usize)
    }

    /// One pread of a request that [`fits`](Self::fits); returns the bytes
    /// read (fewer at the end of the file, 0 past it).
    pub fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if self.aligned(buf.as_ptr()) {
            return self.file.read_at(buf, offset);
        }
        let mut bounce = AlignedBuf::new(self.step(buf.len()), self.mem_align);
        let n = self.file.read_at(&mut bounce, offset)?;
        buf[..n].copy_from_slice(&bounce[..n]);
        Ok(n)
    }

    /// One pwrite of a request that [`fits`](Self::fits); returns the bytes
    /// written.
    pub fn write(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        if self.aligned(buf.as_ptr()) {
            return self.file.write_at(buf, offset);
        }
        let step = self.step(buf.len());
        let mut bounce = AlignedBuf::new(step, self.mem_align);
        bounce.copy_from_slice(&buf[..step]);
        self.file.write_at(&bounce, offset)
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// The offset and memory alignment O_DIRECT needs on `file`: what statx
/// reports (STATX_DIOALIGN) when the kernel knows, else probed as QEMU
/// probes, by reading at offset 0 with growing sizes (512 to 4096) until
/// the file system accepts one; memory then aligned to 4096.
fn probe_alignment(file: &File) -> (u64, usize) {
    if let Some(a) = statx_dioalign(file) {
        return a;
    }
    let mut buf = AlignedBuf::new(4096, 4096);
    for size in [512usize, 1024, 2048, 4096] {
        match file.read_at(&mut buf[..size], 0) {
            Ok(_) => return (size as u64, 4096),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            // Another error says nothing about alignment: be safe.
            Err(_) => break,
        }
    }
    (4096, 4096)
}

fn statx_dioalign(file: &File) -> Option<(u64, usize)> {
    // SAFETY: statx is plain data; zero is a valid value for every field.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with
    // AT_EMPTY_PATH, and a pointer to a statx we own.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    let (off, mem) = (stx.stx_dio_offset_align, stx.stx_dio_mem_align);
    if off == 0 || mem == 0 {
        // The file system supports no direct I/O for this file after all;
        // the open would have failed, so this is a kernel we do not
        // understand: probe instead.
        return None;
    }
    Some((u64::from(off), mem as usize))
}
