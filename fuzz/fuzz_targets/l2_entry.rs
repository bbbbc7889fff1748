//! L2 entry and compressed descriptor decoding on arbitrary u64 pairs and
//! cluster_bits.
#![no_main]

use diskimg::format::qcow2::l2_entry::{
    cluster_type, compressed_descriptor, encode_compressed, subcluster_type, SubclusterType,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 18 {
        return;
    }
    let entry = u64::from_le_bytes(data[0..8].try_into().unwrap());
    let bitmap = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let bits = u32::from(data[16]);
    let sc = u32::from(data[17]);
    for ext in [false, true] {
        for df in [false, true] {
            let _ = cluster_type(entry, ext, df);
            let t = subcluster_type(entry, bitmap, sc, ext, df);
            if !ext {
                assert_ne!(t, SubclusterType::Invalid);
                assert_ne!(t, SubclusterType::UnallocatedAlloc);
            }
        }
    }
    let d = compressed_descriptor(entry, bits);
    assert!(d.size >= 1 && d.size <= 8192 * 512);
    if (9..=21).contains(&bits) {
        let cs = 1u64 << bits;
        let off = entry & ((1u64 << 48) - 1);
        let size = 1 + (bitmap % cs);
        let e = encode_compressed(off, size, bits);
        let d = compressed_descriptor(e, bits);
        assert_eq!(d.offset, off);
        assert!(d.size >= size && d.size < size + 512);
    }
});
