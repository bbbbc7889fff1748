//! `map` against qemu-img on the same files.

mod cli_common;

use cli_common::{pattern, Scratch};

#[test]
fn map_equals_qemu_img_for_raw() {
    let s = Scratch::new();
    s.sparse_file("sparse.raw", 16 << 20, &[(5 << 16, &pattern(3 << 16, 1))]);
    s.sparse_file(
        "many.raw",
        64 << 20,
        &[
            (0, &pattern(4096, 1)),
            (1 << 20, &pattern(8192, 2)),
            (3 << 20, &pattern(65536, 3)),
            ((64 << 20) - 4096, &pattern(4096, 4)),
        ],
    );
    s.sparse_file("full.raw", 1 << 20, &[(0, &pattern(1 << 20, 2))]);
    s.sparse_file("empty.raw", 0, &[]);
    s.sparse_file("hole.raw", 5 << 20, &[]);
    for f in [
        "sparse.raw",
        "many.raw",
        "full.raw",
        "empty.raw",
        "hole.raw",
    ] {
        let o = s.same(&["map", "--output=json", f]);
        assert_eq!(o.rc, 0);
        assert!(o.stdout.starts_with("[{ \"start\": 0"), "{}", o.stdout);
        assert!(o.stdout.ends_with("}]\n"), "{}", o.stdout);
        let o = s.same(&["map", f]);
        assert!(o
            .stdout
            .starts_with("Offset          Length          Mapped to       File\n"));
        for (start, len) in [
            ("0", "64k"),
            ("1M", "1M"),
            ("0x10", "4k"),
            ("1.5k", "3M"),
            ("20M", "1"),
        ] {
            s.same(&[
                "map",
                "--output=json",
                "--start-offset",
                start,
                "--max-length",
                len,
                f,
            ]);
            s.same(&["map", "--start-offset", start, f]);
        }
    }
    let o = s.same(&["map", "--output=json", "many.raw"]);
    assert_eq!(o.stdout.lines().count(), 7, "{}", o.stdout);
    let o = s.same(&["map", "many.raw"]);
    assert_eq!(o.stdout.lines().count(), 5, "{}", o.stdout);
}

#[test]
fn map_errors_equal_qemu_img() {
    let s = Scratch::new();
    s.sparse_file("a.raw", 1 << 20, &[]);
    for args in [
        &["map", "--start-offset", "1x", "a.raw"][..],
        &["map", "--start-offset", "-5", "a.raw"],
        &["map", "--max-length", "5Z", "a.raw"],
        &["map", "--max-length", "-1", "a.raw"],
        &["map", "--start-offset", "8E", "a.raw"],
        &["map", "--output=xml", "a.raw"],
        &["map"],
        &["map", "a.raw", "b.raw"],
        &["map", "missing.raw"],
        &["map", "-f", "foo", "a.raw"],
        &["map", "--bogus", "a.raw"],
    ] {
        let o = s.same(args);
        assert_eq!(o.rc, 1, "{args:?}");
    }
}

#[test]
fn map_of_many_extents_merges_like_qemu_img() {
    // 2000 alternating data/hole extents.
    let s = Scratch::new();
    let chunk = pattern(4096, 9);
    let writes: Vec<(u64, &[u8])> = (0..2000u64).map(|i| (i * 16384, &chunk[..])).collect();
    s.sparse_file("striped.raw", 2000 * 16384, &writes);
    let o = s.same(&["map", "--output=json", "striped.raw"]);
    assert_eq!(o.stdout.lines().count(), 4000);
    s.same(&["map", "striped.raw"]);
}
