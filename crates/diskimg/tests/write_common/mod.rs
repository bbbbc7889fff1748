//! Shared pieces of the write tests (qcow2_write_*.rs): QEMU's tools as the
//! judge, a seeded generator, an in-memory model of the guest's bytes, image
//! configurations, random operations and their application to a device and
//! to the model.
//!
//! Everything goes through the public library API: `diskimg::create`,
//! `diskimg::open` and the `BlockDevice` methods.
//!
//! Reproducing a failure: every test prints its seed; `DISKIMG_SEED=<seed>`
//! reruns it with that seed, `DISKIMG_OPS=<n>` changes the number of
//! operations.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use diskimg::format::qcow2::header::CompressionType;
use diskimg::{BlockDevice, CreateOptions, Format, OpenOptions, Qcow2CreateOptions};

// ---------------------------------------------------------------- QEMU tools

/// A QEMU tool; panics (the test fails) when it is missing.
pub fn tool(name: &str) -> Command {
    match Command::new(name).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "{name} is missing: the qcow2 write tests need QEMU's tools (Debian package qemu-utils)"
        ),
    }
    Command::new(name)
}

/// Runs `cmd`, which must succeed; returns its stdout.
pub fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("running a QEMU tool");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-img with `args`, which must succeed.
pub fn qemu_img(args: &[&str]) -> String {
    let mut c = tool("qemu-img");
    c.args(args);
    run(c)
}

/// What `qemu-img check --output=json` says.
#[derive(Debug, Clone, Default)]
pub struct QemuCheck {
    /// Corruptions (refcount errors, invalid entries, ...).
    pub corruptions: u64,
    /// Leaked clusters.
    pub leaks: u64,
    /// Errors that kept the check from completing.
    pub check_errors: u64,
    /// The image is marked corrupt.
    pub corrupt_bit: bool,
    /// Everything qemu-img printed, for messages.
    pub output: String,
}

impl QemuCheck {
    /// No corruption, no check error (leaks allowed).
    pub fn consistent(&self) -> bool {
        self.corruptions == 0 && self.check_errors == 0
    }
    /// No corruption, no check error and no leak.
    pub fn clean(&self) -> bool {
        self.consistent() && self.leaks == 0
    }
}

/// Runs `qemu-img check --output=json` on `path` (format `fmt`).
pub fn qemu_check(path: &Path, fmt: &str) -> QemuCheck {
    let out = tool("qemu-img")
        .args(["check", "--output=json", "-f", fmt])
        .arg(path)
        .output()
        .expect("running qemu-img check");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let output = format!(
        "qemu-img check {} (exit {:?}):\n{stdout}{stderr}",
        path.display(),
        out.status.code()
    );
    let v: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(_) => panic!("qemu-img check gave no JSON report: {output}"),
    };
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    QemuCheck {
        corruptions: n("corruptions"),
        leaks: n("leaks"),
        check_errors: n("check-errors"),
        corrupt_bit: false,
        output,
    }
}

/// `qemu-img check` must be clean: no errors, no leaks.
pub fn assert_check_clean(path: &Path, fmt: &str, ctx: &str) {
    let c = qemu_check(path, fmt);
    assert!(
        c.clean(),
        "{ctx}: qemu-img check is not clean: {}",
        c.output
    );
}

/// `qemu-img info --output=json` of `path`.
pub fn qemu_info(path: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "--output=json", "-U", &path.to_string_lossy()]);
    serde_json::from_str(&out).expect("qemu-img info JSON")
}

/// Converts `src` to a raw file with qemu-img (`extra` args go before the
/// file names, e.g. `-l snapshot.name=s1`).
pub fn qemu_convert_raw(src: &Path, fmt: &str, dst: &Path, extra: &[&str]) {
    let mut c = tool("qemu-img");
    c.args(["convert", "-U", "-f", fmt, "-O", "raw"]);
    c.args(extra);
    c.arg(src).arg(dst);
    run(c);
}

// ----------------------------------------------------------------- generator

/// A small deterministic generator (splitmix64).
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    /// Uniform in `lo..=hi` (`lo` when `hi <= lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The seed for a test: `DISKIMG_SEED` when set, else `default`.
pub fn seed(default: u64) -> u64 {
    match std::env::var("DISKIMG_SEED") {
        Ok(s) => {
            let s = s.trim();
            let v = if let Some(h) = s.strip_prefix("0x") {
                u64::from_str_radix(h, 16)
            } else {
                s.parse()
            };
            v.expect("DISKIMG_SEED must be a number")
        }
        Err(_) => default,
    }
}

/// The number of operations: `DISKIMG_OPS` when set, else `default`.
pub fn ops_count(default: usize) -> usize {
    std::env::var("DISKIMG_OPS")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// The bytes an operation with data seed `seed` writes (`len` bytes).
pub fn op_data(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    let mut r = Rng(seed);
    r.fill(&mut v);
    // Some writes are all zeros or partly zeros: the engine must store them.
    match seed % 16 {
        0 => v.fill(0),
        1 => {
            let half = v.len() / 2;
            v[..half].fill(0);
        }
        _ => {}
    }
    v
}

// --------------------------------------------------------------------- model

/// Model page size.
pub const PAGE: u64 = 4096;

/// The guest's bytes as the test expects them: the base (backing file
/// content, zeros past its end) overlaid by the pages written so far.
/// Sparse, so disks of hundreds of GiB can be modelled.
#[derive(Clone)]
pub struct Model {
    /// Guest size.
    pub size: u64,
    /// Backing content (guest bytes from offset 0); zeros past it.
    pub base: Arc<Vec<u8>>,
    /// The base shows only below this offset (a resize hides the rest).
    base_limit: u64,
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl Model {
    /// A disk of `size` bytes over `base`.
    pub fn new(size: u64, base: Arc<Vec<u8>>) -> Model {
        Model {
            size,
            base,
            base_limit: size,
            pages: BTreeMap::new(),
        }
    }

    /// The base byte at `off`.
    pub fn base_byte(&self, off: u64) -> u8 {
        if off >= self.base_limit {
            return 0;
        }
        self.base.get(off as usize).copied().unwrap_or(0)
    }

    /// Fills `buf` with the base bytes at `off`.
    pub fn read_base(&self, buf: &mut [u8], off: u64) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.base_byte(off + i as u64);
        }
    }

    fn page_mut(&mut self, idx: u64) -> &mut [u8] {
        if !self.pages.contains_key(&idx) {
            let mut p = vec![0u8; PAGE as usize].into_boxed_slice();
            self.read_base(&mut p, idx * PAGE);
            self.pages.insert(idx, p);
        }
        match self.pages.get_mut(&idx) {
            Some(p) => p,
            None => unreachable!(),
        }
    }

    /// The expected bytes at `off`.
    pub fn read(&self, buf: &mut [u8], off: u64) {
        let mut pos = 0usize;
        while pos < buf.len() {
            let o = off + pos as u64;
            let idx = o / PAGE;
            let in_page = (o % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(buf.len() - pos);
            match self.pages.get(&idx) {
                Some(p) => buf[pos..pos + n].copy_from_slice(&p[in_page..in_page + n]),
                None => self.read_base(&mut buf[pos..pos + n], o),
            }
            pos += n;
        }
    }

    /// The expected bytes of `[off, off + len)`.
    pub fn get(&self, off: u64, len: u64) -> Vec<u8> {
        let mut v = vec![0u8; len as usize];
        self.read(&mut v, off);
        v
    }

    /// Records a write.
    pub fn write(&mut self, data: &[u8], off: u64) {
        let mut pos = 0usize;
        while pos < data.len() {
            let o = off + pos as u64;
            let idx = o / PAGE;
            let in_page = (o % PAGE) as usize;
            let n = (PAGE as usize - in_page).min(data.len() - pos);
            self.page_mut(idx)[in_page..in_page + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
    }

    /// Records zeros over `[off, off + len)`.
    pub fn zero(&mut self, off: u64, len: u64) {
        let mut pos = 0u64;
        while pos < len {
            let o = off + pos;
            let idx = o / PAGE;
            let in_page = o % PAGE;
            let n = (PAGE - in_page).min(len - pos);
            self.page_mut(idx)[in_page as usize..(in_page + n) as usize].fill(0);
            pos += n;
        }
    }

    /// Ranges whose bytes may be non-zero (the base and every written
    /// page), sorted and coalesced.
    pub fn interesting_ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |s: u64, e: u64| {
            let e = e.min(self.size);
            if s >= e {
                return;
            }
            if let Some(last) = out.last_mut() {
                if s <= last.1 {
                    last.1 = last.1.max(e);
                    return;
                }
            }
            out.push((s, e));
        };
        let base_end = (self.base.len() as u64).min(self.base_limit);
        let mut base_done = base_end == 0;
        for &idx in self.pages.keys() {
            let s = idx * PAGE;
            if !base_done && base_end <= s {
                push(0, base_end);
                base_done = true;
            }
            if !base_done {
                // Pages inside the base: the base range covers them later.
                if s + PAGE <= base_end {
                    continue;
                }
                push(0, base_end);
                base_done = true;
            }
            push(s, s + PAGE);
        }
        if !base_done {
            push(0, base_end);
        }
        out
    }
}

// ------------------------------------------------------------- configuration

/// The backing file under a test image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// No backing file.
    None,
    /// A raw backing file of this many bytes.
    Raw(u64),
    /// A qcow2 backing file (made by qemu-img) of this many bytes.
    Qcow2(u64),
}

/// One image configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Short name, for file names and messages.
    pub name: String,
    /// qcow2 or raw.
    pub format: Format,
    /// Guest size.
    pub size: u64,
    /// qcow2 options (the backing fields are filled in by [`make_image`]).
    pub qcow2: Qcow2CreateOptions,
    /// The backing file.
    pub backing: Backing,
    /// Bytes of L2 cache to open the image with (`None`: the default,
    /// which maps the whole image); small values force evictions of dirty
    /// tables.
    pub l2_cache: Option<u64>,
}

impl Config {
    /// A raw image of `size` bytes.
    pub fn raw(size: u64) -> Config {
        Config {
            name: format!("raw-{size}"),
            format: Format::Raw,
            size,
            qcow2: Qcow2CreateOptions::default(),
            backing: Backing::None,
            l2_cache: None,
        }
    }

    /// A qcow2 image; `size` 0 means "large enough to cross an L2 table
    /// boundary plus a few clusters".
    #[allow(clippy::too_many_arguments)]
    pub fn qcow2(
        cluster_size: u64,
        version: u32,
        refcount_bits: u64,
        extended_l2: bool,
        lazy_refcounts: bool,
        backing: Backing,
        size: u64,
    ) -> Config {
        let qcow2 = Qcow2CreateOptions {
            version,
            cluster_size,
            refcount_bits,
            extended_l2,
            lazy_refcounts,
            compression_type: CompressionType::Zlib,
            ..Qcow2CreateOptions::default()
        };
        let mut c = Config {
            name: String::new(),
            format: Format::Qcow2,
            size,
            qcow2,
            backing,
            l2_cache: None,
        };
        if size == 0 {
            c.size = c.l2_span() + 4 * c.cluster_size().max(PAGE * 16);
        }
        c.name = format!(
            "qcow2-c{}-v{}-rc{}{}{}-{}",
            cluster_size,
            version,
            refcount_bits,
            if extended_l2 { "-extl2" } else { "" },
            if lazy_refcounts { "-lazy" } else { "" },
            match backing {
                Backing::None => "nobacking".to_string(),
                Backing::Raw(n) => format!("rawbacking{n}"),
                Backing::Qcow2(n) => format!("qcow2backing{n}"),
            }
        );
        c
    }

    /// The same configuration opened with an L2 cache of `tables` tables.
    pub fn with_l2_cache(mut self, tables: u64) -> Config {
        self.l2_cache = Some(tables * self.cluster_size());
        self.name.push_str(&format!("-l2cache{tables}"));
        self
    }

    /// The format name as qemu-img spells it.
    pub fn fmt(&self) -> &'static str {
        match self.format {
            Format::Raw => "raw",
            _ => "qcow2",
        }
    }

    /// The cluster size (512 for raw: the sector).
    pub fn cluster_size(&self) -> u64 {
        match self.format {
            Format::Raw => 512,
            _ => self.qcow2.cluster_size,
        }
    }

    /// Guest bytes mapped by one L2 table (for raw: 64 KiB, an arbitrary
    /// boundary).
    pub fn l2_span(&self) -> u64 {
        match self.format {
            Format::Raw => 65536,
            _ => {
                let cs = self.qcow2.cluster_size;
                let entry = if self.qcow2.extended_l2 { 16 } else { 8 };
                cs / entry * cs
            }
        }
    }

    /// The guest ranges the random operations touch: the start, around
    /// the first L2 boundary (when the disk reaches it), and the end.
    pub fn windows(&self) -> Vec<(u64, u64)> {
        let cs = self.cluster_size();
        let w = (8 * cs).max(64 * 1024).min(self.size);
        let mut v = vec![(0, w)];
        let span = self.l2_span();
        if span + w / 2 <= self.size && span > w / 2 {
            v.push((span - w / 2, span + w / 2));
        }
        v.push((self.size - w, self.size));
        // Coalesce.
        v.sort();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, e) in v {
            if let Some(last) = out.last_mut() {
                if s <= last.1 {
                    last.1 = last.1.max(e);
                    continue;
                }
            }
            out.push((s, e));
        }
        out
    }

    /// Largest length of one operation.
    pub fn max_op_len(&self) -> u64 {
        let cs = self.cluster_size();
        (3 * cs).clamp(16 * 1024, 4 << 20)
    }
}

/// An image made for a test, with the model of its initial content.
pub struct TestImage {
    /// The image file.
    pub path: PathBuf,
    /// Its configuration.
    pub config: Config,
    /// The expected guest bytes.
    pub model: Model,
}

/// Writes a raw file of `len` bytes of random content (with zero runs)
/// and returns the content.
pub fn make_backing_content(path: &Path, len: u64, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed ^ 0xBAC4);
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v);
    // Zero runs, so that the backing has holes and zero clusters too.
    for _ in 0..(len / 8192).min(64) {
        let s = rng.below(len) as usize;
        let n = (rng.range(1, 8192) as usize).min(v.len() - s);
        v[s..s + n].fill(0);
    }
    std::fs::write(path, &v).expect("writing the backing content");
    v
}

/// Creates the image of `config` (and its backing file) in `dir` through
/// the library, returning it with its model.
pub fn make_image(dir: &Path, config: &Config, seed: u64) -> TestImage {
    let path = dir.join(format!("{}.{}", config.name, config.fmt()));
    let mut opts = CreateOptions::new(config.format, config.size);
    opts.qcow2 = config.qcow2.clone();
    let base = match config.backing {
        Backing::None => Vec::new(),
        Backing::Raw(len) => {
            let b = dir.join("backing.raw");
            let v = make_backing_content(&b, len, seed);
            opts.qcow2.backing_file = Some("backing.raw".into());
            opts.qcow2.backing_fmt = Some("raw".into());
            v
        }
        Backing::Qcow2(len) => {
            let raw = dir.join("backing-content.raw");
            let v = make_backing_content(&raw, len, seed);
            let b = dir.join("backing.qcow2");
            // A cluster size other than the top image's, to mix granularity.
            let cs = if config.cluster_size() == 65536 {
                4096
            } else {
                65536
            };
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                "-o",
                &format!("cluster_size={cs}"),
                &raw.to_string_lossy(),
                &b.to_string_lossy(),
            ]);
            opts.qcow2.backing_file = Some("backing.qcow2".into());
            opts.qcow2.backing_fmt = Some("qcow2".into());
            v
        }
    };
    diskimg::create(&path, &opts).unwrap_or_else(|e| panic!("{}: create failed: {e}", config.name));
    let model = Model::new(config.size, Arc::new(base));
    TestImage {
        path,
        config: config.clone(),
        model,
    }
}

/// Opens `path` for writing through the library.
pub fn open_rw(path: &Path) -> Arc<dyn BlockDevice> {
    open_rw_cache(path, None)
}

/// Opens `path` for writing with `l2_cache_size` bytes of L2 cache.
pub fn open_rw_cache(path: &Path, l2_cache_size: Option<u64>) -> Arc<dyn BlockDevice> {
    let opts = OpenOptions {
        writable: true,
        l2_cache_size,
        ..OpenOptions::default()
    };
    diskimg::open(path, &opts)
        .unwrap_or_else(|e| panic!("opening {} for writing failed: {e}", path.display()))
}

/// Opens `path` read-only through the library.
pub fn open_ro(path: &Path) -> Arc<dyn BlockDevice> {
    diskimg::open(path, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("opening {} failed: {e}", path.display()))
}

// ---------------------------------------------------------------- operations

/// One random operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Write `len` bytes of [`op_data`]`(seed, len)` at `off`.
    Write { off: u64, len: u64, seed: u64 },
    /// write_zeroes.
    Zero { off: u64, len: u64, unmap: bool },
    /// discard.
    Discard { off: u64, len: u64 },
    /// flush.
    Flush,
    /// Close the image and open it again.
    Reopen,
}

impl Op {
    /// The guest range the operation changes, if any.
    pub fn range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Write { off, len, .. } | Op::Zero { off, len, .. } | Op::Discard { off, len } => {
                Some((off, len))
            }
            _ => None,
        }
    }
}

/// Which kinds of operations a generator makes (percentages).
#[derive(Debug, Clone, Copy)]
pub struct OpMix {
    /// Writes.
    pub write: u64,
    /// write_zeroes.
    pub zero: u64,
    /// discards.
    pub discard: u64,
    /// flushes.
    pub flush: u64,
    /// close and reopen.
    pub reopen: u64,
}

/// The mix of the model test.
pub const MODEL_MIX: OpMix = OpMix {
    write: 60,
    zero: 15,
    discard: 12,
    flush: 10,
    reopen: 3,
};

/// A random range inside one of `config`'s windows: aligned to clusters,
/// to sectors, or to nothing; short or several clusters long; often
/// straddling a cluster boundary.
pub fn gen_range(rng: &mut Rng, config: &Config) -> (u64, u64) {
    let windows = config.windows();
    let (ws, we) = windows[rng.below(windows.len() as u64) as usize];
    let cs = config.cluster_size();
    let maxlen = config.max_op_len().min(we - ws);
    let (mut off, mut len) = match rng.below(6) {
        // Cluster-aligned, whole clusters.
        0 => {
            let n = rng.range(1, (maxlen / cs).max(1));
            let off = ws + rng.below((we - ws) / cs) * cs;
            (off, n * cs)
        }
        // Sector-aligned.
        1 => {
            let n = rng.range(1, (maxlen / 512).max(1));
            let off = ws + rng.below((we - ws) / 512) * 512;
            (off, n * 512)
        }
        // Small and unaligned.
        2 => (ws + rng.below(we - ws), rng.range(1, 700)),
        // Straddling a cluster boundary.
        3 => {
            let b = ws + rng.range(1, ((we - ws) / cs).max(1)) * cs;
            let before = rng.range(1, cs.min(maxlen));
            let after = rng.range(1, cs.min(maxlen));
            (b.saturating_sub(before).max(ws), before + after)
        }
        // Straddling the window's middle (the L2 boundary for the middle
        // window), unaligned.
        4 => {
            let mid = ws + (we - ws) / 2;
            let before = rng.range(1, maxlen / 2);
            let after = rng.range(1, maxlen / 2);
            (mid - before.min(mid - ws), before + after)
        }
        // Anything.
        _ => (ws + rng.below(we - ws), rng.range(1, maxlen)),
    };
    if off >= we {
        off = we - 1;
    }
    len = len.clamp(1, we - off);
    (off, len)
}

/// A random operation of `mix` on `config`.
pub fn gen_op(rng: &mut Rng, config: &Config, mix: &OpMix) -> Op {
    let total = mix.write + mix.zero + mix.discard + mix.flush + mix.reopen;
    let mut pick = rng.below(total);
    if pick < mix.write {
        let (off, len) = gen_range(rng, config);
        return Op::Write {
            off,
            len,
            seed: rng.next(),
        };
    }
    pick -= mix.write;
    if pick < mix.zero {
        let (off, len) = gen_range(rng, config);
        return Op::Zero {
            off,
            len,
            unmap: rng.chance(50),
        };
    }
    pick -= mix.zero;
    if pick < mix.discard {
        let (off, len) = gen_range(rng, config);
        return Op::Discard { off, len };
    }
    pick -= mix.discard;
    if pick < mix.flush {
        return Op::Flush;
    }
    Op::Reopen
}

/// An image open for writing through the library, which can be closed
/// and opened again.
pub struct Handle {
    /// The image.
    pub path: PathBuf,
    l2_cache: Option<u64>,
    dev: Option<Arc<dyn BlockDevice>>,
}

impl Handle {
    /// Opens `path` for writing.
    pub fn open(path: &Path) -> Handle {
        Handle::open_cache(path, None)
    }

    /// Opens `path` for writing with `l2_cache` bytes of L2 cache (kept
    /// when the image is reopened).
    pub fn open_cache(path: &Path, l2_cache: Option<u64>) -> Handle {
        Handle {
            path: path.to_path_buf(),
            l2_cache,
            dev: Some(open_rw_cache(path, l2_cache)),
        }
    }

    /// The open device.
    pub fn dev(&self) -> &dyn BlockDevice {
        match &self.dev {
            Some(d) => d.as_ref(),
            None => panic!("{} is closed", self.path.display()),
        }
    }

    /// A shared reference to the open device.
    pub fn arc(&self) -> Arc<dyn BlockDevice> {
        match &self.dev {
            Some(d) => d.clone(),
            None => panic!("{} is closed", self.path.display()),
        }
    }

    /// Closes the image (drops the last reference).
    pub fn close(&mut self) {
        if let Some(d) = self.dev.take() {
            assert_eq!(
                Arc::strong_count(&d),
                1,
                "{}: the device is still referenced at close",
                self.path.display()
            );
        }
    }

    /// Closes the image and opens it again for writing.
    pub fn reopen(&mut self) {
        self.close();
        self.dev = Some(open_rw_cache(&self.path, self.l2_cache));
    }
}

/// Applies `op` to the image of `h`. Errors are returned with the
/// operation named.
pub fn apply_dev(h: &mut Handle, op: &Op) -> Result<(), String> {
    let r = match *op {
        Op::Write { off, len, seed } => h.dev().write_at(&op_data(seed, len), off),
        Op::Zero { off, len, unmap } => h.dev().write_zeroes(off, len, unmap),
        Op::Discard { off, len } => h.dev().discard(off, len),
        Op::Flush => h.dev().flush(),
        Op::Reopen => {
            h.reopen();
            Ok(())
        }
    };
    r.map_err(|e| format!("{op:?}: {e}"))
}

/// Applies `op` to the model. A discard leaves the range uncertain (it may
/// read as zeros, as the backing file, or, in clusters it covers only in
/// part, unchanged): [`settle_discard`] checks what the device shows and
/// adopts it.
pub fn apply_model(model: &mut Model, op: &Op) {
    match *op {
        Op::Write { off, len, seed } => model.write(&op_data(seed, len), off),
        Op::Zero { off, len, .. } => model.zero(off, len),
        _ => {}
    }
}

/// After a discard of `[off, off + len)` on a device with clusters of
/// `cs` bytes, reads the range, checks that each byte reads as zero or
/// as the backing file (in clusters the discard covers only partly, also
/// as before), and records what it reads in the model.
pub fn settle_discard(
    dev: &dyn BlockDevice,
    model: &mut Model,
    off: u64,
    len: u64,
    cs: u64,
) -> Result<(), String> {
    let mut got = vec![0u8; len as usize];
    dev.read_at(&mut got, off)
        .map_err(|e| format!("read after discard at {off}+{len}: {e}"))?;
    let before = model.get(off, len);
    let full_start = off.div_ceil(cs) * cs;
    let full_end = (off + len) / cs * cs;
    for (i, &g) in got.iter().enumerate() {
        let o = off + i as u64;
        let fully = o >= full_start && o < full_end;
        let ok = g == 0 || g == model.base_byte(o) || (!fully && g == before[i]);
        if !ok {
            return Err(format!(
                "after discard at {off}+{len}: byte at {o} reads {g:#04x}; expected zero, the backing \
                 file's {:#04x}{}",
                model.base_byte(o),
                if fully {
                    String::new()
                } else {
                    format!(" or the old {:#04x}", before[i])
                }
            ));
        }
    }
    model.write(&got, off);
    Ok(())
}

/// Compares the device with the model over `[off, off + len)`, in
/// chunks of at most 1 MiB.
pub fn compare_range(
    dev: &dyn BlockDevice,
    model: &Model,
    off: u64,
    len: u64,
) -> Result<(), String> {
    let mut pos = off;
    let end = off + len;
    let mut got = Vec::new();
    let mut want = Vec::new();
    while pos < end {
        let n = (end - pos).min(1 << 20);
        got.resize(n as usize, 0);
        want.resize(n as usize, 0);
        dev.read_at(&mut got, pos)
            .map_err(|e| format!("read_at({pos}, {n}): {e}"))?;
        model.read(&mut want, pos);
        if got != want {
            let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "guest byte {} reads {:#04x}, the model says {:#04x} (range {pos}+{n})",
                pos + i as u64,
                got[i],
                want[i]
            ));
        }
        pos += n;
    }
    Ok(())
}

/// Compares the device with the model over every window of `config`.
pub fn compare_windows(
    dev: &dyn BlockDevice,
    model: &Model,
    config: &Config,
) -> Result<(), String> {
    for (s, e) in config.windows() {
        compare_range(dev, model, s, e - s)?;
    }
    Ok(())
}

// ------------------------------------------------------------ judging files

/// Data segments of a (sparse) file, by SEEK_DATA/SEEK_HOLE.
pub fn data_segments(f: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on a file descriptor we own.
        let d = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if d < 0 {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        let h = if h < 0 { len as i64 } else { h };
        out.push((d as u64, (h as u64).min(len)));
        pos = h;
    }
    out
}

fn read_file_at(f: &File, buf: &mut [u8], off: u64) {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let n = f
            .read_at(&mut buf[done..], off + done as u64)
            .expect("reading the converted file");
        if n == 0 {
            buf[done..].fill(0);
            break;
        }
        done += n;
    }
}

/// Checks that the raw file `raw` holds exactly the model's bytes: same
/// size; the model's non-zero candidates compared byte for byte; every
/// other data segment of the file all zeros.
pub fn compare_raw_file(raw: &Path, model: &Model) -> Result<(), String> {
    let f = File::open(raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != model.size {
        return Err(format!(
            "{} has {len} bytes, the model {}",
            raw.display(),
            model.size
        ));
    }
    let ranges = model.interesting_ranges();
    let mut got = Vec::new();
    let mut want = Vec::new();
    for &(s, e) in &ranges {
        let mut pos = s;
        while pos < e {
            let n = (e - pos).min(1 << 20);
            got.resize(n as usize, 0);
            want.resize(n as usize, 0);
            read_file_at(&f, &mut got, pos);
            model.read(&mut want, pos);
            if got != want {
                let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                return Err(format!(
                    "qemu-img reads guest byte {} as {:#04x}, the model says {:#04x}",
                    pos + i as u64,
                    got[i],
                    want[i]
                ));
            }
            pos += n;
        }
    }
    // Outside the interesting ranges everything must be zero.
    for (ds, de) in data_segments(&f, len) {
        let mut pos = ds;
        while pos < de {
            // Skip interesting ranges.
            if let Some(&(_, e)) = ranges.iter().find(|&&(s, e)| s <= pos && pos < e) {
                pos = e;
                continue;
            }
            let next = ranges
                .iter()
                .map(|&(s, _)| s)
                .filter(|&s| s > pos)
                .min()
                .unwrap_or(u64::MAX);
            let end = de.min(next).min(pos + (1 << 20));
            got.resize((end - pos) as usize, 0);
            read_file_at(&f, &mut got, pos);
            if let Some(i) = got.iter().position(|&b| b != 0) {
                return Err(format!(
                    "qemu-img reads guest byte {} as {:#04x}, the model says 0",
                    pos + i as u64,
                    got[i]
                ));
            }
            pos = end;
        }
    }
    Ok(())
}

/// Judges a closed image by QEMU: `qemu-img check` finds no error and no
/// leak, `qemu-img info` shows neither the dirty nor the corrupt bit, and
/// `qemu-img convert -O raw` equals the model.
pub fn judge_by_qemu(path: &Path, fmt: &str, model: &Model, ctx: &str) {
    if let Err(e) = judge(path, fmt, model) {
        panic!("{ctx}: {e}");
    }
}

/// [`judge_by_qemu`] returning what it found instead of panicking.
pub fn judge(path: &Path, fmt: &str, model: &Model) -> Result<(), String> {
    if fmt == "qcow2" {
        let c = qemu_check(path, fmt);
        if !c.clean() {
            return Err(format!("qemu-img check is not clean: {}", c.output));
        }
        // Closed cleanly: neither dirty nor corrupt.
        let info = qemu_info(path);
        if info["dirty-flag"] != false || info["format-specific"]["data"]["corrupt"] == true {
            return Err(format!("the closed image is dirty or corrupt: {info}"));
        }
    }
    let raw = path.with_extension("judge.raw");
    let out = tool("qemu-img")
        .args(["convert", "-U", "-f", fmt, "-O", "raw"])
        .arg(path)
        .arg(&raw)
        .output()
        .expect("running qemu-img convert");
    if !out.status.success() {
        return Err(format!(
            "qemu-img convert fails: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let r = compare_raw_file(&raw, model);
    let _ = std::fs::remove_file(&raw);
    r
}

/// Reads a whole small file.
pub fn read_all(path: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut v))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v
}

/// Does `n` random operations of `mix` on the image of `h`, keeping
/// `model` in step: after each one the touched range (with a margin of up
/// to a cluster on each side) is compared with the model, every 32 steps
/// every window. Operations are appended to `log`; the error names the
/// failing one.
pub fn drive(
    h: &mut Handle,
    model: &mut Model,
    config: &Config,
    rng: &mut Rng,
    n: usize,
    mix: &OpMix,
    log: &mut Vec<Op>,
) -> Result<(), String> {
    let cs = config.cluster_size();
    let margin = cs.min(256 * 1024);
    for i in 0..n {
        let op = gen_op(rng, config, mix);
        log.push(op);
        apply_dev(h, &op)?;
        apply_model(model, &op);
        if let Op::Discard { off, len } = op {
            settle_discard(h.dev(), model, off, len, cs)?;
        }
        if let Some((off, len)) = op.range() {
            let s = off.saturating_sub(margin);
            let e = (off + len + margin).min(config.size);
            compare_range(h.dev(), model, s, e - s)?;
        }
        if i % 32 == 31 {
            compare_windows(h.dev(), model, config).map_err(|e| format!("full compare: {e}"))?;
        }
    }
    compare_windows(h.dev(), model, config).map_err(|e| format!("final compare: {e}"))
}

/// Formats the failure of [`drive`]: the message, the seed, how to replay,
/// the last 40 operations.
pub fn drive_failure(name: &str, seed: u64, log: &[Op], msg: &str) -> String {
    let shown = log.len().saturating_sub(40);
    let mut ops = String::new();
    for (i, op) in log.iter().enumerate().skip(shown) {
        ops.push_str(&format!("\n  #{i}: {op:?}"));
    }
    format!(
        "{name}: {msg}\nseed {seed:#x}, after {} ops; replay with DISKIMG_SEED={seed:#x} DISKIMG_OPS={}\nlast ops:{ops}",
        log.len(),
        log.len()
    )
}

impl Model {
    /// Changes the guest size: bytes past the old size read as zeros
    /// (never as the backing file), bytes past the new size are gone.
    pub fn resize(&mut self, new: u64) {
        let old = self.size;
        self.base_limit = self.base_limit.min(old).min(new);
        if new < old {
            let first_gone = new.div_ceil(PAGE);
            self.pages.split_off(&first_gone);
        } else if new > old {
            // The stale tail of the page holding the old end.
            let idx = old / PAGE;
            if old & (PAGE - 1) != 0 && self.pages.contains_key(&idx) {
                let end = ((idx + 1) * PAGE).min(new);
                self.size = new;
                self.zero(old, end - old);
            }
        }
        self.size = new;
    }
}
