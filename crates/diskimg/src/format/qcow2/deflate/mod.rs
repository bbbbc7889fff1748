//! A raw deflate (RFC 1951) encoder for qcow2's zlib-compressed clusters.
//!
//! QEMU inflates a compressed cluster with a 4 KiB window
//! (`inflateInit2(-12)`), so no back-reference may reach farther than 4096
//! bytes; general deflate encoders either assume a 32 KiB window
//! (libdeflate) or, limited to 4 KiB, are slow (zlib at level 2) or use only
//! the fixed code (zlib-rs at level 1). This one is built for the case:
//!
//! - `matcher`: greedy match finding over the 4 KiB window with a
//!   one-entry hash table, minimum match 4, one step of lazy evaluation
//!   for short matches, skipping through long literal runs;
//! - `symbols`: the block's parse (literal runs and matches) with the
//!   symbol frequencies;
//! - `block`: per block, dynamic Huffman codes (length-limited, see
//!   `huffman`) priced against the fixed code and a stored block, the
//!   cheapest written;
//! - `bitwriter`: a 64-bit bit buffer stored 8 bytes at a time;
//! - `tables`: the length and distance alphabets.
//!
//! Blocks end every [`BLOCK_BYTES`] input bytes so that codes follow the
//! data in large clusters (a 64 KiB cluster is one block: on the benchmark
//! text, splitting it gave larger output). One [`Encoder`] per thread is
//! reused: after its creation no cluster allocates, except to grow the
//! caller's output vector.
//!
//! Measured on one core (`examples/deflate_bench.rs`, 64 KiB clusters,
//! medians of 5 interleaved runs; zlib-rs at level 2 with a 4 KiB window
//! is what compress.rs used before):
//!
//! | data                         | zlib-rs level 2     | this encoder        |
//! |------------------------------|---------------------|---------------------|
//! | benchmark text, first 64 MiB | 101 MB/s, 0.5516    | 287 MB/s, 0.5607    |
//! | /usr/bin + libs, 64 MiB      | 123 MB/s, 0.4200    | 199 MB/s, 0.4138    |
//! | random bytes, 64 MiB         | 98 MB/s, 1.0        | 2160 MB/s, 1.0      |
//!
//! (ratio = compressed / original; qemu-img, zlib level 6, gives 0.5786 on
//! the text.) Parameters ([`PARAMS`]): skipping after 64 misses costs 2%
//! of size on the text for 1.25x speed (and makes incompressible clusters
//! 5x faster to refuse); the lazy step costs 5% of speed for 1% of size
//! on binaries; inserting positions inside matches up to 32 bytes (rather
//! than 16) gains 0.5% on binaries at no measurable cost.

mod bitwriter;
mod block;
mod huffman;
mod matcher;
mod symbols;
mod tables;

use bitwriter::BitWriter;
use block::BlockWriter;
use matcher::Matcher;
pub use matcher::Params;
use symbols::Symbols;

/// Input bytes per block (see the module documentation).
pub const BLOCK_BYTES: usize = 64 * 1024;

/// The match finder's settings (see [`Params`]).
pub const PARAMS: Params = Params {
    insert_max: 32,
    lazy_below: 8,
    skip_shift: 6,
};

/// Inputs at least this long are refused (positions are 32-bit).
const MAX_INPUT: usize = 1 << 30;

/// Reusable deflate state (see the module documentation).
pub struct Encoder {
    matcher: Matcher,
    syms: Symbols,
    block: BlockWriter,
    block_bytes: usize,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    /// An encoder with the default settings.
    pub fn new() -> Self {
        Self::with_params(PARAMS, BLOCK_BYTES)
    }

    /// An encoder with other match-finder settings and block size (for
    /// measurements).
    pub fn with_params(params: Params, block_bytes: usize) -> Self {
        Encoder {
            matcher: Matcher::new(params),
            syms: Symbols::new(block_bytes),
            block: BlockWriter::new(),
            block_bytes: block_bytes.max(1),
        }
    }

    /// Writes into `out` (replacing its contents) a complete raw deflate
    /// stream of `input` whose back-references all lie within 4096 bytes,
    /// and returns true; returns false, with `out` empty, when the stream
    /// would take more than `limit` bytes or `input` is 1 GiB or more.
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>, limit: usize) -> bool {
        match self.compress_into(input, out, limit) {
            Some(n) => {
                out.truncate(n);
                true
            }
            None => {
                out.clear();
                false
            }
        }
    }

    /// As [`Encoder::compress`], but the stream is `out[..n]` for the
    /// returned `n`, and `out` is only grown, never cleared: a buffer reused
    /// from cluster to cluster is not zeroed again each time (the bit
    /// writer overwrites every byte it counts).
    pub fn compress_into(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Option<usize> {
        if input.len() >= MAX_INPUT {
            return None;
        }
        // No stream is longer than its stored blocks (5 bytes per 65535
        // input bytes, per block) and a final empty block; a larger limit
        // would only allocate for nothing.
        let blocks = input.len() / self.block_bytes + 1;
        let worst = input.len() + 5 * (input.len() / 65535 + 2 * blocks) + 16;
        let limit = limit.min(worst);
        // 8 bytes of slack for the bit writer's whole-word stores.
        if out.len() < limit + 8 {
            out.resize(limit + 8, 0);
        }
        match self.encode(input, &mut out[..limit + 8], limit) {
            Some(n) if n <= limit => Some(n),
            _ => None,
        }
    }

    fn encode(&mut self, input: &[u8], out: &mut [u8], limit: usize) -> Option<usize> {
        let mut w = BitWriter::new(out);
        self.matcher.start();
        let mut p = 0;
        loop {
            self.syms.clear();
            let start = p;
            p = self
                .matcher
                .run(input, p, p.saturating_add(self.block_bytes), &mut self.syms);
            let last = p >= input.len();
            self.block
                .write(&mut w, &self.syms, input.get(start..p)?, last);
            if w.overflowed() || w.len() > limit {
                return None;
            }
            if last {
                return w.finish();
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
