//! Numbers in qemu-io commands: offsets and lengths with size suffixes
//! (`cvtnum`, QEMU's `qemu_strtosz`), pattern bytes and milliseconds
//! (C's `strtol` with base 0), and the messages for bad ones.

use crate::size::{parse_size, SizeError};

/// The largest request qemu-io passes to the block layer
/// (BDRV_REQUEST_MAX_BYTES: INT_MAX rounded down to whole sectors).
pub const REQUEST_MAX_BYTES: u64 = (i32::MAX as u64 >> 9) << 9;

/// Parses an offset or length: a size with qemu's suffixes.
pub fn cvtnum(s: &str) -> Result<u64, SizeError> {
    parse_size(s)
}

/// The message for a number `cvtnum` refused.
pub fn cvtnum_error(e: SizeError, arg: &str) -> String {
    match e {
        SizeError::Invalid => format!(
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}\n"
        ),
        SizeError::Range => format!("Parsing error: argument too large -- {arg}\n"),
    }
}

/// Parses a number as C's `strtol(s, &end, 0)` and returns it with the
/// unparsed rest: leading white space, a sign, `0x` for hexadecimal, a
/// leading `0` for octal. Out-of-range values saturate as strtol's do.
pub fn strtol(s: &str) -> (i64, &str) {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if (t.starts_with("0x") || t.starts_with("0X"))
        && t[2..].starts_with(|c: char| c.is_ascii_hexdigit())
    {
        (16, &t[2..])
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let n = digits.len() - digits.trim_start_matches(|c: char| c.is_digit(radix)).len();
    if n == 0 {
        // No number at all: strtol leaves the end at the start.
        return (0, s);
    }
    let mut v: i128 = 0;
    for c in digits[..n].chars() {
        v = (v * i128::from(radix) + i128::from(c.to_digit(radix).unwrap_or(0))).min(1 << 64);
    }
    let v = if neg { -v } else { v };
    let v = v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    (v, &digits[n..])
}

/// Parses a pattern byte (0..=255, strtol syntax); prints qemu-io's
/// message and returns `None` for anything else.
pub fn parse_pattern(arg: &str) -> Result<u8, String> {
    let (v, rest) = strtol(arg);
    if !(0..=255).contains(&v) || !rest.is_empty() {
        return Err(format!("{arg} is not a valid pattern byte\n"));
    }
    Ok(v as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtol_as_c() {
        assert_eq!(strtol("0x11"), (17, ""));
        assert_eq!(strtol("017"), (15, ""));
        assert_eq!(strtol("09"), (0, "9"));
        assert_eq!(strtol("12ab"), (12, "ab"));
        assert_eq!(strtol("x"), (0, "x"));
        assert_eq!(strtol("0x"), (0, "x"));
        assert_eq!(strtol("-5"), (-5, ""));
        assert_eq!(strtol("+5"), (5, ""));
        assert_eq!(strtol("\t7"), (7, ""));
        assert_eq!(strtol("99999999999999999999999").0, i64::MAX);
    }

    #[test]
    fn patterns() {
        assert_eq!(parse_pattern("0xcd"), Ok(0xcd));
        assert_eq!(parse_pattern("255"), Ok(255));
        assert_eq!(parse_pattern("0"), Ok(0));
        assert!(parse_pattern("256").is_err());
        assert!(parse_pattern("-1").is_err());
        assert!(parse_pattern("1x").is_err());
        assert_eq!(
            parse_pattern("300"),
            Err("300 is not a valid pattern byte\n".to_string())
        );
    }

    #[test]
    fn request_max() {
        assert_eq!(REQUEST_MAX_BYTES, 2147483136);
    }
}
