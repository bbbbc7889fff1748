//! `resize`: change an image's virtual size, as `qemu-img resize`.
//!
//! The steps follow qemu-img: the size argument (`[+-]SIZE`) and the
//! preallocation mode are checked before the image is opened; the new size
//! must be positive; shrinking needs `--shrink` (refused with qemu-img's
//! error and warning otherwise); then the format driver resizes.

use std::ffi::OsString;

use diskimg::Preallocation;

use crate::args::{self, Parsed};
use crate::ctx::Ctx;
use crate::open::open_image_writable;
use crate::size::parse_size;

const HELP: &str = "Usage:
Resize the image to the new size.  Usage:

  PROG resize [-f FMT | --image-opts] [--preallocation PREALLOC] [--shrink]
        [--object OBJECTDEF] [-q] FILENAME [+-]SIZE[bkKMGTPE]

Arguments:
  -h, --help
     print this help and exit
  -q, --quiet
     quiet operation
  -f, --format FMT
     specify FILENAME format explicitly
  --image-opts
     indicates that FILENAME is a complete image specification
   instead of a file name (incompatible with --format)
  --shrink
     allow operation when new size is smaller than original
  --preallocation PREALLOC
     specify preallocation type for the new areas
  --object OBJDEF
     QEMU user-creatable object (eg encryption key)
  FILENAME
     image file (specification) to resize
  [+-]SIZE[bkKMGTPE]
     new image size or amount by which to shrink/grow,
     with optional suffix (1024-based multiplies)

";

pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("resize")
        .arg(args::flag("quiet", Some('q'), Some("quiet")))
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::flag("shrink", None, Some("shrink")))
        .arg(args::opt("preallocation", None, Some("preallocation")))
        .arg(args::opt("object", None, Some("object")));
    let help = HELP.replace("PROG", ctx.prog);
    // As qemu-img, a negative relative size ("-1G") is taken off the end
    // before the options are parsed, so it is not read as an option.
    let mut argv = argv.to_vec();
    let negative = argv
        .last()
        .and_then(|a| a.to_str())
        .is_some_and(|a| a.len() > 1 && a.starts_with('-') && a.as_bytes()[1].is_ascii_digit());
    let negative_size = if negative { argv.pop() } else { None };
    let m = match args::parse(ctx, "resize", cmd, &argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let mut files = args::files(&m);
    files.extend(negative_size);
    if files.len() > 2 {
        ctx.error_with_hint("resize", "Extra argument(s) in command line");
        return 1;
    }
    if files.len() != 2 {
        ctx.error_with_hint("resize", "Expecting image file name and size");
        return 1;
    }
    if args::get_str(&m, "object").is_some() {
        ctx.error("resize option --object is not implemented in diskimg yet");
        return 1;
    }
    let file = &files[0];
    let size_arg = files[1].to_string_lossy();
    let (sign, digits) = match size_arg.as_bytes().first() {
        Some(b'+') => (1i8, &size_arg[1..]),
        Some(b'-') => (-1i8, &size_arg[1..]),
        _ => (0i8, &size_arg[..]),
    };
    let amount = match parse_size(digits) {
        Ok(v) => v,
        // Past i64::MAX: qemu-img's signed arithmetic makes it negative.
        Err(crate::size::SizeError::Range) => u64::MAX,
        Err(_) => {
            ctx.error(
                "Parameter 'size' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively.",
            );
            return 1;
        }
    };
    let prealloc = match args::get_str(&m, "preallocation") {
        None => Preallocation::Off,
        Some(p) => match Preallocation::parse(p) {
            Some(v) => v,
            None => {
                ctx.error(format!("Invalid preallocation mode '{p}'"));
                return 1;
            }
        },
    };
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{}': --image-opts is not supported by diskimg",
            file.to_string_lossy()
        ));
        return 1;
    }
    let dev = match open_image_writable(file, args::get_str(&m, "format"), false) {
        Ok(d) => d,
        Err(msg) => {
            ctx.error(msg);
            return 1;
        }
    };
    // qemu-img computes in signed 64 bits: an amount past i64::MAX, or a
    // result at or below zero, is "not positive".
    let current = dev.size() as i64;
    let amount = i64::try_from(amount).unwrap_or(-1);
    let total = match sign {
        0 => Some(amount),
        1 => current.checked_add(amount),
        _ => current.checked_sub(amount),
    };
    let total = match total {
        Some(t) if t > 0 && amount >= 0 => t as u64,
        _ => {
            ctx.error("New image size must be positive");
            return 1;
        }
    };
    if total < dev.size() && !m.get_flag("shrink") {
        ctx.error("Use the --shrink option to perform a shrink operation.");
        crate::ctx::print_warning(
            "Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.",
        );
        return 1;
    }
    if let Err(e) = dev.truncate(total, prealloc).and_then(|()| dev.flush()) {
        ctx.error(e.message());
        return 1;
    }
    if !m.get_flag("quiet") {
        println!("Image resized.");
    }
    0
}
