//! Compaction over the in-memory [`FaultyDir`]: the result against a model (latest record per
//! key), reads across the gaps it leaves, a crash at every step of a compaction, a restart
//! without a scan, and the races with retention and reads.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use futures_lite::future::block_on;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::super::batch::{fix_crc, RecordBatch};
use super::super::faulty::{CrashMode, FaultyDir};
use super::super::index::NO_TIMESTAMP;
use super::super::RecoveryReport;
use super::*;

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        segment_ms: None,
        max_batch_bytes: 1 << 20,
        write_chunk_bytes: 8192,
        recovery_read_bytes: 4096,
        index_interval_bytes: 256,
    }
}

fn open(dir: &FaultyDir) -> (PartitionLog<FaultyDir>, RecoveryReport) {
    block_on(PartitionLog::open(dir.clone(), cfg())).unwrap()
}

const TS: i64 = 1_700_000_000_000;

/// One record as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    offset: u64,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// A v2 batch of keyed records (kafka-protocol's encoder), uncompressed.
fn kbatch(recs: &[(&str, Option<&str>)], ts: i64) -> RecordBatch {
    let recs: Vec<Record> = recs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: ts + i as i64,
            key: Some(Bytes::from(k.as_bytes().to_vec())),
            value: v.map(|v| Bytes::from(v.as_bytes().to_vec())),
            headers: Default::default(),
        })
        .collect();
    let mut out = BytesMut::new();
    let opts = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut out, &recs, &opts).expect("encode");
    RecordBatch::validate(out.freeze(), 1 << 20).unwrap()
}

fn varint(b: &[u8], at: &mut usize) -> i64 {
    let mut raw = 0u64;
    let mut shift = 0;
    loop {
        let x = b[*at];
        *at += 1;
        raw |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return ((raw >> 1) as i64) ^ -((raw & 1) as i64);
        }
        shift += 7;
    }
}

/// The records of an uncompressed batch: `(record, its raw bytes)`.
fn raw_records(batch: &[u8]) -> Vec<(Rec, std::ops::Range<usize>)> {
    let h = BatchHeader::decode(batch).unwrap();
    let mut out = Vec::new();
    let mut at = BATCH_HEADER_LEN;
    for _ in 0..h.record_count {
        let start = at;
        let len = varint(batch, &mut at) as usize;
        let end = at + len;
        let mut p = at + 1; // attributes
        varint(batch, &mut p); // timestamp delta
        let delta = varint(batch, &mut p);
        let klen = varint(batch, &mut p);
        let key = batch[p..p + klen as usize].to_vec();
        p += klen as usize;
        let vlen = varint(batch, &mut p);
        let value = (vlen >= 0).then(|| batch[p..p + vlen as usize].to_vec());
        out.push((
            Rec {
                offset: h.base_offset as u64 + delta as u64,
                key,
                value,
            },
            start..end,
        ));
        at = end;
    }
    out
}

/// The test's record-level half: Kafka's rule without tombstone horizons (tombstones go at
/// once when `drop_tombstones`).
#[derive(Default)]
struct Model {
    map: HashMap<Vec<u8>, u64>,
    map_end: u64,
    /// Keys the map may hold (0: unlimited).
    limit: usize,
    drop_tombstones: bool,
}

impl Cleaner for Model {
    fn map_batch(&mut self, _: &BatchHeader, batch: &Bytes) -> Result<bool, String> {
        let recs = raw_records(batch);
        if self.limit > 0 && !self.map.is_empty() && self.map.len() + recs.len() > self.limit {
            return Ok(false);
        }
        for (r, _) in recs {
            self.map.insert(r.key, r.offset);
        }
        Ok(true)
    }

    fn map_done(&mut self, end: u64) {
        self.map_end = end;
    }

    fn filter(&mut self, h: &BatchHeader, batch: Bytes) -> Result<Filtered, String> {
        let recs = raw_records(&batch);
        let keep: Vec<bool> = recs
            .iter()
            .map(|(r, _)| {
                r.offset >= self.map_end
                    || (self.map.get(&r.key).is_none_or(|&o| r.offset >= o)
                        && !(self.drop_tombstones && r.value.is_none()))
            })
            .collect();
        if keep.iter().all(|k| *k) {
            return Ok(Filtered::Keep);
        }
        if !keep.iter().any(|k| *k) {
            return Ok(Filtered::Drop);
        }
        let mut b = BytesMut::from(&batch[..BATCH_HEADER_LEN]);
        let mut n = 0i32;
        for ((_, raw), k) in recs.iter().zip(&keep) {
            if *k {
                b.extend_from_slice(&batch[raw.clone()]);
                n += 1;
            }
        }
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[57..61].copy_from_slice(&n.to_be_bytes());
        assert_eq!(b[23..27], batch[23..27], "last offset delta kept");
        let _ = h;
        fix_crc(&mut b);
        Ok(Filtered::Replace(b.freeze()))
    }
}

/// Every batch of the log (whole, from the log start).
fn read_batches(log: &PartitionLog<FaultyDir>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.stable_offset() {
        let r = block_on(log.read(at, usize::MAX)).unwrap();
        assert!(!r.bytes.is_empty(), "nothing readable at {at}");
        let mut b = &r.bytes[..];
        while !b.is_empty() {
            let h = check_first(b, 1 << 20).expect("served batches are valid");
            out.push(Bytes::copy_from_slice(&b[..h.total_len()]));
            b = &b[h.total_len()..];
        }
        at = r.next_offset;
    }
    out
}

fn records(log: &PartitionLog<FaultyDir>) -> Vec<Rec> {
    read_batches(log)
        .iter()
        .flat_map(|b| raw_records(b).into_iter().map(|(r, _)| r))
        .collect()
}

/// What a full compaction of the records below `end` leaves: the latest record of every key
/// (tombstones too unless `drop_tombstones`), and everything from `end` on.
fn model(all: &[Rec], end: u64, drop_tombstones: bool) -> Vec<Rec> {
    let mut latest: HashMap<&[u8], u64> = HashMap::new();
    for r in all.iter().filter(|r| r.offset < end) {
        latest.insert(&r.key, r.offset);
    }
    all.iter()
        .filter(|r| {
            r.offset >= end
                || (latest[&r.key[..]] == r.offset && !(drop_tombstones && r.value.is_none()))
        })
        .cloned()
        .collect()
}

/// Appends `n` batches of 1–4 records over `keys` keys (every 7th record a tombstone), then
/// flushes twice (data, then the index files of the segments it completed).
fn fill(log: &mut PartitionLog<FaultyDir>, n: usize, keys: usize, seed: usize) {
    let mut k = seed;
    for i in 0..n {
        let count = 1 + (i + seed) % 4;
        let recs: Vec<(String, Option<String>)> = (0..count)
            .map(|j| {
                k = (k * 31 + 7) % 1009;
                let key = format!("key-{}", k % keys);
                let value =
                    (!k.is_multiple_of(7)).then(|| format!("value-{i}-{j}-{}", "x".repeat(k % 40)));
                (key, value)
            })
            .collect();
        let refs: Vec<(&str, Option<&str>)> = recs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        log.append(&kbatch(&refs, TS + i as i64 * 10), 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    block_on(log.flush()).unwrap();
}

fn compact(log: &mut PartitionLog<FaultyDir>, m: &mut Model, group: u64) -> CompactionStats {
    let from = log.clean_offset();
    block_on(log.compact(m, from, u64::MAX, group))
        .unwrap()
        .expect("something to compact")
}

/// Removes the index files and the segment checkpoint: the next open scans every segment.
fn forget_index_files(dir: &FaultyDir) {
    for n in file_names(dir) {
        if n.ends_with(".index") || n == manifest::FILE {
            block_on(dir.remove(&n)).unwrap();
        }
    }
}

fn file_names(dir: &FaultyDir) -> Vec<String> {
    block_on(dir.list()).unwrap()
}

#[test]
fn compaction_keeps_the_latest_record_per_key_and_every_offset() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    fill(&mut log, 200, 20, 0);
    let before = records(&log);
    let end = log.log_end_offset();
    let segments_before = log.segments().count();
    assert!(segments_before > 10, "{segments_before}");
    let mut m = Model::default();
    let stats = compact(&mut log, &mut m, 6000);
    // Everything but the active segment was rewritten, merged into fewer segments.
    let active = log.segments().last().unwrap().base_offset();
    assert_eq!(stats.end_offset, active);
    assert_eq!(stats.clean_offset, active);
    assert!(stats.segments_after < stats.segments_before, "{stats:?}");
    assert!(stats.bytes_after < stats.bytes_before, "{stats:?}");
    assert_eq!(log.clean_offset(), active);
    let after = records(&log);
    assert_eq!(after, model(&before, active, false));
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.log_start_offset(), 0);
    // Offsets are those of the original records; segments still follow on.
    let segs: Vec<(u64, u64)> = log
        .segments()
        .map(|s| (s.base_offset(), s.next_offset()))
        .collect();
    for w in segs.windows(2) {
        assert_eq!(w[0].1, w[1].0, "{segs:?}");
    }
    assert!(!file_names(&dir)
        .iter()
        .any(|n| n.ends_with(CLEANED_SUFFIX) || n.ends_with(SWAP_SUFFIX)));

    // More data, a second pass from the checkpoint: still the model, and tombstones go.
    fill(&mut log, 120, 20, 5);
    let before2 = records(&log);
    let mut m = Model {
        drop_tombstones: true,
        ..Model::default()
    };
    let stats = compact(&mut log, &mut m, 6000);
    let active = log.segments().last().unwrap().base_offset();
    assert_eq!(stats.clean_offset, active);
    assert_eq!(records(&log), model(&before2, active, true));

    // A clean restart reads nothing to open the log: no scan, the checkpoint vouches.
    let want = records(&log);
    let want_batches = read_batches(&log);
    block_on(log.close()).unwrap();
    let (log, report) = open(&dir);
    assert_eq!((report.batches, report.scanned_bytes), (0, 0), "{report:?}");
    assert_eq!(
        report.trusted_segments + 1,
        log.segments().count(),
        "{report:?}"
    );
    assert!(report.truncated.is_none());
    assert_eq!(log.clean_offset(), active);
    assert_eq!(records(&log), want);
    assert_eq!(read_batches(&log), want_batches);
    drop(log);
    // Without the index files and the checkpoint, recovery scans the gaps without a cut.
    forget_index_files(&dir);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    assert!(report.deleted_segments.is_empty(), "{report:?}");
    assert_eq!(log.log_end_offset(), end + (log.log_end_offset() - end));
    assert_eq!(records(&log), want);
}

/// Removed batches leave no gap: an empty filler batch covers their offsets, so offsets follow
/// on batch after batch and a read at any offset returns the batch holding it.
#[test]
fn reads_at_every_offset_across_removed_ranges() {
    let dir = FaultyDir::new(2);
    let (mut log, _) = open(&dir);
    fill(&mut log, 150, 10, 3);
    let mut m = Model {
        drop_tombstones: true,
        ..Model::default()
    };
    compact(&mut log, &mut m, 4096);
    let batches: Vec<(u64, u64, Bytes)> = read_batches(&log)
        .into_iter()
        .map(|b| {
            let h = BatchHeader::decode(&b).unwrap();
            (h.base_offset as u64, h.last_offset() as u64, b)
        })
        .collect();
    assert!(
        batches.windows(2).all(|w| w[0].1 + 1 == w[1].0),
        "offsets follow on"
    );
    let fillers = batches
        .iter()
        .filter(|(base, last, b)| {
            let h = BatchHeader::decode(b).unwrap();
            h.record_count == 0 && h.producer_id == -1 && last > base
        })
        .count();
    assert!(fillers > 5, "{fillers} fillers");
    // A read at any offset returns the batch holding it.
    for o in 0..log.log_end_offset() {
        let r = block_on(log.read(o, 1)).unwrap();
        let (base, last, bytes) = batches.iter().find(|(_, last, _)| *last >= o).unwrap();
        assert_eq!(r.base_offset, *base, "offset {o}");
        assert_eq!(r.next_offset, last + 1, "offset {o}");
        assert_eq!(&r.bytes, bytes, "offset {o}");
    }
    // By timestamp: the first batch with a max timestamp at or after the target.
    for (_, _, b) in batches.iter().step_by(7) {
        let h = BatchHeader::decode(b).unwrap();
        let found = block_on(log.find_timestamp(h.max_timestamp, u64::MAX))
            .unwrap()
            .unwrap();
        let want = batches
            .iter()
            .find(|(_, _, x)| BatchHeader::decode(x).unwrap().max_timestamp >= h.max_timestamp)
            .unwrap();
        assert_eq!(found.base_offset, want.0);
    }
    // The log start may land inside a filler: reads there get the filler (then what follows);
    // whole segments below go.
    let (fbase, _, _) = batches
        .iter()
        .find(|(base, last, b)| last > base && BatchHeader::decode(b).unwrap().record_count == 0)
        .unwrap();
    let inside = fbase + 1;
    block_on(log.truncate_prefix(inside)).unwrap();
    assert_eq!(log.log_start_offset(), inside);
    let r = block_on(log.read(inside, 1)).unwrap();
    assert_eq!(r.base_offset, *fbase);
    assert!(log.segments().next().unwrap().base_offset() <= inside);
}

#[test]
fn an_all_superseded_last_batch_stays_as_an_empty_batch() {
    let dir = FaultyDir::new(3);
    let (mut log, _) = open(&dir);
    // Each segment ends with a batch of key "a", superseded by the next segment's.
    for i in 0..40 {
        let v = format!("{i}-{}", "v".repeat(300));
        log.append(&kbatch(&[("a", Some(&v)), ("b", Some(&v))], TS + i), 1)
            .unwrap();
    }
    block_on(log.flush()).unwrap();
    block_on(log.flush()).unwrap();
    let mut m = Model::default();
    let stats = compact(&mut log, &mut m, 1); // no merging
    assert_eq!(stats.segments_after, stats.segments_before);
    let segs: Vec<(u64, u64)> = log
        .segments()
        .map(|s| (s.base_offset(), s.next_offset()))
        .collect();
    for w in segs.windows(2) {
        assert_eq!(w[0].1, w[1].0, "{segs:?}");
    }
    // Every closed segment but the last one compacted ends with an empty batch (its last
    // batch, every record superseded), after the fillers of what went before it.
    let batches = read_batches(&log);
    let ends: Vec<u64> = batches
        .iter()
        .map(|b| BatchHeader::decode(b).unwrap())
        .filter(|h| h.record_count == 0)
        .map(|h| h.last_offset() as u64 + 1)
        .filter(|end| segs.iter().any(|(_, next)| next == end))
        .collect();
    assert_eq!(ends.len(), stats.segments_after - 1, "{stats:?}");
    let offsets: Vec<(i64, i64)> = batches
        .iter()
        .map(|b| BatchHeader::decode(b).unwrap())
        .map(|h| (h.base_offset, h.last_offset()))
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0].1 + 1 == w[1].0),
        "{offsets:?}"
    );
    drop(log);
    // A restart that has to scan everything keeps it all.
    forget_index_files(&dir);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(read_batches(&log), batches);
}

/// The same log each time: closed cleanly, so it opens from the checkpoint.
fn prepared(seed: u64) -> (FaultyDir, Vec<Rec>) {
    let dir = FaultyDir::new(seed);
    let (mut log, _) = open(&dir);
    fill(&mut log, 90, 12, 1);
    let before = records(&log);
    block_on(log.close()).unwrap();
    (dir, before)
}

#[test]
fn a_crash_at_any_step_leaves_the_old_or_the_new_segments() {
    let (dir, before) = prepared(4);
    let (log, _) = open(&dir);
    let active = log.segments().last().unwrap().base_offset();
    let end = log.log_end_offset();
    drop(log);
    let new = model(&before, active, false);
    assert_ne!(new, before);
    for mode in [CrashMode::DropUnsynced, CrashMode::TearLastWrite] {
        let mut saw = (0, 0);
        for n in 0.. {
            let (dir, _) = prepared(4);
            let (mut log, _) = open(&dir);
            dir.stop_after(Some(n));
            let mut m = Model::default();
            let r = block_on(log.compact(&mut m, 0, u64::MAX, 1 << 20));
            dir.stop_after(None);
            drop(log);
            dir.crash(mode);
            let (log, report) = open(&dir);
            assert!(report.truncated.is_none(), "step {n}: {report:?}");
            assert_eq!(log.log_end_offset(), end, "step {n}");
            let got = records(&log);
            if got == before {
                saw.0 += 1;
            } else {
                assert_eq!(
                    got, new,
                    "step {n} ({mode:?}): neither the old nor the new log"
                );
                saw.1 += 1;
            }
            assert!(
                !file_names(&dir)
                    .iter()
                    .any(|f| f.ends_with(CLEANED_SUFFIX) || f.ends_with(SWAP_SUFFIX)),
                "step {n}: leftovers {:?}",
                file_names(&dir)
            );
            // Whatever it found, the next compaction completes to the same result.
            let (mut log, _) = open(&dir);
            let mut m = Model::default();
            block_on(log.compact(&mut m, 0, u64::MAX, 1 << 20)).unwrap();
            assert_eq!(records(&log), new, "step {n}: compacting again");
            if r.is_ok() {
                assert_eq!(got, new, "step {n}: a finished compaction survives");
                break;
            }
        }
        assert!(saw.0 > 5 && saw.1 > 3, "{mode:?}: {saw:?}");
    }
}

#[test]
fn a_small_key_map_compacts_a_prefix_per_pass() {
    let dir = FaultyDir::new(5);
    let (mut log, _) = open(&dir);
    fill(&mut log, 120, 30, 2);
    let before = records(&log);
    let active = log.segments().last().unwrap().base_offset();
    let mut passes = 0;
    while log.clean_offset() < active {
        let mut m = Model {
            limit: 8,
            ..Model::default()
        };
        let stats = compact(&mut log, &mut m, 4096);
        assert!(stats.clean_offset < active || passes > 0, "{stats:?}");
        passes += 1;
        assert!(passes < 50);
    }
    assert!(passes > 2, "{passes}");
    assert_eq!(records(&log), model(&before, active, false));
}

#[test]
fn retention_meanwhile_abandons_the_job() {
    let dir = FaultyDir::new(6);
    let (mut log, _) = open(&dir);
    fill(&mut log, 80, 10, 4);
    let job = log.plan_compaction(0, u64::MAX, 1 << 20).unwrap().unwrap();
    assert!(log.compaction_in_flight());
    let mut m = Model::default();
    let written = block_on(job.run(&mut m)).unwrap();
    assert!(file_names(&dir).iter().any(|f| f.ends_with(CLEANED_SUFFIX)));
    // Retention deletes the oldest segments meanwhile.
    let out = log.apply_retention(0, None, Some(log.size_bytes() / 2));
    assert!(out.by_size > 0);
    block_on(out.deletion.unwrap().run()).unwrap();
    let kept = records(&log);
    let CompactionFinish::Swap(swap) = log.finish_compaction(written) else {
        panic!("expected the job to be abandoned");
    };
    assert!(swap.is_abandoned());
    let done = block_on(swap.run());
    log.finish_swap(done).unwrap();
    assert!(!log.compaction_in_flight());
    assert!(!file_names(&dir).iter().any(|f| f.ends_with(CLEANED_SUFFIX)));
    assert_eq!(records(&log), kept);
    // A dropped job (an error, a shutdown) frees the log too.
    let job = log.plan_compaction(0, u64::MAX, 1 << 20).unwrap().unwrap();
    assert!(log.compaction_in_flight());
    drop(job);
    assert!(!log.compaction_in_flight());
}

#[test]
fn reads_planned_before_the_swap_finish_on_the_old_files() {
    let (dir, before) = prepared(7);
    let (mut log, _) = open(&dir);
    // Offset 0's segment is closed and trusted from the checkpoint: not open yet.
    assert!(!log.segments().next().unwrap().file_open());
    let early = log.plan_read(0, usize::MAX).unwrap();
    let job = log.plan_compaction(0, u64::MAX, 1 << 20).unwrap().unwrap();
    // Suffix truncation into the range being rewritten waits for the compaction.
    assert!(matches!(
        block_on(log.truncate_suffix(1, 0)),
        Err(LogError::CompactionInFlight { .. })
    ));
    let mut m = Model::default();
    let written = block_on(job.run(&mut m)).unwrap();
    let middle = log.plan_read(0, usize::MAX).unwrap();
    let CompactionFinish::Swap(swap) = log.finish_compaction(written) else {
        panic!("expected a swap");
    };
    let late = log.plan_read(0, usize::MAX).unwrap();
    let done = block_on(swap.run());
    log.finish_swap(done).unwrap();
    let first_old: Vec<Rec> = {
        let r = block_on(early.run()).unwrap();
        raw_records(&r.bytes).into_iter().map(|(r, _)| r).collect()
    };
    assert_eq!(first_old[..], before[..first_old.len()], "old data, whole");
    let r = block_on(middle.run()).unwrap();
    assert_eq!(
        raw_records(&r.bytes)[0].0,
        before[0],
        "planned before the swap: the old file"
    );
    let r = block_on(late.run()).unwrap();
    let active = log.segments().last().unwrap().base_offset();
    let new = model(&before, active, false);
    assert_eq!(
        r.bytes,
        block_on(log.read(0, usize::MAX)).unwrap().bytes,
        "planned after: the new file"
    );
    assert_eq!(records(&log), new);
}

#[test]
fn checkpoint_codec() {
    assert_eq!(decode_checkpoint(&encode_checkpoint(77)), Some(77));
    let mut b = encode_checkpoint(77);
    b[10] ^= 1;
    assert_eq!(decode_checkpoint(&b), None);
    assert_eq!(NO_TIMESTAMP, -1);
}

#[test]
fn appends_and_flushes_go_on_meanwhile() {
    let dir = FaultyDir::new(8);
    let (mut log, _) = open(&dir);
    fill(&mut log, 60, 10, 6);
    let job = log.plan_compaction(0, u64::MAX, 1 << 20).unwrap().unwrap();
    let (_, end) = job.range();
    let mut m = Model::default();
    let written = block_on(job.run(&mut m)).unwrap();
    // A flush that completes a rolled segment carries a segment checkpoint computed now:
    // the swap waits for it.
    let big = "z".repeat(2500);
    log.append(&kbatch(&[("late", Some(&big))], TS), 1).unwrap();
    log.append(&kbatch(&[("late", Some("2"))], TS), 1).unwrap();
    let flush = log.start_flush().unwrap().unwrap();
    let w = block_on(flush.write());
    let w = log.finish_write(w).unwrap();
    let written = match log.finish_compaction(written) {
        CompactionFinish::Busy(w) => w,
        _ => panic!("expected to wait for the flush"),
    };
    let s = block_on(w.sync());
    log.finish_sync(s).unwrap();
    let mut flushes = 0;
    while let Some(job) = log.start_flush().unwrap() {
        // A plain flush in flight (no checkpoint) does not hold the swap back.
        let w = block_on(job.write());
        let w = log.finish_write(w).unwrap();
        let s = block_on(w.sync());
        log.finish_sync(s).unwrap();
        flushes += 1;
        assert!(flushes < 5);
    }
    log.append(&kbatch(&[("later", Some("3"))], TS), 1).unwrap();
    let flush = log.start_flush().unwrap().unwrap();
    let CompactionFinish::Swap(swap) = log.finish_compaction(written) else {
        panic!("expected the swap");
    };
    assert!(!swap.is_abandoned());
    // The flush finishes while the swap runs, and writes its checkpoint after it.
    let done = block_on(swap.run());
    let w = block_on(flush.write());
    let w = log.finish_write(w).unwrap();
    let s = block_on(w.sync());
    log.finish_sync(s).unwrap();
    log.finish_swap(done).unwrap();
    block_on(log.flush()).unwrap();
    let want = records(&log);
    assert!(want.iter().any(|r| r.key == b"later"));
    block_on(log.close()).unwrap();
    let (log, report) = open(&dir);
    assert_eq!((report.batches, report.scanned_bytes), (0, 0), "{report:?}");
    assert_eq!(records(&log), want);
    assert_eq!(log.clean_offset(), end);
}

/// Where a suffix truncation (a Raft follower dropping a divergent tail) cuts while a
/// compaction of the older segments is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Inside the active segment.
    Active,
    /// Inside the last closed segment, above the range being rewritten.
    LastClosed,
    /// At the end of the range being rewritten (the base of the segment after it).
    RangeEnd,
}

/// When the truncation comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// While the job writes its new segments (before `finish_compaction`).
    Run,
    /// While the swap is in flight (between `finish_compaction` and `finish_swap`).
    Swap,
}

/// The segment checkpoint on disk (if any) vouches only for what the log holds: every segment
/// it lists is a closed segment of the log with that term, size and end; its active prefix
/// (if any) is a prefix of the active segment; its durable end is not beyond the log end.
fn check_checkpoint(dir: &FaultyDir, log: &PartitionLog<FaultyDir>, what: &str) {
    let Some(m) = block_on(manifest::read(dir)) else {
        return;
    };
    assert!(
        m.durable_end <= log.log_end_offset(),
        "{what}: the checkpoint saw {} durable, the log ends at {}",
        m.durable_end,
        log.log_end_offset()
    );
    let active = log.segments().last().unwrap();
    for e in &m.segments {
        let s = log
            .segments()
            .find(|s| s.base_offset() == e.base_offset)
            .unwrap_or_else(|| panic!("{what}: the checkpoint lists {e:?}, not in the log"));
        assert!(
            s.is_sealed() && s.base_offset() != active.base_offset(),
            "{what}: the checkpoint lists {e:?}, the active segment"
        );
        assert_eq!(
            (s.term(), s.size(), s.next_offset()),
            (e.term, e.size, e.next_offset),
            "{what}: the checkpoint's entry for segment {}",
            e.base_offset
        );
    }
    if let Some(a) = &m.active {
        assert_eq!(
            (a.meta.base_offset, a.term),
            (active.base_offset(), active.term()),
            "{what}: the checkpoint's active prefix"
        );
        assert!(
            a.meta.size <= active.size() && a.meta.next_offset <= active.next_offset(),
            "{what}: the checkpoint's active prefix goes beyond the active segment"
        );
    }
}

/// Checks the log: it ends at `end`, its segments follow on, and it reads back `batches`.
fn check_log(log: &PartitionLog<FaultyDir>, end: u64, batches: &[Bytes], what: &str) {
    assert_eq!(log.log_end_offset(), end, "{what}: log end");
    let segs: Vec<(u64, u64)> = log
        .segments()
        .map(|s| (s.base_offset(), s.next_offset()))
        .collect();
    for w in segs.windows(2) {
        assert_eq!(w[0].1, w[1].0, "{what}: segments {segs:?}");
    }
    assert_eq!(segs.last().unwrap().1, end, "{what}: segments {segs:?}");
    let got = read_batches(log);
    assert_eq!(got.len(), batches.len(), "{what}: batches read back");
    assert!(got == batches, "{what}: the batches read back differ");
}

/// Reopens the log after a clean close or a crash; nothing may be cut.
fn reopen(
    dir: &FaultyDir,
    log: PartitionLog<FaultyDir>,
    crash: bool,
    what: &str,
) -> PartitionLog<FaultyDir> {
    if crash {
        drop(log);
        dir.crash(CrashMode::DropUnsynced);
    } else {
        block_on(log.close()).unwrap();
    }
    let (log, report) = open(dir);
    assert!(report.truncated.is_none(), "{what}: {report:?}");
    assert!(report.deleted_segments.is_empty(), "{what}: {report:?}");
    log
}

/// A truncated log after a compaction that ran alongside the truncation.
struct Truncated {
    dir: FaultyDir,
    log: PartitionLog<FaultyDir>,
    /// Where the truncation cut (the log end).
    offset: u64,
    /// The records left.
    want: Vec<Rec>,
}

/// Compacts every closed segment but the last one of a fresh log and truncates its suffix at
/// `cut` during `phase`; checks the result.
fn truncated_during_compaction(cut: Cut, phase: Phase, what: &str) -> Truncated {
    let dir = FaultyDir::new(9);
    let (mut log, _) = open(&dir);
    fill(&mut log, 90, 12, 1);
    // A few small batches in the active segment (for a cut inside it, not at its base).
    let in_active = |log: &PartitionLog<FaultyDir>| {
        let base = log.segments().last().unwrap().base_offset();
        read_batches(log)
            .iter()
            .filter(|b| BatchHeader::decode(b).unwrap().base_offset as u64 >= base)
            .count()
    };
    while in_active(&log) < 3 {
        log.append(&kbatch(&[("tail", Some("t"))], TS + 5000), 1)
            .unwrap();
        block_on(log.flush()).unwrap();
    }
    block_on(log.flush()).unwrap();
    let segs: Vec<(u64, u64)> = log
        .segments()
        .map(|s| (s.base_offset(), s.next_offset()))
        .collect();
    let n = segs.len();
    assert!(n > 5, "{segs:?}");
    let (k_base, k_next) = segs[n - 2];
    let a_base = segs[n - 1].0;
    let bounds: Vec<u64> = read_batches(&log)
        .iter()
        .map(|b| BatchHeader::decode(b).unwrap().base_offset as u64)
        .collect();
    let inside = |lo: u64, hi: u64| {
        *bounds
            .iter()
            .find(|&&b| b > lo && b < hi)
            .expect("a batch boundary inside the segment")
    };
    let offset = match cut {
        Cut::Active => inside(a_base, u64::MAX),
        Cut::LastClosed => inside(k_base, k_next),
        Cut::RangeEnd => k_base,
    };
    let before = records(&log);

    // Grouped as the broker groups them (at most a segment's size).
    let job = log
        .plan_compaction(0, k_base, cfg().segment_bytes)
        .unwrap()
        .unwrap();
    let (_, end) = job.range();
    assert_eq!(end, k_base);
    let mut m = Model::default();
    let written = block_on(job.run(&mut m)).unwrap();
    let compacted = model(&before, end, false);
    assert_ne!(compacted, before);
    let truncate = |log: &mut PartitionLog<FaultyDir>| block_on(log.truncate_suffix(offset, 0));
    let swapped = match phase {
        Phase::Run => {
            // Above the range, or at its end: allowed; the swap is then planned from the log
            // as the truncation left it (or abandoned: the truncation cut the job's last
            // segment, which became the active one).
            truncate(&mut log).unwrap();
            let CompactionFinish::Swap(swap) = log.finish_compaction(written) else {
                panic!("{what}: expected a swap");
            };
            assert_eq!(swap.is_abandoned(), cut == Cut::RangeEnd, "{what}");
            let swapped = !swap.is_abandoned();
            let done = block_on(swap.run());
            log.finish_swap(done).unwrap();
            swapped
        }
        Phase::Swap => {
            let CompactionFinish::Swap(swap) = log.finish_compaction(written) else {
                panic!("{what}: expected a swap");
            };
            assert!(!swap.is_abandoned(), "{what}");
            let r = truncate(&mut log);
            let done = block_on(swap.run());
            log.finish_swap(done).unwrap();
            // Refused while the swap is in flight (what it writes was computed before);
            // retried once it is done. (Were it accepted, the checks below would still hold.)
            match r {
                Ok(()) => {}
                Err(LogError::CompactionInFlight { .. }) => truncate(&mut log).unwrap(),
                Err(e) => panic!("{what}: {e}"),
            }
            true
        }
    };
    let want: Vec<Rec> = if swapped { compacted } else { before }
        .into_iter()
        .filter(|r| r.offset < offset)
        .collect();
    assert_eq!(records(&log), want, "{what}");
    check_log(&log, offset, &read_batches(&log), what);
    check_checkpoint(&dir, &log, what);
    Truncated {
        dir,
        log,
        offset,
        want,
    }
}

/// The follower goes on with the new leader's entries: in the old term first (onto the cut
/// segment), then in a new one, flushing as it goes (each flush that completes a segment
/// writes its index files and the segment checkpoint). Stops at the first error.
fn go_on(log: &mut PartitionLog<FaultyDir>) -> Result<(), LogError> {
    for i in 0..24 {
        let term = if i < 8 { 1 } else { 2 };
        let key = format!("new-{i}");
        let value = "n".repeat(150);
        log.append(&kbatch(&[(&key, Some(&value))], TS + 9000 + i), term)?;
        if i % 5 == 0 {
            block_on(log.flush())?;
        }
    }
    block_on(log.flush())?;
    block_on(log.flush())?;
    Ok(())
}

/// A Raft follower truncates a divergent tail while a compaction of the older segments is
/// in flight (in the active segment, in the last closed segment, at the end of the range
/// being rewritten), then goes on: no segment checkpoint or index file is left describing the
/// segments as they were before the truncation, and the log reopens (cleanly or after a
/// crash) with the truncated log end and every batch readable.
#[test]
fn suffix_truncation_during_a_compaction() {
    for cut in [Cut::Active, Cut::LastClosed, Cut::RangeEnd] {
        for phase in [Phase::Run, Phase::Swap] {
            for crash in [false, true] {
                let what = format!(
                    "{cut:?} during the {phase:?} phase, {}",
                    if crash { "crash" } else { "clean close" }
                );
                // Reopened at once.
                let t = truncated_during_compaction(cut, phase, &what);
                let batches = read_batches(&t.log);
                let log = reopen(&t.dir, t.log, crash, &what);
                check_log(&log, t.offset, &batches, &what);
                assert_eq!(records(&log), t.want, "{what}");
                check_checkpoint(&t.dir, &log, &what);
                drop(log);

                // Going on first.
                let Truncated {
                    dir,
                    mut log,
                    offset,
                    want,
                } = truncated_during_compaction(cut, phase, &what);
                go_on(&mut log).unwrap();
                check_checkpoint(&dir, &log, &what);
                let end = log.log_end_offset();
                let batches = read_batches(&log);
                let all = records(&log);
                assert_eq!(all[..want.len()], want[..], "{what}");
                assert_eq!(all.len(), want.len() + 24, "{what}");
                assert!(all[want.len()..].iter().all(|r| r.offset >= offset));
                check_log(&log, end, &batches, &what);
                let log = reopen(&dir, log, crash, &what);
                check_log(&log, end, &batches, &what);
                check_checkpoint(&dir, &log, &what);
                // And after a crash (what the reopen rewrote, e.g. index files, is sound).
                let log = reopen(&dir, log, true, &what);
                check_log(&log, end, &batches, &what);
                assert_eq!(records(&log), all, "{what}");
                // The index files alone vouch for no more than the segments hold (a torn
                // or damaged checkpoint is ignored).
                drop(log);
                let _ = block_on(dir.remove(manifest::FILE));
                let (log, report) = open(&dir);
                assert!(report.truncated.is_none(), "{what}: {report:?}");
                check_log(&log, end, &batches, &what);
                assert_eq!(records(&log), all, "{what}");
            }
        }
    }
}

/// As [`suffix_truncation_during_a_compaction`], with a crash at every step of what the
/// follower does next: whatever survives is a prefix of what it wrote, never less than the
/// truncated log, never a cut of it.
#[test]
fn a_crash_after_a_suffix_truncation_during_a_compaction() {
    for cut in [Cut::Active, Cut::LastClosed, Cut::RangeEnd] {
        for phase in [Phase::Run, Phase::Swap] {
            let what = format!("{cut:?} during the {phase:?} phase");
            let Truncated { mut log, .. } = truncated_during_compaction(cut, phase, &what);
            go_on(&mut log).unwrap();
            let full = read_batches(&log);
            drop(log);
            for mode in [CrashMode::DropUnsynced, CrashMode::TearLastWrite] {
                for n in 0.. {
                    let what = format!("{what}, {mode:?} at step {n}");
                    let Truncated {
                        dir,
                        mut log,
                        offset,
                        ..
                    } = truncated_during_compaction(cut, phase, &what);
                    let kept = read_batches(&log);
                    dir.stop_after(Some(n));
                    let r = go_on(&mut log);
                    dir.stop_after(None);
                    drop(log);
                    dir.crash(mode);
                    let (log, _) = open(&dir);
                    let got = read_batches(&log);
                    assert!(
                        got.len() >= kept.len() && got.len() <= full.len(),
                        "{what}: {} batches, not between {} and {}",
                        got.len(),
                        kept.len(),
                        full.len()
                    );
                    assert!(got == full[..got.len()], "{what}: not a prefix");
                    assert!(log.log_end_offset() >= offset, "{what}");
                    let end = BatchHeader::decode(got.last().unwrap())
                        .unwrap()
                        .next_offset();
                    check_log(&log, end as u64, &got, &what);
                    check_checkpoint(&dir, &log, &what);
                    if r.is_ok() {
                        assert_eq!(got.len(), full.len(), "{what}");
                        assert!(n > 20, "{what}: too few steps");
                        break;
                    }
                }
            }
        }
    }
}

/// While a swap is in flight every suffix truncation is refused, even far above the range
/// being rewritten; once the swap is done it goes through. Before the swap, only truncations
/// into the range are refused.
#[test]
fn suffix_truncation_waits_for_the_swap() {
    let dir = FaultyDir::new(10);
    let (mut log, _) = open(&dir);
    fill(&mut log, 80, 10, 2);
    let bases: Vec<u64> = log.segments().map(|s| s.base_offset()).collect();
    let closed = bases[bases.len() - 2];
    let job = log.plan_compaction(0, closed, 1 << 20).unwrap().unwrap();
    let (_, end) = job.range();
    let last = log.log_end_offset() - 1;
    let mut m = Model::default();
    let written = block_on(job.run(&mut m)).unwrap();
    assert!(matches!(
        block_on(log.truncate_suffix(end - 1, 0)),
        Err(LogError::CompactionInFlight { .. })
    ));
    let CompactionFinish::Swap(swap) = log.finish_compaction(written) else {
        panic!("expected a swap");
    };
    assert!(!swap.is_abandoned());
    for offset in [end, last, log.log_end_offset()] {
        let r = block_on(log.truncate_suffix(offset, 0));
        assert!(
            matches!(r, Err(LogError::CompactionInFlight { offset: o, end: e }) if o == offset && e == end),
            "{offset}: {r:?}"
        );
    }
    assert_eq!(log.log_end_offset(), last + 1, "nothing was cut");
    let done = block_on(swap.run());
    log.finish_swap(done).unwrap();
    assert!(!log.compaction_in_flight());
    block_on(log.truncate_suffix(end, 0)).unwrap();
    assert_eq!(log.log_end_offset(), end);
}
