//! Sizes as qemu-img reads and prints them.
//!
//! Parsing follows QEMU's `qemu_strtosz`: a decimal number (with an optional
//! fractional part, allowed only before a unit) or a `0x` hexadecimal number,
//! then at most one unit letter out of `B K M G T P E` (any case; `B` means
//! bytes), then nothing. Printing follows QEMU's `size_to_str`: three
//! significant digits and a binary unit ("1 MiB", "196 KiB", "1.5 GiB").

/// Why a size string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Not a size at all (QEMU's EINVAL).
    Invalid,
    /// A size, but negative or larger than `i64::MAX` (QEMU's ERANGE).
    Range,
}

/// Parses a size with qemu-img's suffixes; results above `i64::MAX` are
/// refused, as QEMU does.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let lower = t.to_ascii_lowercase();
    let (int_val, frac, rest, hex): (u128, Option<&str>, &str, bool) =
        if let Some(h) = lower.strip_prefix("0x") {
            let digits = h.len() - h.trim_start_matches(|c: char| c.is_ascii_hexdigit()).len();
            if digits == 0 {
                return Err(SizeError::Invalid);
            }
            let mut v: u128 = 0;
            for c in h[..digits].chars() {
                let d = c.to_digit(16).ok_or(SizeError::Invalid)? as u128;
                v = v.saturating_mul(16).saturating_add(d);
            }
            (v, None, &t[2 + digits..], true)
        } else {
            let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let mut v: u128 = 0;
            for c in t[..digits].chars() {
                let d = c.to_digit(10).ok_or(SizeError::Invalid)? as u128;
                v = v.saturating_mul(10).saturating_add(d);
            }
            let after = &t[digits..];
            if let Some(f) = after.strip_prefix('.') {
                let fd = f.len() - f.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                if digits == 0 && fd == 0 {
                    return Err(SizeError::Invalid);
                }
                (v, Some(&f[..fd]), &f[fd..], false)
            } else {
                if digits == 0 {
                    return Err(SizeError::Invalid);
                }
                (v, None, after, false)
            }
        };
    let mut chars = rest.chars();
    let (mult, unit): (u128, bool) = match chars.next() {
        None => (1, false),
        Some(c) => match c.to_ascii_lowercase() {
            'b' => (1, false),
            'k' => (1 << 10, true),
            'm' => (1 << 20, true),
            'g' => (1 << 30, true),
            't' => (1 << 40, true),
            'p' => (1 << 50, true),
            'e' => (1 << 60, true),
            _ => return Err(SizeError::Invalid),
        },
    };
    if chars.next().is_some() {
        return Err(SizeError::Invalid);
    }
    if hex && unit {
        return Err(SizeError::Invalid);
    }
    let mut val = int_val.saturating_mul(mult);
    if let Some(f) = frac {
        if !unit && !f.chars().all(|c| c == '0') {
            return Err(SizeError::Invalid);
        }
        if !unit {
            return Err(SizeError::Invalid);
        }
        // floor(0.f * mult), computed exactly on the first 30 digits.
        let mut num: u128 = 0;
        let mut den: u128 = 1;
        for c in f.chars().take(30) {
            num = num * 10 + c.to_digit(10).unwrap_or(0) as u128;
            den *= 10;
        }
        val = val.saturating_add(num.saturating_mul(mult) / den);
    }
    if neg && val != 0 {
        return Err(SizeError::Range);
    }
    if val > i64::MAX as u128 {
        return Err(SizeError::Range);
    }
    Ok(val as u64)
}

/// A number as qemu-img's `cvtnum` reads a count (QEMU's `qemu_strtou64`,
/// base 0: `0x` hexadecimal, a leading `0` octal, no unit): `Range` for a
/// value that is negative or above `i64::MAX`.
pub fn parse_number(v: &str) -> Result<u64, SizeError> {
    let t = v.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (neg, t) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let parsed = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(SizeError::Invalid);
        }
        u64::from_str_radix(h, 16).map_err(|_| SizeError::Range)
    } else if t.len() > 1 && t.starts_with('0') {
        if !t.chars().all(|c| ('0'..='7').contains(&c)) {
            return Err(SizeError::Invalid);
        }
        u64::from_str_radix(&t[1..], 8).map_err(|_| SizeError::Range)
    } else {
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit()) {
            return Err(SizeError::Invalid);
        }
        t.parse::<u64>().map_err(|_| SizeError::Range)
    };
    let n = parsed?;
    if (neg && n != 0) || n > i64::MAX as u64 {
        return Err(SizeError::Range);
    }
    Ok(n)
}

/// Formats `v` as C's `printf("%0.3g", v)`.
pub fn fmt_g3(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    // Round to 3 significant digits first: the exponent after rounding
    // decides between fixed and exponential notation.
    let e = format!("{v:.2e}");
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..3).contains(&exp) {
        let mant = strip_zeros(mant);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mant}e{sign}{:02}", exp.abs());
    }
    let decimals = (2 - exp).max(0) as usize;
    strip_zeros(&format!("{v:.decimals$}"))
}

fn strip_zeros(s: &str) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s.to_string()
    }
}

/// Formats a byte count as QEMU's `size_to_str`: "16 MiB", "196 KiB",
/// "1.5 GiB", "999 B".
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    // QEMU takes i = (frexp exponent of val * 1024 / 1000 - 1) / 10: the
    // largest i with val * 1024 / 1000 >= 2^(10 i), so that the printed
    // integer part stays below 1000.
    let mut i = 0usize;
    while i + 1 < SUFFIXES.len() && (val as u128) * 1024 >= 1000u128 << ((i + 1) * 10) {
        i += 1;
    }
    let div = (1u128 << (i * 10)) as f64;
    format!("{} {}B", fmt_g3(val as f64 / div), SUFFIXES[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512b"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("2m"), Ok(2 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("1e"), Ok(1 << 60));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size(".5k"), Ok(512));
        assert_eq!(parse_size("1.k"), Ok(1024));
        assert_eq!(parse_size("1.0000000001k"), Ok(1024));
        assert_eq!(parse_size("0x10"), Ok(16));
        assert_eq!(parse_size(" 5"), Ok(5));
        assert_eq!(parse_size("1x"), Err(SizeError::Invalid));
        assert_eq!(parse_size("1kb"), Err(SizeError::Invalid));
        assert_eq!(parse_size("1K5"), Err(SizeError::Invalid));
        assert_eq!(parse_size("1.5"), Err(SizeError::Invalid));
        assert_eq!(parse_size("1.5b"), Err(SizeError::Invalid));
        assert_eq!(parse_size("0x"), Err(SizeError::Invalid));
        assert_eq!(parse_size("0x1k"), Err(SizeError::Invalid));
        assert_eq!(parse_size(""), Err(SizeError::Invalid));
        assert_eq!(parse_size("k"), Err(SizeError::Invalid));
        assert_eq!(parse_size("8E"), Err(SizeError::Range));
        assert_eq!(parse_size("16E"), Err(SizeError::Range));
        assert_eq!(parse_size("-5"), Err(SizeError::Range));
        assert_eq!(parse_size("9223372036854775807"), Ok(i64::MAX as u64));
        assert_eq!(parse_size("9223372036854775808"), Err(SizeError::Range));
    }

    #[test]
    fn formats_like_printf_g3() {
        assert_eq!(fmt_g3(16.0), "16");
        assert_eq!(fmt_g3(1.5), "1.5");
        assert_eq!(fmt_g3(196.0), "196");
        assert_eq!(fmt_g3(0.999), "0.999");
        assert_eq!(fmt_g3(1.0 / 3.0), "0.333");
        assert_eq!(fmt_g3(999.9), "1e+03");
        assert_eq!(fmt_g3(12.345), "12.3");
        assert_eq!(fmt_g3(0.0001234), "0.000123");
        assert_eq!(fmt_g3(0.00001234), "1.23e-05");
    }

    #[test]
    fn size_to_str_matches_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(999), "999 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
        assert_eq!(size_to_str(1023), "0.999 KiB");
        assert_eq!(size_to_str(1024), "1 KiB");
        assert_eq!(size_to_str(4096), "4 KiB");
        assert_eq!(size_to_str(196608), "192 KiB");
        assert_eq!(size_to_str(397312), "388 KiB");
        assert_eq!(size_to_str(458752), "448 KiB");
        assert_eq!(size_to_str(16 << 20), "16 MiB");
        assert_eq!(size_to_str(3 << 29), "1.5 GiB");
        assert_eq!(size_to_str(1 << 60), "1 EiB");
        assert_eq!(size_to_str(u64::MAX), "16 EiB");
    }
}
