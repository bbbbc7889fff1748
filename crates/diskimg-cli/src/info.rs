//! `info`: what an image is, in qemu-img's human and JSON forms.

use std::collections::HashSet;
use std::ffi::OsString;
use std::sync::Arc;

use diskimg::format::{FormatSpecific, ImageInfo};
use diskimg::BlockDevice;

use crate::args::{self, Output, Parsed};
use crate::ctx::Ctx;
use crate::open::{open_image, OpenHow};
use crate::qjson::{to_json_pretty, QDict, QValue};
use crate::size::size_to_str;

const HELP: &str = "Usage:
Display information about image.  Usage:

  PROG info [-f FMT | --image-opts] [-b] [-U] [--object OBJDEF]
        [--output human|json] FILENAME

Arguments:
  -h, --help
     print this help and exit
  -f, --format FMT
     specify FILENAME image format explicitly
  --image-opts
     indicates that FILENAME is a complete image specification
     instead of a file name (incompatible with --format)
  -b, --backing-chain
     display information about the backing chain
  -U, --force-share
     open image in shared mode for concurrent access
  --object OBJDEF
     QEMU user-creatable object (eg encryption key)
  --output human|json
     specify output format name (default human)
  FILENAME
     image file name (or specification with --image-opts)

";

/// One node of the graph `info` describes: an image layer, or the file
/// ("protocol") node beneath it.
struct Node {
    info: QDict,
}

/// Runs `info`.
pub fn run(ctx: &Ctx, argv: &[OsString]) -> i32 {
    let cmd = args::command("info")
        .arg(args::opt("format", Some('f'), Some("format")))
        .arg(args::flag("image-opts", None, Some("image-opts")))
        .arg(args::flag(
            "backing-chain",
            Some('b'),
            Some("backing-chain"),
        ))
        .arg(args::flag("force-share", Some('U'), Some("force-share")))
        .arg(args::opt("object", None, Some("object")))
        .arg(args::opt("output", None, Some("output")));
    let help = HELP.replace("PROG", ctx.prog);
    let m = match args::parse(ctx, "info", cmd, argv, &help) {
        Parsed::Args(m) => m,
        Parsed::Exit(rc) => return rc,
    };
    let output = match args::output(ctx, "info", &m) {
        Ok(o) => o,
        Err(rc) => return rc,
    };
    let files = args::files(&m);
    if files.len() != 1 {
        ctx.error_with_hint("info", "Expecting one image file name");
        return 1;
    }
    let file = &files[0];
    if m.get_flag("image-opts") {
        ctx.error(format!(
            "Could not open '{}': --image-opts is not supported by diskimg",
            file.to_string_lossy()
        ));
        return 1;
    }
    if m.get_one::<String>("object").is_some() {
        ctx.error("--object is not supported by diskimg");
        return 1;
    }
    let chain = m.get_flag("backing-chain");
    // As qemu-img: every layer is opened on its own, without its backing
    // file, and the chain is followed through the names the images record
    // (so a missing backing file is reported under its own name).
    let how = OpenHow {
        backing: false,
        data_file: false,
        direct: false,
    };
    let mut layers: Vec<Arc<dyn BlockDevice>> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut next: Option<(OsString, Option<String>)> = Some((
        file.clone(),
        args::get_str(&m, "format").map(str::to_string),
    ));
    while let Some((path, fmt)) = next.take() {
        let shown = path.to_string_lossy().into_owned();
        if !seen.insert(shown.clone()) {
            ctx.error(format!("Backing file '{shown}' creates an infinite loop."));
            return 1;
        }
        if layers.len() >= diskimg::MAX_CHAIN_DEPTH {
            ctx.error(format!(
                "Backing chain of '{}' is deeper than {} images; diskimg refuses longer chains",
                file.to_string_lossy(),
                diskimg::MAX_CHAIN_DEPTH
            ));
            return 1;
        }
        let dev = match open_image(&path, fmt.as_deref(), how) {
            Ok(d) => d,
            Err(msg) => {
                ctx.error(msg);
                return 1;
            }
        };
        if chain {
            let info = dev.info();
            if let Some(b) = &info.backing {
                let full = diskimg::chain::full_backing_filename(&info.filename, &b.filename);
                next = Some((OsString::from(full), b.format.clone()));
            }
        }
        layers.push(dev);
    }
    let mut nodes = Vec::new();
    for l in &layers {
        match describe(l.as_ref()) {
            Ok(n) => nodes.push(n),
            Err(msg) => {
                ctx.error(msg);
                return 1;
            }
        }
    }
    match output {
        Output::Json => {
            let v = if chain {
                QValue::List(nodes.into_iter().map(|n| QValue::Dict(n.info)).collect())
            } else {
                match nodes.into_iter().next() {
                    Some(n) => QValue::Dict(n.info),
                    None => return 1,
                }
            };
            println!("{}", to_json_pretty(&v));
        }
        Output::Human => {
            let mut out = String::new();
            for (i, n) in nodes.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                dump_human(&mut out, &n.info, 0, "/");
            }
            print!("{out}");
        }
    }
    0
}

/// QEMU's length of a file node: whole 512-byte sectors.
fn sector_round(len: u64) -> u64 {
    len.div_ceil(512).saturating_mul(512)
}

/// Builds the BlockGraphInfo of one layer: the layer and its file node.
fn describe(dev: &dyn BlockDevice) -> Result<Node, String> {
    let info = dev.info();
    let storage = dev.storage();
    let actual = storage
        .allocated_size()
        .map_err(|e| e.message().to_string())?;
    let file_len = storage.len().map_err(|e| e.message().to_string())?;

    // The protocol node, fields in QAPI schema order (BlockNodeInfo, then
    // BlockGraphInfo's children).
    let mut file = QDict::new();
    file.put_str("filename", storage.name());
    file.put_str("format", "file");
    file.put_bool("dirty-flag", false);
    file.put_uint("actual-size", actual);
    file.put_uint("virtual-size", sector_round(file_len));
    let mut fs = QDict::new();
    fs.put_str("type", "file");
    fs.put("data", QValue::Dict(QDict::new()));
    file.put("format-specific", QValue::Dict(fs));
    file.put("children", QValue::List(Vec::new()));

    let mut child = QDict::new();
    child.put_str("name", "file");
    child.put("info", QValue::Dict(file));

    let mut d = image_dict(&info, actual);
    d.put("children", QValue::List(vec![QValue::Dict(child)]));
    Ok(Node { info: d })
}

/// The BlockNodeInfo members of a layer, in QAPI schema order.
fn image_dict(info: &ImageInfo, actual: u64) -> QDict {
    let mut d = QDict::new();
    d.put_str("filename", info.filename.clone());
    d.put_str("format", info.format);
    d.put_bool("dirty-flag", info.dirty);
    d.put_uint("actual-size", actual);
    d.put_uint("virtual-size", info.virtual_size);
    if let Some(cs) = info.cluster_size {
        d.put_uint("cluster-size", cs);
    }
    if info.encrypted {
        d.put_bool("encrypted", true);
    }
    if let Some(b) = &info.backing {
        d.put_str("backing-filename", b.filename.clone());
        d.put_str(
            "full-backing-filename",
            diskimg::chain::full_backing_filename(&info.filename, &b.filename),
        );
        if let Some(f) = &b.format {
            d.put_str("backing-filename-format", f.clone());
        }
    }
    if !info.snapshots.is_empty() {
        let list = info
            .snapshots
            .iter()
            .map(|s| {
                let mut sd = QDict::new();
                sd.put_str("id", s.id.clone());
                sd.put_str("name", s.name.clone());
                sd.put_uint("vm-state-size", s.vm_state_size);
                sd.put_uint("date-sec", s.date_sec);
                sd.put_uint("date-nsec", s.date_nsec);
                sd.put_uint("vm-clock-sec", s.vm_clock_nsec / 1_000_000_000);
                sd.put_uint("vm-clock-nsec", s.vm_clock_nsec % 1_000_000_000);
                if let Some(ic) = s.icount {
                    sd.put_uint("icount", ic);
                }
                QValue::Dict(sd)
            })
            .collect();
        d.put("snapshots", QValue::List(list));
    }
    if let Some(spec) = &info.specific {
        d.put("format-specific", QValue::Dict(specific_dict(spec)));
    }
    d
}

/// The `Format specific information:` block as `qemu-img info` and
/// qemu-io's `info` print it (empty when there is nothing to show).
pub fn format_specific_text(spec: &FormatSpecific) -> String {
    let mut out = String::new();
    if let Some(QValue::Dict(data)) = specific_dict(spec).get("data") {
        if !data.ordered().is_empty() {
            out.push_str("Format specific information:\n");
            dump_qdict(&mut out, 1, data);
        }
    }
    out
}

/// `{type, data}` of ImageInfoSpecific.
fn specific_dict(spec: &FormatSpecific) -> QDict {
    let mut w = QDict::new();
    match spec {
        FormatSpecific::Qcow2(q) => {
            let mut data = QDict::new();
            data.put_str("compat", q.compat);
            if let Some(df) = &q.data_file {
                data.put_str("data-file", df.clone());
            }
            if let Some(raw) = q.data_file_raw {
                data.put_bool("data-file-raw", raw);
            }
            if let Some(x) = q.extended_l2 {
                data.put_bool("extended-l2", x);
            }
            if let Some(l) = q.lazy_refcounts {
                data.put_bool("lazy-refcounts", l);
            }
            if let Some(c) = q.corrupt {
                data.put_bool("corrupt", c);
            }
            data.put_uint("refcount-bits", q.refcount_bits as u64);
            if let Some(fmt) = q.encrypt_format {
                // Only the format is known without the key; QEMU prints
                // LUKS header details here too, which diskimg does not read.
                let mut enc = QDict::new();
                enc.put_str("format", fmt);
                data.put("encrypt", QValue::Dict(enc));
            }
            if let Some(bitmaps) = &q.bitmaps {
                let list = bitmaps
                    .iter()
                    .map(|b| {
                        let mut bd = QDict::new();
                        bd.put_str("name", b.name.clone());
                        bd.put_uint("granularity", b.granularity);
                        bd.put(
                            "flags",
                            QValue::List(
                                b.flags.iter().map(|f| QValue::Str(f.to_string())).collect(),
                            ),
                        );
                        QValue::Dict(bd)
                    })
                    .collect();
                data.put("bitmaps", QValue::List(list));
            }
            data.put_str("compression-type", q.compression_type);
            w.put_str("type", "qcow2");
            w.put("data", QValue::Dict(data));
        }
    }
    w
}

fn str_of<'a>(d: &'a QDict, k: &str) -> Option<&'a str> {
    match d.get(k) {
        Some(QValue::Str(s)) => Some(s),
        _ => None,
    }
}

fn uint_of(d: &QDict, k: &str) -> Option<u64> {
    match d.get(k) {
        Some(QValue::UInt(u)) => Some(*u),
        _ => None,
    }
}

fn bool_of(d: &QDict, k: &str) -> Option<bool> {
    match d.get(k) {
        Some(QValue::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// qemu-img's human dump of a BlockGraphInfo (dump_human_image_info).
fn dump_human(out: &mut String, node: &QDict, indentation: usize, path: &str) {
    let children: Vec<&QDict> = match node.get("children") {
        Some(QValue::List(l)) => l
            .iter()
            .filter_map(|c| match c {
                QValue::Dict(d) => Some(d),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    dump_node(out, node, indentation, children.is_empty());
    for c in children {
        let name = str_of(c, "name").unwrap_or("");
        let ind = " ".repeat(indentation * 4);
        out.push_str(&format!("{ind}Child node '{path}{name}':\n"));
        if let Some(QValue::Dict(info)) = c.get("info") {
            dump_human(out, info, indentation + 1, &format!("{path}{name}/"));
        }
    }
}

/// qemu's bdrv_node_info_dump.
fn dump_node(out: &mut String, d: &QDict, indentation: usize, protocol: bool) {
    let ind = " ".repeat(indentation * 4);
    let vsize = uint_of(d, "virtual-size").unwrap_or(0);
    let dsize = match uint_of(d, "actual-size") {
        Some(a) => size_to_str(a),
        None => "unavailable".to_string(),
    };
    out.push_str(&format!(
        "{ind}{}: {}\n",
        if protocol { "filename" } else { "image" },
        str_of(d, "filename").unwrap_or("")
    ));
    out.push_str(&format!(
        "{ind}{}: {}\n",
        if protocol {
            "protocol type"
        } else {
            "file format"
        },
        str_of(d, "format").unwrap_or("")
    ));
    out.push_str(&format!(
        "{ind}{}: {} ({} bytes)\n",
        if protocol {
            "file length"
        } else {
            "virtual size"
        },
        size_to_str(vsize),
        vsize
    ));
    out.push_str(&format!("{ind}disk size: {dsize}\n"));
    if bool_of(d, "encrypted") == Some(true) {
        out.push_str(&format!("{ind}encrypted: yes\n"));
    }
    if let Some(cs) = uint_of(d, "cluster-size") {
        out.push_str(&format!("{ind}cluster_size: {cs}\n"));
    }
    if bool_of(d, "dirty-flag") == Some(true) {
        out.push_str(&format!("{ind}cleanly shut down: no\n"));
    }
    if let Some(b) = str_of(d, "backing-filename") {
        out.push_str(&format!("{ind}backing file: {b}"));
        match str_of(d, "full-backing-filename") {
            None => out.push_str(" (cannot determine actual path)"),
            Some(full) if full != b => out.push_str(&format!(" (actual path: {full})")),
            Some(_) => {}
        }
        out.push('\n');
    }
    if let Some(f) = str_of(d, "backing-filename-format") {
        out.push_str(&format!("{ind}backing file format: {f}\n"));
    }
    if let Some(QValue::List(snaps)) = d.get("snapshots") {
        out.push_str(&format!("{ind}Snapshot list:\n"));
        out.push_str(&format!(
            "{ind}{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}\n",
            "ID", "TAG", "VM_SIZE", "DATE", "VM_CLOCK", "ICOUNT"
        ));
        for s in snaps {
            if let QValue::Dict(s) = s {
                out.push_str(&ind);
                out.push_str(&snapshot_line(s));
                out.push('\n');
            }
        }
    }
    if let Some(QValue::Dict(spec)) = d.get("format-specific") {
        if let Some(QValue::Dict(data)) = spec.get("data") {
            if !data.ordered().is_empty() {
                out.push_str(&format!("{ind}Format specific information:\n"));
                dump_qdict(out, indentation + 1, data);
            }
        }
    }
}

/// One row of the snapshot table (qemu's bdrv_snapshot_dump).
fn snapshot_line(s: &QDict) -> String {
    let secs = uint_of(s, "vm-clock-sec").unwrap_or(0);
    let nsec = uint_of(s, "vm-clock-nsec").unwrap_or(0);
    let clock = format!(
        "{:04}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        nsec / 1_000_000
    );
    // qemu-img shows "--" for a snapshot without a recorded icount.
    let icount = uint_of(s, "icount")
        .map(|i| i.to_string())
        .unwrap_or_else(|| "--".to_string());
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        str_of(s, "id").unwrap_or(""),
        str_of(s, "name").unwrap_or(""),
        size_to_str(uint_of(s, "vm-state-size").unwrap_or(0)),
        local_date(uint_of(s, "date-sec").unwrap_or(0)),
        clock,
        icount
    )
}

/// `%Y-%m-%d %H:%M:%S` in local time.
fn local_date(secs: u64) -> String {
    let t = libc::time_t::try_from(secs).unwrap_or(0);
    // SAFETY: localtime_r writes only into the tm we pass; it reads the
    // environment, which this program does not modify concurrently.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return String::new();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn dump_value(out: &mut String, indentation: usize, v: &QValue) {
    match v {
        QValue::UInt(u) => out.push_str(&u.to_string()),
        QValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        QValue::Str(s) => out.push_str(s),
        QValue::Dict(d) => dump_qdict(out, indentation, d),
        QValue::List(l) => dump_qlist(out, indentation, l),
    }
}

fn is_composite(v: &QValue) -> bool {
    matches!(v, QValue::Dict(_) | QValue::List(_))
}

/// qemu's dump_qdict: `key: value`, dashes in keys shown as spaces.
fn dump_qdict(out: &mut String, indentation: usize, d: &QDict) {
    for (k, v) in d.ordered() {
        let key = k.replace('-', " ");
        let comp = is_composite(v);
        out.push_str(&format!(
            "{:w$}{key}:{}",
            "",
            if comp { '\n' } else { ' ' },
            w = indentation * 4
        ));
        dump_value(out, indentation + 1, v);
        if !comp {
            out.push('\n');
        }
    }
}

/// qemu's dump_qlist: `[i]: value`.
fn dump_qlist(out: &mut String, indentation: usize, l: &[QValue]) {
    for (i, v) in l.iter().enumerate() {
        let comp = is_composite(v);
        out.push_str(&format!(
            "{:w$}[{i}]:{}",
            "",
            if comp { '\n' } else { ' ' },
            w = indentation * 4
        ));
        dump_value(out, indentation + 1, v);
        if !comp {
            out.push('\n');
        }
    }
}
