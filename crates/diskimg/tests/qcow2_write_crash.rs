//! Crash test of the write path: a child process (this test binary run
//! again, selected by an environment variable) opens an image for writing
//! and does random writes and zero writes with a flush at least every 8
//! operations, reporting the index of every flush that returned. The
//! parent kills it with SIGKILL at a random moment, then judges the image:
//!
//! - `qemu-img check` finds no corruption (leaks are allowed). With lazy
//!   refcounts a killed writer legitimately leaves refcounts behind the
//!   L2 tables; then the image must carry the dirty bit, and after the
//!   library has opened it for writing (which repairs a dirty image) and
//!   closed it, `qemu-img check` must find no corruption, and, when the
//!   image was dirty, no leak either (as after QEMU's repair on open);
//! - every byte as `qemu-img convert -O raw` reads it equals the model at
//!   the last reported flush, except bytes that operations after that
//!   flush touched, which may hold any value those operations gave them.
//!
//! The next round continues on the same image from the state read back.
//! 84 kills in all over cluster sizes 512 B to 2 MiB, lazy refcounts on
//! and off, with and without a backing file, and over clusters shared with
//! an internal snapshot (which must survive every kill), and with L2 caches of
//! two tables (dirty tables evicted while the child runs). Seeded: a failure names the
//! seed and round; `DISKIMG_SEED` reruns with another seed.

mod write_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use write_common::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const ROUNDS: u64 = 7;
const CHILD_ENV: &str = "DISKIMG_CRASH_CHILD";

/// The configurations, by index (the child is told the index).
fn configs() -> Vec<Config> {
    vec![
        Config::qcow2(512, 3, 16, false, false, Backing::None, 256 * KIB),
        Config::qcow2(512, 3, 16, false, true, Backing::Raw(100 * KIB), 256 * KIB),
        Config::qcow2(4 * KIB, 2, 16, false, false, Backing::Qcow2(300 * KIB), MIB),
        Config::qcow2(4 * KIB, 3, 1, false, true, Backing::None, MIB),
        Config::qcow2(
            64 * KIB,
            3,
            16,
            false,
            false,
            Backing::Raw(MIB + 512),
            4 * MIB,
        ),
        Config::qcow2(64 * KIB, 3, 64, true, true, Backing::Qcow2(MIB), 4 * MIB),
        Config::qcow2(2 * MIB, 3, 16, false, false, Backing::None, 12 * MIB),
        Config::qcow2(2 * MIB, 3, 16, true, true, Backing::Raw(5 * MIB), 12 * MIB),
        Config::raw(MIB),
        Config::qcow2(64 * KIB, 3, 16, false, false, Backing::None, 2 * MIB),
        Config::qcow2(4 * KIB, 3, 16, false, true, Backing::None, MIB),
        // Small L2 caches: dirty tables are evicted while the child runs.
        Config::qcow2(512, 3, 16, false, false, Backing::Raw(64 * KIB), 256 * KIB).with_l2_cache(2),
        Config::qcow2(512, 3, 16, false, true, Backing::None, 256 * KIB).with_l2_cache(2),
    ]
}

/// Configurations whose image first gets data and an internal snapshot
/// (`qemu-img snapshot -c`), so that the child's writes copy shared
/// clusters; the snapshot must survive every kill.
const SNAPSHOT_CONFIGS: [usize; 2] = [9, 10];

const CRASH_MIX: OpMix = OpMix {
    write: 75,
    zero: 15,
    discard: 0,
    flush: 10,
    reopen: 0,
};

/// The child's operations: random writes and zero writes, a flush at least
/// every 8 operations.
struct CrashOps {
    rng: Rng,
    config: Config,
    since_flush: u32,
}

impl CrashOps {
    fn new(seed: u64, config: &Config) -> CrashOps {
        CrashOps {
            rng: Rng(seed),
            config: config.clone(),
            since_flush: 0,
        }
    }

    fn next_op(&mut self) -> Op {
        let op = if self.since_flush >= 8 {
            Op::Flush
        } else {
            gen_op(&mut self.rng, &self.config, &CRASH_MIX)
        };
        if op == Op::Flush {
            self.since_flush = 0;
        } else {
            self.since_flush += 1;
        }
        op
    }
}

/// The child: runs when `DISKIMG_CRASH_CHILD` says `image|seed|config|report`.
#[test]
fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let image = PathBuf::from(parts[0]);
    let seed: u64 = parts[1].parse().unwrap();
    let config = configs()[parts[2].parse::<usize>().unwrap()].clone();
    let mut report = std::fs::OpenOptions::new()
        .append(true)
        .open(parts[3])
        .unwrap();
    let mut h = Handle::open_cache(&image, config.l2_cache);
    report.write_all(b"open\n").unwrap();
    let mut ops = CrashOps::new(seed, &config);
    for i in 0..1_000_000u64 {
        let op = ops.next_op();
        if let Err(e) = apply_dev(&mut h, &op) {
            panic!("child: op #{i}: {e}");
        }
        if op == Op::Flush {
            report.write_all(format!("{i}\n").as_bytes()).unwrap();
        }
    }
    h.close();
    report.write_all(b"done\n").unwrap();
}

/// Lines of the report, complete ones only.
fn report_lines(path: &Path) -> Vec<String> {
    let s = String::from_utf8_lossy(&read_all(path)).into_owned();
    let mut lines: Vec<String> = s.split('\n').map(str::to_string).collect();
    // The last piece is partial (or empty after a final newline).
    lines.pop();
    lines
}

/// The whole guest content of a small image as QEMU reads it.
fn qemu_read(path: &Path, fmt: &str) -> Vec<u8> {
    let raw = path.with_extension("crash.raw");
    qemu_convert_raw(path, fmt, &raw, &[]);
    let v = read_all(&raw);
    let _ = std::fs::remove_file(&raw);
    v
}

fn dirty_flag(path: &Path) -> bool {
    qemu_info(path)
        .get("dirty-flag")
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

fn run_crash(index: usize, default_seed: u64) {
    let seed = seed(default_seed);
    let config = configs()[index].clone();
    let lazy = config.qcow2.lazy_refcounts;
    let fmt = config.fmt();
    let qcow2 = fmt == "qcow2";
    let dir = tempfile::tempdir().unwrap();
    let img = make_image(dir.path(), &config, seed);
    let base = img.model.base.clone();
    let size = config.size;
    let mut state = img.model.get(0, size);
    let mut rng = Rng(seed ^ 0xC4A5);
    let snapshot = SNAPSHOT_CONFIGS.contains(&index);
    if snapshot {
        let mut h = Handle::open(&img.path);
        let mut data = vec![0u8; size as usize];
        rng.fill(&mut data);
        h.dev().write_at(&data, 0).unwrap();
        h.close();
        qemu_img(&["snapshot", "-c", "s0", &img.path.to_string_lossy()]);
        assert_check_clean(
            &img.path,
            fmt,
            &format!("{}: after snapshot -c", config.name),
        );
        state = data;
    }
    let snapshot_data = state.clone();
    let check_snapshot = |ctx: &str| {
        if snapshot {
            let raw = img.path.with_extension("s0.raw");
            qemu_convert_raw(&img.path, fmt, &raw, &["-l", "snapshot.name=s0"]);
            let got = read_all(&raw);
            let _ = std::fs::remove_file(&raw);
            if let Some(b) = got.iter().zip(&snapshot_data).position(|(a, b)| a != b) {
                panic!("{ctx}: snapshot s0 changed at guest byte {b}");
            }
        }
    };
    let exe = std::env::current_exe().unwrap();
    let report = dir.path().join("report");
    let child_err = dir.path().join("child.stderr");
    let mut kills = 0;
    let mut unrepaired: Vec<String> = Vec::new();
    for round in 0..ROUNDS {
        let round_seed = seed.wrapping_add(round.wrapping_mul(0x9E37_79B9));
        let ctx = format!(
            "{} seed {seed:#x} round {round} (DISKIMG_SEED={seed:#x})",
            config.name
        );
        std::fs::write(&report, b"").unwrap();
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!(
                    "{}|{round_seed}|{index}|{}",
                    img.path.display(),
                    report.display()
                ),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&child_err).unwrap())
            .spawn()
            .unwrap();
        // Kill after a random number of flushes, a random time later.
        let target_flushes = rng.below(5) as usize;
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "{ctx}: the child ended before it was killed ({st}): {}",
                    String::from_utf8_lossy(&read_all(&child_err))
                );
            }
            let lines = report_lines(&report);
            if lines.len() > target_flushes {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!(
                    "{ctx}: the child made no progress in 60 s: {}",
                    String::from_utf8_lossy(&read_all(&child_err))
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "{ctx}: the child ended before it was killed ({st}): {}",
                String::from_utf8_lossy(&read_all(&child_err))
            );
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;

        // Which flushes returned.
        let lines = report_lines(&report);
        let last_flush: Option<u64> = lines.iter().rev().find_map(|l| l.parse().ok());

        // The model at that flush, and the operations after it up to the
        // next flush (they may or may not have reached the image).
        let mut ops = CrashOps::new(round_seed, &config);
        let mut model = Model::new(size, base.clone());
        model.write(&state, 0);
        let mut i = 0u64;
        if let Some(k) = last_flush {
            while i <= k {
                let op = ops.next_op();
                apply_model(&mut model, &op);
                i += 1;
            }
        }
        let mut pending = Vec::new();
        loop {
            let op = ops.next_op();
            if op == Op::Flush {
                break;
            }
            pending.push(op);
        }

        // QEMU judges the metadata.
        let check = if qcow2 {
            qemu_check(&img.path, fmt)
        } else {
            QemuCheck::default()
        };
        let dirty_at_kill = qcow2 && dirty_flag(&img.path);
        if !check.consistent() {
            assert!(
                lazy,
                "{ctx}: after SIGKILL, qemu-img check finds corruption: {}",
                check.output
            );
            assert!(
                dirty_at_kill,
                "{ctx}: after SIGKILL, qemu-img check finds corruption and the dirty bit is \
                 not set: {}",
                check.output
            );
        }
        let mut leaks_after_repair = None;
        if qcow2 && lazy {
            // The library repairs a dirty image when it opens it for writing.
            let mut h = Handle::open(&img.path);
            h.close();
            assert!(
                !dirty_flag(&img.path),
                "{ctx}: the dirty bit survives a clean close"
            );
            let check = qemu_check(&img.path, fmt);
            assert!(
                check.consistent(),
                "{ctx}: after the library's repair, qemu-img check finds corruption: {}",
                check.output
            );
            leaks_after_repair = Some(check.leaks);
            // QEMU, opening a dirty image for writing, rebuilds the
            // refcounts from the tables: leaks go too (qemu-io shows it).
            // Recorded, and reported at the end, so that every round runs.
            if dirty_at_kill && !check.clean() {
                unrepaired.push(format!(
                    "{ctx}: the image was dirty after SIGKILL; after the library opened it for \
                     writing (which repairs a dirty image) and closed it, qemu-img check still \
                     finds {} leaked clusters (QEMU's repair on open leaves none)",
                    check.leaks
                ));
            }
        }

        // QEMU judges the data.
        let got = qemu_read(&img.path, fmt);
        assert_eq!(got.len() as u64, size, "{ctx}: guest size");
        let want = model.get(0, size);
        // Bytes that differ must hold a value a pending operation wrote.
        let pending_data: Vec<(u64, Vec<u8>)> = pending
            .iter()
            .map(|op| match *op {
                Op::Write { off, len, seed } => (off, op_data(seed, len)),
                Op::Zero { off, len, .. } => (off, vec![0u8; len as usize]),
                _ => unreachable!("the crash mix has only writes and zero writes"),
            })
            .collect();
        let mut landed = 0u64;
        for (b, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if g == w {
                continue;
            }
            landed += 1;
            let b = b as u64;
            let possible = pending_data.iter().any(|(off, data)| {
                b >= *off && b < off + data.len() as u64 && data[(b - off) as usize] == g
            });
            if !possible {
                panic!(
                    "{ctx}: guest byte {b} reads {g:#04x} after SIGKILL; it was {w:#04x} at the \
                     last completed flush (op #{last_flush:?}) and no later write gave it that \
                     value (pending: {pending:?})"
                );
            }
        }
        if std::env::var_os("DISKIMG_VERBOSE").is_some() {
            eprintln!(
                "{ctx}: killed after flush {last_flush:?} with {} ops pending ({landed} bytes of \
                 them landed); dirty {dirty_at_kill}, {} corruptions, {} leaks; after the \
                 library's repair {leaks_after_repair:?} leaks",
                pending.len(),
                check.corruptions,
                check.leaks
            );
        }
        check_snapshot(&ctx);
        state = got;
    }
    assert_eq!(kills, ROUNDS);
    // A final clean open and close leaves an image QEMU accepts.
    let mut h = Handle::open(&img.path);
    h.close();
    if qcow2 {
        let check = qemu_check(&img.path, fmt);
        assert!(
            check.consistent(),
            "{}: at the end: {}",
            config.name,
            check.output
        );
    }
    let got = qemu_read(&img.path, fmt);
    assert!(
        got == state,
        "{}: the data changed at the final open",
        config.name
    );
    check_snapshot(&format!("{}: at the end", config.name));
    assert!(unrepaired.is_empty(), "{}", unrepaired.join("\n"));
}

#[test]
fn crash_c512() {
    run_crash(0, 0xC0DE_0001);
}

#[test]
fn crash_c512_lazy_raw_backing() {
    run_crash(1, 0xC0DE_0002);
}

#[test]
fn crash_c4k_v2_qcow2_backing() {
    run_crash(2, 0xC0DE_0003);
}

#[test]
fn crash_c4k_lazy_rc1() {
    run_crash(3, 0xC0DE_0004);
}

#[test]
fn crash_c64k_raw_backing() {
    run_crash(4, 0xC0DE_0005);
}

#[test]
fn crash_c64k_extl2_lazy_qcow2_backing() {
    run_crash(5, 0xC0DE_0006);
}

#[test]
fn crash_c2m() {
    run_crash(6, 0xC0DE_0007);
}

#[test]
fn crash_c2m_extl2_lazy_raw_backing() {
    run_crash(7, 0xC0DE_0008);
}

/// The harness itself, on a raw image (not counted in the 56 qcow2 kills).
#[test]
fn crash_raw() {
    run_crash(8, 0xC0DE_0009);
}

#[test]
fn crash_c64k_over_snapshot() {
    run_crash(9, 0xC0DE_000A);
}

#[test]
fn crash_c4k_lazy_over_snapshot() {
    run_crash(10, 0xC0DE_000B);
}

#[test]
fn crash_c512_l2cache2_raw_backing() {
    run_crash(11, 0xC0DE_000C);
}

#[test]
fn crash_c512_lazy_l2cache2() {
    run_crash(12, 0xC0DE_000D);
}
