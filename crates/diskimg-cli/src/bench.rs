//! `bench`: qemu-img bench's workload and report.
//!
//! COUNT requests of BUFFER_SIZE bytes, the first at OFFSET and each next
//! one STEP further, wrapping as qemu-img 10.0.2 wraps: request i > 0 is at
//! `(OFFSET + i * STEP) % size`, so a request may cross the end of the
//! image and fail with an I/O error, as in qemu-img (later QEMU versions
//! wrap at `size - BUFFER_SIZE`; 10.0.2 is the reference). DEPTH requests are really in flight at once: as
//! many threads share the device (`BlockDevice` is `Send + Sync` with
//! `&self` methods) and take request numbers from one counter.
//!
//! Writes (`-w`) write the pattern byte. With `--flush-interval N` a flush
//! follows each N requests: by default submissions stop and the requests
//! in flight drain first, as qemu-img's; with `--no-drain` the flush runs
//! while the other requests go on. The report lines are qemu-img's:
//! `Sending ...`, `Sending flush every N requests`, `Run completed in S
//! seconds.` (`-q` does not silence them, as in qemu-img). The time covers
//! the requests only: the final flush of a write run happens after it, as
//! qemu-img's happens when it closes the image.
//!
//! Cache modes are QEMU's: writeback (default) uses the host page cache and
//! flushes only when asked; writethrough flushes after every write; unsafe
//! ignores flushes; none (or off) opens every file of the chain with
//! O_DIRECT and flushes when asked; directsync is O_DIRECT with a flush
//! after every write. Request buffers are 4096-aligned (qemu-img's
//! `blk_blockalign`), so aligned requests go to the disk from them. The
//! AIO backend (`-i threads`, `io_uring`, `native`) does not change what
//! diskimg does: it runs requests on threads; `native` needs O_DIRECT and
//! without it is refused with qemu-img's message.
//!
//! Memory is bounded: at most [`MAX_THREADS`] requests run at once (a
//! larger depth queues on them), and the buffers (one per thread for
//! reads, one shared for writes) may not exceed [`MAX_BUFFERS`].

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use clap::ArgMatches;
use diskimg::io::AlignedBuf;
use diskimg::{BlockDevice, CacheMode};

use crate::args::{self, Parsed};
use crate::ctx::Ctx;
use crate::open::{open_image, open_image_writable, OpenHow};
use crate::size::{parse_number, parse_size, SizeError};

const HELP: &str = "Usage:
Run simple image benchmark.  Usage:

  PROG bench [-f FMT | --image-opts] [-t CACHE] [-c COUNT] [-d DEPTH]
        [-o OFFSET] [-s BUFFER_SIZE] [-S STEP_SIZE] [-i AIO] [-n]
        [-w [--pattern PATTERN] [--flush-interval INTERVAL [--no-drain]]]

Arguments:
  -h, --help
     print this help and exit
  -q, --quiet
     quiet operations
  -f, --format FMT
     specify FILENAME format explicitly
  --image-opts
     indicates that FILENAME is a complete image specification
     instead of a file name (incompatible with --format)
  -t, --cache CACHE
     cache mode for FILENAME (writeback)
  -c, --count COUNT
     number of I/O requests to perform
  -s, --buffer-size BUFFER_SIZE
     size of each I/O request
  -d, --depth DEPTH
     number of requests to perform in parallel
  -o, --offset OFFSET
     start first request at this OFFSET
  -S, --step-size STEP_SIZE
     each next request offset increment
  -i, --aio AIO
     async-io backend (threads, native, io_uring)
  -n, --native
     use native AIO backend if possible
  -w, --write
     perform write test (default is read)
  --pattern PATTERN
     write this pattern byte instead of zero
  --flush-interval FLUSH_INTERVAL
     issue flush after this number of requests
  --no-drain
     do not wait when flushing pending requests
  -U, --force-share
     open images in shared mode for concurrent access

";

/// Most requests running at once (threads).
pub const MAX_THREADS: u64 = 256;
/// Most bytes of request buffers.
pub const MAX_BUFFERS: u64 = 1 << 30;

/// Alignment of request buffers (QEMU's default memory alignment).
const BUF_ALIGN: usize = 4096;

/// The workload, as qemu-img's BenchData.
#[derive(Debug, Clone)]
struct Workload {
    count: u64,
    depth: u64,
    offset: u64,
    bufsize: u64,
    step: u64,
    write: bool,
    pattern: u8,
    flush_interval: u64,
    drain: bool,
    cache: CacheMode,
    size: u64,
}

impl Workload {
    /// The offset of request `i`.
    fn offset_of(&self, i: u64) -> u64 {
        if i == 0 {
            return self.offset;
        }
        if self.size == 0 {
            // qemu-img divides by zero here; the request fails anyway.
            return 0;
        }
        let m = u128::from(self.size);
        ((u128::from(self.offset) + u128::from(i) * u128::from(self.step)) % m) as u64
    }

    /// Runs request `i`: a read into `rbuf`, or a write of `wbuf` (each
    /// bufsize bytes; the other one is unused).
    fn request(
        &self,
        dev: &dyn BlockDevice,
        rbuf: &mut [u8],
        wbuf: &[u8],
        i: u64,
    ) -> Result<(), String> {
        let off = self.offset_of(i);
        if off
            .checked_add(self.bufsize)
            .is_none_or(|end| end > self.size)
        {
            return Err("Input/output error".to_string());
        }
        let r = if self.write {
            dev.write_at(wbuf, off).and_then(|()| {
                if self.cache.writethrough() {
                    dev.flush()
                } else {
                    Ok(())
                }
            })
        } else {
            dev.read_at(rbuf, off)
        };
        r.map_err(|e| e.message().to_string())
    }

    /// A thread's buffer for reads (empty for a write run, which shares
    /// one buffer of the pattern).
    fn read_buffer(&self) -> AlignedBuf {
        AlignedBuf::new(
            if self.write { 0 } else { self.bufsize as usize },
            BUF_ALIGN,
        )
    }

    fn flush(&self, dev: &dyn BlockDevice) -> Result<(), String> {
        if self.cache.ignore_flush() {
            return Ok(());
        }
        dev.flush().map_err(|e| e.message().to_string())
    }
}

/// An option's value checked as qemu-img's `cvtnum_full` checks it.
fn number(name: &str, v: &str, size: bool, min: u64, max: u64) -> Result<u64, String> {
    let r = if size { parse_size(v) } else { parse_number(v) };
    match r {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) | Err(SizeError::Range) => Err(format!(
            "Invalid {name} specified. Must be between {min} and {max}."
        )),
        Err(SizeError::Invalid) => Err(format!("Invalid {name} specified: '{v}'.")),
    }
}

/// The options' values, checked in command-line order as getopt meets them.
struct Parsed2 {
    count: u64,
    depth: u64,
    offset: u64,
    bufsize: u64,
    step: u64,
    pattern: u8,
    flush_interval: u64,
    cache: CacheMode,
    native: bool,
}

fn values(m: &ArgMatches) -> Result<Parsed2, String> {
    let int_max = i32::MAX as u64;
    let mut p = Parsed2 {
        count: 75000,
        depth: 64,
        offset: 0,
        bufsize: 4096,
        step: 0,
        pattern: 0,
        flush_interval: 0,
        cache: CacheMode::Writeback,
        native: m.get_flag("native"),
    };
    let ids = [
        "cache",
        "count",
        "depth",
        "aio",
        "offset",
        "buffer-size",
        "step-size",
        "pattern",
        "flush-interval",
    ];
    let mut present: Vec<(usize, &str)> = ids
        .iter()
        .filter_map(|id| m.index_of(id).map(|i| (i, *id)))
        .collect();
    present.sort();
    for (_, id) in present {
        let v = args::get_str(m, id).unwrap_or("");
        match id {
            "cache" => {
                p.cache = v
                    .parse::<CacheMode>()
                    .map_err(|_| "Invalid cache mode".to_string())?
            }
            "count" => p.count = number("request count", v, false, 1, int_max)?,
            "depth" => p.depth = number("queue depth", v, false, 1, int_max)?,
            "aio" => match v {
                "threads" | "io_uring" => {}
                "native" => p.native = true,
                _ => return Err(format!("Invalid aio option: {v}")),
            },
            "offset" => p.offset = number("offset", v, true, 0, i64::MAX as u64)?,
            "buffer-size" => p.bufsize = number("buffer size", v, true, 1, int_max)?,
            "step-size" => p.step = number("step size", v, true, 0, int_max)?,
            "pattern" => p.pattern = number("pattern byte", v, false, 0, 0xff)? as u8,
            "flush-interval" => p.flush_interval = number("flush interval", v, false, 0, int_max)?,
            _ => {}
        }
    }
    Ok(p)
}

/// Runs `bench`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("bench")
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::opt("cache", Some('t'), Some("cache")))
        .arg(args::opt("count", Some('c'), Some("count")))
        .arg(args::opt("depth", Some('d'), Some("depth")))
        .arg(args::opt("offset", Some('o'), Some("offset")))
        .arg(args::opt("buffer-size", Some('s'), Some("buffer-size")))
        .arg(args::opt("step-size", Some('S'), Some("step-size")))
        .arg(args::flag("write", Some('w'), Some("write")))
        .arg(args::opt("pattern", None, Some("pattern")))
        .arg(args::opt("flush-interval", None, Some("flush-interval")))
        .arg(args::flag("no-drain", None, Some("no-drain")))
        .arg(args::opt("aio", Some('i'), Some("aio")))
        .arg(args::flag("native", Some('n'), Some("native")))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::flag("quiet", Some('q'), Some("quiet")))
        .arg(args::opt("object", None, Some("object")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "bench", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let p = match values(&m) {
        Ok(p) => p,
        Err(msg) => {
            ctx.error(msg);
            return 1;
        }
    };
    if m.get_one::<String>("object").is_some() {
        ctx.error("--object is not supported by diskimg");
        return 1;
    }
    let files = args::files(&m);
    if files.len() != 1 {
        ctx.error_with_hint("bench", "Expecting one image file name");
        return 1;
    }
    let file = &files[0];
    let write = m.get_flag("write");
    if !write && p.flush_interval != 0 {
        ctx.error("--flush-interval is only available in write tests");
        return 1;
    }
    if p.flush_interval != 0 && p.flush_interval < p.depth {
        ctx.error("Flush interval can't be smaller than depth");
        return 1;
    }
    let shown = file.to_string_lossy().into_owned();
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{shown}': --image-opts is not supported by diskimg"
        ));
        return 1;
    }
    if p.native && !p.cache.direct() {
        ctx.error(format!("Could not open '{shown}': aio=native was specified, but it requires cache.direct=on, which was not specified."));
        return 1;
    }
    if write && m.get_flag("force-share") {
        ctx.error(format!(
            "Could not open '{shown}': force-share=on can only be used with read-only images"
        ));
        return 1;
    }
    let fmt = args::get_str(&m, "format");
    let how = OpenHow {
        backing: true,
        data_file: true,
        direct: p.cache.direct(),
    };
    // A probed raw image opened for writing gets qemu-img's warning from
    // open_image_writable. (Its restriction on block 0 never applies here:
    // a buffer of one repeated byte cannot look like another format's
    // header.)
    let opened = if write {
        open_image_writable(file, fmt, p.cache.direct())
    } else {
        open_image(file, fmt, how)
    };
    let dev = match opened {
        Ok(d) => d,
        Err(msg) => {
            ctx.error(msg);
            return 1;
        }
    };

    let w = Workload {
        count: p.count,
        depth: p.depth,
        offset: p.offset,
        bufsize: p.bufsize,
        step: if p.step == 0 { p.bufsize } else { p.step },
        write,
        pattern: p.pattern,
        flush_interval: p.flush_interval,
        drain: !m.get_flag("no-drain"),
        cache: p.cache,
        size: dev.size(),
    };
    println!(
        "Sending {} {} requests, {} bytes each, {} in parallel (starting at offset {}, step size {})",
        w.count,
        if w.write { "write" } else { "read" },
        w.bufsize,
        w.depth,
        w.offset,
        w.step
    );
    if w.flush_interval != 0 {
        println!("Sending flush every {} requests", w.flush_interval);
    }
    let threads = w.depth.min(w.count).min(MAX_THREADS);
    let buffers = if w.write {
        w.bufsize
    } else {
        w.bufsize.saturating_mul(threads)
    };
    if buffers > MAX_BUFFERS {
        ctx.error(format!(
            "Request buffers of {buffers} bytes ({threads} requests of {} bytes) exceed diskimg's limit of {MAX_BUFFERS} bytes",
            w.bufsize
        ));
        return 1;
    }
    let start = Instant::now();
    let r = run_workload(&w, &dev, threads as usize);
    let secs = start.elapsed().as_secs_f64();
    if let Err(msg) = r {
        ctx.error(format!("Failed request: {msg}"));
        return 1;
    }
    println!("Run completed in {secs:.3} seconds.");
    if w.write {
        // The flush qemu-img does when it closes the image.
        if let Err(msg) = w.flush(dev.as_ref()) {
            ctx.error(format!("Failed flush request: {msg}"));
            return 1;
        }
    }
    0
}

/// Runs the requests on `threads` threads (the caller's thread alone for
/// one).
fn run_workload(w: &Workload, dev: &Arc<dyn BlockDevice>, threads: usize) -> Result<(), String> {
    let mut shared = AlignedBuf::new(if w.write { w.bufsize as usize } else { 0 }, BUF_ALIGN);
    shared.fill(w.pattern);
    let shared = &shared;
    if w.flush_interval != 0 {
        let sched = Scheduler::new();
        return std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| sched.worker(w, dev.as_ref(), shared)))
                .collect();
            join_all(handles)
        });
    }
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let work = || -> Result<(), String> {
        let mut own = w.read_buffer();
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= w.count {
                return Ok(());
            }
            if let Err(e) = w.request(dev.as_ref(), &mut own, shared, i) {
                failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    if threads <= 1 {
        return work();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(work)).collect();
        join_all(handles)
    })
}

fn join_all(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<(), String>>>,
) -> Result<(), String> {
    let mut result = Ok(());
    for h in handles {
        let r = h
            .join()
            .unwrap_or_else(|_| Err("a request thread panicked".to_string()));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Submission state of a run with flushes (qemu-img's BenchData counters).
struct State {
    /// Requests submitted.
    submitted: u64,
    /// Requests in flight.
    in_flight: u64,
    /// Requests completed.
    completed: u64,
    /// Submissions are held until the requests in flight drain and the
    /// flush after them completes.
    draining: bool,
    /// A request failed: everyone stops.
    failed: bool,
}

/// Hands out requests and flushes as qemu-img's `bench_cb` does.
struct Scheduler {
    state: Mutex<State>,
    wake: Condvar,
}

impl Scheduler {
    fn new() -> Scheduler {
        Scheduler {
            state: Mutex::new(State {
                submitted: 0,
                in_flight: 0,
                completed: 0,
                draining: false,
                failed: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn worker(&self, w: &Workload, dev: &dyn BlockDevice, shared: &[u8]) -> Result<(), String> {
        let mut own = w.read_buffer();
        loop {
            let i = {
                let mut st = self.lock();
                loop {
                    if st.failed || st.submitted >= w.count {
                        return Ok(());
                    }
                    if !st.draining {
                        break;
                    }
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.submitted += 1;
                st.in_flight += 1;
                st.submitted - 1
            };
            let r = w.request(dev, &mut own, shared, i);
            let mut st = self.lock();
            if let Err(e) = r {
                st.failed = true;
                self.wake.notify_all();
                return Err(e);
            }
            // qemu-img: remaining = requests not yet submitted.
            let remaining = w.count - st.submitted;
            st.completed += 1;
            st.in_flight -= 1;
            if !remaining.is_multiple_of(w.flush_interval) {
                continue;
            }
            // The flush after the last request is the one at close, after
            // the clock stops.
            let last = st.completed == w.count;
            if w.drain {
                st.draining = true;
                if st.in_flight == 0 {
                    if !last {
                        drop(st);
                        let r = w.flush(dev);
                        st = self.lock();
                        if let Err(e) = r {
                            st.failed = true;
                            self.wake.notify_all();
                            return Err(format!("flush: {e}"));
                        }
                    }
                    st.draining = false;
                    self.wake.notify_all();
                }
            } else if !last {
                drop(st);
                w.flush(dev).map_err(|e| format!("flush: {e}"))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(size: u64, offset: u64, bufsize: u64, step: u64) -> Workload {
        Workload {
            count: 10,
            depth: 1,
            offset,
            bufsize,
            step,
            write: false,
            pattern: 0,
            flush_interval: 0,
            drain: true,
            cache: CacheMode::Writeback,
            size,
        }
    }

    #[test]
    fn offsets_wrap_as_qemu_img_wraps() {
        let w = wl(10 * 4096, 0, 4096, 4096);
        let offs: Vec<u64> = (0..11).map(|i| w.offset_of(i)).collect();
        // Wraps modulo the size (qemu-img 10.0.2).
        assert_eq!(offs[9], 9 * 4096);
        assert_eq!(offs[10], 0);
        // The first request is at the offset as given.
        let w = wl(10 * 4096, 100 * 4096, 4096, 4096);
        assert_eq!(w.offset_of(0), 100 * 4096);
        assert_eq!(w.offset_of(1), (101 * 4096) % (10 * 4096));
        // A request may cross the end: qemu-img's I/O error.
        let w = wl(8 << 20, 0, 1000, 5002);
        assert_eq!(w.offset_of(1677), 8388354);
        // An empty image.
        let w = wl(0, 512, 4096, 4096);
        assert_eq!((w.offset_of(0), w.offset_of(1)), (512, 0));
        // No overflow at the extremes.
        let w = wl(u64::MAX, i64::MAX as u64, 1, i32::MAX as u64);
        let _ = w.offset_of(u64::from(u32::MAX));
    }

    #[test]
    fn numbers_as_cvtnum_full() {
        assert_eq!(
            number("queue depth", "0", false, 1, 9).unwrap_err(),
            "Invalid queue depth specified. Must be between 1 and 9."
        );
        assert_eq!(
            number("request count", "1x", false, 1, 9).unwrap_err(),
            "Invalid request count specified: '1x'."
        );
        assert_eq!(number("buffer size", "4k", true, 1, 1 << 20).unwrap(), 4096);
        assert_eq!(number("pattern byte", "0xab", false, 0, 255).unwrap(), 0xab);
    }
}
