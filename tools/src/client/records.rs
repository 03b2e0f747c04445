//! Record batches (format v2) in and out: what produce sends and what fetch returns.

use anyhow::{anyhow, Result};
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID,
};

/// One record as the CLI produces or prints it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the epoch (creation or log-append time).
    pub timestamp: i64,
    pub offset: i64,
}

impl Message {
    /// Bytes this record adds to a batch, roughly (for batch sizing).
    pub fn size_estimate(&self) -> usize {
        let h: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 4)
            .sum();
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + h
            + 16
    }
}

pub fn parse_compression(s: &str) -> Option<Compression> {
    Some(match s {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => return None,
    })
}

/// One v2 batch (no producer id: idempotence is not used) with offset deltas 0..n.
pub fn encode_batch(messages: &[Message], compression: Compression) -> Result<Bytes> {
    let records: Vec<Record> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever offset − sequence changes; sequence
            // = offset − 1 keeps one batch whose base sequence is −1 (none).
            sequence: i as i32 - 1,
            timestamp: m.timestamp,
            key: m.key.clone(),
            value: m.value.clone(),
            headers: m
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| anyhow!("encoding a record batch: {e}"))?;
    Ok(buf.freeze())
}

/// What one fetched partition's records decode to.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Data records at or after the fetch offset, in offset order (control records dropped).
    pub messages: Vec<Message>,
    /// The offset after the last complete batch (the next fetch offset), when any batch was
    /// complete.
    pub next_offset: Option<i64>,
}

/// Offsets inside a v2 batch header.
const BATCH_LENGTH_AT: usize = 8;
const BATCH_HEADER_PREFIX_BYTES: usize = 12;
const MAGIC_AT: usize = 16;
const LAST_OFFSET_DELTA_AT: usize = 23;

/// Decodes the complete batches of a fetch response's `records` (a trailing partial batch is
/// normal: the broker cuts at the size limit) and keeps records at or after `fetch_offset`.
pub fn decode_fetched(mut data: Bytes, fetch_offset: i64) -> Result<Decoded> {
    let mut out = Decoded::default();
    while data.len() >= BATCH_HEADER_PREFIX_BYTES {
        let base_offset = i64::from_be_bytes(data[0..8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(
            data[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4]
                .try_into()
                .expect("4 bytes"),
        );
        if len < 0 {
            return Err(anyhow!("batch at offset {base_offset} has length {len}"));
        }
        let total = BATCH_HEADER_PREFIX_BYTES + len as usize;
        if data.len() < total {
            break;
        }
        let mut batch = data.split_to(total);
        if batch.len() <= LAST_OFFSET_DELTA_AT + 4 {
            return Err(anyhow!("batch at offset {base_offset} is too short"));
        }
        if batch[MAGIC_AT] != 2 {
            return Err(anyhow!(
                "batch at offset {base_offset} has magic {} (only v2 is supported)",
                batch[MAGIC_AT]
            ));
        }
        let last_delta = i32::from_be_bytes(
            batch[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let set = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| anyhow!("decoding the batch at offset {base_offset}: {e}"))?;
        for r in set.records {
            if r.control || r.offset < fetch_offset {
                continue;
            }
            out.messages.push(Message {
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                timestamp: r.timestamp,
                offset: r.offset,
            });
        }
        out.next_offset = Some(base_offset + last_delta as i64 + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(k: Option<&str>, v: &str) -> Message {
        Message {
            key: k.map(|k| Bytes::from(k.to_string())),
            value: Some(Bytes::from(v.to_string())),
            headers: vec![("h".into(), Some(Bytes::from_static(b"1")))],
            timestamp: 1_700_000_000_000,
            offset: 0,
        }
    }

    #[test]
    fn a_batch_round_trips_for_every_codec() {
        let msgs: Vec<Message> = (0..50).map(|i| msg(Some("k"), &format!("v{i}"))).collect();
        for c in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let bytes = encode_batch(&msgs, parse_compression(c).unwrap()).unwrap();
            // Exactly one batch: base offset 0, last offset delta 49.
            let len = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize;
            assert_eq!(len + 12, bytes.len(), "{c}: one batch");
            let d = decode_fetched(bytes, 0).unwrap();
            assert_eq!(d.next_offset, Some(50), "{c}");
            assert_eq!(d.messages.len(), 50, "{c}");
            assert_eq!(d.messages[7].value.as_deref(), Some(&b"v7"[..]));
            assert_eq!(d.messages[7].offset, 7);
            assert_eq!(d.messages[7].headers, msgs[7].headers);
        }
    }

    #[test]
    fn a_partial_trailing_batch_is_left_for_the_next_fetch() {
        let a = encode_batch(&[msg(None, "a"), msg(None, "b")], Compression::None).unwrap();
        let mut both = BytesMut::from(&a[..]);
        both.extend_from_slice(&a[..a.len() - 3]);
        let d = decode_fetched(both.freeze(), 1).unwrap();
        // Offset 0 is before the fetch offset; the cut second batch is not decoded.
        assert_eq!(d.messages.len(), 1);
        assert_eq!(d.messages[0].offset, 1);
        assert_eq!(d.next_offset, Some(2));
    }
}
