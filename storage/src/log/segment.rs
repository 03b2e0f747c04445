//! One segment: a file named after its base offset and the Raft term it was created in, its
//! sparse index ([`super::index`]) and its appender. A closed segment keeps no per-batch
//! state: its metadata (offsets, size, timestamps), and — once loaded — its sparse index.

use std::cell::RefCell;
use std::rc::Rc;

use super::appender::Appender;
use super::file::SegmentDir;
use super::index::{IndexMeta, LastBatch, SegmentIndex, NO_TIMESTAMP};

/// Segment file names: `{base_offset:020}-{term}.log`.
pub const SEGMENT_SUFFIX: &str = ".log";

pub fn segment_name(base_offset: u64, term: u64) -> String {
    format!("{base_offset:020}-{term}{SEGMENT_SUFFIX}")
}

/// `(base_offset, term)` of a segment file name; `None` for any other file.
pub fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
    let (base, term) = stem.split_once('-')?;
    if base.len() != 20 || !base.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if term.is_empty() || !term.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base.parse().ok()?, term.parse().ok()?))
}

/// The index files of a segment: `{base:020}-{term}.index` and `.timeindex`.
pub const INDEX_SUFFIX: &str = ".index";
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

pub fn index_names(base_offset: u64, term: u64) -> (String, String) {
    (
        format!("{base_offset:020}-{term}{INDEX_SUFFIX}"),
        format!("{base_offset:020}-{term}{TIME_INDEX_SUFFIX}"),
    )
}

/// What a file in a partition directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Segment,
    Index,
    TimeIndex,
}

/// `(base_offset, term, kind)` of a segment or index file name; `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<(u64, u64, FileKind)> {
    for (suffix, kind) in [
        (SEGMENT_SUFFIX, FileKind::Segment),
        (INDEX_SUFFIX, FileKind::Index),
        (TIME_INDEX_SUFFIX, FileKind::TimeIndex),
    ] {
        if let Some(stem) = name.strip_suffix(suffix) {
            let (b, t) = parse_segment_name(&format!("{stem}{SEGMENT_SUFFIX}"))?;
            return Some((b, t, kind));
        }
    }
    None
}

/// Whether a sealed segment's index files are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexFiles {
    /// Not written (or not known to be complete).
    Missing,
    /// A flush job is writing them.
    Writing,
    /// Written and describing the whole (sealed) segment.
    Complete,
}

/// The parts of a segment a read plan may fill in later: closed segments open their file
/// and load their index on first use, from the plan, without borrowing the log.
pub(crate) struct SegmentShared<F> {
    pub(crate) file: RefCell<Option<Rc<F>>>,
    /// `None` until loaded (closed segments only: the active one always has its index).
    pub(crate) index: RefCell<Option<SegmentIndex>>,
}

pub struct Segment<D: SegmentDir> {
    pub(crate) base_offset: u64,
    /// The term the segment was created in (batches carry their own epoch).
    pub(crate) term: u64,
    pub(crate) name: String,
    /// The offset after the segment's last batch.
    pub(crate) next_offset: u64,
    /// Largest batch max timestamp ([`NO_TIMESTAMP`] if none).
    pub(crate) max_timestamp: i64,
    /// Max timestamp of the first batch: the base of `segment_ms` rolling.
    pub(crate) first_timestamp: i64,
    /// When the segment was first seen non-empty by [`super::PartitionLog::roll_if_due`]
    /// (the rolling base when the batches carry no timestamps).
    pub(crate) first_seen_ms: Option<i64>,
    pub(crate) last_batch: Option<LastBatch>,
    pub(crate) shared: Rc<SegmentShared<D::File>>,
    /// The file exists on disk (created and its directory entry synced, or found at open).
    pub(crate) on_disk: bool,
    pub(crate) index_files: IndexFiles,
    pub(crate) appender: Appender<D>,
}

impl<D: SegmentDir> Segment<D> {
    pub(crate) fn new_empty(dir: D, chunk_bytes: usize, base_offset: u64, term: u64) -> Self {
        Self {
            base_offset,
            term,
            name: segment_name(base_offset, term),
            next_offset: base_offset,
            max_timestamp: NO_TIMESTAMP,
            first_timestamp: NO_TIMESTAMP,
            first_seen_ms: None,
            last_batch: None,
            shared: Rc::new(SegmentShared {
                file: RefCell::new(None),
                index: RefCell::new(Some(SegmentIndex::default())),
            }),
            on_disk: false,
            index_files: IndexFiles::Missing,
            appender: Appender::new(dir, chunk_bytes, 0, &[]),
        }
    }

    /// The offset after the segment's last batch.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes appended (in memory or on file).
    pub fn size(&self) -> u64 {
        self.appender.dirty().0
    }

    /// Largest batch max timestamp ([`NO_TIMESTAMP`] if none).
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }

    /// Whether the segment is sealed (no more appends).
    pub fn is_sealed(&self) -> bool {
        self.appender.is_sealed()
    }

    /// Whether the sparse index is in memory (closed segments load it on first read).
    pub fn index_loaded(&self) -> bool {
        self.shared.index.borrow().is_some()
    }

    /// Entries of the in-memory sparse index (0 when not loaded).
    pub fn index_entries(&self) -> usize {
        self.shared
            .index
            .borrow()
            .as_ref()
            .map_or(0, SegmentIndex::len)
    }

    /// Whether the segment file is open.
    pub fn file_open(&self) -> bool {
        self.shared.file.borrow().is_some()
    }

    pub(crate) fn file(&self) -> Option<Rc<D::File>> {
        self.shared.file.borrow().clone()
    }

    pub(crate) fn set_file(&self, f: Rc<D::File>) {
        *self.shared.file.borrow_mut() = Some(f);
    }

    /// Heap and DMA memory the segment holds (index, appender buffers), roughly.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.name.capacity()
            + self
                .shared
                .index
                .borrow()
                .as_ref()
                .map_or(0, SegmentIndex::memory_bytes)
            + self.appender.memory_bytes()
    }

    /// What the index files of this segment would record (covering every appended byte).
    pub(crate) fn index_meta(&self, complete: bool) -> IndexMeta {
        IndexMeta {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size: self.size(),
            complete,
            max_timestamp: self.max_timestamp,
            first_timestamp: self.first_timestamp,
            last_batch: self.last_batch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = segment_name(42, 7);
        assert_eq!(n, "00000000000000000042-7.log");
        assert_eq!(parse_segment_name(&n), Some((42, 7)));
        assert_eq!(parse_segment_name(".spate-sentinel"), None);
        assert_eq!(parse_segment_name("00000000000000000042-.log"), None);
        assert_eq!(parse_segment_name("42-7.log"), None);
        assert_eq!(parse_segment_name("99999999999999999999-1.log"), None); // > u64::MAX
        assert_eq!(
            parse_file_name("00000000000000000042-7.timeindex"),
            Some((42, 7, FileKind::TimeIndex))
        );
        assert_eq!(
            parse_file_name("00000000000000000042-7.index"),
            Some((42, 7, FileKind::Index))
        );
        assert_eq!(parse_file_name("00000000000000000042-7.log.tmp"), None);
        assert_eq!(index_names(42, 7).0, "00000000000000000042-7.index");
    }
}
