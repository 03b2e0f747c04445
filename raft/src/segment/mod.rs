//! The segment-log [`LogStore`]: a group's Raft log *is* its partition's Kafka segment log
//! (spate-storage's [`PartitionLog`]), its hard state and membership live in the node's
//! metadata store.
//!
//! # Mapping
//!
//! * **One Raft entry is one Kafka record batch.** A data entry's payload is a client batch;
//!   its term is the batch's `partition_leader_epoch` and its base offset is assigned by the
//!   log (the next offset), both stamped into the header (outside the CRC). Leader no-ops and
//!   configuration entries are Kafka control batches ([`control`]), which consumers skip. A
//!   **leader no-op is a zero-width control batch** (no records, `last_offset_delta = -1`):
//!   it occupies *no* Kafka offset — it sits at the log's next offset, which the batch after
//!   it gets too — so a partition's first record is at offset 0 and an election (every
//!   restart of a group of one) leaves no gap. Configuration entries carry a payload: one
//!   control record, one offset. So does the rare no-op that follows a zero-width no-op of
//!   its own term at its offset (a node that won the same term twice): two zero-width batches
//!   of one epoch at one offset could not be told apart (see below).
//! * **Raft index ≠ Kafka offset.** Offsets count records, indexes count batches. The store
//!   keeps an in-memory index from Raft index to [`IndexEntry`] (term, base offset, next
//!   offset — exclusive, equal to the base for a no-op —, size, kind) for every entry of the
//!   Raft log, rebuilt on open by scanning the batches from the *log anchor* on. The anchor —
//!   (index, term, offset, no-op flag): "the Raft log starts after `index`, whose term is
//!   `term`, and its next entry starts at Kafka offset `offset`" — is kept in the metadata
//!   store; batches below it (compacted entries, or data written before the partition ran
//!   Raft) are Kafka data but not Raft entries.
//! * **Batches are addressed by place, not offset.** An offset cannot address a no-op: a read
//!   by offset starts at the batch *holding* the offset and passes over a zero-width batch
//!   there, and finds nothing at the log end (where the last election's no-op usually is).
//!   So the store reads and truncates its own batches by [`BatchAt`] — an offset plus the
//!   leader epoch below which zero-width batches at that offset are passed over
//!   ([`IndexEntry::at`]; no-ops at one offset are of distinct, growing terms): the open scan
//!   ([`PartitionLog::read_at`] from the anchor, in file order: a compaction through a no-op
//!   anchors after it, [`Anchor::noop`]), loads for lagging followers and suffix truncation
//!   ([`PartitionLog::truncate_suffix_at`]: a divergent suffix that starts right after a
//!   no-op sharing its offset keeps that no-op). Kafka fetches keep reading by offset
//!   ([`PartitionLog::plan_read`]) and never see a no-op first.
//! * **Metadata** (in the group's region of the metadata store): hard state, membership, the
//!   anchor, the applied checkpoint ([`crate::StoredState::applied`]) and, while a snapshot is
//!   being installed, a reset marker.
//!
//! # Durability: a synchronous facade over asynchronous I/O
//!
//! [`LogStore`] is synchronous (the driver runs raft-rs inside one call), the log's I/O is
//! not. Every write updates an in-memory *view* at once (what the driver reads back) and
//! queues an operation; [`LogStore::sync`] hands out a token for "everything queued so far".
//! The **pump** ([`SegmentStore::pump`], one task per store on the partition's shard) drains
//! the queue in order: appends go into the log's appender (in memory), suffix truncations run
//! [`PartitionLog::truncate_suffix_at`] (durable on return), and then, concurrently, one group
//! commit of the log (write + `fdatasync`, [`PartitionLog::start_flush`] and friends) and one
//! metadata-store write (hard state, membership). Durability is counted in entries: a group
//! commit takes every byte appended so far, so when its `fdatasync` completes every entry
//! appended before it started is durable — a no-op too, although it never moves the log's
//! committed offset. When both are durable, every token issued
//! before the drain completes and the pump calls `on_progress` (and yields once); the owner
//! then calls
//! [`crate::Driver::process`], which releases the messages that waited for that sync (vote
//! grants, append acknowledgements) and lets raft-rs count the leader's own copy. A leader's
//! appends leave before its fsync, so the fsync overlaps replication (thesis §10.2.1).
//!
//! Ordering rules the pump keeps:
//!
//! * a token completes only once *its own* writes were durable: coalescing a round's writes
//!   into one fsync is fine, except across a suffix truncation — what precedes a truncation is
//!   fsynced (and its tokens completed) before the truncation runs, or an acknowledgement could
//!   leave for entries that were truncated before ever reaching the disk (§5.1; found by the
//!   simulator's at-send durability check). Hard-state writes do coalesce: a later term
//!   supersedes an earlier one, and a node never votes in a term below its durable one;
//! * term/vote changes are written with the same sync as the entries of that Ready (Raft §5.1:
//!   durable before any message that depends on them leaves); a change of the commit index
//!   alone is not written (it is advisory, the driver derives it on restart);
//! * the applied checkpoint is written only for entries already durable in the log *before*
//!   that metadata write is issued, together with (or after) every membership record up to it;
//! * compaction writes the new anchor durably *before* deleting segments; snapshot
//!   installation writes anchor + membership + a reset marker durably, then resets the log,
//!   then clears the marker (a restart that finds the marker redoes the reset), so a crash
//!   keeps the membership and the log reset together or neither (Raft §7).
//!
//! # Reads
//!
//! Payloads of entries above the applied index are always in memory (raft-rs reads committed
//! entries and pending configuration changes synchronously). Below it, payloads stay cached
//! up to [`SegmentConfig::cache_bytes_max`] once durable; a read of an evicted entry (a
//! follower far behind) answers [`StoreError::Loading`], the pump reads the batches from the
//! segment files (by place, no-ops included) and the driver retries (raft-rs async fetch).
//!
//! # Snapshots
//!
//! A snapshot payload (version 3) is the snapshot anchor — the Kafka offset `S` after the
//! snapshot index (the no-op's own offset when the snapshot index is a no-op) — plus the
//! leader's retained range: the offset `L` its data starts at (its anchor's offset, or with
//! [`SegmentConfig::compaction_keeps_data`] its Kafka log start) and a size estimate. With a
//! [`SegmentConfig::snapshot_source`], a follower first **transfers** `[L, S)` — every batch,
//! byte for byte with its offsets and epochs, zero-width no-ops included — into a staging
//! area beside its log, and only then lets Raft install the snapshot, which swaps the staged
//! log in crash-safely ([`transfer`]). Without a source (or from a version 1/2 payload) the
//! follower's log restarts, empty, at `S`. Producer state is not transferred (the broker's).

pub mod control;
pub mod meta;
#[cfg(test)]
mod tests;
pub mod transfer;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use spate_storage::log::batch::{check_first, RecordBatch};
use spate_storage::log::file::{SegmentDir, SegmentFile};
use spate_storage::log::segment::segment_name;
use spate_storage::log::{BatchAt, LogConfig, LogError, PartitionLog};
use spate_storage::metastore::{GroupHardState, GroupMembership, GroupState, GroupWrite};

use self::control::{decode_entry, encode_control, encode_control_record, is_spate_control};
pub use self::meta::{MemMeta, MetaIo};
pub use self::transfer::{SnapshotSource, TransferPlan, TransferStats};
use crate::store::{LogStore, StoreError, StoredState, SyncToken};
use crate::types::{EntryKind, GroupId, HardState, LogEntry, LogStart, Membership, SnapshotMeta};

/// Metadata key of the log anchor.
pub const KEY_ANCHOR: &[u8] = b"raft/anchor";
/// Metadata key of the applied checkpoint.
pub const KEY_APPLIED: &[u8] = b"raft/applied";
/// Metadata key of a snapshot installation in progress.
pub const KEY_RESET: &[u8] = b"raft/reset";

const SNAPSHOT_MAGIC: &[u8; 4] = b"SPSN";
/// Version 2 adds the no-op flag ([`Anchor::noop`]); version 1 (without it) still decodes.
/// Version 3 (written by [`transfer::encode_plan`]) adds the transfer range.
const SNAPSHOT_VERSION: u8 = 2;
const SNAPSHOT_LEN_V1: usize = 4 + 1 + 3 * 8;
const SNAPSHOT_LEN: usize = SNAPSHOT_LEN_V1 + 1;

/// A hook the pump awaits between writing a flush and `fdatasync`ing it. Production passes
/// none; the simulator uses it to hold syncs for a simulated latency, so crashes can hit
/// written-but-unsynced data (torn tails).
pub trait SyncGate {
    /// Resolves when the fsync may start.
    fn wait(&self) -> Pin<Box<dyn Future<Output = ()>>>;
}

/// The owner's timer: a future that resolves after the given time.
pub type Sleep = Rc<dyn Fn(std::time::Duration) -> Pin<Box<dyn Future<Output = ()>>>>;

/// Tunables of one [`SegmentStore`].
#[derive(Clone)]
pub struct SegmentConfig {
    /// The partition log's own settings.
    pub log: LogConfig,
    /// Payload bytes kept in memory for applied, durable entries (entries above the applied
    /// index are always in memory). Followers that fall further behind are served by loads.
    pub cache_bytes_max: u64,
    /// Upper bound of one asynchronous load.
    pub load_bytes_max: usize,
    /// The applied checkpoint is written once this many batch bytes were applied since the
    /// last one, even without another metadata write to ride on. It bounds what a restart
    /// keeps in memory (entries after the checkpoint) and replays.
    pub checkpoint_bytes: u64,
    /// How much the open scan reads at a time.
    pub scan_bytes: usize,
    /// Called after the pump completed a round or a load: call [`crate::Driver::process`].
    pub on_progress: Option<Rc<dyn Fn(GroupId)>>,
    /// See [`SyncGate`].
    pub sync_gate: Option<Rc<dyn SyncGate>>,
    /// Sleeps for the given time (the owner's runtime timer). With it, the pump waits out
    /// conditions that pass instead of failing the store: a full disk (the flush's bytes go
    /// back into the log's appender and the flush is retried every
    /// [`spate_storage::log::DISK_FULL_RETRY`]; appends are refused by the log meanwhile)
    /// and a suffix truncation refused while a compaction swap is in flight (retried every
    /// millisecond). Without it, both fail the store.
    pub sleep: Option<Sleep>,
    /// Told how long each segment-log `fdatasync` took (the owner's metrics).
    pub on_fsync: Option<Rc<dyn Fn(std::time::Duration)>>,
    /// What Raft log compaction (`compact_prefix`) does to the partition's data below the new
    /// anchor. `false` (the default): whole segments below it are deleted (`truncate_prefix`)
    /// — the Raft log *is* the retained log. `true`: only the anchor moves and the Kafka data
    /// stays, for the topic's retention (`retention.ms`/`bytes`, DeleteRecords) to remove —
    /// the broker compacts the Raft log to keep a reopen's index rebuild short (it reads only
    /// from the anchor), not to free space.
    pub compaction_keeps_data: bool,
    /// Where a follower installing a snapshot fetches the leader's retained data below the
    /// snapshot point (segment transfer, [`transfer`]). `None`: the log restarts empty at the
    /// snapshot's offset (no data below it is copied).
    pub snapshot_source: Option<Rc<dyn SnapshotSource>>,
    /// Upper bound of one transfer fetch.
    pub transfer_chunk_bytes: usize,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig {
            log: LogConfig::default(),
            cache_bytes_max: 1 << 20,
            load_bytes_max: 1 << 20,
            checkpoint_bytes: 8 << 20,
            scan_bytes: 1 << 20,
            on_progress: None,
            sync_gate: None,
            sleep: None,
            on_fsync: None,
            compaction_keeps_data: false,
            snapshot_source: None,
            transfer_chunk_bytes: 1 << 20,
        }
    }
}

/// Where the Raft log starts in the Kafka log (see the module documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Anchor {
    /// Last Raft index not in the log.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Kafka offset of the entry `index + 1`.
    pub offset: u64,
    /// The entry at `index` is a zero-width leader no-op, *at* `offset`: entry `index + 1`
    /// may follow it at the same offset (a compaction through a no-op; a snapshot of one,
    /// whose flag the follower takes over). The open scan then passes over the zero-width
    /// batches at `offset` up to term `term` included, otherwise only those of earlier terms
    /// (the bootstrap anchor is no batch of the log, and the no-op of its term may still
    /// follow it); a no-op of term `term` right after the anchor takes an offset (see
    /// [`LogStore::append`] on [`SegmentStore`]).
    pub noop: bool,
}

impl Anchor {
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(25);
        b.put_u64(self.index);
        b.put_u64(self.term);
        b.put_u64(self.offset);
        b.put_u8(u8::from(self.noop));
        b.freeze()
    }

    /// 25 bytes; 24 (no flags: not a no-op) as written before no-ops were zero-width.
    fn decode(v: &[u8]) -> Result<Anchor, StoreError> {
        if v.len() != 24 && v.len() != 25 {
            return Err(StoreError::Invalid(format!(
                "anchor record of {} bytes",
                v.len()
            )));
        }
        let u = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
        let noop = match v.get(24) {
            None | Some(0) => false,
            Some(1) => true,
            Some(f) => {
                return Err(StoreError::Invalid(format!("anchor record flags {f:#x}")));
            }
        };
        Ok(Anchor {
            index: u(0),
            term: u(8),
            offset: u(16),
            noop,
        })
    }

    /// Where the Raft log's first entry is in the Kafka log, as a batch place: after every
    /// zero-width batch at `offset` that belongs below the anchor.
    fn first_batch(&self) -> BatchAt {
        let term = i64::try_from(self.term).unwrap_or(i64::MAX);
        BatchAt {
            offset: self.offset,
            min_epoch: if self.noop {
                term.saturating_add(1)
            } else {
                term
            },
        }
    }
}

/// One Raft entry in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Raft term (the batch's leader epoch).
    pub term: u64,
    /// Kafka offset of the batch's first record (for a leader no-op, which holds none: the
    /// offset of the batch after it).
    pub base_offset: u64,
    /// The offset after its last record (exclusive): `base_offset` for a leader no-op, a
    /// zero-width control batch that occupies no offset.
    pub next_offset: u64,
    /// Batch size in bytes.
    pub len: u32,
    /// Data or control.
    pub kind: EntryKind,
}

impl IndexEntry {
    /// Whether the entry occupies no Kafka offset (a leader no-op).
    pub fn is_zero_width(&self) -> bool {
        self.next_offset == self.base_offset
    }

    /// The entry's batch as a place in the log: a zero-width no-op by its term (every batch
    /// at its offset in a file before it is a no-op of an earlier term), any other batch
    /// after every no-op at its offset (of its own term or earlier).
    pub fn at(&self) -> BatchAt {
        let epoch = i64::try_from(self.term).unwrap_or(i64::MAX);
        BatchAt {
            offset: self.base_offset,
            min_epoch: if self.is_zero_width() {
                epoch
            } else {
                epoch.saturating_add(1)
            },
        }
    }
}

enum Op {
    Append(Vec<(RecordBatch, u64, u64)>),
    Truncate {
        from: u64,
        at: BatchAt,
        floor: u64,
    },
    HardState(HardState),
    Membership(u64, Membership),
    Install {
        anchor: Anchor,
        membership: (u64, Membership),
        reset: bool,
    },
    Compact(Anchor),
}

/// What the pump made of the log (which may lag the view). Durability is counted in
/// entries, not read off the log's committed offset: a leader no-op occupies no offset, so
/// it never moves that offset.
#[derive(Default)]
struct Disk {
    anchor: Anchor,
    /// Entries at or below this are durable and applied: they can no longer change.
    fixed: u64,
    /// Highest index appended to the log (into its appender; maybe not written yet).
    appended: u64,
    /// Highest index durable in the log.
    durable: u64,
    /// A snapshot installation is running.
    installing: bool,
    /// Segment transfers for snapshots ([`transfer`]).
    transfers: transfer::Transfers,
}

impl Disk {
    fn at(anchor: Anchor) -> Disk {
        Disk {
            anchor,
            fixed: anchor.index,
            appended: anchor.index,
            durable: anchor.index,
            installing: false,
            transfers: transfer::Transfers::default(),
        }
    }

    /// A group commit of the log that started when `upto` was the last index appended has
    /// completed (written and fdatasynced): every entry up to it is durable — zero-width
    /// no-ops too, whose bytes the commit carried although they move no offset. Entries at
    /// or below `commit` (applied) that are durable can no longer change.
    fn advance(&mut self, upto: u64, commit: u64) {
        self.durable = self.durable.max(upto.min(self.appended));
        self.fixed = self.fixed.max(self.durable.min(commit));
    }
}

struct Inner<D: SegmentDir, M> {
    group: GroupId,
    cfg: SegmentConfig,
    dir: D,
    meta: M,
    /// `None` only while the pump runs an exclusive operation on it (truncation, reset).
    log: Option<PartitionLog<D>>,

    // The view.
    anchor: Anchor,
    index: VecDeque<IndexEntry>,
    /// Payloads of the entries `cache_floor ..= last`.
    cache_floor: u64,
    cache: VecDeque<Bytes>,
    cache_bytes: u64,
    /// Entries read by the last load (contiguous).
    fetched: VecDeque<LogEntry>,
    hard_state: HardState,
    membership: (u64, Membership),
    applied: u64,
    known_commit: u64,
    checkpoint_at_open: u64,
    queued_term_vote: (u64, u64),

    // Queued work.
    ops: VecDeque<(u64, Op)>,
    next_seq: u64,
    done_seq: u64,
    marks: VecDeque<(SyncToken, u64)>,
    next_token: SyncToken,
    synced: SyncToken,
    load_from: Option<u64>,
    loads: u64,

    // The pump's side.
    disk: Disk,
    checkpoint_written: u64,
    failed: Option<StoreError>,
    pump_waker: Option<Waker>,
    /// Callers waiting for the pump to finish its current round (`close`).
    idle_wakers: Vec<Waker>,
    busy: bool,
    closed: bool,
    durable_generation: u64,
    /// What the segment log's recovery did at open (taken by the owner).
    recovery: Option<spate_storage::log::RecoveryReport>,
}

fn io(e: LogError) -> StoreError {
    StoreError::Io(e.to_string())
}

fn io_std(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

impl<D: SegmentDir, M> Inner<D, M> {
    fn last_index(&self) -> u64 {
        self.anchor.index + self.index.len() as u64
    }

    fn entry(&self, index: u64) -> Option<&IndexEntry> {
        if index <= self.anchor.index {
            return None;
        }
        self.index.get((index - self.anchor.index - 1) as usize)
    }

    fn next_offset(&self) -> u64 {
        self.index
            .back()
            .map_or(self.anchor.offset, |e| e.next_offset)
    }

    fn offset_after(&self, index: u64) -> Option<u64> {
        if index == self.anchor.index {
            Some(self.anchor.offset)
        } else {
            self.entry(index).map(|e| e.next_offset)
        }
    }

    fn term(&self, index: u64) -> Result<u64, StoreError> {
        if index == self.anchor.index {
            return Ok(self.anchor.term);
        }
        if index < self.anchor.index {
            return Err(StoreError::Compacted(index));
        }
        self.entry(index)
            .map(|e| e.term)
            .ok_or(StoreError::Unavailable(index))
    }

    fn check_ok(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn push_op(&mut self, op: Op) {
        self.next_seq += 1;
        self.ops.push_back((self.next_seq, op));
        self.wake_pump();
    }

    fn wake_pump(&mut self) {
        if let Some(w) = self.pump_waker.take() {
            w.wake();
        }
    }

    fn complete_through(&mut self, seq: u64) {
        self.done_seq = self.done_seq.max(seq);
        while let Some(&(token, s)) = self.marks.front() {
            if s > self.done_seq {
                break;
            }
            self.synced = token;
            self.marks.pop_front();
        }
    }

    /// Drops cached payloads of applied, durable entries beyond the budget.
    fn evict(&mut self) {
        let limit = self.applied.min(self.disk.durable);
        while self.cache_bytes > self.cfg.cache_bytes_max && self.cache_floor <= limit {
            let Some(p) = self.cache.pop_front() else {
                break;
            };
            self.cache_bytes -= p.len() as u64;
            self.cache_floor += 1;
        }
    }

    fn cached(&self, index: u64) -> Option<LogEntry> {
        if index < self.cache_floor {
            return None;
        }
        let e = self.entry(index)?;
        let payload = self.cache.get((index - self.cache_floor) as usize)?.clone();
        Some(LogEntry {
            index,
            term: e.term,
            kind: e.kind,
            payload,
        })
    }

    fn fetched_entry(&self, index: u64) -> Option<LogEntry> {
        let first = self.fetched.front()?.index;
        let e = self.fetched.get(index.checked_sub(first)? as usize)?;
        let ie = self.entry(index)?;
        (e.term == ie.term && e.kind == ie.kind).then(|| e.clone())
    }

    /// Batch bytes of the entries `(from, to]` still in the index.
    fn bytes_between(&self, from: u64, to: u64) -> u64 {
        (from.max(self.anchor.index) + 1..=to)
            .filter_map(|i| self.entry(i))
            .map(|e| u64::from(e.len))
            .sum()
    }
}

/// The segment-log [`LogStore`] of one group. A cheap handle: clones share the store (the
/// driver owns one, the pump task and the broker's fetch path hold others). Shard-local.
pub struct SegmentStore<D: SegmentDir, M: MetaIo> {
    inner: Rc<RefCell<Inner<D, M>>>,
}

impl<D: SegmentDir, M: MetaIo> Clone for SegmentStore<D, M> {
    fn clone(&self) -> Self {
        SegmentStore {
            inner: Rc::clone(&self.inner),
        }
    }
}

fn hard_state_to_meta(hs: HardState) -> GroupHardState {
    GroupHardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    }
}

fn membership_to_meta(index: u64, m: &Membership) -> GroupMembership {
    GroupMembership {
        index,
        voters: m.voters.iter().copied().collect(),
        learners: m.learners.iter().copied().collect(),
        voters_outgoing: m.voters_outgoing.iter().copied().collect(),
        learners_next: m.learners_next.iter().copied().collect(),
        auto_leave: m.auto_leave,
    }
}

fn membership_from_meta(m: &GroupMembership) -> (u64, Membership) {
    (
        m.index,
        Membership {
            voters: m.voters.iter().copied().collect(),
            learners: m.learners.iter().copied().collect(),
            voters_outgoing: m.voters_outgoing.iter().copied().collect(),
            learners_next: m.learners_next.iter().copied().collect(),
            auto_leave: m.auto_leave,
        },
    )
}

fn decode_u64(v: &[u8], what: &str) -> Result<u64, StoreError> {
    let a: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Invalid(format!("{what} record of {} bytes", v.len())))?;
    Ok(u64::from_be_bytes(a))
}

/// Whether a file of a partition directory belongs to the segment log (segments and their
/// index files are named `{base_offset:020}-{term}.{suffix}`; the log's own checkpoint
/// files too). The broker's log-start checkpoint is kept.
fn is_log_file(name: &str) -> bool {
    if name.starts_with(spate_storage::log::checkpoint::FILE) {
        return false;
    }
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    (digits == 20 && name.as_bytes().get(20) == Some(&b'-')) || name.starts_with("segments.")
}

/// Empties the partition directory and starts the log afresh at `anchor.offset` (snapshot
/// installation). `PartitionLog` has no "restart at offset" operation, so this removes every
/// log file and creates the empty first segment by name (what recovery reads as "the log
/// ends at its base offset").
async fn reset_log<D: SegmentDir>(
    log: Option<PartitionLog<D>>,
    dir: &D,
    config: &LogConfig,
    anchor: Anchor,
) -> Result<PartitionLog<D>, StoreError> {
    if let Some(mut log) = log {
        let start = log.log_start_offset();
        log.truncate_suffix(start, start).await.map_err(io)?;
        log.close().await.map_err(io)?;
    }
    // A complete segment transfer staged for this anchor: switch to it (or finish switching).
    if let Some(log) = transfer::switch_to_staged(dir, config, anchor).await? {
        return Ok(log);
    }
    let names = dir.list().await.map_err(|e| io_std("list", e))?;
    let mut names: Vec<String> = names.into_iter().filter(|n| is_log_file(n)).collect();
    names.sort();
    for name in names.iter().rev() {
        dir.remove(name).await.map_err(|e| io_std("remove", e))?;
    }
    let first = dir
        .open(&segment_name(anchor.offset, anchor.term))
        .await
        .map_err(|e| io_std("create", e))?;
    first.close().await.map_err(|e| io_std("close", e))?;
    dir.sync().await.map_err(|e| io_std("sync directory", e))?;
    let (log, _) = PartitionLog::open(dir.clone(), config.clone())
        .await
        .map_err(io)?;
    if log.log_end_offset() != anchor.offset {
        return Err(StoreError::Io(format!(
            "log reset to offset {} reopened at {}",
            anchor.offset,
            log.log_end_offset()
        )));
    }
    Ok(log)
}

/// Splits the concatenated batches of a read, validating each.
fn split_batches(mut bytes: Bytes, max_batch_bytes: usize) -> Result<Vec<Bytes>, StoreError> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = check_first(&bytes, max_batch_bytes)
            .map_err(|e| StoreError::Io(format!("reading back a batch: {e}")))?;
        out.push(bytes.split_to(h.total_len()));
    }
    Ok(out)
}

impl<D: SegmentDir, M: MetaIo> SegmentStore<D, M> {
    /// Opens group `group`'s store over its partition directory `dir` and the metadata
    /// `state` the metadata store recovered for it; finishes an interrupted snapshot
    /// installation; rebuilds the index by scanning the batches from the anchor on (reading
    /// the log from there: O(log size) until an index checkpoint exists).
    pub async fn open(
        group: GroupId,
        dir: D,
        cfg: SegmentConfig,
        state: GroupState,
        meta: M,
    ) -> Result<Self, StoreError> {
        let value = |k: &[u8]| state.values.get(k);
        let mut anchor = value(KEY_ANCHOR).map(|v| Anchor::decode(v)).transpose()?;
        let checkpoint = value(KEY_APPLIED)
            .map(|v| decode_u64(v, "applied checkpoint"))
            .transpose()?
            .unwrap_or(0);
        let log = match value(KEY_RESET).map(|v| Anchor::decode(v)).transpose()? {
            Some(reset) => {
                tracing::warn!(
                    group,
                    ?reset,
                    "finishing an interrupted snapshot installation"
                );
                let log = reset_log(None, &dir, &cfg.log, reset).await?;
                meta.write(
                    group,
                    GroupWrite {
                        delete: vec![KEY_RESET.to_vec()],
                        ..Default::default()
                    },
                )
                .await?;
                anchor = Some(reset);
                (log, None)
            }
            None => {
                let (log, report) = PartitionLog::open(dir.clone(), cfg.log.clone())
                    .await
                    .map_err(io)?;
                (log, Some(report))
            }
        };
        let (log, recovery) = log;
        // No anchor yet (before bootstrap): the Raft log would start at the log's end, after
        // every batch already there, zero-width ones at the end included.
        let first_batch = anchor.map_or(
            BatchAt {
                offset: log.log_end_offset(),
                min_epoch: i64::MAX,
            },
            |a| a.first_batch(),
        );
        let anchor = anchor.unwrap_or(Anchor {
            index: 0,
            term: 0,
            offset: log.log_end_offset(),
            noop: false,
        });
        if anchor.offset > log.log_end_offset() || anchor.offset < log.log_start_offset() {
            return Err(StoreError::Invalid(format!(
                "group {group}: Raft log anchor at offset {} outside the log [{}, {}]",
                anchor.offset,
                log.log_start_offset(),
                log.log_end_offset()
            )));
        }
        let checkpoint = checkpoint.max(anchor.index);
        let (index, cache) = scan(&log, anchor, first_batch, checkpoint, &cfg).await?;
        let last = anchor.index + index.len() as u64;
        if checkpoint > last {
            return Err(StoreError::Invalid(format!(
                "group {group}: applied checkpoint {checkpoint} beyond the log end {last}"
            )));
        }
        let hard_state = state
            .hard_state
            .map_or(HardState::default(), |h| HardState {
                term: h.term,
                vote: h.vote,
                commit: h.commit,
            });
        let membership = state
            .membership
            .as_ref()
            .map(membership_from_meta)
            .unwrap_or_default();
        let mut disk = Disk::at(anchor);
        disk.fixed = checkpoint;
        disk.appended = last;
        disk.durable = last;
        let cache_bytes = cache.iter().map(|b| b.len() as u64).sum();
        Ok(SegmentStore {
            inner: Rc::new(RefCell::new(Inner {
                group,
                cfg,
                dir,
                meta,
                log: Some(log),
                anchor,
                index,
                cache_floor: checkpoint + 1,
                cache,
                cache_bytes,
                fetched: VecDeque::new(),
                hard_state,
                membership,
                applied: checkpoint,
                known_commit: checkpoint,
                checkpoint_at_open: checkpoint,
                queued_term_vote: (hard_state.term, hard_state.vote),
                ops: VecDeque::new(),
                next_seq: 0,
                done_seq: 0,
                marks: VecDeque::new(),
                next_token: 0,
                synced: 0,
                load_from: None,
                loads: 0,
                disk,
                checkpoint_written: checkpoint,
                failed: None,
                pump_waker: None,
                idle_wakers: Vec::new(),
                busy: false,
                closed: false,
                durable_generation: 1,
                recovery,
            })),
        })
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.inner.borrow().group
    }

    /// Kafka offsets `(base, next)` of the batch at Raft index `index`: its first offset and
    /// the offset after its last (exclusive). A produced batch's base offset for the produce
    /// response is `base`; `next` is [`Self::offset_after`]. A leader no-op occupies no
    /// offset: `base == next` (the offset of the batch after it).
    pub fn offsets(&self, index: u64) -> Option<(u64, u64)> {
        self.inner
            .borrow()
            .entry(index)
            .map(|e| (e.base_offset, e.next_offset))
    }

    /// The Kafka offset after the entry at `index` (for the commit index: the high
    /// watermark); defined from the anchor to the last index.
    pub fn offset_after(&self, index: u64) -> Option<u64> {
        self.inner.borrow().offset_after(index)
    }

    /// The offset the next appended batch gets.
    pub fn next_offset(&self) -> u64 {
        self.inner.borrow().next_offset()
    }

    /// The index entry at `index`.
    pub fn index_entry(&self, index: u64) -> Option<IndexEntry> {
        self.inner.borrow().entry(index).copied()
    }

    /// The log anchor (where the Raft log starts in the Kafka log).
    pub fn anchor(&self) -> Anchor {
        self.inner.borrow().anchor
    }

    /// Runs `f` on the partition log (the broker's fetch path: plan a read, then run it
    /// without holding the store). `None` while the pump runs an exclusive operation.
    pub fn with_log<R>(&self, f: impl FnOnce(&PartitionLog<D>) -> R) -> Option<R> {
        self.inner.borrow().log.as_ref().map(f)
    }

    /// Runs `f` on the partition log, mutably: the broker's storage policies below the Raft
    /// log (retention, DeleteRecords, user-topic compaction, segment rolls) and its batch
    /// cache. They must not touch what the Raft log still holds: the broker compacts the
    /// Raft log (`Driver::compact_log`) past a range before a policy removes or rewrites it.
    /// Appends and suffix truncation go through the driver only. `None` while the pump runs
    /// an exclusive operation.
    pub fn with_log_mut<R>(&self, f: impl FnOnce(&mut PartitionLog<D>) -> R) -> Option<R> {
        self.inner.borrow_mut().log.as_mut().map(f)
    }

    /// What the segment log's recovery did when the store opened (once; `None` after an
    /// interrupted snapshot installation was finished instead).
    pub fn take_recovery_report(&self) -> Option<spate_storage::log::RecoveryReport> {
        self.inner.borrow_mut().recovery.take()
    }

    /// The log anchor as durable in the metadata store (a compaction's new anchor once the
    /// pump wrote it): data below its offset is no longer part of the Raft log, even after
    /// a crash, so storage policies may remove or rewrite it.
    pub fn durable_anchor(&self) -> Anchor {
        self.inner.borrow().disk.anchor
    }

    /// Asks the pump for a group commit of the log even without new entries (after the
    /// broker rolled a segment: the flush creates the new segment's file and writes the
    /// rolled one's index; a disk-full retry).
    pub fn flush_soon(&self) {
        self.inner.borrow_mut().push_op(Op::Append(Vec::new()));
    }

    /// Highest index durable in the segment log (what the disk holds now, whatever the
    /// queued operations will change). Tests and the simulator check acknowledgements
    /// against it.
    pub fn durable_last_index(&self) -> u64 {
        self.inner.borrow().disk.durable
    }

    /// Highest index durable in the segment log whose entry is also the current view's (below
    /// every queued truncation); `None` while a snapshot installation is queued or running.
    /// Tests and the simulator read the durable log through the view up to it.
    pub fn durable_view_last_index(&self) -> Option<u64> {
        let i = self.inner.borrow();
        if i.disk.installing || i.ops.iter().any(|(_, op)| matches!(op, Op::Install { .. })) {
            return None;
        }
        let mut d = i.disk.durable;
        for (_, op) in &i.ops {
            if let Op::Truncate { from, .. } = op {
                d = d.min(from - 1);
            }
        }
        Some(d.min(i.last_index()))
    }

    /// Bumped whenever the durable log may have changed.
    pub fn durable_generation(&self) -> u64 {
        self.inner.borrow().durable_generation
    }

    /// Whether the pump has queued work.
    pub fn is_idle(&self) -> bool {
        let i = self.inner.borrow();
        i.ops.is_empty() && i.load_from.is_none() && !i.busy
    }

    /// Entries `lo..hi` from memory or the segment files (the simulator's and tests' reader;
    /// the broker reads Kafka batches with [`SegmentStore::with_log`]).
    pub async fn read_entries(&self, lo: u64, hi: u64) -> Result<Vec<LogEntry>, StoreError> {
        let file_hi = {
            let i = self.inner.borrow();
            if lo <= i.anchor.index {
                return Err(StoreError::Compacted(lo));
            }
            if hi > i.last_index() + 1 {
                return Err(StoreError::Unavailable(hi - 1));
            }
            hi.min(i.cache_floor).max(lo)
        };
        let mut out = if lo < file_hi {
            self.read_range(lo, file_hi, usize::MAX).await?
        } else {
            Vec::new()
        };
        if out.len() as u64 != file_hi - lo {
            return Err(StoreError::Io(format!(
                "read {} of {} entries from {lo}",
                out.len(),
                file_hi - lo
            )));
        }
        let i = self.inner.borrow();
        for index in file_hi..hi {
            out.push(i.cached(index).ok_or(StoreError::Unavailable(index))?);
        }
        Ok(out)
    }

    /// Reads entries `lo..hi` (all below the cache, so durable) from the segment files, up to
    /// about `max_bytes`; stops early where the file no longer matches the index. Reads by
    /// batch place ([`PartitionLog::plan_read_at`]): a Kafka read by offset never returns a
    /// zero-width no-op, and a no-op shares its offset with the batch after it.
    async fn read_range(
        &self,
        lo: u64,
        hi: u64,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let (mut expect, max_batch) = {
            let i = self.inner.borrow();
            let mut expect = VecDeque::new();
            let mut bytes = 0usize;
            for index in lo..hi {
                let Some(e) = i.entry(index) else { break };
                if !expect.is_empty() && bytes + e.len as usize > max_bytes {
                    break;
                }
                bytes += e.len as usize;
                expect.push_back((index, *e));
            }
            (expect, i.cfg.log.max_batch_bytes)
        };
        let mut out = Vec::new();
        let Some(&(_, first)) = expect.front() else {
            return Ok(out);
        };
        let mut at = first.at();
        while !expect.is_empty() {
            let want: usize = expect.iter().map(|(_, e)| e.len as usize).sum();
            let plan = {
                let i = self.inner.borrow();
                let log = i
                    .log
                    .as_ref()
                    .ok_or_else(|| StoreError::Io("log busy".into()))?;
                log.plan_read_at(at, want).map_err(io)?
            };
            let run = plan.run().await.map_err(io)?;
            if run.bytes.is_empty() {
                break;
            }
            at = run.next;
            for b in split_batches(run.bytes, max_batch)? {
                let Some((index, e)) = expect.pop_front() else {
                    break;
                };
                let h = check_first(&b, max_batch).map_err(|e| StoreError::Io(e.to_string()))?;
                if h.base_offset as u64 != e.base_offset
                    || h.next_offset() as u64 != e.next_offset
                    || h.partition_leader_epoch as u64 != e.term
                {
                    return Ok(out);
                }
                let (kind, payload) = decode_entry(b).map_err(StoreError::Io)?;
                out.push(LogEntry {
                    index,
                    term: e.term,
                    kind,
                    payload,
                });
            }
        }
        Ok(out)
    }

    /// The pump: drains queued writes into the log and the metadata store, completing sync
    /// tokens, and serves loads. Spawn it once per store on the partition's shard (it never
    /// ends while the store is open; it returns after [`SegmentStore::close`] or a failure).
    pub fn pump(&self) -> impl Future<Output = ()> {
        let this = self.clone();
        async move {
            // Leftovers of an interrupted segment transfer (or of a finished switch).
            let dir = this.inner.borrow().dir.clone();
            if let Err(e) = transfer::discard_staging(&dir).await {
                tracing::warn!(group = this.group(), error = %e, "cannot discard staged files");
            }
            let ops = async {
                loop {
                    if !this.step().await {
                        return;
                    }
                }
            };
            futures_lite::future::zip(ops, this.transfer_loop()).await;
        }
    }

    /// Does all queued work now (tests and tools that do not spawn a pump; do not mix with a
    /// running pump).
    pub async fn run_until_idle(&self) -> Result<(), StoreError> {
        loop {
            let (ops, load) = {
                let i = self.inner.borrow();
                i.check_ok()?;
                (!i.ops.is_empty(), i.load_from.is_some())
            };
            if ops {
                self.guarded(Self::round).await;
            } else if load {
                self.guarded(Self::load).await;
            } else if self.transfer_progress().is_some() {
                // A queued segment transfer (the pump runs it alongside the rounds).
                self.run_transfer().await;
                if self.transfer_progress().is_some() {
                    return Ok(());
                }
            } else {
                return Ok(());
            }
        }
    }

    /// Waits for work, does it; `false` when the pump should stop.
    async fn step(&self) -> bool {
        enum Work {
            Ops,
            Load,
        }
        let work = std::future::poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if i.failed.is_some() || i.closed {
                return Poll::Ready(None);
            }
            if !i.ops.is_empty() {
                return Poll::Ready(Some(Work::Ops));
            }
            if i.load_from.is_some() {
                return Poll::Ready(Some(Work::Load));
            }
            i.pump_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        match work {
            None => false,
            Some(Work::Ops) => {
                self.guarded(Self::round).await;
                true
            }
            Some(Work::Load) => {
                self.guarded(Self::load).await;
                true
            }
        }
    }

    async fn guarded<'a, F, Fut>(&'a self, f: F)
    where
        F: FnOnce(&'a Self) -> Fut,
        Fut: Future<Output = Result<(), StoreError>> + 'a,
    {
        self.inner.borrow_mut().busy = true;
        let r = f(self).await;
        let idle = {
            let mut i = self.inner.borrow_mut();
            i.busy = false;
            if let Err(e) = r {
                tracing::error!(group = i.group, error = %e, "segment store failed");
                i.failed.get_or_insert(e);
            }
            std::mem::take(&mut i.idle_wakers)
        };
        for w in idle {
            w.wake();
        }
        self.notify();
    }

    /// One pass over everything queued (see the module documentation).
    async fn round(&self) -> Result<(), StoreError> {
        let (ops, applied) = {
            let mut i = self.inner.borrow_mut();
            (i.ops.drain(..).collect::<Vec<_>>(), i.applied)
        };
        let mut chunk = GroupWrite::default();
        let mut chunk_seq = 0;
        for (seq, op) in ops {
            match op {
                Op::Append(batches) => self.apply_appends(batches)?,
                Op::Truncate { from, at, floor } => {
                    // What came before is made durable (and its tokens completed) first: a
                    // token may complete only once its own writes were durable, even if a
                    // later truncation removes them again (their acknowledgements leave).
                    self.finish_chunk(std::mem::take(&mut chunk), chunk_seq, None)
                        .await?;
                    self.apply_truncate(from, at, floor).await?
                }
                Op::HardState(hs) => chunk.hard_state = Some(hard_state_to_meta(hs)),
                Op::Membership(index, m) => {
                    chunk.membership = Some(membership_to_meta(index, &m));
                }
                Op::Install {
                    anchor,
                    membership,
                    reset,
                } => {
                    self.finish_chunk(std::mem::take(&mut chunk), chunk_seq, None)
                        .await?;
                    self.install(anchor, membership, reset).await?;
                    self.completed(seq).await;
                }
                Op::Compact(anchor) => {
                    self.finish_chunk(std::mem::take(&mut chunk), chunk_seq, None)
                        .await?;
                    self.compact(anchor).await?;
                    self.completed(seq).await;
                }
            }
            chunk_seq = seq;
        }
        self.finish_chunk(chunk, chunk_seq, Some(applied)).await
    }

    fn apply_appends(&self, batches: Vec<(RecordBatch, u64, u64)>) -> Result<(), StoreError> {
        let mut i = self.inner.borrow_mut();
        let i = &mut *i;
        let log = i
            .log
            .as_mut()
            .ok_or_else(|| StoreError::Io("log missing".into()))?;
        for (batch, term, base) in batches {
            let got = if batch.header().is_zero_width() {
                log.append_zero_width(&batch, term)
            } else {
                log.append(&batch, term).map(|a| a.base_offset)
            }
            .map_err(io)?;
            if got != base {
                return Err(StoreError::Invalid(format!(
                    "batch appended at offset {got} where the index expects {base}"
                )));
            }
            i.disk.appended += 1;
        }
        Ok(())
    }

    async fn apply_truncate(&self, from: u64, at: BatchAt, floor: u64) -> Result<(), StoreError> {
        let mut log = {
            let mut i = self.inner.borrow_mut();
            if from <= i.disk.fixed {
                return Err(StoreError::Invalid(format!(
                    "truncation from {from} below the durable commit point {}",
                    i.disk.fixed
                )));
            }
            i.disk.appended = i.disk.appended.min(from - 1);
            i.disk.durable = i.disk.durable.min(from - 1);
            i.durable_generation += 1;
            i.log
                .take()
                .ok_or_else(|| StoreError::Io("log missing".into()))?
        };
        // From entry `from`'s batch on: no-ops before it at the same offset stay (a no-op
        // occupies no offset, so a truncation by offset alone would take them too).
        let sleep = self.inner.borrow().cfg.sleep.clone();
        loop {
            let r = log.truncate_suffix_at(at, floor).await;
            match (r, &sleep) {
                // A compaction swap of user data is in flight: the log refuses suffix
                // truncations until it is finished (the swap's checkpoint would be stale).
                (Err(LogError::CompactionInFlight { .. }), Some(sleep)) => {
                    self.inner.borrow_mut().log = Some(log);
                    sleep(std::time::Duration::from_millis(1)).await;
                    log = self
                        .inner
                        .borrow_mut()
                        .log
                        .take()
                        .ok_or_else(|| StoreError::Io("log missing".into()))?;
                }
                (r, _) => {
                    self.inner.borrow_mut().log = Some(log);
                    return r.map_err(io);
                }
            }
        }
    }

    /// Group commit of the log and the metadata write of one chunk, concurrently; then the
    /// chunk's tokens complete.
    async fn finish_chunk(
        &self,
        mut write: GroupWrite,
        seq: u64,
        checkpoint: Option<u64>,
    ) -> Result<(), StoreError> {
        let ((job, upto), meta, group, gate, new_checkpoint, sleep, on_fsync) = {
            let mut i = self.inner.borrow_mut();
            let i = &mut *i;
            let mut new_checkpoint = None;
            if let Some(applied) = checkpoint {
                // Only entries durable before this write is issued, and only with every
                // membership record up to them (all queued before `applied` was read).
                let candidate = applied.min(i.disk.durable);
                if candidate > i.checkpoint_written
                    && (!write.is_empty()
                        || i.bytes_between(i.checkpoint_written, candidate)
                            >= i.cfg.checkpoint_bytes)
                {
                    write.put.push((
                        KEY_APPLIED.to_vec(),
                        Bytes::from(candidate.to_be_bytes().to_vec()),
                    ));
                    new_checkpoint = Some(candidate);
                }
            }
            if let Some(hs) = &mut write.hard_state {
                hs.commit = hs.commit.max(i.known_commit);
            }
            // The job takes every byte appended so far: once it is durable, so is every entry
            // up to here (earlier ones were in earlier, completed jobs).
            let upto = i.disk.appended;
            let job = match i.log.as_mut() {
                Some(log) => log.start_flush().map_err(io)?,
                None => return Err(StoreError::Io("log missing".into())),
            };
            (
                (job, upto),
                i.meta.clone(),
                i.group,
                i.cfg.sync_gate.clone(),
                new_checkpoint,
                i.cfg.sleep.clone(),
                i.cfg.on_fsync.clone(),
            )
        };
        let flush = async {
            let Some(job) = job else {
                // Nothing unwritten and no flush in flight: every byte appended went through
                // a completed group commit.
                let mut i = self.inner.borrow_mut();
                let applied = i.applied;
                i.disk.advance(upto, applied);
                return Ok(());
            };
            let mut job = job;
            let mut disk_full_logged = false;
            let written = loop {
                let written = job.write().await;
                let finished = {
                    let mut i = self.inner.borrow_mut();
                    let log = i
                        .log
                        .as_mut()
                        .ok_or_else(|| StoreError::Io("log missing".into()))?;
                    log.finish_write(written)
                };
                match (finished, &sleep) {
                    (Ok(w), _) => break w,
                    (Err(e), Some(sleep)) if e.is_disk_full() => {
                        // Nothing is lost: the bytes went back into the appender; the log
                        // refuses appends until a flush gets through.
                        if !disk_full_logged {
                            disk_full_logged = true;
                            tracing::warn!(group, error = %e,
                                "disk full: appends refused, retrying the flush every second");
                        }
                        sleep(spate_storage::log::DISK_FULL_RETRY).await;
                        let next = {
                            let mut i = self.inner.borrow_mut();
                            let log = i
                                .log
                                .as_mut()
                                .ok_or_else(|| StoreError::Io("log missing".into()))?;
                            log.start_flush().map_err(io)?
                        };
                        match next {
                            Some(j) => job = j,
                            None => {
                                return Err(StoreError::Io(
                                    "a disk-full flush retry found nothing to write".into(),
                                ))
                            }
                        }
                    }
                    (Err(e), _) => return Err(io(e)),
                }
            };
            if disk_full_logged {
                tracing::info!(group, "disk space back: flushing again");
            }
            if let Some(gate) = gate {
                gate.wait().await;
            }
            let started = std::time::Instant::now();
            let synced = written.sync().await;
            if let Some(f) = &on_fsync {
                f(started.elapsed());
            }
            let mut i = self.inner.borrow_mut();
            let i = &mut *i;
            let log = i
                .log
                .as_mut()
                .ok_or_else(|| StoreError::Io("log missing".into()))?;
            log.finish_sync(synced).map_err(io)?;
            // Entries up to the applied index can no longer be truncated: every queued
            // truncation starts above it (the applied entries' own sync covered it).
            let applied = i.applied;
            i.disk.advance(upto, applied);
            i.durable_generation += 1;
            Ok::<(), StoreError>(())
        };
        let meta_write = async {
            if write.is_empty() {
                Ok(())
            } else {
                meta.write(group, write).await
            }
        };
        let (a, b) = futures_lite::future::zip(flush, meta_write).await;
        a?;
        b?;
        {
            let mut i = self.inner.borrow_mut();
            if let Some(c) = new_checkpoint {
                i.checkpoint_written = i.checkpoint_written.max(c);
            }
            i.evict();
        }
        self.completed(seq).await;
        Ok(())
    }

    /// Every operation up to `seq` is durable: completes the tokens it covers, tells the owner
    /// and yields once, so the driver can release what waited for them (acknowledgements)
    /// before the pump goes on with later operations.
    async fn completed(&self, seq: u64) {
        let (before, after) = {
            let mut i = self.inner.borrow_mut();
            let before = i.synced;
            if seq > 0 {
                i.complete_through(seq);
            }
            (before, i.synced)
        };
        if after > before {
            self.notify();
            futures_lite::future::yield_now().await;
        }
    }

    fn notify(&self) {
        let (cb, group) = {
            let i = self.inner.borrow();
            (i.cfg.on_progress.clone(), i.group)
        };
        if let Some(cb) = cb {
            cb(group);
        }
    }

    async fn install(
        &self,
        anchor: Anchor,
        membership: (u64, Membership),
        reset: bool,
    ) -> Result<(), StoreError> {
        let (meta, group, dir, config) = {
            let mut i = self.inner.borrow_mut();
            i.disk.installing = true;
            (i.meta.clone(), i.group, i.dir.clone(), i.cfg.log.clone())
        };
        let mut write = GroupWrite {
            membership: Some(membership_to_meta(membership.0, &membership.1)),
            put: vec![(KEY_ANCHOR.to_vec(), anchor.encode())],
            ..Default::default()
        };
        if reset {
            write.put.push((KEY_RESET.to_vec(), anchor.encode()));
        }
        meta.write(group, write).await?;
        if reset {
            // With a complete segment transfer staged for it, the reset switches to it.
            let staged = transfer::staged_for(&dir, &anchor).await;
            let old = self.inner.borrow_mut().log.take();
            let log = reset_log(old, &dir, &config, anchor).await?;
            self.inner.borrow_mut().log = Some(log);
            meta.write(
                group,
                GroupWrite {
                    delete: vec![KEY_RESET.to_vec()],
                    ..Default::default()
                },
            )
            .await?;
            self.transfer_installed(anchor, staged).await?;
        }
        let mut i = self.inner.borrow_mut();
        let transfers = std::mem::take(&mut i.disk.transfers);
        i.disk = Disk::at(anchor);
        i.disk.transfers = transfers;
        i.checkpoint_written = i.checkpoint_written.max(anchor.index);
        i.durable_generation += 1;
        Ok(())
    }

    async fn compact(&self, anchor: Anchor) -> Result<(), StoreError> {
        let (meta, group, keep_data) = {
            let i = self.inner.borrow();
            (i.meta.clone(), i.group, i.cfg.compaction_keeps_data)
        };
        // The new anchor is durable before any segment goes.
        meta.write(
            group,
            GroupWrite {
                put: vec![(KEY_ANCHOR.to_vec(), anchor.encode())],
                ..Default::default()
            },
        )
        .await?;
        if !keep_data {
            let mut log = self
                .inner
                .borrow_mut()
                .log
                .take()
                .ok_or_else(|| StoreError::Io("log missing".into()))?;
            let r = log.truncate_prefix(anchor.offset).await;
            self.inner.borrow_mut().log = Some(log);
            r.map_err(io)?;
        }
        let mut i = self.inner.borrow_mut();
        let d = &mut i.disk;
        d.anchor = anchor;
        d.fixed = d.fixed.max(anchor.index);
        d.appended = d.appended.max(anchor.index);
        d.durable = d.durable.max(anchor.index);
        i.durable_generation += 1;
        Ok(())
    }

    async fn load(&self) -> Result<(), StoreError> {
        let (lo, hi, max) = {
            let mut i = self.inner.borrow_mut();
            let Some(lo) = i.load_from.take() else {
                return Ok(());
            };
            (lo, i.cache_floor, i.cfg.load_bytes_max)
        };
        let entries = if lo < hi && lo > self.inner.borrow().anchor.index {
            self.read_range(lo, hi, max).await?
        } else {
            Vec::new()
        };
        let mut i = self.inner.borrow_mut();
        // Keep what still matches the index (a truncation may have raced the read).
        let keep = entries
            .iter()
            .take_while(|e| {
                i.entry(e.index)
                    .is_some_and(|ie| ie.term == e.term && ie.kind == e.kind)
            })
            .count();
        i.fetched = entries.into_iter().take(keep).collect();
        i.loads += 1;
        Ok(())
    }

    /// Finishes the queued work, writes a final applied checkpoint and closes the log's
    /// files (glommio warns about files dropped open: close a store rather than drop it). The
    /// pump task may keep running: this waits for its current round, and the pump returns
    /// once the store is closed.
    pub async fn close(&self) -> Result<(), StoreError> {
        std::future::poll_fn(|cx| {
            let mut i = self.inner.borrow_mut();
            if i.busy {
                i.idle_wakers.push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        self.run_until_idle().await?;
        let (meta, group, write, log) = {
            let mut i = self.inner.borrow_mut();
            i.closed = true;
            i.wake_pump();
            let candidate = i.applied.min(i.disk.durable);
            let mut write = GroupWrite::default();
            if candidate > i.checkpoint_written {
                write.put.push((
                    KEY_APPLIED.to_vec(),
                    Bytes::from(candidate.to_be_bytes().to_vec()),
                ));
                i.checkpoint_written = candidate;
            }
            (i.meta.clone(), i.group, write, i.log.take())
        };
        if !write.is_empty() {
            meta.write(group, write).await?;
        }
        if let Some(log) = log {
            log.close().await.map_err(io)?;
        }
        Ok(())
    }
}

/// Reads the batches of the Raft log, from `first` (the anchor's first batch,
/// [`Anchor::first_batch`]) on: the index, and the payloads after `checkpoint`. Every batch
/// in file order, by place ([`PartitionLog::read_at`]): a read by offset would pass over a
/// zero-width no-op at the offset and find nothing at the log end, where the last election's
/// no-op usually is.
async fn scan<D: SegmentDir>(
    log: &PartitionLog<D>,
    anchor: Anchor,
    first: BatchAt,
    checkpoint: u64,
    cfg: &SegmentConfig,
) -> Result<(VecDeque<IndexEntry>, VecDeque<Bytes>), StoreError> {
    let mut index = VecDeque::new();
    let mut cache = VecDeque::new();
    let mut prev_term = anchor.term;
    let end = log.log_end_offset();
    let max_batch = cfg.log.max_batch_bytes;
    let mut at = first;
    let mut next = anchor.offset;
    loop {
        let run = log.read_at(at, cfg.scan_bytes).await.map_err(io)?;
        if run.bytes.is_empty() {
            break;
        }
        at = run.next;
        for b in split_batches(run.bytes, max_batch)? {
            let h = check_first(&b, max_batch).map_err(|e| StoreError::Io(e.to_string()))?;
            if h.base_offset as u64 != next {
                return Err(StoreError::Invalid(format!(
                    "batch at offset {} where the Raft log continues at {next} (the Raft log \
                     anchor or a batch end)",
                    h.base_offset
                )));
            }
            let term = u64::try_from(h.partition_leader_epoch).unwrap_or(0);
            if term < prev_term || term == 0 {
                return Err(StoreError::Invalid(format!(
                    "batch at offset {} has leader epoch {} after term {prev_term}",
                    h.base_offset, h.partition_leader_epoch
                )));
            }
            prev_term = term;
            next = h.next_offset() as u64;
            let len = b.len() as u32;
            let (kind, payload) = decode_entry(b).map_err(StoreError::Io)?;
            index.push_back(IndexEntry {
                term,
                base_offset: h.base_offset as u64,
                next_offset: next,
                len,
                kind,
            });
            if anchor.index + index.len() as u64 > checkpoint {
                cache.push_back(payload);
            }
        }
    }
    if next != end {
        return Err(StoreError::Io(format!(
            "the Raft log read from its anchor ends at offset {next}, below the log end {end}"
        )));
    }
    Ok((index, cache))
}

/// A snapshot payload: where the log restarts — the anchor the follower takes over.
fn encode_snapshot(a: Anchor) -> Bytes {
    let mut b = BytesMut::with_capacity(SNAPSHOT_LEN);
    b.put_slice(SNAPSHOT_MAGIC);
    b.put_u8(SNAPSHOT_VERSION);
    b.put_u64(a.index);
    b.put_u64(a.term);
    b.put_u64(a.offset);
    b.put_u8(u8::from(a.noop));
    b.freeze()
}

fn decode_snapshot(b: &[u8]) -> Result<Anchor, StoreError> {
    let well_formed = b.len() >= SNAPSHOT_LEN_V1
        && &b[..4] == SNAPSHOT_MAGIC
        && match b[4] {
            1 => b.len() == SNAPSHOT_LEN_V1,
            2 => b.len() == SNAPSHOT_LEN && b[SNAPSHOT_LEN_V1] <= 1,
            // Version 3 adds the transfer range ([`transfer::TransferPlan`]).
            3 => b.len() == SNAPSHOT_LEN + 16 && b[SNAPSHOT_LEN_V1] <= 1,
            _ => false,
        };
    if !well_formed {
        return Err(StoreError::Invalid("malformed snapshot payload".into()));
    }
    let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    Ok(Anchor {
        index: u(5),
        term: u(13),
        offset: u(21),
        noop: b.get(SNAPSHOT_LEN_V1) == Some(&1),
    })
}

/// An entry prepared for the log: the batch to append, its index entry and cached payload.
struct Prepared {
    batch: RecordBatch,
    entry: IndexEntry,
    payload: Bytes,
}

impl<D: SegmentDir, M: MetaIo> LogStore for SegmentStore<D, M> {
    fn initial_state(&self) -> StoredState {
        let i = self.inner.borrow();
        StoredState {
            hard_state: i.hard_state,
            membership: i.membership.1.clone(),
            membership_index: i.membership.0,
            applied: i.checkpoint_at_open,
        }
    }

    fn log_start(&self) -> LogStart {
        let i = self.inner.borrow();
        LogStart {
            index: i.anchor.index,
            term: i.anchor.term,
        }
    }

    fn last_index(&self) -> u64 {
        self.inner.borrow().last_index()
    }

    fn term(&self, index: u64) -> Result<u64, StoreError> {
        self.inner.borrow().term(index)
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>, StoreError> {
        let mut i = self.inner.borrow_mut();
        if lo <= i.anchor.index {
            return Err(StoreError::Compacted(lo));
        }
        if hi > i.last_index() + 1 {
            return Err(StoreError::Unavailable(hi - 1));
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in lo..hi {
            let e = match i.cached(index).or_else(|| i.fetched_entry(index)) {
                Some(e) => e,
                None if out.is_empty() => {
                    if i.load_from != Some(index) {
                        i.load_from = Some(index);
                        i.wake_pump();
                    }
                    return Err(StoreError::Loading(index));
                }
                None => break,
            };
            size += e.payload.len() as u64;
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn append(&mut self, entries: &[LogEntry]) -> Result<(), StoreError> {
        let mut i = self.inner.borrow_mut();
        i.check_ok()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index != i.last_index() + 1 {
            return Err(StoreError::Invalid(format!(
                "append of index {} where {} was expected",
                first.index,
                i.last_index() + 1
            )));
        }
        let max = i.cfg.log.max_batch_bytes;
        let mut next = i.next_offset();
        let mut prev_term = i.index.back().map_or(i.anchor.term, |e| e.term);
        // The previous entry, if it is a zero-width no-op: its term and offset.
        let mut prev_noop = match i.index.back() {
            Some(e) => e.is_zero_width().then_some((e.term, e.base_offset)),
            None => i.anchor.noop.then_some((i.anchor.term, i.anchor.offset)),
        };
        let mut prepared = Vec::with_capacity(entries.len());
        for (expect, e) in (first.index..).zip(entries) {
            if e.index != expect {
                return Err(StoreError::Invalid(format!(
                    "append of index {} where {expect} was expected",
                    e.index
                )));
            }
            if e.term < prev_term || e.term == 0 {
                return Err(StoreError::Invalid(format!(
                    "entry {} of term {} after term {prev_term}",
                    e.index, e.term
                )));
            }
            prev_term = e.term;
            let epoch = i32::try_from(e.term).map_err(|_| {
                StoreError::Invalid(format!("term {} does not fit a leader epoch", e.term))
            })?;
            let (batch, payload) = match e.kind {
                EntryKind::Data => {
                    let b = RecordBatch::validate(e.payload.clone(), max).map_err(|err| {
                        StoreError::Invalid(format!("entry {}: not a record batch: {err}", e.index))
                    })?;
                    if is_spate_control(&e.payload) {
                        return Err(StoreError::Invalid(format!(
                            "entry {}: a data batch carrying a Spate control record",
                            e.index
                        )));
                    }
                    let h = b.header();
                    let b = if h.base_offset == next as i64 && h.partition_leader_epoch == epoch {
                        b
                    } else {
                        b.stamped(next as i64, epoch)
                    };
                    let payload = b.bytes().clone();
                    (b, payload)
                }
                EntryKind::LeaderNoop => {
                    // A zero-width control batch: it occupies no offset (raft/README.md).
                    if !e.payload.is_empty() {
                        return Err(StoreError::Invalid(format!(
                            "entry {}: a leader no-op with a payload",
                            e.index
                        )));
                    }
                    // Zero-width batches at one offset are told apart by their term
                    // (`BatchAt`). A leader re-elected in the term of the no-op right before
                    // (it lost its term record in a crash before that no-op's round was
                    // durable, and won that term again) writes its no-op with one record: it
                    // takes an offset — rare, and still a no-op when read back.
                    let b = if prev_noop == Some((e.term, next)) {
                        RecordBatch::validate(
                            encode_control_record(e.kind, &e.payload, next, epoch),
                            max,
                        )
                    } else {
                        RecordBatch::validate_zero_width(
                            encode_control(e.kind, &e.payload, next, epoch),
                            max,
                        )
                    }
                    .map_err(|err| {
                        StoreError::Invalid(format!("entry {}: no-op batch: {err}", e.index))
                    })?;
                    (b, Bytes::new())
                }
                kind => {
                    let bytes = encode_control(kind, &e.payload, next, epoch);
                    let b = RecordBatch::validate(bytes, max).map_err(|err| {
                        StoreError::Invalid(format!("entry {}: control batch: {err}", e.index))
                    })?;
                    (b, e.payload.clone())
                }
            };
            let entry_next = next + batch.offset_count();
            prev_noop = (entry_next == next).then_some((e.term, next));
            prepared.push(Prepared {
                entry: IndexEntry {
                    term: e.term,
                    base_offset: next,
                    next_offset: entry_next,
                    len: batch.len() as u32,
                    kind: e.kind,
                },
                batch,
                payload,
            });
            next = entry_next;
        }
        let mut batches = Vec::with_capacity(prepared.len());
        for p in prepared {
            i.cache_bytes += p.payload.len() as u64;
            i.cache.push_back(p.payload);
            i.index.push_back(p.entry);
            batches.push((p.batch, p.entry.term, p.entry.base_offset));
        }
        i.push_op(Op::Append(batches));
        Ok(())
    }

    fn truncate_suffix(&mut self, from: u64) -> Result<(), StoreError> {
        let mut i = self.inner.borrow_mut();
        i.check_ok()?;
        if from <= i.anchor.index {
            return Err(StoreError::Invalid(format!(
                "truncate from {from} at or below the log start {}",
                i.anchor.index
            )));
        }
        if from > i.last_index() {
            return Ok(());
        }
        let commit = i.known_commit.max(i.applied);
        if from <= commit {
            return Err(StoreError::Invalid(format!(
                "truncate from {from} at or below the commit index {commit}"
            )));
        }
        let Some(at) = i.entry(from).map(IndexEntry::at) else {
            return Err(StoreError::Unavailable(from));
        };
        let floor = i
            .offset_after(commit.max(i.anchor.index))
            .unwrap_or(at.offset);
        let keep = (from - i.anchor.index - 1) as usize;
        i.index.truncate(keep);
        if from >= i.cache_floor {
            let keep = (from - i.cache_floor) as usize;
            let dropped: u64 = i.cache.iter().skip(keep).map(|b| b.len() as u64).sum();
            i.cache.truncate(keep);
            i.cache_bytes -= dropped;
        } else {
            i.cache.clear();
            i.cache_bytes = 0;
            i.cache_floor = from;
        }
        i.fetched.retain(|e| e.index < from);
        i.push_op(Op::Truncate { from, at, floor });
        Ok(())
    }

    fn compact_prefix(&mut self, through: u64) -> Result<(), StoreError> {
        let mut i = self.inner.borrow_mut();
        i.check_ok()?;
        if through <= i.anchor.index {
            return Ok(());
        }
        if through > i.last_index() {
            return Err(StoreError::Unavailable(through));
        }
        if through > i.applied {
            return Err(StoreError::Invalid(format!(
                "compaction through {through} beyond the applied index {}",
                i.applied
            )));
        }
        let anchor = Anchor {
            index: through,
            term: i.term(through)?,
            offset: i.offset_after(through).unwrap_or(0),
            noop: i.entry(through).is_some_and(IndexEntry::is_zero_width),
        };
        let n = (through - i.anchor.index) as usize;
        i.index.drain(..n);
        if i.cache_floor <= through {
            let n = ((through + 1 - i.cache_floor) as usize).min(i.cache.len());
            let dropped: u64 = i.cache.iter().take(n).map(|b| b.len() as u64).sum();
            i.cache.drain(..n);
            i.cache_bytes -= dropped;
            i.cache_floor = through + 1;
        }
        i.fetched.retain(|e| e.index > through);
        i.anchor = anchor;
        i.push_op(Op::Compact(anchor));
        Ok(())
    }

    fn install_snapshot(&mut self, meta: &SnapshotMeta, payload: Bytes) -> Result<(), StoreError> {
        let mut i = self.inner.borrow_mut();
        i.check_ok()?;
        let reset = !payload.is_empty();
        let anchor = if reset {
            let a = decode_snapshot(&payload)?;
            if (a.index, a.term) != (meta.index, meta.term) {
                return Err(StoreError::Invalid(format!(
                    "snapshot payload for {}@{} in a snapshot of {}@{}",
                    a.index, a.term, meta.index, meta.term
                )));
            }
            // The leader's anchor, no-op flag included: whether the entry at the snapshot
            // index occupies no offset decides how a no-op of its term right after it is
            // written (`append`), which must be the same on every replica.
            a
        } else {
            // Bootstrap: the Raft log starts where the partition's log ends (any batches
            // already there, e.g. written before the partition ran Raft, stay below it).
            if !i.index.is_empty() || i.anchor.index != 0 {
                return Err(StoreError::Invalid(
                    "a snapshot without payload installed over a non-empty log".into(),
                ));
            }
            // The bootstrap snapshot is no batch of the log; the no-op of its term may follow.
            Anchor {
                index: meta.index,
                term: meta.term,
                offset: i.next_offset(),
                noop: false,
            }
        };
        i.index.clear();
        i.cache.clear();
        i.cache_bytes = 0;
        i.cache_floor = meta.index + 1;
        i.fetched.clear();
        i.anchor = anchor;
        i.membership = (meta.index, meta.membership.clone());
        i.known_commit = i.known_commit.max(meta.index);
        if reset {
            i.transfer_installing((meta.index, meta.term));
        }
        i.push_op(Op::Install {
            anchor,
            membership: (meta.index, meta.membership.clone()),
            reset,
        });
        Ok(())
    }

    fn snapshot_payload(&self, index: u64) -> Result<Bytes, StoreError> {
        let i = self.inner.borrow();
        let term = i.term(index)?;
        let offset = i
            .offset_after(index)
            .ok_or(StoreError::Unavailable(index))?;
        let noop = if index == i.anchor.index {
            i.anchor.noop
        } else {
            i.entry(index).is_some_and(IndexEntry::is_zero_width)
        };
        drop(i);
        // Version 3: also the retained range a follower transfers ([`transfer`]).
        self.transfer_payload(Anchor {
            index,
            term,
            offset,
            noop,
        })
    }

    fn prepare_snapshot(
        &mut self,
        from: crate::types::NodeId,
        meta: &SnapshotMeta,
        payload: &Bytes,
    ) -> crate::store::SnapshotPrep {
        self.prepare_transfer(from, meta, payload)
    }

    fn membership_indexes(&self, after: u64) -> Result<Vec<u64>, StoreError> {
        let i = self.inner.borrow();
        Ok((i.anchor.index + 1..=i.last_index())
            .zip(i.index.iter())
            .filter(|(index, e)| *index > after && e.kind.is_membership())
            .map(|(index, _)| index)
            .collect())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StoreError> {
        let mut i = self.inner.borrow_mut();
        i.check_ok()?;
        i.hard_state = hard_state;
        i.known_commit = i.known_commit.max(hard_state.commit);
        let tv = (hard_state.term, hard_state.vote);
        if tv != i.queued_term_vote {
            i.queued_term_vote = tv;
            i.push_op(Op::HardState(hard_state));
        }
        Ok(())
    }

    fn set_membership(&mut self, index: u64, membership: &Membership) -> Result<(), StoreError> {
        let mut i = self.inner.borrow_mut();
        i.check_ok()?;
        i.membership = (index, membership.clone());
        i.push_op(Op::Membership(index, membership.clone()));
        Ok(())
    }

    fn sync(&mut self) -> Result<SyncToken, StoreError> {
        let mut i = self.inner.borrow_mut();
        i.check_ok()?;
        i.next_token += 1;
        let token = i.next_token;
        let last_seq = i.next_seq;
        if last_seq <= i.done_seq {
            i.synced = token;
        } else {
            i.marks.push_back((token, last_seq));
            i.wake_pump();
        }
        Ok(token)
    }

    fn synced(&self) -> SyncToken {
        self.inner.borrow().synced
    }

    fn on_applied(&mut self, index: u64) {
        let mut i = self.inner.borrow_mut();
        i.applied = i.applied.max(index);
        i.known_commit = i.known_commit.max(index);
        i.evict();
    }

    fn loads_completed(&self) -> u64 {
        self.inner.borrow().loads
    }

    fn failure(&self) -> Option<StoreError> {
        self.inner.borrow().failed.clone()
    }
}
