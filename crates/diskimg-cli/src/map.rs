//! `map`: the allocation of every guest range, as qemu-img prints it.

use std::ffi::OsString;
use std::io::Write;

use diskimg::ops::map::{map, MapEntry, MapStyle};

use crate::args::{self, Output, Parsed};
use crate::ctx::Ctx;
use crate::open::{open_image, OpenHow};
use crate::size::{parse_size, SizeError};

const HELP: &str = "Usage:
Dump image metadata.  Usage:

  PROG map [-f FMT | --image-opts] [--object OBJDEF] [--output human|json]
        [--start-offset OFFSET] [--max-length LENGTH] [-U] FILENAME

Arguments:
  -h, --help
     print this help and exit
  -f, --format FMT
     specify FILENAME image format explicitly
  --image-opts
     indicates that FILENAME is a complete image specification
     instead of a file name (incompatible with --format)
  --start-offset OFFSET
  --max-length LENGTH
  --output human|json
     specify output format name (default human)
  -U, --force-share
     open image in shared mode for concurrent access
  --object OBJDEF
     QEMU user-creatable object (eg encryption key)
  FILENAME
     image file name (or specification with --image-opts)

";

/// Why printing stopped.
enum Stop {
    /// An error with its message (after the program prefix).
    Msg(String),
}

impl From<diskimg::Error> for Stop {
    fn from(e: diskimg::Error) -> Self {
        Stop::Msg(format!("Could not read file metadata: {}", e.message()))
    }
}

/// Runs `map`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("map")
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::opt("object", None, Some("object")))
        .arg(args::opt("output", None, Some("output")))
        .arg(args::opt("start-offset", None, Some("start-offset")))
        .arg(args::opt("max-length", None, Some("max-length")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "map", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let output = match args::output(ctx, "map", &m) {
        Ok(o) => o,
        Err(rc) => return rc,
    };
    let start = match args::get_str(&m, "start-offset").map(parse_size) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(SizeError::Invalid)) => {
            ctx.error(format!(
                "Invalid start offset specified: '{}'.",
                args::get_str(&m, "start-offset").unwrap_or("")
            ));
            return 1;
        }
        Some(Err(SizeError::Range)) => {
            ctx.error(format!(
                "Invalid start offset specified. Must be between 0 and {}.",
                i64::MAX
            ));
            return 1;
        }
    };
    let max_len = match args::get_str(&m, "max-length").map(parse_size) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(SizeError::Invalid)) => {
            ctx.error(format!(
                "Invalid max length specified: '{}'.",
                args::get_str(&m, "max-length").unwrap_or("")
            ));
            return 1;
        }
        Some(Err(SizeError::Range)) => {
            ctx.error(format!(
                "Invalid max length specified. Must be between 0 and {}.",
                i64::MAX
            ));
            return 1;
        }
    };
    let files = args::files(&m);
    if files.len() != 1 {
        ctx.error_with_hint("map", "Expecting one image file name");
        return 1;
    }
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{}': --image-opts is not supported by diskimg",
            files[0].to_string_lossy()
        ));
        return 1;
    }
    let how = OpenHow {
        backing: true,
        data_file: true,
        direct: false,
    };
    let top = match open_image(&files[0], args::get_str(&m, "format"), how) {
        Ok(d) => d,
        Err(msg) => {
            ctx.error(msg);
            return 1;
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let style = match output {
        Output::Json => MapStyle::Json,
        Output::Human => MapStyle::Human,
    };
    let io_err = |e: std::io::Error| Stop::Msg(format!("Could not write output: {e}"));
    let r = (|| -> Result<(), Stop> {
        match output {
            Output::Human => {
                writeln!(
                    out,
                    "{:<16}{:<16}{:<16}File",
                    "Offset", "Length", "Mapped to"
                )
                .map_err(io_err)?;
            }
            Output::Json => write!(out, "[").map_err(io_err)?,
        }
        let mut first = true;
        map(
            &top,
            start,
            max_len,
            style,
            |e: &MapEntry| -> Result<(), Stop> {
                match output {
                    Output::Json => {
                        if !first {
                            out.write_all(b",\n").map_err(io_err)?;
                        }
                        first = false;
                        write_json(&mut out, e).map_err(io_err)
                    }
                    Output::Human => write_human(&mut out, e),
                }
            },
        )?;
        if output == Output::Json {
            writeln!(out, "]").map_err(io_err)?;
        }
        Ok(())
    })();
    let flushed = out.flush();
    match r {
        Ok(()) => {
            if let Err(e) = flushed {
                ctx.error(format!("Could not write output: {e}"));
                return 1;
            }
            0
        }
        Err(Stop::Msg(msg)) => {
            drop(flushed);
            ctx.error(msg);
            1
        }
    }
}

fn write_json(out: &mut impl Write, e: &MapEntry) -> std::io::Result<()> {
    write!(
        out,
        "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}",
        e.start, e.length, e.depth, e.present, e.zero, e.data, e.compressed
    )?;
    if let Some(o) = e.offset {
        write!(out, ", \"offset\": {o}")?;
    }
    out.write_all(b"}")
}

/// C's `%#-16x`: `0x` prefix except for zero, left-aligned in 16.
fn hex16(v: u64) -> String {
    let s = if v == 0 {
        "0".to_string()
    } else {
        format!("{v:#x}")
    };
    format!("{s:<16}")
}

fn write_human(out: &mut impl Write, e: &MapEntry) -> Result<(), Stop> {
    if e.data && e.offset.is_none() {
        return Err(Stop::Msg(
            "File contains external, encrypted or compressed clusters.".to_string(),
        ));
    }
    if e.data && !e.zero {
        writeln!(
            out,
            "{}{}{}{}",
            hex16(e.start),
            hex16(e.length),
            hex16(e.offset.unwrap_or(0)),
            e.filename.as_deref().unwrap_or("")
        )
        .map_err(|err| Stop::Msg(format!("Could not write output: {err}")))?;
    }
    Ok(())
}
