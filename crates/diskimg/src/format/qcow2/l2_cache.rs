//! A bounded LRU cache of decoded L2 tables, shared by reader and writer
//! threads; a write-back cache for the tables the writer changes.
//!
//! Invariants:
//! - The lock is held only to look up, insert or patch an `Arc`'d table,
//!   never while a table or guest data is read from or written to storage.
//! - A dirty table (changed in memory, not yet written) is never evicted:
//!   the writer writes dirty tables back ([`L2Cache::take_dirty`]) in the
//!   order the crash-safety rules demand, and flushes when too many are
//!   dirty. The cache may exceed its capacity by the dirty tables only.
//! - A reader that missed loads the table from storage without the lock and
//!   inserts it only if nothing was evicted or removed meanwhile (the
//!   `epoch` did not move) and the table is still absent, so a stale copy
//!   read from disk never replaces a newer table.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One L2 table: its entries as native integers (two per entry with
/// extended L2).
pub type L2Table = Arc<[u64]>;

struct Entry {
    table: L2Table,
    stamp: u64,
    dirty: bool,
}

struct Inner {
    map: HashMap<u64, Entry>,
    lru: BTreeMap<u64, u64>,
    clock: u64,
    /// Moves whenever a table leaves the cache.
    epoch: u64,
    dirty: usize,
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
    /// A cache of at most `capacity` clean tables (at least 2).
    pub fn new(capacity: usize) -> Self {
        L2Cache {
            capacity: capacity.max(MIN_TABLES as usize),
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                lru: BTreeMap::new(),
                clock: 0,
                epoch: 0,
                dirty: 0,
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

    /// The number of dirty tables.
    pub fn dirty_count(&self) -> usize {
        self.lock().dirty
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
        let e = inner.map.get_mut(&offset)?;
        inner.lru.remove(&e.stamp);
        e.stamp = now;
        inner.lru.insert(now, offset);
        Some(e.table.clone())
    }

    /// The current epoch: take it before loading a table from storage and
    /// pass it to [`L2Cache::insert_loaded`].
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Inserts a table loaded from storage when no table left the cache
    /// since `epoch` and none is cached at `offset`; returns the table the
    /// cache holds for `offset` afterwards (the cached one wins).
    pub fn insert_loaded(&self, offset: u64, table: L2Table, epoch: u64) -> L2Table {
        let mut g = self.lock();
        if let Some(e) = g.map.get(&offset) {
            return e.table.clone();
        }
        if g.epoch != epoch {
            return table;
        }
        self.put(&mut g, offset, table.clone(), false);
        table
    }

    /// Applies `patch` to the table at `offset` (cached, else `base`, which
    /// the caller loaded and which must be current) and marks it dirty. The
    /// table is changed in place unless a reader holds it.
    pub fn patch(&self, offset: u64, base: Option<&L2Table>, patch: impl FnOnce(&mut [u64])) {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut table = match inner.map.get_mut(&offset) {
            Some(e) => std::mem::replace(&mut e.table, Arc::from(Vec::new())),
            None => match base {
                Some(b) => b.clone(),
                None => return,
            },
        };
        match Arc::get_mut(&mut table) {
            Some(t) => patch(t),
            None => {
                let mut v = table.to_vec();
                patch(&mut v);
                table = Arc::from(v);
            }
        }
        self.put(inner, offset, table, true);
    }

    /// Inserts (or replaces) the table at `offset` as dirty: a new table,
    /// or one the writer rebuilt.
    pub fn store_dirty(&self, offset: u64, table: L2Table) {
        let mut g = self.lock();
        self.put(&mut g, offset, table, true);
    }

    /// Drops the table at `offset` (its cluster is being freed).
    pub fn remove(&self, offset: u64) {
        let mut g = self.lock();
        if let Some(e) = g.map.remove(&offset) {
            g.lru.remove(&e.stamp);
            if e.dirty {
                g.dirty -= 1;
            }
            g.epoch += 1;
        }
    }

    /// The dirty tables, now marked clean: the caller writes them.
    pub fn take_dirty(&self) -> Vec<(u64, L2Table)> {
        let mut g = self.lock();
        let inner = &mut *g;
        let mut out = Vec::with_capacity(inner.dirty);
        for (&off, e) in inner.map.iter_mut() {
            if e.dirty {
                e.dirty = false;
                out.push((off, e.table.clone()));
            }
        }
        inner.dirty = 0;
        out.sort_unstable_by_key(|(o, _)| *o);
        self.evict(inner);
        out
    }

    fn put(&self, inner: &mut Inner, offset: u64, table: L2Table, dirty: bool) {
        inner.clock += 1;
        let now = inner.clock;
        let was_dirty = match inner.map.insert(
            offset,
            Entry {
                table,
                stamp: now,
                dirty,
            },
        ) {
            Some(old) => {
                inner.lru.remove(&old.stamp);
                old.dirty
            }
            None => false,
        };
        // A table once dirty stays dirty until written.
        if was_dirty && !dirty {
            if let Some(e) = inner.map.get_mut(&offset) {
                e.dirty = true;
            }
        }
        if dirty && !was_dirty {
            inner.dirty += 1;
        }
        inner.lru.insert(now, offset);
        self.evict(inner);
    }

    /// Evicts clean tables, least recently used first, down to capacity.
    fn evict(&self, inner: &mut Inner) {
        if inner.map.len() <= self.capacity {
            return;
        }
        let mut excess = inner.map.len() - self.capacity;
        let mut victims = Vec::new();
        for (&stamp, &off) in inner.lru.iter() {
            if excess == 0 {
                break;
            }
            if inner.map.get(&off).is_some_and(|e| !e.dirty) {
                victims.push((stamp, off));
                excess -= 1;
            }
        }
        for (stamp, off) in victims {
            inner.lru.remove(&stamp);
            inner.map.remove(&off);
            inner.epoch += 1;
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
        c.insert_loaded(1, t(1), c.epoch());
        c.insert_loaded(2, t(2), c.epoch());
        assert_eq!(c.get(1).unwrap()[0], 1);
        c.insert_loaded(3, t(3), c.epoch());
        assert!(c.get(2).is_none());
        assert!(c.get(1).is_some());
        assert!(c.get(3).is_some());
        assert_eq!(c.len(), 2);
        // A loaded copy never replaces the cached table.
        assert_eq!(c.insert_loaded(3, t(33), c.epoch())[0], 3);
        assert_eq!(c.get(3).unwrap()[0], 3);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn dirty_tables_stay_until_written_and_stale_loads_are_refused() {
        let c = L2Cache::new(2);
        let t = |v: u64| -> L2Table { Arc::from(vec![v]) };
        c.store_dirty(1, t(1));
        c.store_dirty(2, t(2));
        let e = c.epoch();
        c.insert_loaded(3, t(3), e);
        // Over capacity with only dirty tables: nothing evicted yet, and
        // the clean newcomer went first.
        assert!(c.get(1).is_some() && c.get(2).is_some());
        assert_eq!(c.dirty_count(), 2);
        c.patch(1, None, |v| v[0] = 11);
        assert_eq!(c.get(1).unwrap()[0], 11);
        let d = c.take_dirty();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].1[0], 11);
        assert_eq!(c.dirty_count(), 0);
        // A load that started before an eviction is not inserted.
        let stale = c.epoch();
        c.insert_loaded(4, t(4), c.epoch());
        c.insert_loaded(5, t(5), c.epoch());
        assert_eq!(c.insert_loaded(6, t(6), stale)[0], 6);
        assert!(c.get(6).is_none());
        // A patch on a table a reader holds copies it.
        let held = c.get(5).unwrap();
        c.patch(5, None, |v| v[0] = 55);
        assert_eq!(held[0], 5);
        assert_eq!(c.get(5).unwrap()[0], 55);
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
