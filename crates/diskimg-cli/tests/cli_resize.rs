//! `resize` against qemu-img: the same messages and exit codes on the same
//! images, and resized images that `qemu-img check` finds clean and that
//! read as qemu-img's resized copies do.

mod cli_common;

use cli_common::Scratch;

fn qemu_io(s: &Scratch, args: &[&str]) {
    let o = std::process::Command::new("qemu-io")
        .current_dir(s.dir.path())
        .args(args)
        .output()
        .expect("qemu-io is installed (Debian package qemu-utils)");
    assert!(o.status.success(), "{args:?}");
}

/// Two identical images, one for each program.
fn pair(s: &Scratch, fmt: &str, size: &str, opts: &[&str]) {
    for name in ["d", "q"] {
        let file = format!("{name}.{fmt}");
        let mut args = vec!["create", "-q", "-f", fmt];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[&file, size]);
        assert_eq!(s.qemu(&args).rc, 0);
        qemu_io(s, &["-f", fmt, "-c", "write -P 0x33 0 700k", &file]);
    }
}

#[test]
fn resizes_like_qemu_img() {
    let s = Scratch::new();
    let cases: &[(&str, &[&str], &[&str])] = &[
        ("qcow2", &[], &["+1M"]),
        ("qcow2", &[], &["3G"]),
        ("qcow2", &["-o", "cluster_size=512"], &["300M"]),
        ("qcow2", &[], &["--shrink", "512K"]),
        ("qcow2", &[], &["--shrink", "-300k"]),
        ("qcow2", &[], &["--preallocation=metadata", "8M"]),
        ("qcow2", &[], &["--preallocation=falloc", "8M"]),
        ("qcow2", &[], &["--preallocation=full", "8M"]),
        ("qcow2", &["-o", "extended_l2=on"], &["5000k"]),
        ("qcow2", &["-o", "compat=0.10"], &["+2M"]),
        ("raw", &[], &["-f", "raw", "+1M"]),
        ("raw", &[], &["-f", "raw", "--shrink", "1000"]),
        ("raw", &[], &["-f", "raw", "--preallocation=full", "4M"]),
    ];
    for (fmt, create_opts, resize) in cases {
        pair(&s, fmt, "1M", create_opts);
        let run = |who: &str| -> Vec<String> {
            let mut args: Vec<String> = vec!["resize".into()];
            args.extend(resize.iter().map(|a| a.to_string()));
            // The file goes before the size.
            let size = args.pop().unwrap();
            args.push(format!("{who}.{fmt}"));
            args.push(size);
            args
        };
        let dargs = run("d");
        let qargs = run("q");
        let d = s.ours(&dargs.iter().map(String::as_str).collect::<Vec<_>>());
        let q = s.qemu(&qargs.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(
            (d.rc, &d.stdout),
            (q.rc, &q.stdout),
            "{resize:?}: {d:?} {q:?}"
        );
        let dfile = format!("d.{fmt}");
        let qfile = format!("q.{fmt}");
        if *fmt == "qcow2" {
            let c = s.qemu(&["check", &dfile]);
            assert_eq!(c.rc, 0, "{resize:?}: {c:?}");
        }
        let vs = |f: &str| {
            s.qemu(&["info", "--output=json", "-f", fmt, f])
                .stdout
                .lines()
                .find(|l| l.starts_with("    \"virtual-size\""))
                .map(str::to_string)
        };
        assert_eq!(vs(&dfile), vs(&qfile), "{resize:?}");
        let cmp = s.qemu(&["compare", "-f", fmt, "-F", fmt, &dfile, &qfile]);
        assert_eq!(cmp.rc, 0, "{resize:?}: {cmp:?}");
    }
}

#[test]
fn refusals_match_qemu_img() {
    let s = Scratch::new();
    pair(&s, "qcow2", "1M", &[]);
    for args in [
        &["resize", "d.qcow2"][..],
        &["resize", "d.qcow2", "512K"],
        &["resize", "d.qcow2", "--", "-2M"],
        &["resize", "d.qcow2", "abc"],
        &["resize", "--preallocation=bogus", "d.qcow2", "2M"],
        &["resize", "nonexistent", "2M"],
        &["resize", "d.qcow2", "0"],
        &["resize", "d.qcow2", "+10E"],
        &["resize", "d.qcow2", "1000"],
    ] {
        let before = s.read("d.qcow2");
        s.same(args);
        assert!(s.read("d.qcow2") == before, "{args:?} changed the image");
    }
    // Raw: metadata preallocation is refused, shrinking needs --shrink.
    assert_eq!(s.qemu(&["create", "-q", "-f", "raw", "r.raw", "1M"]).rc, 0);
    s.same(&[
        "resize",
        "-f",
        "raw",
        "--preallocation=metadata",
        "r.raw",
        "3M",
    ]);
    s.same(&["resize", "r.raw", "1000"]);
}
