//! The fixed alphabets of RFC 1951 §3.2.5: length and distance codes with
//! their base values and extra bits, restricted to the 4 KiB window this
//! encoder uses (distance codes 0..=23 cover distances 1..=4096).

/// The largest back-reference distance this encoder emits (QEMU inflates
/// qcow2 clusters with a 2^12-byte window).
pub const WINDOW: usize = 4096;
/// The longest match deflate can express (the shortest is 3).
pub const MAX_MATCH: usize = 258;
/// Literal/length alphabet size actually used: 256 literals, end of block
/// (256) and 29 length codes (257..=285).
pub const NUM_LITLEN: usize = 286;
/// Distance alphabet size needed for distances up to [`WINDOW`].
pub const NUM_DIST: usize = 24;
/// The end-of-block symbol.
pub const END_OF_BLOCK: usize = 256;

/// Base length of each length code (index = code - 257).
pub const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
/// Extra bits of each length code (index = code - 257).
pub const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
/// Base distance of each distance code.
pub const DIST_BASE: [u16; NUM_DIST] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073,
];
/// Extra bits of each distance code.
pub const DIST_EXTRA: [u8; NUM_DIST] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10,
];

/// Length code index (code - 257) of every match length; entries below 3
/// are unused (0).
pub static LEN_CODE: [u8; MAX_MATCH + 1] = build_len_code();

const fn build_len_code() -> [u8; MAX_MATCH + 1] {
    let mut t = [0u8; MAX_MATCH + 1];
    let mut code = 0;
    while code < 29 {
        let base = LEN_BASE[code] as usize;
        let span = 1usize << LEN_EXTRA[code];
        let mut k = 0;
        while k < span && base + k <= MAX_MATCH {
            t[base + k] = code as u8;
            k += 1;
        }
        code += 1;
    }
    // 258 has its own code (28); code 27's range (227..=258) also spans it.
    t[MAX_MATCH] = 28;
    t
}

/// Distance code of distance `d` (1..=[`WINDOW`]).
#[inline(always)]
pub fn dist_code(d: u32) -> usize {
    if d <= 4 {
        d.saturating_sub(1) as usize
    } else {
        let d1 = d - 1;
        let bits = 31 - d1.leading_zeros();
        (2 * bits + ((d1 >> (bits - 1)) & 1)) as usize
    }
}

/// The order in which code-length code lengths are sent (RFC 1951 §3.2.7).
pub const CL_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_and_distance_codes_cover_their_ranges() {
        for (len, &c) in LEN_CODE.iter().enumerate().skip(3) {
            let c = c as usize;
            let base = LEN_BASE[c] as usize;
            assert!(len >= base && len - base < (1 << LEN_EXTRA[c]), "len {len}");
        }
        for d in 1..=WINDOW as u32 {
            let c = dist_code(d);
            assert!(c < NUM_DIST, "dist {d}");
            let base = DIST_BASE[c] as u32;
            assert!(d >= base && d - base < (1 << DIST_EXTRA[c]), "dist {d}");
        }
    }
}
