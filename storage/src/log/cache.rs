//! The shard's batch cache: recently appended and recently read batches of every partition log
//! on the shard, under one memory budget, evicted least-recently-used by bytes.
//!
//! One [`BatchCache`] per shard (cheap to clone: a shared handle; never crosses threads),
//! attached to each log with [`super::PartitionLog::attach_cache`]. `append` inserts the
//! batch (its stamped header copy and the request's `Bytes`, so no copy of the records);
//! `plan_read` serves a read from the cache when the first batch is there (no I/O, one copy to
//! join the batches), and a read from the file inserts what it read. Truncation and retention
//! drop what they remove. [`BatchCache::stats`] gives hit/miss counters for metrics.
//!
//! Only batches already written to the file are served (the log's read rule is unchanged).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};

use super::batch::{BatchHeader, BATCH_HEADER_LEN};

/// Counters for metrics (monotonic, except `resident_bytes` / `batches`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that went to the file.
    pub misses: u64,
    pub hit_bytes: u64,
    pub inserted_bytes: u64,
    pub evicted_bytes: u64,
    /// Bytes held now (counted as batch sizes) and the number of batches.
    pub resident_bytes: u64,
    pub batches: u64,
}

struct Cached {
    /// The stamped header, then the rest of the batch.
    header: [u8; BATCH_HEADER_LEN],
    body: Bytes,
    last_offset: u64,
    tick: u64,
}

impl Cached {
    fn len(&self) -> usize {
        BATCH_HEADER_LEN + self.body.len()
    }
}

struct Inner {
    budget_bytes: u64,
    next_log_id: u64,
    tick: u64,
    logs: HashMap<u64, BTreeMap<u64, Cached>>,
    /// tick → (log, base offset): least recently used first.
    lru: BTreeMap<u64, (u64, u64)>,
    stats: CacheStats,
}

/// A shard-local batch cache with a byte budget. See the module documentation.
#[derive(Clone)]
pub struct BatchCache {
    inner: Rc<RefCell<Inner>>,
}

impl BatchCache {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            inner: Rc::new(RefCell::new(Inner {
                budget_bytes,
                next_log_id: 1,
                tick: 0,
                logs: HashMap::new(),
                lru: BTreeMap::new(),
                stats: CacheStats::default(),
            })),
        }
    }

    pub fn stats(&self) -> CacheStats {
        self.inner.borrow().stats
    }

    pub fn budget_bytes(&self) -> u64 {
        self.inner.borrow().budget_bytes
    }

    pub(crate) fn register(&self) -> u64 {
        let mut i = self.inner.borrow_mut();
        let id = i.next_log_id;
        i.next_log_id += 1;
        id
    }

    /// Inserts one stamped batch (`header` + `body` = the batch as stored).
    pub(crate) fn insert(
        &self,
        log: u64,
        base_offset: u64,
        last_offset: u64,
        header: [u8; BATCH_HEADER_LEN],
        body: Bytes,
    ) {
        let mut i = self.inner.borrow_mut();
        let len = (BATCH_HEADER_LEN + body.len()) as u64;
        if len > i.budget_bytes {
            return;
        }
        i.tick += 1;
        let tick = i.tick;
        let old = i.logs.entry(log).or_default().insert(
            base_offset,
            Cached {
                header,
                body,
                last_offset,
                tick,
            },
        );
        if let Some(old) = old {
            i.lru.remove(&old.tick);
            i.stats.resident_bytes -= old.len() as u64;
            i.stats.batches -= 1;
        }
        i.lru.insert(tick, (log, base_offset));
        i.stats.inserted_bytes += len;
        i.stats.resident_bytes += len;
        i.stats.batches += 1;
        while i.stats.resident_bytes > i.budget_bytes {
            let Some((_, (l, b))) = i.lru.pop_first() else {
                break;
            };
            let gone = i.logs.get_mut(&l).and_then(|m| m.remove(&b));
            if let Some(gone) = gone {
                i.stats.resident_bytes -= gone.len() as u64;
                i.stats.evicted_bytes += gone.len() as u64;
                i.stats.batches -= 1;
            }
        }
    }

    /// Inserts every whole batch of `bytes` (a read result starting at a batch).
    pub(crate) fn insert_read(&self, log: u64, bytes: &Bytes) {
        let mut at = 0;
        while at < bytes.len() {
            let Ok(h) = BatchHeader::decode(&bytes[at..]) else {
                return;
            };
            let end = at + h.total_len();
            if end > bytes.len() || h.base_offset < 0 {
                return;
            }
            if h.is_zero_width() {
                // Never cached: it shares its base offset (the key) with the batch after it.
                at = end;
                continue;
            }
            let mut header = [0u8; BATCH_HEADER_LEN];
            header.copy_from_slice(&bytes[at..at + BATCH_HEADER_LEN]);
            self.insert(
                log,
                h.base_offset as u64,
                h.last_offset() as u64,
                header,
                bytes.slice(at + BATCH_HEADER_LEN..end),
            );
            at = end;
        }
    }

    /// Whole cached batches from the one containing `offset`, consecutive, all ending
    /// before `limit` (exclusive offset bound), up to `max_bytes` but at least one. `None`
    /// unless the batch containing `offset` is cached.
    pub(crate) fn read(
        &self,
        log: u64,
        offset: u64,
        limit: u64,
        max_bytes: usize,
    ) -> Option<(Bytes, u64, u64)> {
        let mut i = self.inner.borrow_mut();
        let Inner {
            logs,
            lru,
            tick,
            stats,
            ..
        } = &mut *i;
        let map = logs.get_mut(&log)?;
        let (&first_base, first) = map.range(..=offset).next_back()?;
        if first.last_offset < offset || first.last_offset >= limit {
            return None;
        }
        let mut picked = Vec::new();
        let mut total = 0usize;
        let mut expect = first_base;
        for (&base, c) in map.range_mut(first_base..) {
            if base != expect
                || c.last_offset >= limit
                || (total > 0 && total + c.len() > max_bytes)
            {
                break;
            }
            total += c.len();
            expect = c.last_offset + 1;
            lru.remove(&c.tick);
            *tick += 1;
            c.tick = *tick;
            lru.insert(c.tick, (log, base));
            picked.push(base);
        }
        let mut out = BytesMut::with_capacity(total);
        for base in &picked {
            let c = &map[base];
            out.extend_from_slice(&c.header);
            out.extend_from_slice(&c.body);
        }
        stats.hits += 1;
        stats.hit_bytes += total as u64;
        Some((out.freeze(), first_base, expect))
    }

    pub(crate) fn miss(&self) {
        self.inner.borrow_mut().stats.misses += 1;
    }

    /// Drops the log's batches with offsets in `[from, to)` (whole batches overlapping it).
    pub(crate) fn remove_range(&self, log: u64, from: u64, to: u64) {
        let mut i = self.inner.borrow_mut();
        let Inner {
            logs, lru, stats, ..
        } = &mut *i;
        let Some(map) = logs.get_mut(&log) else {
            return;
        };
        let start = map
            .range(..=from)
            .next_back()
            .filter(|(_, c)| c.last_offset >= from)
            .map_or(from, |(&b, _)| b);
        let gone: Vec<u64> = map.range(start..to).map(|(&b, _)| b).collect();
        for b in gone {
            let c = map.remove(&b).expect("listed");
            lru.remove(&c.tick);
            stats.resident_bytes -= c.len() as u64;
            stats.batches -= 1;
        }
    }

    /// Forgets a log entirely (closed).
    pub(crate) fn remove_log(&self, log: u64) {
        self.remove_range(log, 0, u64::MAX);
        self.inner.borrow_mut().logs.remove(&log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: &BatchCache, log: u64, base: u64, last: u64, body: usize) {
        let mut h = [0u8; BATCH_HEADER_LEN];
        h[0..8].copy_from_slice(&(base as i64).to_be_bytes());
        c.insert(log, base, last, h, Bytes::from(vec![base as u8; body]));
    }

    #[test]
    fn lru_by_bytes_and_consecutive_reads() {
        let c = BatchCache::new(1000);
        let a = c.register();
        let b = c.register();
        for i in 0..4 {
            put(&c, a, i * 2, i * 2 + 1, 139); // 200 bytes each
        }
        put(&c, b, 0, 0, 139);
        assert_eq!(c.stats().resident_bytes, 1000);
        // Reading a's first batches makes them recent; the next insert evicts a's fourth.
        let (bytes, base, next) = c.read(a, 1, u64::MAX, 400).unwrap();
        assert_eq!((bytes.len(), base, next), (400, 0, 4));
        put(&c, b, 1, 1, 139);
        assert_eq!(c.stats().evicted_bytes, 200);
        // The least recently used batch went: a's 4..5.
        assert!(c.read(a, 4, u64::MAX, 1).is_none());
        assert!(c.read(a, 6, u64::MAX, 1).is_some());
        // Gaps and the limit (written offsets) stop a read.
        assert_eq!(c.read(a, 0, u64::MAX, usize::MAX).unwrap().2, 4);
        assert!(c.read(a, 6, 7, usize::MAX).is_none());
        c.remove_range(a, 3, u64::MAX);
        assert!(c.read(a, 2, u64::MAX, 1).is_none());
        assert!(c.read(a, 0, u64::MAX, 1).is_some());
        c.remove_log(a);
        assert!(c.read(a, 0, u64::MAX, 1).is_none());
        assert_eq!(c.stats().batches, 2);
        // Too big for the budget: not cached at all.
        put(&c, b, 5, 5, 2000);
        assert!(c.read(b, 5, u64::MAX, 1).is_none());
    }
}
