//! The partitions a shard owns: their logs, and the reads and waits of the data path.
//!
//! Lives on every shard; a partition lives on exactly one shard (its owner in the metadata
//! image) and is only touched there. Every partition runs through its Raft group
//! (`crate::consensus`): its segment log is the group's Raft log, owned by the group's
//! store ([`crate::consensus::Store`]), whose pump task writes and fdatasyncs it. A produced
//! batch is proposed to the group and answered once the group delivers it as committed; the
//! high watermark is the offset after the last committed entry. On a single node a group
//! has one voter, so committed means durable here: acks=1 and acks=all both answer once the
//! batch is fdatasynced.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use spate_storage::log::batch::{whole_batches_prefix, BatchHeader, RecordBatch};
use spate_storage::log::cache::BatchCache;
use spate_storage::log::file::DmaDir;
use spate_storage::log::{LogConfig, LogError, PartitionLog};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::consensus::{Consensus, Store, RAFT_COMPACT_EVERY_BYTES};
use crate::metadata::MetadataImage;
use crate::producer_state::{last_seq, BatchSeq, ProducerStates, SeqCheck, SNAPSHOT_FILE};

/// Identifies a partition on the data path (topic ids survive renames and deletes+recreates).
pub type PartitionKey = (Uuid, i32);

/// How far a sequential read reads ahead into the batch cache (see `Partition::read_ahead`).
pub const READAHEAD_BYTES: usize = 2 << 20;

/// A producer-state snapshot is written after this many appended bytes (and at close).
pub const PRODUCER_SNAPSHOT_EVERY_BYTES: usize = 64 << 20;

/// How many partitions a shard opens at once: their I/O overlaps in io_uring.
const OPEN_CONCURRENCY: usize = 64;

/// How many partitions a shard closes at once. Not more: `run_bounded` polls every running
/// future on each wake-up, and glommio's I/O sources keep a clone of the task's waker per
/// poll — 512 at once overflowed a task's waker count (a panic at shutdown).
const CLOSE_CONCURRENCY: usize = 64;

/// Metadata-store key (in the partition's Raft group region) of its leader epoch cache, in
/// Kafka's `leader-epoch-checkpoint` text format. Kept there rather than in a file: it is
/// written at every election (once per partition per start), and the metadata thread
/// commits all of them in a few group commits where files would take a rename each.
pub const KEY_LEADER_EPOCHS: &[u8] = b"kafka/leader-epochs";

pub struct Partition {
    pub key: PartitionKey,
    pub topic: String,
    /// The partition's directory (for the log start checkpoint).
    path: PathBuf,
    /// Serializes log start checkpoint writes.
    start_lock: glommio::sync::Semaphore,
    pub metrics: crate::metrics::PartitionMetrics,
    /// The partition's Raft group (its metadata-store region).
    pub group: spate_raft::GroupId,
    /// The group's store: it owns the segment log.
    pub(crate) store: Store,
    consensus: Rc<Consensus>,
    meta: spate_storage::metastore::MetaStore,
    /// Offset after the last committed entry.
    hw: Cell<i64>,
    /// The term this replica leads in (0: not leading).
    leader_term: Cell<u64>,
    /// The group stopped after a store failure (an I/O error): appends are refused.
    failed: Cell<bool>,
    /// Batch bytes committed since the Raft log was last compacted.
    uncompacted_bytes: Cell<u64>,
    /// Leader epochs and the offset each starts at (Kafka's leader epoch cache), ascending.
    epochs: RefCell<Vec<(i32, i64)>>,
    dir: DmaDir,
    /// The log has a batch cache, so reading ahead pays off.
    cached: bool,
    /// The region read ahead last, `[from, until)` (`until` is `u64::MAX` while it runs).
    readahead: Cell<(u64, u64)>,
    pub(crate) producers: RefCell<ProducerStates>,
    /// The offset of the last producer-state snapshot written (or loaded).
    snapshot_offset: Cell<u64>,
    /// Batch bytes appended since then; a snapshot is written every
    /// [`PRODUCER_SNAPSHOT_EVERY_BYTES`], which bounds what a crash restart replays.
    unsnapshotted_bytes: Cell<usize>,
    snapshotting: Cell<bool>,
    /// Fetches parked until the high watermark moves.
    hw_waiters: spate_net::wakers::WakerSet,
    deleted: Cell<bool>,
}

/// Resolves once a produced batch is committed (the high watermark passed it).
pub struct CommitWaiter {
    p: Rc<Partition>,
    /// The offset after the batch.
    end: i64,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the partition's Raft group failed before the batch committed")]
    GroupFailed,
    #[error("the partition was deleted before the batch committed")]
    Deleted,
}

impl std::future::IntoFuture for CommitWaiter {
    type Output = Result<(), CommitError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let p = &self.p;
            p.hw_waiters
                .wait_until(|| p.hw.get() >= self.end || p.failed.get() || p.deleted.get())
                .await;
            if p.hw.get() >= self.end {
                Ok(())
            } else if p.deleted.get() {
                Err(CommitError::Deleted)
            } else {
                Err(CommitError::GroupFailed)
            }
        })
    }
}

fn busy() -> LogError {
    LogError::Failed("the partition log is busy (a Raft log reset is running)".into())
}

impl Partition {
    /// Runs `f` on the segment log (`Err` only while the Raft store runs an exclusive
    /// operation on it, which a group of one never does).
    pub(crate) fn with_log<R>(
        &self,
        f: impl FnOnce(&PartitionLog<DmaDir>) -> R,
    ) -> Result<R, LogError> {
        self.store.with_log(f).ok_or_else(busy)
    }

    /// Runs `f` on the segment log, mutably: the storage policies below the Raft log.
    pub(crate) fn with_log_mut<R>(
        &self,
        f: impl FnOnce(&mut PartitionLog<DmaDir>) -> R,
    ) -> Result<R, LogError> {
        self.store.with_log_mut(f).ok_or_else(busy)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.with_log(|l| l.log_start_offset() as i64).unwrap_or(-1)
    }

    /// Whether appends are refused because the disk is full (a flush retry is pending).
    pub fn disk_full(&self) -> bool {
        self.with_log(|l| l.disk_full().is_some()).unwrap_or(false)
    }

    /// The offset after the last entry (committed or not).
    pub fn log_end_offset(&self) -> i64 {
        self.store.next_offset() as i64
    }

    /// The offset up to which records are visible: the end of the last committed entry.
    pub fn high_watermark(&self) -> i64 {
        self.hw.get()
    }

    /// The leader epoch (Raft term) while this replica leads.
    pub fn leader_epoch(&self) -> Option<i32> {
        let t = self.leader_term.get();
        (t > 0).then(|| i32::try_from(t).unwrap_or(i32::MAX))
    }

    /// The group delivered `entries` as committed: moves the high watermark and wakes
    /// producers and fetchers. Returns an index to compact the Raft log through when enough
    /// was committed since the last compaction.
    pub(crate) fn on_committed(&self, entries: &[spate_raft::LogEntry]) -> Option<u64> {
        let last = entries.last()?;
        if let Some(end) = self.store.offset_after(last.index) {
            if end as i64 > self.hw.get() {
                self.hw.set(end as i64);
                self.hw_waiters.wake_all();
            }
        }
        let mut bytes = self.uncompacted_bytes.get();
        for e in entries {
            bytes += e.payload.len() as u64;
            if e.kind == spate_raft::EntryKind::LeaderNoop {
                self.new_epoch(e.term, e.index);
            }
        }
        if bytes >= RAFT_COMPACT_EVERY_BYTES {
            self.uncompacted_bytes.set(0);
            Some(last.index)
        } else {
            self.uncompacted_bytes.set(bytes);
            None
        }
    }

    /// A leader's no-op of `term` committed at `index`: the epoch starts at its offset.
    fn new_epoch(&self, term: u64, index: u64) {
        let Ok(epoch) = i32::try_from(term) else {
            return;
        };
        let Some((start, _)) = self.store.offsets(index) else {
            return;
        };
        {
            let mut epochs = self.epochs.borrow_mut();
            if epochs.last().is_some_and(|&(e, _)| e >= epoch) {
                return;
            }
            epochs.push((epoch, start as i64));
        }
        self.persist_epochs();
    }

    /// Writes the epoch cache to the metadata store (its own thread). A lost write is
    /// repaired at the next open from the batches' leader epochs.
    fn persist_epochs(&self) {
        let text = encode_epochs(&self.epochs.borrow());
        let write = spate_storage::metastore::GroupWrite {
            put: vec![(KEY_LEADER_EPOCHS.to_vec(), Bytes::from(text))],
            ..Default::default()
        };
        let (meta, group) = (self.meta.clone(), self.group);
        let (topic, partition) = (self.topic.clone(), self.key.1);
        glommio::spawn_local(async move {
            if let Err(e) = meta.write_group(group, write).await {
                warn!(%topic, partition, error = %e, "writing the leader epoch cache");
            }
        })
        .detach();
    }

    /// OffsetForLeaderEpoch: `(epoch, end offset)` as Kafka's leader epoch cache answers
    /// (`LeaderEpochFileCache.endOffsetFor`): the latest epoch ends at the log end; an
    /// earlier one at the start of the first epoch after it, reported as the largest known
    /// epoch at or below it (itself when it is older than every known epoch); an epoch newer
    /// than the latest, or none, is `(-1, -1)`.
    pub fn epoch_end(&self, requested: i32) -> (i32, i64) {
        epoch_end_in(&self.epochs.borrow(), requested, self.log_end_offset())
    }

    /// Whether the partition's Raft group stopped after a store failure.
    pub fn failed(&self) -> bool {
        self.failed.get()
    }

    pub(crate) fn on_role(&self, leader_term: Option<u64>) {
        self.leader_term.set(leader_term.unwrap_or(0));
        self.hw_waiters.wake_all();
    }

    pub(crate) fn on_failed(&self) {
        self.failed.set(true);
        self.leader_term.set(0);
        self.hw_waiters.wake_all();
    }

    /// Resolves once this replica leads and has committed everything its log held when it
    /// opened (its no-op committed), or failed.
    async fn wait_ready(&self, end: i64) {
        self.hw_waiters
            .wait_until(|| {
                self.failed.get() || (self.leader_term.get() > 0 && self.hw.get() >= end)
            })
            .await
    }

    /// Appends a validated batch — or, for an idempotent producer's retry, finds the original
    /// — and returns its base offset and a future that resolves once it is durable.
    pub fn append(
        self: &Rc<Self>,
        batch: &RecordBatch,
    ) -> Result<(i64, CommitWaiter), (ResponseError, String)> {
        if self.failed.get() {
            return Err((
                ResponseError::KafkaStorageError,
                "the partition's Raft group failed (see the broker log); restart the broker".into(),
            ));
        }
        if self.leader_term.get() == 0 {
            return Err((
                ResponseError::NotLeaderOrFollower,
                "no leader elected yet".into(),
            ));
        }
        let h = *batch.header();
        let idempotent = h.producer_id >= 0;
        let (first, last) = (
            h.base_sequence,
            last_seq(h.base_sequence, h.last_offset_delta),
        );
        if idempotent {
            match self
                .producers
                .borrow()
                .check(h.producer_id, h.producer_epoch, first, last)
            {
                SeqCheck::Append => {}
                SeqCheck::Duplicate {
                    base_offset,
                    last_offset,
                } => {
                    let waiter = CommitWaiter {
                        p: self.clone(),
                        end: last_offset + 1,
                    };
                    return Ok((base_offset, waiter));
                }
                SeqCheck::Reject(e, why) => return Err((e, why)),
            }
        }
        if let Some(e) = self
            .with_log(|l| l.disk_full().map(|e| e.to_string()))
            .ok()
            .flatten()
        {
            return Err((ResponseError::KafkaStorageError, e));
        }
        let proposal = self
            .consensus
            .propose(self.group, batch.bytes().clone())
            .map_err(|e| {
                use spate_raft::ProposeError as P;
                let code = match e {
                    P::NotLeader { .. } | P::Dropped => ResponseError::NotLeaderOrFollower,
                    _ => ResponseError::KafkaStorageError,
                };
                (
                    code,
                    format!("proposing the batch to the partition's Raft group: {e}"),
                )
            })?;
        let (Some((base, _)), Some(end)) = (
            self.store.offsets(proposal.index),
            self.store.offset_after(proposal.index),
        ) else {
            return Err((
                ResponseError::KafkaStorageError,
                format!("Raft entry {} has no offsets", proposal.index),
            ));
        };
        let appended = (base as i64, end as i64 - 1);
        let waiter = CommitWaiter {
            p: self.clone(),
            end: end as i64,
        };
        if idempotent {
            self.producers.borrow_mut().record(
                h.producer_id,
                h.producer_epoch,
                BatchSeq {
                    first_seq: first,
                    last_seq: last,
                    base_offset: appended.0,
                    last_offset: appended.1,
                },
            );
        }
        let pending = self.unsnapshotted_bytes.get() + batch.len();
        self.unsnapshotted_bytes.set(pending);
        if pending >= PRODUCER_SNAPSHOT_EVERY_BYTES && !self.snapshotting.replace(true) {
            let p = self.clone();
            glommio::spawn_local(async move {
                p.write_producer_snapshot().await;
                p.snapshotting.set(false);
            })
            .detach();
        }
        Ok((appended.0, waiter))
    }

    /// Writes the producer-state snapshot as of the committed (fsynced) offset, off the
    /// reactor. Not fsynced, on purpose: the snapshot is a cache of what the durable log
    /// says — a lost or torn one is refused by its CRC and the state is rebuilt from the log,
    /// and a stale one is still true (it names its offset; what follows is replayed).
    async fn write_producer_snapshot(&self) {
        let Ok(offset) = self.with_log(|l| l.committed_offset()) else {
            return;
        };
        if offset <= self.snapshot_offset.get() {
            return;
        }
        self.unsnapshotted_bytes.set(0);
        let data = self.producers.borrow().encode_snapshot(offset);
        let dir = self.path.clone();
        let written = glommio::executor()
            .spawn_blocking(move || write_snapshot_file(&dir, &data))
            .await;
        match written {
            Ok(()) => self.snapshot_offset.set(offset),
            Err(e) => warn!(topic = %self.topic, partition = self.key.1, error = %e,
                "writing the producer-state snapshot (a restart will rebuild it from the log)"),
        }
    }

    /// Visits whole batches (header and bytes) in offset order from the log start up to
    /// `end`, reading 1 MiB at a time, until `visit` breaks with a value.
    async fn scan_batches<T>(
        &self,
        from: u64,
        end: u64,
        mut visit: impl FnMut(&BatchHeader, Bytes) -> ControlFlow<T>,
    ) -> Result<Option<T>, LogError> {
        let mut offset = self.with_log(|l| l.log_start_offset())?.max(from);
        while offset < end {
            let plan = self.with_log(|l| l.plan_read(offset, 1 << 20))??;
            let read = match plan.run().await {
                Ok(read) => read,
                // Damaged data is never visited; the scan goes on after it (a replay that
                // stopped there would lose every later group commit or producer batch).
                Err(e) if e.is_corrupt() => {
                    self.report_corruption();
                    let Some(next) = self.first_readable_after(offset, end).await? else {
                        warn!(topic = %self.topic, partition = self.key.1, offset,
                            "batch scan: nothing readable after a damaged batch");
                        break;
                    };
                    warn!(topic = %self.topic, partition = self.key.1, from = offset,
                        to = next, "batch scan skips the offsets of a damaged batch");
                    offset = next;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if read.bytes.is_empty() {
                break;
            }
            let mut at = 0;
            while at < read.bytes.len() {
                let Ok(h) = BatchHeader::decode(&read.bytes[at..]) else {
                    break;
                };
                let next = at + h.total_len();
                if next > read.bytes.len() || h.base_offset as u64 >= end {
                    return Ok(None);
                }
                if let ControlFlow::Break(t) = visit(&h, read.bytes.slice(at..next)) {
                    return Ok(Some(t));
                }
                at = next;
            }
            offset = read.next_offset;
            glommio::yield_if_needed().await;
        }
        Ok(None)
    }

    /// The first offset after `damaged` (where a read fails as corrupt) at which a read
    /// succeeds, below `end`: exponential probing, then bisection (reads inside the damaged
    /// batch fail, reads from its end on succeed), so a few reads, however long the batch.
    async fn first_readable_after(&self, damaged: u64, end: u64) -> Result<Option<u64>, LogError> {
        let ok = |o: u64| async move {
            let plan = self.with_log(|l| l.plan_read(o, 1))??;
            match plan.run().await {
                Ok(_) => Ok(true),
                Err(e) if e.is_corrupt() => Ok(false),
                Err(e) => Err(e),
            }
        };
        let (mut lo, mut step) = (damaged, 1u64);
        let mut hi = loop {
            let probe = lo.saturating_add(step);
            if probe >= end {
                if lo + 1 < end && ok(end - 1).await? {
                    break end - 1;
                }
                return Ok(None);
            }
            if ok(probe).await? {
                break probe;
            }
            lo = probe;
            step = step.saturating_mul(2);
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if ok(mid).await? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Ok(Some(hi))
    }

    /// Compacts the Raft log through what it committed and waits (bounded) until the new
    /// start is durable. Returns the offset below which storage policies (retention,
    /// DeleteRecords, user-topic compaction) may remove or rewrite data: never a Raft entry,
    /// so a restart always finds the Raft log's start in the segment log.
    pub(crate) async fn settle_raft_log(&self) -> u64 {
        self.consensus.compact_applied(self.group);
        let target = self.store.anchor().offset;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.store.durable_anchor().offset < target
            && !self.failed.get()
            && std::time::Instant::now() < deadline
        {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.store.durable_anchor().offset
    }

    /// DeleteRecords: moves the log start to `offset` (-1: the high watermark) and persists
    /// it before answering. Returns the new log start (Kafka's low watermark).
    pub async fn delete_records(&self, offset: i64) -> Result<i64, ResponseError> {
        let hw = self.high_watermark();
        let target = if offset == -1 { hw } else { offset };
        if target < 0 || target > hw {
            return Err(ResponseError::OffsetOutOfRange);
        }
        let _permit = self
            .start_lock
            .acquire_permit(1)
            .await
            .map_err(|_| ResponseError::KafkaStorageError)?;
        if self.settle_raft_log().await < target as u64 {
            warn!(topic = %self.topic, partition = self.key.1, target,
                "DeleteRecords: the Raft log did not compact past the target in time");
            return Err(ResponseError::RequestTimedOut);
        }
        let moved = self
            .with_log_mut(|l| l.advance_log_start(target as u64))
            .and_then(|r| r)
            .map_err(|e| {
                warn!(topic = %self.topic, partition = self.key.1, error = %e, "moving the log start");
                ResponseError::KafkaStorageError
            })?;
        let start = self.log_start_offset();
        if moved {
            let dir = self.path.clone();
            glommio::executor()
                .spawn_blocking(move || spate_storage::log::checkpoint::write(&dir, start as u64))
                .await
                .map_err(|e| {
                    error!(topic = %self.topic, partition = self.key.1, error = %e,
                        "persisting the log start");
                    ResponseError::KafkaStorageError
                })?;
            info!(topic = %self.topic, partition = self.key.1, log_start = start, "records deleted");
            // Whole segments now below the start go (their files, outside the log's borrow).
            let deletion = self.with_log_mut(|l| l.detach_below_start()).ok().flatten();
            if let Some(d) = deletion {
                if let Err(e) = d.run().await {
                    warn!(topic = %self.topic, partition = self.key.1, error = %e,
                        "removing segments below the log start");
                }
            }
        }
        Ok(start)
    }

    /// ListOffsets MAX_TIMESTAMP: the first record with the largest timestamp below the high
    /// watermark, as `(offset, timestamp)`.
    pub async fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>, String> {
        let hw = self.high_watermark().max(0) as u64;
        let mut best: Option<(BatchHeader, Bytes)> = None;
        self.scan_batches(0, hw, |h, b| {
            if best
                .as_ref()
                .is_none_or(|(bh, _)| h.max_timestamp > bh.max_timestamp)
            {
                best = Some((*h, b));
            }
            ControlFlow::<()>::Continue(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let Some((h, mut batch)) = best else {
            return Ok(None);
        };
        if h.attributes & 0x08 != 0 {
            return Ok(Some((h.base_offset, h.max_timestamp)));
        }
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| format!("decoding batch at offset {}: {e}", h.base_offset))?;
        Ok(set
            .records
            .iter()
            .find(|r| r.timestamp == h.max_timestamp)
            .map(|r| (r.offset, r.timestamp)))
    }

    /// Visits every batch below the high watermark, in order (for replaying internal topics).
    pub async fn for_each_batch(&self, mut visit: impl FnMut(Bytes)) -> Result<(), LogError> {
        let hw = self.high_watermark().max(0) as u64;
        self.scan_batches(0, hw, |_, b| {
            visit(b);
            ControlFlow::<()>::Continue(())
        })
        .await?;
        Ok(())
    }

    /// Kafka's ListOffsets by time: the first offset whose record timestamp is at least `ts`,
    /// with that timestamp; `None` when no record below the high watermark is that recent.
    ///
    /// The log's time index picks the batch (segments by their max timestamp, then about one
    /// index interval of headers); only that batch is decoded.
    /// Errors carry the Kafka code: CORRUPT_MESSAGE when the batch found is damaged on disk
    /// (as Kafka answers a CorruptRecordException), else KAFKA_STORAGE_ERROR.
    pub async fn offset_for_timestamp(
        &self,
        ts: i64,
    ) -> Result<Option<(i64, i64)>, (ResponseError, String)> {
        let hw = self.high_watermark().max(0) as u64;
        let plan = self
            .with_log(|l| l.plan_find_timestamp(ts, hw))
            .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
        let found = plan.run().await;
        self.report_corruption();
        let found = found.map_err(|e| {
            let code = if e.is_corrupt() {
                ResponseError::CorruptMessage
            } else {
                ResponseError::KafkaStorageError
            };
            (code, e.to_string())
        })?;
        let Some(read) = found else {
            return Ok(None);
        };
        let corrupt = |m: String| (ResponseError::CorruptMessage, m);
        let Ok(h) = BatchHeader::decode(&read.bytes) else {
            return Err(corrupt(format!(
                "undecodable batch at offset {}",
                read.base_offset
            )));
        };
        if h.attributes & 0x08 != 0 {
            // LogAppendTime: every record carries the batch's max timestamp.
            return Ok(Some((h.base_offset, h.max_timestamp)));
        }
        let mut batch = read.bytes.slice(..h.total_len().min(read.bytes.len()));
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| corrupt(format!("decoding batch at offset {}: {e}", h.base_offset)))?;
        Ok(set
            .records
            .iter()
            .find(|r| r.timestamp >= ts)
            .map(|r| (r.offset, r.timestamp)))
    }

    /// Brings the idempotent-producer state up to date from the batch headers in the log
    /// from `from` (the offset of the snapshot it was restored from; 0: the whole log).
    async fn rebuild_producer_state(&self, from: u64) -> Result<(), LogError> {
        let end = self.with_log(|l| l.stable_offset())?;
        let mut epochs = self.epochs.borrow().last().map_or(-1, |&(e, _)| e);
        self.scan_batches(from, end, |h, _| {
            if h.partition_leader_epoch > epochs {
                // An epoch the checkpoint missed (lost write, or a log written before).
                epochs = h.partition_leader_epoch;
                self.epochs.borrow_mut().push((epochs, h.base_offset));
            }
            if h.producer_id >= 0 {
                let first = h.base_sequence;
                self.producers.borrow_mut().record(
                    h.producer_id,
                    h.producer_epoch,
                    BatchSeq {
                        first_seq: first,
                        last_seq: last_seq(first, h.last_offset_delta),
                        base_offset: h.base_offset,
                        last_offset: h.last_offset(),
                    },
                );
            }
            ControlFlow::<()>::Continue(())
        })
        .await?;
        Ok(())
    }

    /// One retention pass (see `crate::retention`): rolls the active segment by
    /// `segment.ms`, then deletes whole closed segments past `retention_ms` / `retention_bytes`
    /// (the files go outside the log's borrow, so appends continue). Returns the segments
    /// deleted by time and by size.
    pub async fn apply_retention(
        self: &Rc<Self>,
        now_ms: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> (usize, usize) {
        let expired = retention_ms.is_some_and(|ms| {
            self.with_log_mut(|l| l.roll_if_expired(now_ms, ms))
                .unwrap_or(false)
        });
        if expired
            || self
                .with_log_mut(|l| l.roll_if_due(now_ms))
                .unwrap_or(false)
        {
            // The flush creates the new segment's file and writes the rolled one's index.
            self.store.flush_soon();
        }
        if retention_ms.is_none() && retention_bytes.is_none() {
            return (0, 0);
        }
        // Retention removes only data the Raft log no longer holds.
        let limit = self.settle_raft_log().await;
        let Ok(out) = self.with_log_mut(|l| {
            l.apply_retention_below(now_ms, retention_ms, retention_bytes, limit)
        }) else {
            return (0, 0);
        };
        if let Some(d) = out.deletion {
            if let Err(e) = d.run().await {
                warn!(topic = %self.topic, partition = self.key.1, error = %e,
                    "removing segments past retention");
            }
        }
        // Space may be back for a partition whose flush waits on a full disk.
        if self.disk_full() {
            self.store.flush_soon();
        }
        (out.by_time, out.by_size)
    }

    /// Logs and counts the damaged batches the log found since the last call (by reads,
    /// index rebuilds, recovery): each once, however many reads run into it.
    pub fn report_corruption(&self) {
        for c in self.with_log(|l| l.take_corruptions()).unwrap_or_default() {
            error!(topic = %self.topic, partition = self.key.1,
                file = %self.path.join(&c.segment).display(), position = c.pos,
                offset = c.offset, detail = %c.detail,
                "corrupt record batch on disk: never served (fetches get CORRUPT_MESSAGE); \
                 records before it are served, DeleteRecords past it skips it");
            self.metrics.corrupt_batches.inc();
        }
    }

    fn wake_fetchers(&self) {
        self.hw_waiters.wake_all();
    }

    /// Resolves when the high watermark moves past `seen` (or the partition is deleted).
    pub async fn wait_hw_above(&self, seen: i64) {
        self.hw_waiters
            .wait_until(|| self.deleted.get() || self.high_watermark() > seen)
            .await
    }

    /// Whole batches from `offset`, below the high watermark, up to `max_bytes` (but at least
    /// one batch when `min_one`).
    /// Sequential readers (a consumer catching up on a backlog) would wait for one O_DIRECT
    /// read per fetch: there is no page cache to read ahead for us. So once a reader enters
    /// the region read ahead last (or on its first read), the next [`READAHEAD_BYTES`] after
    /// it are read in the background into the shard's batch cache, where the next fetches
    /// find them: one region ahead of the reader, one read-ahead in flight per partition.
    /// `from` is where this read started, `next` where it ended.
    fn read_ahead(self: &Rc<Self>, from: u64, next: u64, hw: i64) {
        let (ahead_from, ahead_until) = self.readahead.get();
        if !self.cached || ahead_until == u64::MAX || from < ahead_from {
            return;
        }
        let start = next.max(ahead_until);
        if start >= hw.max(0) as u64 {
            return;
        }
        self.readahead.set((start, u64::MAX));
        let p = self.clone();
        glommio::spawn_local(async move {
            let plan = p
                .with_log(|l| l.plan_read(start, READAHEAD_BYTES))
                .and_then(|r| r);
            let until = match plan {
                Ok(plan) => {
                    let read = plan.run().await;
                    p.report_corruption();
                    read.map(|r| r.next_offset).unwrap_or(start)
                }
                Err(_) => start,
            };
            p.readahead.set((start, until.max(start + 1)));
        })
        .detach();
    }

    pub async fn read(
        self: &Rc<Self>,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Bytes, LogError> {
        let hw = self.high_watermark();
        if offset >= hw {
            return Ok(Bytes::new());
        }
        let want = if min_one { max_bytes.max(1) } else { max_bytes };
        let plan = self.with_log(|l| l.plan_read(offset as u64, want))??;
        let read = plan.run().await;
        self.report_corruption();
        let read = read?;
        self.read_ahead(offset as u64, read.next_offset, hw);
        // Cut at the high watermark and, unless the first batch alone is over the limit and
        // `min_one` allows it, at `max_bytes` — always at batch boundaries.
        let bytes = read.bytes;
        let mut first = true;
        let end = whole_batches_prefix(&bytes, |h, next| {
            let keep = h.base_offset < hw && (next <= max_bytes || (first && min_one));
            first = false;
            keep
        });
        Ok(bytes.slice(..end))
    }
}

/// The partitions of one shard.
pub struct PartitionManager {
    shard: usize,
    node_id: i32,
    root: PathBuf,
    sentinel: PathBuf,
    /// The partitions directory, opened once per shard: partition directories are its
    /// siblings and share its DMA buffer handle (one descriptor per shard, not per partition).
    root_dir: RefCell<Option<DmaDir>>,
    /// Cap on one segment I/O (the device's `max_sectors_kb`), for every partition directory.
    max_io_bytes: usize,
    partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    /// The shard's Raft groups.
    pub consensus: Rc<Consensus>,
    /// The node's metadata store (Raft hard state, membership, log anchors).
    meta: spate_storage::metastore::MetaStore,
    fsync_seconds: prometheus::Histogram,
    recovered: crate::consensus::RecoveredGroups,
    /// The shard's batch cache (`None` when `batch_cache_bytes` is 0).
    pub cache: Option<BatchCache>,
}

/// Where partition `key`'s segments live.
pub fn partition_dir(root: &Path, key: &PartitionKey) -> PathBuf {
    root.join(format!("{}-{}", key.0, key.1))
}

impl PartitionManager {
    pub fn new(
        shard: usize,
        config: &crate::config::Config,
        sentinel: PathBuf,
        consensus: Rc<Consensus>,
        meta: spate_storage::metastore::MetaStore,
        fsync_seconds: prometheus::Histogram,
        recovered: crate::consensus::RecoveredGroups,
    ) -> Self {
        PartitionManager {
            recovered,
            consensus,
            meta,
            fsync_seconds,
            shard,
            node_id: config.node_id,
            root: config.data_dir.join("partitions"),
            sentinel,
            root_dir: RefCell::new(None),
            max_io_bytes: config.max_io_bytes,
            partitions: RefCell::new(HashMap::new()),
            cache: (config.batch_cache_bytes > 0)
                .then(|| BatchCache::new(config.batch_cache_bytes)),
        }
    }

    /// A partition directory, a sibling of the shard's partitions directory.
    async fn partition_dir_handle(&self, path: &Path) -> std::io::Result<DmaDir> {
        let root = self.root_dir.borrow().clone();
        let root = match root {
            Some(r) => r,
            None => {
                let r = DmaDir::open_capped(&self.root, &self.sentinel, self.max_io_bytes).await?;
                *self.root_dir.borrow_mut() = Some(r.clone());
                r
            }
        };
        root.sibling(path).await
    }

    pub fn get(&self, key: &PartitionKey) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.partitions.borrow().len()
    }

    /// Every open partition (for the admin view).
    pub fn all(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the open partitions match what the image says this shard owns: opens (and
    /// recovers) new ones, closes and deletes removed ones.
    pub async fn reconcile(&self, image: &MetadataImage, nr_shards: usize) {
        let mut wanted: HashMap<PartitionKey, String> = HashMap::new();
        for t in image.topics.values() {
            for (p, shard) in t.partition_shards.iter().enumerate() {
                if (*shard as usize) % nr_shards == self.shard {
                    wanted.insert((t.id, p as i32), t.name.clone());
                }
            }
        }
        let gone: Vec<PartitionKey> = self
            .partitions
            .borrow()
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            let Some(p) = self.partitions.borrow_mut().remove(&key) else {
                continue;
            };
            p.deleted.set(true);
            p.wake_fetchers();
            p.metrics.remove();
            if let Some(store) = self.consensus.remove(&p) {
                if let Err(e) = store.close().await {
                    warn!(topic = %p.topic, partition = key.1, error = %e, "closing the Raft store");
                }
            }
            if let Err(e) = self.meta.remove_group(p.group).await {
                warn!(topic = %p.topic, partition = key.1, group = p.group, error = %e,
                    "removing the partition's Raft metadata");
            }
            let path = partition_dir(&self.root, &key);
            let removed = glommio::executor()
                .spawn_blocking(move || std::fs::remove_dir_all(&path))
                .await;
            match removed {
                Ok(()) => info!(topic = %p.topic, partition = key.1, "partition deleted"),
                Err(e) => {
                    warn!(topic = %p.topic, partition = key.1, error = %e, "removing partition files")
                }
            }
        }
        let missing: Vec<(PartitionKey, String)> = wanted
            .into_iter()
            .filter(|(k, _)| !self.partitions.borrow().contains_key(k))
            .collect();
        let started = std::time::Instant::now();
        let opened = RefCell::new(Vec::new());
        let opened_ref = &opened;
        run_bounded(missing, OPEN_CONCURRENCY, |(key, topic)| async move {
            let Some(group) = image
                .topics
                .get(&topic)
                .and_then(|t| t.group_ids.get(key.1 as usize).copied())
            else {
                error!(%topic, partition = key.1, "no Raft group for the partition in the image");
                return;
            };
            let (segment_bytes, segment_ms) = image
                .topics
                .get(&topic)
                .map(|t| {
                    let get = |name| {
                        crate::metadata::configs::topic_config(name)
                            .map(|def| {
                                image
                                    .effective_topic_config(def, &t.configs, self.node_id)
                                    .0
                            })
                            .and_then(|v| v.parse::<i64>().ok())
                    };
                    (get("segment.bytes"), get("segment.ms"))
                })
                .unwrap_or((None, None));
            match self
                .open(key, group, &topic, segment_bytes, segment_ms)
                .await
            {
                Ok((p, end)) => {
                    self.partitions.borrow_mut().insert(key, p.clone());
                    opened_ref.borrow_mut().push((p, end));
                }
                Err(e) => error!(%topic, partition = key.1, error = %e, "opening partition failed"),
            }
        })
        .await;
        // Clients come once every new partition leads its group and committed what its log
        // held (its election: one metadata write and one fdatasync, all groups at once).
        let opened = opened.into_inner();
        let open_s = started.elapsed().as_secs_f64();
        // One after the other (each returns at once once its partition is ready): one
        // waker at a time, however many partitions opened.
        if glommio::timer::timeout(Duration::from_secs(30), async {
            for (p, end) in &opened {
                p.wait_ready(*end).await;
            }
            Ok(())
        })
        .await
        .is_err()
        {
            let late = opened
                .iter()
                .filter(|(p, end)| p.leader_term.get() == 0 || p.hw.get() < *end)
                .count();
            warn!(
                partitions = late,
                "partitions not leading their Raft group 30 s after opening"
            );
        }
        if !opened.is_empty() {
            info!(
                shard = self.shard,
                partitions = opened.len(),
                open_s,
                elected_s = started.elapsed().as_secs_f64() - open_s,
                "partitions opened, then led (each elected itself and committed its log)"
            );
        }
    }

    /// Opens a partition and its Raft group (which starts its election); returns it and
    /// the log end it must commit before it serves clients.
    async fn open(
        &self,
        key: PartitionKey,
        group: spate_raft::GroupId,
        topic: &str,
        segment_bytes: Option<i64>,
        segment_ms: Option<i64>,
    ) -> Result<(Rc<Partition>, i64), String> {
        let path = partition_dir(&self.root, &key);
        let dir = self
            .partition_dir_handle(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let defaults = LogConfig::default();
        let config = LogConfig {
            // Batches up to the frame limit are accepted here; the topic's max.message.bytes
            // is checked by the produce handler.
            max_batch_bytes: crate::limits::REQUEST_FRAME_BYTES_MAX,
            // The topic's segment.bytes / segment.ms as of opening (a change applies when the
            // partition is next opened).
            segment_bytes: segment_bytes
                .filter(|b| *b > 0)
                .map(|b| (b as u64).min(u32::MAX as u64))
                .unwrap_or(defaults.segment_bytes),
            segment_ms: segment_ms.filter(|ms| *ms > 0).map(|ms| ms as u64),
            ..defaults
        };
        let state = self
            .recovered
            .lock()
            .map_err(|_| "the recovered Raft metadata is poisoned".to_string())?
            .remove(&group)
            .unwrap_or_default();
        let epochs = state
            .values
            .get(KEY_LEADER_EPOCHS)
            .map(|v| decode_epochs(&String::from_utf8_lossy(v)));
        let cfg = spate_raft::SegmentConfig {
            log: config,
            on_progress: Some(self.consensus.progress_hook()),
            sleep: Some(Rc::new(|d| Box::pin(glommio::timer::sleep(d)))),
            on_fsync: Some({
                let h = self.fsync_seconds.clone();
                Rc::new(move |d: Duration| h.observe(d.as_secs_f64()))
            }),
            // Raft log compaction only moves the anchor; the topic's retention removes data.
            compaction_keeps_data: true,
            ..Default::default()
        };
        let store = Store::open(group, dir.clone(), cfg, state, self.meta.clone())
            .await
            .map_err(|e| format!("opening the partition's Raft log (group {group}): {e}"))?;
        glommio::spawn_local(store.pump()).detach();
        if let Some(t) = store.take_recovery_report().and_then(|r| r.truncated) {
            warn!(%topic, partition = key.1, truncation = ?t, "recovery truncated a corrupt or torn tail");
        }
        let side_dir = path.clone();
        let (saved, snapshot) = glommio::executor()
            .spawn_blocking(move || {
                (
                    spate_storage::log::checkpoint::read(&side_dir),
                    read_snapshot_file(&side_dir),
                )
            })
            .await;
        let attached = store.with_log_mut(|log| {
            if let Some(cache) = &self.cache {
                log.attach_cache(cache);
            }
            match saved {
                Ok(Some(start)) => {
                    let committed = log.committed_offset();
                    if start > committed {
                        warn!(%topic, partition = key.1, checkpoint = start, log_end = committed,
                            "log start checkpoint is past the log end; starting at the log end");
                    }
                    log.advance_log_start(start.min(committed))
                        .map_err(|e| e.to_string())?;
                }
                Ok(None) => {}
                Err(e) => warn!(%topic, partition = key.1, error = %e,
                    "ignoring an unreadable log start checkpoint; the log starts at its first batch"),
            }
            Ok::<(), String>(())
        });
        if let Some(Err(e)) = attached {
            let _ = store.close().await;
            return Err(e);
        }
        let (epochs, epochs_ok) = match epochs {
            Some(Some(e)) => (e, true),
            None => (Vec::new(), false),
            Some(None) => {
                warn!(%topic, partition = key.1, "damaged leader epoch cache; rebuilding it from the log");
                (Vec::new(), false)
            }
        };
        let hw = store.anchor().offset as i64;
        let p = Rc::new(Partition {
            key,
            topic: topic.to_string(),
            path,
            start_lock: glommio::sync::Semaphore::new(1),
            metrics: crate::metrics::PartitionMetrics::new(topic, key.1),
            group,
            store: store.clone(),
            consensus: self.consensus.clone(),
            meta: self.meta.clone(),
            hw: Cell::new(hw),
            leader_term: Cell::new(0),
            failed: Cell::new(false),
            uncompacted_bytes: Cell::new(0),
            epochs: RefCell::new(epochs),
            dir,
            cached: self.cache.is_some(),
            readahead: Cell::new((0, 0)),
            producers: RefCell::new(ProducerStates::default()),
            snapshot_offset: Cell::new(0),
            unsnapshotted_bytes: Cell::new(0),
            snapshotting: Cell::new(false),
            hw_waiters: spate_net::wakers::WakerSet::new(),
            deleted: Cell::new(false),
        });
        let stable = p
            .with_log(|l| l.stable_offset())
            .map_err(|e| e.to_string())?;
        let mut refused = true;
        let from = match snapshot {
            Ok(None) => {
                refused = false;
                0
            }
            Ok(Some(bytes)) => match ProducerStates::decode_snapshot(&bytes) {
                Ok((offset, states)) if offset <= stable => {
                    *p.producers.borrow_mut() = states;
                    p.snapshot_offset.set(offset);
                    refused = false;
                    offset
                }
                Ok((offset, _)) => {
                    warn!(%topic, partition = key.1, snapshot = offset, log_end = stable,
                        "producer-state snapshot is past the log end; rebuilding from the log");
                    0
                }
                Err(e) => {
                    warn!(%topic, partition = key.1, error = %e,
                        "unreadable producer-state snapshot; rebuilding from the log");
                    0
                }
            },
            Err(e) => {
                warn!(%topic, partition = key.1, error = %e,
                    "reading the producer-state snapshot; rebuilding from the log");
                0
            }
        };
        if refused {
            // A refused snapshot must not be trusted later (say the log grows past its offset
            // again with a different history, then a crash comes before the next snapshot).
            let dir = p.path.clone();
            let removed = glommio::executor()
                .spawn_blocking(move || remove_snapshot_file(&dir))
                .await;
            if let Err(e) = removed {
                warn!(%topic, partition = key.1, error = %e, "removing a refused producer-state snapshot");
            }
        }
        // Without its checkpoint, the epoch cache is rebuilt from every batch's epoch.
        let from = if epochs_ok { from } else { 0 };
        let rebuilt = p.rebuild_producer_state(from).await;
        let end = p.log_end_offset();
        if let Err(e) = rebuilt {
            let _ = store.close().await;
            return Err(e.to_string());
        }
        if !epochs_ok && !p.epochs.borrow().is_empty() {
            p.persist_epochs();
        }
        if let Err(e) = self.consensus.add(&p, store.clone()) {
            let _ = store.close().await;
            return Err(format!("starting the partition's Raft group {group}: {e}"));
        }
        Ok((p, end))
    }

    /// Flushes and closes every partition (shutdown), writing each one's producer-state
    /// snapshot, several at a time.
    pub async fn close_all(&self) {
        let all: Vec<Rc<Partition>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, p)| p)
            .collect();
        // Every group's Raft log compaction at once: their anchor writes share the metadata
        // thread's group commits (one by one, each would wait for its own).
        self.consensus.compact_all();
        run_bounded(all, CLOSE_CONCURRENCY, |p| async move {
            // Wait out a running snapshot, then compact the Raft log through what it
            // committed (the next open rebuilds no index) and close the group's store:
            // its pump writes what is queued and the final applied checkpoint.
            while p.snapshotting.get() {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            p.settle_raft_log().await;
            p.deleted.set(true);
            p.wake_fetchers();
            let store = self.consensus.remove(&p);
            let closed = match &store {
                Some(s) => s.close().await,
                None => p.store.close().await,
            };
            let end = p.log_end_offset();
            if let Err(e) = closed {
                warn!(topic = %p.topic, partition = p.key.1, error = %e, "closing partition log");
            } else if end > p.snapshot_offset.get() as i64 {
                // Everything below `end` is durable now.
                let data = p.producers.borrow().encode_snapshot(end as u64);
                let dir = p.path.clone();
                let written = glommio::executor()
                    .spawn_blocking(move || write_snapshot_file(&dir, &data))
                    .await;
                if let Err(e) = written {
                    warn!(topic = %p.topic, partition = p.key.1, error = %e,
                        "writing the producer-state snapshot");
                }
            }
            // Close the directory handle unless someone still holds the partition (a
            // read or compaction stopping: the handle then closes when they drop it).
            if let Ok(p) = Rc::try_unwrap(p) {
                let _ = p.dir.close().await;
            }
        })
        .await;
    }
}

/// Writes a partition's producer-state snapshot: a temporary file renamed over the old one.
fn write_snapshot_file(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))
}

/// See [`Partition::epoch_end`].
fn epoch_end_in(epochs: &[(i32, i64)], requested: i32, log_end: i64) -> (i32, i64) {
    let Some(&(latest, _)) = epochs.last() else {
        return (-1, -1);
    };
    if requested < 0 {
        return (-1, -1);
    }
    if requested == latest {
        return (latest, log_end);
    }
    let Some(&(_, higher_start)) = epochs.iter().find(|&&(e, _)| e > requested) else {
        return (-1, -1);
    };
    match epochs.iter().rev().find(|&&(e, _)| e <= requested) {
        Some(&(floor, _)) => (floor, higher_start),
        None => (requested, higher_start),
    }
}

/// Kafka's `leader-epoch-checkpoint` text: version 0, the count, then `epoch offset` lines.
fn encode_epochs(epochs: &[(i32, i64)]) -> String {
    let mut s = format!("0\n{}\n", epochs.len());
    for (e, o) in epochs {
        s.push_str(&format!("{e} {o}\n"));
    }
    s
}

/// Parses a leader epoch checkpoint; `None` when it is damaged (wrong version or count, an
/// unparsable line, epochs or offsets going backwards).
fn decode_epochs(text: &str) -> Option<Vec<(i32, i64)>> {
    let mut lines = text.lines();
    if lines.next()?.trim() != "0" {
        return None;
    }
    let n: usize = lines.next()?.trim().parse().ok()?;
    let mut out: Vec<(i32, i64)> = Vec::with_capacity(n.min(1 << 16));
    for line in lines.by_ref().take(n) {
        let mut f = line.split_whitespace();
        let (e, o) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
        if f.next().is_some() || out.last().is_some_and(|&(pe, po)| pe >= e || po > o) {
            return None;
        }
        out.push((e, o));
    }
    (out.len() == n && lines.all(|l| l.trim().is_empty())).then_some(out)
}

/// Removes a partition's producer-state snapshot (refused at open).
fn remove_snapshot_file(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(dir.join(SNAPSHOT_FILE)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A partition's producer-state snapshot, if it has one.
fn read_snapshot_file(dir: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `f` over `items` with at most `limit` of its futures in flight, on the calling task
/// (the futures may borrow from the caller, which spawned tasks could not).
async fn run_bounded<I, F, Fut>(items: I, limit: usize, mut f: F)
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut items = items.into_iter();
    let mut running: Vec<std::pin::Pin<Box<Fut>>> = Vec::new();
    std::future::poll_fn(|cx| loop {
        while running.len() < limit {
            match items.next() {
                Some(item) => running.push(Box::pin(f(item))),
                None => break,
            }
        }
        if running.is_empty() {
            return std::task::Poll::Ready(());
        }
        let before = running.len();
        running.retain_mut(|fut| fut.as_mut().poll(cx).is_pending());
        if running.len() == before {
            return std::task::Poll::Pending;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_ends_follow_kafkas_leader_epoch_cache() {
        let epochs = [(0, 0), (2, 10), (5, 30)];
        assert_eq!(epoch_end_in(&epochs, 5, 42), (5, 42));
        assert_eq!(epoch_end_in(&epochs, 2, 42), (2, 30));
        // Between known epochs: the floor epoch, ending where the next one starts.
        assert_eq!(epoch_end_in(&epochs, 3, 42), (2, 30));
        assert_eq!(epoch_end_in(&epochs, 0, 42), (0, 10));
        assert_eq!(epoch_end_in(&epochs, 6, 42), (-1, -1));
        assert_eq!(epoch_end_in(&epochs, -1, 42), (-1, -1));
        // Older than every known epoch: itself, ending where the first starts.
        assert_eq!(epoch_end_in(&[(3, 7)], 1, 9), (1, 7));
        assert_eq!(epoch_end_in(&[], 0, 9), (-1, -1));
    }

    #[test]
    fn epoch_checkpoints_round_trip_and_damage_is_refused() {
        let epochs = vec![(0, 0), (2, 16), (3, 20)];
        let text = encode_epochs(&epochs);
        assert_eq!(text, "0\n3\n0 0\n2 16\n3 20\n");
        assert_eq!(decode_epochs(&text), Some(epochs));
        assert_eq!(decode_epochs("0\n0\n"), Some(vec![]));
        for bad in [
            "",
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n1\n0 x\n",
            "0\n2\n3 0\n2 5\n",
            "0\n2\n2 9\n3 5\n",
            "0\n1\n2 9 1\n",
            "0\n1\n2 9\n4 10\n",
        ] {
            assert_eq!(decode_epochs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn run_bounded_runs_every_item_with_at_most_limit_in_flight() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let done = Cell::new(0usize);
                let inflight = Cell::new(0usize);
                let peak = Cell::new(0usize);
                run_bounded(0..200u64, 16, |i| {
                    let (done, inflight, peak) = (&done, &inflight, &peak);
                    async move {
                        inflight.set(inflight.get() + 1);
                        peak.set(peak.get().max(inflight.get()));
                        glommio::timer::sleep(Duration::from_micros(100 + (i * 37) % 500)).await;
                        inflight.set(inflight.get() - 1);
                        done.set(done.get() + 1);
                    }
                })
                .await;
                assert_eq!(done.get(), 200);
                assert_eq!(peak.get(), 16);
                // Futures that finish at once, all in the same poll.
                let quick = Cell::new(0usize);
                run_bounded(0..100, 8, |_| {
                    let quick = &quick;
                    async move { quick.set(quick.get() + 1) }
                })
                .await;
                assert_eq!(quick.get(), 100);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
