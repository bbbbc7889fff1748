//! `discard`, `flush` and `truncate`.

use diskimg::Preallocation;

use super::args::{bad_option, num};
use super::getopt::{getopt, Item};
use super::num::{cvtnum, cvtnum_error, REQUEST_MAX_BYTES};
use super::output::report;
use super::request::{self, timed};
use super::session::Session;
use super::table::{usage_line, CmdResult, Failed};
use crate::size::SizeError;

/// `discard [-Cq] off len`
pub fn discard_f(s: &mut Session, argv: &[String]) -> CmdResult {
    let p = getopt(&argv[0], &argv[1..], "Cq", &[]);
    let (mut csv, mut quiet) = (false, false);
    for it in &p.items {
        match it {
            Item::Opt('C', _) => csv = true,
            Item::Opt('q', _) => quiet = true,
            Item::Bad(m) => return bad_option("discard", m),
            Item::Opt(..) => {}
        }
    }
    let [off_arg, len_arg] = p.operands.as_slice() else {
        out!("{}", usage_line("discard"));
        return Err(Failed);
    };
    let offset = num(off_arg)?;
    let bytes = num(len_arg)?;
    if bytes > REQUEST_MAX_BYTES {
        outln!("length cannot exceed {REQUEST_MAX_BYTES}, given {len_arg}");
        return Err(Failed);
    }
    let img = s.image()?;
    let (r, t) = timed(|| request::discard(s, img, offset, bytes));
    if let Err(e) = r {
        outln!("discard failed: {e}");
        return Err(Failed);
    }
    if !quiet {
        out!("{}", report("discard", t, offset, bytes, bytes, 1, csv));
    }
    Ok(())
}

/// `flush`. qemu-io prints nothing when a flush fails; only the exit
/// status tells.
pub fn flush_f(s: &mut Session, _argv: &[String]) -> CmdResult {
    let img = s.image()?;
    img.dev.flush().map_err(|_| Failed)
}

/// `truncate [-m prealloc_mode] off`: resizes the image (growing or
/// shrinking).
pub fn truncate_f(s: &mut Session, argv: &[String]) -> CmdResult {
    let p = getopt(&argv[0], &argv[1..], "m:", &[]);
    let mut prealloc = Preallocation::Off;
    for it in &p.items {
        match it {
            Item::Opt('m', Some(m)) => match Preallocation::parse(m) {
                Some(pa) => prealloc = pa,
                None => {
                    s.error(format!("Invalid preallocation mode '{m}'"));
                    return Err(Failed);
                }
            },
            Item::Bad(m) => return bad_option("truncate", m),
            Item::Opt(..) => {}
        }
    }
    // qemu-io reads the size from the first operand and ignores any
    // further one. Its error message names argv[1], which is the -m option
    // when one was given, and with no operand at all it parses nothing and
    // reports that; both copied on purpose.
    let parsed = match p.operands.first() {
        Some(a) => cvtnum(a),
        None => Err(SizeError::Invalid),
    };
    let size = match parsed {
        Ok(v) => v,
        Err(e) => {
            out!("{}", cvtnum_error(e, &argv[1]));
            return Err(Failed);
        }
    };
    let img = s.image()?;
    if let Err(e) = img.dev.truncate(size, prealloc) {
        s.error(e.message());
        return Err(Failed);
    }
    Ok(())
}
