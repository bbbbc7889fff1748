//! `compare` exit codes and messages against qemu-img.

mod cli_common;

use cli_common::{pattern, Scratch};

fn images(s: &Scratch) {
    let data = pattern(3 << 16, 1);
    s.sparse_file("a.raw", 16 << 20, &[(5 << 16, &data)]);
    s.sparse_file("same.raw", 16 << 20, &[(5 << 16, &data)]);
    // One byte differs inside the data (not sector-aligned).
    let mut d2 = data.clone();
    d2[1500] ^= 0xff;
    s.sparse_file("diff.raw", 16 << 20, &[(5 << 16, &d2)]);
    // A byte where a has a hole.
    s.sparse_file(
        "extra.raw",
        16 << 20,
        &[(5 << 16, &data), ((3 << 20) + 7, b"x")],
    );
    // Larger, with zeros (hole) in the tail: same contents.
    s.sparse_file("bigger.raw", 20 << 20, &[(5 << 16, &data)]);
    // Larger, with data in the tail.
    s.sparse_file(
        "bigger-x.raw",
        20 << 20,
        &[(5 << 16, &data), ((18 << 20) + 513, b"y")],
    );
    // Same contents, zeros written instead of holes.
    let mut full = vec![0u8; 16 << 20];
    full[5 << 16..(5 << 16) + data.len()].copy_from_slice(&data);
    s.sparse_file("written.raw", 16 << 20, &[(0, &full)]);
}

#[test]
fn compare_equals_qemu_img() {
    let s = Scratch::new();
    images(&s);
    let cases: &[(&[&str], i32)] = &[
        (&["a.raw", "same.raw"], 0),
        (&["a.raw", "diff.raw"], 1),
        (&["diff.raw", "a.raw"], 1),
        (&["a.raw", "extra.raw"], 1),
        (&["extra.raw", "a.raw"], 1),
        (&["a.raw", "bigger.raw"], 0),
        (&["bigger.raw", "a.raw"], 0),
        (&["a.raw", "bigger-x.raw"], 1),
        (&["bigger-x.raw", "a.raw"], 1),
        (&["a.raw", "written.raw"], 0),
        (&["-s", "a.raw", "same.raw"], 0),
        (&["-s", "a.raw", "bigger.raw"], 1),
        (&["-s", "a.raw", "written.raw"], 1),
        (&["-s", "written.raw", "a.raw"], 1),
        (&["-s", "a.raw", "diff.raw"], 1),
        (&["-q", "a.raw", "diff.raw"], 1),
        (&["-q", "a.raw", "same.raw"], 0),
        (&["-sq", "a.raw", "bigger.raw"], 1),
        (&["-f", "raw", "-F", "raw", "a.raw", "same.raw"], 0),
        (&["-U", "a.raw", "same.raw"], 0),
        (&["a.raw", "missing.raw"], 2),
        (&["missing.raw", "a.raw"], 2),
        (&["-f", "foo", "a.raw", "a.raw"], 2),
        (&["a.raw"], 1),
        (&["a.raw", "b", "c"], 1),
        (&["--bogus", "a.raw", "a.raw"], 1),
        // O_DIRECT (the mismatch is not sector-aligned).
        (&["-T", "none", "a.raw", "diff.raw"], 1),
        (&["-T", "none", "a.raw", "same.raw"], 0),
        (&["-T", "directsync", "-s", "a.raw", "written.raw"], 1),
        (&["-T", "off", "a.raw", "bigger-x.raw"], 1),
        (&["-T", "bogus", "a.raw", "a.raw"], 2),
    ];
    for (args, rc) in cases {
        let mut full = vec!["compare"];
        full.extend_from_slice(args);
        let o = s.same(&full);
        assert_eq!(o.rc, *rc, "{full:?}: {o:?}");
    }
    let o = s.same(&["compare", "a.raw", "diff.raw"]);
    assert_eq!(
        o.stdout,
        format!("Content mismatch at offset {}!\n", (5 << 16) + 1024)
    );
    let o = s.same(&["compare", "a.raw", "bigger-x.raw"]);
    assert_eq!(
        o.stdout,
        format!(
            "Warning: Image size mismatch!\nContent mismatch at offset {}!\n",
            (18 << 20) + 512
        )
    );
    let o = s.same(&["compare", "-s", "a.raw", "bigger.raw"]);
    assert_eq!(o.stdout, "Strict mode: Image size mismatch!\n");
    let o = s.same(&["compare", "-s", "a.raw", "written.raw"]);
    assert_eq!(o.stdout, "Strict mode: Offset 0 block status mismatch!\n");
    let o = s.same(&["compare", "a.raw", "same.raw"]);
    assert_eq!(o.stdout, "Images are identical.\n");
}

#[test]
fn compare_progress_ends_with_identical() {
    let s = Scratch::new();
    images(&s);
    let o = s.ours(&["compare", "-p", "a.raw", "same.raw"]);
    assert_eq!(o.rc, 0);
    assert!(o.stdout.contains("(100.00/100%)"), "{:?}", o.stdout);
    assert!(
        o.stdout.contains("Images are identical.\n"),
        "{:?}",
        o.stdout
    );
}
