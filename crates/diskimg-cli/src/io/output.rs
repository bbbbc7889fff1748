//! qemu-io's output formats: sizes (`cvtstr`), durations (`timestr`), the
//! two-line I/O report with its rate line, and the `-v` hex dump.

use std::fmt::Write as _;
use std::time::Duration;

/// Writes `s` to stdout; errors (a closed pipe) are ignored.
pub fn emit(s: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

const KIB: f64 = (1u64 << 10) as f64;
const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
const TIB: f64 = (1u64 << 40) as f64;
const PIB: f64 = (1u64 << 50) as f64;
const EIB: f64 = (1u64 << 60) as f64;

/// A byte count as qemu-io prints it: three decimals and a binary unit,
/// `.000` dropped ("64 KiB", "1.500 KiB"); below 1 KiB six decimals and
/// "bytes" ("512 bytes", "0.059097 bytes").
///
/// qemu-io cuts the number at the first ".000" it finds; that is copied on
/// purpose, so "10.000500" bytes prints as "10 bytes" as it does in qemu-io.
pub fn cvtstr(value: f64) -> String {
    let (mut s, suffix) = if value >= EIB {
        (format!("{:.3}", value / EIB), " EiB")
    } else if value >= PIB {
        (format!("{:.3}", value / PIB), " PiB")
    } else if value >= TIB {
        (format!("{:.3}", value / TIB), " TiB")
    } else if value >= GIB {
        (format!("{:.3}", value / GIB), " GiB")
    } else if value >= MIB {
        (format!("{:.3}", value / MIB), " MiB")
    } else if value >= KIB {
        (format!("{:.3}", value / KIB), " KiB")
    } else {
        (format!("{value:.6}"), " bytes")
    };
    if let Some(pos) = s.find(".000") {
        s.truncate(pos);
    }
    s.push_str(suffix);
    s
}

/// A duration as qemu-io prints it: "00.00 sec" below a second,
/// "H:MM:SS.ss" from a second on or when `verbose` (the `-C` form).
pub fn timestr(t: Duration, verbose: bool) -> String {
    let secs = t.as_secs();
    let frac = f64::from(t.subsec_nanos()) / 1e9;
    if verbose || secs != 0 {
        let s = (secs % 60) as f64 + frac;
        format!("{}:{:02}:{:05.2}", secs / 3600, (secs % 3600) / 60, s)
    } else {
        format!("{frac:05.2} sec")
    }
}

fn per_sec(value: f64, t: Duration) -> f64 {
    value / t.as_secs_f64()
}

/// The report after an I/O command:
///
/// ```text
/// read 512/512 bytes at offset 0
/// 512 bytes, 1 ops; 00.00 sec (2.274 MiB/sec and 4656.1871 ops/sec)
/// ```
///
/// or with `-C` one line `bytes,ops,time,bytes/sec,ops/sec`.
pub fn report(
    op: &str,
    t: Duration,
    offset: u64,
    count: u64,
    total: u64,
    ops: u64,
    csv: bool,
) -> String {
    let ts = timestr(t, csv);
    if csv {
        format!(
            "{total},{ops},{ts},{:.3},{:.3}\n",
            per_sec(total as f64, t),
            per_sec(ops as f64, t)
        )
    } else {
        format!(
            "{op} {total}/{count} bytes at offset {offset}\n{}, {ops} ops; {ts} ({}/sec and {:.4} ops/sec)\n",
            cvtstr(total as f64),
            cvtstr(per_sec(total as f64, t)),
            per_sec(ops as f64, t)
        )
    }
}

/// The `-v` dump: 16 bytes a line, the line's offset in 8 hex digits, the
/// bytes in hex, then letters and digits as themselves and anything else
/// as '.'.
pub fn hexdump(buf: &[u8], offset: u64) -> String {
    let mut out = String::with_capacity(buf.len() / 16 * 70 + 70);
    for (i, line) in buf.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}:  ", offset.wrapping_add(i as u64 * 16));
        for b in line {
            let _ = write!(out, "{b:02x} ");
        }
        out.push(' ');
        for &b in line {
            out.push(if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_qemu_io_prints_them() {
        assert_eq!(cvtstr(0.0), "0 bytes");
        assert_eq!(cvtstr(1.0), "1 bytes");
        assert_eq!(cvtstr(512.0), "512 bytes");
        assert_eq!(cvtstr(0.059097), "0.059097 bytes");
        assert_eq!(cvtstr(10.0005), "10 bytes");
        assert_eq!(cvtstr(1536.0), "1.500 KiB");
        assert_eq!(cvtstr(65536.0), "64 KiB");
        assert_eq!(cvtstr(1048576.0), "1 MiB");
        assert_eq!(cvtstr(512.0 * 1048576.0), "512 MiB");
        assert_eq!(cvtstr(3.271 * GIB), "3.271 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(timestr(Duration::from_micros(1234), false), "00.00 sec");
        assert_eq!(timestr(Duration::from_millis(250), false), "00.25 sec");
        assert_eq!(timestr(Duration::from_millis(1500), false), "0:00:01.50");
        assert_eq!(timestr(Duration::from_millis(1500), true), "0:00:01.50");
        assert_eq!(timestr(Duration::from_millis(250), true), "0:00:00.25");
        assert_eq!(timestr(Duration::from_secs(8663), false), "2:24:23.00");
    }

    #[test]
    fn report_lines() {
        let r = report("read", Duration::from_millis(500), 0, 512, 512, 1, false);
        assert_eq!(
            r,
            "read 512/512 bytes at offset 0\n512 bytes, 1 ops; 00.50 sec (1 KiB/sec and 2.0000 ops/sec)\n"
        );
        let c = report("read", Duration::from_millis(500), 0, 512, 512, 1, true);
        assert_eq!(c, "512,1,0:00:00.50,1024.000,2.000\n");
    }

    #[test]
    fn hexdump_layout() {
        let mut b = vec![0u8; 6];
        b.extend_from_slice(&[0x42; 15]);
        assert_eq!(
            hexdump(&b, 4090),
            "00000ffa:  00 00 00 00 00 00 42 42 42 42 42 42 42 42 42 42  ......BBBBBBBBBB\n\
             0000100a:  42 42 42 42 42  BBBBB\n"
        );
    }
}
