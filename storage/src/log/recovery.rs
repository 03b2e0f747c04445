//! Opening a partition log: list the segments, scan every batch (header bounds, magic,
//! CRC-32C, record count, offsets following on), cut a torn or corrupt tail, rebuild the
//! in-memory index.
//!
//! The durable log is the longest valid prefix: the first bad byte anywhere ends it, and every
//! later segment is deleted. That is safe because flushes sync segments in offset order and
//! acknowledge only after the sync, so nothing acknowledged can lie after a bad byte.
//!
//! Scanning reads every byte of every segment (no checkpoint yet); see the crate README.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::Bytes;

use super::appender::Appender;
use super::batch::{check_first, BatchError};
use super::file::{align_down, align_up, SegmentDir, SegmentFile};
use super::segment::{parse_segment_name, BatchEntry, Segment};
use super::{io_err, LogConfig, LogError, PartitionLog};

/// Why the log was cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorruptTail {
    /// A batch failed validation (a torn write shows up as `Incomplete` or `ShortHeader`).
    Batch(BatchError),
    /// A valid batch with the wrong base offset.
    OffsetMismatch { expected: u64, found: i64 },
    /// The segment does not start where the previous one ended.
    SegmentGap { expected: u64, base_offset: u64 },
}

/// Where the log was cut, precisely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailTruncation {
    pub segment: String,
    /// The file was truncated to this length (0 for a deleted segment).
    pub file_pos: u64,
    /// The file's length before.
    pub file_size: u64,
    pub reason: CorruptTail,
}

/// What [`PartitionLog::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub batches: usize,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub truncated: Option<TailTruncation>,
    /// Segments deleted because they followed the cut.
    pub deleted_segments: Vec<String>,
    /// Files in the directory that are not segments (left alone).
    pub ignored_files: Vec<String>,
}

struct Scanned {
    batches: Vec<BatchEntry>,
    end: u64,
    next_offset: u64,
    tail: Bytes,
    corrupt: Option<CorruptTail>,
}

/// Scans one segment file from the start.
async fn scan<F: SegmentFile>(
    file: &F,
    name: &str,
    base_offset: u64,
    size: u64,
    config: &LogConfig,
) -> Result<Scanned, LogError> {
    let mut batches = Vec::new();
    let mut next = base_offset;
    let mut pos = 0u64;
    // `window` holds the file's bytes from `win_pos`.
    let mut win_pos = 0u64;
    let mut window = Bytes::new();
    let corrupt = loop {
        if pos == size {
            break None;
        }
        let off = (pos - win_pos) as usize;
        let avail = &window[off.min(window.len())..];
        match check_first(avail, config.max_batch_bytes) {
            Ok(h) => {
                if h.base_offset != next as i64 {
                    break Some(CorruptTail::OffsetMismatch {
                        expected: next,
                        found: h.base_offset,
                    });
                }
                let len = h.total_len() as u64;
                batches.push(BatchEntry {
                    base_offset: next,
                    last_offset: h.last_offset() as u64,
                    pos,
                    len: len as u32,
                    epoch: h.partition_leader_epoch,
                });
                next = h.last_offset() as u64 + 1;
                pos += len;
            }
            Err(e @ (BatchError::ShortHeader { .. } | BatchError::Incomplete { .. }))
                if win_pos + (window.len() as u64) < size =>
            {
                // The window ends before the file does: read on from `pos`.
                let need = match e {
                    BatchError::Incomplete { total, .. } => total,
                    _ => 0,
                };
                let len = config.recovery_read_bytes.max(need) as u64;
                let len = len.min(size - pos) as usize;
                window = file.read_at(pos, len).await.map_err(io_err(name, "read"))?;
                win_pos = pos;
                if window.is_empty() {
                    break Some(CorruptTail::Batch(e));
                }
            }
            Err(e) => {
                // Zero padding of the tail page after the last batch is a clean end.
                let rest = size - pos;
                if size <= align_up(pos) {
                    let rest_bytes = if (avail.len() as u64) >= rest {
                        Bytes::copy_from_slice(&avail[..rest as usize])
                    } else {
                        file.read_at(pos, rest as usize)
                            .await
                            .map_err(io_err(name, "read"))?
                    };
                    if rest_bytes.iter().all(|&b| b == 0) {
                        break None;
                    }
                }
                break Some(CorruptTail::Batch(e));
            }
        }
    };
    let tail_start = align_down(pos);
    let tail = if tail_start >= win_pos && pos <= win_pos + window.len() as u64 {
        window.slice((tail_start - win_pos) as usize..(pos - win_pos) as usize)
    } else {
        file.read_at(tail_start, (pos - tail_start) as usize)
            .await
            .map_err(io_err(name, "read tail page"))?
    };
    Ok(Scanned {
        batches,
        end: pos,
        next_offset: next,
        tail,
        corrupt,
    })
}

impl<D: SegmentDir> PartitionLog<D> {
    /// Opens the log in `dir` (empty or not), recovering it. Every segment is fdatasynced, so
    /// data a killed process left in the page cache counts as durable only once it is.
    pub async fn open(dir: D, config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        let mut report = RecoveryReport::default();
        let mut found: BTreeMap<u64, (u64, String)> = BTreeMap::new();
        let names = dir.list().await.map_err(io_err("(directory)", "list"))?;
        for name in names {
            match parse_segment_name(&name) {
                Some((base, term)) => {
                    if let Some((_, other)) = found.get(&base) {
                        let (first, second) = if *other < name {
                            (other.clone(), name)
                        } else {
                            (name, other.clone())
                        };
                        return Err(LogError::DuplicateSegment {
                            base,
                            first,
                            second,
                        });
                    }
                    found.insert(base, (term, name));
                }
                None => report.ignored_files.push(name),
            }
        }
        report.ignored_files.sort();

        let mut segments = BTreeMap::new();
        let mut expected: Option<u64> = None;
        let mut cut = false;
        for (base, (term, name)) in found {
            if cut {
                dir.remove(&name).await.map_err(io_err(&name, "remove"))?;
                report.deleted_segments.push(name);
                continue;
            }
            if let Some(e) = expected.filter(|&e| e != base) {
                report.truncated = Some(TailTruncation {
                    segment: name.clone(),
                    file_pos: 0,
                    file_size: 0,
                    reason: CorruptTail::SegmentGap {
                        expected: e,
                        base_offset: base,
                    },
                });
                dir.remove(&name).await.map_err(io_err(&name, "remove"))?;
                report.deleted_segments.push(name);
                cut = true;
                continue;
            }
            let file = dir.open(&name).await.map_err(io_err(&name, "open"))?;
            let size = file.size().await.map_err(io_err(&name, "size"))?;
            let s = scan(&file, &name, base, size, &config).await?;
            if let Some(reason) = s.corrupt {
                tracing::warn!(segment = %name, pos = s.end, size, ?reason, "cutting corrupt log tail");
                file.truncate(s.end)
                    .await
                    .map_err(io_err(&name, "truncate"))?;
                report.truncated = Some(TailTruncation {
                    segment: name.clone(),
                    file_pos: s.end,
                    file_size: size,
                    reason,
                });
                cut = true;
            }
            file.fdatasync().await.map_err(io_err(&name, "fdatasync"))?;
            report.batches += s.batches.len();
            let appender = Appender::new(dir.clone(), config.write_chunk_bytes, s.end, &s.tail);
            segments.insert(
                base,
                Segment {
                    base_offset: base,
                    term,
                    name,
                    file: Some(Rc::new(file)),
                    batches: s.batches,
                    appender,
                },
            );
            expected = Some(s.next_offset);
        }
        if !report.deleted_segments.is_empty() {
            dir.sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))?;
        }
        // The last segment is the active one and keeps its tail page in memory.
        let n = segments.len();
        for seg in segments.values_mut().take(n.saturating_sub(1)) {
            seg.appender.seal();
        }
        let log_start = segments.values().next().map_or(0, |s: &Segment<D>| {
            s.batches.first().map_or(s.base_offset, |b| b.base_offset)
        });
        let next_offset = expected.unwrap_or(0);
        report.segments = segments.len();
        report.log_start_offset = log_start;
        report.log_end_offset = next_offset;
        if report.truncated.is_some() || !report.deleted_segments.is_empty() {
            tracing::warn!(?report, "partition log recovered with a cut");
        }
        let log = PartitionLog {
            dir,
            config,
            segments,
            log_start,
            next_offset,
            stable_offset: next_offset,
            committed_offset: next_offset,
            flush_in_flight: false,
            waiters: BTreeMap::new(),
            failed: None,
        };
        log.check_offsets();
        Ok((log, report))
    }
}
