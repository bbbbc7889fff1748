//! qcow2 (versions 2 and 3): the read side.
//!
//! The on-disk structures live in their own files ([`header`],
//! [`extensions`], [`l2_entry`], [`refcount`], [`snapshot`], [`bitmaps`]);
//! [`l2_cache`] and [`compressed`] are the engines the reader uses. The
//! driver only *maps* guest ranges ([`Mapper`]); reads and block status
//! come from [`crate::format::mapped`].
//!
//! Invariants of an open [`Qcow2`]: the header passed every open-time check
//! QEMU makes; the active L1 table is in memory (at most 32 MiB); L2 tables
//! are read on demand through a bounded cache whose lock is never held
//! across I/O; every host offset taken from a table is checked for
//! alignment before use, and an impossible entry is an error naming the
//! file, the table offset and the index, never a panic.

mod allocator;
pub mod bitmaps;
pub mod check;
mod compress;
pub mod compressed;
mod compressed_writer;
pub mod create;
pub mod deflate;
pub mod extensions;
pub mod header;
pub mod l2_cache;
pub mod l2_entry;
mod range_lock;
pub mod refcount;
mod repair;
mod resize;
pub mod snapshot;
#[cfg(test)]
mod tests;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use self::bitmaps::Bitmap;
use self::extensions::Extensions;
use self::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_MASK};
use self::l2_cache::{L2Cache, L2Table};
use self::l2_entry::{SubclusterType, OFFSET_MASK};
use self::snapshot::Snapshot;
use super::mapped::{self, Mapper, Mapping};
use super::{
    BackingLink, BlockDevice, BlockStatus, CheckReport, FormatSpecific, ImageInfo, Layer,
    Qcow2Specific, RepairMode,
};
use crate::io::{FileStorage, HostExtent, OpenMode, Storage};
use crate::{Error, ErrorKind, OpenOptions, Result, DEFAULT_L2_CACHE_MAX};

/// Source of per-image ids, which key the per-thread decompressed cluster.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An open qcow2 image.
pub struct Qcow2 {
    storage: Arc<dyn Storage>,
    /// Where guest data lives: the image itself or its external data file.
    data: Arc<dyn Storage>,
    has_data_file: bool,
    header: Header,
    ext: Extensions,
    backing_name: Option<String>,
    /// The active L1 table (changed by the writer under its metadata lock).
    l1: RwLock<Vec<u64>>,
    /// Guest size in bytes, before rounding down to sectors.
    size: AtomicU64,
    cache: L2Cache,
    snapshots: Vec<Snapshot>,
    bitmaps: Option<Vec<Bitmap>>,
    backing: Option<Arc<dyn BlockDevice>>,
    metadata_prealloc: OnceLock<bool>,
    /// Why guest I/O is refused on an image opened for metadata only
    /// (encrypted, or data-file-raw without a data file), if it is.
    io_refusal: Option<String>,
    /// The write path, when the image was opened for writing.
    writer: Option<writer::WriteState>,
    /// Why writes are refused on an image opened for writing, if they are.
    write_refusal: Option<String>,
    /// cache=unsafe: syncs are skipped (see `OpenOptions::ignore_flush`).
    ignore_flush: bool,
    id: u64,
}

fn open_err(name: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| e.context(format!("Could not open '{name}'"))
}

/// Reads `len` bytes at `offset`, refusing sizes the caller did not bound.
fn read_vec(storage: &dyn Storage, offset: u64, len: u64) -> Result<Vec<u8>> {
    let n = usize::try_from(len)
        .map_err(|_| Error::invalid(format!("table of {len} bytes is too large")))?;
    let mut v = vec![0u8; n];
    storage.read_at(&mut v, offset)?;
    Ok(v)
}

/// Bitmap table bytes read at open, at most; QEMU reads every table (and
/// every bitmap) at open, which a hostile directory could make enormous.
const BITMAP_TABLE_BUDGET: u64 = 256 << 20;

/// Checks the tables of `list` as QEMU does when it loads bitmaps at open.
/// Only bytes inside the file are read (past its end entries are zero, which
/// is valid), and at most [`BITMAP_TABLE_BUDGET`] bytes in all; tables past
/// the budget are not checked.
fn check_bitmap_tables(storage: &dyn Storage, list: &[Bitmap], cluster_size: u64) -> Result<()> {
    let file_len = storage.len()?;
    let mut budget = BITMAP_TABLE_BUDGET;
    for b in list {
        let bytes = u64::from(b.table_size) * 8;
        let in_file = file_len.saturating_sub(b.table_offset).min(bytes);
        if in_file == 0 {
            continue;
        }
        if in_file > budget {
            break;
        }
        budget -= in_file;
        let table = read_vec(storage, b.table_offset, in_file)?;
        bitmaps::check_table(b, &table, cluster_size)?;
    }
    Ok(())
}

impl Qcow2 {
    /// Opens the qcow2 image held in `storage`; `path` locates its external
    /// data file (relative names are relative to the image's directory).
    pub fn open(storage: Arc<dyn Storage>, path: &Path, opts: &OpenOptions) -> Result<Self> {
        let name = storage.name().to_string();
        let wrap = open_err(&name);
        let mut first = [0u8; 4096];
        storage.read_at(&mut first, 0).map_err(&wrap)?;
        let header = Header::parse(&first).map_err(&wrap)?;
        let cluster0 = if header.cluster_size() as usize <= first.len() {
            first[..header.cluster_size() as usize].to_vec()
        } else {
            read_vec(storage.as_ref(), 0, header.cluster_size()).map_err(&wrap)?
        };

        let unknown = header.incompatible_features & !INCOMPAT_MASK;
        if unknown != 0 {
            let table = Extensions::parse(&cluster0, &header).unwrap_or_default();
            return Err(Error::unsupported(format!(
                "{} (qcow2 header, field incompatible_features at offset 72 = {:#x})",
                table.unsupported_features_message(unknown),
                header.incompatible_features
            )))
            .map_err(&wrap);
        }
        if header.incompatible_features & INCOMPAT_CORRUPT != 0 && opts.writable && !opts.for_check
        {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                "qcow2: Image is corrupt; cannot be opened read/write (incompatible feature bit 1 is set; open it read-only, or repair it with 'qemu-img check -r all')",
            ))
            .map_err(&wrap);
        }
        header.validate_layout_for(opts.for_check).map_err(&wrap)?;
        // Guest I/O through an encrypted image needs its key, which diskimg
        // cannot use: like qemu-img, an open for metadata only (info) works
        // for AES images, and any I/O is refused. LUKS images are refused
        // outright: their `info` lists the LUKS header, which diskimg does
        // not decode.
        let no_io = !opts.open_data_file;
        let mut io_refusal = None;
        if header.crypt_method != 0 {
            let method = if header.crypt_method == 1 {
                "AES"
            } else {
                "LUKS"
            };
            let msg = format!(
                "qcow2 encryption is not supported (crypt_method {} = {method}, qcow2 header field at offset 32)",
                header.crypt_method
            );
            if header.crypt_method != 1 || !no_io {
                return Err(Error::unsupported(msg)).map_err(&wrap);
            }
            io_refusal = Some(format!("Could not read '{name}': {msg}"));
        }

        let l1_bytes = read_vec(
            storage.as_ref(),
            header.l1_table_offset,
            u64::from(header.l1_size) * 8,
        )
        .map_err(&wrap)?;
        let l1: Vec<u64> = l1_bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();

        let ext = Extensions::parse(&cluster0, &header).map_err(&wrap)?;
        if ext.bitmaps_inconsistent {
            // QEMU's exact text: a warning, then a second line printed as is.
            let first = if header.version < 3 {
                "This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent"
            } else {
                "a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
            };
            opts.warn(&format!(
                "{first}\nSome clusters may be leaked, run 'qemu-img check -r' on the image file to fix."
            ));
        }

        let has_data_file = header.incompatible_features & INCOMPAT_DATA_FILE != 0;
        let data: Arc<dyn Storage> = if has_data_file {
            let df = match (ext.data_file.clone(), opts.open_data_file) {
                (Some(df), _) => df,
                // As QEMU: info works without the name, I/O does not.
                (None, false) => String::new(),
                (None, true) => {
                    return Err(Error::invalid(
                        "'data-file' is required for this image (incompatible feature bit 2 is set but the image has no data file name extension)",
                    ))
                    .map_err(&wrap)
                }
            };
            if opts.open_data_file {
                // The name comes from an untrusted image (CVE-2024-4467):
                // only a local file name, never a protocol or json: spec.
                if let Some(colon) = df.find(':') {
                    if !df[..colon].contains('/') {
                        return Err(Error::unsupported(format!(
                            "the external data file name '{df}' names a protocol or a json: specification; diskimg opens only local files"
                        )))
                        .map_err(&wrap);
                    }
                }
                let p = crate::chain::resolve_backing_path(path, &df).map_err(&wrap)?;
                let mode = if opts.writable {
                    OpenMode::ReadWrite
                } else {
                    OpenMode::ReadOnly
                };
                Arc::new(FileStorage::open_with(&p, mode, opts.direct).map_err(&wrap)?)
            } else {
                Arc::new(UnopenedDataFile {
                    name: df,
                    image: name.clone(),
                })
            }
        } else {
            if header.autoclear_features & header::AUTOCLEAR_DATA_FILE_RAW != 0 {
                let msg = "data-file-raw requires a data file (autoclear feature bit 1 is set without incompatible bit 2)";
                // As QEMU, only an open for I/O refuses it.
                if !no_io {
                    return Err(Error::invalid(msg)).map_err(&wrap);
                }
                io_refusal.get_or_insert(format!("Could not read '{name}': {msg}"));
            }
            storage.clone()
        };

        let backing_name = if header.backing_file_offset != 0 {
            let len = u64::from(header.backing_file_size);
            if len > 1023.min(header.cluster_size() - header.backing_file_offset) {
                return Err(Error::invalid(format!(
                    "Backing file name too long (qcow2 header: {len} bytes at offset {})",
                    header.backing_file_offset
                )))
                .map_err(&wrap);
            }
            let start = header.backing_file_offset as usize;
            let bytes = cluster0.get(start..start + len as usize).unwrap_or(&[]);
            // An empty name means no backing file, as in QEMU.
            Some(String::from_utf8_lossy(bytes).into_owned()).filter(|n| !n.is_empty())
        } else {
            None
        };

        // As QEMU, check mode does not read the snapshot table: a broken
        // one must not keep `check` from running.
        let snapshots = if opts.for_check {
            Vec::new()
        } else {
            snapshot::read_snapshots(storage.as_ref(), &header).map_err(&wrap)?
        };

        let bitmaps = match &ext.bitmaps {
            Some(b) => {
                let dir = read_vec(storage.as_ref(), b.directory_offset, b.directory_size)
                    .map_err(&wrap)?;
                let list =
                    bitmaps::parse_directory(&dir, b, header.cluster_size(), header.size & !511)
                        .map_err(&wrap)?;
                check_bitmap_tables(storage.as_ref(), &list, header.cluster_size())
                    .map_err(&wrap)?;
                Some(list)
            }
            None => None,
        };

        let capacity = l2_cache::capacity_for(
            opts.l2_cache_size,
            header.size,
            header.cluster_size(),
            header.l2_entry_size(),
            DEFAULT_L2_CACHE_MAX,
        );
        let mut write_refusal = None;
        let writer = if opts.writable {
            if has_data_file && !opts.open_data_file {
                write_refusal = Some(format!(
                    "'{name}' was opened without its external data file; it cannot be written"
                ));
                None
            } else {
                Some(Self::open_writer(storage.as_ref(), &header, &l1).map_err(&wrap)?)
            }
        } else {
            None
        };
        let q = Qcow2 {
            storage,
            data,
            has_data_file,
            size: AtomicU64::new(header.size),
            header,
            ext,
            backing_name,
            l1: RwLock::new(l1),
            cache: L2Cache::new(capacity),
            snapshots,
            bitmaps,
            backing: None,
            metadata_prealloc: OnceLock::new(),
            io_refusal,
            writer,
            write_refusal,
            ignore_flush: opts.ignore_flush,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        };
        if q.writer.is_some()
            && !opts.for_check
            && q.header.incompatible_features & INCOMPAT_DIRTY != 0
        {
            q.repair_dirty_on_open().map_err(&wrap)?;
        }
        Ok(q)
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The decoded header extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// The internal snapshots.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// The persistent bitmaps, when the image has the bitmaps extension.
    pub fn bitmaps(&self) -> Option<&[Bitmap]> {
        self.bitmaps.as_deref()
    }

    /// The number of L2 tables the cache may hold.
    pub fn l2_cache_capacity(&self) -> usize {
        self.cache.capacity()
    }

    fn name(&self) -> &str {
        self.storage.name()
    }

    /// The guest-visible size: QEMU counts whole 512-byte sectors, so a
    /// size field that is not a multiple of 512 is rounded down.
    fn disk_size(&self) -> u64 {
        self.size.load(Ordering::Acquire) & !511
    }

    /// Prepares the write path of an image opened for writing: loads the
    /// refcount table and clears the autoclear bits diskimg does not
    /// maintain (persistent bitmaps), as the spec asks of such a writer.
    fn open_writer(
        storage: &dyn Storage,
        header: &Header,
        l1: &[u64],
    ) -> Result<writer::WriteState> {
        let alloc = allocator::Allocator::load(storage, header)?;
        if header.version >= 3 && header.autoclear_features & !header::AUTOCLEAR_DATA_FILE_RAW != 0
        {
            let keep = header.autoclear_features & header::AUTOCLEAR_DATA_FILE_RAW;
            storage.write_at(&keep.to_be_bytes(), 88)?;
            storage.flush()?;
        }
        let protected = writer::protected_ranges(
            header,
            header.l1_table_offset,
            l1.len() as u64,
            alloc.table_location(),
        );
        let meta = writer::Meta {
            alloc,
            l1_dirty: None,
            incompat: header.incompatible_features,
            lazy: header.version >= 3
                && header.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0,
            corrupt: false,
            l1_offset: header.l1_table_offset,
            compressed_next: None,
        };
        let mut tables: std::collections::HashSet<u64> = l1
            .iter()
            .map(|e| e & OFFSET_MASK)
            .filter(|&o| o != 0)
            .collect();
        tables.extend(meta.alloc.block_offsets());
        Ok(writer::WriteState::new(meta, protected, tables))
    }

    /// The L2 table at `offset`, through the cache. The lock is not held
    /// while the table is read.
    fn l2_table(&self, offset: u64) -> Result<L2Table> {
        if let Some(t) = self.cache.get(offset) {
            return Ok(t);
        }
        let epoch = self.cache.epoch();
        let mut buf = vec![0u8; self.header.cluster_size() as usize];
        self.storage.read_at(&mut buf, offset)?;
        let t: L2Table = buf
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect::<Vec<u64>>()
            .into();
        Ok(self.cache.insert_loaded(offset, t, epoch))
    }

    /// Whether QEMU would find metadata preallocation: more clusters with a
    /// non-zero refcount than the file really allocates (with a margin), as
    /// `qcow2_detect_metadata_preallocation`.
    fn detect_metadata_preallocation(&self) -> Result<bool> {
        let cs = self.header.cluster_size();
        let file_length = self.storage.len()?;
        let real_clusters = self.storage.allocated_size()? / cs;
        let threshold = (real_clusters.saturating_mul(10) / 9).max(real_clusters + 2);
        let end_cluster = file_length.div_ceil(cs);
        let table = refcount::RefcountTable::load(self.storage.as_ref(), &self.header)?;
        let n = table.count_referenced(self.storage.as_ref(), end_cluster, threshold)?;
        Ok(n >= threshold)
    }

    fn corrupt(&self, what: String) -> Error {
        Error::invalid(format!("{what} in '{}'", self.name()))
    }

    /// Walks the tables from `offset` to `end` (exclusive, within the disk)
    /// and returns the mapping at `offset` with the length of the longest
    /// run of units (subclusters) of the same kind, contiguous on the host.
    fn walk(&self, offset: u64, end: u64) -> Result<(Mapping, u64)> {
        let h = &self.header;
        let cb = h.cluster_bits;
        let cs = h.cluster_size();
        let l2_bits = h.l2_bits();
        let ext = h.extended_l2();
        let sc_size = h.subcluster_size();
        let l1_span_bits = cb + l2_bits;
        let mut pos = offset;
        let mut run: Option<Mapping> = None;
        // For host-mapped runs: the host offset that corresponds to `offset`.
        let mut run_host: Option<u64> = None;

        // Compares a unit with the run so far; true when it extends the run.
        let extends = |run: &Option<Mapping>,
                       run_host: Option<u64>,
                       m: &Mapping,
                       host: Option<u64>,
                       pos: u64|
         -> bool {
            let Some(r) = run else { return true };
            let same_kind = std::mem::discriminant(r) == std::mem::discriminant(m)
                && match (r, m) {
                    (Mapping::Zero { offset: a }, Mapping::Zero { offset: b })
                    | (Mapping::Unallocated { offset: a }, Mapping::Unallocated { offset: b }) => {
                        a.is_some() == b.is_some()
                    }
                    (Mapping::Compressed { .. }, _) => false,
                    _ => true,
                };
            if !same_kind {
                return false;
            }
            match (run_host, host) {
                (Some(start), Some(hh)) => start.checked_add(pos - offset) == Some(hh),
                (None, None) => true,
                _ => false,
            }
        };

        while pos < end {
            let l1_index = pos >> l1_span_bits;
            let l1_entry = self.l1_entry(l1_index);
            let l2_offset = l1_entry & OFFSET_MASK;
            if l2_offset == 0 {
                let m = Mapping::Unallocated { offset: None };
                if !extends(&run, run_host, &m, None, pos) {
                    break;
                }
                run.get_or_insert(m);
                let span_end = (l1_index + 1).saturating_mul(1u64 << l1_span_bits).min(end);
                pos = span_end;
                continue;
            }
            if l2_offset & (cs - 1) != 0 {
                if run.is_some() {
                    break;
                }
                return Err(self.corrupt(format!(
                    "L2 table offset {l2_offset:#x} unaligned (L1 index: {l1_index:#x})"
                )));
            }
            let table = self.l2_table(l2_offset)?;
            let table_end = (l1_index + 1).saturating_mul(1u64 << l1_span_bits).min(end);
            while pos < table_end {
                let l2_index = ((pos >> cb) & ((1u64 << l2_bits) - 1)) as usize;
                let (entry, bitmap) = if ext {
                    (
                        table.get(l2_index * 2).copied().unwrap_or(0),
                        table.get(l2_index * 2 + 1).copied().unwrap_or(0),
                    )
                } else {
                    (table.get(l2_index).copied().unwrap_or(0), 0)
                };
                let in_cluster = pos & (cs - 1);
                let sc = (in_cluster / sc_size) as u32;
                let ty = l2_entry::subcluster_type(entry, bitmap, sc, ext, self.has_data_file);
                let unit_end = if ty == SubclusterType::Compressed {
                    (pos - in_cluster).saturating_add(cs)
                } else {
                    (pos - in_cluster)
                        .saturating_add(u64::from(sc) * sc_size)
                        .saturating_add(sc_size)
                }
                .min(table_end);
                let fail = |msg: String| -> Result<(Mapping, u64)> {
                    Err(self.corrupt(format!(
                        "{msg} (L2 offset: {l2_offset:#x}, L2 index: {l2_index:#x}, guest offset {pos:#x})"
                    )))
                };
                let host_cluster = entry & OFFSET_MASK;
                if ty.has_host_offset() && host_cluster & (cs - 1) != 0 {
                    if run.is_some() {
                        break;
                    }
                    return fail(format!(
                        "Cluster allocation offset {host_cluster:#x} unaligned"
                    ));
                }
                let host = host_cluster + in_cluster;
                let (m, host) = match ty {
                    SubclusterType::Normal => (Mapping::Data { offset: host }, Some(host)),
                    SubclusterType::ZeroAlloc | SubclusterType::ZeroPlain if h.version < 3 => {
                        if run.is_some() {
                            break;
                        }
                        return fail("Zero cluster entry found in pre-v3 image".into());
                    }
                    SubclusterType::ZeroAlloc => (Mapping::Zero { offset: Some(host) }, Some(host)),
                    SubclusterType::ZeroPlain => (Mapping::Zero { offset: None }, None),
                    SubclusterType::UnallocatedPlain => {
                        (Mapping::Unallocated { offset: None }, None)
                    }
                    SubclusterType::UnallocatedAlloc => {
                        (Mapping::Unallocated { offset: Some(host) }, Some(host))
                    }
                    SubclusterType::Compressed => {
                        if run.is_some() {
                            break;
                        }
                        if self.has_data_file {
                            return fail(
                                "Compressed cluster entry found in image with external data file"
                                    .into(),
                            );
                        }
                        let m = Mapping::Compressed {
                            cluster_guest_offset: pos - in_cluster,
                            descriptor: entry,
                        };
                        return Ok((m, unit_end - pos));
                    }
                    SubclusterType::Invalid => {
                        if run.is_some() {
                            break;
                        }
                        return fail("Invalid cluster entry found".into());
                    }
                };
                if !extends(&run, run_host, &m, host, pos) {
                    return Ok(self.finish(run, pos - offset));
                }
                if run.is_none() {
                    run = Some(m);
                    run_host = host;
                }
                pos = unit_end;
            }
            if pos < table_end {
                // Stopped inside the table (a unit that cannot join the run).
                break;
            }
        }
        Ok(self.finish(run, pos - offset))
    }

    fn finish(&self, run: Option<Mapping>, len: u64) -> (Mapping, u64) {
        (
            run.unwrap_or(Mapping::Unallocated { offset: None }),
            len.max(1),
        )
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.disk_size() => Ok(()),
            _ => Err(Error::invalid_argument(format!(
                "request at offset {offset}, length {len} is past the end of '{}' ({} bytes)",
                self.name(),
                self.disk_size()
            ))),
        }
    }
}

impl Mapper for Qcow2 {
    fn guest_size(&self) -> u64 {
        self.disk_size()
    }

    fn map(&self, offset: u64, max_len: u64) -> Result<(Mapping, u64)> {
        if let Some(why) = &self.io_refusal {
            return Err(Error::unsupported(why.clone()));
        }
        let end = offset.saturating_add(max_len.max(1)).min(self.disk_size());
        if offset >= end {
            return Err(Error::invalid_argument(format!(
                "map at offset {offset} is past the end of '{}' ({} bytes)",
                self.name(),
                self.disk_size()
            )));
        }
        self.walk(offset, end)
    }

    fn data_storage(&self) -> &Arc<dyn Storage> {
        &self.data
    }

    fn read_compressed(
        &self,
        cluster_guest_offset: u64,
        descriptor: u64,
        offset_in_cluster: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let d = l2_entry::compressed_descriptor(descriptor, self.header.cluster_bits);
        let cs = self.header.cluster_size() as usize;
        let storage = &self.storage;
        let name = self.name();
        compressed::read_cluster(
            (self.id, descriptor),
            self.header.compression_type,
            cs,
            |input: &mut Vec<u8>| {
                // d.size <= 2^13 sectors = 4 MiB.
                input.clear();
                input.resize(d.size as usize, 0);
                storage.read_at(input, d.offset)
            },
            |e| {
                Error::invalid(format!(
                    "Could not decompress the {} cluster at guest offset {cluster_guest_offset} (host offset {}, {} bytes) of '{name}': {}",
                    self.header.compression_type.name(),
                    d.offset,
                    d.size,
                    e.0
                ))
            },
            usize::try_from(offset_in_cluster).unwrap_or(usize::MAX),
            buf,
        )
    }

    fn refine_data_with_host_holes(&self) -> bool {
        *self
            .metadata_prealloc
            .get_or_init(|| self.detect_metadata_preallocation().unwrap_or(false))
    }
}

impl BlockDevice for Qcow2 {
    fn size(&self) -> u64 {
        self.disk_size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        mapped::read(self, self.backing.as_ref(), buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.write(buf, offset)
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> Result<()> {
        self.check_range(offset, len)?;
        self.zero_range(offset, len, unmap)
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        self.discard_range(offset, len)
    }

    fn flush(&self) -> Result<()> {
        self.flush_all()
    }

    fn write_compressed(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        self.write_compressed_cluster(buf, offset)
    }

    fn compression_unit(&self) -> Option<u64> {
        (!self.has_data_file).then(|| self.header.cluster_size())
    }

    fn truncate(&self, size: u64, prealloc: crate::format::create::Preallocation) -> Result<()> {
        self.resize(size, prealloc)
    }

    fn block_status(&self, offset: u64, max_len: u64) -> Result<BlockStatus> {
        mapped::block_status(self, self.backing.as_ref(), offset, max_len)
    }

    fn info(&self) -> ImageInfo {
        let h = &self.header;
        let v3 = h.version >= 3;
        let specific = Qcow2Specific {
            compat: if v3 { "1.1" } else { "0.10" },
            encrypt_format: match h.crypt_method {
                1 => Some("aes"),
                2 => Some("luks"),
                _ => None,
            },
            compression_type: h.compression_type.name(),
            lazy_refcounts: v3
                .then_some(h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0),
            refcount_bits: h.refcount_bits(),
            corrupt: v3.then_some(h.incompatible_features & INCOMPAT_CORRUPT != 0),
            extended_l2: v3.then_some(h.extended_l2()),
            data_file: if v3 { self.ext.data_file.clone() } else { None },
            data_file_raw: (v3 && self.has_data_file)
                .then_some(h.autoclear_features & header::AUTOCLEAR_DATA_FILE_RAW != 0),
            bitmaps: if v3 {
                self.bitmaps
                    .as_ref()
                    .map(|v| v.iter().map(Bitmap::info).collect())
            } else {
                None
            },
        };
        ImageInfo {
            format: "qcow2",
            filename: self.name().to_string(),
            virtual_size: self.disk_size(),
            cluster_size: Some(h.cluster_size()),
            dirty: h.incompatible_features & INCOMPAT_DIRTY != 0,
            encrypted: h.crypt_method != 0,
            backing: self.backing_link(),
            snapshots: self.snapshots.iter().map(Snapshot::info).collect(),
            specific: Some(FormatSpecific::Qcow2(specific)),
        }
    }

    fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn data_storage(&self) -> &Arc<dyn Storage> {
        &self.data
    }

    fn backing(&self) -> Option<&Arc<dyn BlockDevice>> {
        self.backing.as_ref()
    }

    fn check(&self, repair: RepairMode, diagnostic: &mut dyn FnMut(&str)) -> Result<CheckReport> {
        if repair != RepairMode::None {
            return self.repair(repair, diagnostic);
        }
        if let Some(w) = &self.writer {
            // What the check reads must be on disk.
            let mut m = w.meta.lock().unwrap_or_else(|e| e.into_inner());
            self.flush_locked(&mut m)?;
        }
        let snapshots = self.snapshots_for_check()?;
        let header = self.current_header();
        check::check(&self.check_subject(&header, &snapshots), diagnostic)
    }
}

impl Qcow2 {
    /// The snapshot table as the check sees it. An open for check does not
    /// read the snapshot table (QEMU's BDRV_O_CHECK); the check reads it
    /// here, and a table that cannot be read ends the check.
    pub(super) fn snapshots_for_check(&self) -> Result<Vec<Snapshot>> {
        if !(self.snapshots.is_empty() && self.header.nb_snapshots > 0) {
            return Ok(self.snapshots.clone());
        }
        let h = &self.header;
        let name = self.name();
        if h.nb_snapshots > snapshot::MAX_SNAPSHOTS {
            return Err(Error::invalid(format!(
                "snapshot table too large ({} snapshots in '{name}', at most {})",
                h.nb_snapshots,
                snapshot::MAX_SNAPSHOTS
            )));
        }
        let bytes = u64::from(h.nb_snapshots) * 40;
        if !h.snapshots_offset.is_multiple_of(h.cluster_size())
            || h.snapshots_offset > i64::MAX as u64 - bytes
        {
            return Err(Error::invalid(format!(
                "snapshot table offset invalid ({:#x} in '{name}', qcow2 header field snapshots_offset at offset 64)",
                h.snapshots_offset
            )));
        }
        snapshot::read_snapshots(self.storage.as_ref(), &self.header)
    }

    /// The header as it is on disk now: the writer may have moved the L1
    /// and refcount tables and changed the size since the image was opened.
    pub(super) fn current_header(&self) -> Header {
        match &self.writer {
            Some(w) => self.header_with(&w.meta.lock().unwrap_or_else(|e| e.into_inner())),
            None => {
                let mut h = self.header.clone();
                h.size = self.size.load(Ordering::Acquire);
                h
            }
        }
    }

    /// [`Qcow2::current_header`] for a caller holding the metadata lock.
    pub(super) fn header_with(&self, m: &writer::Meta) -> Header {
        let mut h = self.header.clone();
        h.size = self.size.load(Ordering::Acquire);
        h.l1_table_offset = m.l1_offset;
        h.l1_size = self.l1.read().unwrap_or_else(|e| e.into_inner()).len() as u32;
        let (off, clusters) = m.alloc.table_location();
        h.refcount_table_offset = off;
        h.refcount_table_clusters = clusters as u32;
        h.incompatible_features = m.incompat;
        h
    }

    pub(super) fn check_subject<'a>(
        &'a self,
        header: &'a Header,
        snapshots: &'a [Snapshot],
    ) -> check::CheckSubject<'a> {
        check::CheckSubject {
            storage: self.storage.as_ref(),
            header,
            snapshots,
            crypto: self.ext.crypto,
            bitmaps: self.ext.bitmaps,
            bitmap_tables: self
                .bitmaps
                .iter()
                .flatten()
                .map(|b| (b.table_offset, u64::from(b.table_size)))
                .collect(),
            has_data_file: self.has_data_file,
        }
    }
}

impl Drop for Qcow2 {
    fn drop(&mut self) {
        // The clean close. Errors cannot be reported from here; callers who
        // need to know call `flush` first.
        let _ = self.close_writer();
    }
}

impl Layer for Qcow2 {
    fn backing_link(&self) -> Option<BackingLink> {
        self.backing_name.as_ref().map(|n| BackingLink {
            filename: n.clone(),
            format: self.ext.backing_format.clone(),
        })
    }

    fn set_backing(&mut self, backing: Arc<dyn BlockDevice>) {
        self.backing = Some(backing);
    }

    fn into_device(self: Box<Self>) -> Arc<dyn BlockDevice> {
        Arc::new(*self)
    }
}

/// Stands in for an external data file that was not opened (as for
/// `info`, which must not open files named by an untrusted image): every
/// access that needs the data fails and says why.
struct UnopenedDataFile {
    name: String,
    image: String,
}

impl UnopenedDataFile {
    fn err(&self) -> Error {
        Error::invalid_argument(format!(
            "the external data file '{}' of '{}' was not opened (opening data files was not requested)",
            self.name, self.image
        ))
    }
}

impl Storage for UnopenedDataFile {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> Result<u64> {
        Err(self.err())
    }
    fn read_at(&self, _buf: &mut [u8], _offset: u64) -> Result<()> {
        Err(self.err())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> Result<()> {
        Err(self.err())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn set_len(&self, _len: u64) -> Result<()> {
        Err(self.err())
    }
    fn punch_hole(&self, _offset: u64, _len: u64) -> Result<()> {
        Err(self.err())
    }
    fn allocated_size(&self) -> Result<u64> {
        Err(self.err())
    }
    fn is_writable(&self) -> bool {
        false
    }
    fn host_extent(&self, _offset: u64, _max_len: u64) -> Result<HostExtent> {
        Err(self.err())
    }
}
