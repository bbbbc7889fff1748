//! `compare`: whether two images have the same guest contents.
//! Exit codes as qemu-img: 0 identical, 1 different, 2 open error,
//! 3 allocation-status error, 4 read error.

use std::ffi::OsString;

use diskimg::ops::compare::{compare, CompareError, Side, Verdict};

use crate::args::{self, Parsed};
use crate::ctx::Ctx;
use crate::open::{open_image, OpenHow};
use crate::progress::Progress;

const HELP: &str = "Usage:
Check if two images have the same contents.  Usage:

  PROG compare [--image-opts | [-f FMT] [-F FMT]] [-s]
        [-T CACHE] [-U] [--object OBJDEF] FILENAME1 FILENAME2

Arguments:
  -h, --help
     print this help and exit
  -q, --quiet
     quiet operation
  -p, --progress
     show operation progress
  -f, --a-format FMT
     specify FILENAME1 image format explicitly
  -F, --b-format FMT
     specify FILENAME2 image format explicitly
  --image-opts
     indicates that FILENAMEs are complete image specifications
     instead of file names (incompatible with --a-format and --b-format)
  -s, --strict
     strict mode, also check if sizes are equal
  -T, --cache CACHE_MODE
     images caching mode (writeback)
  -U, --force-share
     open images in shared mode for concurrent access
  --object OBJDEF
     QEMU user-creatable object (eg encryption key)
  FILENAME1, FILENAME2
     image files (or specifications) to compare

";

/// Runs `compare`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("compare")
        .arg(args::flag("quiet", Some('q'), Some("quiet")))
        .arg(args::flag("progress", Some('p'), Some("progress")))
        .arg(args::opt("a-format", Some('f'), Some("a-format")))
        .arg(args::opt("b-format", Some('F'), Some("b-format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::flag("strict", Some('s'), Some("strict")))
        .arg(args::opt("cache", Some('T'), Some("cache")))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::opt("object", None, Some("object")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "compare", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let quiet = m.get_flag("quiet");
    let strict = m.get_flag("strict");
    let files = args::files(&m);
    if files.len() != 2 {
        ctx.error_with_hint("compare", "Expecting two image file names");
        return 1;
    }
    let cache = match args::cache_mode(&m, "cache") {
        Ok(c) => c,
        Err(c) => {
            ctx.error(format!("Invalid source cache option: {c}"));
            return 2;
        }
    };
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{}': --image-opts is not supported by diskimg",
            files[0].to_string_lossy()
        ));
        return 2;
    }
    let how = OpenHow {
        backing: true,
        data_file: true,
        direct: cache.direct(),
    };
    let a = match open_image(&files[0], args::get_str(&m, "a-format"), how) {
        Ok(d) => d,
        Err(msg) => {
            ctx.error(msg);
            return 2;
        }
    };
    let b = match open_image(&files[1], args::get_str(&m, "b-format"), how) {
        Ok(d) => d,
        Err(msg) => {
            ctx.error(msg);
            return 2;
        }
    };
    let mut progress = Progress::new(m.get_flag("progress") && !quiet);
    progress.set(0.0);
    let r = compare(&a, &b, strict, &mut |f| progress.set(f));
    let name = |s: Side| match s {
        Side::A => files[0].to_string_lossy().into_owned(),
        Side::B => files[1].to_string_lossy().into_owned(),
    };
    let say = |msg: &str| {
        if !quiet {
            println!("{msg}");
        }
    };
    let rc = match r {
        Ok(c) => {
            if c.size_mismatch && !matches!(c.verdict, Verdict::StrictSizeMismatch) {
                say("Warning: Image size mismatch!");
            }
            match c.verdict {
                Verdict::Identical => {
                    progress.set(1.0);
                    say("Images are identical.");
                    0
                }
                Verdict::ContentMismatch(off) => {
                    say(&format!("Content mismatch at offset {off}!"));
                    1
                }
                Verdict::StrictSizeMismatch => {
                    say("Strict mode: Image size mismatch!");
                    1
                }
                Verdict::StrictStatusMismatch(off) => {
                    say(&format!("Strict mode: Offset {off} block status mismatch!"));
                    1
                }
            }
        }
        Err(CompareError::Status(side, _e)) => {
            ctx.error(format!("Sector allocation test failed for {}", name(side)));
            3
        }
        Err(CompareError::Read(side, off, e)) => {
            ctx.error(format!(
                "Error while reading offset {off} of {}: {}",
                name(side),
                e.message()
            ));
            4
        }
    };
    progress.finish();
    rc
}
