//! Greedy LZ77 match finding with hash chains over a 4 KiB window.
//!
//! `head` maps a hash of the next 4 bytes to the most recent position with
//! that hash; `prev` links each position to the previous one with the same
//! hash. Positions are stored as `base + offset` in u32: each input gets a
//! `base` at least `WINDOW + 1` above the previous input's last position,
//! so entries left from earlier inputs are always farther than the window
//! and are never followed. The tables are therefore cleared only when the
//! u32 range runs out, not per cluster.
//!
//! `prev` has 2 * WINDOW slots: a slot is overwritten only by a position
//! 8192 later, so following links from a position within the window always
//! yields strictly older positions, and a chain ends at the first one out
//! of the window.

use super::symbols::Symbols;
use super::tables::{MAX_MATCH, WINDOW};

/// The shortest match worth a length/distance pair here (a 3-byte match
/// with a far distance rarely beats three literals).
const MIN_LEN: usize = 4;
/// log2 of the hash table's size.
const HASH_BITS: u32 = 14;
const PREV_SLOTS: usize = 2 * WINDOW;

/// Effort settings of the match finder.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Candidates examined per position.
    pub depth: u32,
    /// A match this long ends the search.
    pub nice: usize,
    /// Positions inside matches up to this long are inserted in the tables;
    /// longer matches insert none (their end is inserted as the next
    /// position).
    pub insert_max: usize,
    /// A match shorter than this is compared with the match at the next
    /// position (one step of lazy evaluation); 0 disables it.
    pub lazy_below: usize,
}

/// See the module documentation.
pub struct Matcher {
    head: Vec<u32>,
    prev: Vec<u32>,
    /// Stored value of offset 0 of the current input.
    base: u32,
    /// `base` of the next input.
    next_base: u32,
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

/// Length of the common prefix of `s[a..]` and `s[b..]`, at most `max`.
/// Requires `a < b` and `b + max <= s.len()`.
#[inline(always)]
fn match_len(s: &[u8], a: usize, b: usize, max: usize) -> usize {
    let mut len = 0;
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
    /// A match finder with empty tables.
    pub fn new(params: Params) -> Self {
        Matcher {
            head: vec![0; 1 << HASH_BITS],
            prev: vec![0; PREV_SLOTS],
            base: 0,
            next_base: WINDOW as u32 + 1,
            params,
        }
    }

    /// Prepares for an input of `len` bytes (`len` < 2^30).
    pub fn start(&mut self, len: usize) {
        let need = len as u64 + 2 * WINDOW as u64 + 2;
        if u64::from(self.next_base) + need > u64::from(u32::MAX) {
            // Zero entries are farther than the window from any position
            // at or above WINDOW + 1.
            self.head.fill(0);
            self.prev.fill(0);
            self.next_base = WINDOW as u32 + 1;
        }
        self.base = self.next_base;
        self.next_base = self.base + len as u32 + WINDOW as u32 + 1;
    }

    /// Moves the position counter (tests of the wrap-around).
    #[cfg(test)]
    pub fn set_next_base(&mut self, b: u32) {
        self.next_base = b;
    }

    #[inline(always)]
    fn insert(&mut self, s: &[u8], p: usize) {
        let h = hash(load32(s, p));
        let cur = self.base + p as u32;
        self.prev[cur as usize % PREV_SLOTS] = self.head[h];
        self.head[h] = cur;
    }

    /// Inserts position `p` (which has 4 bytes ahead) and returns the
    /// longest match found for it (length, distance), length 0 if none of
    /// at least `MIN_LEN`.
    #[inline(always)]
    fn insert_and_find(&mut self, s: &[u8], p: usize) -> (usize, usize) {
        let first = load32(s, p);
        let h = hash(first);
        let cur = self.base + p as u32;
        let mut cand = self.head[h];
        self.prev[cur as usize % PREV_SLOTS] = cand;
        self.head[h] = cur;
        let max = (s.len() - p).min(MAX_MATCH);
        let nice = self.params.nice.min(max);
        // Invariant: best < max, so s[p + best] exists.
        let mut best = MIN_LEN - 1;
        let mut best_dist = 0;
        for _ in 0..self.params.depth {
            let d = cur.wrapping_sub(cand) as usize;
            if d > WINDOW || d == 0 {
                break;
            }
            let Some(c) = p.checked_sub(d) else {
                break;
            };
            if s[c + best] == s[p + best] && load32(s, c) == first {
                let len = match_len(s, c, p, max);
                if len > best {
                    best = len;
                    best_dist = d;
                    if len >= nice {
                        break;
                    }
                }
            }
            cand = self.prev[cand as usize % PREV_SLOTS];
        }
        if best >= MIN_LEN {
            (best, best_dist)
        } else {
            (0, 0)
        }
    }

    /// Appends the symbols of `s[p..]` to `syms` until it is full or the
    /// input ends; returns the position reached (the block's end).
    pub fn run(&mut self, s: &[u8], mut p: usize, syms: &mut Symbols) -> usize {
        let n = s.len();
        // Positions below this have the 4 bytes a hash needs.
        let hash_end = n.saturating_sub(3);
        while p < hash_end && !syms.is_full() {
            let (mut len, mut dist) = self.insert_and_find(s, p);
            let mut next_insert = p + 1;
            if len > 0 && len < self.params.lazy_below && p + 1 < hash_end {
                let (len2, dist2) = self.insert_and_find(s, p + 1);
                next_insert = p + 2;
                if len2 > len {
                    syms.literal(s[p]);
                    p += 1;
                    len = len2;
                    dist = dist2;
                }
            }
            if len > 0 {
                syms.matched(len, dist);
                let end = p + len;
                if len <= self.params.insert_max {
                    for q in next_insert..end.min(hash_end) {
                        self.insert(s, q);
                    }
                }
                p = end;
            } else {
                syms.literal(s[p]);
                p += 1;
            }
        }
        while p < n && !syms.is_full() {
            syms.literal(s[p]);
            p += 1;
        }
        p
    }
}
