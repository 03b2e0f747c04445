//! Opening a partition log without reading what is known to be good.
//!
//! * Closed segments listed in the segment checkpoint ([`super::manifest`]) with their index
//!   files present are trusted with no I/O at all: their file is opened and their index
//!   loaded on first use ([`ensure_file`], [`load_index`]).
//! * Other closed segments are trusted if their index files are complete and consistent
//!   (two small reads); otherwise they are scanned whole, like the last segment.
//! * The last segment (and any segment without a usable index) is scanned from the end of its
//!   index files' coverage — a clean shutdown leaves an index covering everything, so only
//!   the tail page is read — to the end of the file, checking every batch (header bounds,
//!   magic, CRC-32C, record count, offsets following on).
//!
//! The durable log ends at the first bad byte that is not isolated damage: a torn or unwritten
//! end is cut there, and every later segment is deleted. That is safe because flushes sync
//! segments in offset order and acknowledge only after the sync, so nothing acknowledged can
//! lie after a torn write; index files and the checkpoint are written only after the bytes
//! they describe are durable, and suffix truncation removes them (durably) before it cuts.
//!
//! Damage is not always a torn end: a flipped bit in acknowledged data must not cost
//! everything after it. A scanned batch that fails verification but has intact framing and
//! is followed by a valid batch is kept and stepped over ([`super::scan`]'s `resync`):
//! reads refuse it (CORRUPT_MESSAGE) and serve everything around it, and it is reported in
//! [`RecoveryReport::damaged_batches`] and to the owner ([`PartitionLog::take_corruptions`]).
//! Segments trusted without a scan (from the checkpoint or their index files, the clean
//! restart) are not read at all: their damage is found by the reads, which verify every
//! batch. A cut below what the checkpoint last saw durable (acknowledged data: the damaged
//! batch's framing was broken, or it was the last one) is reported the same way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use super::appender::Appender;
use super::batch::{BatchError, BatchHeader, MAGIC_V2};
use super::corrupt::{corrupt, CorruptBatch, Corruptions};
use super::file::{read_small_file, SegmentDir, SegmentFile};
use super::index::{decode_files, IndexMeta, SegmentIndex, NO_TIMESTAMP};
use super::manifest::{self, ManifestSegment};
use super::scan::{scan_verify, ScanFrom};
use super::segment::{index_names, parse_file_name, FileKind, IndexFiles, Segment, SegmentShared};
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
    /// Batches verified by scanning (those covered by index files are not re-read).
    pub batches: usize,
    /// Bytes verified by scanning.
    pub scanned_bytes: u64,
    /// Closed segments trusted from the segment checkpoint (no I/O).
    pub trusted_segments: usize,
    /// Closed segments trusted from their index files.
    pub indexed_segments: usize,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub truncated: Option<TailTruncation>,
    /// Segments deleted because they followed the cut.
    pub deleted_segments: Vec<String>,
    /// Index files removed because their segment is gone.
    pub orphan_files: Vec<String>,
    /// Files in the directory that are not segments (left alone).
    pub ignored_files: Vec<String>,
    /// Damaged batches found by the scans and kept: isolated damage inside the data, not a
    /// torn end (reads refuse them).
    pub damaged_batches: Vec<CorruptBatch>,
}

/// Opens a closed segment's file on first use (never creating it).
pub(crate) async fn ensure_file<D: SegmentDir>(
    dir: &D,
    shared: &SegmentShared<D::File>,
    name: &str,
) -> Result<Rc<D::File>, LogError> {
    if let Some(f) = shared.file.borrow().clone() {
        return Ok(f);
    }
    let f = dir
        .open_existing(name)
        .await
        .map_err(io_err(name, "open"))?;
    let existing = shared.file.borrow().clone();
    match existing {
        // Another plan opened it meanwhile: use that handle.
        Some(other) => {
            let _ = f.close().await;
            Ok(other)
        }
        None => {
            let f = Rc::new(f);
            *shared.file.borrow_mut() = Some(f.clone());
            Ok(f)
        }
    }
}

/// Reads a segment's index file pair; `Ok(None)` when either is missing, `Err(reason)` when
/// they are unusable.
async fn read_index_files<D: SegmentDir>(
    dir: &D,
    base: u64,
    term: u64,
) -> Result<Option<(SegmentIndex, IndexMeta)>, String> {
    let (ix_name, tx_name) = index_names(base, term);
    let ix = read_small_file(dir, &ix_name)
        .await
        .map_err(|e| e.to_string())?;
    let tx = read_small_file(dir, &tx_name)
        .await
        .map_err(|e| e.to_string())?;
    let (Some(ix), Some(tx)) = (ix, tx) else {
        return Ok(None);
    };
    let (index, meta) = decode_files(&ix, &tx)?;
    if meta.base_offset != base {
        return Err(format!("index is for base offset {}", meta.base_offset));
    }
    Ok(Some((index, meta)))
}

/// The sparse index of a closed segment: from its index files when they describe it exactly,
/// else rebuilt by scanning the segment (logged; the files are rewritten by nobody — the
/// segment is immutable, so the scan is repeated only after a restart). With the damaged
/// batches the scan found: isolated ones are stepped over; damage it cannot step over ends
/// the index there (reads of what follows fail as corrupt, everything before is served).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn load_index<D: SegmentDir>(
    dir: &D,
    file: &D::File,
    name: &str,
    base: u64,
    term: u64,
    next_offset: u64,
    size: u64,
    read_bytes: usize,
    max_batch_bytes: usize,
    interval: u32,
) -> Result<(SegmentIndex, Vec<CorruptBatch>), LogError> {
    match read_index_files(dir, base, term).await {
        Ok(Some((ix, meta))) if meta.size == size && meta.next_offset == next_offset => {
            return Ok((ix, Vec::new()))
        }
        Ok(Some((_, meta))) => tracing::warn!(segment = %name, ?meta, size, next_offset,
            "index files do not match the segment; rebuilding the index"),
        Ok(None) => tracing::warn!(segment = %name, "index files missing; rebuilding the index"),
        Err(why) => {
            tracing::warn!(segment = %name, %why, "index files unusable; rebuilding the index")
        }
    }
    let s = scan_verify(
        file,
        name,
        base,
        ScanFrom::start(base),
        size,
        read_bytes,
        max_batch_bytes,
        interval,
    )
    .await?;
    let mut damaged = s.damaged;
    let mut index = s.index;
    match s.corrupt {
        Some(reason) if s.end < size && s.next_offset < next_offset => {
            tracing::warn!(segment = %name, pos = s.end, offset = s.next_offset, ?reason,
                "closed segment damaged: its index stops there");
            damaged.push(corrupt(name, s.end, s.next_offset, format!("{reason:?}")));
            // Damage at the very start: reads still need an entry to walk from (and fail).
            index.note_batch(0, 0, NO_TIMESTAMP, interval);
        }
        tail if tail.is_some() || s.end != size || s.next_offset != next_offset => {
            return Err(LogError::ReadMismatch {
                segment: name.to_string(),
                pos: s.end,
                reason: format!(
                    "closed segment does not scan cleanly: {tail:?}, end {} of {size}, next offset {} of {next_offset}",
                    s.end, s.next_offset
                ),
            });
        }
        _ => {}
    }
    Ok((index, damaged))
}

impl ScanFrom {
    pub(crate) fn start(base: u64) -> Self {
        ScanFrom {
            pos: 0,
            next_offset: base,
            index: SegmentIndex::default(),
            max_timestamp: NO_TIMESTAMP,
            first_timestamp: NO_TIMESTAMP,
            last_batch: None,
        }
    }
}

/// Checks that the batch an index says ends its coverage is there (header fields and stored
/// CRC): the index belongs to this file.
async fn last_batch_matches<F: SegmentFile>(file: &F, meta: &IndexMeta) -> bool {
    let Some(lb) = meta.last_batch else {
        return meta.size == 0;
    };
    let Ok(b) = file.read_at(lb.pos, super::batch::BATCH_HEADER_LEN).await else {
        return false;
    };
    let Ok(h) = BatchHeader::decode(&b) else {
        return false;
    };
    h.magic == MAGIC_V2
        && h.base_offset == lb.base_offset as i64
        && h.total_len() == lb.len as usize
        && h.crc == lb.crc
}

struct Listed {
    term: u64,
    name: String,
    has_index: bool,
}

impl<D: SegmentDir> PartitionLog<D> {
    /// Opens the log in `dir` (empty or not), recovering it (see the module documentation).
    /// Segments that are scanned are fdatasynced, so data a killed process left unsynced
    /// counts as durable only once it is.
    pub async fn open(dir: D, mut config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        config.sanitize();
        // One write is one I/O: never above what the device takes at once.
        config.write_chunk_bytes = config.write_chunk_bytes.min(dir.max_io_bytes());
        // A compaction interrupted by a crash: finish its swap or drop its leftovers first.
        let compaction = super::compact::recover(&dir, &config).await?;
        let mut report = RecoveryReport::default();
        let corruptions = Corruptions::default();
        let mut found: BTreeMap<u64, Listed> = BTreeMap::new();
        let mut index_files: HashSet<(u64, u64, FileKind)> = HashSet::new();
        let mut index_names_found: Vec<(String, u64, u64)> = Vec::new();
        let mut have_manifest = false;
        let names = dir.list().await.map_err(io_err("(directory)", "list"))?;
        for name in names {
            match parse_file_name(&name) {
                Some((base, term, FileKind::Segment)) => {
                    if let Some(other) = found.get(&base) {
                        let other = other.name.clone();
                        let (first, second) = if other < name {
                            (other, name)
                        } else {
                            (name, other)
                        };
                        return Err(LogError::DuplicateSegment {
                            base,
                            first,
                            second,
                        });
                    }
                    found.insert(
                        base,
                        Listed {
                            term,
                            name,
                            has_index: false,
                        },
                    );
                }
                Some((base, term, kind)) => {
                    index_files.insert((base, term, kind));
                    index_names_found.push((name, base, term));
                }
                None if name == manifest::FILE => have_manifest = true,
                None => report.ignored_files.push(name),
            }
        }
        report.ignored_files.sort();
        for l in found.iter_mut() {
            let (base, l) = l;
            l.has_index = index_files.contains(&(*base, l.term, FileKind::Index))
                && index_files.contains(&(*base, l.term, FileKind::TimeIndex));
        }
        // Index files whose segment is gone (a deletion interrupted between the two).
        for (name, base, term) in index_names_found {
            if found.get(&base).is_none_or(|l| l.term != term) {
                dir.remove(&name).await.map_err(io_err(&name, "remove"))?;
                report.orphan_files.push(name);
            }
        }
        let manifest = if have_manifest {
            manifest::read(&dir).await
        } else {
            None
        };
        let trusted: HashMap<u64, ManifestSegment> = manifest
            .iter()
            .flat_map(|m| m.segments.iter().map(|s| (s.base_offset, *s)))
            .collect();

        let mut segments: BTreeMap<u64, Segment<D>> = BTreeMap::new();
        let mut expected: Option<u64> = None;
        let mut cut = false;
        let last_base = found.keys().next_back().copied();
        for (base, listed) in found {
            let Listed {
                term,
                name,
                has_index,
            } = listed;
            if cut {
                remove_segment_files(&dir, base, term, &name).await?;
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
                remove_segment_files(&dir, base, term, &name).await?;
                report.deleted_segments.push(name);
                cut = true;
                continue;
            }
            let is_last = Some(base) == last_base;
            // 1. Closed, listed in the checkpoint: no I/O.
            if let Some(m) = trusted.get(&base).filter(|m| m.term == term) {
                if !is_last && has_index {
                    segments.insert(base, closed_segment(&dir, &config, m, &name, None));
                    report.trusted_segments += 1;
                    expected = Some(m.next_offset);
                    continue;
                }
            }
            let file = dir.open(&name).await.map_err(io_err(&name, "open"))?;
            let size = file.size().await.map_err(io_err(&name, "size"))?;
            // The last segment's prefix from a clean close, else its index files.
            let from_manifest = manifest
                .as_ref()
                .and_then(|m| m.active.as_ref())
                .filter(|a| is_last && a.term == term && a.meta.base_offset == base)
                .map(|a| (a.index.clone(), a.meta));
            let files = if from_manifest.is_some() {
                from_manifest
            } else if has_index {
                match read_index_files(&dir, base, term).await {
                    Ok(Some(pair)) => Some(pair),
                    Ok(None) => None,
                    Err(why) => {
                        tracing::warn!(segment = %name, %why, "ignoring unusable index files");
                        None
                    }
                }
            } else {
                None
            };
            let files = match files {
                Some((ix, meta)) if meta.size <= size && last_batch_matches(&file, &meta).await => {
                    Some((ix, meta))
                }
                Some(_) => {
                    tracing::warn!(segment = %name, "index files do not match the segment; scanning it");
                    None
                }
                None => None,
            };
            // 2. Closed, with complete index files: trusted after two small reads.
            if let (Some((ix, meta)), false) = (&files, is_last) {
                if meta.complete {
                    let m = ManifestSegment {
                        base_offset: base,
                        term,
                        size: meta.size,
                        next_offset: meta.next_offset,
                        max_timestamp: meta.max_timestamp,
                        first_timestamp: meta.first_timestamp,
                    };
                    // Closed segments keep no descriptor: reads open them on demand.
                    file.close().await.map_err(io_err(&name, "close"))?;
                    let seg = closed_segment(&dir, &config, &m, &name, Some(ix.clone()));
                    segments.insert(base, seg);
                    report.indexed_segments += 1;
                    expected = Some(meta.next_offset);
                    continue;
                }
            }
            // 3. Scan from the end of the index coverage (or the start).
            let (from, index_complete) = match files {
                Some((index, meta)) => (
                    ScanFrom {
                        pos: meta.size,
                        next_offset: meta.next_offset,
                        index,
                        max_timestamp: meta.max_timestamp,
                        first_timestamp: meta.first_timestamp,
                        last_batch: meta.last_batch,
                    },
                    meta.complete,
                ),
                None => (ScanFrom::start(base), false),
            };
            let from_pos = from.pos;
            let s = scan_verify(
                &file,
                &name,
                base,
                from,
                size,
                config.recovery_read_bytes,
                config.max_batch_bytes,
                config.index_interval_bytes,
            )
            .await?;
            report.batches += s.batches;
            report.scanned_bytes += s.end - from_pos;
            report.damaged_batches.extend(s.damaged.iter().cloned());
            let torn = s.corrupt.is_some();
            if let Some(reason) = s.corrupt.clone() {
                tracing::warn!(segment = %name, pos = s.end, size, ?reason, "cutting corrupt log tail");
                if let Some(end) = manifest.as_ref().map(|m| m.durable_end) {
                    if end > s.next_offset {
                        // Not a torn write: the checkpoint saw this durable (acknowledged).
                        corruptions.note(&corrupt(
                            &name,
                            s.end,
                            s.next_offset,
                            format!("{reason:?}; the log is cut here, below the durable end {end} of the segment checkpoint"),
                        ));
                    }
                }
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
            // Only bytes found beyond what an index vouches for can be unsynced leftovers.
            if s.batches > 0 || torn || from_pos == 0 {
                file.fdatasync().await.map_err(io_err(&name, "fdatasync"))?;
            }
            let appender = Appender::new(dir.clone(), config.write_chunk_bytes, s.end, &s.tail);
            let mut seg = Segment::new_empty(dir.clone(), config.write_chunk_bytes, base, term);
            seg.name = name;
            seg.next_offset = s.next_offset;
            seg.max_timestamp = s.max_timestamp;
            seg.first_timestamp = s.first_timestamp;
            seg.last_batch = s.last_batch;
            seg.on_disk = true;
            // Scanned: the index is rebuilt or extended, so its files are (re)written by the
            // next flush once the segment is sealed. Files that call this (now active)
            // segment complete must go: after more appends, a roll and a crash they would
            // vouch for a stale size.
            if index_complete {
                remove_index_files(&dir, base, term).await?;
            }
            seg.index_files = IndexFiles::Missing;
            *seg.shared.index.borrow_mut() = Some(s.index);
            seg.set_file(Rc::new(file));
            seg.appender = appender;
            segments.insert(base, seg);
            expected = Some(s.next_offset);
        }
        if !report.deleted_segments.is_empty() || !report.orphan_files.is_empty() {
            dir.sync()
                .await
                .map_err(io_err("(directory)", "sync directory"))?;
        }
        // The last segment is the active one: it needs its index and its tail page (a closed
        // segment becomes the last when the ones after it were cut away).
        let n = segments.len();
        for seg in segments.values_mut().take(n.saturating_sub(1)) {
            seg.appender.seal();
            // Closed and durable (scanned, cut and synced above): no descriptor kept, as for
            // the trusted ones. Its index files are written from the in-memory index.
            seg.shared.file.borrow_mut().take();
        }
        if let Some(seg) = segments.values_mut().next_back() {
            let damaged = activate(&dir, &config, seg).await?;
            report.damaged_batches.extend(damaged);
        }
        corruptions.note_all(&report.damaged_batches);
        let log_start = segments.values().next().map_or(0, |s| s.base_offset);
        let next_offset = expected.unwrap_or(0);
        report.segments = segments.len();
        report.log_start_offset = log_start;
        report.log_end_offset = next_offset;
        if let Some(m) = &manifest {
            if m.durable_end > next_offset {
                tracing::error!(
                    checkpoint_end = m.durable_end,
                    log_end = next_offset,
                    "recovered log ends before what the segment checkpoint saw durable"
                );
            }
        }
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
            dir_sync_pending: false,
            waiters: BTreeMap::new(),
            failed: None,
            disk_full: None,
            cache: None,
            compaction,
            corruptions,
        };
        log.check_offsets();
        Ok((log, report))
    }
}

/// A closed segment known from the checkpoint or its index files.
fn closed_segment<D: SegmentDir>(
    dir: &D,
    config: &LogConfig,
    m: &ManifestSegment,
    name: &str,
    index: Option<SegmentIndex>,
) -> Segment<D> {
    let mut seg = Segment::new_empty(dir.clone(), config.write_chunk_bytes, m.base_offset, m.term);
    seg.name = name.to_string();
    seg.next_offset = m.next_offset;
    seg.max_timestamp = m.max_timestamp;
    seg.first_timestamp = m.first_timestamp;
    seg.on_disk = true;
    seg.index_files = IndexFiles::Complete;
    *seg.shared.index.borrow_mut() = index;
    seg.appender = Appender::sealed(dir.clone(), config.write_chunk_bytes, m.size);
    seg
}

/// Makes a segment the active one: index loaded, tail page in memory, not sealed.
async fn activate<D: SegmentDir>(
    dir: &D,
    config: &LogConfig,
    seg: &mut Segment<D>,
) -> Result<Vec<CorruptBatch>, LogError> {
    if !seg.appender.is_sealed() {
        return Ok(Vec::new());
    }
    let mut damaged = Vec::new();
    seg.index_files = IndexFiles::Missing;
    remove_index_files(dir, seg.base_offset, seg.term).await?;
    let file = ensure_file(dir, &seg.shared, &seg.name).await?;
    let size = seg.size();
    if seg.shared.index.borrow().is_none() {
        let (ix, found) = load_index(
            dir,
            &*file,
            &seg.name,
            seg.base_offset,
            seg.term,
            seg.next_offset,
            size,
            config.recovery_read_bytes,
            config.max_batch_bytes,
            config.index_interval_bytes,
        )
        .await?;
        damaged = found;
        *seg.shared.index.borrow_mut() = Some(ix);
    }
    let tail_start = super::file::align_down(size);
    let tail = file
        .read_at(tail_start, (size - tail_start) as usize)
        .await
        .map_err(io_err(&seg.name, "read tail page"))?;
    if tail.len() as u64 != size - tail_start {
        return Err(LogError::ReadMismatch {
            segment: seg.name.clone(),
            pos: tail_start,
            reason: format!("tail page: {} bytes", tail.len()),
        });
    }
    // The last batch is needed for the index files written at the next clean close.
    if seg.last_batch.is_none() && size > 0 {
        let lb = seg
            .shared
            .index
            .borrow()
            .as_ref()
            .and_then(|ix| ix.last())
            .expect("a non-empty segment has an index entry");
        let src = super::scan::FileSource {
            file: &*file,
            name: &seg.name,
        };
        let w = super::scan::walk_to(
            &src,
            &seg.name,
            u64::from(lb.pos),
            seg.base_offset + u64::from(lb.rel_offset),
            size,
            seg.next_offset,
            config.max_batch_bytes,
        )
        .await?
        .map_err(|()| LogError::ReadMismatch {
            segment: seg.name.clone(),
            pos: u64::from(lb.pos),
            reason: "the index's last entry does not lead to the segment's end".into(),
        })?;
        seg.last_batch = w.last;
    }
    seg.appender = Appender::new(dir.clone(), config.write_chunk_bytes, size, &tail);
    Ok(damaged)
}

/// Removes a segment's index files, then its data file (an index without its segment would
/// be picked up by a later segment of the same name).
pub(crate) async fn remove_segment_files<D: SegmentDir>(
    dir: &D,
    base: u64,
    term: u64,
    name: &str,
) -> Result<(), LogError> {
    remove_index_files(dir, base, term).await?;
    dir.remove(name).await.map_err(io_err(name, "remove"))
}

/// Removes a segment's index files (missing ones are fine).
pub(crate) async fn remove_index_files<D: SegmentDir>(
    dir: &D,
    base: u64,
    term: u64,
) -> Result<(), LogError> {
    let (ix, tx) = index_names(base, term);
    for n in [&ix, &tx] {
        match dir.remove(n).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(n, "remove")(e)),
        }
    }
    Ok(())
}
