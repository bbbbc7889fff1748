//! `read`, `readv` and `aio_read`: read guest bytes, optionally check them
//! against a pattern and dump them, and report.

use super::args::{bad_option, iovec_total, num, pattern};
use super::getopt::{getopt, Item};
use super::num::REQUEST_MAX_BYTES;
use super::output::{hexdump, report};
use super::request::{self, buffer, timed};
use super::session::Session;
use super::table::{usage_line, CmdResult, Failed};

/// `read [-abCqrv] [-P pattern [-s off] [-l len]] off len`
pub fn read_f(s: &mut Session, argv: &[String]) -> CmdResult {
    let p = getopt(&argv[0], &argv[1..], "bCl:pP:qrs:v", &[]);
    let (mut csv, mut quiet, mut dump, mut vmstate) = (false, false, false, false);
    let mut pat: Option<u8> = None;
    let mut pat_off: Option<u64> = None;
    let mut pat_len: Option<u64> = None;
    for it in &p.items {
        match it {
            Item::Opt('b', _) => vmstate = true,
            Item::Opt('C', _) => csv = true,
            Item::Opt('l', Some(a)) => pat_len = Some(num(a)?),
            // -p: ignored for backwards compatibility; -r: registering
            // the buffer changes nothing here.
            Item::Opt('p' | 'r', _) => {}
            Item::Opt('P', Some(a)) => pat = Some(pattern(a)?),
            Item::Opt('q', _) => quiet = true,
            Item::Opt('s', Some(a)) => pat_off = Some(num(a)?),
            Item::Opt('v', _) => dump = true,
            Item::Bad(m) => return bad_option("read", m),
            Item::Opt(..) => {}
        }
    }
    let [off_arg, len_arg] = p.operands.as_slice() else {
        out!("{}", usage_line("read"));
        return Err(Failed);
    };
    let offset = num(off_arg)?;
    let count = num(len_arg)?;
    if count > REQUEST_MAX_BYTES {
        outln!("length cannot exceed {REQUEST_MAX_BYTES}, given {len_arg}");
        return Err(Failed);
    }
    if pat.is_none() && (pat_len.is_some() || pat_off.is_some()) {
        out!("{}", usage_line("read"));
        return Err(Failed);
    }
    let pat_off = pat_off.unwrap_or(0);
    let pat_len = pat_len.map_or(count as i128 - pat_off as i128, i128::from);
    if pat_len < 0 || pat_len + pat_off as i128 > count as i128 {
        outln!("pattern verification range exceeds end of read data");
        return Err(Failed);
    }
    let pat_len = pat_len as u64;
    if vmstate {
        if !offset.is_multiple_of(512) {
            outln!("{offset} is not a sector-aligned value for 'offset'");
            return Err(Failed);
        }
        if !count.is_multiple_of(512) {
            outln!("{count} is not a sector-aligned value for 'count'");
            return Err(Failed);
        }
        s.error("the VM state area (read -b) is not supported by diskimg");
        outln!("read failed: Operation not supported");
        return Err(Failed);
    }
    let img = s.image()?;
    let mut buf = match buffer(count, 0xab) {
        Ok(b) => b,
        Err(e) => {
            outln!("read failed: {e}");
            return Err(Failed);
        }
    };
    let (r, t) = timed(|| request::read(s, img, &mut buf, offset));
    if let Err(e) = r {
        outln!("read failed: {e}");
        return Err(Failed);
    }
    let mut ret = Ok(());
    if let Some(pv) = pat {
        let start = pat_off as usize;
        let end = start + pat_len as usize;
        if buf[start..end].iter().any(|&b| b != pv) {
            outln!(
                "Pattern verification failed at offset {}, {pat_len} bytes",
                offset + pat_off
            );
            ret = Err(Failed);
        }
    }
    if quiet {
        return ret;
    }
    if dump {
        out!("{}", hexdump(&buf, offset));
    }
    out!("{}", report("read", t, offset, count, count, 1, csv));
    ret
}

/// Options common to `readv` and `aio_read`.
struct VecRead {
    csv: bool,
    quiet: bool,
    dump: bool,
    pat: Option<u8>,
    operands: Vec<String>,
}

/// Parses `readv`/`aio_read` options; `aio_read -i` returns `Ok(None)`
/// after printing its line.
fn parse_vec_read(name: &str, argv: &[String], spec: &str) -> Result<Option<VecRead>, Failed> {
    let p = getopt(&argv[0], &argv[1..], spec, &[]);
    let mut v = VecRead {
        csv: false,
        quiet: false,
        dump: false,
        pat: None,
        operands: p.operands,
    };
    for it in &p.items {
        match it {
            Item::Opt('C', _) => v.csv = true,
            Item::Opt('P', Some(a)) => v.pat = Some(pattern(a)?),
            Item::Opt('q', _) => v.quiet = true,
            Item::Opt('r', _) => {}
            Item::Opt('v', _) => v.dump = true,
            Item::Opt('i', _) => {
                // qemu-io only counts an invalid request in its statistics.
                outln!("injecting invalid read request");
                return Ok(None);
            }
            Item::Bad(m) => {
                bad_option(name, m)?;
            }
            Item::Opt(..) => {}
        }
    }
    if v.operands.len() < 2 {
        out!("{}", usage_line(name));
        return Err(Failed);
    }
    Ok(Some(v))
}

/// Reads and reports a vectored request; `aio` selects aio_read's
/// behaviour: a failure or pattern mismatch is reported but the command
/// succeeds, as qemu-io's aio_read does once the request is submitted.
fn vec_read(s: &mut Session, v: VecRead, aio: bool) -> CmdResult {
    let offset = num(&v.operands[0])?;
    let count = iovec_total(&v.operands[1..])?;
    let img = s.image()?;
    let fail = if aio { Ok(()) } else { Err(Failed) };
    let mut buf = match buffer(count, 0xab) {
        Ok(b) => b,
        Err(e) => {
            outln!("readv failed: {e}");
            return fail;
        }
    };
    let (r, t) = timed(|| request::read(s, img, &mut buf, offset));
    if let Err(e) = r {
        outln!("readv failed: {e}");
        return fail;
    }
    let mut ret = Ok(());
    if let Some(pv) = v.pat {
        if buf.iter().any(|&b| b != pv) {
            outln!("Pattern verification failed at offset {offset}, {count} bytes");
            if !aio {
                ret = Err(Failed);
            }
        }
    }
    if v.quiet {
        return ret;
    }
    if v.dump {
        out!("{}", hexdump(&buf, offset));
    }
    out!("{}", report("read", t, offset, count, count, 1, v.csv));
    ret
}

/// `readv [-Cqrv] [-P pattern] off len [len..]`
pub fn readv_f(s: &mut Session, argv: &[String]) -> CmdResult {
    match parse_vec_read("readv", argv, "CP:qrv")? {
        Some(v) => vec_read(s, v, false),
        None => Ok(()),
    }
}

/// `aio_read [-Ciqrv] [-P pattern] off len [len..]`: runs at once; its
/// report is printed when it completes, before the next command.
pub fn aio_read_f(s: &mut Session, argv: &[String]) -> CmdResult {
    match parse_vec_read("aio_read", argv, "CiP:qrv")? {
        Some(v) => vec_read(s, v, true),
        None => Ok(()),
    }
}
