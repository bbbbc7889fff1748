//! `info` against qemu-img on the same files.

mod cli_common;

use cli_common::{pattern, Scratch};

fn raw_images(s: &Scratch) {
    s.sparse_file("sparse.raw", 16 << 20, &[(5 << 16, &pattern(3 << 16, 1))]);
    s.sparse_file("full.raw", 1 << 20, &[(0, &pattern(1 << 20, 2))]);
    s.sparse_file("empty.raw", 0, &[]);
    s.sparse_file("holes.raw", 3 << 30, &[(1 << 30, &pattern(4096, 3))]);
}

#[test]
fn info_json_and_human_equal_qemu_img_for_raw() {
    let s = Scratch::new();
    raw_images(&s);
    for f in ["sparse.raw", "full.raw", "empty.raw", "holes.raw"] {
        let o = s.same(&["info", "--output=json", f]);
        assert_eq!(o.rc, 0);
        assert!(
            o.stdout.starts_with("{\n    \"children\": [\n"),
            "{}",
            o.stdout
        );
        s.same(&["info", "--output", "json", f]);
        let o = s.same(&["info", f]);
        assert!(o
            .stdout
            .starts_with(&format!("image: {f}\nfile format: raw\n")));
        s.same(&["info", "-U", "--backing-chain", f]);
        s.same(&["info", "--backing-chain", "--output=json", f]);
        s.same(&["info", "-f", "raw", "--output=json", f]);
    }
    // Absolute names.
    let abs = s.path("sparse.raw");
    s.same(&["info", "--output=json", abs.to_str().unwrap()]);
}

#[test]
fn info_errors_equal_qemu_img() {
    let s = Scratch::new();
    raw_images(&s);
    for args in [
        &["info", "missing.raw"][..],
        &["info", "--output=xml", "full.raw"],
        &["info", "--output", "xml", "full.raw"],
        &["info", "-f", "foo", "full.raw"],
        &["info"],
        &["info", "a", "b"],
        &["info", "-x", "full.raw"],
        &["info", "--bogus=3", "full.raw"],
        &["info", "--output"],
        &["info", "-f"],
        &["info", "-pU", "full.raw"],
    ] {
        let o = s.same(args);
        assert_eq!(o.rc, 1, "{args:?}");
        assert!(!o.stderr.is_empty());
    }
    // --image-opts is refused clearly (qemu-img would parse an option string).
    let o = s.diskimg(&["info", "--image-opts", "full.raw"]);
    assert_eq!(o.rc, 1);
    assert!(
        o.stderr.contains("--image-opts is not supported"),
        "{}",
        o.stderr
    );
}

#[test]
fn info_accepts_getopt_spellings() {
    let s = Scratch::new();
    raw_images(&s);
    s.same(&["info", "--outp=json", "full.raw"]);
    s.same(&["info", "-Uf", "raw", "full.raw"]);
    s.same(&["info", "full.raw", "--output=json"]);
    s.same(&["info", "--output=human", "--output=json", "full.raw"]);
    s.same(&["info", "-U", "--", "full.raw"]);
}
