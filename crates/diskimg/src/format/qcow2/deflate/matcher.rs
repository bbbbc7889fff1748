//! Greedy LZ77 match finding over a 4 KiB window with a one-entry hash
//! table, one step of lazy evaluation, and skipping through long runs of
//! literals.
//!
//! `head` maps a hash of the next 4 bytes to the last position (mod 2^16)
//! that had it. The table is only a hint: a candidate is used only when
//! its distance is 1..=4096, it lies in the input, and its bytes are
//! compared equal, so a stale or aliased entry can cost time but never
//! correctness. The table is reset per input, so the output depends on
//! the input alone.
//!
//! On literal-heavy data (text, most positions find no match) the cost per
//! byte is what matters: the hit test is one branch that is rarely taken
//! (the window test is folded into the compared value; LLVM's codegen of
//! this loop is touchy: a variant that let it branch on the window test,
//! or on the selected candidate, ran at 60% of the speed on text),
//! and after 2^[`Params::skip_shift`] positions in a row without a match the
//! finder looks at every second, then third... position (the bytes in
//! between become literals), reset at the next match.

use super::symbols::Symbols;
use super::tables::{MAX_MATCH, WINDOW};

/// The shortest match worth a length/distance pair here (a 3-byte match
/// with a far distance rarely beats three literals).
const MIN_LEN: usize = 4;
/// log2 of the hash table's size: 2^13 u16 entries, 16 KiB, which stays
/// in L1 beside the window (2^14 was slower, 2^12 lost 0.3% of size).
const HASH_BITS: u32 = 13;
/// Reset value of the table: 4097 positions before position 0, so out of
/// the window of the first 61439 positions (beyond, an alias is only a
/// hint, verified like any candidate).
const EMPTY: u16 = 0u16.wrapping_sub(WINDOW as u16 + 1);

/// Effort settings of the match finder.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Positions inside matches up to this long are inserted in the table;
    /// longer matches insert only their last position.
    pub insert_max: usize,
    /// A match shorter than this is compared with the match at the next
    /// position (one step of lazy evaluation); 0 disables it.
    pub lazy_below: usize,
    /// After 2^`skip_shift` positions in a row without a match, the step
    /// grows by one every 2^`skip_shift` more; 0 disables skipping.
    pub skip_shift: u32,
}

/// See the module documentation.
pub struct Matcher {
    head: Box<[u16; 1 << HASH_BITS]>,
    params: Params,
}

#[inline(always)]
fn load32(s: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&s[i..i + 4]);
    u32::from_le_bytes(b)
}

#[inline(always)]
fn load64(s: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&s[i..i + 8]);
    u64::from_le_bytes(b)
}

#[inline(always)]
fn hash(v: u32) -> usize {
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// Length of the common prefix of `s[a..]` and `s[b..]`, at most `max`,
/// given that the first `known` bytes are equal. Requires `a < b` and
/// `b + max <= s.len()`.
#[inline(always)]
fn match_len(s: &[u8], a: usize, b: usize, known: usize, max: usize) -> usize {
    let mut len = known;
    while len + 8 <= max {
        let x = load64(s, a + len) ^ load64(s, b + len);
        if x != 0 {
            return len + (x.trailing_zeros() / 8) as usize;
        }
        len += 8;
    }
    while len < max && s[a + len] == s[b + len] {
        len += 1;
    }
    len
}

impl Matcher {
    /// A match finder with an empty table.
    pub fn new(params: Params) -> Self {
        Matcher {
            head: Box::new([EMPTY; 1 << HASH_BITS]),
            params,
        }
    }

    /// Prepares for a new input.
    pub fn start(&mut self) {
        self.head.fill(EMPTY);
    }

    /// Records position `p` (which has 4 bytes ahead) under its hash and
    /// returns the match (length, distance) its previous holder gives, or
    /// length 0 when there is none of at least `MIN_LEN`.
    #[inline(always)]
    fn probe(&mut self, s: &[u8], p: usize) -> (usize, usize) {
        let first = load32(s, p);
        let h = hash(first);
        let cand = self.head[h];
        self.head[h] = p as u16;
        let d = usize::from((p as u16).wrapping_sub(cand));
        // One rarely-taken branch: an out-of-range distance (0, beyond the
        // window or before the input) compares the position with itself
        // and is then rejected with the result.
        let in_range = d.wrapping_sub(1) < p.min(WINDOW);
        let c = if in_range { p - d } else { p };
        // Folded into the compared value rather than `&&`: LLVM would
        // otherwise branch on `in_range` first, and that branch is not
        // predictable on text.
        let out_of_range = u32::from(!in_range);
        if (load32(s, c) ^ first) | out_of_range == 0 {
            let max = (s.len() - p).min(MAX_MATCH);
            (match_len(s, c, p, MIN_LEN, max), d)
        } else {
            (0, 0)
        }
    }

    #[inline(always)]
    fn insert(&mut self, s: &[u8], p: usize) {
        self.head[hash(load32(s, p))] = p as u16;
    }

    /// Parses `s[p..]` into `syms` up to position `block_end` (a match may
    /// run past it) and returns the position reached: the block's end.
    pub fn run(&mut self, s: &[u8], mut p: usize, block_end: usize, syms: &mut Symbols) -> usize {
        let n = s.len();
        let block_end = block_end.min(n);
        // Positions below this have the 4 bytes a hash needs.
        let probe_end = block_end.min(n.saturating_sub(3));
        let Params {
            insert_max,
            lazy_below,
            skip_shift,
        } = self.params;
        // Positions in a row without a match before skipping starts.
        let skip_from = if skip_shift == 0 {
            usize::MAX
        } else {
            1 << skip_shift.min(32)
        };
        let skip_shift = skip_shift.min(32);
        let mut lit_start = p;
        while p < probe_end {
            let (mut len, mut dist) = self.probe(s, p);
            if len == 0 {
                let misses = p - lit_start;
                if misses < skip_from {
                    p += 1;
                } else {
                    // Step 2, 3... after long runs without a match.
                    p = (p + 2 + ((misses - skip_from) >> skip_shift)).min(probe_end);
                }
                continue;
            }
            let mut next_insert = p + 1;
            if len < lazy_below && p + 1 < probe_end {
                let (len2, dist2) = self.probe(s, p + 1);
                next_insert = p + 2;
                if len2 > len {
                    p += 1;
                    len = len2;
                    dist = dist2;
                }
            }
            syms.count_literals(&s[lit_start..p]);
            syms.push(p - lit_start, len, dist);
            let end = p + len;
            let hash_end = n.saturating_sub(3);
            if len <= insert_max {
                for q in next_insert..end.min(hash_end) {
                    self.insert(s, q);
                }
            } else if end - 1 < hash_end {
                self.insert(s, end - 1);
            }
            p = end;
            lit_start = p;
        }
        // The rest of the block (or of the input, past the last position
        // that can be hashed) is literals.
        let p = p.max(block_end);
        syms.count_literals(&s[lit_start..p]);
        syms.tail_lits = p - lit_start;
        p
    }
}
