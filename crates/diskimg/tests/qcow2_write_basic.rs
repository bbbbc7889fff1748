//! The qcow2 write path, judged by QEMU: diskimg writes, zero-writes,
//! discards and resizes through the library; `qemu-img check` must find no
//! errors and no leaks, and `qemu-img convert -O raw` must give the bytes
//! the test's own model of the guest holds.
//!
//! These tests need qemu-img and qemu-io (Debian: qemu-utils); without them
//! they fail, saying so.

use std::path::Path;
use std::process::Command;

use diskimg::format::create::Preallocation;
use diskimg::{CreateOptions, Format, OpenOptions, Qcow2CreateOptions};

fn tool(name: &str) -> Command {
    match Command::new(name).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!("{name} is missing: these tests need QEMU's tools (Debian package qemu-utils)"),
    }
    Command::new(name)
}

fn run(args: &[&str], prog: &str) -> String {
    let out = tool(prog).args(args).output().expect("running a QEMU tool");
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img check` finds nothing: no corruption, no leak.
fn assert_clean(path: &Path) {
    let out = tool("qemu-img")
        .args(["check", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "qemu-img check of {} failed: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    for key in ["\"corruptions\"", "\"leaks\""] {
        assert!(!text.contains(key), "{}: {text}", path.display());
    }
    assert!(
        text.contains("\"check-errors\": 0"),
        "{}: {text}",
        path.display()
    );
}

/// The guest bytes as QEMU reads them.
fn qemu_bytes(path: &Path) -> Vec<u8> {
    let raw = path.with_extension("raw");
    run(
        &[
            "convert",
            "-O",
            "raw",
            path.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
        "qemu-img",
    );
    let v = std::fs::read(&raw).unwrap();
    std::fs::remove_file(raw).unwrap();
    v
}

fn writable() -> OpenOptions {
    OpenOptions {
        writable: true,
        ..OpenOptions::default()
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn create(path: &Path, size: u64, q: Qcow2CreateOptions) {
    let mut o = CreateOptions::new(Format::Qcow2, size);
    o.qcow2 = q;
    diskimg::create(path, &o).unwrap();
}

fn opts(cluster: u64, ext: bool, v2: bool, refbits: u64, lazy: bool) -> Qcow2CreateOptions {
    Qcow2CreateOptions {
        cluster_size: cluster,
        extended_l2: ext,
        refcount_bits: refbits,
        lazy_refcounts: lazy,
        version: if v2 { 2 } else { 3 },
        ..Qcow2CreateOptions::default()
    }
}

/// Random writes, zero writes and discards; checks reads against the model
/// as it goes, then lets QEMU judge.
fn exercise(path: &Path, backing: Option<&Path>, seed: u64, ops: usize) {
    let _ = backing;
    let mut model = qemu_bytes(path);
    let dev = diskimg::open(path, &writable()).unwrap();
    let size = dev.size();
    assert_eq!(model.len() as u64, size);
    let mut rng = Rng(seed | 1);
    for step in 0..ops {
        let off = if rng.below(2) == 0 {
            rng.below(size) & !511
        } else {
            rng.below(size)
        };
        let max = (size - off).min(if rng.below(4) == 0 { 1 << 20 } else { 16384 });
        let len = 1 + rng.below(max);
        match rng.below(10) {
            0 => {
                dev.write_zeroes(off, len, rng.below(2) == 0).unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            1 => {
                // Discard: whole clusters may read as zero or as the backing
                // file; re-read the range into the model from QEMU at the end.
                dev.discard(off, len).unwrap();
                let mut buf = vec![0u8; len as usize];
                dev.read_at(&mut buf, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&buf);
            }
            2 => dev.flush().unwrap(),
            _ => {
                let byte = (step % 251) as u8 + 1;
                let data: Vec<u8> = (0..len)
                    .map(|i| byte.wrapping_add((i / 512) as u8))
                    .collect();
                dev.write_at(&data, off).unwrap();
                model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
        }
        if std::env::var("TRACE").is_ok() {
            let mut buf = vec![0u8; size as usize];
            dev.read_at(&mut buf, 0).unwrap();
            if let Some(i) = (0..size as usize).find(|&i| buf[i] != model[i]) {
                panic!("seed {seed} step {step}: op at {off}+{len}: first difference at {i}: {} vs model {}", buf[i], model[i]);
            }
        }
        if step % 7 == 0 {
            let mut buf = vec![0u8; len as usize];
            dev.read_at(&mut buf, off).unwrap();
            assert!(
                buf == model[off as usize..(off + len) as usize],
                "seed {seed} step {step}: read back differs at {off}+{len}"
            );
        }
    }
    let mut all = vec![0u8; size as usize];
    dev.read_at(&mut all, 0).unwrap();
    assert!(
        all == model,
        "seed {seed}: whole-disk read differs from the model"
    );
    drop(dev);
    assert_clean(path);
    assert!(
        qemu_bytes(path) == model,
        "seed {seed}: QEMU reads other bytes than the model"
    );
}

#[test]
fn random_writes_over_the_option_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for &(cluster, ext, v2, refbits, lazy) in &[
        (65536, false, false, 16, false),
        (65536, false, true, 16, false),
        (512, false, false, 1, false),
        (512, false, false, 64, true),
        (16384, true, false, 16, false),
        (2 << 20, true, false, 8, true),
        (1024, false, true, 16, false),
    ] {
        n += 1;
        let p = dir.path().join(format!("m{n}.qcow2"));
        create(&p, 24 << 20, opts(cluster, ext, v2, refbits, lazy));
        exercise(&p, None, n * 7919, 150);
    }
}

#[test]
fn writes_over_a_backing_file_copy_unwritten_parts() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    run(
        &["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "8M"],
        "qemu-img",
    );
    run(
        &[
            "-c",
            "write -P 0x5a 0 8M",
            "-c",
            "write -z 1M 1M",
            base.to_str().unwrap(),
        ],
        "qemu-io",
    );
    for (i, (cluster, ext)) in [(65536u64, false), (65536, true), (4096, false)]
        .iter()
        .enumerate()
    {
        let top = dir.path().join(format!("top{i}.qcow2"));
        let mut q = opts(*cluster, *ext, false, 16, false);
        q.backing_file = Some("base.qcow2".into());
        q.backing_fmt = Some("qcow2".into());
        create(&top, 12 << 20, q);
        exercise(&top, Some(&base), 31 + i as u64, 120);
    }
}

#[test]
fn writes_over_clusters_shared_with_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("snap.qcow2");
    let ps = p.to_str().unwrap();
    run(&["create", "-q", "-f", "qcow2", ps, "4M"], "qemu-img");
    run(&["-c", "write -P 0x11 0 4M", ps], "qemu-io");
    run(&["snapshot", "-c", "s1", ps], "qemu-img");
    let before = qemu_bytes(&p);
    exercise(&p, None, 5, 80);
    // The snapshot still holds the old bytes.
    let snap = dir.path().join("snap.raw");
    run(
        &[
            "convert",
            "-l",
            "snapshot.name=s1",
            "-O",
            "raw",
            ps,
            snap.to_str().unwrap(),
        ],
        "qemu-img",
    );
    assert!(std::fs::read(&snap).unwrap() == before);
}

#[test]
fn resize_grows_and_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    for (i, prealloc) in [
        Preallocation::Off,
        Preallocation::Metadata,
        Preallocation::Full,
    ]
    .into_iter()
    .enumerate()
    {
        let p = dir.path().join(format!("r{i}.qcow2"));
        create(&p, 1 << 20, opts(4096, false, false, 16, false));
        {
            let dev = diskimg::open(&p, &writable()).unwrap();
            dev.write_at(&[7u8; 5000], (1 << 20) - 5000).unwrap();
            // Past the 512 entries of one L1 cluster: the L1 table moves.
            dev.truncate(3 << 30, prealloc)
                .unwrap_or_else(|e| panic!("{prealloc:?}: {e}"));
            dev.write_at(&[9u8; 4096], (3 << 30) - 4096).unwrap();
            dev.truncate((3 << 30) - 8192, Preallocation::Off).unwrap();
            dev.truncate(3 << 30, Preallocation::Off).unwrap();
        }
        assert_clean(&p);
        let info = run(&["info", "--output=json", p.to_str().unwrap()], "qemu-img");
        assert!(
            info.contains(&format!("\"virtual-size\": {}", 3u64 << 30)),
            "{info}"
        );
        let out = run(
            &[
                "-c",
                "read -P 7 1043576 5000",
                "-c",
                "read -P 0 1048576 4096",
                "-c",
                "read -P 0 3221221376 4096",
                p.to_str().unwrap(),
            ],
            "qemu-io",
        );
        assert!(!out.contains("fail"), "{out}");
    }
}

#[test]
fn compressed_writes_read_back_in_qemu() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (ctype, cluster, ext)) in [
        ("zlib", 65536u64, false),
        ("zstd", 65536, false),
        ("zlib", 4096, false),
        ("zstd", 32768, true),
    ]
    .into_iter()
    .enumerate()
    {
        let p = dir.path().join(format!("c{i}.qcow2"));
        let mut q = opts(cluster, ext, false, 16, false);
        q.compression_type = match ctype {
            "zlib" => diskimg::format::qcow2::header::CompressionType::Zlib,
            _ => diskimg::format::qcow2::header::CompressionType::Zstd,
        };
        // A size that ends inside a cluster: the tail is compressed too.
        let size = (2 << 20) + 1536;
        create(&p, size, q);
        let mut model = vec![0u8; size as usize];
        {
            let dev = diskimg::open(&p, &writable()).unwrap();
            let mut rng = Rng(77 + i as u64);
            let mut off = 0;
            while off < size {
                let n = cluster.min(size - off);
                let kind = rng.below(4);
                let data: Vec<u8> = (0..n)
                    .map(|j| match kind {
                        0 => 0,
                        1 => rng.next() as u8,
                        _ => b"compressible text "[(j % 18) as usize],
                    })
                    .collect();
                dev.write_compressed(&data, off).unwrap();
                model[off as usize..(off + n) as usize].copy_from_slice(&data);
                off += n;
            }
            // Overwrite a few compressed clusters normally and compressed.
            dev.write_at(&[0xab; 3000], cluster / 2).unwrap();
            model[(cluster / 2) as usize..(cluster / 2 + 3000) as usize].fill(0xab);
            dev.write_compressed(&vec![1u8; cluster as usize], cluster * 3)
                .unwrap();
            model[(cluster * 3) as usize..(cluster * 4) as usize].fill(1);
            let mut back = vec![0u8; size as usize];
            dev.read_at(&mut back, 0).unwrap();
            assert!(back == model);
        }
        assert_clean(&p);
        assert!(qemu_bytes(&p) == model, "{ctype} {cluster}");
        let map = run(&["map", "--output=json", p.to_str().unwrap()], "qemu-img");
        assert!(map.contains("\"compressed\": true"), "{map}");
    }
}
