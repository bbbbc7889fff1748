//! Open-time errors judged by QEMU: headers crafted from a qemu-img image,
//! each refused by qemu-img; diskimg's message must contain qemu-img's
//! reason and name the file. Needs qemu-img (Debian: qemu-utils).

use std::path::{Path, PathBuf};
use std::process::Command;

use diskimg::OpenOptions;

fn qemu_img(args: &[&str], dir: &Path) -> std::process::Output {
    let ok = Command::new("qemu-img")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "qemu-img is missing: the qcow2 interop tests need QEMU's tools (Debian package qemu-utils)"
    );
    Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// A fresh v3 image (64 KiB clusters, 1 MiB) with the patches applied.
fn crafted(dir: &Path, name: &str, opts: &str, patches: &[(usize, Vec<u8>)]) -> PathBuf {
    let p = dir.join(name);
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([name, "1M"]);
    let out = qemu_img(&args, dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut b = std::fs::read(&p).unwrap();
    for (off, bytes) in patches {
        b[*off..*off + bytes.len()].copy_from_slice(bytes);
    }
    std::fs::write(&p, b).unwrap();
    p
}

/// qemu-img's reason for refusing the image (the text after
/// "Could not open 'NAME': ").
fn qemu_reason(dir: &Path, name: &str) -> String {
    let out = qemu_img(&["map", "--output=json", "-f", "qcow2", name], dir);
    assert!(!out.status.success(), "qemu-img accepted {name}");
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("Could not open"))
        .unwrap_or_else(|| {
            panic!("no 'Could not open' in {err:?}");
        });
    let prefix = format!("Could not open '{name}': ");
    line.split_once(&prefix)
        .map(|(_, r)| r.to_string())
        .unwrap_or_else(|| panic!("unexpected qemu-img line {line:?}"))
}

/// Byte patches: (file offset, bytes).
type Patches = Vec<(usize, Vec<u8>)>;

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}
fn be64(v: u64) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn assert_same_reason(dir: &Path, name: &str, opts: &str, patches: &[(usize, Vec<u8>)]) {
    let p = crafted(dir, name, opts, patches);
    let reason = qemu_reason(dir, name);
    let ours = match diskimg::open(&p, &OpenOptions::default()) {
        Ok(_) => panic!("diskimg accepted {name}; qemu-img says {reason:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        ours.contains(&reason),
        "{name}: ours {ours:?} does not contain qemu-img's {reason:?}"
    );
    assert!(
        ours.contains(name),
        "{name}: {ours:?} does not name the file"
    );
    eprintln!("{name}: qemu {reason:?}\n    ours {ours:?}");
}

#[test]
fn header_limits_match_qemu() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let cases: Vec<(&str, Patches)> = vec![
        ("version4.qcow2", vec![(4, be32(4))]),
        ("cbits8.qcow2", vec![(20, be32(8))]),
        ("cbits22.qcow2", vec![(20, be32(22))]),
        ("hlen.qcow2", vec![(100, be32(96))]),
        ("hlen_big.qcow2", vec![(100, be32(65544))]),
        ("backoff.qcow2", vec![(8, be64(65537))]),
        ("rorder.qcow2", vec![(96, be32(7))]),
        ("crypt3.qcow2", vec![(32, be32(3))]),
        ("incompat5.qcow2", vec![(72, be64(1 << 5))]),
        ("incompat40.qcow2", vec![(72, be64(1 << 40))]),
        ("comp_bit.qcow2", vec![(72, be64(1 << 3))]),
        ("comp_type.qcow2", vec![(104, vec![1])]),
        (
            "comp_unknown.qcow2",
            vec![(104, vec![2]), (72, be64(1 << 3))],
        ),
        ("subcluster.qcow2", vec![(20, be32(13)), (72, be64(1 << 4))]),
        ("reftable0.qcow2", vec![(56, be32(0))]),
        ("reftable129.qcow2", vec![(56, be32(129))]),
        ("reftable_off.qcow2", vec![(48, be64(0x10200))]),
        (
            "snapshots.qcow2",
            vec![(60, be32(65537)), (64, be64(0x50000))],
        ),
        ("snap_off.qcow2", vec![(60, be32(1)), (64, be64(0x50008))]),
        ("l1_big.qcow2", vec![(36, be32(0x40_0001))]),
        ("l1_small.qcow2", vec![(24, be64(1 << 40))]),
        ("l1_off.qcow2", vec![(40, be64(0x30008))]),
        (
            "too_big.qcow2",
            vec![(24, be64(1 << 62)), (36, be32(0x40_0000))],
        ),
        ("data_raw.qcow2", vec![(88, be64(2))]),
        // The feature table (at 112) claims to run past cluster 0.
        ("ext_len.qcow2", vec![(116, be32(0x10000))]),
        ("datafile.qcow2", vec![(72, be64(1 << 2))]),
    ];
    for (name, patches) in cases {
        assert_same_reason(dir, name, "", &patches);
    }
}

#[test]
fn named_incompatible_feature_uses_the_feature_table() {
    let d = tempfile::tempdir().unwrap();
    let mut entry = vec![0u8, 5];
    entry.extend_from_slice(b"my feature");
    entry.resize(48, 0);
    // First feature table entry (at 112 + 8) renamed to incompatible bit 5.
    assert_same_reason(
        d.path(),
        "named.qcow2",
        "",
        &[(72, be64((1 << 5) | (1 << 6))), (120, entry)],
    );
}

#[test]
fn backing_format_extension_length() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let out = qemu_img(
        &[
            "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "ov.qcow2",
        ],
        d.path(),
    );
    assert!(out.status.success());
    let p = d.path().join("ov.qcow2");
    let mut b = std::fs::read(&p).unwrap();
    // The backing format extension comes first, at 112.
    assert_eq!(&b[112..116], &0xE279_2ACAu32.to_be_bytes());
    b[116..120].copy_from_slice(&16u32.to_be_bytes());
    std::fs::write(&p, b).unwrap();
    let reason = qemu_reason(d.path(), "ov.qcow2");
    let ours = diskimg::open(&p, &OpenOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(ours.contains(&reason), "{ours:?} vs {reason:?}");
}

#[test]
fn corrupt_images_open_read_only_only() {
    let d = tempfile::tempdir().unwrap();
    let p = crafted(d.path(), "corrupt.qcow2", "", &[(72, be64(2))]);
    assert!(diskimg::open(&p, &OpenOptions::default()).is_ok());
    let out = Command::new("qemu-io")
        .current_dir(d.path())
        .args(["-c", "read 0 512", "corrupt.qcow2"])
        .output()
        .expect("qemu-io is missing (Debian package qemu-utils)");
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("qcow2: Image is corrupt; cannot be opened read/write"),
        "{err}"
    );
    let rw = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let e = diskimg::open(&p, &rw).err().unwrap().to_string();
    assert!(
        e.contains("qcow2: Image is corrupt; cannot be opened read/write"),
        "{e}"
    );
    assert!(e.contains("corrupt.qcow2"), "{e}");
}

#[test]
fn broken_bitmap_table_fails_open_as_qemu() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let out = qemu_img(&["create", "-q", "-f", "qcow2", "bt.qcow2", "64M"], dir);
    assert!(out.status.success());
    let out = qemu_img(&["bitmap", "--add", "bt.qcow2", "b0"], dir);
    assert!(out.status.success());
    let p = dir.join("bt.qcow2");
    let mut b = std::fs::read(&p).unwrap();
    // Find the bitmaps extension, then the directory, then the table.
    let magic = 0x2385_2875u32.to_be_bytes();
    let i = (0..65536)
        .find(|&i| b[i..i + 4] == magic)
        .expect("bitmaps extension");
    let dir_off = u64::from_be_bytes(b[i + 24..i + 32].try_into().unwrap()) as usize;
    let table = u64::from_be_bytes(b[dir_off..dir_off + 8].try_into().unwrap()) as usize;
    // A reserved bit in the first table entry.
    b[table + 7] |= 2;
    std::fs::write(&p, b).unwrap();
    let reason = qemu_reason(dir, "bt.qcow2");
    let ours = diskimg::open(&p, &OpenOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(ours.contains(&reason), "{ours:?} vs {reason:?}");
}
