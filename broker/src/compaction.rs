//! Log compaction for `cleanup.policy=compact` topics (Kafka's log cleaner): the deciding
//! half. `spate_storage::log::compact` persists — it walks closed segments, writes the new
//! ones and swaps them in crash-safely — and asks this module, through its `Cleaner` trait,
//! what each batch becomes.
//!
//! Run from the shard's retention pass ([`crate::retention`], a low-share task queue), one
//! partition at a time; every batch yields to the executor if needed, so produce and fetch
//! latency do not move. Per partition, as Kafka 4.x:
//!
//! * **When** ([`decide`]): the cleanable part is the closed segments (never the active one)
//!   up to the first one whose newest record is younger than `min.compaction.lag.ms`; its
//!   *dirty* part starts at the cleaner checkpoint (where the last pass's key map ended). A
//!   pass runs when dirty bytes / (clean + dirty bytes) exceeds `min.cleanable.dirty.ratio`,
//!   or the first dirty segment's first batch is older than `max.compaction.lag.ms`, or —
//!   beyond Kafka, which waits for new dirty data — a tombstone kept by the last pass has
//!   passed its delete horizon (remembered in memory only).
//! * **The key map**: a 128-bit hash of every key of the dirty batches → its latest offset
//!   (Kafka: MD5 into a `SkimpyOffsetMap`), bounded by [`crate::limits::COMPACTION_MAP_BYTES`]:
//!   when full, the pass stops mapping there and compacts only that prefix (the next pass goes
//!   on from the new checkpoint).
//! * **What stays** ([`KeyCleaner`]), for every batch of the segments from the log start to
//!   the end of the mapped part (consecutive segments merged up to `segment.bytes`):
//!   a record at or past the map's end; else a record whose offset is at least its key's
//!   latest mapped offset — a tombstone (null value) only until its batch's delete horizon.
//!   Records without a key go (Kafka counts them invalid; produce refuses them on compacted
//!   topics). Control batches stay whole.
//! * **Tombstones** follow KIP-534: the first pass that keeps a tombstone stamps its batch
//!   with a delete horizon = that pass's time + `delete.retention.ms` (attribute bit 6, the
//!   base timestamp field; record timestamp deltas are rewritten relative to it, so every
//!   record keeps its timestamp); a pass after the horizon removes it. So the clock starts
//!   when a tombstone is first cleaned, not at its own timestamp.
//! * **Rebuilt batches** keep the base offset, last offset delta (so an idempotent producer's
//!   last sequence survives), leader epoch, producer id/epoch/base sequence, timestamp type
//!   and codec (recompressed with it), with a fresh CRC-32C; the max timestamp is recomputed
//!   from the records kept (CreateTime). A batch losing every record goes — except the last
//!   batch of an idempotent producer, kept empty (Kafka's `RETAIN_EMPTY`), and the last batch
//!   of a segment (storage keeps it empty so segments follow on; a 61-byte header).
//! * Offsets never change: a consumer sees gaps between the records; in the log, the offsets
//!   of removed batches are covered by empty filler batches (clients skip them), so a read at
//!   any offset finds the batch holding it.
//!
//! Internal topics (`__consumer_offsets`) are left to their own snapshot compaction in
//! [`crate::groups`]: running both would be safe record-wise but would race the
//! coordinator's log-start moves for no gain.

use std::collections::HashMap;
use std::hash::Hasher;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use spate_storage::log::batch::{
    empty_batch, fix_crc, BatchHeader, ATTR_CODEC_MASK, ATTR_CONTROL, ATTR_DELETE_HORIZON,
    ATTR_LOG_APPEND_TIME, BATCH_HEADER_LEN,
};
use spate_storage::log::compact::{
    CleanableSegment, Cleaner, CompactionFinish, CompactionStats, Filtered,
};
use tracing::{error, info, Instrument};

use crate::kafka::records::{compress, decompress, varint};
use crate::partition::{Partition, PartitionKey};
use crate::shard::Shard;

/// A topic's compaction settings (Kafka's names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompactRules {
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_ratio: f64,
    /// `min.compaction.lag.ms`.
    pub min_lag_ms: i64,
    /// `max.compaction.lag.ms` (`i64::MAX`: none).
    pub max_lag_ms: i64,
    /// `delete.retention.ms`.
    pub delete_retention_ms: i64,
}

impl Default for CompactRules {
    fn default() -> Self {
        Self {
            min_cleanable_ratio: 0.5,
            min_lag_ms: 0,
            max_lag_ms: i64::MAX,
            delete_retention_ms: 86_400_000,
        }
    }
}

impl CompactRules {
    /// From the topic's effective configs (`get(name)`); unparsable values keep the default.
    pub fn from_configs(get: impl Fn(&str) -> Option<String>) -> Self {
        let d = Self::default();
        let num = |name: &str, or: i64| {
            get(name)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .unwrap_or(or)
        };
        Self {
            min_cleanable_ratio: get("min.cleanable.dirty.ratio")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(d.min_cleanable_ratio),
            min_lag_ms: num("min.compaction.lag.ms", d.min_lag_ms).max(0),
            max_lag_ms: num("max.compaction.lag.ms", d.max_lag_ms).max(1),
            delete_retention_ms: num("delete.retention.ms", d.delete_retention_ms).max(0),
        }
    }
}

/// What the shard's cleaner remembers between passes (memory only).
#[derive(Default)]
pub struct CleanerMemo {
    /// Per partition: the earliest delete horizon of a tombstone the last pass kept.
    horizons: HashMap<PartitionKey, i64>,
    /// Partitions whose last compaction failed (a damaged batch, an I/O error): not retried
    /// until the broker restarts, as Kafka marks a partition uncleanable — a retry would read
    /// the same log again every pass and fail at the same place.
    uncleanable: std::collections::HashSet<PartitionKey>,
}

impl CleanerMemo {
    pub fn is_empty(&self) -> bool {
        self.horizons.is_empty() && self.uncleanable.is_empty()
    }

    /// Forgets partitions no longer on the shard.
    pub fn retain(&mut self, live: impl Fn(&PartitionKey) -> bool) {
        self.horizons.retain(|k, _| live(k));
        self.uncleanable.retain(|k| live(k));
    }
}

/// Why and what a pass compacts ([`decide`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Where the key map starts (the cleaner checkpoint).
    pub dirty_from: u64,
    /// The end of the cleanable part (a segment boundary).
    pub end: u64,
    pub dirty_ratio: f64,
    pub reason: &'static str,
}

/// Kafka's `LogCleanerManager` rules for one partition: whether to compact now, and what.
/// `segs` are the cleanable closed segments, oldest first; `clean_offset` the cleaner
/// checkpoint; `horizon_due`: a tombstone kept earlier has passed its delete horizon.
pub fn decide(
    segs: &[CleanableSegment],
    clean_offset: u64,
    rules: &CompactRules,
    now_ms: i64,
    horizon_due: bool,
) -> Option<Decision> {
    let first = segs.first()?;
    // The first uncleanable offset: the active segment, or the first segment with a record
    // younger than min.compaction.lag.ms.
    let mut end = segs.last()?.next_offset;
    if rules.min_lag_ms > 0 {
        let young = now_ms.saturating_sub(rules.min_lag_ms);
        // Only the dirty segments count (Kafka searches from the first dirty offset): a clean
        // segment with a future timestamp (a producer's clock ahead) must not block the rest.
        if let Some(s) = segs
            .iter()
            .filter(|s| s.next_offset > clean_offset)
            .find(|s| s.max_timestamp > young)
        {
            end = s.base_offset;
        }
    }
    let dirty = |s: &&CleanableSegment| s.next_offset > clean_offset && s.base_offset < end;
    let dirty_bytes: u64 = segs.iter().filter(dirty).map(|s| s.size).sum();
    let clean_bytes: u64 = segs
        .iter()
        .filter(|s| s.base_offset < clean_offset)
        .map(|s| s.size)
        .sum();
    let total = dirty_bytes + clean_bytes;
    let dirty_ratio = if total == 0 {
        0.0
    } else {
        dirty_bytes as f64 / total as f64
    };
    let overdue = rules.max_lag_ms < i64::MAX
        && segs.iter().find(dirty).is_some_and(|s| {
            s.first_timestamp > 0 && now_ms - s.first_timestamp > rules.max_lag_ms
        });
    let reason = if dirty_bytes > 0 && dirty_ratio > rules.min_cleanable_ratio {
        "min.cleanable.dirty.ratio"
    } else if dirty_bytes > 0 && overdue {
        "max.compaction.lag.ms"
    } else if horizon_due && end > first.base_offset {
        "tombstones past delete.retention.ms"
    } else {
        return None;
    };
    Some(Decision {
        dirty_from: clean_offset,
        end,
        dirty_ratio,
        reason,
    })
}

/// A 128-bit hash of a key (two SipHash-1-3 runs): a collision would drop a live record, so
/// the map stores 16 bytes per key as Kafka's MD5-keyed map does.
fn key_hash(key: &[u8]) -> u128 {
    let mut a = std::hash::DefaultHasher::new();
    a.write_u8(0x5a);
    a.write(key);
    let mut b = std::hash::DefaultHasher::new();
    b.write_u8(0xa5);
    b.write(key);
    b.write_usize(key.len());
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// One record of a decompressed records section, located.
#[derive(Debug, Clone)]
struct RawRecord {
    /// The whole record, its length prefix included.
    start: usize,
    end: usize,
    /// Its attributes byte (the body's first byte).
    body: usize,
    timestamp_delta: i64,
    /// Where the field after the timestamp delta starts.
    after_timestamp: usize,
    offset_delta: i64,
    key: Option<(usize, usize)>,
    tombstone: bool,
}

/// Locates the records of a decompressed records section (at most `count`).
fn parse_records(plain: &[u8], count: i32) -> Result<Vec<RawRecord>, String> {
    let mut out = Vec::with_capacity(count.max(0) as usize);
    let mut at = 0usize;
    while at < plain.len() && out.len() < count.max(0) as usize {
        let start = at;
        let i = out.len();
        let len = varint(plain, &mut at, 5).ok_or(format!("record {i}: truncated length"))?;
        let end = at
            .checked_add(usize::try_from(len).map_err(|_| format!("record {i}: length {len}"))?)
            .filter(|e| *e <= plain.len())
            .ok_or(format!("record {i}: length {len} does not fit"))?;
        let body = at;
        let mut p = body + 1;
        let bad = || format!("record {i}: truncated fields");
        let timestamp_delta = varint(plain, &mut p, 10).ok_or_else(bad)?;
        let after_timestamp = p;
        let offset_delta = varint(plain, &mut p, 5).ok_or_else(bad)?;
        let klen = varint(plain, &mut p, 5).ok_or_else(bad)?;
        let key = if klen >= 0 {
            let k = (p, p + klen as usize);
            p += klen as usize;
            Some(k)
        } else {
            None
        };
        let vlen = varint(plain, &mut p, 5).ok_or_else(bad)?;
        if p > end || offset_delta < 0 {
            return Err(bad());
        }
        out.push(RawRecord {
            start,
            end,
            body,
            timestamp_delta,
            after_timestamp,
            offset_delta,
            key,
            tombstone: vlen < 0,
        });
        at = end;
    }
    if out.len() != count.max(0) as usize {
        return Err(format!("{} records, the header says {count}", out.len()));
    }
    Ok(out)
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// A batch rebuilt from some of its records (Kafka's `MemoryRecords.filterTo` +
/// `buildRetainedRecordsInto`): same base offset, last offset delta, producer fields,
/// leader epoch, timestamp type and codec; `base_timestamp` (a new delete horizon, or the
/// old base) with the records' timestamp deltas rebased on it; the max timestamp of the
/// records kept (CreateTime); a fresh CRC.
fn rebuild(
    h: &BatchHeader,
    batch: &[u8],
    plain: &[u8],
    kept: &[&RawRecord],
    base_timestamp: i64,
    horizon: bool,
) -> Result<Bytes, String> {
    let mut records = Vec::with_capacity(plain.len());
    let mut max_ts = i64::MIN;
    let mut body = Vec::new();
    for r in kept {
        let ts = h.base_timestamp.wrapping_add(r.timestamp_delta);
        max_ts = max_ts.max(ts);
        if base_timestamp == h.base_timestamp {
            records.extend_from_slice(&plain[r.start..r.end]);
        } else {
            body.clear();
            body.push(plain[r.body]);
            put_varlong(&mut body, ts.wrapping_sub(base_timestamp));
            body.extend_from_slice(&plain[r.after_timestamp..r.end]);
            put_varlong(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
    }
    let codec = (h.attributes & ATTR_CODEC_MASK) as usize;
    let packed = compress(codec, &records).map_err(|e| format!("recompressing: {e}"))?;
    let mut b = BytesMut::with_capacity(BATCH_HEADER_LEN + packed.len());
    b.extend_from_slice(&batch[..BATCH_HEADER_LEN]);
    b.extend_from_slice(&packed);
    let batch_length = i32::try_from(b.len() - 12).map_err(|_| "batch too large".to_string())?;
    b[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attrs = if horizon {
        h.attributes | ATTR_DELETE_HORIZON
    } else {
        h.attributes
    };
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    b[27..35].copy_from_slice(&base_timestamp.to_be_bytes());
    if h.attributes & ATTR_LOG_APPEND_TIME == 0 && !kept.is_empty() {
        b[35..43].copy_from_slice(&max_ts.to_be_bytes());
    }
    b[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    fix_crc(&mut b);
    Ok(b.freeze())
}

/// The record-level rules of one compaction pass (see the module documentation).
pub struct KeyCleaner<'a> {
    now_ms: i64,
    delete_retention_ms: i64,
    map: HashMap<u128, u64>,
    max_keys: usize,
    /// The first offset the map does not cover.
    map_end: u64,
    /// Every idempotent producer's last batch (its last offset).
    producer_last: HashMap<i64, i64>,
    stop: &'a dyn Fn() -> bool,
    /// Records dropped, tombstones among them; records kept.
    pub removed_records: u64,
    pub removed_tombstones: u64,
    pub kept_records: u64,
    /// The earliest delete horizon of a tombstone kept (a later pass can remove it).
    pub next_horizon: Option<i64>,
    /// I/O budget (bytes per second, 0: none), bytes walked so far and since when.
    io_limit: u64,
    io_bytes: u64,
    io_since: Instant,
}

impl<'a> KeyCleaner<'a> {
    pub fn new(
        now_ms: i64,
        delete_retention_ms: i64,
        max_keys: usize,
        producer_last: HashMap<i64, i64>,
        stop: &'a dyn Fn() -> bool,
    ) -> Self {
        Self {
            now_ms,
            delete_retention_ms,
            map: HashMap::new(),
            max_keys: max_keys.max(1),
            map_end: 0,
            producer_last,
            stop,
            removed_records: 0,
            removed_tombstones: 0,
            kept_records: 0,
            next_horizon: None,
            io_limit: 0,
            io_bytes: 0,
            io_since: Instant::now(),
        }
    }

    /// Paces the passes at `bytes_per_second` of batches walked — read in the key-map pass
    /// and read again in the rewrite pass; the rewrite's writes (at most what was read) are
    /// not counted (Kafka's `log.cleaner.io.max.bytes.per.second` counts both; 0: no limit).
    pub fn with_io_limit(mut self, bytes_per_second: u64) -> Self {
        self.io_limit = bytes_per_second;
        self
    }

    /// How long to sleep to stay within the I/O budget.
    fn io_debt(&self) -> Option<Duration> {
        if self.io_limit == 0 {
            return None;
        }
        let due = Duration::from_secs_f64(self.io_bytes as f64 / self.io_limit as f64);
        due.checked_sub(self.io_since.elapsed())
            .filter(|d| *d >= Duration::from_millis(1))
    }

    /// Keys in the map.
    pub fn mapped_keys(&self) -> usize {
        self.map.len()
    }

    fn records(h: &BatchHeader, batch: &Bytes) -> Result<(Bytes, Vec<RawRecord>), String> {
        let codec = (h.attributes & ATTR_CODEC_MASK) as usize;
        let plain = decompress(codec, batch.slice(BATCH_HEADER_LEN..))
            .map_err(|e| format!("batch at offset {}: {e}", h.base_offset))?;
        let recs = parse_records(&plain, h.record_count)
            .map_err(|e| format!("batch at offset {}: {e}", h.base_offset))?;
        Ok((plain, recs))
    }

    fn note_horizon(&mut self, horizon: i64) {
        self.next_horizon = Some(self.next_horizon.map_or(horizon, |h| h.min(horizon)));
    }
}

impl Cleaner for KeyCleaner<'_> {
    fn map_batch(&mut self, h: &BatchHeader, batch: &Bytes) -> Result<bool, String> {
        if (self.stop)() {
            return Err("shutting down".into());
        }
        self.io_bytes += batch.len() as u64;
        if h.attributes & ATTR_CONTROL != 0 || h.record_count == 0 {
            return Ok(true);
        }
        if !self.map.is_empty() && self.map.len() + h.record_count as usize > self.max_keys {
            return Ok(false);
        }
        let (plain, recs) = Self::records(h, batch)?;
        let base = h.base_offset as u64;
        for r in &recs {
            if let Some((a, b)) = r.key {
                self.map
                    .insert(key_hash(&plain[a..b]), base + r.offset_delta as u64);
            }
        }
        Ok(true)
    }

    fn map_done(&mut self, end: u64) {
        self.map_end = end;
    }

    fn filter(&mut self, h: &BatchHeader, batch: Bytes) -> Result<Filtered, String> {
        if (self.stop)() {
            return Err("shutting down".into());
        }
        self.io_bytes += batch.len() as u64;
        if h.attributes & ATTR_CONTROL != 0 {
            return Ok(Filtered::Keep);
        }
        let last_of_producer =
            h.producer_id >= 0 && self.producer_last.get(&h.producer_id) == Some(&h.last_offset());
        if h.record_count == 0 {
            // An empty batch kept earlier: only while it is still its producer's last.
            return Ok(if last_of_producer {
                Filtered::Keep
            } else {
                Filtered::Drop
            });
        }
        let (plain, recs) = Self::records(h, &batch)?;
        let base = h.base_offset as u64;
        let horizon = (h.attributes & ATTR_DELETE_HORIZON != 0).then_some(h.base_timestamp);
        let retain_deletes = horizon.is_none_or(|t| self.now_ms < t);
        let mut kept = Vec::with_capacity(recs.len());
        let mut tombstones_kept = false;
        for r in &recs {
            let offset = base + r.offset_delta as u64;
            let keep = if offset >= self.map_end {
                true
            } else if let Some((a, b)) = r.key {
                let latest = self
                    .map
                    .get(&key_hash(&plain[a..b]))
                    .is_none_or(|o| offset >= *o);
                latest && (!r.tombstone || retain_deletes)
            } else {
                false
            };
            if keep {
                tombstones_kept |= r.tombstone;
                kept.push(r);
            } else {
                self.removed_records += 1;
                self.removed_tombstones += u64::from(r.tombstone);
            }
        }
        self.kept_records += kept.len() as u64;
        let stamp = tombstones_kept && horizon.is_none();
        if tombstones_kept {
            self.note_horizon(
                horizon.unwrap_or(self.now_ms.saturating_add(self.delete_retention_ms)),
            );
        }
        if kept.len() == recs.len() && !stamp {
            return Ok(Filtered::Keep);
        }
        if kept.is_empty() {
            return Ok(if last_of_producer {
                Filtered::Replace(empty_batch(h))
            } else {
                Filtered::Drop
            });
        }
        let base_ts = if stamp {
            self.now_ms.saturating_add(self.delete_retention_ms)
        } else {
            h.base_timestamp
        };
        rebuild(
            h,
            &batch,
            &plain,
            &kept,
            base_ts,
            stamp || horizon.is_some(),
        )
        .map(Filtered::Replace)
    }

    async fn pause(&mut self) {
        if let Some(d) = self.io_debt() {
            glommio::timer::sleep(d).await;
        }
        glommio::yield_if_needed().await;
    }
}

/// How long a finished job waits for a flush carrying a segment checkpoint before it is given
/// up (it is retried by the next pass).
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// One compaction pass over a partition if its rules call for one (see the module
/// documentation). Errors are logged and counted; the log is left as it was.
pub async fn maybe_compact(
    shard: &Shard,
    p: &Rc<Partition>,
    rules: &CompactRules,
    now_ms: i64,
    memo: &mut CleanerMemo,
) {
    if p.topic == crate::groups::OFFSETS_TOPIC || memo.uncleanable.contains(&p.key) {
        return;
    }
    let horizon_due = memo.horizons.get(&p.key).is_some_and(|h| now_ms >= *h);
    // Only segments the Raft log no longer holds are rewritten.
    let floor = p.settle_raft_log().await;
    let decision = p.with_log(|log| {
        if log.compaction_in_flight() {
            return None;
        }
        let segments: Vec<_> = log
            .cleanable_segments()
            .into_iter()
            .take_while(|s| s.next_offset <= floor)
            .collect();
        decide(&segments, log.clean_offset(), rules, now_ms, horizon_due)
    });
    let Ok(decision) = decision else {
        return;
    };
    let Some(d) = decision else {
        return;
    };
    let span = tracing::info_span!("compaction", topic = %p.topic, partition = p.key.1);
    let started = Instant::now();
    let m = &shard.metrics;
    match p.compact(shard, &d, rules, now_ms).instrument(span).await {
        Ok(Some((stats, cleaner))) => {
            let removed_bytes = stats.bytes_before.saturating_sub(stats.bytes_after);
            m.compaction_done.inc();
            m.compaction_removed_records.inc_by(cleaner.removed_records);
            m.compaction_removed_bytes.inc_by(removed_bytes);
            m.compaction_seconds
                .observe(started.elapsed().as_secs_f64());
            match cleaner.next_horizon {
                Some(h) => memo.horizons.insert(p.key, h),
                None => memo.horizons.remove(&p.key),
            };
            info!(topic = %p.topic, partition = p.key.1, reason = d.reason,
                dirty_ratio = format!("{:.3}", d.dirty_ratio),
                range = ?(stats.start_offset, stats.end_offset), clean_offset = stats.clean_offset,
                segments = ?(stats.segments_before, stats.segments_after),
                bytes = ?(stats.bytes_before, stats.bytes_after),
                removed_records = cleaner.removed_records,
                removed_tombstones = cleaner.removed_tombstones,
                kept_records = cleaner.kept_records,
                keys = cleaner.mapped_keys,
                ms = started.elapsed().as_millis() as u64,
                "compacted");
        }
        Ok(None) => {
            m.compaction_abandoned.inc();
        }
        Err(e) => {
            m.compaction_failed.inc();
            memo.uncleanable.insert(p.key);
            error!(topic = %p.topic, partition = p.key.1, error = %e,
                "compaction failed: the partition is not compacted again until the broker restarts");
        }
    }
}

/// What a finished pass reports besides the storage statistics.
pub struct CleanerReport {
    pub removed_records: u64,
    pub removed_tombstones: u64,
    pub kept_records: u64,
    pub mapped_keys: usize,
    pub next_horizon: Option<i64>,
}

impl Partition {
    /// Hands a swap's outcome back to the log, waiting while the Raft store holds the log
    /// for an exclusive operation: a swap that never finishes would leave the log refusing
    /// every suffix truncation until it is reopened.
    async fn finish_swap(
        &self,
        done: Result<
            spate_storage::log::compact::SwapDone<spate_storage::log::file::DmaSegmentFile>,
            spate_storage::log::LogError,
        >,
    ) -> Result<CompactionStats, spate_storage::log::LogError> {
        let mut done = Some(done);
        loop {
            let r = self
                .store
                .with_log_mut(|l| done.take().map(|d| l.finish_swap(d)));
            match r {
                Some(Some(r)) => return r,
                _ if done.is_none() => {
                    return Err(spate_storage::log::LogError::Failed(
                        "compaction swap result lost".into(),
                    ))
                }
                _ => glommio::timer::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// Runs one compaction of this partition's closed segments per `d`. `None`: nothing was
    /// rewritten (the job found nothing, or was abandoned because the log changed).
    pub(crate) async fn compact(
        self: &Rc<Self>,
        shard: &Shard,
        d: &Decision,
        rules: &CompactRules,
        now_ms: i64,
    ) -> Result<Option<(CompactionStats, CleanerReport)>, String> {
        let producer_last: HashMap<i64, i64> = self.producers.borrow().last_offsets().collect();
        let stop = || shard.shutdown.is_fired();
        let max_keys =
            crate::limits::COMPACTION_MAP_BYTES / crate::limits::COMPACTION_MAP_BYTES_PER_KEY;
        let mut cleaner = KeyCleaner::new(
            now_ms,
            rules.delete_retention_ms,
            max_keys,
            producer_last,
            &stop,
        )
        .with_io_limit(shard.config.log_cleaner_io_max_bytes_per_second);
        let job = self
            .with_log_mut(|l| {
                let group_bytes = l.config().segment_bytes;
                l.plan_compaction(d.dirty_from, d.end, group_bytes)
            })
            .and_then(|r| r)
            .map_err(|e| e.to_string())?;
        let Some(job) = job else {
            return Ok(None);
        };
        let mut written = job.run(&mut cleaner).await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + FINISH_WAIT;
        let swap = loop {
            // Bound first: the log must not stay borrowed across an await.
            let finished = match self.store.with_log_mut(|l| l.finish_compaction(written)) {
                Some(f) => f,
                None => return Err("the partition log is busy".into()),
            };
            match finished {
                CompactionFinish::Nothing(_) => return Ok(None),
                CompactionFinish::Swap(swap) => break swap,
                CompactionFinish::Busy(w) if Instant::now() < deadline && !stop() => {
                    written = w;
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                CompactionFinish::Busy(w) => {
                    let done = w.abandon().run().await;
                    let _ = self.finish_swap(done).await;
                    return Err("gave up: the log kept a segment checkpoint write in flight".into());
                }
            }
        };
        let abandoned = swap.is_abandoned();
        let done = swap.run().await;
        let stats = self
            .finish_swap(done)
            .await
            .map_err(|e| format!("swapping the compacted segments (the log is failed): {e}"))?;
        if abandoned {
            return Ok(None);
        }
        Ok(Some((
            stats,
            CleanerReport {
                removed_records: cleaner.removed_records,
                removed_tombstones: cleaner.removed_tombstones,
                kept_records: cleaner.kept_records,
                mapped_keys: cleaner.mapped_keys(),
                next_horizon: cleaner.next_horizon,
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    use spate_storage::log::batch::check_first;

    const TS: i64 = 1_700_000_000_000;

    fn batch(
        recs: &[(Option<&str>, Option<&str>)],
        compression: Compression,
        producer_id: i64,
        base_offset: i64,
    ) -> Bytes {
        let recs: Vec<Record> = recs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id,
                producer_epoch: if producer_id >= 0 { 1 } else { -1 },
                timestamp_type: TimestampType::Creation,
                offset: base_offset + i as i64,
                sequence: if producer_id >= 0 {
                    10 + i as i32
                } else {
                    i as i32 - 1
                },
                timestamp: TS + 10 * i as i64,
                key: k.map(|k| Bytes::from(k.as_bytes().to_vec())),
                value: v.map(|v| Bytes::from(v.as_bytes().to_vec())),
                headers: Default::default(),
            })
            .collect();
        let mut out = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut out, &recs, &opts).expect("encode");
        out.freeze()
    }

    fn decoded(b: &Bytes) -> Vec<(i64, Option<Bytes>, Option<Bytes>, i64)> {
        let mut b = b.clone();
        let set = RecordBatchDecoder::decode(&mut b).expect("decodes");
        set.records
            .into_iter()
            .map(|r| (r.offset, r.key, r.value, r.timestamp))
            .collect()
    }

    fn never() -> bool {
        false
    }

    fn cleaner<'a>(stop: &'a dyn Fn() -> bool) -> KeyCleaner<'a> {
        KeyCleaner::new(TS + 1000, 5000, 1000, HashMap::new(), stop)
    }

    fn header(b: &Bytes) -> BatchHeader {
        check_first(b, 1 << 20).expect("valid batch")
    }

    #[test]
    fn latest_value_per_key_survives_in_a_rebuilt_batch_of_the_same_codec() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let a = batch(
                &[
                    (Some("k1"), Some("a")),
                    (Some("k2"), Some("b")),
                    (Some("k1"), Some("c")),
                ],
                compression,
                -1,
                100,
            );
            let stop = never;
            let mut c = cleaner(&stop);
            assert!(c.map_batch(&header(&a), &a).unwrap());
            c.map_done(103);
            let Filtered::Replace(out) = c.filter(&header(&a), a.clone()).unwrap() else {
                panic!("{compression:?}: expected a rebuilt batch");
            };
            let (h, oh) = (header(&out), header(&a));
            assert_eq!(h.base_offset, 100);
            assert_eq!(h.last_offset_delta, 2, "the last offset is kept");
            assert_eq!(h.record_count, 2);
            assert_eq!(h.attributes, oh.attributes, "same codec and flags");
            assert_eq!(
                (h.partition_leader_epoch, h.producer_id, h.base_sequence),
                (oh.partition_leader_epoch, oh.producer_id, oh.base_sequence)
            );
            let recs = decoded(&out);
            let offsets: Vec<i64> = recs.iter().map(|r| r.0).collect();
            assert_eq!(offsets, [101, 102], "{compression:?}");
            assert_eq!(recs[1].2.as_deref(), Some(&b"c"[..]));
            assert_eq!(recs[1].3, TS + 20, "timestamps kept");
            assert_eq!(c.removed_records, 1);
        }
    }

    #[test]
    fn tombstones_get_a_delete_horizon_then_go() {
        let a = batch(
            &[(Some("k1"), Some("a")), (Some("gone"), None)],
            Compression::Lz4,
            -1,
            0,
        );
        let stop = never;
        let mut c = cleaner(&stop);
        c.map_batch(&header(&a), &a).unwrap();
        c.map_done(2);
        // First pass: kept, stamped with now + delete.retention.ms.
        let Filtered::Replace(stamped) = c.filter(&header(&a), a.clone()).unwrap() else {
            panic!("expected the horizon stamped");
        };
        let h = header(&stamped);
        assert_ne!(h.attributes & ATTR_DELETE_HORIZON, 0);
        assert_eq!(h.base_timestamp, TS + 1000 + 5000);
        assert_eq!(c.next_horizon, Some(TS + 6000));
        let recs = decoded(&stamped);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[0].3, recs[1].3),
            (TS, TS + 10),
            "record timestamps unchanged"
        );
        assert_eq!(h.max_timestamp, TS + 10);
        // Before the horizon: left as it is.
        let mut c = cleaner(&stop);
        c.map_batch(&h, &stamped).unwrap();
        c.map_done(2);
        assert_eq!(c.filter(&h, stamped.clone()).unwrap(), Filtered::Keep);
        // After it: the tombstone goes, the horizon stays on the batch.
        let mut c = KeyCleaner::new(TS + 7000, 5000, 1000, HashMap::new(), &stop);
        c.map_batch(&h, &stamped).unwrap();
        c.map_done(2);
        let Filtered::Replace(out) = c.filter(&h, stamped).unwrap() else {
            panic!("expected the tombstone removed");
        };
        let recs = decoded(&out);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].1.as_deref(), Some(&b"k1"[..]));
        assert_eq!(recs[0].3, TS);
        assert_eq!(c.removed_tombstones, 1);
        assert_eq!(c.next_horizon, None);
    }

    #[test]
    fn superseded_batches_go_but_an_idempotent_producers_last_stays_empty() {
        let old = batch(&[(Some("k"), Some("1"))], Compression::None, 7, 10);
        let other = batch(&[(Some("j"), Some("1"))], Compression::None, -1, 11);
        let new = batch(
            &[(Some("k"), Some("2")), (Some("j"), Some("2"))],
            Compression::None,
            -1,
            12,
        );
        let stop = never;
        let mut c = KeyCleaner::new(TS, 0, 1000, HashMap::from([(7, 10)]), &stop);
        for b in [&old, &other, &new] {
            c.map_batch(&header(b), b).unwrap();
        }
        c.map_done(14);
        let Filtered::Replace(e) = c.filter(&header(&old), old.clone()).unwrap() else {
            panic!("producer 7's last batch stays");
        };
        let h = header(&e);
        assert_eq!(
            (h.record_count, h.base_offset, h.last_offset()),
            (0, 10, 10)
        );
        assert_eq!((h.producer_id, h.base_sequence), (7, 10));
        assert_eq!(
            c.filter(&header(&other), other.clone()).unwrap(),
            Filtered::Drop
        );
        // Kept empty while it is the producer's last; dropped once the producer moved on.
        assert_eq!(c.filter(&h, e.clone()).unwrap(), Filtered::Keep);
        c.producer_last.insert(7, 40);
        assert_eq!(c.filter(&h, e).unwrap(), Filtered::Drop);
        c.producer_last.insert(7, 10);
        assert_eq!(
            c.filter(&header(&new), new.clone()).unwrap(),
            Filtered::Keep
        );
        // Past the map's end everything stays.
        let mut c = KeyCleaner::new(TS, 0, 1000, HashMap::new(), &stop);
        c.map_batch(&header(&new), &new).unwrap();
        c.map_done(11);
        assert_eq!(c.filter(&header(&other), other).unwrap(), Filtered::Keep);
    }

    #[test]
    fn the_io_budget_paces_the_passes() {
        let stop = never;
        let b = batch(&[(Some("k"), Some("v"))], Compression::None, -1, 0);
        let mut c = KeyCleaner::new(TS, 0, 1000, HashMap::new(), &stop);
        for _ in 0..1000 {
            c.map_batch(&header(&b), &b).unwrap();
        }
        assert_eq!(c.io_debt(), None, "no limit, no pacing");
        let mut c =
            KeyCleaner::new(TS, 0, 1000, HashMap::new(), &stop).with_io_limit(b.len() as u64 * 10);
        for _ in 0..10 {
            c.map_batch(&header(&b), &b).unwrap();
        }
        // Ten batches at ten batches a second: about a second to wait.
        let debt = c.io_debt().expect("over budget");
        assert!(
            debt > Duration::from_millis(900) && debt <= Duration::from_secs(1),
            "{debt:?}"
        );
        c.map_done(100);
        c.filter(&header(&b), b.clone()).unwrap();
        assert!(c.io_debt().unwrap() > debt, "filtered bytes count too");
    }

    #[test]
    fn a_full_map_stops_the_pass_and_keyless_records_go() {
        let a = batch(
            &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
            Compression::None,
            -1,
            0,
        );
        let b = batch(&[(Some("c"), Some("1"))], Compression::None, -1, 2);
        let stop = never;
        let mut c = KeyCleaner::new(TS, 0, 2, HashMap::new(), &stop);
        assert!(c.map_batch(&header(&a), &a).unwrap());
        assert!(!c.map_batch(&header(&b), &b).unwrap(), "over the budget");
        let n = batch(
            &[(None, Some("x")), (Some("a"), Some("2"))],
            Compression::None,
            -1,
            0,
        );
        c.map_done(2);
        let Filtered::Replace(out) = c.filter(&header(&n), n).unwrap() else {
            panic!("the keyless record goes");
        };
        assert_eq!(decoded(&out).len(), 1);
        let stopping = || true;
        let mut c = KeyCleaner::new(TS, 0, 2, HashMap::new(), &stopping);
        assert!(c.map_batch(&header(&a), &a).is_err());
    }

    fn seg(base: u64, next: u64, size: u64, max_ts: i64) -> CleanableSegment {
        CleanableSegment {
            base_offset: base,
            next_offset: next,
            size,
            max_timestamp: max_ts,
            first_timestamp: max_ts - 10,
        }
    }

    #[test]
    fn decisions_follow_kafkas_rules() {
        let segs = [
            seg(0, 10, 100, TS),
            seg(10, 20, 100, TS + 100),
            seg(20, 30, 100, TS + 200),
        ];
        let rules = CompactRules::default();
        // Nothing cleaned yet: all dirty.
        let d = decide(&segs, 0, &rules, TS + 1000, false).unwrap();
        assert_eq!((d.dirty_from, d.end, d.dirty_ratio), (0, 30, 1.0));
        // Two thirds clean: 0.33 < 0.5.
        assert!(decide(&segs, 20, &rules, TS + 1000, false).is_none());
        let eager = CompactRules {
            min_cleanable_ratio: 0.1,
            ..rules
        };
        assert!(decide(&segs, 20, &eager, TS + 1000, false).is_some());
        // min.compaction.lag.ms: segments with young records are not cleanable.
        let lag = CompactRules {
            min_lag_ms: 950,
            ..rules
        };
        let d = decide(&segs, 0, &lag, TS + 1000, false).unwrap();
        assert_eq!(d.end, 10);
        // ...counting dirty segments only: a clean one from a clock ahead blocks nothing.
        let skewed = [
            seg(0, 10, 100, TS + 10_000),
            seg(10, 20, 100, TS + 100),
            seg(20, 30, 100, TS + 200),
        ];
        let eager_lag = CompactRules {
            min_cleanable_ratio: 0.1,
            min_lag_ms: 850,
            ..rules
        };
        let d = decide(&skewed, 10, &eager_lag, TS + 1000, false).unwrap();
        assert_eq!(d.end, 20);
        // max.compaction.lag.ms: overdue dirty data goes whatever the ratio.
        let max = CompactRules {
            max_lag_ms: 500,
            ..rules
        };
        assert_eq!(
            decide(&segs, 20, &max, TS + 1000, false).unwrap().reason,
            "max.compaction.lag.ms"
        );
        // Nothing dirty, but a tombstone's horizon passed.
        let d = decide(&segs, 30, &rules, TS + 1000, true).unwrap();
        assert_eq!((d.dirty_from, d.end), (30, 30));
        assert!(decide(&segs, 30, &rules, TS + 1000, false).is_none());
        assert!(decide(&[], 0, &rules, TS, true).is_none());
        let r = CompactRules::from_configs(|n| {
            Some(
                match n {
                    "min.cleanable.dirty.ratio" => "0.01",
                    "delete.retention.ms" => "100",
                    _ => "nonsense",
                }
                .to_string(),
            )
        });
        assert_eq!(r.min_cleanable_ratio, 0.01);
        assert_eq!(r.delete_retention_ms, 100);
        assert_eq!(r.max_lag_ms, i64::MAX);
    }
}
