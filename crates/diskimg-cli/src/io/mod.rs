//! `diskimg io` (and `qemu-io` by that name): a drop-in for qemu-io 10.
//!
//! The command line opens one image and runs the `-c` commands in order,
//! or, without `-c`, reads commands from standard input after a
//! `qemu-io> ` prompt. Commands print qemu-io's lines on stdout and its
//! messages on stderr; the exit status is 1 when any command failed or the
//! image could not be opened, else 0.
//!
//! qemu-io's asynchronous commands (`aio_read`, `aio_write`) complete
//! before the next command runs here, so their reports come at once;
//! `aio_flush` has nothing left to wait for.
//!
//! Layout: [`cli`] the command line and the command loop, [`table`] the
//! command table and dispatch, [`session`] the open image and
//! open/close/reopen, one file per command family ([`read`], [`write`],
//! [`modify`], [`query`], [`misc`]), [`request`] the checked guest I/O,
//! [`output`] and [`num`] qemu-io's formats, [`getopt`] GNU getopt,
//! [`args`] arguments with qemu-io's messages, [`help_text`] long help.

/// Prints to stdout as qemu-io's printf does: a closed pipe does not stop
/// the program (qemu-io ignores SIGPIPE and printf's failures).
macro_rules! out {
    ($($t:tt)*) => {
        $crate::io::output::emit(&format!($($t)*))
    };
}

/// [`out!`] with a newline.
macro_rules! outln {
    () => {
        $crate::io::output::emit("\n")
    };
    ($($t:tt)*) => {{
        let mut s = format!($($t)*);
        s.push('\n');
        $crate::io::output::emit(&s)
    }};
}

mod args;
mod cli;
mod getopt;
mod help_text;
mod misc;
mod modify;
mod num;
mod output;
mod query;
mod read;
mod request;
mod session;
mod table;
mod write;

pub use cli::run;
