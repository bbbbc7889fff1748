//! Times the qcow2 deflate encoder against zlib-rs (level 2, 4 KiB window,
//! what compress.rs used before) on 64 KiB chunks of the first 256 MiB of
//! a file, on one thread.
//!
//! `cargo run --release -p diskimg --example deflate_bench -- FILE [ours|zlib]
//! [depth nice insert_max lazy_below block_syms]`

use std::time::Instant;

use diskimg::format::qcow2::deflate::{Encoder, Params, BLOCK_SYMS, PARAMS};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: deflate_bench FILE [ours|zlib] [depth nice insert_max lazy_below block_syms]");
        std::process::exit(2);
    };
    let data = std::fs::read(path).expect("read");
    let data = &data[..(256 << 20).min(data.len())];
    let mode = args.get(2).map_or("ours", |s| s.as_str());
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let params = Params {
        depth: num(3, PARAMS.depth as usize) as u32,
        nice: num(4, PARAMS.nice),
        insert_max: num(5, PARAMS.insert_max),
        lazy_below: num(6, PARAMS.lazy_below),
    };
    let block_syms = num(7, BLOCK_SYMS);
    let mut out = Vec::with_capacity(65536 + 8);
    let mut total = 0usize;
    let t = Instant::now();
    if mode == "zlib" {
        let mut d =
            flate2::Compress::new_with_window_bits(flate2::Compression::new(2), false, 12);
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
        let mut enc = Encoder::with_params(params, block_syms);
        for ch in data.chunks(65536) {
            total += if enc.compress(ch, &mut out, ch.len() - 1) {
                out.len()
            } else {
                ch.len()
            };
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{mode} {params:?} block {block_syms}: {:.0} MB/s ratio {:.4}",
        data.len() as f64 / s / 1e6,
        total as f64 / data.len() as f64
    );
}
