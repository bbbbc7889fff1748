//! qemu-io's command line, the `-c` commands and the interactive loop.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};

use super::getopt::{getopt, Item, LongOpt};
use super::session::{valid_aio, OpenFlags, OpenSpec, Session};
use super::table::run_line;
use crate::ctx::Ctx;

/// The prompt. qemu-io builds it from its program name; diskimg keeps
/// `qemu-io> ` under either name, since scripts that drive the prompt
/// (and filters such as QEMU's iotests) look for exactly that.
const PROMPT: &str = "qemu-io> ";

/// fgets(line, 1024, stdin) reads at most 1023 bytes: a longer line
/// arrives as several commands. Copied on purpose.
const MAX_LINE: usize = 1023;

const OPT_OBJECT: char = '\u{100}';
const OPT_IMAGE_OPTS: char = '\u{101}';

const LONGS: &[LongOpt] = &[
    ("help", false, 'h'),
    ("version", false, 'V'),
    ("cmd", true, 'c'),
    ("format", true, 'f'),
    ("read-only", false, 'r'),
    ("snapshot", false, 's'),
    ("nocache", false, 'n'),
    ("copy-on-read", false, 'C'),
    ("misalign", false, 'm'),
    ("native-aio", false, 'k'),
    ("aio", true, 'i'),
    ("discard", true, 'd'),
    ("cache", true, 't'),
    ("trace", true, 'T'),
    ("object", true, OPT_OBJECT),
    ("image-opts", false, OPT_IMAGE_OPTS),
    ("force-share", false, 'U'),
];

fn usage(name: &str, diskimg: bool) {
    out!(
        "Usage: {name} [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See '{name} -c help' for information on available commands.

{bottom}
",
        bottom = if diskimg {
            "diskimg: virtual disk images in QEMU's formats; -s, -C and tracing are not supported."
        } else {
            "This qemu-io is diskimg's; -s, -C and tracing are not supported."
        }
    );
}

/// Runs qemu-io's command line (the arguments after the program name, or
/// after `diskimg io`) and returns the exit status.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let diskimg = ctx.prog != "qemu-io";
    let name = if diskimg { "diskimg io" } else { "qemu-io" };
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut s = Session {
        prog: ctx.prog,
        image: None,
        image_opts: false,
        quit: false,
    };
    let p = getopt(name, &args, "hVc:d:f:rsnCmki:t:T:U", LONGS);
    let mut flags = OpenFlags::default();
    let mut format: Option<String> = None;
    let mut cmds: Vec<String> = Vec::new();
    for it in &p.items {
        match it {
            Item::Opt('s', _) => flags.snapshot = true,
            Item::Opt('n', _) => flags.set_nocache(),
            Item::Opt('C', _) => flags.copy_on_read = true,
            Item::Opt('d', Some(m)) => {
                if !flags.set_discard(m) {
                    s.error(format!("Invalid discard option: {m}"));
                    return 1;
                }
            }
            Item::Opt('f', Some(f)) => format = Some(f.clone()),
            Item::Opt('c', Some(c)) => cmds.push(c.clone()),
            Item::Opt('r', _) => flags.read_only = true,
            // Buffer alignment and the AIO engine do not change what
            // diskimg reads or writes.
            Item::Opt('m' | 'k' | 'U', _) => {}
            Item::Opt('i', Some(m)) => {
                if !valid_aio(m) {
                    s.error(format!("Invalid aio option: {m}"));
                    return 1;
                }
            }
            Item::Opt('t', Some(m)) => {
                if !flags.set_cache(m) {
                    s.error(format!("Invalid cache option: {m}"));
                    return 1;
                }
            }
            Item::Opt('T', _) => s.error("warning: tracing (-T) is not supported by diskimg"),
            Item::Opt('V', _) => {
                let ours = env!("CARGO_PKG_VERSION");
                if diskimg {
                    outln!(
                        "diskimg io version {ours} (follows qemu-io {})",
                        crate::VERSION_QEMU
                    );
                } else {
                    outln!("qemu-io version {} (diskimg {ours})", crate::VERSION_QEMU);
                }
                outln!("diskimg: virtual disk images in QEMU's formats; MIT OR Apache-2.0");
                return 0;
            }
            Item::Opt('h', _) => {
                usage(name, diskimg);
                return 0;
            }
            Item::Opt(OPT_OBJECT, Some(o)) => {
                // Objects only carry secrets for encrypted images, which
                // diskimg cannot decrypt; anything else is refused.
                if !o.starts_with("secret,") {
                    s.error(format!(
                        "--object {o}: only secret objects are accepted by diskimg"
                    ));
                    return 1;
                }
            }
            Item::Opt(OPT_IMAGE_OPTS, _) => s.image_opts = true,
            Item::Bad(m) => {
                eprintln!("{m}");
                usage(name, diskimg);
                return 1;
            }
            Item::Opt(..) => {}
        }
    }
    if p.operands.len() > 1 {
        usage(name, diskimg);
        return 1;
    }
    if format.is_some() && s.image_opts {
        s.error("--image-opts and -f are mutually exclusive");
        return 1;
    }
    if let Some(file) = p.operands.first() {
        let mut spec = OpenSpec::default();
        let opened = if s.image_opts {
            if let Err(m) = spec.add_options(file, true, &mut flags) {
                s.error(m);
                return 1;
            }
            s.open(None, spec, flags)
        } else {
            spec.driver = format;
            s.open(Some(file), spec, flags)
        };
        if opened.is_err() {
            return 1;
        }
    }
    let mut failed = false;
    if !cmds.is_empty() {
        for c in &cmds {
            if s.quit {
                break;
            }
            failed |= run_line(&mut s, c).is_err();
        }
    } else {
        failed = interactive(&mut s);
    }
    let _ = std::io::stdout().flush();
    // Whatever was written is flushed on exit; a failure here is
    // reported but, as in qemu-io, does not change the exit status.
    let _ = s.close();
    i32::from(failed)
}

/// Reads commands from stdin after a prompt until EOF or `quit`; true
/// when any failed.
fn interactive(s: &mut Session) -> bool {
    let tty = std::io::stdin().is_terminal();
    let mut input = std::io::stdin().lock();
    let mut failed = false;
    while !s.quit {
        out!("{PROMPT}");
        let _ = std::io::stdout().flush();
        let Some(line) = fetch_line(&mut input) else {
            if tty {
                // Ctrl-D at the prompt: qemu-io ends the prompt's line.
                outln!();
            }
            break;
        };
        failed |= run_line(s, &line).is_err();
    }
    failed
}

/// One line as qemu-io's fgets reads it: up to [`MAX_LINE`] bytes, the
/// newline removed; `None` at end of input.
fn fetch_line(input: &mut impl BufRead) -> Option<String> {
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buf = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if buf.is_empty() {
            break;
        }
        let room = MAX_LINE - line.len();
        let take = buf.len().min(room);
        match buf[..take].iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..=i]);
                input.consume(i + 1);
                break;
            }
            None => {
                line.extend_from_slice(&buf[..take]);
                input.consume(take);
                if line.len() >= MAX_LINE {
                    break;
                }
            }
        }
    }
    if line.is_empty() {
        return None;
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    Some(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_as_fgets_reads_them() {
        let mut r = std::io::Cursor::new(b"read 0 1\n\nlength".to_vec());
        assert_eq!(fetch_line(&mut r).as_deref(), Some("read 0 1"));
        assert_eq!(fetch_line(&mut r).as_deref(), Some(""));
        assert_eq!(fetch_line(&mut r).as_deref(), Some("length"));
        assert_eq!(fetch_line(&mut r), None);
        let long = format!("{}\n", "a".repeat(1030));
        let mut r = std::io::Cursor::new(long.into_bytes());
        assert_eq!(fetch_line(&mut r).map(|l| l.len()), Some(1023));
        assert_eq!(fetch_line(&mut r).map(|l| l.len()), Some(7));
        assert_eq!(fetch_line(&mut r), None);
    }
}
