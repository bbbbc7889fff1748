//! Who the program is (diskimg, or qemu-img by another name) and how it
//! reports errors.

use std::ffi::OsString;
use std::path::Path;

/// What the binary was invoked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persona {
    /// `diskimg COMMAND ...`
    Diskimg,
    /// `qemu-img COMMAND ...` (a link named qemu-img)
    QemuImg,
    /// `qemu-io ...`: `diskimg io`
    QemuIo,
    /// `qemu-nbd ...`: `diskimg serve`
    QemuNbd,
}

impl Persona {
    /// The persona for `argv[0]`.
    pub fn from_argv0(argv0: Option<&OsString>) -> Persona {
        let name = argv0
            .and_then(|a| Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match name.as_str() {
            "qemu-img" => Persona::QemuImg,
            "qemu-io" => Persona::QemuIo,
            "qemu-nbd" => Persona::QemuNbd,
            _ => Persona::Diskimg,
        }
    }
}

/// The running program: its name in messages.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// "diskimg" or "qemu-img": the prefix of error messages.
    pub prog: &'static str,
    /// argv[0] as given: getopt's messages and the `Try ... --help` hint
    /// use it, as qemu-img's do (`Try '/usr/bin/qemu-img --help' ...`).
    pub invoked: String,
}

impl Ctx {
    /// Prints `<prog>: msg` on stderr.
    pub fn error(&self, msg: impl std::fmt::Display) {
        eprintln!("{}: {}", self.prog, msg);
    }

    /// Prints `<prog>: msg` and the `Try '<prog> CMD --help'` hint.
    pub fn error_with_hint(&self, cmd: &str, msg: impl std::fmt::Display) {
        eprintln!("{}: {}", self.prog, msg);
        self.hint(cmd);
    }

    /// Prints the `Try '<prog> CMD --help' for more info` line.
    pub fn hint(&self, cmd: &str) {
        if cmd.is_empty() {
            eprintln!("Try '{} --help' for more info", self.invoked);
        } else {
            eprintln!("Try '{} {} --help' for more info", self.invoked, cmd);
        }
    }
}

/// The program name of this run ("diskimg" or "qemu-img"), for messages
/// printed where no [`Ctx`] is at hand (library warnings).
static PROGRAM: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Records the program name; the first call wins.
pub fn set_program(prog: &'static str) {
    let _ = PROGRAM.set(prog);
}

/// Prints a library warning as qemu-img prints warnings:
/// `<prog>: warning: <first line>`, further lines as they are.
pub fn print_warning(msg: &str) {
    let prog = PROGRAM.get().copied().unwrap_or("diskimg");
    eprintln!("{prog}: warning: {msg}");
}
