//! Idempotent-producer state of one partition: per producer id, its epoch and the sequence
//! ranges of its last five batches (Kafka keeps five: the most a producer may have in flight).
//!
//! Lives with its partition, on the partition's owning shard. Restored when the partition
//! opens from its snapshot file (`producers.snapshot`: written at a clean close and by the
//! periodic pass, describing the batches below a durable offset — Kafka's
//! `<offset>.snapshot`), then brought up to date from the batch headers after that offset; without
//! a usable snapshot, from the whole log.

use std::collections::{HashMap, VecDeque};

use kafka_protocol::ResponseError;

/// The snapshot file in a partition directory.
pub const SNAPSHOT_FILE: &str = "producers.snapshot";

const SNAPSHOT_MAGIC: &[u8; 4] = b"SPPS";
const SNAPSHOT_VERSION: u8 = 1;

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

    /// Every producer with the last offset of its last batch (log compaction keeps that
    /// batch, if only as an empty one, so the producer's sequence survives: Kafka's rule).
    pub fn last_offsets(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.producers
            .iter()
            .filter_map(|(pid, e)| e.batches.back().map(|b| (*pid, b.last_offset)))
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

    /// A snapshot of the state as of `offset`: only batches that end below it (the caller
    /// passes a durable offset, so the snapshot never vouches for a batch a crash can lose);
    /// batches at or after `offset` are replayed from the log when the snapshot is loaded.
    /// Layout: magic, version, offset, producer count, per producer (id, epoch, batch count,
    /// batches), then CRC-32C of everything before it; big-endian.
    pub fn encode_snapshot(&self, offset: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.producers.len() * 64);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&offset.to_be_bytes());
        let mut pids: Vec<&i64> = self.producers.keys().collect();
        pids.sort();
        let kept: Vec<(i64, i16, Vec<BatchSeq>)> = pids
            .into_iter()
            .filter_map(|pid| {
                let e = &self.producers[pid];
                let batches: Vec<BatchSeq> = e
                    .batches
                    .iter()
                    .filter(|b| b.last_offset >= 0 && (b.last_offset as u64) < offset)
                    .copied()
                    .collect();
                (!batches.is_empty()).then_some((*pid, e.epoch, batches))
            })
            .collect();
        out.extend_from_slice(&(kept.len() as u32).to_be_bytes());
        for (pid, epoch, batches) in kept {
            out.extend_from_slice(&pid.to_be_bytes());
            out.extend_from_slice(&epoch.to_be_bytes());
            out.push(batches.len() as u8);
            for b in batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot: the offset it was taken at and the state below it. Any damage (torn
    /// write, wrong CRC, trailing bytes, counts beyond the data) is an error naming it; the
    /// caller then rebuilds from the whole log.
    pub fn decode_snapshot(data: &[u8]) -> Result<(u64, ProducerStates), String> {
        if data.len() < 4 + 1 + 8 + 4 + 4 {
            return Err(format!("{} bytes: too short", data.len()));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(body) != want {
            return Err("CRC mismatch".into());
        }
        if &body[..4] != SNAPSHOT_MAGIC || body[4] != SNAPSHOT_VERSION {
            return Err("unknown magic or version".into());
        }
        let mut at = 5;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = body
                .get(at..at + n)
                .ok_or_else(|| format!("truncated at byte {at}"))?;
            at += n;
            Ok(s)
        };
        let u64_at = |s: &[u8]| u64::from_be_bytes(s.try_into().unwrap_or([0; 8]));
        let offset = u64_at(take(8)?);
        let count = u32::from_be_bytes(take(4)?.try_into().unwrap_or([0; 4]));
        let mut states = ProducerStates::default();
        for _ in 0..count {
            let pid = u64_at(take(8)?) as i64;
            let epoch = i16::from_be_bytes(take(2)?.try_into().unwrap_or([0; 2]));
            let n = take(1)?[0] as usize;
            if n == 0 || n > BATCHES_PER_PRODUCER_MAX {
                return Err(format!("producer {pid}: {n} batches"));
            }
            let mut entry = ProducerEntry {
                epoch,
                batches: VecDeque::with_capacity(n),
            };
            for _ in 0..n {
                let s = take(24)?;
                let i32_at =
                    |i: usize| i32::from_be_bytes(s[i..i + 4].try_into().unwrap_or([0; 4]));
                let b = BatchSeq {
                    first_seq: i32_at(0),
                    last_seq: i32_at(4),
                    base_offset: u64_at(&s[8..16]) as i64,
                    last_offset: u64_at(&s[16..24]) as i64,
                };
                if b.base_offset < 0
                    || b.last_offset < b.base_offset
                    || b.last_offset as u64 >= offset
                {
                    return Err(format!(
                        "producer {pid}: batch at offsets {}..={} outside the snapshot",
                        b.base_offset, b.last_offset
                    ));
                }
                entry.batches.push_back(b);
            }
            if states.producers.insert(pid, entry).is_some() {
                return Err(format!("producer {pid} twice"));
            }
        }
        if at != body.len() {
            return Err(format!("{} trailing bytes", body.len() - at));
        }
        Ok((offset, states))
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
    fn snapshot_round_trip_keeps_only_batches_below_its_offset() {
        let mut s = ProducerStates::default();
        s.record(7, 2, b(0, 4, 100));
        s.record(7, 2, b(5, 9, 105));
        s.record(8, 0, b(0, 0, 110)); // at the snapshot offset: replayed from the log instead
        let snap = s.encode_snapshot(110);
        let (offset, back) = ProducerStates::decode_snapshot(&snap).unwrap();
        assert_eq!(offset, 110);
        assert_eq!(back.len(), 1);
        assert_eq!(
            back.check(7, 2, 5, 9),
            SeqCheck::Duplicate {
                base_offset: 105,
                last_offset: 109
            }
        );
        assert_eq!(back.check(7, 2, 10, 10), SeqCheck::Append);
        assert!(matches!(back.check(7, 1, 10, 10), SeqCheck::Reject(..)));
        assert_eq!(back.check(8, 0, 1, 1), SeqCheck::Append);
    }

    #[test]
    fn damaged_snapshots_are_refused_never_half_read() {
        let mut s = ProducerStates::default();
        s.record(7, 2, b(0, 4, 100));
        let snap = s.encode_snapshot(1000);
        for cut in 0..snap.len() {
            assert!(
                ProducerStates::decode_snapshot(&snap[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for i in 0..snap.len() {
            let mut bad = snap.clone();
            bad[i] ^= 0x40;
            assert!(
                ProducerStates::decode_snapshot(&bad).is_err(),
                "flip at {i}"
            );
        }
        assert_eq!(ProducerStates::default().encode_snapshot(5).len(), 21);
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
