//! qcow2 reading judged by QEMU: images made by qemu-img/qemu-io read
//! byte-for-byte as `qemu-img convert -O raw` does, and block status agrees
//! with `qemu-img map --output=json`.
//!
//! These tests need qemu-img and qemu-io (Debian: qemu-utils); without them
//! they fail, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use diskimg::format::FormatSpecific;
use diskimg::{BlockDevice, OpenOptions};

fn tool(name: &str) -> Command {
    match Command::new(name).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "{name} is missing: the qcow2 interop tests need QEMU's tools (Debian package qemu-utils)"
        ),
    }
    Command::new(name)
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("running a QEMU tool");
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str]) -> String {
    let mut c = tool("qemu-img");
    c.args(args);
    run(c)
}

/// qemu-img run in `dir` (QEMU resolves a relative data file name against
/// its working directory; diskimg against the image's directory).
fn qemu_img_in(dir: &Path, args: &[&str]) -> String {
    let mut c = tool("qemu-img");
    c.current_dir(dir).args(args);
    run(c)
}

/// Runs qemu-io commands on a qcow2 image, at most 50 per process.
fn qemu_io(fmt: &str, path: &Path, cmds: &[String]) {
    for chunk in cmds.chunks(50) {
        let mut c = tool("qemu-io");
        if let Some(dir) = path.parent() {
            c.current_dir(dir);
        }
        c.arg("-f").arg(fmt);
        for cmd in chunk {
            c.arg("-c").arg(cmd);
        }
        c.arg(path);
        run(c);
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// qemu-io commands that write patterns at random offsets (aligned and
/// unaligned), write zeros and discard.
fn random_ops(seed: u64, size: u64, cluster: u64, n: usize, zeros: bool) -> Vec<String> {
    let mut r = Rng(seed | 1);
    let mut v = Vec::new();
    for i in 0..n {
        let kind = r.below(10);
        let max_len = (cluster * 3).clamp(4096, 1 << 20);
        let len = 1 + r.below(max_len);
        let off = r.below(size - len);
        let pat = 1 + r.below(254);
        match kind {
            0..=5 => v.push(format!("write -P {pat:#x} {off} {len}")),
            6 => {
                // Aligned to clusters: whole-cluster allocations.
                let off = off / cluster * cluster;
                let len = (len.div_ceil(cluster) * cluster).min(size - off);
                v.push(format!("write -P {pat:#x} {off} {len}"));
            }
            7 if zeros => {
                let off = off / 512 * 512;
                let len = (len.div_ceil(512) * 512).min(size - off);
                v.push(format!("write -z {off} {len}"));
            }
            8 if i > n / 2 => {
                let off = off / cluster * cluster;
                let len = (len.div_ceil(cluster) * cluster).min(size - off);
                v.push(format!("discard {off} {len}"));
            }
            _ => v.push(format!("write -P {pat:#x} {off} {}", len.min(700))),
        }
    }
    v
}

fn open(path: &Path) -> Arc<dyn BlockDevice> {
    diskimg::open(path, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("diskimg could not open {}: {e}", path.display()))
}

/// Every byte read through diskimg equals `qemu-img convert -O raw`; reads
/// of random ranges (also from several threads at once) agree too.
fn assert_reads_like_qemu(path: &Path) {
    let dir = path.parent().unwrap();
    let raw = dir.join(format!(
        "{}.expected.raw",
        path.file_name().unwrap().to_string_lossy()
    ));
    qemu_img_in(
        dir,
        &[
            "convert",
            "-O",
            "raw",
            path.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
    let expected = std::fs::read(&raw).unwrap();
    let dev = open(path);
    assert_eq!(
        dev.size(),
        expected.len() as u64,
        "virtual size of {path:?}"
    );
    let mut got = vec![0u8; expected.len()];
    // Whole disk in 1 MiB + 17 byte chunks (crossing every boundary kind).
    let step = (1 << 20) + 17;
    let mut off = 0usize;
    while off < got.len() {
        let n = step.min(got.len() - off);
        dev.read_at(&mut got[off..off + n], off as u64).unwrap();
        off += n;
    }
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "{}: first difference at guest offset {i}: diskimg {:#x}, qemu {:#x}",
            path.display(),
            got[i],
            expected[i]
        );
    }
    let expected = Arc::new(expected);
    let handles: Vec<_> = (0..4u64)
        .map(|t| {
            let dev = dev.clone();
            let expected = expected.clone();
            std::thread::spawn(move || {
                let mut r = Rng(0x9e37_79b9 + t);
                let size = expected.len() as u64;
                for _ in 0..200 {
                    let len = 1 + r.below(300_000.min(size));
                    let off = r.below(size - len + 1);
                    let mut buf = vec![0u8; len as usize];
                    dev.read_at(&mut buf, off).unwrap();
                    assert!(
                        buf[..] == expected[off as usize..(off + len) as usize],
                        "random read at {off}+{len} differs"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// One extent as `qemu-img map --output=json` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extent {
    start: u64,
    length: u64,
    depth: u64,
    present: bool,
    zero: bool,
    data: bool,
    compressed: bool,
    offset: Option<u64>,
}

fn parse_map(json: &str) -> Vec<Extent> {
    let mut v = Vec::new();
    for line in json.lines() {
        let line = line.trim().trim_start_matches('[').trim_end_matches(',');
        let line = line.trim_end_matches(']').trim();
        if line.is_empty() {
            continue;
        }
        let body = line.trim_start_matches('{').trim_end_matches('}');
        let mut e = Extent {
            start: 0,
            length: 0,
            depth: 0,
            present: false,
            zero: false,
            data: false,
            compressed: false,
            offset: None,
        };
        for field in body.split(',') {
            let (k, val) = field.split_once(':').expect("map field");
            let k = k.trim().trim_matches('"');
            let val = val.trim();
            match k {
                "start" => e.start = val.parse().unwrap(),
                "length" => e.length = val.parse().unwrap(),
                "depth" => e.depth = val.parse().unwrap(),
                "present" => e.present = val == "true",
                "zero" => e.zero = val == "true",
                "data" => e.data = val == "true",
                "compressed" => e.compressed = val == "true",
                "offset" => e.offset = Some(val.parse().unwrap()),
                _ => {}
            }
        }
        v.push(e);
    }
    v
}

/// Appends `e` to `v`, merging it as qemu-img map does (same flags and
/// depth, offsets contiguous).
fn push_merged(v: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = v.last_mut() {
        let same = last.depth == e.depth
            && last.present == e.present
            && last.zero == e.zero
            && last.data == e.data
            && last.compressed == e.compressed
            && last.offset.is_some() == e.offset.is_some()
            && match (last.offset, e.offset) {
                (Some(a), Some(b)) => a + last.length == b,
                _ => true,
            };
        if same && last.start + last.length == e.start {
            last.length += e.length;
            return;
        }
    }
    v.push(e);
}

/// The top layer's block status as qemu-img map extents (depth 0), with
/// unallocated extents marked `present: false`.
fn our_map(dev: &dyn BlockDevice) -> Vec<Extent> {
    let size = dev.size();
    let mut v = Vec::new();
    let mut off = 0;
    while off < size {
        let st = dev.block_status(off, size - off).unwrap();
        assert!(st.len >= 1 && st.len <= size - off, "bad length {st:?}");
        push_merged(
            &mut v,
            Extent {
                start: off,
                length: st.len,
                depth: 0,
                present: st.allocated,
                zero: st.zero,
                data: st.data,
                compressed: st.compressed,
                offset: st.offset,
            },
        );
        off += st.len;
    }
    v
}

/// Block status of a single-layer image equals `qemu-img map`.
fn assert_map_like_qemu(path: &Path) {
    let json = qemu_img_in(
        path.parent().unwrap(),
        &[
            "map",
            "--output=json",
            "-f",
            "qcow2",
            path.to_str().unwrap(),
        ],
    );
    let theirs = parse_map(&json);
    let dev = open(path);
    let ours = our_map(dev.as_ref());
    if ours != theirs {
        let n = ours
            .iter()
            .zip(&theirs)
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(theirs.len()));
        panic!(
            "{}: map differs at extent {n}:\n ours:   {:?}\n qemu:   {:?}\n ({} vs {} extents)",
            path.display(),
            ours.get(n),
            theirs.get(n),
            ours.len(),
            theirs.len()
        );
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn p(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

fn create(path: &Path, opts: &str, size: u64) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.push("-o");
        args.push(opts);
    }
    let s = path.to_str().unwrap().to_string();
    let sz = size.to_string();
    args.push(&s);
    args.push(&sz);
    qemu_img_in(path.parent().unwrap(), &args);
}

fn check_image(path: &Path) {
    assert_reads_like_qemu(path);
    assert_map_like_qemu(path);
}

fn scenario(opts: &str, size: u64, cluster: u64, seed: u64, zeros: bool) {
    let d = tmp();
    let img = p(&d, "t.qcow2");
    create(&img, opts, size);
    qemu_io("qcow2", &img, &random_ops(seed, size, cluster, 60, zeros));
    check_image(&img);
}

#[test]
fn v2_images_of_every_cluster_size() {
    for (cs, size) in [
        (512u64, 8u64 << 20),
        (4096, 32 << 20),
        (65536, 64 << 20),
        (2 << 20, 64 << 20),
    ] {
        scenario(
            &format!("compat=0.10,cluster_size={cs}"),
            size,
            cs,
            cs + 1,
            true,
        );
    }
}

#[test]
fn v3_images_of_every_cluster_size() {
    for (cs, size) in [
        (512u64, 8u64 << 20),
        (4096, 32 << 20),
        (65536, 64 << 20),
        (2 << 20, 64 << 20),
    ] {
        scenario(
            &format!("compat=1.1,cluster_size={cs}"),
            size,
            cs,
            cs + 7,
            true,
        );
    }
}

#[test]
fn refcount_widths() {
    for bits in [1u32, 16, 64] {
        scenario(
            &format!("refcount_bits={bits},cluster_size=4096"),
            16 << 20,
            4096,
            u64::from(bits),
            true,
        );
    }
}

#[test]
fn extended_l2_entries() {
    for (cs, size) in [
        (16384u64, 16u64 << 20),
        (65536, 32 << 20),
        (2 << 20, 64 << 20),
    ] {
        scenario(
            &format!("extended_l2=on,cluster_size={cs}"),
            size,
            cs,
            cs + 3,
            true,
        );
    }
}

#[test]
fn compressed_zlib_and_zstd() {
    for ctype in ["zlib", "zstd"] {
        for cs in [4096u64, 65536, 2 << 20] {
            let d = tmp();
            let src = p(&d, "src.qcow2");
            let size = 16u64 << 20;
            create(&src, "cluster_size=65536", size);
            qemu_io("qcow2", &src, &random_ops(cs + 11, size, 65536, 50, false));
            let img = p(&d, "c.qcow2");
            qemu_img(&[
                "convert",
                "-c",
                "-O",
                "qcow2",
                "-o",
                &format!("compression_type={ctype},cluster_size={cs}"),
                src.to_str().unwrap(),
                img.to_str().unwrap(),
            ]);
            // Some uncompressed writes on top of the compressed clusters.
            qemu_io("qcow2", &img, &random_ops(cs + 12, size, cs, 10, true));
            check_image(&img);
            let info = open(&img).info();
            let Some(FormatSpecific::Qcow2(q)) = info.specific else {
                panic!()
            };
            assert_eq!(q.compression_type, ctype);
        }
    }
}

#[test]
fn preallocation_modes() {
    for mode in ["metadata", "falloc", "full"] {
        let d = tmp();
        let img = p(&d, "pre.qcow2");
        let size = 16u64 << 20;
        create(&img, &format!("preallocation={mode}"), size);
        qemu_io("qcow2", &img, &random_ops(5, size, 65536, 20, true));
        check_image(&img);
    }
}

#[test]
fn external_data_file_with_and_without_raw() {
    for raw in ["off", "on"] {
        let d = tmp();
        let img = p(&d, "ext.qcow2");
        let size = 16u64 << 20;
        create(
            &img,
            &format!("data_file=ext.data,data_file_raw={raw}"),
            size,
        );
        qemu_io("qcow2", &img, &random_ops(9, size, 65536, 30, true));
        check_image(&img);
        let info = open(&img).info();
        let Some(FormatSpecific::Qcow2(q)) = info.specific else {
            panic!()
        };
        assert_eq!(q.data_file.as_deref(), Some("ext.data"));
        assert_eq!(q.data_file_raw, Some(raw == "on"));
        // Without opening the data file, info works and reads fail clearly.
        let opts = OpenOptions {
            open_data_file: false,
            ..OpenOptions::default()
        };
        let dev = diskimg::open(&img, &opts).unwrap();
        assert_eq!(dev.info().virtual_size, size);
        let mut buf = vec![0u8; 1 << 20];
        let mut failed = false;
        for i in 0..16u64 {
            if let Err(e) = dev.read_at(&mut buf, i << 20) {
                assert!(e.to_string().contains("ext.data"), "{e}");
                failed = true;
            }
        }
        assert!(failed, "reads needing the unopened data file must fail");
    }
}

#[test]
fn internal_snapshots() {
    let d = tmp();
    let img = p(&d, "snap.qcow2");
    let size = 16u64 << 20;
    create(&img, "", size);
    qemu_io("qcow2", &img, &random_ops(21, size, 65536, 20, true));
    qemu_img(&["snapshot", "-c", "first", img.to_str().unwrap()]);
    qemu_io("qcow2", &img, &random_ops(22, size, 65536, 20, true));
    qemu_img(&["snapshot", "-c", "second", img.to_str().unwrap()]);
    qemu_io("qcow2", &img, &random_ops(23, size, 65536, 10, true));
    check_image(&img);
    let info = open(&img).info();
    let json = qemu_img(&["info", "--output=json", img.to_str().unwrap()]);
    assert_eq!(info.snapshots.len(), 2);
    for s in &info.snapshots {
        assert!(
            json.contains(&format!("\"name\": \"{}\"", s.name)),
            "{json}"
        );
        assert!(json.contains(&format!("\"id\": \"{}\"", s.id)));
        assert!(json.contains(&format!("\"date-sec\": {}", s.date_sec)));
        assert!(json.contains(&format!("\"date-nsec\": {}", s.date_nsec)));
        assert_eq!(s.icount, Some(0));
    }
    assert_eq!(info.snapshots[0].name, "first");
    assert_eq!(info.snapshots[1].name, "second");
}

#[test]
fn bitmaps_in_info() {
    let d = tmp();
    let img = p(&d, "bm.qcow2");
    create(&img, "", 16 << 20);
    let f = img.to_str().unwrap();
    qemu_img(&["bitmap", "--add", f, "bm0"]);
    qemu_img(&["bitmap", "--add", "--disable", "-g", "1M", f, "bm1"]);
    qemu_io("qcow2", &img, &random_ops(31, 16 << 20, 65536, 10, false));
    check_image(&img);
    let info = open(&img).info();
    let Some(FormatSpecific::Qcow2(q)) = info.specific else {
        panic!()
    };
    let b = q.bitmaps.expect("bitmaps");
    assert_eq!(b.len(), 2);
    assert_eq!(
        (b[0].name.as_str(), b[0].granularity, b[0].flags.clone()),
        ("bm0", 65536, vec!["auto"])
    );
    assert_eq!(
        (b[1].name.as_str(), b[1].granularity, b[1].flags.clone()),
        ("bm1", 1 << 20, vec![])
    );
    let json = qemu_img(&["info", "--output=json", f]);
    assert!(json.contains("\"name\": \"bm0\""));
    assert!(json.contains("\"granularity\": 1048576"));
}

#[test]
fn backing_chain() {
    let d = tmp();
    let base = p(&d, "base.qcow2");
    let mid = p(&d, "mid.qcow2");
    let top = p(&d, "top.qcow2");
    let size = 16u64 << 20;
    create(&base, "cluster_size=4096", size);
    qemu_io("qcow2", &base, &random_ops(41, size, 4096, 30, true));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        mid.to_str().unwrap(),
    ]);
    qemu_io("qcow2", &mid, &random_ops(42, size, 65536, 30, true));
    // A top layer bigger than its backing file: the tail reads zeros.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "extended_l2=on",
        "-b",
        "mid.qcow2",
        "-F",
        "qcow2",
        top.to_str().unwrap(),
        "24M",
    ]);
    qemu_io("qcow2", &top, &random_ops(43, 24 << 20, 65536, 30, true));
    assert_reads_like_qemu(&top);
    // Top layer status: depth-0 extents of qemu-img map are ours; deeper
    // ones are unallocated in the top layer.
    let json = qemu_img(&["map", "--output=json", top.to_str().unwrap()]);
    let dev = open(&top);
    for e in parse_map(&json) {
        let mut off = e.start;
        while off < e.start + e.length {
            let st = dev.block_status(off, e.start + e.length - off).unwrap();
            if e.depth == 0 && e.present {
                assert!(st.allocated, "{e:?} vs {st:?}");
                assert_eq!(
                    (st.zero, st.data, st.compressed),
                    (e.zero, e.data, e.compressed),
                    "{e:?}"
                );
            } else if e.depth > 0 {
                assert!(!st.allocated, "{e:?} vs {st:?}");
            }
            off += st.len;
        }
    }
    let info = dev.info();
    let link = info.backing.unwrap();
    assert_eq!(link.filename, "mid.qcow2");
    assert_eq!(link.format.as_deref(), Some("qcow2"));
}

#[test]
fn info_matches_qemu_img_info() {
    let d = tmp();
    for (name, opts) in [
        ("a.qcow2", "compat=0.10"),
        (
            "b.qcow2",
            "lazy_refcounts=on,refcount_bits=64,cluster_size=16384",
        ),
        ("c.qcow2", "extended_l2=on,cluster_size=131072"),
    ] {
        let img = p(&d, name);
        create(&img, opts, 64 << 20);
        let json = qemu_img(&["info", "--output=json", img.to_str().unwrap()]);
        let info = open(&img).info();
        assert_eq!(info.format, "qcow2");
        assert!(json.contains(&format!("\"virtual-size\": {}", info.virtual_size)));
        assert!(json.contains(&format!("\"cluster-size\": {}", info.cluster_size.unwrap())));
        let Some(FormatSpecific::Qcow2(q)) = info.specific else {
            panic!()
        };
        assert!(json.contains(&format!("\"compat\": \"{}\"", q.compat)));
        assert!(json.contains(&format!("\"refcount-bits\": {}", q.refcount_bits)));
        assert!(json.contains(&format!("\"compression-type\": \"{}\"", q.compression_type)));
        for (key, val) in [
            ("lazy-refcounts", q.lazy_refcounts),
            ("corrupt", q.corrupt),
            ("extended-l2", q.extended_l2),
        ] {
            match val {
                Some(v) => assert!(json.contains(&format!("\"{key}\": {v}")), "{key} in {json}"),
                None => assert!(!json.contains(&format!("\"{key}\"")), "{key} in {json}"),
            }
        }
        assert!(!info.dirty);
    }
}

#[test]
fn big_sparse_image_maps_quickly() {
    let d = tmp();
    let img = p(&d, "big.qcow2");
    let size = 64u64 << 30;
    create(&img, "", size);
    let mut r = Rng(77);
    let cmds: Vec<String> = (0..2000)
        .map(|_| format!("write -P 0x5a {} 512", r.below(size >> 16) << 16))
        .collect();
    qemu_io("qcow2", &img, &cmds);
    let dev = open(&img);
    let t = std::time::Instant::now();
    let ours = our_map(dev.as_ref());
    let took = t.elapsed();
    eprintln!(
        "mapped {} extents of a 64 GiB image in {took:?}",
        ours.len()
    );
    // Not a timing test (debug builds vary); a sanity bound only.
    assert!(took.as_secs() < 30, "mapping took {took:?}");
    let theirs = parse_map(&qemu_img(&["map", "--output=json", img.to_str().unwrap()]));
    assert_eq!(ours, theirs);
}

#[test]
fn bitmaps_without_autoclear_bit_warn_as_qemu() {
    use std::io::{Seek, SeekFrom, Write};
    use std::sync::Mutex;
    let d = tmp();
    let img = p(&d, "bmw.qcow2");
    create(&img, "", 1 << 20);
    qemu_img(&["bitmap", "--add", img.to_str().unwrap(), "b0"]);
    // Clear the autoclear bits, as a program without bitmap support would.
    let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.seek(SeekFrom::Start(88)).unwrap();
    f.write_all(&[0u8; 8]).unwrap();
    drop(f);
    let out = tool("qemu-img").arg("info").arg(&img).output().unwrap();
    let qemu_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let opts = OpenOptions {
        warnings: Some(Arc::new(move |m: &str| {
            sink.lock().unwrap().push(m.to_string())
        })),
        ..OpenOptions::default()
    };
    let dev = diskimg::open(&img, &opts).unwrap();
    let w = seen.lock().unwrap().clone();
    assert_eq!(w.len(), 1, "{w:?}");
    let mut lines = w[0].lines();
    let first = lines.next().unwrap();
    assert!(
        qemu_err.contains(&format!("qemu-img: warning: {first}")),
        "{qemu_err:?} vs {first:?}"
    );
    assert!(qemu_err.contains(lines.next().unwrap()));
    // The inconsistent extension is ignored: no bitmaps in info, as QEMU.
    let Some(FormatSpecific::Qcow2(q)) = dev.info().specific else {
        panic!()
    };
    assert_eq!(q.bitmaps, None);
}

#[test]
fn dirty_and_corrupt_images_read_read_only() {
    use std::io::{Seek, SeekFrom, Write};
    for (bit, name) in [(1u8, "dirty.qcow2"), (2u8, "corrupt.qcow2")] {
        let d = tmp();
        let img = p(&d, name);
        create(&img, "lazy_refcounts=on", 8 << 20);
        qemu_io("qcow2", &img, &random_ops(61, 8 << 20, 65536, 20, true));
        let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.seek(SeekFrom::Start(79)).unwrap();
        f.write_all(&[bit]).unwrap();
        drop(f);
        check_image(&img);
        let info = open(&img).info();
        assert_eq!(info.dirty, bit == 1);
        let Some(FormatSpecific::Qcow2(q)) = info.specific else {
            panic!()
        };
        assert_eq!(q.corrupt, Some(bit == 2));
        assert_eq!(q.lazy_refcounts, Some(true));
        // Reading never repairs: the header is unchanged.
        let b = std::fs::read(&img).unwrap();
        assert_eq!(b[79], bit);
    }
}
