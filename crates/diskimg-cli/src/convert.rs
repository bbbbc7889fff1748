//! `convert`: copy an image (through its chain) into a new raw image.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use diskimg::BlockDevice;

use diskimg::io::{FileStorage, OpenMode, Storage};
use diskimg::ops::concat::Concat;
use diskimg::ops::convert::{convert, ConvertOptions, Target, MAX_WORKERS};
use diskimg::{CacheMode, Format};

use crate::args::{self, Parsed};
use crate::create;
use crate::ctx::Ctx;
use crate::open::{open_image, OpenHow};
use crate::progress::Progress;
use crate::size::parse_size;

const HELP: &str = "Usage:
Copy one image to another with optional format conversion.  Usage:

  PROG convert [-f SRC_FMT|--image-opts] [-T SRC_CACHE] [--bitmaps [--skip-broken-bitmaps]]
        [-o TGT_OPTS|--target-image-opts] [-t TGT_CACHE] [-n]
        [-B BACKING_FILENAME [-F BACKING_FMT]]
        SRC_FILENAME [SRC_FILENAME2 [...]] TGT_FILENAME

Arguments:
  -h, --help
     print this help and exit
  -q, --quiet
     quiet operations
  -p, --progress
     show operation progress
  -f, --source-format SRC_FMT
     specify SRC_FILENAME source image format explicitly
  --source-image-opts
     indicates that SRC_FILENAME is a complete image specification
     instead of a file name (incompatible with --source-format)
  -l, --source-snapshot SNAPSHOT_PARAMS
     specify source snapshot parameters
  -T, --source-cache SRC_CACHE
     source image(s) cache mode (writeback)
  -O, --target-format TGT_FMT
     specify TGT_FILENAME image format (default is raw)
  --target-image-opts
     indicates that TGT_FILENAME is a complete image specification
     instead of a file name (incompatible with --output-format)
  -o, --target-options TGT_OPTS
     TARGET_FMT-specific options
  -c, --compress
     create compressed output image (qcow and qcow2 format only)
  -t, --target-cache TGT_CACHE
     cache mode when opening output image (unsafe)
  -B, --backing BACKING_FILENAME
     create output to be a CoW on top of BACKING_FILENAME
  -F, --backing-format BACKING_FMT
     specify BACKING_FILENAME image format explicitly
  -n, --no-create
     omit target volume creation (eg on rbd)
  --target-is-zero
     indicates that the target image reads as zeros (requires -n)
  -S, --sparse-size SPARSE_SIZE
     consecutive bytes that must be zero for the target to stay sparse
     there (default 4k; 0 fully allocates the target)
  --bitmaps
     also copy any persistent bitmaps present in source
  --skip-broken-bitmaps
     skip (do not error out) any broken bitmaps
  -U, --force-share
     open images in shared mode for concurrent access
  -r, --rate RATE
     I/O rate limit
  -m, --parallel NUM_COROUTINES
     specify parallelism (default 8)
  -C, --copy-range-offloading
     use copy_range offloading
  --salvage
     treat unreadable areas of the source as zeros
  -W, --oob-writes
     enable out-of-order writes to improve performance
  --object OBJDEF
     QEMU user-creatable object (eg encryption key)
  SRC_FILENAME
     source image file name (or specification with --image-opts)
  TGT_FILENAME
     target (output) image file name

";

/// Options diskimg's convert does not implement: (id, how to name it).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("source-snapshot", "-l"),
    ("bitmaps", "--bitmaps"),
    ("skip-broken-bitmaps", "--skip-broken-bitmaps"),
    ("rate", "-r"),
    ("copy-range", "-C"),
    ("salvage", "--salvage"),
    ("target-image-opts", "--target-image-opts"),
    ("object", "--object"),
];

/// Runs `convert`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("convert")
        .arg(args::flag("quiet", Some('q'), Some("quiet")))
        .arg(args::flag("progress", Some('p'), Some("progress")))
        .arg(args::opt("source-format", Some('f'), Some("source-format")))
        .arg(args::flag("image-opts", None, Some("source-image-opts")).alias("image-opts"))
        .arg(args::opt(
            "source-snapshot",
            Some('l'),
            Some("source-snapshot"),
        ))
        .arg(args::opt("source-cache", Some('T'), Some("source-cache")))
        .arg(args::opt("target-format", Some('O'), Some("target-format")))
        .arg(args::flag(
            "target-image-opts",
            None,
            Some("target-image-opts"),
        ))
        .arg(args::opt_repeated(
            "target-options",
            Some('o'),
            Some("target-options"),
        ))
        .arg(args::flag("compress", Some('c'), Some("compress")))
        .arg(args::opt("target-cache", Some('t'), Some("target-cache")))
        .arg(args::opt("backing", Some('B'), Some("backing")))
        .arg(args::opt(
            "backing-format",
            Some('F'),
            Some("backing-format"),
        ))
        .arg(args::flag("no-create", Some('n'), Some("no-create")))
        .arg(args::flag("target-is-zero", None, Some("target-is-zero")))
        .arg(args::opt("sparse-size", Some('S'), Some("sparse-size")))
        .arg(args::flag("bitmaps", None, Some("bitmaps")))
        .arg(args::flag(
            "skip-broken-bitmaps",
            None,
            Some("skip-broken-bitmaps"),
        ))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::opt("rate", Some('r'), Some("rate")))
        .arg(args::opt("parallel", Some('m'), Some("parallel")))
        .arg(args::flag(
            "copy-range",
            Some('C'),
            Some("copy-range-offloading"),
        ))
        .arg(args::flag("salvage", None, Some("salvage")))
        .arg(args::flag("oob-writes", Some('W'), Some("oob-writes")))
        .arg(args::opt("object", None, Some("object")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "convert", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let quiet = m.get_flag("quiet");
    let sparse_size = match args::get_str(&m, "sparse-size") {
        None => 4096,
        Some(s) => match parse_size(s) {
            Ok(v) if v.is_multiple_of(512) && v <= 16 << 20 => v,
            _ => {
                ctx.error(
                    "Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).",
                );
                return 1;
            }
        },
    };
    let workers = match args::get_str(&m, "parallel") {
        None => 8,
        Some(s) => match s.trim().parse::<i64>() {
            Ok(v) if (1..=MAX_WORKERS as i64).contains(&v) => v as usize,
            Ok(_) => {
                ctx.error(format!(
                    "Invalid number of coroutines specified. Must be between 1 and {MAX_WORKERS}."
                ));
                return 1;
            }
            Err(_) => {
                ctx.error(format!("Invalid number of coroutines specified: '{s}'."));
                return 1;
            }
        },
    };
    let source_cache = match args::cache_mode(&m, "source-cache") {
        Ok(c) => c,
        Err(c) => {
            ctx.error(format!("Invalid source cache option: {c}"));
            return 1;
        }
    };
    // qemu-img writes convert targets with cache=unsafe unless -t names
    // another mode: metadata is written back, nothing waits for the disk.
    let target_cache = match args::get_str(&m, "target-cache").map(str::parse::<CacheMode>) {
        None => CacheMode::Unsafe,
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            ctx.error(e.message());
            return 1;
        }
    };
    let files = args::files(&m);
    if files.len() < 2 {
        ctx.error("Must specify image file name");
        return 1;
    }
    let no_create = m.get_flag("no-create");
    let target_is_zero_flag = m.get_flag("target-is-zero");
    if target_is_zero_flag && !no_create {
        ctx.error("--target-is-zero requires use of -n flag");
        return 1;
    }
    for (id, name) in UNSUPPORTED {
        let given = m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        if given {
            ctx.error(format!(
                "convert option {name} is not implemented in diskimg yet"
            ));
            return 1;
        }
    }
    let out_fmt = args::get_str(&m, "target-format").unwrap_or("raw");
    let out_format = match out_fmt {
        "raw" => Format::Raw,
        "qcow2" => Format::Qcow2,
        "qed" | "add-cow" => {
            ctx.error(format!(
                "{out_fmt} output is not implemented yet; diskimg convert writes raw and qcow2 targets"
            ));
            return 1;
        }
        other => {
            if other.parse::<diskimg::Format>().is_ok()
                || matches!(
                    other.parse::<diskimg::Format>().map_err(|e| e.kind()),
                    Err(diskimg::ErrorKind::Unsupported)
                )
            {
                ctx.error(format!("{other} output is not supported by diskimg"));
            } else {
                ctx.error(format!("Unknown file format '{other}'"));
            }
            return 1;
        }
    };
    let opt_strings: Vec<String> = m
        .get_many::<String>("target-options")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    let split: Vec<(String, String, bool)> = opt_strings
        .iter()
        .flat_map(|s| create::split_opts(s))
        .collect();
    if split
        .iter()
        .any(|(k, _, has_eq)| (k == "help" || k == "?") && !has_eq)
    {
        create::print_options_help(out_fmt, true);
        return 0;
    }
    let parsed = match create::parse_option_strings(out_format, &opt_strings) {
        Ok(p) => p,
        Err(msg) => {
            ctx.error(msg);
            return 1;
        }
    };
    let mut backing_file = parsed.get_str("backing_file").map(str::to_string);
    if let Some(b) = args::get_str(&m, "backing") {
        backing_file = Some(b.to_string());
    }
    let mut backing_fmt = parsed.get_str("backing_fmt").map(str::to_string);
    if let Some(f) = args::get_str(&m, "backing-format") {
        backing_fmt = Some(f.to_string());
    }
    if backing_file.is_some() && out_format == Format::Raw {
        ctx.error("Backing file not supported for file format 'raw'");
        return 1;
    }
    if backing_file.is_some() && backing_fmt.is_none() {
        ctx.error("Use of backing file requires explicit backing format");
        return 1;
    }
    let compress = m.get_flag("compress");
    if compress && out_format != Format::Qcow2 {
        ctx.error("Compression not supported for this file format");
        return 1;
    }
    let (srcs, dst) = files.split_at(files.len() - 1);
    let dst = &dst[0];
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{}': --image-opts is not supported by diskimg",
            srcs[0].to_string_lossy()
        ));
        return 1;
    }
    let how = OpenHow {
        backing: true,
        data_file: true,
        direct: source_cache.direct(),
    };
    // Several sources are read back to back as one image.
    let mut opened = Vec::with_capacity(srcs.len());
    for s in srcs {
        match open_image(s, args::get_str(&m, "source-format"), how) {
            Ok(d) => opened.push(d),
            Err(msg) => {
                ctx.error(msg);
                return 1;
            }
        }
    }
    let in_source = opened.iter().any(|d| target_in_source(d, Path::new(dst)));
    let src: Arc<dyn BlockDevice> = if opened.len() == 1 {
        opened.remove(0)
    } else {
        match Concat::new(opened) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                ctx.error(e.message());
                return 1;
            }
        }
    };
    let size = src.size();
    let dst_name = dst.to_string_lossy().into_owned();
    // QEMU's image locks refuse a target that is one of the source's files;
    // diskimg checks it explicitly, before truncating anything.
    if in_source {
        let lock = format!(
            "Failed to get \"write\" lock\nIs another process using the image [{dst_name}]?"
        );
        if no_create {
            ctx.error(format!("Could not open '{dst_name}': {lock}"));
        } else {
            ctx.error(format!(
                "{dst_name}: error while converting {out_fmt}: {lock}"
            ));
        }
        return 1;
    }
    let dst_path = Path::new(dst);
    let in_error = |msg: &str| format!("{dst_name}: error while converting {out_fmt}: {msg}");
    let mut created = false;
    if !no_create {
        let made = if out_format == Format::Raw {
            FileStorage::create(dst_path)
                .and_then(|t| t.set_len(size).map(|()| t))
                .map(|_| ())
        } else {
            create::build_create_options(out_format, &parsed, size, &backing_file, &backing_fmt)
                .map_err(diskimg::Error::invalid_argument)
                .and_then(|o| diskimg::create(dst_path, &o))
        };
        if let Err(e) = made {
            remove_partial(dst_path);
            ctx.error(in_error(e.message()));
            return 1;
        }
        created = true;
    }
    let fail = |msg: String| -> i32 {
        if created {
            remove_partial(dst_path);
        }
        ctx.error(msg);
        1
    };
    // A raw target is written as a plain file; any other through its
    // driver.
    enum Out {
        Raw(FileStorage),
        Image(Arc<dyn BlockDevice>),
    }
    let out = if out_format == Format::Raw && (created || !no_create) {
        match FileStorage::open_with(dst_path, OpenMode::ReadWrite, target_cache.direct()) {
            Ok(t) => Out::Raw(t),
            Err(e) => return fail(format!("Could not open '{dst_name}': {}", e.message())),
        }
    } else {
        let mut opts = diskimg::OpenOptions {
            format: Some(out_format),
            writable: true,
            ..diskimg::OpenOptions::default()
        };
        target_cache.apply(&mut opts);
        match diskimg::open(dst_path, &opts) {
            Ok(d) => {
                if d.size() < size {
                    return fail("output file is smaller than input file".into());
                }
                Out::Image(d)
            }
            Err(e) => return fail(format!("Could not open '{dst_name}': {}", e.message())),
        }
    };
    if let Out::Raw(t) = &out {
        if no_create {
            match t.len() {
                Ok(len) if len < size => {
                    return fail("output file is smaller than input file".into())
                }
                Ok(_) => {}
                Err(e) => return fail(format!("Could not open '{dst_name}': {}", e.message())),
            }
        }
    }
    let opts = ConvertOptions {
        sparse_size,
        workers,
        out_of_order: m.get_flag("oob-writes"),
        target_is_zero: created || target_is_zero_flag,
        compress,
        copy_top_only: backing_file.is_some(),
    };
    let target = match &out {
        Out::Raw(t) => Target::Raw(t),
        Out::Image(d) => Target::Image(d),
    };
    let mut progress = Progress::new(m.get_flag("progress") && !quiet);
    let result = convert(&src, target, &opts, &mut |done, total| {
        progress.set(if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        })
    })
    .and_then(|()| match &out {
        // Image targets always write back their metadata.
        Out::Image(d) => d.flush(),
        Out::Raw(_) if target_cache.ignore_flush() => Ok(()),
        Out::Raw(t) => t.flush(),
    });
    progress.finish();
    match result {
        Ok(()) => 0,
        Err(e) => {
            drop(out);
            fail(e.message().to_string())
        }
    }
}

fn remove_partial(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether `target` is a file of the source chain (an image or data file).
fn target_in_source(src: &Arc<dyn BlockDevice>, target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(t) = std::fs::metadata(target) else {
        return false;
    };
    let same = |name: &str| {
        std::fs::metadata(name).is_ok_and(|m| m.dev() == t.dev() && m.ino() == t.ino())
    };
    let mut cur = Some(src.clone());
    while let Some(dev) = cur {
        if same(dev.storage().name()) || same(dev.data_storage().name()) {
            return true;
        }
        cur = dev.backing().cloned();
    }
    false
}
