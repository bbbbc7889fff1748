//! The symbols of one block as the matcher produces them, with their
//! frequencies: what the block writer needs to build codes and choose a
//! block type.

use super::tables::{dist_code, END_OF_BLOCK, LEN_CODE, NUM_DIST, NUM_LITLEN};

/// One block's literals and matches.
///
/// A literal is one entry, its byte (`< 256`); a match is two entries,
/// `256 + length - 3` (length 3..=258) then the distance (1..=4096).
/// Two bytes per literal keep a block's symbols (mostly literals in text)
/// small enough to stay in cache until they are written.
pub struct Symbols {
    /// Fixed-size storage; the first `len` entries are the block's.
    buf: Vec<u16>,
    len: usize,
    /// Frequencies of the literal/length alphabet (end of block counted).
    pub litlen: [u32; NUM_LITLEN],
    /// Frequencies of the distance alphabet.
    pub dist: [u32; NUM_DIST],
    /// The block is full at this many entries; `buf` holds three more, so
    /// a step of the matcher (at most a literal and a match) always fits.
    full_at: usize,
}

impl Symbols {
    /// A buffer for blocks of about `block_syms` symbols.
    pub fn new(block_syms: usize) -> Self {
        let block_syms = block_syms.max(16);
        Symbols {
            buf: vec![0; block_syms + 3],
            len: 0,
            litlen: [0; NUM_LITLEN],
            dist: [0; NUM_DIST],
            full_at: block_syms,
        }
    }

    /// Empties the buffer for a new block.
    pub fn clear(&mut self) {
        self.len = 0;
        self.litlen.fill(0);
        self.dist.fill(0);
        self.litlen[END_OF_BLOCK] = 1;
    }

    /// The block's entries in stream order.
    pub fn seq(&self) -> &[u16] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// An appender whose count lives in a local (a register in the
    /// matcher's loop); [`SymWriter::finish`] stores it back.
    pub fn writer(&mut self) -> SymWriter<'_> {
        SymWriter {
            buf: &mut self.buf,
            n: self.len,
            full_at: self.full_at,
            litlen: &mut self.litlen,
            dist: &mut self.dist,
            len: &mut self.len,
        }
    }
}

/// See [`Symbols::writer`].
pub struct SymWriter<'a> {
    buf: &'a mut [u16],
    n: usize,
    full_at: usize,
    litlen: &'a mut [u32; NUM_LITLEN],
    dist: &'a mut [u32; NUM_DIST],
    len: &'a mut usize,
}

impl SymWriter<'_> {
    /// Whether the block has enough symbols and should be written.
    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.n >= self.full_at
    }

    /// Appends a literal byte. Only after `is_full` returned false, for at
    /// most a literal and a match (the buffer's slack).
    #[inline(always)]
    pub fn literal(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.n) {
            *slot = u16::from(b);
            self.n += 1;
            self.litlen[b as usize] += 1;
        }
    }

    /// Appends a match; `len` is 3..=258 and `dist` 1..=4096 (the matcher
    /// guarantees both). Same room rule as [`Self::literal`].
    #[inline(always)]
    pub fn matched(&mut self, len: usize, dist: usize) {
        if let Some([a, b]) = self.buf.get_mut(self.n..self.n + 2) {
            *a = (256 + len - 3) as u16;
            *b = dist as u16;
            self.n += 2;
            self.litlen[257 + LEN_CODE[len] as usize] += 1;
            self.dist[dist_code(dist as u32)] += 1;
        }
    }

    /// Stores the count back into the [`Symbols`].
    pub fn finish(self) {
        *self.len = self.n;
    }
}
