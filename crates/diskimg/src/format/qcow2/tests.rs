//! Driver tests on images built in memory: every entry type, corrupt
//! tables, truncation, run coalescing, the cache bound.

use std::path::Path;
use std::sync::Arc;

use super::header::{CompressionType, Header, INCOMPAT_CORRUPT, INCOMPAT_EXTL2};
use super::l2_entry::{OFLAG_COMPRESSED, OFLAG_COPIED, OFLAG_ZERO};
use super::Qcow2;
use crate::format::mapped::{Mapper, Mapping};
use crate::format::BlockDevice;
use crate::io::{MemoryStorage, Storage};
use crate::{ErrorKind, OpenOptions};

/// Builds a qcow2 image: header in cluster 0, reftable in 1, L1 in 3, L2
/// tables from cluster 4 (one per L1 index used), data wherever `data` says.
struct Builder {
    h: Header,
    l2: Vec<(u64, u64, u64)>,
    data: Vec<(u64, Vec<u8>)>,
    l1_override: Vec<(usize, u64)>,
    truncate: Option<usize>,
}

impl Builder {
    fn new(cluster_bits: u32, version: u32, extended: bool, size: u64) -> Self {
        let cs = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits,
            size,
            crypt_method: 0,
            l1_size: 0,
            l1_table_offset: 3 * cs,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: if extended { INCOMPAT_EXTL2 } else { 0 },
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: if version == 3 { 112 } else { 72 },
            compression_type: CompressionType::Zlib,
        };
        h.l1_size = h.l1_entries_needed() as u32;
        Builder {
            h,
            l2: Vec::new(),
            data: Vec::new(),
            l1_override: Vec::new(),
            truncate: None,
        }
    }

    /// Sets the L2 entry of guest cluster `index`.
    fn entry(mut self, index: u64, entry: u64, bitmap: u64) -> Self {
        self.l2.push((index, entry, bitmap));
        self
    }

    fn bytes(mut self, offset: u64, b: Vec<u8>) -> Self {
        self.data.push((offset, b));
        self
    }

    fn build(&self) -> Vec<u8> {
        let h = &self.h;
        let cs = h.cluster_size();
        let mut img = vec![0u8; (4 * cs) as usize];
        let hb = h.to_bytes();
        img[..hb.len()].copy_from_slice(&hb);
        let per_table = 1u64 << h.l2_bits();
        let esize = h.l2_entry_size();
        let mut tables: Vec<u64> = Vec::new();
        for &(index, entry, bitmap) in &self.l2 {
            let l1i = index / per_table;
            let slot = match tables.iter().position(|&t| t == l1i) {
                Some(s) => s,
                None => {
                    tables.push(l1i);
                    tables.len() - 1
                }
            };
            let l2_off = (4 + slot as u64) * cs;
            let need = (l2_off + cs) as usize;
            if img.len() < need {
                img.resize(need, 0);
            }
            let l1_pos = (h.l1_table_offset + l1i * 8) as usize;
            img[l1_pos..l1_pos + 8].copy_from_slice(&(l2_off | OFLAG_COPIED).to_be_bytes());
            let e = (l2_off + (index % per_table) * esize) as usize;
            img[e..e + 8].copy_from_slice(&entry.to_be_bytes());
            if esize == 16 {
                img[e + 8..e + 16].copy_from_slice(&bitmap.to_be_bytes());
            }
        }
        for &(i, v) in &self.l1_override {
            let pos = h.l1_table_offset as usize + i * 8;
            img[pos..pos + 8].copy_from_slice(&v.to_be_bytes());
        }
        for (off, b) in &self.data {
            let end = *off as usize + b.len();
            if img.len() < end {
                img.resize(end, 0);
            }
            img[*off as usize..end].copy_from_slice(b);
        }
        if let Some(t) = self.truncate {
            img.truncate(t);
        }
        img
    }

    fn open_with(&self, opts: &OpenOptions) -> crate::Result<Qcow2> {
        let s: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes("m.qcow2", self.build()));
        Qcow2::open(s, Path::new("m.qcow2"), opts)
    }

    fn open(&self) -> Qcow2 {
        self.open_with(&OpenOptions::default()).unwrap()
    }
}

fn read(q: &Qcow2, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0xeeu8; len];
    q.read_at(&mut b, off).unwrap();
    b
}

#[test]
fn reads_every_standard_entry_type() {
    for bits in [9u32, 12, 16] {
        let cs = 1u64 << bits;
        let data_at = 40 * cs;
        let q = Builder::new(bits, 3, false, 64 * cs)
            .entry(0, data_at | OFLAG_COPIED, 0)
            .entry(1, OFLAG_ZERO, 0)
            .entry(2, (data_at + cs) | OFLAG_ZERO, 0)
            .bytes(data_at, vec![0x11; cs as usize])
            .bytes(data_at + cs, vec![0x22; cs as usize])
            .open();
        assert_eq!(read(&q, 0, cs as usize), vec![0x11; cs as usize]);
        assert_eq!(read(&q, cs, 3 * cs as usize), vec![0; 3 * cs as usize]);
        assert_eq!(
            q.map(0, 64 * cs).unwrap(),
            (Mapping::Data { offset: data_at }, cs)
        );
        assert_eq!(
            q.map(cs, 64 * cs).unwrap(),
            (Mapping::Zero { offset: None }, cs)
        );
        assert_eq!(
            q.map(2 * cs + 5, 64 * cs).unwrap(),
            (
                Mapping::Zero {
                    offset: Some(data_at + cs + 5)
                },
                cs - 5
            )
        );
        assert_eq!(
            q.map(3 * cs, 64 * cs).unwrap(),
            (Mapping::Unallocated { offset: None }, 61 * cs)
        );
        let st = q.block_status(0, 64 * cs).unwrap();
        assert!(st.data && st.allocated && !st.zero);
        assert_eq!(st.offset, Some(data_at));
    }
}

#[test]
fn runs_coalesce_within_and_across_l2_tables() {
    // 512-byte clusters: 64 entries per L2 table.
    let cs = 512u64;
    let mut b = Builder::new(9, 3, false, 1024 * cs);
    for i in 60..70u64 {
        b = b.entry(i, ((200 + i) * cs) | OFLAG_COPIED, 0);
    }
    b = b.entry(70, 500 * cs, 0);
    let q = b.open();
    assert_eq!(
        q.map(60 * cs + 7, u64::MAX).unwrap(),
        (
            Mapping::Data {
                offset: 260 * cs + 7
            },
            10 * cs - 7
        )
    );
    assert_eq!(q.map(70 * cs, u64::MAX).unwrap().1, cs);
    // Unallocated L1 entries and clusters merge into one run.
    assert_eq!(
        q.map(71 * cs, u64::MAX).unwrap(),
        (Mapping::Unallocated { offset: None }, (1024 - 71) * cs)
    );
    assert_eq!(
        q.map(0, u64::MAX).unwrap(),
        (Mapping::Unallocated { offset: None }, 60 * cs)
    );
    // max_len bounds the run.
    assert_eq!(q.map(60 * cs, 3).unwrap().1, 3);
}

#[test]
fn extended_l2_subclusters() {
    let cs = 1u64 << 16;
    let sc = cs / 32;
    let host = 10 * cs;
    // Cluster 0: subcluster 0 data, 1 zero, rest unallocated-alloc.
    // Cluster 1: unallocated with subcluster 3 zero.
    let q = Builder::new(16, 3, true, 16 * cs)
        .entry(0, host, 1 | (1 << 33))
        .entry(1, 0, 1 << 35)
        .bytes(host, vec![0x33; sc as usize])
        .open();
    assert_eq!(q.map(0, cs).unwrap(), (Mapping::Data { offset: host }, sc));
    assert_eq!(
        q.map(sc, cs).unwrap(),
        (
            Mapping::Zero {
                offset: Some(host + sc)
            },
            sc
        )
    );
    assert_eq!(
        q.map(2 * sc, 2 * cs).unwrap(),
        (
            Mapping::Unallocated {
                offset: Some(host + 2 * sc)
            },
            cs - 2 * sc
        )
    );
    assert_eq!(
        q.map(cs, cs).unwrap(),
        (Mapping::Unallocated { offset: None }, 3 * sc)
    );
    assert_eq!(
        q.map(cs + 3 * sc, cs).unwrap(),
        (Mapping::Zero { offset: None }, sc)
    );
    assert_eq!(read(&q, 0, sc as usize + 1), {
        let mut v = vec![0x33; sc as usize];
        v.push(0);
        v
    });
}

#[test]
fn invalid_subcluster_is_an_error_naming_the_table() {
    let cs = 1u64 << 16;
    let q = Builder::new(16, 3, true, 16 * cs)
        .entry(1, 12 * cs, 1 | (1 << 32))
        .entry(2, 0, 1)
        .open();
    let mut buf = vec![0u8; 4096];
    let e = q.read_at(&mut buf, cs).unwrap_err().to_string();
    assert!(
        e.contains("Invalid cluster entry found (L2 offset: 0x40000, L2 index: 0x1"),
        "{e}"
    );
    assert!(e.contains("m.qcow2"), "{e}");
    assert!(q.read_at(&mut buf, 2 * cs).is_err());
    // A run before the bad entry ends at it.
    assert_eq!(q.map(0, 16 * cs).unwrap().1, cs);
}

#[test]
fn corrupt_tables_are_errors_not_panics() {
    let cs = 1u64 << 16;
    // Unaligned L2 table offset.
    let mut b = Builder::new(16, 3, false, 16 * cs);
    b.l1_override.push((0, 0x40200));
    let q = b.open();
    let e = q.map(0, cs).unwrap_err().to_string();
    assert!(
        e.contains("L2 table offset 0x40200 unaligned (L1 index: 0x0)"),
        "{e}"
    );
    // Unaligned data cluster.
    let q = Builder::new(16, 3, false, 16 * cs)
        .entry(3, 0x50200, 0)
        .open();
    let e = q.map(3 * cs, cs).unwrap_err().to_string();
    assert!(
        e.contains("Cluster allocation offset 0x50200 unaligned"),
        "{e}"
    );
    // Zero flag in a v2 image.
    let q = Builder::new(16, 2, false, 16 * cs)
        .entry(0, OFLAG_ZERO, 0)
        .open();
    let e = q.map(0, cs).unwrap_err().to_string();
    assert!(
        e.contains("Zero cluster entry found in pre-v3 image"),
        "{e}"
    );
    // Compressed garbage names the guest and host offsets.
    let q = Builder::new(16, 3, false, 16 * cs)
        .entry(5, OFLAG_COMPRESSED | 0x70000, 0)
        .bytes(0x70000, vec![0xff; 512])
        .open();
    let mut buf = [0u8; 16];
    let e = q.read_at(&mut buf, 5 * cs).unwrap_err().to_string();
    assert!(
        e.contains("guest offset 327680") && e.contains("host offset 458752"),
        "{e}"
    );
    assert!(e.contains("m.qcow2"), "{e}");
}

#[test]
fn truncated_image_reads_zeros_past_eof() {
    let cs = 1u64 << 12;
    let mut b = Builder::new(12, 3, false, 64 * cs).entry(0, 20 * cs, 0);
    // Cut the file in the middle of the L2 table: entry 0 survives.
    b.truncate = Some((4 * cs + 64) as usize);
    let q = b.open();
    assert_eq!(read(&q, 0, 8192), vec![0; 8192]);
    assert_eq!(q.map(0, cs).unwrap().0, Mapping::Data { offset: 20 * cs });
    assert_eq!(
        q.map(cs, 64 * cs).unwrap(),
        (Mapping::Unallocated { offset: None }, 63 * cs)
    );
}

#[test]
fn compressed_clusters_decode() {
    use std::io::Write;
    let cs = 1u64 << 12;
    let plain: Vec<u8> = (0..cs).map(|i| (i % 13) as u8).collect();
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&plain).unwrap();
    let c = enc.finish().unwrap();
    let at = 30 * cs + 100;
    let e = super::l2_entry::encode_compressed(at, c.len() as u64, 12);
    let q = Builder::new(12, 3, false, 8 * cs)
        .entry(2, e, 0)
        .bytes(at, c)
        .open();
    assert_eq!(read(&q, 2 * cs, cs as usize), plain);
    assert_eq!(read(&q, 2 * cs + 100, 50), plain[100..150].to_vec());
    let st = q.block_status(2 * cs + 1, 8 * cs).unwrap();
    assert!(st.compressed && st.data && st.offset.is_none());
    assert_eq!(st.len, cs - 1);
}

#[test]
fn open_checks_feature_bits() {
    let cs = 1u64 << 16;
    let mut b = Builder::new(16, 3, false, 16 * cs);
    b.h.incompatible_features = 1 << 5;
    let e = b.open_with(&OpenOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().starts_with(
        "Could not open 'm.qcow2': Unsupported qcow2 feature(s): Unknown incompatible feature: 20"
    ));
    let mut b = Builder::new(16, 3, false, 16 * cs);
    b.h.incompatible_features = INCOMPAT_CORRUPT;
    assert!(b.open_with(&OpenOptions::default()).is_ok());
    let rw = OpenOptions {
        writable: true,
        ..OpenOptions::default()
    };
    let e = b.open_with(&rw).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    let e = e.to_string();
    assert!(
        e.contains("qcow2: Image is corrupt; cannot be opened read/write"),
        "{e}"
    );
    let mut b = Builder::new(16, 3, false, 16 * cs);
    b.h.crypt_method = 2;
    let e = b.open_with(&OpenOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("encryption is not supported"));
    let mut b = Builder::new(16, 3, false, 16 * cs);
    b.h.incompatible_features = super::header::INCOMPAT_DATA_FILE;
    let e = b
        .open_with(&OpenOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("'data-file' is required for this image"), "{e}");
    let info_only = OpenOptions {
        open_data_file: false,
        ..OpenOptions::default()
    };
    let q = b.open_with(&info_only).unwrap();
    let mut buf = [0u8; 8];
    // Unallocated reads need no data file; no entry is allocated here.
    q.read_at(&mut buf, 0).unwrap();
}

#[test]
fn writes_to_a_read_only_open_are_refused_and_flush_is_ok() {
    let q = Builder::new(16, 3, false, 1 << 20).open();
    assert_eq!(q.write_at(&[1], 0).unwrap_err().kind(), ErrorKind::ReadOnly);
    assert_eq!(
        q.write_zeroes(0, 512, false).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(q.discard(0, 512).unwrap_err().kind(), ErrorKind::ReadOnly);
    q.flush().unwrap();
    let mut buf = [0u8; 2];
    assert!(q.read_at(&mut buf, (1 << 20) - 1).is_err());
}

#[test]
fn l2_cache_is_bounded() {
    let cs = 512u64;
    let mut b = Builder::new(9, 3, false, 64 * 64 * cs);
    for t in 0..20u64 {
        b = b.entry(t * 64, (1000 + t) * cs, 0);
    }
    let opts = OpenOptions {
        l2_cache_size: Some(3 * cs),
        ..OpenOptions::default()
    };
    let q = b.open_with(&opts).unwrap();
    assert_eq!(q.l2_cache_capacity(), 3);
    for t in 0..20u64 {
        assert_eq!(
            q.map(t * 64 * cs, cs).unwrap().0,
            Mapping::Data {
                offset: (1000 + t) * cs
            }
        );
    }
    assert!(q.cache.len() <= 3);
    // Default: enough for the whole image (64 tables), at least 2.
    assert_eq!(b.open().l2_cache_capacity(), 64);
}

#[test]
fn info_reports_qemu_fields() {
    let q = Builder::new(16, 2, false, 1 << 20).open();
    let i = q.info();
    let Some(crate::format::FormatSpecific::Qcow2(s)) = i.specific else {
        panic!()
    };
    assert_eq!((s.compat, s.refcount_bits), ("0.10", 16));
    assert_eq!(
        (s.lazy_refcounts, s.corrupt, s.extended_l2),
        (None, None, None)
    );
    let q = Builder::new(16, 3, true, 1 << 20).open();
    let Some(crate::format::FormatSpecific::Qcow2(s)) = q.info().specific else {
        panic!()
    };
    assert_eq!(
        (s.compat, s.extended_l2, s.corrupt),
        ("1.1", Some(true), Some(false))
    );
}

#[test]
fn qcow2_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Qcow2>();
}

#[test]
fn scattered_64g_image_maps_quickly() {
    // 64 GiB, 64 KiB clusters (1 Mi entries, 128 L2 tables), 250k scattered
    // allocated clusters with non-contiguous host offsets.
    let cs = 1u64 << 16;
    let mut b = Builder::new(16, 3, false, 64 << 30);
    let mut x = 12345u64;
    let mut n = 0;
    for i in 0..(1u64 << 20) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (x >> 33) & 3 == 0 {
            // Host clusters past the end of the file: read as zeros.
            b = b.entry(i, ((1000 + 2 * i) * cs) | OFLAG_COPIED, 0);
            n += 1;
        }
    }
    assert!(n > 250_000);
    let q = b.open();
    let t = std::time::Instant::now();
    let mut off = 0;
    let mut runs = 0;
    while off < q.size() {
        let st = q.block_status(off, q.size() - off).unwrap();
        off += st.len;
        runs += 1;
    }
    let took = t.elapsed();
    eprintln!("{runs} runs over {n} allocated clusters in {took:?}");
    assert!(runs > n);
    // A sanity bound for debug builds on a shared machine; release is far faster.
    assert!(took.as_secs() < 20, "{took:?}");
}

#[test]
fn virtual_size_counts_whole_sectors() {
    // QEMU shows a size field of 1000 as a 512-byte disk.
    let q = Builder::new(16, 3, false, 1000).open();
    assert_eq!(q.size(), 512);
    assert_eq!(q.info().virtual_size, 512);
    assert_eq!(q.block_status(0, 4096).unwrap().len, 512);
}

#[test]
fn check_mode_opens_what_check_must_repair() {
    let cs = 1u64 << 16;
    let mut b = Builder::new(16, 3, false, 16 * cs);
    b.h.incompatible_features = INCOMPAT_CORRUPT;
    b.h.refcount_table_clusters = 0;
    b.h.nb_snapshots = 3;
    b.h.snapshots_offset = 0x50008;
    let check = OpenOptions {
        writable: true,
        for_check: true,
        ..OpenOptions::default()
    };
    let q = b.open_with(&check).unwrap();
    assert!(q.snapshots().is_empty());
    assert!(b.open_with(&OpenOptions::default()).is_err());
}

#[test]
fn backing_file_name_limits() {
    let cs = 1u64 << 16;
    let name = |len: usize, at: u64| {
        let mut b = Builder::new(16, 3, false, cs);
        b.h.backing_file_offset = at;
        b.h.backing_file_size = len as u32;
        let b = b.bytes(at, vec![b'n'; len.min((cs - at) as usize)]);
        b.open_with(&OpenOptions::default()).map(|q| {
            use crate::format::Layer;
            q.backing_link().map(|l| l.filename.len())
        })
    };
    assert_eq!(name(1023, 512).unwrap(), Some(1023));
    let e = name(1024, 512).err().unwrap().to_string();
    assert!(e.contains("Backing file name too long"), "{e}");
    // The name must also end inside cluster 0.
    assert_eq!(name(16, cs - 16).unwrap(), Some(16));
    assert!(name(17, cs - 16).is_err());
    // An empty name is no backing file.
    assert_eq!(name(0, 512).unwrap(), None);
}

#[test]
fn data_file_names_from_the_image_are_local_files_only() {
    let cs = 1u64 << 16;
    for (name, ok_info_only) in [("json:{\"driver\":\"file\"}", true), ("nbd://h/x", true)] {
        let mut b = Builder::new(16, 3, false, 16 * cs);
        b.h.incompatible_features = super::header::INCOMPAT_DATA_FILE;
        let ext = super::extensions::encode(super::extensions::EXT_DATA_FILE, name.as_bytes());
        let b = b.bytes(112, ext);
        let e = b.open_with(&OpenOptions::default()).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("external data file name"), "{e}");
        let info_only = OpenOptions {
            open_data_file: false,
            ..OpenOptions::default()
        };
        assert_eq!(b.open_with(&info_only).is_ok(), ok_info_only);
    }
}

#[test]
fn block_device_data_storage_is_the_data_file() {
    let q = Builder::new(16, 3, false, 1 << 20).open();
    assert_eq!(BlockDevice::data_storage(&q).name(), "m.qcow2");
    let mut b = Builder::new(16, 3, false, 1 << 20);
    b.h.incompatible_features = super::header::INCOMPAT_DATA_FILE;
    let b = b.bytes(
        112,
        super::extensions::encode(super::extensions::EXT_DATA_FILE, b"d.raw"),
    );
    let info_only = OpenOptions {
        open_data_file: false,
        ..OpenOptions::default()
    };
    let q = b.open_with(&info_only).unwrap();
    assert_eq!(BlockDevice::data_storage(&q).name(), "d.raw");
}
