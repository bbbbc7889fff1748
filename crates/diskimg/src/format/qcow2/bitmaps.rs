//! The persistent bitmap directory (extension 0x23852875).
//!
//! Invariants enforced by [`parse_directory`] (QEMU's `bitmap_list_load` and
//! `check_dir_entry`): the directory is 1..=`MAX_BITMAP_DIRECTORY_SIZE`
//! bytes, holds exactly `nb_bitmaps` entries that exactly fill it, no entry
//! has extra data, and each entry has an aligned non-zero table of
//! 1..=0x8000000 entries and at most 512 MiB of data, granularity bits
//! 9..=31, only the in-use and auto flags, a name of at most 1023 bytes,
//! type 1, and (unless in use) a table large enough for the disk.

use super::extensions::{BitmapsExt, MAX_BITMAP_DIRECTORY_SIZE};
use crate::format::BitmapInfo;
use crate::{Error, Result};

/// Flag: the bitmap was not saved cleanly.
pub const FLAG_IN_USE: u32 = 1;
/// Flag: the bitmap tracks writes.
pub const FLAG_AUTO: u32 = 2;
/// Flags QEMU refuses.
pub const RESERVED_FLAGS: u32 = !(FLAG_IN_USE | FLAG_AUTO);
/// Largest bitmap table, in entries.
pub const MAX_TABLE_SIZE: u32 = 0x800_0000;
/// Largest bitmap data, in bytes.
pub const MAX_PHYS_SIZE: u64 = 0x2000_0000;
/// Granularity limits (log2 bytes).
pub const MIN_GRANULARITY_BITS: u8 = 9;
/// Granularity limits (log2 bytes).
pub const MAX_GRANULARITY_BITS: u8 = 31;
/// Longest bitmap name.
pub const MAX_NAME_SIZE: u16 = 1023;
/// The only bitmap type: dirty tracking.
pub const TYPE_DIRTY_TRACKING: u8 = 1;

/// One bitmap directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    /// Offset of the bitmap table.
    pub table_offset: u64,
    /// Entries in the bitmap table.
    pub table_size: u32,
    /// Flags.
    pub flags: u32,
    /// log2 of the bytes per bit.
    pub granularity_bits: u8,
    /// Name.
    pub name: String,
}

impl Bitmap {
    /// What `info` shows: flags "in-use" then "auto".
    pub fn info(&self) -> BitmapInfo {
        let mut flags = Vec::new();
        if self.flags & FLAG_IN_USE != 0 {
            flags.push("in-use");
        }
        if self.flags & FLAG_AUTO != 0 {
            flags.push("auto");
        }
        BitmapInfo {
            name: self.name.clone(),
            granularity: 1u64 << self.granularity_bits,
            flags,
        }
    }
}

const ENTRY_HEAD: usize = 24;

/// Parses and validates the bitmap directory `dir` announced by `ext`, for
/// an image of `disk_size` bytes with `cluster_size`-byte clusters.
pub fn parse_directory(
    dir: &[u8],
    ext: &BitmapsExt,
    cluster_size: u64,
    disk_size: u64,
) -> Result<Vec<Bitmap>> {
    let err = |m: String| {
        Error::invalid(format!(
            "{m} (bitmap directory at offset {})",
            ext.directory_offset
        ))
    };
    if dir.is_empty() {
        return Err(err("Requested bitmap directory size is zero".into()));
    }
    if dir.len() as u64 > MAX_BITMAP_DIRECTORY_SIZE {
        return Err(err("Requested bitmap directory size is too big".into()));
    }
    let mut out = Vec::new();
    let mut pos = 0usize;
    let mut count = 0u32;
    while pos < dir.len() {
        let Some(e) = dir.get(pos..pos + ENTRY_HEAD) else {
            return Err(err("Broken bitmap directory".into()));
        };
        count += 1;
        if count > ext.nb_bitmaps {
            return Err(err(
                "More bitmaps found than specified in header extension".into()
            ));
        }
        let table_offset = u64::from_be_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        let table_size = u32::from_be_bytes([e[8], e[9], e[10], e[11]]);
        let flags = u32::from_be_bytes([e[12], e[13], e[14], e[15]]);
        let btype = e[16];
        let granularity_bits = e[17];
        let name_size = u16::from_be_bytes([e[18], e[19]]);
        let extra = u32::from_be_bytes([e[20], e[21], e[22], e[23]]);
        let entry_len =
            (ENTRY_HEAD as u64 + u64::from(name_size) + u64::from(extra)).div_ceil(8) * 8;
        let next = pos as u64 + entry_len;
        if next > dir.len() as u64 {
            return Err(err("Broken bitmap directory".into()));
        }
        if extra != 0 {
            return Err(err("Bitmap extra data is not supported".into()));
        }
        let name_start = pos + ENTRY_HEAD;
        let name_bytes = &dir[name_start..name_start + usize::from(name_size)];
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let mut fail = table_size == 0
            || table_offset == 0
            || table_offset % cluster_size != 0
            || table_size > MAX_TABLE_SIZE
            || !(MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&granularity_bits)
            || flags & RESERVED_FLAGS != 0
            || name_size > MAX_NAME_SIZE
            || btype != TYPE_DIRTY_TRACKING;
        if !fail {
            let phys = u64::from(table_size) * cluster_size;
            // phys <= 512 MiB, so phys * 8 << 31 fits in u128 easily.
            let covered = (u128::from(phys) * 8) << granularity_bits;
            fail = phys > MAX_PHYS_SIZE
                || (flags & FLAG_IN_USE == 0 && u128::from(disk_size) > covered);
        }
        if fail {
            return Err(err(format!(
                "Bitmap '{name}' doesn't satisfy the constraints"
            )));
        }
        out.push(Bitmap {
            table_offset,
            table_size,
            flags,
            granularity_bits,
            name,
        });
        pos = next as usize;
    }
    if count != ext.nb_bitmaps {
        return Err(err(
            "Less bitmaps found than specified in header extension".into()
        ));
    }
    if pos != dir.len() {
        return Err(err("Broken bitmap directory".into()));
    }
    Ok(out)
}

/// Reserved bits of a bitmap table entry.
pub const TABLE_ENTRY_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
/// Offset bits of a bitmap table entry.
pub const TABLE_ENTRY_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Bit 0 of an entry without offset: the cluster reads as all ones.
pub const TABLE_ENTRY_FLAG_ALL_ONES: u64 = 1;

/// Whether a bitmap table entry is valid (QEMU's `check_table_entry`): no
/// reserved bits; with an offset, the offset is cluster aligned and the
/// all-ones flag is clear.
pub fn table_entry_valid(entry: u64, cluster_size: u64) -> bool {
    if entry & TABLE_ENTRY_RESERVED_MASK != 0 {
        return false;
    }
    let off = entry & TABLE_ENTRY_OFFSET_MASK;
    off == 0 || (entry & TABLE_ENTRY_FLAG_ALL_ONES == 0 && off & (cluster_size - 1) == 0)
}

/// Checks a bitmap's table (big-endian entries in `table`) as QEMU does
/// when it loads the bitmap at open, with QEMU's message.
pub fn check_table(bitmap: &Bitmap, table: &[u8], cluster_size: u64) -> Result<()> {
    for (i, e) in table.chunks_exact(8).enumerate() {
        let entry = u64::from_be_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
        if !table_entry_valid(entry, cluster_size) {
            return Err(Error::invalid(format!(
                "Could not read bitmap_table table from image for bitmap '{}': Invalid argument (bitmap table at offset {}, entry {i} = {entry:#x})",
                bitmap.name, bitmap.table_offset
            )));
        }
    }
    Ok(())
}

/// Encodes a directory entry (for tests and, later, the writer).
pub fn encode_entry(b: &Bitmap, btype: u8, extra: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&b.table_offset.to_be_bytes());
    v.extend_from_slice(&b.table_size.to_be_bytes());
    v.extend_from_slice(&b.flags.to_be_bytes());
    v.push(btype);
    v.push(b.granularity_bits);
    v.extend_from_slice(&(b.name.len() as u16).to_be_bytes());
    v.extend_from_slice(&(extra.len() as u32).to_be_bytes());
    v.extend_from_slice(extra);
    v.extend_from_slice(b.name.as_bytes());
    while v.len() % 8 != 0 {
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bm(name: &str) -> Bitmap {
        Bitmap {
            table_offset: 0x50000,
            table_size: 1,
            flags: FLAG_AUTO,
            granularity_bits: 16,
            name: name.into(),
        }
    }

    fn ext(nb: u32, size: usize) -> BitmapsExt {
        BitmapsExt {
            nb_bitmaps: nb,
            directory_size: size as u64,
            directory_offset: 0x60000,
        }
    }

    fn parse(entries: &[Vec<u8>], nb: u32) -> std::result::Result<Vec<Bitmap>, String> {
        let dir: Vec<u8> = entries.concat();
        parse_directory(&dir, &ext(nb, dir.len()), 65536, 64 << 20).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_entries_and_flags() {
        let mut b2 = bm("bm1");
        b2.flags = FLAG_IN_USE | FLAG_AUTO;
        b2.granularity_bits = 20;
        let v = parse(
            &[encode_entry(&bm("bm0"), 1, &[]), encode_entry(&b2, 1, &[])],
            2,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].info().flags, vec!["auto"]);
        assert_eq!(v[1].info().flags, vec!["in-use", "auto"]);
        assert_eq!(v[1].info().granularity, 1 << 20);
        let mut off = bm("x");
        off.flags = 0;
        assert!(parse(&[encode_entry(&off, 1, &[])], 1).unwrap()[0]
            .info()
            .flags
            .is_empty());
    }

    #[test]
    fn table_entries() {
        let cs = 65536;
        assert!(table_entry_valid(0, cs));
        assert!(table_entry_valid(1, cs)); // all ones, no offset
        assert!(table_entry_valid(0x80000, cs));
        assert!(!table_entry_valid(0x80001, cs));
        assert!(!table_entry_valid(0x80200, cs));
        assert!(!table_entry_valid(2, cs));
        assert!(!table_entry_valid(1 << 56, cs));
        let b = bm("t");
        let mut t = 0x80000u64.to_be_bytes().to_vec();
        t.extend_from_slice(&0x80002u64.to_be_bytes());
        let e = check_table(&b, &t, cs).unwrap_err().to_string();
        assert!(
            e.contains(
                "Could not read bitmap_table table from image for bitmap 't': Invalid argument"
            ),
            "{e}"
        );
        assert!(check_table(&b, &t[..8], cs).is_ok());
    }

    #[test]
    fn counts_must_match() {
        let e = encode_entry(&bm("a"), 1, &[]);
        assert!(parse(&[e.clone(), e.clone()], 1)
            .unwrap_err()
            .contains("More bitmaps found"));
        assert!(parse(std::slice::from_ref(&e), 2)
            .unwrap_err()
            .contains("Less bitmaps found"));
        let mut cut = e.clone();
        cut.truncate(20);
        assert!(parse(&[cut], 1)
            .unwrap_err()
            .contains("Broken bitmap directory"));
        let mut long = e.clone();
        long.extend_from_slice(&[0u8; 8]);
        assert!(parse(&[long], 1)
            .unwrap_err()
            .contains("Broken bitmap directory"));
        assert!(parse_directory(&[], &ext(1, 0), 65536, 1)
            .unwrap_err()
            .to_string()
            .contains("size is zero"));
    }

    #[test]
    fn constraints() {
        let c = |b: Bitmap, t: u8| parse(&[encode_entry(&b, t, &[])], 1);
        assert!(c(bm("a"), 2)
            .unwrap_err()
            .contains("Bitmap 'a' doesn't satisfy the constraints"));
        let mut b = bm("g");
        b.granularity_bits = 8;
        assert!(c(b.clone(), 1).is_err());
        b.granularity_bits = 9;
        // 1 table entry * 64 KiB * 8 bits * 512 B = 256 MiB >= 64 MiB disk.
        assert!(c(b.clone(), 1).is_ok());
        b.granularity_bits = 31;
        assert!(c(b.clone(), 1).is_ok());
        b.granularity_bits = 32;
        assert!(c(b, 1).is_err());
        let mut b = bm("f");
        b.flags = 4;
        assert!(c(b, 1).is_err());
        let mut b = bm("o");
        b.table_offset = 0x50200;
        assert!(c(b.clone(), 1).is_err());
        b.table_offset = 0;
        assert!(c(b, 1).is_err());
        let mut b = bm("s");
        b.table_size = 0;
        assert!(c(b.clone(), 1).is_err());
        b.table_size = 8192; // 512 MiB of data
        assert!(c(b.clone(), 1).is_ok());
        b.table_size = 8193;
        assert!(c(b, 1).is_err());
        assert!(c(bm(&"n".repeat(1023)), 1).is_ok());
        assert!(c(bm(&"n".repeat(1024)), 1).is_err());
        assert!(parse(&[encode_entry(&bm("e"), 1, &[0u8; 8])], 1)
            .unwrap_err()
            .contains("Bitmap extra data is not supported"));
        // Too small for the disk: refused unless in use.
        let dir = encode_entry(&bm("small"), 1, &[]);
        let big_disk = (65536u64 * 8) << 16;
        assert!(parse_directory(&dir, &ext(1, dir.len()), 65536, big_disk).is_ok());
        assert!(parse_directory(&dir, &ext(1, dir.len()), 65536, big_disk + 1).is_err());
        let mut inuse = bm("small");
        inuse.flags = FLAG_IN_USE;
        let dir = encode_entry(&inuse, 1, &[]);
        assert!(parse_directory(&dir, &ext(1, dir.len()), 65536, big_disk + 1).is_ok());
    }
}
