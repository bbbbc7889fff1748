//! Hostile images: malformed qcow2 files built by the tests (valid images made
//! by qemu-img, then patched; some built from scratch), run through every
//! read-only command with qemu-img as the judge.
//!
//! For each image and each of `info`, `info --output=json`,
//! `map --output=json`, `convert -O raw`, `compare IMG IMG` and
//! `compare IMG RAW` (RAW = qemu-img's conversion, when it has one), qemu-img
//! runs the same command first, then diskimg must either
//!
//! * give qemu-img's answer: the same rc and stdout (for `convert`, the same
//!   output bytes; for `compare`, the same rc), or
//! * refuse: exit non-zero (for `compare`, with an error code >= 2) with a
//!   ONE-line stderr message that names the file (the image or a backing
//!   file). Refusing is allowed, answering differently is not — except for
//!   `info`, which must succeed wherever `qemu-img info` succeeds.
//!
//! A failure also matching qemu-img's rc, stdout and stderr exactly counts as
//! qemu-img's answer (that is what lets `scripts/qemu-img-as-diskimg.sh`
//! pass every case, which validates this harness).
//!
//! Whatever the answer, no diskimg command may panic ("panicked" in stderr,
//! rc 101, death by a signal), run longer than 10 s (it is killed), reach a
//! peak RSS over 200 MiB (measured with wait4; RLIMIT_AS of 4 GiB is only a
//! safety net for the machine), or change any file (fingerprints before and
//! after every command).
//!
//! `check` and `check --output=json` are judged the same way: qemu-img's
//! answer is its rc with its stdout (the report); a refusal is a non-zero rc
//! other than 2/3 with one stderr line naming the file. Per-cluster
//! diagnostics on stderr are not compared.

mod common;

use common::qcow2::{self as q2, ext, off};
use common::{
    compare_files, diskimg, fingerprint, patch, patch32, patch64, qemu_img_ok, qemu_io_ok, run_in,
    Limits, Outcome, Rng, Scratch,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Per-command deadline for diskimg.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Peak RSS allowed for a diskimg command.
const MAX_RSS_KIB: i64 = 200 * 1024;
/// Address-space safety net (qemu-img itself maps ~1.3 GiB, so the stand-in
/// must fit too); the judged figure is the peak RSS.
const AS_LIMIT: u64 = 4 << 30;

const DISKIMG_LIMITS: Limits = Limits {
    timeout: TIMEOUT,
    address_space: Some(AS_LIMIT),
};
/// The judge gets more time; a qemu-img timeout counts as a refusal by
/// qemu-img. (qemu-img 10.0.2 itself recurses without end on backing loops
/// in map/convert/compare/check, growing in memory: those cases fail against
/// the qemu-img stand-in, as they should.)
const QEMU_LIMITS: Limits = Limits {
    timeout: Duration::from_secs(15),
    address_space: None,
};

/// A scratch directory with one hostile image to judge.
struct Case {
    scratch: Scratch,
    /// The image file name (relative to the directory).
    image: String,
    /// Names an error message may use to name the file: the image and any
    /// backing / data files involved.
    names: Vec<String>,
}

impl Case {
    fn new(name: &str) -> Case {
        Case {
            scratch: Scratch::new("hostile", name),
            image: "img.qcow2".into(),
            names: vec!["img.qcow2".into()],
        }
    }
    fn dir(&self) -> &Path {
        self.scratch.path()
    }
    fn path(&self) -> PathBuf {
        self.dir().join(&self.image)
    }
    fn img(&self, args: &[&str]) -> Outcome {
        qemu_img_ok(self.dir(), args)
    }
    fn io(&self, cmds: &[&str]) {
        let cmds: Vec<String> = cmds.iter().map(|s| s.to_string()).collect();
        qemu_io_ok(self.dir(), "qcow2", &self.image, &cmds);
    }
    /// A valid 1 MiB image with data in clusters 0-1 and 8, a zero cluster at
    /// 4 and the rest unallocated.
    fn base(&self, opts: &str) -> PathBuf {
        let mut args = vec!["create", "-q", "-f", "qcow2"];
        if !opts.is_empty() {
            args.extend(["-o", opts]);
        }
        args.extend([self.image.as_str(), "1M"]);
        self.img(&args);
        let cs = q2::header(&self.path()).cluster_size();
        let mut cmds = vec![format!("write -P 0x61 0 {}", 2 * cs)];
        if 5 * cs <= 1 << 20 {
            cmds.push(format!("write -z {} {}", 4 * cs, cs));
        }
        if 9 * cs <= 1 << 20 {
            cmds.push(format!("write -P 0x62 {} 1000", 8 * cs));
        }
        qemu_io_ok(self.dir(), "qcow2", &self.image, &cmds);
        self.path()
    }
    fn header(&self) -> q2::Header {
        q2::header(&self.path())
    }
    fn also_names(&mut self, n: &str) {
        self.names.push(n.to_string());
    }
}

/// One command's verdict is appended to `fails` when it breaks a rule.
struct Judge<'a> {
    dir: &'a Path,
    img: &'a str,
    names: &'a [String],
    files: Vec<PathBuf>,
    fails: Vec<String>,
}

/// Which kind of command is judged, for the acceptance rules.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// `info`: must succeed wherever qemu-img's succeeds.
    Info,
    /// Output compared as stdout text.
    Text,
    /// `convert`: output files compared.
    Convert,
    /// `compare`: rc 0/1 are answers, >= 2 errors.
    Compare,
}

impl Judge<'_> {
    fn snapshot(&self) -> Vec<Option<(u64, u64)>> {
        self.files.iter().map(|f| fingerprint(f)).collect()
    }

    /// The rules every diskimg command obeys, whatever it answers.
    fn universal(&mut self, what: &str, d: &Outcome, before: &[Option<(u64, u64)>]) -> bool {
        let mut ok = true;
        let err = d.err();
        if d.timed_out {
            self.fails
                .push(format!("{what}: hung (killed after {TIMEOUT:?})"));
            ok = false;
        } else if err.contains("panicked") || d.code == Some(101) {
            self.fails.push(format!("{what}: PANIC: {}", d.describe()));
            ok = false;
        } else if let Some(sig) = d.signal {
            self.fails
                .push(format!("{what}: killed by signal {sig}: {}", d.describe()));
            ok = false;
        }
        if d.peak_rss_kib > MAX_RSS_KIB {
            self.fails.push(format!(
                "{what}: peak RSS {} MiB exceeds 200 MiB",
                d.peak_rss_kib / 1024
            ));
            ok = false;
        }
        let after = self.snapshot();
        for ((f, b), a) in self.files.iter().zip(before).zip(&after) {
            if b != a {
                self.fails.push(format!("{what}: changed {}", f.display()));
                ok = false;
            }
        }
        ok
    }

    /// The write path on a copy of the image: writes, zero writes and
    /// discards through `io`, a repair, a resize. Whatever the answer (a
    /// hostile image may well be refused or marked corrupt), diskimg must not
    /// panic, hang or exceed its memory bound.
    fn writes(&mut self) {
        let copy = format!("w.{}", self.img);
        if std::fs::copy(self.dir.join(self.img), self.dir.join(&copy)).is_err() {
            return;
        }
        let runs: [&[&str]; 3] = [
            &[
                "io",
                "-c",
                "write -P 1 0 64k",
                "-c",
                "write -P 2 1M 5k",
                "-c",
                "write -z 2M 64k",
                "-c",
                "discard 0 64k",
                "-c",
                "flush",
                &copy,
            ],
            &["check", "-r", "all", &copy],
            &["resize", &copy, "+1M"],
        ];
        for args in runs {
            let what = format!("{} (on a copy)", args.join(" "));
            let d = run_in(self.dir, &diskimg(), args, DISKIMG_LIMITS);
            let err = d.err();
            if d.timed_out {
                self.fails
                    .push(format!("{what}: hung (killed after {TIMEOUT:?})"));
            } else if err.contains("panicked") || d.code == Some(101) {
                self.fails.push(format!("{what}: PANIC: {}", d.describe()));
            } else if let Some(sig) = d.signal {
                self.fails
                    .push(format!("{what}: killed by signal {sig}: {}", d.describe()));
            }
            if d.peak_rss_kib > MAX_RSS_KIB {
                self.fails.push(format!(
                    "{what}: peak RSS {} MiB exceeds 200 MiB",
                    d.peak_rss_kib / 1024
                ));
            }
        }
        let _ = std::fs::remove_file(self.dir.join(&copy));
    }

    /// A refusal: non-zero rc, exactly one stderr line naming a file.
    fn refusal_problem(&self, d: &Outcome, kind: Kind) -> Option<String> {
        let rc_ok = match kind {
            Kind::Compare => d.code.is_some_and(|c| c >= 2),
            _ => d.code.is_some_and(|c| c != 0),
        };
        if !rc_ok {
            return Some(format!("{} is not an error exit", d.status()));
        }
        let err = d.err();
        let msg = err.trim_end_matches('\n');
        if msg.is_empty() {
            return Some("no error message on stderr".into());
        }
        if msg.contains('\n') {
            return Some(format!(
                "error message is not one line: {}",
                common::excerpt(&err, 600)
            ));
        }
        if !self.names.iter().any(|n| msg.contains(n.as_str())) {
            return Some(format!(
                "error message names none of {:?}: {msg:?}",
                self.names
            ));
        }
        None
    }

    /// Same failure as qemu-img, byte for byte (the stand-in's case).
    fn same_failure(q: &Outcome, d: &Outcome) -> bool {
        q.code == d.code
            && q.stdout == d.stdout
            && q.err() == d.err().replace("diskimg:", "qemu-img:")
    }

    fn command(&mut self, kind: Kind, args: &[&str], out_files: Option<(&str, &str)>) {
        let what = args.join(" ");
        let qargs: Vec<&str> = args
            .iter()
            .map(|a| {
                if Some(*a) == out_files.map(|o| o.1) {
                    out_files.map_or(*a, |o| o.0)
                } else {
                    *a
                }
            })
            .collect();
        let q = run_in(self.dir, &common::qemu_img(), &qargs, QEMU_LIMITS);
        let before = self.snapshot();
        let d = run_in(self.dir, &diskimg(), args, DISKIMG_LIMITS);
        if !self.universal(&what, &d, &before) {
            return;
        }
        let q_answered = match kind {
            Kind::Compare => matches!(q.code, Some(0 | 1)),
            _ => q.ok(),
        };
        if q_answered {
            let same = match kind {
                Kind::Convert => {
                    let (qo, dout) = out_files.expect("convert outputs");
                    d.ok() && compare_files(&self.dir.join(qo), &self.dir.join(dout)).is_ok()
                }
                Kind::Compare => d.code == q.code,
                _ => d.ok() && d.stdout == q.stdout,
            };
            if same {
                return;
            }
            if kind == Kind::Info {
                let why = if d.ok() {
                    common::text_diff(&q.out(), &d.out())
                } else {
                    format!("diskimg failed: {}", d.describe())
                };
                self.fails
                    .push(format!("{what}: qemu-img answers, diskimg must too: {why}"));
                return;
            }
            if d.code == Some(0) || (kind == Kind::Compare && d.code == Some(1)) {
                let why = match kind {
                    Kind::Convert => {
                        let (qo, dout) = out_files.expect("convert outputs");
                        compare_files(&self.dir.join(qo), &self.dir.join(dout))
                            .err()
                            .unwrap_or_default()
                    }
                    Kind::Compare => format!("qemu-img rc {:?}, diskimg rc {:?}", q.code, d.code),
                    _ => common::text_diff(&q.out(), &d.out()),
                };
                self.fails.push(format!(
                    "{what}: diskimg answers differently from qemu-img: {why}"
                ));
                return;
            }
            if let Some(p) = self.refusal_problem(&d, kind) {
                self.fails.push(format!(
                    "{what}: qemu-img answers; diskimg's refusal is malformed: {p}"
                ));
            }
        } else {
            if Self::same_failure(&q, &d) {
                return;
            }
            if let Some(p) = self.refusal_problem(&d, kind) {
                self.fails.push(format!(
                    "{what}: qemu-img refuses ({}: {}), diskimg must refuse with one line naming the file: {p}",
                    q.status(),
                    q.err().trim_end()
                ));
            }
        }
    }

    /// `check` (read-only) and `check --output=json`: qemu-img's answer is
    /// its rc and stdout (rc 1 "check not completed" with the same report
    /// counts too); otherwise rc 0/2/3 from diskimg is a different answer and
    /// anything else must be a one-line refusal. The per-cluster diagnostics
    /// printed on stderr are not compared.
    fn check(&mut self, json: bool) {
        let mut args = vec!["check"];
        if json {
            args.push("--output=json");
        }
        args.push(self.img);
        let what = args.join(" ");
        let q = run_in(self.dir, &common::qemu_img(), &args, QEMU_LIMITS);
        let before = self.snapshot();
        let d = run_in(self.dir, &diskimg(), &args, DISKIMG_LIMITS);
        if !self.universal(&what, &d, &before) {
            return;
        }
        let answer = |o: &Outcome| matches!(o.code, Some(0 | 2 | 3));
        // Same rc and same report on stdout is qemu-img's answer, whatever
        // the rc (an incomplete check, rc 1, still prints its report).
        if !q.timed_out && d.code == q.code && d.stdout == q.stdout {
            return;
        }
        if Self::same_failure(&q, &d) {
            return;
        }
        if answer(&d) {
            let why = if answer(&q) {
                format!(
                    "qemu-img {} / diskimg {}; {}",
                    q.status(),
                    d.status(),
                    common::text_diff(&q.out(), &d.out())
                )
            } else {
                format!(
                    "qemu-img {} ({}: {}), diskimg answers {}",
                    if q.timed_out {
                        "gives no answer"
                    } else {
                        "refuses"
                    },
                    q.status(),
                    q.err().trim_end(),
                    d.status()
                )
            };
            self.fails.push(format!(
                "{what}: diskimg answers differently from qemu-img: {why}"
            ));
            return;
        }
        if let Some(p) = self.refusal_problem(&d, Kind::Text) {
            self.fails
                .push(format!("{what}: diskimg's refusal is malformed: {p}"));
        }
    }
}

/// Judges every read-only command on the case's image; returns the failures.
fn judge_image(dir: &Path, img: &str, names: &[String]) -> Vec<String> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            files.push(e.path());
        }
    }
    files.sort();
    let mut j = Judge {
        dir,
        img,
        names,
        files,
        fails: Vec::new(),
    };
    j.command(Kind::Info, &["info", img], None);
    j.command(Kind::Info, &["info", "--output=json", img], None);
    j.command(Kind::Text, &["map", "--output=json", img], None);
    j.command(
        Kind::Convert,
        &["convert", "-O", "raw", img, "out.diskimg.raw"],
        Some(("out.qemu.raw", "out.diskimg.raw")),
    );
    let _ = std::fs::remove_file(dir.join("out.diskimg.raw"));
    j.command(Kind::Compare, &["compare", img, img], None);
    if dir.join("out.qemu.raw").exists() && fingerprint(&dir.join("out.qemu.raw")).is_some() {
        // Only meaningful when qemu-img could convert it.
        let q = run_in(
            dir,
            &common::qemu_img(),
            &["convert", "-O", "raw", img, "ref.raw"],
            QEMU_LIMITS,
        );
        if q.ok() {
            j.files.push(dir.join("ref.raw"));
            j.command(Kind::Compare, &["compare", img, "ref.raw"], None);
        }
    }
    let _ = std::fs::remove_file(dir.join("out.qemu.raw"));
    j.check(false);
    j.check(true);
    let _ = std::fs::remove_file(dir.join("ref.raw"));
    j.writes();
    j.fails
}

/// Judges the case; panics listing every broken rule.
fn judge(name: &str, case: &Case) {
    let fails = judge_image(case.dir(), &case.image, &case.names);
    if !fails.is_empty() {
        panic!(
            "hostile case {name} ({}): {} problem(s):\n - {}",
            diskimg().display(),
            fails.len(),
            fails.join("\n - ")
        );
    }
}

/// Sets bit `bit` in the u64 at `at`.
fn set_bit64(p: &Path, at: u64, bit: u32) {
    let v = q2::read64(p, at) | (1u64 << bit);
    patch64(p, at, v);
}

/// A v3 image whose feature-name table entry for (type 0, bit 4) is
/// rewritten to name incompatible bit `bit` as `name`.
fn rename_feature(c: &Case, bit: u8, name: &str) {
    let h = c.header();
    let ft = h.ext(ext::FEATURE_TABLE).expect("feature table");
    let mut entry = [0u8; 48];
    entry[0] = 0;
    entry[1] = bit;
    entry[2..2 + name.len()].copy_from_slice(name.as_bytes());
    // Entry 4 is (0, 4) "extended L2 entries" in QEMU's table; overwrite it.
    patch(&c.path(), ft.data + 4 * 48, &entry);
}

/// Writes a minimal v2 header from scratch: `len` bytes in all.
fn scratch_v2(
    p: &Path,
    cluster_bits: u32,
    size: u64,
    backing: Option<(u64, u32, &[u8])>,
    len: u64,
) {
    let mut h = vec![0u8; len as usize];
    h[0..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&2u32.to_be_bytes());
    h[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
    h[24..32].copy_from_slice(&size.to_be_bytes());
    // One refcount table cluster, just after the header cluster (may be past EOF).
    h[48..56].copy_from_slice(&(1u64 << cluster_bits).to_be_bytes());
    h[56..60].copy_from_slice(&1u32.to_be_bytes());
    if let Some((o, s, name)) = backing {
        h[8..16].copy_from_slice(&o.to_be_bytes());
        h[16..20].copy_from_slice(&s.to_be_bytes());
        let o = o as usize;
        if o < h.len() {
            let n = name.len().min(h.len() - o);
            h[o..o + n].copy_from_slice(&name[..n]);
        }
    }
    std::fs::write(p, h).expect("write scratch image");
}

macro_rules! hostile {
    ($($name:ident => $build:expr;)*) => {
        $(
            #[test]
            fn $name() {
                let mut c = Case::new(stringify!($name));
                let build: fn(&mut Case) = $build;
                build(&mut c);
                judge(stringify!($name), &c);
            }
        )*
    };
}

hostile! {
    // A valid image: everything must match (proves the judge is not vacuous).
    valid_baseline => |c| { c.base(""); };
    valid_baseline_v2 => |c| { c.base("compat=0.10"); };

    // --- header fields -------------------------------------------------------------
    version_4 => |c| { let p = c.base(""); patch32(&p, off::VERSION, 4); };
    version_0 => |c| { let p = c.base(""); patch32(&p, off::VERSION, 0); };
    cluster_bits_8 => |c| { let p = c.base(""); patch32(&p, off::CLUSTER_BITS, 8); };
    cluster_bits_22 => |c| { let p = c.base(""); patch32(&p, off::CLUSTER_BITS, 22); };
    cluster_bits_huge => |c| { let p = c.base(""); patch32(&p, off::CLUSTER_BITS, 0xffff_ffff); };
    extended_l2_cluster_bits_13 => |c| { let p = c.base("extended_l2=on"); patch32(&p, off::CLUSTER_BITS, 13); };
    size_too_big => |c| { let p = c.base(""); patch64(&p, off::SIZE, 1 << 62); };
    size_max => |c| { let p = c.base(""); patch64(&p, off::SIZE, u64::MAX); };
    header_length_too_short => |c| { let p = c.base(""); patch32(&p, off::HEADER_LENGTH, 100); };
    header_length_too_long => |c| { let p = c.base(""); patch32(&p, off::HEADER_LENGTH, 0x20000); };
    header_length_unaligned => |c| { let p = c.base(""); patch32(&p, off::HEADER_LENGTH, 109); };
    refcount_order_7 => |c| { let p = c.base(""); patch32(&p, off::REFCOUNT_ORDER, 7); };
    refcount_order_huge => |c| { let p = c.base(""); patch32(&p, off::REFCOUNT_ORDER, 0xffff_fff0); };
    crypt_method_1 => |c| { let p = c.base(""); patch32(&p, off::CRYPT, 1); };
    crypt_method_2_without_header => |c| { let p = c.base(""); patch32(&p, off::CRYPT, 2); };
    crypt_method_3 => |c| { let p = c.base(""); patch32(&p, off::CRYPT, 3); };

    // --- L1 / refcount table / snapshot table geometry --------------------------------
    l1_size_huge => |c| { let p = c.base(""); patch32(&p, off::L1_SIZE, 0x7fff_ffff); };
    l1_size_over_limit => |c| { let p = c.base(""); patch32(&p, off::L1_SIZE, 0x40_0001); };
    l1_size_zero => |c| { let p = c.base(""); patch32(&p, off::L1_SIZE, 0); };
    l1_offset_past_eof => |c| { let p = c.base(""); patch64(&p, off::L1_OFFSET, 1 << 40); };
    l1_offset_unaligned => |c| {
        let p = c.base("");
        let h = c.header();
        patch64(&p, off::L1_OFFSET, h.l1_offset + 8);
    };
    l1_offset_overflow => |c| { let p = c.base(""); patch64(&p, off::L1_OFFSET, 0xffff_ffff_ffff_0000); };
    refcount_table_clusters_huge => |c| { let p = c.base(""); patch32(&p, off::RT_CLUSTERS, 0xffff_ffff); };
    refcount_table_clusters_over_limit => |c| { let p = c.base(""); patch32(&p, off::RT_CLUSTERS, 129); };
    refcount_table_clusters_zero => |c| { let p = c.base(""); patch32(&p, off::RT_CLUSTERS, 0); };
    refcount_table_past_eof => |c| { let p = c.base(""); patch64(&p, off::RT_OFFSET, 1 << 40); };
    refcount_block_past_eof => |c| {
        let p = c.base("");
        let h = c.header();
        patch64(&p, h.rt_offset, 1 << 40);
    };
    snapshot_table_past_eof => |c| {
        let p = c.base("");
        patch32(&p, off::NB_SNAPSHOTS, 1);
        patch64(&p, off::SNAPSHOTS_OFFSET, 1 << 40);
    };
    snapshot_table_unaligned => |c| {
        let p = c.base("");
        c.img(&["snapshot", "-c", "s1", "img.qcow2"]);
        let h = c.header();
        patch64(&p, off::SNAPSHOTS_OFFSET, h.snapshots_offset + 8);
    };
    too_many_snapshots_65537 => |c| {
        let p = c.base("");
        patch32(&p, off::NB_SNAPSHOTS, 65537);
        patch64(&p, off::SNAPSHOTS_OFFSET, 0x10000);
    };
    snapshots_65536_entries_past_eof => |c| {
        let p = c.base("");
        patch32(&p, off::NB_SNAPSHOTS, 65536);
        patch64(&p, off::SNAPSHOTS_OFFSET, 0x10000);
    };
    snapshot_extra_data_too_big => |c| {
        let p = c.base("");
        c.img(&["snapshot", "-c", "s1", "img.qcow2"]);
        let h = c.header();
        patch32(&p, h.snapshots_offset + 36, 0x10_0000);
    };
    snapshot_l1_past_eof => |c| {
        let p = c.base("");
        c.img(&["snapshot", "-c", "s1", "img.qcow2"]);
        let h = c.header();
        patch64(&p, h.snapshots_offset, 1 << 40);
        patch32(&p, h.snapshots_offset + 8, 0x7fff_ffff);
    };
    snapshot_name_runs_past_table => |c| {
        let p = c.base("");
        c.img(&["snapshot", "-c", "s1", "img.qcow2"]);
        let h = c.header();
        patch(&p, h.snapshots_offset + 14, &0xffffu16.to_be_bytes());
    };

    // --- feature bits ---------------------------------------------------------------------
    unknown_incompat_bit_unnamed => |c| { let p = c.base(""); set_bit64(&p, off::INCOMPAT, 5); };
    unknown_incompat_bit_40 => |c| { let p = c.base(""); set_bit64(&p, off::INCOMPAT, 40); };
    unknown_incompat_bit_named => |c| {
        let p = c.base("");
        rename_feature(c, 5, "frobnicated clusters");
        set_bit64(&p, off::INCOMPAT, 5);
    };
    unknown_compat_and_autoclear_bits => |c| {
        let p = c.base("");
        set_bit64(&p, off::COMPAT, 9);
        set_bit64(&p, off::AUTOCLEAR, 7);
    };
    dirty_bit_set => |c| { let p = c.base(""); set_bit64(&p, off::INCOMPAT, 0); };
    corrupt_bit_set => |c| { let p = c.base(""); set_bit64(&p, off::INCOMPAT, 1); };
    compression_bit_with_zlib => |c| { let p = c.base(""); set_bit64(&p, off::INCOMPAT, 3); };
    compression_type_without_bit => |c| { let p = c.base(""); patch(&p, off::COMPRESSION_TYPE, &[1]); };
    compression_type_unknown => |c| {
        let p = c.base("");
        patch(&p, off::COMPRESSION_TYPE, &[2]);
        set_bit64(&p, off::INCOMPAT, 3);
    };
    compression_type_beyond_short_header => |c| {
        // header_length 104: the compression type byte is absent, so the bit is wrong.
        let p = c.base("compression_type=zstd");
        patch32(&p, off::HEADER_LENGTH, 104);
    };
    data_file_bit_without_name => |c| { let p = c.base(""); set_bit64(&p, off::INCOMPAT, 2); };
    data_file_raw_without_data_file => |c| { let p = c.base(""); set_bit64(&p, off::AUTOCLEAR, 1); };
    data_file_missing => |c| {
        c.base("data_file=img.data");
        std::fs::remove_file(c.dir().join("img.data")).expect("rm data file");
        c.also_names("img.data");
    };
    extended_l2_bit_on_plain_image => |c| { let p = c.base(""); set_bit64(&p, off::INCOMPAT, 4); };

    // --- header extensions ---------------------------------------------------------------
    extension_length_past_cluster_0 => |c| {
        let p = c.base("");
        let ft = c.header().ext(ext::FEATURE_TABLE).expect("feature table");
        patch32(&p, ft.at + 4, 0x10_0000);
    };
    backing_format_extension_too_long => |c| {
        c.img(&["create", "-q", "-f", "raw", "base.raw", "1M"]);
        c.img(&["create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "img.qcow2"]);
        let p = c.path();
        let e = c.header().ext(ext::BACKING_FORMAT).expect("backing format ext");
        patch32(&p, e.at + 4, 16);
        c.also_names("base.raw");
    };
    bitmaps_extension_zero_bitmaps => |c| {
        let p = c.base("");
        c.img(&["bitmap", "--add", "img.qcow2", "b0"]);
        let e = c.header().ext(ext::BITMAPS).expect("bitmaps ext");
        patch32(&p, e.data, 0);
    };
    bitmap_directory_past_eof => |c| {
        let p = c.base("");
        c.img(&["bitmap", "--add", "img.qcow2", "b0"]);
        let e = c.header().ext(ext::BITMAPS).expect("bitmaps ext");
        patch64(&p, e.data + 16, 1 << 40);
    };
    bitmap_directory_size_huge => |c| {
        let p = c.base("");
        c.img(&["bitmap", "--add", "img.qcow2", "b0"]);
        let e = c.header().ext(ext::BITMAPS).expect("bitmaps ext");
        patch64(&p, e.data + 8, 0x7fff_ffff_ffff);
    };
    bitmap_table_past_eof => |c| {
        let p = c.base("");
        c.img(&["bitmap", "--add", "img.qcow2", "b0"]);
        let e = c.header().ext(ext::BITMAPS).expect("bitmaps ext");
        let dir = q2::read64(&p, e.data + 16);
        patch64(&p, dir, 1 << 40);
    };
    bitmaps_autoclear_without_extension => |c| { let p = c.base(""); set_bit64(&p, off::AUTOCLEAR, 0); };
    crypto_extension_without_luks => |c| {
        // Turn the feature table extension into a 16-byte FDE pointer.
        let p = c.base("");
        let ft = c.header().ext(ext::FEATURE_TABLE).expect("feature table");
        patch32(&p, ft.at, ext::CRYPTO);
        patch32(&p, ft.at + 4, 16);
        patch64(&p, ft.data, 0x10000);
        patch64(&p, ft.data + 8, 4096);
        patch32(&p, ft.data + 16, 0);
    };

    // --- backing files ---------------------------------------------------------------------
    backing_offset_past_eof => |c| {
        let p = c.base("");
        patch64(&p, off::BACKING_OFFSET, 1 << 40);
        patch32(&p, off::BACKING_SIZE, 10);
    };
    backing_offset_past_cluster_0 => |c| {
        let p = c.base("");
        patch64(&p, off::BACKING_OFFSET, 0x10008);
        patch32(&p, off::BACKING_SIZE, 8);
    };
    backing_size_past_cluster_0 => |c| {
        let p = c.base("");
        patch64(&p, off::BACKING_OFFSET, 0xfff0);
        patch32(&p, off::BACKING_SIZE, 64);
    };
    backing_size_too_long => |c| {
        let p = c.base("");
        patch64(&p, off::BACKING_OFFSET, 0x1000);
        patch32(&p, off::BACKING_SIZE, 2000);
    };
    backing_name_past_eof_scratch => |c| {
        // A header-only v2 image of 200 bytes whose backing name (inside
        // cluster 0) runs past the end of the file.
        scratch_v2(&c.path(), 16, 1 << 20, Some((180, 60, b"base-name-that-is-cut.qcow2")), 200);
        c.also_names("base-name-that-is-cut");
    };
    backing_missing => |c| {
        c.img(&["create", "-q", "-f", "qcow2", "-u", "-b", "nonexistent.qcow2", "-F", "qcow2", "img.qcow2", "1M"]);
        c.also_names("nonexistent.qcow2");
    };
    backing_loop_self => |c| {
        // qemu-img refuses to create this; name a same-length file, then patch.
        c.img(&["create", "-q", "-f", "qcow2", "-u", "-b", "xyz.qcow2", "-F", "qcow2", "img.qcow2", "1M"]);
        let p = c.path();
        let at = q2::read64(&p, off::BACKING_OFFSET);
        patch(&p, at, b"img.qcow2");
    };
    backing_loop_a_b_a => |c| {
        c.img(&["create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", "img.qcow2", "1M"]);
        c.img(&["create", "-q", "-f", "qcow2", "-u", "-b", "img.qcow2", "-F", "qcow2", "b.qcow2", "1M"]);
        c.also_names("b.qcow2");
    };
    backing_chain_300_deep => |c| {
        c.img(&["create", "-q", "-f", "qcow2", "chain000.qcow2", "1M"]);
        for i in 1..300 {
            let (b, t) = (format!("chain{:03}.qcow2", i - 1), format!("chain{i:03}.qcow2"));
            c.img(&["create", "-q", "-f", "qcow2", "-u", "-b", &b, "-F", "qcow2", &t, "1M"]);
        }
        c.img(&["create", "-q", "-f", "qcow2", "-u", "-b", "chain299.qcow2", "-F", "qcow2", "img.qcow2", "1M"]);
        c.also_names("chain");
    };
    backing_is_hostile => |c| {
        c.img(&["create", "-q", "-f", "qcow2", "base.qcow2", "1M"]);
        patch32(&c.dir().join("base.qcow2"), off::CLUSTER_BITS, 22);
        c.img(&["create", "-q", "-f", "qcow2", "-u", "-b", "base.qcow2", "-F", "qcow2", "img.qcow2", "1M"]);
        c.also_names("base.qcow2");
    };

    // --- L1 / L2 entries ---------------------------------------------------------------------
    l1_entry_misaligned => |c| {
        let p = c.base("");
        let h = c.header();
        let e = q2::l1_entry(&p, &h, 0);
        patch64(&p, h.l1_offset, e + 512);
    };
    l1_entry_past_eof => |c| {
        let p = c.base("");
        let h = c.header();
        patch64(&p, h.l1_offset, (1 << 63) | (1 << 45));
    };
    l1_entry_points_at_l1 => |c| {
        let p = c.base("");
        let h = c.header();
        patch64(&p, h.l1_offset, (1 << 63) | h.l1_offset);
    };
    l1_entry_reserved_bits => |c| {
        let p = c.base("");
        let h = c.header();
        let e = q2::l1_entry(&p, &h, 0);
        patch64(&p, h.l1_offset, e | (1 << 60));
    };
    l2_entry_past_eof => |c| {
        let p = c.base("");
        let h = c.header();
        patch64(&p, q2::l2_entry_pos(&p, &h, 0), (1 << 63) | (1 << 45));
    };
    l2_entry_misaligned => |c| {
        let p = c.base("");
        let h = c.header();
        let at = q2::l2_entry_pos(&p, &h, 0);
        patch64(&p, at, q2::read64(&p, at) + 512);
    };
    l2_entry_reserved_bits => |c| {
        let p = c.base("");
        let h = c.header();
        let at = q2::l2_entry_pos(&p, &h, 0);
        patch64(&p, at, q2::read64(&p, at) | (1 << 57));
    };
    l2_entry_points_at_header => |c| {
        let p = c.base("");
        let h = c.header();
        patch64(&p, q2::l2_entry_pos(&p, &h, 1), 1 << 63);
    };
    l2_entry_beyond_max_offset => |c| {
        let p = c.base("");
        let h = c.header();
        patch64(&p, q2::l2_entry_pos(&p, &h, 0), (1 << 63) | 0x00ff_ffff_ffff_0000);
    };
    zero_flag_in_v2_image => |c| {
        let p = c.base("compat=0.10");
        let h = c.header();
        let at = q2::l2_entry_pos(&p, &h, 0);
        patch64(&p, at, q2::read64(&p, at) | 1);
    };
    compressed_cluster_garbage => |c| {
        let p = c.base("");
        c.io(&["write -c -P 0x77 131072 65536"]);
        let h = c.header();
        let e = q2::read64(&p, q2::l2_entry_pos(&p, &h, 2));
        assert!(e & (1 << 62) != 0, "cluster 2 is not compressed");
        let host = e & ((1 << (62 - (h.cluster_bits - 8))) - 1);
        let mut junk = vec![0u8; 48];
        Rng::new(7).fill(&mut junk);
        patch(&p, host, &junk);
    };
    compressed_cluster_past_eof => |c| {
        let p = c.base("");
        c.io(&["write -c -P 0x77 131072 65536"]);
        let h = c.header();
        let at = q2::l2_entry_pos(&p, &h, 2);
        patch64(&p, at, (1 << 62) | (0x3f << 54) | (1 << 40));
    };
    compressed_cluster_zstd_garbage => |c| {
        let p = c.base("compression_type=zstd");
        c.io(&["write -c -P 0x77 131072 65536"]);
        let h = c.header();
        let e = q2::read64(&p, q2::l2_entry_pos(&p, &h, 2));
        assert!(e & (1 << 62) != 0, "cluster 2 is not compressed");
        let host = e & ((1 << (62 - (h.cluster_bits - 8))) - 1);
        patch(&p, host + 4, &[0xff; 16]);
    };
    extended_l2_alloc_and_zero => |c| {
        let p = c.base("extended_l2=on");
        let h = c.header();
        let at = q2::l2_entry_pos(&p, &h, 0) + 8;
        patch64(&p, at, q2::read64(&p, at) | (1 << 32) | 1);
    };
    extended_l2_alloc_without_offset => |c| {
        let p = c.base("extended_l2=on");
        let h = c.header();
        // Cluster 2 is unallocated: give it allocated subclusters.
        patch64(&p, q2::l2_entry_pos(&p, &h, 2) + 8, 0xffff);
    };
    extended_l2_compressed_with_bitmap => |c| {
        let p = c.base("extended_l2=on");
        c.io(&["write -c -P 0x77 131072 65536"]);
        let h = c.header();
        patch64(&p, q2::l2_entry_pos(&p, &h, 2) + 8, 1);
    };

    // --- truncation, empty, random -----------------------------------------------------
    zero_length_file => |c| { std::fs::write(c.path(), b"").expect("write"); };
    magic_only => |c| { std::fs::write(c.path(), b"QFI\xfb").expect("write"); };
    truncated_mid_tables => |c| {
        // Cuts inside each structure of a 64 KiB-cluster image.
        let p = c.base("");
        let h = c.header();
        let l2 = q2::l1_entry(&p, &h, 0) & 0x00ff_ffff_ffff_fe00;
        let data = q2::read64(&p, q2::l2_entry_pos(&p, &h, 0)) & 0x00ff_ffff_ffff_fe00;
        let full = std::fs::read(&p).expect("read");
        let cuts = [50, 100, 1000, h.rt_offset + 4, h.rt_offset + 0x8000, h.rt_offset + 0x10000 + 3, h.l1_offset + 4, l2 + 12, l2 + 0x8000, data + 1, data + 0x8000];
        let dir = c.dir().to_path_buf();
        let mut fails = Vec::new();
        for cut in cuts {
            let name = format!("cut{cut}.qcow2");
            let f = dir.join(&name);
            std::fs::write(&f, &full[..(cut as usize).min(full.len())]).expect("write cut");
            for e in judge_image(&dir, &name, std::slice::from_ref(&name)) {
                fails.push(format!("[truncated at {cut}] {e}"));
            }
            std::fs::remove_file(&f).expect("rm cut");
        }
        assert!(fails.is_empty(), "truncated_mid_tables ({}):\n - {}", diskimg().display(), fails.join("\n - "));
    };
    truncated_every_512_bytes => |c| {
        // A 4 KiB-cluster image cut every 512 bytes through its first 10 clusters.
        let p = c.base("cluster_size=4096");
        let full = std::fs::read(&p).expect("read");
        let dir = c.dir().to_path_buf();
        std::fs::remove_file(&p).expect("rm base");
        let mut fails = Vec::new();
        for cut in (0..(10 * 4096).min(full.len() as u64)).step_by(512) {
            let name = format!("cut{cut}.qcow2");
            let f = dir.join(&name);
            std::fs::write(&f, &full[..cut as usize]).expect("write cut");
            for e in judge_image(&dir, &name, std::slice::from_ref(&name)) {
                fails.push(format!("[truncated at {cut}] {e}"));
            }
            std::fs::remove_file(&f).expect("rm cut");
        }
        assert!(fails.is_empty(), "truncated_every_512_bytes ({}):\n - {}", diskimg().display(), fails.join("\n - "));
    };
    random_after_magic => |c| {
        // Seeded random bytes after a valid magic (64 KiB files).
        random_images(c, |rng, buf, _| {
            rng.fill(buf);
            buf[..4].copy_from_slice(b"QFI\xfb");
        });
    };
    random_after_v3_header => |c| {
        // A valid v3 header (first 104 bytes of a real image), random after.
        random_images(c, |rng, buf, real| {
            rng.fill(buf);
            buf[..104].copy_from_slice(&real[..104]);
        });
    };
    random_tables_valid_header_cluster => |c| {
        // The whole header cluster of a real image kept; every table random.
        random_images(c, |rng, buf, real| {
            rng.fill(buf);
            let n = real.len().min(buf.len()).min(0x10000);
            buf[..n].copy_from_slice(&real[..n]);
        });
    };
}

/// Judges 8 seeded images made by `make(rng, buf, real_image_bytes)`.
fn random_images(c: &mut Case, make: fn(&mut Rng, &mut [u8], &[u8])) {
    let real = std::fs::read(c.base("")).expect("read base");
    let dir = c.dir().to_path_buf();
    std::fs::remove_file(dir.join("img.qcow2")).expect("rm base");
    let mut fails = Vec::new();
    for seed in 0..8u64 {
        let mut rng = Rng::new(0xBAD_1A6E + seed);
        let mut buf = vec![0u8; 0x30000];
        make(&mut rng, &mut buf, &real);
        let name = format!("random{seed}.qcow2");
        std::fs::write(dir.join(&name), &buf).expect("write random image");
        for e in judge_image(&dir, &name, std::slice::from_ref(&name)) {
            fails.push(format!("[seed {seed}] {e}"));
        }
        std::fs::remove_file(dir.join(&name)).expect("rm random");
    }
    assert!(
        fails.is_empty(),
        "{} ({}):\n - {}",
        dir.display(),
        diskimg().display(),
        fails.join("\n - ")
    );
}
