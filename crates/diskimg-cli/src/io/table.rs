//! The command table: qemu-io's commands with their names, short names,
//! argument counts and help texts; splitting a command line into words;
//! dispatch with qemu-io's checks (a file is open, the argument count, write
//! permission) before a command runs.

use super::session::{self, Session};
use super::{help_text, misc, modify, query, read, write};

/// A command failed; qemu-io then exits with status 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed;

/// What a command returns.
pub type CmdResult = Result<(), Failed>;

/// A command's handler: the session and the words of the command line
/// (`argv[0]` is the command name as typed).
pub type Handler = fn(&mut Session, &[String]) -> CmdResult;

/// One command.
pub struct Cmd {
    /// The name.
    pub name: &'static str,
    /// The short name (`r` for `read`).
    pub alt: Option<&'static str>,
    /// Fewest arguments; -1 for no check.
    pub argmin: i32,
    /// Most arguments; -1 for no limit.
    pub argmax: i32,
    /// The argument synopsis, when the command has one.
    pub args: Option<&'static str>,
    /// The one-line description.
    pub oneline: &'static str,
    /// The long help printed after the synopsis by `help CMD`.
    pub help: Option<&'static str>,
    /// Runs without an open image and never needs one (`help`, `quit`).
    pub global: bool,
    /// May run without an open image (`open`, `sleep`).
    pub nofile_ok: bool,
    /// Needs write permission on the image.
    pub write: bool,
    /// The handler.
    pub run: Handler,
}

const fn cmd(name: &'static str, run: Handler, oneline: &'static str) -> Cmd {
    Cmd {
        name,
        alt: None,
        argmin: 0,
        argmax: 0,
        args: None,
        oneline,
        help: None,
        global: false,
        nofile_ok: false,
        write: false,
        run,
    }
}

/// Every command, sorted by name as `help` lists them.
pub static COMMANDS: &[Cmd] = &[
    Cmd {
        nofile_ok: true,
        ..cmd(
            "abort",
            misc::abort_f,
            "simulate a program crash using abort(3)",
        )
    },
    cmd(
        "aio_flush",
        write::aio_flush_f,
        "completes all outstanding aio requests",
    ),
    Cmd {
        argmin: 2,
        argmax: -1,
        args: Some("[-Ciqrv] [-P pattern] off len [len..]"),
        help: Some(help_text::AIO_READ_HELP),
        ..cmd(
            "aio_read",
            read::aio_read_f,
            "asynchronously reads a number of bytes",
        )
    },
    Cmd {
        argmin: 2,
        argmax: -1,
        args: Some("[-Cfiqruz] [-P pattern] off len [len..]"),
        help: Some(help_text::AIO_WRITE_HELP),
        write: true,
        ..cmd(
            "aio_write",
            write::aio_write_f,
            "asynchronously writes a number of bytes",
        )
    },
    Cmd {
        alt: Some("a"),
        argmin: 1,
        argmax: 2,
        args: Some("offset [count]"),
        ..cmd(
            "alloc",
            query::alloc_f,
            "checks if offset is allocated in the file",
        )
    },
    Cmd {
        argmin: 2,
        argmax: 2,
        args: Some("event tag"),
        ..cmd(
            "break",
            misc::break_f,
            "sets a breakpoint on event and tags the stopped request as tag",
        )
    },
    Cmd {
        alt: Some("c"),
        ..cmd("close", session::close_f, "close the current open file")
    },
    Cmd {
        alt: Some("d"),
        argmin: 2,
        argmax: -1,
        args: Some("[-Cq] off len"),
        help: Some(help_text::DISCARD_HELP),
        write: true,
        ..cmd(
            "discard",
            modify::discard_f,
            "discards a number of bytes at a specified offset",
        )
    },
    Cmd {
        alt: Some("f"),
        ..cmd(
            "flush",
            modify::flush_f,
            "flush all in-core file state to disk",
        )
    },
    Cmd {
        alt: Some("?"),
        argmax: 1,
        args: Some("[command]"),
        global: true,
        ..cmd("help", misc::help_f, "help for one or all commands")
    },
    Cmd {
        alt: Some("i"),
        ..cmd(
            "info",
            query::info_f,
            "prints information about the current file",
        )
    },
    Cmd {
        alt: Some("l"),
        ..cmd(
            "length",
            query::length_f,
            "gets the length of the current file",
        )
    },
    Cmd {
        args: Some(""),
        ..cmd("map", query::map_f, "prints the allocated areas of a file")
    },
    Cmd {
        alt: Some("o"),
        argmin: 1,
        argmax: -1,
        args: Some("[-rsCnkU] [-t cache] [-d discard] [-o options] [path]"),
        help: Some(OPEN_HELP),
        nofile_ok: true,
        ..cmd("open", session::open_f, "open the file specified by path")
    },
    Cmd {
        alt: Some("q"),
        argmin: -1,
        argmax: -1,
        global: true,
        ..cmd("quit", session::quit_f, "exit the program")
    },
    Cmd {
        alt: Some("r"),
        argmin: 2,
        argmax: -1,
        args: Some("[-abCqrv] [-P pattern [-s off] [-l len]] off len"),
        help: Some(help_text::READ_HELP),
        ..cmd(
            "read",
            read::read_f,
            "reads a number of bytes at a specified offset",
        )
    },
    Cmd {
        argmin: 2,
        argmax: -1,
        args: Some("[-Cqrv] [-P pattern] off len [len..]"),
        help: Some(help_text::READV_HELP),
        ..cmd(
            "readv",
            read::readv_f,
            "reads a number of bytes at a specified offset",
        )
    },
    Cmd {
        argmin: 1,
        argmax: 1,
        args: Some("tag"),
        ..cmd(
            "remove_break",
            misc::remove_break_f,
            "remove a breakpoint by tag",
        )
    },
    Cmd {
        argmax: -1,
        args: Some("[(-r|-w)] [-c cache] [-o options]"),
        help: Some(REOPEN_HELP),
        ..cmd(
            "reopen",
            session::reopen_f,
            "reopens an image with new options",
        )
    },
    Cmd {
        argmin: 1,
        argmax: 1,
        args: Some("tag"),
        ..cmd(
            "resume",
            misc::resume_f,
            "resumes the request tagged as tag",
        )
    },
    Cmd {
        argmin: 1,
        argmax: 1,
        args: Some("signal"),
        help: Some(help_text::SIGRAISE_HELP),
        nofile_ok: true,
        ..cmd("sigraise", misc::sigraise_f, "raises a signal")
    },
    Cmd {
        argmin: 1,
        argmax: 1,
        nofile_ok: true,
        ..cmd(
            "sleep",
            misc::sleep_f,
            "waits for the given value in milliseconds",
        )
    },
    Cmd {
        alt: Some("t"),
        argmin: 1,
        argmax: 3,
        args: Some("[-m prealloc_mode] off"),
        write: true,
        ..cmd(
            "truncate",
            modify::truncate_f,
            "truncates the current file at the given offset",
        )
    },
    Cmd {
        argmin: 1,
        argmax: 1,
        args: Some("tag"),
        ..cmd(
            "wait_break",
            misc::wait_break_f,
            "waits for the suspension of a request",
        )
    },
    Cmd {
        alt: Some("w"),
        argmin: 2,
        argmax: -1,
        args: Some("[-bcCfnqruz] [-P pattern | -s source_file] off len"),
        help: Some(help_text::WRITE_HELP),
        write: true,
        ..cmd(
            "write",
            write::write_f,
            "writes a number of bytes at a specified offset",
        )
    },
    Cmd {
        argmin: 2,
        argmax: -1,
        args: Some("[-Cfqr] [-P pattern] off len [len..]"),
        help: Some(help_text::WRITEV_HELP),
        write: true,
        ..cmd(
            "writev",
            write::writev_f,
            "writes a number of bytes at a specified offset",
        )
    },
    Cmd {
        alt: Some("zap"),
        argmin: 3,
        argmax: 4,
        args: Some("offset len [len..]"),
        ..cmd(
            "zone_append",
            misc::zone_f,
            "append write a number of bytes at a specified offset",
        )
    },
    Cmd {
        alt: Some("zc"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..cmd(
            "zone_close",
            misc::zone_f,
            "close a range of zones in zone block device",
        )
    },
    Cmd {
        alt: Some("zf"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..cmd(
            "zone_finish",
            misc::zone_f,
            "finish a range of zones in zone block device",
        )
    },
    Cmd {
        alt: Some("zo"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..cmd(
            "zone_open",
            misc::zone_f,
            "explicit open a range of zones in zone block device",
        )
    },
    Cmd {
        alt: Some("zrp"),
        argmin: 2,
        argmax: 2,
        args: Some("offset number"),
        ..cmd("zone_report", misc::zone_f, "report zone information")
    },
    Cmd {
        alt: Some("zrs"),
        argmin: 2,
        argmax: 2,
        args: Some("offset len"),
        ..cmd(
            "zone_reset",
            misc::zone_f,
            "reset a zone write pointer in zone block device",
        )
    },
];

const OPEN_HELP: &str = "
 opens a new file in the requested mode

 Example:
 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached

 Opens a file for subsequent use by all of the other qemu-io commands.
 -r, -- open file read-only
 -s, -- use snapshot file
 -C, -- use copy-on-read
 -n, -- disable host cache, short for -t none
 -U, -- force shared permissions
 -k, -- use kernel AIO implementation (Linux only, prefer use of -i)
 -i, -- use AIO mode (threads, native or io_uring)
 -t, -- use the given cache mode for the image
 -d, -- use the given discard mode for the image
 -o, -- options to be given to the block driver
";

const REOPEN_HELP: &str = "
 Changes the open options of an already opened image

 Example:
 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image

 -r, -- Reopen the image read-only
 -w, -- Reopen the image read-write
 -c, -- Change the cache mode to the given value
 -o, -- Changes block driver options (cf. 'open' command)

";

/// The command named `name` or with that short name.
pub fn find(name: &str) -> Option<&'static Cmd> {
    COMMANDS
        .iter()
        .find(|c| c.name == name || c.alt == Some(name))
}

/// `NAME ARGS -- ONELINE`, as a command prints it after bad options.
pub fn usage_line(name: &str) -> String {
    match find(name) {
        Some(c) => format!(
            "{} {} -- {}\n",
            c.name,
            c.args.unwrap_or("(null)"),
            c.oneline
        ),
        None => String::new(),
    }
}

/// The line `help` prints for a command (`NAME [ARGS ]-- ONELINE`).
pub fn help_line(shown: &str, c: &Cmd) -> String {
    match c.args {
        Some(a) => format!("{shown} {a} -- {}\n", c.oneline),
        None => format!("{shown} -- {}\n", c.oneline),
    }
}

/// Splits a command line into words at spaces (only spaces, as qemu-io
/// does: a tab is part of a word); runs of spaces make no empty words.
pub fn words(line: &str) -> Vec<String> {
    line.split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Runs one command line.
pub fn run_line(s: &mut Session, line: &str) -> CmdResult {
    let argv = words(line);
    let Some(first) = argv.first() else {
        return Ok(());
    };
    let Some(c) = find(first) else {
        eprintln!("command \"{first}\" not found");
        return Err(Failed);
    };
    if !c.global && !c.nofile_ok && s.image.is_none() {
        eprintln!("no file open, try 'help open'");
        return Err(Failed);
    }
    let n = argv.len() as i64 - 1;
    let (min, max) = (i64::from(c.argmin), i64::from(c.argmax));
    if n < min || (max != -1 && n > max) {
        if max == -1 {
            eprintln!("bad argument count {n} to {first}, expected at least {min} arguments");
        } else if min == max {
            eprintln!("bad argument count {n} to {first}, expected {min} arguments");
        } else {
            eprintln!(
                "bad argument count {n} to {first}, expected between {min} and {max} arguments"
            );
        }
        return Err(Failed);
    }
    if c.write {
        if let Some(img) = &s.image {
            if !img.writable() {
                s.error("Block node is read-only");
                return Err(Failed);
            }
        }
    }
    (c.run)(s, &argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        for w in COMMANDS.windows(2) {
            assert!(w[0].name < w[1].name, "{} before {}", w[0].name, w[1].name);
        }
        for c in COMMANDS {
            if let Some(a) = c.alt {
                assert!(COMMANDS.iter().filter(|d| d.alt == Some(a)).count() == 1);
            }
        }
    }

    #[test]
    fn words_split_at_spaces_only() {
        assert_eq!(words("  read  0\t1 512 "), vec!["read", "0\t1", "512"]);
        assert!(words("   ").is_empty());
    }

    #[test]
    fn lookup_by_short_name() {
        assert_eq!(find("r").map(|c| c.name), Some("read"));
        assert_eq!(find("?").map(|c| c.name), Some("help"));
        assert!(find("bogus").is_none());
    }
}
