//! Fetch (key 1), v4–v12, without fetch sessions: every request is a full fetch and the
//! response carries session id 0, which KIP-227 allows (clients then keep sending full
//! fetches).
//!
//! Reads go to each partition's owning shard, one request per shard. If fewer than
//! `min_bytes` come back, the fetch parks on the owning shards until a produce moves a
//! requested partition's high watermark (woken by the flush, not by polling) or `max_wait_ms`
//! passes, then reads again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::ResponseError;

use crate::data::{by_shard, fan_out, wait_any};
use crate::kafka::Ctx;
use crate::partition::PartitionKey;
use crate::shard::{FetchItem, FetchOutcome, ShardRequest, ShardResponse};

/// Longest wait a client may ask for (Kafka caps it by the request timeout; so do we).
const FETCH_WAIT_MAX: Duration = Duration::from_secs(60);

enum Slot {
    Failed(ResponseError),
    Read {
        owner: usize,
        item: FetchItem,
        outcome: Option<FetchOutcome>,
    },
}

pub async fn handle(ctx: &Ctx, req: FetchRequest) -> FetchResponse {
    let shard = &ctx.shard;
    if req.session_id != 0 {
        return FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
    }
    let mut slots: Vec<Vec<Slot>> = Vec::with_capacity(req.topics.len());
    {
        let img = shard.image.borrow();
        for t in &req.topics {
            let topic = img.topics.get(t.topic.0.as_str());
            slots.push(
                t.partitions
                    .iter()
                    .map(|p| {
                        let Some(topic) = topic else {
                            return Slot::Failed(ResponseError::UnknownTopicOrPartition);
                        };
                        let Some(owner) = usize::try_from(p.partition)
                            .ok()
                            .and_then(|i| topic.partition_shards.get(i))
                        else {
                            return Slot::Failed(ResponseError::UnknownTopicOrPartition);
                        };
                        Slot::Read {
                            owner: *owner as usize % shard.mesh.nr_shards(),
                            item: FetchItem {
                                key: (topic.id, p.partition),
                                offset: p.fetch_offset,
                                max_bytes: p.partition_max_bytes.max(0) as usize,
                            },
                            outcome: None,
                        }
                    })
                    .collect(),
            );
        }
    }
    let max_wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = Instant::now() + max_wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        read_round(ctx, &mut slots).await;
        let (total, errors) = slots
            .iter()
            .flatten()
            .fold((0usize, false), |(n, e), s| match s {
                Slot::Failed(_) => (n, true),
                Slot::Read { outcome, .. } => match outcome {
                    Some(o) if o.error != ResponseError::Unknown(0) => (n, true),
                    Some(o) => (n + o.records.len(), e),
                    None => (n, e),
                },
            });
        if total >= min_bytes.max(1) || errors || Instant::now() >= deadline {
            break;
        }
        // Park until any requested partition's high watermark moves past what we saw.
        let mut by_owner: BTreeMap<usize, Vec<(PartitionKey, i64)>> = BTreeMap::new();
        for s in slots.iter().flatten() {
            if let Slot::Read {
                owner,
                item,
                outcome: Some(o),
            } = s
            {
                by_owner
                    .entry(*owner)
                    .or_default()
                    .push((item.key, o.high_watermark));
            }
        }
        wait_any(shard, by_owner, deadline).await;
        if Instant::now() >= deadline {
            read_round(ctx, &mut slots).await;
            break;
        }
    }
    let responses = req
        .topics
        .iter()
        .zip(slots)
        .map(|(t, ps)| {
            let partitions = t
                .partitions
                .iter()
                .zip(ps)
                .map(|(p, slot)| {
                    let base = PartitionData::default()
                        .with_partition_index(p.partition)
                        .with_preferred_read_replica(BrokerId(-1))
                        .with_aborted_transactions(if req.isolation_level == 1 {
                            Some(Vec::new())
                        } else {
                            None
                        });
                    match slot {
                        Slot::Failed(e) => base
                            .with_error_code(e.code())
                            .with_high_watermark(-1)
                            .with_last_stable_offset(-1)
                            .with_log_start_offset(-1)
                            .with_records(Some(Default::default())),
                        Slot::Read { outcome, .. } => {
                            let o = outcome.unwrap_or(FetchOutcome {
                                error: ResponseError::UnknownServerError,
                                high_watermark: -1,
                                log_start_offset: -1,
                                records: Default::default(),
                            });
                            base.with_error_code(o.error.code())
                                .with_high_watermark(o.high_watermark)
                                .with_last_stable_offset(o.high_watermark)
                                .with_log_start_offset(o.log_start_offset)
                                .with_records(Some(o.records))
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_topic_id(t.topic_id)
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default()
        .with_session_id(0)
        .with_responses(responses)
}

/// Reads every partition once from its owning shard (one request per shard).
async fn read_round(ctx: &Ctx, slots: &mut [Vec<Slot>]) {
    let mut wanted = Vec::new();
    for (ti, ps) in slots.iter().enumerate() {
        for (pi, s) in ps.iter().enumerate() {
            if let Slot::Read { owner, item, .. } = s {
                wanted.push((*owner, (ti, pi), *item));
            }
        }
    }
    let groups = by_shard(
        wanted
            .into_iter()
            .map(|(o, slot, item)| (o, 0, (slot, item)))
            .collect(),
    );
    let mut positions = Vec::new();
    let mut requests = Vec::new();
    for (to, group) in groups {
        let (pos, items): (Vec<(usize, usize)>, Vec<FetchItem>) =
            group.into_iter().map(|(_, x)| x).unzip();
        positions.push(pos);
        requests.push((to, ShardRequest::Fetch { items }));
    }
    let answers = fan_out(&ctx.shard, requests).await;
    for (pos, answer) in positions.into_iter().zip(answers) {
        let outcomes: Vec<FetchOutcome> = match answer {
            Ok(ShardResponse::Fetched(v)) => v,
            _ => pos
                .iter()
                .map(|_| FetchOutcome {
                    error: ResponseError::NotLeaderOrFollower,
                    high_watermark: -1,
                    log_start_offset: -1,
                    records: Default::default(),
                })
                .collect(),
        };
        for ((ti, pi), o) in pos.into_iter().zip(outcomes) {
            if let Slot::Read { outcome, .. } = &mut slots[ti][pi] {
                *outcome = Some(o);
            }
        }
    }
}
