//! Interoperability matrix: QEMU's tools create and fill qcow2 images over the
//! feature space, and diskimg must read every one exactly as qemu-img does.
//!
//! Each case (one `#[test]` per row of the table at the bottom) builds its
//! images in a scratch directory with qemu-img / qemu-io (seeded, so every run
//! builds the same guest content), then for every image checks:
//!
//! * `info --output=json`: same value for every key (parsed with serde_json)
//!   and the same text (key order and layout);
//! * `info` (human): same text;
//! * `map --output=json`: same text;
//! * `convert -O raw`: the same bytes as `qemu-img convert -O raw`;
//! * `compare IMG qemu.raw`: exit 0 and `Images are identical.`;
//! * `check --output=json` and `check`: the same exit code and report (a
//!   dirty image's leaks included);
//! * for chains, `info --backing-chain --output=json` as for `info`.
//!
//! Keys allowed to differ between qemu-img and diskimg: none. `actual-size` is
//! the allocated size of an image file (st_blocks * 512) that neither program
//! changes between the two runs, so it must match too; `filename` is the
//! name passed on the command line (both are run in the same directory with
//! the same relative names).
//!
//! All differences of a case are collected and reported together. Set
//! `DISKIMG_TEST_BIN` to run another binary in diskimg's place (e.g.
//! `scripts/qemu-img-as-diskimg.sh`, which makes every case pass: it proves
//! the harness) and `DISKIMG_TEST_KEEP=1` to keep the scratch directories.

mod common;

use common::{
    compare_files, diskimg, json_diff, qemu_img_in, qemu_img_ok, qemu_io, qemu_io_ok, run_in,
    text_diff, Limits, Outcome, Rng, Scratch,
};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;

/// Deadline for one diskimg command on these small images.
const DISKIMG_LIMITS: Limits = Limits {
    timeout: Duration::from_secs(120),
    address_space: None,
};

/// The scratch directory and seeded RNG a case builds its images with.
struct Ctx {
    dir: PathBuf,
    rng: Rng,
}

/// What kinds of operations a random fill may use.
#[derive(Clone, Copy)]
struct Mix {
    /// `write -z` (and `write -z -u`).
    zero: bool,
    /// `discard`.
    discard: bool,
    /// Writes at unaligned offsets and lengths.
    unaligned: bool,
    /// Number of operations.
    ops: usize,
}

/// The default mix: every kind of operation.
const ALL: Mix = Mix {
    zero: true,
    discard: true,
    unaligned: true,
    ops: 28,
};

/// Only pattern writes (for images whose format forbids nothing, but where
/// zero/discard would make little sense, e.g. compression sources).
const DATA_ONLY: Mix = Mix {
    zero: false,
    discard: false,
    unaligned: true,
    ops: 28,
};

impl Ctx {
    /// `qemu-img ARGS`, which must succeed.
    fn img(&self, args: &[&str]) -> Outcome {
        qemu_img_ok(&self.dir, args)
    }

    /// `qemu-img create -f qcow2 [-o OPTS] NAME SIZE`.
    fn create(&self, name: &str, opts: &str, size: u64) {
        let size = size.to_string();
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([name, &size]);
        self.img(&args);
    }

    /// `qemu-img create -f qcow2 -b BACKING -F FMT [-o OPTS] NAME [SIZE]`.
    fn overlay(&self, name: &str, backing: &str, backing_fmt: &str, opts: &str, size: Option<u64>) {
        let size = size.map(|s| s.to_string());
        let mut args = vec![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            backing_fmt,
        ];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.push(name);
        if let Some(s) = &size {
            args.push(s);
        }
        self.img(&args);
    }

    /// Random qemu-io operations over an image of `size` bytes whose
    /// clusters are `cluster` bytes.
    fn ops(&mut self, size: u64, cluster: u64, mix: Mix) -> Vec<String> {
        let r = &mut self.rng;
        let mut cmds = Vec::new();
        let max_len = (4 * cluster).clamp(4096, 256 * 1024);
        for _ in 0..mix.ops {
            let unaligned = mix.unaligned && r.chance(1, 4);
            let (off, mut len) = if unaligned {
                (r.below(size - 1), r.range(1, max_len))
            } else {
                (r.below(size / 512) * 512, r.range(1, max_len / 512) * 512)
            };
            len = len.min(size - off).max(1);
            let kind = r.below(10);
            let cmd = if kind >= 8 && mix.discard {
                // Discards are cluster-granular in qcow2; use aligned ranges
                // that sometimes cover whole clusters.
                let off = off / cluster * cluster;
                let len = (len.div_ceil(cluster) * cluster).min(size - off);
                format!("discard {off} {len}")
            } else if kind >= 6 && mix.zero {
                if r.chance(1, 2) {
                    format!("write -z -u {off} {len}")
                } else {
                    format!("write -z {off} {len}")
                }
            } else {
                let pattern = r.range(1, 255);
                format!("write -P {pattern} {off} {len}")
            };
            cmds.push(cmd);
        }
        cmds
    }

    /// Fills `img` (format `fmt`) with a seeded random mix of operations.
    fn fill(&mut self, fmt: &str, img: &str, size: u64, cluster: u64, mix: Mix) {
        let cmds = self.ops(size, cluster, mix);
        qemu_io_ok(&self.dir, fmt, img, &cmds);
    }

    /// `create` + `fill` with the ALL mix; returns the image name.
    fn make(&mut self, name: &'static str, opts: &str, size: u64, cluster: u64) -> &'static str {
        self.create(name, opts, size);
        self.fill("qcow2", name, size, cluster, ALL);
        name
    }

    /// A filled source image converted with `qemu-img convert -c`.
    fn compressed(
        &mut self,
        src_opts: &str,
        dst_opts: &str,
        size: u64,
        cluster: u64,
    ) -> &'static str {
        self.create("src.qcow2", src_opts, size);
        self.fill("qcow2", "src.qcow2", size, cluster, DATA_ONLY);
        let mut args = vec!["convert", "-c", "-O", "qcow2"];
        if !dst_opts.is_empty() {
            args.extend(["-o", dst_opts]);
        }
        args.extend(["src.qcow2", "img.qcow2"]);
        self.img(&args);
        "img.qcow2"
    }
}

/// What a case built: the images to check, top first.
struct Built {
    images: Vec<&'static str>,
    /// Also compare `info --backing-chain --output=json` on the first image.
    chain: bool,
}

fn one(img: &'static str) -> Built {
    Built {
        images: vec![img],
        chain: false,
    }
}

fn chain(images: Vec<&'static str>) -> Built {
    Built {
        images,
        chain: true,
    }
}

/// Runs diskimg and qemu-img with the same arguments in `dir`.
fn both(dir: &Path, args: &[&str]) -> (Outcome, Outcome) {
    let q = qemu_img_in(dir, args);
    let d = run_in(dir, &diskimg(), args, DISKIMG_LIMITS);
    (q, d)
}

/// Compares the stdout of the two runs; `json` also compares parsed values.
fn same_output(what: &str, q: &Outcome, d: &Outcome, json: bool, fails: &mut Vec<String>) {
    if !q.ok() {
        fails.push(format!(
            "{what}: qemu-img itself failed (harness problem): {}",
            q.describe()
        ));
        return;
    }
    if !d.ok() || d.signal.is_some() {
        fails.push(format!(
            "{what}: diskimg failed where qemu-img succeeded: {}",
            d.describe()
        ));
        return;
    }
    let (qs, ds) = (q.out(), d.out());
    if json {
        match (
            serde_json::from_str::<serde_json::Value>(&qs),
            serde_json::from_str::<serde_json::Value>(&ds),
        ) {
            (Ok(qv), Ok(dv)) => {
                let mut diffs = Vec::new();
                json_diff("", &qv, &dv, &mut diffs);
                if !diffs.is_empty() {
                    fails.push(format!("{what}: JSON values differ: {}", diffs.join("; ")));
                    return;
                }
            }
            (Ok(_), Err(e)) => {
                fails.push(format!(
                    "{what}: diskimg output is not JSON ({e}): {}",
                    common::excerpt(&ds, 600)
                ));
                return;
            }
            (Err(e), _) => {
                fails.push(format!(
                    "{what}: qemu-img output is not JSON ({e}) (harness problem)"
                ));
                return;
            }
        }
    }
    if qs != ds {
        fails.push(format!(
            "{what}: text differs{}: {}",
            if json {
                " (values equal: key order or layout)"
            } else {
                ""
            },
            text_diff(&qs, &ds)
        ));
    }
}

/// Checks one image: info (json + human), map, convert, compare.
fn check_image(dir: &Path, img: &str, fails: &mut Vec<String>) {
    let tag = |w: &str| format!("{img}: {w}");

    let (q, d) = both(dir, &["info", "--output=json", img]);
    same_output(&tag("info --output=json"), &q, &d, true, fails);

    let (q, d) = both(dir, &["info", img]);
    same_output(&tag("info"), &q, &d, false, fails);

    let (q, d) = both(dir, &["map", "--output=json", img]);
    same_output(&tag("map --output=json"), &q, &d, true, fails);

    for args in [&["check", "--output=json", img][..], &["check", img][..]] {
        let (q, d) = both(dir, args);
        if q.code != d.code || q.out() != d.out() {
            fails.push(format!(
                "{}: differs from qemu-img's (rc {:?} vs {:?}): {}",
                tag(&args.join(" ")),
                d.code,
                q.code,
                text_diff(&q.out(), &d.out())
            ));
        }
    }

    let qraw = format!("{img}.qemu.raw");
    let draw = format!("{img}.diskimg.raw");
    let q = qemu_img_in(dir, &["convert", "-O", "raw", img, &qraw]);
    let d = run_in(
        dir,
        &diskimg(),
        &["convert", "-O", "raw", img, &draw],
        DISKIMG_LIMITS,
    );
    if !q.ok() {
        fails.push(format!(
            "{}: qemu-img failed (harness problem): {}",
            tag("convert -O raw"),
            q.describe()
        ));
        return;
    }
    if !d.ok() {
        fails.push(format!(
            "{}: diskimg failed: {}",
            tag("convert -O raw"),
            d.describe()
        ));
    } else if let Err(e) = compare_files(&dir.join(&qraw), &dir.join(&draw)) {
        fails.push(format!(
            "{}: output differs from qemu-img's: {e}",
            tag("convert -O raw")
        ));
    }
    let _ = std::fs::remove_file(dir.join(&draw));

    let d = run_in(dir, &diskimg(), &["compare", img, &qraw], DISKIMG_LIMITS);
    if d.code != Some(0) || d.out() != "Images are identical.\n" {
        fails.push(format!(
            "{}: expected rc 0 and \"Images are identical.\": {}",
            tag(&format!("compare {img} {qraw}")),
            d.describe()
        ));
    }
    let _ = std::fs::remove_file(dir.join(&qraw));
}

/// Builds a case and runs every check on it; panics listing all differences.
fn run_case(name: &str, build: fn(&mut Ctx) -> Built) {
    let scratch = Scratch::new("interop", name);
    let mut seed = 0xD15C_1A6E_u64;
    for b in name.bytes() {
        seed = seed.wrapping_mul(31).wrapping_add(u64::from(b));
    }
    let mut ctx = Ctx {
        dir: scratch.path().to_path_buf(),
        rng: Rng::new(seed),
    };
    let built = build(&mut ctx);
    let dir = ctx.dir.clone();
    let mut fails = Vec::new();
    // Fingerprints prove diskimg's read-only commands leave images alone.
    let before: Vec<_> = built
        .images
        .iter()
        .map(|i| common::fingerprint(&dir.join(i)))
        .collect();
    for img in &built.images {
        check_image(&dir, img, &mut fails);
    }
    if built.chain {
        let top = built.images[0];
        let (q, d) = both(&dir, &["info", "--backing-chain", "--output=json", top]);
        same_output(
            &format!("{top}: info --backing-chain --output=json"),
            &q,
            &d,
            true,
            &mut fails,
        );
    }
    for (img, fp) in built.images.iter().zip(before) {
        if common::fingerprint(&dir.join(img)) != fp {
            fails.push(format!(
                "{img}: the image file changed during the read-only checks"
            ));
        }
    }
    if !fails.is_empty() {
        panic!(
            "case {name}: {} difference(s) between diskimg ({}) and qemu-img:\n - {}",
            fails.len(),
            diskimg().display(),
            fails.join("\n - ")
        );
    }
}

/// Kills a qemu-io (lazy refcounts) with SIGKILL after its writes have been
/// acknowledged but before it closes the image, leaving the dirty bit set.
fn dirty_image(ctx: &mut Ctx, name: &'static str, size: u64) {
    ctx.create(name, "lazy_refcounts=on,cluster_size=65536", size);
    let mut cmds = ctx.ops(size, 65536, DATA_ONLY);
    cmds.truncate(12);
    // stdbuf: qemu-io's stdout is a pipe here, which stdio would buffer
    // until exit; line buffering lets us see each acknowledgement.
    let stdbuf = common::tool("stdbuf");
    let mut child = Command::new(stdbuf)
        .arg("-oL")
        .arg(qemu_io())
        .args(["-f", "qcow2", name])
        .current_dir(&ctx.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-io");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    // A reader thread forwards qemu-io's output lines.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // qemu-io handles one line per stdin wake-up, so send one command at a
    // time and wait for its acknowledgement. The first half uses FUA writes
    // (`-f`: a flush follows each), so those L2 updates surely reach the
    // file; the second half stays in qemu-io's metadata cache.
    let half = cmds.len() / 2;
    let mut acked = 0;
    'send: for (i, c) in cmds.iter().enumerate() {
        let c = if i < half {
            c.replacen("write ", "write -f ", 1)
        } else {
            c.clone()
        };
        writeln!(stdin, "{c}").expect("send to qemu-io");
        stdin.flush().expect("flush qemu-io stdin");
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains("wrote ") => {
                    acked += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break 'send,
            }
        }
    }
    // Killed mid-session: the image stays marked dirty.
    child.kill().expect("SIGKILL qemu-io");
    let _ = child.wait();
    drop(stdin);
    assert_eq!(acked, cmds.len(), "qemu-io did not acknowledge all writes");
    let info = ctx.img(&["info", "--output=json", name]);
    let v: serde_json::Value = serde_json::from_str(&info.out()).expect("qemu-img info JSON");
    assert_eq!(
        v["dirty-flag"],
        serde_json::Value::Bool(true),
        "the killed image is not dirty: the case does not test what it claims"
    );
}

macro_rules! cases {
    ($($name:ident => $build:expr;)*) => {
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name), $build);
            }
        )*
    };
}

cases! {
    // --- compat and cluster sizes ------------------------------------------------
    v2_c512 => |c| one(c.make("img.qcow2", "compat=0.10,cluster_size=512", 4 * MIB, 512));
    v2_c64k => |c| one(c.make("img.qcow2", "compat=0.10", 8 * MIB, 65536));
    v2_c2m => |c| one(c.make("img.qcow2", "compat=0.10,cluster_size=2M", 16 * MIB, 2 * MIB));
    v3_c512 => |c| one(c.make("img.qcow2", "compat=1.1,cluster_size=512", 4 * MIB, 512));
    v3_c4k => |c| one(c.make("img.qcow2", "compat=1.1,cluster_size=4096", 8 * MIB, 4096));
    v3_c64k => |c| one(c.make("img.qcow2", "compat=1.1", 8 * MIB, 65536));
    v3_c2m => |c| one(c.make("img.qcow2", "compat=1.1,cluster_size=2M", 16 * MIB, 2 * MIB));
    // virtual sizes that are not a multiple of the cluster size
    v3_odd_size => |c| one(c.make("img.qcow2", "", 5 * MIB + 1536, 65536));
    v2_odd_size => |c| one(c.make("img.qcow2", "compat=0.10,cluster_size=4096", 3 * MIB + 512, 4096));

    // --- refcount widths -----------------------------------------------------------
    refcount_bits_1 => |c| one(c.make("img.qcow2", "refcount_bits=1", 8 * MIB, 65536));
    refcount_bits_16_c4k => |c| one(c.make("img.qcow2", "refcount_bits=16,cluster_size=4096", 8 * MIB, 4096));
    refcount_bits_64 => |c| one(c.make("img.qcow2", "refcount_bits=64", 8 * MIB, 65536));
    refcount_bits_1_c512 => |c| one(c.make("img.qcow2", "refcount_bits=1,cluster_size=512", 4 * MIB, 512));

    // --- extended L2 ---------------------------------------------------------------
    extended_l2_c16k => |c| one(c.make("img.qcow2", "extended_l2=on,cluster_size=16384", 8 * MIB, 16384));
    extended_l2_c64k => |c| one(c.make("img.qcow2", "extended_l2=on", 8 * MIB, 65536));
    extended_l2_c2m => |c| one(c.make("img.qcow2", "extended_l2=on,cluster_size=2M", 16 * MIB, 2 * MIB));
    extended_l2_refcount_bits_64 => |c| one(c.make("img.qcow2", "extended_l2=on,refcount_bits=64,cluster_size=32768", 8 * MIB, 32768));

    // --- compression ---------------------------------------------------------------
    compressed_zlib => |c| one(c.compressed("", "compression_type=zlib", 8 * MIB, 65536));
    compressed_zstd => |c| one(c.compressed("", "compression_type=zstd", 8 * MIB, 65536));
    compressed_zlib_v2 => |c| one(c.compressed("", "compat=0.10", 8 * MIB, 65536));
    compressed_zstd_c4k => |c| one(c.compressed("cluster_size=4096", "compression_type=zstd,cluster_size=4096", 4 * MIB, 4096));
    compressed_zlib_c512 => |c| one(c.compressed("cluster_size=512", "compression_type=zlib,cluster_size=512", 2 * MIB, 512));
    compressed_zstd_c2m => |c| one(c.compressed("cluster_size=2M", "compression_type=zstd,cluster_size=2M", 16 * MIB, 2 * MIB));
    compressed_zstd_extended_l2 => |c| one(c.compressed("", "compression_type=zstd,extended_l2=on", 8 * MIB, 65536));
    // Compressed and plain clusters mixed, partly overwritten (qemu-io write -c).
    compressed_mixed_write_c => |c| {
        c.create("img.qcow2", "compression_type=zstd", 8 * MIB);
        // 40 distinct clusters of 128 (QEMU cannot compress into an
        // allocated cluster), in random order.
        let mut clusters: Vec<u64> = (0..128).collect();
        for i in (1..clusters.len()).rev() {
            clusters.swap(i, c.rng.below(i as u64 + 1) as usize);
        }
        let cmds: Vec<String> = clusters[..40]
            .iter()
            .enumerate()
            .map(|(i, cl)| format!("write -c -P {} {} 65536", i + 1, cl * 65536))
            .collect();
        qemu_io_ok(&c.dir, "qcow2", "img.qcow2", &cmds);
        c.fill("qcow2", "img.qcow2", 8 * MIB, 65536, ALL);
        one("img.qcow2")
    };

    // --- lazy refcounts, dirty ----------------------------------------------------
    lazy_refcounts => |c| one(c.make("img.qcow2", "lazy_refcounts=on", 8 * MIB, 65536));
    dirty_killed_writer => |c| {
        dirty_image(c, "img.qcow2", 8 * MIB);
        one("img.qcow2")
    };

    // --- preallocation --------------------------------------------------------------
    prealloc_metadata => |c| one(c.make("img.qcow2", "preallocation=metadata", 8 * MIB, 65536));
    prealloc_falloc => |c| one(c.make("img.qcow2", "preallocation=falloc", 8 * MIB, 65536));
    prealloc_full => |c| one(c.make("img.qcow2", "preallocation=full", 8 * MIB, 65536));
    prealloc_metadata_v2 => |c| one(c.make("img.qcow2", "preallocation=metadata,compat=0.10", 8 * MIB, 65536));
    prealloc_metadata_extended_l2 => |c| one(c.make("img.qcow2", "preallocation=metadata,extended_l2=on", 8 * MIB, 65536));
    prealloc_falloc_c4k => |c| one(c.make("img.qcow2", "preallocation=falloc,cluster_size=4096", 4 * MIB, 4096));

    // --- external data file -------------------------------------------------------
    data_file => |c| one(c.make("img.qcow2", "data_file=img.data", 8 * MIB, 65536));
    data_file_raw => |c| one(c.make("img.qcow2", "data_file=img.data,data_file_raw=on", 8 * MIB, 65536));
    data_file_extended_l2 => |c| one(c.make("img.qcow2", "data_file=img.data,extended_l2=on", 8 * MIB, 65536));

    // --- internal snapshots ---------------------------------------------------------
    snapshots_v3 => |c| {
        let img = c.make("img.qcow2", "", 8 * MIB, 65536);
        c.img(&["snapshot", "-c", "s1", img]);
        c.fill("qcow2", img, 8 * MIB, 65536, ALL);
        c.img(&["snapshot", "-c", "second snapshot", img]);
        c.fill("qcow2", img, 8 * MIB, 65536, ALL);
        one(img)
    };
    snapshots_v2 => |c| {
        let img = c.make("img.qcow2", "compat=0.10,cluster_size=4096", 4 * MIB, 4096);
        c.img(&["snapshot", "-c", "s1", img]);
        c.fill("qcow2", img, 4 * MIB, 4096, ALL);
        c.img(&["snapshot", "-c", "s2", img]);
        c.img(&["snapshot", "-d", "s1", img]);
        c.fill("qcow2", img, 4 * MIB, 4096, ALL);
        one(img)
    };

    // --- persistent bitmaps ---------------------------------------------------------
    bitmaps => |c| {
        let img = c.make("img.qcow2", "", 8 * MIB, 65536);
        c.img(&["bitmap", "--add", img, "enabled0"]);
        c.img(&["bitmap", "--add", "--disable", "-g", "1M", img, "disabled1"]);
        c.fill("qcow2", img, 8 * MIB, 65536, ALL);
        one(img)
    };
    bitmaps_with_snapshot_c4k => |c| {
        let img = c.make("img.qcow2", "cluster_size=4096", 4 * MIB, 4096);
        c.img(&["snapshot", "-c", "s1", img]);
        c.img(&["bitmap", "--add", "-g", "512", img, "fine"]);
        c.img(&["bitmap", "--add", "--disable", img, "off"]);
        c.fill("qcow2", img, 4 * MIB, 4096, ALL);
        one(img)
    };

    // --- backing chains ---------------------------------------------------------------
    // raw base <- qcow2 v3 <- qcow2 v3
    chain_raw_base_3_deep => |c| {
        c.img(&["create", "-q", "-f", "raw", "base.raw", &(8 * MIB).to_string()]);
        c.fill("raw", "base.raw", 8 * MIB, 65536, DATA_ONLY);
        c.overlay("mid.qcow2", "base.raw", "raw", "", None);
        c.fill("qcow2", "mid.qcow2", 8 * MIB, 65536, ALL);
        c.overlay("top.qcow2", "mid.qcow2", "qcow2", "", None);
        c.fill("qcow2", "top.qcow2", 8 * MIB, 65536, ALL);
        chain(vec!["top.qcow2", "mid.qcow2", "base.raw"])
    };
    // qcow2 v2 base <- v3 4k clusters <- extended L2 (partial cluster writes fall through)
    chain_qcow2_mixed_3_deep => |c| {
        c.make("base.qcow2", "compat=0.10", 8 * MIB, 65536);
        c.overlay("mid.qcow2", "base.qcow2", "qcow2", "cluster_size=4096", None);
        c.fill("qcow2", "mid.qcow2", 8 * MIB, 4096, ALL);
        c.overlay("top.qcow2", "mid.qcow2", "qcow2", "extended_l2=on,cluster_size=131072", None);
        c.fill("qcow2", "top.qcow2", 8 * MIB, 131072, ALL);
        chain(vec!["top.qcow2", "mid.qcow2", "base.qcow2"])
    };
    // compressed base <- plain overlay with zero writes and discards over data
    chain_compressed_base => |c| {
        c.compressed("", "compression_type=zstd", 8 * MIB, 65536);
        c.overlay("top.qcow2", "img.qcow2", "qcow2", "", None);
        c.fill("qcow2", "top.qcow2", 8 * MIB, 65536, ALL);
        chain(vec!["top.qcow2", "img.qcow2"])
    };
    // backing file shorter than its overlay (raw, size not cluster aligned)
    backing_shorter_raw => |c| {
        c.img(&["create", "-q", "-f", "raw", "base.raw", &(3 * MIB + 512).to_string()]);
        c.fill("raw", "base.raw", 3 * MIB + 512, 65536, DATA_ONLY);
        c.overlay("top.qcow2", "base.raw", "raw", "", Some(8 * MIB));
        c.fill("qcow2", "top.qcow2", 8 * MIB, 65536, ALL);
        chain(vec!["top.qcow2", "base.raw"])
    };
    // backing qcow2 shorter than its overlay, overlay with extended L2
    backing_shorter_qcow2 => |c| {
        c.make("base.qcow2", "cluster_size=4096", 3 * MIB + 1024, 4096);
        c.overlay("top.qcow2", "base.qcow2", "qcow2", "extended_l2=on", Some(8 * MIB));
        c.fill("qcow2", "top.qcow2", 8 * MIB, 65536, ALL);
        chain(vec!["top.qcow2", "base.qcow2"])
    };
    // v2 overlay over a v3 base: zero writes in v2 must allocate zeroed data
    chain_v2_overlay => |c| {
        c.make("base.qcow2", "", 8 * MIB, 65536);
        c.overlay("top.qcow2", "base.qcow2", "qcow2", "compat=0.10,cluster_size=512", None);
        c.fill("qcow2", "top.qcow2", 8 * MIB, 512, ALL);
        chain(vec!["top.qcow2", "base.qcow2"])
    };
}
