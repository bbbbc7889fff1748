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
    let mut h = Handle::open(&img.path);
    let mut rng = Rng(seed);
    let mut log: Vec<Op> = Vec::new();
    if let Err(e) = drive(
        &mut h, &mut model, &config, &mut rng, n, &MODEL_MIX, &mut log,
    ) {
        panic!("{}", drive_failure(&config.name, seed, &log, &e));
    }
    h.close();
    // Reopened read-only, the library reads the same.
    let ro = open_ro(&img.path);
    if let Err(e) = compare_windows(ro.as_ref(), &model, &config) {
        panic!(
            "{}",
            drive_failure(
                &config.name,
                seed,
                &log,
                &format!("after reopening read-only: {e}")
            )
        );
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
