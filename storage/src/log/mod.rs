//! The partition log: one partition's record batches in a directory of segment files. It is
//! also the partition's Raft log (one Raft entry = one batch).
//!
//! A [`PartitionLog`] lives on the shard that owns the partition and is never shared across
//! threads. Its I/O goes through the [`file::SegmentDir`] seam: [`file::DmaDir`] (glommio,
//! O_DIRECT) in production, [`faulty::FaultyDir`] (in memory, crash injection) in tests.
//!
//! * Append ([`PartitionLog::append`]) is synchronous and in memory: it assigns offsets, stamps
//!   base offset and leader epoch (= term) into the header, copies the batch into the active
//!   segment's appender and notes it in the sparse index ([`index`]). Segments roll at a size
//!   limit, on a term change, and by age ([`PartitionLog::roll_if_due`]).
//! * Flush is group commit, in two phases so appends continue while the disk works:
//!   [`PartitionLog::start_flush`] takes every unwritten byte of every segment into a
//!   [`FlushJob`]; the job writes ([`FlushJob::write`]), the log records the data as stable
//!   ([`PartitionLog::finish_write`]), the job runs one `fdatasync` per segment
//!   ([`WrittenJob::sync`]) — then writes the index files of segments it completed and the
//!   segment checkpoint ([`manifest`]) — and [`PartitionLog::finish_sync`] advances the
//!   committed offset and completes every [`DurableWaiter`] it covers. One flusher task per
//!   shard drives jobs, one at a time; [`PartitionLog::flush`] does all of it inline.
//! * A full disk (ENOSPC, EDQUOT) is not fatal: the failed job's bytes go back into memory,
//!   appends fail with [`LogError::DiskFull`] until a later flush gets them all written.
//! * Reads ([`PartitionLog::read`], or [`PartitionLog::plan_read`] + [`ReadPlan::run`] to
//!   avoid holding the log across the I/O) return whole batches as one `Bytes`, from one
//!   segment, up to what has been written to the file: the sparse index gives a position at
//!   most one index interval before the batch, the plan walks headers from there. Every batch
//!   taken from a file is verified (CRC-32C, header) before it is returned: a read stops
//!   before a damaged batch and fails with [`LogError::Corrupt`] when that is its first; the
//!   damage is reported once ([`PartitionLog::take_corruptions`], see [`corrupt`]).
//!   [`PartitionLog::plan_find_timestamp`] finds the first batch at or after a timestamp.
//! * Truncation: [`PartitionLog::truncate_suffix`] (Raft conflict; durable on return) and
//!   [`PartitionLog::truncate_prefix`] (log start offset; whole segments deleted); retention
//!   ([`PartitionLog::apply_retention`]) detaches whole closed segments synchronously and
//!   deletes their files in a [`SegmentDeletion`] that does not borrow the log.
//! * Recovery: [`PartitionLog::open`] trusts closed segments the checkpoint or their index
//!   files vouch for and scans (CRC-32C of every batch) only what follows the last index of
//!   the last segment, cutting a torn tail and keeping isolated damage inside the data
//!   ([`recovery`]). First it finishes or discards a compaction a crash interrupted.
//! * Compaction ([`compact`]): closed segments are rewritten with what the owner's
//!   [`compact::Cleaner`] keeps (the broker decides per record; storage never parses
//!   records) and swapped in crash-safely (`.cleaned` → `.swap` → `.log`). Offsets are kept
//!   and still follow on batch after batch: the offsets of removed batches are covered by an
//!   empty filler batch ([`batch::filler_batch`]), and a batch may hold fewer records than
//!   offsets (even none). Readers and recovery accept no jump in offsets (it is damage: a
//!   flipped base offset lies outside the CRC).

pub mod appender;
pub mod batch;
pub mod cache;
pub mod checkpoint;
pub mod compact;
pub mod corrupt;
pub mod faulty;
pub mod file;
pub mod index;
pub mod manifest;
pub mod recovery;
pub mod retention;
mod scan;
pub mod segment;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use self::appender::{DirtyPos, PendingWrites, StablePos, Write};
use self::batch::{RecordBatch, BATCH_HEADER_LEN};
use self::corrupt::Corruptions;
use self::file::{align_down, is_disk_full, SegmentDir, SegmentFile, MAX_IO_BYTES};
use self::index::{IndexMeta, LastBatch, SegmentIndex};
use self::manifest::{Manifest, ManifestSegment};
use self::scan::{FileSource, SegmentSource};
use self::segment::{IndexFiles, Segment, SegmentShared};

pub use self::cache::{BatchCache, CacheStats};
pub use self::corrupt::CorruptBatch;
pub use self::recovery::{CorruptTail, RecoveryReport, TailTruncation};
pub use self::retention::{RetentionOutcome, SegmentDeletion};

/// How long a flusher should wait before retrying after [`LogError::DiskFull`].
pub const DISK_FULL_RETRY: Duration = Duration::from_secs(1);

/// Tunables of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment when the next batch would take the active one past this size
    /// (at most `u32::MAX`: index positions are 32-bit).
    pub segment_bytes: u64,
    /// Roll the active segment once its first batch is this old ([`PartitionLog::roll_if_due`];
    /// Kafka's `segment.ms`). `None`: never by age.
    pub segment_ms: Option<u64>,
    /// Largest batch accepted, header included (Kafka's `message.max.bytes`).
    pub max_batch_bytes: usize,
    /// Size of the appender's write buffers: the largest single write (at most
    /// [`file::MAX_IO_CAP_BYTES`]; [`PartitionLog::open`] lowers it to the directory's cap on
    /// one I/O, [`SegmentDir::max_io_bytes`]).
    pub write_chunk_bytes: usize,
    /// How much recovery reads at a time while scanning a segment.
    pub recovery_read_bytes: usize,
    /// One sparse index entry per this many bytes of log (Kafka's `index.interval.bytes`):
    /// 16 bytes of memory per interval; a lookup reads at most one interval (plus one batch)
    /// more than it returns.
    pub index_interval_bytes: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            segment_ms: None,
            max_batch_bytes: (1 << 20) + 12,
            write_chunk_bytes: MAX_IO_BYTES,
            recovery_read_bytes: 1 << 20,
            index_interval_bytes: 4096,
        }
    }
}

impl LogConfig {
    fn sanitize(&self) {
        assert!(
            self.segment_bytes > 0 && self.segment_bytes <= u64::from(u32::MAX),
            "segment_bytes {} must be in 1..=u32::MAX",
            self.segment_bytes
        );
        assert!(self.index_interval_bytes > 0, "index_interval_bytes is 0");
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("segment {segment}: {op}: {source}")]
    Io {
        segment: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("offset {offset} is not the first offset of a batch")]
    NotBatchBoundary { offset: u64 },
    #[error("cannot truncate to {offset}: below the floor {floor}")]
    BelowFloor { offset: u64, floor: u64 },
    #[error("prefix truncation to {offset} is beyond the committed offset {committed}")]
    BeyondCommitted { offset: u64, committed: u64 },
    #[error("a flush is in flight")]
    FlushInFlight,
    /// A compaction is rewriting the closed segments below `end`, or swapping them in (then
    /// every suffix truncation waits): retry once it is done ([`PartitionLog::finish_swap`]).
    #[error("cannot truncate to {offset}: a compaction of the segments below {end} is in flight")]
    CompactionInFlight { offset: u64, end: u64 },
    #[error("term {0} does not fit the batch's int32 leader epoch")]
    TermTooLarge(u64),
    #[error("segments {first} and {second} share base offset {base}")]
    DuplicateSegment {
        base: u64,
        first: String,
        second: String,
    },
    #[error("segment {segment}: read at {pos} returned unexpected data: {reason}")]
    ReadMismatch {
        segment: String,
        pos: u64,
        reason: String,
    },
    /// A write or fdatasync failed earlier: what is on disk is unknown, so the log refuses
    /// further writes until it is reopened (recovery re-establishes a known state).
    #[error("log failed: {0}")]
    Failed(Rc<str>),
    /// The disk is full (ENOSPC, EDQUOT): a flush could not write. Nothing is lost: the
    /// unwritten bytes stay in memory and the next flush retries them; appends are refused
    /// until one succeeds. The broker answers KAFKA_STORAGE_ERROR.
    #[error("disk full: {0}")]
    DiskFull(Rc<str>),
    /// The first batch a read would return is damaged on disk (header bounds, magic, CRC-32C,
    /// record count or offsets fail): nothing is returned (see [`corrupt`]). The broker
    /// answers CORRUPT_MESSAGE, as Kafka does for a `CorruptRecordException`.
    #[error("segment {segment}: corrupt batch at file position {pos} (offset {offset}): {detail}")]
    Corrupt {
        segment: String,
        pos: u64,
        offset: u64,
        detail: String,
    },
}

impl LogError {
    /// Whether this is [`LogError::DiskFull`] (retry the flush after [`DISK_FULL_RETRY`]).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::DiskFull(_))
    }

    /// Whether this is [`LogError::Corrupt`] (damaged data on disk, not an I/O failure).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, LogError::Corrupt { .. })
    }
}

fn io_err<'a>(segment: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        segment: segment.to_string(),
        op,
        source,
    }
}

/// What [`PartitionLog::append`] assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Base offset of the segment the batch went to.
    pub segment: u64,
}

/// Whole batches read from one segment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadBatches {
    /// Concatenated batches; empty when nothing is readable at the offset yet.
    pub bytes: Bytes,
    /// Base offset of the first batch (≤ the requested offset).
    pub base_offset: u64,
    /// Offset after the last batch returned.
    pub next_offset: u64,
}

/// A batch's place in the log, zero-width control batches included. A zero-width batch (a
/// Raft leader's no-op, [`batch::BatchHeader::is_zero_width`]) occupies no offset: it shares
/// its base offset with the batch after it, so an offset alone cannot address it (a read at
/// offset `X` starts at the batch *holding* `X` and passes over a zero-width batch at `X`).
/// A `BatchAt` names the first batch, in file order, that neither lies wholly before
/// `offset` nor is a zero-width batch at `offset` whose leader epoch is below `min_epoch`
/// ([`Self::skips`]). Zero-width batches at one offset are told apart by their leader epoch:
/// a Raft leader writes one no-op per term, and terms only grow along the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAt {
    pub offset: u64,
    pub min_epoch: i64,
}

impl BatchAt {
    /// The first batch at or holding `offset`, every zero-width batch at `offset` included.
    pub fn offset(offset: u64) -> Self {
        Self {
            offset,
            min_epoch: i64::MIN,
        }
    }

    /// The place right after batch `h`: a zero-width batch at the same offset of a later
    /// epoch, or what starts at its next offset.
    pub fn after(h: &batch::BatchHeader) -> Self {
        if h.is_zero_width() {
            Self {
                offset: h.base_offset as u64,
                min_epoch: i64::from(h.partition_leader_epoch) + 1,
            }
        } else {
            Self::offset(h.next_offset() as u64)
        }
    }

    /// Whether batch `h` comes before this place (a walk to it passes over `h`): it ends at
    /// or before `offset` (and is not a zero-width batch at `offset`), or it is a zero-width
    /// batch at `offset` of an epoch below `min_epoch`.
    pub fn skips(&self, h: &batch::BatchHeader) -> bool {
        let offset = self.offset as i64;
        if h.is_zero_width() && h.base_offset == offset {
            i64::from(h.partition_leader_epoch) < self.min_epoch
        } else {
            h.next_offset() <= offset
        }
    }
}

/// Whole batches in file order, zero-width ones included ([`PartitionLog::plan_read_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRun {
    /// Concatenated batches, from one segment; empty when nothing (more) is readable there.
    pub bytes: Bytes,
    /// Where the batch after the last one returned is (the argument itself when empty).
    pub next: BatchAt,
}

/// What a plan needs to reach one segment without borrowing the log: its file and index are
/// filled in lazily (closed segments open and load them on first use).
struct PlanSegment<D: SegmentDir> {
    dir: D,
    shared: Rc<SegmentShared<D::File>>,
    name: String,
    base_offset: u64,
    term: u64,
    next_offset: u64,
    /// Bytes of the segment written to the file: the plan reads no further.
    limit: u64,
    size: u64,
    max_batch_bytes: usize,
    read_bytes: usize,
    index_interval: u32,
    corruptions: Corruptions,
}

impl<D: SegmentDir> PlanSegment<D> {
    fn new(log: &PartitionLog<D>, seg: &Segment<D>) -> Self {
        Self {
            dir: log.dir.clone(),
            shared: seg.shared.clone(),
            name: seg.name.clone(),
            base_offset: seg.base_offset,
            term: seg.term,
            next_offset: seg.next_offset,
            limit: seg.appender.stable().0,
            size: seg.size(),
            max_batch_bytes: log.config.max_batch_bytes,
            read_bytes: log.config.recovery_read_bytes,
            index_interval: log.config.index_interval_bytes,
            corruptions: log.corruptions.clone(),
        }
    }

    async fn file(&self) -> Result<Rc<D::File>, LogError> {
        recovery::ensure_file(&self.dir, &self.shared, &self.name).await
    }

    /// Where a read of this segment starts (the index entry `lookup` picks) and its file.
    async fn start(
        &self,
        lookup: impl FnOnce(&SegmentIndex) -> Option<index::IndexEntry>,
    ) -> Result<(index::IndexEntry, Rc<D::File>), LogError> {
        let entry = self
            .with_index(lookup)
            .await?
            .ok_or_else(|| LogError::ReadMismatch {
                segment: self.name.clone(),
                pos: 0,
                reason: "empty index for a non-empty segment".into(),
            })?;
        Ok((entry, self.file().await?))
    }

    /// Runs `f` on the index, loading it first if needed (closed segments).
    async fn with_index<R>(&self, f: impl FnOnce(&SegmentIndex) -> R) -> Result<R, LogError> {
        if self.shared.index.borrow().is_none() {
            let file = self.file().await?;
            let (ix, damaged) = recovery::load_index(
                &self.dir,
                &*file,
                &self.name,
                self.base_offset,
                self.term,
                self.next_offset,
                self.size,
                self.read_bytes,
                self.max_batch_bytes,
                self.index_interval,
            )
            .await?;
            self.corruptions.note_all(&damaged);
            let mut slot = self.shared.index.borrow_mut();
            if slot.is_none() {
                *slot = Some(ix);
            }
        }
        let slot = self.shared.index.borrow();
        Ok(f(slot.as_ref().expect("index loaded")))
    }
}

/// A read resolved against the log; runs without borrowing it.
pub struct ReadPlan<D: SegmentDir> {
    seg: Option<PlanSegment<D>>,
    offset: u64,
    max_bytes: usize,
    /// Served from the batch cache: no I/O.
    ready: Option<ReadBatches>,
    /// Where to put what the file read returns.
    fill: Option<(BatchCache, u64)>,
}

impl<D: SegmentDir> ReadPlan<D> {
    fn empty(offset: u64) -> Self {
        Self {
            seg: None,
            offset,
            max_bytes: 0,
            ready: None,
            fill: None,
        }
    }

    /// Whether the read was served from the batch cache (no I/O to do).
    pub fn is_cached(&self) -> bool {
        self.ready.is_some()
    }

    pub async fn run(self) -> Result<ReadBatches, LogError> {
        if let Some(r) = self.ready {
            return Ok(r);
        }
        let fill = self.fill.clone();
        let r = self.read_file().await?;
        if let Some((cache, id)) = fill {
            cache.insert_read(id, &r.bytes);
        }
        Ok(r)
    }

    async fn read_file(self) -> Result<ReadBatches, LogError> {
        let empty = ReadBatches {
            bytes: Bytes::new(),
            base_offset: self.offset,
            next_offset: self.offset,
        };
        let Some(seg) = self.seg else {
            return Ok(empty);
        };
        if seg.limit == 0 {
            return Ok(empty);
        }
        let rel = (self.offset - seg.base_offset) as u32;
        let (entry, file) = seg.start(|ix| ix.lookup_offset(rel)).await?;
        let src = FileSource {
            file: &*file,
            name: &seg.name,
        };
        let found = scan::read_batches(
            &src,
            &seg.name,
            u64::from(entry.pos),
            seg.base_offset + u64::from(entry.rel_offset),
            seg.limit,
            self.offset,
            self.max_bytes,
            seg.max_batch_bytes,
            2 * seg.index_interval as usize,
        )
        .await
        .inspect_err(|e| seg.corruptions.note_error(e))?;
        if let Some(f) = &found {
            seg.corruptions.note_all(&f.damaged);
        }
        Ok(match found {
            Some(f) => ReadBatches {
                bytes: f.bytes,
                base_offset: f.base_offset,
                next_offset: f.next_offset,
            },
            None => empty,
        })
    }
}

/// A read by batch place resolved against the log ([`PartitionLog::plan_read_at`]); runs
/// without borrowing it.
pub struct BatchReadPlan<D: SegmentDir> {
    /// The segments that may hold batches at the place's offset, in offset order (a segment
    /// ending in zero-width batches at the base offset of the next one, then that one).
    segs: Vec<PlanSegment<D>>,
    at: BatchAt,
    max_bytes: usize,
}

impl<D: SegmentDir> BatchReadPlan<D> {
    pub async fn run(self) -> Result<BatchRun, LogError> {
        let empty = BatchRun {
            bytes: Bytes::new(),
            next: self.at,
        };
        for seg in &self.segs {
            if seg.limit == 0 {
                // Nothing of it written yet: neither is anything after it.
                return Ok(empty);
            }
            let rel = self.at.offset.saturating_sub(seg.base_offset) as u32;
            let (entry, file) = seg.start(|ix| ix.lookup_before(rel)).await?;
            let src = FileSource {
                file: &*file,
                name: &seg.name,
            };
            let found = scan::read_batches_at(
                &src,
                &seg.name,
                u64::from(entry.pos),
                seg.base_offset + u64::from(entry.rel_offset),
                seg.limit,
                self.at,
                self.max_bytes,
                seg.max_batch_bytes,
                2 * seg.index_interval as usize,
            )
            .await
            .inspect_err(|e| seg.corruptions.note_error(e))?;
            match found {
                Some(f) => {
                    seg.corruptions.note_all(&f.damaged);
                    return Ok(BatchRun {
                        bytes: f.bytes,
                        next: f.next,
                    });
                }
                // The rest of the segment is not written yet: what follows is not readable.
                None if seg.limit < seg.size => return Ok(empty),
                None => {}
            }
        }
        Ok(empty)
    }
}

/// A lookup by timestamp resolved against the log ([`PartitionLog::plan_find_timestamp`]).
pub struct TimestampPlan<D: SegmentDir> {
    /// Segments whose max timestamp reaches the target, in offset order. The first one
    /// holds the answer unless its matching batches lie before the log start.
    segs: Vec<PlanSegment<D>>,
    ts: i64,
    below: u64,
    from_offset: u64,
}

impl<D: SegmentDir> TimestampPlan<D> {
    /// The first batch (at or after the log start, below the bound) whose max timestamp is
    /// at least the target, as one batch; `None` when there is none.
    pub async fn run(self) -> Result<Option<ReadBatches>, LogError> {
        for seg in &self.segs {
            if let Some(found) = self.run_one(seg).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    async fn run_one(&self, seg: &PlanSegment<D>) -> Result<Option<ReadBatches>, LogError> {
        if seg.limit == 0 {
            return Ok(None);
        }
        let ts = self.ts;
        let from = self.from_offset.max(seg.base_offset);
        let from_rel = (from - seg.base_offset) as u32;
        let picked = seg
            .with_index(|ix| {
                let (te, bound) = ix.lookup_time(ts)?;
                let oe = ix.lookup_offset(from_rel)?;
                // The time index's bound holds only when no batch before the log start is
                // skipped; otherwise scan on to the end of what is written.
                Some(if te.rel_offset >= from_rel {
                    (te, bound)
                } else if oe.pos > te.pos {
                    (oe, None)
                } else {
                    (te, None)
                })
            })
            .await?;
        let Some((start, bound)) = picked else {
            return Ok(None);
        };
        let file = seg.file().await?;
        let src = FileSource {
            file: &*file,
            name: &seg.name,
        };
        let limit = bound.map_or(seg.limit, |b| u64::from(b).min(seg.limit));
        let found = scan::find_timestamp(
            &src,
            &seg.name,
            u64::from(start.pos),
            seg.base_offset + u64::from(start.rel_offset),
            limit,
            ts,
            from,
            self.below,
            seg.max_batch_bytes,
        )
        .await
        .inspect_err(|e| seg.corruptions.note_error(e))?;
        Ok(found.map(|f| ReadBatches {
            bytes: f.bytes,
            base_offset: f.base_offset,
            next_offset: f.next_offset,
        }))
    }
}

/// Why a [`DurableWaiter`] did not see its offset become durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    #[error("the log was truncated to {log_end}, below the awaited offset {awaited}")]
    Truncated { awaited: u64, log_end: u64 },
    #[error("awaited offset {awaited} is beyond the log end {log_end}")]
    BeyondEnd { awaited: u64, log_end: u64 },
    #[error("log failed: {0}")]
    Failed(Rc<str>),
}

#[derive(Default)]
struct WaiterSlot {
    result: Option<Result<(), DurableError>>,
    waker: Option<Waker>,
}

/// Completes when every offset below the awaited one is durable (see
/// [`PartitionLog::wait_durable`]).
pub struct DurableWaiter {
    slot: Rc<RefCell<WaiterSlot>>,
}

impl DurableWaiter {
    fn ready(r: Result<(), DurableError>) -> Self {
        Self {
            slot: Rc::new(RefCell::new(WaiterSlot {
                result: Some(r),
                waker: None,
            })),
        }
    }

    /// The result, if already known (for callers that poll without an executor).
    pub fn try_result(&self) -> Option<Result<(), DurableError>> {
        self.slot.borrow().result.clone()
    }
}

impl Future for DurableWaiter {
    type Output = Result<(), DurableError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot.borrow_mut();
        match slot.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn complete(slot: &Rc<RefCell<WaiterSlot>>, r: Result<(), DurableError>) {
    let waker = {
        let mut s = slot.borrow_mut();
        s.result = Some(r);
        s.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

struct SegmentWrites<D: SegmentDir> {
    base_offset: u64,
    name: String,
    /// `None`: the job creates the file.
    file: Option<Rc<D::File>>,
    pending: PendingWrites<D::Buf>,
}

/// The index files a flush job writes once its data is durable.
struct IndexWrite {
    base_offset: u64,
    term: u64,
    name: String,
    index: SegmentIndex,
    meta: IndexMeta,
}

/// Phase one of a flush: writes, taken from the log by [`PartitionLog::start_flush`].
pub struct FlushJob<D: SegmentDir> {
    dir: D,
    segments: Vec<SegmentWrites<D>>,
    /// Sync the directory even if no file is created (files adopted from a failed job).
    sync_dir: bool,
    index_writes: Vec<IndexWrite>,
    manifest: Option<Manifest>,
    /// Every offset below this is covered by the job.
    target: u64,
}

/// One segment's share of a failed job: `(segment base, file created by the job, writes)`.
type Returned<D> = (
    u64,
    Option<Rc<<D as SegmentDir>::File>>,
    Vec<Write<<D as SegmentDir>::Buf>>,
);

/// A [`FlushJob::write`] that failed. On a full disk it carries the job's buffers, so
/// [`PartitionLog::finish_write`] can put the bytes back for the next flush.
pub struct WriteFailed<D: SegmentDir> {
    pub error: LogError,
    returned: Vec<Returned<D>>,
    index_bases: Vec<u64>,
}

impl<D: SegmentDir> std::fmt::Debug for WriteFailed<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteFailed({:?})", self.error)
    }
}

impl<D: SegmentDir> std::fmt::Display for WriteFailed<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<D: SegmentDir> From<WriteFailed<D>> for LogError {
    fn from(w: WriteFailed<D>) -> Self {
        w.error
    }
}

struct SegmentWritten<F> {
    base_offset: u64,
    name: String,
    file: Rc<F>,
    created: bool,
    end: DirtyPos,
}

/// Phase two of a flush: the writes are done; `fdatasync` is next.
pub struct WrittenJob<D: SegmentDir> {
    dir: D,
    segments: Vec<SegmentWritten<D::File>>,
    synced_dir: bool,
    index_writes: Vec<IndexWrite>,
    manifest: Option<Manifest>,
    target: u64,
}

/// A finished flush, to hand to [`PartitionLog::finish_sync`].
pub struct SyncedJob {
    segments: Vec<(u64, StablePos)>,
    /// Segments whose index files were written (`true`) or failed (`false`).
    indexed: Vec<(u64, bool)>,
    target: u64,
}

impl<D: SegmentDir> FlushJob<D> {
    /// Creates missing segment files (and syncs the directory so they survive a crash), then
    /// writes, segment by segment in offset order. A full disk fails the job with
    /// [`LogError::DiskFull`] and hands its bytes back (see [`WriteFailed`]).
    pub async fn write(self) -> Result<WrittenJob<D>, WriteFailed<D>> {
        let FlushJob {
            dir,
            segments,
            sync_dir,
            index_writes,
            manifest,
            target,
        } = self;
        let index_bases: Vec<u64> = index_writes.iter().map(|w| w.base_offset).collect();
        let mut failure: Option<(String, &'static str, io::Error)> = None;
        let mut opened = Vec::with_capacity(segments.len());
        let mut created_any = false;
        for seg in segments {
            let file = match (seg.file, &failure) {
                (Some(f), _) => Some((f, false)),
                (None, None) => match dir.open(&seg.name).await {
                    Ok(f) => {
                        created_any = true;
                        Some((Rc::new(f), true))
                    }
                    Err(e) => {
                        failure = Some((seg.name.clone(), "create", e));
                        None
                    }
                },
                (None, Some(_)) => None,
            };
            opened.push((seg.base_offset, seg.name, file, seg.pending));
        }
        if failure.is_none() && (created_any || sync_dir) {
            if let Err(e) = dir.sync().await {
                failure = Some(("(directory)".into(), "sync directory", e));
            }
        }
        let mut done = Vec::with_capacity(opened.len());
        let mut returned = Vec::new();
        for (base_offset, name, file, pending) in opened {
            let mut bufs = Vec::with_capacity(pending.writes.len());
            let created = file.as_ref().is_some_and(|(_, c)| *c);
            for w in pending.writes {
                match (&file, &failure) {
                    (Some((f, _)), None) => {
                        let (buf, r) = f.write_at(w.pos, w.buf, w.len).await;
                        if let Err(e) = r {
                            failure = Some((name.clone(), "write", e));
                        }
                        bufs.push(Write {
                            pos: w.pos,
                            buf,
                            len: w.len,
                        });
                    }
                    _ => bufs.push(w),
                }
            }
            returned.push((
                base_offset,
                file.as_ref().filter(|(_, c)| *c).map(|(f, _)| f.clone()),
                bufs,
            ));
            if let Some((file, _)) = file {
                done.push(SegmentWritten {
                    base_offset,
                    name,
                    file,
                    created,
                    end: pending.end,
                });
            }
        }
        if let Some((segment, op, source)) = failure {
            let error = if is_disk_full(&source) {
                LogError::DiskFull(format!("segment {segment}: {op}: {source}").into())
            } else {
                returned.clear();
                LogError::Io {
                    segment,
                    op,
                    source,
                }
            };
            return Err(WriteFailed {
                error,
                returned,
                index_bases,
            });
        }
        Ok(WrittenJob {
            dir,
            segments: done,
            synced_dir: created_any || sync_dir,
            index_writes,
            manifest,
            target,
        })
    }
}

impl<D: SegmentDir> WrittenJob<D> {
    /// One `fdatasync` per segment, in offset order (so durable data is always a prefix).
    /// Then the index files of segments this job completed and the segment checkpoint; their
    /// failure is logged, not fatal (they are retried by the next job).
    pub async fn sync(self) -> Result<SyncedJob, LogError> {
        let mut segments = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            s.file
                .fdatasync()
                .await
                .map_err(io_err(&s.name, "fdatasync"))?;
            segments.push((s.base_offset, StablePos(s.end.0)));
        }
        let mut indexed = Vec::with_capacity(self.index_writes.len());
        let mut all_ok = true;
        let mut created = false;
        for w in &self.index_writes {
            let ok = match write_index_files(&self.dir, w).await {
                Ok(c) => {
                    created |= c;
                    true
                }
                Err(e) => {
                    tracing::warn!(segment = %w.name, error = %e, "writing index files (will retry)");
                    false
                }
            };
            all_ok &= ok;
            indexed.push((w.base_offset, ok));
        }
        if let (Some(m), true) = (&self.manifest, all_ok) {
            match manifest::write(&self.dir, m).await {
                Ok(c) => created |= c,
                Err(e) => {
                    tracing::warn!(error = %e, "writing the segment checkpoint (will retry)");
                    all_ok = false;
                }
            }
        }
        // New files' names must survive a crash too.
        if created {
            if let Err(e) = self.dir.sync().await {
                tracing::warn!(error = %e, "syncing the directory after index files (will retry)");
                all_ok = false;
            }
        }
        if !all_ok {
            // Keep one segment pending so a later job rewrites the files and the checkpoint.
            if let Some(last) = indexed.last_mut() {
                last.1 = false;
            }
        }
        Ok(SyncedJob {
            segments,
            indexed,
            target: self.target,
        })
    }
}

/// Writes a segment's index files; `true` if one was created.
async fn write_index_files<D: SegmentDir>(dir: &D, w: &IndexWrite) -> io::Result<bool> {
    let (ix_name, tx_name) = segment::index_names(w.base_offset, w.term);
    let (ix, tx) = index::encode_files(&w.index, &w.meta);
    let a = file::write_small_file(dir, &tx_name, &tx).await?;
    let b = file::write_small_file(dir, &ix_name, &ix).await?;
    Ok(a || b)
}

/// One partition's log. See the module documentation.
pub struct PartitionLog<D: SegmentDir> {
    dir: D,
    config: LogConfig,
    segments: BTreeMap<u64, Segment<D>>,
    log_start: u64,
    next_offset: u64,
    /// Every offset below is written to its file.
    stable_offset: u64,
    /// Every offset below is durable.
    committed_offset: u64,
    flush_in_flight: bool,
    /// Files were adopted from a failed job before their directory entries were synced.
    dir_sync_pending: bool,
    waiters: BTreeMap<u64, Vec<Rc<RefCell<WaiterSlot>>>>,
    failed: Option<Rc<str>>,
    /// Set by a flush that hit a full disk, cleared by the next successful one.
    disk_full: Option<Rc<str>>,
    /// The shard's batch cache and this log's id in it.
    cache: Option<(BatchCache, u64)>,
    /// Damaged batches found so far (by reads, index rebuilds, recovery).
    corruptions: Corruptions,
    /// Log compaction: the cleaner checkpoint and the job in flight ([`compact`]).
    compaction: compact::State,
}

impl<D: SegmentDir> PartitionLog<D> {
    /// First offset still in the log.
    pub fn log_start_offset(&self) -> u64 {
        self.log_start
    }

    /// The offset the next appended batch gets.
    pub fn log_end_offset(&self) -> u64 {
        self.next_offset
    }

    /// Every offset below this is durable (fdatasynced).
    pub fn committed_offset(&self) -> u64 {
        self.committed_offset
    }

    /// Every offset below this is written to the file (readable).
    pub fn stable_offset(&self) -> u64 {
        self.stable_offset
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn segments(&self) -> impl Iterator<Item = &Segment<D>> {
        self.segments.values()
    }

    /// Bytes appended but not yet handed to a write (for back-pressure).
    pub fn unwritten_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.appender.unwritten()).sum()
    }

    /// Total bytes of the segments (what `retention_bytes` limits).
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(Segment::size).sum()
    }

    /// Largest batch max timestamp in the log ([`index::NO_TIMESTAMP`] if none); includes
    /// batches not yet durable.
    pub fn max_timestamp(&self) -> i64 {
        self.segments
            .values()
            .map(|s| s.max_timestamp)
            .max()
            .unwrap_or(index::NO_TIMESTAMP)
    }

    /// Memory the log holds for its segments (indexes, appender buffers), roughly.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .segments
                .values()
                .map(Segment::memory_bytes)
                .sum::<usize>()
    }

    pub fn is_flushing(&self) -> bool {
        self.flush_in_flight
    }

    /// Serves reads from (and fills) the shard's batch cache from now on.
    pub fn attach_cache(&mut self, cache: &BatchCache) {
        if let Some((old, id)) = self.cache.take() {
            old.remove_log(id);
        }
        self.cache = Some((cache.clone(), cache.register()));
    }

    /// Drops cached batches overlapping `[from, to)`.
    fn uncache(&self, from: u64, to: u64) {
        if let Some((cache, id)) = &self.cache {
            cache.remove_range(*id, from, to);
        }
    }

    /// Why appends are refused, if the last flush found the disk full.
    pub fn disk_full(&self) -> Option<&str> {
        self.disk_full.as_deref()
    }

    /// Damaged batches found since the last call — by reads (also those run from plans),
    /// index rebuilds and recovery — each once: the owner logs and counts them.
    pub fn take_corruptions(&self) -> Vec<CorruptBatch> {
        self.corruptions.take()
    }

    /// Distinct damaged batches found since the log was opened.
    pub fn corrupt_batches(&self) -> u64 {
        self.corruptions.total()
    }

    fn check_ok(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(why) => Err(LogError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn check_offsets(&self) {
        assert!(
            self.committed_offset <= self.stable_offset
                && self.stable_offset <= self.next_offset
                && self.log_start <= self.next_offset,
            "log offsets out of order: start {} committed {} stable {} end {}",
            self.log_start,
            self.committed_offset,
            self.stable_offset,
            self.next_offset
        );
    }

    fn active(&mut self) -> &mut Segment<D> {
        self.segments
            .values_mut()
            .next_back()
            .expect("an active segment")
    }

    /// Seals the active segment and starts a new, empty one at the log end in `term`.
    fn roll(&mut self, term: u64) {
        if let Some(s) = self.segments.values_mut().next_back() {
            s.appender.seal();
            if let Some(ix) = s.shared.index.borrow_mut().as_mut() {
                ix.shrink_to_fit();
            }
            // Already durable (say, the recovered active segment when a new term rolls the
            // log at startup): give the descriptor back now rather than after its index
            // files are written, so a restart of many partitions holds one segment
            // descriptor per partition, not two. Reads reopen it on demand.
            if s.appender.committed().0 == s.size() && !self.flush_in_flight {
                s.shared.file.borrow_mut().take();
            }
        }
        let base = self.next_offset;
        let seg = Segment::new_empty(self.dir.clone(), self.config.write_chunk_bytes, base, term);
        self.segments.insert(base, seg);
    }

    /// Appends a validated batch as the next offsets, written in `term`: stamps base offset
    /// and leader epoch (outside the CRC), rolls the segment at the size limit or on a term
    /// change. In memory only; durable after a flush. Refused with [`LogError::DiskFull`]
    /// while the disk is full.
    pub fn append(&mut self, batch: &RecordBatch, term: u64) -> Result<Appended, LogError> {
        let (base, next, segment) = self.append_batch(batch, term)?;
        // A validated batch holds at least one record: `next > base`.
        Ok(Appended {
            base_offset: base,
            last_offset: next - 1,
            segment,
        })
    }

    /// Appends a zero-width control batch ([`RecordBatch::validate_zero_width`]; a Raft
    /// leader no-op) at the log end, where it occupies no offset: the next batch gets the
    /// same base offset. Returns that offset. It rolls a new segment unless the active one
    /// holds nothing but zero-width batches: a segment never ends in zero-width batches at
    /// the base offset of the next one, so removing whole segments below an offset (prefix
    /// truncation, retention) never removes a batch at that offset.
    pub fn append_zero_width(&mut self, batch: &RecordBatch, term: u64) -> Result<u64, LogError> {
        debug_assert!(batch.header().is_zero_width());
        let (base, next, _) = self.append_batch(batch, term)?;
        debug_assert_eq!(base, next);
        Ok(base)
    }

    /// [`Self::append`] for any stored batch: `(base offset, next offset, segment)`.
    fn append_batch(
        &mut self,
        batch: &RecordBatch,
        term: u64,
    ) -> Result<(u64, u64, u64), LogError> {
        self.check_ok()?;
        if let Some(why) = &self.disk_full {
            return Err(LogError::DiskFull(why.clone()));
        }
        let epoch = i32::try_from(term).map_err(|_| LogError::TermTooLarge(term))?;
        let len = batch.len() as u64;
        let base = self.next_offset;
        let next = base + batch.offset_count();
        let flush_in_flight = self.flush_in_flight;
        let segment_bytes = self.config.segment_bytes;
        let roll = match self.segments.values_mut().next_back() {
            None => true,
            Some(s) if s.is_empty() => {
                // An empty active segment is reused. If its file does not exist yet it simply
                // takes the new term's name; otherwise it keeps the name of the term it was
                // created in (batches carry their own epoch).
                if s.term != term && s.file().is_none() && !flush_in_flight {
                    s.term = term;
                    s.name = segment::segment_name(s.base_offset, term);
                }
                false
            }
            Some(s) => {
                s.term != term
                    || s.size() + len > segment_bytes
                    // Relative offsets in the index are 32-bit.
                    || next.saturating_sub(1) - s.base_offset > u64::from(u32::MAX)
                    // A zero-width batch opens a segment (or joins one holding only zero-width
                    // batches, always the active one): no segment ends in a batch at its
                    // successor's base offset, so deleting the segments below an offset never
                    // removes a batch at it.
                    || batch.header().is_zero_width()
            }
        };
        if roll {
            self.roll(term);
        }
        let interval = self.config.index_interval_bytes;
        let h = *batch.header();
        let seg = self.active();
        let pos = seg.appender.dirty().0;
        let header = batch.stamped_header(base as i64, epoch);
        seg.appender
            .append(&[&header, &batch.bytes()[BATCH_HEADER_LEN..]]);
        seg.shared
            .index
            .borrow_mut()
            .as_mut()
            .expect("the active segment's index is loaded")
            .note_batch(
                (base - seg.base_offset) as u32,
                pos as u32,
                seg.max_timestamp,
                interval,
            );
        if seg.is_empty() {
            seg.first_timestamp = h.max_timestamp;
        }
        seg.max_timestamp = seg.max_timestamp.max(h.max_timestamp);
        seg.last_batch = Some(LastBatch {
            base_offset: base,
            pos,
            len: len as u32,
            crc: h.crc,
        });
        seg.next_offset = next;
        let segment = seg.base_offset;
        self.next_offset = next;
        // A zero-width batch is never cached: it shares its base offset (the cache's key)
        // with the batch after it.
        if let (Some((cache, id)), true) = (&self.cache, next > base) {
            cache.insert(
                *id,
                base,
                next - 1,
                header,
                batch.bytes().slice(BATCH_HEADER_LEN..),
            );
        }
        self.check_offsets();
        Ok((base, next, segment))
    }

    /// A future that completes when every offset below `end_offset` is durable.
    pub fn wait_durable(&mut self, end_offset: u64) -> DurableWaiter {
        if let Some(why) = &self.failed {
            return DurableWaiter::ready(Err(DurableError::Failed(why.clone())));
        }
        if end_offset <= self.committed_offset {
            return DurableWaiter::ready(Ok(()));
        }
        if end_offset > self.next_offset {
            return DurableWaiter::ready(Err(DurableError::BeyondEnd {
                awaited: end_offset,
                log_end: self.next_offset,
            }));
        }
        let slot = Rc::new(RefCell::new(WaiterSlot::default()));
        self.waiters
            .entry(end_offset)
            .or_default()
            .push(slot.clone());
        DurableWaiter { slot }
    }

    /// Number of parked durability waiters.
    pub fn waiter_count(&self) -> usize {
        self.waiters.values().map(Vec::len).sum()
    }

    /// Takes every unwritten byte into a flush job — plus the index files of sealed segments
    /// and the segment checkpoint once the job has made those segments durable, and the file
    /// of an active segment rolled by age — `None` when there is nothing to do. At most one
    /// job is in flight.
    pub fn start_flush(&mut self) -> Result<Option<FlushJob<D>>, LogError> {
        self.check_ok()?;
        if self.flush_in_flight {
            return Err(LogError::FlushInFlight);
        }
        let mut segments = Vec::new();
        let n = self.segments.len();
        for (i, seg) in self.segments.values_mut().enumerate() {
            let pending = seg.appender.take_writes();
            // An empty active segment after a roll gets its file now, so the files on disk
            // always carry the log end once older segments go.
            let create_empty = pending.is_none() && i + 1 == n && i > 0 && !seg.on_disk;
            if pending.is_some() || create_empty {
                segments.push(SegmentWrites {
                    base_offset: seg.base_offset,
                    name: seg.name.clone(),
                    file: seg.file(),
                    pending: pending.unwrap_or(PendingWrites {
                        writes: Vec::new(),
                        end: seg.appender.dirty(),
                    }),
                });
            }
        }
        let mut index_writes = Vec::new();
        for seg in self.segments.values_mut() {
            let loaded = seg.shared.index.borrow().is_some();
            if seg.is_sealed() && seg.index_files == IndexFiles::Missing && loaded {
                let index = seg.shared.index.borrow().clone().expect("loaded");
                index_writes.push(IndexWrite {
                    base_offset: seg.base_offset,
                    term: seg.term,
                    name: seg.name.clone(),
                    index,
                    meta: seg.index_meta(true),
                });
                seg.index_files = IndexFiles::Writing;
            }
        }
        if segments.is_empty() && index_writes.is_empty() && !self.dir_sync_pending {
            // Nothing is waiting for space (a truncation dropped it): appends may resume.
            self.disk_full = None;
            return Ok(None);
        }
        let manifest = (!index_writes.is_empty()).then(|| self.manifest(self.next_offset));
        self.compaction.note_flush(manifest.is_some());
        self.flush_in_flight = true;
        let sync_dir = std::mem::take(&mut self.dir_sync_pending);
        Ok(Some(FlushJob {
            dir: self.dir.clone(),
            segments,
            sync_dir,
            index_writes,
            manifest,
            target: self.next_offset,
        }))
    }

    /// The checkpoint describing the closed segments whose index files are (being) written.
    fn manifest(&self, durable_end: u64) -> Manifest {
        Manifest {
            durable_end,
            segments: self
                .segments
                .values()
                .filter(|s| s.is_sealed() && s.index_files != IndexFiles::Missing)
                // Segments a compaction is swapping on disk: neither version is certain.
                .filter(|s| !self.compaction.hides(s.base_offset))
                .map(|s| ManifestSegment {
                    base_offset: s.base_offset,
                    term: s.term,
                    size: s.size(),
                    next_offset: s.next_offset,
                    max_timestamp: s.max_timestamp,
                    first_timestamp: s.first_timestamp,
                })
                .collect(),
            active: None,
        }
    }

    /// Records phase one's outcome: the written bytes become readable. On a full disk the
    /// job's bytes go back into memory for the next flush and appends are refused until then
    /// (returns [`LogError::DiskFull`]); any other failure fails the log.
    pub fn finish_write(
        &mut self,
        r: Result<WrittenJob<D>, WriteFailed<D>>,
    ) -> Result<WrittenJob<D>, LogError> {
        assert!(self.flush_in_flight, "finish_write without a flush");
        let job = match r {
            Ok(job) => job,
            Err(failed) => {
                self.flush_in_flight = false;
                for base in &failed.index_bases {
                    if let Some(seg) = self.segments.get_mut(base) {
                        seg.index_files = IndexFiles::Missing;
                    }
                }
                let LogError::DiskFull(why) = &failed.error else {
                    self.fail(&failed.error);
                    return Err(failed.error);
                };
                let why = why.clone();
                tracing::warn!(error = %why, unwritten = self.unwritten_bytes(),
                    "disk full: keeping the unwritten bytes, refusing appends until a flush succeeds");
                for (base, created, writes) in failed.returned {
                    let seg = self
                        .segments
                        .get_mut(&base)
                        .expect("segments with unwritten bytes stay while a flush is in flight");
                    if let Some(file) = created {
                        seg.set_file(file);
                        self.dir_sync_pending = true;
                    }
                    seg.appender.requeue(writes);
                }
                self.disk_full = Some(why);
                return Err(failed.error);
            }
        };
        for s in &job.segments {
            let seg = self
                .segments
                .get_mut(&s.base_offset)
                .expect("segments with unwritten bytes stay while a flush is in flight");
            if s.created {
                seg.set_file(s.file.clone());
            }
            seg.appender.mark_stable(s.end);
        }
        if job.synced_dir {
            for seg in self.segments.values_mut() {
                if seg.file().is_some() {
                    seg.on_disk = true;
                }
            }
        }
        if self.disk_full.take().is_some() {
            tracing::info!("disk space is back: the flush wrote everything it held");
        }
        self.stable_offset = self.stable_offset.max(job.target);
        self.check_offsets();
        Ok(job)
    }

    /// Records phase two's outcome: the offsets become durable and their waiters complete.
    /// Returns the committed offset.
    pub fn finish_sync(&mut self, r: Result<SyncedJob, LogError>) -> Result<u64, LogError> {
        assert!(self.flush_in_flight, "finish_sync without a flush");
        self.flush_in_flight = false;
        let job = match r {
            Ok(job) => job,
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
        for (base, end) in job.segments {
            let seg = self
                .segments
                .get_mut(&base)
                .expect("segments with unwritten bytes stay while a flush is in flight");
            seg.appender.mark_committed(end);
            seg.appender.release_if_sealed();
        }
        for (base, ok) in job.indexed {
            if let Some(seg) = self.segments.get_mut(&base) {
                seg.index_files = if ok {
                    IndexFiles::Complete
                } else {
                    IndexFiles::Missing
                };
                if ok && seg.is_sealed() {
                    // Complete and durable: give the descriptor back (glommio closes it on
                    // its next I/O cycle; a read in flight keeps its handle). Reads reopen it.
                    seg.shared.file.borrow_mut().take();
                }
            }
        }
        self.committed_offset = self.committed_offset.max(job.target);
        self.check_offsets();
        let rest = self.waiters.split_off(&(self.committed_offset + 1));
        for slot in std::mem::replace(&mut self.waiters, rest)
            .into_values()
            .flatten()
        {
            complete(&slot, Ok(()));
        }
        Ok(self.committed_offset)
    }

    /// Writes and fdatasyncs everything appended so far (both phases inline). Returns the
    /// committed offset.
    pub async fn flush(&mut self) -> Result<u64, LogError> {
        let Some(job) = self.start_flush()? else {
            return Ok(self.committed_offset);
        };
        let written = job.write().await;
        let written = self.finish_write(written)?;
        let synced = written.sync().await;
        self.finish_sync(synced)
    }

    fn fail(&mut self, e: &LogError) {
        let why: Rc<str> = e.to_string().into();
        tracing::error!(error = %why, "partition log failed; reopen to recover");
        self.flush_in_flight = false;
        self.failed = Some(why.clone());
        for slot in std::mem::take(&mut self.waiters).into_values().flatten() {
            complete(&slot, Err(DurableError::Failed(why.clone())));
        }
    }

    /// Resolves a read of whole batches starting with the one containing `offset`, from one
    /// segment, up to `max_bytes` — but always at least the first batch, even if larger
    /// (Kafka's rule, so a consumer can make progress). Only bytes written to the file are
    /// served; an offset at the end, or not yet written, gives an empty result.
    pub fn plan_read(&self, offset: u64, max_bytes: usize) -> Result<ReadPlan<D>, LogError> {
        if offset < self.log_start || offset > self.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.next_offset,
            });
        }
        let Some((_, seg)) = self.segments.range(..=offset).next_back() else {
            return Ok(ReadPlan::empty(offset));
        };
        if offset >= seg.next_offset {
            return Ok(ReadPlan::empty(offset));
        }
        let mut fill = None;
        if let Some((cache, id)) = &self.cache {
            let limit = self.stable_offset.min(seg.next_offset);
            if let Some((bytes, base_offset, next_offset)) =
                cache.read(*id, offset, limit, max_bytes)
            {
                let mut plan = ReadPlan::empty(offset);
                plan.ready = Some(ReadBatches {
                    bytes,
                    base_offset,
                    next_offset,
                });
                return Ok(plan);
            }
            cache.miss();
            fill = Some((cache.clone(), *id));
        }
        Ok(ReadPlan {
            seg: Some(PlanSegment::new(self, seg)),
            offset,
            max_bytes,
            ready: None,
            fill,
        })
    }

    /// [`Self::plan_read`] and [`ReadPlan::run`] in one call.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadBatches, LogError> {
        self.plan_read(offset, max_bytes)?.run().await
    }

    /// Resolves a read of whole batches in file order — zero-width control batches included,
    /// which [`Self::plan_read`] never returns — from the batch at `at` ([`BatchAt`]), from one
    /// segment, up to `max_bytes` but at least one batch; written bytes only. Continue at the
    /// result's [`BatchRun::next`]. Never served from (nor put in) the batch cache. For the Raft
    /// layer, which must see every batch (its index rebuild, loads for lagging followers);
    /// Kafka fetches use [`Self::plan_read`].
    pub fn plan_read_at(
        &self,
        at: BatchAt,
        max_bytes: usize,
    ) -> Result<BatchReadPlan<D>, LogError> {
        if at.offset < self.log_start || at.offset > self.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset: at.offset,
                start: self.log_start,
                end: self.next_offset,
            });
        }
        // A segment never ends in zero-width batches at its successor's base offset (they
        // open a segment): one ending at `at.offset` holds nothing at that place unless it
        // starts there too, and is not opened (reads keep a closed segment's descriptor).
        let mut segs: Vec<PlanSegment<D>> = self
            .segments
            .range(..=at.offset)
            .rev()
            .take_while(|(_, s)| s.next_offset >= at.offset)
            .filter(|(_, s)| s.next_offset > at.offset || s.base_offset == at.offset)
            .map(|(_, s)| PlanSegment::new(self, s))
            .collect();
        segs.reverse();
        Ok(BatchReadPlan {
            segs,
            at,
            max_bytes,
        })
    }

    /// [`Self::plan_read_at`] and [`BatchReadPlan::run`] in one call.
    pub async fn read_at(&self, at: BatchAt, max_bytes: usize) -> Result<BatchRun, LogError> {
        self.plan_read_at(at, max_bytes)?.run().await
    }

    /// Resolves a lookup of the first batch whose max timestamp is at least `ts`, at or after
    /// the log start and starting below offset `below` (e.g. the high watermark): Kafka's
    /// ListOffsets by time. Segments are picked by their max timestamp (no I/O), then the
    /// segment's time index bounds the scan to about one index interval.
    pub fn plan_find_timestamp(&self, ts: i64, below: u64) -> TimestampPlan<D> {
        let segs = self
            .segments
            .values()
            .filter(|s| s.next_offset > self.log_start && s.base_offset < below)
            .filter(|s| s.max_timestamp >= ts)
            .map(|s| PlanSegment::new(self, s))
            .collect();
        TimestampPlan {
            segs,
            ts,
            below,
            from_offset: self.log_start,
        }
    }

    /// [`Self::plan_find_timestamp`] and [`TimestampPlan::run`] in one call.
    pub async fn find_timestamp(
        &self,
        ts: i64,
        below: u64,
    ) -> Result<Option<ReadBatches>, LogError> {
        self.plan_find_timestamp(ts, below).run().await
    }

    /// Removes every batch from `offset` on (a batch boundary, `>= floor`), durably: the
    /// index files that could describe removed bytes and the segment checkpoint are removed,
    /// the cut segment is truncated and fdatasynced, later segments are deleted and the
    /// directory synced before this returns. Waiters beyond the new end fail.
    pub async fn truncate_suffix(&mut self, offset: u64, floor: u64) -> Result<(), LogError> {
        self.check_ok()?;
        if self.flush_in_flight {
            return Err(LogError::FlushInFlight);
        }
        if offset < floor {
            return Err(LogError::BelowFloor { offset, floor });
        }
        if let Some(end) = self.compaction.refuses_truncation(offset) {
            return Err(LogError::CompactionInFlight { offset, end });
        }
        if offset < self.log_start || offset > self.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.next_offset,
            });
        }
        if offset == self.next_offset {
            return Ok(());
        }
        // The segment that keeps the cut: the one holding `offset`, or the previous one when
        // `offset` is a segment's base (the first segment is kept, emptied, so the log end
        // survives a restart).
        let first_base = *self.segments.keys().next().expect("non-empty log");
        let (&holder, _) = self
            .segments
            .range(..=offset)
            .next_back()
            .expect("offset >= log start");
        let keep = if holder == offset && holder != first_base {
            *self
                .segments
                .range(..holder)
                .next_back()
                .expect("a previous segment")
                .0
        } else {
            holder
        };
        let r = self.cut(keep, offset).await;
        if let Err(e) = &r {
            if !matches!(e, LogError::NotBatchBoundary { .. }) {
                self.fail(e);
            }
        }
        r?;
        self.after_cut(offset);
        Ok(())
    }

    /// Removes every batch from the one at `at` on ([`BatchAt`]: zero-width control batches
    /// included — a Raft no-op at the offset is removed or kept by its epoch), durably, as
    /// [`Self::truncate_suffix`] does. `at.offset` must be a batch boundary `>= floor`; unlike
    /// [`Self::truncate_suffix`], at the log end it removes the zero-width batches there that
    /// `at` does not skip.
    pub async fn truncate_suffix_at(&mut self, at: BatchAt, floor: u64) -> Result<(), LogError> {
        let offset = at.offset;
        self.check_ok()?;
        if self.flush_in_flight {
            return Err(LogError::FlushInFlight);
        }
        if offset < floor {
            return Err(LogError::BelowFloor { offset, floor });
        }
        if let Some(end) = self.compaction.refuses_truncation(offset) {
            return Err(LogError::CompactionInFlight { offset, end });
        }
        if offset < self.log_start || offset > self.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.next_offset,
            });
        }
        // The segments that may hold batches at `offset`, in order; the cut is in the first
        // one holding a batch not before `at`.
        let mut cands: Vec<u64> = self
            .segments
            .range(..=offset)
            .rev()
            .take_while(|(_, s)| s.next_offset >= offset)
            .map(|(&b, _)| b)
            .collect();
        cands.reverse();
        let mut found = None;
        for base in cands {
            let r = self.locate_at(base, at).await;
            match r {
                Ok(Some(loc)) => {
                    found = Some((base, loc));
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    if !matches!(e, LogError::NotBatchBoundary { .. }) {
                        self.fail(&e);
                    }
                    return Err(e);
                }
            }
        }
        let Some((base, loc)) = found else {
            // Every batch lies before `at`: nothing to remove.
            return Ok(());
        };
        // The first segment is kept, emptied, so the log end survives a restart; any other
        // segment cut at its start goes, and the previous one keeps the end.
        let first_base = *self.segments.keys().next().expect("non-empty log");
        let (keep, loc) = if loc.pos == 0 && base != first_base {
            let (&prev, seg) = self
                .segments
                .range(..base)
                .next_back()
                .expect("a previous segment");
            (
                prev,
                Located {
                    pos: seg.size(),
                    max_ts_before: seg.max_timestamp,
                    last_before: seg.last_batch,
                },
            )
        } else {
            (base, loc)
        };
        let r = self.cut_at(keep, offset, loc).await;
        if let Err(e) = &r {
            self.fail(e);
        }
        r?;
        self.after_cut(offset);
        Ok(())
    }

    /// The log's own bookkeeping after a suffix was cut at `offset`.
    fn after_cut(&mut self, offset: u64) {
        self.next_offset = offset;
        self.stable_offset = self.stable_offset.min(offset);
        self.committed_offset = self.committed_offset.min(offset);
        if self.unwritten_bytes() == 0 {
            self.disk_full = None;
        }
        self.uncache(offset, u64::MAX);
        self.check_offsets();
        let gone = self.waiters.split_off(&(offset + 1));
        for (awaited, slots) in gone {
            for slot in slots {
                complete(
                    &slot,
                    Err(DurableError::Truncated {
                        awaited,
                        log_end: offset,
                    }),
                );
            }
        }
    }

    /// Finds the batch at `at` in segment `base` (walking from the index entry below its
    /// offset, through the file and the appender's memory): `None` when every batch of the
    /// segment lies before it; [`LogError::NotBatchBoundary`] when a batch holds `at.offset`
    /// past its base. The kept segment needs its file and index: loaded first.
    async fn locate_at(&self, base: u64, at: BatchAt) -> Result<Option<Located>, LogError> {
        {
            let seg = &self.segments[&base];
            if seg.on_disk || seg.file().is_some() {
                let plan = PlanSegment::new(self, seg);
                plan.file().await?;
                plan.with_index(|_| ()).await?;
            }
        }
        let seg = &self.segments[&base];
        if seg.size() == 0 {
            return Ok(None);
        }
        let rel = at.offset.saturating_sub(seg.base_offset) as u32;
        let entry = seg
            .shared
            .index
            .borrow()
            .as_ref()
            .expect("index loaded")
            .lookup_before(rel)
            .ok_or_else(|| LogError::ReadMismatch {
                segment: seg.name.clone(),
                pos: 0,
                reason: "empty index for a non-empty segment".into(),
            })?;
        let file = seg.file();
        let src = SegmentSource {
            file: file.as_deref(),
            appender: &seg.appender,
            name: &seg.name,
        };
        let (w, h) = scan::walk_to_batch(
            &src,
            &seg.name,
            u64::from(entry.pos),
            seg.base_offset + u64::from(entry.rel_offset),
            seg.size(),
            at,
            self.config.max_batch_bytes,
        )
        .await?;
        match h {
            None => Ok(None),
            Some(h) if (h.base_offset as u64) < at.offset => {
                Err(LogError::NotBatchBoundary { offset: at.offset })
            }
            Some(_) => Ok(Some(Located {
                pos: w.pos,
                max_ts_before: entry.max_ts_before.max(w.max_ts),
                last_before: w.last,
            })),
        }
    }

    /// Finds where batch `offset` starts in segment `base` (walking from the index entry
    /// below it, through the file and the appender's memory).
    async fn locate(&self, base: u64, offset: u64) -> Result<Located, LogError> {
        let seg = &self.segments[&base];
        if offset == seg.next_offset {
            return Ok(Located {
                pos: seg.size(),
                max_ts_before: seg.max_timestamp,
                last_before: seg.last_batch,
            });
        }
        if offset == seg.base_offset {
            return Ok(Located {
                pos: 0,
                max_ts_before: index::NO_TIMESTAMP,
                last_before: None,
            });
        }
        let rel = (offset - seg.base_offset) as u32;
        let entry = seg
            .shared
            .index
            .borrow()
            .as_ref()
            .expect("index loaded")
            .lookup_offset(rel)
            .expect("a non-empty segment has an index entry");
        let file = seg.file();
        let src = SegmentSource {
            file: file.as_deref(),
            appender: &seg.appender,
            name: &seg.name,
        };
        let walked = scan::walk_to(
            &src,
            &seg.name,
            u64::from(entry.pos),
            seg.base_offset + u64::from(entry.rel_offset),
            seg.size(),
            offset,
            self.config.max_batch_bytes,
        )
        .await?;
        let w = walked.map_err(|()| LogError::NotBatchBoundary { offset })?;
        Ok(Located {
            pos: w.pos,
            max_ts_before: entry.max_ts_before.max(w.max_ts),
            last_before: w.last,
        })
    }

    /// Cuts segment `keep` at batch `offset` and deletes every later segment.
    async fn cut(&mut self, keep: u64, offset: u64) -> Result<(), LogError> {
        // 0. The kept segment becomes the active one: it needs its file and index.
        {
            let seg = &self.segments[&keep];
            if seg.on_disk || seg.file().is_some() {
                let plan = PlanSegment::new(self, seg);
                plan.file().await?;
                plan.with_index(|_| ()).await?;
            }
        }
        let loc = self.locate(keep, offset).await?;
        self.cut_at(keep, offset, loc).await
    }

    /// Cuts segment `keep` (file and index loaded) at `loc`, where the log is to end at
    /// `offset`, and deletes every later segment.
    async fn cut_at(&mut self, keep: u64, offset: u64, loc: Located) -> Result<(), LogError> {
        let Located {
            pos,
            max_ts_before,
            last_before,
        } = loc;
        // 1. Forget what could describe removed bytes: index files of the kept and later
        //    segments, and the checkpoint (when a closed segment is cut or deleted).
        let later: Vec<u64> = self.segments.range(keep + 1..).map(|(&b, _)| b).collect();
        let mut removed = false;
        for (&base, seg) in self.segments.range(keep..) {
            let (ix, tx) = segment::index_names(base, seg.term);
            removed |= remove_if_exists(&self.dir, &ix).await?;
            removed |= remove_if_exists(&self.dir, &tx).await?;
        }
        // (The checkpoint may also hold the active segment's prefix: always retire it.)
        removed |= remove_if_exists(&self.dir, manifest::FILE).await?;
        if removed {
            self.dir
                .sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))?;
        }
        // 2. Cut the kept segment, durably. A crash after this but before step 3 leaves later
        //    segments that no longer follow on; recovery deletes them as a gap.
        let seg = self.segments.get_mut(&keep).expect("kept segment");
        seg.index_files = IndexFiles::Missing;
        if !seg.appender.truncate_in_memory(pos) {
            let file = seg.file().expect("bytes below the memory tail are on file");
            let tail_start = align_down(pos);
            let tail = file
                .read_at(tail_start, (pos - tail_start) as usize)
                .await
                .map_err(io_err(&seg.name, "read tail page"))?;
            if tail.len() as u64 != pos - tail_start {
                return Err(LogError::ReadMismatch {
                    segment: seg.name.clone(),
                    pos: tail_start,
                    reason: format!("tail page: {} bytes", tail.len()),
                });
            }
            seg.appender.reset(pos, &tail);
        }
        if let Some(ix) = seg.shared.index.borrow_mut().as_mut() {
            // By position: entries of zero-width batches kept at `offset` stay.
            ix.truncate_pos(pos as u32);
        }
        seg.next_offset = offset;
        seg.max_timestamp = if pos == 0 {
            index::NO_TIMESTAMP
        } else {
            max_ts_before
        };
        if offset == seg.base_offset {
            seg.first_timestamp = index::NO_TIMESTAMP;
            seg.first_seen_ms = None;
        }
        seg.last_batch = last_before;
        if let Some(file) = seg.file() {
            let size = file.size().await.map_err(io_err(&seg.name, "size"))?;
            if size > pos {
                file.truncate(pos)
                    .await
                    .map_err(io_err(&seg.name, "truncate"))?;
                file.fdatasync()
                    .await
                    .map_err(io_err(&seg.name, "fdatasync"))?;
            }
        }
        // 3. Delete later segments, last first, so any partial outcome is still a prefix.
        let mut removed = false;
        for base in later.into_iter().rev() {
            let seg = self.segments.remove(&base).expect("listed segment");
            removed |= self.drop_segment(seg).await?;
        }
        if removed {
            self.dir
                .sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))?;
        }
        Ok(())
    }

    /// Removes a segment's file if it has one; `true` if a file was removed.
    async fn drop_segment(&self, seg: Segment<D>) -> Result<bool, LogError> {
        let file = seg.shared.file.borrow_mut().take();
        if !seg.on_disk && file.is_none() {
            return Ok(false);
        }
        remove_if_exists(&self.dir, &seg.name).await?;
        // A read in flight may still hold the file; then it is closed when that read drops it.
        if let Some(file) = file.and_then(|f| Rc::try_unwrap(f).ok()) {
            file.close().await.map_err(io_err(&seg.name, "close"))?;
        }
        Ok(true)
    }

    /// Moves the log start offset forward to `offset` (≤ the committed offset) without any
    /// I/O, so a caller may do it while appends go on; the files below it are reclaimed by
    /// [`Self::detach_below_start`] (or [`Self::truncate_prefix`]). Persisting the new start
    /// is the caller's (see [`checkpoint`]). Returns whether the start moved.
    pub fn advance_log_start(&mut self, offset: u64) -> Result<bool, LogError> {
        self.check_ok()?;
        if offset <= self.log_start {
            return Ok(false);
        }
        if offset > self.committed_offset {
            return Err(LogError::BeyondCommitted {
                offset,
                committed: self.committed_offset,
            });
        }
        self.log_start = offset;
        self.uncache(0, offset);
        self.check_offsets();
        Ok(true)
    }

    /// Moves the log start offset to `offset` (≤ the committed offset) and deletes every
    /// segment wholly below it, except the active one and any whose successor has no file yet
    /// (the surviving files must always carry the log end across a restart).
    ///
    /// The start offset itself is not persisted: after a restart the log starts at its first
    /// surviving batch, and the owner re-applies the start offset it keeps (e.g. in the
    /// metadata store). Holds the log across the deletions: a caller that keeps appending
    /// meanwhile uses [`Self::advance_log_start`] + [`Self::detach_below_start`] instead.
    pub async fn truncate_prefix(&mut self, offset: u64) -> Result<(), LogError> {
        self.check_ok()?;
        if offset > self.log_start && offset > self.committed_offset {
            return Err(LogError::BeyondCommitted {
                offset,
                committed: self.committed_offset,
            });
        }
        self.advance_log_start(offset)?;
        if let Some(job) = self.detach_below_start() {
            if let Err(e) = job.run().await {
                self.fail(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Flushes, then writes the segment checkpoint with the active segment's index (so the
    /// next [`Self::open`] reads neither closed segments nor the active one's batches),
    /// then closes every file. Use this rather than dropping the log (glommio warns about
    /// `DmaFile`s dropped while open).
    pub async fn close(mut self) -> Result<(), LogError> {
        if let Some((cache, id)) = self.cache.take() {
            cache.remove_log(id);
        }
        let mut result = Ok(());
        if self.failed.is_none() && !self.flush_in_flight {
            // Two rounds: the second writes index files the first one's data completed.
            for _ in 0..2 {
                if let Err(e) = self.flush().await {
                    result = Err(e);
                    break;
                }
            }
            let clean = result.is_ok()
                && self
                    .segments
                    .values()
                    .all(|s| !s.is_sealed() || s.index_files == IndexFiles::Complete);
            if clean {
                result = self.write_shutdown_checkpoint().await;
            }
        }
        for (_, seg) in std::mem::take(&mut self.segments) {
            let file = seg.shared.file.borrow_mut().take();
            if let Some(file) = file.and_then(|f| Rc::try_unwrap(f).ok()) {
                let closed = file.close().await.map_err(io_err(&seg.name, "close"));
                if result.is_ok() {
                    result = closed;
                }
            }
        }
        result
    }

    /// The segment checkpoint with the active segment's sparse index as a prefix (recovery
    /// then scans only what follows). Everything is durable (called after a flush).
    async fn write_shutdown_checkpoint(&mut self) -> Result<(), LogError> {
        let mut m = self.manifest(self.committed_offset);
        if let Some(seg) = self.segments.values().next_back() {
            if !seg.is_empty() && seg.on_disk && !seg.is_sealed() {
                m.active = Some(manifest::ActivePrefix {
                    term: seg.term,
                    index: seg.shared.index.borrow().clone().expect("active index"),
                    meta: seg.index_meta(false),
                });
            }
        }
        let created = manifest::write(&self.dir, &m)
            .await
            .map_err(io_err(manifest::FILE, "write"))?;
        if created {
            self.dir
                .sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))?;
        }
        Ok(())
    }
}

/// Where a suffix truncation cuts a segment: the position, the largest max timestamp of the
/// batches before it and the last of them.
struct Located {
    pos: u64,
    max_ts_before: i64,
    last_before: Option<LastBatch>,
}

/// Removes `name`; `false` if it did not exist.
async fn remove_if_exists<D: SegmentDir>(dir: &D, name: &str) -> Result<bool, LogError> {
    match dir.remove(name).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(name, "remove")(e)),
    }
}

#[cfg(test)]
mod tests;
