//! `dd` against qemu-img dd: the operand matrix, byte for byte.
//!
//! Each case runs the real `qemu-img dd` in one scratch directory and
//! diskimg (as `qemu-img`) in another holding copies of the same inputs;
//! stdout, stderr, the exit code, the output file's size and every byte of
//! it must be equal. The matrix crosses block sizes (512, 64k, 1M, written
//! with suffixes and in hex), counts and skips (including qemu-img's quirks:
//! `count` caps the input end, a skip past it leaves an empty output and
//! exit status 0) over a raw file whose size is not a whole number of
//! sectors, a qcow2 overlay over a backing file, and a tiny raw file.
//! qcow2 outputs are judged by `qemu-img check` and `qemu-img convert -O
//! raw`. The tests fail, never skip, when qemu-img or qemu-io is missing.

mod cli_common;

use cli_common::{pattern, qemu_img_bin, tool, Out, Scratch};

/// Two directories with the same inputs: `q` for qemu-img, `d` for diskimg.
struct Pair {
    q: Scratch,
    d: Scratch,
}

impl Pair {
    fn new() -> Pair {
        let p = Pair {
            q: Scratch::new(),
            d: Scratch::new(),
        };
        let data = pattern(5_000_000, 7);
        for s in [&p.q, &p.d] {
            let dir = s.dir.path();
            std::fs::write(s.path("in.raw"), &data).expect("write in.raw");
            std::fs::write(s.path("tiny.raw"), b"0123456789").expect("write tiny.raw");
            let q = qemu_img_bin();
            let q = q.to_str().expect("utf-8 path");
            for args in [
                &["create", "-q", "-f", "qcow2", "base.qcow2", "12M"][..],
                &[
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    "-b",
                    "base.qcow2",
                    "-F",
                    "qcow2",
                    "ov.qcow2",
                ],
            ] {
                assert_eq!(tool(dir, q, args).rc, 0);
            }
            for (img, cmds) in [
                ("base.qcow2", &["write -P 3 0 5M", "write -P 4 9M 100k"][..]),
                (
                    "ov.qcow2",
                    &["write -P 5 4M 2M", "write -z 0 1M", "write -P 6 11M 3000"],
                ),
            ] {
                let mut a: Vec<&str> = Vec::new();
                for c in cmds {
                    a.push("-c");
                    a.push(c);
                }
                a.push(img);
                let o = tool(dir, "qemu-io", &a);
                assert_eq!(o.rc, 0, "qemu-io: {}", o.stderr);
            }
        }
        p
    }

    /// Runs dd on both sides and asserts the same messages, exit code and
    /// output bytes. Returns qemu-img's result.
    fn same(&self, args: &[&str], out: &str) -> Out {
        for s in [&self.q, &self.d] {
            let _ = std::fs::remove_file(s.path(out));
        }
        let mut a = vec!["dd"];
        a.extend_from_slice(args);
        let q = self.q.qemu(&a);
        let d = self.d.ours(&a);
        assert_eq!(d, q, "diskimg (left) and qemu-img (right) differ for {a:?}");
        let qo = std::fs::read(self.q.path(out)).ok();
        let d_out = std::fs::read(self.d.path(out)).ok();
        assert_eq!(
            d_out.as_ref().map(|v| v.len()),
            qo.as_ref().map(|v| v.len()),
            "output sizes differ for {a:?}"
        );
        assert!(d_out == qo, "output bytes differ for {a:?}");
        q
    }
}

#[test]
fn operand_matrix_matches_qemu_img() {
    let p = Pair::new();
    let inputs = ["in.raw", "ov.qcow2", "tiny.raw"];
    let block_sizes = ["512", "64k", "1M", "0x10000", "1.5k", "4000"];
    let counts = [
        None,
        Some("0"),
        Some("1"),
        Some("3"),
        Some("5000"),
        Some("99999999999999999"),
    ];
    let skips = [
        None,
        Some("0"),
        Some("1"),
        Some("2"),
        Some("7"),
        Some("99999999999999999"),
    ];
    let mut cases = 0;
    let mut quirks = 0;
    for input in inputs {
        for bs in block_sizes {
            for count in counts {
                for skip in skips {
                    let iff = format!("if={input}");
                    let bsa = format!("bs={bs}");
                    let mut args = vec![iff.as_str(), "of=out.img", bsa.as_str()];
                    let c;
                    if let Some(v) = count {
                        c = format!("count={v}");
                        args.push(&c);
                    }
                    let s;
                    if let Some(v) = skip {
                        s = format!("skip={v}");
                        args.push(&s);
                    }
                    let out = p.same(&args, "out.img");
                    assert_eq!(out.rc, 0, "{args:?}: {}", out.stderr);
                    if out.stderr.contains("cannot skip") {
                        quirks += 1;
                    }
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 3 * 6 * 6 * 6);
    assert!(
        quirks > 20,
        "the skip-past-the-end quirk was exercised {quirks} times"
    );
}

#[test]
fn quirks_are_copied() {
    let p = Pair::new();
    // count caps the input end offset: 1 MiB, not 2.
    p.same(&["if=in.raw", "of=o", "bs=1M", "skip=1", "count=2"], "o");
    assert_eq!(std::fs::metadata(p.d.path("o")).unwrap().len(), 1 << 20);
    // A skip past that end: warning, empty output, exit 0.
    let out = p.same(&["if=in.raw", "of=o", "bs=1M", "skip=2", "count=1"], "o");
    assert_eq!(out.rc, 0);
    assert_eq!(
        out.stderr,
        "qemu-img: in.raw: cannot skip to specified offset\n"
    );
    assert_eq!(std::fs::metadata(p.d.path("o")).unwrap().len(), 0);
    // The last operand of a kind wins; options may follow operands.
    p.same(
        &[
            "if=tiny.raw",
            "of=o",
            "bs=1M",
            "count=2",
            "bs=512",
            "if=in.raw",
        ],
        "o",
    );
    p.same(
        &[
            "if=in.raw",
            "of=o",
            "count=2",
            "-U",
            "-f",
            "raw",
            "-O",
            "raw",
        ],
        "o",
    );
    // An existing output is replaced.
    std::fs::write(p.q.path("o"), b"old").unwrap();
    std::fs::write(p.d.path("o"), b"old").unwrap();
    p.same(&["if=tiny.raw", "of=o"], "o");
}

#[test]
fn errors_match_qemu_img() {
    let p = Pair::new();
    let cases: &[&[&str]] = &[
        &["if=in.raw", "of=o", "bs=0"],
        &["if=in.raw", "of=o", "bs=2G"],
        &["if=in.raw", "of=o", "bs=1x"],
        &["if=in.raw", "of=o", "count=-1"],
        &["if=in.raw", "of=o", "count=1k"],
        &["if=in.raw", "of=o", "skip=1.5k"],
        &["if=in.raw", "of=o", "skip="],
        &["if=in.raw", "of=o", "foo=1"],
        &["if=in.raw", "of=o", "foo"],
        &["if=in.raw", "of=o", "=5"],
        &["if=in.raw"],
        &["of=o"],
        &[],
        &["if=nonexist", "of=o"],
        &["if=", "of=o"],
        &["if=in.raw", "of="],
        &["if=in.raw", "of=o", "-O", "foo"],
        &["if=in.raw", "of=nonexistdir/o"],
        &["--bogus", "if=in.raw", "of=o"],
        &["-O"],
    ];
    for args in cases {
        let out = p.same(args, "o");
        assert_eq!(out.rc, 1, "{args:?}");
    }
}

#[test]
fn qcow2_output_is_clean_and_equal() {
    let p = Pair::new();
    for (args, out) in [
        (
            &["-O", "qcow2", "if=in.raw", "of=o.qcow2", "bs=64k", "skip=3"][..],
            "o.qcow2",
        ),
        (
            &[
                "-O",
                "qcow2",
                "if=ov.qcow2",
                "of=o.qcow2",
                "bs=1M",
                "count=11",
                "skip=2",
            ],
            "o.qcow2",
        ),
        (
            &[
                "-O",
                "qcow2",
                "if=in.raw",
                "of=o.qcow2",
                "bs=1000",
                "skip=3",
            ],
            "o.qcow2",
        ),
    ] {
        let mut a = vec!["dd"];
        a.extend_from_slice(args);
        let q = p.q.qemu(&a);
        let d = p.d.ours(&a);
        assert_eq!(d, q, "{a:?}");
        assert_eq!(d.rc, 0, "{a:?}: {}", d.stderr);
        let check = tool(p.d.dir.path(), "qemu-img", &["check", out]);
        assert_eq!(
            check.rc, 0,
            "qemu-img check: {}{}",
            check.stdout, check.stderr
        );
        for s in [&p.q, &p.d] {
            let o = tool(
                s.dir.path(),
                "qemu-img",
                &["convert", "-O", "raw", out, "flat.raw"],
            );
            assert_eq!(o.rc, 0, "{}", o.stderr);
        }
        assert!(
            p.q.read("flat.raw") == p.d.read("flat.raw"),
            "{a:?}: contents differ"
        );
        let vs = |s: &Scratch| {
            let o = tool(s.dir.path(), "qemu-img", &["info", "--output=json", out]);
            let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
            v["virtual-size"].as_u64()
        };
        assert_eq!(vs(&p.d), vs(&p.q), "{a:?}: virtual sizes differ");
    }
}

#[test]
fn help_matches_qemu_img() {
    let s = Scratch::new();
    for h in ["--help", "-h"] {
        assert_eq!(s.same(&["dd", h]).rc, 0);
    }
}
