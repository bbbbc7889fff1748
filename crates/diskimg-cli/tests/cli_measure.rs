//! `measure` against qemu-img measure: every figure, line and message equal.
//!
//! The sources are built by QEMU's own tools (qemu-img create / bitmap,
//! qemu-io writes) in one scratch directory; both programs then measure
//! them with the same arguments, and stdout, stderr and the exit code must
//! be identical (diskimg runs as `qemu-img`). The matrix crosses the qcow2
//! options that change the figures (cluster_size, refcount_bits,
//! extended_l2, compat, preallocation, backing_file, data_file) and the
//! raw target with every source and both output formats. The tests fail,
//! never skip, when qemu-img or qemu-io is missing.

mod cli_common;

use std::process::Command;

use cli_common::Scratch;

/// Runs a QEMU tool in the scratch directory and insists that it worked.
fn tool(s: &Scratch, prog: &str, args: &[&str]) {
    let o = Command::new(prog)
        .args(args)
        .current_dir(s.dir.path())
        .output()
        .unwrap_or_else(|e| panic!("{prog} is needed by this test and could not run: {e}"));
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The sources of the matrix, built by QEMU.
fn sources(s: &Scratch) -> Vec<&'static str> {
    let q = |a: &[&str]| tool(s, "qemu-img", a);
    let io = |a: &[&str]| tool(s, "qemu-io", a);
    // Data, zero clusters, an unaligned write, unallocated space.
    q(&["create", "-q", "-f", "qcow2", "a.qcow2", "64M"]);
    io(&[
        "-c",
        "write -P 1 0 1M",
        "-c",
        "write -z 2M 1M",
        "-c",
        "write 10M 4k",
        "-c",
        "write -P 7 20000k 3000",
        "a.qcow2",
    ]);
    // A chain: data in the base, data and zeros in the overlay.
    q(&["create", "-q", "-f", "qcow2", "base.qcow2", "64M"]);
    io(&[
        "-c",
        "write -P 3 0 5M",
        "-c",
        "write -P 4 40M 100k",
        "base.qcow2",
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "ov.qcow2",
    ]);
    io(&["-c", "write -P 5 4M 2M", "-c", "write -z 0 1M", "ov.qcow2"]);
    // A longer overlay over a shorter base.
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        "long.qcow2",
        "100M",
    ]);
    io(&["-c", "write -P 6 90M 64k", "long.qcow2"]);
    // Persistent bitmaps (two granularities, names of different lengths).
    q(&["create", "-q", "-f", "qcow2", "bm.qcow2", "300M"]);
    io(&["-c", "write -P 1 0 1M", "bm.qcow2"]);
    q(&["bitmap", "--add", "bm.qcow2", "b1"]);
    q(&[
        "bitmap",
        "--add",
        "-g",
        "512",
        "bm.qcow2",
        "a-much-longer-bitmap-name",
    ]);
    q(&["bitmap", "--add", "-g", "2M", "bm.qcow2", "b3"]);
    // v2, preallocated metadata, compressed clusters, 4 KiB clusters.
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "v2.qcow2",
        "10M",
    ]);
    io(&["-c", "write -P 1 0 1M", "v2.qcow2"]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "preallocation=metadata",
        "pm.qcow2",
        "10M",
    ]);
    io(&["-c", "write -P 1 0 100k", "pm.qcow2"]);
    s.sparse_file(
        "text.raw",
        4 << 20,
        &[(0, &[b'a'; 300_000]), (2 << 20, &[b'b'; 70_000])],
    );
    q(&[
        "convert",
        "-q",
        "-c",
        "-O",
        "qcow2",
        "text.raw",
        "comp.qcow2",
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "small.qcow2",
        "7M",
    ]);
    io(&[
        "-c",
        "write -P 9 5000 9000",
        "-c",
        "write -P 9 6M 1k",
        "small.qcow2",
    ]);
    // An external data file (plain and data_file_raw), extended L2 with
    // subcluster writes, an image with an internal snapshot written after it.
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=df.raw",
        "df.qcow2",
        "20M",
    ]);
    io(&["-c", "write -P 1 1M 3M", "df.qcow2"]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=dfr.raw,data_file_raw=on",
        "dfr.qcow2",
        "20M",
    ]);
    io(&["-c", "write -P 1 1M 3M", "dfr.qcow2"]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "x2.qcow2",
        "20M",
    ]);
    io(&[
        "-c",
        "write -P 1 1000 5000",
        "-c",
        "write -z 1M 64k",
        "x2.qcow2",
    ]);
    q(&["create", "-q", "-f", "qcow2", "snap.qcow2", "40M"]);
    io(&["-c", "write -P 2 0 2M", "snap.qcow2"]);
    q(&["snapshot", "-c", "s1", "snap.qcow2"]);
    io(&[
        "-c",
        "write -P 9 30M 1M",
        "-c",
        "write -z 0 1M",
        "snap.qcow2",
    ]);
    // Raw files: sparse with data extents, and a size that is not a whole
    // number of sectors.
    let data = cli_common::pattern(300 * 1024, 3);
    s.sparse_file(
        "sp.raw",
        20 << 20,
        &[(100 * 1024, &data), (10000 * 1024, &data[..3072])],
    );
    s.sparse_file("odd.raw", 1000, &[(0, b"x")]);
    vec![
        "a.qcow2",
        "ov.qcow2",
        "long.qcow2",
        "bm.qcow2",
        "v2.qcow2",
        "pm.qcow2",
        "comp.qcow2",
        "small.qcow2",
        "df.qcow2",
        "dfr.qcow2",
        "x2.qcow2",
        "snap.qcow2",
        "sp.raw",
        "odd.raw",
    ]
}

/// Target arguments crossed with every source.
const TARGETS: &[&[&str]] = &[
    &[],
    &["-O", "raw"],
    &["-O", "raw", "-o", "preallocation=full"],
    &["-O", "qcow2"],
    &["-O", "qcow2", "-o", "cluster_size=512"],
    &["-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1"],
    &["-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=64"],
    &["-O", "qcow2", "-o", "extended_l2=on"],
    &["-O", "qcow2", "-o", "extended_l2=on,cluster_size=2M"],
    &["-O", "qcow2", "-o", "compat=0.10"],
    &["-O", "qcow2", "-o", "compat=1.1,refcount_bits=8"],
    &["-O", "qcow2", "-o", "backing_file=x.qcow2"],
    &["-O", "qcow2", "-o", "data_file=d.raw"],
    &["-O", "qcow2", "-o", "preallocation=metadata"],
    &["-O", "qcow2", "-o", "preallocation=falloc"],
    &[
        "-O",
        "qcow2",
        "-o",
        "preallocation=full",
        "-o",
        "cluster_size=8k",
    ],
    &[
        "-O",
        "qcow2",
        "-o",
        "lazy_refcounts=on,compression_type=zstd",
    ],
];

#[test]
fn sources_times_options_match_qemu_img() {
    let s = Scratch::new();
    let srcs = sources(&s);
    let mut runs = 0;
    for src in &srcs {
        for t in TARGETS {
            for output in [None, Some("--output=json"), Some("--output=human")] {
                let mut args: Vec<&str> = vec!["measure"];
                args.extend_from_slice(t);
                if let Some(o) = output {
                    args.push(o);
                }
                args.push(src);
                let out = s.same(&args);
                assert_eq!(out.rc, 0, "{args:?}: {}", out.stderr);
                runs += 1;
            }
        }
    }
    assert_eq!(runs, srcs.len() * TARGETS.len() * 3);
}

#[test]
fn bitmaps_are_counted_as_qemu_counts_them() {
    let s = Scratch::new();
    sources(&s);
    // The bitmaps figure depends on the target's cluster size; the v2
    // target and the raw target show none.
    for cs in ["512", "64k", "2M"] {
        let o = format!("cluster_size={cs}");
        let out = s.same(&["measure", "-O", "qcow2", "-o", &o, "bm.qcow2"]);
        assert!(out.stdout.contains("bitmaps size: "), "{}", out.stdout);
        assert!(!out.stdout.contains("bitmaps size: 0\n"), "{}", out.stdout);
    }
    let out = s.same(&["measure", "-O", "qcow2", "-o", "compat=0.10", "bm.qcow2"]);
    assert!(!out.stdout.contains("bitmaps"));
    let out = s.same(&["measure", "--output=json", "-O", "raw", "bm.qcow2"]);
    assert!(!out.stdout.contains("bitmaps"));
    let out = s.same(&["measure", "-O", "qcow2", "-f", "raw", "bm.qcow2"]);
    assert!(!out.stdout.contains("bitmaps"));
}

#[test]
fn sizes_match_qemu_img() {
    let s = Scratch::new();
    for size in [
        "0", "1", "1000", "512", "1M", "1G", "1.5G", "100T", "1P", "0x10000",
    ] {
        for t in TARGETS {
            for output in ["--output=human", "--output=json"] {
                let mut args: Vec<&str> = vec!["measure", output, "--size", size];
                args.extend_from_slice(t);
                s.same(&args);
            }
        }
    }
    // Long names, abbreviated; no -s in 10.0.2.
    s.same(&["measure", "--siz", "1G", "--target-format", "qcow2"]);
    s.same(&["measure", "-s", "1G"]);
    s.same(&[
        "measure",
        "--size",
        "1G",
        "-O",
        "qcow2",
        "--options",
        "cluster_size=4k",
    ]);
    s.same(&[
        "measure",
        "--size",
        "1G",
        "--target-format-options",
        "cluster_size=4k",
    ]);
    // --size wins over -o size; -o size alone is not a size.
    s.same(&["measure", "-O", "qcow2", "-o", "size=5M", "--size", "1G"]);
    s.same(&["measure", "-O", "qcow2", "-o", "size=5M"]);
    // Repeated -o options join; the last value wins.
    s.same(&[
        "measure",
        "-O",
        "qcow2",
        "-o",
        "cluster_size=4k",
        "-o",
        "cluster_size=8k",
        "--size",
        "1G",
    ]);
}

#[test]
fn errors_match_qemu_img() {
    let s = Scratch::new();
    sources(&s);
    let cases: &[&[&str]] = &[
        &["measure"],
        &["measure", "a.qcow2", "--size", "1"],
        &["measure", "a.qcow2", "sp.raw"],
        &["measure", "-f", "qcow2", "--size", "1"],
        &["measure", "nonexist.qcow2"],
        &["measure", "--size", "1x"],
        &["measure", "--size", "-1"],
        &["measure", "--size", "9E"],
        &["measure", "-O", "foo", "--size", "1"],
        &["measure", "-O", "vmdk", "--size", "1"],
        &["measure", "-O", "qcow2", "--size", "4P"],
        &["measure", "-O", "qcow2", "-o", "size=4P", "a.qcow2"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on,size=2P",
            "a.qcow2",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=abc",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=3k",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4M",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=4k",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=maybe",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=abc",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=3",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=128",
            "--size",
            "1",
        ],
        &["measure", "-O", "qcow2", "-o", "compat=v3", "--size", "1"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "compat=0.10,refcount_bits=1",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "refcount_bits=3,preallocation=bogus",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "preallocation=bogus",
            "--size",
            "1",
        ],
        &["measure", "-O", "qcow2", "-o", "bogus=1", "--size", "1"],
        &["measure", "-O", "qcow2", "-o", "help", "--size", "1"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            ",cluster_size=4k",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "cluster_size=4k,",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks",
            "--size",
            "1",
        ],
        &["measure", "-O", "raw", "-o", "bogus=1", "--size", "1"],
    ];
    for args in cases {
        let out = s.same(args);
        assert_eq!(out.rc, 1, "{args:?}");
    }
    // Options qemu-img accepts and ignores for these targets.
    for args in [
        &[
            "measure",
            "-O",
            "raw",
            "-o",
            "preallocation=bogus",
            "--size",
            "1",
        ][..],
        &["measure", "-O", "raw", "-o", "nocow=on", "--size", "1"],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "compression_type=bogus",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "lazy_refcounts=on,compat=0.10",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=aes",
            "--size",
            "1",
        ],
        &[
            "measure",
            "-O",
            "qcow2",
            "-o",
            "data_file_raw=on",
            "--size",
            "1",
        ],
        &["measure", "-U", "-O", "qcow2", "a.qcow2"],
    ] {
        assert_eq!(s.same(args).rc, 0, "{args:?}");
    }
}

#[test]
fn help_matches_qemu_img() {
    let s = Scratch::new();
    assert_eq!(s.same(&["measure", "--help"]).rc, 0);
    assert_eq!(s.same(&["measure", "-h"]).rc, 0);
}

#[test]
fn output_format_errors_name_the_program() {
    // The hint line names argv[0]; under the qemu-img name it is identical.
    let s = Scratch::new();
    let out = s.same(&["measure", "--output=xml", "--size", "1"]);
    assert_eq!(out.rc, 1);
    assert!(out.stderr.contains("--output expects"));
}
