//! The extents `qemu-img map` prints.
//!
//! The range is walked with [`chain_status`] in steps of at most 1 GiB (as
//! qemu-img probes), and consecutive answers are merged when every field
//! agrees and host offsets are contiguous. In human mode qemu-img treats
//! every extent that is not plain data as zero before merging, so that only
//! data extents stand apart; [`MapStyle::Human`] reproduces that.

use std::sync::Arc;

use super::status::chain_status;
use crate::{BlockDevice, Result};

/// One extent of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// Guest offset.
    pub start: u64,
    /// Length in bytes (0 only for an empty range).
    pub length: u64,
    /// Layer below the top that decided the extent.
    pub depth: usize,
    /// Allocated in the deciding layer.
    pub present: bool,
    /// Reads as zeros.
    pub zero: bool,
    /// Holds data.
    pub data: bool,
    /// Compressed.
    pub compressed: bool,
    /// Host offset in `filename`, when valid.
    pub offset: Option<u64>,
    /// The file holding the bytes (set exactly when `offset` is).
    pub filename: Option<String>,
}

/// Which output the extents are merged for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapStyle {
    /// `--output=json`: every field counts.
    Json,
    /// `--output=human`: zero and unallocated extents merge with each other.
    Human,
}

/// The largest range asked about at once.
const PROBE_MAX: u64 = 1 << 30;

fn mergeable(curr: &MapEntry, next: &MapEntry) -> bool {
    if curr.length == 0 {
        return false;
    }
    if curr.zero != next.zero
        || curr.data != next.data
        || curr.compressed != next.compressed
        || curr.depth != next.depth
        || curr.present != next.present
        || curr.filename != next.filename
        || curr.offset.is_some() != next.offset.is_some()
    {
        return false;
    }
    match (curr.offset, next.offset) {
        (Some(a), Some(b)) => a.checked_add(curr.length) == Some(b),
        _ => true,
    }
}

/// Walks `[start, start + max_len)` of `top` (clipped to its size) and calls
/// `emit` for each merged extent, in order. An empty range gives one entry
/// of length 0, as qemu-img prints. `emit` may fail (e.g. human output
/// refusing compressed extents); its error stops the walk.
pub fn map<E>(
    top: &Arc<dyn BlockDevice>,
    start: u64,
    max_len: Option<u64>,
    style: MapStyle,
    mut emit: impl FnMut(&MapEntry) -> std::result::Result<(), E>,
) -> std::result::Result<(), E>
where
    E: From<crate::Error>,
{
    let size = top.size();
    let end = match max_len {
        Some(l) => start.saturating_add(l).min(size),
        None => size,
    };
    let mut curr = MapEntry {
        start,
        length: 0,
        depth: 0,
        present: false,
        zero: false,
        data: false,
        compressed: false,
        offset: None,
        filename: None,
    };
    while curr.start + curr.length < end {
        let offset = curr.start + curr.length;
        let n = (end - offset).min(PROBE_MAX);
        let mut next = entry_at(top, offset, n)?;
        if mergeable(&curr, &next) {
            curr.length += next.length;
            continue;
        }
        if curr.length > 0 {
            emit(&curr)?;
            if style == MapStyle::Human && (!next.data || next.zero) {
                next.data = false;
                next.zero = true;
            }
        }
        curr = next;
    }
    emit(&curr)
}

fn entry_at(top: &Arc<dyn BlockDevice>, offset: u64, n: u64) -> Result<MapEntry> {
    let cs = chain_status(top, offset, n)?;
    let st = cs.status;
    let filename = match (&cs.layer, st.offset) {
        (Some(l), Some(_)) => Some(l.data_storage().name().to_string()),
        _ => None,
    };
    Ok(MapEntry {
        start: offset,
        length: cs.len,
        depth: cs.depth,
        present: st.allocated,
        zero: st.zero,
        data: st.data,
        compressed: st.compressed,
        offset: st.offset,
        filename,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::raw::Raw;
    use crate::io::MemoryStorage;

    #[test]
    fn empty_range_gives_one_empty_entry() {
        let s: Arc<dyn crate::io::Storage> =
            Arc::new(MemoryStorage::from_bytes("m", vec![1; 4096]));
        let dev: Arc<dyn BlockDevice> = Arc::new(Raw::open(s).unwrap());
        let mut v = Vec::new();
        map::<crate::Error>(&dev, 8192, None, MapStyle::Json, |e| {
            v.push(e.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].length, 0);
        assert_eq!(v[0].start, 8192);
        let mut v = Vec::new();
        map::<crate::Error>(&dev, 0, None, MapStyle::Json, |e| {
            v.push(e.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].length, v[0].data, v[0].offset), (4096, true, Some(0)));
    }

    #[test]
    fn extents_merge_only_when_every_field_agrees() {
        use crate::ops::status::tests::Fake;
        // zero, unallocated, data, data (contiguous offsets), zero
        let dev = Fake::device(
            vec![
                (10, true, false, true),
                (10, false, false, false),
                (10, true, true, false),
                (10, true, true, false),
                (10, true, false, true),
            ],
            None,
        );
        let collect = |style| {
            let mut v = Vec::new();
            map::<crate::Error>(&dev, 0, None, style, |e| {
                v.push((e.start, e.length, e.data, e.zero, e.present));
                Ok(())
            })
            .unwrap();
            v
        };
        assert_eq!(
            collect(MapStyle::Json),
            vec![
                (0, 10, false, true, true),
                (10, 10, false, true, false),
                (20, 20, true, false, true),
                (40, 10, false, true, true),
            ]
        );
        // Clipping to --start-offset/--max-length cuts the first and last
        // extents.
        let mut v = Vec::new();
        map::<crate::Error>(&dev, 15, Some(20), MapStyle::Json, |e| {
            v.push((e.start, e.length));
            Ok(())
        })
        .unwrap();
        assert_eq!(v, vec![(15, 5), (20, 15)]);
    }
}
