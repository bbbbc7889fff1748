//! Compression of whole clusters, as QEMU's qcow2 driver writes them.
//!
//! zlib: a raw deflate stream (no header) whose back-references reach at
//! most 4 KiB, because QEMU inflates with a 4 KiB window
//! (`inflateInit2(-12)`). It comes from our own encoder (super::deflate):
//! zlib-rs at level 2 with a 4 KiB window, used before, ran at about 105
//! MB/s per core on the benchmark's text (scripts/README.md, workload e)
//! for a ratio of 0.552; ours runs at about 290 MB/s for 0.561 (qemu-img,
//! zlib level 6: 0.579), and on binaries at 200 MB/s against 123 for a
//! 1.5% smaller output (measurements in the deflate module).
//! zstd: one frame, at level 2 (QEMU uses 3): 1.2x faster than 3 for 0.3%
//! more on the text; level 1 is 10% larger.
//!
//! A cluster is stored compressed only when the result is smaller than the
//! cluster by at least one byte (QEMU's rule); otherwise the caller writes
//! it as a normal cluster. Each thread keeps its own compression contexts.

use std::cell::RefCell;

use super::deflate::Encoder;
use super::header::CompressionType;

/// The zstd level (see the module documentation).
const ZSTD_LEVEL: i32 = 2;

struct Ctx {
    deflate: Option<Box<Encoder>>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

thread_local! {
    static CTX: RefCell<Ctx> = const { RefCell::new(Ctx { deflate: None, zstd: None }) };
}

/// Compresses one cluster into `out` (cleared first). Returns false when
/// the compressed form would not be smaller than `input.len() - 1` bytes, or
/// the compressor failed: the cluster is then written uncompressed.
pub fn compress_cluster(ctype: CompressionType, input: &[u8], out: &mut Vec<u8>) -> bool {
    let limit = input.len().saturating_sub(1);
    out.clear();
    out.reserve(limit);
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        match ctype {
            CompressionType::Zlib => c
                .deflate
                .get_or_insert_with(|| Box::new(Encoder::new()))
                .compress(input, out, limit),
            CompressionType::Zstd => {
                if c.zstd.is_none() {
                    match zstd::bulk::Compressor::new(ZSTD_LEVEL) {
                        Ok(z) => c.zstd = Some(z),
                        Err(_) => return false,
                    }
                }
                let Some(z) = c.zstd.as_mut() else {
                    return false;
                };
                out.resize(limit, 0);
                match z.compress_to_buffer(input, &mut out[..]) {
                    Ok(n) => {
                        out.truncate(n);
                        true
                    }
                    Err(_) => false,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::qcow2::compressed::decompress;

    #[test]
    fn round_trips_and_refuses_incompressible_data() {
        let text: Vec<u8> = (0..65536u32)
            .map(|i| b"the quick brown fox "[(i % 20) as usize])
            .collect();
        for ct in [CompressionType::Zlib, CompressionType::Zstd] {
            let mut out = Vec::new();
            assert!(compress_cluster(ct, &text, &mut out));
            assert!(out.len() < 4096, "{ct:?}: {}", out.len());
            let mut back = vec![0u8; 65536];
            decompress(ct, &out, &mut back).unwrap();
            assert!(back == text);
            // Noise does not shrink.
            let mut x = 0x1234_5678_9abc_def0u64;
            let noise: Vec<u8> = (0..65536)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert!(!compress_cluster(ct, &noise, &mut out));
        }
    }

    #[test]
    fn deflate_streams_stay_within_a_4k_window() {
        // A block repeated at a 6 KiB distance: a 32 KiB window would
        // reference it; QEMU's 4 KiB inflater must still decode the stream.
        let mut x = 99u64;
        let block: Vec<u8> = (0..6144)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 16) as u8
            })
            .collect();
        let input: Vec<u8> = block.iter().chain(block.iter()).copied().collect();
        let mut out = Vec::new();
        assert!(compress_cluster(CompressionType::Zlib, &input, &mut out));
        let mut d = flate2::Decompress::new_with_window_bits(false, 12);
        let mut back = vec![0u8; input.len()];
        d.decompress(&out, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert!(back == input);
    }
}
