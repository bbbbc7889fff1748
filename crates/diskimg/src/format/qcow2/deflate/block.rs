//! Writing one block (RFC 1951 §3.2.3-§3.2.7): builds the dynamic codes
//! for its symbols, prices the dynamic, fixed and stored encodings, and
//! writes the cheapest.

use super::bitwriter::{Acc, BitWriter};
use super::huffman::{canonical_codes, HuffmanBuilder, MAX_BITS};
use super::symbols::Symbols;
use super::tables::{
    dist_code, CL_ORDER, DIST_BASE, DIST_EXTRA, END_OF_BLOCK, LEN_BASE, LEN_CODE, LEN_EXTRA,
    MAX_MATCH, NUM_DIST, NUM_LITLEN,
};

/// Longest code of the code-length alphabet.
const CL_MAX_BITS: usize = 7;
/// Largest stored block.
const STORED_MAX: usize = 0xffff;

/// A code: length and bit-reversed value of each symbol.
struct Code<const N: usize> {
    lens: [u8; N],
    codes: [u16; N],
    /// `code | length << 16` of each symbol, for the emitting loop.
    packed: [u32; N],
}

impl<const N: usize> Code<N> {
    fn new() -> Self {
        Code {
            lens: [0; N],
            codes: [0; N],
            packed: [0; N],
        }
    }

    fn assign_codes(&mut self) {
        canonical_codes(&self.lens, &mut self.codes);
        self.pack();
    }

    fn pack(&mut self) {
        for ((p, &c), &l) in self.packed.iter_mut().zip(&self.codes).zip(&self.lens) {
            *p = u32::from(c) | u32::from(l) << 16;
        }
    }
}

/// Reusable state for writing blocks.
pub struct BlockWriter {
    huff: HuffmanBuilder,
    lit: Code<NUM_LITLEN>,
    dist: Code<NUM_DIST>,
    fixed_lit: Code<NUM_LITLEN>,
    fixed_dist: Code<NUM_DIST>,
    cl: Code<19>,
    cl_freq: [u32; 19],
    /// Run-length coded code lengths: symbol (0..=18) | extra value << 8.
    cl_items: [u16; NUM_LITLEN + NUM_DIST],
    n_items: usize,
    /// For each match length (index `length - 3`): its length code and
    /// extra bits, packed as `bits | count << 24`.
    len_tab: [u32; MAX_MATCH - 2],
}

impl BlockWriter {
    /// State with the fixed codes (§3.2.6) ready.
    pub fn new() -> Self {
        // The fixed code numbers 288 symbols (286 and 287 are never sent
        // but shift the 9-bit codes), so build it whole and keep 286.
        let mut lens288 = [0u8; 288];
        for (s, l) in lens288.iter_mut().enumerate() {
            *l = match s {
                0..=143 => 8,
                144..=255 => 9,
                256..=279 => 7,
                _ => 8,
            };
        }
        let mut codes288 = [0u16; 288];
        canonical_codes(&lens288, &mut codes288);
        let mut fixed_lit = Code::new();
        fixed_lit.lens.copy_from_slice(&lens288[..NUM_LITLEN]);
        fixed_lit.codes.copy_from_slice(&codes288[..NUM_LITLEN]);
        fixed_lit.pack();
        let mut fixed_dist = Code::new();
        fixed_dist.lens.fill(5);
        fixed_dist.assign_codes();
        BlockWriter {
            huff: HuffmanBuilder::new(),
            lit: Code::new(),
            dist: Code::new(),
            fixed_lit,
            fixed_dist,
            cl: Code::new(),
            cl_freq: [0; 19],
            cl_items: [0; NUM_LITLEN + NUM_DIST],
            n_items: 0,
            len_tab: [0; MAX_MATCH - 2],
        }
    }

    /// Writes one block holding `syms`, the parse of `raw` (whose bytes
    /// are its literals); `last` sets the final-block bit.
    pub fn write(&mut self, w: &mut BitWriter, syms: &Symbols, raw: &[u8], last: bool) {
        self.huff
            .lengths(&syms.litlen, MAX_BITS, &mut self.lit.lens);
        self.huff.lengths(&syms.dist, MAX_BITS, &mut self.dist.lens);
        let hlit = last_used(&self.lit.lens).max(257);
        let hdist = last_used(&self.dist.lens).max(1);
        self.code_length_items(hlit, hdist);
        self.huff
            .lengths(&self.cl_freq, CL_MAX_BITS, &mut self.cl.lens);
        let hclen = (4..=19)
            .rev()
            .find(|&k| self.cl.lens[CL_ORDER[k - 1]] != 0)
            .unwrap_or(4);

        let extra = extra_bits(syms);
        let header = 5
            + 5
            + 4
            + 3 * hclen as u64
            + cost(&self.cl_freq, &self.cl.lens)
            + 2 * u64::from(self.cl_freq[16])
            + 3 * u64::from(self.cl_freq[17])
            + 7 * u64::from(self.cl_freq[18]);
        let dynamic =
            header + cost(&syms.litlen, &self.lit.lens) + cost(&syms.dist, &self.dist.lens) + extra;
        let fixed = cost(&syms.litlen, &self.fixed_lit.lens)
            + cost(&syms.dist, &self.fixed_dist.lens)
            + extra;
        let chunks = raw.len().div_ceil(STORED_MAX).max(1) as u64;
        let stored = chunks * 40 + 7 + 8 * raw.len() as u64;

        if stored < dynamic.min(fixed) {
            write_stored(w, raw, last);
        } else if fixed <= dynamic {
            w.put(u64::from(last) | (1 << 1), 3);
            fill_len_tab(&mut self.len_tab, &self.fixed_lit);
            emit(
                w,
                syms,
                raw,
                &self.fixed_lit,
                &self.fixed_dist,
                &self.len_tab,
            );
        } else {
            self.lit.assign_codes();
            self.dist.assign_codes();
            self.cl.assign_codes();
            w.put(u64::from(last) | (2 << 1), 3);
            w.put((hlit - 257) as u64, 5);
            w.put((hdist - 1) as u64, 5);
            w.put((hclen - 4) as u64, 4);
            for &s in &CL_ORDER[..hclen] {
                w.put(u64::from(self.cl.lens[s]), 3);
            }
            for &item in &self.cl_items[..self.n_items] {
                let s = (item & 0xff) as usize;
                w.put(u64::from(self.cl.codes[s]), u32::from(self.cl.lens[s]));
                match s {
                    16 => w.put(u64::from(item >> 8), 2),
                    17 => w.put(u64::from(item >> 8), 3),
                    18 => w.put(u64::from(item >> 8), 7),
                    _ => {}
                }
            }
            fill_len_tab(&mut self.len_tab, &self.lit);
            emit(w, syms, raw, &self.lit, &self.dist, &self.len_tab);
        }
    }

    /// Run-length codes the literal/length lengths `[..hlit]` followed by
    /// the distance lengths `[..hdist]` into `cl_items`, counting
    /// `cl_freq`. Runs may cross from one table to the other (§3.2.7).
    fn code_length_items(&mut self, hlit: usize, hdist: usize) {
        self.cl_freq = [0; 19];
        self.n_items = 0;
        let total = hlit + hdist;
        let len_at = |i: usize, lit: &[u8], dist: &[u8]| {
            if i < hlit {
                lit[i]
            } else {
                dist[i - hlit]
            }
        };
        let mut i = 0;
        while i < total {
            let v = len_at(i, &self.lit.lens, &self.dist.lens);
            let mut run = 1;
            while i + run < total && len_at(i + run, &self.lit.lens, &self.dist.lens) == v {
                run += 1;
            }
            i += run;
            if v == 0 {
                while run >= 11 {
                    let r = run.min(138);
                    self.item(18, r - 11);
                    run -= r;
                }
                if run >= 3 {
                    self.item(17, run - 3);
                    run = 0;
                }
            } else {
                self.item(v as usize, 0);
                run -= 1;
                while run >= 3 {
                    let r = run.min(6);
                    self.item(16, r - 3);
                    run -= r;
                }
            }
            for _ in 0..run {
                self.item(v as usize, 0);
            }
        }
    }

    fn item(&mut self, sym: usize, extra: usize) {
        // At most one item per code length: n_items <= hlit + hdist.
        if let Some(slot) = self.cl_items.get_mut(self.n_items) {
            *slot = (sym | extra << 8) as u16;
            self.n_items += 1;
            self.cl_freq[sym] += 1;
        }
    }
}

/// Index after the last non-zero length.
fn last_used(lens: &[u8]) -> usize {
    lens.iter().rposition(|&l| l != 0).map_or(0, |i| i + 1)
}

/// Bits of the symbols' Huffman codes alone.
fn cost(freq: &[u32], lens: &[u8]) -> u64 {
    freq.iter()
        .zip(lens)
        .map(|(&f, &l)| u64::from(f) * u64::from(l))
        .sum()
}

/// Bits of the length and distance extra fields, the same in every coding.
fn extra_bits(syms: &Symbols) -> u64 {
    let len: u64 = syms.litlen[257..]
        .iter()
        .zip(LEN_EXTRA)
        .map(|(&f, e)| u64::from(f) * u64::from(e))
        .sum();
    let dist: u64 = syms
        .dist
        .iter()
        .zip(DIST_EXTRA)
        .map(|(&f, e)| u64::from(f) * u64::from(e))
        .sum();
    len + dist
}

/// Packs, for every match length, its length symbol's code followed by
/// its extra bits.
fn fill_len_tab(tab: &mut [u32; MAX_MATCH - 2], lit: &Code<NUM_LITLEN>) {
    for (i, t) in tab.iter_mut().enumerate() {
        let len = i + 3;
        let lc = LEN_CODE[len] as usize;
        let e = lit.packed[257 + lc];
        let (code, n) = (e & 0xffff, e >> 16);
        let extra = len as u32 - u32::from(LEN_BASE[lc]);
        *t = (code | extra << n) | (n + u32::from(LEN_EXTRA[lc])) << 24;
    }
}

/// Writes the block's literals and matches with the given codes, then the
/// end of block.
fn emit(
    w: &mut BitWriter,
    syms: &Symbols,
    raw: &[u8],
    lit: &Code<NUM_LITLEN>,
    dist: &Code<NUM_DIST>,
    len_tab: &[u32; MAX_MATCH - 2],
) {
    let (mut a, out) = w.parts();
    let mut ok = true;
    let mut q = 0usize;
    for seq in &syms.seqs {
        let lits = raw.get(q..q + seq.lits as usize).unwrap_or(&[]);
        ok &= emit_literals(&mut a, out, lits, &lit.packed);
        q += seq.lits as usize + seq.len as usize;
        // A match: at most 15 + 5 + 15 + 10 = 45 bits before the flush.
        let e = len_tab[usize::from(seq.len).wrapping_sub(3).min(MAX_MATCH - 3)];
        a.add(u64::from(e & 0xff_ffff), e >> 24);
        let d = u32::from(seq.dist);
        let dc = dist_code(d);
        let e = dist.packed[dc];
        a.add(u64::from(e & 0xffff), e >> 16);
        a.add(
            u64::from(d - u32::from(DIST_BASE[dc])),
            u32::from(DIST_EXTRA[dc]),
        );
        ok &= a.flush(out);
        if !ok {
            break;
        }
    }
    let lits = raw.get(q..q + syms.tail_lits).unwrap_or(&[]);
    ok &= emit_literals(&mut a, out, lits, &lit.packed);
    let e = lit.packed[END_OF_BLOCK];
    a.add(u64::from(e & 0xffff), e >> 16);
    ok &= a.flush(out);
    w.set_acc(a);
    if !ok {
        w.set_overflow();
    }
}

/// Writes literal bytes, three codes (at most 45 bits) per flush.
#[inline(always)]
fn emit_literals(a: &mut Acc, out: &mut [u8], lits: &[u8], packed: &[u32; NUM_LITLEN]) -> bool {
    let mut ok = true;
    let mut threes = lits.chunks_exact(3);
    for t in &mut threes {
        for &b in t {
            let e = packed[b as usize];
            a.add(u64::from(e & 0xffff), e >> 16);
        }
        ok &= a.flush(out);
    }
    for &b in threes.remainder() {
        let e = packed[b as usize];
        a.add(u64::from(e & 0xffff), e >> 16);
        ok &= a.flush(out);
    }
    ok
}

/// Writes `raw` as stored blocks of at most 65535 bytes (§3.2.4).
fn write_stored(w: &mut BitWriter, raw: &[u8], last: bool) {
    let mut chunks = raw.chunks(STORED_MAX).peekable();
    if raw.is_empty() {
        w.put(u64::from(last), 3);
        w.align();
        w.bytes(&[0, 0, 0xff, 0xff]);
        return;
    }
    while let Some(c) = chunks.next() {
        let fin = last && chunks.peek().is_none();
        w.put(u64::from(fin), 3);
        w.align();
        let n = c.len() as u16;
        let mut hdr = [0u8; 4];
        hdr[..2].copy_from_slice(&n.to_le_bytes());
        hdr[2..].copy_from_slice(&(!n).to_le_bytes());
        w.bytes(&hdr);
        w.bytes(c);
    }
}
