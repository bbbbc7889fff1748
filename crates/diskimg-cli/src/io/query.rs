//! `length`, `info`, `map` and `alloc`: what the open image is and which of
//! its ranges the top layer allocates.

use diskimg::format::FormatSpecific;
use diskimg::BlockDevice;

use super::args::num;
use super::output::cvtstr;
use super::session::{errno_text, Session};
use super::table::{CmdResult, Failed};

/// `length`: the guest size.
pub fn length_f(s: &mut Session, _argv: &[String]) -> CmdResult {
    let img = s.image()?;
    outln!("{}", cvtstr(img.dev.size() as f64));
    Ok(())
}

/// Where qcow2 keeps the VM state: just past the guest range the L1 table
/// can map, rounded to whole L2 tables' worth (QEMU's qcow2_vm_state_offset).
fn vm_state_offset(size: u64, cluster_size: u64, extended_l2: bool) -> u64 {
    if cluster_size == 0 || !cluster_size.is_power_of_two() {
        return 0;
    }
    let entry = if extended_l2 { 16 } else { 8 };
    let per_l2 = u128::from(cluster_size) * u128::from(cluster_size / entry);
    let l1_entries = u128::from(size).div_ceil(per_l2);
    u64::try_from(l1_entries * per_l2).unwrap_or(u64::MAX)
}

/// `info`: format, cluster size, VM state offset, format-specific data.
pub fn info_f(s: &mut Session, _argv: &[String]) -> CmdResult {
    let img = s.image()?;
    let info = img.dev.info();
    let cluster = info.cluster_size.unwrap_or(0);
    let vm_state = match &info.specific {
        Some(FormatSpecific::Qcow2(q)) => {
            vm_state_offset(info.virtual_size, cluster, q.extended_l2 == Some(true))
        }
        _ => 0,
    };
    let mut out = format!("format name: {}\n", info.format);
    out.push_str(&format!("cluster size: {}\n", cvtstr(cluster as f64)));
    out.push_str(&format!("vm state offset: {}\n", cvtstr(vm_state as f64)));
    if let Some(spec) = &info.specific {
        out.push_str(&crate::info::format_specific_text(spec));
    }
    out!("{out}");
    Ok(())
}

/// Whether the top layer allocates `offset`, and for how many bytes (at
/// most `bytes`) the answer holds; 0 bytes at or past the end.
fn is_allocated(dev: &dyn BlockDevice, offset: u64, bytes: u64) -> diskimg::Result<(bool, u64)> {
    if bytes == 0 || offset >= dev.size() {
        return Ok((false, 0));
    }
    let st = dev.block_status(offset, bytes)?;
    Ok((st.allocated, st.len.clamp(1, bytes)))
}

/// `alloc offset [count]`: how many of `count` bytes (512 by default) from
/// `offset` the top layer allocates. A range past the end is cut short.
pub fn alloc_f(s: &mut Session, argv: &[String]) -> CmdResult {
    let img = s.image()?;
    let start = num(&argv[1])?;
    let mut count = match argv.get(2) {
        Some(a) => num(a)?,
        None => 512,
    };
    let (mut offset, mut remaining, mut sum) = (start, count, 0u64);
    while remaining > 0 {
        let (alloc, n) = match is_allocated(img.dev.as_ref(), offset, remaining) {
            Ok(r) => r,
            Err(e) => {
                outln!("is_allocated failed: {}", errno_text(&e));
                return Err(Failed);
            }
        };
        offset += n;
        remaining -= n;
        if alloc {
            sum += n;
        }
        if n == 0 {
            count -= remaining;
            remaining = 0;
        }
    }
    outln!(
        "{sum}/{count} bytes allocated at offset {}",
        cvtstr(start as f64)
    );
    Ok(())
}

/// `map`: the image as runs of allocated and unallocated bytes.
pub fn map_f(s: &mut Session, _argv: &[String]) -> CmdResult {
    let img = s.image()?;
    let dev = img.dev.as_ref();
    let mut offset = 0u64;
    let mut bytes = dev.size();
    let mut out = String::new();
    while bytes > 0 {
        let run = (|| -> diskimg::Result<(bool, u64)> {
            let (first, mut total) = is_allocated(dev, offset, bytes)?;
            let mut n = total;
            while n > 0 && total < bytes {
                let (a, m) = is_allocated(dev, offset + total, bytes - total)?;
                if a != first || m == 0 {
                    break;
                }
                total += m;
                n = m;
            }
            Ok((first, total))
        })();
        let (alloc, n) = match run {
            Ok(r) => r,
            Err(e) => {
                out!("{out}");
                s.error(format!(
                    "Failed to get allocation status: {}",
                    errno_text(&e)
                ));
                return Err(Failed);
            }
        };
        if n == 0 {
            out!("{out}");
            s.error("Unexpected end of image");
            return Err(Failed);
        }
        out.push_str(&format!(
            "{} (0x{n:x}) bytes {} at offset {} (0x{offset:x})\n",
            cvtstr(n as f64),
            if alloc {
                "    allocated"
            } else {
                "not allocated"
            },
            cvtstr(offset as f64)
        ));
        offset += n;
        bytes -= n;
    }
    out!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_state_offsets() {
        assert_eq!(vm_state_offset(1 << 20, 65536, false), 512 << 20);
        assert_eq!(vm_state_offset(0, 65536, false), 0);
        assert_eq!(vm_state_offset((512 << 20) + 1, 65536, false), 1 << 30);
        assert_eq!(vm_state_offset(1 << 20, 65536, true), 256 << 20);
        assert_eq!(vm_state_offset(1 << 20, 0, false), 0);
    }
}
