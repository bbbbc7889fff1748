//! `bench` against qemu-img bench.
//!
//! - The report: for read and write runs (depths 1, 4 and 64, offsets,
//!   steps, buffer sizes, flush intervals with and without drain) stdout
//!   equals qemu-img bench's once the time on the last line is masked, and
//!   that line has qemu-img's shape (`Run completed in S.SSS seconds.`);
//!   stderr and the exit code are equal.
//! - The workload: a write run leaves exactly the bytes qemu-img bench
//!   leaves with the same arguments (`qemu-img compare` of the two images),
//!   so the requests went to the same offsets with the same pattern; a
//!   qcow2 image written by diskimg passes `qemu-img check`.
//! - Cache modes: the same for `-t none`, `off` and `directsync` (O_DIRECT),
//!   with aligned and unaligned requests; `-i native` is accepted with an
//!   O_DIRECT mode and refused otherwise, with qemu-img's message.
//! - Errors: messages and exit codes equal.
//!
//! The tests fail, never skip, when qemu-img is missing.

mod cli_common;

use cli_common::{tool, Out, Scratch};

/// Replaces the time of `Run completed in S seconds.` with `T`, after
/// checking the line's shape.
fn mask(out: &Out) -> Out {
    let mut lines = Vec::new();
    for l in out.stdout.lines() {
        if let Some(rest) = l.strip_prefix("Run completed in ") {
            let t = rest
                .strip_suffix(" seconds.")
                .unwrap_or_else(|| panic!("bad report line {l:?}"));
            let (int, frac) = t
                .split_once('.')
                .unwrap_or_else(|| panic!("bad time {t:?}"));
            assert!(
                !int.is_empty() && int.chars().all(|c| c.is_ascii_digit()),
                "bad time {t:?}"
            );
            assert!(
                frac.len() == 3 && frac.chars().all(|c| c.is_ascii_digit()),
                "bad time {t:?}"
            );
            lines.push("Run completed in T seconds.".to_string());
        } else {
            lines.push(l.to_string());
        }
    }
    Out {
        stdout: lines.join("\n") + if out.stdout.is_empty() { "" } else { "\n" },
        stderr: out.stderr.clone(),
        rc: out.rc,
    }
}

/// Runs bench with both programs, on `img` in each directory.
fn both(q: &Scratch, d: &Scratch, args: &[&str]) -> (Out, Out) {
    let mut a = vec!["bench"];
    a.extend_from_slice(args);
    (mask(&q.qemu(&a)), mask(&d.ours(&a)))
}

fn create(s: &Scratch, args: &[&str]) {
    let o = tool(s.dir.path(), "qemu-img", args);
    assert_eq!(o.rc, 0, "qemu-img {args:?}: {}", o.stderr);
}

/// Read runs of every `runs` entry on r.raw and q.qcow2 in `s`: the same
/// report as qemu-img bench, and success.
fn read_runs(s: &Scratch, runs: &[&[&str]]) {
    for img in ["r.raw", "q.qcow2"] {
        for args in runs {
            let mut a = args.to_vec();
            a.push(img);
            let (q, d) = both(s, s, &a);
            assert_eq!(d, q, "diskimg (left) and qemu-img (right) differ for {a:?}");
            assert_eq!(d.rc, 0, "{a:?}: {}", d.stderr);
            assert_eq!(d.stdout.lines().count(), 2, "{}", d.stdout);
        }
    }
}

#[test]
fn read_reports_match_qemu_img() {
    let s = Scratch::new();
    create(&s, &["create", "-q", "-f", "raw", "r.raw", "8M"]);
    create(&s, &["create", "-q", "-f", "qcow2", "q.qcow2", "8M"]);
    read_runs(
        &s,
        &[
            &["-c", "1000"][..],
            &["-c", "2000", "-d", "1"],
            &["-c", "2000", "-d", "4", "-q"],
            &["-c", "500", "-s", "64k", "-S", "1M"],
            &["-c", "500", "-o", "1000", "-s", "512", "-S", "0"],
            &["-c", "300", "-s", "1M", "-t", "writeback", "-i", "threads"],
            &["-c", "100", "-U", "--depth", "3", "--buffer-size", "8k"],
        ],
    );
}

/// Write runs: same report, and the same bytes as qemu-img bench writes;
/// `cache` goes before every run's own options.
fn write_runs(fmt: &str, create_opts: &[&str], judge_check: bool, cache: &[&str]) {
    let q = Scratch::new();
    let d = Scratch::new();
    let runs: &[&[&str]] = &[
        &["-c", "1000", "-d", "1", "--pattern", "7"],
        &["-c", "3000", "-d", "64", "--pattern", "0x5a", "-S", "12k"],
        &[
            "-c",
            "777",
            "-d",
            "4",
            "-o",
            "3M",
            "--pattern",
            "9",
            "-s",
            "1000",
            "-S",
            "5000",
        ],
        &[
            "-c",
            "1000",
            "-d",
            "8",
            "--flush-interval",
            "100",
            "--pattern",
            "1",
        ],
        &[
            "-c",
            "1000",
            "-d",
            "8",
            "--flush-interval",
            "64",
            "--no-drain",
            "--pattern",
            "2",
            "-S",
            "64k",
        ],
        &[
            "-c",
            "100",
            "-t",
            "writethrough",
            "--pattern",
            "3",
            "-o",
            "7M",
        ],
        &[
            "-c",
            "500",
            "-t",
            "unsafe",
            "--pattern",
            "4",
            "-s",
            "64k",
            "-S",
            "128k",
        ],
    ];
    for (n, run) in runs.iter().enumerate() {
        let img = format!("w{n}.{fmt}");
        for s in [&q, &d] {
            let mut a = vec!["create", "-q", "-f", fmt];
            a.extend_from_slice(create_opts);
            a.push(&img);
            a.push("8M");
            create(s, &a);
        }
        let mut a = vec!["-w", "-f", fmt];
        a.extend_from_slice(cache);
        a.extend_from_slice(run);
        a.push(&img);
        let (qo, dout) = both(&q, &d, &a);
        assert_eq!(
            dout, qo,
            "diskimg (left) and qemu-img (right) differ for {a:?}"
        );
        assert_eq!(dout.rc, 0, "{a:?}: {}", dout.stderr);
        let other = q.path(&img);
        let other = other.to_str().expect("utf-8");
        let cmp = tool(
            d.dir.path(),
            "qemu-img",
            &["compare", "-f", fmt, "-F", fmt, &img, other],
        );
        assert_eq!(
            cmp.rc, 0,
            "{a:?}: images differ: {}{}",
            cmp.stdout, cmp.stderr
        );
        if judge_check {
            let c = tool(d.dir.path(), "qemu-img", &["check", &img]);
            assert_eq!(c.rc, 0, "{a:?}: qemu-img check: {}{}", c.stdout, c.stderr);
        }
    }
}

#[test]
fn raw_write_runs_match_qemu_img() {
    write_runs("raw", &[], false, &[]);
}

#[test]
fn qcow2_write_runs_match_qemu_img_and_pass_check() {
    write_runs("qcow2", &[], true, &[]);
    write_runs(
        "qcow2",
        &["-o", "preallocation=metadata,cluster_size=4k"],
        true,
        &[],
    );
}

/// O_DIRECT write runs (the runs' own `-t` comes later and wins, as in
/// getopt; most runs keep the direct mode).
#[test]
fn direct_write_runs_match_qemu_img() {
    for cache in ["none", "directsync"] {
        write_runs("raw", &[], false, &["-t", cache]);
        write_runs("qcow2", &[], true, &["-t", cache]);
    }
    write_runs("qcow2", &["-o", "cluster_size=4k"], true, &["-t", "none"]);
}

#[test]
fn direct_read_reports_match_qemu_img() {
    let s = Scratch::new();
    create(&s, &["create", "-q", "-f", "raw", "r.raw", "8M"]);
    create(&s, &["create", "-q", "-f", "qcow2", "q.qcow2", "8M"]);
    // Some data to read, through qemu-img.
    for (fmt, img) in [("raw", "r.raw"), ("qcow2", "q.qcow2")] {
        let a = [
            "bench", "-q", "-w", "-c", "500", "-S", "12k", "-f", fmt, img,
        ];
        create(&s, &a);
    }
    read_runs(
        &s,
        &[
            &["-c", "1000", "-t", "none"][..],
            &["-c", "1000", "-t", "off", "-d", "1"],
            &["-c", "1000", "-t", "directsync", "-d", "4"],
            &["-c", "500", "-t", "none", "-s", "64k", "-S", "1M"],
            &[
                "-c", "500", "-t", "none", "-o", "1000", "-s", "512", "-S", "0",
            ],
            &[
                "-c",
                "500",
                "-t",
                "directsync",
                "-o",
                "3",
                "-s",
                "1000",
                "-S",
                "777",
            ],
            &["-c", "300", "-t", "none", "-i", "native"],
            &["-c", "300", "-i", "native", "-t", "directsync"],
            &["-c", "300", "-n", "-t", "none"],
            &["-c", "300", "-t", "none", "-i", "io_uring", "-s", "1M"],
        ],
    );
}

#[test]
fn probed_raw_write_warns_as_qemu_img() {
    let s = Scratch::new();
    create(&s, &["create", "-q", "-f", "raw", "p.raw", "1M"]);
    let (q, d) = both(&s, &s, &["-w", "-c", "10", "p.raw"]);
    assert_eq!(d, q);
    assert!(d
        .stderr
        .starts_with("WARNING: Image format was not specified"));
}

#[test]
fn errors_match_qemu_img() {
    let s = Scratch::new();
    create(&s, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    create(&s, &["create", "-q", "-f", "raw", "r8.raw", "8M"]);
    let cases: &[&[&str]] = &[
        &["-c", "0", "r.raw"],
        &["-c", "1x", "r.raw"],
        &["-c", "3000000000", "r.raw"],
        &["-d", "0", "r.raw"],
        &["-s", "0", "r.raw"],
        &["-s", "2G", "r.raw"],
        &["-S", "2G", "r.raw"],
        &["-o", "1x", "r.raw"],
        &["-o", "-1", "r.raw"],
        &["--pattern", "256", "-w", "r.raw"],
        &["--flush-interval", "10", "r.raw"],
        &["-w", "--flush-interval", "2", "-d", "8", "r.raw"],
        &["-t", "bogus", "r.raw"],
        &["-i", "bogus", "r.raw"],
        &["-i", "native", "r.raw"],
        &["-n", "r.raw"],
        &["-i", "native", "-t", "writethrough", "r.raw"],
        &["-t", "unsafe", "-n", "r.raw"],
        &["-t", "none", "-i", "native", "-t", "writeback", "r.raw"],
        // A file system without O_DIRECT (procfs).
        &["-c", "1", "-t", "none", "-f", "raw", "/proc/self/status"],
        &["-c", "10"],
        &["-c", "10", "r.raw", "r.raw"],
        &["-c", "10", "nonexist.raw"],
        &["-w", "-U", "-c", "10", "r.raw"],
        &["-c", "10", "-o", "1M", "r.raw"],
        &["-c", "10", "-o", "1020k", "-s", "8k", "r.raw"],
        &["-c", "10", "-s", "2M", "r.raw"],
        // 10.0.2 wraps at the image size: request 1677 crosses the end.
        &[
            "-c", "2000", "-s", "1000", "-S", "5002", "-d", "1", "r8.raw",
        ],
        &["--bogus", "r.raw"],
        // getopt meets the first bad value first.
        &["-c", "0", "-d", "0", "r.raw"],
        &["-d", "0", "-c", "0", "r.raw"],
    ];
    for args in cases {
        let (q, d) = both(&s, &s, args);
        assert_eq!(
            d, q,
            "diskimg (left) and qemu-img (right) differ for {args:?}"
        );
        assert_eq!(d.rc, 1, "{args:?}");
    }
}

#[test]
fn help_matches_qemu_img() {
    let s = Scratch::new();
    for h in ["--help", "-h"] {
        let (q, d) = both(&s, &s, &[h]);
        assert_eq!(d, q);
        assert_eq!(d.rc, 0);
    }
}
