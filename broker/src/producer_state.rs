//! Idempotent-producer state of one partition: per producer id, its epoch and the sequence
//! ranges of its last five batches (Kafka keeps five: the most a producer may have in flight).
//!
//! Lives with its partition, on the partition's owning shard. Rebuilt from the log's batch
//! headers when the partition opens.

use std::collections::{HashMap, VecDeque};

use kafka_protocol::ResponseError;

/// Batches remembered per producer for duplicate detection.
pub const BATCHES_PER_PRODUCER_MAX: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSeq {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSeq>,
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqCheck {
    Append,
    /// Already in the log: answer with the original offsets, append nothing.
    Duplicate {
        base_offset: i64,
        last_offset: i64,
    },
    Reject(ResponseError, String),
}

/// Sequence numbers wrap from i32::MAX to 0.
pub fn last_seq(first_seq: i32, last_offset_delta: i32) -> i32 {
    ((i64::from(first_seq) + i64::from(last_offset_delta)) % (i64::from(i32::MAX) + 1)) as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks a batch of producer `pid` at `epoch` covering sequences `first..=last`
    /// (Kafka's `ProducerAppendInfo.checkSequence`, without transactions).
    pub fn check(&self, pid: i64, epoch: i16, first: i32, last: i32) -> SeqCheck {
        let Some(entry) = self.producers.get(&pid) else {
            // Unknown producer (new, or its batches were removed by retention): accepted.
            return SeqCheck::Append;
        };
        if epoch < entry.epoch {
            return SeqCheck::Reject(
                ResponseError::InvalidProducerEpoch,
                format!(
                    "producer {pid}: epoch {epoch} is older than the current {}",
                    entry.epoch
                ),
            );
        }
        if epoch > entry.epoch {
            return if first == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::Reject(
                    ResponseError::OutOfOrderSequenceNumber,
                    format!(
                        "producer {pid}: a new epoch {epoch} must start at sequence 0, not {first}"
                    ),
                )
            };
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return SeqCheck::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            };
        }
        match entry.batches.back() {
            Some(b) if first != next_seq(b.last_seq) => SeqCheck::Reject(
                ResponseError::OutOfOrderSequenceNumber,
                format!(
                    "producer {pid}: expected sequence {}, got {first}",
                    next_seq(b.last_seq)
                ),
            ),
            _ => SeqCheck::Append,
        }
    }

    /// Records an appended batch.
    pub fn record(&mut self, pid: i64, epoch: i16, batch: BatchSeq) {
        let entry = self.producers.entry(pid).or_default();
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.batches.push_back(batch);
        while entry.batches.len() > BATCHES_PER_PRODUCER_MAX {
            entry.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(first: i32, last: i32, base: i64) -> BatchSeq {
        BatchSeq {
            first_seq: first,
            last_seq: last,
            base_offset: base,
            last_offset: base + i64::from(last - first),
        }
    }

    #[test]
    fn in_order_duplicate_and_gaps() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(7, 0, 0, 4), SeqCheck::Append);
        s.record(7, 0, b(0, 4, 100));
        assert_eq!(s.check(7, 0, 5, 9), SeqCheck::Append);
        s.record(7, 0, b(5, 9, 105));
        // A retry of either batch is answered with its original offsets.
        assert_eq!(
            s.check(7, 0, 0, 4),
            SeqCheck::Duplicate {
                base_offset: 100,
                last_offset: 104
            }
        );
        assert!(matches!(
            s.check(7, 0, 11, 12),
            SeqCheck::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        assert!(matches!(
            s.check(7, 0, 3, 6),
            SeqCheck::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut s = ProducerStates::default();
        s.record(1, 3, b(0, 0, 0));
        assert!(matches!(
            s.check(1, 2, 1, 1),
            SeqCheck::Reject(ResponseError::InvalidProducerEpoch, _)
        ));
        assert!(matches!(
            s.check(1, 4, 5, 5),
            SeqCheck::Reject(ResponseError::OutOfOrderSequenceNumber, _)
        ));
        assert_eq!(s.check(1, 4, 0, 0), SeqCheck::Append);
        s.record(1, 4, b(0, 0, 1));
        assert_eq!(s.check(1, 4, 1, 1), SeqCheck::Append);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(2, 0, b(i, i, i64::from(i)));
        }
        assert!(matches!(s.check(2, 0, 1, 1), SeqCheck::Reject(..)));
        assert!(matches!(s.check(2, 0, 2, 2), SeqCheck::Duplicate { .. }));
        assert_eq!(last_seq(i32::MAX - 1, 3), 1);
        s.record(3, 0, b(i32::MAX, i32::MAX, 9));
        assert_eq!(s.check(3, 0, 0, 0), SeqCheck::Append);
    }
}
