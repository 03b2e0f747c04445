//! Raft control entries as Kafka control batches.
//!
//! A leader's no-op and the two kinds of configuration entries live in the partition's
//! segment log like any batch, so they are written as Kafka v2 *control* batches, which
//! consumers skip: attributes bit 5 (control) set, producer id -1.
//!
//! * A **leader no-op** is a *zero-width* control batch: no records, `last_offset_delta = -1`,
//!   base offset = the log's next offset, so it occupies no Kafka offset (the next batch gets
//!   the same base offset; raft/README.md, "control batches take Kafka offsets", option 2).
//!   Every client skips a batch whose last offset is below its fetch position. A new
//!   partition's first record is at offset 0, and an election (every restart of a group of
//!   one) leaves no gap in the offsets.
//! * A **configuration entry** carries a payload (the encoded raft-rs change), so it is a
//!   control batch of one control record whose key is `version: i16 = 0, type: i16` and whose
//!   value is the payload: it occupies one offset.
//!
//! A no-op right after a zero-width no-op of its own term at the same offset (a node that won
//! the same term twice) is written with one control record of type
//! [`CONTROL_TYPE_LEADER_NOOP`] ([`encode_control_record`]) and takes one offset, as every
//! no-op did before they became zero-width; such no-ops read back as no-ops.
//!
//! **Spate's control record types are 100 and up** ([`CONTROL_TYPE_LEADER_NOOP`],
//! [`CONTROL_TYPE_CONF_CHANGE`], [`CONTROL_TYPE_CONF_CHANGE_V2`]), not KRaft's
//! LEADER_CHANGE (2) and KRAFT_VOTERS (6): those have their own value schemas, which tools
//! that decode control records (kafka-dump-log, KRaft-aware clients) would try to parse and
//! reject. Every client maps an unknown type to "unknown" and skips the batch; Kafka's own
//! types stay below 100 (0–6 today). Only a *well-formed* key is required: the Java consumer
//! rejects a malformed key, librdkafka requires exactly four key bytes.
//!
//! Control batches carry no timestamp (-1, Kafka's `NO_TIMESTAMP`), so they are identical on
//! every replica and never match a lookup by time.

use bytes::{BufMut, Bytes, BytesMut};
use spate_storage::log::batch::{
    stamp_in_place, zero_width_control_batch, BatchHeader, BATCH_HEADER_LEN, MAGIC_V2,
};

use crate::types::EntryKind;

/// Control record type of a leader's no-op (Raft §5.4.2, §8).
pub const CONTROL_TYPE_LEADER_NOOP: i16 = 100;
/// Control record type of a single-step membership change (Raft §6).
pub const CONTROL_TYPE_CONF_CHANGE: i16 = 101;
/// Control record type of a joint-consensus membership change (Raft §6).
pub const CONTROL_TYPE_CONF_CHANGE_V2: i16 = 102;

/// Batch attribute: a control batch.
pub const ATTR_CONTROL: i16 = 0x20;
/// Batch attributes: the compression codec bits.
const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Kafka's "no timestamp".
const NO_TIMESTAMP: i64 = -1;
/// The CRC-32C covers the batch from the attributes on.
const CRC_START: usize = 21;

/// The control record type of a Raft control entry kind (`None` for data).
pub fn control_type(kind: EntryKind) -> Option<i16> {
    match kind {
        EntryKind::Data => None,
        EntryKind::LeaderNoop => Some(CONTROL_TYPE_LEADER_NOOP),
        EntryKind::ConfChange => Some(CONTROL_TYPE_CONF_CHANGE),
        EntryKind::ConfChangeV2 => Some(CONTROL_TYPE_CONF_CHANGE_V2),
    }
}

fn kind_of_type(ty: i16) -> Option<EntryKind> {
    match ty {
        CONTROL_TYPE_LEADER_NOOP => Some(EntryKind::LeaderNoop),
        CONTROL_TYPE_CONF_CHANGE => Some(EntryKind::ConfChange),
        CONTROL_TYPE_CONF_CHANGE_V2 => Some(EntryKind::ConfChangeV2),
        _ => None,
    }
}

fn put_varint(out: &mut BytesMut, v: i64) {
    // Zigzag, then base-128 (Kafka's varint/varlong).
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn get_varint(buf: &[u8], at: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// A complete control batch (header stamped with `base_offset` and `epoch`, CRC computed):
/// for [`EntryKind::LeaderNoop`] a zero-width one (no records, `payload` ignored: a no-op has
/// none), for a configuration entry one holding one control record of `kind` whose value is
/// `payload`.
///
/// # Panics
///
/// For [`EntryKind::Data`] (a programming error: data entries are client batches).
pub fn encode_control(kind: EntryKind, payload: &[u8], base_offset: u64, epoch: i32) -> Bytes {
    if kind == EntryKind::LeaderNoop {
        let mut b = BytesMut::from(&zero_width_control_batch(epoch)[..]);
        stamp_in_place(&mut b, base_offset as i64, epoch);
        return b.freeze();
    }
    encode_control_record(kind, payload, base_offset, epoch)
}

/// A control batch holding one control record of `kind` whose value is `payload`: a
/// configuration entry, or a no-op that must take an offset (a second no-op of one term at
/// one offset, see the segment adapter's `append`; and how no-ops were written before they
/// became zero-width).
///
/// # Panics
///
/// For [`EntryKind::Data`] (a programming error: data entries are client batches).
pub fn encode_control_record(
    kind: EntryKind,
    payload: &[u8],
    base_offset: u64,
    epoch: i32,
) -> Bytes {
    let ty = control_type(kind).expect("a control entry kind");
    let mut record = BytesMut::with_capacity(16 + payload.len());
    record.put_i8(0); // record attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, 4); // key length
    record.put_i16(0); // control key version
    record.put_i16(ty);
    put_varint(&mut record, payload.len() as i64);
    record.put_slice(payload);
    put_varint(&mut record, 0); // headers
    build_batch(ATTR_CONTROL, &[record], base_offset, epoch, NO_TIMESTAMP)
}

/// An uncompressed v2 data batch with one record per value (no key, no headers), producer
/// id -1, base offset 0 and leader epoch 0 (the log stamps both when it appends). For tests,
/// tools and the simulator; the broker proposes the batches clients sent.
///
/// # Panics
///
/// If `values` is empty (a batch holds at least one record).
pub fn data_batch(values: &[&[u8]], timestamp_ms: i64) -> Bytes {
    assert!(!values.is_empty(), "a batch holds at least one record");
    let records: Vec<BytesMut> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut r = BytesMut::with_capacity(12 + v.len());
            r.put_i8(0);
            put_varint(&mut r, 0);
            put_varint(&mut r, i as i64);
            put_varint(&mut r, -1); // null key
            put_varint(&mut r, v.len() as i64);
            r.put_slice(v);
            put_varint(&mut r, 0);
            r
        })
        .collect();
    build_batch(0, &records, 0, 0, timestamp_ms)
}

fn build_batch(
    attributes: i16,
    records: &[BytesMut],
    base_offset: u64,
    epoch: i32,
    timestamp: i64,
) -> Bytes {
    let body: usize = records.iter().map(|r| r.len() + 5).sum();
    let mut b = BytesMut::with_capacity(BATCH_HEADER_LEN + body);
    b.put_i64(base_offset as i64);
    b.put_i32(0); // batch length, below
    b.put_i32(epoch);
    b.put_i8(MAGIC_V2);
    b.put_u32(0); // crc, below
    b.put_i16(attributes);
    b.put_i32(records.len() as i32 - 1); // last offset delta
    b.put_i64(timestamp);
    b.put_i64(timestamp);
    b.put_i64(-1); // producer id
    b.put_i16(-1); // producer epoch
    b.put_i32(-1); // base sequence
    b.put_i32(records.len() as i32);
    for r in records {
        put_varint(&mut b, r.len() as i64);
        b.put_slice(r);
    }
    let batch_len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&batch_len.to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

/// What a stored batch is as a Raft entry: its kind and payload. A zero-width control batch
/// is a leader no-op (empty payload); a Spate control batch gives its control kind and the
/// record's value; every other batch (client data, and Kafka's own control batches such as
/// transaction markers, which the broker proposes as data) is [`EntryKind::Data`] with the
/// whole batch as payload. A batch that occupies no offset but is not a zero-width control
/// batch is refused. `batch` must be one complete, validated batch.
pub fn decode_entry(batch: Bytes) -> Result<(EntryKind, Bytes), String> {
    let h = BatchHeader::decode(&batch).map_err(|e| e.to_string())?;
    if h.is_zero_width() {
        return Ok((EntryKind::LeaderNoop, Bytes::new()));
    }
    if h.last_offset_delta < 0 {
        return Err(format!(
            "batch at offset {} occupies no offset (last offset delta {}, {} records, \
             attributes {:#x}) but is not a zero-width control batch (a leader no-op)",
            h.base_offset, h.last_offset_delta, h.record_count, h.attributes
        ));
    }
    match spate_control(&h, &batch)? {
        Some((kind, value)) => Ok((kind, value)),
        None => Ok((EntryKind::Data, batch)),
    }
}

/// `Some((kind, value))` if the batch is a Spate control batch.
fn spate_control(h: &BatchHeader, batch: &Bytes) -> Result<Option<(EntryKind, Bytes)>, String> {
    if h.attributes & ATTR_CONTROL == 0
        || h.attributes & ATTR_COMPRESSION_MASK != 0
        || h.record_count != 1
    {
        return Ok(None);
    }
    let end = h.total_len().min(batch.len());
    let body = &batch[..end];
    let mut at = BATCH_HEADER_LEN;
    let bad = |what: &str| format!("control batch at offset {}: {what}", h.base_offset);
    let len = get_varint(body, &mut at).ok_or_else(|| bad("record length"))?;
    let record_end = at
        .checked_add(usize::try_from(len).map_err(|_| bad("record length"))?)
        .filter(|e| *e <= body.len())
        .ok_or_else(|| bad("record length"))?;
    at += 1; // record attributes
    get_varint(body, &mut at).ok_or_else(|| bad("timestamp delta"))?;
    get_varint(body, &mut at).ok_or_else(|| bad("offset delta"))?;
    let key_len = get_varint(body, &mut at).ok_or_else(|| bad("key length"))?;
    if key_len != 4 || at + 4 > record_end {
        // Not a well-formed control key: not ours.
        return Ok(None);
    }
    let version = i16::from_be_bytes([body[at], body[at + 1]]);
    let ty = i16::from_be_bytes([body[at + 2], body[at + 3]]);
    at += 4;
    let Some(kind) = kind_of_type(ty).filter(|_| version == 0) else {
        return Ok(None);
    };
    let value_len = get_varint(body, &mut at).ok_or_else(|| bad("value length"))?;
    let value = if value_len < 0 {
        Bytes::new()
    } else {
        let n = value_len as usize;
        if at + n > record_end {
            return Err(bad("value beyond the record"));
        }
        batch.slice(at..at + n)
    };
    Ok(Some((kind, value)))
}

/// Whether a client batch would be mistaken for a Spate control batch when read back. The
/// adapter refuses such data entries (the broker should refuse client control batches, as
/// Kafka does, before proposing).
pub fn is_spate_control(batch: &Bytes) -> bool {
    BatchHeader::decode(batch)
        .is_ok_and(|h| h.is_zero_width() || spate_control(&h, batch).ok().flatten().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_storage::log::batch::{check_first, RecordBatch};

    /// Raft §5.4.2 / §6 entries survive the trip through the segment format: a control batch
    /// is a valid Kafka batch (CRC, record count) with the control bit set and decodes back
    /// to the same kind and payload.
    #[test]
    fn control_batches_round_trip_and_validate() {
        for (kind, payload) in [
            (
                EntryKind::ConfChange,
                Bytes::from_static(b"\x08\x01\x10\x02"),
            ),
            (EntryKind::ConfChangeV2, Bytes::from(vec![7u8; 300])),
        ] {
            let b = encode_control(kind, &payload, 1234, 7);
            let h = check_first(&b, 1 << 20).unwrap();
            assert_eq!(h.base_offset, 1234);
            assert_eq!(h.partition_leader_epoch, 7);
            assert_eq!(h.attributes & ATTR_CONTROL, ATTR_CONTROL);
            assert_eq!((h.record_count, h.producer_id), (1, -1));
            assert_eq!(h.total_len(), b.len());
            RecordBatch::validate(b.clone(), 1 << 20).unwrap();
            assert_eq!(decode_entry(b.clone()).unwrap(), (kind, payload));
            assert!(is_spate_control(&b));
        }
    }

    /// Raft §5.4.2 / §8: a leader's no-op is a zero-width control batch — no records, last
    /// offset delta -1, so it occupies no Kafka offset — exactly storage's
    /// `zero_width_control_batch`, and reads back as a no-op.
    #[test]
    fn a_leader_noop_is_a_zero_width_control_batch() {
        let b = encode_control(EntryKind::LeaderNoop, b"", 1234, 7);
        let h = check_first(&b, 1 << 20).unwrap();
        assert!(h.is_zero_width());
        assert_eq!((h.base_offset, h.partition_leader_epoch), (1234, 7));
        assert_eq!((h.record_count, h.last_offset_delta), (0, -1));
        assert_eq!((h.producer_id, h.base_timestamp), (-1, NO_TIMESTAMP));
        assert_eq!(h.next_offset(), 1234);
        let rb = RecordBatch::validate_zero_width(b.clone(), 1 << 20).unwrap();
        assert_eq!(rb.offset_count(), 0);
        assert!(RecordBatch::validate(b.clone(), 1 << 20).is_err());
        let want = RecordBatch::validate_zero_width(zero_width_control_batch(7), 1 << 20)
            .unwrap()
            .stamped(1234, 7);
        assert_eq!(&b, want.bytes());
        assert_eq!(
            decode_entry(b.clone()).unwrap(),
            (EntryKind::LeaderNoop, Bytes::new())
        );
        assert!(is_spate_control(&b));
    }

    /// A no-op written before no-ops were zero-width (one control record of type 100, one
    /// offset) still reads back as a no-op (Raft §5.3: an entry reads back as what was
    /// appended).
    #[test]
    fn a_one_record_noop_still_reads_back_as_a_noop() {
        let mut b = BytesMut::from(&encode_control(EntryKind::ConfChange, b"", 0, 1)[..]);
        let key_at = BATCH_HEADER_LEN + 1 + 1 + 1 + 1 + 1;
        b[key_at + 2..key_at + 4].copy_from_slice(&CONTROL_TYPE_LEADER_NOOP.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let b = b.freeze();
        RecordBatch::validate(b.clone(), 1 << 20).unwrap();
        assert_eq!(
            decode_entry(b).unwrap(),
            (EntryKind::LeaderNoop, Bytes::new())
        );
    }

    /// A batch that occupies no offset but is not a control batch is not a Raft entry of
    /// any kind: refused (it cannot be stored either, storage refuses it).
    #[test]
    fn a_zero_width_batch_that_is_not_control_is_refused() {
        let mut b = BytesMut::from(&encode_control(EntryKind::LeaderNoop, b"", 5, 3)[..]);
        b[21..23].copy_from_slice(&0i16.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let b = b.freeze();
        assert!(check_first(&b, 1 << 20).is_err());
        assert!(decode_entry(b.clone()).is_err());
        assert!(!is_spate_control(&b));
    }

    /// Raft §5.3 (one entry = one Kafka batch): the test batch builder writes valid v2 batches.
    #[test]
    fn data_batches_validate() {
        let b = data_batch(&[b"a", b"bb", b""], 1_700_000_000_000);
        let rb = RecordBatch::validate(b.clone(), 1 << 20).unwrap();
        assert_eq!(rb.offset_count(), 3);
        assert_eq!(rb.header().attributes, 0);
        assert_eq!(decode_entry(b).unwrap().0, EntryKind::Data);
    }

    /// Raft §5.4.2 / §6 control entries are encoded with Kafka's zigzag varints.
    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX.into(),
            i64::MIN,
            i64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut at = 0;
            assert_eq!(get_varint(&b, &mut at), Some(v));
            assert_eq!(at, b.len());
        }
    }

    /// Raft §5.3: Kafka's own control batches (transaction markers) proposed by the broker are
    /// data entries, only Spate's types are Raft control entries.
    #[test]
    fn other_control_types_are_data() {
        // A transaction marker (type 1, COMMIT) is a client-visible control batch: data.
        let mut b = BytesMut::from(&encode_control(EntryKind::ConfChange, b"", 0, 1)[..]);
        let key_at = BATCH_HEADER_LEN + 1 + 1 + 1 + 1 + 1;
        b[key_at + 2..key_at + 4].copy_from_slice(&1i16.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let b = b.freeze();
        RecordBatch::validate(b.clone(), 1 << 20).unwrap();
        assert_eq!(decode_entry(b.clone()).unwrap().0, EntryKind::Data);
        assert!(!is_spate_control(&b));
    }
}
