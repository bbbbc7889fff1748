//! Command arguments with qemu-io's messages: a bad option prints getopt's
//! message and the command's synopsis; a bad number or pattern prints
//! qemu-io's line; the command then fails.

use super::num::{cvtnum, cvtnum_error, parse_pattern, REQUEST_MAX_BYTES};
use super::table::{usage_line, CmdResult, Failed};

/// Prints a bad option's message and the command's synopsis.
pub fn bad_option(cmd: &str, msg: &str) -> CmdResult {
    eprintln!("{msg}");
    out!("{}", usage_line(cmd));
    Err(Failed)
}

/// Parses a size operand, printing qemu-io's message when it is bad.
pub fn num(arg: &str) -> Result<u64, Failed> {
    cvtnum(arg).map_err(|e| {
        out!("{}", cvtnum_error(e, arg));
        Failed
    })
}

/// Parses a pattern option, printing qemu-io's message when it is bad.
pub fn pattern(arg: &str) -> Result<u8, Failed> {
    parse_pattern(arg).map_err(|m| {
        out!("{m}");
        Failed
    })
}

/// Parses the lengths of a vectored request (qemu-io's create_iovec) and
/// returns their sum.
pub fn iovec_total(lens: &[String]) -> Result<u64, Failed> {
    let mut total: u64 = 0;
    for arg in lens {
        let len = num(arg)?;
        if len > REQUEST_MAX_BYTES {
            outln!("Argument '{arg}' exceeds maximum size {REQUEST_MAX_BYTES}");
            return Err(Failed);
        }
        if total > REQUEST_MAX_BYTES - len {
            outln!("The total number of bytes exceed the maximum size {REQUEST_MAX_BYTES}");
            return Err(Failed);
        }
        total += len;
    }
    Ok(total)
}
