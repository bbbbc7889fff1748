//! Header + extensions parsing on arbitrary bytes, then a full open through
//! MemoryStorage with reads and block status of a few ranges.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use diskimg::format::qcow2::extensions::Extensions;
use diskimg::format::qcow2::header::Header;
use diskimg::format::qcow2::Qcow2;
use diskimg::io::{MemoryStorage, Storage};
use diskimg::{BlockDevice, OpenOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let _ = h.validate_layout();
        let _ = Extensions::parse(data, &h);
    }
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::from_bytes("fuzz.qcow2", data.to_vec()));
    let opts = OpenOptions {
        open_backing: false,
        open_data_file: false,
        ..OpenOptions::default()
    };
    let Ok(q) = Qcow2::open(storage, Path::new("fuzz.qcow2"), &opts) else {
        return;
    };
    let _ = q.info();
    let size = q.size();
    if size == 0 {
        return;
    }
    for off in [0, size / 3, size / 2, size - 1, size.saturating_sub(70_000)] {
        let max = (size - off).min(64 << 20);
        if let Ok(st) = q.block_status(off, max) {
            assert!(st.len >= 1 && st.len <= max, "status length {} outside 1..={max}", st.len);
        }
        let n = (size - off).min(70_000) as usize;
        let mut buf = vec![0u8; n];
        let _ = q.read_at(&mut buf, off);
    }
});
