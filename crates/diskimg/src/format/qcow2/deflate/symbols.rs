//! The symbols of one block as the matcher produces them, with their
//! frequencies: what the block writer needs to build codes and choose a
//! block type.

use super::tables::{dist_code, END_OF_BLOCK, LEN_CODE, NUM_DIST, NUM_LITLEN};

/// One block's literals and matches.
///
/// Each entry of `seq` is a literal byte (`< 256`) or a match packed as
/// `length << 16 | distance` (length 3..=258, so the value is `>= 3 << 16`;
/// distance 1..=4096).
pub struct Symbols {
    /// The symbols in stream order.
    pub seq: Vec<u32>,
    /// Frequencies of the literal/length alphabet (end of block counted).
    pub litlen: [u32; NUM_LITLEN],
    /// Frequencies of the distance alphabet.
    pub dist: [u32; NUM_DIST],
    /// `seq` is full at this many entries; its capacity is two more, so a
    /// step of the matcher (at most a literal and a match) never grows it.
    full_at: usize,
}

impl Symbols {
    /// A buffer for blocks of about `block_syms` symbols.
    pub fn new(block_syms: usize) -> Self {
        let block_syms = block_syms.max(16);
        Symbols {
            seq: Vec::with_capacity(block_syms + 2),
            litlen: [0; NUM_LITLEN],
            dist: [0; NUM_DIST],
            full_at: block_syms,
        }
    }

    /// Empties the buffer for a new block.
    pub fn clear(&mut self) {
        self.seq.clear();
        self.litlen.fill(0);
        self.dist.fill(0);
        self.litlen[END_OF_BLOCK] = 1;
    }

    /// Whether the block has enough symbols and should be written.
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.seq.len() >= self.full_at
    }

    /// Appends a literal byte.
    #[inline(always)]
    pub fn literal(&mut self, b: u8) {
        self.seq.push(u32::from(b));
        self.litlen[b as usize] += 1;
    }

    /// Appends a match; `len` is 3..=258 and `dist` 1..=4096 (the matcher
    /// guarantees both).
    #[inline(always)]
    pub fn matched(&mut self, len: usize, dist: usize) {
        self.seq.push(((len as u32) << 16) | dist as u32);
        self.litlen[257 + LEN_CODE[len] as usize] += 1;
        self.dist[dist_code(dist as u32)] += 1;
    }
}
