//! Decompression of compressed clusters (raw deflate or zstd).
//!
//! Invariants: the output is bounded to exactly one cluster whatever the
//! input claims; an input that does not produce a full cluster is an error;
//! decompression stops once the cluster is full (another cluster may start
//! in the tail of the last sector). Each thread keeps its decompression
//! contexts, its buffers and the last cluster it decoded, so reading a
//! compressed cluster in small pieces decodes it once.

use std::cell::RefCell;

use super::header::CompressionType;

/// Why a compressed cluster could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecompressError(pub String);

/// Decompresses `input` into exactly `out.len()` bytes.
pub fn decompress(
    ctype: CompressionType,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), DecompressError> {
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        let ctx = &mut *c;
        match ctype {
            CompressionType::Zlib => inflate_fast(ctx, input, out),
            CompressionType::Zstd => unzstd(&mut ctx.zstd, input, out),
        }
    })
}

/// Raw deflate through libdeflate, which decodes a whole cluster at once
/// about twice as fast as a streaming inflater. A stream that would produce
/// more than a cluster, or that libdeflate rejects, goes through the
/// streaming inflater, which decides exactly as QEMU's zlib does (the first
/// cluster of output counts, the rest is ignored).
fn inflate_fast(ctx: &mut Ctx, input: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
    let fast = ctx
        .deflate
        .get_or_insert_with(libdeflater::Decompressor::new);
    match fast.deflate_decompress(input, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(DecompressError(format!(
            "deflate data ends after {n} of {} bytes",
            out.len()
        ))),
        Err(_) => inflate(&mut ctx.inflate, input, out),
    }
}

fn inflate(
    d: &mut Option<flate2::Decompress>,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), DecompressError> {
    let d = d.get_or_insert_with(|| flate2::Decompress::new(false));
    d.reset(false);
    let r = d.decompress(input, out, flate2::FlushDecompress::Finish);
    match r {
        Ok(_) if d.total_out() as usize == out.len() => Ok(()),
        Ok(_) => Err(DecompressError(format!(
            "deflate data ends after {} of {} bytes",
            d.total_out(),
            out.len()
        ))),
        Err(e) => Err(DecompressError(format!("invalid deflate data: {e}"))),
    }
}

/// log2 of the largest zstd window accepted.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

fn unzstd(
    d: &mut Option<zstd::stream::raw::Decoder<'static>>,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), DecompressError> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    if d.is_none() {
        let mut dec = zstd::stream::raw::Decoder::new()
            .map_err(|e| DecompressError(format!("cannot create a zstd context: {e}")))?;
        // Bound the window a hostile frame may ask for (the default allows
        // 128 MiB); a cluster is at most 2 MiB, so 8 MiB is ample.
        dec.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
            ZSTD_WINDOW_LOG_MAX,
        ))
        .map_err(|e| DecompressError(format!("cannot configure zstd: {e}")))?;
        *d = Some(dec);
    }
    let Some(dec) = d.as_mut() else {
        return Err(DecompressError("no zstd context".into()));
    };
    dec.reinit()
        .map_err(|e| DecompressError(format!("cannot reset the zstd context: {e}")))?;
    let mut inb = InBuffer::around(input);
    let total = out.len();
    let mut outb = OutBuffer::around(out);
    while outb.pos() < total {
        let (ip, op) = (inb.pos, outb.pos());
        dec.run(&mut inb, &mut outb)
            .map_err(|e| DecompressError(format!("invalid zstd data: {e}")))?;
        if inb.pos == ip && outb.pos() == op {
            return Err(DecompressError(format!(
                "zstd data ends after {} of {} bytes",
                outb.pos(),
                total
            )));
        }
    }
    Ok(())
}

struct Ctx {
    deflate: Option<libdeflater::Decompressor>,
    inflate: Option<flate2::Decompress>,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
}

/// Compressed input, decoded cluster, and the (image id, L2 entry) key of
/// the decoded cluster.
type HeldCluster = (Vec<u8>, Vec<u8>, Option<(u64, u64)>);

thread_local! {
    static CTX: RefCell<Ctx> = const {
        RefCell::new(Ctx {
            deflate: None,
            inflate: None,
            zstd: None,
        })
    };
    /// Compressed input, decoded cluster, and the key of that cluster.
    static CLUSTER: RefCell<HeldCluster> =
        const { RefCell::new((Vec::new(), Vec::new(), None)) };
}

/// Copies `buf.len()` bytes at `offset_in_cluster` of a compressed cluster
/// into `buf`. `key` identifies the cluster (image id and L2 entry);
/// `read_input` fills the buffer it is given with the compressed bytes
/// (whose length it sets). The cluster is decoded only when this thread's
/// last decoded cluster has another key.
pub fn read_cluster<E>(
    key: (u64, u64),
    ctype: CompressionType,
    cluster_size: usize,
    read_input: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    on_error: impl Fn(DecompressError) -> E,
    offset_in_cluster: usize,
    buf: &mut [u8],
) -> Result<(), E> {
    CLUSTER.with(|c| {
        let mut c = c.borrow_mut();
        let (input, cluster, held) = &mut *c;
        if *held != Some(key) || cluster.len() != cluster_size {
            *held = None;
            read_input(input)?;
            cluster.resize(cluster_size, 0);
            decompress(ctype, input, cluster).map_err(&on_error)?;
            *held = Some(key);
        }
        let src = offset_in_cluster
            .checked_add(buf.len())
            .and_then(|end| cluster.get(offset_in_cluster..end));
        match src {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(on_error(DecompressError(format!(
                "read of {} bytes at {offset_in_cluster} is outside the {cluster_size}-byte cluster",
                buf.len()
            )))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_raw_deflate_to_exactly_one_cluster() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut c = deflate(&data);
        // Trailing garbage (the next compressed cluster) is ignored.
        c.extend_from_slice(&[0xaa; 300]);
        let mut out = vec![0u8; 65536];
        decompress(CompressionType::Zlib, &c, &mut out).unwrap();
        assert_eq!(out, data);
        // A short stream is an error.
        let short = deflate(&data[..1000]);
        assert!(decompress(CompressionType::Zlib, &short, &mut out).is_err());
        // A longer stream is cut at one cluster.
        let long = deflate(&[7u8; 70000]);
        decompress(CompressionType::Zlib, &long, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 7));
        assert!(decompress(CompressionType::Zlib, &[0xff; 10], &mut out).is_err());
    }

    #[test]
    fn unzstd_bounds_output() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut c = zstd::bulk::compress(&data, 3).unwrap();
        c.extend_from_slice(&[0u8; 100]);
        let mut out = vec![0u8; 4096];
        decompress(CompressionType::Zstd, &c, &mut out).unwrap();
        assert_eq!(out, data);
        let short = zstd::bulk::compress(&data[..100], 3).unwrap();
        assert!(decompress(CompressionType::Zstd, &short, &mut out).is_err());
        let long = zstd::bulk::compress(&[1u8; 100000], 3).unwrap();
        decompress(CompressionType::Zstd, &long, &mut out).unwrap();
        assert!(out.iter().all(|&b| b == 1));
        assert!(decompress(CompressionType::Zstd, &[0u8; 10], &mut out).is_err());
        // A frame asking for a 128 MiB window is refused, not allocated.
        let mut enc = zstd::stream::raw::Encoder::new(1).unwrap();
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(27))
            .unwrap();
        let mut big = zstd::stream::Encoder::with_encoder(Vec::new(), enc);
        std::io::Write::write_all(&mut big, &data).unwrap();
        let big = big.finish().unwrap();
        assert!(decompress(CompressionType::Zstd, &big, &mut out).is_err());
    }

    #[test]
    fn read_cluster_decodes_once_per_key() {
        let data: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
        let c = deflate(&data);
        let mut reads = 0;
        for part in 0..4 {
            let mut buf = [0u8; 128];
            read_cluster(
                (999, 1),
                CompressionType::Zlib,
                512,
                |v: &mut Vec<u8>| {
                    reads += 1;
                    v.clear();
                    v.extend_from_slice(&c);
                    Ok::<(), String>(())
                },
                |e| e.0,
                part * 128,
                &mut buf,
            )
            .unwrap();
            assert_eq!(&buf[..], &data[part * 128..part * 128 + 128]);
        }
        assert_eq!(reads, 1);
        let mut buf = [0u8; 8];
        assert!(read_cluster(
            (999, 1),
            CompressionType::Zlib,
            512,
            |_: &mut Vec<u8>| Ok::<(), String>(()),
            |e| e.0,
            510,
            &mut buf
        )
        .is_err());
    }
}
