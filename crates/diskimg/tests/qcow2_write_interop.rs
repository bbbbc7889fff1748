//! QEMU judges every write. Images are created and written through the
//! library only; `qemu-img check` must then report no errors and no leaks,
//! and `qemu-img convert -O raw` must equal the test's model of the guest
//! bytes:
//!
//! - the create option matrix (compat, cluster size, refcount width,
//!   extended L2, lazy refcounts, compression type, preallocation, backing
//!   file, external data file with and without data_file_raw), each
//!   followed by random writes, zero writes and discards; `qemu-img info`
//!   shows the options asked for; combinations the library refuses are
//!   ones qemu-img refuses too;
//! - writes over clusters shared with internal snapshots made by
//!   `qemu-img snapshot -c` (copy-on-write of shared clusters, the copied
//!   flag): the snapshot still reads the old data (`convert -l`), the
//!   active layer the new, `snapshot -a` brings the old back, `snapshot -d`
//!   leaves a clean image;
//! - truncate: growing (with every preallocation mode, growing the L1
//!   table) and shrinking, the new space reading as zeros (never as the
//!   backing file, as in QEMU);
//! - images QEMU made and wrote (its layout, compressed and zero clusters,
//!   preallocation), then written by the library;
//! - filling images with 512-byte clusters and 64-bit refcounts (the
//!   refcount table grows and moves), refilling after discards;
//! - discard and write_zeroes with unmap free the clusters and the space;
//! - guest writes that would land on metadata (through hostile L2
//!   entries) are refused and mark the image corrupt, as in QEMU;
//! - a bitmap image written without bitmap support is what QEMU expects
//!   of such a program; edge requests (empty, past the end, read-only).
//!
//! Seeded; a failure prints the seed. Needs qemu-img; fails without it.

mod write_common;

use std::path::Path;

use diskimg::format::qcow2::header::CompressionType;
use diskimg::{CreateOptions, Format, Preallocation, Qcow2CreateOptions};
use write_common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

const INTEROP_MIX: OpMix = OpMix {
    write: 60,
    zero: 18,
    discard: 14,
    flush: 5,
    reopen: 3,
};

fn qemu_img_create_refuses(dir: &Path, o: &CreateOptions) -> bool {
    let q = &o.qcow2;
    let mut opts = vec![
        format!("compat={}", if q.version == 2 { "0.10" } else { "1.1" }),
        format!("cluster_size={}", q.cluster_size),
        format!("refcount_bits={}", q.refcount_bits),
        format!("extended_l2={}", if q.extended_l2 { "on" } else { "off" }),
        format!(
            "lazy_refcounts={}",
            if q.lazy_refcounts { "on" } else { "off" }
        ),
        format!(
            "compression_type={}",
            match q.compression_type {
                CompressionType::Zlib => "zlib",
                CompressionType::Zstd => "zstd",
            }
        ),
        format!("preallocation={}", o.preallocation.name()),
    ];
    if let Some(b) = &q.backing_file {
        opts.push(format!("backing_file={b}"));
    }
    if let Some(b) = &q.backing_fmt {
        opts.push(format!("backing_fmt={b}"));
    }
    if let Some(d) = &q.data_file {
        opts.push(format!("data_file={d}.qemu"));
    }
    if q.data_file_raw {
        opts.push("data_file_raw=on".into());
    }
    let out = tool("qemu-img")
        .current_dir(dir)
        .args(["create", "-q", "-f", "qcow2", "-o", &opts.join(",")])
        .arg(dir.join("qemu-made.qcow2"))
        .arg(o.size.to_string())
        .output()
        .unwrap();
    !out.status.success()
}

/// qemu-img info shows the options the image was created with.
fn assert_info_matches(path: &Path, o: &CreateOptions, ctx: &str) {
    let info = qemu_info(path);
    let q = &o.qcow2;
    assert_eq!(info["format"], "qcow2", "{ctx}: {info}");
    assert_eq!(info["virtual-size"], o.size, "{ctx}: {info}");
    assert_eq!(info["cluster-size"], q.cluster_size, "{ctx}: {info}");
    let d = &info["format-specific"]["data"];
    assert_eq!(
        d["compat"],
        if q.version == 2 { "0.10" } else { "1.1" },
        "{ctx}: {info}"
    );
    assert_eq!(d["refcount-bits"], q.refcount_bits, "{ctx}: {info}");
    assert_eq!(
        d["compression-type"],
        match q.compression_type {
            CompressionType::Zlib => "zlib",
            CompressionType::Zstd => "zstd",
        },
        "{ctx}: {info}"
    );
    if q.version == 3 {
        assert_eq!(d["lazy-refcounts"], q.lazy_refcounts, "{ctx}: {info}");
        assert_eq!(d["extended-l2"], q.extended_l2, "{ctx}: {info}");
        assert_eq!(d["corrupt"], false, "{ctx}: {info}");
    }
    match &q.data_file {
        Some(df) => {
            assert_eq!(d["data-file"], df.as_str(), "{ctx}: {info}");
            assert_eq!(d["data-file-raw"], q.data_file_raw, "{ctx}: {info}");
        }
        None => assert!(d.get("data-file").is_none(), "{ctx}: {info}"),
    }
    match &q.backing_file {
        Some(b) => assert_eq!(info["backing-filename"], b.as_str(), "{ctx}: {info}"),
        None => assert!(info.get("backing-filename").is_none(), "{ctx}: {info}"),
    }
}

/// One combination of the create matrix.
#[derive(Debug, Clone)]
struct Combo {
    opts: CreateOptions,
    backing: Backing,
}

/// The combinations: every cluster size with every preallocation mode,
/// compat v2 and v3, the other options drawn from `rng`.
fn combos(rng: &mut Rng) -> Vec<Combo> {
    let sizes = [512, 4 * KIB, 64 * KIB, 2 * MIB];
    let preallocs = [
        Preallocation::Off,
        Preallocation::Metadata,
        Preallocation::Falloc,
        Preallocation::Full,
    ];
    let mut out = Vec::new();
    for i in 0..48u64 {
        let cs = sizes[(i % 4) as usize];
        let prealloc = preallocs[((i / 4) % 4) as usize];
        let version = if i % 3 == 0 { 2 } else { 3 };
        let v3 = version == 3;
        let mut q = Qcow2CreateOptions {
            version,
            cluster_size: cs,
            ..Qcow2CreateOptions::default()
        };
        if v3 {
            q.refcount_bits = [1, 2, 4, 8, 16, 32, 64][rng.below(7) as usize];
            q.extended_l2 = cs >= 16 * KIB && rng.chance(50);
            q.lazy_refcounts = rng.chance(40);
            if rng.chance(40) {
                q.compression_type = CompressionType::Zstd;
            }
        }
        // A backing file (preallocation with a backing file needs
        // extended L2, as in QEMU: the combos that break that rule check
        // that both refuse), or an external data file (v3).
        let mut backing = Backing::None;
        match rng.below(4) {
            0 => backing = Backing::Qcow2(MIB + 512),
            1 => backing = Backing::Raw(700 * KIB),
            2 if v3 => {
                q.data_file = Some("data".into()); // made absolute below
                q.data_file_raw = rng.chance(50);
            }
            _ => {}
        }
        if backing != Backing::None && prealloc != Preallocation::Off && !q.extended_l2 {
            // Mostly valid combinations; a few that both must refuse.
            if v3 && cs >= 16 * KIB && rng.chance(70) {
                q.extended_l2 = true;
            } else if rng.chance(75) {
                backing = Backing::None;
            }
        }
        // Sizes not a multiple of the cluster size; big enough for a few
        // L2 tables at small cluster sizes.
        let size = match cs {
            512 => 200 * KIB + 1536,
            4096 => 5 * MIB - 512,
            _ => 5 * MIB + 4096,
        };
        let mut opts = CreateOptions::new(Format::Qcow2, size);
        opts.qcow2 = q;
        opts.preallocation = prealloc;
        out.push(Combo { opts, backing });
    }
    out
}

/// Creates, checks, writes and judges one combination; false when both
/// the library and qemu-img refuse it. Panics on a failure.
fn run_combo(i: usize, combo: &Combo, seed: u64, nops: usize) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let mut o = combo.opts.clone();
    let data_path = dir.path().join("data.raw");
    if o.qcow2.data_file.is_some() {
        o.qcow2.data_file = Some(data_path.to_string_lossy().into_owned());
    }
    let ctx = format!(
        "combo #{i} {o:?} backing {:?} (seed {seed:#x})",
        combo.backing
    );
    // Build the config the shared helpers use, and the backing file.
    let config = Config {
        name: format!("combo{i}"),
        format: Format::Qcow2,
        size: o.size,
        qcow2: o.qcow2.clone(),
        backing: combo.backing,
        l2_cache: None,
    };
    let mut base = Vec::new();
    match combo.backing {
        Backing::None => {}
        Backing::Raw(len) => {
            base = make_backing_content(&dir.path().join("backing.raw"), len, seed ^ i as u64);
            o.qcow2.backing_file = Some("backing.raw".into());
            o.qcow2.backing_fmt = Some("raw".into());
        }
        Backing::Qcow2(len) => {
            let raw = dir.path().join("backing-content.raw");
            base = make_backing_content(&raw, len, seed ^ i as u64);
            qemu_img(&[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                &raw.to_string_lossy(),
                &dir.path().join("backing.qcow2").to_string_lossy(),
            ]);
            o.qcow2.backing_file = Some("backing.qcow2".into());
            o.qcow2.backing_fmt = Some("qcow2".into());
        }
    }
    let path = dir.path().join("img.qcow2");
    if let Err(e) = diskimg::create(&path, &o) {
        assert!(
            qemu_img_create_refuses(dir.path(), &o),
            "{ctx}: the library refuses ({e}) what qemu-img creates"
        );
        assert!(!path.exists(), "{ctx}: a refused create left a file");
        return false;
    }
    assert_check_clean(&path, "qcow2", &format!("{ctx}: fresh image"));
    assert_info_matches(&path, &o, &ctx);
    let mut model = Model::new(o.size, std::sync::Arc::new(base));
    // A fresh image reads as its backing file (or zeros).
    judge_by_qemu(&path, "qcow2", &model, &format!("{ctx}: fresh image"));

    let mut h = Handle::open(&path);
    let mut log = Vec::new();
    let mut r = Rng(seed ^ (i as u64) << 32);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut r,
        nops,
        &INTEROP_MIX,
        &mut log,
    ) {
        panic!("{}", drive_failure(&ctx, seed, &log, &e));
    }
    h.close();
    judge_by_qemu(&path, "qcow2", &model, &format!("{ctx}: after {nops} ops"));
    assert_info_matches(&path, &o, &ctx);
    if o.qcow2.data_file_raw {
        // The data file is a raw image of the guest.
        let mut d = read_all(&data_path);
        d.resize(o.size as usize, 0);
        let want = model.get(0, o.size);
        if let Some(b) = d.iter().zip(&want).position(|(a, b)| a != b) {
            panic!(
                "{ctx}: data_file_raw, but the data file holds {:#04x} at guest byte {b}, the \
                 model {:#04x}",
                d[b], want[b]
            );
        }
    }
    true
}

#[test]
fn interop_create_matrix_then_writes() {
    let seed = seed(0x1A7E_0001);
    let nops = ops_count(40);
    let mut rng = Rng(seed);
    let mut refused = 0;
    let mut tested = 0;
    let mut failures = Vec::new();
    for (i, combo) in combos(&mut rng).into_iter().enumerate() {
        // Every combination runs; the failures are listed at the end.
        match std::panic::catch_unwind(|| run_combo(i, &combo, seed, nops)) {
            Ok(true) => tested += 1,
            Ok(false) => refused += 1,
            Err(p) => {
                tested += 1;
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".into());
                failures.push(msg);
            }
        }
    }
    eprintln!("create matrix: {tested} combinations written and judged, {refused} refused by both");
    assert!(
        failures.is_empty(),
        "{} of {tested} combinations failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        tested >= 40,
        "only {tested} combinations could be created ({refused} refused)"
    );
}

/// Library writes, then snapshots by qemu-img, then library writes over
/// the shared clusters.
fn run_snapshot(config: Config, default_seed: u64) {
    let seed = seed(default_seed);
    let nops = ops_count(60);
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), &config, seed);
    let p = img.path.clone();
    let ps = p.to_string_lossy().into_owned();
    let mut model = img.model;
    let mut rng = Rng(seed);
    let mut log = Vec::new();
    let fail =
        |log: &[Op], e: &str| -> ! { panic!("{}", drive_failure(&config.name, seed, log, e)) };

    // Data written by the library, then snapshot s1 by qemu-img.
    let mut h = Handle::open(&p);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        nops,
        &INTEROP_MIX,
        &mut log,
    ) {
        fail(&log, &e);
    }
    h.close();
    qemu_img(&["snapshot", "-c", "s1", &ps]);
    assert_check_clean(
        &p,
        "qcow2",
        &format!("{}: after snapshot -c s1", config.name),
    );
    let model_s1 = model.clone();

    // Writes over the shared clusters.
    let mut h = Handle::open(&p);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        nops,
        &INTEROP_MIX,
        &mut log,
    ) {
        fail(&log, &format!("writing over snapshot s1: {e}"));
    }
    h.close();
    let ctx = format!("{} (seed {seed:#x}) after writes over s1", config.name);
    judge_by_qemu(&p, "qcow2", &model, &ctx);
    let raw = dir.path().join("s1.raw");
    qemu_convert_raw(&p, "qcow2", &raw, &["-l", "snapshot.name=s1"]);
    if let Err(e) = compare_raw_file(&raw, &model_s1) {
        panic!("{ctx}: snapshot s1 changed: {e}");
    }

    // A second snapshot, more writes, then back to s1.
    qemu_img(&["snapshot", "-c", "s2", &ps]);
    let model_s2 = model.clone();
    let mut h = Handle::open(&p);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        nops / 2,
        &INTEROP_MIX,
        &mut log,
    ) {
        fail(&log, &format!("writing over snapshots s1, s2: {e}"));
    }
    h.close();
    let ctx = format!(
        "{} (seed {seed:#x}) after writes over s1 and s2",
        config.name
    );
    judge_by_qemu(&p, "qcow2", &model, &ctx);
    for (name, m) in [("s1", &model_s1), ("s2", &model_s2)] {
        qemu_convert_raw(&p, "qcow2", &raw, &["-l", &format!("snapshot.name={name}")]);
        if let Err(e) = compare_raw_file(&raw, m) {
            panic!("{ctx}: snapshot {name} changed: {e}");
        }
    }
    qemu_img(&["snapshot", "-a", "s1", &ps]);
    judge_by_qemu(&p, "qcow2", &model_s1, &format!("{ctx}, snapshot -a s1"));

    // Writes after the revert (clusters shared three ways), then the
    // snapshots deleted: the copied flags must come out right.
    let mut model = model_s1.clone();
    let mut h = Handle::open(&p);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        nops / 2,
        &INTEROP_MIX,
        &mut log,
    ) {
        fail(&log, &format!("writing after snapshot -a s1: {e}"));
    }
    h.close();
    judge_by_qemu(&p, "qcow2", &model, &format!("{ctx}, writes after -a s1"));
    qemu_img(&["snapshot", "-d", "s2", &ps]);
    judge_by_qemu(&p, "qcow2", &model, &format!("{ctx}, snapshot -d s2"));
    qemu_convert_raw(&p, "qcow2", &raw, &["-l", "snapshot.name=s1"]);
    if let Err(e) = compare_raw_file(&raw, &model_s1) {
        panic!("{ctx}: snapshot s1 changed after -d s2: {e}");
    }
    qemu_img(&["snapshot", "-d", "s1", &ps]);
    judge_by_qemu(&p, "qcow2", &model, &format!("{ctx}, snapshot -d s1"));
    // With no snapshot left, more writes in place.
    let mut h = Handle::open(&p);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        nops / 2,
        &INTEROP_MIX,
        &mut log,
    ) {
        fail(&log, &format!("writing after deleting the snapshots: {e}"));
    }
    h.close();
    judge_by_qemu(&p, "qcow2", &model, &format!("{ctx}, final writes"));
}

#[test]
fn interop_snapshot_c4k_v3() {
    run_snapshot(
        Config::qcow2(4 * KIB, 3, 16, false, false, Backing::None, 3 * MIB),
        0x5A9_0001,
    );
}

#[test]
fn interop_snapshot_c512_v2_qcow2_backing() {
    run_snapshot(
        Config::qcow2(
            512,
            2,
            16,
            false,
            false,
            Backing::Qcow2(64 * KIB),
            160 * KIB,
        ),
        0x5A9_0002,
    );
}

#[test]
fn interop_snapshot_c64k_extl2_rc2_raw_backing() {
    run_snapshot(
        Config::qcow2(64 * KIB, 3, 2, true, false, Backing::Raw(MIB), 4 * MIB),
        0x5A9_0003,
    );
}

#[test]
fn interop_snapshot_c64k_lazy_rc64() {
    run_snapshot(
        Config::qcow2(64 * KIB, 3, 64, false, true, Backing::None, 4 * MIB),
        0x5A9_0004,
    );
}

/// Truncate: grow (each preallocation mode), shrink, grow again; each
/// judged by QEMU.
/// Which sizes a truncate test goes through.
#[derive(Clone, Copy)]
enum Resizes {
    /// Every preallocation mode while growing, then shrink and grow.
    All,
    /// Growing and shrinking without preallocation.
    Off,
    /// Growing with falloc, full and metadata, then shrinking.
    Prealloc,
}

/// The sizes (multiples of 512, as qcow2 needs) and modes of a truncate
/// test.
fn resize_steps(which: Resizes, size: u64, cs: u64) -> Vec<(u64, Preallocation)> {
    let steps = match which {
        Resizes::All => vec![
            // Grow far past the L1 table's first cluster.
            (size * 7 + 3 * 512, Preallocation::Off),
            (size * 7 + 3 * 512 + 5 * cs + 1024, Preallocation::Metadata),
            (size * 8 + 20 * cs, Preallocation::Falloc),
            (size * 8 + 23 * cs + 512, Preallocation::Full),
            // Shrink to the middle of a cluster, below the original size.
            (size / 2 + 1536, Preallocation::Off),
            // And grow again: what was cut off must not come back.
            (size * 3, Preallocation::Off),
        ],
        Resizes::Off => vec![
            (size * 5 + 512, Preallocation::Off),
            (size / 2 + 1536, Preallocation::Off),
            (size * 2 + 7 * 512, Preallocation::Off),
            // Down to a cluster and a half, up again.
            (cs + cs / 2, Preallocation::Off),
            (size * 4, Preallocation::Off),
        ],
        Resizes::Prealloc => vec![
            (size * 3 + 512, Preallocation::Falloc),
            (size * 4 + 3 * cs, Preallocation::Full),
            (size * 6 + 2048, Preallocation::Metadata),
            (size * 2 + 512, Preallocation::Off),
        ],
    };
    steps
        .into_iter()
        .map(|(n, p)| (n.div_ceil(512) * 512, p))
        .collect()
}

fn run_truncate(config: Config, which: Resizes, default_seed: u64) {
    let seed = seed(default_seed);
    let nops = ops_count(30);
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), &config, seed);
    let p = img.path.clone();
    let fmt = config.fmt();
    let mut model = img.model;
    let mut config = config;
    let mut rng = Rng(seed);
    let mut log = Vec::new();
    let steps = resize_steps(which, config.size, config.cluster_size());
    let mut h = Handle::open(&p);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        nops,
        &INTEROP_MIX,
        &mut log,
    ) {
        panic!("{}", drive_failure(&config.name, seed, &log, &e));
    }
    for (size, prealloc) in steps {
        if fmt == "raw" && prealloc == Preallocation::Metadata {
            continue;
        }
        let ctx = format!(
            "{} (seed {seed:#x}): truncate {} -> {size} preallocation={}",
            config.name,
            config.size,
            prealloc.name()
        );
        if let Err(e) = h.dev().truncate(size, prealloc) {
            panic!("{ctx}: {e}");
        }
        assert_eq!(h.dev().size(), size, "{ctx}: size()");
        model.resize(size);
        config.size = size;
        if let Err(e) = compare_windows(h.dev(), &model, &config) {
            panic!("{ctx}: {e}");
        }
        h.close();
        judge_by_qemu(&p, fmt, &model, &ctx);
        let info = qemu_info(&p);
        assert_eq!(info["virtual-size"], size, "{ctx}: {info}");
        h = Handle::open(&p);
        if let Err(e) = drive(
            &mut h,
            &mut model,
            &config,
            &mut rng,
            nops,
            &INTEROP_MIX,
            &mut log,
        ) {
            panic!("{}", drive_failure(&ctx, seed, &log, &e));
        }
        h.close();
        judge_by_qemu(&p, fmt, &model, &format!("{ctx}, then writes"));
        h = Handle::open(&p);
    }
    h.close();
}

/// The harness itself, on raw images.
#[test]
fn interop_truncate_raw() {
    run_truncate(Config::raw(300 * KIB), Resizes::All, 0x7A0_0001);
}

#[test]
fn interop_truncate_c512_v2() {
    run_truncate(
        Config::qcow2(512, 2, 16, false, false, Backing::None, 40 * KIB),
        Resizes::All,
        0x7A0_0002,
    );
}

#[test]
fn interop_truncate_c4k_qcow2_backing_longer() {
    // The backing file is longer than the image: growing must not make
    // its data visible.
    run_truncate(
        Config::qcow2(4 * KIB, 3, 16, false, false, Backing::Qcow2(3 * MIB), MIB),
        Resizes::All,
        0x7A0_0003,
    );
}

#[test]
fn interop_truncate_c64k_extl2_raw_backing() {
    run_truncate(
        Config::qcow2(
            64 * KIB,
            3,
            16,
            true,
            true,
            Backing::Raw(3 * MIB),
            2 * MIB + 512,
        ),
        Resizes::All,
        0x7A0_0004,
    );
}

/// Images QEMU made and wrote (its own layout, its own allocation order,
/// zero clusters, preallocation), then written by the library.
fn run_qemu_made(config: Config, qemu_opts: &str, default_seed: u64) {
    let seed = seed(default_seed);
    let nops = ops_count(60);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("qemu.qcow2");
    let ps = p.to_string_lossy().into_owned();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        qemu_opts,
        &ps,
        &config.size.to_string(),
    ]);
    let mut model = Model::new(config.size, std::sync::Arc::new(Vec::new()));
    let mut rng = Rng(seed);
    let mut cmds = Vec::new();
    // Compressed clusters (whole clusters, before anything else:
    // QEMU writes them only where nothing is allocated); the writes below
    // overwrite some of them.
    if !qemu_opts.contains("preallocation") {
        let cs = config.cluster_size();
        let mut done = Vec::new();
        for _ in 0..8 {
            let (off, _) = gen_range(&mut rng, &config);
            let off = off / cs * cs;
            if off + cs > config.size || done.contains(&off) {
                continue;
            }
            let pat = rng.range(1, 255);
            cmds.push(format!("write -c -P {pat} {off} {cs}"));
            model.write(&vec![pat as u8; cs as usize], off);
            done.push(off);
        }
    }
    // Then patterns and zero writes.
    for _ in 0..40 {
        let (off, len) = gen_range(&mut rng, &config);
        if rng.chance(25) {
            cmds.push(format!("write -z {off} {len}"));
            model.zero(off, len);
        } else {
            let pat = rng.range(1, 255);
            cmds.push(format!("write -P {pat} {off} {len}"));
            model.write(&vec![pat as u8; len as usize], off);
        }
    }
    for chunk in cmds.chunks(50) {
        let mut c = tool("qemu-io");
        c.args(["-f", "qcow2"]);
        for cmd in chunk {
            c.arg("-c").arg(cmd);
        }
        c.arg(&p);
        run(c);
    }
    judge_by_qemu(
        &p,
        "qcow2",
        &model,
        &format!("{} written by qemu-io", config.name),
    );
    let mut h = Handle::open(&p);
    let mut log = Vec::new();
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        nops,
        &INTEROP_MIX,
        &mut log,
    ) {
        panic!("{}", drive_failure(&config.name, seed, &log, &e));
    }
    h.close();
    judge_by_qemu(
        &p,
        "qcow2",
        &model,
        &format!("{} ({qemu_opts}, seed {seed:#x})", config.name),
    );
}

#[test]
fn interop_qemu_made_c64k_default() {
    run_qemu_made(
        Config::qcow2(64 * KIB, 3, 16, false, false, Backing::None, 0),
        "cluster_size=65536",
        0x9E_0001,
    );
}

#[test]
fn interop_qemu_made_c512_v2_prealloc_metadata() {
    run_qemu_made(
        Config::qcow2(512, 2, 16, false, false, Backing::None, 0),
        "compat=0.10,cluster_size=512,preallocation=metadata",
        0x9E_0002,
    );
}

#[test]
fn interop_qemu_made_c64k_extl2_rc8_lazy_falloc() {
    run_qemu_made(
        Config::qcow2(64 * KIB, 3, 8, true, true, Backing::None, 3 * MIB),
        "cluster_size=65536,extended_l2=on,refcount_bits=8,lazy_refcounts=on,preallocation=falloc",
        0x9E_0003,
    );
}

#[test]
fn interop_qemu_made_c4k_rc32_zstd() {
    run_qemu_made(
        Config::qcow2(4 * KIB, 3, 32, false, false, Backing::None, 0),
        "cluster_size=4096,refcount_bits=32,compression_type=zstd",
        0x9E_0004,
    );
}

/// Filling an image with small clusters and wide refcounts: the refcount
/// table itself must grow (and move) several times, and the L2 tables
/// fill the file between the data.
fn run_fill(config: Config, default_seed: u64) {
    let seed = seed(default_seed);
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), &config, seed);
    let mut model = img.model;
    let mut rng = Rng(seed);
    let chunk = 48 * KIB + 512;
    let mut offsets: Vec<u64> = (0..config.size.div_ceil(chunk))
        .map(|i| i * chunk)
        .collect();
    // Random order.
    for i in (1..offsets.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        offsets.swap(i, j);
    }
    let mut h = Handle::open(&img.path);
    for (n, &off) in offsets.iter().enumerate() {
        let len = chunk.min(config.size - off);
        let op = Op::Write {
            off,
            len,
            seed: rng.next(),
        };
        apply_dev(&mut h, &op).unwrap_or_else(|e| panic!("{} seed {seed:#x}: {e}", config.name));
        apply_model(&mut model, &op);
        if n % 16 == 0 {
            h.dev().flush().unwrap();
        }
    }
    if let Err(e) = compare_range(h.dev(), &model, 0, config.size) {
        panic!("{} seed {seed:#x}: after filling: {e}", config.name);
    }
    h.close();
    judge_by_qemu(
        &img.path,
        "qcow2",
        &model,
        &format!("{} seed {seed:#x}: filled", config.name),
    );
    // Free a few holes and fill again.
    let mut h = Handle::open(&img.path);
    for _ in 0..40 {
        let off = rng.below(config.size / 512) * 512;
        let len = (rng.range(1, 64) * 512).min(config.size - off);
        h.dev().discard(off, len).unwrap();
        settle_discard(h.dev(), &mut model, off, len, config.cluster_size())
            .unwrap_or_else(|e| panic!("{} seed {seed:#x}: {e}", config.name));
        let off = rng.below(config.size / 512) * 512;
        let len = (rng.range(1, 64) * 512).min(config.size - off);
        let op = Op::Write {
            off,
            len,
            seed: rng.next(),
        };
        apply_dev(&mut h, &op).unwrap();
        apply_model(&mut model, &op);
    }
    if let Err(e) = compare_range(h.dev(), &model, 0, config.size) {
        panic!("{} seed {seed:#x}: after refilling: {e}", config.name);
    }
    h.close();
    judge_by_qemu(
        &img.path,
        "qcow2",
        &model,
        &format!("{} seed {seed:#x}: refilled", config.name),
    );
}

#[test]
fn interop_fill_c512_rc64_refcount_table_growth() {
    run_fill(
        Config::qcow2(512, 3, 64, false, false, Backing::None, 5 * MIB + 512),
        0xF111_0001,
    );
}

#[test]
fn interop_fill_c512_v2_qcow2_backing() {
    run_fill(
        Config::qcow2(512, 2, 16, false, false, Backing::Qcow2(MIB), 3 * MIB),
        0xF111_0002,
    );
}

#[test]
fn interop_fill_c4k_rc64_lazy() {
    run_fill(
        Config::qcow2(4 * KIB, 3, 64, false, true, Backing::None, 12 * MIB),
        0xF111_0003,
    );
}

#[test]
fn interop_truncate_c512_v2_off() {
    run_truncate(
        Config::qcow2(512, 2, 16, false, false, Backing::None, 40 * KIB),
        Resizes::Off,
        0x7A0_0005,
    );
}

#[test]
fn interop_truncate_c64k_rc1_off() {
    run_truncate(
        Config::qcow2(64 * KIB, 3, 1, false, false, Backing::None, 3 * MIB + 512),
        Resizes::Off,
        0x7A0_0006,
    );
}

#[test]
fn interop_truncate_c4k_shorter_backing_off() {
    // Shrinking below the backing file's end, then growing: the backing
    // file's data must not come back.
    run_truncate(
        Config::qcow2(4 * KIB, 3, 16, false, false, Backing::Raw(700 * KIB), MIB),
        Resizes::Off,
        0x7A0_0007,
    );
}

#[test]
fn interop_truncate_c64k_extl2_prealloc() {
    run_truncate(
        Config::qcow2(64 * KIB, 3, 16, true, false, Backing::None, MIB + 512),
        Resizes::Prealloc,
        0x7A0_0008,
    );
}

#[test]
fn interop_truncate_c4k_v2_prealloc() {
    run_truncate(
        Config::qcow2(4 * KIB, 2, 16, false, false, Backing::None, MIB),
        Resizes::Prealloc,
        0x7A0_0009,
    );
}

/// Bytes the file occupies on disk.
fn disk_usage(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// Discard and write_zeroes with unmap free what they cover: no cluster
/// stays allocated (as `qemu-img check` counts them) and the file's
/// blocks go back to the file system (holes are punched).
fn run_unmap_frees(config: Config, by_zero_writes: bool, default_seed: u64) {
    let seed = seed(default_seed);
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), &config, seed);
    let mut model = img.model;
    let mut h = Handle::open(&img.path);
    let mut data = vec![0u8; config.size as usize];
    Rng(seed).fill(&mut data);
    h.dev().write_at(&data, 0).unwrap();
    model.write(&data, 0);
    h.close();
    let ctx = format!("{} seed {seed:#x}", config.name);
    judge_by_qemu(&img.path, "qcow2", &model, &format!("{ctx}: filled"));
    let full = disk_usage(&img.path);
    let mut h = Handle::open(&img.path);
    // In pieces of whole clusters (a cluster covered only in part stays
    // allocated, in QEMU too).
    let piece = 3 * config.cluster_size();
    let mut off = 0;
    while off < config.size {
        let len = piece.min(config.size - off);
        if by_zero_writes {
            h.dev().write_zeroes(off, len, true).unwrap();
        } else {
            h.dev().discard(off, len).unwrap();
        }
        off += len;
    }
    // No backing file: everything reads as zeros.
    model.zero(0, config.size);
    if let Err(e) = compare_range(h.dev(), &model, 0, config.size) {
        panic!("{ctx}: {e}");
    }
    h.close();
    judge_by_qemu(&img.path, "qcow2", &model, &format!("{ctx}: unmapped"));
    let out = tool("qemu-img")
        .args(["check", "--output=json"])
        .arg(&img.path)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["allocated-clusters"].as_u64().unwrap_or(0),
        0,
        "{ctx}: clusters stay allocated after {}: {v}",
        if by_zero_writes {
            "write_zeroes with unmap"
        } else {
            "discard"
        }
    );
    let after = disk_usage(&img.path);
    assert!(
        full.saturating_sub(after) >= config.size / 10 * 9,
        "{ctx}: the file still occupies {after} bytes on disk after unmapping everything \
         ({full} when full, {} guest bytes): no holes punched",
        config.size
    );
}

#[test]
fn interop_discard_frees_c64k() {
    run_unmap_frees(
        Config::qcow2(64 * KIB, 3, 16, false, false, Backing::None, 8 * MIB),
        false,
        0xF4EE_0001,
    );
}

#[test]
fn interop_zero_unmap_frees_c4k_v2() {
    run_unmap_frees(
        Config::qcow2(4 * KIB, 2, 16, false, false, Backing::None, 4 * MIB),
        true,
        0xF4EE_0002,
    );
}

#[test]
fn interop_discard_frees_c64k_extl2() {
    run_unmap_frees(
        Config::qcow2(64 * KIB, 3, 16, true, false, Backing::None, 8 * MIB),
        false,
        0xF4EE_0003,
    );
}

#[test]
fn interop_zero_unmap_frees_c2m() {
    run_unmap_frees(
        Config::qcow2(2 * MIB, 3, 16, false, false, Backing::None, 16 * MIB),
        true,
        0xF4EE_0004,
    );
}

/// A guest write that would land on metadata (an L2 entry, marked
/// copied, pointing at the refcount table, a refcount block, the L1 or the
/// L2 table, or inside the header cluster) is refused, the
/// image is marked corrupt as QEMU marks it, the metadata is untouched,
/// and a later writable open is refused.
#[test]
fn interop_write_onto_metadata_marks_corrupt() {
    use std::os::unix::fs::FileExt;
    let mut failures = Vec::new();
    for target in [
        "refcount table",
        "refcount block",
        "L2 table",
        "L1 table",
        "header",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.qcow2");
        let ps = p.to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "qcow2", &ps, "1M"]);
        let mut c = tool("qemu-io");
        c.args(["-f", "qcow2", "-c", "write -P 7 0 64k", &ps]);
        run(c);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let be64 = |off: u64| {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, off).unwrap();
            u64::from_be_bytes(b)
        };
        let l1 = be64(40);
        let reftable = be64(48);
        let l2 = be64(l1) & 0x00ff_ffff_ffff_fe00;
        let victim = match target {
            "refcount table" => reftable,
            "L2 table" => l2,
            "L1 table" => l1,
            "refcount block" => be64(reftable),
            _ => 0,
        };
        // Guest cluster 0 now claims the metadata as its data.
        // (Offset 0 is "unallocated" in a standard entry: aim at the
        // header's second sector, still inside cluster 0.)
        let entry = (1u64 << 63) | if victim == 0 { 512 } else { victim };
        f.write_all_at(&entry.to_be_bytes(), l2).unwrap();
        let mut before = vec![0u8; 65536];
        f.read_exact_at(&mut before, victim).unwrap();
        drop(f);

        let dev = open_rw(&p);
        let r = dev.write_at(&[0xEE; 4096], 0);
        drop(dev);
        if r.is_ok() {
            failures.push(format!(
                "{target}: a write through an L2 entry pointing at the {target} succeeded \
                 (QEMU refuses it and marks the image corrupt)"
            ));
            continue;
        }
        let err = r.unwrap_err();
        let f = std::fs::File::open(&p).unwrap();
        let mut after = vec![0u8; 65536];
        f.read_exact_at(&mut after, victim).unwrap();
        if victim == 0 {
            // Marking the image corrupt legitimately changes the feature bits.
            before[72..80].copy_from_slice(&after[72..80]);
        }
        if before != after {
            failures.push(format!("{target}: the {target} was overwritten"));
        }
        let info = qemu_info(&p);
        if info["format-specific"]["data"]["corrupt"] != true {
            failures.push(format!(
                "{target}: the write was refused ({err}) but the image is not marked corrupt \
                 (QEMU marks it)"
            ));
            continue;
        }
        let opts = diskimg::OpenOptions {
            writable: true,
            ..diskimg::OpenOptions::default()
        };
        if diskimg::open(&p, &opts).is_ok() {
            failures.push(format!("{target}: a corrupt image opens for writing"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An image with a persistent bitmap written by the library, which does
/// not write bitmaps: handled as QEMU handles a program lacking bitmap
/// support (the autoclear bit cleared on the writable open): QEMU then
/// warns, drops the bitmaps, and finds only their clusters leaked; after
/// `qemu-img check -r leaks` the image is clean and reads as written.
#[test]
fn interop_bitmap_image_written_without_bitmap_support() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.qcow2");
    let ps = p.to_string_lossy().into_owned();
    qemu_img(&["create", "-q", "-f", "qcow2", &ps, "4M"]);
    let mut c = tool("qemu-io");
    c.args(["-f", "qcow2", "-c", "write -P 7 0 64k", &ps]);
    run(c);
    qemu_img(&["bitmap", "--add", &ps, "b0"]);
    let mut model = Model::new(4 * MIB, std::sync::Arc::new(Vec::new()));
    model.write(&[7u8; 65536], 0);
    let config = Config::qcow2(64 * KIB, 3, 16, false, false, Backing::None, 4 * MIB);
    let mut h = Handle::open(&p);
    let mut log = Vec::new();
    let mut rng = Rng(0xB17);
    if let Err(e) = drive(
        &mut h,
        &mut model,
        &config,
        &mut rng,
        30,
        &INTEROP_MIX,
        &mut log,
    ) {
        panic!("{}", drive_failure("bitmap image", 0xB17, &log, &e));
    }
    h.close();
    let check = qemu_check(&p, "qcow2");
    assert!(check.consistent(), "{}", check.output);
    assert!(
        check
            .output
            .contains("a program lacking bitmap support modified this file"),
        "QEMU does not see the bitmaps as invalidated: {}",
        check.output
    );
    let info = qemu_info(&p);
    assert!(
        info["format-specific"]["data"].get("bitmaps").is_none(),
        "the bitmap survives as if valid: {info}"
    );
    qemu_img(&["check", "-q", "-r", "leaks", &ps]);
    judge_by_qemu(&p, "qcow2", &model, "bitmap image after check -r leaks");
}

/// Edge requests: empty requests anywhere (including at the end) change
/// nothing; requests reaching past the end are refused and change
/// nothing; a read-only open refuses every write.
#[test]
fn interop_edge_requests() {
    let configs = [
        Config::raw(MIB),
        Config::qcow2(512, 2, 16, false, false, Backing::Raw(100 * KIB), MIB + 512),
        Config::qcow2(64 * KIB, 3, 16, true, true, Backing::None, 3 * MIB + 1536),
        Config::qcow2(2 * MIB, 3, 1, false, false, Backing::None, 5 * MIB),
    ];
    let mut empty_failures = Vec::new();
    for config in configs {
        let dir = tempfile::tempdir().unwrap();
        let img = make_image(dir.path(), &config, 5);
        let mut model = img.model;
        let size = config.size;
        let name = &config.name;
        let mut h = Handle::open(&img.path);
        let mut data = vec![0u8; 300 * 1024];
        Rng(9).fill(&mut data);
        h.dev().write_at(&data, size - data.len() as u64).unwrap();
        model.write(&data, size - data.len() as u64);
        // Empty requests succeed (as in QEMU); failures are collected so
        // that every configuration runs.
        for off in [0, 1, 512, size / 2 + 3, size - 1, size] {
            if let Err(e) = h.dev().write_at(&[], off) {
                empty_failures.push(format!("{name}: empty write at {off}: {e}"));
            }
            if let Err(e) = h.dev().write_zeroes(off, 0, true) {
                empty_failures.push(format!("{name}: empty write_zeroes at {off}: {e}"));
            }
            if let Err(e) = h.dev().discard(off, 0) {
                empty_failures.push(format!("{name}: empty discard at {off}: {e}"));
            }
        }
        for (off, len) in [
            (size - 10, 20),
            (size, 1),
            (size + 4096, 512),
            (u64::MAX - 10, 20),
            (0, size + 1),
        ] {
            let w = if len <= 1 << 20 {
                h.dev().write_at(&vec![0xAB; len as usize], off).is_err()
            } else {
                true
            };
            assert!(
                w,
                "{name}: a write of {len} at {off} past the end succeeded"
            );
            assert!(
                h.dev().write_zeroes(off, len, false).is_err(),
                "{name}: write_zeroes of {len} at {off} past the end succeeded"
            );
            assert!(
                h.dev().write_zeroes(off, len, true).is_err(),
                "{name}: write_zeroes (unmap) of {len} at {off} past the end succeeded"
            );
            assert!(
                h.dev().discard(off, len).is_err(),
                "{name}: discard of {len} at {off} past the end succeeded"
            );
        }
        assert_eq!(h.dev().size(), size, "{name}: the size changed");
        if let Err(e) = compare_range(h.dev(), &model, 0, size) {
            panic!("{name}: {e}");
        }
        h.close();
        judge_by_qemu(&img.path, config.fmt(), &model, name);
        // Read-only: every write refused, nothing changes.
        let ro = open_ro(&img.path);
        assert!(
            ro.write_at(&[1; 512], 0).is_err(),
            "{name}: read-only write"
        );
        assert!(
            ro.write_zeroes(0, 512, true).is_err(),
            "{name}: read-only write_zeroes"
        );
        assert!(ro.discard(0, 65536).is_err(), "{name}: read-only discard");
        assert!(
            ro.truncate(size * 2, diskimg::Preallocation::Off).is_err(),
            "{name}: read-only truncate"
        );
        drop(ro);
        judge_by_qemu(
            &img.path,
            config.fmt(),
            &model,
            &format!("{name} (read-only)"),
        );
    }
    assert!(empty_failures.is_empty(), "{}", empty_failures.join("\n"));
}

/// A lazy-refcounts image left dirty, with refcounts that disagree with
/// the tables (one leaked cluster, one cluster referenced but counted 0):
/// opening it for writing repairs it, as QEMU does (refcounts rebuilt
/// from the L1/L2 tables): afterwards `qemu-img check` is clean and the
/// data reads as before. (QEMU's own open, `qemu-io -c quit`, gives the
/// same result on a copy, as the test checks first.)
#[test]
fn interop_dirty_lazy_image_repaired_on_writable_open() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("lazy.qcow2");
    let ps = p.to_string_lossy().into_owned();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &ps,
        "1M",
    ]);
    let mut c = tool("qemu-io");
    c.args([
        "-f",
        "qcow2",
        "-c",
        "write -P 7 0 64k",
        "-c",
        "write -P 9 128k 64k",
        &ps,
    ]);
    run(c);
    let mut model = Model::new(MIB, std::sync::Arc::new(Vec::new()));
    model.write(&[7u8; 65536], 0);
    model.write(&[9u8; 65536], 128 * KIB);
    {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let be64 = |off: u64| {
            let mut b = [0u8; 8];
            f.read_exact_at(&mut b, off).unwrap();
            u64::from_be_bytes(b)
        };
        let reftable = be64(48);
        let refblock = be64(reftable);
        let l1 = be64(40);
        let l2 = be64(l1) & 0x00ff_ffff_ffff_fe00;
        let data2 = be64(l2 + 16) & 0x00ff_ffff_ffff_fe00;
        let clusters = f.metadata().unwrap().len() / 65536;
        // A leak: one more cluster, counted but unreferenced.
        f.set_len((clusters + 1) * 65536).unwrap();
        f.write_all_at(&1u16.to_be_bytes(), refblock + clusters * 2)
            .unwrap();
        // A deferred refcount: the second data cluster counted 0.
        f.write_all_at(&0u16.to_be_bytes(), refblock + data2 / 65536 * 2)
            .unwrap();
        // Dirty.
        let incompat = be64(72) | 1;
        f.write_all_at(&incompat.to_be_bytes(), 72).unwrap();
    }
    let before = qemu_check(&p, "qcow2");
    assert!(
        before.leaks >= 1 && before.corruptions >= 1,
        "the damage is not what the test meant: {}",
        before.output
    );
    // QEMU repairs a copy on its writable open.
    let copy = dir.path().join("copy.qcow2");
    std::fs::copy(&p, &copy).unwrap();
    let mut c = tool("qemu-io");
    c.args(["-f", "qcow2", "-c", "quit"]).arg(&copy);
    run(c);
    assert_check_clean(&copy, "qcow2", "QEMU's repair on open");
    // The library must do the same.
    let mut h = Handle::open(&p);
    h.close();
    judge_by_qemu(
        &p,
        "qcow2",
        &model,
        "the library's writable open of a dirty image",
    );
}
