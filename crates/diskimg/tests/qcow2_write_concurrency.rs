//! Concurrency test of the write path: many threads write one shared
//! device at once.
//!
//! Phase 1 (ordered overlaps): threads do random writes, zero writes,
//! discards and flushes over a small disk, so that requests often fall in
//! the same cluster (and the same L2 table). A test-side lock per 512-byte
//! region serialises requests whose byte ranges overlap, which makes the
//! expected result defined; requests on disjoint bytes (of the same
//! cluster, too) run in parallel. Every request is read back under its
//! locks and compared with the shared model.
//!
//! Phase 2 (free overlaps): threads write sector-aligned ranges with no
//! lock at all; every sector written carries its writer, its request and
//! its own guest offset. Afterwards each sector must be exactly one
//! writer's sector for that offset, or unchanged if nobody wrote it.
//!
//! Two configurations run over clusters shared with an internal snapshot
//! made by `qemu-img snapshot -c`, so that concurrent writes copy shared
//! clusters; the snapshot must read as before.
//!
//! At the end the closed image is judged by QEMU: `qemu-img check` clean,
//! `qemu-img convert -O raw` equal to the model. Seeded; a failure prints
//! the seed (the interleaving itself is not reproducible).

mod write_common;

use std::sync::{Arc, Mutex};

use diskimg::BlockDevice;
use write_common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const THREADS: u64 = 8;
const REGION: u64 = 512;

const CONC_MIX: OpMix = OpMix {
    write: 65,
    zero: 15,
    discard: 12,
    flush: 8,
    reopen: 0,
};

fn phase1(
    dev: &Arc<dyn BlockDevice>,
    config: &Config,
    model: Model,
    seed: u64,
    ops: usize,
) -> Model {
    let regions = config.size.div_ceil(REGION);
    let locks: Arc<Vec<Mutex<()>>> = Arc::new((0..regions).map(|_| Mutex::new(())).collect());
    let model = Arc::new(Mutex::new(model));
    let cs = config.cluster_size();
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let dev = dev.clone();
        let locks = locks.clone();
        let model = model.clone();
        let config = config.clone();
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x1234_5678_9ABC));
            for i in 0..ops {
                let op = gen_op(&mut rng, &config, &CONC_MIX);
                let ctx = |e: String| format!("thread {t} op #{i} {op:?}: {e}");
                let Some((off, len)) = op.range() else {
                    dev.flush().map_err(|e| ctx(e.to_string()))?;
                    continue;
                };
                // Lock the regions in ascending order (no deadlock).
                let first = off / REGION;
                let last = (off + len - 1) / REGION;
                let _guards: Vec<_> = (first..=last)
                    .map(|r| locks[r as usize].lock().unwrap_or_else(|p| p.into_inner()))
                    .collect();
                let r = match op {
                    Op::Write { seed, .. } => dev.write_at(&op_data(seed, len), off),
                    Op::Zero { unmap, .. } => dev.write_zeroes(off, len, unmap),
                    Op::Discard { .. } => dev.discard(off, len),
                    _ => Ok(()),
                };
                r.map_err(|e| ctx(e.to_string()))?;
                let want = {
                    let mut m = model.lock().unwrap_or_else(|p| p.into_inner());
                    if let Op::Discard { .. } = op {
                        settle_discard(dev.as_ref(), &mut m, off, len, cs).map_err(ctx)?;
                    } else {
                        apply_model(&mut m, &op);
                    }
                    m.get(off, len)
                };
                let mut got = vec![0u8; len as usize];
                dev.read_at(&mut got, off).map_err(|e| ctx(e.to_string()))?;
                if got != want {
                    let j = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(ctx(format!(
                        "guest byte {} reads {:#04x} right after the request, the model says {:#04x}",
                        off + j as u64,
                        got[j],
                        want[j]
                    )));
                }
            }
            Ok(())
        }));
    }
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a thread panicked".into()),
        }
    }
    assert!(
        errors.is_empty(),
        "{} seed {seed:#x} (phase 1):\n{}",
        config.name,
        errors.join("\n")
    );
    Arc::try_unwrap(model)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_else(|_| panic!("model still shared"))
}

/// The sector a phase-2 writer writes at guest sector `sector`.
fn tagged_sector(thread: u64, req: u64, sector: u64) -> Vec<u8> {
    let mut v = vec![0u8; 512];
    v[0..8].copy_from_slice(&(thread + 1).to_le_bytes());
    v[8..16].copy_from_slice(&req.to_le_bytes());
    v[16..24].copy_from_slice(&sector.to_le_bytes());
    let mut r = Rng(thread << 48 ^ req << 24 ^ sector);
    r.fill(&mut v[24..]);
    v
}

fn phase2(
    dev: &Arc<dyn BlockDevice>,
    config: &Config,
    mut model: Model,
    seed: u64,
    ops: usize,
) -> Model {
    let sectors = config.size / 512;
    let mut handles = Vec::new();
    for t in 0..THREADS {
        let dev = dev.clone();
        let config = config.clone();
        handles.push(std::thread::spawn(
            move || -> Result<Vec<(u64, u64)>, String> {
                let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x5151_7272_9393));
                let mut written = Vec::new();
                for req in 0..ops as u64 {
                    let (off, len) = gen_range(&mut rng, &config);
                    let first = off / 512;
                    let last = ((off + len).div_ceil(512)).min(sectors);
                    let mut buf = Vec::with_capacity(((last - first) * 512) as usize);
                    for s in first..last {
                        buf.extend_from_slice(&tagged_sector(t, req, s));
                    }
                    dev.write_at(&buf, first * 512)
                        .map_err(|e| format!("thread {t} request {req} at sector {first}: {e}"))?;
                    written.push((first, last));
                }
                Ok(written)
            },
        ));
    }
    let mut errors = Vec::new();
    let mut written: Vec<Vec<(u64, u64)>> = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(w)) => written.push(w),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a thread panicked".into()),
        }
    }
    assert!(
        errors.is_empty(),
        "{} seed {seed:#x} (phase 2):\n{}",
        config.name,
        errors.join("\n")
    );
    // Which sectors were written at all.
    let mut touched = vec![false; sectors as usize];
    for w in &written {
        for &(a, b) in w {
            for s in a..b {
                touched[s as usize] = true;
            }
        }
    }
    let mut got = vec![0u8; 512];
    for s in 0..sectors {
        if !touched[s as usize] {
            continue;
        }
        dev.read_at(&mut got, s * 512).unwrap();
        let thread = u64::from_le_bytes(got[0..8].try_into().unwrap());
        let req = u64::from_le_bytes(got[8..16].try_into().unwrap());
        let ok = (1..=THREADS).contains(&thread)
            && written[(thread - 1) as usize]
                .get(req as usize)
                .is_some_and(|&(a, b)| a <= s && s < b)
            && got == tagged_sector(thread - 1, req, s);
        assert!(
            ok,
            "{} seed {seed:#x} (phase 2): sector {s} holds no writer's complete sector \
             (header thread {thread} request {req})",
            config.name
        );
        model.write(&got, s * 512);
    }
    // Sectors nobody wrote are unchanged.
    if let Err(e) = compare_windows(dev.as_ref(), &model, config) {
        panic!("{} seed {seed:#x} (phase 2): {e}", config.name);
    }
    model
}

fn run_concurrency(config: Config, default_seed: u64, ops: usize) {
    run_concurrency_opt(config, default_seed, ops, false);
}

/// With `snapshot`, the image is first filled through the library and
/// snapshotted by `qemu-img snapshot -c`: every write then copies a
/// shared cluster, concurrently; the snapshot must stay intact.
fn run_concurrency_opt(config: Config, default_seed: u64, ops: usize, snapshot: bool) {
    let seed = seed(default_seed);
    let ops = ops_count(ops);
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), &config, seed);
    let mut model = img.model;
    let mut snap_model = None;
    if snapshot {
        let mut h = Handle::open(&img.path);
        let mut data = vec![0u8; config.size as usize];
        Rng(seed ^ 0x5AA9).fill(&mut data);
        h.dev().write_at(&data, 0).unwrap();
        h.close();
        model.write(&data, 0);
        qemu_img(&["snapshot", "-c", "s0", &img.path.to_string_lossy()]);
        snap_model = Some(model.clone());
    }
    let mut h = Handle::open(&img.path);
    let dev = h.arc();
    let model = phase1(&dev, &config, model, seed, ops);
    if let Err(e) = compare_windows(dev.as_ref(), &model, &config) {
        panic!("{} seed {seed:#x} (after phase 1): {e}", config.name);
    }
    let model = phase2(&dev, &config, model, seed, ops / 2);
    dev.flush().unwrap();
    drop(dev);
    h.close();
    judge_by_qemu(
        &img.path,
        config.fmt(),
        &model,
        &format!("{} seed {seed:#x}", config.name),
    );
    if let Some(m) = snap_model {
        let raw = dir.path().join("s0.raw");
        qemu_convert_raw(&img.path, "qcow2", &raw, &["-l", "snapshot.name=s0"]);
        if let Err(e) = compare_raw_file(&raw, &m) {
            panic!("{} seed {seed:#x}: snapshot s0 changed: {e}", config.name);
        }
    }
}

/// The harness itself, on a raw image.
#[test]
fn concurrency_raw() {
    run_concurrency(Config::raw(256 * KIB), 0xC0C0_0001, 60);
}

#[test]
fn concurrency_c512_nobacking() {
    run_concurrency(
        Config::qcow2(512, 3, 16, false, false, Backing::None, 96 * KIB),
        0xC0C0_0002,
        60,
    );
}

#[test]
fn concurrency_c4k_v2_qcow2_backing() {
    run_concurrency(
        Config::qcow2(
            4 * KIB,
            2,
            16,
            false,
            false,
            Backing::Qcow2(40 * KIB),
            128 * KIB,
        ),
        0xC0C0_0003,
        60,
    );
}

#[test]
fn concurrency_c64k_lazy_raw_backing() {
    run_concurrency(
        Config::qcow2(64 * KIB, 3, 16, false, true, Backing::Raw(300 * KIB), MIB),
        0xC0C0_0004,
        60,
    );
}

#[test]
fn concurrency_c64k_extl2_rc1() {
    run_concurrency(
        Config::qcow2(64 * KIB, 3, 1, true, false, Backing::None, MIB),
        0xC0C0_0005,
        60,
    );
}

#[test]
fn concurrency_c2m_qcow2_backing() {
    run_concurrency(
        Config::qcow2(
            2 * MIB,
            3,
            64,
            false,
            false,
            Backing::Qcow2(3 * MIB),
            8 * MIB,
        ),
        0xC0C0_0006,
        20,
    );
}

#[test]
fn concurrency_c64k_over_snapshot() {
    run_concurrency_opt(
        Config::qcow2(64 * KIB, 3, 16, false, false, Backing::None, MIB),
        0xC0C0_0007,
        60,
        true,
    );
}

#[test]
fn concurrency_c16k_extl2_lazy_over_snapshot() {
    run_concurrency_opt(
        Config::qcow2(
            16 * KIB,
            3,
            8,
            true,
            true,
            Backing::Raw(100 * KIB),
            512 * KIB,
        ),
        0xC0C0_0008,
        60,
        true,
    );
}
