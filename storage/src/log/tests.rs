//! Log tests over the in-memory [`FaultyDir`] (driven with `block_on`: no executor needed) and
//! one over real O_DIRECT files in a glommio executor.

use bytes::Bytes;
use futures_lite::future::block_on;
use proptest::prelude::*;

use super::batch::tests::{build_batch, build_batch_ts};
use super::batch::{check_first, BatchError, RecordBatch};
use super::faulty::{CrashMode, FaultyDir};
use super::recovery::CorruptTail;
use super::*;

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        segment_ms: None,
        max_batch_bytes: 1 << 20,
        write_chunk_bytes: 8192,
        recovery_read_bytes: 8192,
        index_interval_bytes: 1024,
    }
}

fn batch(records: usize, value_len: usize, seed: u8) -> RecordBatch {
    RecordBatch::validate(build_batch(records, value_len, seed), 1 << 20).unwrap()
}

fn open(dir: &FaultyDir) -> (PartitionLog<FaultyDir>, RecoveryReport) {
    block_on(PartitionLog::open(dir.clone(), cfg())).unwrap()
}

/// Every batch of the log, read one segment at a time.
fn read_all(log: &PartitionLog<FaultyDir>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.stable_offset() {
        let r = block_on(log.read(at, usize::MAX)).unwrap();
        assert!(!r.bytes.is_empty(), "nothing readable at {at}");
        split_batches(&r.bytes, &mut out);
        at = r.next_offset;
    }
    out
}

fn split_batches(mut b: &[u8], out: &mut Vec<Bytes>) {
    while !b.is_empty() {
        let h = check_first(b, 1 << 20).expect("served bytes are valid batches");
        out.push(Bytes::copy_from_slice(&b[..h.total_len()]));
        b = &b[h.total_len()..];
    }
}

/// Zero-width control batches (Raft leader no-ops) occupy no offset: at offset 0 and between
/// data batches, through flushes, reads (cached and from disk), a clean reopen and a crash
/// recovery that scans them.
#[test]
fn zero_width_control_batches_occupy_no_offset() {
    use super::batch::zero_width_control_batch;
    let dir = FaultyDir::new(31);
    let (mut log, _) = open(&dir);
    let zw = || RecordBatch::validate_zero_width(zero_width_control_batch(3), 1 << 20).unwrap();
    assert!(RecordBatch::validate(zero_width_control_batch(3), 1 << 20).is_err());
    assert_eq!(log.append_zero_width(&zw(), 3).unwrap(), 0);
    assert_eq!(log.log_end_offset(), 0);
    let a = log.append(&batch(3, 50, 1), 3).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (0, 2));
    assert_eq!(log.append_zero_width(&zw(), 4).unwrap(), 3);
    let b = log.append(&batch(2, 50, 2), 4).unwrap();
    assert_eq!((b.base_offset, b.last_offset), (3, 4));
    assert_eq!(log.append_zero_width(&zw(), 5).unwrap(), 5);
    assert_eq!(log.log_end_offset(), 5);
    block_on(log.flush()).unwrap();
    let check = |log: &PartitionLog<FaultyDir>| {
        // Every offset reads the data batch holding it.
        for (o, base) in [(0, 0), (1, 0), (2, 0), (3, 3), (4, 3)] {
            let r = block_on(log.read(o, 1)).unwrap();
            let mut got = Vec::new();
            split_batches(&r.bytes, &mut got);
            let first_data = got
                .iter()
                .map(|b| check_first(b, 1 << 20).unwrap())
                .find(|h| !h.is_zero_width())
                .unwrap();
            assert_eq!(first_data.base_offset, base, "offset {o}");
        }
        assert!(
            block_on(log.read(5, 1 << 20)).unwrap().bytes.is_empty() || {
                let r = block_on(log.read(5, 1 << 20)).unwrap();
                let mut got = Vec::new();
                split_batches(&r.bytes, &mut got);
                got.iter()
                    .all(|b| check_first(b, 1 << 20).unwrap().is_zero_width())
            }
        );
        assert_eq!(log.log_end_offset(), 5);
        let all = read_all(log);
        let data: Vec<(i64, i32)> = all
            .iter()
            .map(|b| check_first(b, 1 << 20).unwrap())
            .filter(|h| !h.is_zero_width())
            .map(|h| (h.base_offset, h.record_count))
            .collect();
        assert_eq!(data, vec![(0, 3), (3, 2)]);
    };
    check(&log);
    block_on(log.close()).unwrap();
    let (mut log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    // With a batch cache: reads fill it, the second round is served from it.
    let cache = super::cache::BatchCache::new(1 << 20);
    log.attach_cache(&cache);
    check(&log);
    check(&log);
    // After a crash, recovery scans them.
    let c = log.append(&batch(1, 50, 3), 5).unwrap();
    assert_eq!(c.base_offset, 5);
    block_on(log.flush()).unwrap();
    drop(log);
    dir.crash(CrashMode::DropUnsynced);
    for n in block_on(dir.list()).unwrap() {
        if n.ends_with(".index") || n == super::manifest::FILE {
            block_on(dir.remove(&n)).unwrap();
        }
    }
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(log.log_end_offset(), 6);
}

/// One batch of a log holding zero-width control batches, as the tests expect it.
#[derive(Debug, Clone)]
struct Placed {
    bytes: Bytes,
    base: u64,
    zero_width: bool,
    epoch: i32,
}

impl Placed {
    /// Its place: a zero-width batch by its epoch, any other batch after every zero-width
    /// batch at its offset.
    fn at(&self) -> BatchAt {
        BatchAt {
            offset: self.base,
            min_epoch: i64::from(self.epoch) + i64::from(!self.zero_width),
        }
    }

    fn next(&self) -> u64 {
        let h = check_first(&self.bytes, 1 << 20).unwrap();
        h.next_offset() as u64
    }
}

fn append_placed(
    log: &mut PartitionLog<FaultyDir>,
    placed: &mut Vec<Placed>,
    zero_width: Option<()>,
    records: usize,
    value_len: usize,
    epoch: i32,
) -> Result<(), LogError> {
    let term = epoch as u64;
    let (bytes, base) = match zero_width {
        Some(()) => {
            let b = RecordBatch::validate_zero_width(
                super::batch::zero_width_control_batch(epoch),
                1 << 20,
            )
            .unwrap();
            let base = log.append_zero_width(&b, term)?;
            (b.stamped(base as i64, epoch).into_bytes(), base)
        }
        None => {
            let b = batch(records, value_len, placed.len() as u8);
            let a = log.append(&b, term)?;
            (
                b.stamped(a.base_offset as i64, epoch).into_bytes(),
                a.base_offset,
            )
        }
    };
    placed.push(Placed {
        bytes,
        base,
        zero_width: zero_width.is_some(),
        epoch,
    });
    Ok(())
}

/// Every batch from the log start in file order, zero-width ones included, read by place
/// `max_bytes` at a time.
fn read_all_at(log: &PartitionLog<FaultyDir>, max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = BatchAt::offset(log.log_start_offset());
    loop {
        let r = block_on(log.read_at(at, max_bytes)).unwrap();
        if r.bytes.is_empty() {
            assert_eq!(r.next, at);
            return out;
        }
        let before = out.len();
        split_batches(&r.bytes, &mut out);
        assert!(max_bytes > 1 || out.len() == before + 1);
        let last = check_first(out.last().unwrap(), 1 << 20).unwrap();
        assert_eq!(r.next, BatchAt::after(&last));
        at = r.next;
    }
}

#[track_caller]
fn check_placed(log: &PartitionLog<FaultyDir>, placed: &[Placed]) {
    let want: Vec<Bytes> = placed.iter().map(|p| p.bytes.clone()).collect();
    for max in [1, 300, 1 << 20] {
        assert!(read_all_at(log, max) == want, "max_bytes {max}");
    }
    // Each batch by its place, and the end.
    for (i, p) in placed.iter().enumerate() {
        let r = block_on(log.read_at(p.at(), 1)).unwrap();
        assert_eq!(r.bytes, p.bytes, "batch {i} at {:?}", p.at());
    }
    let end = placed.last().map_or(log.log_start_offset(), Placed::next);
    assert_eq!(log.log_end_offset(), end);
    // Only the last segment may end in a zero-width batch at its end (then it holds only
    // those): deleting whole segments below an offset never removes a batch at it.
    let segs: Vec<&Segment<FaultyDir>> = log.segments().collect();
    for s in segs.iter().take(segs.len().saturating_sub(1)) {
        if let Some(lb) = s.last_batch {
            assert!(
                lb.base_offset < s.next_offset,
                "segment {} ends in a zero-width batch",
                s.name
            );
        }
    }
    let past = BatchAt {
        offset: end,
        min_epoch: i64::MAX,
    };
    assert!(block_on(log.read_at(past, 1 << 20))
        .unwrap()
        .bytes
        .is_empty());
    // Kafka reads never start with a zero-width batch, and serve every data batch.
    let mut data = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.log_end_offset() {
        let r = block_on(log.read(at, 1 << 20)).unwrap();
        let mut got = Vec::new();
        split_batches(&r.bytes, &mut got);
        assert!(!check_first(&got[0], 1 << 20).unwrap().is_zero_width());
        data.extend(got);
        at = r.next_offset;
    }
    data.retain(|b| !check_first(b, 1 << 20).unwrap().is_zero_width());
    let want_data: Vec<Bytes> = placed
        .iter()
        .filter(|p| !p.zero_width)
        .map(|p| p.bytes.clone())
        .collect();
    assert!(data == want_data);
}

/// Reads and suffix truncations by batch place ([`BatchAt`]) see zero-width control batches
/// that an offset cannot address: at offset 0, several at one offset (told apart by epoch), a
/// segment holding only them, one ending a segment whose successor starts at the same offset,
/// and trailing ones at the log end — across a clean reopen and crash recovery; truncation
/// keeps the ones before the place and removes the rest, durably.
#[test]
fn zero_width_batches_are_read_and_truncated_by_place() {
    for interval in [1, 1024] {
        let dir = FaultyDir::new(41);
        let config = LogConfig {
            segment_bytes: 1024,
            index_interval_bytes: interval,
            ..cfg()
        };
        let open_cfg = |dir: &FaultyDir| {
            block_on(PartitionLog::open(dir.clone(), config.clone()))
                .unwrap()
                .0
        };
        let mut log = open_cfg(&dir);
        let mut p = Vec::new();
        // [0]: zero-width at 0, then data 0..=2 (epoch 1).
        append_placed(&mut log, &mut p, Some(()), 0, 0, 1).unwrap();
        append_placed(&mut log, &mut p, None, 3, 20, 1).unwrap();
        // A new term rolls a segment that holds only zero-width batches at 3 (epochs 2, 3).
        append_placed(&mut log, &mut p, Some(()), 0, 0, 2).unwrap();
        append_placed(&mut log, &mut p, Some(()), 0, 0, 3).unwrap();
        block_on(log.flush()).unwrap();
        append_placed(&mut log, &mut p, Some(()), 0, 0, 4).unwrap();
        assert_eq!(log.log_end_offset(), 3);
        assert_eq!(log.segments().count(), 2);
        // Data of epoch 4; a zero-width batch of the same epoch does not join the segment
        // holding data: it opens one (no segment ends in a batch at its successor's base).
        for _ in 0..3 {
            append_placed(&mut log, &mut p, None, 1, 100, 4).unwrap();
        }
        let x = log.log_end_offset();
        let before = log.segments().count();
        append_placed(&mut log, &mut p, Some(()), 0, 0, 4).unwrap();
        assert_eq!(log.segments().count(), before + 1);
        append_placed(&mut log, &mut p, None, 2, 120, 4).unwrap();
        let bases: Vec<u64> = log.segments().map(|s| s.base_offset()).collect();
        assert_eq!(bases[..2], [0, 3]);
        assert_eq!(bases.last(), Some(&x));
        // Trailing zero-width batches at the log end, in a new segment.
        append_placed(&mut log, &mut p, Some(()), 0, 0, 5).unwrap();
        append_placed(&mut log, &mut p, Some(()), 0, 0, 6).unwrap();
        // Not written yet: not readable.
        assert_eq!(read_all_at(&log, 1 << 20).len(), 4);
        block_on(log.flush()).unwrap();
        check_placed(&log, &p);

        // Clean reopen, then crash recovery scanning every segment.
        block_on(log.close()).unwrap();
        let log = open_cfg(&dir);
        check_placed(&log, &p);
        drop(log);
        dir.crash(CrashMode::DropUnsynced);
        for n in block_on(dir.list()).unwrap() {
            if n.ends_with("index") || n == super::manifest::FILE {
                block_on(dir.remove(&n)).unwrap();
            }
        }
        let mut log = open_cfg(&dir);
        check_placed(&log, &p);

        // Truncation at the log end removes the zero-width batches from the place on.
        let last = p.len() - 1;
        block_on(log.truncate_suffix_at(p[last].at(), 0)).unwrap();
        p.truncate(last);
        check_placed(&log, &p);
        // A place inside a batch is not a boundary; the log stays usable.
        assert!(matches!(
            block_on(log.truncate_suffix_at(BatchAt::offset(1), 0)),
            Err(LogError::NotBatchBoundary { offset: 1 })
        ));
        // The data batch after a zero-width batch of its own epoch at the same offset: that
        // one stays, alone in its segment.
        let i = p.iter().position(|q| q.base == x && !q.zero_width).unwrap();
        assert!(p[i - 1].zero_width && p[i - 1].base == x && p[i - 1].epoch == p[i].epoch);
        block_on(log.truncate_suffix_at(p[i].at(), x)).unwrap();
        p.truncate(i);
        check_placed(&log, &p);
        let last = log.segments().last().unwrap();
        assert_eq!((last.base_offset(), last.next_offset()), (x, x));
        assert!(last.size() > 0);
        // Below the floor: refused.
        assert!(matches!(
            block_on(log.truncate_suffix_at(p[2].at(), 4)),
            Err(LogError::BelowFloor { .. })
        ));
        // Keeps the epoch-2 zero-width batch at 3, removes epoch 3 on.
        block_on(log.truncate_suffix_at(p[3].at(), 3)).unwrap();
        p.truncate(3);
        check_placed(&log, &p);
        // Durable on return; appends go on after it.
        append_placed(&mut log, &mut p, None, 2, 10, 7).unwrap();
        block_on(log.flush()).unwrap();
        drop(log);
        dir.crash(CrashMode::DropUnsynced);
        let mut log = open_cfg(&dir);
        check_placed(&log, &p);
        // The zero-width batch at offset 0 is the first batch: truncating there empties the
        // log but keeps its first segment.
        block_on(log.truncate_suffix_at(p[0].at(), 0)).unwrap();
        p.clear();
        check_placed(&log, &p);
        assert_eq!(log.log_end_offset(), 0);
        block_on(log.close()).unwrap();
        let log = open_cfg(&dir);
        check_placed(&log, &p);
    }
}

/// A zero-width batch never ends a segment that the next one follows at the same offset, so
/// deleting the segments below an offset (prefix truncation, retention) keeps the zero-width
/// batches at that offset.
#[test]
fn prefix_truncation_keeps_zero_width_batches_at_the_new_start() {
    let dir = FaultyDir::new(43);
    let mut log = open(&dir).0;
    let mut p = Vec::new();
    append_placed(&mut log, &mut p, None, 2, 10, 1).unwrap();
    // Same epoch as the data: still its own segment.
    append_placed(&mut log, &mut p, Some(()), 0, 0, 1).unwrap();
    append_placed(&mut log, &mut p, Some(()), 0, 0, 2).unwrap();
    assert_eq!(log.segments().count(), 2);
    block_on(log.flush()).unwrap();
    block_on(log.truncate_prefix(2)).unwrap();
    assert_eq!(log.segments().count(), 1);
    p.retain(|q| q.base >= 2);
    check_placed(&log, &p);
    drop(log);
    dir.crash(CrashMode::DropUnsynced);
    let mut log = open(&dir).0;
    check_placed(&log, &p);
    // Data joins the segment that holds only zero-width batches.
    append_placed(&mut log, &mut p, None, 1, 10, 3).unwrap();
    assert_eq!(log.segments().count(), 1);
    block_on(log.flush()).unwrap();
    check_placed(&log, &p);
}

#[derive(Debug, Clone)]
enum ZwOp {
    Data { records: usize, value_len: usize },
    ZeroWidth { new_term: bool },
    Flush,
    Truncate { pick: usize },
    PrefixTo { pick: usize },
    Crash { tear: bool },
    Restart,
}

fn zw_op() -> impl Strategy<Value = ZwOp> {
    prop_oneof![
        6 => (1usize..4, prop_oneof![0usize..40, 100usize..600])
            .prop_map(|(records, value_len)| ZwOp::Data { records, value_len }),
        3 => any::<bool>().prop_map(|new_term| ZwOp::ZeroWidth { new_term }),
        3 => Just(ZwOp::Flush),
        2 => any::<usize>().prop_map(|pick| ZwOp::Truncate { pick }),
        1 => any::<usize>().prop_map(|pick| ZwOp::PrefixTo { pick }),
        1 => any::<bool>().prop_map(|tear| ZwOp::Crash { tear }),
        1 => Just(ZwOp::Restart),
    ]
}

/// Random appends of data and zero-width batches (epochs growing, as Raft terms do), flushes,
/// truncations by place, crashes and restarts: the log read by place is always the model,
/// and a crash keeps a prefix of it holding everything flushed.
fn run_zero_width_ops(seed: u64, ops: Vec<ZwOp>) {
    let dir = FaultyDir::new(seed);
    let config = LogConfig {
        segment_bytes: 1500,
        index_interval_bytes: 200,
        ..cfg()
    };
    let reopen = |dir: &FaultyDir| {
        block_on(PartitionLog::open(dir.clone(), config.clone()))
            .unwrap()
            .0
    };
    let mut log = reopen(&dir);
    let mut p: Vec<Placed> = Vec::new();
    let mut durable = 0usize;
    let mut epoch = 1i32;
    // The log start the owner keeps (and re-applies after a restart).
    let mut start = 0u64;
    let reopen_at = |dir: &FaultyDir, start: u64| {
        let mut log = reopen(dir);
        block_on(log.truncate_prefix(start)).unwrap();
        log
    };
    for op in ops {
        match op {
            ZwOp::Data { records, value_len } => {
                append_placed(&mut log, &mut p, None, records, value_len, epoch).unwrap();
            }
            ZwOp::ZeroWidth { new_term } => {
                let end = p.last().map_or(log.log_end_offset(), Placed::next);
                // At one offset, zero-width batches are told apart by epoch.
                let taken = p
                    .iter()
                    .any(|q| q.zero_width && q.base == end && q.epoch == epoch);
                if new_term || taken {
                    epoch += 1;
                }
                append_placed(&mut log, &mut p, Some(()), 0, 0, epoch).unwrap();
            }
            ZwOp::Flush => {
                block_on(log.flush()).unwrap();
                durable = p.len();
            }
            ZwOp::Truncate { pick } => {
                let i = pick % (p.len() + 1);
                let at = p.get(i).map_or(
                    BatchAt {
                        offset: log.log_end_offset(),
                        min_epoch: i64::MAX,
                    },
                    Placed::at,
                );
                block_on(log.truncate_suffix_at(at, start)).unwrap();
                p.truncate(i);
                durable = durable.min(i);
            }
            ZwOp::PrefixTo { pick } => {
                if durable == p.len() && !p.is_empty() {
                    start = p[pick % p.len()].base;
                    block_on(log.truncate_prefix(start)).unwrap();
                    let from = BatchAt::offset(start);
                    p.retain(|q| !from.skips(&check_first(&q.bytes, 1 << 20).unwrap()));
                    durable = p.len();
                }
            }
            ZwOp::Crash { tear } => {
                drop(log);
                dir.crash(if tear {
                    CrashMode::TearLastWrite
                } else {
                    CrashMode::DropUnsynced
                });
                log = reopen_at(&dir, start);
                let got = read_all_at(&log, 1 << 20);
                assert!(got.len() >= durable, "lost flushed batches");
                assert!(got.len() <= p.len());
                for (g, w) in got.iter().zip(&p) {
                    assert_eq!(g, &w.bytes);
                }
                p.truncate(got.len());
                durable = p.len();
            }
            ZwOp::Restart => {
                block_on(log.close()).unwrap();
                log = reopen_at(&dir, start);
                durable = p.len();
            }
        }
        if log.stable_offset() == log.log_end_offset() && durable == p.len() {
            check_placed(&log, &p);
        }
    }
    block_on(log.flush()).unwrap();
    check_placed(&log, &p);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn zero_width_batches_match_a_model_across_crashes(seed in any::<u64>(), ops in proptest::collection::vec(zw_op(), 1..60)) {
        run_zero_width_ops(seed, ops);
    }
}

#[test]
fn append_flush_read_round_trip() {
    let dir = FaultyDir::new(1);
    let (mut log, report) = open(&dir);
    assert_eq!(report, RecoveryReport::default());
    let b = batch(3, 100, 9);
    let a = log.append(&b, 5).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (0, 2));
    let a2 = log.append(&batch(1, 10, 1), 5).unwrap();
    assert_eq!((a2.base_offset, a2.last_offset), (3, 3));
    assert_eq!(log.log_end_offset(), 4);
    // Not readable before it is written.
    let r = block_on(log.read(0, 1 << 20)).unwrap();
    assert!(r.bytes.is_empty());
    assert_eq!(block_on(log.flush()).unwrap(), 4);
    let r = block_on(log.read(1, 1 << 20)).unwrap();
    assert_eq!((r.base_offset, r.next_offset), (0, 4));
    let mut got = Vec::new();
    split_batches(&r.bytes, &mut got);
    assert_eq!(got.len(), 2);
    let h = check_first(&got[0], 1 << 20).unwrap();
    assert_eq!(h.base_offset, 0);
    assert_eq!(h.partition_leader_epoch, 5);
    assert_eq!(got[0], b.stamped(0, 5).into_bytes());
    let h = check_first(&got[1], 1 << 20).unwrap();
    assert_eq!(h.base_offset, 3);
    // The end is an empty read; beyond it is out of range.
    assert!(block_on(log.read(4, 100)).unwrap().bytes.is_empty());
    assert!(matches!(
        block_on(log.read(5, 100)),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // Reopen: same content.
    drop(log);
    let (log, report) = open(&dir);
    assert_eq!(report.log_end_offset, 4);
    assert_eq!(report.batches, 2);
    assert!(report.truncated.is_none());
    assert_eq!(read_all(&log), got);
}

#[test]
fn first_batch_is_returned_even_when_larger_than_max_bytes() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    let big = batch(1, 5000, 1);
    log.append(&big, 1).unwrap();
    log.append(&batch(1, 10, 2), 1).unwrap();
    block_on(log.flush()).unwrap();
    let r = block_on(log.read(0, 10)).unwrap();
    assert_eq!(r.bytes.len(), big.len());
    assert_eq!(r.next_offset, 1);
    let r = block_on(log.read(0, big.len() + 200)).unwrap();
    assert_eq!(r.next_offset, 2);
}

#[test]
fn rolls_on_size_and_term() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    for i in 0..6 {
        log.append(&batch(1, 5000, i), 1).unwrap();
    }
    log.append(&batch(1, 10, 0), 2).unwrap();
    block_on(log.flush()).unwrap();
    let names: Vec<String> = log.segments().map(|s| s.name().to_string()).collect();
    assert_eq!(
        names,
        [
            "00000000000000000000-1.log",
            "00000000000000000003-1.log",
            "00000000000000000006-2.log"
        ]
    );
    // A read stops at the segment end.
    let r = block_on(log.read(1, usize::MAX)).unwrap();
    assert_eq!((r.base_offset, r.next_offset), (1, 3));
}

#[test]
fn group_commit_coalesces_waiters_into_one_fdatasync() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    let mut waiters = Vec::new();
    for i in 0..10 {
        let a = log.append(&batch(1, 50, i), 1).unwrap();
        waiters.push(log.wait_durable(a.last_offset + 1));
    }
    assert!(waiters.iter().all(|w| w.try_result().is_none()));
    let syncs = dir.fdatasyncs();
    block_on(log.flush()).unwrap();
    assert_eq!(dir.fdatasyncs() - syncs, 1);
    for w in waiters {
        assert_eq!(block_on(w), Ok(()));
    }

    // Appends while a flush is in flight wait for the next one.
    let early = log.append(&batch(1, 50, 1), 1).unwrap();
    let w_early = log.wait_durable(early.last_offset + 1);
    let job = log.start_flush().unwrap().unwrap();
    assert!(matches!(log.start_flush(), Err(LogError::FlushInFlight)));
    let late = log.append(&batch(1, 50, 2), 1).unwrap();
    let w_late = log.wait_durable(late.last_offset + 1);
    let written = block_on(job.write());
    let written = log.finish_write(written).unwrap();
    assert_eq!(log.stable_offset(), late.base_offset);
    let synced = block_on(written.sync());
    assert_eq!(log.finish_sync(synced).unwrap(), late.base_offset);
    assert_eq!(w_early.try_result(), Some(Ok(())));
    assert_eq!(w_late.try_result(), None);
    block_on(log.flush()).unwrap();
    assert_eq!(block_on(w_late), Ok(()));
    assert_eq!(log.waiter_count(), 0);
    // Already durable, or beyond the end.
    assert_eq!(log.wait_durable(1).try_result(), Some(Ok(())));
    assert!(matches!(
        log.wait_durable(1000).try_result(),
        Some(Err(DurableError::BeyondEnd { .. }))
    ));
}

#[test]
fn write_failure_fails_the_log_and_its_waiters() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    let a = log.append(&batch(1, 50, 1), 1).unwrap();
    let w = log.wait_durable(a.last_offset + 1);
    dir.fail_next_write(std::io::ErrorKind::Other);
    assert!(matches!(
        block_on(log.flush()),
        Err(LogError::Io { op: "write", .. })
    ));
    assert!(matches!(w.try_result(), Some(Err(DurableError::Failed(_)))));
    assert!(matches!(
        log.append(&batch(1, 50, 1), 1),
        Err(LogError::Failed(_))
    ));
}

#[test]
fn suffix_truncation() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    for i in 0..8 {
        log.append(&batch(2, 3000, i), 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    let w = log.wait_durable(16);
    assert_eq!(w.try_result(), Some(Ok(())));
    log.append(&batch(1, 10, 0), 1).unwrap();
    let pending = log.wait_durable(17);
    assert!(matches!(
        block_on(log.truncate_suffix(4, 6)),
        Err(LogError::BelowFloor {
            offset: 4,
            floor: 6
        })
    ));
    assert!(matches!(
        block_on(log.truncate_suffix(5, 0)),
        Err(LogError::NotBatchBoundary { offset: 5 })
    ));
    block_on(log.truncate_suffix(6, 0)).unwrap();
    assert_eq!(log.log_end_offset(), 6);
    assert_eq!(log.committed_offset(), 6);
    assert!(matches!(
        pending.try_result(),
        Some(Err(DurableError::Truncated {
            awaited: 17,
            log_end: 6
        }))
    ));
    // The truncation is durable: a crash right away keeps it.
    dir.crash(CrashMode::DropUnsynced);
    let (mut log, report) = open(&dir);
    assert_eq!(report.log_end_offset, 6);
    assert!(report.truncated.is_none());
    // New appends continue at the cut, in a new term.
    let a = log.append(&batch(1, 10, 0), 2).unwrap();
    assert_eq!(a.base_offset, 6);
    block_on(log.flush()).unwrap();
    // Truncating everything keeps an empty first segment, so the end survives restarts.
    block_on(log.truncate_suffix(0, 0)).unwrap();
    drop(log);
    let (log, _) = open(&dir);
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn prefix_truncation_deletes_whole_segments() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    for i in 0..10 {
        log.append(&batch(1, 5000, i), 1).unwrap();
    }
    assert!(matches!(
        block_on(log.truncate_prefix(4)),
        Err(LogError::BeyondCommitted { .. })
    ));
    block_on(log.flush()).unwrap();
    block_on(log.truncate_prefix(4)).unwrap();
    assert_eq!(log.log_start_offset(), 4);
    assert_eq!(log.segments().next().unwrap().base_offset(), 3);
    assert!(matches!(
        block_on(log.read(3, 100)),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let r = block_on(log.read(4, 1)).unwrap();
    assert_eq!(r.base_offset, 4);
    drop(log);
    let (_, report) = open(&dir);
    // Not persisted: the log restarts at its first surviving batch.
    assert_eq!(report.log_start_offset, 3);
}

/// Nine 1-record batches of one size in three segments; the second segment is left without
/// index files and checkpoint, so recovery scans it like one a crash left unindexed.
fn three_segments_second_unindexed(dir: &FaultyDir) -> (Vec<String>, u64, u64) {
    let (mut log, _) = open(dir);
    for i in 0..9 {
        log.append(&batch(1, 5000, i), 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    let names: Vec<String> = log.segments().map(|s| s.name().to_string()).collect();
    assert_eq!(names.len(), 3);
    let len = batch(1, 5000, 0).len() as u64;
    let second_base = log.segments().nth(1).unwrap().base_offset();
    drop(log);
    for n in [
        manifest::FILE.to_string(),
        names[1].replace(".log", ".index"),
    ] {
        block_on(dir.remove(&n)).unwrap();
    }
    (names, len, second_base)
}

#[test]
fn recovery_keeps_a_damaged_batch_inside_the_data_and_reads_refuse_it() {
    let dir = FaultyDir::new(1);
    let (names, len, second_base) = three_segments_second_unindexed(&dir);
    // Flip a byte inside the second batch of the second segment: a valid batch follows, so
    // this is damage inside the data, not a torn end. Nothing is cut.
    flip(&dir, &names[1], len as usize + 100);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    assert!(report.deleted_segments.is_empty());
    let bad = second_base + 1;
    assert_eq!(report.damaged_batches.len(), 1);
    let d = &report.damaged_batches[0];
    assert_eq!(
        (d.segment.as_str(), d.pos, d.offset),
        (names[1].as_str(), len, bad)
    );
    assert_eq!(log.log_end_offset(), 9);
    // Reported once to the owner (at open), whatever reads run into it later.
    assert_eq!(log.take_corruptions(), report.damaged_batches);
    // Served up to it, then refused, then served again after it.
    let r = block_on(log.read(second_base, usize::MAX)).unwrap();
    assert_eq!((r.base_offset, r.next_offset), (second_base, bad));
    assert_corrupt(block_on(log.read(bad, usize::MAX)), &names[1], len, bad);
    let r = block_on(log.read(bad + 1, usize::MAX)).unwrap();
    assert_eq!((r.base_offset, r.next_offset), (bad + 1, second_base + 3));
    assert!(log.take_corruptions().is_empty());
    assert_eq!(log.corrupt_batches(), 1);
    // Recovering again keeps it (and finds it again).
    drop(log);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none());
    assert_eq!(report.damaged_batches.len(), 1);
    assert_eq!(log.log_end_offset(), 9);
}

#[test]
fn recovery_cuts_at_a_damaged_batch_header_and_deletes_later_segments() {
    let dir = FaultyDir::new(1);
    let (names, len, second_base) = three_segments_second_unindexed(&dir);
    // Damaged framing (the length field) cannot be stepped over: treated as the end.
    flip(&dir, &names[1], len as usize + 9);
    let (log, report) = open(&dir);
    let t = report.truncated.unwrap();
    assert_eq!(t.segment, names[1]);
    assert_eq!(t.file_pos, len);
    assert!(matches!(
        t.reason,
        CorruptTail::Batch(BatchError::BatchLength { .. })
    ));
    assert_eq!(report.deleted_segments, vec![names[2].clone()]);
    assert_eq!(log.log_end_offset(), second_base + 1);
    assert_eq!(dir.contents(&names[1]).unwrap().len() as u64, len);
    assert!(dir.contents(&names[2]).is_none());
    assert!(!dir.exists(&names[2].replace(".log", ".index")));
    assert_eq!(read_all(&log).len(), 4);
    // Recovering again finds a clean log.
    drop(log);
    let (_, report) = open(&dir);
    assert!(report.truncated.is_none());
}

#[test]
fn recovery_reports_a_torn_tail() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    log.append(&batch(1, 100, 1), 1).unwrap();
    block_on(log.flush()).unwrap();
    log.append(&batch(1, 3000, 2), 1).unwrap();
    let job = log.start_flush().unwrap().unwrap();
    let w = block_on(job.write());
    log.finish_write(w).unwrap();
    drop(log);
    let name = "00000000000000000000-1.log";
    let full = dir.contents(name).unwrap();
    // Tear the second batch: keep 200 of its bytes.
    let first_len = batch(1, 100, 1).len();
    let mut torn = full[..first_len + 200].to_vec();
    torn.resize(4096, 0);
    dir.corrupt(name, 0, &torn);
    let (log, report) = open(&dir);
    let t = report.truncated.unwrap();
    assert_eq!(t.file_pos, first_len as u64);
    // The page's zero padding is inside the batch's claimed length, so the CRC catches it.
    assert!(matches!(
        t.reason,
        CorruptTail::Batch(BatchError::Crc { .. })
    ));
    assert_eq!(log.log_end_offset(), 1);
}

#[test]
fn stray_files_and_duplicate_bases() {
    let dir = FaultyDir::new(1);
    block_on(dir.open("notes.txt")).unwrap();
    let (_, report) = open(&dir);
    assert_eq!(report.ignored_files, vec!["notes.txt".to_string()]);
    block_on(dir.open("00000000000000000000-1.log")).unwrap();
    block_on(dir.open("00000000000000000000-2.log")).unwrap();
    assert!(matches!(
        block_on(PartitionLog::open(dir.clone(), cfg())),
        Err(LogError::DuplicateSegment { base: 0, .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Disk full.

fn names_in(dir: &FaultyDir) -> Vec<String> {
    block_on(dir.list()).unwrap()
}

#[test]
fn disk_full_refuses_appends_keeps_acknowledged_data_and_recovers_by_itself() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    let mut want = Vec::new();
    for i in 0..3 {
        let b = batch(1, 700, i);
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    assert_eq!(block_on(log.flush()).unwrap(), 3);
    // The disk fills up: not one more byte fits.
    dir.set_capacity(Some(dir.used_bytes()));
    let mut waiters = Vec::new();
    for i in 3..6 {
        let b = batch(1, 3000, i);
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
        waiters.push(log.wait_durable(a.last_offset + 1));
    }
    let e = block_on(log.flush()).unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert!(log.disk_full().is_some());
    // Appends are refused with the distinct error; nothing acknowledged moved.
    assert!(matches!(
        log.append(&batch(1, 10, 9), 1),
        Err(LogError::DiskFull(_))
    ));
    assert_eq!(log.committed_offset(), 3);
    assert_eq!(log.stable_offset(), 3);
    assert!(waiters.iter().all(|w| w.try_result().is_none()));
    assert!(log.unwritten_bytes() > 0);
    assert_eq!(read_all(&log), want[..3]);
    // Retrying while still full fails the same way, harmlessly.
    assert!(block_on(log.flush()).unwrap_err().is_disk_full());
    // Space comes back: the next flush writes the kept bytes by itself.
    dir.set_capacity(None);
    assert_eq!(block_on(log.flush()).unwrap(), 6);
    assert!(log.disk_full().is_none());
    for w in waiters {
        assert_eq!(block_on(w), Ok(()));
    }
    log.append(&batch(1, 10, 9), 1).unwrap();
    block_on(log.flush()).unwrap();
    assert_eq!(read_all(&log)[..6], want[..]);
    // And it is all durable.
    drop(log);
    dir.crash(CrashMode::DropUnsynced);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none());
    assert_eq!(log.log_end_offset(), 7);
    assert_eq!(read_all(&log)[..6], want[..]);
}

#[test]
fn disk_full_mid_job_retries_every_segment_of_it() {
    let dir = FaultyDir::new(2);
    let (mut log, _) = open(&dir);
    log.append(&batch(1, 100, 0), 1).unwrap();
    block_on(log.flush()).unwrap();
    // Three segments' worth in one job; room for about one more page.
    let mut want = vec![block_on(log.read(0, 1 << 20)).unwrap().bytes];
    for i in 1..8 {
        let b = batch(1, 5000, i);
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    assert!(log.segments().count() >= 3);
    dir.set_capacity(Some(dir.used_bytes() + 9000));
    let writes = dir.writes();
    assert!(block_on(log.flush()).unwrap_err().is_disk_full());
    assert!(dir.writes() > writes, "part of the job was written");
    // A crash now keeps what was durable, nothing else, and the log still works.
    dir.set_capacity(None);
    assert_eq!(block_on(log.flush()).unwrap(), 8);
    assert_eq!(read_all(&log), want);
    block_on(log.close()).unwrap();
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none());
    assert_eq!(read_all(&log), want);
}

#[test]
fn disk_full_then_crash_loses_only_what_was_not_acknowledged() {
    let dir = FaultyDir::new(3);
    let (mut log, _) = open(&dir);
    for i in 0..4 {
        log.append(&batch(1, 2000, i), 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    dir.set_capacity(Some(dir.used_bytes() + 100));
    for i in 4..8 {
        log.append(&batch(1, 2000, i), 1).unwrap();
    }
    let w = log.wait_durable(8);
    assert!(block_on(log.flush()).unwrap_err().is_disk_full());
    drop(log);
    dir.crash(CrashMode::TearLastWrite);
    dir.set_capacity(None);
    let (log, _) = open(&dir);
    assert!(log.log_end_offset() >= 4);
    assert!(w.try_result().is_none(), "never acknowledged");
    assert_eq!(read_all(&log).len() as u64, log.log_end_offset());
}

#[test]
fn disk_full_when_creating_a_segment_and_truncation_while_full() {
    let dir = FaultyDir::new(4);
    let (mut log, _) = open(&dir);
    for i in 0..3 {
        log.append(&batch(1, 5000, i), 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    dir.set_capacity(Some(dir.used_bytes()));
    // The next batch rolls: the new segment's file cannot be created.
    log.append(&batch(1, 5000, 3), 1).unwrap();
    assert!(log.segments().count() >= 2);
    assert!(block_on(log.flush()).unwrap_err().is_disk_full());
    // A Raft-style truncation of the unwritten batch lifts the refusal.
    block_on(log.truncate_suffix(3, 0)).unwrap();
    assert!(log.disk_full().is_none());
    log.append(&batch(1, 10, 4), 1).unwrap();
    dir.set_capacity(None);
    assert_eq!(block_on(log.flush()).unwrap(), 4);
    drop(log);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(log.log_end_offset(), 4);
}

// ---------------------------------------------------------------------------------------
// Sparse index, time index, memory.

#[test]
fn reads_walk_at_most_about_one_index_interval() {
    let dir = FaultyDir::new(5);
    let config = LogConfig {
        segment_bytes: 1 << 20,
        index_interval_bytes: 4096,
        ..cfg()
    };
    let (mut log, _) = block_on(PartitionLog::open(dir.clone(), config.clone())).unwrap();
    let mut want = Vec::new();
    for i in 0..2000u32 {
        let b = batch(1, 200, i as u8);
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    block_on(log.flush()).unwrap();
    let seg = log.segments().next().unwrap();
    assert_eq!(log.segments().count(), 1);
    // One entry per 4 KiB, not one per batch.
    let size = seg.size();
    assert!(
        seg.index_entries() as u64 <= size / 4096 + 1,
        "{}",
        seg.index_entries()
    );
    assert!(seg.index_entries() > 10);
    for at in [0u64, 1, 777, 1500, 1999] {
        let before = dir.read_bytes();
        let r = block_on(log.read(at, 1)).unwrap();
        assert_eq!(r.bytes, want[at as usize]);
        let read = dir.read_bytes() - before;
        assert!(
            read <= 3 * 4096 + 2 * 1024,
            "offset {at}: read {read} bytes"
        );
    }
}

#[test]
fn find_timestamp_returns_the_first_batch_at_or_after() {
    let dir = FaultyDir::new(6);
    let (mut log, _) = open(&dir);
    // Timestamps per batch (max = ts + records - 1): not monotonic.
    let ts = [100i64, 50, 300, 200, 400, 400, 350, 900, 10, 1000];
    for (i, t) in ts.iter().enumerate() {
        let b = RecordBatch::validate(build_batch_ts(1, 3000, i as u8, *t), 1 << 20).unwrap();
        log.append(&b, 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    assert!(log.segments().count() > 1);
    let find = |log: &PartitionLog<FaultyDir>, t: i64, below: u64| {
        block_on(log.find_timestamp(t, below))
            .unwrap()
            .map(|r| r.base_offset)
    };
    assert_eq!(find(&log, 0, 10), Some(0));
    assert_eq!(find(&log, 100, 10), Some(0));
    assert_eq!(find(&log, 101, 10), Some(2));
    assert_eq!(find(&log, 301, 10), Some(4));
    assert_eq!(find(&log, 401, 10), Some(7));
    assert_eq!(find(&log, 901, 10), Some(9));
    assert_eq!(find(&log, 901, 9), None);
    assert_eq!(find(&log, 1001, 10), None);
    assert_eq!(log.max_timestamp(), 1000);
    // Below the log start nothing is found.
    block_on(log.truncate_prefix(3)).unwrap();
    assert_eq!(find(&log, 0, 10), Some(3));
    assert_eq!(find(&log, 301, 10), Some(4));
    // After a clean restart the closed segments answer from their loaded time index.
    block_on(log.close()).unwrap();
    let (mut log, _) = open(&dir);
    block_on(log.truncate_prefix(3)).unwrap();
    assert_eq!(find(&log, 401, 10), Some(7));
    assert_eq!(find(&log, 0, 10), Some(3));
}

#[test]
fn closed_segments_keep_only_their_sparse_index_and_idle_tails_are_small() {
    let dir = FaultyDir::new(7);
    let config = LogConfig {
        write_chunk_bytes: 128 * 1024,
        ..cfg()
    };
    let (mut log, _) = block_on(PartitionLog::open(dir.clone(), config.clone())).unwrap();
    for i in 0..600u32 {
        log.append(&batch(1, 100, i as u8), 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    let closed: Vec<_> = log.segments().filter(|s| s.is_sealed()).collect();
    assert!(closed.len() >= 4);
    for s in &closed {
        // ~16 KiB per segment, one entry per 1 KiB: ~16 entries of 16 bytes, no buffers.
        assert!(s.index_entries() <= 17, "{}", s.index_entries());
        assert!(
            s.memory_bytes() < 1024,
            "closed segment holds {} bytes",
            s.memory_bytes()
        );
        // Complete and durable: no descriptor kept (reads reopen it).
        assert!(!s.file_open(), "{} keeps its file open", s.name());
    }
    // The idle active segment holds its tail page on the heap, not a 128 KiB chunk.
    let active = log.segments().last().unwrap();
    assert!(
        active.memory_bytes() < 4096 + 1024,
        "{}",
        active.memory_bytes()
    );
    // After a clean restart, closed segments hold nothing until read.
    block_on(log.close()).unwrap();
    let (log, _) = block_on(PartitionLog::open(dir.clone(), config)).unwrap();
    let first = log.segments().next().unwrap();
    assert!(!first.index_loaded() && !first.file_open());
    assert!(log.memory_bytes() < 16 * 1024, "{}", log.memory_bytes());
    block_on(log.read(0, 1)).unwrap();
    let first = log.segments().next().unwrap();
    assert!(first.index_loaded() && first.file_open());
}

#[test]
fn index_files_are_written_on_roll_and_rebuilt_when_damaged() {
    let dir = FaultyDir::new(8);
    let (mut log, _) = open(&dir);
    let mut want = Vec::new();
    for i in 0..9 {
        let b = batch(2, 2500, i);
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    block_on(log.flush()).unwrap();
    let names: Vec<String> = log.segments().map(|s| s.name().to_string()).collect();
    let files = names_in(&dir);
    for n in &names[..names.len() - 1] {
        assert!(files.contains(&n.replace(".log", ".index")), "{files:?}");
        assert!(files.contains(&n.replace(".log", ".timeindex")));
    }
    assert!(files.contains(&manifest::FILE.to_string()));
    // The active segment's index is written by a clean close only.
    assert!(!files.contains(&names.last().unwrap().replace(".log", ".index")));
    drop(log);
    // Damage the first segment's index: the first read rebuilds it from the segment.
    let ix = names[0].replace(".log", ".index");
    dir.corrupt(&ix, 10, &[0xEE]);
    let (log, report) = open(&dir);
    assert_eq!(report.trusted_segments, names.len() - 1);
    assert_eq!(read_all(&log), want);
}

// ---------------------------------------------------------------------------------------
// Fast restart.

fn fill_segments(log: &mut PartitionLog<FaultyDir>, batches: u8) -> Vec<Bytes> {
    let mut want = Vec::new();
    for i in 0..batches {
        let b = RecordBatch::validate(
            build_batch_ts(1, 3000, i, T0 + i64::from(i) * 1000),
            1 << 20,
        )
        .unwrap();
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    block_on(log.flush()).unwrap();
    want
}

#[test]
fn clean_open_reads_no_closed_segment() {
    let dir = FaultyDir::new(9);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 40);
    let names: Vec<String> = log.segments().map(|s| s.name().to_string()).collect();
    assert!(names.len() >= 8);
    block_on(log.close()).unwrap();
    let reads = dir.reads();
    let (log, report) = open(&dir);
    assert_eq!(report.trusted_segments, names.len() - 1);
    assert_eq!(report.batches, 0, "nothing rescanned: {report:?}");
    for n in &names {
        let r = dir.reads_of(n);
        if n == names.last().unwrap() {
            // The active segment: its last batch's header and the tail page.
            assert!(r <= 2, "{n}: {r} reads");
        } else {
            assert_eq!(r, 0, "{n} was read");
        }
    }
    // The checkpoint, then the active segment: its last batch's header and its tail page.
    assert!(dir.reads() - reads <= 3, "{} reads", dir.reads() - reads);
    assert_eq!(read_all(&log), want);
    assert_eq!(log.max_timestamp(), T0 + 39_000);
}

#[test]
fn open_without_checkpoint_reads_index_files_not_segments() {
    let dir = FaultyDir::new(10);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 30);
    let names: Vec<String> = log.segments().map(|s| s.name().to_string()).collect();
    block_on(log.close()).unwrap();
    block_on(dir.remove(manifest::FILE)).unwrap();
    let (log, report) = open(&dir);
    assert_eq!(report.indexed_segments, names.len() - 1);
    for n in &names[..names.len() - 1] {
        // One read of the last batch's header, to check the index belongs to the file.
        assert!(dir.reads_of(n) <= 1, "{n}");
    }
    assert_eq!(read_all(&log), want);
}

#[test]
fn crash_after_restart_scans_only_the_tail_and_cuts_a_torn_write() {
    let dir = FaultyDir::new(11);
    let (mut log, _) = open(&dir);
    let mut want = fill_segments(&mut log, 30);
    let names: Vec<String> = log.segments().map(|s| s.name().to_string()).collect();
    block_on(log.close()).unwrap();
    let (mut log, _) = open(&dir);
    // More durable data, then a write torn by the crash.
    for i in 0..2 {
        let b = batch(1, 100, 100 + i);
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    block_on(log.flush()).unwrap();
    let end = log.log_end_offset();
    let pos = log.segments().last().unwrap().size() as usize;
    log.append(&batch(1, 400, 7), 1).unwrap();
    assert_eq!(log.segments().count(), names.len(), "no roll");
    let job = log.start_flush().unwrap().unwrap();
    let w = block_on(job.write());
    log.finish_write(w).unwrap();
    drop(log);
    // The crash keeps only 200 bytes of the unacknowledged batch.
    let active = names.last().unwrap().clone();
    let full = dir.contents(&active).unwrap();
    dir.crash(CrashMode::DropUnsynced);
    let mut torn = full[..pos + 200].to_vec();
    torn.resize(torn.len().next_multiple_of(4096), 0);
    dir.corrupt(&active, 0, &torn);
    let (log, report) = open(&dir);
    for n in &names[..names.len() - 1] {
        assert_eq!(dir.reads_of(n), 0, "closed segment {n} read after a crash");
    }
    let t = report.truncated.clone().expect("the torn batch is cut");
    assert_eq!(t.segment, active);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(
        report.batches, 2,
        "only the batches after the checkpoint: {report:?}"
    );
    assert_eq!(read_all(&log), want);
}

#[test]
fn suffix_truncation_into_a_closed_segment_retires_the_checkpoint() {
    let dir = FaultyDir::new(12);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 20);
    block_on(log.close()).unwrap();
    let (mut log, _) = open(&dir);
    // Cut into the second segment, append other data there, roll on, crash.
    let second = log.segments().nth(1).unwrap().base_offset();
    block_on(log.truncate_suffix(second + 1, 0)).unwrap();
    assert!(!dir.exists(manifest::FILE));
    let mut want: Vec<Bytes> = want[..second as usize + 1].to_vec();
    for i in 0..8 {
        let b = batch(1, 4000, 50 + i);
        let a = log.append(&b, 2).unwrap();
        want.push(b.stamped(a.base_offset as i64, 2).into_bytes());
    }
    block_on(log.flush()).unwrap();
    drop(log);
    dir.crash(CrashMode::DropUnsynced);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(read_all(&log), want);
}

// ---------------------------------------------------------------------------------------
// Rolling by age and retention.

#[test]
fn rolls_by_age_from_the_first_batch_timestamp() {
    let dir = FaultyDir::new(13);
    let config = LogConfig {
        segment_ms: Some(60_000),
        ..cfg()
    };
    let (mut log, _) = block_on(PartitionLog::open(dir.clone(), config)).unwrap();
    assert!(!log.roll_if_due(T0));
    let b = RecordBatch::validate(build_batch_ts(1, 10, 1, T0), 1 << 20).unwrap();
    log.append(&b, 1).unwrap();
    assert!(!log.roll_if_due(T0 + 59_999));
    assert!(log.roll_if_due(T0 + 60_000));
    assert!(!log.roll_if_due(T0 + 120_000), "the new segment is empty");
    assert_eq!(log.segments().count(), 2);
    // The flush creates the new (empty) segment's file and writes the rolled one's index.
    block_on(log.flush()).unwrap();
    let files = names_in(&dir);
    assert!(
        files.contains(&"00000000000000000001-1.log".to_string()),
        "{files:?}"
    );
    assert!(files.contains(&"00000000000000000000-1.index".to_string()));
    drop(log);
    let (log, _) = open(&dir);
    assert_eq!(log.log_end_offset(), 1);
    assert_eq!(log.segments().count(), 2);
}

#[test]
fn retention_by_time_and_by_size_deletes_whole_closed_segments() {
    let dir = FaultyDir::new(14);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 30);
    let segs: Vec<(String, u64, i64, u64)> = log
        .segments()
        .map(|s| {
            (
                s.name().to_string(),
                s.base_offset(),
                s.max_timestamp(),
                s.size(),
            )
        })
        .collect();
    assert!(segs.len() >= 6);
    // Time: every segment whose newest batch is older than now - retention goes.
    let now = segs[2].2 + 1 + 10_000;
    let out = log.apply_retention(now, Some(10_000), None);
    assert_eq!(out.by_time, 3);
    assert_eq!(out.by_size, 0);
    assert_eq!(out.log_start_offset, segs[3].1);
    assert_eq!(log.log_start_offset(), segs[3].1);
    let d = out.deletion.unwrap();
    assert_eq!(d.segment_names(), [&segs[0].0, &segs[1].0, &segs[2].0]);
    // Detached: out of range at once, files still there until the deletion runs.
    assert!(matches!(
        block_on(log.read(0, 1)),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert!(dir.exists(&segs[0].0));
    assert_eq!(block_on(d.run()).unwrap(), 3);
    assert!(!dir.exists(&segs[0].0));
    assert!(!dir.exists(&segs[0].0.replace(".log", ".index")));
    // Size: keep at least `retention_bytes`; never the active segment.
    let total = log.size_bytes();
    let out = log.apply_retention(now, None, Some(total - segs[3].3 - segs[4].3));
    assert_eq!(out.by_size, 2);
    block_on(out.deletion.unwrap().run()).unwrap();
    let out = log.apply_retention(i64::MAX, Some(0), Some(0));
    if let Some(d) = out.deletion {
        block_on(d.run()).unwrap();
    }
    assert_eq!(log.segments().count(), 1, "the active segment stays");
    let start = log.log_start_offset() as usize;
    assert_eq!(read_all(&log), want[start..]);
    // After a restart the log starts at the first surviving segment.
    block_on(log.close()).unwrap();
    let (log, report) = open(&dir);
    assert_eq!(report.log_start_offset, start as u64);
    assert_eq!(read_all(&log), want[start..]);
}

#[test]
fn retention_runs_while_appends_and_flushes_go_on() {
    let dir = FaultyDir::new(15);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 20);
    let closed = log.segments().count() - 1;
    let out = log.apply_retention(i64::MAX, Some(1), None);
    let deletion = out.deletion.unwrap();
    // The log is free while the files go: append, flush, read.
    let mut more = Vec::new();
    for i in 0..6 {
        let b = batch(1, 3000, 80 + i);
        let a = log.append(&b, 1).unwrap();
        more.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    let job = log.start_flush().unwrap().unwrap();
    let n = block_on(deletion.run()).unwrap();
    assert_eq!(n, closed);
    let w = block_on(job.write());
    let w = log.finish_write(w).unwrap();
    log.finish_sync(block_on(w.sync())).unwrap();
    let start = log.log_start_offset() as usize;
    let mut all = want[start..].to_vec();
    all.extend(more);
    assert_eq!(read_all(&log), all);
}

#[test]
fn retention_keeps_a_segment_whose_successor_has_no_file() {
    let dir = FaultyDir::new(16);
    let (mut log, _) = open(&dir);
    fill_segments(&mut log, 12);
    let before = log.segments().count();
    assert!(before >= 3);
    // A roll whose new segment is not flushed yet.
    log.append(&batch(1, 15_000, 1), 1).unwrap();
    assert_eq!(log.segments().count(), before + 1);
    let out = log.apply_retention(i64::MAX, Some(0), None);
    let deleted = out.deletion.map_or(0, |d| d.len());
    assert_eq!(deleted, before - 1, "the last flushed segment stays");
    // What stays is the last flushed segment, then the unflushed one.
    assert_eq!(log.segments().count(), 2);
    assert!(log.segments().next().unwrap().next_offset() <= log.committed_offset());
}

// ---------------------------------------------------------------------------------------
// Batch cache.

#[test]
fn batch_cache_serves_appended_and_read_batches_without_io() {
    let dir = FaultyDir::new(17);
    let (mut log, _) = open(&dir);
    let cache = BatchCache::new(64 * 1024);
    log.attach_cache(&cache);
    let mut want = Vec::new();
    for i in 0..12 {
        let b = batch(1, 2000, i);
        let a = log.append(&b, 1).unwrap();
        want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    }
    // Not readable before it is written, cached or not.
    assert!(block_on(log.read(0, 1 << 20)).unwrap().bytes.is_empty());
    block_on(log.flush()).unwrap();
    let reads = dir.reads();
    let plan = log.plan_read(3, 5000).unwrap();
    assert!(plan.is_cached());
    let r = block_on(plan.run()).unwrap();
    assert_eq!(dir.reads(), reads, "served from memory");
    assert_eq!(r.bytes, [want[3].clone(), want[4].clone()].concat());
    assert_eq!((r.base_offset, r.next_offset), (3, 5));
    assert_eq!(read_all(&log), want);
    let hits = cache.stats().hits;
    assert!(hits >= 2);
    // Evicted by other logs' traffic: a miss reads the file and refills the cache.
    let (mut other, _) = open(&FaultyDir::new(18));
    other.attach_cache(&cache);
    for i in 0..40 {
        other.append(&batch(1, 2000, i), 1).unwrap();
    }
    assert!(cache.stats().evicted_bytes > 0);
    let misses = cache.stats().misses;
    assert_eq!(block_on(log.read(0, 1)).unwrap().bytes, want[0]);
    assert_eq!(cache.stats().misses, misses + 1);
    assert!(log.plan_read(0, 1).unwrap().is_cached());
    // Truncation drops what it removes.
    block_on(log.truncate_suffix(6, 0)).unwrap();
    let b = batch(1, 10, 99);
    log.append(&b, 2).unwrap();
    block_on(log.flush()).unwrap();
    let r = block_on(log.read(6, 1 << 20)).unwrap();
    assert_eq!(r.bytes, b.stamped(6, 2).into_bytes());
    assert!(cache.stats().resident_bytes <= cache.budget_bytes());
}

// ---------------------------------------------------------------------------------------
// Model-based property test.

const T0: i64 = 1_700_000_000_000;

fn model_cfg() -> LogConfig {
    LogConfig {
        segment_ms: Some(60_000),
        ..cfg()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `ts_step` moves the producer's clock (sometimes backwards) before the batch.
    Append {
        records: usize,
        value_len: usize,
        ts_step: i64,
    },
    NewTerm,
    Flush,
    TruncateSuffix {
        pick: usize,
    },
    TruncatePrefix {
        pick: usize,
    },
    /// DeleteRecords-style: move the start without I/O, reclaim the files later.
    AdvanceStart {
        pick: usize,
    },
    Reclaim,
    /// Retention by time (`ms`) or size; the deletion runs at a later op.
    Retention {
        ms: Option<u64>,
        bytes: Option<u64>,
    },
    RunDeletion,
    /// The wall clock moves; the active segment may roll by age.
    Tick {
        ms: i64,
    },
    Read {
        pick: usize,
        max_bytes: usize,
    },
    FindTimestamp {
        pick: usize,
        delta: i64,
    },
    /// The disk fills up: only `headroom` more bytes fit.
    DiskFull {
        headroom: u64,
    },
    DiskFree,
    Crash {
        tear: bool,
    },
    CrashMidFlush {
        tear: bool,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (1usize..4, prop_oneof![0usize..40, 40usize..2000, 3000usize..9000], -5_000i64..20_000)
            .prop_map(|(records, value_len, ts_step)| Op::Append { records, value_len, ts_step }),
        1 => Just(Op::NewTerm),
        4 => Just(Op::Flush),
        1 => any::<usize>().prop_map(|pick| Op::TruncateSuffix { pick }),
        1 => any::<usize>().prop_map(|pick| Op::TruncatePrefix { pick }),
        1 => any::<usize>().prop_map(|pick| Op::AdvanceStart { pick }),
        1 => Just(Op::Reclaim),
        1 => (proptest::option::of(0u64..200_000), proptest::option::of(0u64..60_000))
            .prop_map(|(ms, bytes)| Op::Retention { ms, bytes }),
        1 => Just(Op::RunDeletion),
        1 => (0i64..90_000).prop_map(|ms| Op::Tick { ms }),
        3 => (any::<usize>(), 1usize..30_000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        2 => (any::<usize>(), -3i64..3).prop_map(|(pick, delta)| Op::FindTimestamp { pick, delta }),
        1 => (0u64..20_000).prop_map(|headroom| Op::DiskFull { headroom }),
        1 => Just(Op::DiskFree),
        1 => any::<bool>().prop_map(|tear| Op::Crash { tear }),
        1 => any::<bool>().prop_map(|tear| Op::CrashMidFlush { tear }),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    base: u64,
    last: u64,
    max_ts: i64,
    bytes: Bytes,
}

/// What the log must hold: every entry ever appended and not truncated, and how far they are
/// written and durable.
struct Model {
    entries: Vec<Entry>,
    /// The log start now (moved by the owner and by retention).
    start: u64,
    /// The log start the owner persists and re-applies after a restart (DeleteRecords).
    kept_start: u64,
    stable: u64,
    committed: u64,
    term: u64,
    /// The last flush hit a full disk: appends must be refused.
    disk_full: bool,
    now: i64,
    ts: i64,
}

impl Model {
    fn end(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.last + 1)
    }
}

fn check(log: &PartitionLog<FaultyDir>, m: &Model) {
    assert_eq!(log.log_end_offset(), m.end());
    assert_eq!(log.log_start_offset(), m.start);
    assert_eq!(log.committed_offset(), m.committed);
    assert_eq!(log.stable_offset(), m.stable);
    assert_eq!(log.disk_full().is_some(), m.disk_full);
    // The segments follow on from one holding the start to the end, at batch boundaries.
    let segs: Vec<(u64, u64)> = log
        .segments()
        .map(|s| (s.base_offset(), s.next_offset()))
        .collect();
    for w in segs.windows(2) {
        assert_eq!(w[0].1, w[1].0, "segments do not follow on: {segs:?}");
    }
    match (segs.first(), segs.last()) {
        (Some(first), Some(last)) => {
            assert!(first.0 <= m.start, "{segs:?} start {}", m.start);
            assert_eq!(last.1, m.end());
        }
        _ => assert_eq!((m.start, m.end()), (0, 0)),
    }
    for (base, _) in &segs {
        assert!(
            *base == m.end() || m.entries.iter().any(|e| e.base == *base),
            "segment base {base} is not a batch boundary"
        );
    }
    // Every written batch from the start is served, byte for byte.
    let got = read_all(log);
    let want: Vec<Bytes> = m
        .entries
        .iter()
        .skip_while(|e| e.last < m.start)
        .take_while(|e| e.last < m.stable)
        .map(|e| e.bytes.clone())
        .collect();
    assert_eq!(got.len(), want.len(), "batches served from {}", m.start);
    assert!(got == want, "served bytes differ from the model");
}

/// After a crash: what survived must be a prefix of the model holding everything durable.
fn adopt_recovered(log: &mut PartitionLog<FaultyDir>, m: &mut Model) {
    let end = log.log_end_offset();
    assert!(
        end >= m.committed,
        "lost durable data: end {end} < committed {}",
        m.committed
    );
    let keep = m.entries.iter().take_while(|e| e.last < end).count();
    assert!(keep == m.entries.len() || m.entries[keep].base == end || keep == 0 && end == 0);
    m.entries.truncate(keep);
    assert_eq!(
        m.end(),
        end,
        "recovered end is not a batch boundary of the model"
    );
    // Retention's start is not persisted (the deleted files are); the owner re-applies the
    // start it keeps. Segments a deletion had not removed yet come back below it.
    let recovered_start = log.log_start_offset();
    assert!(
        recovered_start <= m.start.max(m.kept_start).min(end),
        "recovered start {recovered_start} is past the start {} (data lost)",
        m.start
    );
    block_on(log.truncate_prefix(m.kept_start.min(end))).unwrap();
    m.start = log.log_start_offset();
    assert!(m.start >= m.kept_start.min(end));
    m.committed = end;
    m.stable = end;
    m.disk_full = false;
}

fn pick_start(m: &Model, pick: usize) -> u64 {
    m.start + (pick as u64) % (m.committed - m.start + 1)
}

fn run_ops(seed: u64, ops: Vec<Op>) {
    let dir = FaultyDir::new(seed);
    let mut log = block_on(PartitionLog::open(dir.clone(), model_cfg()))
        .unwrap()
        .0;
    let reopen = |dir: &FaultyDir| {
        block_on(PartitionLog::open(dir.clone(), model_cfg()))
            .unwrap()
            .0
    };
    let mut m = Model {
        entries: Vec::new(),
        start: 0,
        kept_start: 0,
        stable: 0,
        committed: 0,
        term: 1,
        disk_full: false,
        now: T0,
        ts: T0,
    };
    let mut pending_deletion: Option<SegmentDeletion<FaultyDir>> = None;
    let mut value_seed = 0u8;
    for op in ops {
        match op {
            Op::Append {
                records,
                value_len,
                ts_step,
            } => {
                value_seed = value_seed.wrapping_add(1);
                m.ts += ts_step;
                let b = RecordBatch::validate(
                    build_batch_ts(records, value_len, value_seed, m.ts),
                    1 << 20,
                )
                .unwrap();
                match log.append(&b, m.term) {
                    Ok(a) => {
                        assert!(!m.disk_full, "append accepted while the disk is full");
                        assert_eq!(a.base_offset, m.end());
                        m.entries.push(Entry {
                            base: a.base_offset,
                            last: a.last_offset,
                            max_ts: b.header().max_timestamp,
                            bytes: b.stamped(a.base_offset as i64, m.term as i32).into_bytes(),
                        });
                    }
                    Err(LogError::DiskFull(_)) => assert!(m.disk_full),
                    Err(e) => panic!("append: {e}"),
                }
            }
            Op::NewTerm => m.term += 1,
            Op::Flush => match block_on(log.flush()) {
                Ok(c) => {
                    assert_eq!(c, m.end());
                    m.committed = m.end();
                    m.stable = m.end();
                    m.disk_full = false;
                }
                Err(LogError::DiskFull(_)) => m.disk_full = true,
                Err(e) => panic!("flush: {e}"),
            },
            Op::TruncateSuffix { pick } => {
                let mut cands: Vec<u64> = m
                    .entries
                    .iter()
                    .map(|e| e.base)
                    .filter(|&b| b >= m.start)
                    .collect();
                cands.push(m.end());
                let to = cands[pick % cands.len()];
                block_on(log.truncate_suffix(to, m.start)).unwrap();
                m.entries.retain(|e| e.base < to);
                m.committed = m.committed.min(to);
                m.stable = m.stable.min(to);
                // Nothing left waiting for space: appends resume.
                if m.stable == m.end() {
                    m.disk_full = false;
                }
            }
            Op::TruncatePrefix { pick } => {
                let to = pick_start(&m, pick);
                if let Some(d) = pending_deletion.take() {
                    block_on(d.run()).unwrap();
                }
                block_on(log.truncate_prefix(to)).unwrap();
                m.start = m.start.max(to);
                m.kept_start = m.kept_start.max(to);
            }
            Op::AdvanceStart { pick } => {
                let to = pick_start(&m, pick);
                log.advance_log_start(to).unwrap();
                m.start = m.start.max(to);
                m.kept_start = m.kept_start.max(to);
            }
            Op::Reclaim => {
                if pending_deletion.is_none() {
                    pending_deletion = log.detach_below_start();
                    // Whole segments only: the start does not move.
                    assert_eq!(log.log_start_offset(), m.start);
                }
            }
            Op::Retention { ms, bytes } => {
                if pending_deletion.is_none() {
                    let before = log.segments().count();
                    let active = log.segments().last().map(|s| s.base_offset());
                    let out = log.apply_retention(m.now, ms, bytes);
                    assert_eq!(out.log_start_offset, log.log_start_offset());
                    assert!(out.log_start_offset >= m.start);
                    assert!(out.log_start_offset <= m.committed);
                    let n = out.deletion.as_ref().map_or(0, |d| d.len());
                    assert_eq!(n, out.by_time + out.by_size);
                    assert_eq!(log.segments().count(), before - n);
                    assert_eq!(log.segments().last().map(|s| s.base_offset()), active);
                    if let Some(limit) = bytes {
                        // Only segments whose removal keeps at least `limit` bytes go by size.
                        if out.by_size > 0 {
                            assert!(log.size_bytes() >= limit);
                        }
                    }
                    m.start = out.log_start_offset;
                    pending_deletion = out.deletion;
                }
            }
            Op::RunDeletion => {
                if let Some(d) = pending_deletion.take() {
                    block_on(d.run()).unwrap();
                }
            }
            Op::Tick { ms } => {
                m.now += ms;
                log.roll_if_due(m.now);
            }
            Op::Read { pick, max_bytes } => {
                let at = m.start + (pick as u64) % (m.end() - m.start + 1);
                let r = block_on(log.read(at, max_bytes)).unwrap();
                let mut got = Vec::new();
                split_batches(&r.bytes, &mut got);
                let first = m.entries.iter().position(|e| e.last >= at);
                match first {
                    Some(i) if m.entries[i].last < m.stable => {
                        assert!(!got.is_empty(), "readable offset {at} returned nothing");
                        let want = &m.entries[i..i + got.len()];
                        for (g, w) in got.iter().zip(want) {
                            assert_eq!(g, &w.bytes);
                        }
                        assert_eq!(r.base_offset, m.entries[i].base);
                        let total: usize = got.iter().map(Bytes::len).sum();
                        assert!(got.len() == 1 || total <= max_bytes);
                        // Stopped for a reason: size, not yet written, or segment end.
                        if let Some(next) = m.entries.get(i + got.len()) {
                            assert_eq!(r.next_offset, next.base);
                            let why = total + next.bytes.len() > max_bytes
                                || next.last >= m.stable
                                || log.segments().any(|s| s.base_offset() == next.base);
                            assert!(why, "read stopped early at {}", next.base);
                        }
                    }
                    _ => assert!(got.is_empty()),
                }
            }
            Op::FindTimestamp { pick, delta } => {
                let ts = m
                    .entries
                    .get(pick % m.entries.len().max(1))
                    .map_or(m.ts, |e| e.max_ts)
                    + delta;
                let below = m.committed;
                let got = block_on(log.find_timestamp(ts, below)).unwrap();
                let want = m
                    .entries
                    .iter()
                    .filter(|e| e.last >= m.start && e.base < below)
                    .find(|e| e.max_ts >= ts);
                match (got, want) {
                    (None, None) => {}
                    (Some(g), Some(w)) => {
                        assert_eq!(g.base_offset, w.base, "timestamp {ts}");
                        assert_eq!(g.bytes, w.bytes);
                    }
                    (g, w) => panic!(
                        "timestamp {ts}: got {:?}, want {:?}",
                        g.map(|g| g.base_offset),
                        w.map(|w| w.base)
                    ),
                }
            }
            Op::DiskFull { headroom } => dir.set_capacity(Some(dir.used_bytes() + headroom)),
            Op::DiskFree => dir.set_capacity(None),
            Op::Crash { tear } => {
                drop(pending_deletion.take());
                drop(log);
                dir.crash(if tear {
                    CrashMode::TearLastWrite
                } else {
                    CrashMode::DropUnsynced
                });
                log = reopen(&dir);
                adopt_recovered(&mut log, &mut m);
            }
            Op::CrashMidFlush { tear } => {
                if let Some(job) = log.start_flush().unwrap() {
                    let w = block_on(job.write());
                    match log.finish_write(w) {
                        Ok(_) => {
                            m.stable = m.end();
                            m.disk_full = false;
                        }
                        Err(LogError::DiskFull(_)) => m.disk_full = true,
                        Err(e) => panic!("write: {e}"),
                    }
                    check(&log, &m);
                }
                drop(pending_deletion.take());
                drop(log);
                dir.crash(if tear {
                    CrashMode::TearLastWrite
                } else {
                    CrashMode::DropUnsynced
                });
                log = reopen(&dir);
                adopt_recovered(&mut log, &mut m);
            }
            Op::Restart => {
                if let Some(d) = pending_deletion.take() {
                    block_on(d.run()).unwrap();
                }
                if block_on(log.flush()).is_ok() {
                    m.committed = m.end();
                }
                // A full disk may fail the checkpoint writes: the next open copes.
                let _ = block_on(log.close());
                log = reopen(&dir);
                adopt_recovered(&mut log, &mut m);
            }
        }
        check(&log, &m);
    }
}

proptest! {
    // 256 cases by default (~1 s in debug); PROPTEST_CASES=n for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model_across_crashes(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..80)) {
        run_ops(seed, ops);
    }
}

// ---------------------------------------------------------------------------------------
// Real O_DIRECT files.

/// A scratch data directory for O_DIRECT tests — under target/ (on the real disk: O_DIRECT
/// needs a real filesystem, not tmpfs) — its sentinel (std I/O, before the executor), and an
/// executor to run everything else on.
fn dma_scratch(
    prefix: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    glommio::LocalExecutor,
) {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/storage-tests");
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .unwrap();
    let data_dir = tmp.path().to_path_buf();
    let sentinel = crate::dma::prepare_sentinel(&data_dir).unwrap();
    let ex = glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .unwrap();
    (tmp, data_dir, sentinel, ex)
}

#[test]
fn dma_append_flush_reopen_read() {
    use super::file::DmaDir;
    let (_tmp, data_dir, sentinel, ex) = dma_scratch("dma-log-");
    ex.run(async move {
        let part = data_dir.join("topic-0");
        let config = LogConfig {
            segment_bytes: 256 * 1024,
            ..LogConfig::default()
        };
        let dir = DmaDir::open(&part, &sentinel).await.unwrap();
        let (mut log, report) = PartitionLog::open(dir.clone(), config.clone())
            .await
            .unwrap();
        assert_eq!(report.segments, 0);
        let mut want = Vec::new();
        for i in 0..40u8 {
            // Sizes from tiny to > 128 KiB total per flush, crossing pages and chunks.
            let b = batch(1 + (i as usize % 3), 37 + (i as usize * 997) % 9000, i);
            let a = log.append(&b, 3).unwrap();
            want.push(b.stamped(a.base_offset as i64, 3).into_bytes());
            if i % 7 == 0 {
                log.flush().await.unwrap();
            }
        }
        let w = log.wait_durable(log.log_end_offset());
        log.flush().await.unwrap();
        w.await.unwrap();
        let end = log.log_end_offset();
        assert!(log.segments().count() >= 2, "expected a roll");
        log.close().await.unwrap();
        dir.close().await.unwrap();

        let dir = DmaDir::open(&part, &sentinel).await.unwrap();
        let (mut log, report) = PartitionLog::open(dir.clone(), config).await.unwrap();
        assert!(report.truncated.is_none(), "{report:?}");
        assert_eq!(report.log_end_offset, end);
        let mut got = Vec::new();
        let mut at = 0;
        while at < end {
            let r = log.read(at, 64 * 1024).await.unwrap();
            split_batches(&r.bytes, &mut got);
            at = r.next_offset;
        }
        assert_eq!(got, want);
        // Append after recovery continues the tail page correctly.
        let b = batch(1, 10, 99);
        let a = log.append(&b, 4).unwrap();
        log.flush().await.unwrap();
        let r = log.read(a.base_offset, 1 << 20).await.unwrap();
        assert_eq!(r.bytes, b.stamped(a.base_offset as i64, 4).into_bytes());
        log.truncate_suffix(a.base_offset, 0).await.unwrap();
        log.close().await.unwrap();
        dir.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Damaged data on disk: reads verify, recovery keeps isolated damage.

/// Flips every bit of byte `pos` of `name` (current and durable).
fn flip(dir: &FaultyDir, name: &str, pos: usize) {
    let b = dir.contents(name).unwrap()[pos];
    dir.corrupt(name, pos, &[!b]);
}

#[track_caller]
fn assert_corrupt(r: Result<ReadBatches, LogError>, segment: &str, pos: u64, offset: u64) {
    match r {
        Err(LogError::Corrupt {
            segment: s,
            pos: p,
            offset: o,
            detail,
        }) => {
            assert_eq!((s.as_str(), p, o), (segment, pos, offset), "{detail}");
        }
        other => panic!("expected a corrupt batch at {segment}:{pos} (offset {offset}): {other:?}"),
    }
}

/// Where batch `offset` of a log of 1-record batches `want` lies: `(segment, position)`.
fn batch_at(log: &PartitionLog<FaultyDir>, want: &[Bytes], offset: u64) -> (String, u64) {
    let seg = log
        .segments()
        .filter(|s| s.base_offset() <= offset)
        .last()
        .unwrap();
    let pos = want[seg.base_offset() as usize..offset as usize]
        .iter()
        .map(|b| b.len() as u64)
        .sum();
    (seg.name().to_string(), pos)
}

/// Reads everything from the start, `max_bytes` at a time, stopping at the first error;
/// every byte served must be a valid batch.
fn read_until_error(
    log: &PartitionLog<FaultyDir>,
    max_bytes: usize,
) -> (Vec<Bytes>, Option<LogError>) {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.stable_offset() {
        match block_on(log.read(at, max_bytes)) {
            Ok(r) => {
                assert!(!r.bytes.is_empty(), "nothing readable at {at}");
                split_batches(&r.bytes, &mut out);
                at = r.next_offset;
            }
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

#[test]
fn clean_restart_serves_up_to_a_flipped_byte_in_a_closed_segment_and_reports_it_once() {
    let dir = FaultyDir::new(21);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 40);
    let bad = 12;
    let (seg, pos) = batch_at(&log, &want, bad);
    assert_ne!(
        &seg,
        log.segments().last().unwrap().name(),
        "a closed segment"
    );
    block_on(log.close()).unwrap();
    flip(&dir, &seg, pos as usize + 1000);
    let (mut log, report) = open(&dir);
    // The clean restart reads no closed segment: nothing found yet.
    assert_eq!(report.batches, 0);
    assert!(report.damaged_batches.is_empty() && report.truncated.is_none());
    let cache = BatchCache::new(1 << 20);
    log.attach_cache(&cache);
    for max_bytes in [usize::MAX, 1, 7000] {
        let (got, err) = read_until_error(&log, max_bytes);
        assert_eq!(got, want[..bad as usize], "max_bytes {max_bytes}");
        assert_corrupt(Err(err.unwrap()), &seg, pos, bad);
    }
    let found = log.take_corruptions();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].segment.as_str(), found[0].pos, found[0].offset),
        (seg.as_str(), pos, bad)
    );
    assert!(found[0].detail.contains("crc"), "{}", found[0].detail);
    // Everything after it is served; the cache never holds it.
    let r = block_on(log.read(bad + 1, usize::MAX)).unwrap();
    assert_eq!(r.base_offset, bad + 1);
    assert_corrupt(block_on(log.read(bad, 1)), &seg, pos, bad);
    assert!(!log.plan_read(bad, 1).unwrap().is_cached());
    assert!(log.take_corruptions().is_empty());
    assert_eq!(log.corrupt_batches(), 1);
    // A lookup by time that lands on it fails the same way.
    let ts = T0 + bad as i64 * 1000;
    match block_on(log.find_timestamp(ts, 40)) {
        Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, bad),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        block_on(log.find_timestamp(ts + 1, 40))
            .unwrap()
            .unwrap()
            .base_offset,
        bad + 1
    );
}

#[test]
fn clean_restart_serves_up_to_a_flipped_byte_in_the_active_segment_and_appends_go_on() {
    let dir = FaultyDir::new(22);
    let (mut log, _) = open(&dir);
    let mut want = fill_segments(&mut log, 33);
    let active = log.segments().last().unwrap();
    let first = active.base_offset();
    assert!(
        log.log_end_offset() - first >= 3,
        "a few batches in the active segment"
    );
    let bad = first + 1;
    let (seg, pos) = batch_at(&log, &want, bad);
    block_on(log.close()).unwrap();
    flip(&dir, &seg, pos as usize + 2000);
    let (mut log, report) = open(&dir);
    // Trusted from the clean close's checkpoint: not scanned, not cut.
    assert!(
        report.truncated.is_none() && report.batches == 0,
        "{report:?}"
    );
    let b = batch(1, 100, 77);
    let a = log.append(&b, 1).unwrap();
    block_on(log.flush()).unwrap();
    want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
    let (got, err) = read_until_error(&log, usize::MAX);
    assert_eq!(got, want[..bad as usize]);
    assert_corrupt(Err(err.unwrap()), &seg, pos, bad);
    let r = block_on(log.read(bad + 1, usize::MAX)).unwrap();
    let mut after = Vec::new();
    split_batches(&r.bytes, &mut after);
    assert_eq!(after, want[bad as usize + 1..]);
    assert_eq!(log.take_corruptions().len(), 1);
}

#[test]
fn crash_then_a_flipped_byte_inside_the_active_segment_is_kept_not_cut() {
    let dir = FaultyDir::new(23);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 33);
    let first = log.segments().last().unwrap().base_offset();
    let end = log.log_end_offset();
    let bad = first + 1;
    let (seg, pos) = batch_at(&log, &want, bad);
    drop(log);
    dir.crash(CrashMode::DropUnsynced);
    flip(&dir, &seg, pos as usize + 2000);
    let (log, report) = open(&dir);
    assert!(report.truncated.is_none(), "{report:?}");
    assert_eq!(log.log_end_offset(), end, "acknowledged data kept");
    assert_eq!(report.damaged_batches.len(), 1);
    assert_eq!(report.damaged_batches[0].offset, bad);
    let (got, err) = read_until_error(&log, usize::MAX);
    assert_eq!(got, want[..bad as usize]);
    assert_corrupt(Err(err.unwrap()), &seg, pos, bad);
    assert_eq!(log.take_corruptions().len(), 1);
    // A damaged *last* batch cannot be told from a torn write: it is cut, and because the
    // checkpoint saw it durable, reported as damage too.
    drop(log);
    flip(&dir, &seg, pos as usize + 2000);
    let (log, _) = open(&dir);
    let (seg, pos) = batch_at(&log, &want, end - 1);
    drop(log);
    dir.crash(CrashMode::DropUnsynced);
    flip(&dir, &seg, pos as usize + 100);
    let (log, report) = open(&dir);
    assert_eq!(report.truncated.unwrap().file_pos, pos);
    assert_eq!(log.log_end_offset(), end - 1);
    let found = log.take_corruptions();
    assert!(
        found
            .iter()
            .any(|c| c.offset == end - 1 && c.detail.contains("durable end")),
        "{found:?}"
    );
}

#[test]
fn damaged_index_files_and_a_damaged_closed_segment() {
    let dir = FaultyDir::new(24);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 40);
    let bad = 7;
    let (seg, pos) = batch_at(&log, &want, bad);
    block_on(log.close()).unwrap();
    // The index files of the segment are damaged as well: the first read rebuilds the
    // index by scanning, which steps over the damaged batch.
    dir.corrupt(&seg.replace(".log", ".index"), 10, &[0xEE]);
    flip(&dir, &seg, pos as usize + 500);
    let (log, _) = open(&dir);
    let (got, err) = read_until_error(&log, usize::MAX);
    assert_eq!(got, want[..bad as usize]);
    assert_corrupt(Err(err.unwrap()), &seg, pos, bad);
    assert_eq!(
        block_on(log.read(bad + 1, 1)).unwrap().bytes,
        want[bad as usize + 1]
    );
    assert_eq!(log.take_corruptions().len(), 1);
}

#[test]
fn damage_outside_the_crc_and_in_walked_over_headers() {
    // One index entry per segment: reads walk over the batches before the one asked for.
    let config = LogConfig {
        index_interval_bytes: 1 << 20,
        ..cfg()
    };
    let dir = FaultyDir::new(25);
    let (mut log, _) = block_on(PartitionLog::open(dir.clone(), config.clone())).unwrap();
    let want = fill_segments(&mut log, 40);
    block_on(log.close()).unwrap();
    let reopen = || {
        block_on(PartitionLog::open(dir.clone(), config.clone()))
            .unwrap()
            .0
    };
    let log = reopen();
    // The base offset field lies outside the CRC: the offsets that must follow on catch it.
    let (seg, pos) = batch_at(&log, &want, 12);
    let base = log
        .segments()
        .find(|s| s.name() == seg)
        .unwrap()
        .base_offset();
    assert!(base < 12);
    flip(&dir, &seg, pos as usize + 7);
    assert_corrupt(block_on(log.read(12, usize::MAX)), &seg, pos, 12);
    let r = block_on(log.read(base, usize::MAX)).unwrap();
    assert_eq!(r.next_offset, 12, "cut before it");
    // The offset count lies under the CRC, so a walk cannot trust it: a damaged batch walked
    // over does not hide the batches after it, and never hands out its own offsets.
    let (seg, pos) = batch_at(&log, &want, 23);
    let base = log
        .segments()
        .find(|s| s.name() == seg)
        .unwrap()
        .base_offset();
    assert!(base < 23 && log.segments().any(|s| s.base_offset() > 24));
    flip(&dir, &seg, pos as usize + 26);
    let log = reopen();
    assert_eq!(block_on(log.read(24, 1)).unwrap().bytes, want[24]);
    assert_corrupt(block_on(log.read(23, 1)), &seg, pos, 23);
    let found = log.take_corruptions();
    assert_eq!(found.len(), 1, "{found:?}");
}

/// A base offset (outside the CRC) flipped in the log's last batch — no batch after it to
/// contradict it — must not pass as a gap: before compaction filled removed offsets, the
/// recovery scan took it for one and moved the log end by 2^40 (review finding).
#[test]
fn a_flipped_base_offset_in_the_last_batch_is_damage_not_a_gap() {
    let dir = FaultyDir::new(26);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 33);
    let end = log.log_end_offset();
    let (seg, pos) = batch_at(&log, &want, end - 1);
    drop(log);
    dir.crash(CrashMode::DropUnsynced);
    flip(&dir, &seg, pos as usize + 3);
    let (log, report) = open(&dir);
    assert!(
        log.log_end_offset() <= end,
        "log end {} > {end}: {report:?}",
        log.log_end_offset()
    );
    assert!(
        report.truncated.is_some() || !report.damaged_batches.is_empty(),
        "{report:?}"
    );
    // What is served is exactly what was written, below the damage.
    let (got, _) = read_until_error(&log, usize::MAX);
    assert_eq!(got[..], want[..got.len()]);
}

/// The read side of the same damage: a trusted closed segment (clean restart, no scan)
/// whose last batch has a flipped base offset. A read walking into it must cut before it,
/// never serve it at a wrong offset as if compaction had left a gap.
#[test]
fn a_read_never_serves_a_batch_whose_base_offset_jumps() {
    let dir = FaultyDir::new(27);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 33);
    let first = log.segments().next().unwrap();
    let (seg, seg_base, seg_next) = (
        first.name().to_string(),
        first.base_offset(),
        first.next_offset(),
    );
    assert!(seg_next > seg_base + 2);
    let (name, pos) = batch_at(&log, &want, seg_next - 1);
    assert_eq!(name, seg);
    block_on(log.close()).unwrap();
    flip(&dir, &seg, pos as usize + 3);
    let (log, report) = open(&dir);
    assert_eq!(
        report.batches, 0,
        "a clean restart trusts the segment: {report:?}"
    );
    let r = block_on(log.read(seg_base, usize::MAX)).unwrap();
    assert_eq!(r.next_offset, seg_next - 1, "cut before the damaged batch");
    let mut got = Vec::new();
    split_batches(&r.bytes, &mut got);
    assert_eq!(got[..], want[seg_base as usize..(seg_next - 1) as usize]);
}

#[test]
fn dma_io_cap_below_the_write_chunk_splits_reads_and_writes() {
    use super::file::DmaDir;
    let (_tmp, data_dir, sentinel, ex) = dma_scratch("dma-cap-");
    ex.run(async move {
        let part = data_dir.join("topic-0");
        // A device taking 8 KiB at once: the appender's 128 KiB chunks shrink to it, reads
        // and small files are split.
        let dir = DmaDir::open_capped(&part, &sentinel, 8 * 1024)
            .await
            .unwrap();
        assert_eq!(dir.max_io_bytes(), 8 * 1024);
        let (mut log, _) = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert_eq!(log.config().write_chunk_bytes, 8 * 1024);
        let mut want = Vec::new();
        for i in 0..6u8 {
            let b = batch(3, 7000 + usize::from(i) * 1000, i);
            let a = log.append(&b, 1).unwrap();
            want.push(b.stamped(a.base_offset as i64, 1).into_bytes());
        }
        log.flush().await.unwrap();
        let r = log.read(0, 1 << 20).await.unwrap();
        let mut got = Vec::new();
        split_batches(&r.bytes, &mut got);
        assert_eq!(got, want);
        log.close().await.unwrap();
        let (log, report) = PartitionLog::open(dir.clone(), LogConfig::default())
            .await
            .unwrap();
        assert!(report.truncated.is_none(), "{report:?}");
        let r = log.read(0, 1 << 20).await.unwrap();
        assert_eq!(r.bytes.len(), want.iter().map(Bytes::len).sum::<usize>());
        log.close().await.unwrap();
        dir.close().await.unwrap();
    });
}

#[test]
fn damaged_start_of_a_closed_segment_without_usable_index_files() {
    let dir = FaultyDir::new(26);
    let (mut log, _) = open(&dir);
    let want = fill_segments(&mut log, 40);
    let seg = log.segments().nth(2).unwrap();
    let (name, base, next) = (seg.name().to_string(), seg.base_offset(), seg.next_offset());
    block_on(log.close()).unwrap();
    // The length field of its first batch, and its index files: nothing to walk from.
    dir.corrupt(&name.replace(".log", ".index"), 10, &[0xEE]);
    flip(&dir, &name, 9);
    let (log, _) = open(&dir);
    let (got, err) = read_until_error(&log, usize::MAX);
    assert_eq!(got, want[..base as usize]);
    assert_corrupt(Err(err.unwrap()), &name, 0, base);
    // The segments after it are served.
    let r = block_on(log.read(next, usize::MAX)).unwrap();
    assert_eq!(r.base_offset, next);
    assert_eq!(log.take_corruptions().len(), 1);
}
