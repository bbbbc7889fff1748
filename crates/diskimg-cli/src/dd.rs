//! `dd`: copy an image into a new one, as `qemu-img dd`.
//!
//! Operands are `bs=`, `count=`, `skip=`, `if=`, `of=` (the last of a
//! repeated operand wins). The output is always created (raw unless `-O`),
//! with the size of what will be copied, and written through the
//! library's `BlockDevice::write_at`.
//!
//! qemu-img dd's quirks, copied on purpose (see the reference, §4.14):
//! - `count` caps the *input end offset* at `count * bs` from the start of
//!   the input, not the amount copied after `skip`: `bs=1M skip=1 count=2`
//!   copies 1 MiB;
//! - a `skip` past that end prints `INPUT: cannot skip to specified offset`,
//!   creates an empty output and still exits 0;
//! - `count` and `skip` are plain numbers (`0x`/octal accepted, no size
//!   suffix), `bs` is a size with suffixes, between 1 and 2^31 - 1;
//! - the input size is the image's virtual size (a raw file rounded up to
//!   whole sectors), and so is the output's.
//!
//! Memory stays bounded: a block larger than [`CHUNK`] is copied in
//! chunks (the bytes copied and their offsets are the same).

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use diskimg::{BlockDevice, CreateOptions, Format, OpenOptions};

use crate::args::{self, Parsed};
use crate::create::QEMU_DRIVERS;
use crate::ctx::Ctx;
use crate::open::{open_image, OpenHow};
use crate::size::{parse_number, parse_size, SizeError};

const HELP: &str = "Usage:
Copy input to output with optional format conversion.  Usage:

  PROG dd [-f FMT|--image-opts] [-O OUTPUT_FMT] [-U]
        [bs=BLOCK_SIZE] [count=BLOCKS] if=INPUT of=OUTPUT

Arguments:
  -h, --help
     print this help and exit
  -f, --format FMT
     specify format for INPUT explicitly
  --image-opts
     indicates that INPUT is a complete image specification
     instead of a file name (incompatible with --format)
  -O, --output-format OUTPUT_FMT
     format of the OUTPUT (default raw)
  -U, --force-share
     open images in shared mode for concurrent access
  bs=BLOCK_SIZE[kKMGTP]
     size of I/O block (default 512)
  count=COUNT
     number of blocks to convert (default whole INPUT)
  if=INPUT
     input file name (or image specification with --image-opts)
  of=OUTPUT
     output file name to create

";

/// The largest buffer dd uses; larger blocks are copied in pieces.
const CHUNK: u64 = 4 << 20;

/// The operands after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Operands {
    bs: u64,
    count: Option<u64>,
    skip: Option<u64>,
    input: Option<String>,
    output: Option<String>,
}

/// Parses the operands in order, as qemu-img does; the error is the
/// message to print.
fn parse_operands(ops: &[String]) -> Result<Operands, String> {
    let mut o = Operands {
        bs: 512,
        count: None,
        skip: None,
        input: None,
        output: None,
    };
    for arg in ops {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(format!("unrecognized operand {arg}"));
        };
        let range = |what: &str, min: u64, max: u64| {
            format!("Invalid {what} specified. Must be between {min} and {max}.")
        };
        match name {
            "bs" => match parse_size(value) {
                Ok(n) if (1..=i32::MAX as u64).contains(&n) => o.bs = n,
                Ok(_) | Err(SizeError::Range) => return Err(range("bs", 1, i32::MAX as u64)),
                Err(SizeError::Invalid) => return Err(format!("Invalid bs specified: '{value}'.")),
            },
            "count" | "skip" => {
                let n = match parse_number(value) {
                    Ok(n) => n,
                    Err(SizeError::Range) => return Err(range(name, 0, i64::MAX as u64)),
                    Err(SizeError::Invalid) => {
                        return Err(format!("Invalid {name} specified: '{value}'."))
                    }
                };
                if name == "count" {
                    o.count = Some(n);
                } else {
                    o.skip = Some(n);
                }
            }
            "if" => o.input = Some(value.to_string()),
            "of" => o.output = Some(value.to_string()),
            other => return Err(format!("unrecognized operand {other}")),
        }
    }
    Ok(o)
}

/// What to copy: the output's size and the input offset to start at
/// (`None` when the skip lies past the end: nothing is copied).
fn plan(size: u64, o: &Operands) -> (u64, Option<u64>) {
    let bs = o.bs;
    let mut end = size;
    if let Some(count) = o.count {
        if let Some(c) = count.checked_mul(bs).filter(|&c| c <= i64::MAX as u64) {
            if c < end {
                end = c;
            }
        }
    }
    match o.skip {
        Some(skip) => match skip.checked_mul(bs).filter(|&s| s <= i64::MAX as u64) {
            Some(start) if start <= end => (end - start, Some(start)),
            _ => (0, None),
        },
        None => (end, Some(0)),
    }
}

/// Runs `dd`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("dd")
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::opt("output-format", Some('O'), Some("output-format")))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::opt("object", None, Some("object")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "dd", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    if m.get_one::<String>("object").is_some() {
        ctx.error("--object is not supported by diskimg");
        return 1;
    }
    let ops: Vec<String> = args::files(&m)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let o = match parse_operands(&ops) {
        Ok(o) => o,
        Err(msg) => {
            ctx.error(msg);
            return 1;
        }
    };
    let (Some(input), Some(output)) = (o.input.clone(), o.output.clone()) else {
        ctx.error("Must specify both input and output files");
        return 1;
    };
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{input}': --image-opts is not supported by diskimg"
        ));
        return 1;
    }
    let how = OpenHow {
        backing: true,
        data_file: true,
        direct: false,
    };
    let src = match open_image(
        OsString::from(&input).as_os_str(),
        args::get_str(&m, "format"),
        how,
    ) {
        Ok(d) => d,
        Err(msg) => {
            ctx.error(msg);
            return 1;
        }
    };
    let out_fmt = args::get_str(&m, "output-format").unwrap_or("raw");
    let format = match out_fmt {
        "raw" => Format::Raw,
        "qcow2" => Format::Qcow2,
        other if QEMU_DRIVERS.contains(&other) => {
            ctx.error(format!(
                "{output}: error while creating output image: creating '{other}' images is not implemented by diskimg yet (qcow2 and raw are)"
            ));
            return 1;
        }
        _ => {
            ctx.error("Unknown file format");
            return 1;
        }
    };

    let (out_size, start) = plan(src.size(), &o);
    if let Err(e) = diskimg::create(&output, &CreateOptions::new(format, out_size)) {
        ctx.error(format!(
            "{output}: error while creating output image: {}",
            e.message()
        ));
        return 1;
    }
    let dst = match diskimg::open(
        Path::new(&output),
        &OpenOptions {
            format: Some(format),
            writable: true,
            warnings: Some(Arc::new(crate::ctx::print_warning)),
            ..OpenOptions::default()
        },
    ) {
        Ok(d) => d,
        Err(e) => {
            ctx.error(format!("Could not open '{output}': {}", e.message()));
            return 1;
        }
    };
    let Some(start) = start else {
        // qemu-img warns, leaves the empty output and succeeds.
        ctx.error(format!("{input}: cannot skip to specified offset"));
        return 0;
    };
    match copy(src.as_ref(), dst.as_ref(), start, out_size, o.bs) {
        Ok(()) => 0,
        Err(msg) => {
            ctx.error(msg);
            1
        }
    }
}

/// Copies `len` bytes from `src` at `start` to `dst` at 0, `bs` bytes at a
/// time (in chunks of at most [`CHUNK`]), then flushes.
fn copy(
    src: &dyn BlockDevice,
    dst: &dyn BlockDevice,
    start: u64,
    len: u64,
    bs: u64,
) -> Result<(), String> {
    let piece = bs.min(CHUNK);
    let mut buf = vec![0u8; piece.min(len).max(1) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(piece) as usize;
        let b = &mut buf[..n];
        src.read_at(b, start + done)
            .map_err(|e| format!("error while reading from input image file: {}", e.message()))?;
        dst.write_at(b, done)
            .map_err(|e| format!("error while writing to output image file: {}", e.message()))?;
        done += n as u64;
    }
    dst.flush()
        .map_err(|e| format!("error while writing to output image file: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(a: &[&str]) -> Result<Operands, String> {
        parse_operands(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn operands_as_qemu_img_reads_them() {
        let o = ops(&["bs=1M", "count=2", "skip=1", "if=a", "of=b", "bs=64k"]).unwrap();
        assert_eq!((o.bs, o.count, o.skip), (65536, Some(2), Some(1)));
        assert_eq!(
            ops(&["bs=0"]).unwrap_err(),
            "Invalid bs specified. Must be between 1 and 2147483647."
        );
        assert_eq!(ops(&["bs=1x"]).unwrap_err(), "Invalid bs specified: '1x'.");
        assert_eq!(
            ops(&["count=1k"]).unwrap_err(),
            "Invalid count specified: '1k'."
        );
        assert_eq!(
            ops(&["count=-1"]).unwrap_err(),
            "Invalid count specified. Must be between 0 and 9223372036854775807."
        );
        assert_eq!(ops(&["skip="]).unwrap_err(), "Invalid skip specified: ''.");
        assert_eq!(ops(&["count=0x10"]).unwrap().count, Some(16));
        assert_eq!(ops(&["count=010"]).unwrap().count, Some(8));
        assert_eq!(ops(&["foo=1"]).unwrap_err(), "unrecognized operand foo");
        assert_eq!(ops(&["foo"]).unwrap_err(), "unrecognized operand foo");
        assert_eq!(ops(&["=5"]).unwrap_err(), "unrecognized operand ");
    }

    #[test]
    fn count_caps_the_input_end() {
        let mb = 1 << 20;
        let mut o = ops(&["bs=1M", "skip=1", "count=2"]).unwrap();
        assert_eq!(plan(5_000_192, &o), (mb, Some(mb)));
        o.skip = Some(2);
        o.count = Some(1);
        assert_eq!(plan(5_000_192, &o), (0, None));
        o.count = None;
        o.skip = Some(4);
        assert_eq!(plan(5_000_192, &o), (5_000_192 - 4 * mb, Some(4 * mb)));
        o.skip = Some(u64::MAX / 2);
        assert_eq!(plan(5_000_192, &o), (0, None));
        o.skip = None;
        o.count = Some(u64::MAX / 2);
        assert_eq!(plan(5_000_192, &o), (5_000_192, Some(0)));
        o.count = Some(0);
        assert_eq!(plan(5_000_192, &o), (0, Some(0)));
    }
}
