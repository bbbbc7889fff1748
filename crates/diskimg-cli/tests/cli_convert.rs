//! `convert` to raw: byte-for-byte equal to qemu-img's output, and sparse.

mod cli_common;

use cli_common::{pattern, Scratch};

fn source(s: &Scratch) -> Vec<u8> {
    let size = 64u64 << 20;
    let writes: Vec<(u64, Vec<u8>)> = vec![
        (0, pattern(4096, 1)),
        (1 << 20, pattern(3 << 20, 2)),
        // A zero block inside data: must become a hole.
        ((10 << 20) - 8192, vec![0u8; 8192]),
        (10 << 20, pattern(1 << 16, 3)),
        (size - 512, pattern(512, 4)),
    ];
    let w: Vec<(u64, &[u8])> = writes.iter().map(|(o, d)| (*o, &d[..])).collect();
    s.sparse_file("src.raw", size, &w);
    s.read("src.raw")
}

#[test]
fn convert_output_equals_source_and_qemu_img_output_and_is_sparse() {
    let s = Scratch::new();
    let src = source(&s);
    let o = s.ours(&["convert", "-O", "raw", "src.raw", "ours.raw"]);
    assert_eq!((o.rc, o.stdout.as_str(), o.stderr.as_str()), (0, "", ""));
    let q = s.qemu(&["convert", "-O", "raw", "src.raw", "theirs.raw"]);
    assert_eq!(q.rc, 0);
    let ours = s.read("ours.raw");
    assert!(ours == src, "converted image differs from the source");
    assert!(
        ours == s.read("theirs.raw"),
        "differs from qemu-img's output"
    );
    let alloc = s.allocated("ours.raw");
    assert!(alloc < (8 << 20), "not sparse: {alloc} bytes allocated");
    assert!(alloc <= s.allocated("src.raw") + 4096, "{alloc} vs source");
    s.same(&["compare", "-f", "raw", "src.raw", "ours.raw"]);

    for args in [
        &["convert", "-m", "1", "src.raw", "o1.raw"][..],
        &["convert", "-m", "16", "-W", "src.raw", "o2.raw"],
        &["convert", "-S", "64k", "src.raw", "o3.raw"],
        &["convert", "-U", "-q", "-f", "raw", "src.raw", "o4.raw"],
        &[
            "convert",
            "-t",
            "none",
            "-T",
            "writeback",
            "src.raw",
            "o5.raw",
        ],
    ] {
        let o = s.ours(args);
        assert_eq!(o.rc, 0, "{args:?}: {o:?}");
        let name = args[args.len() - 1];
        assert!(s.read(name) == src, "{args:?}");
    }
}

#[test]
fn sparse_size_zero_allocates_everything() {
    let s = Scratch::new();
    let src = source(&s);
    let o = s.ours(&["convert", "-S", "0", "src.raw", "full.raw"]);
    assert_eq!(o.rc, 0, "{o:?}");
    assert!(s.read("full.raw") == src);
    assert!(s.allocated("full.raw") >= 64 << 20);
}

#[test]
fn no_create_writes_into_an_existing_target() {
    let s = Scratch::new();
    let src = source(&s);
    // A bigger target full of 0xff: the tail stays, every source byte lands.
    s.sparse_file("t.raw", 80 << 20, &[(0, &vec![0xffu8; 80 << 20])]);
    let o = s.ours(&["convert", "-n", "src.raw", "t.raw"]);
    assert_eq!(o.rc, 0, "{o:?}");
    let t = s.read("t.raw");
    assert_eq!(t.len(), 80 << 20);
    assert!(t[..64 << 20] == src[..]);
    assert!(t[64 << 20..].iter().all(|&b| b == 0xff));
    // --target-is-zero: zero ranges are left alone.
    s.sparse_file("z.raw", 64 << 20, &[]);
    let o = s.ours(&["convert", "-n", "--target-is-zero", "src.raw", "z.raw"]);
    assert_eq!(o.rc, 0, "{o:?}");
    assert!(s.read("z.raw") == src);
}

#[test]
fn convert_errors_equal_qemu_img() {
    let s = Scratch::new();
    source(&s);
    s.sparse_file("small.raw", 1 << 20, &[]);
    for args in [
        &["convert"][..],
        &["convert", "src.raw"],
        &["convert", "-m", "0", "src.raw", "x"],
        &["convert", "-m", "17", "src.raw", "x"],
        &["convert", "-m", "x", "src.raw", "x"],
        &["convert", "-S", "511", "src.raw", "x"],
        &["convert", "-S", "17M", "src.raw", "x"],
        &["convert", "--target-is-zero", "src.raw", "x"],
        &["convert", "-n", "src.raw", "small.raw"],
        &["convert", "-n", "src.raw", "missing.raw"],
        &["convert", "missing.raw", "x"],
        &["convert", "-O", "foo", "src.raw", "x"],
        &["convert", "-f", "foo", "src.raw", "x"],
        &["convert", "-c", "src.raw", "x"],
        &["convert", "src.raw", "/nonexistent-dir/x"],
        &["convert", "--bogus", "src.raw", "x"],
    ] {
        let o = s.same(args);
        assert_eq!(o.rc, 1, "{args:?}");
    }
    assert!(!s.path("x").exists());
    // The small -n target was not touched.
    assert_eq!(s.read("small.raw").len(), 1 << 20);
}

#[test]
fn unimplemented_targets_fail_clearly() {
    let s = Scratch::new();
    source(&s);
    let o = s.diskimg(&["convert", "-O", "qed", "src.raw", "x.qed"]);
    assert_eq!(o.rc, 1);
    assert_eq!(o.stderr.lines().count(), 1);
    assert!(
        o.stderr.contains("qed output is not implemented yet"),
        "{}",
        o.stderr
    );
    assert!(!s.path("x.qed").exists());
    let o = s.diskimg(&["convert", "-l", "snap", "src.raw", "x"]);
    assert_eq!(o.rc, 1);
    assert!(o.stderr.contains("not implemented"), "{}", o.stderr);
    assert!(!s.path("x").exists());
}

#[test]
fn progress_is_drawn_like_qemu_img() {
    let s = Scratch::new();
    source(&s);
    let o = s.ours(&["convert", "-p", "src.raw", "p.raw"]);
    assert_eq!(o.rc, 0);
    assert!(o.stdout.starts_with("    (0.00/100%)\r"), "{:?}", o.stdout);
    assert!(
        o.stdout.ends_with("    (100.00/100%)\r\n"),
        "{:?}",
        o.stdout
    );
    let o = s.ours(&["convert", "-p", "-q", "src.raw", "q.raw"]);
    assert_eq!(o.stdout, "");
}
