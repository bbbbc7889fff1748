//! Copying an image (through its chain) into a raw, sparse target, or into
//! an image opened for writing (qcow2 through its own write path).
//!
//! The source is walked with [`status_above`]: ranges that read as zeros
//! are not read at all; data ranges are read in chunks by several worker
//! threads at once and written at the same offsets. Inside data chunks,
//! granules of `sparse_size` bytes (aligned to the guest offset) that are all
//! zeros are not written, so the target stays sparse. When the target is not
//! known to read as zeros (an existing target without `--target-is-zero`),
//! zero ranges are punched (or written as zeros where punching is not
//! possible). With `sparse_size == 0` everything is written, zeros included,
//! so the target is fully allocated.
//!
//! Image targets: zero ranges are left alone on a new target and written
//! as zero writes otherwise; with `compress` every data cluster goes
//! through the target's compressed write (jobs are aligned to its clusters,
//! and each worker compresses on its own core); with `copy_top_only` (a
//! target with a backing file, `-B`) only what the source's top layer holds
//! is copied: its unallocated ranges stay unallocated in the target, and
//! its zeros become zero writes.
//!
//! Threads: without compression, the workers only read and look for zeros;
//! one writing thread (the calling one) makes every write to the target, so
//! the target's lock in the kernel passes from write to write without a
//! thread hand-off. With compression each worker compresses and writes its
//! own clusters.
//!
//! Memory: one or two chunk buffers per worker, whatever the image size.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::status::status_above;
use crate::io::{AlignedBuf, Storage, BUFFERED_WRITE_MAX};
use crate::{BlockDevice, Error, Result};

/// Bytes read per request by one worker.
pub const CHUNK: u64 = 2 << 20;
/// The largest write to the target, as a file storage splits buffered
/// writes (see [`BUFFERED_WRITE_MAX`]); the sink splits them itself so that
/// any target, and the reservation before each write, sees pieces this
/// size.
const WRITE_PIECE: usize = BUFFERED_WRITE_MAX;
/// Largest range of zeros handled as one request.
const ZERO_CHUNK: u64 = 1 << 30;
/// The most worker threads (qemu-img's limit on `-m`).
pub const MAX_WORKERS: usize = 16;

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Granule of zero detection in bytes; 0 writes everything.
    pub sparse_size: u64,
    /// Requests in flight (worker threads), 1..=16; at most twice the
    /// number of CPUs run at once.
    pub workers: usize,
    /// Writes may complete in any order (`-W`). Raw targets are written at
    /// fixed offsets, so this only lifts an ordering qemu-img keeps for
    /// formats that allocate on write.
    pub out_of_order: bool,
    /// The target already reads as zeros everywhere (a file just created, or
    /// `--target-is-zero`): zero ranges need no writes.
    pub target_is_zero: bool,
    /// Write data clusters compressed (image targets that can compress).
    pub compress: bool,
    /// Copy only the source's top layer (the target has a backing file that
    /// holds the rest).
    pub copy_top_only: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            sparse_size: 4096,
            workers: 8,
            out_of_order: false,
            target_is_zero: true,
            compress: false,
            copy_top_only: false,
        }
    }
}

impl ConvertOptions {
    /// Whether a range that reads as zeros needs no write: the target
    /// already reads as zeros there and is not an overlay (whose backing
    /// file would show through).
    fn zeros_are_free(&self) -> bool {
        self.target_is_zero && !self.copy_top_only
    }
}

/// Whether `buf` holds only zero bytes.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets
    // the aligned middle of the byte slice.
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0)
        && tail.iter().all(|&b| b == 0)
        && body
            .chunks(8)
            .all(|c| c.iter().fold(0u128, |acc, &w| acc | w) == 0)
}

/// Where converted data goes.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// A raw file, written at the guest offsets.
    Raw(&'a dyn Storage),
    /// An image opened for writing.
    Image(&'a Arc<dyn BlockDevice>),
}

/// The target, with writes serialised: buffered writes to one file take
/// the inode lock in the kernel anyway, and several threads contending for
/// it there spin and burn CPU time. An uncompressed convert writes from one
/// thread only (`write_all`), so the lock is then uncontended; compressing
/// workers write their own clusters and queue here.
struct Sink<'a> {
    target: Target<'a>,
    lock: Mutex<()>,
}

impl Sink<'_> {
    /// Writes `buf` at `offset` in pieces of at most [`WRITE_PIECE`] bytes.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let mut at = offset;
        for piece in buf.chunks(WRITE_PIECE) {
            self.write_piece(piece, at)?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    fn write_piece(&self, buf: &[u8], offset: u64) -> Result<()> {
        match self.target {
            Target::Raw(dst) => {
                let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                // Reserve the run first (fallocate), then write it: ext4
                // then maps the pages to blocks already there instead of
                // reserving delayed allocation for each one, and the write
                // (the critical path: writes to one file are serialised)
                // costs less. Measured on a 4 GiB qcow2 to raw (workload a,
                // 8 interleaved runs each): median 0.50 s against 0.66 s.
                // Only the runs written are reserved, so holes stay holes;
                // where the file system cannot reserve, nothing is done.
                // qcow2 targets do the same for the clusters they add
                // (`write_new_clusters` in format/qcow2/writer.rs).
                dst.reserve(offset, buf.len() as u64)?;
                dst.write_at(buf, offset)
            }
            // Image targets too: their data writes go to one file, where
            // concurrent writers spin on the inode lock (measured: a third
            // of the CPU time of a chain flatten). Compressed writes are not
            // serialised: they compress before they write.
            Target::Image(dev) => {
                let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                dev.write_at(buf, offset)
            }
        }
    }

    /// Makes a range of a target that may hold data read as zeros.
    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        match self.target {
            Target::Raw(dst) => {
                let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
                dst.punch_hole(offset, len)
            }
            Target::Image(dev) => {
                let len = len.min(dev.size().saturating_sub(offset));
                dev.write_zeroes(offset, len, true)
            }
        }
    }
}

/// One unit of work.
#[derive(Debug, Clone, Copy)]
enum Job {
    /// Read `len` bytes at `offset` and write them.
    Data { offset: u64, len: u64 },
    /// `[offset, offset + len)` reads as zeros.
    Zero { offset: u64, len: u64 },
    /// `[offset, offset + len)` is left to the target's backing file.
    Skip { len: u64 },
}

/// Hands out jobs in guest order, walking the source status lazily.
struct Cursor {
    offset: u64,
    size: u64,
    /// The current status extent: (end, kind).
    extent: Option<(u64, Kind)>,
    /// Only the top layer counts (`-B`).
    top_only: bool,
    /// Jobs start and end on multiples of this (compressed targets).
    align: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Zero,
    Skip,
}

impl Cursor {
    fn next(&mut self, src: &Arc<dyn BlockDevice>) -> Result<Option<Job>> {
        if self.offset >= self.size {
            return Ok(None);
        }
        let (end, kind) = match self.extent {
            Some((end, kind)) if end > self.offset => (end, kind),
            _ => {
                let what = |e: Error| {
                    e.context(format!(
                        "error while reading block status at offset {}",
                        self.offset
                    ))
                };
                let (len, kind) = if self.top_only {
                    let st = src
                        .block_status(self.offset, self.size - self.offset)
                        .map_err(what)?;
                    let kind = if !st.allocated {
                        Kind::Skip
                    } else if st.zero && !st.data {
                        Kind::Zero
                    } else {
                        Kind::Data
                    };
                    (st.len, kind)
                } else {
                    let st =
                        status_above(src, self.offset, self.size - self.offset).map_err(what)?;
                    let kind = if st.zero && !st.data {
                        Kind::Zero
                    } else {
                        Kind::Data
                    };
                    (st.len, kind)
                };
                let end = self.offset + len;
                self.extent = Some((end, kind));
                (end, kind)
            }
        };
        let offset = self.offset;
        let a = self.align;
        // With alignment, a zero or skipped range shorter than one unit
        // after rounding is copied as data.
        let aligned_end = if a > 1 { end - (end - offset) % a } else { end };
        let kind = if kind != Kind::Data && aligned_end == offset {
            Kind::Data
        } else {
            kind
        };
        let job = match kind {
            Kind::Zero => Job::Zero {
                offset,
                len: (aligned_end - offset).min(ZERO_CHUNK),
            },
            Kind::Skip => Job::Skip {
                len: (aligned_end - offset).min(ZERO_CHUNK),
            },
            Kind::Data => {
                // Chunks aligned to CHUNK keep sparse granules aligned too.
                let boundary = (offset / CHUNK + 1) * CHUNK;
                let mut stop = end.min(boundary);
                if a > 1 {
                    stop = stop
                        .div_ceil(a)
                        .saturating_mul(a)
                        .min(self.size)
                        .min(boundary.max(offset + a));
                }
                Job::Data {
                    offset,
                    len: stop - offset,
                }
            }
        };
        self.offset += match job {
            Job::Data { len, .. } | Job::Zero { len, .. } | Job::Skip { len } => len,
        };
        Ok(Some(job))
    }
}

/// Copies every guest byte of `src` into `dst` at the same offset. `dst`
/// must be at least `src.size()` bytes long already. `progress` is called
/// now and then with (bytes done, total) from the calling thread. Errors say
/// what failed where, in qemu-img's words (`error while reading at byte N:
/// ...`).
pub fn convert(
    src: &Arc<dyn BlockDevice>,
    dst: Target<'_>,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let size = src.size();
    // More threads than about twice the CPUs only contend for the same
    // target file in the kernel: measured on 2 cores, 16 threads took twice
    // as long as 2 or 4 (convert of a 4 GiB qcow2 into the page cache).
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = opts.workers.clamp(1, MAX_WORKERS).min(2 * cpus);
    if !opts.sparse_size.is_multiple_of(512) {
        return Err(Error::invalid_argument(format!(
            "sparse size {} is not a multiple of 512",
            opts.sparse_size
        )));
    }
    let align = match (dst, opts.compress) {
        (Target::Image(dev), true) => dev
            .compression_unit()
            .ok_or_else(|| Error::unsupported("Compression not supported for this file format"))?,
        (Target::Raw(_), true) => {
            return Err(Error::unsupported(
                "Compression not supported for this file format",
            ))
        }
        _ => 1,
    };
    let cursor = Mutex::new(Cursor {
        offset: 0,
        size,
        extent: None,
        top_only: opts.copy_top_only,
        align,
    });
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let record = |e: Error| {
        failed.store(true, Ordering::SeqCst);
        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
    };
    let sink = Sink {
        target: dst,
        lock: Mutex::new(()),
    };
    let dst = &sink;
    let ctx = WorkerCtx {
        src,
        dst,
        opts,
        align,
        cursor: &cursor,
        done: &done,
        failed: &failed,
    };
    // Buffers each worker owns: two let a worker read its next chunk while
    // the writer still holds its last one; from four workers on the others
    // keep the writer busy, and one each bounds memory with many workers.
    let per_worker = if workers >= 4 { 1 } else { 2 };
    progress(0, size);
    std::thread::scope(|scope| {
        if opts.compress {
            // Compressing workers write their own clusters; the calling
            // thread reports progress until they all end.
            let (ended_tx, ended_rx) = mpsc::channel::<()>();
            for _ in 0..workers {
                let ended_tx = ended_tx.clone();
                let ctx = &ctx;
                let record = &record;
                scope.spawn(move || {
                    if let Err(e) = compressing_worker(ctx) {
                        record(e);
                    }
                    let _ = ended_tx.send(());
                });
            }
            drop(ended_tx);
            // Ends when every worker has ended and dropped its sender.
            while !matches!(
                ended_rx.recv_timeout(Duration::from_millis(50)),
                Err(RecvTimeoutError::Disconnected)
            ) {
                progress(done.load(Ordering::Relaxed), size);
            }
        } else {
            let (to_writer, writes) = mpsc::sync_channel::<Write>(workers);
            for _ in 0..workers {
                let to_writer = to_writer.clone();
                let ctx = &ctx;
                let record = &record;
                scope.spawn(move || {
                    if let Err(e) = reading_worker(ctx, &to_writer, per_worker) {
                        record(e);
                    }
                });
            }
            drop(to_writer);
            write_all(&ctx, &writes, &record, &mut |d| progress(d, size));
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    progress(size, size);
    Ok(())
}

/// What every worker shares.
struct WorkerCtx<'a, 's> {
    src: &'a Arc<dyn BlockDevice>,
    dst: &'a Sink<'s>,
    opts: &'a ConvertOptions,
    /// Jobs start and end on multiples of this (compressed targets).
    align: u64,
    cursor: &'a Mutex<Cursor>,
    /// Guest bytes handled, for progress.
    done: &'a AtomicU64,
    /// Set at the first error: every thread stops taking work.
    failed: &'a AtomicBool,
}

impl WorkerCtx<'_, '_> {
    /// The next job, or None when the source is walked or a thread failed.
    fn next_job(&self) -> Result<Option<Job>> {
        if self.failed.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let mut c = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        c.next(self.src)
    }
}

/// A request for the writing thread.
enum Write {
    /// `buf[..len]` holds the guest bytes at `offset`; `runs` cover them in
    /// order, each `(start, end, all zeros)` in guest offsets. The buffer
    /// goes back to its worker through `back` once written.
    Chunk {
        buf: AlignedBuf,
        offset: u64,
        len: u64,
        runs: Vec<(u64, u64, bool)>,
        back: Sender<AlignedBuf>,
    },
    /// `[offset, offset + len)` of the source reads as zeros.
    Zeros { offset: u64, len: u64 },
}

/// A worker of an uncompressed convert: reads data chunks, finds their
/// zero granules, and hands them to the writing thread.
fn reading_worker(
    ctx: &WorkerCtx<'_, '_>,
    to_writer: &SyncSender<Write>,
    buffers: usize,
) -> Result<()> {
    let (back_tx, back_rx) = mpsc::channel::<AlignedBuf>();
    let mut spare: Vec<AlignedBuf> = (0..buffers).map(|_| AlignedBuf::new(0, PAGE)).collect();
    while let Some(job) = ctx.next_job()? {
        let msg = match job {
            Job::Skip { len } => {
                ctx.done.fetch_add(len, Ordering::Relaxed);
                continue;
            }
            Job::Zero { offset, len } => {
                if ctx.opts.sparse_size != 0 && ctx.opts.zeros_are_free() {
                    ctx.done.fetch_add(len, Ordering::Relaxed);
                    continue;
                }
                Write::Zeros { offset, len }
            }
            Job::Data { offset, len } => {
                let mut buf = match spare.pop() {
                    Some(b) => b,
                    // The writer hands every buffer back, even after a
                    // failure; it ends only once the workers have.
                    None => match back_rx.recv() {
                        Ok(b) => b,
                        Err(_) => return Ok(()),
                    },
                };
                let n = len as usize;
                grow(&mut buf, n);
                ctx.src
                    .read_at(&mut buf[..n], offset)
                    .map_err(|e| e.context(format!("error while reading at byte {offset}")))?;
                let runs = data_runs(ctx.opts.sparse_size, offset, &buf[..n]);
                Write::Chunk {
                    buf,
                    offset,
                    len,
                    runs,
                    back: back_tx.clone(),
                }
            }
        };
        if to_writer.send(msg).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The writing thread of an uncompressed convert: makes every write the
/// workers hand it, in the order they arrive, and reports progress every
/// 50 ms. After a failure it only hands buffers back until the workers end.
fn write_all(
    ctx: &WorkerCtx<'_, '_>,
    writes: &Receiver<Write>,
    record: &dyn Fn(Error),
    progress: &mut dyn FnMut(u64),
) {
    let mut zeros = AlignedBuf::new(0, PAGE);
    let mut reported = Instant::now();
    loop {
        match writes.recv_timeout(Duration::from_millis(50)) {
            Ok(msg) => {
                let (offset, len) = match &msg {
                    Write::Chunk { offset, len, .. } | Write::Zeros { offset, len } => {
                        (*offset, *len)
                    }
                };
                if !ctx.failed.load(Ordering::Relaxed) {
                    let r = match &msg {
                        Write::Chunk { buf, runs, .. } => {
                            let data = &buf[..len as usize];
                            runs.iter().try_for_each(|&(start, end, zero)| {
                                write_run(ctx.dst, ctx.opts, offset, data, start, end, zero)
                            })
                        }
                        Write::Zeros { .. } => {
                            write_zeros(ctx.dst, ctx.opts, offset, len, &mut zeros)
                        }
                    };
                    match r {
                        Ok(()) => {
                            ctx.done.fetch_add(len, Ordering::Relaxed);
                        }
                        Err(e) => {
                            record(e.context(format!("error while writing at byte {offset}")))
                        }
                    }
                }
                if let Write::Chunk { buf, back, .. } = msg {
                    let _ = back.send(buf);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            // Every worker has ended.
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if reported.elapsed() >= Duration::from_millis(50) {
            progress(ctx.done.load(Ordering::Relaxed));
            reported = Instant::now();
        }
    }
}

/// A worker of a compressed convert: reads, compresses and writes its own
/// chunks, cluster by cluster.
fn compressing_worker(ctx: &WorkerCtx<'_, '_>) -> Result<()> {
    let mut buf = AlignedBuf::new(0, PAGE);
    while let Some(job) = ctx.next_job()? {
        match job {
            Job::Skip { len } => {
                ctx.done.fetch_add(len, Ordering::Relaxed);
            }
            Job::Zero { offset, len } => {
                write_zeros(ctx.dst, ctx.opts, offset, len, &mut buf)
                    .map_err(|e| e.context(format!("error while writing at byte {offset}")))?;
                ctx.done.fetch_add(len, Ordering::Relaxed);
            }
            Job::Data { offset, len } => {
                let n = len as usize;
                grow(&mut buf, n);
                let data = &mut buf[..n];
                ctx.src
                    .read_at(data, offset)
                    .map_err(|e| e.context(format!("error while reading at byte {offset}")))?;
                write_compressed(ctx.dst, ctx.opts, offset, data, ctx.align)
                    .map_err(|e| e.context(format!("error while writing at byte {offset}")))?;
                ctx.done.fetch_add(len, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Alignment of the worker buffers: the kernel copies whole pages between
/// the page cache and a page-aligned buffer several times faster than to an
/// unaligned one, and O_DIRECT targets take them without a bounce buffer.
const PAGE: usize = 4096;

/// Makes `buf` hold at least `n` bytes (a worker's buffer only grows).
fn grow(buf: &mut AlignedBuf, n: usize) {
    if buf.len() < n {
        *buf = AlignedBuf::new(n, PAGE);
    }
}

/// Makes `[offset, offset + len)` of the target read as zeros.
fn write_zeros(
    dst: &Sink<'_>,
    opts: &ConvertOptions,
    offset: u64,
    len: u64,
    buf: &mut AlignedBuf,
) -> Result<()> {
    if opts.sparse_size == 0 {
        // Fully allocated output: real zeros on disk.
        let chunk = CHUNK.min(len) as usize;
        grow(buf, chunk);
        buf[..chunk].fill(0);
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(chunk as u64) as usize;
            dst.write_at(&buf[..n], pos)?;
            pos += n as u64;
        }
        return Ok(());
    }
    if opts.zeros_are_free() {
        return Ok(());
    }
    dst.zero(offset, len)
}

/// Writes a data chunk cluster by cluster through the target's compressed
/// write; zero clusters are not written (or zeroed, when the target may
/// hold something there).
fn write_compressed(
    dst: &Sink<'_>,
    opts: &ConvertOptions,
    offset: u64,
    data: &[u8],
    unit: u64,
) -> Result<()> {
    let Target::Image(dev) = dst.target else {
        return Err(Error::unsupported(
            "Compression not supported for this file format",
        ));
    };
    for (i, piece) in data.chunks(unit as usize).enumerate() {
        let at = offset + i as u64 * unit;
        if is_zero(piece) {
            if !opts.zeros_are_free() {
                dst.zero(at, piece.len() as u64)?;
            }
        } else {
            dev.write_compressed(piece, at)?;
        }
    }
    Ok(())
}

/// Splits a data chunk at `offset` into runs of zero and non-zero granules
/// of `sparse` bytes (aligned to the guest offset), each `(start, end, all
/// zeros)`; with `sparse == 0` the whole chunk is one data run.
fn data_runs(sparse: u64, offset: u64, data: &[u8]) -> Vec<(u64, u64, bool)> {
    let end = offset + data.len() as u64;
    if sparse == 0 {
        return vec![(offset, end, false)];
    }
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let next = ((pos / sparse) + 1).saturating_mul(sparse).min(end);
        let zero = is_zero(&data[(pos - offset) as usize..(next - offset) as usize]);
        match runs.last_mut() {
            Some(run) if run.2 == zero => run.1 = next,
            _ => runs.push((pos, next, zero)),
        }
        pos = next;
    }
    runs
}

/// Writes the run `[start, end)` of a chunk at `base`: the data, or for a
/// run of zeros nothing when the target already reads as zeros there.
fn write_run(
    dst: &Sink<'_>,
    opts: &ConvertOptions,
    base: u64,
    data: &[u8],
    start: u64,
    end: u64,
    zero: bool,
) -> Result<()> {
    if zero && opts.sparse_size != 0 {
        if opts.zeros_are_free() {
            return Ok(());
        }
        return dst.zero(start, end - start);
    }
    dst.write_at(&data[(start - base) as usize..(end - base) as usize], start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::raw::Raw;
    use crate::io::MemoryStorage;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 4097]));
        let mut v = vec![0u8; 70000];
        v[69999] = 1;
        assert!(!is_zero(&v));
        v[69999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn copies_every_byte() {
        let mut data = vec![0u8; 5 << 20];
        for (i, b) in data.iter_mut().enumerate().skip(4096).take(3 << 20) {
            *b = (i % 251) as u8;
        }
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes("src", data.clone()));
        let src: Arc<dyn BlockDevice> = Arc::new(Raw::open(s).unwrap());
        let dst = MemoryStorage::new("dst");
        dst.write_at(&vec![0xffu8; 5 << 20], 0).unwrap();
        let opts = ConvertOptions {
            target_is_zero: false,
            workers: 3,
            ..Default::default()
        };
        convert(&src, Target::Raw(&dst), &opts, &mut |_, _| {}).unwrap();
        assert!(dst.to_vec() == data);
    }

    /// Memory storage that fails every read (`reads`) or write touching
    /// bytes at or past `fail_from`, and records its largest write.
    struct Failing {
        inner: MemoryStorage,
        fail_from: u64,
        reads: bool,
        largest_write: AtomicU64,
    }

    impl Failing {
        fn check(&self, offset: u64, len: usize, reading: bool) -> Result<()> {
            if reading == self.reads && offset + len as u64 > self.fail_from {
                return Err(Error::io(
                    std::io::Error::from_raw_os_error(libc::EIO),
                    format!("test storage at offset {offset}"),
                ));
            }
            Ok(())
        }
    }

    impl Storage for Failing {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn len(&self) -> Result<u64> {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.check(offset, buf.len(), true)?;
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
            self.check(offset, buf.len(), false)?;
            self.largest_write
                .fetch_max(buf.len() as u64, Ordering::Relaxed);
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> Result<()> {
            self.inner.flush()
        }
        fn set_len(&self, len: u64) -> Result<()> {
            self.inner.set_len(len)
        }
        fn punch_hole(&self, offset: u64, len: u64) -> Result<()> {
            self.inner.punch_hole(offset, len)
        }
        fn allocated_size(&self) -> Result<u64> {
            self.inner.allocated_size()
        }
        fn is_writable(&self) -> bool {
            true
        }
    }

    fn patterned(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 | 1).collect()
    }

    /// Converts `src` into `dst` (made as long as `src`) with `workers`.
    fn convert_with(src: &Arc<dyn BlockDevice>, dst: &dyn Storage, workers: usize) -> Result<()> {
        dst.set_len(src.size()).unwrap();
        let opts = ConvertOptions {
            workers,
            ..Default::default()
        };
        convert(src, Target::Raw(dst), &opts, &mut |_, _| {})
    }

    #[test]
    fn a_failed_write_ends_the_convert_with_its_offset() {
        for workers in [1, 2, 4, 16] {
            let s: Arc<dyn Storage> =
                Arc::new(MemoryStorage::from_bytes("src", patterned(24 << 20)));
            let src: Arc<dyn BlockDevice> = Arc::new(Raw::open(s).unwrap());
            let dst = Failing {
                inner: MemoryStorage::new("dst"),
                fail_from: 9 << 20,
                reads: false,
                largest_write: AtomicU64::new(0),
            };
            let e = convert_with(&src, &dst, workers).unwrap_err();
            assert!(
                e.message().starts_with("error while writing at byte ")
                    && e.message().contains("test storage at offset"),
                "{workers} workers: {}",
                e.message()
            );
        }
    }

    #[test]
    fn a_failed_read_ends_the_convert_with_its_offset() {
        for workers in [1, 2, 4, 16] {
            let src_store = Failing {
                inner: MemoryStorage::from_bytes("src", patterned(24 << 20)),
                fail_from: 13 << 20,
                reads: true,
                largest_write: AtomicU64::new(0),
            };
            let s: Arc<dyn Storage> = Arc::new(src_store);
            let src: Arc<dyn BlockDevice> = Arc::new(Raw::open(s).unwrap());
            let e = convert_with(&src, &MemoryStorage::new("dst"), workers).unwrap_err();
            assert!(
                e.message().starts_with("error while reading at byte "),
                "{workers} workers: {}",
                e.message()
            );
        }
    }

    #[test]
    fn fully_allocated_output_writes_the_zeros_too() {
        // Zero granules inside data chunks and zero ranges of the source
        // both end up as written zeros over a target full of 0xff.
        let mut data = patterned(7 << 20);
        data[..8192].fill(0);
        data[(3 << 20)..(5 << 20) + 512].fill(0);
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes("src", data.clone()));
        let src: Arc<dyn BlockDevice> = Arc::new(Raw::open(s).unwrap());
        let dst = MemoryStorage::new("dst");
        dst.write_at(&vec![0xffu8; 7 << 20], 0).unwrap();
        for target_is_zero in [true, false] {
            let opts = ConvertOptions {
                sparse_size: 0,
                target_is_zero,
                workers: 4,
                ..Default::default()
            };
            convert(&src, Target::Raw(&dst), &opts, &mut |_, _| {}).unwrap();
            assert!(dst.to_vec() == data);
        }
    }

    #[test]
    fn data_runs_split_at_zero_granules() {
        let mut d = vec![1u8; 5 * 512];
        d[512..1536].fill(0);
        assert_eq!(
            data_runs(512, 1024, &d),
            vec![(1024, 1536, false), (1536, 2560, true), (2560, 3584, false)]
        );
        // Granules are aligned to guest offsets, not to the chunk.
        assert_eq!(
            data_runs(1024, 512, &d),
            vec![(512, 1024, false), (1024, 2048, true), (2048, 3072, false)]
        );
        assert_eq!(data_runs(0, 7, &d), vec![(7, 7 + d.len() as u64, false)]);
    }

    #[test]
    fn progress_reaches_the_total() {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes("src", patterned(9 << 20)));
        let src: Arc<dyn BlockDevice> = Arc::new(Raw::open(s).unwrap());
        let dst = MemoryStorage::new("dst");
        dst.set_len(9 << 20).unwrap();
        let mut last = (0, 0);
        convert(
            &src,
            Target::Raw(&dst),
            &ConvertOptions::default(),
            &mut |d, t| {
                assert!(d >= last.0 && d <= t);
                last = (d, t);
            },
        )
        .unwrap();
        assert_eq!(last, (9 << 20, 9 << 20));
    }

    #[test]
    fn target_writes_are_at_most_one_piece() {
        let data = patterned(9 << 20);
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes("src", data.clone()));
        let src: Arc<dyn BlockDevice> = Arc::new(Raw::open(s).unwrap());
        let dst = Failing {
            inner: MemoryStorage::new("dst"),
            fail_from: u64::MAX,
            reads: true,
            largest_write: AtomicU64::new(0),
        };
        convert_with(&src, &dst, 4).unwrap();
        assert!(dst.inner.to_vec() == data);
        assert_eq!(
            dst.largest_write.load(Ordering::Relaxed),
            WRITE_PIECE as u64
        );
    }
}
