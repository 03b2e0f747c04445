//! Produce (key 0), v3–v13.
//!
//! Decode → validate every partition's batch on this shard (exactly one v2 batch, length,
//! CRC-32C, the records themselves — decompressed when compressed: count, offset deltas, keys
//! on compacted topics (see `kafka::records`) —, the topic's `max.message.bytes` and timestamp
//! rules; recompression when the topic names a codec) → one request
//! per owning shard → answer once the batches are durable (acks=1 and acks=all; acks=0 sends
//! no response). Record batches stay `Bytes` slices of the request until the appender copies
//! them into its aligned DMA buffer.
//!
//! Idempotent batches are checked against the partition's producer state on the owning shard
//! (duplicates answered with their original offsets). Not yet: transactions (transactional
//! batches get INVALID_TXN_STATE). Produce v13 addresses topics by id.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use spate_storage::log::batch::{BatchError, BatchHeader, RecordBatch, BATCH_HEADER_LEN};

use super::s;
use crate::data::{by_shard, fan_out};
use crate::kafka::records;
use crate::kafka::Ctx;
use crate::metadata::configs::topic_config;
use crate::shard::{ProduceItem, ShardRequest, ShardResponse};

/// Produce versions below this are advertised but answered UNSUPPORTED_VERSION (see
/// [`legacy_unsupported`]).
pub const SERVED_VERSION_MIN: i16 = 3;

/// Attribute bit of a v2 batch: timestamps are the broker's append time.
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit of a v2 batch: part of a transaction.
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

struct PartitionPlan {
    error: ResponseError,
    message: Option<String>,
    log_append_time: i64,
    /// The first bad record's index and why (Produce v8+ `record_errors`).
    record_error: Option<(i32, String)>,
}

fn batch_error(e: &BatchError) -> ResponseError {
    match e {
        BatchError::BatchLength { batch_length, .. } if *batch_length > 0 => {
            ResponseError::MessageTooLarge
        }
        // Kafka 4 answers INVALID_RECORD for more than one batch and for old formats.
        BatchError::TrailingBytes { .. } | BatchError::Magic { .. } => ResponseError::InvalidRecord,
        _ => ResponseError::CorruptMessage,
    }
}

/// Rewrites a batch for a LogAppendTime topic: timestamp type and max timestamp, new CRC.
fn with_log_append_time(batch: &RecordBatch, now: i64) -> Result<RecordBatch, BatchError> {
    let mut b = BytesMut::from(&batch.bytes()[..]);
    let attrs = i16::from_be_bytes([b[21], b[22]]) | ATTR_LOG_APPEND_TIME;
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    b[35..43].copy_from_slice(&now.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    let len = b.len();
    RecordBatch::validate(Bytes::from(b), len)
}

pub async fn handle(ctx: &Ctx, req: ProduceRequest) -> Option<ProduceResponse> {
    let shard = &ctx.shard;
    let now = crate::wall_ms();
    let by_id = ctx.version >= 13;
    // (owner shard, result slot, item) for every partition that passes validation.
    let mut items = Vec::new();
    let mut plans: Vec<Vec<PartitionPlan>> = Vec::with_capacity(req.topic_data.len());
    {
        let img = shard.image.borrow();
        let node = shard.config.node_id;
        let mut slot = 0usize;
        for t in &req.topic_data {
            let topic = if by_id {
                img.topic_by_id(&t.topic_id)
            } else {
                img.topics.get(t.name.0.as_str())
            };
            let mut tp = Vec::with_capacity(t.partition_data.len());
            for p in &t.partition_data {
                let this_slot = slot;
                slot += 1;
                let fail = |error, message: Option<String>| PartitionPlan {
                    error,
                    message,
                    log_append_time: -1,
                    record_error: None,
                };
                let fail_record = |e: records::RecordError| PartitionPlan {
                    error: e.code,
                    message: Some(e.message.clone()),
                    log_append_time: -1,
                    record_error: e.index.map(|i| (i, e.message)),
                };
                let Some(topic) = topic else {
                    tp.push(fail(
                        if by_id {
                            ResponseError::UnknownTopicId
                        } else {
                            ResponseError::UnknownTopicOrPartition
                        },
                        None,
                    ));
                    continue;
                };
                if topic.name == crate::groups::OFFSETS_TOPIC {
                    tp.push(fail(
                        ResponseError::InvalidTopicException,
                        Some(format!("Cannot append to internal topic {}", topic.name)),
                    ));
                    continue;
                }
                let Some(owner) = usize::try_from(p.index)
                    .ok()
                    .and_then(|i| topic.partition_shards.get(i))
                else {
                    tp.push(fail(ResponseError::UnknownTopicOrPartition, None));
                    continue;
                };
                let config = |name| {
                    img.effective_topic_config(
                        topic_config(name).expect("known config"),
                        &topic.configs,
                        node,
                    )
                    .0
                };
                let max_bytes: usize = config("max.message.bytes").parse().unwrap_or(1_048_588);
                let Some(records) = p.records.clone() else {
                    tp.push(fail(
                        ResponseError::InvalidRecord,
                        Some("records are null".into()),
                    ));
                    continue;
                };
                let batch = match RecordBatch::validate(records, max_bytes) {
                    Ok(b) => b,
                    Err(e) => {
                        tp.push(fail(batch_error(&e), Some(e.to_string())));
                        continue;
                    }
                };
                let h: &BatchHeader = batch.header();
                if h.attributes & ATTR_CONTROL != 0 && h.attributes & ATTR_TRANSACTIONAL == 0 {
                    // Kafka: "clients are not allowed to write control records". They would
                    // also pass for the broker's own Raft control entries.
                    tp.push(fail(
                        ResponseError::InvalidRecord,
                        Some("clients may not write control batches".into()),
                    ));
                    continue;
                }
                if h.attributes & ATTR_TRANSACTIONAL != 0 {
                    tp.push(fail(
                        ResponseError::InvalidTxnState,
                        Some("transactions are not supported yet".into()),
                    ));
                    continue;
                }
                let plain = match records::plain_records(&batch) {
                    Ok(p) => p,
                    Err(e) => {
                        tp.push(fail_record(e));
                        continue;
                    }
                };
                let compacted = config("cleanup.policy").contains("compact");
                if let Err(e) = records::check_records(&plain, h.record_count, compacted) {
                    tp.push(fail_record(e));
                    continue;
                }
                let batch = match recompress(&batch, &plain, &config("compression.type"), max_bytes)
                {
                    Ok(b) => b,
                    Err(e) => {
                        tp.push(fail(ResponseError::CorruptMessage, Some(e)));
                        continue;
                    }
                };
                let h: &BatchHeader = batch.header();
                let log_append = config("message.timestamp.type") == "LogAppendTime";
                let batch = if log_append {
                    match with_log_append_time(&batch, now) {
                        Ok(b) => b,
                        Err(e) => {
                            tp.push(fail(ResponseError::CorruptMessage, Some(e.to_string())));
                            continue;
                        }
                    }
                } else {
                    let before: i64 = config("message.timestamp.before.max.ms")
                        .parse()
                        .unwrap_or(i64::MAX);
                    let after: i64 = config("message.timestamp.after.max.ms")
                        .parse()
                        .unwrap_or(i64::MAX);
                    if h.base_timestamp < now.saturating_sub(before)
                        || h.max_timestamp > now.saturating_add(after)
                    {
                        tp.push(fail(
                            ResponseError::InvalidTimestamp,
                            Some(format!(
                                "timestamps [{}, {}] are outside the topic's accepted range around {now}",
                                h.base_timestamp, h.max_timestamp
                            )),
                        ));
                        continue;
                    }
                    batch
                };
                items.push((
                    *owner as usize % shard.mesh.nr_shards(),
                    this_slot,
                    ProduceItem {
                        key: (topic.id, p.index),
                        batch,
                    },
                ));
                tp.push(PartitionPlan {
                    error: ResponseError::Unknown(0),
                    message: None,
                    log_append_time: if log_append { now } else { -1 },
                    record_error: None,
                });
            }
            plans.push(tp);
        }
    }

    // One request per owning shard, all in flight at once.
    let wait = req.acks != 0;
    let groups = by_shard(items);
    let mut slots_per_request = Vec::new();
    let mut requests = Vec::new();
    for (to, group) in groups {
        let (slots, items): (Vec<usize>, Vec<ProduceItem>) = group.into_iter().unzip();
        slots_per_request.push(slots);
        requests.push((to, ShardRequest::Produce { items, wait }));
    }
    // The appends happen when the owning shards receive the requests; the timeout bounds
    // only the wait for durability (as Kafka's bounds the wait for replication).
    let answers = if req.timeout_ms > 0 && wait {
        let limit = std::time::Duration::from_millis(req.timeout_ms as u64);
        glommio::timer::timeout(limit, async { Ok(fan_out(shard, requests).await) })
            .await
            .unwrap_or_default()
    } else {
        fan_out(shard, requests).await
    };
    if req.acks == 0 {
        return None;
    }
    let timed_out = answers.is_empty();
    let mut outcomes = std::collections::HashMap::new();
    for (slots, answer) in slots_per_request.into_iter().zip(answers) {
        match answer {
            Ok(ShardResponse::Produced(v)) => {
                for (slot, o) in slots.into_iter().zip(v) {
                    outcomes.insert(slot, Ok(o));
                }
            }
            Ok(_) | Err(_) => {
                for slot in slots {
                    outcomes.insert(slot, Err(ResponseError::NotLeaderOrFollower));
                }
            }
        }
    }
    let mut slot = 0usize;
    let responses = req
        .topic_data
        .iter()
        .zip(plans)
        .map(|(t, tp)| {
            let partition_responses = t
                .partition_data
                .iter()
                .zip(tp)
                .map(|(p, plan)| {
                    let this_slot = slot;
                    slot += 1;
                    let base = PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_log_append_time_ms(plan.log_append_time)
                        .with_base_offset(-1)
                        .with_log_start_offset(-1);
                    if plan.error != ResponseError::Unknown(0) {
                        let base = if ctx.version >= 8 {
                            base.with_record_errors(
                                plan.record_error
                                    .into_iter()
                                    .map(|(i, m)| {
                                        BatchIndexAndErrorMessage::default()
                                            .with_batch_index(i)
                                            .with_batch_index_error_message(Some(s(m)))
                                    })
                                    .collect(),
                            )
                        } else {
                            base
                        };
                        return base
                            .with_error_code(plan.error.code())
                            .with_error_message(plan.message.map(s));
                    }
                    if timed_out {
                        return base.with_error_code(ResponseError::RequestTimedOut.code());
                    }
                    match outcomes.remove(&this_slot) {
                        Some(Ok(o)) if o.error == ResponseError::Unknown(0) => base
                            .with_base_offset(o.base_offset)
                            .with_log_start_offset(o.log_start_offset),
                        Some(Ok(o)) => base.with_error_code(o.error.code()),
                        Some(Err(e)) => base.with_error_code(e.code()),
                        None => base.with_error_code(ResponseError::UnknownServerError.code()),
                    }
                })
                .collect();
            let r = TopicProduceResponse::default().with_partition_responses(partition_responses);
            if by_id {
                r.with_topic_id(t.topic_id)
            } else {
                r.with_name(t.name.clone())
            }
        })
        .collect();
    Some(ProduceResponse::default().with_responses(responses))
}

/// Kafka's codec names for `compression.type`, by the batch attribute's codec id.
const CODECS: [&str; 5] = ["uncompressed", "gzip", "snappy", "lz4", "zstd"];

/// Re-compresses a batch whose codec differs from the topic's `compression.type` (unless that
/// is `producer`), as Kafka does. Only the records section changes codec: records stay
/// byte-for-byte what the producer sent (duplicate header keys included); the header gets the
/// new codec, length and CRC.
fn recompress(
    batch: &RecordBatch,
    plain: &Bytes,
    topic_codec: &str,
    max_bytes: usize,
) -> Result<RecordBatch, String> {
    let h = batch.header();
    let codec = (h.attributes & 0x07) as usize;
    let Some(target) = CODECS.iter().position(|c| *c == topic_codec) else {
        return Ok(batch.clone()); // "producer": keep what the producer sent
    };
    if target == codec {
        return Ok(batch.clone());
    }
    let raw = batch.bytes();
    let packed = crate::kafka::records::compress(target, plain)
        .map_err(|e| format!("compressing as {topic_codec}: {e}"))?;
    let mut b = BytesMut::with_capacity(BATCH_HEADER_LEN + packed.len());
    b.extend_from_slice(&raw[..BATCH_HEADER_LEN]);
    b.extend_from_slice(&packed);
    let batch_length = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let attrs = (h.attributes & !0x07) | target as i16;
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    let len = b.len();
    RecordBatch::validate(b.freeze(), max_bytes.max(len))
        .map_err(|e| format!("recompressed batch: {e}"))
}

/// Produce v0–v2 are advertised (Kafka 4 does the same, KAFKA-18659: librdkafka enables
/// gzip/snappy/lz4 only when the broker lists Produce v0) but not served: such a request gets
/// UNSUPPORTED_VERSION for every partition. kafka-protocol cannot decode these versions, so
/// the request is read and the response written by hand (the layout is the v3 one without
/// `transactional_id`; responses add `throttle_time_ms` from v1 and `log_append_time` from v2).
pub fn legacy_unsupported(
    correlation_id: i32,
    version: i16,
    body: &[u8],
) -> spate_net::conn::Reply {
    use bytes::BufMut;
    use spate_net::conn::Reply;

    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn i16(&mut self) -> Option<i16> {
            self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
        }
        fn i32(&mut self) -> Option<i32> {
            self.take(4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn count(&mut self) -> Option<usize> {
            let n = self.i32()?;
            // Every element takes at least one byte: a larger count is malformed.
            usize::try_from(n).ok().filter(|n| *n <= self.0.len())
        }
    }
    /// `(acks, [(topic name, [partition])])`
    type Legacy = (i16, Vec<(Vec<u8>, Vec<i32>)>);
    let parse = || -> Option<Legacy> {
        let mut r = R(body);
        let acks = r.i16()?;
        r.i32()?; // timeout
        let mut topics = Vec::new();
        for _ in 0..r.count()? {
            let len = usize::try_from(r.i16()?).ok()?;
            let name = r.take(len)?.to_vec();
            let mut partitions = Vec::new();
            for _ in 0..r.count()? {
                partitions.push(r.i32()?);
                let records = r.i32()?;
                if records > 0 {
                    r.take(records as usize)?;
                }
            }
            topics.push((name, partitions));
        }
        Some((acks, topics))
    };
    let Some((acks, topics)) = parse() else {
        return Reply::Close(format!("malformed Produce v{version} request"));
    };
    if acks == 0 {
        return Reply::Nothing;
    }
    let mut b = BytesMut::new();
    b.put_i32(0); // size, patched below
    b.put_i32(correlation_id);
    b.put_i32(topics.len() as i32);
    for (name, partitions) in topics {
        b.put_i16(name.len() as i16);
        b.put_slice(&name);
        b.put_i32(partitions.len() as i32);
        for p in partitions {
            b.put_i32(p);
            b.put_i16(ResponseError::UnsupportedVersion.code());
            b.put_i64(-1);
            if version >= 2 {
                b.put_i64(-1);
            }
        }
    }
    if version >= 1 {
        b.put_i32(0);
    }
    let size = (b.len() - 4) as i32;
    b[0..4].copy_from_slice(&size.to_be_bytes());
    Reply::Frame(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use spate_net::conn::Reply;

    #[test]
    fn produce_v0_to_v2_get_unsupported_version_per_partition() {
        let mut req = BytesMut::new();
        req.put_i16(1); // acks
        req.put_i32(1000);
        req.put_i32(1); // one topic
        req.put_i16(1);
        req.put_slice(b"t");
        req.put_i32(2); // two partitions
        for p in [0, 1] {
            req.put_i32(p);
            req.put_i32(3);
            req.put_slice(b"abc");
        }
        for version in 0..3 {
            let Reply::Frame(f) = legacy_unsupported(7, version, &req) else {
                panic!("expected a response")
            };
            let size = i32::from_be_bytes(f[0..4].try_into().unwrap()) as usize;
            assert_eq!(size, f.len() - 4);
            assert_eq!(i32::from_be_bytes(f[4..8].try_into().unwrap()), 7);
            // topics(1) name(t) partitions(2) [index, error]
            assert_eq!(&f[8..12], &1i32.to_be_bytes());
            assert_eq!(&f[12..15], &[0, 1, b't']);
            assert_eq!(i16::from_be_bytes(f[23..25].try_into().unwrap()), 35);
            let per_partition = if version >= 2 { 22 } else { 14 };
            let tail = if version >= 1 { 4 } else { 0 };
            assert_eq!(f.len(), 19 + 2 * per_partition + tail);
        }
        // acks=0: no response; truncated: close.
        let mut zero = req.clone();
        zero[0..2].copy_from_slice(&0i16.to_be_bytes());
        assert!(matches!(legacy_unsupported(1, 1, &zero), Reply::Nothing));
        assert!(matches!(
            legacy_unsupported(1, 1, &req[..10]),
            Reply::Close(_)
        ));
    }
}
