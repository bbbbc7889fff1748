//! `diskimg io` against the real qemu-io: the same command lines on copies
//! of the same images. For every invocation, stdout (timing figures
//! masked), the exit status and the resulting images (`qemu-img convert
//! -O raw`, and raw files byte for byte) must be equal, and every qcow2
//! image diskimg changed must pass `qemu-img check`.
//!
//! diskimg runs twice per invocation: through a link named `qemu-io` and as
//! `diskimg io`. Both must print what qemu-io prints. The only lines that
//! differ on purpose are those naming the program in `--help`/usage
//! output; [`usage_names_the_program`] checks them explicitly.

mod cli_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cli_common::{diskimg_bin, qemu_img_bin};

/// The real qemu-io; panics when it is not installed (tests never skip).
fn qemu_io_bin() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v qemu-io"])
        .output()
        .expect("sh runs");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "qemu-io is not installed: these tests compare diskimg io with qemu-io and cannot run without it"
    );
    PathBuf::from(p)
}

fn run_tool(prog: &Path, argv0: Option<&str>, args: &[&str], cwd: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(prog);
    if let Some(a) = argv0 {
        c.arg0(a);
    }
    c.args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", prog.display()))
}

fn qemu_img(cwd: &Path, args: &[&str]) {
    let o = run_tool(&qemu_img_bin(), None, args, cwd);
    assert!(o.status.success(), "qemu-img {args:?}: {o:?}");
}

fn qemu_io(cwd: &Path, args: &[&str]) {
    let o = run_tool(&qemu_io_bin(), None, args, cwd);
    assert!(o.status.success(), "qemu-io {args:?}: {o:?}");
}

/// The images every case starts from, made by QEMU's own tools:
/// - `r.raw`: 1 MiB raw, 0x11 over [0, 64k), 0x22 over [128k, 132k);
/// - `odd.raw`: 1000 bytes (not whole sectors);
/// - `b.qcow2`: 1 MiB qcow2, 0x33 over [0, 128k), a compressed cluster of
///   0x44 at 192k;
/// - `t.qcow2`: overlay of b.qcow2, 0x55 over [64k, 128k), zeros over [0, 4k);
/// - `e.qcow2`: empty 1 MiB qcow2;
/// - `x.qcow2`: 1 MiB qcow2 with extended L2 entries;
/// - `v2.qcow2`: 1 MiB qcow2 version 2, 0x66 over [0, 64k);
/// - `hdr.bin` (not an image): 8 bytes of a qcow2 header.
#[rustfmt::skip]
fn make_fixtures(dir: &Path) {
    qemu_img(dir, &["create", "-q", "-f", "raw", "r.raw", "1M"]);
    qemu_io(dir, &["-f", "raw", "-c", "write -q -P 0x11 0 64k", "-c", "write -q -P 0x22 128k 4k", "r.raw"]);
    let odd: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("odd.raw"), odd).expect("write odd.raw");
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
    qemu_io(dir, &["-c", "write -q -P 0x33 0 128k", "-c", "write -q -c -P 0x44 192k 64k", "b.qcow2"]);
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2"]);
    qemu_io(dir, &["-c", "write -q -P 0x55 64k 64k", "-c", "write -q -z 0 4k", "t.qcow2"]);
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "e.qcow2", "1M"]);
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "-o", "extended_l2=on", "x.qcow2", "1M"]);
    qemu_img(dir, &["create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M"]);
    qemu_io(dir, &["-c", "write -q -P 0x66 0 64k", "v2.qcow2"]);
    // Not an image: the start of a qcow2 header, for `write -s`.
    std::fs::write(dir.join("hdr.bin"), b"QFI\xfb\0\0\0\x03").expect("write hdr.bin");
}

const IMAGES: &[&str] = &[
    "r.raw", "odd.raw", "b.qcow2", "t.qcow2", "e.qcow2", "x.qcow2", "v2.qcow2",
];

/// Masks what depends on the clock: the time and rates after `N ops; ` and
/// the last three fields of a `-C` line.
fn mask(s: &str) -> String {
    let mut out = String::new();
    for l in s.split_inclusive('\n') {
        let (body, nl) = match l.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (l, ""),
        };
        if let Some(i) = body.find(" ops; ") {
            if body.ends_with(" ops/sec)") {
                out.push_str(&body[..i]);
                out.push_str(" ops; <time> (<rates>)");
                out.push_str(nl);
                continue;
            }
        }
        let f: Vec<&str> = body.split(',').collect();
        if f.len() == 5
            && f[0].parse::<u64>().is_ok()
            && f[1].parse::<u64>().is_ok()
            && f[2].contains(':')
        {
            out.push_str(&format!("{},{},<time>,<rates>{nl}", f[0], f[1]));
            continue;
        }
        out.push_str(l);
    }
    out
}

/// One invocation: the arguments, and stdin for the interactive prompt.
struct Case {
    args: &'static [&'static str],
    stdin: Option<&'static str>,
}

const fn c(args: &'static [&'static str]) -> Case {
    Case { args, stdin: None }
}

/// What one program did.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    stdout: String,
    rc: i32,
}

fn run_in(dir: &Path, prog: &Path, argv0: Option<&str>, pre: &[&str], case: &Case) -> Outcome {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(prog);
    if let Some(a) = argv0 {
        cmd.arg0(a);
    }
    let mut child = cmd
        .args(pre)
        .args(case.args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", prog.display()));
    {
        let mut stdin = child.stdin.take().expect("stdin");
        if let Some(text) = case.stdin {
            stdin.write_all(text.as_bytes()).expect("feed stdin");
        }
    }
    let o = child.wait_with_output().expect("wait");
    Outcome {
        stdout: mask(&String::from_utf8_lossy(&o.stdout)),
        rc: o.status.code().unwrap_or(-1),
    }
}

fn copy_fixtures(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for f in IMAGES.iter().chain(&["hdr.bin"]) {
        std::fs::copy(from.join(f), to.join(f)).expect("copy fixture");
    }
}

/// The guest bytes of an image, as `qemu-img convert -O raw` writes them
/// (the format given, since a raw image may hold another format's header).
fn guest_bytes(dir: &Path, image: &str) -> Vec<u8> {
    let out = dir.join(format!("{image}.converted"));
    let o = run_tool(
        &qemu_img_bin(),
        None,
        &[
            "convert",
            "-U",
            "-f",
            if image.ends_with(".raw") {
                "raw"
            } else {
                "qcow2"
            },
            "-O",
            "raw",
            image,
            out.to_str().expect("utf-8 path"),
        ],
        dir,
    );
    assert!(
        o.status.success(),
        "qemu-img convert {image} in {}: {o:?}",
        dir.display()
    );
    let bytes = std::fs::read(&out).expect("read converted");
    std::fs::remove_file(&out).expect("remove converted");
    bytes
}

/// Runs every case with qemu-io and with diskimg (as `qemu-io` and as
/// `diskimg io`) on fresh copies of the fixtures, and compares.
fn transcript(cases: &[Case]) {
    let root = tempfile::tempdir().expect("tempdir");
    let fixtures = root.path().join("fixtures");
    std::fs::create_dir_all(&fixtures).expect("mkdir");
    make_fixtures(&fixtures);
    let link = root.path().join("qemu-io");
    std::os::unix::fs::symlink(diskimg_bin(), &link).expect("symlink");
    let mut failures = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let q_dir = root.path().join(format!("{n}-qemu"));
        let l_dir = root.path().join(format!("{n}-link"));
        let d_dir = root.path().join(format!("{n}-diskimg"));
        for d in [&q_dir, &l_dir, &d_dir] {
            copy_fixtures(&fixtures, d);
        }
        let q = run_in(&q_dir, &qemu_io_bin(), Some("qemu-io"), &[], case);
        let l = run_in(&l_dir, &link, Some("qemu-io"), &[], case);
        let d = run_in(&d_dir, &diskimg_bin(), Some("diskimg"), &["io"], case);
        if l != q {
            failures.push(format!(
                "{:?}: diskimg as qemu-io differs\n--- qemu-io (rc {}):\n{}--- diskimg (rc {}):\n{}",
                case.args, q.rc, q.stdout, l.rc, l.stdout
            ));
        }
        if d != q {
            failures.push(format!(
                "{:?}: diskimg io differs\n--- qemu-io (rc {}):\n{}--- diskimg io (rc {}):\n{}",
                case.args, q.rc, q.stdout, d.rc, d.stdout
            ));
        }
        for img in IMAGES {
            let qb = guest_bytes(&q_dir, img);
            for dir in [&l_dir, &d_dir] {
                if guest_bytes(dir, img) != qb {
                    failures.push(format!(
                        "{:?}: guest bytes of {img} differ from qemu-io's",
                        case.args
                    ));
                }
                if img.ends_with(".raw") {
                    let a = std::fs::read(q_dir.join(img)).expect("read");
                    let b = std::fs::read(dir.join(img)).expect("read");
                    if a != b {
                        failures.push(format!(
                            "{:?}: raw file {img} differs from qemu-io's",
                            case.args
                        ));
                    }
                }
                let changed = std::fs::read(dir.join(img)).expect("read")
                    != std::fs::read(fixtures.join(img)).expect("read");
                if changed && img.ends_with(".qcow2") {
                    let o = run_tool(&qemu_img_bin(), None, &["check", "-U", img], dir);
                    if !o.status.success() {
                        failures.push(format!(
                            "{:?}: qemu-img check {img} after diskimg: {}{}",
                            case.args,
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invocations differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
#[rustfmt::skip]
fn reads_of_raw_images() {
    transcript(&[
        c(&["-f", "raw", "-c", "read -P 0x11 0 64k", "r.raw"]),
        c(&["-f", "raw", "-c", "read -q -P 0x11 0 64k", "r.raw"]),
        // A mismatch: the message, the report, exit status 1.
        c(&["-f", "raw", "-c", "read -P 0x12 0 4k", "r.raw"]),
        c(&["-f", "raw", "-c", "read -q -P 0x12 0 4k", "r.raw"]),
        c(&["-f", "raw", "-c", "read -P 0x22 -s 4k -l 4k 124k 12k", "r.raw"]),
        c(&["-f", "raw", "-c", "read -P 0x22 -s 4k -l 5k 124k 12k", "r.raw"]),
        c(&["-f", "raw", "-c", "read -v 4090 21", "-c", "read -v 131060 40", "r.raw"]),
        c(&["-f", "raw", "-c", "read -C 0 512", "-c", "read -p 0 1", "r.raw"]),
        // Unaligned offsets and lengths are fine for reads.
        c(&["-f", "raw", "-c", "read -P 0x11 1 511", "-c", "read 3 5", "-c", "r 65535 2", "r.raw"]),
        // Past the end: EIO; a zero-length read at the very end succeeds.
        c(&["-f", "raw", "-c", "read 1M 512", "-c", "read 1023k 2k", "-c", "read 1M 0", "-c", "read 2M 0", "r.raw"]),
        c(&["-f", "raw", "-c", "readv -P 0x11 0 512 1k 2k", "-c", "readv -q 0 4k", "r.raw"]),
        c(&["-f", "raw", "-c", "readv -P 0x11 60k 4k 4k", "-c", "readv -v 0 8 8", "r.raw"]),
        c(&["-f", "raw", "-c", "aio_read -P 0x11 0 4k", "-c", "aio_flush", "-c", "aio_read -P 0x99 0 4k", "-c", "aio_flush", "r.raw"]),
        // aio_read succeeds even when the read fails or mismatches.
        c(&["-f", "raw", "-c", "aio_read 2M 512", "-c", "aio_flush", "-c", "aio_read -i 0 1", "r.raw"]),
        c(&["-f", "raw", "-r", "-c", "length", "-c", "info", "-c", "map", "r.raw"]),
        c(&["-f", "raw", "-c", "alloc 0", "-c", "alloc 0 2M", "-c", "alloc 1536 3k", "-c", "a 2M", "r.raw"]),
        // A file that is not whole sectors: its tail reads as zeros.
        c(&["-f", "raw", "-c", "length", "-c", "read 900 100", "-c", "read -P 0 1000 24", "-c", "read 1000 25", "odd.raw"]),
    ]);
}

#[test]
#[rustfmt::skip]
fn reads_of_qcow2_images_and_chains() {
    transcript(&[
        c(&["-c", "read -P 0x33 0 128k", "-c", "read -P 0x44 192k 64k", "-c", "read -P 0 256k 768k", "b.qcow2"]),
        c(&["-r", "-c", "read -q -P 0x33 0 128k", "-c", "read -P 0x33 120k 16k", "b.qcow2"]),
        c(&["-c", "info", "-c", "map", "-c", "alloc 0 1M", "-c", "alloc 64k 2M", "-c", "length", "b.qcow2"]),
        // Through the backing chain: the overlay's data, its zeros, and the
        // backing file's data where the overlay has none.
        c(&["-c", "read -P 0 0 4k", "-c", "read -P 0x33 4k 60k", "-c", "read -P 0x55 64k 64k", "-c", "read -P 0x44 192k 64k", "-c", "read -P 0 256k 768k", "t.qcow2"]),
        c(&["-r", "-c", "read -P 0x33 0 128k", "t.qcow2"]),
        c(&["-c", "map", "-c", "alloc 0 1M", "-c", "alloc 192k 64k", "-c", "info", "t.qcow2"]),
        c(&["-c", "readv -P 0x55 64k 32k 32k", "-c", "read -v 65530 12", "t.qcow2"]),
        c(&["-c", "read 1M 1", "-c", "read 2M 1", "-c", "read 1M 0", "t.qcow2"]),
        c(&["-c", "info", "-c", "map", "-c", "read -P 0 0 1M", "e.qcow2"]),
        c(&["-c", "info", "x.qcow2"]),
        c(&["-c", "info", "-c", "read -P 0x66 0 64k", "-c", "map", "v2.qcow2"]),
        c(&["-f", "qcow2", "-c", "open -o driver=qcow2 t.qcow2", "-c", "length"]),
        c(&["-c", "open -r t.qcow2", "-c", "read -P 0x55 64k 64k", "-c", "close", "-c", "open b.qcow2", "-c", "read -P 0x33 64k 64k"]),
        c(&["--image-opts", "-c", "read -P 0x55 64k 4k", "driver=qcow2,file.filename=t.qcow2"]),
    ]);
}

#[test]
#[rustfmt::skip]
fn writes_to_raw_images() {
    transcript(&[
        c(&["-f", "raw", "-c", "write -P 0x41 0 64k", "-c", "read -P 0x41 0 64k", "r.raw"]),
        c(&["-f", "raw", "-c", "write -q -P 0x41 4k 4k", "-c", "read -q -P 0x41 4k 4k", "r.raw"]),
        // Unaligned writes go through.
        c(&["-f", "raw", "-c", "write -P 0x42 1 3", "-c", "w 511 2", "-c", "read -v 0 16", "r.raw"]),
        c(&["-f", "raw", "-c", "write 0 512", "-c", "write -C 512 512", "-c", "read -P 0xcd 0 1k", "r.raw"]),
        c(&["-f", "raw", "-c", "write 1M 1", "-c", "write 1023k 2k", "-c", "write 2M 0", "r.raw"]),
        c(&["-f", "raw", "-c", "write -z 0 4k", "-c", "write -z -u 4k 4k", "-c", "write -z -n 1 1", "-c", "read -P 0 0 8k", "r.raw"]),
        c(&["-f", "raw", "-c", "write -u 0 1", "-c", "write -n 0 1", "-c", "write -z -P 1 0 1", "-c", "write -b -z 0 512", "r.raw"]),
        c(&["-f", "raw", "-c", "write -f -P 7 0 512", "-c", "write -f -c 0 512", "-c", "read -P 7 0 512", "r.raw"]),
        // Compressed writes: sector alignment first, then raw refuses.
        c(&["-f", "raw", "-c", "write -c 0 64k", "-c", "write -c 1 512", "-c", "write -c 512 1", "r.raw"]),
        c(&["-f", "raw", "-c", "writev -P 0x43 0 512 1k", "-c", "readv -P 0x43 0 1536", "r.raw"]),
        c(&["-f", "raw", "-c", "writev -q 1k 3 5", "-c", "read -v 1024 8", "r.raw"]),
        c(&["-f", "raw", "-c", "aio_write -P 0x44 4k 512 512", "-c", "aio_flush", "-c", "aio_read -P 0x44 4k 1k", "-c", "aio_flush", "r.raw"]),
        c(&["-f", "raw", "-c", "aio_write -z 0 512", "-c", "aio_flush", "-c", "aio_write -z 0 512 512", "r.raw"]),
        c(&["-f", "raw", "-c", "aio_write -q -z -u 8k 4k", "-c", "aio_flush", "-c", "aio_write -i 0 1", "-c", "aio_write 2M 1", "-c", "aio_flush", "r.raw"]),
        c(&["-f", "raw", "-c", "discard 0 64k", "-c", "discard -q 64k 4k", "-c", "read -P 0 0 68k", "r.raw"]),
        c(&["-f", "raw", "-c", "discard 1 1", "-c", "discard 4097 8192", "-c", "discard 1M 1", "-c", "discard 2M 0", "r.raw"]),
        c(&["-f", "raw", "-d", "ignore", "-c", "discard 0 64k", "-c", "read -P 0x11 0 64k", "r.raw"]),
        c(&["-f", "raw", "-c", "truncate 2M", "-c", "length", "-c", "truncate -m full 3M", "-c", "length", "r.raw"]),
        c(&["-f", "raw", "-c", "truncate -m foo 1M", "-c", "truncate 1000", "-c", "length", "-c", "truncate -m metadata 2M", "-c", "length", "r.raw"]),
        c(&["-f", "raw", "-c", "truncate -m off 1x", "-c", "t 512k", "-c", "length", "-c", "read 512k 1", "r.raw"]),
        c(&["-f", "raw", "-c", "write 1020 4", "-c", "length", "odd.raw"]),
        c(&["-f", "raw", "-c", "flush", "-c", "f", "-c", "write -q -P 9 0 1", "-c", "flush", "-c", "aio_flush", "r.raw"]),
        c(&["-f", "raw", "-n", "-c", "write -P 0x45 0 4k", "-c", "read -P 0x45 0 4k", "r.raw"]),
        c(&["-f", "raw", "-t", "writeback", "-c", "write -q -P 0x46 0 4k", "-c", "read -P 0x46 0 4k", "r.raw"]),
    ]);
}

#[test]
#[rustfmt::skip]
fn errors_and_exit_status() {
    transcript(&[
        // Writes to a read-only open: qemu-io refuses before the command runs.
        c(&["-f", "raw", "-r", "-c", "write 0 512", "r.raw"]),
        c(&["-f", "raw", "-r", "-c", "discard 0 512", "-c", "truncate 2M", "-c", "aio_write 0 512", "-c", "writev 0 512", "-c", "flush", "-c", "length", "r.raw"]),
        c(&["-r", "-c", "write -P 1 0 512", "-c", "read -P 0x33 0 512", "b.qcow2"]),
        c(&["-f", "raw", "-c", "foo", "r.raw"]),
        c(&["-f", "raw", "-c", "length", "-c", "foo", "-c", "length", "r.raw"]),
        c(&["-f", "raw", "-c", "read", "-c", "read 0 1x", "-c", "read -P 300 0 1", "r.raw"]),
        c(&["-f", "raw", "-c", "read -x 0 1", "-c", "read 0 -- -1", "-c", "read -P", "r.raw"]),
        c(&["-f", "raw", "-c", "read -l 10 0 20", "-c", "read -P 0 -l 30 0 20", "-c", "read -P 0 -s 30 0 20", "r.raw"]),
        c(&["-f", "raw", "-c", "read 0 3G", "-c", "write 0 3G", "-c", "write -n 0 3G", "-c", "discard 0 3G", "r.raw"]),
        c(&["-f", "raw", "-c", "readv 0 3G", "-c", "readv 0 1G 1G 1G", "-c", "writev 0 x", "r.raw"]),
        c(&["-f", "raw", "-c", "read 0 512 -q", "-c", "read -qv 0 16", "-c", "read -P0 -q 1M 1", "r.raw"]),
        c(&["-f", "raw", "-c", "truncate", "-c", "truncate -m", "-c", "truncate 1 2 3 4", "-c", "truncate -m full", "-c", "length", "r.raw"]),
        c(&["-f", "raw", "-c", "read 0 9223372036854775807", "-c", "read 0 9223372036854775808", "-c", "alloc 9223372036854775807 9223372036854775807", "-c", "discard 9223372036854775807 1", "r.raw"]),
        c(&["-f", "raw", "-c", "write -z -n 0 9223372036854775807", "-c", "aio_write -z 0 9223372036854775807", "-c", "aio_flush", "-c", "readv 0 0", "-c", "read 0x10 0x10", "-c", "read 1.5k 1k", "r.raw"]),
        // A probed raw image (no -f): qemu-io warns, and refuses writes that
        // would make the first sector look like another format.
        c(&["-c", "write -P 0x51 0 512", "-c", "write -s hdr.bin 0 512", "-c", "write -s hdr.bin 0 8", "-c", "write -s hdr.bin 512 512", "-c", "writev -q 0 512", "-c", "read -v 0 16", "r.raw"]),
        c(&["-f", "raw", "-c", "write -s hdr.bin 0 512", "-c", "read -v 0 16", "r.raw"]),
        c(&["-f", "raw", "-c", "write -s odd.raw 0 3000", "-c", "read -v 990 20", "-c", "write -s nonexist 0 1", "-c", "write -s odd.raw -P 1 0 1", "r.raw"]),
        c(&["-f", "raw", "-c", "sigraise 100", "-c", "sleep 1x", "-c", "length", "r.raw"]),
        c(&["nonexist.raw"]),
        c(&["-c", "read 0 1"]),
        c(&["-f", "qcow2", "r.raw"]),
        c(&["-f", "raw", "--image-opts", "r.raw"]),
        c(&["-f", "raw", "-t", "bogus", "r.raw"]),
        c(&["-f", "raw", "-d", "bogus", "r.raw"]),
        c(&["-f", "raw", "-i", "bogus", "r.raw"]),
        c(&["-f", "bogus", "r.raw"]),
    ]);
}

#[test]
#[rustfmt::skip]
fn session_and_other_commands() {
    transcript(&[
        c(&["-c", "help"]),
        c(&["-c", "help read", "-c", "help r", "-c", "help open", "-c", "help foo", "-c", "help map", "-c", "? aio_write"]),
        c(&["-c", "help readv", "-c", "help write", "-c", "help writev", "-c", "help aio_read", "-c", "help discard", "-c", "help sigraise", "-c", "help reopen"]),
        c(&["-c", "help truncate", "-c", "help alloc", "-c", "help quit", "-c", "help sleep", "-c", "help zone_append", "-c", "help info"]),
        c(&["-f", "raw", "-c", "open r.raw", "-c", "close", "-c", "length", "-c", "open -r -o driver=raw r.raw", "-c", "write 0 1", "r.raw"]),
        c(&["-c", "open -o driver=raw r.raw", "-c", "write -q 0 1", "-c", "close", "-c", "open nonexist", "-c", "open -r"]),
        c(&["-c", "open -f raw r.raw"]),
        c(&["-c", "open", "-c", "o -r -o driver=raw r.raw", "-c", "l"]),
        c(&["-c", "close", "-c", "quit extra args", "-c", "help read x", "-c", "length"]),
        c(&["-f", "raw", "-c", "length x", "-c", "map x", "-c", "alloc", "-c", "sleep", "r.raw"]),
        c(&["-c", "sleep 10", "-c", "sleep x", "-c", "sleep -1"]),
        c(&["-f", "raw", "-c", "quit", "-c", "length", "r.raw"]),
        c(&["-f", "raw", "-c", "q", "r.raw"]),
        c(&["-f", "raw", "-c", "break write_aio A", "-c", "remove_break A", "-c", "resume A", "r.raw"]),
        c(&["-f", "raw", "-c", "zone_report 0 1", "-c", "zone_open 0 1", "-c", "zone_reset 0 x", "-c", "zone_append 0 512 512", "r.raw"]),
        c(&["-f", "raw", "-c", "reopen -r", "-c", "write 0 1", "-c", "reopen -w", "-c", "write -q 0 1", "-c", "reopen -c none", "-c", "reopen -r -w", "r.raw"]),
        c(&["-f", "raw", "-c", "reopen -o foo=bar", "-c", "reopen x", "r.raw"]),
        c(&["-f", "raw", "-c", "info", "-c", "i", "-c", "map", "-c", "alloc 0 0", "-c", "alloc 512k 1M", "r.raw"]),
        c(&["--image-opts", "-c", "length", "-c", "read -P 0x11 0 4k", "driver=raw,file.filename=r.raw"]),
        c(&["--image-opts", "-c", "write -q 0 1", "-c", "read -P 0x55 64k 4k", "driver=qcow2,file.filename=t.qcow2,file.locking=off,file.aio=threads"]),
        c(&["--image-opts", "-c", "open driver=raw,file.filename=r.raw", "-c", "open -o driver=raw r.raw"]),
        // The interactive prompt, reading commands from stdin.
        Case {
            args: &["-f", "raw", "r.raw"],
            stdin: Some("read -P 0x11 0 512\nlength\nfoo\n\n  length  \nquit\nlength\n"),
        },
        Case {
            args: &["-f", "raw", "r.raw"],
            stdin: Some("write -P 0x47 0 4k\nread -P 0x47 0 4k\nmap"),
        },
        Case {
            args: &[],
            stdin: Some("open -o driver=qcow2 t.qcow2\nread -P 0x55 64k 64k\nclose\nlength\n"),
        },
    ]);
}

/// Writes to qcow2 images, alone and in chains: allocating, sub-cluster,
/// zero, compressed, discard, resize. They run on the library's qcow2
/// write path and have their own test so that its state shows at a glance.
#[test]
#[rustfmt::skip]
fn qcow2_writes_match_qemu_io() {
    transcript(&[
        c(&["-c", "write -P 0x71 0 64k", "-c", "read -P 0x71 0 64k", "-c", "map", "e.qcow2"]),
        c(&["-c", "write -P 0x72 1 3", "-c", "write -q 65535 2", "-c", "read -v 0 16", "-c", "map", "e.qcow2"]),
        c(&["-c", "write -P 0x73 64k 4k", "-c", "read -P 0x33 0 64k", "-c", "read -P 0x73 64k 4k", "-c", "map", "t.qcow2"]),
        c(&["-c", "write -z 0 64k", "-c", "write -z -u 64k 64k", "-c", "map", "-c", "read -P 0 0 128k", "b.qcow2"]),
        c(&["-c", "discard 0 64k", "-c", "discard 1 1", "-c", "discard 1M 1", "-c", "map", "b.qcow2"]),
        c(&["-c", "discard 64k 64k", "-c", "read -P 0x33 64k 64k", "-c", "map", "t.qcow2"]),
        c(&["-c", "writev -P 0x74 0 512 1k", "-c", "aio_write -P 0x75 8k 4k", "-c", "aio_flush", "-c", "read -P 0x75 8k 4k", "v2.qcow2"]),
        c(&["-c", "truncate 2M", "-c", "length", "-c", "write -P 0x76 1536k 4k", "-c", "map", "e.qcow2"]),
        c(&["-c", "truncate 512k", "-c", "length", "-c", "truncate 1000", "b.qcow2"]),
        c(&["-c", "write -P 0x77 0 64k", "x.qcow2"]),
        c(&["-c", "write -c -P 0x78 64k 64k", "-c", "read -P 0x78 64k 64k", "e.qcow2"]),
        // Compressed writes: whole clusters or the tail only, never over a
        // cluster the image holds (EIO, as QEMU's qcow2).
        c(&["-c", "write -c 0 64k", "-c", "write -c 4k 64k", "-c", "write -c 0 4k", "-c", "write -c 960k 64k", "-c", "map", "b.qcow2"]),
        c(&["-c", "write -c -P 1 256k 128k", "-c", "read -P 1 256k 128k", "-c", "write -c 448k 96k", "-c", "write -c 1008k 16k", "-c", "write -c 512k 0", "-c", "map", "b.qcow2"]),
        c(&["-c", "write -c -P 0x79 192k 64k", "-c", "write -c 64k 64k", "-c", "read -P 0x44 192k 64k", "t.qcow2"]),
        c(&["-c", "write -z 256k 64k", "-c", "write -c 256k 64k", "-c", "write -z -u 320k 64k", "-c", "write -c -q 320k 64k", "-c", "map", "e.qcow2"]),
        // Sub-cluster writes into an overlay copy the rest from the backing file.
        c(&["-c", "write -P 0x7a 70000 100", "-c", "write -P 0x7b 200k 1", "-c", "read -P 0x44 192k 8k", "-c", "read -v 204790 20", "-c", "map", "t.qcow2"]),
        c(&["-c", "write -P 0x7c 4k 4k", "-c", "write -z 8k 4k", "-c", "read -P 0 8k 4k", "-c", "map", "-c", "alloc 0 64k", "x.qcow2"]),
        c(&["-c", "write -z 0 64k", "-c", "write -z 1k 1k", "-c", "discard 0 64k", "-c", "read -P 0 0 64k", "-c", "map", "v2.qcow2"]),
        c(&["-c", "truncate -m metadata 2M", "-c", "map", "-c", "truncate -m falloc 3M", "-c", "truncate -m full 4M", "-c", "length", "-c", "read -P 0 1M 3M", "e.qcow2"]),
        c(&["-c", "truncate -m foo 2M", "-c", "truncate 1000", "-c", "truncate 0", "-c", "length", "-c", "map", "b.qcow2"]),
        c(&["-c", "aio_write -z -u 0 128k", "-c", "aio_flush", "-c", "map", "-c", "read -P 0x33 0 64k", "t.qcow2"]),
        c(&["-c", "write 1M 1", "-c", "write -z 1023k 2k", "-c", "discard 1023k 2k", "-c", "write -f -P 0x7d 0 512", "e.qcow2"]),
        c(&["-t", "none", "-c", "write -P 0x7e 0 128k", "-c", "reopen -r", "-c", "write 0 1", "-c", "reopen -w", "-c", "write -q 128k 4k", "-c", "map", "e.qcow2"]),
        Case {
            args: &["t.qcow2"],
            stdin: Some("write -P 0x7f 96k 64k\nread -P 0x7f 96k 64k\nmap\nflush\nquit\n"),
        },
    ]);
}

/// The O_DIRECT cache modes (`-t none`, `-t directsync`, `-n`, `open -n`,
/// `reopen -c`, `cache.direct=on`): aligned and unaligned reads and writes,
/// zero writes, discards, writes past the end, backing chains.
#[test]
#[rustfmt::skip]
fn direct_cache_modes_match_qemu_io() {
    transcript(&[
        c(&["-f", "raw", "-t", "none", "-c", "read -P 0x11 0 64k", "-c", "read -P 0x11 1 511", "-c", "read -v 131060 40", "-c", "read 1M 512", "r.raw"]),
        c(&["-f", "raw", "-t", "none", "-c", "write -P 0x41 0 64k", "-c", "write -P 0x42 1 3", "-c", "w 4095 2", "-c", "read -v 0 16", "-c", "read -P 0x41 8k 56k", "r.raw"]),
        c(&["-f", "raw", "-t", "none", "-c", "write -z 0 4k", "-c", "write -z 5 100", "-c", "write -z -u 8k 8k", "-c", "read -P 0 0 16k", "-c", "read -P 0x11 16k 4k", "r.raw"]),
        c(&["-f", "raw", "-t", "none", "-c", "discard 0 64k", "-c", "discard 4097 8192", "-c", "read -P 0 0 64k", "-c", "read -P 0x22 128k 4k", "r.raw"]),
        c(&["-f", "raw", "-t", "none", "-c", "writev -P 0x43 0 512 1k", "-c", "writev -q 1k 3 5", "-c", "aio_write -P 0x44 4k 4k 4k", "-c", "aio_flush", "-c", "readv -P 0x44 4k 4k 4k", "r.raw"]),
        c(&["-f", "raw", "-t", "none", "-c", "write 1023k 2k", "-c", "truncate 2M", "-c", "write -P 0x48 1M 4k", "-c", "read -P 0x48 1M 4k", "-c", "length", "r.raw"]),
        c(&["-f", "raw", "-t", "none", "-c", "length", "-c", "read 900 100", "-c", "read -P 0 1000 24", "-c", "write 1020 4", "-c", "length", "odd.raw"]),
        c(&["-f", "raw", "-t", "directsync", "-c", "write -P 0x45 0 4k", "-c", "write -P 0x46 100 10", "-c", "write -z 8k 4k", "-c", "discard 16k 4k", "-c", "read -v 96 20", "-c", "read -P 0 8k 12k", "r.raw"]),
        c(&["-f", "raw", "-t", "directsync", "-c", "write 1020 4", "-c", "read -v 1000 24", "-c", "flush", "odd.raw"]),
        c(&["-f", "raw", "-n", "-c", "write -P 0x47 0 4k", "-c", "write -P 0x48 4097 3", "-c", "write -z 1 1", "-c", "discard 8k 8k", "-c", "read -v 0 8", "-c", "read -P 0 8k 8k", "r.raw"]),
        c(&["-f", "raw", "--nocache", "-c", "read -P 0x11 0 64k", "-c", "write -q -P 0x49 3 4k", "r.raw"]),
        c(&["-t", "none", "-c", "write -P 0x71 0 64k", "-c", "write -P 0x72 70000 3", "-c", "write -z 128k 64k", "-c", "discard 0 64k", "-c", "map", "-c", "read -P 0 0 64k", "e.qcow2"]),
        c(&["-t", "none", "-c", "read -P 0 0 4k", "-c", "read -P 0x33 4k 60k", "-c", "read -P 0x55 64k 64k", "-c", "read -P 0x44 192k 64k", "-c", "write -P 0x7a 70000 100", "-c", "write -P 0x7b 200k 1", "-c", "read -v 204790 20", "-c", "map", "t.qcow2"]),
        c(&["-t", "directsync", "-c", "write -P 0x73 64k 4k", "-c", "write -z -u 0 64k", "-c", "write -c -P 0x74 256k 64k", "-c", "read -P 0x74 256k 64k", "-c", "map", "b.qcow2"]),
        c(&["-n", "-c", "write -P 0x75 1 4k", "-c", "discard 64k 64k", "-c", "read -P 0x33 64k 64k", "-c", "truncate 2M", "-c", "map", "t.qcow2"]),
        c(&["-c", "open -n -o driver=raw r.raw", "-c", "write -P 0x4a 7 9", "-c", "read -v 0 16", "-c", "close", "-c", "open -t directsync t.qcow2", "-c", "write -q -P 0x4b 64k 4k", "-c", "read -P 0x4b 64k 4k"]),
        c(&["-f", "raw", "-c", "reopen -c none", "-c", "write -P 0x4c 0 4k", "-c", "reopen -c writeback", "-c", "read -P 0x4c 0 4k", "-c", "reopen -r -c directsync", "-c", "read -P 0x4c 0 4k", "r.raw"]),
        c(&["--image-opts", "-c", "write -q -P 0x4d 5 5", "-c", "read -v 0 16", "driver=raw,file.filename=r.raw,cache.direct=on"]),
        c(&["-f", "raw", "-t", "off", "-c", "read -P 0x11 0 4k", "r.raw"]),
    ]);
}

/// `--help` and usage after a bad option name the program: `qemu-io` under
/// that name, `diskimg io` as `diskimg io`; the last lines name diskimg
/// instead of QEMU's bug-report address. Everything else is qemu-io's.
#[test]
fn usage_names_the_program() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("qemu-io");
    std::os::unix::fs::symlink(diskimg_bin(), &link).expect("symlink");
    let q = run_tool(&qemu_io_bin(), Some("qemu-io"), &["-h"], dir.path());
    let l = run_tool(&link, Some("qemu-io"), &["-h"], dir.path());
    let d = run_tool(&diskimg_bin(), Some("diskimg"), &["io", "-h"], dir.path());
    let (q, l, d) = (
        String::from_utf8_lossy(&q.stdout).into_owned(),
        String::from_utf8_lossy(&l.stdout).into_owned(),
        String::from_utf8_lossy(&d.stdout).into_owned(),
    );
    // Up to "See '... -c help'" the text is qemu-io's, with the program
    // name as invoked.
    let head = |s: &str| -> String { s.split("\n\n").take(3).collect::<Vec<_>>().join("\n\n") };
    assert_eq!(head(&l), head(&q));
    assert_eq!(head(&d), head(&q).replace("qemu-io", "diskimg io"));
    assert!(l.contains("diskimg"), "the last line names diskimg: {l}");
    // -V: qemu-io's version first, then diskimg's in parentheses.
    let q = run_tool(&qemu_io_bin(), Some("qemu-io"), &["-V"], dir.path());
    let l = run_tool(&link, Some("qemu-io"), &["-V"], dir.path());
    let qv = String::from_utf8_lossy(&q.stdout);
    let lv = String::from_utf8_lossy(&l.stdout);
    let version = qv.split_whitespace().nth(2).expect("qemu-io version");
    assert!(
        lv.starts_with(&format!("qemu-io version {version} (diskimg ")),
        "{lv}"
    );
    for args in [&["-x"][..], &["a", "b"][..]] {
        let q = run_tool(&qemu_io_bin(), Some("qemu-io"), args, dir.path());
        let l = run_tool(&link, Some("qemu-io"), args, dir.path());
        assert_eq!(q.status.code(), Some(1));
        assert_eq!(l.status.code(), Some(1));
        assert_eq!(
            head(&String::from_utf8_lossy(&l.stdout)),
            head(&String::from_utf8_lossy(&q.stdout))
        );
    }
}

/// The descriptors a running process holds on `file`: their open flags
/// (from /proc/PID/fdinfo).
fn open_flags_of(pid: u32, file: &Path) -> Vec<i32> {
    let mut flags = Vec::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return flags;
    };
    for fd in fds.flatten() {
        if std::fs::read_link(fd.path()).ok().as_deref() != Some(file) {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        let Ok(text) = std::fs::read_to_string(info) else {
            continue;
        };
        for l in text.lines() {
            if let Some(v) = l.strip_prefix("flags:") {
                flags.push(i32::from_str_radix(v.trim(), 8).expect("octal flags"));
            }
        }
    }
    flags
}

/// The direct modes really open every file of the chain with O_DIRECT (as
/// the kernel reports the descriptors of the running process), and the
/// others do not.
#[test]
fn direct_modes_really_open_with_o_direct() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().canonicalize().expect("canonical tempdir");
    make_fixtures(&dir);
    let cases: &[(&[&str], &[&str], bool)] = &[
        (&["-f", "raw", "-t", "none"], &["r.raw"], true),
        (&["-f", "raw", "-t", "directsync"], &["r.raw"], true),
        (&["-f", "raw", "-n"], &["r.raw"], true),
        (&["-f", "raw", "-r", "-t", "off"], &["r.raw"], true),
        (&["-t", "none"], &["t.qcow2", "b.qcow2"], true),
        (&["-f", "raw", "-t", "writeback"], &["r.raw"], false),
        (&["-f", "raw"], &["r.raw"], false),
        (&["-t", "unsafe"], &["t.qcow2", "b.qcow2"], false),
    ];
    for (args, files, direct) in cases {
        let mut child = Command::new(diskimg_bin())
            .arg("io")
            .args(*args)
            .arg(files[0])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn diskimg io");
        // Wait until the files are open (the session then waits on stdin).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let want = if *direct { 2 } else { 1 };
        let seen = loop {
            let seen = files
                .iter()
                .map(|f| open_flags_of(child.id(), &dir.join(f)))
                .collect::<Vec<_>>();
            if seen.iter().all(|fl| fl.len() >= want) || std::time::Instant::now() > deadline {
                break seen;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        drop(child.stdin.take());
        let _ = child.wait();
        for (f, fl) in files.iter().zip(&seen) {
            let n_direct = fl.iter().filter(|x| *x & libc::O_DIRECT != 0).count();
            assert_eq!(
                n_direct,
                usize::from(*direct),
                "{args:?}: {f}: descriptors' flags {fl:?}"
            );
            assert_eq!(fl.len(), want, "{args:?}: {f}: descriptors' flags {fl:?}");
        }
    }
}
