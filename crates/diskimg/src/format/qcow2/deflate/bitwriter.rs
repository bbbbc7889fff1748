//! An LSB-first bit writer (RFC 1951 §3.1.1) over a caller-sized byte slice.
//!
//! Bits gather in a 64-bit accumulator; a flush stores the whole
//! accumulator as 8 bytes at the current position and advances by the
//! complete bytes only, so it costs one unaligned store and no per-byte
//! loop. The slice therefore needs 8 bytes of slack past the largest output
//! the caller accepts. When a store would not fit, the writer records the
//! overflow and drops bits: the caller checks [`BitWriter::overflowed`] and
//! discards the output.
//!
//! Hot loops copy the [`Acc`] into a local (so it lives in registers), work
//! on it with the output slice from [`BitWriter::parts`], and put it back.

/// The accumulator and position: small and `Copy` so that loops can keep
/// it in registers.
#[derive(Clone, Copy)]
pub struct Acc {
    /// Output position of the accumulator's first byte.
    pub pos: usize,
    buf: u64,
    /// Pending bits in `buf`. Invariant: < 8 after `flush`, and callers add
    /// at most 56 bits between flushes, so it never exceeds 63.
    nbits: u32,
}

impl Acc {
    /// Adds the low `n` bits of `bits` (the rest must be zero). The caller
    /// flushes before more than 56 bits are pending.
    #[inline(always)]
    pub fn add(&mut self, bits: u64, n: u32) {
        self.buf |= bits << self.nbits;
        self.nbits += n;
    }

    /// Writes the complete bytes pending into `out`; returns false (and
    /// drops them) when 8 bytes do not fit at the position.
    #[inline(always)]
    pub fn flush(&mut self, out: &mut [u8]) -> bool {
        let nbytes = (self.nbits >> 3) as usize;
        let ok = match out.get_mut(self.pos..self.pos + 8) {
            Some(dst) => {
                dst.copy_from_slice(&self.buf.to_le_bytes());
                self.pos += nbytes;
                true
            }
            None => false,
        };
        // nbits <= 63 so the shift is < 64.
        self.buf >>= nbytes * 8;
        self.nbits &= 7;
        ok
    }
}

/// See the module documentation.
pub struct BitWriter<'a> {
    out: &'a mut [u8],
    acc: Acc,
    overflow: bool,
}

impl<'a> BitWriter<'a> {
    /// A writer at the start of `out`.
    pub fn new(out: &'a mut [u8]) -> Self {
        BitWriter {
            out,
            acc: Acc {
                pos: 0,
                buf: 0,
                nbits: 0,
            },
            overflow: false,
        }
    }

    /// The accumulator and the output, for a hot loop; the loop reports an
    /// overflow with [`Self::set_overflow`] and stores the accumulator back
    /// with [`Self::set_acc`].
    pub fn parts(&mut self) -> (Acc, &mut [u8]) {
        (self.acc, self.out)
    }

    /// See [`Self::parts`].
    pub fn set_acc(&mut self, acc: Acc) {
        self.acc = acc;
    }

    /// See [`Self::parts`].
    pub fn set_overflow(&mut self) {
        self.overflow = true;
    }

    /// Adds bits then flushes: for the cold paths (block headers).
    pub fn put(&mut self, bits: u64, n: u32) {
        self.acc.add(bits, n);
        if !self.acc.flush(self.out) {
            self.overflow = true;
        }
    }

    /// Pads to a byte boundary with zero bits and flushes.
    pub fn align(&mut self) {
        self.put(0, 0);
        if self.acc.nbits > 0 {
            self.acc.nbits = 8;
            self.put(0, 0);
        }
    }

    /// Appends raw bytes; the writer must be byte-aligned ([`Self::align`]).
    pub fn bytes(&mut self, data: &[u8]) {
        debug_assert_eq!(self.acc.nbits, 0);
        let pos = self.acc.pos;
        match self.out.get_mut(pos..pos + data.len()) {
            Some(dst) => {
                dst.copy_from_slice(data);
                self.acc.pos += data.len();
            }
            None => self.overflow = true,
        }
    }

    /// Bytes the stream takes so far, counting a partial last byte.
    pub fn len(&self) -> usize {
        self.acc.pos + (self.acc.nbits as usize).div_ceil(8)
    }

    /// Whether some output did not fit in the slice.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Writes the last partial byte; returns the stream's length, or None
    /// when the output did not fit.
    pub fn finish(mut self) -> Option<usize> {
        self.align();
        if self.overflow {
            None
        } else {
            Some(self.acc.pos)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_bits_lsb_first_and_reports_overflow() {
        let mut buf = [0u8; 10];
        let mut w = BitWriter::new(&mut buf);
        w.put(0b1, 1);
        w.put(0b10, 2);
        w.put(0x1f, 5);
        w.put(0xabc, 12);
        assert_eq!(w.len(), 3);
        assert_eq!(w.finish(), Some(3));
        assert_eq!(&buf[..3], &[0b1111_1101, 0xbc, 0x0a]);
        // 2 bytes of output need 8 bytes of slack: a 9-byte slice holds
        // one complete store at position 1 but not at position 2.
        let mut small = [0u8; 9];
        let mut w = BitWriter::new(&mut small);
        w.put(0xffff, 16);
        w.put(0xff, 8);
        assert!(w.overflowed());
        assert_eq!(w.finish(), None);
    }
}
