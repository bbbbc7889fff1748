//! `create` against qemu-img create, with QEMU's tools as the judge.
//!
//! For every option combination, `diskimg create` (run as `qemu-img`) and
//! the real `qemu-img create` run in two directories holding the same
//! files, and then:
//! - stdout (the `Formatting ...` line), stderr and the exit code are equal;
//! - `qemu-img check` finds no errors and no leaks in diskimg's image;
//! - `qemu-img info --output=json` of both images is equal on every key
//!   except these, which depend on the on-disk layout: `actual-size` (at
//!   every level) and the `virtual-size` of the `children` (the length of
//!   the image file);
//! - `qemu-io` writes and reads back 64 KiB, and `qemu-img check` stays clean.
//!
//! Refused combinations give the same message and exit code and leave no
//! file behind (and an existing file untouched). The tests fail, never
//! skip, when qemu-img or qemu-io is missing.

mod cli_common;

use cli_common::{qemu_img_bin, tool, Out, Scratch};
use serde_json::Value;

/// Two scratch directories with the same backing files: one for qemu-img,
/// one for diskimg.
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
        for s in [&p.q, &p.d] {
            let dir = s.dir.path();
            let q = qemu_img_bin();
            let q = q.to_str().expect("utf-8 path");
            assert_eq!(
                tool(dir, q, &["create", "-q", "-f", "raw", "base.raw", "3M"]).rc,
                0
            );
            assert_eq!(
                tool(dir, q, &["create", "-q", "-f", "qcow2", "base.qcow2", "5M"]).rc,
                0
            );
            assert_eq!(
                tool(dir, "qemu-io", &["-c", "write -P 5 0 1M", "base.qcow2"]).rc,
                0,
                "qemu-io failed"
            );
        }
        p
    }

    /// Runs `create ARGS` with both; asserts equal outputs; returns them.
    fn create(&self, args: &[&str]) -> Out {
        let mut full = vec!["create"];
        full.extend_from_slice(args);
        let q = self.q.qemu(&full);
        let d = self.d.ours(&full);
        assert_eq!(
            d, q,
            "diskimg (left) and qemu-img (right) differ for {full:?}"
        );
        d
    }

    /// The full check of one successful create of `file`.
    fn judge(&self, args: &[&str], file: &str) {
        let out = self.create(args);
        assert_eq!(out.rc, 0, "{args:?}: {out:?}");
        let dd = self.d.dir.path();
        let qi = tool(dd, "qemu-img", &["check", file]);
        assert_eq!(qi.rc, 0, "{args:?}: qemu-img check: {qi:?}");
        assert!(
            qi.stdout.contains("No errors were found"),
            "{args:?}: {qi:?}"
        );
        assert_eq!(info(&self.d, file), info(&self.q, file), "{args:?}: info");
        // Write where the disk is big enough.
        let vsize = info(&self.d, file)["virtual-size"].as_u64().unwrap_or(0);
        if vsize >= 65536 {
            let io = tool(
                dd,
                "qemu-io",
                &["-c", "write -P 7 0 64k", "-c", "read -P 7 0 64k", file],
            );
            assert_eq!(io.rc, 0, "{args:?}: qemu-io: {io:?}");
            assert!(
                !io.stdout.contains("Pattern verification failed") && io.stderr.is_empty(),
                "{args:?}: qemu-io: {io:?}"
            );
        }
        let qi = tool(dd, "qemu-img", &["check", file]);
        assert_eq!(qi.rc, 0, "{args:?}: qemu-img check after a write: {qi:?}");
        for s in [&self.q, &self.d] {
            for f in [file, "t.data"] {
                let _ = std::fs::remove_file(s.path(f));
            }
        }
    }
}

impl Pair {
    /// The check of one successful raw create of `t.raw`: same output,
    /// same info, and the full size allocated when preallocated.
    fn judge_raw(&self, args: &[&str]) {
        let out = self.create(args);
        assert_eq!(out.rc, 0, "{args:?}: {out:?}");
        assert_eq!(
            info(&self.d, "t.raw"),
            info(&self.q, "t.raw"),
            "{args:?}: info"
        );
        let len = std::fs::metadata(self.d.path("t.raw"))
            .expect("t.raw")
            .len();
        assert_eq!(
            len,
            std::fs::metadata(self.q.path("t.raw"))
                .expect("t.raw")
                .len()
        );
        if args
            .iter()
            .any(|a| a.contains("=full") || a.contains("=falloc"))
        {
            assert!(
                self.d.allocated("t.raw") >= len,
                "{args:?}: not preallocated"
            );
        }
        let io = tool(
            self.d.dir.path(),
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 7 0 512",
                "-c",
                "read -P 7 0 512",
                "t.raw",
            ],
        );
        assert_eq!(io.rc, 0, "{args:?}: qemu-io: {io:?}");
        for s in [&self.q, &self.d] {
            let _ = std::fs::remove_file(s.path("t.raw"));
        }
    }
}

/// Removes the layout-dependent keys named in the module doc.
fn strip(v: &mut Value, child: bool) {
    if let Value::Object(m) = v {
        m.remove("actual-size");
        if child {
            m.remove("virtual-size");
        }
        if let Some(Value::Array(children)) = m.get_mut("children") {
            for c in children {
                if let Some(info) = c.get_mut("info") {
                    strip(info, true);
                }
            }
        }
    }
}

fn info(s: &Scratch, file: &str) -> Value {
    let o = tool(s.dir.path(), "qemu-img", &["info", "--output=json", file]);
    assert_eq!(o.rc, 0, "qemu-img info {file}: {o:?}");
    let mut v: Value = serde_json::from_str(&o.stdout).expect("info JSON");
    strip(&mut v, false);
    v
}

#[test]
fn create_matrix_of_versions_cluster_sizes_and_refcount_widths() {
    let p = Pair::new();
    for compat in ["0.10", "1.1", "v2", "v3"] {
        for cs in ["512", "16k", "64k", "2M"] {
            for rb in ["1", "16", "64"] {
                let o = format!("compat={compat},cluster_size={cs},refcount_bits={rb}");
                let args = ["-f", "qcow2", "-o", &o, "t.qcow2", "5M"];
                if (compat == "0.10" || compat == "v2") && rb != "16" {
                    // Refused by both, with the same message.
                    assert_eq!(p.create(&args).rc, 1);
                    assert!(!p.d.path("t.qcow2").exists());
                } else {
                    p.judge(&args, "t.qcow2");
                }
            }
        }
    }
}

#[test]
fn create_matrix_of_v3_features_and_preallocation() {
    let p = Pair::new();
    for ext in ["off", "on"] {
        for ct in ["zlib", "zstd"] {
            for lazy in ["off", "on"] {
                for pre in ["off", "metadata", "falloc", "full"] {
                    for cs in ["16k", "64k"] {
                        let o = format!(
                            "cluster_size={cs},extended_l2={ext},compression_type={ct},lazy_refcounts={lazy},preallocation={pre}"
                        );
                        p.judge(&["-f", "qcow2", "-o", &o, "t.qcow2", "3M"], "t.qcow2");
                    }
                }
            }
        }
    }
}

#[test]
fn create_with_backing_files_and_data_files() {
    let p = Pair::new();
    for (b, f) in [("base.raw", "raw"), ("base.qcow2", "qcow2")] {
        for compat in ["0.10", "1.1"] {
            let o = format!("compat={compat}");
            // Size taken from the backing file, or given.
            p.judge(
                &["-f", "qcow2", "-o", &o, "-b", b, "-F", f, "t.qcow2"],
                "t.qcow2",
            );
            p.judge(
                &["-f", "qcow2", "-o", &o, "-b", b, "-F", f, "t.qcow2", "7M"],
                "t.qcow2",
            );
        }
        for pre in ["off", "metadata", "full"] {
            let o = format!("extended_l2=on,preallocation={pre}");
            p.judge(
                &["-f", "qcow2", "-o", &o, "-b", b, "-F", f, "t.qcow2"],
                "t.qcow2",
            );
        }
        // -u: the backing file is not opened; the size is required.
        p.judge(
            &["-f", "qcow2", "-u", "-b", b, "-F", f, "t.qcow2", "1M"],
            "t.qcow2",
        );
        let args = [
            "-f",
            "qcow2",
            "-u",
            "-b",
            "nonexistent",
            "-F",
            f,
            "t.qcow2",
            "1M",
        ];
        assert_eq!(p.create(&args).rc, 0);
        assert_eq!(info(&p.d, "t.qcow2"), info(&p.q, "t.qcow2"));
        let o = format!("backing_file={b},backing_fmt={f}");
        p.judge(&["-f", "qcow2", "-o", &o, "t.qcow2"], "t.qcow2");
    }
    for raw in ["off", "on"] {
        for pre in ["off", "metadata", "full"] {
            for ext in ["off", "on"] {
                let o = format!(
                    "data_file=t.data,data_file_raw={raw},preallocation={pre},extended_l2={ext}"
                );
                p.judge(&["-f", "qcow2", "-o", &o, "t.qcow2", "3M"], "t.qcow2");
            }
        }
    }
    // A data file with a backing file (not raw).
    p.judge(
        &[
            "-f",
            "qcow2",
            "-o",
            "data_file=t.data",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "t.qcow2",
        ],
        "t.qcow2",
    );
}

#[test]
fn create_sizes_and_raw_images() {
    let p = Pair::new();
    for size in ["0", "1000", "1", "64M", "1.5G", "100T"] {
        p.judge(&["-f", "qcow2", "t.qcow2", size], "t.qcow2");
    }
    p.judge(&["-f", "qcow2", "-o", "size=2M", "t.qcow2"], "t.qcow2");
    p.judge(&["-q", "-f", "qcow2", "t.qcow2", "1M"], "t.qcow2");
    // Numbers and sizes are printed as QEMU parsed them; the last of a
    // repeated option wins; a bare name means "on".
    p.judge(
        &[
            "-f",
            "qcow2",
            "-o",
            "refcount_bits=0x10,cluster_size=0x10000",
            "t.qcow2",
            "1M",
        ],
        "t.qcow2",
    );
    p.judge(
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=v3,compat=v2",
            "-o",
            "cluster_size=4k",
            "t.qcow2",
            "1M",
        ],
        "t.qcow2",
    );
    p.judge(
        &["-f", "qcow2", "-o", "lazy_refcounts", "t.qcow2", "1M"],
        "t.qcow2",
    );
    p.judge(
        &["-f", "qcow2", "-o", "cluster_size=512", "t.qcow2", "128G"],
        "t.qcow2",
    );
    for pre in ["off", "falloc", "full"] {
        let o = format!("preallocation={pre}");
        p.judge_raw(&["-f", "raw", "-o", &o, "t.raw", "1000"]);
    }
    p.judge_raw(&["t.raw", "2M"]);
}

#[test]
fn create_refusals_match_qemu_img() {
    let p = Pair::new();
    let cases: &[&[&str]] = &[
        &["-f", "qcow2", "-o", "cluster_size=1000", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "cluster_size=4M", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "cluster_size=abc", "t.qcow2", "1M"],
        &[
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=8k",
            "t.qcow2",
            "1M",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,extended_l2=on",
            "t.qcow2",
            "1M",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,lazy_refcounts=on",
            "t.qcow2",
            "1M",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,compression_type=zstd",
            "t.qcow2",
            "1M",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,data_file=t.data",
            "t.qcow2",
            "1M",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,refcount_bits=8",
            "t.qcow2",
            "1M",
        ],
        &["-f", "qcow2", "-o", "refcount_bits=3", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "refcount_bits=128", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "refcount_bits=x", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "refcount_bits=016", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "compat=9", "t.qcow2", "1M"],
        &[
            "-f",
            "qcow2",
            "-o",
            "compat=9,preallocation=bad",
            "t.qcow2",
            "1M",
        ],
        &["-f", "qcow2", "-o", "compression_type=lz4", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "extended_l2=maybe", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "data_file_raw=on", "t.qcow2", "1M"],
        &[
            "-f",
            "qcow2",
            "-o",
            "data_file=t.data,data_file_raw=on",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "t.qcow2",
        ],
        &[
            "-f",
            "qcow2",
            "-o",
            "preallocation=metadata",
            "-b",
            "base.raw",
            "-F",
            "raw",
            "t.qcow2",
        ],
        &["-f", "qcow2", "-o", "backing_fmt=raw", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "bogus=1", "t.qcow2", "1M"],
        &["-f", "qcow2", "-o", "size=1M", "t.qcow2", "2M"],
        &["-f", "qcow2", "-o", "cluster_size=512", "t.qcow2", "1P"],
        &["-f", "qcow2", "-b", "base.raw", "t.qcow2"],
        &["-f", "qcow2", "-b", "base.raw", "-u", "t.qcow2", "1M"],
        &[
            "-f", "qcow2", "-b", "base.raw", "-F", "raw", "-u", "t.qcow2",
        ],
        &["-f", "qcow2", "-b", "nonexistent", "-F", "raw", "t.qcow2"],
        &["-f", "qcow2", "-b", "base.raw", "-F", "foo", "t.qcow2"],
        &["-f", "qcow2", "-u", "-b", "x", "-F", "foo", "t.qcow2", "1M"],
        &["-f", "qcow2", "t.qcow2"],
        &["-f", "qcow2"],
        &["-f", "qcow2", "t.qcow2", "1M", "extra"],
        &["-f", "qcow2", "t.qcow2", "1x"],
        &["-f", "qcow2", "t.qcow2", "9E"],
        &["-f", "foo", "t.qcow2", "1M"],
        &["-f", "raw", "-o", "preallocation=metadata", "t.raw", "1M"],
        &["-f", "raw", "-b", "base.raw", "-F", "raw", "t.raw", "1M"],
        &["-f", "raw", "-F", "raw", "t.raw", "1M"],
    ];
    for args in cases {
        let out = p.create(args);
        assert_eq!(out.rc, 1, "{args:?}: {out:?}");
        assert!(!p.d.path("t.qcow2").exists(), "{args:?} left a file");
        assert!(!p.d.path("t.raw").exists(), "{args:?} left a file");
        assert!(!p.d.path("t.data").exists(), "{args:?} left a data file");
    }
}

#[test]
fn refused_create_leaves_an_existing_file_alone() {
    let s = Scratch::new();
    std::fs::write(s.path("t.qcow2"), b"precious").unwrap();
    let out = s.ours(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=1000",
        "t.qcow2",
        "1M",
    ]);
    assert_eq!(out.rc, 1);
    assert_eq!(std::fs::read(s.path("t.qcow2")).unwrap(), b"precious");
}

#[test]
fn create_help_and_option_lists_match_qemu_img() {
    let p = Pair::new();
    p.create(&["--help"]);
    p.create(&["-f", "qcow2", "-o", "help"]);
    p.create(&["-f", "qcow2", "-o", "?"]);
    p.create(&["-f", "qcow2", "-o", "help", "t.qcow2"]);
    p.create(&["-f", "raw", "-o", "help"]);
    p.create(&["-o", "help", "t.raw"]);
}

#[test]
fn encryption_is_refused_by_name() {
    let s = Scratch::new();
    let out = s.ours(&[
        "create",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks",
        "t.qcow2",
        "1M",
    ]);
    assert_eq!(out.rc, 1);
    assert_eq!(
        out.stderr,
        "qemu-img: t.qcow2: Option 'encrypt.format': encrypted images are not implemented by diskimg yet\n"
    );
    assert!(!s.path("t.qcow2").exists());
}
