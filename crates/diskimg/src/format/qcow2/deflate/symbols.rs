//! One block's LZ77 parse as the matcher produces it, with the symbol
//! frequencies the block writer needs to build codes and choose a block
//! type.
//!
//! The parse is a list of sequences: a run of literals, then a match.
//! Literals are not copied: they are the block's input bytes between
//! matches, which the writer reads again from the input. So a position
//! that finds no match costs the matcher nothing but the probe, and the
//! writer emits runs of literals without testing each symbol's kind.

use super::tables::{dist_code, END_OF_BLOCK, LEN_CODE, NUM_DIST, NUM_LITLEN};

/// A run of literals followed by a match.
#[derive(Clone, Copy, Debug)]
pub struct Seq {
    /// Literals before the match.
    pub lits: u32,
    /// Match length, 3..=258.
    pub len: u16,
    /// Match distance, 1..=4096.
    pub dist: u16,
}

/// One block's parse and frequencies.
pub struct Symbols {
    /// The block's sequences, in order.
    pub seqs: Vec<Seq>,
    /// Literals after the last match.
    pub tail_lits: usize,
    /// Frequencies of the literal/length alphabet (end of block counted).
    pub litlen: [u32; NUM_LITLEN],
    /// Frequencies of the distance alphabet.
    pub dist: [u32; NUM_DIST],
}

impl Symbols {
    /// A buffer for blocks of up to `block_bytes` input bytes: at most one
    /// match per 4 of them, so the sequence list never grows once warm.
    pub fn new(block_bytes: usize) -> Self {
        Symbols {
            seqs: Vec::with_capacity(block_bytes / 4 + 2),
            tail_lits: 0,
            litlen: [0; NUM_LITLEN],
            dist: [0; NUM_DIST],
        }
    }

    /// Empties the buffer for a new block.
    pub fn clear(&mut self) {
        self.seqs.clear();
        self.tail_lits = 0;
        self.litlen.fill(0);
        self.dist.fill(0);
        self.litlen[END_OF_BLOCK] = 1;
    }

    /// Counts literal bytes.
    #[inline(always)]
    pub fn count_literals(&mut self, lits: &[u8]) {
        for &b in lits {
            self.litlen[b as usize] += 1;
        }
    }

    /// Appends `lits` literals (already counted) then a match; `len` is
    /// 3..=258 and `dist` 1..=4096 (the matcher guarantees both).
    #[inline(always)]
    pub fn push(&mut self, lits: usize, len: usize, dist: usize) {
        self.seqs.push(Seq {
            lits: lits as u32,
            len: len as u16,
            dist: dist as u16,
        });
        if let Some(f) = LEN_CODE
            .get(len)
            .and_then(|&c| self.litlen.get_mut(257 + c as usize))
        {
            *f += 1;
        }
        if let Some(f) = self.dist.get_mut(dist_code(dist as u32)) {
            *f += 1;
        }
    }
}
