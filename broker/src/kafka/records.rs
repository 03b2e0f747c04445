//! Record-level validation of a produced v2 batch (Kafka's `LogValidator`): the records
//! section — decompressed when the batch is compressed — must hold exactly `record_count`
//! well-formed records with sequential offset deltas; a compacted topic needs a key on every
//! record. Only varint lengths and the first record fields are read: keys, values and headers
//! are skipped, not copied.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use spate_storage::log::batch::{RecordBatch, BATCH_HEADER_LEN};

/// A bad record: its index in the batch (for Produce v8+ `record_errors`), the error code and
/// a message naming the problem.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    pub index: Option<i32>,
    pub code: ResponseError,
    pub message: String,
}

fn bad(index: usize, message: String) -> RecordError {
    RecordError {
        index: Some(index as i32),
        code: ResponseError::InvalidRecord,
        message,
    }
}

/// Kafka's zigzag varint (at most 5 bytes for an int, 10 for a long).
pub(crate) fn varint(buf: &[u8], at: &mut usize, max_bytes: usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for i in 0..max_bytes {
        let b = *buf.get(*at)?;
        *at += 1;
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

/// Decompresses the records section of `batch` (codec from its attributes). LZ4 frames with
/// dependent blocks are refused, as Kafka does (its clients cannot read them).
pub fn plain_records(batch: &RecordBatch) -> Result<Bytes, RecordError> {
    let codec = (batch.header().attributes & 0x07) as usize;
    let payload = batch.bytes().slice(BATCH_HEADER_LEN..);
    let corrupt = |message: String| RecordError {
        index: None,
        code: ResponseError::CorruptMessage,
        message,
    };
    if codec == 3 {
        // LZ4 frame: magic 04 22 4D 18, then FLG whose bit 5 is "blocks are independent".
        if payload.len() < 5 || payload[..4] != [0x04, 0x22, 0x4d, 0x18] {
            return Err(corrupt("the lz4 records are not an LZ4 frame".into()));
        }
        if payload[4] & 0x20 == 0 {
            return Err(corrupt(
                "the lz4 frame uses dependent blocks, which Kafka clients cannot read".into(),
            ));
        }
    }
    decompress(codec, payload).map_err(|e| {
        if format!("{e:#}").contains("exceeds the limit") {
            RecordError {
                index: None,
                code: ResponseError::InvalidRecord,
                message: format!(
                    "the records decompress to more than {} bytes",
                    crate::limits::DECOMPRESSED_BATCH_BYTES_MAX
                ),
            }
        } else {
            corrupt(format!("decompressing the records: {e}"))
        }
    })
}

/// Decompresses a records section with codec id `codec` (0 none … 4 zstd).
/// The output is bounded by [`crate::limits::DECOMPRESSED_BATCH_BYTES_MAX`] (an error whose
/// text says "exceeds the limit" past it).
pub fn decompress(codec: usize, data: Bytes) -> anyhow::Result<Bytes> {
    decompress_bounded(codec, data, crate::limits::DECOMPRESSED_BATCH_BYTES_MAX)
}

fn decompress_bounded(codec: usize, mut data: Bytes, limit: usize) -> anyhow::Result<Bytes> {
    use kafka_protocol::compression::{with_output_limit, Decompressor, Gzip, Lz4, Snappy, Zstd};
    let take = |out: &mut Bytes| Ok(out.clone());
    with_output_limit(limit, || match codec {
        0 => Ok(data),
        1 => <Gzip as Decompressor<Bytes>>::decompress(&mut data, take),
        2 => <Snappy as Decompressor<Bytes>>::decompress(&mut data, take),
        3 => <Lz4 as Decompressor<Bytes>>::decompress(&mut data, take),
        4 => <Zstd as Decompressor<Bytes>>::decompress(&mut data, take),
        other => anyhow::bail!("unknown codec {other}"),
    })
}

/// Compresses a records section with codec id `codec` (0 none … 4 zstd; LZ4 frames with
/// independent blocks, which Kafka clients need).
pub fn compress(codec: usize, plain: &[u8]) -> anyhow::Result<Bytes> {
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
    let mut out = BytesMut::new();
    let fill = |tmp: &mut BytesMut| {
        tmp.put_slice(plain);
        Ok(())
    };
    match codec {
        0 => out.put_slice(plain),
        1 => <Gzip as Compressor<BytesMut>>::compress(&mut out, fill)?,
        2 => <Snappy as Compressor<BytesMut>>::compress(&mut out, fill)?,
        3 => <Lz4 as Compressor<BytesMut>>::compress(&mut out, fill)?,
        4 => <Zstd as Compressor<BytesMut>>::compress(&mut out, fill)?,
        other => anyhow::bail!("unknown codec {other}"),
    }
    Ok(out.freeze())
}

/// Checks the records of a decompressed section against the batch's record count.
pub fn check_records(plain: &[u8], record_count: i32, need_keys: bool) -> Result<(), RecordError> {
    let mut at = 0usize;
    let mut i = 0usize;
    while at < plain.len() {
        if i >= record_count.max(0) as usize {
            return Err(bad(
                i,
                format!("the batch declares {record_count} records but holds more"),
            ));
        }
        let len = varint(plain, &mut at, 5)
            .ok_or_else(|| bad(i, format!("record {i}: truncated length")))?;
        if len <= 0 || at + len as usize > plain.len() {
            return Err(bad(i, format!("record {i}: length {len} does not fit")));
        }
        let body = &plain[at..at + len as usize];
        at += len as usize;
        let mut p = 1usize; // attributes
        let ok = varint(body, &mut p, 10) // timestamp delta
            .and_then(|_| varint(body, &mut p, 5))
            .and_then(|od| varint(body, &mut p, 5).map(|kl| (od, kl)));
        let Some((offset_delta, key_len)) = ok.filter(|_| p <= body.len()) else {
            return Err(bad(i, format!("record {i}: truncated fields")));
        };
        if offset_delta != i as i64 {
            return Err(bad(
                i,
                format!("record {i} has offset delta {offset_delta}; deltas must be 0, 1, 2, …"),
            ));
        }
        if need_keys && key_len < 0 {
            return Err(bad(
                i,
                "Compacted topic cannot accept message without key in topic partition".into(),
            ));
        }
        i += 1;
    }
    if i != record_count.max(0) as usize {
        return Err(bad(
            i,
            format!("the batch declares {record_count} records but holds {i}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompression_output_is_bounded_for_every_codec() {
        let plain = vec![0u8; 3 << 20];
        for codec in 1..=4 {
            let packed = compress(codec, &plain).unwrap();
            assert!(
                packed.len() < 1 << 20,
                "codec {codec}: {} bytes",
                packed.len()
            );
            let back = decompress_bounded(codec, packed.clone(), 4 << 20).unwrap();
            assert_eq!(back.len(), plain.len(), "codec {codec}");
            let err = decompress_bounded(codec, packed, 1 << 20).unwrap_err();
            assert!(
                format!("{err:#}").contains("exceeds the limit"),
                "codec {codec}: {err:#}"
            );
        }
    }

    /// One record: zigzag varints as Kafka writes them.
    fn record(offset_delta: u8, key: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0u8, 0, offset_delta * 2];
        match key {
            None => body.push(1), // -1
            Some(k) => {
                body.push((k.len() * 2) as u8);
                body.extend_from_slice(k);
            }
        }
        body.push(2); // value length 1
        body.push(b'v');
        body.push(0); // no headers
        let mut r = vec![(body.len() * 2) as u8];
        r.extend(body);
        r
    }

    #[test]
    fn counts_and_deltas() {
        let two: Vec<u8> = [record(0, Some(b"k")), record(1, None)].concat();
        assert_eq!(check_records(&two, 2, false), Ok(()));
        assert_eq!(
            check_records(&two, 3, false).unwrap_err().code,
            ResponseError::InvalidRecord
        );
        assert!(check_records(&two, 1, false)
            .unwrap_err()
            .message
            .contains("holds more"));
        let e = check_records(&two, 2, true).unwrap_err();
        assert_eq!(e.index, Some(1));
        assert!(e.message.contains("without key"));
        let gap: Vec<u8> = [record(0, None), record(2, None)].concat();
        assert!(check_records(&gap, 2, false)
            .unwrap_err()
            .message
            .contains("offset delta"));
        let truncated = &two[..two.len() - 2];
        assert!(check_records(truncated, 2, false).is_err());
    }
}
