//! Model test of the write path: random sequences of write, write_zeroes
//! (unmap on and off), discard, flush and close/reopen at random aligned
//! and unaligned offsets and lengths, crossing cluster and L2 table
//! boundaries, over the qcow2 option matrix (cluster sizes 512 B to 2 MiB,
//! extended L2, compat v2/v3, refcount widths, lazy refcounts, raw and
//! qcow2 backing files shorter than the image). After every step the
//! touched range (with a margin) is compared with an in-memory model of the
//! guest's bytes, periodically every window the operations touch; at the
//! end the closed image is judged by QEMU: `qemu-img check` clean (no
//! errors, no leaks) and `qemu-img convert -O raw` equal to the model.
//!
//! Seeded and reproducible: a failure prints the seed and the operations;
//! `DISKIMG_SEED=<seed> DISKIMG_OPS=<n>` replays the first n of them.
//! Needs qemu-img (Debian: qemu-utils); fails without it.

mod write_common;

use write_common::*;

fn run_model(config: Config, default_seed: u64, default_ops: usize) {
    let seed = seed(default_seed);
    let n = ops_count(default_ops);
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), &config, seed);
    let mut model = img.model;
    let cs = config.cluster_size();
    let margin = cs.min(256 * 1024);
    let mut h = Handle::open(&img.path);
    let mut rng = Rng(seed);
    let mut log: Vec<Op> = Vec::new();
    let fail = |log: &[Op], msg: String| -> ! {
        let shown = log.len().saturating_sub(40);
        let mut ops = String::new();
        for (i, op) in log.iter().enumerate().skip(shown) {
            ops.push_str(&format!("\n  #{i}: {op:?}"));
        }
        panic!(
            "{}: {msg}\nseed {seed:#x}, failed at op #{}; replay with DISKIMG_SEED={seed:#x} DISKIMG_OPS={}\nlast ops:{ops}",
            config.name,
            log.len() - 1,
            log.len()
        );
    };
    for i in 0..n {
        let op = gen_op(&mut rng, &config, &MODEL_MIX);
        log.push(op);
        if let Err(e) = apply_dev(&mut h, &op) {
            fail(&log, e);
        }
        apply_model(&mut model, &op);
        if let Op::Discard { off, len } = op {
            if let Err(e) = settle_discard(h.dev(), &mut model, off, len, cs) {
                fail(&log, e);
            }
        }
        if let Some((off, len)) = op.range() {
            let s = off.saturating_sub(margin);
            let e = (off + len + margin).min(config.size);
            if let Err(e) = compare_range(h.dev(), &model, s, e - s) {
                fail(&log, e);
            }
        }
        if i % 32 == 31 {
            if let Err(e) = compare_windows(h.dev(), &model, &config) {
                fail(&log, format!("full compare: {e}"));
            }
        }
    }
    if let Err(e) = compare_windows(h.dev(), &model, &config) {
        fail(&log, format!("final compare: {e}"));
    }
    h.close();
    // Reopened read-only, the library reads the same.
    let ro = open_ro(&img.path);
    if let Err(e) = compare_windows(ro.as_ref(), &model, &config) {
        fail(&log, format!("after reopening read-only: {e}"));
    }
    drop(ro);
    judge_by_qemu(
        &img.path,
        config.fmt(),
        &model,
        &format!("{} (seed {seed:#x}, {n} ops)", config.name),
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
