//! The CLI on qcow2 images and chains written by QEMU's tools: info, map,
//! compare and convert must print exactly what qemu-img prints.

mod cli_common;

use std::process::Command;

use cli_common::Scratch;

fn qemu_io(s: &Scratch, file: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let o = c
        .arg(file)
        .current_dir(s.dir.path())
        .output()
        .expect("qemu-io must be installed");
    assert!(o.status.success(), "qemu-io {cmds:?} {file}: {o:?}");
}

fn qemu_img_ok(s: &Scratch, args: &[&str]) {
    let o = s.qemu(args);
    assert_eq!(o.rc, 0, "qemu-img {args:?}: {o:?}");
}

/// Builds the images; returns their names.
fn images(s: &Scratch) -> Vec<&'static str> {
    std::fs::create_dir(s.path("sub")).unwrap();
    // Three-layer chain, the top in a subdirectory naming ../cb.qcow2.
    qemu_img_ok(s, &["create", "-q", "-f", "qcow2", "ca.qcow2", "1M"]);
    qemu_io(s, "ca.qcow2", &["write -P 1 0 64k"]);
    qemu_img_ok(
        s,
        &[
            "create", "-q", "-f", "qcow2", "-b", "ca.qcow2", "-F", "qcow2", "cb.qcow2",
        ],
    );
    qemu_io(s, "cb.qcow2", &["write -P 2 128k 64k", "write -z 256k 64k"]);
    qemu_img_ok(
        s,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "../cb.qcow2",
            "-F",
            "qcow2",
            "sub/cc.qcow2",
            "2M",
        ],
    );
    qemu_io(s, "sub/cc.qcow2", &["write -P 3 1536k 4k"]);
    // Raw base under a qcow2 overlay.
    s.sparse_file(
        "base.raw",
        16 << 20,
        &[(0, &[7u8; 1 << 20]), (4 << 20, &[8u8; 65536])],
    );
    qemu_img_ok(
        s,
        &[
            "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2",
        ],
    );
    qemu_io(s, "ov.qcow2", &["write -P 9 1M 128k"]);
    // v2, compressed, extended L2, external data file, odd size.
    qemu_img_ok(
        s,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10",
            "v2.qcow2",
            "3M",
        ],
    );
    qemu_io(s, "v2.qcow2", &["write -P 5 0 100k"]);
    qemu_img_ok(
        s,
        &["convert", "-c", "-O", "qcow2", "base.raw", "comp.qcow2"],
    );
    qemu_img_ok(
        s,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on,cluster_size=128k",
            "x.qcow2",
            "4M",
        ],
    );
    qemu_io(s, "x.qcow2", &["write -P 9 4k 4k"]);
    qemu_img_ok(
        s,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "data_file=ext.data,data_file_raw=on",
            "df.qcow2",
            "4M",
        ],
    );
    qemu_io(s, "df.qcow2", &["write -P 9 64k 4k"]);
    qemu_img_ok(s, &["create", "-q", "-f", "qcow2", "odd.qcow2", "1000000"]);
    // Snapshots and bitmaps.
    qemu_img_ok(s, &["create", "-q", "-f", "qcow2", "sn.qcow2", "64M"]);
    qemu_io(s, "sn.qcow2", &["write -P 4 0 1M"]);
    qemu_img_ok(s, &["snapshot", "-c", "snap1", "sn.qcow2"]);
    qemu_img_ok(
        s,
        &["snapshot", "-c", "a-much-longer-snapshot-name", "sn.qcow2"],
    );
    qemu_img_ok(s, &["bitmap", "--add", "sn.qcow2", "bm0"]);
    qemu_img_ok(
        s,
        &[
            "bitmap",
            "--add",
            "-g",
            "1M",
            "--disable",
            "sn.qcow2",
            "bm1",
        ],
    );
    vec![
        "sub/cc.qcow2",
        "cb.qcow2",
        "ca.qcow2",
        "ov.qcow2",
        "v2.qcow2",
        "comp.qcow2",
        "x.qcow2",
        "df.qcow2",
        "odd.qcow2",
        "sn.qcow2",
    ]
}

#[test]
fn info_equals_qemu_img_for_qcow2() {
    let s = Scratch::new();
    for f in images(&s) {
        for out in ["--output=json", "--output=human"] {
            let o = s.same(&["info", out, f]);
            assert_eq!(o.rc, 0, "{f}");
            s.same(&["info", "--backing-chain", out, f]);
        }
        let abs = s.path(f);
        s.same(&[
            "info",
            "--output=json",
            "--backing-chain",
            abs.to_str().unwrap(),
        ]);
    }
}

#[test]
fn map_equals_qemu_img_for_qcow2_and_chains() {
    let s = Scratch::new();
    for f in images(&s) {
        s.same(&["map", "--output=json", f]);
        s.same(&["map", f]);
        s.same(&[
            "map",
            "--output=json",
            "--start-offset",
            "100k",
            "--max-length",
            "1M",
            f,
        ]);
    }
    let o = s.same(&["map", "--output=json", "sub/cc.qcow2"]);
    assert!(o.stdout.contains("\"depth\": 2"), "{}", o.stdout);
    // Human map refuses compressed clusters.
    let o = s.same(&["map", "comp.qcow2"]);
    assert_eq!(o.rc, 1);
}

#[test]
fn convert_and_compare_qcow2_chains() {
    let s = Scratch::new();
    for f in images(&s) {
        let o = s.ours(&["convert", "-O", "raw", f, "ours.raw"]);
        assert_eq!(o.rc, 0, "{f}: {o:?}");
        qemu_img_ok(&s, &["convert", "-O", "raw", f, "theirs.raw"]);
        assert!(s.read("ours.raw") == s.read("theirs.raw"), "{f}");
        assert!(
            s.allocated("ours.raw") <= s.allocated("theirs.raw") + 4096,
            "{f}"
        );
        let o = s.same(&["compare", f, "theirs.raw"]);
        assert_eq!(o.rc, 0, "{f}");
        s.same(&["compare", "-s", f, "theirs.raw"]);
        s.same(&["compare", "-s", "theirs.raw", f]);
    }
    for (a, b) in [
        ("sub/cc.qcow2", "cb.qcow2"),
        ("cb.qcow2", "sub/cc.qcow2"),
        ("cb.qcow2", "ca.qcow2"),
        ("ca.qcow2", "cb.qcow2"),
        ("ov.qcow2", "base.raw"),
    ] {
        s.same(&["compare", a, b]);
        s.same(&["compare", "-s", a, b]);
    }
}

#[test]
fn broken_chains_report_as_qemu_img() {
    let s = Scratch::new();
    images(&s);
    std::fs::copy(s.path("cb.qcow2"), s.path("nb.qcow2")).unwrap();
    qemu_img_ok(
        &s,
        &[
            "rebase",
            "-u",
            "-b",
            "missing.qcow2",
            "-F",
            "qcow2",
            "nb.qcow2",
        ],
    );
    s.same(&["info", "nb.qcow2"]);
    s.same(&["info", "--backing-chain", "nb.qcow2"]);
    s.same(&["map", "nb.qcow2"]);
    s.same(&["compare", "nb.qcow2", "ca.qcow2"]);
    let o = s.same(&["convert", "nb.qcow2", "zz.raw"]);
    assert_eq!(o.rc, 1);
    assert!(!s.path("zz.raw").exists());
    // A loop: info --backing-chain names it; plain info does not look.
    qemu_img_ok(&s, &["create", "-q", "-f", "qcow2", "l1.qcow2", "1M"]);
    qemu_img_ok(
        &s,
        &[
            "create", "-q", "-f", "qcow2", "-b", "l1.qcow2", "-F", "qcow2", "l2.qcow2",
        ],
    );
    qemu_img_ok(
        &s,
        &["rebase", "-u", "-b", "l2.qcow2", "-F", "qcow2", "l1.qcow2"],
    );
    s.same(&["info", "l2.qcow2"]);
    let o = s.same(&["info", "--backing-chain", "l2.qcow2"]);
    assert_eq!(o.rc, 1);
    // qemu-img map follows the loop until it runs out of descriptors;
    // diskimg refuses it.
    let o = s.ours(&["map", "l2.qcow2"]);
    assert_eq!(o.rc, 1);
    assert!(o.stderr.contains("loop"), "{}", o.stderr);
}

/// Sets reserved bits in the L2 entry of the cluster at guest offset 32 MiB,
/// so that reading its status fails half-way through the image.
fn corrupt_l2_entry(s: &Scratch, name: &str) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.path(name))
        .unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 40).unwrap();
    let l1 = u64::from_be_bytes(b);
    f.read_exact_at(&mut b, l1).unwrap();
    let l2 = u64::from_be_bytes(b) & 0x00ff_ffff_ffff_fe00;
    let at = l2 + ((32 << 20) / 65536) * 8;
    f.read_exact_at(&mut b, at).unwrap();
    let entry = u64::from_be_bytes(b) | 0x200;
    f.write_all_at(&entry.to_be_bytes(), at).unwrap();
}

#[test]
fn failures_mid_way_give_qemu_img_exit_codes_and_remove_the_partial_target() {
    let s = Scratch::new();
    qemu_img_ok(&s, &["create", "-q", "-f", "qcow2", "bad.qcow2", "64M"]);
    qemu_io(&s, "bad.qcow2", &["write -P 1 0 64k", "write -P 2 32M 64k"]);
    corrupt_l2_entry(&s, "bad.qcow2");
    // convert fails after creating the target, and removes it.
    let o = s.ours(&["convert", "bad.qcow2", "out.raw"]);
    assert_eq!(o.rc, 1, "{o:?}");
    assert!(
        o.stderr
            .starts_with("qemu-img: error while reading block status at offset 33554432: "),
        "{}",
        o.stderr
    );
    assert_eq!(o.stderr.lines().count(), 1);
    assert!(!s.path("out.raw").exists());
    // An existing target given with -n stays, its size untouched.
    s.sparse_file("keep.raw", 80 << 20, &[(70 << 20, &[9u8; 512])]);
    let o = s.ours(&["convert", "-n", "bad.qcow2", "keep.raw"]);
    assert_eq!(o.rc, 1);
    let keep = s.read("keep.raw");
    assert_eq!(keep.len(), 80 << 20);
    assert!(keep[70 << 20..(70 << 20) + 512].iter().all(|&b| b == 9));
    // compare: allocation-status error is exit code 3, as qemu-img.
    let q = s.qemu(&["compare", "bad.qcow2", "bad.qcow2"]);
    let d = s.ours(&["compare", "bad.qcow2", "bad.qcow2"]);
    assert_eq!((d.rc, q.rc), (3, 3));
    assert_eq!(d.stdout, q.stdout);
    assert_eq!(
        d.stderr.lines().last(),
        Some("qemu-img: Sector allocation test failed for bad.qcow2")
    );
    // map prints what it could, then fails like qemu-img.
    let q = s.qemu(&["map", "bad.qcow2"]);
    let d = s.ours(&["map", "bad.qcow2"]);
    assert_eq!((d.rc, q.rc), (1, 1));
    assert_eq!(d.stdout, q.stdout);
    assert!(
        d.stderr
            .starts_with("qemu-img: Could not read file metadata: "),
        "{}",
        d.stderr
    );
}

#[test]
fn convert_refuses_a_target_that_is_part_of_the_source() {
    let s = Scratch::new();
    images(&s);
    let before = s.read("ca.qcow2");
    for args in [
        &["convert", "sub/cc.qcow2", "ca.qcow2"][..],
        &["convert", "-n", "sub/cc.qcow2", "ca.qcow2"],
        &["convert", "-n", "df.qcow2", "ext.data"],
        &["convert", "base.raw", "base.raw"],
    ] {
        let o = s.same(args);
        assert_eq!(o.rc, 1, "{args:?}");
    }
    assert!(s.read("ca.qcow2") == before);
}

#[test]
fn several_sources_are_concatenated() {
    let s = Scratch::new();
    images(&s);
    let srcs = [
        "ca.qcow2",
        "v2.qcow2",
        "base.raw",
        "comp.qcow2",
        "sub/cc.qcow2",
    ];
    let mut ours = vec!["convert"];
    ours.extend_from_slice(&srcs);
    ours.push("ours.raw");
    let o = s.ours(&ours);
    assert_eq!(o.rc, 0, "{o:?}");
    let mut theirs = vec!["convert"];
    theirs.extend_from_slice(&srcs);
    theirs.push("theirs.raw");
    qemu_img_ok(&s, &theirs);
    let a = s.read("ours.raw");
    assert_eq!(
        a.len() as u64,
        (1 << 20) + (3 << 20) + (16 << 20) + (16 << 20) + (2 << 20)
    );
    assert!(a == s.read("theirs.raw"));
    assert!(s.allocated("ours.raw") <= s.allocated("theirs.raw") + 4096);
}

#[test]
fn info_of_an_aes_encrypted_image_equals_qemu_img() {
    let s = Scratch::new();
    qemu_img_ok(
        &s,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=abc",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s0",
            "aes.qcow2",
            "1M",
        ],
    );
    let o = s.same(&["info", "--output=json", "aes.qcow2"]);
    assert!(o.stdout.contains("\"encrypted\": true"), "{}", o.stdout);
    let o = s.same(&["info", "aes.qcow2"]);
    assert!(o.stdout.contains("encrypted: yes\n"), "{}", o.stdout);
}
