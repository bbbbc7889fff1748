//! One binary, many names; global options; help and version.

mod cli_common;

use cli_common::Scratch;

#[test]
fn invoked_as_qemu_img_uses_its_prefix_and_no_command_word() {
    let s = Scratch::new();
    let o = s.same(&["info", "missing.qcow2"]);
    assert_eq!(o.rc, 1);
    assert_eq!(
        o.stderr,
        "qemu-img: Could not open 'missing.qcow2': Could not open 'missing.qcow2': No such file or directory\n"
    );
    s.same(&["info", "--bogus", "x"]);
    s.same(&[]);
    s.same(&["bogus"]);
    s.same(&["-x"]);
    s.same(&["--bogus"]);
}

#[test]
fn invoked_as_diskimg_uses_the_diskimg_prefix() {
    let s = Scratch::new();
    let o = s.diskimg(&["info", "missing.qcow2"]);
    assert_eq!(o.rc, 1);
    assert_eq!(
        o.stderr,
        "diskimg: Could not open 'missing.qcow2': Could not open 'missing.qcow2': No such file or directory\n"
    );
    let o = s.diskimg(&["info", "--bogus", "x"]);
    assert_eq!(o.rc, 1);
    assert_eq!(
        o.stderr,
        "diskimg info: unrecognized option '--bogus'\nTry 'diskimg info --help' for more info\n"
    );
}

#[test]
fn qemu_nbd_name_fails_clearly_and_qemu_io_name_is_diskimg_io() {
    let s = Scratch::new();
    let link = s.path("qemu-nbd");
    std::os::unix::fs::symlink(cli_common::diskimg_bin(), &link).unwrap();
    let o = s.run(&link, &["-c", "read 0 512", "x"]);
    assert_eq!(o.rc, 1);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("diskimg serve"), "{}", o.stderr);
    assert!(o.stderr.contains("not implemented"), "{}", o.stderr);
    let o = s.diskimg(&["serve"]);
    assert_eq!(o.rc, 1);
    assert!(o.stderr.contains("not implemented"), "{}", o.stderr);
    // qemu-io is diskimg io: qemu-io's open error, under its name.
    let link = s.path("qemu-io");
    std::os::unix::fs::symlink(cli_common::diskimg_bin(), &link).unwrap();
    let o = s.run(&link, &["-c", "read 0 512", "x"]);
    assert_eq!(o.rc, 1);
    assert_eq!(
        o.stderr,
        "qemu-io: can't open device x: Could not open 'x': No such file or directory\n"
    );
    let o = s.diskimg(&["io", "-c", "read 0 512", "x"]);
    assert_eq!(o.rc, 1);
    assert_eq!(
        o.stderr,
        "diskimg: can't open device x: Could not open 'x': No such file or directory\n"
    );
    // Without -c, the prompt reads stdin (empty here) and exits cleanly.
    let o = s.diskimg(&["io"]);
    assert_eq!((o.rc, o.stdout.as_str()), (0, "qemu-io> "));
    // Under the qemu-img name these words are not commands.
    for cmd in ["io", "serve"] {
        let o = s.same(&[cmd]);
        assert!(o.stderr.contains("Command not found"));
    }
}

#[test]
fn help_and_version_exit_zero() {
    let s = Scratch::new();
    for args in [
        &["--help"][..],
        &["-h"],
        &["--version"],
        &["-V"],
        &["info", "--help"],
        &["map", "--help"],
        &["convert", "--help"],
        &["compare", "--help"],
        &["info", "-h"],
    ] {
        let o = s.diskimg(args);
        assert_eq!(o.rc, 0, "{args:?}: {}", o.stderr);
        assert!(!o.stdout.is_empty(), "{args:?}");
        assert!(o.stderr.is_empty(), "{args:?}: {}", o.stderr);
        let o = s.ours(args);
        assert_eq!(o.rc, 0, "{args:?}");
        assert!(o.stdout.contains("qemu-img"), "{args:?}: {}", o.stdout);
    }
    let o = s.diskimg(&["info", "--help"]);
    assert!(o.stdout.contains("diskimg info [-f FMT"), "{}", o.stdout);
    // qemu-img's -V output starts with its name and version word.
    let o = s.ours(&["-V"]);
    assert!(o.stdout.starts_with("qemu-img version "), "{}", o.stdout);
}

#[test]
fn unimplemented_commands_fail_clearly() {
    let s = Scratch::new();
    let o = s.diskimg(&["amend", "x.qcow2"]);
    assert_eq!(o.rc, 1);
    assert_eq!(
        o.stderr,
        "diskimg: Command 'amend' is not implemented yet\n"
    );
}
