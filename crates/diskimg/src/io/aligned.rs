//! A zeroed byte buffer whose start is aligned to a power of two, as
//! O_DIRECT wants its memory (QEMU's `qemu_blockalign`).

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A heap buffer of `len` zeroed bytes starting at a multiple of `align`.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// What was allocated (at least one byte).
    layout: Layout,
}

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads through `&[u8]`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// `len` zeroed bytes aligned to `align` (a power of two; anything else
    /// is rounded up to one). Aborts as `Vec` does when memory runs out;
    /// callers bound `len`.
    pub fn new(len: usize, align: usize) -> Self {
        let align = align.max(1).next_power_of_two();
        // A zero-size request still gets a real (one-alignment) block, so
        // the pointer is always valid and aligned.
        let size = len.max(1);
        let layout = match Layout::from_size_align(size, align) {
            Ok(l) => l,
            Err(_) => alloc::handle_alloc_error(Layout::new::<u8>()),
        };
        // SAFETY: the layout's size is not zero.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf { ptr, len, layout }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the allocation holds at least `len` initialised (zeroed)
        // bytes and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.layout.align())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for (len, align) in [(0, 4096), (1, 512), (4096, 4096), (100_000, 65536), (7, 3)] {
            let mut b = AlignedBuf::new(len, align);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % align.next_power_of_two(), 0);
            assert!(b.iter().all(|&x| x == 0));
            b.fill(9);
            assert!(b.iter().all(|&x| x == 9));
        }
    }
}
