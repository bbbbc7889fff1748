//! Locks on guest ranges: requests that change overlapping guest ranges run
//! one after the other, requests on disjoint ranges in parallel.
//!
//! Invariant: while a [`RangeGuard`] lives, no other guard overlaps its
//! range. The writer takes one for every write, zero write and discard,
//! rounded out to whole clusters, so the L2 entries of those clusters change
//! only under it. Reads take none.

use std::sync::{Condvar, Mutex};

/// The set of locked ranges.
#[derive(Default)]
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    released: Condvar,
}

/// A locked range; unlocked on drop.
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    range: (u64, u64),
}

impl RangeLocks {
    /// Locks `[start, end)`, waiting while an overlapping range is held.
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        while held.iter().any(|&(s, e)| s < end && start < e) {
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        held.push((start, end));
        RangeGuard {
            locks: self,
            range: (start, end),
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = held.iter().position(|&r| r == self.range) {
            held.swap_remove(i);
        }
        drop(held);
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn overlapping_ranges_exclude_each_other() {
        let locks = Arc::new(RangeLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let locks = locks.clone();
                let inside = inside.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _g = locks.lock(i % 2, 10 + i % 3);
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Disjoint ranges do not wait for each other.
        let _a = locks.lock(0, 10);
        let _b = locks.lock(10, 20);
    }
}
