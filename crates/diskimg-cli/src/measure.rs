//! `measure`: the size a new image would need, as `qemu-img measure`.
//!
//! The steps and messages follow qemu-img's: the arguments are checked,
//! the source (if any) is opened with its chain, the target format is
//! looked up, the `-o` options are typed (errors end with `Invalid options
//! for file format 'FMT'`), then the format measures. The figures come from
//! `diskimg::ops::measure`.

use std::ffi::OsString;

use diskimg::ops::measure::{check_cluster_size, measure, Measurement};
use diskimg::{CreateOptions, Format, Preallocation};

use crate::args::{self, Output, Parsed};
use crate::create::{split_opts, typed_options, QEMU_DRIVERS};
use crate::ctx::Ctx;
use crate::open::{open_image, OpenHow};
use crate::qjson::{to_json_pretty, QDict, QValue};
use crate::size::{parse_size, SizeError};

const HELP: &str = "Usage:
Calculate file size requred for a new image.  Usage:

  PROG measure [-f FMT|--image-opts] [-o OPTIONS] [-O OUTPUT_FMT]
       [--output OFMT] [--object OBJDEF] [-l SNAPSHOT_PARAM]
       (--size SIZE | FILENAME)

Arguments:
  -h, --help
     print this help and exit
  -O, --target-format FMT
     desired target/output image format (default raw)
  -s, --size SIZE
     measure file size for given image size
  FILENAME
     measure file size required to convert from FILENAME
  -f, --format
     specify format of FILENAME explicitly
  --image-opts
     indicates that FILENAME is a complete image specification
     instead of a file name (incompatible with --format)
  -l, --snapshot SNAPSHOT
     use this snapshot in FILENAME as source
  --output human|json
     output format
  -U, --force-share
     open images in shared mode for concurrent access

";

/// qemu-img's check of a `-o` argument before it is joined to the others:
/// not empty, not starting with a comma, not ending with an odd number of
/// commas.
pub(crate) fn valid_option_list(list: &str) -> bool {
    if list.is_empty() || list.starts_with(',') {
        return false;
    }
    let trailing = list.len() - list.trim_end_matches(',').len();
    trailing.is_multiple_of(2)
}

/// Runs `measure`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("measure")
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::opt("snapshot", Some('l'), Some("snapshot")))
        .arg(args::opt("target-format", Some('O'), Some("target-format")))
        .arg(args::opt_repeated("options", Some('o'), Some("options")))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::opt("output", None, Some("output")))
        .arg(args::opt("object", None, Some("object")))
        .arg(args::opt("size", None, Some("size")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "measure", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let output = match args::output(ctx, "measure", &m) {
        Ok(o) => o,
        Err(rc) => return rc,
    };
    if m.get_one::<String>("object").is_some() {
        ctx.error("--object is not supported by diskimg");
        return 1;
    }
    let mut size: Option<u64> = None;
    if let Some(s) = args::get_str(&m, "size") {
        match parse_size(s) {
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
    let opt_strings: Vec<String> = m
        .get_many::<String>("options")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    for s in &opt_strings {
        if !valid_option_list(s) {
            ctx.error(format!("Invalid option list: {s}"));
            return 1;
        }
    }
    let files = args::files(&m);
    if files.len() > 1 {
        ctx.error("At most one filename argument is allowed.");
        return 1;
    }
    let file = files.first();
    let fmt = args::get_str(&m, "format");
    let snapshot = args::get_str(&m, "snapshot");
    if file.is_none() && (m.get_flag("image-opts") || fmt.is_some() || snapshot.is_some()) {
        ctx.error("--image-opts, -f, and -l require a filename argument.");
        return 1;
    }
    if file.is_some() && size.is_some() {
        ctx.error("--size N cannot be used together with a filename.");
        return 1;
    }
    if file.is_none() && size.is_none() {
        ctx.error("Either --size N or one filename must be specified.");
        return 1;
    }

    let source = match file {
        Some(f) => {
            if m.get_flag("image-opts") {
                ctx.error(format!(
                    "Could not open '{}': --image-opts is not supported by diskimg",
                    f.to_string_lossy()
                ));
                return 1;
            }
            let how = OpenHow {
                backing: true,
                data_file: true,
                direct: false,
            };
            match open_image(f, fmt, how) {
                Ok(d) => Some(d),
                Err(msg) => {
                    ctx.error(msg);
                    return 1;
                }
            }
        }
        None => None,
    };
    if snapshot.is_some() {
        ctx.error("Failed to load snapshot: measuring an internal snapshot (-l) is not implemented by diskimg yet");
        return 1;
    }

    let out_fmt = args::get_str(&m, "target-format").unwrap_or("raw");
    let format = match out_fmt {
        "qcow2" => Format::Qcow2,
        "raw" => Format::Raw,
        other if QEMU_DRIVERS.contains(&other) => {
            ctx.error(format!(
                "Block driver '{other}' does not support size measurement"
            ));
            return 1;
        }
        other => {
            ctx.error(format!("Unknown file format '{other}'"));
            return 1;
        }
    };
    let split: Vec<(String, String, bool)> =
        opt_strings.iter().flat_map(|s| split_opts(s)).collect();
    let vals = match typed_options(format, &split) {
        Ok(v) => v,
        Err(msg) => {
            ctx.error(msg);
            ctx.error(format!("Invalid options for file format '{out_fmt}'"));
            return 1;
        }
    };
    let get = |name: &str| vals.iter().find(|(n, _)| *n == name).map(|(_, v)| v);

    // --size wins over -o size.
    let mut opts = CreateOptions::new(format, size.or(get("size").map(|v| v.num)).unwrap_or(0));
    if format == Format::Qcow2 {
        let q = &mut opts.qcow2;
        q.extended_l2 = get("extended_l2").is_some_and(|v| v.flag);
        if let Some(v) = get("cluster_size") {
            q.cluster_size = v.num;
        }
        if let Err(e) = check_cluster_size(q.cluster_size, q.extended_l2) {
            ctx.error(e.message());
            return 1;
        }
        if let Some(c) = get("compat") {
            q.version = match c.shown.as_str() {
                "0.10" => 2,
                "1.1" => 3,
                other => {
                    ctx.error(format!("Invalid compatibility level: '{other}'"));
                    return 1;
                }
            };
        }
        if let Some(v) = get("refcount_bits") {
            q.refcount_bits = v.num;
        }
        if let Some(p) = get("preallocation") {
            // Refcount width errors come before preallocation's in QEMU.
            if q.refcount_bits > 64
                || !q.refcount_bits.is_power_of_two()
                || (q.version < 3 && q.refcount_bits != 16)
            {
                // Reported by the measurement below, in QEMU's words.
            } else {
                match Preallocation::parse(&p.shown) {
                    Some(mode) => opts.preallocation = mode,
                    None => {
                        ctx.error(format!("invalid parameter value: {}", p.shown));
                        return 1;
                    }
                }
            }
        }
        let q = &mut opts.qcow2;
        q.backing_file = get("backing_file").map(|v| v.shown.clone());
        if get("encrypt.format").is_some_and(|v| v.shown == "luks") {
            if get("encrypt.key-secret").is_none() {
                ctx.error("Parameter 'encrypt.key-secret' is required for cipher");
            } else {
                ctx.error(
                    "Measuring LUKS-encrypted qcow2 images is not implemented by diskimg yet",
                );
            }
            return 1;
        }
    }

    match measure(&opts, source.as_ref()) {
        Ok(r) => {
            print_result(output, &r);
            0
        }
        Err(e) => {
            ctx.error(e.message());
            1
        }
    }
}

fn print_result(output: Output, r: &Measurement) {
    match output {
        Output::Human => {
            println!("required size: {}", r.required);
            println!("fully allocated size: {}", r.fully_allocated);
            if let Some(b) = r.bitmaps {
                println!("bitmaps size: {b}");
            }
        }
        Output::Json => {
            let mut d = QDict::new();
            d.put_uint("required", r.required);
            d.put_uint("fully-allocated", r.fully_allocated);
            if let Some(b) = r.bitmaps {
                d.put_uint("bitmaps", b);
            }
            println!("{}", to_json_pretty(&QValue::Dict(d)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_lists_as_qemu_img_checks_them() {
        assert!(valid_option_list("a=1"));
        assert!(valid_option_list("a=x,,"));
        assert!(!valid_option_list(""));
        assert!(!valid_option_list(",a=1"));
        assert!(!valid_option_list("a=1,"));
        assert!(!valid_option_list("a=1,,,"));
    }
}
