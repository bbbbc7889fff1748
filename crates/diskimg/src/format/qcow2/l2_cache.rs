//! A bounded LRU cache of decoded L2 tables, shared by all reader threads.
//!
//! Invariants: the cache holds at most `capacity` tables (at least 2); the
//! lock is held only to look up or insert an `Arc`'d table, never while a
//! table or guest data is read from storage. Two threads missing the same
//! table at once both read it; the second insert replaces the first, which
//! is harmless as tables are immutable here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One L2 table: its entries as native integers (two per entry with
/// extended L2).
pub type L2Table = Arc<[u64]>;

struct Inner {
    map: HashMap<u64, (L2Table, u64)>,
    lru: BTreeMap<u64, u64>,
    clock: u64,
}

/// The cache, keyed by the host offset of the table.
pub struct L2Cache {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// QEMU's minimum number of cached L2 tables.
pub const MIN_TABLES: u64 = 2;

/// The number of tables to cache: `bytes / cluster_size` when given, else
/// QEMU's default (enough to map `virtual_size`, capped at `max_default`
/// bytes); at least [`MIN_TABLES`].
pub fn capacity_for(
    bytes: Option<u64>,
    virtual_size: u64,
    cluster_size: u64,
    l2_entry_size: u64,
    max_default: u64,
) -> usize {
    let bytes = match bytes {
        Some(b) => b,
        None => {
            let clusters = virtual_size.div_ceil(cluster_size);
            let need = clusters
                .saturating_mul(l2_entry_size)
                .div_ceil(cluster_size)
                .saturating_mul(cluster_size);
            need.min(max_default)
        }
    };
    let tables = (bytes / cluster_size).max(MIN_TABLES);
    usize::try_from(tables).unwrap_or(usize::MAX)
}

impl L2Cache {
    /// A cache of at most `capacity` tables (at least 2).
    pub fn new(capacity: usize) -> Self {
        L2Cache {
            capacity: capacity.max(MIN_TABLES as usize),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                lru: BTreeMap::new(),
                clock: 0,
            }),
        }
    }

    /// The number of tables the cache may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The number of tables held now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table at `offset`, if cached (marks it most recently used).
    pub fn get(&self, offset: u64) -> Option<L2Table> {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.clock += 1;
        let now = inner.clock;
        let (table, stamp) = inner.map.get_mut(&offset)?;
        inner.lru.remove(stamp);
        *stamp = now;
        inner.lru.insert(now, offset);
        Some(table.clone())
    }

    /// Inserts the table at `offset`, evicting the least recently used.
    pub fn insert(&self, offset: u64, table: L2Table) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.clock += 1;
        let now = inner.clock;
        if let Some((_, old)) = inner.map.insert(offset, (table, now)) {
            inner.lru.remove(&old);
        }
        inner.lru.insert(now, offset);
        while inner.map.len() > self.capacity {
            let Some((_, victim)) = inner.lru.pop_first() else {
                break;
            };
            inner.map.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let c = L2Cache::new(2);
        let t = |v: u64| -> L2Table { Arc::from(vec![v]) };
        c.insert(1, t(1));
        c.insert(2, t(2));
        assert_eq!(c.get(1).unwrap()[0], 1);
        c.insert(3, t(3));
        assert!(c.get(2).is_none());
        assert!(c.get(1).is_some());
        assert!(c.get(3).is_some());
        assert_eq!(c.len(), 2);
        c.insert(3, t(33));
        assert_eq!(c.get(3).unwrap()[0], 33);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn capacity_rules() {
        // 1 GiB, 64 KiB clusters: 16384 entries * 8 = 128 KiB = 2 tables.
        assert_eq!(capacity_for(None, 1 << 30, 65536, 8, 32 << 20), 2);
        // 1 TiB: 128 MiB of L2 needed, capped at 32 MiB = 512 tables.
        assert_eq!(capacity_for(None, 1 << 40, 65536, 8, 32 << 20), 512);
        // Explicit size, minimum 2.
        assert_eq!(capacity_for(Some(1 << 20), 1 << 40, 65536, 8, 32 << 20), 16);
        assert_eq!(capacity_for(Some(0), 1 << 40, 65536, 8, 32 << 20), 2);
        // Tiny images still get 2.
        assert_eq!(capacity_for(None, 0, 512, 16, 32 << 20), 2);
    }
}
