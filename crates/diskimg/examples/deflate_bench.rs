//! Times the qcow2 deflate encoder against zlib-rs (level 2, 4 KiB window,
//! what compress.rs used before) on 64 KiB chunks of the first 256 MiB of
//! a file, on one thread.
//!
//! `cargo run --release -p diskimg --example deflate_bench -- FILE [ours|zlib]
//! [insert_max lazy_below skip_shift block_bytes]`

use std::time::Instant;

use diskimg::format::qcow2::deflate::{Encoder, Params, BLOCK_BYTES, PARAMS};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!(
            "usage: deflate_bench FILE [ours|zlib] [insert_max lazy_below skip_shift block_bytes]"
        );
        std::process::exit(2);
    };
    let data = std::fs::read(path).expect("read");
    let data = &data[..(256 << 20).min(data.len())];
    let mode = args.get(2).map_or("ours", |s| s.as_str());
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let params = Params {
        insert_max: num(3, PARAMS.insert_max),
        lazy_below: num(4, PARAMS.lazy_below),
        skip_shift: num(5, PARAMS.skip_shift as usize) as u32,
    };
    let block_bytes = num(6, BLOCK_BYTES);
    let mut out = Vec::with_capacity(65536 + 8);
    let mut total = 0usize;
    let t = Instant::now();
    let cpu0 = thread_cpu_seconds();
    if mode == "libdeflate" {
        // Reference only: libdeflate's level 1 (32 KiB window, unusable
        // for qcow2).
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).unwrap());
        out.resize(65536, 0);
        for ch in data.chunks(65536) {
            total += c.deflate_compress(ch, &mut out).unwrap_or(ch.len());
        }
    } else if mode == "zlib" {
        let mut d = flate2::Compress::new_with_window_bits(flate2::Compression::new(2), false, 12);
        out.resize(65535, 0);
        for ch in data.chunks(65536) {
            d.reset();
            let r = d.compress(ch, &mut out, flate2::FlushCompress::Finish);
            total += match r {
                Ok(flate2::Status::StreamEnd) => d.total_out() as usize,
                _ => ch.len(),
            };
        }
    } else {
        let mut enc = Encoder::with_params(params, block_bytes);
        for ch in data.chunks(65536) {
            total += if enc.compress(ch, &mut out, ch.len() - 1) {
                out.len()
            } else {
                ch.len()
            };
        }
    }
    let s = t.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds() - cpu0;
    println!(
        "{mode} {params:?} block {block_bytes}: {:.0} MB/s (cpu {:.0} MB/s) ratio {:.4}",
        data.len() as f64 / s / 1e6,
        data.len() as f64 / cpu / 1e6,
        total as f64 / data.len() as f64
    );
}

/// CPU time of this thread: on a shared machine, wall time also counts the
/// time other processes held the core.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
