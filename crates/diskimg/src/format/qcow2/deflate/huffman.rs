//! Length-limited canonical Huffman codes (RFC 1951 §3.2.2).
//!
//! [`HuffmanBuilder::lengths`] builds an optimal code with the two-queue
//! method over the symbols sorted by frequency, clamps lengths to the
//! limit and repairs the Kraft sum so the code is exactly complete (zlib's
//! inflater rejects incomplete literal/length and distance codes unless a
//! single code of one bit is used). [`canonical_codes`] then numbers the
//! codes and bit-reverses them for the LSB-first writer.

/// The largest alphabet (literal/length: 286 symbols).
const MAX_SYMS: usize = 288;
/// The longest code length deflate allows.
pub const MAX_BITS: usize = 15;

/// Scratch space for building codes, reused from block to block so that no
/// allocation happens once an encoder exists.
pub struct HuffmanBuilder {
    /// (frequency << 16 | symbol) of the used symbols, sorted ascending.
    leaves: [u64; MAX_SYMS],
    /// Weight of each internal node, in creation order.
    weight: [u64; MAX_SYMS],
    /// Parent (internal node index) of each leaf, then of each internal
    /// node, at offset `MAX_SYMS`.
    parent: [u16; 2 * MAX_SYMS],
    /// Depth of each internal node.
    depth: [u16; MAX_SYMS],
}

impl HuffmanBuilder {
    /// Empty scratch space.
    pub fn new() -> Self {
        HuffmanBuilder {
            leaves: [0; MAX_SYMS],
            weight: [0; MAX_SYMS],
            parent: [0; 2 * MAX_SYMS],
            depth: [0; MAX_SYMS],
        }
    }

    /// Writes into `lens` (same length as `freq`, at most 288 symbols, at
    /// least 2) the code lengths of a complete prefix code for `freq` whose
    /// lengths are all <= `max_len` (<= 15, and 2^max_len >= symbols).
    /// Unused symbols get 0; when fewer than two symbols are used, symbols
    /// 0 and 1 complete the code with one bit each.
    pub fn lengths(&mut self, freq: &[u32], max_len: usize, lens: &mut [u8]) {
        let n = freq.len().min(lens.len()).min(MAX_SYMS);
        let max_len = max_len.clamp(1, MAX_BITS);
        lens.fill(0);
        let mut m = 0;
        for (s, &f) in freq[..n].iter().enumerate() {
            if f > 0 {
                self.leaves[m] = (u64::from(f) << 16) | s as u64;
                m += 1;
            }
        }
        if m < 2 {
            // A lone symbol still needs a complete code: pair it with 0 or 1.
            let lone = if m == 1 {
                (self.leaves[0] & 0xffff) as usize
            } else {
                0
            };
            let other = if lone == 0 { 1 } else { 0 };
            for s in [lone, other] {
                if let Some(l) = lens.get_mut(s) {
                    *l = 1;
                }
            }
            return;
        }
        let leaves = &mut self.leaves[..m];
        leaves.sort_unstable();

        // Two-queue Huffman: leaves in sorted order, internal nodes in
        // creation order (their weights never decrease).
        let (mut li, mut ii) = (0usize, 0usize);
        for j in 0..m - 1 {
            let mut sum = 0u64;
            for _ in 0..2 {
                // Internal nodes ii..j exist; prefer a leaf on ties (this
                // keeps the tree shallow).
                let take_leaf = li < m && (ii >= j || (leaves[li] >> 16) <= self.weight[ii]);
                if take_leaf {
                    sum += leaves[li] >> 16;
                    self.parent[li] = j as u16;
                    li += 1;
                } else {
                    sum += self.weight[ii];
                    self.parent[MAX_SYMS + ii] = j as u16;
                    ii += 1;
                }
            }
            self.weight[j] = sum;
        }
        // Depths: the root (m - 2) is 0; parents are created after children.
        let mut count = [0u32; MAX_BITS + 1];
        self.depth[m - 2] = 0;
        for j in (0..m - 2).rev() {
            self.depth[j] = self.depth[self.parent[MAX_SYMS + j] as usize] + 1;
        }
        let mut overlong = false;
        for i in 0..m {
            let d = self.depth[self.parent[i] as usize] as usize + 1;
            if d > max_len {
                overlong = true;
            }
            count[d.min(max_len)] += 1;
        }
        if overlong {
            fix_kraft(&mut count, max_len);
        }
        // The longest codes go to the rarest symbols.
        let mut i = 0;
        for len in (1..=max_len).rev() {
            for _ in 0..count[len] {
                let s = (leaves[i] & 0xffff) as usize;
                if let Some(l) = lens.get_mut(s) {
                    *l = len as u8;
                }
                i += 1;
            }
        }
    }
}

/// Moves codes between lengths until the Kraft sum of `count` (codes per
/// length, 1..=max_len) is exactly 1, i.e. the code is complete.
fn fix_kraft(count: &mut [u32; MAX_BITS + 1], max_len: usize) {
    let target = 1u64 << max_len;
    let kraft = |c: &[u32; MAX_BITS + 1]| -> u64 {
        (1..=max_len)
            .map(|l| u64::from(c[l]) << (max_len - l))
            .sum()
    };
    let mut k = kraft(count);
    // Over-subscribed: lengthen the longest code shorter than the limit.
    while k > target {
        let Some(l) = (1..max_len).rev().find(|&l| count[l] > 0) else {
            break;
        };
        count[l] -= 1;
        count[l + 1] += 1;
        k -= 1 << (max_len - l - 1);
    }
    // Under-subscribed: shorten the longest code; its gain divides the gap.
    while k < target {
        let Some(l) = (2..=max_len).rev().find(|&l| count[l] > 0) else {
            break;
        };
        count[l] -= 1;
        count[l - 1] += 1;
        k += 1 << (max_len - l);
    }
}

/// Writes the canonical code of every symbol of `lens` into `codes`,
/// bit-reversed so that the LSB-first writer sends it MSB first.
pub fn canonical_codes(lens: &[u8], codes: &mut [u16]) {
    let mut count = [0u16; MAX_BITS + 1];
    for &l in lens {
        count[(l as usize).min(MAX_BITS)] += 1;
    }
    count[0] = 0;
    let mut next = [0u16; MAX_BITS + 2];
    let mut code = 0u16;
    for bits in 1..=MAX_BITS {
        code = code.wrapping_add(count[bits - 1]) << 1;
        next[bits] = code;
    }
    for (s, &l) in lens.iter().enumerate() {
        let l = (l as usize).min(MAX_BITS);
        if let Some(c) = codes.get_mut(s) {
            *c = if l == 0 {
                0
            } else {
                let v = next[l];
                next[l] = v.wrapping_add(1);
                v.reverse_bits() >> (16 - l)
            };
        }
    }
}
