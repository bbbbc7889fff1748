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

/// Compresses one cluster into `out[..n]` and returns `n`. Returns None
/// when the compressed form would not be smaller than `input.len() - 1`
/// bytes, or the compressor failed: the cluster is then written
/// uncompressed. `out` is scratch space: it is grown as needed and never
/// cleared, so a buffer reused for every cluster is not zeroed each time.
pub fn compress_cluster(ctype: CompressionType, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let limit = input.len().saturating_sub(1);
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        match ctype {
            CompressionType::Zlib => c
                .deflate
                .get_or_insert_with(|| Box::new(Encoder::new()))
                .compress_into(input, out, limit),
            CompressionType::Zstd => {
                if c.zstd.is_none() {
                    c.zstd = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?);
                }
                let z = c.zstd.as_mut()?;
                if out.len() < limit {
                    out.resize(limit, 0);
                }
                z.compress_to_buffer(input, &mut out[..limit]).ok()
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
            let n = compress_cluster(ct, &text, &mut out).unwrap();
            assert!(n < 4096, "{ct:?}: {n}");
            let mut back = vec![0u8; 65536];
            decompress(ct, &out[..n], &mut back).unwrap();
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
            assert!(compress_cluster(ct, &noise, &mut out).is_none());
            // The scratch buffer, reused after a longer stream, still
            // yields exactly the stream of a fresh buffer.
            let fresh = compress_cluster(ct, &text, &mut Vec::new()).unwrap();
            let mut again = vec![0xa5u8; 70000];
            let m = compress_cluster(ct, &text, &mut again).unwrap();
            assert_eq!(m, fresh);
            decompress(ct, &again[..m], &mut back).unwrap();
            assert!(back == text);
        }
    }

    #[test]
    fn deflate_streams_stay_within_a_4k_window() {
        // A block repeated at a 6 KiB distance: a 32 KiB window would
        // reference it; QEMU inflates with a 4 KiB one. zlib's inflaters
        // do not refuse a farther reference when the whole output is in one
        // buffer, so the deflate tests' checker measures the distances.
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
        let n = compress_cluster(CompressionType::Zlib, &input, &mut out).unwrap();
        let (back, farthest) =
            crate::format::qcow2::deflate::tests::checker::inflate(&out[..n]).unwrap();
        assert!(back == input);
        assert!(
            farthest <= 4096,
            "a reference reaches {farthest} bytes back"
        );
    }
}
