//! Guest I/O on the open image with the block layer's checks: a request
//! must lie within the image (else EIO, as QEMU's blk_check_byte_request),
//! failures become errno texts, writes are flushed when the image is in
//! write-through mode.

use std::time::{Duration, Instant};

use diskimg::ErrorKind;

use super::session::{errno_text, Image, Session};

/// Why a request failed: the errno text qemu-io prints after
/// `read failed: `.
pub type IoError = String;

const EIO: &str = "Input/output error";

/// Checks that `[offset, offset + bytes)` lies within the image.
pub fn check_request(img: &Image, offset: u64, bytes: u64) -> Result<(), IoError> {
    let len = img.dev.size();
    if offset > len || len - offset < bytes {
        return Err(EIO.to_string());
    }
    Ok(())
}

/// The errno text for a library error. An `Unsupported` error is a
/// feature diskimg lacks: its message, which names the feature, also goes
/// to stderr, since the errno text alone would not say what is missing.
fn failed(s: &Session, e: &diskimg::Error) -> IoError {
    if e.kind() == ErrorKind::Unsupported {
        s.error(e.message());
    }
    errno_text(e)
}

/// A buffer of `len` bytes of `fill`, or ENOMEM.
pub fn buffer(len: u64, fill: u8) -> Result<Vec<u8>, IoError> {
    let n = usize::try_from(len).map_err(|_| "Cannot allocate memory".to_string())?;
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| "Cannot allocate memory".to_string())?;
    v.resize(n, fill);
    Ok(v)
}

/// Reads `buf.len()` bytes at `offset`.
pub fn read(s: &Session, img: &Image, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
    check_request(img, offset, buf.len() as u64)?;
    if buf.is_empty() {
        return Ok(());
    }
    img.dev.read_at(buf, offset).map_err(|e| failed(s, &e))
}

/// Flushes when the image writes through or `fua` asks for it.
fn settle(s: &Session, img: &Image, fua: bool) -> Result<(), IoError> {
    if fua || img.flags.writethrough {
        img.dev.flush().map_err(|e| failed(s, &e))?;
    }
    Ok(())
}

/// On a probed raw image, refuses (EPERM) a write that would make the
/// first sector probe as another format, as QEMU's raw driver does.
fn guard_first_sector(img: &Image, buf: &[u8], offset: u64) -> Result<(), IoError> {
    if !img.probed_raw || offset >= 512 || buf.is_empty() {
        return Ok(());
    }
    let mut head = vec![0u8; 512];
    let have = img.dev.size().min(512) as usize;
    img.dev
        .read_at(&mut head[..have], 0)
        .map_err(|e| errno_text(&e))?;
    let start = offset as usize;
    let n = buf.len().min(512 - start);
    head[start..start + n].copy_from_slice(&buf[..n]);
    let probe = diskimg::io::MemoryStorage::from_bytes("first sector", head);
    match diskimg::format::probe::probe(&probe) {
        Ok(diskimg::Format::Raw) => Ok(()),
        _ => Err("Operation not permitted".to_string()),
    }
}

/// Writes `buf` at `offset`.
pub fn write(s: &Session, img: &Image, buf: &[u8], offset: u64, fua: bool) -> Result<(), IoError> {
    check_request(img, offset, buf.len() as u64)?;
    guard_first_sector(img, buf, offset)?;
    if !buf.is_empty() {
        img.dev.write_at(buf, offset).map_err(|e| failed(s, &e))?;
    }
    settle(s, img, fua)
}

/// Writes `buf` compressed at `offset`. Formats without compression
/// refuse (ENOTSUP), as raw does in QEMU.
///
/// For qcow2 this follows QEMU's rules: the offset must start a cluster
/// and the length be whole clusters unless the request ends the image
/// (else EINVAL); a longer request is written cluster by cluster; and a
/// compressed write never replaces a cluster the image already holds
/// ("Compression can't overwrite anything": EIO). The library would
/// overwrite; qemu-io's refusal is kept here on purpose.
pub fn write_compressed(s: &Session, img: &Image, buf: &[u8], offset: u64) -> Result<(), IoError> {
    check_request(img, offset, buf.len() as u64)?;
    let info = img.dev.info();
    let cluster = match info.cluster_size {
        Some(c) if info.format == "qcow2" && c > 0 => c,
        _ => {
            return img
                .dev
                .write_compressed(buf, offset)
                .map_err(|e| failed(s, &e))
        }
    };
    if let Some(diskimg::format::FormatSpecific::Qcow2(q)) = &info.specific {
        if q.data_file.is_some() {
            return Err("Operation not supported".to_string());
        }
    }
    let len = buf.len() as u64;
    if !offset.is_multiple_of(cluster)
        || (!len.is_multiple_of(cluster) && offset + len != img.dev.size())
    {
        return Err("Invalid argument".to_string());
    }
    let step = usize::try_from(cluster).unwrap_or(usize::MAX);
    let mut at = offset;
    for chunk in buf.chunks(step) {
        let st = img
            .dev
            .block_status(at, chunk.len() as u64)
            .map_err(|e| failed(s, &e))?;
        if st.allocated && (st.data || st.offset.is_some()) {
            return Err(EIO.to_string());
        }
        img.dev
            .write_compressed(chunk, at)
            .map_err(|e| failed(s, &e))?;
        at += chunk.len() as u64;
    }
    Ok(())
}

/// Writes zeros over `[offset, offset + len)`, deallocating when `unmap`.
pub fn write_zeroes(
    s: &Session,
    img: &Image,
    offset: u64,
    len: u64,
    unmap: bool,
    fua: bool,
) -> Result<(), IoError> {
    check_request(img, offset, len)?;
    if len > 0 {
        img.dev
            .write_zeroes(offset, len, unmap)
            .map_err(|e| failed(s, &e))?;
    }
    settle(s, img, fua)
}

/// Discards `[offset, offset + len)`; does nothing when discards are
/// ignored (`-d ignore`), as QEMU without BDRV_O_UNMAP.
pub fn discard(s: &Session, img: &Image, offset: u64, len: u64) -> Result<(), IoError> {
    check_request(img, offset, len)?;
    if len == 0 || !img.flags.unmap {
        return Ok(());
    }
    img.dev.discard(offset, len).map_err(|e| failed(s, &e))
}

/// Times an operation.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}
