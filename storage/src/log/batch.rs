//! The Kafka v2 record-batch header: parse, validate and stamp it by hand, without copying.
//!
//! Layout (big-endian), offsets in bytes:
//!
//! | field | range |
//! |---|---|
//! | base_offset | 0..8 |
//! | batch_length (bytes after this field) | 8..12 |
//! | partition_leader_epoch | 12..16 |
//! | magic (must be 2) | 16 |
//! | crc (CRC-32C of bytes 21..end) | 17..21 |
//! | attributes | 21..23 |
//! | last_offset_delta | 23..27 |
//! | base_timestamp | 27..35 |
//! | max_timestamp | 35..43 |
//! | producer_id | 43..51 |
//! | producer_epoch | 51..53 |
//! | base_sequence | 53..57 |
//! | record_count | 57..61 |
//!
//! `base_offset` and `partition_leader_epoch` lie outside the CRC, so the broker stamps them
//! without recomputing it. The records themselves are never parsed here.
//!
//! A *stored* batch may hold fewer records than offsets: log compaction keeps a batch's base
//! and last offset while removing some of its records, and may keep a batch of no records at
//! all (Kafka's empty batch, [`empty_batch`]). So [`check_first`] (stored batches) accepts
//! `0 <= record_count <= last_offset_delta + 1`, while [`RecordBatch::validate`] (a batch as
//! produced) requires exactly `last_offset_delta + 1`.

use bytes::{Bytes, BytesMut};

/// Size of the fixed v2 batch header.
pub const BATCH_HEADER_LEN: usize = 61;
/// `base_offset` + `batch_length`: the bytes not counted by `batch_length`.
pub const LOG_OVERHEAD: usize = 12;
/// The smallest legal `batch_length` (a header with no records).
pub const MIN_BATCH_LENGTH: usize = BATCH_HEADER_LEN - LOG_OVERHEAD;
/// The only record-batch format Spate stores.
pub const MAGIC_V2: i8 = 2;
/// The CRC covers the batch from this byte (attributes) to its end.
const CRC_START: usize = 21;

/// Why a batch was rejected. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch header: need {BATCH_HEADER_LEN} bytes, {have} available")]
    ShortHeader { have: usize },
    #[error("batch_length {batch_length}: a batch spans {LOG_OVERHEAD} + batch_length bytes, which must lie in [{BATCH_HEADER_LEN}, {max_batch_bytes}]")]
    BatchLength {
        batch_length: i32,
        max_batch_bytes: usize,
    },
    #[error("batch_length: the batch spans {total} bytes but only {have} are available")]
    Incomplete { total: usize, have: usize },
    #[error("batch_length: the batch spans {total} bytes but the buffer holds {have}")]
    TrailingBytes { total: usize, have: usize },
    #[error("magic {magic}: only record-batch format v2 (magic 2) is supported")]
    Magic { magic: i8 },
    #[error("crc: the header says {stored:#010x}, CRC-32C of the batch is {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
    #[error("record_count {record_count}: must be last_offset_delta ({last_offset_delta}) + 1 and positive (at most that in a compacted batch)")]
    RecordCount {
        record_count: i32,
        last_offset_delta: i32,
    },
}

/// The fixed header of a v2 record batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Decodes the 61 header bytes at the start of `buf`; checks nothing but their presence.
    pub fn decode(buf: &[u8]) -> Result<Self, BatchError> {
        if buf.len() < BATCH_HEADER_LEN {
            return Err(BatchError::ShortHeader { have: buf.len() });
        }
        Ok(Self {
            base_offset: be_i64(buf, 0),
            batch_length: be_i32(buf, 8),
            partition_leader_epoch: be_i32(buf, 12),
            magic: buf[16] as i8,
            crc: be_i32(buf, 17) as u32,
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: be_i32(buf, 57),
        })
    }

    /// Bytes the whole batch spans, header included (valid after [`check_first`]).
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the batch's last record (`base_offset - 1` for a zero-width batch).
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// The offset after the batch: where the next batch starts.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    /// A zero-width control batch: no records, `last_offset_delta = -1`, so it occupies no
    /// offset (the batch after it has the same base offset). How a Raft leader no-op is
    /// stored without shifting Kafka offsets (raft/README.md).
    pub fn is_zero_width(&self) -> bool {
        self.record_count == 0
            && self.last_offset_delta == -1
            && self.attributes & ATTR_CONTROL != 0
    }
}

/// Validates the first batch in `buf`, which may hold more bytes after it (a segment being
/// scanned). Checks, in order: header present, `batch_length` bounds, magic, the whole batch
/// present, CRC-32C, record count (at most `last_offset_delta + 1`: a compacted batch may hold
/// fewer records than offsets, even none). Returns the header; the batch is
/// `buf[..total_len()]`.
pub fn check_first(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::decode(buf)?;
    let total = LOG_OVERHEAD as i64 + i64::from(h.batch_length);
    if h.batch_length < MIN_BATCH_LENGTH as i32 || total > max_batch_bytes as i64 {
        return Err(BatchError::BatchLength {
            batch_length: h.batch_length,
            max_batch_bytes,
        });
    }
    if h.magic != MAGIC_V2 {
        return Err(BatchError::Magic { magic: h.magic });
    }
    let total = total as usize;
    if buf.len() < total {
        return Err(BatchError::Incomplete {
            total,
            have: buf.len(),
        });
    }
    let computed = crc32c::crc32c(&buf[CRC_START..total]);
    if computed != h.crc {
        return Err(BatchError::Crc {
            stored: h.crc,
            computed,
        });
    }
    // A zero-width control batch (no records, last offset delta -1: it occupies no offset)
    // is how a Raft no-op is stored without shifting Kafka offsets (raft/README.md).
    if h.record_count < 0
        || (h.last_offset_delta < 0 && !h.is_zero_width())
        || i64::from(h.record_count) > i64::from(h.last_offset_delta) + 1
    {
        return Err(BatchError::RecordCount {
            record_count: h.record_count,
            last_offset_delta: h.last_offset_delta,
        });
    }
    Ok(h)
}

/// Length of the longest prefix of `buf` made of whole batches that `keep` accepts; `keep`
/// sees each batch's header and the prefix length it would make, and the walk stops at the
/// first batch it refuses, or that is incomplete or undecodable.
pub fn whole_batches_prefix(
    buf: &[u8],
    mut keep: impl FnMut(&BatchHeader, usize) -> bool,
) -> usize {
    let mut end = 0;
    while end < buf.len() {
        let Ok(h) = BatchHeader::decode(&buf[end..]) else {
            break;
        };
        let next = end + h.total_len();
        if next > buf.len() || !keep(&h, next) {
            break;
        }
        end = next;
    }
    end
}

/// Writes `base_offset` and `partition_leader_epoch` into a batch's header in place. Both lie
/// outside the CRC, so the batch stays valid.
///
/// # Panics
/// If `buf` is shorter than the header (an internal invariant: callers pass validated batches).
pub fn stamp_in_place(buf: &mut [u8], base_offset: i64, leader_epoch: i32) {
    assert!(buf.len() >= BATCH_HEADER_LEN, "stamping a short batch");
    buf[0..8].copy_from_slice(&base_offset.to_be_bytes());
    buf[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Attribute bits of a v2 batch (Kafka's `DefaultRecordBatch`).
pub const ATTR_CODEC_MASK: i16 = 0x07;
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
pub const ATTR_CONTROL: i16 = 0x20;
/// The batch's base timestamp is the delete horizon of its tombstones (KIP-534).
pub const ATTR_DELETE_HORIZON: i16 = 0x40;

/// Recomputes the CRC-32C field of a whole batch in place (after editing fields under it).
pub fn fix_crc(buf: &mut [u8]) {
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// A batch with no records that keeps `h`'s offsets, producer fields, leader epoch and
/// timestamp type (no compression): Kafka's `DefaultRecordBatch.writeEmptyHeader`, what
/// compaction keeps when every record of a batch goes but the batch must stay (an idempotent
/// producer's last batch, a segment's last batch). Unlike Kafka's, it carries no timestamp
/// (-1): with no record to find there, lookups by time and the time index pass over it.
pub fn empty_batch(h: &BatchHeader) -> Bytes {
    let mut b = vec![0u8; BATCH_HEADER_LEN];
    b[0..8].copy_from_slice(&h.base_offset.to_be_bytes());
    b[8..12].copy_from_slice(&(MIN_BATCH_LENGTH as i32).to_be_bytes());
    b[12..16].copy_from_slice(&h.partition_leader_epoch.to_be_bytes());
    b[16] = MAGIC_V2 as u8;
    let attrs = h.attributes & (ATTR_LOG_APPEND_TIME | ATTR_TRANSACTIONAL | ATTR_CONTROL);
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    b[23..27].copy_from_slice(&h.last_offset_delta.to_be_bytes());
    b[27..35].copy_from_slice(&(-1i64).to_be_bytes());
    b[35..43].copy_from_slice(&(-1i64).to_be_bytes());
    b[43..51].copy_from_slice(&h.producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&h.producer_epoch.to_be_bytes());
    b[53..57].copy_from_slice(&h.base_sequence.to_be_bytes());
    b[57..61].copy_from_slice(&0i32.to_be_bytes());
    fix_crc(&mut b);
    Bytes::from(b)
}

/// A batch with no records: base offset, offset delta, leader epoch and attributes given; no
/// producer, no timestamp.
fn record_less_batch(
    base: i64,
    last_offset_delta: i32,
    leader_epoch: i32,
    attributes: i16,
) -> Bytes {
    empty_batch(&BatchHeader {
        base_offset: base,
        batch_length: MIN_BATCH_LENGTH as i32,
        partition_leader_epoch: leader_epoch,
        magic: MAGIC_V2,
        crc: 0,
        attributes,
        last_offset_delta,
        base_timestamp: -1,
        max_timestamp: -1,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        record_count: 0,
    })
}

/// A zero-width control batch ([`BatchHeader::is_zero_width`]) at base offset 0 (the log
/// stamps the real one) in `leader_epoch`: no records, no producer, no timestamp.
pub fn zero_width_control_batch(leader_epoch: i32) -> Bytes {
    record_less_batch(0, -1, leader_epoch, ATTR_CONTROL)
}

/// A batch with no records covering the offsets `base..=last` (producer id, epoch and sequence
/// -1, no attributes, no timestamp): what compaction writes in place of the batches it
/// removes, so a compacted log's offsets still follow on batch after batch (Kafka leaves
/// gaps; clients skip empty batches either way). `last - base` must fit an `i32`.
pub fn filler_batch(base: i64, last: i64, leader_epoch: i32) -> Bytes {
    let delta = i32::try_from(last - base).unwrap_or(i32::MAX);
    record_less_batch(base, delta, leader_epoch, 0)
}

/// One validated v2 record batch, held as zero-copy `Bytes` (typically a slice of a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl RecordBatch {
    /// Validates that `bytes` is exactly one well-formed v2 batch as a producer sends it (see
    /// [`check_first`]; and one record per offset, at least one).
    pub fn validate(bytes: Bytes, max_batch_bytes: usize) -> Result<Self, BatchError> {
        Self::validate_with(bytes, max_batch_bytes, |h| {
            h.record_count > 0 && i64::from(h.record_count) == i64::from(h.last_offset_delta) + 1
        })
    }

    /// Validates a zero-width control batch ([`BatchHeader::is_zero_width`]), which only the
    /// Raft layer writes; [`Self::validate`] refuses it, as produce must.
    pub fn validate_zero_width(bytes: Bytes, max_batch_bytes: usize) -> Result<Self, BatchError> {
        Self::validate_with(bytes, max_batch_bytes, BatchHeader::is_zero_width)
    }

    /// Validates one batch as a log stores it ([`check_first`]'s rules: a compacted batch may
    /// hold fewer records than offsets, even none; a zero-width control batch is accepted):
    /// for copying batches from one log to another with their offsets and epochs (a Raft
    /// follower's segment transfer). Append a zero-width one with
    /// [`super::PartitionLog::append_zero_width`].
    pub fn validate_stored(bytes: Bytes, max_batch_bytes: usize) -> Result<Self, BatchError> {
        Self::validate_with(bytes, max_batch_bytes, |_| true)
    }

    /// [`check_first`], then `counts_ok` on the record count and offset delta, then exactly
    /// one batch.
    fn validate_with(
        bytes: Bytes,
        max_batch_bytes: usize,
        counts_ok: impl Fn(&BatchHeader) -> bool,
    ) -> Result<Self, BatchError> {
        let header = check_first(&bytes, max_batch_bytes)?;
        if !counts_ok(&header) {
            return Err(BatchError::RecordCount {
                record_count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        if header.total_len() != bytes.len() {
            return Err(BatchError::TrailingBytes {
                total: header.total_len(),
                have: bytes.len(),
            });
        }
        Ok(Self { header, bytes })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true for a validated batch; present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Number of offsets the batch occupies (`last_offset_delta + 1`; 0 when zero-width).
    pub fn offset_count(&self) -> u64 {
        (i64::from(self.header.last_offset_delta) + 1).max(0) as u64
    }

    /// A copy of the header with base offset and leader epoch stamped; the appender writes it
    /// followed by `bytes()[BATCH_HEADER_LEN..]`, so stamping costs no copy of the records.
    pub fn stamped_header(&self, base_offset: i64, leader_epoch: i32) -> [u8; BATCH_HEADER_LEN] {
        let mut h = [0u8; BATCH_HEADER_LEN];
        h.copy_from_slice(&self.bytes[..BATCH_HEADER_LEN]);
        stamp_in_place(&mut h, base_offset, leader_epoch);
        h
    }

    /// An owned, stamped copy (one copy of the batch; prefer [`Self::stamped_header`] on hot
    /// paths).
    pub fn stamped(&self, base_offset: i64, leader_epoch: i32) -> RecordBatch {
        let mut b = BytesMut::from(&self.bytes[..]);
        stamp_in_place(&mut b, base_offset, leader_epoch);
        let mut header = self.header;
        header.base_offset = base_offset;
        header.partition_leader_epoch = leader_epoch;
        RecordBatch {
            header,
            bytes: b.freeze(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// A v2 batch of `records` records, each with a `value_len`-byte value, built by
    /// kafka-protocol's encoder (so our parser is checked against an independent writer).
    pub(crate) fn build_batch(records: usize, value_len: usize, seed: u8) -> Bytes {
        build_batch_ts(records, value_len, seed, 1_700_000_000_000)
    }

    /// As [`build_batch`], record `i` stamped `ts + i` (so the batch's max timestamp is
    /// `ts + records - 1`).
    pub(crate) fn build_batch_ts(records: usize, value_len: usize, seed: u8, ts: i64) -> Bytes {
        let recs: Vec<Record> = (0..records)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // The encoder splits batches unless offset - sequence is constant; this keeps
                // base_sequence = -1 (no idempotence) for the first record.
                sequence: i as i32 - 1,
                timestamp: ts + i as i64,
                key: None,
                value: Some(Bytes::from(vec![seed.wrapping_add(i as u8); value_len])),
                headers: Default::default(),
            })
            .collect();
        let mut out = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut out, &recs, &opts).expect("encode");
        out.freeze()
    }

    const MAX: usize = 1 << 20;

    #[test]
    fn parses_encoder_output() {
        let b = build_batch(3, 10, 7);
        let rb = RecordBatch::validate(b.clone(), MAX).unwrap();
        let h = rb.header();
        assert_eq!(h.magic, 2);
        assert_eq!(h.record_count, 3);
        assert_eq!(h.last_offset_delta, 2);
        assert_eq!(h.total_len(), b.len());
        assert_eq!(h.producer_id, -1);
        assert_eq!(h.base_timestamp, 1_700_000_000_000);
        assert_eq!(h.max_timestamp, 1_700_000_000_002);
        assert_eq!(rb.offset_count(), 3);
    }

    #[test]
    fn stamping_keeps_the_crc_valid() {
        let rb = RecordBatch::validate(build_batch(2, 100, 1), MAX).unwrap();
        let s = rb.stamped(1234, 7);
        let again = RecordBatch::validate(s.bytes().clone(), MAX).unwrap();
        assert_eq!(again.header().base_offset, 1234);
        assert_eq!(again.header().partition_leader_epoch, 7);
        assert_eq!(again.header().crc, rb.header().crc);
        let h = rb.stamped_header(1234, 7);
        assert_eq!(&h[..], &s.bytes()[..BATCH_HEADER_LEN]);
        assert_eq!(
            &rb.bytes()[BATCH_HEADER_LEN..],
            &s.bytes()[BATCH_HEADER_LEN..]
        );
    }

    fn corrupt(f: impl FnOnce(&mut BytesMut)) -> Result<RecordBatch, BatchError> {
        let mut b = BytesMut::from(&build_batch(2, 50, 3)[..]);
        f(&mut b);
        RecordBatch::validate(b.freeze(), MAX)
    }

    #[test]
    fn flipped_crc_byte() {
        assert!(matches!(
            corrupt(|b| b[18] ^= 0x01),
            Err(BatchError::Crc { .. })
        ));
        // A flipped byte in the records is caught by the same CRC.
        assert!(matches!(
            corrupt(|b| {
                let n = b.len();
                b[n - 1] ^= 0x80
            }),
            Err(BatchError::Crc { .. })
        ));
    }

    #[test]
    fn wrong_magic() {
        assert_eq!(
            corrupt(|b| b[16] = 1).unwrap_err(),
            BatchError::Magic { magic: 1 }
        );
    }

    #[test]
    fn bad_lengths() {
        assert!(matches!(
            corrupt(|b| b[8..12].copy_from_slice(&10i32.to_be_bytes())),
            Err(BatchError::BatchLength {
                batch_length: 10,
                ..
            })
        ));
        assert!(matches!(
            corrupt(|b| b[8..12].copy_from_slice(&(-1i32).to_be_bytes())),
            Err(BatchError::BatchLength { .. })
        ));
        assert!(matches!(
            corrupt(|b| b[8..12].copy_from_slice(&i32::MAX.to_be_bytes())),
            Err(BatchError::BatchLength { .. })
        ));
        assert!(matches!(
            corrupt(|b| b.truncate(b.len() - 1)),
            Err(BatchError::Incomplete { .. })
        ));
        assert!(matches!(
            corrupt(|b| b.extend_from_slice(&[0])),
            Err(BatchError::TrailingBytes { .. })
        ));
        assert!(matches!(
            corrupt(|b| b.truncate(30)),
            Err(BatchError::ShortHeader { have: 30 })
        ));
        // Larger than the configured maximum.
        let b = build_batch(1, 2000, 0);
        assert!(matches!(
            RecordBatch::validate(b, 1000),
            Err(BatchError::BatchLength { .. })
        ));
    }

    /// Rewrites a header field that lies under the CRC and fixes the CRC, so only the field
    /// check can catch it.
    fn with_fixed_crc(f: impl FnOnce(&mut BytesMut)) -> Result<RecordBatch, BatchError> {
        corrupt(|b| {
            f(b);
            let crc = crc32c::crc32c(&b[CRC_START..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
        })
    }

    #[test]
    fn zero_or_mismatched_record_count() {
        assert_eq!(
            with_fixed_crc(|b| b[57..61].copy_from_slice(&0i32.to_be_bytes())).unwrap_err(),
            BatchError::RecordCount {
                record_count: 0,
                last_offset_delta: 1
            }
        );
        assert!(matches!(
            with_fixed_crc(|b| b[57..61].copy_from_slice(&5i32.to_be_bytes())),
            Err(BatchError::RecordCount {
                record_count: 5,
                ..
            })
        ));
        assert!(matches!(
            with_fixed_crc(|b| {
                b[23..27].copy_from_slice(&(-1i32).to_be_bytes());
                b[57..61].copy_from_slice(&0i32.to_be_bytes());
            }),
            Err(BatchError::RecordCount {
                record_count: 0,
                ..
            })
        ));
    }

    #[test]
    fn zero_width_control_batches_are_stored_batches_but_not_produced_ones() {
        // No records, last offset delta -1: occupies no offset (raft/README.md, "Before
        // wiring"). Accepted on disk only with the control bit.
        let rb = RecordBatch::validate(build_batch(1, 10, 1), MAX).unwrap();
        let mut e = BytesMut::from(&empty_batch(rb.stamped(40, 2).header())[..]);
        e[23..27].copy_from_slice(&(-1i32).to_be_bytes());
        let fix = |e: &mut BytesMut| {
            let crc = crc32c::crc32c(&e[CRC_START..]);
            e[17..21].copy_from_slice(&crc.to_be_bytes());
        };
        fix(&mut e);
        assert!(matches!(
            check_first(&e, MAX),
            Err(BatchError::RecordCount { .. })
        ));
        e[21..23].copy_from_slice(&0x20i16.to_be_bytes());
        fix(&mut e);
        let h = check_first(&e, MAX).unwrap();
        assert_eq!(
            (h.base_offset, h.last_offset(), h.record_count),
            (40, 39, 0)
        );
        assert!(RecordBatch::validate(e.freeze(), MAX).is_err());
    }

    #[test]
    fn empty_batches_are_stored_batches_but_not_produced_ones() {
        let rb = RecordBatch::validate(build_batch(3, 10, 1), MAX).unwrap();
        let e = empty_batch(rb.stamped(40, 2).header());
        let h = check_first(&e, MAX).unwrap();
        assert_eq!(h.total_len(), e.len());
        assert_eq!(
            (h.base_offset, h.last_offset(), h.record_count),
            (40, 42, 0)
        );
        assert_eq!(h.partition_leader_epoch, 2);
        assert_eq!((h.base_timestamp, h.max_timestamp), (-1, -1));
        assert!(matches!(
            RecordBatch::validate(e, MAX),
            Err(BatchError::RecordCount { .. })
        ));
        // Fewer records than offsets (compacted) is fine stored; more never is.
        let mut b = BytesMut::from(&build_batch(3, 10, 1)[..]);
        b[57..61].copy_from_slice(&2i32.to_be_bytes());
        fix_crc(&mut b);
        assert!(check_first(&b, MAX).is_ok());
        b[57..61].copy_from_slice(&4i32.to_be_bytes());
        fix_crc(&mut b);
        assert!(check_first(&b, MAX).is_err());
    }

    #[test]
    fn scanning_a_buffer_with_several_batches() {
        let a = build_batch(1, 10, 0);
        let b = build_batch(4, 10, 1);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        let h = check_first(&buf, MAX).unwrap();
        assert_eq!(h.total_len(), a.len());
        let h2 = check_first(&buf[a.len()..], MAX).unwrap();
        assert_eq!(h2.record_count, 4);
        // Zeroes (the padding of a tail page) are not a batch.
        assert!(check_first(&[0u8; 100], MAX).is_err());
    }
}
