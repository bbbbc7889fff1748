//! The internal snapshot table.
//!
//! Invariants enforced by [`read_snapshots`] (QEMU's `qcow2_read_snapshots`):
//! at most 65536 entries (checked by the header); each entry starts 8-byte
//! aligned; extra data at most 1024 bytes per entry; the whole table at most
//! 64 MiB. Only the fixed part, the known extra data, the ID and the name
//! are read; unknown extra data is skipped.

use super::header::Header;
use crate::format::SnapshotInfo;
use crate::io::Storage;
use crate::{Error, Result};

/// Most extra data QEMU accepts in one entry.
pub const MAX_EXTRA_DATA: u32 = 1024;
/// Most snapshots QEMU accepts (QCOW_MAX_SNAPSHOTS).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Largest snapshot table QEMU accepts.
pub const MAX_TABLE_SIZE: u64 = 1024 * 65536;
/// Extra data a v3 entry must carry at least.
pub const V3_MIN_EXTRA_DATA: u32 = 16;

/// One snapshot table entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Offset of the snapshot's L1 table.
    pub l1_table_offset: u64,
    /// Entries of the snapshot's L1 table.
    pub l1_size: u32,
    /// ID string.
    pub id: String,
    /// Name.
    pub name: String,
    /// Date, seconds.
    pub date_sec: u32,
    /// Date, nanoseconds.
    pub date_nsec: u32,
    /// Guest clock, ns.
    pub vm_clock_nsec: u64,
    /// VM state size (64-bit extra field when present, else 32-bit field).
    pub vm_state_size: u64,
    /// Disk size at snapshot time (current size when not recorded).
    pub disk_size: u64,
    /// Instruction count, `None` when not recorded (-1).
    pub icount: Option<u64>,
    /// Bytes of extra data in the entry.
    pub extra_data_size: u32,
}

impl Snapshot {
    /// What `info` shows.
    pub fn info(&self) -> SnapshotInfo {
        SnapshotInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            vm_state_size: self.vm_state_size,
            date_sec: u64::from(self.date_sec),
            date_nsec: u64::from(self.date_nsec),
            vm_clock_nsec: self.vm_clock_nsec,
            icount: self.icount,
        }
    }
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_be_bytes(x)
}

/// A name as QEMU sees it: a C string, ending at the first NUL byte.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Reads the snapshot table of the image in `storage`.
pub fn read_snapshots(storage: &dyn Storage, h: &Header) -> Result<Vec<Snapshot>> {
    let name = storage.name();
    let start = h.snapshots_offset;
    let mut off = start;
    let mut out = Vec::with_capacity((h.nb_snapshots as usize).min(1024));
    for i in 0..h.nb_snapshots {
        off = off.div_ceil(8) * 8;
        let entry_off = off;
        let mut fixed = [0u8; 40];
        storage.read_at(&mut fixed, off)?;
        off += 40;
        let extra_size = be32(&fixed, 36);
        if extra_size > MAX_EXTRA_DATA {
            return Err(Error::invalid(format!(
                "Too much extra metadata in snapshot table entry {i} (snapshot table of '{name}', entry at offset {entry_off}: {extra_size} bytes, at most {MAX_EXTRA_DATA})"
            )));
        }
        let known = extra_size.min(24) as usize;
        let mut extra = [0u8; 24];
        storage.read_at(&mut extra[..known], off)?;
        off += u64::from(extra_size);
        let id_len = be16(&fixed, 12) as usize;
        let name_len = be16(&fixed, 14) as usize;
        let mut strings = vec![0u8; id_len + name_len];
        storage.read_at(&mut strings, off)?;
        off += (id_len + name_len) as u64;
        if off - start > MAX_TABLE_SIZE {
            return Err(Error::invalid(format!(
                "Snapshot table is too big (snapshot table of '{name}' at offset {start}, entry {i}; you can force-remove all {} overhanging snapshots with qemu-img check -r all)",
                h.nb_snapshots - i
            )));
        }
        let mut vm_state_size = u64::from(be32(&fixed, 32));
        if extra_size >= 8 {
            vm_state_size = be64(&extra, 0);
        }
        let disk_size = if extra_size >= 16 {
            be64(&extra, 8)
        } else {
            h.size & !511
        };
        let icount = if extra_size >= 24 {
            Some(be64(&extra, 16)).filter(|&v| v != u64::MAX)
        } else {
            None
        };
        out.push(Snapshot {
            l1_table_offset: be64(&fixed, 0),
            l1_size: be32(&fixed, 8),
            id: c_string(&strings[..id_len]),
            name: c_string(&strings[id_len..]),
            date_sec: be32(&fixed, 16),
            date_nsec: be32(&fixed, 20),
            vm_clock_nsec: be64(&fixed, 24),
            vm_state_size,
            disk_size,
            icount,
            extra_data_size: extra_size,
        });
    }
    Ok(out)
}

/// Encodes one snapshot table entry (for tests and, later, the writer),
/// padded to 8 bytes. `extra` is the raw extra data.
pub fn encode_entry(s: &Snapshot, extra: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&s.l1_table_offset.to_be_bytes());
    v.extend_from_slice(&s.l1_size.to_be_bytes());
    v.extend_from_slice(&(s.id.len() as u16).to_be_bytes());
    v.extend_from_slice(&(s.name.len() as u16).to_be_bytes());
    v.extend_from_slice(&s.date_sec.to_be_bytes());
    v.extend_from_slice(&s.date_nsec.to_be_bytes());
    v.extend_from_slice(&s.vm_clock_nsec.to_be_bytes());
    v.extend_from_slice(&(s.vm_state_size.min(u64::from(u32::MAX)) as u32).to_be_bytes());
    v.extend_from_slice(&(extra.len() as u32).to_be_bytes());
    v.extend_from_slice(extra);
    v.extend_from_slice(s.id.as_bytes());
    v.extend_from_slice(s.name.as_bytes());
    while v.len() % 8 != 0 {
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemoryStorage;

    fn hdr(nb: u32) -> Header {
        Header {
            nb_snapshots: nb,
            snapshots_offset: 0x10000,
            ..super::super::header::tests::v3()
        }
    }

    fn snap(id: &str, name: &str) -> Snapshot {
        Snapshot {
            l1_table_offset: 0x40000,
            l1_size: 2,
            id: id.into(),
            name: name.into(),
            date_sec: 1_795_298_758,
            date_nsec: 959_657_000,
            vm_clock_nsec: 12345,
            vm_state_size: 0,
            disk_size: 1 << 30,
            icount: None,
            extra_data_size: 0,
        }
    }

    fn storage(table: &[u8]) -> MemoryStorage {
        let mut b = vec![0u8; 0x10000];
        b.extend_from_slice(table);
        MemoryStorage::from_bytes("s.qcow2", b)
    }

    fn extra(vm: u64, disk: u64, icount: Option<u64>) -> Vec<u8> {
        let mut e = vm.to_be_bytes().to_vec();
        e.extend_from_slice(&disk.to_be_bytes());
        if let Some(i) = icount {
            e.extend_from_slice(&i.to_be_bytes());
        }
        e
    }

    #[test]
    fn round_trips_entries_with_all_extra_data_sizes() {
        let mut t = encode_entry(&snap("1", "snap1"), &extra(5 << 32, 1 << 30, Some(0)));
        t.extend(encode_entry(
            &snap("2", "s2"),
            &extra(7, 1 << 20, Some(u64::MAX)),
        ));
        let mut s3 = snap("3", "v2-style");
        s3.vm_state_size = 77;
        t.extend(encode_entry(&s3, &[]));
        let mut big = extra(9, 1 << 20, Some(42));
        big.extend_from_slice(&[0xee; 1000]);
        t.extend(encode_entry(&snap("10", "unknown-extra"), &big));
        let s = storage(&t);
        let v = read_snapshots(&s, &hdr(4)).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].name, "snap1");
        assert_eq!(v[0].vm_state_size, 5 << 32);
        assert_eq!(v[0].icount, Some(0));
        assert_eq!(v[1].icount, None);
        assert_eq!(v[1].disk_size, 1 << 20);
        assert_eq!(v[2].vm_state_size, 77);
        assert_eq!(v[2].disk_size, 1 << 30);
        assert_eq!(v[2].icount, None);
        assert_eq!(v[3].id, "10");
        assert_eq!(v[3].icount, Some(42));
        assert_eq!(v[3].info().date_nsec, 959_657_000);
    }

    #[test]
    fn extra_data_limit() {
        let t = encode_entry(&snap("1", "a"), &[0u8; 1024]);
        assert!(read_snapshots(&storage(&t), &hdr(1)).is_ok());
        let t = encode_entry(&snap("1", "a"), &[0u8; 1025]);
        let e = read_snapshots(&storage(&t), &hdr(1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Too much extra metadata in snapshot table entry 0"),
            "{e}"
        );
    }

    #[test]
    fn table_size_limit() {
        // Entries of 40 + 1024 + 65535 + 65535 bytes: the table passes 64 MiB
        // at entry 508.
        let long = "n".repeat(65535);
        let one = encode_entry(&snap(&long, &long), &[0u8; 1024]);
        let per = one.len() as u64;
        let fit = (MAX_TABLE_SIZE / per) as u32;
        let mut t = Vec::new();
        for _ in 0..fit + 1 {
            t.extend_from_slice(&one);
        }
        let s = storage(&t);
        assert_eq!(read_snapshots(&s, &hdr(fit)).unwrap().len(), fit as usize);
        let e = read_snapshots(&s, &hdr(fit + 1)).unwrap_err().to_string();
        assert!(e.contains("Snapshot table is too big"), "{e}");
        assert!(e.contains("1 overhanging"), "{e}");
    }
}
