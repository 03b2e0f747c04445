//! The partition log: one partition's record batches in a directory of segment files. It is
//! also the partition's Raft log (one Raft entry = one batch).
//!
//! A [`PartitionLog`] lives on the shard that owns the partition and is never shared across
//! threads. Its I/O goes through the [`file::SegmentDir`] seam: [`file::DmaDir`] (glommio,
//! O_DIRECT) in production, [`faulty::FaultyDir`] (in memory, crash injection) in tests.
//!
//! * Append ([`PartitionLog::append`]) is synchronous and in memory: it assigns offsets, stamps
//!   base offset and leader epoch (= term) into the header, copies the batch into the active
//!   segment's appender and indexes it. Segments roll at a size limit and on a term change.
//! * Flush is group commit, in two phases so appends continue while the disk works:
//!   [`PartitionLog::start_flush`] takes every unwritten byte of every segment into a
//!   [`FlushJob`]; the job writes ([`FlushJob::write`]), the log records the data as stable
//!   ([`PartitionLog::finish_write`]), the job runs one `fdatasync` per segment
//!   ([`WrittenJob::sync`]), and [`PartitionLog::finish_sync`] advances the committed offset
//!   and completes every [`DurableWaiter`] it covers. One flusher task per shard drives jobs,
//!   one at a time; [`PartitionLog::flush`] does all of it inline.
//! * Reads ([`PartitionLog::read`], or [`PartitionLog::plan_read`] + [`ReadPlan::run`] to
//!   avoid holding the log across the I/O) return whole batches as one `Bytes`, from one
//!   segment, up to what has been written to the file.
//! * Truncation: [`PartitionLog::truncate_suffix`] (Raft conflict; durable on return) and
//!   [`PartitionLog::truncate_prefix`] (log start offset; whole segments deleted).
//! * Recovery: [`PartitionLog::open`] scans every segment, verifies each batch's CRC-32C and
//!   offsets, cuts a torn or corrupt tail and rebuilds the index ([`recovery`]).

pub mod appender;
pub mod batch;
pub mod checkpoint;
pub mod faulty;
pub mod file;
pub mod recovery;
pub mod segment;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;

use self::appender::{DirtyPos, PendingWrites, StablePos};
use self::batch::{BatchHeader, RecordBatch, BATCH_HEADER_LEN};
use self::file::{align_down, SegmentDir, SegmentFile, MAX_IO_BYTES};
use self::segment::{BatchEntry, Segment};

pub use self::recovery::{CorruptTail, RecoveryReport, TailTruncation};

/// Tunables of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment when the next batch would take the active one past this size.
    pub segment_bytes: u64,
    /// Largest batch accepted, header included (Kafka's `message.max.bytes`).
    pub max_batch_bytes: usize,
    /// Size of the appender's write buffers: the largest single write (≤ [`MAX_IO_BYTES`]).
    pub write_chunk_bytes: usize,
    /// How much recovery reads at a time while scanning a segment.
    pub recovery_read_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 1 << 30,
            max_batch_bytes: (1 << 20) + 12,
            write_chunk_bytes: MAX_IO_BYTES,
            recovery_read_bytes: 1 << 20,
        }
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

/// A read resolved against the index; runs without borrowing the log.
pub struct ReadPlan<F> {
    file: Option<Rc<F>>,
    segment: String,
    pos: u64,
    len: usize,
    base_offset: u64,
    next_offset: u64,
    max_batch_bytes: usize,
}

impl<F: SegmentFile> ReadPlan<F> {
    pub async fn run(self) -> Result<ReadBatches, LogError> {
        let Some(file) = self.file else {
            return Ok(ReadBatches {
                bytes: Bytes::new(),
                base_offset: self.base_offset,
                next_offset: self.base_offset,
            });
        };
        let bytes = file
            .read_at(self.pos, self.len)
            .await
            .map_err(io_err(&self.segment, "read"))?;
        let mismatch = |reason: String| LogError::ReadMismatch {
            segment: self.segment.clone(),
            pos: self.pos,
            reason,
        };
        if bytes.len() != self.len {
            return Err(mismatch(format!("{} of {} bytes", bytes.len(), self.len)));
        }
        // Cheap guard against a concurrent truncation: the first header must be the batch the
        // index promised (the CRC was checked when the batch was appended or recovered).
        let h = BatchHeader::decode(&bytes).map_err(|e| mismatch(e.to_string()))?;
        if h.base_offset != self.base_offset as i64 || h.total_len() > self.max_batch_bytes {
            return Err(mismatch(format!(
                "first batch has base offset {}, expected {}",
                h.base_offset, self.base_offset
            )));
        }
        Ok(ReadBatches {
            bytes,
            base_offset: self.base_offset,
            next_offset: self.next_offset,
        })
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

/// Phase one of a flush: writes, taken from the log by [`PartitionLog::start_flush`].
pub struct FlushJob<D: SegmentDir> {
    dir: D,
    segments: Vec<SegmentWrites<D>>,
    /// Every offset below this is covered by the job.
    target: u64,
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
    segments: Vec<SegmentWritten<D::File>>,
    target: u64,
}

/// A finished flush, to hand to [`PartitionLog::finish_sync`].
pub struct SyncedJob {
    segments: Vec<(u64, StablePos)>,
    target: u64,
}

impl<D: SegmentDir> FlushJob<D> {
    /// Creates missing segment files (and syncs the directory so they survive a crash), then
    /// writes, segment by segment in offset order.
    pub async fn write(self) -> Result<WrittenJob<D>, LogError> {
        let mut created_any = false;
        let mut out = Vec::with_capacity(self.segments.len());
        for seg in self.segments {
            let (file, created) = match seg.file {
                Some(f) => (f, false),
                None => {
                    let f = self
                        .dir
                        .open(&seg.name)
                        .await
                        .map_err(io_err(&seg.name, "create"))?;
                    created_any = true;
                    (Rc::new(f), true)
                }
            };
            out.push((seg.base_offset, seg.name, file, created, seg.pending));
        }
        if created_any {
            self.dir
                .sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))?;
        }
        let mut segments = Vec::with_capacity(out.len());
        for (base_offset, name, file, created, pending) in out {
            for w in pending.writes {
                file.write_at(w.pos, w.buf, w.len)
                    .await
                    .map_err(io_err(&name, "write"))?;
            }
            segments.push(SegmentWritten {
                base_offset,
                name,
                file,
                created,
                end: pending.end,
            });
        }
        Ok(WrittenJob {
            segments,
            target: self.target,
        })
    }
}

impl<D: SegmentDir> WrittenJob<D> {
    /// One `fdatasync` per segment, in offset order (so durable data is always a prefix).
    pub async fn sync(self) -> Result<SyncedJob, LogError> {
        let mut segments = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            s.file
                .fdatasync()
                .await
                .map_err(io_err(&s.name, "fdatasync"))?;
            segments.push((s.base_offset, StablePos(s.end.0)));
        }
        Ok(SyncedJob {
            segments,
            target: self.target,
        })
    }
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
    waiters: BTreeMap<u64, Vec<Rc<RefCell<WaiterSlot>>>>,
    failed: Option<Rc<str>>,
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

    pub fn is_flushing(&self) -> bool {
        self.flush_in_flight
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

    /// Appends a validated batch as the next offsets, written in `term`: stamps base offset
    /// and leader epoch (outside the CRC), rolls the segment at the size limit or on a term
    /// change. In memory only; durable after a flush.
    pub fn append(&mut self, batch: &RecordBatch, term: u64) -> Result<Appended, LogError> {
        self.check_ok()?;
        let epoch = i32::try_from(term).map_err(|_| LogError::TermTooLarge(term))?;
        let len = batch.len() as u64;
        let base = self.next_offset;
        let roll = match self.segments.values_mut().next_back() {
            None => true,
            Some(s) if s.batches.is_empty() => {
                // An empty active segment is reused. If its file does not exist yet it simply
                // takes the new term's name; otherwise it keeps the name of the term it was
                // created in (batches carry their own epoch).
                if s.term != term && s.file.is_none() && !self.flush_in_flight {
                    s.term = term;
                    s.name = segment::segment_name(s.base_offset, term);
                }
                false
            }
            Some(s) => s.term != term || s.size() + len > self.config.segment_bytes,
        };
        if roll {
            if let Some(s) = self.segments.values_mut().next_back() {
                s.appender.seal();
            }
            let seg =
                Segment::new_empty(self.dir.clone(), self.config.write_chunk_bytes, base, term);
            self.segments.insert(base, seg);
        }
        let seg = self
            .segments
            .values_mut()
            .next_back()
            .expect("an active segment");
        let pos = seg.appender.dirty().0;
        let header = batch.stamped_header(base as i64, epoch);
        seg.appender
            .append(&[&header, &batch.bytes()[BATCH_HEADER_LEN..]]);
        let last = base + batch.offset_count() - 1;
        seg.batches.push(BatchEntry {
            base_offset: base,
            last_offset: last,
            pos,
            len: len as u32,
            epoch,
        });
        let segment = seg.base_offset;
        self.next_offset = last + 1;
        self.check_offsets();
        Ok(Appended {
            base_offset: base,
            last_offset: last,
            segment,
        })
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

    /// Takes every unwritten byte into a flush job; `None` when everything is already written.
    /// At most one job is in flight.
    pub fn start_flush(&mut self) -> Result<Option<FlushJob<D>>, LogError> {
        self.check_ok()?;
        if self.flush_in_flight {
            return Err(LogError::FlushInFlight);
        }
        let mut segments = Vec::new();
        for seg in self.segments.values_mut() {
            if let Some(pending) = seg.appender.take_writes() {
                segments.push(SegmentWrites {
                    base_offset: seg.base_offset,
                    name: seg.name.clone(),
                    file: seg.file.clone(),
                    pending,
                });
            }
        }
        if segments.is_empty() {
            return Ok(None);
        }
        self.flush_in_flight = true;
        Ok(Some(FlushJob {
            dir: self.dir.clone(),
            segments,
            target: self.next_offset,
        }))
    }

    /// Records phase one's outcome: the written bytes become readable.
    pub fn finish_write(
        &mut self,
        r: Result<WrittenJob<D>, LogError>,
    ) -> Result<WrittenJob<D>, LogError> {
        assert!(self.flush_in_flight, "finish_write without a flush");
        let job = match r {
            Ok(job) => job,
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
        for s in &job.segments {
            let seg = self
                .segments
                .get_mut(&s.base_offset)
                .expect("segments do not change while a flush is in flight");
            if s.created {
                seg.file = Some(s.file.clone());
            }
            seg.appender.mark_stable(s.end);
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
                .expect("segments do not change while a flush is in flight");
            seg.appender.mark_committed(end);
            seg.appender.release_if_sealed();
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
    pub fn plan_read(&self, offset: u64, max_bytes: usize) -> Result<ReadPlan<D::File>, LogError> {
        if offset < self.log_start || offset > self.next_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: self.log_start,
                end: self.next_offset,
            });
        }
        let empty = |segment: String| ReadPlan {
            file: None,
            segment,
            pos: 0,
            len: 0,
            base_offset: offset,
            next_offset: offset,
            max_batch_bytes: self.config.max_batch_bytes,
        };
        let Some((_, seg)) = self.segments.range(..=offset).next_back() else {
            return Ok(empty(String::new()));
        };
        let Some(first) = seg.find(offset) else {
            return Ok(empty(seg.name.clone()));
        };
        let stable = seg.appender.stable().0;
        let start = seg.batches[first];
        let mut end = start;
        let mut total = 0usize;
        for b in &seg.batches[first..] {
            if b.end_pos() > stable || (total > 0 && total + b.len as usize > max_bytes) {
                break;
            }
            total += b.len as usize;
            end = *b;
        }
        if total == 0 {
            return Ok(empty(seg.name.clone()));
        }
        Ok(ReadPlan {
            file: seg.file.clone(),
            segment: seg.name.clone(),
            pos: start.pos,
            len: total,
            base_offset: start.base_offset,
            next_offset: end.last_offset + 1,
            max_batch_bytes: self.config.max_batch_bytes,
        })
    }

    /// [`Self::plan_read`] and [`ReadPlan::run`] in one call.
    pub async fn read(&self, offset: u64, max_bytes: usize) -> Result<ReadBatches, LogError> {
        self.plan_read(offset, max_bytes)?.run().await
    }

    /// Removes every batch from `offset` on (a batch boundary, `>= floor`), durably: the cut
    /// segment is truncated and fdatasynced, later segments are deleted and the directory
    /// synced before this returns. Waiters beyond the new end fail.
    pub async fn truncate_suffix(&mut self, offset: u64, floor: u64) -> Result<(), LogError> {
        self.check_ok()?;
        if self.flush_in_flight {
            return Err(LogError::FlushInFlight);
        }
        if offset < floor {
            return Err(LogError::BelowFloor { offset, floor });
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
        let seg = &self.segments[&keep];
        let (cut_idx, pos) = if offset == seg.next_offset() {
            (seg.batches.len(), seg.size())
        } else {
            match seg.batches.iter().position(|b| b.base_offset == offset) {
                Some(i) => (i, seg.batches[i].pos),
                None if seg.batches.is_empty() => (0, 0),
                None => return Err(LogError::NotBatchBoundary { offset }),
            }
        };

        let r = self.cut(keep, cut_idx, pos).await;
        if let Err(e) = &r {
            self.fail(e);
        }
        r?;

        self.next_offset = offset;
        self.stable_offset = self.stable_offset.min(offset);
        self.committed_offset = self.committed_offset.min(offset);
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
        Ok(())
    }

    async fn cut(&mut self, keep: u64, cut_idx: usize, pos: u64) -> Result<(), LogError> {
        // 1. Cut the kept segment, durably. A crash after this but before step 2 leaves later
        //    segments that no longer follow on; recovery deletes them as a gap.
        let seg = self.segments.get_mut(&keep).expect("kept segment");
        if !seg.appender.truncate_in_memory(pos) {
            let file = seg
                .file
                .clone()
                .expect("bytes below the memory tail are on file");
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
        seg.batches.truncate(cut_idx);
        if let Some(file) = &seg.file {
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
        // 2. Delete later segments, last first, so any partial outcome is still a prefix.
        let later: Vec<u64> = self.segments.range(keep + 1..).map(|(&b, _)| b).collect();
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
        let Some(file) = seg.file else {
            return Ok(false);
        };
        self.dir
            .remove(&seg.name)
            .await
            .map_err(io_err(&seg.name, "remove"))?;
        // A read in flight may still hold the file; then it is closed when that read drops it.
        if let Ok(file) = Rc::try_unwrap(file) {
            file.close().await.map_err(io_err(&seg.name, "close"))?;
        }
        Ok(true)
    }

    /// Moves the log start offset forward to `offset` (≤ the committed offset) without any
    /// I/O, so a caller may do it while appends go on; the files below it are reclaimed by
    /// [`Self::truncate_prefix`]. Persisting the new start is the caller's (see
    /// [`checkpoint`]). Returns whether the start moved.
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
        self.check_offsets();
        Ok(true)
    }

    /// Moves the log start offset to `offset` (≤ the committed offset) and deletes every
    /// segment wholly below it, except the active one and any whose successor has no file yet
    /// (the surviving files must always carry the log end across a restart).
    ///
    /// The start offset itself is not persisted: after a restart the log starts at its first
    /// surviving batch, and the owner re-applies the start offset it keeps (e.g. in the
    /// metadata store).
    pub async fn truncate_prefix(&mut self, offset: u64) -> Result<(), LogError> {
        self.check_ok()?;
        if self.flush_in_flight {
            return Err(LogError::FlushInFlight);
        }
        if offset <= self.log_start {
            return Ok(());
        }
        if offset > self.committed_offset {
            return Err(LogError::BeyondCommitted {
                offset,
                committed: self.committed_offset,
            });
        }
        self.log_start = offset;
        let mut removed = false;
        loop {
            let mut it = self.segments.values();
            let (Some(first), Some(second)) = (it.next(), it.next()) else {
                break;
            };
            if first.next_offset() > offset || second.file.is_none() {
                break;
            }
            let base = first.base_offset;
            let seg = self.segments.remove(&base).expect("first segment");
            match self.drop_segment(seg).await {
                Ok(r) => removed |= r,
                Err(e) => {
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
        if removed {
            if let Err(e) = self
                .dir
                .sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))
            {
                self.fail(&e);
                return Err(e);
            }
        }
        self.check_offsets();
        Ok(())
    }

    /// Flushes, then closes every file. Use this rather than dropping the log (glommio warns
    /// about `DmaFile`s dropped while open).
    pub async fn close(mut self) -> Result<(), LogError> {
        let flushed = if self.failed.is_none() && !self.flush_in_flight {
            self.flush().await.map(|_| ())
        } else {
            Ok(())
        };
        for (_, seg) in std::mem::take(&mut self.segments) {
            if let Some(file) = seg.file.and_then(|f| Rc::try_unwrap(f).ok()) {
                file.close().await.map_err(io_err(&seg.name, "close"))?;
            }
        }
        flushed
    }
}

#[cfg(test)]
mod tests;
