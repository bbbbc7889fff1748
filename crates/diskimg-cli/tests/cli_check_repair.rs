//! `check -r leaks|all` against qemu-img on copies of the same damaged
//! images: the same diagnostics, report and exit code, and an image that
//! qemu-img then finds clean.

mod cli_common;

use std::os::unix::fs::FileExt;

use cli_common::Scratch;

/// A 10 MiB qcow2 with one data cluster (index 5), grown to 10 clusters.
fn base(s: &Scratch, name: &str) {
    assert_eq!(s.qemu(&["create", "-q", "-f", "qcow2", name, "10M"]).rc, 0);
    let io = std::process::Command::new("qemu-io")
        .current_dir(s.dir.path())
        .args(["-c", "write -P 1 0 64k", name])
        .output()
        .expect("qemu-io is installed (Debian package qemu-utils)");
    assert!(io.status.success());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path(name))
        .unwrap();
    f.set_len(10 * 65536).unwrap();
}

/// Sets the 16-bit refcount of `cluster` (the first refcount block).
fn set_refcount(s: &Scratch, name: &str, cluster: u64, value: u16) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.path(name))
        .unwrap();
    let mut h = [0u8; 104];
    f.read_exact_at(&mut h, 0).unwrap();
    let rt = u64::from_be_bytes(h[48..56].try_into().unwrap());
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, rt).unwrap();
    let rb = u64::from_be_bytes(e);
    f.write_all_at(&value.to_be_bytes(), rb + 2 * cluster)
        .unwrap();
}

fn pair(s: &Scratch, damage: &dyn Fn(&str)) {
    for name in ["d.qcow2", "q.qcow2"] {
        base(s, name);
        damage(name);
    }
}

fn run_both(s: &Scratch, args: &[&str]) {
    let with = |file: &str| -> Vec<String> {
        args.iter()
            .map(|a| {
                if *a == "IMG" {
                    file.to_string()
                } else {
                    a.to_string()
                }
            })
            .collect()
    };
    let d = s.ours(
        &with("d.qcow2")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let q = s.qemu(
        &with("q.qcow2")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let norm = |t: &str, f: &str| t.replace(f, "IMG");
    assert_eq!(
        (norm(&d.stdout, "d.qcow2"), norm(&d.stderr, "d.qcow2"), d.rc),
        (norm(&q.stdout, "q.qcow2"), norm(&q.stderr, "q.qcow2"), q.rc),
        "{args:?}"
    );
}

#[test]
fn leaks_are_repaired_like_qemu_img() {
    for mode in ["leaks", "all"] {
        for output in ["human", "json"] {
            let s = Scratch::new();
            pair(&s, &|n| {
                set_refcount(&s, n, 7, 1);
                set_refcount(&s, n, 8, 3);
            });
            let out = format!("--output={output}");
            run_both(&s, &["check", "-r", mode, &out, "IMG"]);
            run_both(&s, &["check", "IMG"]);
        }
    }
}

/// The same repairs with the image opened with O_DIRECT (`-T none`,
/// `directsync`, `off`).
#[test]
fn repairs_with_direct_cache_modes_like_qemu_img() {
    for cache in ["none", "directsync", "off"] {
        let s = Scratch::new();
        pair(&s, &|n| {
            set_refcount(&s, n, 7, 1);
            set_refcount(&s, n, 8, 3);
        });
        run_both(&s, &["check", "-T", cache, "IMG"]);
        run_both(&s, &["check", "-T", cache, "-r", "all", "IMG"]);
        run_both(&s, &["check", "-T", cache, "--output=json", "IMG"]);
    }
}

#[test]
fn low_refcounts_are_fixed_and_zero_refcounts_rebuilt() {
    // A refcount too low but not zero: fixed in place with -r all.
    let s = Scratch::new();
    pair(&s, &|n| {
        set_refcount(&s, n, 4, 0);
        set_refcount(&s, n, 4, 0);
        set_refcount(&s, n, 7, 1);
    });
    run_both(&s, &["check", "-r", "leaks", "IMG"]);
    run_both(&s, &["check", "-r", "all", "IMG"]);
    run_both(&s, &["check", "IMG"]);
    // A referenced cluster with refcount 0: -r leaks refuses, -r all
    // rebuilds the refcount structure.
    let s = Scratch::new();
    pair(&s, &|n| {
        set_refcount(&s, n, 5, 0);
        set_refcount(&s, n, 8, 1);
    });
    run_both(&s, &["check", "-r", "leaks", "IMG"]);
    run_both(&s, &["check", "-r", "all", "IMG"]);
    run_both(&s, &["check", "IMG"]);
    let c = s.qemu(&["compare", "d.qcow2", "q.qcow2"]);
    assert_eq!(c.rc, 0, "{c:?}");
}

/// Clears (or sets) the COPIED flag of L2 entry 0 or of L1 entry 0.
fn flip_copied(s: &Scratch, name: &str, l1: bool) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.path(name))
        .unwrap();
    let mut h = [0u8; 104];
    f.read_exact_at(&mut h, 0).unwrap();
    let l1_off = u64::from_be_bytes(h[40..48].try_into().unwrap());
    let mut e = [0u8; 8];
    f.read_exact_at(&mut e, l1_off).unwrap();
    let l1_entry = u64::from_be_bytes(e);
    let at = if l1 {
        l1_off
    } else {
        l1_entry & 0x00ff_ffff_ffff_fe00
    };
    f.read_exact_at(&mut e, at).unwrap();
    let flipped = u64::from_be_bytes(e) ^ (1 << 63);
    f.write_all_at(&flipped.to_be_bytes(), at).unwrap();
}

#[test]
fn copied_flags_are_repaired_like_qemu_img() {
    for l1 in [false, true] {
        let s = Scratch::new();
        pair(&s, &|n| {
            flip_copied(&s, n, l1);
            set_refcount(&s, n, 8, 1);
        });
        run_both(&s, &["check", "IMG"]);
        run_both(&s, &["check", "-r", "leaks", "IMG"]);
        run_both(&s, &["check", "-r", "all", "IMG"]);
        run_both(&s, &["check", "IMG"]);
    }
}
