//! Damaged batches on disk: what read-time verification, index rebuilds and recovery found.
//!
//! Every batch a read takes from a segment file is checked before it is returned (header
//! bounds, magic 2, CRC-32C, record count, offsets following on; see [`super::scan`]). A read
//! is cut before the first damaged batch; a read whose *first* batch is damaged fails with
//! [`super::LogError::Corrupt`] (the broker answers Kafka's CORRUPT_MESSAGE). Batches in the
//! batch cache are not re-checked: it only holds freshly appended batches and verified reads.
//!
//! Each damaged batch is noted once per log (by segment file and position) in the log's
//! [`Corruptions`]; the owner drains them with [`super::PartitionLog::take_corruptions`] to
//! log and count each exactly once, however many reads run into it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use super::LogError;

/// One damaged batch, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptBatch {
    /// The segment file's name.
    pub segment: String,
    /// Where the batch starts in the file.
    pub pos: u64,
    /// The offset the batch should start at (known from the batches before it).
    pub offset: u64,
    /// What failed.
    pub detail: String,
}

impl From<CorruptBatch> for LogError {
    fn from(c: CorruptBatch) -> Self {
        LogError::Corrupt {
            segment: c.segment,
            pos: c.pos,
            offset: c.offset,
            detail: c.detail,
        }
    }
}

pub(crate) fn corrupt(
    segment: &str,
    pos: u64,
    offset: u64,
    detail: impl Into<String>,
) -> CorruptBatch {
    CorruptBatch {
        segment: segment.to_string(),
        pos,
        offset,
        detail: detail.into(),
    }
}

/// Distinct damaged batches remembered per log (each costs a file name and a position); past
/// it new ones are still counted and handed out, but no longer deduplicated.
const REMEMBERED_MAX: usize = 4096;
/// Found batches not yet taken by the owner, at most.
const FRESH_MAX: usize = 1024;

#[derive(Default)]
struct Inner {
    seen: HashSet<(String, u64)>,
    fresh: Vec<CorruptBatch>,
    total: u64,
}

/// A log's damaged batches: shared by the log and the read plans it hands out (cheap to clone,
/// shard-local).
#[derive(Clone, Default)]
pub(crate) struct Corruptions {
    inner: Rc<RefCell<Inner>>,
}

impl Corruptions {
    /// Notes a damaged batch; a batch already noted is ignored.
    pub(crate) fn note(&self, c: &CorruptBatch) {
        let mut i = self.inner.borrow_mut();
        let key = (c.segment.clone(), c.pos);
        if i.seen.contains(&key) {
            return;
        }
        if i.seen.len() < REMEMBERED_MAX {
            i.seen.insert(key);
        }
        i.total += 1;
        if i.fresh.len() < FRESH_MAX {
            i.fresh.push(c.clone());
        }
    }

    pub(crate) fn note_all<'a>(&self, found: impl IntoIterator<Item = &'a CorruptBatch>) {
        for c in found {
            self.note(c);
        }
    }

    /// Notes the damaged batch an error names, if it is [`LogError::Corrupt`].
    pub(crate) fn note_error(&self, e: &LogError) {
        if let LogError::Corrupt {
            segment,
            pos,
            offset,
            detail,
        } = e
        {
            self.note(&corrupt(segment, *pos, *offset, detail.clone()));
        }
    }

    pub(crate) fn take(&self) -> Vec<CorruptBatch> {
        let mut i = self.inner.borrow_mut();
        if i.fresh.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut i.fresh)
    }

    pub(crate) fn total(&self) -> u64 {
        self.inner.borrow().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_batch_is_reported_once() {
        let c = Corruptions::default();
        let a = corrupt("a.log", 10, 5, "crc");
        c.note(&a);
        c.note(&a);
        c.note_error(&LogError::from(a.clone()));
        c.note(&corrupt("a.log", 99, 7, "magic"));
        assert_eq!(c.total(), 2);
        let got = c.take();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], a);
        assert!(c.take().is_empty());
        c.note(&a);
        assert!(c.take().is_empty(), "already reported");
    }
}
