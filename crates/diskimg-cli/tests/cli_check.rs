//! `check` against qemu-img check: the same report (stdout), the same
//! per-cluster diagnostics (stderr), the same exit code, on healthy images of
//! every feature and on images damaged in known ways.

mod cli_common;

use std::process::Command;

use cli_common::Scratch;

/// Runs a QEMU tool in the scratch directory; panics (fails) when it fails.
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

/// A qcow2 made by qemu-img with `opts`, filled by qemu-io: data, a zero
/// write, a discard, data past the first L2 range.
fn image(s: &Scratch, name: &str, opts: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([name, "8M"]);
    tool(s, "qemu-img", &args);
    tool(
        s,
        "qemu-io",
        &[
            "-c",
            "write -P 3 0 100k",
            "-c",
            "write -z 1M 64k",
            "-c",
            "write -P 5 2M 4k",
            "-c",
            "discard 0 4k",
            name,
        ],
    );
}

fn both_outputs_same(s: &Scratch, name: &str) {
    s.same(&["check", name]);
    s.same(&["check", "--output=json", name]);
}

#[test]
fn check_equals_qemu_img_on_healthy_images() {
    let s = Scratch::new();
    let cases = [
        ("v2.qcow2", "compat=0.10"),
        ("v3.qcow2", ""),
        ("c512.qcow2", "cluster_size=512"),
        ("c2m.qcow2", "cluster_size=2M"),
        ("r1.qcow2", "refcount_bits=1"),
        ("r64.qcow2", "refcount_bits=64"),
        ("ext.qcow2", "extended_l2=on,cluster_size=128k"),
        ("lazy.qcow2", "lazy_refcounts=on"),
        ("pm.qcow2", "preallocation=metadata"),
        ("pf.qcow2", "preallocation=full"),
        ("df.qcow2", "data_file=df.data"),
        ("dfr.qcow2", "data_file=dfr.data,data_file_raw=on"),
    ];
    for (name, opts) in cases {
        image(&s, name, opts);
        both_outputs_same(&s, name);
    }
    image(&s, "snap.qcow2", "");
    tool(&s, "qemu-img", &["snapshot", "-c", "s1", "snap.qcow2"]);
    tool(&s, "qemu-io", &["-c", "write -P 9 0 200k", "snap.qcow2"]);
    tool(&s, "qemu-img", &["snapshot", "-c", "s2", "snap.qcow2"]);
    both_outputs_same(&s, "snap.qcow2");

    image(&s, "bm.qcow2", "");
    tool(&s, "qemu-img", &["bitmap", "--add", "bm.qcow2", "b1"]);
    tool(
        &s,
        "qemu-img",
        &[
            "bitmap",
            "--add",
            "-g",
            "512k",
            "--disable",
            "bm.qcow2",
            "b2",
        ],
    );
    both_outputs_same(&s, "bm.qcow2");

    for (name, ty) in [("cz.qcow2", "zlib"), ("cs.qcow2", "zstd")] {
        let o = format!("compression_type={ty}");
        tool(
            &s,
            "qemu-img",
            &["convert", "-c", "-O", "qcow2", "-o", &o, "v3.qcow2", name],
        );
        both_outputs_same(&s, name);
    }
}

/// Patches `len` bytes at `offset` of `name` with `bytes`.
fn patch(s: &Scratch, name: &str, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path(name))
        .expect("open for patching");
    f.write_all_at(bytes, offset).expect("patch");
}

#[test]
fn check_equals_qemu_img_on_damaged_images() {
    let s = Scratch::new();
    // Layout of a fresh 64 KiB-cluster image filled by `image`: header 0,
    // reftable 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000, data from
    // 0x50000.
    let damage: &[(&str, u64, &[u8])] = &[
        // the L2 table's refcount dropped to 0 (corruption + COPIED errors)
        ("l2-refcount-0.qcow2", 0x20000 + 2 * 4, &[0, 0]),
        // a data cluster's refcount raised to 2 (leak + COPIED error)
        ("data-refcount-2.qcow2", 0x20000 + 2 * 5, &[0, 2]),
        // a refcount for a cluster nothing uses (leak)
        ("leak.qcow2", 0x20000 + 2 * 7, &[0, 1]),
        // L2 entry 0 pointing at an unaligned offset
        (
            "l2-unaligned.qcow2",
            0x40000,
            &[0x80, 0, 0, 0, 0, 0x05, 0x02, 0x00],
        ),
        // L2 entry with reserved bits set
        ("l2-reserved.qcow2", 0x40000 + 7, &[0x02]),
        // L2 entry pointing far past the end of the file
        (
            "l2-past-eof.qcow2",
            0x40000,
            &[0x80, 0, 0, 0x10, 0, 0, 0, 0],
        ),
        // L1 entry with reserved bits set
        ("l1-reserved.qcow2", 0x30000 + 7, &[0x01]),
        // refcount table entry with reserved bits set
        ("reftable-reserved.qcow2", 0x10000 + 7, &[0x01]),
        // refcount table entry pointing past the end of the file
        (
            "refblock-outside.qcow2",
            0x10008,
            &[0, 0, 0, 0, 0x10, 0, 0, 0],
        ),
    ];
    for (name, offset, bytes) in damage {
        image(&s, name, "");
        patch(&s, name, *offset, bytes);
        both_outputs_same(&s, name);
    }
}

#[test]
fn check_exit_codes_and_messages_for_other_cases() {
    let s = Scratch::new();
    s.sparse_file("r.raw", 1 << 20, &[]);
    let o = s.same(&["check", "r.raw"]);
    assert_eq!(o.rc, 63);
    s.same(&["check", "nonexistent.qcow2"]);
    s.same(&["check", "-r", "foo", "r.raw"]);
    s.same(&["check", "--output=xml", "r.raw"]);
    s.same(&["check"]);
    // A repair of a clean image finds nothing and changes nothing.
    image(&s, "v3.qcow2", "");
    let before = s.read("v3.qcow2");
    s.same(&["check", "-r", "all", "v3.qcow2"]);
    s.same(&["check", "-r", "leaks", "--output=json", "v3.qcow2"]);
    assert_eq!(before, s.read("v3.qcow2"));
}
