//! Produce (key 0), v3–v12.
//!
//! Decode → validate every partition's batch on this shard (exactly one v2 batch, length,
//! CRC-32C, record count, the topic's `max.message.bytes` and timestamp rules) → one request
//! per owning shard → answer once the batches are durable (acks=1 and acks=all; acks=0 sends
//! no response). Record batches stay `Bytes` slices of the request until the appender copies
//! them into its aligned DMA buffer.
//!
//! Not yet: idempotent and transactional producers (batches with a producer id are refused
//! with UNKNOWN_PRODUCER_ID until InitProducerId exists), recompression for a topic whose
//! `compression.type` names a codec, Produce v13 (topic ids).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;
use spate_storage::log::batch::{BatchError, BatchHeader, RecordBatch};

use super::s;
use crate::data::{by_shard, fan_out};
use crate::kafka::Ctx;
use crate::metadata::configs::topic_config;
use crate::shard::{ProduceItem, ShardRequest, ShardResponse};

/// Attribute bit of a v2 batch: timestamps are the broker's append time.
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit of a v2 batch: part of a transaction.
const ATTR_TRANSACTIONAL: i16 = 0x10;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct PartitionPlan {
    error: ResponseError,
    message: Option<String>,
    log_append_time: i64,
}

fn batch_error(e: &BatchError) -> ResponseError {
    match e {
        BatchError::BatchLength { batch_length, .. } if *batch_length > 0 => {
            ResponseError::MessageTooLarge
        }
        BatchError::TrailingBytes { .. } => ResponseError::InvalidRecord,
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
    let now = now_ms();
    // (owner shard, result slot, item) for every partition that passes validation.
    let mut items = Vec::new();
    let mut plans: Vec<Vec<PartitionPlan>> = Vec::with_capacity(req.topic_data.len());
    {
        let img = shard.image.borrow();
        let node = shard.config.node_id;
        let mut slot = 0usize;
        for t in &req.topic_data {
            let topic = img.topics.get(t.name.0.as_str());
            let mut tp = Vec::with_capacity(t.partition_data.len());
            for p in &t.partition_data {
                let this_slot = slot;
                slot += 1;
                let fail = |error, message: Option<String>| PartitionPlan {
                    error,
                    message,
                    log_append_time: -1,
                };
                let Some(topic) = topic else {
                    tp.push(fail(ResponseError::UnknownTopicOrPartition, None));
                    continue;
                };
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
                if h.producer_id >= 0 || h.attributes & ATTR_TRANSACTIONAL != 0 {
                    tp.push(fail(
                        ResponseError::UnknownProducerId,
                        Some("idempotent and transactional produce are not supported yet".into()),
                    ));
                    continue;
                }
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
    let answers = fan_out(shard, requests).await;
    if req.acks == 0 {
        return None;
    }
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
                        return base
                            .with_error_code(plan.error.code())
                            .with_error_message(plan.message.map(s));
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
            TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(partition_responses)
        })
        .collect();
    Some(ProduceResponse::default().with_responses(responses))
}
