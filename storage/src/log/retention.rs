//! Retention primitives for the broker's background task: rolling by age, and deleting whole
//! closed segments by time, by size, or below the log start.
//!
//! Every deletion has two steps so appends never wait for it:
//! 1. a synchronous step on the log ([`PartitionLog::apply_retention`],
//!    [`PartitionLog::detach_below_start`]) picks the segments, moves the log start past them
//!    and *detaches* them: they leave the log's segment map (reads of their offsets are out of
//!    range from then on) and travel in a [`SegmentDeletion`];
//! 2. [`SegmentDeletion::run`] removes their files — index files first, then the segment —
//!    and syncs the directory, without borrowing the log (a read already planned on one of
//!    them keeps its open handle and still completes).
//!
//! Never deleted: the active segment; a segment with bytes not yet durable or index files
//! being written; a segment whose successor has no file on disk yet (the files must always
//! carry the log end across a restart). A crash before [`SegmentDeletion::run`] finishes
//! leaves some detached segments on disk: after a restart the log simply starts lower and
//! the next retention pass deletes them again.

use std::rc::Rc;

use super::file::{SegmentDir, SegmentFile};
use super::recovery::remove_segment_files;
use super::segment::IndexFiles;
use super::{io_err, LogError, PartitionLog};

/// One segment taken out of the log, waiting for its files to be removed.
struct Detached<F> {
    name: String,
    base_offset: u64,
    term: u64,
    on_disk: bool,
    file: Option<Rc<F>>,
}

/// Files of detached segments to remove (see the module documentation).
#[must_use = "the segments are detached from the log; run() removes their files"]
pub struct SegmentDeletion<D: SegmentDir> {
    dir: D,
    segments: Vec<Detached<D::File>>,
}

impl<D: SegmentDir> SegmentDeletion<D> {
    /// Names of the segments to delete, oldest first.
    pub fn segment_names(&self) -> Vec<&str> {
        self.segments.iter().map(|s| s.name.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Removes the files, oldest segment first (so a partial outcome leaves a suffix), and
    /// syncs the directory. Returns the number of segment files removed.
    pub async fn run(self) -> Result<usize, LogError> {
        let mut removed = 0;
        for s in self.segments {
            if s.on_disk || s.file.is_some() {
                match remove_segment_files(&self.dir, s.base_offset, s.term, &s.name).await {
                    Ok(()) => removed += 1,
                    Err(LogError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            // A read in flight may still hold the file; it is closed when that read drops it.
            if let Some(file) = s.file.and_then(|f| Rc::try_unwrap(f).ok()) {
                file.close().await.map_err(io_err(&s.name, "close"))?;
            }
        }
        if removed > 0 {
            self.dir
                .sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))?;
        }
        Ok(removed)
    }
}

/// What [`PartitionLog::apply_retention`] decided.
pub struct RetentionOutcome<D: SegmentDir> {
    /// The log start after the step (moved past the detached segments).
    pub log_start_offset: u64,
    /// Segments deleted for their age, and for the log's size.
    pub by_time: usize,
    pub by_size: usize,
    /// The files to remove; `None` when nothing was detached.
    pub deletion: Option<SegmentDeletion<D>>,
}

impl<D: SegmentDir> PartitionLog<D> {
    /// Rolls the active segment if it is non-empty and older than `segment_ms` (measured from
    /// its first batch's max timestamp, or — when batches carry none — from the first call
    /// that saw it non-empty). Returns whether it rolled; then schedule a flush: it creates
    /// the new segment's file and writes the rolled segment's index files.
    pub fn roll_if_due(&mut self, now_ms: i64) -> bool {
        let Some(segment_ms) = self.config.segment_ms else {
            return false;
        };
        if self.failed.is_some() {
            return false;
        }
        let Some(seg) = self.segments.values_mut().next_back() else {
            return false;
        };
        if seg.is_empty() {
            return false;
        }
        let since = if seg.first_timestamp >= 0 {
            seg.first_timestamp
        } else {
            *seg.first_seen_ms.get_or_insert(now_ms)
        };
        if now_ms.saturating_sub(since) < segment_ms as i64 {
            return false;
        }
        let term = seg.term;
        self.roll(term);
        true
    }

    /// Rolls the active segment when every record in it is past `retention_ms` (its largest
    /// timestamp is older than `now_ms - retention_ms`), so that the next retention step can
    /// delete it: Kafka does the same, so expired data does not outlive its retention just
    /// because its segment is still the active one. Returns whether it rolled (then schedule a
    /// flush, as for [`Self::roll_if_due`]).
    pub fn roll_if_expired(&mut self, now_ms: i64, retention_ms: u64) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let Some(seg) = self.segments.values().next_back() else {
            return false;
        };
        if seg.is_empty() || seg.max_timestamp < 0 {
            return false;
        }
        if now_ms.saturating_sub(seg.max_timestamp) <= retention_ms as i64 {
            return false;
        }
        let term = seg.term;
        self.roll(term);
        true
    }

    /// Index of the segments (in offset order) that may be detached, oldest first: the
    /// longest prefix of closed, durable segments whose successor has a file.
    fn deletable_prefix(&self) -> usize {
        let segs: Vec<_> = self.segments.values().collect();
        let mut n = 0;
        while n + 1 < segs.len() {
            let (s, next) = (segs[n], segs[n + 1]);
            let durable =
                s.appender.committed().0 == s.size() && s.next_offset <= self.committed_offset;
            if !s.is_sealed() || !durable || s.index_files == IndexFiles::Writing || !next.on_disk {
                break;
            }
            n += 1;
        }
        n
    }

    /// Detaches the first `n` segments and moves the log start past them.
    fn detach_first(&mut self, n: usize) -> Option<SegmentDeletion<D>> {
        if n == 0 {
            return None;
        }
        let bases: Vec<u64> = self.segments.keys().take(n).copied().collect();
        let mut out = Vec::with_capacity(n);
        for base in bases {
            let seg = self.segments.remove(&base).expect("listed segment");
            let file = seg.shared.file.borrow_mut().take();
            out.push(Detached {
                name: seg.name.clone(),
                base_offset: seg.base_offset,
                term: seg.term,
                on_disk: seg.on_disk,
                file,
            });
        }
        let first = self
            .segments
            .values()
            .next()
            .expect("the active segment stays")
            .base_offset;
        self.log_start = self.log_start.max(first);
        self.uncache(0, first);
        self.check_offsets();
        Some(SegmentDeletion {
            dir: self.dir.clone(),
            segments: out,
        })
    }

    /// Detaches every segment wholly below the log start (see [`Self::advance_log_start`]);
    /// run the returned deletion to remove their files.
    pub fn detach_below_start(&mut self) -> Option<SegmentDeletion<D>> {
        let max = self.deletable_prefix();
        let n = self
            .segments
            .values()
            .take(max)
            .take_while(|s| s.next_offset <= self.log_start)
            .count();
        self.detach_first(n)
    }

    /// Retention (Kafka's `retention.ms` / `retention.bytes`, `None` = unlimited): detaches
    /// closed segments from the oldest while the segment's largest timestamp is older than
    /// `now_ms - retention_ms`, or while the log without it is still at least
    /// `retention_bytes` big; moves the log start past them. Synchronous and I/O-free; run
    /// the returned [`SegmentDeletion`] to remove the files. Persisting the log start is not
    /// needed: the deleted files are the record.
    pub fn apply_retention(
        &mut self,
        now_ms: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
    ) -> RetentionOutcome<D> {
        self.apply_retention_below(now_ms, retention_ms, retention_bytes, u64::MAX)
    }

    /// [`Self::apply_retention`], deleting only segments that end at or below `limit` (the
    /// broker passes the start of the Raft log: retention never removes Raft entries).
    pub fn apply_retention_below(
        &mut self,
        now_ms: i64,
        retention_ms: Option<u64>,
        retention_bytes: Option<u64>,
        limit: u64,
    ) -> RetentionOutcome<D> {
        let max = if self.failed.is_some() {
            0
        } else {
            let n = self.deletable_prefix();
            self.segments
                .values()
                .take(n)
                .take_while(|s| s.next_offset <= limit)
                .count()
        };
        let mut size = self.size_bytes();
        let (mut by_time, mut by_size) = (0, 0);
        for seg in self.segments.values().take(max) {
            let expired = retention_ms.is_some_and(|ms| {
                seg.max_timestamp >= 0 && seg.max_timestamp < now_ms.saturating_sub(ms as i64)
            });
            let oversize = retention_bytes.is_some_and(|b| size - seg.size() >= b);
            if expired {
                by_time += 1;
            } else if oversize {
                by_size += 1;
            } else {
                break;
            }
            size -= seg.size();
        }
        let deletion = self.detach_first(by_time + by_size);
        if let Some(d) = &deletion {
            tracing::info!(segments = ?d.segment_names(), by_time, by_size,
                log_start = self.log_start, "retention");
        }
        RetentionOutcome {
            log_start_offset: self.log_start,
            by_time,
            by_size,
            deletion,
        }
    }
}
