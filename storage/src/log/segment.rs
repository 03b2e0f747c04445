//! One segment: a file named after its base offset and the Raft term it was created in, the
//! in-memory index of its batches, and its appender.

use std::rc::Rc;

use super::appender::Appender;
use super::file::SegmentDir;

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

/// Where one batch lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEntry {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Byte position in the segment file.
    pub pos: u64,
    pub len: u32,
    /// The batch's `partition_leader_epoch` (the Raft term it was written in).
    pub epoch: i32,
}

impl BatchEntry {
    pub fn end_pos(&self) -> u64 {
        self.pos + u64::from(self.len)
    }
}

pub struct Segment<D: SegmentDir> {
    pub(crate) base_offset: u64,
    /// The term the segment was created in (batches carry their own epoch).
    pub(crate) term: u64,
    pub(crate) name: String,
    /// `None` until the first flush creates the file.
    pub(crate) file: Option<Rc<D::File>>,
    pub(crate) batches: Vec<BatchEntry>,
    pub(crate) appender: Appender<D>,
}

impl<D: SegmentDir> Segment<D> {
    pub(crate) fn new_empty(dir: D, chunk_bytes: usize, base_offset: u64, term: u64) -> Self {
        Self {
            base_offset,
            term,
            name: segment_name(base_offset, term),
            file: None,
            batches: Vec::new(),
            appender: Appender::new(dir, chunk_bytes, 0, &[]),
        }
    }

    /// The offset after the segment's last batch.
    pub fn next_offset(&self) -> u64 {
        self.batches
            .last()
            .map_or(self.base_offset, |b| b.last_offset + 1)
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

    pub fn batches(&self) -> &[BatchEntry] {
        &self.batches
    }

    /// Index of the batch containing `offset`, if any.
    pub(crate) fn find(&self, offset: u64) -> Option<usize> {
        let i = self.batches.partition_point(|b| b.last_offset < offset);
        (i < self.batches.len() && self.batches[i].base_offset <= offset).then_some(i)
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
    }
}
