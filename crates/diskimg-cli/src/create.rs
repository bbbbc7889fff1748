//! `create`: make a new qcow2 or raw image, as `qemu-img create`.
//!
//! The steps and messages follow qemu-img: `-o` options are checked for
//! their names and types first, then the backing file is opened (for its
//! size, and to refuse a missing backing format), then the `Formatting`
//! line is printed with every option in QemuOpts order, then the format's
//! own checks run and the image is written. Errors after the option
//! parsing are prefixed with the file name (`qemu-img: t.qcow2: ...`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use diskimg::format::qcow2::header::CompressionType;
use diskimg::{CreateOptions, ErrorKind, Format, OpenOptions, Preallocation, Qcow2CreateOptions};

use crate::args::{self, Parsed};
use crate::ctx::Ctx;
use crate::size::{parse_size, SizeError};

const HELP: &str = "Usage:
Create and format new image file.  Usage:

  PROG create [-f FMT] [-o FMT_OPTS] [-b BACKING_FILENAME [-F BACKING_FMT]]
        [--object OBJDEF] [-u] FILENAME [SIZE[bkKMGTPE]]

Arguments:
  -h, --help
     print this help and exit
  -q, --quiet
     quiet operations
  -f, --format FMT
     specifies format of the new image, default is raw
  -o, --options FMT_OPTS
     format-specific options ('-o list' for list)
  -b, --backing BACKING_FILENAME
     stack new image on top of BACKING_FILENAME
     (for formats which support stacking)
  -F, --backing-format BACKING_FMT
     specify format of BACKING_FILENAME
  -u, --backing-unsafe
     do not fail if BACKING_FMT can not be read
  --object OBJDEF
     QEMU user-creatable object (eg encryption key)
  FILENAME
     image file to create.  It will be overridden if exists
  SIZE
     image size with optional suffix (multiplies in 1024)
     SIZE is required unless BACKING_IMG is specified,
     in which case it will be the same as size of BACKING_IMG

";

/// The type of a creation option, as QemuOpts parses it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Num,
    Size,
}

/// One creation option: name, type, help text.
type OptDesc = (&'static str, Kind, &'static str);

/// qcow2's options, in QemuOpts order (the order of the Formatting line).
const QCOW2_OPTS: &[OptDesc] = &[
    (
        "encryption",
        Kind::Bool,
        "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
    ),
    (
        "encrypt.format",
        Kind::Str,
        "Encrypt the image, format choices: 'aes', 'luks'",
    ),
    (
        "encrypt.key-secret",
        Kind::Str,
        "ID of secret providing qcow AES key or LUKS passphrase",
    ),
    (
        "encrypt.cipher-alg",
        Kind::Str,
        "Name of encryption cipher algorithm",
    ),
    (
        "encrypt.cipher-mode",
        Kind::Str,
        "Name of encryption cipher mode",
    ),
    (
        "encrypt.ivgen-alg",
        Kind::Str,
        "Name of IV generator algorithm",
    ),
    (
        "encrypt.ivgen-hash-alg",
        Kind::Str,
        "Name of IV generator hash algorithm",
    ),
    (
        "encrypt.hash-alg",
        Kind::Str,
        "Name of encryption hash algorithm",
    ),
    (
        "encrypt.iter-time",
        Kind::Num,
        "Time to spend in PBKDF in milliseconds",
    ),
    ("cluster_size", Kind::Size, "qcow2 cluster size"),
    ("extended_l2", Kind::Bool, "Extended L2 tables"),
    (
        "preallocation",
        Kind::Str,
        "Preallocation mode (allowed values: off, metadata, falloc, full)",
    ),
    (
        "compression_type",
        Kind::Str,
        "Compression method used for image cluster compression",
    ),
    ("size", Kind::Size, "Virtual disk size"),
    (
        "compat",
        Kind::Str,
        "Compatibility level (v2 [0.10] or v3 [1.1])",
    ),
    ("backing_file", Kind::Str, "File name of a base image"),
    ("backing_fmt", Kind::Str, "Image format of the base image"),
    ("data_file", Kind::Str, "File name of an external data file"),
    (
        "data_file_raw",
        Kind::Bool,
        "The external data file must stay valid as a raw image",
    ),
    ("lazy_refcounts", Kind::Bool, "Postpone refcount updates"),
    (
        "refcount_bits",
        Kind::Num,
        "Width of a reference count entry in bits",
    ),
];

/// Defaults QemuOpts prints when an option is not given.
const QCOW2_DEFAULTS: &[(&str, &str)] = &[
    ("cluster_size", "65536"),
    ("extended_l2", "off"),
    ("compression_type", "zlib"),
    ("lazy_refcounts", "off"),
    ("refcount_bits", "16"),
];

/// The file protocol's options, appended to the format's.
const FILE_OPTS: &[OptDesc] = &[
    ("size", Kind::Size, "Virtual disk size"),
    (
        "nocow",
        Kind::Bool,
        "Turn off copy-on-write (valid only on btrfs)",
    ),
    (
        "preallocation",
        Kind::Str,
        "Preallocation mode (allowed values: off, falloc, full)",
    ),
    (
        "extent_size_hint",
        Kind::Size,
        "Extent size hint for the image file, 0 to disable",
    ),
];

const RAW_OPTS: &[OptDesc] = &[("size", Kind::Size, "Virtual disk size")];

/// QEMU's block driver names (QAPI BlockdevDriver), accepted as backing_fmt.
pub(crate) const QEMU_DRIVERS: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "blkreplay",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "file",
    "snapshot-access",
    "ftp",
    "ftps",
    "gluster",
    "host_cdrom",
    "host_device",
    "http",
    "https",
    "io_uring",
    "iscsi",
    "luks",
    "nbd",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "nvme-io_uring",
    "parallels",
    "preallocate",
    "qcow",
    "qcow2",
    "qed",
    "quorum",
    "raw",
    "rbd",
    "replication",
    "ssh",
    "throttle",
    "vdi",
    "vhdx",
    "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user",
    "virtio-blk-vhost-vdpa",
    "vmdk",
    "vpc",
    "vvfat",
];

fn usage_text(list: &[OptDesc]) -> String {
    let mut s = String::new();
    for (name, kind, help) in list {
        let ty = match kind {
            Kind::Str => "str",
            Kind::Bool => "bool (on/off)",
            Kind::Num => "num",
            Kind::Size => "size",
        };
        let left = format!("{name}=<{ty}>");
        s.push_str(&format!("  {left:<22} - {help}\n"));
    }
    s
}

/// `-o help`: the format's options, or with a file name the format's and
/// the protocol's together, sorted, as qemu-img lists them.
/// Prints `-o help` for `fmt` (with the file protocol's options when a
/// file name was given), as qemu-img.
pub fn print_options_help(fmt: &str, with_file: bool) {
    let own: &[OptDesc] = if fmt == "qcow2" { QCOW2_OPTS } else { RAW_OPTS };
    let mut list: Vec<OptDesc> = own.to_vec();
    if with_file {
        for d in FILE_OPTS {
            if !list.iter().any(|o| o.0 == d.0) {
                list.push(*d);
            }
        }
    }
    list.sort_by(|a, b| a.0.cmp(b.0));
    if with_file {
        print!("Supported options:\n{}", usage_text(&list));
    } else {
        print!(
            "Supported {fmt} options:\n{}\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n",
            usage_text(&list)
        );
    }
}

/// Splits a QemuOpts string: `a=1,b=x,,y,c` (`,,` is a comma in a value;
/// a bare name means `name=on`).
pub fn split_opts(s: &str) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    for p in parts {
        if p.is_empty() {
            continue;
        }
        match p.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string(), true)),
            None => out.push((p.clone(), "on".to_string(), false)),
        }
    }
    out
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// A number as QEMU's `qemu_strtou64` with base 0 reads it: `0x` hex,
/// a leading `0` octal, else decimal.
fn parse_num(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if v.len() > 1 && v.starts_with('0') {
        u64::from_str_radix(&v[1..], 8).ok()
    } else {
        v.parse().ok()
    }
}

/// A parsed `-o` value: the text printed in the Formatting line and, for
/// typed options, the value.
pub(crate) struct OptVal {
    /// The value as QemuOpts prints it.
    pub(crate) shown: String,
    /// The value of a number or size option.
    pub(crate) num: u64,
    /// The value of a bool option.
    pub(crate) flag: bool,
}

/// Prints `FILE: msg` and returns 1.
fn fail(ctx: &Ctx, file: &str, msg: impl std::fmt::Display) -> i32 {
    ctx.error(format!("{file}: {msg}"));
    1
}

/// Runs `create`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("create")
        .arg(args::flag("quiet", Some('q'), Some("quiet")))
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::opt_repeated("options", Some('o'), Some("options")))
        .arg(args::opt("backing", Some('b'), Some("backing")))
        .arg(args::opt(
            "backing-format",
            Some('F'),
            Some("backing-format"),
        ))
        .arg(args::flag(
            "backing-unsafe",
            Some('u'),
            Some("backing-unsafe"),
        ))
        .arg(args::opt("object", None, Some("object")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "create", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let quiet = m.get_flag("quiet");
    let unsafe_backing = m.get_flag("backing-unsafe");
    let fmt = args::get_str(&m, "format").unwrap_or("raw").to_string();
    let opt_strings: Vec<String> = m
        .get_many::<String>("options")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    let files = args::files(&m);
    let file = files.first().map(|f| f.to_string_lossy().into_owned());

    let format = match fmt.as_str() {
        "qcow2" => Format::Qcow2,
        "raw" => Format::Raw,
        other => {
            let shown = file.clone().unwrap_or_default();
            return match other.parse::<Format>() {
                Err(_) if !QEMU_DRIVERS.contains(&other) => {
                    fail(ctx, &shown, format!("Unknown file format '{other}'"))
                }
                _ => fail(
                    ctx,
                    &shown,
                    format!("Creating '{other}' images is not implemented by diskimg yet (qcow2 and raw are)"),
                ),
            };
        }
    };

    // -o help comes before everything else, even the file name.
    let opts: Vec<(String, String, bool)> =
        opt_strings.iter().flat_map(|s| split_opts(s)).collect();
    if opts
        .iter()
        .any(|(k, _, has_eq)| (k == "help" || k == "?") && !has_eq)
    {
        print_options_help(&fmt, file.is_some());
        return 0;
    }

    let Some(file) = file else {
        ctx.error_with_hint("create", "Expecting image file name");
        return 1;
    };
    if let Some(extra) = files.get(2) {
        ctx.error_with_hint(
            "create",
            format!("Unexpected argument: {}", extra.to_string_lossy()),
        );
        return 1;
    }
    let mut size: Option<u64> = None;
    if let Some(s) = files.get(1) {
        let s = s.to_string_lossy();
        match parse_size(&s) {
            Ok(v) => size = Some(v),
            Err(SizeError::Invalid) => {
                ctx.error(format!("Invalid image size specified: '{s}'."));
                return 1;
            }
            Err(SizeError::Range) => {
                ctx.error(format!(
                    "Invalid image size specified. Must be between 0 and {}.",
                    i64::MAX
                ));
                return 1;
            }
        }
    }

    let parsed = match parse_opts(format, &opts) {
        Ok(p) => p,
        Err(msg) => return fail(ctx, &file, msg),
    };
    let get = |name: &str| parsed.get(name);
    let vals = &parsed.vals;

    if let Some(s) = get("size") {
        if size.is_some() {
            return fail(ctx, &file, "The image size must be specified only once");
        }
        size = Some(s.num);
    }
    let mut backing_file = get("backing_file").map(|v| v.shown.clone());
    if let Some(b) = args::get_str(&m, "backing") {
        backing_file = Some(b.to_string());
    }
    let mut backing_fmt = get("backing_fmt").map(|v| v.shown.clone());
    if let Some(f) = args::get_str(&m, "backing-format") {
        backing_fmt = Some(f.to_string());
    }
    if backing_file.is_some() && format == Format::Raw {
        return fail(
            ctx,
            &file,
            "Backing file not supported for file format 'raw'",
        );
    }
    if backing_fmt.is_some() && format == Format::Raw {
        return fail(
            ctx,
            &file,
            "Backing file format not supported for file format 'raw'",
        );
    }

    // The backing file: its format must be given; its size is the default.
    if let Some(b) = &backing_file {
        let path = backing_path(&file, b);
        if backing_fmt.is_none() {
            if unsafe_backing {
                return fail(ctx, &file, "Backing file specified without backing format");
            }
            return match open_backing(&path, None) {
                Ok(dev) => fail(
                    ctx,
                    &file,
                    format!(
                        "Backing file specified without backing format\nDetected format of {}.",
                        dev.info().format
                    ),
                ),
                Err(msg) => fail(ctx, &file, format!("{msg}\nCould not open backing image.")),
            };
        }
        if !unsafe_backing {
            match open_backing(&path, backing_fmt.as_deref()) {
                Ok(dev) => {
                    if size.is_none() {
                        size = Some(dev.size());
                    }
                }
                Err(msg) => {
                    return fail(ctx, &file, format!("{msg}\nCould not open backing image."))
                }
            }
        }
    }
    let Some(size) = size else {
        return fail(ctx, &file, "Image creation needs a size parameter");
    };

    if !quiet {
        println!(
            "{}",
            formatting_line(&file, &fmt, format, size, vals, &backing_file, &backing_fmt)
        );
    }

    let opts = match build_create_options(format, &parsed, size, &backing_file, &backing_fmt) {
        Ok(o) => o,
        Err(msg) => return fail(ctx, &file, msg),
    };
    match diskimg::create(&file, &opts) {
        Ok(()) => 0,
        Err(e) => fail(ctx, &file, e.message()),
    }
}

/// `-o` options checked for their names and types, as QemuOpts does.
pub struct ParsedOpts {
    vals: Vec<(&'static str, OptVal)>,
}

impl ParsedOpts {
    fn get(&self, name: &str) -> Option<&OptVal> {
        self.vals.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The value of a string option.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).map(|v| v.shown.as_str())
    }
}

/// Types the `-o` options against the format's and the file protocol's
/// option lists (QemuOpts parsing): unknown names and values of the wrong
/// type are refused with QEMU's message; the last of a repeated option wins.
/// Nothing is refused for not being implemented (measure accepts and
/// ignores options create refuses).
pub(crate) fn typed_options(
    format: Format,
    opts: &[(String, String, bool)],
) -> Result<Vec<(&'static str, OptVal)>, String> {
    let mut descs: Vec<OptDesc> = if format == Format::Qcow2 {
        QCOW2_OPTS.to_vec()
    } else {
        RAW_OPTS.to_vec()
    };
    for d in FILE_OPTS {
        if !descs.iter().any(|o| o.0 == d.0) {
            descs.push(*d);
        }
    }
    let mut vals: Vec<(&'static str, OptVal)> = Vec::new();
    for (k, v, _) in opts {
        let Some(&(name, kind, _)) = descs.iter().find(|d| d.0 == k) else {
            return Err(format!("Invalid parameter '{k}'"));
        };
        let val = match kind {
            Kind::Str => OptVal {
                shown: v.clone(),
                num: 0,
                flag: false,
            },
            Kind::Bool => match parse_bool(v) {
                Some(b) => OptVal {
                    shown: v.clone(),
                    num: 0,
                    flag: b,
                },
                None => return Err(format!("Parameter '{k}' expects 'on' or 'off'")),
            },
            Kind::Num => match parse_num(v) {
                Some(n) => OptVal {
                    shown: n.to_string(),
                    num: n,
                    flag: false,
                },
                None => return Err(format!("Parameter '{k}' expects a number")),
            },
            Kind::Size => match parse_size(v) {
                Ok(n) => OptVal {
                    shown: n.to_string(),
                    num: n,
                    flag: false,
                },
                Err(_) => {
                    return Err(format!(
                            "Parameter '{k}' expects a non-negative number below 2^64\n\
                             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                             and exabytes, respectively."
                    ))
                }
            },
        };
        vals.retain(|(n, _)| *n != name);
        vals.push((name, val));
    }

    Ok(vals)
}

/// Checks `-o` options (split already) against the options of `format`;
/// what diskimg does not implement is refused here, before anything happens.
fn parse_opts(format: Format, opts: &[(String, String, bool)]) -> Result<ParsedOpts, String> {
    let vals = typed_options(format, opts)?;

    // What diskimg does not implement is refused before anything happens.
    for (name, v) in &vals {
        let refused = match *name {
            "encryption" => v.flag,
            n if n.starts_with("encrypt.") => true,
            "nocow" => v.flag,
            "extent_size_hint" => true,
            _ => false,
        };
        if refused {
            let what = if name.starts_with("encrypt") {
                "encrypted images are not implemented by diskimg yet"
            } else {
                "this file option is not implemented by diskimg yet"
            };
            return Err(format!("Option '{name}': {what}"));
        }
    }

    Ok(ParsedOpts { vals })
}

/// Parses `-o` option strings (`a=b,c=d`, possibly several) for `format`.
pub fn parse_option_strings(format: Format, strings: &[String]) -> Result<ParsedOpts, String> {
    let opts: Vec<(String, String, bool)> = strings.iter().flat_map(|s| split_opts(s)).collect();
    parse_opts(format, &opts)
}

/// The options to create a `format` image of `size` bytes from checked
/// `-o` options and the backing file settings: QAPI's enum checks first,
/// as QEMU; the driver's own checks run when the image is created.
pub fn build_create_options(
    format: Format,
    parsed: &ParsedOpts,
    size: u64,
    backing_file: &Option<String>,
    backing_fmt: &Option<String>,
) -> Result<CreateOptions, String> {
    let get = |name: &str| parsed.get(name);
    let mut opts = CreateOptions::new(format, size);
    if format == Format::Qcow2 {
        let mut q = Qcow2CreateOptions::default();
        if let Some(c) = get("compat") {
            q.version = match c.shown.as_str() {
                "0.10" | "v2" => 2,
                "1.1" | "v3" => 3,
                other => {
                    return Err(format!(
                        "Parameter 'version' does not accept value '{other}'"
                    ))
                }
            };
        }
        if let Some(f) = &backing_fmt {
            if !QEMU_DRIVERS.contains(&f.as_str()) {
                return Err(format!(
                    "Parameter 'backing-fmt' does not accept value '{f}'"
                ));
            }
        }
        if let Some(v) = get("cluster_size") {
            q.cluster_size = v.num;
        }
        match prealloc_of(get("preallocation")) {
            Ok(p) => opts.preallocation = p,
            Err(msg) => return Err(msg),
        }
        if let Some(c) = get("compression_type") {
            q.compression_type = match c.shown.as_str() {
                "zlib" => CompressionType::Zlib,
                "zstd" => CompressionType::Zstd,
                other => {
                    return Err(format!(
                        "Parameter 'compression-type' does not accept value '{other}'"
                    ))
                }
            };
        }
        if let Some(v) = get("refcount_bits") {
            q.refcount_bits = v.num;
        }
        q.extended_l2 = get("extended_l2").is_some_and(|v| v.flag);
        q.lazy_refcounts = get("lazy_refcounts").is_some_and(|v| v.flag);
        q.data_file_raw = get("data_file_raw").is_some_and(|v| v.flag);
        q.data_file = get("data_file").map(|v| v.shown.clone());
        q.backing_file = backing_file.clone();
        q.backing_fmt = backing_fmt.clone();
        opts.qcow2 = q;
    } else {
        match prealloc_of(get("preallocation")) {
            Ok(p) => opts.preallocation = p,
            Err(msg) => return Err(msg),
        }
    }
    Ok(opts)
}

/// The preallocation mode of the `preallocation` option (off when unset).
fn prealloc_of(v: Option<&OptVal>) -> Result<Preallocation, String> {
    match v {
        None => Ok(Preallocation::Off),
        Some(p) => Preallocation::parse(&p.shown).ok_or_else(|| {
            format!(
                "Parameter 'preallocation' does not accept value '{}'",
                p.shown
            )
        }),
    }
}

/// The backing file as QEMU opens it: relative to the new image's directory.
fn backing_path(image: &str, backing: &str) -> PathBuf {
    let b = Path::new(backing);
    if b.is_absolute() {
        return b.to_path_buf();
    }
    match Path::new(image).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(b),
        _ => b.to_path_buf(),
    }
}

/// Opens the backing file (with its own chain) for its size; the error is
/// QEMU's reason, e.g. `Could not open 'b': No such file or directory`.
fn open_backing(
    path: &Path,
    fmt: Option<&str>,
) -> Result<std::sync::Arc<dyn diskimg::BlockDevice>, String> {
    let format = match fmt {
        Some(f) => Some(f.parse::<Format>().map_err(|e| e.message().to_string())?),
        None => None,
    };
    let opts = OpenOptions {
        format,
        open_data_file: false,
        ..OpenOptions::default()
    };
    diskimg::open(path, &opts).map_err(|e| {
        // An OS error keeps its "Could not open 'F': " (QEMU's wording); a
        // format driver's reason is shown alone, as qemu-img shows it.
        let m = e.message();
        let prefix = format!("Could not open '{}': ", path.display());
        let os_error = matches!(
            e.kind(),
            ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::Io
        );
        match m.strip_prefix(&prefix) {
            Some(rest) if !os_error => rest.to_string(),
            _ => m.to_string(),
        }
    })
}

/// `Formatting 'FILE', fmt=FMT opt=value ...` with every set option (or its
/// printed default) in QemuOpts order.
fn formatting_line(
    file: &str,
    fmt: &str,
    format: Format,
    size: u64,
    vals: &[(&'static str, OptVal)],
    backing_file: &Option<String>,
    backing_fmt: &Option<String>,
) -> String {
    let mut line = format!("Formatting '{file}', fmt={fmt}");
    let order: Vec<&str> = if format == Format::Qcow2 {
        QCOW2_OPTS
            .iter()
            .map(|d| d.0)
            .chain(["nocow", "extent_size_hint"])
            .collect()
    } else {
        FILE_OPTS.iter().map(|d| d.0).collect()
    };
    for name in order {
        let value = match name {
            "size" => Some(size.to_string()),
            "backing_file" => backing_file.clone(),
            "backing_fmt" => backing_fmt.clone(),
            _ => vals
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.shown.clone())
                .or_else(|| {
                    if format == Format::Qcow2 {
                        QCOW2_DEFAULTS
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, d)| d.to_string())
                    } else {
                        None
                    }
                }),
        };
        if let Some(v) = value {
            line.push_str(&format!(" {name}={v}"));
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_qemu_opts() {
        let v = split_opts("a=1,b=x,,y,c,d=");
        assert_eq!(
            v,
            vec![
                ("a".into(), "1".into(), true),
                ("b".into(), "x,y".into(), true),
                ("c".into(), "on".into(), false),
                ("d".into(), "".into(), true),
            ]
        );
    }

    #[test]
    fn numbers_as_strtou64_base_0() {
        assert_eq!(parse_num("16"), Some(16));
        assert_eq!(parse_num("0x10"), Some(16));
        assert_eq!(parse_num("016"), Some(14));
        assert_eq!(parse_num("0"), Some(0));
        assert_eq!(parse_num("x"), None);
        assert_eq!(parse_num("09"), None);
    }

    #[test]
    fn backing_is_relative_to_the_image() {
        assert_eq!(backing_path("d/x.qcow2", "b.raw"), PathBuf::from("d/b.raw"));
        assert_eq!(backing_path("x.qcow2", "b.raw"), PathBuf::from("b.raw"));
        assert_eq!(backing_path("d/x.qcow2", "/b.raw"), PathBuf::from("/b.raw"));
    }
}
