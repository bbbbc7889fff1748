//! `check`: the image's metadata consistency, as `qemu-img check`.
//! Exit codes as qemu-img: 0 consistent, 1 check failed (or could not
//! open), 2 corruptions, 3 leaks only, 63 the format has no check.

use std::ffi::OsString;
use std::sync::Arc;

use diskimg::{CheckReport, Format, OpenOptions, RepairMode};

use crate::args::{self, Output, Parsed};
use crate::ctx::Ctx;
use crate::qjson::{to_json_pretty, QDict, QValue};

const HELP: &str = "Usage:
Check basic image integrity.  Usage:

  PROG check [-f FMT | --image-opts] [-T CACHE_MODE] [-r] [-u]
        [--output human|json] [--object OBJDEF] FILENAME

Arguments:
  -h, --help
     print this help and exit
  -q, --quiet
     quiet operations
  -f, --format FMT
     specifies format of the image explicitly
  --image-opts
     indicates that FILENAME is a complete image specification
     instead of a file name (incompatible with --format)
  -T, --cache CACHE_MODE
     image cache mode (writeback)
  -U, --force-share
     open image in shared mode for concurrent access
  --output human|json
     output format
  -r, --repair leaks|all
     repair particular aspect of the image
     (image will be open in read-write mode, incompatible with --force-share)
  --object OBJDEF
     QEMU user-creatable object (eg encryption key)
  FILENAME
     the image file (or image specification) to operate on

";

/// The message QEMU gives for formats without a check (exit code 63).
const NO_CHECK: &str = "This image format does not support checks";

/// Runs `check`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("check")
        .arg(args::flag("quiet", Some('q'), Some("quiet")))
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::opt("cache", Some('T'), Some("cache")))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::opt("output", None, Some("output")))
        .arg(args::opt("repair", Some('r'), Some("repair")))
        .arg(args::opt("object", None, Some("object")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "check", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let output = match args::output(ctx, "check", &m) {
        Ok(o) => o,
        Err(rc) => return rc,
    };
    let repair = match args::get_str(&m, "repair") {
        None => RepairMode::None,
        Some("leaks") => RepairMode::Leaks,
        Some("all") => RepairMode::All,
        Some(other) => {
            ctx.error_with_hint(
                "check",
                format!("--repair (-r) expects 'leaks' or 'all' not '{other}'"),
            );
            return 1;
        }
    };
    let files = args::files(&m);
    if files.len() != 1 {
        ctx.error_with_hint("check", "Expecting one image file name");
        return 1;
    }
    let cache = match args::cache_mode(&m, "cache") {
        Ok(c) => c,
        Err(c) => {
            ctx.error(format!("Invalid source cache option: {c}"));
            return 1;
        }
    };
    let shown = files[0].to_string_lossy().into_owned();
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{shown}': --image-opts is not supported by diskimg"
        ));
        return 1;
    }
    if repair != RepairMode::None && m.get_flag("force-share") {
        ctx.error(format!(
            "Could not open '{shown}': force-share=on can only be used with read-only images"
        ));
        return 1;
    }
    let format = match args::get_str(&m, "format").map(str::parse::<Format>) {
        None => None,
        Some(Ok(f)) => Some(f),
        Some(Err(e)) => {
            ctx.error(format!("Could not open '{shown}': {}", e.message()));
            return 1;
        }
    };
    let warn: diskimg::WarningSink = Arc::new(crate::ctx::print_warning);
    let opts = OpenOptions {
        format,
        // As qemu-img, the whole chain and the data file are opened: a
        // missing or broken backing file makes the check fail.
        open_backing: true,
        open_data_file: true,
        for_check: true,
        // A repair writes the image.
        writable: repair != RepairMode::None,
        direct: cache.direct(),
        warnings: Some(warn),
        ..OpenOptions::default()
    };
    let image = match diskimg::open(&files[0], &opts) {
        Ok(i) => i,
        Err(e) => {
            ctx.error(format!("Could not open '{shown}': {}", e.message()));
            return 1;
        }
    };
    let format_name = image.info().format;
    let mut report = match image.check(repair, &mut |line| eprintln!("{line}")) {
        Ok(r) => r,
        Err(e) if e.message() == NO_CHECK => {
            ctx.error(NO_CHECK);
            return 63;
        }
        Err(e) => {
            ctx.error(format!("Check failed: {}", e.message()));
            return 1;
        }
    };
    if report.leaks_fixed > 0 || report.corruptions_fixed > 0 {
        // As qemu-img: say what was repaired, then check again.
        if output == Output::Human && !m.get_flag("quiet") {
            println!(
                "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...",
                report.leaks_fixed, report.corruptions_fixed
            );
        }
        match image.check(RepairMode::None, &mut |line| eprintln!("{line}")) {
            Ok(mut again) => {
                again.leaks_fixed = report.leaks_fixed;
                again.corruptions_fixed = report.corruptions_fixed;
                report = again;
            }
            Err(e) => {
                ctx.error(format!("Check failed: {}", e.message()));
                return 1;
            }
        }
    }
    match output {
        Output::Human => {
            if !m.get_flag("quiet") {
                print!("{}", human(&report));
            }
        }
        Output::Json => println!("{}", to_json_pretty(&json(&report, &shown, format_name))),
    }
    if report.check_errors > 0 {
        ctx.error("Check failed");
        return 1;
    }
    if report.corruptions > 0 {
        2
    } else if report.leaks > 0 {
        3
    } else {
        0
    }
}

/// qemu-img's human report.
fn human(r: &CheckReport) -> String {
    let mut s = String::new();
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        s.push_str("No errors were found on the image.\n");
    } else {
        if r.corruptions > 0 {
            s.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                r.corruptions
            ));
        }
        if r.leaks > 0 {
            s.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                r.leaks
            ));
        }
        if r.check_errors > 0 {
            s.push_str(&format!(
                "\n{} internal errors have occurred during the check.\n",
                r.check_errors
            ));
        }
    }
    if r.total_clusters != 0 && r.allocated_clusters != 0 {
        let pct = |a: u64, b: u64| a as f64 * 100.0 / b as f64;
        s.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            r.allocated_clusters,
            r.total_clusters,
            pct(r.allocated_clusters, r.total_clusters),
            pct(r.fragmented_clusters, r.allocated_clusters),
            pct(r.compressed_clusters, r.allocated_clusters),
        ));
    }
    if r.image_end_offset != 0 {
        s.push_str(&format!("Image end offset: {}\n", r.image_end_offset));
    }
    s
}

/// QAPI `ImageCheck`: zero counts are left out, except `check-errors`.
fn json(r: &CheckReport, filename: &str, format: &str) -> QValue {
    let mut d = QDict::new();
    d.put_str("filename", filename);
    d.put_str("format", format);
    d.put_uint("check-errors", r.check_errors);
    let optional = [
        ("image-end-offset", r.image_end_offset),
        ("corruptions", r.corruptions),
        ("leaks", r.leaks),
        ("corruptions-fixed", r.corruptions_fixed),
        ("leaks-fixed", r.leaks_fixed),
        ("total-clusters", r.total_clusters),
        ("allocated-clusters", r.allocated_clusters),
        ("fragmented-clusters", r.fragmented_clusters),
        ("compressed-clusters", r.compressed_clusters),
    ];
    for (key, value) in optional {
        if value != 0 {
            d.put_uint(key, value);
        }
    }
    QValue::Dict(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_report_matches_qemu_img_layout() {
        let r = CheckReport {
            corruptions: 2,
            total_clusters: 256,
            allocated_clusters: 2,
            image_end_offset: 458752,
            ..CheckReport::default()
        };
        assert_eq!(
            human(&r),
            "\n2 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n2/256 = 0.78% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: 458752\n"
        );
    }
}
