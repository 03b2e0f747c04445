//! The segment-log adapter over the in-memory crash-injecting directory ([`FaultyDir`]) and
//! the in-memory metadata store ([`MemMeta`]); one test over the real metadata store.
//! Everything is driven with `block_on` (the fault-injecting directory never waits).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::Bytes;
use futures_lite::future::block_on;
use spate_storage::log::batch::{check_first, RecordBatch};
use spate_storage::log::faulty::{CrashMode, FaultyDir};
use spate_storage::log::LogConfig;

use super::control::{data_batch, ATTR_CONTROL, CONTROL_TYPE_LEADER_NOOP};
use super::*;
use crate::rng::Prng;

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
    // Offsets: the no-op takes 0, the 3-record batch 1..=3, then 4, the change 5, 6..=7.
    assert_eq!(s.offsets(2), Some((0, 0)));
    assert_eq!(s.offsets(3), Some((1, 3)));
    assert_eq!(s.offsets(4), Some((4, 4)));
    assert_eq!(s.offsets(5), Some((5, 5)));
    assert_eq!(s.offsets(6), Some((6, 7)));
    assert_eq!(s.next_offset(), 8);
    assert_eq!(s.offset_after(1), Some(0));
    let t = s.sync().unwrap();
    assert!(s.synced() < t, "nothing is durable before the pump runs");
    settle(&s);
    assert_eq!(s.synced(), t);
    assert_eq!(s.durable_last_index(), 6);

    // On disk: a control batch (bit 5) whose key is version 0, type 100.
    let read = s
        .with_log(|log| log.plan_read(0, 1 << 20).unwrap())
        .unwrap();
    let bytes = block_on(read.run()).unwrap().bytes;
    let h = check_first(&bytes, 1 << 20).unwrap();
    assert_eq!(h.attributes & ATTR_CONTROL, ATTR_CONTROL);
    assert_eq!(h.partition_leader_epoch, 2);
    let key_at = 61 + 5;
    assert_eq!(
        &bytes[key_at..key_at + 4],
        &[0, 0, 0, CONTROL_TYPE_LEADER_NOOP as u8]
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

/// §5.1: only what a completed sync covered is promised to survive; a crash between the
/// write and the fsync may keep a torn prefix, which recovery cuts at a batch boundary, and
/// the index is rebuilt to match.
#[test]
fn s5_1_a_crash_keeps_a_prefix_of_unsynced_entries() {
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
    assert_eq!(s.offsets(4), Some((2, 3)));
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
        assert_eq!(s.offsets(10), Some((x, x)));
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
    assert_eq!(s.offsets(31), Some((base31, base31 + 7)));
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
    let fake = LogEntry {
        index: 2,
        term: 2,
        kind: EntryKind::Data,
        payload: super::control::encode_control(EntryKind::LeaderNoop, b"", 0, 2),
    };
    assert!(matches!(s.append(&[fake]), Err(StoreError::Invalid(_))));
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
    assert_eq!(s.offsets(3), Some((1, 1)));
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
        // The high watermark as a Kafka offset: two records per batch plus the no-op.
        let new_hw = s.offset_after(last).unwrap();
        assert_eq!(new_hw, hw + 1 + 3 * 2, "incarnation {incarnation}");
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
