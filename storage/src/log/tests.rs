//! Log tests over the in-memory [`FaultyDir`] (driven with `block_on`: no executor needed) and
//! one over real O_DIRECT files in a glommio executor.

use bytes::Bytes;
use futures_lite::future::block_on;
use proptest::prelude::*;

use super::batch::tests::build_batch;
use super::batch::{check_first, BatchError, RecordBatch};
use super::faulty::{CrashMode, FaultyDir};
use super::recovery::CorruptTail;
use super::*;

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        max_batch_bytes: 1 << 20,
        write_chunk_bytes: 8192,
        recovery_read_bytes: 8192,
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
    dir.fail_next_write(std::io::ErrorKind::StorageFull);
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

#[test]
fn recovery_cuts_a_corrupt_batch_and_deletes_later_segments() {
    let dir = FaultyDir::new(1);
    let (mut log, _) = open(&dir);
    for i in 0..9 {
        log.append(&batch(1, 5000, i), 1).unwrap();
    }
    block_on(log.flush()).unwrap();
    let names: Vec<String> = log.segments().map(|s| s.name().to_string()).collect();
    assert_eq!(names.len(), 3);
    let second = log.segments().nth(1).unwrap().batches()[1];
    drop(log);
    // Flip a byte inside the second batch of the second segment.
    dir.corrupt(&names[1], second.pos as usize + 100, &[0xff]);
    let (log, report) = open(&dir);
    let t = report.truncated.unwrap();
    assert_eq!(t.segment, names[1]);
    assert_eq!(t.file_pos, second.pos);
    assert!(matches!(
        t.reason,
        CorruptTail::Batch(BatchError::Crc { .. })
    ));
    assert_eq!(report.deleted_segments, vec![names[2].clone()]);
    assert_eq!(log.log_end_offset(), second.base_offset);
    assert_eq!(dir.contents(&names[1]).unwrap().len() as u64, second.pos);
    assert!(dir.contents(&names[2]).is_none());
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
// Model-based property test.

#[derive(Debug, Clone)]
enum Op {
    Append { records: usize, value_len: usize },
    NewTerm,
    Flush,
    TruncateSuffix { pick: usize },
    TruncatePrefix { pick: usize },
    Read { pick: usize, max_bytes: usize },
    Crash { tear: bool },
    CrashMidFlush { tear: bool },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..4, prop_oneof![0usize..40, 40usize..2000, 3000usize..9000])
            .prop_map(|(records, value_len)| Op::Append { records, value_len }),
        1 => Just(Op::NewTerm),
        3 => Just(Op::Flush),
        1 => any::<usize>().prop_map(|pick| Op::TruncateSuffix { pick }),
        1 => any::<usize>().prop_map(|pick| Op::TruncatePrefix { pick }),
        3 => (any::<usize>(), 1usize..30_000).prop_map(|(pick, max_bytes)| Op::Read { pick, max_bytes }),
        1 => any::<bool>().prop_map(|tear| Op::Crash { tear }),
        1 => any::<bool>().prop_map(|tear| Op::CrashMidFlush { tear }),
        1 => Just(Op::Restart),
    ]
}

#[derive(Debug, Clone)]
struct Entry {
    base: u64,
    last: u64,
    bytes: Bytes,
}

/// What the log must hold: every entry ever appended and not truncated, and how far they are
/// written and durable.
struct Model {
    entries: Vec<Entry>,
    start: u64,
    stable: u64,
    committed: u64,
    term: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.last + 1)
    }
}

fn log_entries(log: &PartitionLog<FaultyDir>) -> Vec<(u64, u64)> {
    log.segments()
        .flat_map(|s| s.batches().iter().map(|b| (b.base_offset, b.last_offset)))
        .collect()
}

fn check(log: &PartitionLog<FaultyDir>, m: &Model) {
    assert_eq!(log.log_end_offset(), m.end());
    assert_eq!(log.log_start_offset(), m.start);
    assert_eq!(log.committed_offset(), m.committed);
    assert_eq!(log.stable_offset(), m.stable);
    // The index is a suffix of the model that reaches back to the start offset.
    let idx = log_entries(log);
    let want: Vec<(u64, u64)> = m.entries.iter().map(|e| (e.base, e.last)).collect();
    assert!(want.ends_with(&idx), "index {idx:?} vs model {want:?}");
    if let Some(first) = idx.first() {
        assert!(first.0 <= m.start);
    } else {
        assert_eq!(m.start, m.end());
    }
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
    // The owner re-applies the log start offset it keeps elsewhere.
    block_on(log.truncate_prefix(m.start)).unwrap();
    m.committed = end;
    m.stable = end;
    // Every surviving batch is byte-for-byte the one appended.
    let got = read_all(log);
    let want: Vec<Bytes> = m
        .entries
        .iter()
        .skip_while(|e| e.last < log.log_start_offset())
        .map(|e| e.bytes.clone())
        .collect();
    assert!(want.ends_with(&got) || got.ends_with(&want));
    assert!(got.len() >= want.len());
    assert_eq!(&got[got.len() - want.len()..], &want[..]);
}

fn run_ops(seed: u64, ops: Vec<Op>) {
    let dir = FaultyDir::new(seed);
    let (mut log, _) = open(&dir);
    let mut m = Model {
        entries: Vec::new(),
        start: 0,
        stable: 0,
        committed: 0,
        term: 1,
    };
    let mut value_seed = 0u8;
    for op in ops {
        match op {
            Op::Append { records, value_len } => {
                value_seed = value_seed.wrapping_add(1);
                let b = batch(records, value_len, value_seed);
                let a = log.append(&b, m.term).unwrap();
                assert_eq!(a.base_offset, m.end());
                m.entries.push(Entry {
                    base: a.base_offset,
                    last: a.last_offset,
                    bytes: b.stamped(a.base_offset as i64, m.term as i32).into_bytes(),
                });
            }
            Op::NewTerm => m.term += 1,
            Op::Flush => {
                block_on(log.flush()).unwrap();
                m.committed = m.end();
                m.stable = m.end();
            }
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
            }
            Op::TruncatePrefix { pick } => {
                let to = m.start + (pick as u64) % (m.committed - m.start + 1);
                block_on(log.truncate_prefix(to)).unwrap();
                m.start = m.start.max(to);
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
            Op::Crash { tear } => {
                drop(log);
                dir.crash(if tear {
                    CrashMode::TearLastWrite
                } else {
                    CrashMode::DropUnsynced
                });
                log = open(&dir).0;
                adopt_recovered(&mut log, &mut m);
            }
            Op::CrashMidFlush { tear } => {
                if let Some(job) = log.start_flush().unwrap() {
                    let w = block_on(job.write());
                    log.finish_write(w).unwrap();
                    m.stable = m.end();
                    check(&log, &m);
                }
                drop(log);
                dir.crash(if tear {
                    CrashMode::TearLastWrite
                } else {
                    CrashMode::DropUnsynced
                });
                log = open(&dir).0;
                adopt_recovered(&mut log, &mut m);
            }
            Op::Restart => {
                block_on(log.close()).unwrap();
                m.committed = m.end();
                log = open(&dir).0;
                adopt_recovered(&mut log, &mut m);
            }
        }
        check(&log, &m);
    }
}

proptest! {
    // 256 cases by default (~0.3 s in debug); PROPTEST_CASES=n for a longer run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model_across_crashes(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..60)) {
        run_ops(seed, ops);
    }
}

// ---------------------------------------------------------------------------------------
// Real O_DIRECT files.

#[test]
fn dma_append_flush_reopen_read() {
    use super::file::DmaDir;
    // Under target/ (on the real disk): O_DIRECT needs a real filesystem, not tmpfs.
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/storage-tests");
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("dma-log-")
        .tempdir_in(&base)
        .unwrap();
    let data_dir = tmp.path().to_path_buf();
    // The sentinel (std I/O, before the executor), then everything else on the executor.
    let sentinel = crate::dma::prepare_sentinel(&data_dir).unwrap();
    let ex = glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .unwrap();
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
