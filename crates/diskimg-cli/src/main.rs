//! The `diskimg` command: a drop-in for qemu-img.
//!
//! One binary, several names: invoked as `qemu-img` it behaves as qemu-img
//! (commands without the `diskimg` word, messages prefixed `qemu-img:`);
//! as `qemu-io` / `qemu-nbd` it stands for `diskimg io` / `diskimg serve`.

mod args;
mod bench;
mod check;
mod compare;
mod convert;
mod create;
mod ctx;
mod dd;
mod info;
mod io;
mod map;
mod measure;
mod open;
mod progress;
mod qjson;
mod resize;
mod size;

use std::ffi::OsString;

use ctx::{Ctx, Persona};

const VERSION_QEMU: &str = "10.0.2";

/// qemu-img's commands that diskimg does not implement yet.
const LATER: &[&str] = &["amend", "bitmap", "commit", "rebase", "snapshot"];

/// Prints the version. Under the qemu-img name the first line carries the
/// qemu-img version whose behaviour diskimg follows, since scripts parse
/// `qemu-img --version` to decide which options they may use.
fn version(ctx: &Ctx) {
    let ours = env!("CARGO_PKG_VERSION");
    if ctx.prog == "qemu-img" {
        println!("qemu-img version {VERSION_QEMU} (diskimg {ours})");
    } else {
        println!("diskimg version {ours} (follows qemu-img {VERSION_QEMU})");
    }
    println!("diskimg: virtual disk images in QEMU's formats; MIT OR Apache-2.0");
}

fn help(ctx: &Ctx) {
    let p = ctx.prog;
    print!(
        "{p}: disk image utility (diskimg {v}).  Usage:

  {p} [standard options] COMMAND [--help | command options]

Standard options:
  -h, --help
     display this help and exit
  -V, --version
     display version info and exit

Recognized commands (run {p} COMMAND --help for command-specific help):

  bench - Run a simple image benchmark
  check - Check basic image integrity (read-only: -r is not implemented yet)
  compare - Check if two images have the same contents
  convert - Copy one image to another (raw targets)
  create - Create a new disk image (qcow2, raw)
  dd - Copy input to output with optional format conversion
  info - Display information about image
  map - Dump image metadata
  measure - Calculate file size required for a new image
{extra}
Not implemented yet: {later}.

Supported image formats:

  qcow2 raw

Sizes take the suffixes k/K, M, G, T, P, E (powers of 1024); 'b' is ignored.
",
        v = env!("CARGO_PKG_VERSION"),
        extra = if p == "diskimg" {
            "  io - Exercise an image like qemu-io\n  serve - Export an image over NBD like qemu-nbd (not implemented yet)\n"
        } else {
            ""
        },
        later = LATER.join(", ")
    );
}

fn not_implemented(prog: &str, what: &str, instead: &str) -> i32 {
    eprintln!("{prog}: {what} is not implemented yet ({instead})");
    1
}

fn main() {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let persona = Persona::from_argv0(argv.first());
    let invoked = argv
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|| "diskimg".to_string());
    ctx::set_program(match persona {
        Persona::Diskimg => "diskimg",
        Persona::QemuImg => "qemu-img",
        Persona::QemuIo => "qemu-io",
        Persona::QemuNbd => "qemu-nbd",
    });
    let ctx = |prog: &'static str| Ctx {
        prog,
        invoked: invoked.clone(),
    };
    let rc = match persona {
        Persona::QemuIo => io::run(&ctx("qemu-io"), &argv[1.min(argv.len())..]),
        Persona::QemuNbd => {
            not_implemented("qemu-nbd", "diskimg serve", "qemu-nbd is diskimg serve")
        }
        Persona::QemuImg => run(&ctx("qemu-img"), &argv[1.min(argv.len())..], false),
        Persona::Diskimg => run(&ctx("diskimg"), &argv[1.min(argv.len())..], true),
    };
    std::process::exit(rc);
}

/// Runs a command line (without argv[0]).
fn run(ctx: &Ctx, argv: &[OsString], diskimg_words: bool) -> i32 {
    // Global options come before the command (getopt with "+"); each of
    // them either ends the run or is refused.
    let mut i = 0;
    if let Some(first) = argv.first() {
        let a = first.to_string_lossy();
        match a.as_ref() {
            "-h" | "--help" => {
                help(ctx);
                return 0;
            }
            "-V" | "--version" => {
                version(ctx);
                return 0;
            }
            "-T" | "--trace" => {
                ctx.error("--trace is not supported by diskimg");
                return 1;
            }
            "--" => i = 1,
            s if s.starts_with("--") => {
                let name = s.split('=').next().unwrap_or(s);
                if "--help".starts_with(name) && name.len() > 2 {
                    help(ctx);
                    return 0;
                }
                if "--version".starts_with(name) && name.len() > 2 {
                    version(ctx);
                    return 0;
                }
                eprintln!("{}: unrecognized option '{s}'", ctx.invoked);
                ctx.hint("");
                return 1;
            }
            s if s.starts_with('-') && s.len() > 1 => {
                let c = s.chars().nth(1).unwrap_or('?');
                eprintln!("{}: invalid option -- '{c}'", ctx.invoked);
                ctx.hint("");
                return 1;
            }
            _ => {}
        }
    }
    let Some(cmd) = argv.get(i) else {
        ctx.error("Not enough arguments");
        ctx.hint("");
        return 1;
    };
    let cmd = cmd.to_string_lossy().into_owned();
    let rest = &argv[i + 1..];
    match cmd.as_str() {
        "info" => info::run(ctx, rest),
        "map" => map::run(ctx, rest),
        "convert" => convert::run(ctx, rest),
        "resize" => resize::run(ctx, rest),
        "compare" => compare::run(ctx, rest),
        "check" => check::run(ctx, rest),
        "create" => create::run(ctx, rest),
        "measure" => measure::run(ctx, rest),
        "dd" => dd::run(ctx, rest),
        "bench" => bench::run(ctx, rest),
        "io" if diskimg_words => io::run(ctx, rest),
        "serve" if diskimg_words => {
            not_implemented(ctx.prog, "diskimg serve", "the qemu-nbd drop-in")
        }
        c if LATER.contains(&c) => {
            ctx.error(format!("Command '{c}' is not implemented yet"));
            1
        }
        c => {
            ctx.error(format!("Command not found: {c}"));
            ctx.hint("");
            1
        }
    }
}
