//! Model test of the write path: random sequences of write, write_zeroes
//! (unmap on and off), discard, flush and close/reopen at random aligned
//! and unaligned offsets and lengths, crossing cluster and L2 table
//! boundaries, over the qcow2 option matrix (cluster sizes 512 B to 2 MiB,
//! extended L2, compat v2/v3, refcount widths, lazy refcounts, raw and
//! qcow2 backing files shorter than the image, L2 caches of two tables so
//! that dirty tables are evicted mid-run). After every step the
//! touched range (with a margin) is compared with an in-memory model of the
//! guest's bytes, periodically every window the operations touch; at the
//! end the closed image is judged by QEMU: `qemu-img check` clean (no
//! errors, no leaks) and `qemu-img convert -O raw` equal to the model.
//!
//! Seeded and reproducible: a failure prints the seed, the failing
//! operation, and the sequence shrunk to a minimal one that still fails
//! (for at most `DISKIMG_SHRINK_SECS`, default 20);
//! `DISKIMG_SEED=<seed> DISKIMG_OPS=<n>` replays the first n operations.
//! Needs qemu-img (Debian: qemu-utils); fails without it.

mod write_common;

use write_common::*;

/// Runs `ops` on a fresh image of `config`, checking after every step;
/// then closes the image and has QEMU judge it. On failure: the index of
/// the failing operation (`ops.len()` for the final judgement) and what
/// went wrong.
fn run_ops(config: &Config, seed: u64, ops: &[Op]) -> Result<(), (usize, String)> {
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), config, seed);
    let mut model = img.model;
    let cs = config.cluster_size();
    let margin = cs.min(256 * 1024);
    let mut h = Handle::open_cache(&img.path, config.l2_cache);
    for (i, op) in ops.iter().enumerate() {
        let step = || -> Result<(), String> {
            apply_dev(&mut h, op)?;
            apply_model(&mut model, op);
            if let Op::Discard { off, len } = *op {
                settle_discard(h.dev(), &mut model, off, len, cs)?;
            }
            if let Some((off, len)) = op.range() {
                let s = off.saturating_sub(margin);
                let e = (off + len + margin).min(config.size);
                compare_range(h.dev(), &model, s, e - s)?;
            }
            if i % 32 == 31 {
                compare_windows(h.dev(), &model, config)
                    .map_err(|e| format!("full compare: {e}"))?;
            }
            Ok(())
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step))
            .unwrap_or_else(|p| Err(panic_text(&p)));
        r.map_err(|e| (i, e))?;
    }
    let end = ops.len();
    let finish = || -> Result<(), String> {
        compare_windows(h.dev(), &model, config).map_err(|e| format!("final compare: {e}"))?;
        h.close();
        // Reopened read-only, the library reads the same.
        let ro = open_ro(&img.path);
        compare_windows(ro.as_ref(), &model, config)
            .map_err(|e| format!("after reopening read-only: {e}"))?;
        drop(ro);
        judge(&img.path, config.fmt(), &model).map_err(|e| format!("QEMU's judgement: {e}"))
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(finish))
        .unwrap_or_else(|p| Err(panic_text(&p)))
        .map_err(|e| (end, e))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "panic".into()
    }
}

/// Removes operations from a failing sequence while it keeps failing
/// (chunks, then single operations), for at most `budget`.
fn shrink(config: &Config, seed: u64, mut ops: Vec<Op>, budget: std::time::Duration) -> Vec<Op> {
    let start = std::time::Instant::now();
    let mut chunk = ops.len() / 2;
    while chunk >= 1 && start.elapsed() < budget {
        let mut i = 0;
        while i < ops.len() && start.elapsed() < budget {
            let mut candidate = ops.clone();
            let end = (i + chunk).min(candidate.len());
            candidate.drain(i..end);
            match run_ops(config, seed, &candidate) {
                Err((at, _)) => {
                    candidate.truncate((at + 1).min(candidate.len()));
                    ops = candidate;
                }
                Ok(()) => i += chunk,
            }
        }
        chunk /= 2;
    }
    ops
}

fn run_model(config: Config, default_seed: u64, default_ops: usize) {
    let seed = seed(default_seed);
    let n = ops_count(default_ops);
    let mut rng = Rng(seed);
    let ops: Vec<Op> = (0..n)
        .map(|_| gen_op(&mut rng, &config, &MODEL_MIX))
        .collect();
    let Err((at, msg)) = run_ops(&config, seed, &ops) else {
        return;
    };
    let failing: Vec<Op> = ops[..(at + 1).min(ops.len())].to_vec();
    let budget = std::time::Duration::from_secs(
        std::env::var("DISKIMG_SHRINK_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let minimal = shrink(&config, seed, failing, budget);
    let minimal_err = match run_ops(&config, seed, &minimal) {
        Err((i, e)) => format!("fails at op #{i}: {e}"),
        Ok(()) => "(passes: the failure is not deterministic)".into(),
    };
    let mut list = String::new();
    for (i, op) in minimal.iter().enumerate() {
        list.push_str(&format!("\n  #{i}: {op:?}"));
    }
    panic!(
        "{}: op #{at} of {n}: {msg}\nseed {seed:#x}: replay with DISKIMG_SEED={seed:#x} DISKIMG_OPS={}\n\
         shrunk to {} ops, which {minimal_err}:{list}",
        config.name,
        at + 1,
        minimal.len()
    );
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The harness itself, on raw images.
#[test]
fn model_raw() {
    run_model(Config::raw(MIB + 3 * 512), 0x5EED_0001, 300);
}

#[test]
fn model_c512_v3_rc16_qcow2_backing() {
    run_model(
        Config::qcow2(512, 3, 16, false, false, Backing::Qcow2(20 * KIB + 512), 0),
        0x5EED_0101,
        300,
    );
}

#[test]
fn model_c512_v2_nobacking() {
    run_model(
        Config::qcow2(512, 2, 16, false, false, Backing::None, 0),
        0x5EED_0102,
        300,
    );
}

#[test]
fn model_c512_v3_rc1_lazy_raw_backing() {
    run_model(
        Config::qcow2(512, 3, 1, false, true, Backing::Raw(40 * KIB), 0),
        0x5EED_0103,
        300,
    );
}

#[test]
fn model_c4k_v3_rc64_nobacking() {
    run_model(
        Config::qcow2(4 * KIB, 3, 64, false, false, Backing::None, 0),
        0x5EED_0401,
        250,
    );
}

#[test]
fn model_c4k_v2_qcow2_backing() {
    run_model(
        Config::qcow2(
            4 * KIB,
            2,
            16,
            false,
            false,
            Backing::Qcow2(100 * KIB + 512),
            0,
        ),
        0x5EED_0402,
        250,
    );
}

#[test]
fn model_c4k_v3_rc1_lazy_raw_backing() {
    run_model(
        Config::qcow2(4 * KIB, 3, 1, false, true, Backing::Raw(3 * MIB), 0),
        0x5EED_0403,
        250,
    );
}

#[test]
fn model_c16k_extl2_rc16_raw_backing() {
    run_model(
        Config::qcow2(
            16 * KIB,
            3,
            16,
            true,
            false,
            Backing::Raw(200 * KIB + 512),
            0,
        ),
        0x5EED_1601,
        200,
    );
}

#[test]
fn model_c64k_v3_rc16_nobacking() {
    run_model(
        Config::qcow2(64 * KIB, 3, 16, false, false, Backing::None, 0),
        0x5EED_6401,
        200,
    );
}

#[test]
fn model_c64k_extl2_lazy_qcow2_backing() {
    run_model(
        Config::qcow2(
            64 * KIB,
            3,
            64,
            true,
            true,
            Backing::Qcow2(300 * KIB + 1024),
            0,
        ),
        0x5EED_6402,
        200,
    );
}

#[test]
fn model_c64k_v2_raw_backing() {
    run_model(
        Config::qcow2(64 * KIB, 2, 16, false, false, Backing::Raw(MIB + 512), 0),
        0x5EED_6403,
        200,
    );
}

#[test]
fn model_c64k_extl2_rc1_nobacking() {
    run_model(
        Config::qcow2(64 * KIB, 3, 1, true, false, Backing::None, 0),
        0x5EED_6404,
        200,
    );
}

#[test]
fn model_c2m_v3_rc16_nobacking() {
    run_model(
        Config::qcow2(2 * MIB, 3, 16, false, false, Backing::None, 0),
        0x5EED_2001,
        60,
    );
}

#[test]
fn model_c2m_extl2_lazy_qcow2_backing() {
    run_model(
        Config::qcow2(2 * MIB, 3, 16, true, true, Backing::Qcow2(3 * MIB + 512), 0),
        0x5EED_2002,
        60,
    );
}

#[test]
fn model_c2m_v2_raw_backing() {
    run_model(
        Config::qcow2(2 * MIB, 2, 16, false, false, Backing::Raw(5 * MIB), 0),
        0x5EED_2003,
        60,
    );
}

/// The judges can fail: a byte changed behind the library's back is
/// caught by the read-back comparison and by the QEMU judge, and a discard
/// that leaves stray bytes is caught by the discard check.
#[test]
fn harness_catches_wrong_bytes() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::raw(64 * KIB);
    let img = make_image(dir.path(), &config, 1);
    let mut model = img.model;
    let mut h = Handle::open(&img.path);
    let op = Op::Write {
        off: 1000,
        len: 5000,
        seed: 7,
    };
    apply_dev(&mut h, &op).unwrap();
    apply_model(&mut model, &op);
    compare_range(h.dev(), &model, 0, config.size).unwrap();
    // Change one byte in the file.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap();
    let mut b = [0u8; 1];
    h.dev().read_at(&mut b, 3333).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 3333).unwrap();
    let e = compare_range(h.dev(), &model, 0, config.size).unwrap_err();
    assert!(e.contains("guest byte 3333"), "{e}");
    // A "discard" that left other data than zeros or the backing file.
    let mut m2 = model.clone();
    assert!(settle_discard(h.dev(), &mut m2, 3000, 1000, 512).is_err());
    h.close();
    let judged = std::panic::catch_unwind(|| judge_by_qemu(&img.path, "raw", &model, "self-test"));
    assert!(judged.is_err(), "the QEMU judge missed a wrong byte");
    // A hole where the model has data, too.
    f.write_all_at(&[b[0]], 3333).unwrap();
    judge_by_qemu(&img.path, "raw", &model, "self-test (restored)");
    let mut wrong = model.clone();
    wrong.write(&[1], 60000);
    let judged = std::panic::catch_unwind(|| judge_by_qemu(&img.path, "raw", &wrong, "self-test"));
    assert!(
        judged.is_err(),
        "the QEMU judge missed a byte that should be 1"
    );
    // Data where the model has zeros, outside every range it wrote.
    f.write_all_at(&[9], 50000).unwrap();
    let judged = std::panic::catch_unwind(|| judge_by_qemu(&img.path, "raw", &model, "self-test"));
    assert!(judged.is_err(), "the QEMU judge missed a stray byte");
}

#[test]
fn model_c512_v3_rc16_l2cache2_qcow2_backing() {
    run_model(
        Config::qcow2(512, 3, 16, false, false, Backing::Qcow2(20 * KIB), 0).with_l2_cache(2),
        0x5EED_0C01,
        300,
    );
}

#[test]
fn model_c4k_v2_l2cache2_raw_backing() {
    run_model(
        Config::qcow2(4 * KIB, 2, 16, false, false, Backing::Raw(64 * KIB), 0).with_l2_cache(2),
        0x5EED_0C02,
        250,
    );
}

#[test]
fn model_c64k_extl2_lazy_l2cache2() {
    run_model(
        Config::qcow2(64 * KIB, 3, 16, true, true, Backing::None, 0).with_l2_cache(2),
        0x5EED_0C03,
        200,
    );
}
