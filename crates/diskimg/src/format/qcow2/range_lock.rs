//! Locks on guest ranges: requests that change overlapping guest ranges run
//! one after the other, requests on disjoint ranges in parallel.
//!
//! Invariant: while a [`RangeGuard`] lives, no other guard overlaps its
//! range. The writer takes one for every write, zero write and discard,
//! rounded out to whole clusters, so the L2 entries of those clusters change
//! only under it. Reads take none.

use std::sync::{Condvar, Mutex};

/// Number of wait queues; a waiter waits on the queue of the range that
/// blocks it, so a release wakes only the requests waiting for that range
/// (and the few that share its queue), not every waiting request.
const QUEUES: usize = 64;

/// The set of locked ranges.
pub struct RangeLocks {
    held: Mutex<Vec<(u64, u64)>>,
    released: [Condvar; QUEUES],
}

impl Default for RangeLocks {
    fn default() -> Self {
        RangeLocks {
            held: Mutex::new(Vec::new()),
            released: std::array::from_fn(|_| Condvar::new()),
        }
    }
}

/// The wait queue of a held range, by its start.
fn queue(range: (u64, u64)) -> usize {
    // Ranges start on cluster boundaries: mix the bits above the smallest
    // cluster size so neighbouring clusters use different queues.
    ((range.0 >> 9).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % QUEUES
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
        while let Some(&blocker) = held.iter().find(|&&(s, e)| s < end && start < e) {
            held = self.released[queue(blocker)]
                .wait(held)
                .unwrap_or_else(|e| e.into_inner());
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
        self.locks.released[queue(self.range)].notify_all();
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
