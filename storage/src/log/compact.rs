//! Log compaction (Kafka's log cleaner, for `cleanup.policy=compact`): closed segments are
//! rewritten keeping what the owner's [`Cleaner`] keeps, and swapped in crash-safely.
//!
//! Storage persists, the owner decides: nothing here parses records. A job walks the batches
//! of closed segments and asks the [`Cleaner`] twice — first to map the keys of the *dirty*
//! batches (from the cleaner checkpoint on: [`Cleaner::map_batch`], which may stop early when
//! its map is full), then to filter every batch of the segments being rewritten
//! ([`Cleaner::filter`]: keep it, drop it, or a rebuilt batch with the same base and last
//! offset) — and persists the result.
//!
//! * Only closed segments are rewritten, durable and with complete index files
//!   ([`PartitionLog::cleanable_segments`]); never the active one, so appends never wait.
//! * Offsets are preserved and follow on: the offsets of a run of dropped batches are covered
//!   by one empty filler batch ([`super::batch::filler_batch`], written before the next
//!   batch kept), so readers and recovery never see a jump (they treat one as damage). The
//!   *last* batch of every rewritten segment always stays — as an empty batch
//!   ([`super::batch::empty_batch`]) if the cleaner drops it — so segments still follow on
//!   (recovery cuts the log at a gap between segments: it is what an interrupted suffix
//!   truncation leaves).
//! * Consecutive segments are merged while their sizes add up to at most `max_group_bytes`
//!   (Kafka groups up to `segment.bytes`); the new segment takes the first one's name.
//! * The cleaner checkpoint (file [`CLEANER_CHECKPOINT`]: where the mapped part ended) is
//!   written after the swap; losing it only costs a pass over already clean data.
//!
//! # Steps
//! 1. [`PartitionLog::plan_compaction`] (synchronous) picks the segments.
//! 2. [`CompactionJob::run`], without borrowing the log: opens every old segment and loads its
//!    index, maps, writes `{segment}.cleaned` files with their sparse indexes and fdatasyncs
//!    them. Any failure removes them; the log is unchanged.
//! 3. [`PartitionLog::finish_compaction`] (synchronous; not while a flush job that will write
//!    the segment checkpoint — computed when it started — is in flight: it answers `Busy`)
//!    checks that the old segments are still there unchanged and puts the new ones in their
//!    place: reads planned from then on see the new data (through the `.cleaned` handle);
//!    reads planned before keep the old segments' open handles and loaded indexes, so they
//!    finish on the old files — no read ever pairs an old index with a new file. The shard's
//!    batch cache forgets the log.
//! 4. [`SwapJob::run`], without borrowing the log — Kafka's `.cleaned` → `.swap` → replace:
//!    1. the segment checkpoint is rewritten without the swapped range (its sizes are about to
//!       change; the log keeps it out of every checkpoint until step 5);
//!    2. `.cleaned` → `.swap` for every new segment, directory synced: *the commit point*;
//!    3. the old segments' index files, then the old segments are removed (the first old
//!       segment has the new one's name: it is replaced in the next step);
//!    4. `.swap` → `.log`, directory synced;
//!    5. the new segments' index files, the segment checkpoint with them, the cleaner
//!       checkpoint.
//! 5. [`PartitionLog::finish_swap`] marks the new segments' index files complete. A failure
//!    in step 4 fails the log (what is on disk is known only after recovery).
//!
//! On open ([`recover`]), before anything else: a `.cleaned` file is removed (the old segments
//! stand); a `.swap` file is completed — every segment whose base offset lies in the swap's
//! offset range is removed with its index files, then the swap is renamed — so a crash at any
//! point leaves, for each rewritten group, either the old segments or the new one.
//!
//! # Concurrency
//! One job per log. Appends and flushes go on meanwhile (they only touch the active segment
//! and newly sealed ones; a flush started during the swap leaves the swapped range out of its
//! checkpoint, and the swap's own checkpoint leaves out segments completed since step 3 —
//! a segment missing from the checkpoint only costs reading its index files). Retention and
//! DeleteRecords may still delete old segments before step 3: the job is then abandoned (its
//! files removed); from step 3 to 5 the new segments count as having index files being
//! written, which retention never deletes, so it deletes at most segments below the swapped
//! range (the swap's checkpoint may still list them: recovery skips a listed segment whose
//! file is gone). Moving the log start ([`PartitionLog::advance_log_start`]) does no I/O.
//!
//! Suffix truncation ([`PartitionLog::truncate_suffix`], a Raft follower dropping a divergent
//! tail) is refused with [`LogError::CompactionInFlight`] — retry once
//! [`PartitionLog::finish_swap`] is done:
//! * into the rewritten range, from step 1 to 5;
//! * anywhere, from step 3 to 5: the swap writes a segment checkpoint (durable end, closed
//!   segments and their sizes) and the new segments' index files as computed at step 3, and a
//!   truncation meanwhile would leave them describing segments that it cut or deleted (or
//!   mark complete a segment it turned into the active one).
//!
//! Before step 3 a truncation above the range is fine: step 3 computes the checkpoints from
//! the log as it then is, and abandons the job if the truncation cut its last segment (a cut
//! at the range's end makes that segment the active one).

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use bytes::Bytes;

use super::appender::Appender;
use super::batch::{
    check_first, empty_batch, filler_batch, BatchHeader, BATCH_HEADER_LEN, MIN_BATCH_LENGTH,
};
use super::file::{align_up, read_small_file, write_small_file, IoBuf, SegmentDir, SegmentFile};
use super::index::{IndexMeta, LastBatch, SegmentIndex, NO_TIMESTAMP};
use super::manifest::{self, Manifest, ManifestSegment};
use super::recovery::remove_index_files;
use super::segment::{parse_segment_name, IndexFiles, Segment, SegmentShared};
use super::{
    io_err, write_index_files, IndexWrite, LogConfig, LogError, PartitionLog, PlanSegment,
};

/// Suffix of a rewritten segment being written: `{base:020}-{term}.log.cleaned`.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a rewritten segment committed to replace the old ones: `….log.swap`.
pub const SWAP_SUFFIX: &str = ".swap";
/// The cleaner checkpoint of a partition directory.
pub const CLEANER_CHECKPOINT: &str = "cleaner-offset.checkpoint";
const CHECKPOINT_MAGIC: &[u8; 4] = b"SPCO";
const CHECKPOINT_VERSION: u32 = 1;

/// What the owner decides for one batch ([`Cleaner::filter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filtered {
    /// Keep the batch as it is.
    Keep,
    /// Drop the whole batch (its offsets go to an empty filler batch).
    Drop,
    /// Replace it by this batch: one valid v2 batch with the same base offset and last offset
    /// (its records a subset of the original's, Kafka's rule for compacted batches).
    Replace(Bytes),
}

/// The record-level half of compaction, supplied by the owner of the log (the broker).
#[allow(async_fn_in_trait)] // shard-local by design
pub trait Cleaner {
    /// Pass one, over the dirty batches in offset order (each verified): take the batch's
    /// keys into the offset map. `Ok(false)`: the map is full — the batch was not taken and
    /// the pass stops before it. An error abandons the job.
    fn map_batch(&mut self, header: &BatchHeader, batch: &Bytes) -> Result<bool, String>;
    /// The map covers the dirty batches below `end` (the first offset not mapped): records at
    /// or after it must be kept. Called once, between the passes.
    fn map_done(&mut self, end: u64);
    /// Pass two, over every batch of the segments being rewritten, in offset order (each
    /// verified). An error abandons the job.
    fn filter(&mut self, header: &BatchHeader, batch: Bytes) -> Result<Filtered, String>;
    /// Called after every batch of both passes: the place to yield to the executor.
    async fn pause(&mut self) {}
}

/// A closed segment compaction may rewrite ([`PartitionLog::cleanable_segments`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanableSegment {
    pub base_offset: u64,
    pub next_offset: u64,
    pub size: u64,
    /// Largest batch max timestamp ([`NO_TIMESTAMP`] if none).
    pub max_timestamp: i64,
    /// Max timestamp of the first batch.
    pub first_timestamp: i64,
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionStats {
    /// The rewritten offset range `[start, end)`.
    pub start_offset: u64,
    pub end_offset: u64,
    /// The new cleaner checkpoint: the first offset the key map did not cover.
    pub clean_offset: u64,
    pub segments_before: usize,
    pub segments_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub batches_before: u64,
    pub batches_after: u64,
}

/// The log's compaction state: the cleaner checkpoint and the job in flight.
#[derive(Default)]
pub(crate) struct State {
    /// Offsets below were covered by a finished compaction's key map (0: none yet).
    clean_offset: u64,
    job: Option<Rc<Token>>,
    /// The last flush job started carries a segment checkpoint (computed when it started).
    flush_manifest: bool,
}

/// Shared by the log and the job's stages: the job is in flight while a stage holds it.
struct Token {
    /// The rewritten range, `[start, end)`.
    start: u64,
    end: u64,
    /// The new segments are in the log, their files not yet swapped on disk.
    swapping: Cell<bool>,
}

impl State {
    /// Called by every flush job that starts: whether it will write a segment checkpoint.
    pub(crate) fn note_flush(&mut self, carries_checkpoint: bool) {
        self.flush_manifest = carries_checkpoint;
    }

    fn in_flight(&self) -> Option<&Rc<Token>> {
        self.job
            .as_ref()
            .filter(|t| t.swapping.get() || Rc::strong_count(t) > 1)
    }

    /// Whether a suffix truncation to `offset` must wait for the compaction in flight: one into
    /// the range it rewrites, or any one while its swap is in flight (the swap writes a segment
    /// checkpoint and index files computed by [`PartitionLog::finish_compaction`], which a
    /// truncation would make stale). `Some(end of the rewritten range)` when refused.
    pub(crate) fn refuses_truncation(&self, offset: u64) -> Option<u64> {
        self.in_flight()
            .filter(|t| t.swapping.get() || offset < t.end)
            .map(|t| t.end)
    }

    /// Whether the segment at `base` is being swapped (keep it out of the segment checkpoint).
    pub(crate) fn hides(&self, base: u64) -> bool {
        self.job
            .as_ref()
            .is_some_and(|t| t.swapping.get() && (t.start..t.end).contains(&base))
    }
}

fn refused(name: &str, pos: u64, why: String) -> LogError {
    LogError::ReadMismatch {
        segment: name.to_string(),
        pos,
        reason: format!("compaction: {why}"),
    }
}

/// Reads one segment's batches in order, each verified (bounds, CRC-32C, record count,
/// offsets growing).
struct BatchReader<'a, F> {
    file: &'a F,
    name: &'a str,
    pos: u64,
    end: u64,
    chunk: usize,
    win_pos: u64,
    win: Bytes,
    max_batch_bytes: usize,
    expect: u64,
}

impl<'a, F: SegmentFile> BatchReader<'a, F> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        file: &'a F,
        name: &'a str,
        pos: u64,
        first_offset: u64,
        end: u64,
        chunk: usize,
        max_batch_bytes: usize,
    ) -> Self {
        Self {
            file,
            name,
            pos,
            end,
            chunk: chunk.max(BATCH_HEADER_LEN),
            win_pos: pos,
            win: Bytes::new(),
            max_batch_bytes,
            expect: first_offset,
        }
    }

    async fn read(&mut self, pos: u64, len: usize) -> Result<Bytes, LogError> {
        let in_window =
            self.win_pos <= pos && pos + len as u64 <= self.win_pos + self.win.len() as u64;
        if !in_window {
            let want = (len.max(self.chunk) as u64).min(self.end - pos) as usize;
            self.win = self
                .file
                .read_at(pos, want.max(len))
                .await
                .map_err(io_err(self.name, "read"))?;
            self.win_pos = pos;
            if self.win.len() < len {
                return Err(refused(
                    self.name,
                    pos,
                    format!("{} of {len} bytes", self.win.len()),
                ));
            }
        }
        let at = (pos - self.win_pos) as usize;
        Ok(self.win.slice(at..at + len))
    }

    /// The next batch as `(file position, header, bytes)`; `None` at the end.
    async fn next(&mut self) -> Result<Option<(u64, BatchHeader, Bytes)>, LogError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let at = self.pos;
        if self.end - at < BATCH_HEADER_LEN as u64 {
            return Err(refused(self.name, at, "a partial batch header".into()));
        }
        let head = self.read(at, BATCH_HEADER_LEN).await?;
        let h = BatchHeader::decode(&head).map_err(|e| refused(self.name, at, e.to_string()))?;
        if h.batch_length < MIN_BATCH_LENGTH as i32
            || h.total_len() > self.max_batch_bytes
            || at + h.total_len() as u64 > self.end
        {
            return Err(refused(
                self.name,
                at,
                format!("no sane batch header (batch_length {})", h.batch_length),
            ));
        }
        let bytes = self.read(at, h.total_len()).await?;
        let h = check_first(&bytes, self.max_batch_bytes)
            .map_err(|e| refused(self.name, at, e.to_string()))?;
        if h.base_offset < 0 || (h.base_offset as u64) < self.expect {
            return Err(refused(
                self.name,
                at,
                format!("base offset {} below {}", h.base_offset, self.expect),
            ));
        }
        self.expect = h.next_offset() as u64;
        self.pos = at + h.total_len() as u64;
        Ok(Some((at, h, bytes)))
    }
}

/// Writes one new segment file with aligned writes, building its sparse index.
struct SegmentWriter<D: SegmentDir> {
    dir: D,
    name: String,
    file: D::File,
    chunk: usize,
    buf: Option<D::Buf>,
    buf_len: usize,
    /// File position of `buf[0]`.
    buf_pos: u64,
    size: u64,
    base: u64,
    interval: u32,
    index: SegmentIndex,
    max_ts: i64,
    first_ts: i64,
    last: Option<LastBatch>,
    batches: u64,
}

/// A finished new segment file.
struct Written<F> {
    file: F,
    size: u64,
    index: SegmentIndex,
    max_ts: i64,
    first_ts: i64,
    last: Option<LastBatch>,
    batches: u64,
}

impl<D: SegmentDir> SegmentWriter<D> {
    async fn create(
        dir: &D,
        name: String,
        base: u64,
        chunk: usize,
        interval: u32,
    ) -> Result<Self, LogError> {
        let file = dir.open(&name).await.map_err(io_err(&name, "create"))?;
        // A leftover of an abandoned job would otherwise show through.
        file.truncate(0).await.map_err(io_err(&name, "truncate"))?;
        Ok(Self {
            dir: dir.clone(),
            name,
            file,
            chunk,
            buf: None,
            buf_len: 0,
            buf_pos: 0,
            size: 0,
            base,
            interval,
            index: SegmentIndex::default(),
            max_ts: NO_TIMESTAMP,
            first_ts: NO_TIMESTAMP,
            last: None,
            batches: 0,
        })
    }

    async fn append(&mut self, h: &BatchHeader, bytes: &[u8]) -> Result<(), LogError> {
        let len = bytes.len() as u64;
        if self.size + len > u64::from(u32::MAX) {
            return Err(refused(&self.name, self.size, "segment over 4 GiB".into()));
        }
        let base = h.base_offset as u64;
        self.index.note_batch(
            (base - self.base) as u32,
            self.size as u32,
            self.max_ts,
            self.interval,
        );
        if self.batches == 0 {
            self.first_ts = h.max_timestamp;
        }
        self.max_ts = self.max_ts.max(h.max_timestamp);
        self.last = Some(LastBatch {
            base_offset: base,
            pos: self.size,
            len: len as u32,
            crc: h.crc,
        });
        self.batches += 1;
        self.size += len;
        let mut rest = bytes;
        while !rest.is_empty() {
            let chunk = self.chunk;
            let buf = match &mut self.buf {
                Some(b) => b,
                None => self.buf.insert(self.dir.alloc_buf(chunk)),
            };
            let n = (chunk - self.buf_len).min(rest.len());
            buf.as_mut_slice()[self.buf_len..self.buf_len + n].copy_from_slice(&rest[..n]);
            self.buf_len += n;
            rest = &rest[n..];
            if self.buf_len == chunk {
                self.write_buf(chunk).await?;
            }
        }
        Ok(())
    }

    async fn write_buf(&mut self, len: usize) -> Result<(), LogError> {
        let buf = self.buf.take().expect("a buffer to write");
        let (buf, r) = self.file.write_at(self.buf_pos, buf, len).await;
        r.map_err(io_err(&self.name, "write"))?;
        self.buf_pos += len as u64;
        self.buf_len = 0;
        if len == self.chunk {
            self.buf = Some(buf);
        }
        Ok(())
    }

    /// Writes the tail, cuts the padding and fdatasyncs.
    async fn finish(mut self) -> Result<Written<D::File>, LogError> {
        if self.buf_len > 0 {
            let len = align_up(self.buf_len as u64) as usize;
            let filled = self.buf_len;
            let buf = self.buf.as_mut().expect("a partial buffer");
            buf.as_mut_slice()[filled..len].fill(0);
            self.write_buf(len).await?;
        }
        self.file
            .truncate(self.size)
            .await
            .map_err(io_err(&self.name, "truncate"))?;
        self.file
            .fdatasync()
            .await
            .map_err(io_err(&self.name, "fdatasync"))?;
        Ok(Written {
            file: self.file,
            size: self.size,
            index: self.index,
            max_ts: self.max_ts,
            first_ts: self.first_ts,
            last: self.last,
            batches: self.batches,
        })
    }
}

/// One old segment of a job.
struct OldSegment<F> {
    base_offset: u64,
    term: u64,
    name: String,
    size: u64,
    shared: Rc<SegmentShared<F>>,
}

/// A new segment written by a job.
struct NewSegment<F> {
    base_offset: u64,
    term: u64,
    /// Its final name (the first old segment's).
    name: String,
    cleaned: String,
    file: Rc<F>,
    size: u64,
    next_offset: u64,
    index: SegmentIndex,
    max_timestamp: i64,
    first_timestamp: i64,
    last_batch: Option<LastBatch>,
}

impl<F> NewSegment<F> {
    fn swap_name(&self) -> String {
        format!("{}{SWAP_SUFFIX}", self.name)
    }

    fn meta(&self) -> IndexMeta {
        IndexMeta {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size: self.size,
            complete: true,
            max_timestamp: self.max_timestamp,
            first_timestamp: self.first_timestamp,
            last_batch: self.last_batch,
        }
    }

    fn manifest_entry(&self) -> ManifestSegment {
        ManifestSegment {
            base_offset: self.base_offset,
            term: self.term,
            size: self.size,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
            first_timestamp: self.first_timestamp,
        }
    }
}

/// Old segments and the new one replacing them.
struct Group<F> {
    old: Vec<OldSegment<F>>,
    new: NewSegment<F>,
}

/// A compaction planned by [`PartitionLog::plan_compaction`]; run it with [`Self::run`].
#[must_use = "a planned compaction does nothing until run"]
pub struct CompactionJob<D: SegmentDir> {
    dir: D,
    segs: Vec<PlanSegment<D>>,
    dirty_from: u64,
    max_group_bytes: u64,
    chunk: usize,
    token: Rc<Token>,
}

/// The new segment files of a job, written and durable; hand it to
/// [`PartitionLog::finish_compaction`].
pub struct CompactionWritten<D: SegmentDir> {
    dir: D,
    groups: Vec<Group<D::File>>,
    stats: CompactionStats,
    token: Rc<Token>,
}

impl<D: SegmentDir> CompactionWritten<D> {
    /// Gives the job up (e.g. the log stayed busy too long): run the returned job to remove
    /// the new files, then hand its result to [`PartitionLog::finish_swap`].
    pub fn abandon(self) -> SwapJob<D> {
        SwapJob {
            dir: self.dir,
            groups: self.groups,
            swap: None,
            stats: self.stats,
            token: self.token,
        }
    }

    /// What the job did so far (sizes before and after).
    pub fn stats(&self) -> &CompactionStats {
        &self.stats
    }
}

/// What [`PartitionLog::finish_compaction`] decided.
pub enum CompactionFinish<D: SegmentDir> {
    /// Nothing was rewritten (the map covered nothing that could be cleaned).
    Nothing(CompactionStats),
    /// A flush is in flight: call again shortly with the same files.
    Busy(CompactionWritten<D>),
    /// Run it (the swap on disk, or — when the log changed meanwhile — the removal of the
    /// new files), then hand its result to [`PartitionLog::finish_swap`].
    Swap(SwapJob<D>),
}

/// The on-disk half of a finished compaction (see the module documentation).
#[must_use = "the log already serves the new segments; run() makes the files match"]
pub struct SwapJob<D: SegmentDir> {
    dir: D,
    groups: Vec<Group<D::File>>,
    /// `None`: the job was abandoned, only its files are removed.
    swap: Option<Box<Swap<D::File>>>,
    stats: CompactionStats,
    token: Rc<Token>,
}

struct Swap<F> {
    /// The segment checkpoint without the swapped range, and with the new segments.
    before: Manifest,
    after: Manifest,
    /// The new segments as the log holds them.
    new_shared: Vec<(u64, Rc<SegmentShared<F>>)>,
}

/// A finished [`SwapJob`], for [`PartitionLog::finish_swap`].
pub struct SwapDone<F> {
    new_shared: Vec<(u64, Rc<SegmentShared<F>>)>,
    stats: CompactionStats,
    abandoned: bool,
    _token: Rc<Token>,
}

impl<D: SegmentDir> CompactionJob<D> {
    /// The offset range the job may rewrite, `[start, end)`.
    pub fn range(&self) -> (u64, u64) {
        (self.token.start, self.token.end)
    }

    /// Maps the dirty batches and writes the new segments (see the module documentation).
    /// On failure the new files are removed and the log is as it was.
    pub async fn run<C: Cleaner>(self, cleaner: &mut C) -> Result<CompactionWritten<D>, LogError> {
        let mut created = Vec::new();
        let r = self.run_inner(cleaner, &mut created).await;
        if r.is_err() {
            for name in created {
                let _ = self.dir.remove(&name).await;
            }
        }
        r
    }

    async fn run_inner<C: Cleaner>(
        &self,
        cleaner: &mut C,
        created: &mut Vec<String>,
    ) -> Result<CompactionWritten<D>, LogError> {
        // 0. Every old segment open, its index loaded: a read planned on one of them before
        //    the swap then finishes on the old file, never pairing it with the new one.
        for s in &self.segs {
            s.file().await?;
            s.with_index(|_| ()).await?;
        }
        let last_end = self.segs.last().map_or(self.dirty_from, |s| s.next_offset);
        // 1. The key map over the dirty batches.
        let mut map_end = last_end.max(self.dirty_from);
        'map: for s in self.segs.iter().filter(|s| s.next_offset > self.dirty_from) {
            let file = s.file().await?;
            let (pos, first) = if self.dirty_from > s.base_offset {
                let rel = (self.dirty_from - s.base_offset) as u32;
                s.with_index(|ix| ix.lookup_offset(rel))
                    .await?
                    .map_or((0, s.base_offset), |e| {
                        (u64::from(e.pos), s.base_offset + u64::from(e.rel_offset))
                    })
            } else {
                (0, s.base_offset)
            };
            let mut r = BatchReader::new(
                &*file,
                &s.name,
                pos,
                first,
                s.size,
                s.read_bytes,
                s.max_batch_bytes,
            );
            while let Some((at, h, bytes)) = r.next().await? {
                if (h.next_offset() as u64) <= self.dirty_from {
                    continue;
                }
                let taken = cleaner
                    .map_batch(&h, &bytes)
                    .map_err(|why| refused(&s.name, at, why))?;
                cleaner.pause().await;
                if !taken {
                    map_end = (h.base_offset as u64).max(self.dirty_from);
                    break 'map;
                }
            }
        }
        cleaner.map_done(map_end);
        // 2. Rewrite the segments that start below the map's end, in groups.
        let n = self
            .segs
            .iter()
            .take_while(|s| s.base_offset < map_end)
            .count();
        let mut stats = CompactionStats {
            start_offset: self.token.start,
            end_offset: self.segs[..n]
                .last()
                .map_or(self.token.start, |s| s.next_offset),
            clean_offset: map_end,
            segments_before: n,
            ..CompactionStats::default()
        };
        let mut groups = Vec::new();
        let mut i = 0;
        while i < n {
            let first = &self.segs[i];
            let mut j = i + 1;
            let mut bytes = first.size;
            while j < n
                && bytes + self.segs[j].size <= self.max_group_bytes
                && self.segs[j].next_offset - first.base_offset <= u64::from(u32::MAX)
            {
                bytes += self.segs[j].size;
                j += 1;
            }
            let group = self
                .write_group(&self.segs[i..j], cleaner, created, &mut stats)
                .await?;
            groups.push(group);
            i = j;
        }
        stats.segments_after = groups.len();
        Ok(CompactionWritten {
            dir: self.dir.clone(),
            groups,
            stats,
            token: self.token.clone(),
        })
    }

    async fn write_group<C: Cleaner>(
        &self,
        segs: &[PlanSegment<D>],
        cleaner: &mut C,
        created: &mut Vec<String>,
        stats: &mut CompactionStats,
    ) -> Result<Group<D::File>, LogError> {
        let first = &segs[0];
        let cleaned = format!("{}{CLEANED_SUFFIX}", first.name);
        created.push(cleaned.clone());
        let mut w = SegmentWriter::create(
            &self.dir,
            cleaned.clone(),
            first.base_offset,
            self.chunk,
            first.index_interval,
        )
        .await?;
        let mut old = Vec::with_capacity(segs.len());
        // Offsets of removed batches not yet covered: (base, last, leader epoch). They are
        // written as one empty filler batch before the next batch kept, so offsets follow on.
        let mut removed: Option<(i64, i64, i32)> = None;
        for (k, s) in segs.iter().enumerate() {
            let file = s.file().await?;
            let mut r = BatchReader::new(
                &*file,
                &s.name,
                0,
                s.base_offset,
                s.size,
                s.read_bytes,
                s.max_batch_bytes,
            );
            let last_seg = k + 1 == segs.len();
            while let Some((at, h, bytes)) = r.next().await? {
                stats.batches_before += 1;
                let last = last_seg && r.pos >= s.size;
                let out = match cleaner
                    .filter(&h, bytes.clone())
                    .map_err(|why| refused(&s.name, at, why))?
                {
                    Filtered::Keep => Some(bytes),
                    Filtered::Drop if last => Some(empty_batch(&h)),
                    Filtered::Drop => {
                        removed = Some(match removed {
                            Some((base, _, epoch)) => (base, h.last_offset(), epoch),
                            None => (h.base_offset, h.last_offset(), h.partition_leader_epoch),
                        });
                        None
                    }
                    Filtered::Replace(b) => Some(checked_replacement(&s.name, at, &h, b, s)?),
                };
                if let Some(b) = out {
                    if let Some((mut base, last, epoch)) = removed.take() {
                        while base <= last {
                            let end = last.min(base + i64::from(i32::MAX));
                            let f = filler_batch(base, end, epoch);
                            let fh = BatchHeader::decode(&f).expect("a built batch");
                            w.append(&fh, &f).await?;
                            base = end + 1;
                        }
                    }
                    let nh = BatchHeader::decode(&b).expect("a checked batch");
                    w.append(&nh, &b).await?;
                }
                cleaner.pause().await;
            }
            if r.expect != s.next_offset {
                return Err(refused(
                    &s.name,
                    r.pos,
                    format!("ends at offset {}, not {}", r.expect, s.next_offset),
                ));
            }
            stats.bytes_before += s.size;
            old.push(OldSegment {
                base_offset: s.base_offset,
                term: s.term,
                name: s.name.clone(),
                size: s.size,
                shared: s.shared.clone(),
            });
        }
        let written = w.finish().await?;
        stats.bytes_after += written.size;
        stats.batches_after += written.batches;
        let last = segs.last().expect("a non-empty group");
        Ok(Group {
            old,
            new: NewSegment {
                base_offset: first.base_offset,
                term: first.term,
                name: first.name.clone(),
                cleaned,
                file: Rc::new(written.file),
                size: written.size,
                next_offset: last.next_offset,
                index: written.index,
                max_timestamp: written.max_ts,
                first_timestamp: written.first_ts,
                last_batch: written.last,
            },
        })
    }
}

/// Checks a batch the cleaner rebuilt: one valid batch, same base and last offset.
fn checked_replacement<D: SegmentDir>(
    name: &str,
    at: u64,
    h: &BatchHeader,
    b: Bytes,
    s: &PlanSegment<D>,
) -> Result<Bytes, LogError> {
    let nh = check_first(&b, s.max_batch_bytes)
        .map_err(|e| refused(name, at, format!("rebuilt batch: {e}")))?;
    if nh.total_len() != b.len()
        || nh.base_offset != h.base_offset
        || nh.last_offset() != h.last_offset()
    {
        return Err(refused(
            name,
            at,
            format!(
                "rebuilt batch covers {}..={} in {} bytes; the original {}..={}",
                nh.base_offset,
                nh.last_offset(),
                b.len(),
                h.base_offset,
                h.last_offset()
            ),
        ));
    }
    Ok(b)
}

impl<D: SegmentDir> SwapJob<D> {
    /// Whether this only removes the files of an abandoned job.
    pub fn is_abandoned(&self) -> bool {
        self.swap.is_none()
    }

    /// Swaps the files on disk (or removes an abandoned job's files). See the module
    /// documentation for the steps and what a crash at each leaves.
    pub async fn run(self) -> Result<SwapDone<D::File>, LogError> {
        let Some(swap) = self.swap else {
            for g in self.groups {
                remove_if_exists(&self.dir, &g.new.cleaned).await?;
                if let Ok(f) = Rc::try_unwrap(g.new.file) {
                    f.close().await.map_err(io_err(&g.new.cleaned, "close"))?;
                }
            }
            return Ok(SwapDone {
                new_shared: Vec::new(),
                stats: self.stats,
                abandoned: true,
                _token: self.token,
            });
        };
        let dir = &self.dir;
        let sync = || async {
            dir.sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))
        };
        // 1. No checkpoint may vouch for the old sizes once the new files can appear.
        if manifest::write(dir, &swap.before)
            .await
            .map_err(io_err(manifest::FILE, "write"))?
        {
            sync().await?;
        }
        // 2. The commit point.
        for g in &self.groups {
            let to = g.new.swap_name();
            dir.rename(&g.new.cleaned, &to)
                .await
                .map_err(io_err(&g.new.cleaned, "rename"))?;
        }
        sync().await?;
        // 3. The old segments go (index files first).
        for g in &self.groups {
            for o in &g.old {
                remove_index_files(dir, o.base_offset, o.term).await?;
                if o.name != g.new.name {
                    remove_if_exists(dir, &o.name).await?;
                }
            }
        }
        // 4. The new ones take their place.
        for g in &self.groups {
            let from = g.new.swap_name();
            dir.rename(&from, &g.new.name)
                .await
                .map_err(io_err(&from, "rename"))?;
        }
        sync().await?;
        // 5. Index files, checkpoints.
        let mut created = false;
        for g in &self.groups {
            let w = IndexWrite {
                base_offset: g.new.base_offset,
                term: g.new.term,
                name: g.new.name.clone(),
                index: g.new.index.clone(),
                meta: g.new.meta(),
            };
            created |= write_index_files(dir, &w)
                .await
                .map_err(io_err(&g.new.name, "write index files"))?;
        }
        created |= manifest::write(dir, &swap.after)
            .await
            .map_err(io_err(manifest::FILE, "write"))?;
        created |= write_small_file(
            dir,
            CLEANER_CHECKPOINT,
            &encode_checkpoint(self.stats.clean_offset),
        )
        .await
        .map_err(io_err(CLEANER_CHECKPOINT, "write"))?;
        if created {
            sync().await?;
        }
        // Old files nobody reads any more are closed; a read in flight closes its own.
        for g in self.groups {
            for o in g.old {
                if Rc::strong_count(&o.shared) == 1 {
                    let file = o.shared.file.borrow_mut().take();
                    if let Some(f) = file.and_then(|f| Rc::try_unwrap(f).ok()) {
                        f.close().await.map_err(io_err(&o.name, "close"))?;
                    }
                }
            }
        }
        Ok(SwapDone {
            new_shared: swap.new_shared,
            stats: self.stats,
            abandoned: false,
            _token: self.token,
        })
    }
}

async fn remove_if_exists<D: SegmentDir>(dir: &D, name: &str) -> Result<(), LogError> {
    match dir.remove(name).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(name, "remove")(e)),
    }
}

impl<D: SegmentDir> PartitionLog<D> {
    /// The cleaner checkpoint: the offsets below it were covered by a finished compaction's
    /// key map (never below the log start, never beyond the log end).
    pub fn clean_offset(&self) -> u64 {
        self.compaction
            .clean_offset
            .max(self.log_start)
            .min(self.next_offset)
    }

    /// Whether a compaction job is in flight.
    pub fn compaction_in_flight(&self) -> bool {
        self.compaction.in_flight().is_some()
    }

    /// The closed segments a compaction may rewrite, oldest first: the longest prefix of
    /// closed, durable segments with complete index files whose successor has a file (never
    /// the active segment), from the first one holding offsets at or after the log start.
    pub fn cleanable_segments(&self) -> Vec<CleanableSegment> {
        if self.failed.is_some() {
            return Vec::new();
        }
        let segs: Vec<_> = self.segments.values().collect();
        let mut out = Vec::new();
        for w in segs.windows(2) {
            let (s, next) = (w[0], w[1]);
            let durable =
                s.appender.committed().0 == s.size() && s.next_offset <= self.committed_offset;
            if !s.is_sealed() || !durable || s.index_files != IndexFiles::Complete || !next.on_disk
            {
                break;
            }
            // Segments wholly below the log start (a prefix) wait for their deletion; every
            // later one is listed, empty ones too, so the list has no holes.
            if s.next_offset <= self.log_start && out.is_empty() {
                continue;
            }
            out.push(CleanableSegment {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size(),
                max_timestamp: s.max_timestamp,
                first_timestamp: s.first_timestamp,
            });
        }
        out
    }

    /// Plans a compaction of the cleanable segments that end at or below `end` (from the first
    /// one holding offsets at or after the log start): the key map covers the dirty batches
    /// from `dirty_from` (the cleaner checkpoint, or later), and consecutive segments are
    /// merged while their sizes add up to at most `max_group_bytes`. `None` when there is no
    /// such segment. Refused while another compaction is in flight.
    pub fn plan_compaction(
        &mut self,
        dirty_from: u64,
        end: u64,
        max_group_bytes: u64,
    ) -> Result<Option<CompactionJob<D>>, LogError> {
        self.check_ok()?;
        if let Some(t) = self.compaction.in_flight() {
            return Err(LogError::CompactionInFlight {
                offset: t.start,
                end: t.end,
            });
        }
        let picked: Vec<u64> = self
            .cleanable_segments()
            .into_iter()
            .take_while(|s| s.next_offset <= end)
            .map(|s| s.base_offset)
            .collect();
        let (Some(&start), Some(&last)) = (picked.first(), picked.last()) else {
            return Ok(None);
        };
        let segs: Vec<PlanSegment<D>> = picked
            .iter()
            .map(|b| PlanSegment::new(self, &self.segments[b]))
            .collect();
        let token = Rc::new(Token {
            start,
            end: self.segments[&last].next_offset,
            swapping: Cell::new(false),
        });
        self.compaction.job = Some(token.clone());
        Ok(Some(CompactionJob {
            dir: self.dir.clone(),
            segs,
            dirty_from: dirty_from.max(start),
            // Positions in a segment are 32-bit; leave room for batches a rebuild enlarges.
            max_group_bytes: max_group_bytes.clamp(1, u64::from(u32::MAX) / 2),
            chunk: self.config.write_chunk_bytes,
            token,
        }))
    }

    /// Puts a job's new segments into the log in place of the old ones (see the module
    /// documentation); synchronous. Returns the swap to run next, or why not.
    pub fn finish_compaction(&mut self, w: CompactionWritten<D>) -> CompactionFinish<D> {
        if w.groups.is_empty() {
            return CompactionFinish::Nothing(w.stats);
        }
        if self.flush_in_flight && self.compaction.flush_manifest {
            // Its segment checkpoint, computed before, must not land after the swap. (Most
            // flushes carry none: only those completing a rolled segment.)
            return CompactionFinish::Busy(w);
        }
        let unchanged = self.failed.is_none()
            && w.groups.iter().flat_map(|g| &g.old).all(|o| {
                self.segments.get(&o.base_offset).is_some_and(|s| {
                    Rc::ptr_eq(&s.shared, &o.shared)
                        && s.is_sealed()
                        && s.size() == o.size
                        && s.index_files == IndexFiles::Complete
                }) && o.shared.file.borrow().is_some()
                    && o.shared.index.borrow().is_some()
            });
        if !unchanged {
            tracing::info!(
                start = w.stats.start_offset,
                end = w.stats.end_offset,
                "compaction abandoned: the log changed meanwhile"
            );
            return CompactionFinish::Swap(w.abandon());
        }
        let mut new_shared = Vec::with_capacity(w.groups.len());
        for g in &w.groups {
            for o in &g.old {
                self.segments.remove(&o.base_offset);
            }
            let n = &g.new;
            let chunk = self.config.write_chunk_bytes;
            let mut seg = Segment::new_empty(self.dir.clone(), chunk, n.base_offset, n.term);
            seg.name = n.name.clone();
            seg.next_offset = n.next_offset;
            seg.max_timestamp = n.max_timestamp;
            seg.first_timestamp = n.first_timestamp;
            seg.last_batch = n.last_batch;
            seg.on_disk = true;
            // Until the swap is done: never deleted, never in a checkpoint.
            seg.index_files = IndexFiles::Writing;
            *seg.shared.index.borrow_mut() = Some(n.index.clone());
            seg.set_file(n.file.clone());
            seg.appender = Appender::sealed(self.dir.clone(), chunk, n.size);
            new_shared.push((n.base_offset, seg.shared.clone()));
            self.segments.insert(n.base_offset, seg);
        }
        // Cached batches (and reads in flight that would cache old ones) are forgotten: the
        // log gets a new id in the cache.
        if let Some((cache, id)) = self.cache.take() {
            cache.remove_log(id);
            let id = cache.register();
            self.cache = Some((cache, id));
        }
        w.token.swapping.set(true);
        let before = self.manifest(self.committed_offset);
        let mut after = before.clone();
        after
            .segments
            .extend(w.groups.iter().map(|g| g.new.manifest_entry()));
        after.segments.sort_by_key(|s| s.base_offset);
        self.check_offsets();
        CompactionFinish::Swap(SwapJob {
            dir: w.dir,
            groups: w.groups,
            swap: Some(Box::new(Swap {
                before,
                after,
                new_shared,
            })),
            stats: w.stats,
            token: w.token,
        })
    }

    /// Records the swap's outcome. A failed swap fails the log (reopen to recover: it
    /// finishes or discards the swap).
    pub fn finish_swap(
        &mut self,
        r: Result<SwapDone<D::File>, LogError>,
    ) -> Result<CompactionStats, LogError> {
        let done = match r {
            Ok(done) => done,
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
        if !done.abandoned {
            for (base, shared) in &done.new_shared {
                if let Some(seg) = self
                    .segments
                    .get_mut(base)
                    .filter(|s| Rc::ptr_eq(&s.shared, shared))
                {
                    seg.index_files = IndexFiles::Complete;
                    // Give the descriptor back; reads reopen the file by its (new) name.
                    seg.shared.file.borrow_mut().take();
                }
            }
            self.compaction.clean_offset =
                self.compaction.clean_offset.max(done.stats.clean_offset);
        }
        self.compaction.job = None;
        let mut stats = done.stats;
        if done.abandoned {
            stats.segments_after = stats.segments_before;
            stats.bytes_after = stats.bytes_before;
            stats.batches_after = stats.batches_before;
        }
        Ok(stats)
    }

    /// Runs a whole compaction inline (plan, run, finish, swap): for tests and tools that
    /// hold the log. `None` when there was nothing to compact.
    pub async fn compact<C: Cleaner>(
        &mut self,
        cleaner: &mut C,
        dirty_from: u64,
        end: u64,
        max_group_bytes: u64,
    ) -> Result<Option<CompactionStats>, LogError> {
        let Some(job) = self.plan_compaction(dirty_from, end, max_group_bytes)? else {
            return Ok(None);
        };
        let written = job.run(cleaner).await?;
        match self.finish_compaction(written) {
            CompactionFinish::Nothing(_) => Ok(None),
            CompactionFinish::Busy(_) => Err(LogError::FlushInFlight),
            CompactionFinish::Swap(swap) => {
                let done = swap.run().await;
                self.finish_swap(done).map(Some)
            }
        }
    }
}

fn encode_checkpoint(offset: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(CHECKPOINT_MAGIC);
    v.extend_from_slice(&CHECKPOINT_VERSION.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    v
}

fn decode_checkpoint(b: &[u8]) -> Option<u64> {
    if b.len() < 20 || &b[..4] != CHECKPOINT_MAGIC {
        return None;
    }
    let version = u32::from_be_bytes(b[4..8].try_into().ok()?);
    let crc = u32::from_be_bytes(b[16..20].try_into().ok()?);
    if version != CHECKPOINT_VERSION || crc32c::crc32c(&b[..16]) != crc {
        return None;
    }
    Some(u64::from_be_bytes(b[8..16].try_into().ok()?))
}

/// Finishes or discards a compaction a crash interrupted (see the module documentation), and
/// reads the cleaner checkpoint. Runs first in [`PartitionLog::open`].
pub(crate) async fn recover<D: SegmentDir>(dir: &D, config: &LogConfig) -> Result<State, LogError> {
    let names = dir.list().await.map_err(io_err("(directory)", "list"))?;
    let mut changed = false;
    for name in names.iter().filter(|n| n.ends_with(CLEANED_SUFFIX)) {
        tracing::warn!(file = %name, "removing the output of an interrupted compaction");
        remove_if_exists(dir, name).await?;
        changed = true;
    }
    let segments: Vec<(u64, u64, &String)> = names
        .iter()
        .filter_map(|n| parse_segment_name(n).map(|(b, t)| (b, t, n)))
        .collect();
    for swap in names.iter().filter(|n| n.ends_with(SWAP_SUFFIX)) {
        let target = swap.strip_suffix(SWAP_SUFFIX).unwrap_or(swap);
        let Some((base, _)) = parse_segment_name(target) else {
            continue;
        };
        let file = dir
            .open_existing(swap)
            .await
            .map_err(io_err(swap, "open"))?;
        let size = file.size().await.map_err(io_err(swap, "size"))?;
        let mut r = BatchReader::new(
            &file,
            swap,
            0,
            base,
            size,
            config.recovery_read_bytes,
            config.max_batch_bytes,
        );
        let mut end = base;
        let mut bad = None;
        loop {
            match r.next().await {
                Ok(Some(_)) => end = r.expect,
                Ok(None) => break,
                Err(e) => {
                    bad = Some(e);
                    break;
                }
            }
        }
        file.close().await.map_err(io_err(swap, "close"))?;
        if let Some(e) = &bad {
            // Written and synced before it was renamed: only disk damage gets here. What it
            // covers replaces the old segments; recovery then deals with the damage.
            tracing::error!(file = %swap, error = %e, end, "a compaction swap file is damaged");
        }
        for (b, t, name) in segments
            .iter()
            .filter(|(b, _, _)| (base..end.max(base + 1)).contains(b))
        {
            remove_index_files(dir, *b, *t).await?;
            if name.as_str() != target {
                remove_if_exists(dir, name).await?;
            }
        }
        dir.rename(swap, target)
            .await
            .map_err(io_err(swap, "rename"))?;
        tracing::info!(segment = %target, end, "finished a compaction swap interrupted by a crash");
        changed = true;
    }
    if changed {
        dir.sync()
            .await
            .map_err(io_err("(directory)", "sync directory"))?;
    }
    let clean_offset = match read_small_file(dir, CLEANER_CHECKPOINT).await {
        Ok(Some(b)) => decode_checkpoint(&b).unwrap_or_else(|| {
            tracing::warn!(
                file = CLEANER_CHECKPOINT,
                "ignoring a damaged cleaner checkpoint"
            );
            0
        }),
        Ok(None) => 0,
        Err(e) => {
            tracing::warn!(file = CLEANER_CHECKPOINT, error = %e, "ignoring an unreadable cleaner checkpoint");
            0
        }
    };
    Ok(State {
        clean_offset,
        job: None,
        flush_manifest: false,
    })
}

#[cfg(test)]
mod tests;
