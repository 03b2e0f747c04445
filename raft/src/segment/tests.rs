//! The segment-log adapter over the in-memory crash-injecting directory ([`FaultyDir`]) and
//! the in-memory metadata store ([`MemMeta`]); one test over the real metadata store.
//! Everything is driven with `block_on` (the fault-injecting directory never waits).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures_lite::future::block_on;
use spate_storage::log::batch::{check_first, RecordBatch};
use spate_storage::log::faulty::{CrashMode, FaultyDir};
use spate_storage::log::LogConfig;

use super::control::{data_batch, ATTR_CONTROL, CONTROL_TYPE_LEADER_NOOP};
use super::*;
use crate::rng::Prng;
use crate::store::SnapshotPrep;
use spate_storage::log::BatchAt;

const G: GroupId = 7;

type Store = SegmentStore<FaultyDir, MemMeta>;

fn cfg() -> SegmentConfig {
    SegmentConfig {
        log: LogConfig {
            segment_bytes: 2048,
            ..LogConfig::default()
        },
        cache_bytes_max: u64::MAX,
        checkpoint_bytes: u64::MAX,
        ..SegmentConfig::default()
    }
}

struct Node {
    dir: FaultyDir,
    meta: MemMeta,
}

impl Node {
    fn new(seed: u64) -> Node {
        Node {
            dir: FaultyDir::new(seed),
            meta: MemMeta::new(),
        }
    }

    fn open(&self, cfg: SegmentConfig) -> Store {
        block_on(SegmentStore::open(
            G,
            self.dir.clone(),
            cfg,
            self.meta.state(G),
            self.meta.clone(),
        ))
        .expect("open")
    }

    /// A power cut: unsynced log bytes and unacknowledged metadata writes are lost.
    fn crash(&self, mode: CrashMode, seed: u64) {
        self.dir.crash(mode);
        self.meta.crash(&mut Prng::new(seed));
    }
}

fn data(index: u64, term: u64, records: &[&str]) -> LogEntry {
    let values: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
    LogEntry {
        index,
        term,
        kind: EntryKind::Data,
        payload: data_batch(&values, 1_700_000_000_000),
    }
}

fn control(index: u64, term: u64, kind: EntryKind, payload: &'static [u8]) -> LogEntry {
    LogEntry {
        index,
        term,
        kind,
        payload: Bytes::from_static(payload),
    }
}

fn settle(s: &Store) {
    block_on(s.run_until_idle()).expect("pump");
}

fn bootstrap(s: &mut Store, voters: &[NodeIdT]) {
    let meta = SnapshotMeta {
        index: 1,
        term: 1,
        membership: Membership::new(voters.iter().copied(), []),
    };
    s.install_snapshot(&meta, Bytes::new()).unwrap();
    s.set_hard_state(HardState {
        term: 1,
        vote: 0,
        commit: 1,
    })
    .unwrap();
    let t = s.sync().unwrap();
    settle(s);
    assert_eq!(s.synced(), t);
    s.on_applied(1);
}

type NodeIdT = crate::types::NodeId;

/// What a data entry's payload is once stored: the batch stamped with its offset and term.
fn stamped(e: &LogEntry, base: u64) -> Bytes {
    RecordBatch::validate(e.payload.clone(), 1 << 20)
        .unwrap()
        .stamped(base as i64, e.term as i32)
        .into_bytes()
}

fn all_entries(s: &Store) -> Vec<LogEntry> {
    block_on(s.read_entries(s.first_index(), s.last_index() + 1)).unwrap()
}

/// Raft §5.3 / §5.1: entries and hard state written and synced survive a reopen exactly —
/// same indexes, terms, kinds and payloads (data batches stamped with offset and term); Kafka
/// offsets count records while Raft indexes count batches; control entries are Kafka control
/// batches on disk.
#[test]
fn s5_3_entries_survive_reopen_with_kafka_offsets_per_record() {
    let node = Node::new(1);
    let mut s = node.open(cfg());
    assert_eq!((s.first_index(), s.last_index()), (1, 0));
    bootstrap(&mut s, &[1, 2, 3]);
    let entries = vec![
        control(2, 2, EntryKind::LeaderNoop, b""),
        data(3, 2, &["a", "b", "c"]),
        data(4, 2, &["d"]),
        control(5, 2, EntryKind::ConfChangeV2, b"\x0a\x02\x08\x04"),
        data(6, 3, &["e", "f"]),
    ];
    s.append(&entries).unwrap();
    s.set_hard_state(HardState {
        term: 3,
        vote: 2,
        commit: 4,
    })
    .unwrap();
    // Offsets `(base, next)`: the no-op takes none (it sits at 0), the 3-record batch 0..=2,
    // then 3, the change 4, 5..=6.
    assert_eq!(s.offsets(2), Some((0, 0)));
    assert_eq!(s.offsets(3), Some((0, 3)));
    assert_eq!(s.offsets(4), Some((3, 4)));
    assert_eq!(s.offsets(5), Some((4, 5)));
    assert_eq!(s.offsets(6), Some((5, 7)));
    assert_eq!(s.next_offset(), 7);
    assert_eq!(s.offset_after(1), Some(0));
    assert_eq!(s.offset_after(2), Some(0));
    let t = s.sync().unwrap();
    assert!(s.synced() < t, "nothing is durable before the pump runs");
    settle(&s);
    assert_eq!(s.synced(), t);
    assert_eq!(s.durable_last_index(), 6);

    // On disk: the no-op is a zero-width control batch (bit 5, no records) at 0, before the
    // first data batch, which a Kafka read at 0 returns first.
    let read = s
        .with_log(|log| log.plan_read_at(BatchAt::offset(0), 1).unwrap())
        .unwrap();
    let bytes = block_on(read.run()).unwrap().bytes;
    let h = check_first(&bytes, 1 << 20).unwrap();
    assert_eq!(h.attributes & ATTR_CONTROL, ATTR_CONTROL);
    assert!(h.is_zero_width());
    assert_eq!((h.base_offset, h.partition_leader_epoch), (0, 2));
    let read = s.with_log(|log| log.plan_read(0, 1).unwrap()).unwrap();
    let bytes = block_on(read.run()).unwrap().bytes;
    let h = check_first(&bytes, 1 << 20).unwrap();
    assert_eq!((h.base_offset, h.record_count, h.attributes), (0, 3, 0));
    // The change: a control batch of one record whose key is version 0, type 102.
    let read = s
        .with_log(|log| log.plan_read(3, 1 << 20).unwrap())
        .unwrap();
    let bytes = block_on(read.run()).unwrap().bytes;
    let change = &bytes[check_first(&bytes, 1 << 20).unwrap().total_len()..];
    let h = check_first(change, 1 << 20).unwrap();
    assert_eq!((h.base_offset, h.record_count), (4, 1));
    assert_eq!(h.attributes & ATTR_CONTROL, ATTR_CONTROL);
    let key_at = 61 + 5;
    assert_eq!(
        &change[key_at..key_at + 4],
        &[0, 0, 0, super::control::CONTROL_TYPE_CONF_CHANGE_V2 as u8]
    );

    let before = all_entries(&s);
    drop(s);
    let s = node.open(cfg());
    assert_eq!(s.initial_state().hard_state.term, 3);
    assert_eq!(s.initial_state().hard_state.vote, 2);
    assert_eq!(s.initial_state().membership, Membership::new([1, 2, 3], []));
    assert_eq!(s.initial_state().membership_index, 1);
    assert_eq!(
        (s.log_start(), s.last_index()),
        (LogStart { index: 1, term: 1 }, 6)
    );
    let after = all_entries(&s);
    assert_eq!(before, after);
    for (e, got) in entries.iter().zip(&after) {
        assert_eq!((e.index, e.term, e.kind), (got.index, got.term, got.kind));
        match e.kind {
            EntryKind::Data => assert_eq!(got.payload, stamped(e, s.offsets(e.index).unwrap().0)),
            _ => assert_eq!(got.payload, e.payload),
        }
    }
    assert_eq!(s.membership_indexes(0).unwrap(), vec![5]);
    assert_eq!(s.term(6), Ok(3));
    assert_eq!(s.term(1), Ok(1));
    assert_eq!(s.term(0), Err(StoreError::Compacted(0)));
}

/// A sync gate that holds every fsync until its flag is set.
struct Hold(Rc<Cell<bool>>);

impl SyncGate for Hold {
    fn wait(&self) -> Pin<Box<dyn Future<Output = ()>>> {
        let open = Rc::clone(&self.0);
        Box::pin(std::future::poll_fn(move |_| {
            if open.get() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
    }
}

/// §5.1: only what a completed sync covered is promised to survive; a crash between the
/// write and the fsync may keep a torn prefix, which recovery cuts at a batch boundary, and
/// the index is rebuilt to match.
#[test]
fn s5_1_a_crash_keeps_a_prefix_of_unsynced_entries() {
    for seed in 0..40 {
        let node = Node::new(seed);
        let open = Rc::new(Cell::new(true));
        let gated = || SegmentConfig {
            sync_gate: Some(Rc::new(Hold(Rc::clone(&open)))),
            ..cfg()
        };
        let mut s = node.open(gated());
        bootstrap(&mut s, &[1]);
        s.append(&[
            control(2, 2, EntryKind::LeaderNoop, b""),
            data(3, 2, &["x"; 5]),
        ])
        .unwrap();
        let t = s.sync().unwrap();
        settle(&s);
        assert_eq!(s.synced(), t);
        // The next flush is written but its fsync never starts.
        open.set(false);
        let more: Vec<LogEntry> = (4..12).map(|i| data(i, 2, &["y"; 40])).collect();
        s.append(&more).unwrap();
        let t2 = s.sync().unwrap();
        let mut pump = Box::pin(s.pump());
        assert!(block_on(futures_lite::future::poll_once(&mut pump)).is_none());
        assert!(s.synced() < t2);
        drop(pump);
        drop(s);
        node.crash(
            if seed % 2 == 0 {
                CrashMode::TearLastWrite
            } else {
                CrashMode::DropUnsynced
            },
            seed,
        );
        open.set(true);
        let s = node.open(gated());
        let last = s.last_index();
        assert!((3..=11).contains(&last), "seed {seed}: last {last}");
        let got = all_entries(&s);
        assert_eq!(got.len() as u64, last - 1);
        for e in got.iter().filter(|e| e.index >= 4) {
            assert_eq!(
                e.payload,
                stamped(&more[(e.index - 4) as usize], s.offsets(e.index).unwrap().0)
            );
        }
    }
}

/// §5.3: a follower removes a conflicting uncommitted suffix and appends the leader's
/// entries in its place, durably; truncation below the commit index is refused (§5.4.3:
/// committed entries are never lost).
#[test]
fn s5_3_truncates_a_divergent_tail_but_never_below_commit() {
    let node = Node::new(3);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1, 2, 3]);
    s.append(&(2..=6).map(|i| data(i, 2, &["old"])).collect::<Vec<_>>())
        .unwrap();
    s.set_hard_state(HardState {
        term: 2,
        vote: 1,
        commit: 3,
    })
    .unwrap();
    s.sync().unwrap();
    settle(&s);
    assert!(matches!(s.truncate_suffix(3), Err(StoreError::Invalid(_))));
    s.truncate_suffix(4).unwrap();
    assert_eq!(s.last_index(), 3);
    let new: Vec<LogEntry> = (4..=5).map(|i| data(i, 3, &["new", "new"])).collect();
    s.append(&new).unwrap();
    // Entries 2..=3 hold offsets 0 and 1; the new entry 4 (two records) takes 2..=3.
    assert_eq!(s.offsets(4), Some((2, 4)));
    // The truncation is queued: the disk still holds the old entries, the durable part of
    // the view stops below the truncation until the pump ran.
    assert_eq!(s.durable_last_index(), 6);
    assert_eq!(s.durable_view_last_index(), Some(3));
    let t = s.sync().unwrap();
    settle(&s);
    assert_eq!(s.synced(), t);
    assert_eq!(s.durable_last_index(), 5);
    assert_eq!(s.durable_view_last_index(), Some(5));
    drop(s);
    node.crash(CrashMode::DropUnsynced, 3);
    let s = node.open(cfg());
    assert_eq!(s.last_index(), 5);
    let got = all_entries(&s);
    assert_eq!(got[2].payload, stamped(&new[0], 2));
    assert_eq!(got[3].term, 3);
    assert_eq!(s.next_offset(), 6);
}

/// The applied checkpoint: a restart keeps in memory (and the driver replays) only entries
/// after it; below it, evicted payloads come back through asynchronous loads (raft-rs async
/// fetch, used for followers that fell behind).
/// Raft Figure 2 keeps `lastApplied` volatile; the checkpoint is a durable lower bound of it
/// (§5.4.3: only committed, durable entries), so a restart needs not replay the whole log.
#[test]
fn applied_checkpoint_and_async_loads() {
    let node = Node::new(4);
    let small = || SegmentConfig {
        cache_bytes_max: 0,
        checkpoint_bytes: 1,
        ..cfg()
    };
    let mut s = node.open(small());
    bootstrap(&mut s, &[1]);
    let entries: Vec<LogEntry> = (2..=20).map(|i| data(i, 2, &["payload"; 3])).collect();
    s.append(&entries).unwrap();
    s.sync().unwrap();
    settle(&s);
    s.on_applied(15);
    // Evicted (applied and durable, over the budget): loads.
    assert_eq!(s.entries(5, 8, u64::MAX), Err(StoreError::Loading(5)));
    assert_eq!(s.loads_completed(), 0);
    // Above the applied index: always in memory.
    assert_eq!(s.entries(16, 21, u64::MAX).unwrap().len(), 5);
    settle(&s);
    assert_eq!(s.loads_completed(), 1);
    let got = s.entries(5, 8, u64::MAX).unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[0].payload,
        stamped(&entries[3], s.offsets(5).unwrap().0)
    );
    // A metadata write makes the checkpoint durable (here: the next round, threshold 1).
    s.set_membership(20, &Membership::new([1], [])).unwrap();
    s.sync().unwrap();
    settle(&s);
    drop(s);
    let s = node.open(small());
    assert_eq!(s.initial_state().applied, 15);
    assert_eq!(s.initial_state().membership_index, 20);
    assert_eq!(s.entries(16, 21, u64::MAX).unwrap().len(), 5);
    assert_eq!(s.entries(2, 3, u64::MAX), Err(StoreError::Loading(2)));
}

/// §7: a follower behind the leader's log start installs a snapshot: its log restarts, empty,
/// at the Kafka offset after the snapshot index; membership and reset are atomic — a crash
/// after the metadata write but before the log reset finishes the reset on reopen.
#[test]
fn s7_snapshot_resets_the_log_at_the_leaders_offset_even_across_a_crash() {
    let leader = Node::new(5);
    let mut l = leader.open(cfg());
    bootstrap(&mut l, &[1, 2]);
    l.append(&(2..=9).map(|i| data(i, 2, &["r"; 4])).collect::<Vec<_>>())
        .unwrap();
    l.sync().unwrap();
    settle(&l);
    l.on_applied(9);
    let payload = l.snapshot_payload(9).unwrap();
    let x = l.offset_after(9).unwrap();
    assert_eq!(x, 32);
    let meta = SnapshotMeta {
        index: 9,
        term: 2,
        membership: Membership::new([1, 2], []),
    };

    for crash_midway in [false, true] {
        let f = Node {
            dir: FaultyDir::new(6),
            meta: MemMeta::held(),
        };
        let mut s = f.open(cfg());
        // A stale log of its own (an old term), to be replaced.
        s.install_snapshot(
            &SnapshotMeta {
                index: 1,
                term: 1,
                membership: Membership::new([1, 2], []),
            },
            Bytes::new(),
        )
        .unwrap();
        s.append(&[data(2, 1, &["stale"])]).unwrap();
        s.install_snapshot(&meta, payload.clone()).unwrap();
        assert_eq!((s.first_index(), s.last_index()), (10, 9));
        assert_eq!(s.next_offset(), x);
        s.append(&[data(10, 2, &["after"])]).unwrap();
        let t = s.sync().unwrap();
        let mut pump = Box::pin(s.pump());
        let mut poll = || block_on(futures_lite::future::poll_once(&mut pump));
        poll();
        // The bootstrap's metadata write, then the snapshot's (anchor, membership, marker).
        f.meta.release_through(f.meta.issued());
        poll();
        f.meta.release_through(f.meta.issued());
        poll();
        if crash_midway {
            // The log was reset, the marker's removal is not durable; the append after the
            // snapshot is not either.
            assert!(f.meta.state(G).values.contains_key(KEY_RESET));
            drop(pump);
            drop(s);
            f.dir.crash(CrashMode::DropUnsynced);
            f.meta.crash_losing_unacknowledged();
            f.meta.set_hold(false);
            let s = f.open(cfg());
            assert!(!f.meta.state(G).values.contains_key(KEY_RESET));
            assert_eq!((s.first_index(), s.last_index()), (10, 9));
            assert_eq!(s.next_offset(), x);
            assert_eq!(s.initial_state().membership_index, 9);
            continue;
        }
        while s.synced() < t {
            f.meta.release_through(f.meta.issued());
            poll();
        }
        drop(pump);
        drop(s);
        let s = f.open(cfg());
        assert_eq!((s.first_index(), s.last_index()), (10, 10));
        assert_eq!(s.offsets(10), Some((x, x + 1)));
        assert_eq!(s.log_start(), LogStart { index: 9, term: 2 });
    }
}

/// §7 log compaction: the anchor moves durably first, then whole segments below it go; a
/// reopen starts the Raft log after the compaction point.
#[test]
fn s7_compaction_moves_the_anchor_then_deletes_segments() {
    let node = Node::new(8);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1]);
    let entries: Vec<LogEntry> = (2..=40).map(|i| data(i, 2, &["0123456789"; 8])).collect();
    s.append(&entries).unwrap();
    s.sync().unwrap();
    settle(&s);
    assert!(matches!(s.compact_prefix(30), Err(StoreError::Invalid(_))));
    s.on_applied(35);
    s.compact_prefix(30).unwrap();
    assert_eq!(s.log_start(), LogStart { index: 30, term: 2 });
    settle(&s);
    let start_offset = s.with_log(|l| l.log_start_offset()).unwrap();
    assert_eq!(start_offset, s.offsets(31).unwrap().0);
    drop(s);
    let s = node.open(cfg());
    assert_eq!(s.log_start(), LogStart { index: 30, term: 2 });
    assert_eq!(s.last_index(), 40);
    assert_eq!(all_entries(&s).len(), 10);
}

/// §7 compaction of the Raft log only (`compaction_keeps_data`, how the broker runs it):
/// the anchor moves durably, the Kafka data below it stays readable, and a reopen rebuilds
/// the index from the anchor on — the entries below it are Kafka data, not Raft entries.
#[test]
fn s7_compaction_can_move_only_the_anchor_and_keep_the_data() {
    let node = Node::new(10);
    let keep = || SegmentConfig {
        compaction_keeps_data: true,
        ..cfg()
    };
    let mut s = node.open(keep());
    bootstrap(&mut s, &[1]);
    let entries: Vec<LogEntry> = (2..=40).map(|i| data(i, 2, &["0123456789"; 8])).collect();
    s.append(&entries).unwrap();
    s.sync().unwrap();
    settle(&s);
    let start = s.with_log(|l| l.log_start_offset()).unwrap();
    let (base31, _) = s.offsets(31).unwrap();
    s.on_applied(35);
    s.compact_prefix(30).unwrap();
    settle(&s);
    assert_eq!(s.log_start(), LogStart { index: 30, term: 2 });
    assert_eq!(s.with_log(|l| l.log_start_offset()), Some(start));
    drop(s);
    let s = node.open(keep());
    assert_eq!(s.log_start(), LogStart { index: 30, term: 2 });
    assert_eq!(s.anchor().offset, base31);
    assert_eq!((s.first_index(), s.last_index()), (31, 40));
    assert_eq!(s.offsets(31), Some((base31, base31 + 8)));
    assert_eq!(all_entries(&s).len(), 10);
    // The data below the anchor is still there for Kafka readers.
    let read = block_on(
        s.with_log(|l| l.plan_read(start, 1 << 20))
            .unwrap()
            .unwrap()
            .run(),
    )
    .unwrap();
    assert!(!read.bytes.is_empty());
    assert_eq!(s.with_log(|l| l.log_start_offset()), Some(start));
}

/// A partition that held data before it ran Raft: bootstrap anchors the Raft log at the end
/// of that data, which stays readable below it.
/// Raft §7: the log starts after the bootstrap snapshot (index 1), here anchored at the end
/// of the data already in the partition.
#[test]
fn bootstrap_over_existing_data_anchors_after_it() {
    let dir = FaultyDir::new(9);
    {
        let (mut log, _) = block_on(PartitionLog::open(dir.clone(), cfg().log)).unwrap();
        for _ in 0..3 {
            let b = RecordBatch::validate(data_batch(&[b"old", b"old"], 0), 1 << 20).unwrap();
            log.append(&b, 0).unwrap();
        }
        block_on(log.close()).unwrap();
    }
    let node = Node {
        dir,
        meta: MemMeta::new(),
    };
    let mut s = node.open(cfg());
    assert_eq!(
        (s.first_index(), s.last_index(), s.next_offset()),
        (1, 0, 6)
    );
    bootstrap(&mut s, &[1]);
    s.append(&[control(2, 2, EntryKind::LeaderNoop, b"")])
        .unwrap();
    s.sync().unwrap();
    settle(&s);
    drop(s);
    let s = node.open(cfg());
    assert_eq!(s.anchor().offset, 6);
    assert_eq!(s.offsets(2), Some((6, 6)));
    assert_eq!(s.with_log(|l| l.log_start_offset()), Some(0));
}

/// A client batch that would read back as a Spate control batch is refused (the broker must
/// refuse client control batches before proposing, as Kafka does).
/// Raft §5.3 log matching needs an entry to read back as what was appended.
#[test]
fn data_entries_must_not_look_like_spate_control_batches() {
    let node = Node::new(10);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1]);
    // A configuration change and a one-record no-op (type 100, as no-ops were written before
    // they became zero-width) as client data: both would read back as Raft control entries.
    let mut old_noop = bytes::BytesMut::from(
        &super::control::encode_control(EntryKind::ConfChange, b"", 0, 2)[..],
    );
    let key_at = 61 + 5;
    old_noop[key_at + 2..key_at + 4].copy_from_slice(&CONTROL_TYPE_LEADER_NOOP.to_be_bytes());
    let crc = crc32c::crc32c(&old_noop[21..]);
    old_noop[17..21].copy_from_slice(&crc.to_be_bytes());
    for forged in [
        super::control::encode_control(EntryKind::ConfChangeV2, b"\x01", 0, 2),
        old_noop.freeze(),
        // A zero-width no-op is not even a record batch a client could send.
        super::control::encode_control(EntryKind::LeaderNoop, b"", 0, 2),
    ] {
        let fake = LogEntry {
            index: 2,
            term: 2,
            kind: EntryKind::Data,
            payload: forged,
        };
        assert!(matches!(s.append(&[fake]), Err(StoreError::Invalid(_))));
    }
    // A no-op carries no payload.
    assert!(matches!(
        s.append(&[control(2, 2, EntryKind::LeaderNoop, b"x")]),
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        s.append(&[LogEntry {
            index: 2,
            term: 2,
            kind: EntryKind::Data,
            payload: Bytes::from_static(b"not a batch"),
        }]),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(s.last_index(), 1);
}

/// The same store over the node's real metadata store (raft-engine on its thread): hard
/// state, membership and anchor come back after both are reopened.
#[test]
fn s5_1_over_the_real_metadata_store() {
    use spate_storage::metastore::MetaStore;
    let tmp = tempfile::tempdir().unwrap();
    let dir = FaultyDir::new(11);
    let (meta, rec, thread) = MetaStore::open(tmp.path()).unwrap();
    let mut s: SegmentStore<FaultyDir, MetaStore> = block_on(SegmentStore::open(
        G,
        dir.clone(),
        cfg(),
        rec.groups.get(&G).cloned().unwrap_or_default(),
        meta.clone(),
    ))
    .unwrap();
    s.install_snapshot(
        &SnapshotMeta {
            index: 1,
            term: 1,
            membership: Membership::new([1, 2, 3], [4]),
        },
        Bytes::new(),
    )
    .unwrap();
    s.append(&[
        control(2, 5, EntryKind::LeaderNoop, b""),
        data(3, 5, &["v"]),
    ])
    .unwrap();
    s.set_hard_state(HardState {
        term: 5,
        vote: 3,
        commit: 0,
    })
    .unwrap();
    let t = s.sync().unwrap();
    block_on(s.run_until_idle()).unwrap();
    assert_eq!(s.synced(), t);
    drop(s);
    meta.stop();
    thread.join();
    let (meta, rec, thread) = MetaStore::open(tmp.path()).unwrap();
    let s: SegmentStore<FaultyDir, MetaStore> = block_on(SegmentStore::open(
        G,
        dir,
        cfg(),
        rec.groups[&G].clone(),
        meta.clone(),
    ))
    .unwrap();
    let st = s.initial_state();
    assert_eq!((st.hard_state.term, st.hard_state.vote), (5, 3));
    assert_eq!(st.membership, Membership::new([1, 2, 3], [4]));
    assert_eq!(s.last_index(), 3);
    // The no-op (2) takes no offset: the first record is at 0.
    assert_eq!(s.offsets(2), Some((0, 0)));
    assert_eq!(s.offsets(3), Some((0, 1)));
    drop(s);
    meta.stop();
    thread.join();
}

/// The broker's single-node wiring (a group of one per partition), end to end: the driver
/// over the segment store, the pump run after every `process`, commits reported as Kafka
/// offsets; after a crash the log, the hard state (§5.1) and the offsets come back and new
/// batches continue where the log ended. A leader's no-op of each term is a control batch
/// (§5.4.2, §8) between the data batches.
#[test]
fn s5_1_single_node_group_over_the_segment_log_survives_a_restart() {
    use crate::{Driver, DriverConfig, Event, GroupInit, ManualClock, MemNetwork};

    fn drive(d: &mut Driver<Store, crate::MemTransport, ManualClock>, s: &Store) {
        for _ in 0..100 {
            d.process();
            if s.is_idle() {
                break;
            }
            block_on(s.run_until_idle()).unwrap();
        }
        d.process();
    }
    fn committed(d: &mut Driver<Store, crate::MemTransport, ManualClock>) -> Vec<LogEntry> {
        d.take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Committed { entries, .. } => Some(entries),
                _ => None,
            })
            .flatten()
            .collect()
    }

    let node = Node::new(12);
    let net = MemNetwork::new();
    let mut hw = 0;
    for incarnation in 0..2u64 {
        let s = node.open(SegmentConfig {
            checkpoint_bytes: 1,
            ..cfg()
        });
        let mut cfg = DriverConfig::new(1);
        cfg.incarnation = incarnation;
        let mut d = Driver::new(cfg, net.endpoint(1), ManualClock::new());
        d.add_group(G, s.clone(), GroupInit::Bootstrap(Membership::new([1], [])))
            .unwrap();
        drive(&mut d, &s);
        d.campaign(G).unwrap();
        drive(&mut d, &s);
        assert_eq!(d.leader(G), Some(1));
        let mut proposals = Vec::new();
        for i in 0..3 {
            let batch = data_batch(&[format!("inc{incarnation}-{i}").as_bytes(), b"x"], 0);
            proposals.push(d.propose(G, batch).unwrap());
            drive(&mut d, &s);
        }
        let got = committed(&mut d);
        let last = got.last().unwrap().index;
        assert_eq!(last, proposals[2].index);
        // The high watermark as a Kafka offset: two records per batch; the no-op takes none,
        // so the offsets go on without a gap across the restart's election.
        let new_hw = s.offset_after(last).unwrap();
        assert_eq!(new_hw, hw + 3 * 2, "incarnation {incarnation}");
        let noop = got
            .iter()
            .find(|e| e.kind == EntryKind::LeaderNoop)
            .expect("the term's no-op");
        assert_eq!(s.offsets(noop.index), Some((hw, hw)));
        hw = new_hw;
        assert_eq!(d.status(G).unwrap().term, incarnation + 2);
        drop(d);
        drop(s);
        node.crash(CrashMode::DropUnsynced, incarnation);
    }
    let s = node.open(cfg());
    assert_eq!(s.next_offset(), hw);
    assert_eq!(s.initial_state().hard_state.term, 3);
    assert_eq!(s.initial_state().hard_state.vote, 1);
}

/// §5.1: a sync token completes only once *its own* writes were durable. Appends of one Ready
/// followed (before the pump ran) by another Ready that truncates them: the first Ready's
/// acknowledgements may leave only after its entries were fsynced, so the pump fsyncs before
/// it truncates. (The simulator found the coalesced version, which truncated first: seed 6524
/// of 10,000 with pump scheduling lag.)
#[test]
fn s5_1_a_token_completes_only_after_its_own_entries_were_durable() {
    let node = Node::new(13);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1, 2, 3]);
    s.append(&[data(2, 2, &["a"])]).unwrap();
    s.set_hard_state(HardState {
        term: 2,
        vote: 1,
        commit: 2,
    })
    .unwrap();
    s.sync().unwrap();
    settle(&s);
    // Ready 1: entries 3..=5 of term 2 (its acknowledgement says "5").
    s.append(&(3..=5).map(|i| data(i, 2, &["old"])).collect::<Vec<_>>())
        .unwrap();
    let t1 = s.sync().unwrap();
    // Ready 2, before the pump ran: a term-3 leader's entry 3 replaces them.
    s.truncate_suffix(3).unwrap();
    s.append(&[data(3, 3, &["new"])]).unwrap();
    s.set_hard_state(HardState {
        term: 3,
        vote: 0,
        commit: 2,
    })
    .unwrap();
    let t2 = s.sync().unwrap();
    let mut pump = Box::pin(s.pump());
    assert!(block_on(futures_lite::future::poll_once(&mut pump)).is_none());
    // The pump stopped (yielded) right after completing t1: the disk holds 3..=5 of term 2.
    assert_eq!(s.synced(), t1);
    assert_eq!(s.durable_last_index(), 5);
    assert!(block_on(futures_lite::future::poll_once(&mut pump)).is_none());
    assert_eq!(s.synced(), t2);
    assert_eq!(s.durable_last_index(), 3);
    drop(pump);
    drop(s);
    let s = node.open(cfg());
    assert_eq!(s.last_index(), 3);
    assert_eq!(s.term(3), Ok(3));
}

/// Raft Figure 2 (`lastApplied` is volatile): a clean close finishes the queued writes next to
/// a running pump, records the applied checkpoint (so a restart replays nothing) and ends the
/// pump.
#[test]
fn close_finishes_queued_work_and_records_the_applied_checkpoint() {
    let node = Node::new(14);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1]);
    s.append(&(2..=4).map(|i| data(i, 2, &["c"])).collect::<Vec<_>>())
        .unwrap();
    s.sync().unwrap();
    settle(&s);
    s.on_applied(4);
    s.append(&[data(5, 2, &["queued"])]).unwrap();
    s.sync().unwrap();
    let pump = s.pump();
    let ((), closed) = block_on(futures_lite::future::zip(pump, s.close()));
    closed.unwrap();
    drop(s);
    node.crash(CrashMode::DropUnsynced, 14);
    let s = node.open(cfg());
    assert_eq!(s.last_index(), 5);
    assert_eq!(s.initial_state().applied, 4);
}

fn noop(index: u64, term: u64) -> LogEntry {
    control(index, term, EntryKind::LeaderNoop, b"")
}

/// Every entry of the store: index, term, kind and Kafka offsets `(base, next)`.
fn shape(s: &Store) -> Vec<(u64, u64, EntryKind, (u64, u64))> {
    (s.first_index()..=s.last_index())
        .map(|i| {
            let e = s.index_entry(i).unwrap();
            (i, e.term, e.kind, s.offsets(i).unwrap())
        })
        .collect()
}

/// Raft §5.4.2 / §8 (a leader's no-op of its term), stored as a zero-width control batch: the
/// no-op at the start of a new partition takes no offset — the first record is at offset 0
/// — and the no-ops of later elections leave no gap: Kafka offsets count records only.
#[test]
fn s8_a_leader_noop_takes_no_offset() {
    let node = Node::new(20);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1]);
    s.append(&[
        noop(2, 2),
        data(3, 2, &["a", "b"]),
        noop(4, 3),
        data(5, 3, &["c"]),
    ])
    .unwrap();
    assert_eq!(
        shape(&s),
        vec![
            (2, 2, EntryKind::LeaderNoop, (0, 0)),
            (3, 2, EntryKind::Data, (0, 2)),
            (4, 3, EntryKind::LeaderNoop, (2, 2)),
            (5, 3, EntryKind::Data, (2, 3)),
        ]
    );
    assert_eq!(s.offset_after(2), Some(0));
    assert_eq!(s.next_offset(), 3);
    // (The index costs this much memory per entry; raft/README.md says so.)
    assert_eq!(std::mem::size_of::<IndexEntry>(), 32);
    s.sync().unwrap();
    settle(&s);
    // The data batches carry offsets 0 and 2 (the log stamped them), and the log ends at 3.
    let got = all_entries(&s);
    assert_eq!(got[1].payload, stamped(&data(3, 2, &["a", "b"]), 0));
    assert_eq!(got[3].payload, stamped(&data(5, 3, &["c"]), 2));
    assert_eq!(s.with_log(|l| l.log_end_offset()), Some(3));
    // A Kafka read at offset 0 starts with the data batch, never with the no-op.
    let read = s.with_log(|l| l.plan_read(0, 1 << 20).unwrap()).unwrap();
    let bytes = block_on(read.run()).unwrap().bytes;
    let h = check_first(&bytes, 1 << 20).unwrap();
    assert_eq!((h.base_offset, h.record_count), (0, 2));
}

/// §5.1 / §5.3: entries with no-ops — at offset 0, several at one offset (elections without
/// data in between), and a trailing one (the state right after an election) — come back with
/// the same indexes, terms, kinds and offsets after a clean close and after a crash whose
/// recovery scans the segments.
#[test]
fn s5_3_noops_come_back_with_the_same_indexes_and_terms() {
    for crash in [false, true] {
        let node = Node::new(21);
        let mut s = node.open(cfg());
        bootstrap(&mut s, &[1, 2, 3]);
        s.append(&[
            noop(2, 2),
            data(3, 2, &["a", "b", "c"]),
            noop(4, 3),
            noop(5, 4),
            control(6, 4, EntryKind::ConfChange, b"\x08\x01"),
            data(7, 4, &["d"]),
            noop(8, 5),
        ])
        .unwrap();
        s.set_hard_state(HardState {
            term: 5,
            vote: 1,
            commit: 6,
        })
        .unwrap();
        s.sync().unwrap();
        settle(&s);
        assert_eq!(s.durable_last_index(), 8);
        let want = shape(&s);
        assert_eq!(
            want[2..],
            [
                (4, 3, EntryKind::LeaderNoop, (3, 3)),
                (5, 4, EntryKind::LeaderNoop, (3, 3)),
                (6, 4, EntryKind::ConfChange, (3, 4)),
                (7, 4, EntryKind::Data, (4, 5)),
                (8, 5, EntryKind::LeaderNoop, (5, 5)),
            ]
        );
        let entries = all_entries(&s);
        if crash {
            drop(s);
            node.crash(CrashMode::DropUnsynced, 21);
            // No index files nor checkpoint: recovery scans every segment.
            for n in block_on(node.dir.list()).unwrap() {
                if n.ends_with("index") || n.starts_with("segments") {
                    block_on(node.dir.remove(&n)).unwrap();
                }
            }
        } else {
            block_on(s.close()).unwrap();
            drop(s);
        }
        let mut s = node.open(cfg());
        assert_eq!(shape(&s), want, "crash {crash}");
        assert_eq!(all_entries(&s), entries);
        assert_eq!(s.membership_indexes(0).unwrap(), vec![6]);
        assert_eq!(s.next_offset(), 5);
        // Appends go on after the trailing no-op, at its offset.
        s.append(&[data(9, 5, &["e"])]).unwrap();
        assert_eq!(s.offsets(9), Some((5, 6)));
        s.sync().unwrap();
        settle(&s);
        drop(s);
        let s = node.open(cfg());
        assert_eq!(s.last_index(), 9);
        assert_eq!(s.offsets(8), Some((5, 5)));
    }
}

/// The usual state of a group of one after each restart: its log ends with the no-op of the
/// term it just elected itself in, and nothing else was written. Such trailing no-ops (at the
/// log end, which a read by offset never returns) survive reopens and crashes, and pile up at
/// the same offset, restart after restart.
#[test]
fn s5_1_trailing_noops_survive_reopen() {
    let node = Node::new(22);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1]);
    s.append(&[noop(2, 2)]).unwrap();
    s.sync().unwrap();
    settle(&s);
    drop(s);
    for term in 3..6u64 {
        let mut s = node.open(cfg());
        assert_eq!(s.last_index(), term - 1);
        assert_eq!(s.term(term - 1), Ok(term - 1));
        assert_eq!(s.next_offset(), 0);
        s.append(&[noop(term, term)]).unwrap();
        s.sync().unwrap();
        settle(&s);
        drop(s);
        node.crash(CrashMode::DropUnsynced, term);
    }
    let s = node.open(cfg());
    assert_eq!(
        shape(&s),
        (2..6)
            .map(|t| (t, t, EntryKind::LeaderNoop, (0, 0)))
            .collect::<Vec<_>>()
    );
    assert_eq!(s.with_log(|l| l.log_end_offset()), Some(0));
    let got = all_entries(&s);
    assert!(got
        .iter()
        .all(|e| e.kind == EntryKind::LeaderNoop && e.payload.is_empty()));
}

/// §5.1: durability is counted in entries, not by the log's committed offset, which a no-op
/// does not move: a round that writes only a no-op completes its token once the no-op was
/// fsynced — not before (a crash before the fsync loses it) — while the committed offset
/// stays where it was.
#[test]
fn s5_1_a_noop_only_flush_is_durable_only_after_its_fsync() {
    let node = Node::new(23);
    let open = Rc::new(Cell::new(true));
    let gated = || SegmentConfig {
        sync_gate: Some(Rc::new(Hold(Rc::clone(&open)))),
        ..cfg()
    };
    let mut s = node.open(gated());
    bootstrap(&mut s, &[1]);
    s.append(&[noop(2, 2), data(3, 2, &["a"])]).unwrap();
    s.sync().unwrap();
    settle(&s);
    // A new term's no-op alone; its fsync is held.
    open.set(false);
    s.append(&[noop(4, 3)]).unwrap();
    let t = s.sync().unwrap();
    let mut pump = Box::pin(s.pump());
    assert!(block_on(futures_lite::future::poll_once(&mut pump)).is_none());
    assert!(s.synced() < t);
    assert_eq!(s.durable_last_index(), 3);
    // Written, not fsynced: a crash loses it.
    drop(pump);
    drop(s);
    node.crash(CrashMode::DropUnsynced, 23);
    open.set(true);
    let mut s = node.open(gated());
    assert_eq!(s.last_index(), 3);
    // Again, with the fsync let through.
    s.append(&[noop(4, 3)]).unwrap();
    let t = s.sync().unwrap();
    let committed = s.with_log(|l| l.committed_offset()).unwrap();
    let mut pump = Box::pin(s.pump());
    assert!(block_on(futures_lite::future::poll_once(&mut pump)).is_none());
    assert_eq!(s.synced(), t);
    assert_eq!(s.durable_last_index(), 4);
    assert_eq!(s.with_log(|l| l.committed_offset()), Some(committed));
    drop(pump);
    drop(s);
    node.crash(CrashMode::DropUnsynced, 24);
    let s = node.open(gated());
    assert_eq!(s.last_index(), 4);
    assert_eq!(s.term(4), Ok(3));
    assert_eq!(s.offsets(4), Some((1, 1)));
}

/// §5.3: a divergent suffix that starts at a no-op, or right after one that shares its
/// offset, is removed exactly: the no-ops before it at that offset stay (one may be
/// committed: §5.4.3), the ones from it on go — also a trailing no-op at the log end —
/// durably, across a crash.
#[test]
fn s5_3_truncation_at_and_after_noops_sharing_an_offset() {
    let node = Node::new(24);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1, 2, 3]);
    s.append(&[noop(2, 2), data(3, 2, &["a", "b"]), noop(4, 3)])
        .unwrap();
    s.set_hard_state(HardState {
        term: 3,
        vote: 1,
        commit: 3,
    })
    .unwrap();
    s.sync().unwrap();
    settle(&s);
    // The trailing no-op of term 3 (at the log end, offset 2) loses to term 4's.
    s.truncate_suffix(4).unwrap();
    s.append(&[noop(4, 4), data(5, 4, &["c"])]).unwrap();
    s.set_hard_state(HardState {
        term: 4,
        vote: 2,
        commit: 4,
    })
    .unwrap();
    s.sync().unwrap();
    settle(&s);
    assert_eq!(s.durable_last_index(), 5);
    // The committed no-op 4 shares offset 2 with entry 5: truncating 5 keeps it.
    assert!(matches!(s.truncate_suffix(4), Err(StoreError::Invalid(_))));
    s.truncate_suffix(5).unwrap();
    s.append(&[noop(5, 5), data(6, 5, &["d", "e"])]).unwrap();
    s.sync().unwrap();
    settle(&s);
    let want = vec![
        (2, 2, EntryKind::LeaderNoop, (0, 0)),
        (3, 2, EntryKind::Data, (0, 2)),
        (4, 4, EntryKind::LeaderNoop, (2, 2)),
        (5, 5, EntryKind::LeaderNoop, (2, 2)),
        (6, 5, EntryKind::Data, (2, 4)),
    ];
    assert_eq!(shape(&s), want);
    let entries = all_entries(&s);
    drop(s);
    node.crash(CrashMode::DropUnsynced, 24);
    let s = node.open(cfg());
    assert_eq!(shape(&s), want);
    assert_eq!(all_entries(&s), entries);
    // On disk, in file order: exactly one batch per entry (the old no-op and data are gone).
    let mut batches = Vec::new();
    let mut at = BatchAt::offset(0);
    loop {
        let run = s
            .with_log(|l| l.plan_read_at(at, 1 << 20).unwrap())
            .map(|p| block_on(p.run()).unwrap())
            .unwrap();
        if run.bytes.is_empty() {
            break;
        }
        batches.extend(split_batches(run.bytes, 1 << 20).unwrap());
        at = run.next;
    }
    let epochs: Vec<(i64, i32)> = batches
        .iter()
        .map(|b| {
            let h = check_first(b, 1 << 20).unwrap();
            (h.base_offset, h.partition_leader_epoch)
        })
        .collect();
    assert_eq!(epochs, vec![(0, 2), (0, 2), (2, 4), (2, 5), (2, 5)]);
}

/// §7: compaction and snapshots at a no-op's index. The anchor's offset is the no-op's base
/// offset (the offset after it); a reopen rebuilds the index from there, passing over the
/// no-ops of the compacted prefix that share that offset, whether the data below stays or
/// goes. A follower installing a snapshot at a no-op restarts its log at that offset.
#[test]
fn s7_compaction_and_snapshots_at_a_noop() {
    for keep_data in [false, true] {
        let node = Node::new(25);
        let c = || SegmentConfig {
            compaction_keeps_data: keep_data,
            ..cfg()
        };
        let mut s = node.open(c());
        bootstrap(&mut s, &[1, 2]);
        let mut entries = vec![noop(2, 2)];
        entries.extend((3..=30).map(|i| data(i, 2, &["0123456789"; 8])));
        entries.extend([noop(31, 3), noop(32, 4), data(33, 4, &["x"]), noop(34, 5)]);
        s.append(&entries).unwrap();
        s.sync().unwrap();
        settle(&s);
        let x = s.offsets(31).unwrap().0;
        assert_eq!(x, 28 * 8);
        s.on_applied(34);
        // Through the first of the two no-ops at x: the second one stays in the Raft log.
        s.compact_prefix(31).unwrap();
        assert_eq!(
            s.anchor(),
            Anchor {
                index: 31,
                term: 3,
                offset: x,
                noop: true
            }
        );
        settle(&s);
        let want = shape(&s);
        assert_eq!(want[0], (32, 4, EntryKind::LeaderNoop, (x, x)));
        // The snapshot of the trailing no-op: the offset after it is its own.
        let payload = s.snapshot_payload(34).unwrap();
        drop(s);
        let mut s = node.open(c());
        assert_eq!(s.log_start(), LogStart { index: 31, term: 3 });
        assert_eq!(shape(&s), want, "keep_data {keep_data}");
        // Through the second: the anchor is again at x, the scan passes over both no-ops.
        s.on_applied(34);
        s.compact_prefix(32).unwrap();
        settle(&s);
        drop(s);
        node.crash(CrashMode::DropUnsynced, 25);
        let s = node.open(c());
        assert_eq!(
            s.anchor(),
            Anchor {
                index: 32,
                term: 4,
                offset: x,
                noop: true
            }
        );
        assert_eq!(shape(&s), want[1..]);
        assert_eq!(all_entries(&s).len(), 2);

        let f = Node::new(26);
        let mut fs = f.open(c());
        bootstrap(&mut fs, &[1, 2]);
        fs.install_snapshot(
            &SnapshotMeta {
                index: 34,
                term: 5,
                membership: Membership::new([1, 2], []),
            },
            payload,
        )
        .unwrap();
        assert_eq!(fs.next_offset(), x + 1);
        fs.append(&[noop(35, 6), data(36, 6, &["y"])]).unwrap();
        fs.sync().unwrap();
        settle(&fs);
        drop(fs);
        let fs = f.open(c());
        assert_eq!(
            shape(&fs),
            vec![
                (35, 6, EntryKind::LeaderNoop, (x + 1, x + 1)),
                (36, 6, EntryKind::Data, (x + 1, x + 2)),
            ]
        );
    }
}

/// Raft async fetch over no-ops: a follower far behind is served entries evicted from memory
/// by loads from the segment files, no-ops (zero-width batches, which a read by offset
/// passes over) included, as what was appended.
#[test]
fn async_loads_serve_noops() {
    let node = Node::new(27);
    let small = || SegmentConfig {
        cache_bytes_max: 0,
        load_bytes_max: 300,
        ..cfg()
    };
    let mut s = node.open(small());
    bootstrap(&mut s, &[1]);
    // Rounds of: a no-op, a data batch of its term, and a no-op of the next term right
    // after it (an election without data): two no-ops share an offset every round.
    let mut entries = Vec::new();
    for r in 0..6u64 {
        let (i, t) = (2 + r * 3, 2 + r * 2);
        entries.extend([noop(i, t), data(i + 1, t, &["p"; 3]), noop(i + 2, t + 1)]);
    }
    let last = entries.last().unwrap().index;
    s.append(&entries).unwrap();
    s.sync().unwrap();
    settle(&s);
    s.on_applied(last);
    let mut got = Vec::new();
    let mut next = 2;
    while next <= last {
        match s.entries(next, last + 1, u64::MAX) {
            Err(StoreError::Loading(i)) => {
                assert_eq!(i, next);
                settle(&s);
            }
            Ok(es) => {
                assert!(!es.is_empty());
                next = es.last().unwrap().index + 1;
                got.extend(es);
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(s.loads_completed() > 1);
    assert_eq!(got.len(), entries.len());
    for (g, e) in got.iter().zip(&entries) {
        assert_eq!((g.index, g.term, g.kind), (e.index, e.term, e.kind));
        match e.kind {
            EntryKind::Data => {
                assert_eq!(g.payload, stamped(e, s.offsets(e.index).unwrap().0));
            }
            _ => assert!(g.payload.is_empty()),
        }
    }
}

/// §7: a snapshot (or bootstrap) anchor is no batch of the log, so the no-op of its own term
/// may follow it at the same offset (raft-rs can elect a leader in the bootstrap's term); a
/// compaction through a no-op anchors *after* that no-op. A reopen tells the two apart.
#[test]
fn s7_a_noop_of_the_anchors_term_follows_a_snapshot_anchor() {
    let node = Node::new(28);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1]);
    s.append(&[noop(2, 1), data(3, 1, &["a"]), noop(4, 2)])
        .unwrap();
    s.sync().unwrap();
    settle(&s);
    let want = shape(&s);
    assert_eq!(want[0], (2, 1, EntryKind::LeaderNoop, (0, 0)));
    drop(s);
    let mut s = node.open(cfg());
    assert_eq!(shape(&s), want);
    s.on_applied(4);
    s.compact_prefix(2).unwrap();
    settle(&s);
    drop(s);
    let s = node.open(cfg());
    assert_eq!(s.log_start(), LogStart { index: 2, term: 1 });
    assert_eq!(shape(&s), want[1..]);
}

/// §5.2 allows a node to win the same term again: its term record was lost in a crash before
/// the round holding its no-op was durable, but the no-op reached the log. Its second no-op of
/// that term right after the first (or after a compaction anchor on the first) would be a
/// second zero-width batch of one epoch at one offset, which a batch place cannot tell apart:
/// it is written with one record instead (it takes an offset) and reads back as a no-op.
#[test]
fn s5_2_a_second_noop_of_one_term_at_one_offset_takes_an_offset() {
    let node = Node::new(29);
    let mut s = node.open(cfg());
    bootstrap(&mut s, &[1]);
    s.append(&[noop(2, 2), noop(3, 2), data(4, 2, &["a"]), noop(5, 2)])
        .unwrap();
    let want = vec![
        (2, 2, EntryKind::LeaderNoop, (0, 0)),
        (3, 2, EntryKind::LeaderNoop, (0, 1)),
        (4, 2, EntryKind::Data, (1, 2)),
        // Not at the offset of the previous no-op: zero-width again.
        (5, 2, EntryKind::LeaderNoop, (2, 2)),
    ];
    assert_eq!(shape(&s), want);
    s.sync().unwrap();
    settle(&s);
    s.on_applied(5);
    // Compaction through the trailing no-op anchors on it: the next no-op of its term, right
    // after, takes an offset too.
    s.compact_prefix(5).unwrap();
    assert!(s.anchor().noop);
    s.append(&[noop(6, 2), noop(7, 3)]).unwrap();
    assert_eq!(s.offsets(6), Some((2, 3)));
    assert_eq!(s.offsets(7), Some((3, 3)));
    s.sync().unwrap();
    settle(&s);
    let want = shape(&s);
    let entries = all_entries(&s);
    assert!(entries.iter().all(|e| e.payload.is_empty()));
    // A follower that installs a snapshot of the no-op at 5 writes the same entries at the
    // same offsets (the payload carries the no-op flag).
    let payload = s.snapshot_payload(5).unwrap();
    let f = Node::new(30);
    let mut fs = f.open(cfg());
    bootstrap(&mut fs, &[1]);
    fs.install_snapshot(
        &SnapshotMeta {
            index: 5,
            term: 2,
            membership: Membership::new([1], []),
        },
        payload,
    )
    .unwrap();
    assert!(fs.anchor().noop);
    fs.append(&[noop(6, 2), noop(7, 3)]).unwrap();
    assert_eq!(shape(&fs), want);
    fs.sync().unwrap();
    settle(&fs);
    drop(fs);
    assert_eq!(shape(&f.open(cfg())), want);
    drop(s);
    node.crash(CrashMode::DropUnsynced, 29);
    let s = node.open(cfg());
    assert_eq!(shape(&s), want);
    assert_eq!(all_entries(&s), entries);
}

/// A source that reads the leader's store directly (or fails).
struct Direct(Option<Store>);

impl super::SnapshotSource for Direct {
    fn fetch(
        &self,
        _from: NodeIdT,
        _group: GroupId,
        at: BatchAt,
        end: BatchAt,
        max_bytes: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, StoreError>>>> {
        match &self.0 {
            Some(s) => Box::pin(s.serve_transfer(at, end, max_bytes)),
            None => Box::pin(async { Err(StoreError::Io("unreachable".into())) }),
        }
    }
}

async fn all_batches(s: &Store) -> Bytes {
    let mut out = BytesMut::new();
    let start = s.with_log(|l| l.log_start_offset()).unwrap();
    let mut at = BatchAt::offset(start);
    loop {
        let run = s
            .with_log(|l| l.plan_read_at(at, 1 << 20))
            .unwrap()
            .unwrap();
        let run = run.run().await.unwrap();
        if run.bytes.is_empty() {
            return out.freeze();
        }
        at = run.next;
        out.extend_from_slice(&run.bytes);
    }
}

/// Raft §7: a follower behind the leader's log start gets the leader's batches below the
/// snapshot point by segment transfer (byte for byte), keeps its own log while the transfer
/// fails, and keeps the transferred log across a reopen.
#[test]
fn s7_snapshot_transfers_the_leaders_segments() {
    let leader = Node::new(15);
    let mut l = leader.open(cfg());
    bootstrap(&mut l, &[1, 2]);
    l.append(&(2..=30).map(|i| data(i, 2, &["r"; 4])).collect::<Vec<_>>())
        .unwrap();
    l.sync().unwrap();
    settle(&l);
    l.on_applied(30);
    l.compact_prefix(20).unwrap();
    settle(&l);
    let payload = l.snapshot_payload(30).unwrap();
    let plan = super::transfer::decode_plan(&payload).unwrap();
    assert_eq!((plan.start, plan.anchor.offset), (l.anchor().offset, 116));
    let meta = SnapshotMeta {
        index: 30,
        term: 2,
        membership: Membership::new([1, 2], []),
    };
    let f = Node::new(16);
    let with = |src: Direct| SegmentConfig {
        snapshot_source: Some(Rc::new(src)),
        transfer_chunk_bytes: 300,
        ..cfg()
    };
    // Unreachable: the snapshot fails, the follower's log stays.
    let mut s = f.open(with(Direct(None)));
    bootstrap(&mut s, &[1, 2]);
    s.append(&[data(2, 1, &["mine"])]).unwrap();
    s.sync().unwrap();
    settle(&s);
    assert_eq!(
        s.prepare_snapshot(1, &meta, &payload),
        SnapshotPrep::Pending
    );
    settle(&s);
    assert!(matches!(
        s.prepare_snapshot(1, &meta, &payload),
        SnapshotPrep::Failed(_)
    ));
    assert_eq!((s.last_index(), s.next_offset()), (2, 1));
    block_on(s.close()).unwrap();
    // Reachable: staged, installed, byte-identical, kept across a reopen.
    let mut s = f.open(with(Direct(Some(l.clone()))));
    assert_eq!(
        s.prepare_snapshot(1, &meta, &payload),
        SnapshotPrep::Pending
    );
    settle(&s);
    assert_eq!(s.prepare_snapshot(1, &meta, &payload), SnapshotPrep::Ready);
    assert_eq!(s.last_index(), 2, "the old log stays until the install");
    s.install_snapshot(&meta, payload.clone()).unwrap();
    s.sync().unwrap();
    settle(&s);
    assert_eq!(s.transfer_stats().installed, 1);
    let want = block_on(all_batches(&l));
    let start = l.with_log(|x| x.log_start_offset()).unwrap();
    assert_eq!(s.with_log(|x| x.log_start_offset()), Some(start));
    assert_eq!(block_on(all_batches(&s)), want);
    block_on(s.close()).unwrap();
    f.crash(CrashMode::DropUnsynced, 1);
    let s = f.open(cfg());
    assert_eq!(s.anchor().offset, 116);
    assert_eq!(block_on(all_batches(&s)), want);
}
