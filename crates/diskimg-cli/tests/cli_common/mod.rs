//! Shared helpers of the CLI tests: run diskimg (under its own name or as
//! a `qemu-img` link) and the real qemu-img on the same files.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a command printed and returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub stdout: String,
    pub stderr: String,
    pub rc: i32,
}

/// Runs a QEMU tool (looked up on PATH) in `dir`; panics when it cannot
/// run at all, so a missing tool fails the test instead of skipping it.
pub fn tool(dir: &Path, prog: &str, args: &[&str]) -> Out {
    let o = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{prog} is needed by this test and could not run: {e}"));
    Out {
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        rc: o.status.code().unwrap_or(-1),
    }
}

/// The diskimg binary under test.
pub fn diskimg_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diskimg"))
}

/// The real qemu-img; panics when it is not installed (tests never skip).
pub fn qemu_img_bin() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v qemu-img"])
        .output()
        .expect("sh runs");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "qemu-img is not installed: these tests compare diskimg with qemu-img and cannot run without it"
    );
    PathBuf::from(p)
}

/// A scratch directory holding a `qemu-img` link to diskimg.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(diskimg_bin(), dir.path().join("qemu-img")).expect("symlink");
        Scratch { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `prog` in the scratch directory.
    pub fn run(&self, prog: &Path, args: &[&str]) -> Out {
        self.run_as(prog, None, args)
    }

    /// Runs `prog` with `argv0` as its argv[0] when given.
    pub fn run_as(&self, prog: &Path, argv0: Option<&str>, args: &[&str]) -> Out {
        let mut c = Command::new(prog);
        if let Some(a) = argv0 {
            c.arg0(a);
        }
        let o = c
            .args(args)
            .current_dir(self.dir.path())
            .env("TZ", "UTC")
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", prog.display()));
        Out {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            rc: o.status.code().unwrap_or(-1),
        }
    }

    /// diskimg invoked as `qemu-img` (through the link).
    pub fn ours(&self, args: &[&str]) -> Out {
        self.run_as(&self.path("qemu-img"), Some("qemu-img"), args)
    }

    /// diskimg invoked as `diskimg`.
    pub fn diskimg(&self, args: &[&str]) -> Out {
        self.run_as(&diskimg_bin(), Some("diskimg"), args)
    }

    /// The real qemu-img.
    pub fn qemu(&self, args: &[&str]) -> Out {
        self.run_as(&qemu_img_bin(), Some("qemu-img"), args)
    }

    /// Runs both and asserts identical stdout, stderr and exit code.
    pub fn same(&self, args: &[&str]) -> Out {
        let q = self.qemu(args);
        let d = self.ours(args);
        assert_eq!(
            d, q,
            "diskimg (left) and qemu-img (right) differ for {args:?}"
        );
        d
    }

    /// Creates a sparse file of `size` bytes with `data` written at each offset.
    pub fn sparse_file(&self, name: &str, size: u64, writes: &[(u64, &[u8])]) -> PathBuf {
        let p = self.path(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&p)
            .expect("create");
        f.set_len(size).expect("set_len");
        for (off, data) in writes {
            f.write_all_at(data, *off).expect("write");
        }
        p
    }

    /// Bytes the file system allocates for `name`.
    pub fn allocated(&self, name: &str) -> u64 {
        std::fs::metadata(self.path(name)).expect("stat").blocks() * 512
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read")
    }
}

/// A deterministic pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8 ^ seed | 1)
        .collect()
}
