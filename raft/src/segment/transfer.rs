//! Segment transfer for snapshot installation (Raft §7): a follower behind the leader's log
//! start gets the leader's retained Kafka data below the snapshot point, batch by batch with
//! its original offsets and leader epochs, instead of restarting its log empty there.
//!
//! * **The payload** (version 3) names, besides the snapshot anchor `S` (index, term, offset,
//!   no-op flag), the leader's retained range: `start` = `L`, where the transferred data
//!   begins (the anchor's offset; with [`super::SegmentConfig::compaction_keeps_data`] the
//!   Kafka log start, since data below the Raft anchor is still Kafka data), and an estimate
//!   of its size in bytes (progress only). Versions 1 and 2 still decode (no transfer).
//! * **Pull, chunk by chunk.** The follower fetches whole batches in file order, zero-width
//!   no-ops included, from place [`BatchAt::offset`]`(L)` up to (not including) the snapshot
//!   anchor's first batch place, through a [`SnapshotSource`] (the leader answers with
//!   [`SegmentStore::serve_transfer`], a `plan_read_at`/`read_at` of its log).
//! * **Staging.** Chunks go into a fresh [`PartitionLog`] whose files live in the partition
//!   directory under the prefix [`STAGING_PREFIX`] ([`PrefixDir`]), appended with their own
//!   offsets and epochs ([`RecordBatch::validate_stored`]: compacted and filler batches too;
//!   zero-width ones with `append_zero_width`): byte-identical batches. Only when the whole
//!   range is staged, flushed and the directory synced is the marker `staging.done-…` created
//!   (and synced). The follower's log is untouched until then; an interrupted transfer's files
//!   are discarded when the next one starts or the pump starts.
//! * **Until the data is staged the snapshot is not handed to Raft**:
//!   [`crate::LogStore::prepare_snapshot`] answers `Pending`, the driver holds the message
//!   and asks again after the store's next progress notification; a failed transfer answers
//!   `Failed` and the driver drops the snapshot (the leader, which reported it sent, probes
//!   the follower again, is refused, and sends a new snapshot later).
//! * **The switch** is the reset-marker protocol: anchor + membership + reset marker durable
//!   in the metadata store; then the log reset ([`super::reset_log`]) finds the `done` marker
//!   for this anchor and removes the old log's files, syncs, renames `done` to `moving`,
//!   syncs, renames the staged files into place, syncs and opens the log; the reset marker is
//!   cleared, then the staging leftovers. A restart that finds the reset marker redoes the
//!   reset from the directory: `done` → start over from removing old files (all log files are
//!   old), `moving` → only renames remain (all log files are new), neither → no transfer (the
//!   log restarts empty at the snapshot offset, as before segment transfer existed). So a
//!   crash at any point leaves the old log or the complete new one.
//!
//! Producer state (idempotence, transactions) is the broker's and is not transferred.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use spate_storage::log::batch::{check_first, RecordBatch};
use spate_storage::log::file::{SegmentDir, SegmentFile};
use spate_storage::log::segment::segment_name;
use spate_storage::log::{BatchAt, LogConfig, PartitionLog};

use super::{io, io_std, is_log_file, split_batches, Anchor, Inner, MetaIo, SegmentStore};
use crate::store::{SnapshotPrep, StoreError};
use crate::types::{GroupId, NodeId, SnapshotMeta};

/// File-name prefix of the staging area in a partition directory.
pub const STAGING_PREFIX: &str = "staging.";

/// Where a follower fetches the leader's batches from (the node-to-node RPC in the broker; an
/// in-memory registry of stores in tests and the simulator). The answer holds whole batches
/// in file order, zero-width no-ops included, starting at place `at` and all before `end`,
/// up to about `max_bytes` (at least one batch); empty when nothing is left before `end`.
/// It must fail (not hang) when the node cannot be reached.
pub trait SnapshotSource {
    /// Fetches the next chunk of `group`'s log from node `from`.
    fn fetch(
        &self,
        from: NodeId,
        group: GroupId,
        at: BatchAt,
        end: BatchAt,
        max_bytes: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, StoreError>>>>;
}

/// A view of a directory with every name prefixed (the staging area of a partition
/// directory): a [`PartitionLog`] over it writes `staging.{name}` files.
#[derive(Clone)]
pub struct PrefixDir<D> {
    inner: D,
    prefix: Rc<str>,
}

impl<D> PrefixDir<D> {
    /// `inner` with `prefix` before every name.
    pub fn new(inner: D, prefix: &str) -> Self {
        PrefixDir {
            inner,
            prefix: prefix.into(),
        }
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl<D: SegmentDir> SegmentDir for PrefixDir<D> {
    type Buf = D::Buf;
    type File = D::File;

    fn alloc_buf(&self, len: usize) -> Self::Buf {
        self.inner.alloc_buf(len)
    }

    async fn open(&self, name: &str) -> io::Result<Self::File> {
        self.inner.open(&self.name(name)).await
    }

    fn max_io_bytes(&self) -> usize {
        self.inner.max_io_bytes()
    }

    async fn open_existing(&self, name: &str) -> io::Result<Self::File> {
        self.inner.open_existing(&self.name(name)).await
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self
            .inner
            .list()
            .await?
            .into_iter()
            .filter_map(|n| n.strip_prefix(&*self.prefix).map(str::to_string))
            .collect())
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(&self.name(name)).await
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(&self.name(from), &self.name(to)).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.inner.sync().await
    }
}

/// What a version-3 snapshot payload asks the follower to transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferPlan {
    /// The snapshot anchor: the transfer ends right before its first batch
    /// ([`Anchor::first_batch`]), so the follower's log ends at `anchor.offset`.
    pub anchor: Anchor,
    /// `L`: the offset the transferred data starts at (the first batch holding it).
    pub start: u64,
    /// Estimated bytes to transfer (progress).
    pub bytes: u64,
}

/// Counters of one store's transfers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Transfers started.
    pub started: u64,
    /// Transfers completely staged.
    pub staged: u64,
    /// Transfers failed (source unreachable, bad data, local I/O error) or abandoned.
    pub failed: u64,
    /// Snapshots installed from staged data.
    pub installed: u64,
    /// Batch bytes staged (all transfers).
    pub bytes: u64,
    /// Batch bytes served to followers.
    pub served_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Queued,
    Running,
    Staged,
    Failed(String),
    /// Handed to Raft: its install is queued (never discarded for another transfer).
    Installing,
}

pub(super) struct Transfer {
    key: (u64, u64),
    from: NodeId,
    plan: TransferPlan,
    state: State,
    staged_bytes: u64,
}

/// The transfer state of a store (kept with the pump's [`super::Disk`]).
#[derive(Default)]
pub(super) struct Transfers {
    current: Option<Transfer>,
    stats: TransferStats,
    /// The last snapshot installed from staged data: (anchor, L).
    last_installed: Option<(Anchor, u64)>,
    waker: Option<Waker>,
}

fn marker(kind: &str, a: &Anchor) -> String {
    format!("{STAGING_PREFIX}{kind}-{}-{}-{}", a.index, a.term, a.offset)
}

fn is_marker(name: &str) -> bool {
    name.strip_prefix(STAGING_PREFIX)
        .is_some_and(|n| n.starts_with("done-") || n.starts_with("moving-"))
}

/// Removes every file of the staging area; whether there was any.
pub(super) async fn discard_staging<D: SegmentDir>(dir: &D) -> Result<bool, StoreError> {
    let names = dir.list().await.map_err(|e| io_std("list", e))?;
    let mut any = false;
    for name in names.iter().filter(|n| n.starts_with(STAGING_PREFIX)) {
        dir.remove(name)
            .await
            .map_err(|e| io_std("remove staged file", e))?;
        any = true;
    }
    if any {
        dir.sync().await.map_err(|e| io_std("sync directory", e))?;
    }
    Ok(any)
}

/// Whether the staged data for `anchor` is complete (its `done` or `moving` marker exists).
pub(super) async fn staged_for<D: SegmentDir>(dir: &D, anchor: &Anchor) -> bool {
    let (done, moving) = (marker("done", anchor), marker("moving", anchor));
    dir.list()
        .await
        .is_ok_and(|names| names.iter().any(|n| *n == done || *n == moving))
}

/// The switch to the staged log for `anchor` (see the module documentation), redone safely
/// from any point; `None` when there is no complete staged log for it.
pub(super) async fn switch_to_staged<D: SegmentDir>(
    dir: &D,
    config: &LogConfig,
    anchor: Anchor,
) -> Result<Option<PartitionLog<D>>, StoreError> {
    let list = || async { dir.list().await.map_err(|e| io_std("list", e)) };
    let sync = || async { dir.sync().await.map_err(|e| io_std("sync directory", e)) };
    let (done, moving) = (marker("done", &anchor), marker("moving", &anchor));
    let names = list().await?;
    let has = |n: &str| names.iter().any(|x| x == n);
    if !has(&done) && !has(&moving) {
        return Ok(None);
    }
    if has(&done) {
        // Every log file is the old log's: remove them all before any staged file moves.
        for name in names.iter().filter(|n| is_log_file(n)) {
            dir.remove(name).await.map_err(|e| io_std("remove", e))?;
        }
        sync().await?;
        dir.rename(&done, &moving)
            .await
            .map_err(|e| io_std("rename marker", e))?;
        sync().await?;
    }
    // From here every log file in the directory is the new log's.
    for name in list().await? {
        if is_marker(&name) {
            continue;
        }
        if let Some(to) = name.strip_prefix(STAGING_PREFIX) {
            dir.rename(&name, to)
                .await
                .map_err(|e| io_std("rename staged file", e))?;
        }
    }
    sync().await?;
    let (log, _) = PartitionLog::open(dir.clone(), config.clone())
        .await
        .map_err(io)?;
    if log.log_end_offset() != anchor.offset {
        return Err(StoreError::Io(format!(
            "the transferred log ends at offset {}, not at the snapshot's {}",
            log.log_end_offset(),
            anchor.offset
        )));
    }
    Ok(Some(log))
}

/// A version-3 snapshot payload: the anchor, then `L` and the size estimate.
pub(super) fn encode_plan(plan: &TransferPlan) -> Bytes {
    let mut b = BytesMut::from(&super::encode_snapshot(plan.anchor)[..]);
    b[4] = 3;
    b.put_u64(plan.start);
    b.put_u64(plan.bytes);
    b.freeze()
}

/// The transfer a snapshot payload asks for: `None` for versions 1 and 2 (and malformed
/// payloads, which the install refuses) or when nothing lies below the snapshot point.
pub(super) fn decode_plan(b: &[u8]) -> Option<TransferPlan> {
    let anchor = super::decode_snapshot(b).ok()?;
    if b.get(4) != Some(&3) {
        return None;
    }
    let u = |i: usize| Some(u64::from_be_bytes(b.get(i..i + 8)?.try_into().ok()?));
    let n = super::SNAPSHOT_LEN;
    let plan = TransferPlan {
        anchor,
        start: u(n)?,
        bytes: u(n + 8)?,
    };
    (plan.start < anchor.offset).then_some(plan)
}

impl<D: SegmentDir, M: MetaIo> Inner<D, M> {
    pub(super) fn transfers(&mut self) -> &mut Transfers {
        &mut self.disk.transfers
    }

    /// Raft hands over the snapshot `key`: its staged data must survive until the install.
    pub(super) fn transfer_installing(&mut self, key: (u64, u64)) {
        if let Some(t) = self.transfers().current.as_mut() {
            if t.key == key && t.state == State::Staged {
                t.state = State::Installing;
            }
        }
    }
}

impl<D: SegmentDir, M: MetaIo> SegmentStore<D, M> {
    /// Serves a follower's transfer (the leader side of [`SnapshotSource::fetch`]): whole
    /// batches of this log in file order from place `at`, zero-width ones included, stopping
    /// before place `end`, up to about `max_bytes` (at least one batch). Fails when `at` is
    /// below the log start (retention moved it: the follower gives up and a new snapshot
    /// names the new start) or the log is busy.
    pub fn serve_transfer(
        &self,
        at: BatchAt,
        end: BatchAt,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Bytes, StoreError>> {
        let this = self.clone();
        let plan = self.with_log(|log| {
            (
                log.plan_read_at(at, max_bytes),
                log.config().max_batch_bytes,
            )
        });
        async move {
            let (plan, max_batch) = plan.ok_or_else(|| StoreError::Io("log busy".into()))?;
            let run = plan.map_err(io)?.run().await.map_err(io)?;
            let mut len = 0;
            while len < run.bytes.len() {
                let h = check_first(&run.bytes[len..], max_batch)
                    .map_err(|e| StoreError::Io(format!("serving a transfer: {e}")))?;
                if !end.skips(&h) {
                    break;
                }
                len += h.total_len();
            }
            this.inner.borrow_mut().transfers().stats.served_bytes += len as u64;
            Ok(run.bytes.slice(..len))
        }
    }

    /// Counters of this store's transfers.
    pub fn transfer_stats(&self) -> TransferStats {
        self.inner.borrow().disk.transfers.stats
    }

    /// The last snapshot installed from transferred data: its anchor and the offset `L` the
    /// transfer started at (tests and the simulator check the log below it).
    pub fn last_transfer_installed(&self) -> Option<(Anchor, u64)> {
        self.inner.borrow().disk.transfers.last_installed
    }

    /// Bytes staged by the running transfer and the estimated total (`None`: none running).
    pub fn transfer_progress(&self) -> Option<(u64, u64)> {
        let i = self.inner.borrow();
        let t = i.disk.transfers.current.as_ref()?;
        matches!(t.state, State::Queued | State::Running).then_some((t.staged_bytes, t.plan.bytes))
    }

    /// The payload of a snapshot at `index` (see the module documentation).
    pub(super) fn transfer_payload(&self, anchor: Anchor) -> Result<Bytes, StoreError> {
        let i = self.inner.borrow();
        let log = i
            .log
            .as_ref()
            .ok_or_else(|| StoreError::Io("log busy".into()))?;
        let mut start = if i.cfg.compaction_keeps_data {
            log.log_start_offset().min(i.anchor.offset)
        } else {
            i.anchor.offset
        };
        start = start.min(anchor.offset);
        let below: u64 = log
            .segments()
            .filter(|s| s.base_offset() < i.anchor.offset && s.next_offset() > start)
            .map(|s| s.size())
            .sum();
        let bytes = i.bytes_between(i.anchor.index, anchor.index) + below;
        Ok(encode_plan(&TransferPlan {
            anchor,
            start,
            bytes,
        }))
    }

    /// [`crate::LogStore::prepare_snapshot`].
    pub(super) fn prepare_transfer(
        &self,
        from: NodeId,
        meta: &SnapshotMeta,
        payload: &Bytes,
    ) -> SnapshotPrep {
        let mut i = self.inner.borrow_mut();
        if i.cfg.snapshot_source.is_none() {
            return SnapshotPrep::Ready;
        }
        let Some(plan) = decode_plan(payload) else {
            return SnapshotPrep::Ready;
        };
        let key = (meta.index, meta.term);
        if (plan.anchor.index, plan.anchor.term) != key {
            // The install refuses it.
            return SnapshotPrep::Ready;
        }
        let t = i.transfers();
        if let Some(cur) = t.current.as_mut() {
            if cur.key == key {
                match &cur.state {
                    State::Queued | State::Running | State::Installing => {
                        return SnapshotPrep::Pending
                    }
                    State::Staged => return SnapshotPrep::Ready,
                    State::Failed(e) => {
                        let e = e.clone();
                        t.current = None;
                        return SnapshotPrep::Failed(e);
                    }
                }
            }
            if matches!(
                cur.state,
                State::Queued | State::Running | State::Installing
            ) {
                // Let the running one finish (the driver holds its message).
                return SnapshotPrep::Pending;
            }
        }
        t.current = Some(Transfer {
            key,
            from,
            plan,
            state: State::Queued,
            staged_bytes: 0,
        });
        t.stats.started += 1;
        if let Some(w) = t.waker.take() {
            w.wake();
        }
        i.wake_pump();
        SnapshotPrep::Pending
    }

    /// The pump's transfer side: runs queued transfers, one at a time, alongside the
    /// operation rounds. Returns when the store closes or fails.
    pub(super) async fn transfer_loop(&self) {
        loop {
            let go = std::future::poll_fn(|cx| {
                let mut i = self.inner.borrow_mut();
                if i.failed.is_some() || i.closed {
                    return Poll::Ready(false);
                }
                let t = i.transfers();
                if t.current.as_ref().is_some_and(|c| c.state == State::Queued) {
                    return Poll::Ready(true);
                }
                t.waker = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if !go {
                return;
            }
            self.run_transfer().await;
        }
    }

    /// Runs the queued transfer, if any (also from [`SegmentStore::run_until_idle`]).
    pub(super) async fn run_transfer(&self) {
        let job = {
            let mut i = self.inner.borrow_mut();
            let i = &mut *i;
            let source = i.cfg.snapshot_source.clone();
            let chunk = i.cfg.transfer_chunk_bytes.max(1);
            let (group, dir, log_cfg) = (i.group, i.dir.clone(), i.cfg.log.clone());
            match i.disk.transfers.current.as_mut() {
                Some(t) if t.state == State::Queued => {
                    t.state = State::Running;
                    source.map(|s| (s, t.from, t.key, t.plan, chunk, group, dir, log_cfg))
                }
                _ => None,
            }
        };
        let Some((source, from, key, plan, chunk, group, dir, log_cfg)) = job else {
            return;
        };
        let r = self
            .stage(&*source, from, group, &dir, &log_cfg, plan, chunk)
            .await;
        if r.is_err() {
            // Best effort: the next transfer (or the pump's start) discards them anyway.
            let _ = discard_staging(&dir).await;
        }
        {
            let mut i = self.inner.borrow_mut();
            let t = i.transfers();
            let staged =
                t.current
                    .as_ref()
                    .map_or(0, |c| if c.key == key { c.staged_bytes } else { 0 });
            t.stats.bytes += staged;
            match &r {
                Ok(()) => t.stats.staged += 1,
                Err(_) => t.stats.failed += 1,
            }
            if let Some(c) = t.current.as_mut().filter(|c| c.key == key) {
                c.state = match r {
                    Ok(()) => State::Staged,
                    Err(e) => {
                        tracing::warn!(group, from, error = %e, "segment transfer failed");
                        State::Failed(e.to_string())
                    }
                };
            }
        }
        self.notify();
    }

    #[allow(clippy::too_many_arguments)]
    async fn stage(
        &self,
        source: &dyn SnapshotSource,
        from: NodeId,
        group: GroupId,
        dir: &D,
        log_cfg: &LogConfig,
        plan: TransferPlan,
        chunk: usize,
    ) -> Result<(), StoreError> {
        discard_staging(dir).await?;
        let staging = PrefixDir::new(dir.clone(), STAGING_PREFIX);
        let max_batch = log_cfg.max_batch_bytes;
        let end = plan.anchor.first_batch();
        let mut at = BatchAt::offset(plan.start);
        let mut log: Option<PartitionLog<PrefixDir<D>>> = None;
        let r = async {
            loop {
                {
                    let i = self.inner.borrow();
                    if i.failed.is_some() || i.closed {
                        return Err(StoreError::Io("store closed during a transfer".into()));
                    }
                }
                let bytes = source.fetch(from, group, at, end, chunk).await?;
                if bytes.is_empty() {
                    break;
                }
                let mut n = 0u64;
                for b in split_batches(bytes, max_batch)? {
                    let h =
                        check_first(&b, max_batch).map_err(|e| StoreError::Io(e.to_string()))?;
                    if !end.skips(&h) || at.skips(&h) {
                        return Err(StoreError::Invalid(format!(
                            "transfer: batch at offset {} epoch {} outside {at:?}..{end:?}",
                            h.base_offset, h.partition_leader_epoch
                        )));
                    }
                    let epoch = u64::try_from(h.partition_leader_epoch).map_err(|_| {
                        StoreError::Invalid(format!(
                            "transfer: batch at offset {} has leader epoch {}",
                            h.base_offset, h.partition_leader_epoch
                        ))
                    })?;
                    let l = match log.as_mut() {
                        Some(l) => l,
                        None => {
                            let first = h.base_offset as u64;
                            if first > plan.start {
                                return Err(StoreError::Invalid(format!(
                                    "transfer from {} starts at offset {first}",
                                    plan.start
                                )));
                            }
                            // A log that starts, empty, at the first batch's offset.
                            let f = staging
                                .open(&segment_name(first, epoch))
                                .await
                                .map_err(|e| io_std("create", e))?;
                            f.close().await.map_err(|e| io_std("close", e))?;
                            let (l, _) = PartitionLog::open(staging.clone(), log_cfg.clone())
                                .await
                                .map_err(io)?;
                            log.insert(l)
                        }
                    };
                    if h.base_offset as u64 != l.log_end_offset() {
                        return Err(StoreError::Invalid(format!(
                            "transfer: batch at offset {} where the staged log ends at {}",
                            h.base_offset,
                            l.log_end_offset()
                        )));
                    }
                    n += b.len() as u64;
                    let batch = RecordBatch::validate_stored(b, max_batch)
                        .map_err(|e| StoreError::Invalid(format!("transfer: {e}")))?;
                    if h.is_zero_width() {
                        l.append_zero_width(&batch, epoch).map_err(io)?;
                    } else {
                        l.append(&batch, epoch).map_err(io)?;
                    }
                    at = BatchAt::after(&h);
                }
                if let Some(l) = log.as_mut() {
                    l.flush().await.map_err(io)?;
                }
                if let Some(t) = self.inner.borrow_mut().transfers().current.as_mut() {
                    t.staged_bytes += n;
                }
            }
            let end_offset = log.as_ref().map_or(plan.start, |l| l.log_end_offset());
            if end_offset != plan.anchor.offset {
                return Err(StoreError::Invalid(format!(
                    "transfer from {} ended at offset {end_offset}, not at the snapshot's {}",
                    plan.start, plan.anchor.offset
                )));
            }
            Ok(())
        }
        .await;
        if let Some(l) = log {
            let c = l.close().await.map_err(io);
            r?;
            c?;
        } else {
            r?;
        }
        dir.sync().await.map_err(|e| io_std("sync directory", e))?;
        let f = dir
            .open(&marker("done", &plan.anchor))
            .await
            .map_err(|e| io_std("create marker", e))?;
        f.close().await.map_err(|e| io_std("close marker", e))?;
        dir.sync().await.map_err(|e| io_std("sync directory", e))?;
        Ok(())
    }

    /// After an install: forget the transfer, count it, drop the staging leftovers.
    pub(super) async fn transfer_installed(
        &self,
        anchor: Anchor,
        from_staging: bool,
    ) -> Result<(), StoreError> {
        let dir = {
            let mut i = self.inner.borrow_mut();
            let t = i.transfers();
            let start = t
                .current
                .as_ref()
                .filter(|c| c.key == (anchor.index, anchor.term))
                .map(|c| c.plan.start);
            if t.current.as_ref().is_some_and(|c| {
                c.key == (anchor.index, anchor.term) || c.state == State::Installing
            }) {
                t.current = None;
            }
            if from_staging {
                t.stats.installed += 1;
                t.last_installed = Some((anchor, start.unwrap_or(anchor.offset)));
            }
            i.dir.clone()
        };
        if from_staging {
            discard_staging(&dir).await?;
        }
        Ok(())
    }
}
