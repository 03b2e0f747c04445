//! Fetch (key 1), v4–v18: topics by name before v13 and by id from v13, incremental fetch
//! sessions (KIP-227, see `kafka::fetch_sessions`), long-poll, whole batches.
//!
//! Reads go to each partition's owning shard, one request per shard. If fewer than
//! `min_bytes` come back, the fetch parks on the owning shards until a produce moves a
//! requested partition's high watermark (woken by the flush, not by polling) or `max_wait_ms`
//! passes, then reads again. The response-level `max_bytes` is applied after the reads, at
//! batch boundaries (the first batch always goes, Kafka's rule).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::ResponseError;
use spate_storage::log::batch::whole_batches_prefix;
use uuid::Uuid;

use super::s;
use crate::consensus::epoch_check;
use crate::data::{by_shard, fan_out, wait_any};
use crate::kafka::fetch_sessions::{SessionError, SessionPartition, TopicRef};
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

/// One partition of this fetch, resolved against the metadata image.
struct Entry {
    key: (TopicRef, i32),
    name: String,
    id: Uuid,
    slot: Slot,
}

/// `(partition, fetch offset, partition max bytes)` as a request or session lists it.
type Wanted = ((TopicRef, i32), i64, i32);

enum Mode {
    /// Epoch -1: no session.
    Sessionless,
    /// Epoch 0: a full fetch, opening `Some(session)` when there was room.
    Full(Option<i32>),
    /// Epoch > 0: only what changed goes back.
    Incremental(i32),
}

fn session_error(e: ResponseError) -> FetchResponse {
    FetchResponse::default()
        .with_error_code(e.code())
        .with_session_id(0)
}

pub async fn handle(ctx: &Ctx, req: FetchRequest) -> FetchResponse {
    let shard = &ctx.shard;
    let v = ctx.version;
    let by_id = v >= 13;
    let topic_ref = |name: &TopicName, id: Uuid| {
        if by_id {
            TopicRef::Id(id)
        } else {
            TopicRef::Name(name.0.to_string())
        }
    };
    let wanted: Vec<Wanted> = req
        .topics
        .iter()
        .flat_map(|t| {
            let tr = topic_ref(&t.topic, t.topic_id);
            t.partitions.iter().map(move |p| {
                (
                    (tr.clone(), p.partition),
                    p.fetch_offset,
                    p.partition_max_bytes,
                )
            })
        })
        .collect();
    // The leader epochs the client believes current (checked against the partitions' Raft
    // terms: FENCED_LEADER_EPOCH when older, UNKNOWN_LEADER_EPOCH when newer).
    let client_epochs: Vec<((TopicRef, i32), i32)> = req
        .topics
        .iter()
        .flat_map(|t| {
            let tr = topic_ref(&t.topic, t.topic_id);
            t.partitions
                .iter()
                .filter(|p| p.current_leader_epoch >= 0)
                .map(move |p| ((tr.clone(), p.partition), p.current_leader_epoch))
        })
        .collect();
    let epochs = &shard.partitions.consensus.epochs;

    // Which partitions this fetch reads, and what it tells the session.
    let (mode, list): (Mode, Vec<Wanted>) = {
        let mut sessions = shard.fetch_sessions.borrow_mut();
        match (req.session_id, req.session_epoch) {
            (id, -1) => {
                if id != 0 {
                    sessions.remove(id);
                }
                (Mode::Sessionless, wanted)
            }
            (id, 0) => {
                if id != 0 {
                    sessions.remove(id);
                }
                let parts = wanted
                    .iter()
                    .map(|(k, o, m)| (k.clone(), SessionPartition::new(*o, *m)))
                    .collect();
                (Mode::Full(sessions.create(parts)), wanted)
            }
            (id, epoch) => match sessions.get(id, epoch) {
                Err(SessionError::NotFound) => {
                    return session_error(ResponseError::FetchSessionIdNotFound)
                }
                Err(SessionError::InvalidEpoch) => {
                    return session_error(ResponseError::InvalidFetchSessionEpoch)
                }
                Ok(s) => {
                    for (k, o, m) in wanted {
                        s.upsert(k, o, m);
                    }
                    for t in &req.forgotten_topics_data {
                        let tr = topic_ref(&t.topic, t.topic_id);
                        for p in &t.partitions {
                            s.forget(&(tr.clone(), *p));
                        }
                    }
                    s.epoch = if s.epoch == i32::MAX { 1 } else { s.epoch + 1 };
                    let list = s
                        .partitions
                        .iter()
                        .map(|(k, p)| (k.clone(), p.fetch_offset, p.max_bytes))
                        .collect();
                    (Mode::Incremental(id), list)
                }
            },
        }
    };

    let mut entries: Vec<Entry> = {
        let img = shard.image.borrow();
        list.into_iter()
            .map(|((tr, partition), offset, max_bytes)| {
                let topic = match &tr {
                    TopicRef::Name(n) => img.topics.get(n.as_str()),
                    TopicRef::Id(id) => img.topic_by_id(id),
                };
                let (name, id) = match (&tr, topic) {
                    (_, Some(t)) => (t.name.clone(), t.id),
                    (TopicRef::Name(n), None) => (n.clone(), Uuid::nil()),
                    (TopicRef::Id(id), None) => (String::new(), *id),
                };
                let key = (tr, partition);
                let failed = match (topic, client_epochs.iter().find(|(k, _)| *k == key)) {
                    (Some(t), Some((_, current))) => {
                        epoch_check(*current, epochs.get(&(t.id, partition)))
                    }
                    _ => None,
                };
                let slot = match (topic, failed) {
                    (_, Some(e)) => Slot::Failed(e),
                    (None, _) => Slot::Failed(if by_id {
                        ResponseError::UnknownTopicId
                    } else {
                        ResponseError::UnknownTopicOrPartition
                    }),
                    (Some(t), None) => match usize::try_from(partition)
                        .ok()
                        .and_then(|i| t.partition_shards.get(i))
                    {
                        None => Slot::Failed(ResponseError::UnknownTopicOrPartition),
                        Some(owner) => Slot::Read {
                            owner: *owner as usize % shard.mesh.nr_shards(),
                            item: FetchItem {
                                key: (t.id, partition),
                                offset,
                                max_bytes: max_bytes.max(0) as usize,
                            },
                            outcome: None,
                        },
                    },
                };
                Entry {
                    key,
                    name,
                    id,
                    slot,
                }
            })
            .collect()
    };

    let max_wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = Instant::now() + max_wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    loop {
        read_round(ctx, &mut entries).await;
        let (total, errors) = entries
            .iter()
            .fold((0usize, false), |(n, e), en| match &en.slot {
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
        for en in &entries {
            if let Slot::Read {
                owner,
                item,
                outcome: Some(o),
            } = &en.slot
            {
                by_owner
                    .entry(*owner)
                    .or_default()
                    .push((item.key, o.high_watermark));
            }
        }
        wait_any(shard, by_owner, deadline).await;
        if Instant::now() >= deadline {
            read_round(ctx, &mut entries).await;
            break;
        }
    }

    // The response-level byte limit, at batch boundaries, the first batch always.
    let mut budget = req.max_bytes.max(0) as usize;
    let mut any = false;
    for en in &mut entries {
        if let Slot::Read {
            outcome: Some(o), ..
        } = &mut en.slot
        {
            if o.records.is_empty() {
                continue;
            }
            let cut = if any {
                cut_at_batches(&o.records, budget)
            } else {
                o.records.clone()
            };
            any = true;
            budget = budget.saturating_sub(cut.len());
            o.records = cut;
        }
    }

    let isolation = req.isolation_level;
    let mut sessions = shard.fetch_sessions.borrow_mut();
    let (session_id, mut session) = match mode {
        Mode::Sessionless | Mode::Full(None) => (0, None),
        Mode::Full(Some(id)) | Mode::Incremental(id) => (id, sessions.get_existing(id)),
    };
    let incremental = matches!(mode, Mode::Incremental(_));
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    for en in entries {
        let data = partition_data(en.key.1, en.slot, isolation);
        if let Some(s) = session.as_deref_mut() {
            if let Some(sp) = s.find_mut(&en.key) {
                let changed = data.error_code != 0
                    || data.records.as_ref().is_some_and(|r| !r.is_empty())
                    || sp.sent_hw != data.high_watermark
                    || sp.sent_log_start != data.log_start_offset;
                if incremental && !changed {
                    continue;
                }
                sp.sent_hw = data.high_watermark;
                sp.sent_log_start = data.log_start_offset;
            }
        }
        let same_topic = responses.last().is_some_and(|t| {
            if by_id {
                t.topic_id == en.id
            } else {
                t.topic.0.as_str() == en.name
            }
        });
        if !same_topic {
            let t = if by_id {
                FetchableTopicResponse::default().with_topic_id(en.id)
            } else {
                FetchableTopicResponse::default().with_topic(TopicName(s(en.name.clone())))
            };
            responses.push(t);
        }
        if let Some(t) = responses.last_mut() {
            t.partitions.push(data);
        }
    }
    FetchResponse::default()
        .with_session_id(session_id)
        .with_responses(responses)
}

fn partition_data(partition: i32, slot: Slot, isolation_level: i8) -> PartitionData {
    let base = PartitionData::default()
        .with_partition_index(partition)
        .with_preferred_read_replica(BrokerId(-1))
        .with_aborted_transactions(if isolation_level == 1 {
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
}

/// The longest prefix of whole batches within `limit` bytes.
fn cut_at_batches(records: &Bytes, limit: usize) -> Bytes {
    records.slice(..whole_batches_prefix(records, |_, end| end <= limit))
}

/// Reads every partition once from its owning shard (one request per shard).
async fn read_round(ctx: &Ctx, entries: &mut [Entry]) {
    let mut wanted = Vec::new();
    for (i, en) in entries.iter().enumerate() {
        if let Slot::Read { owner, item, .. } = &en.slot {
            wanted.push((*owner, i, *item));
        }
    }
    let groups = by_shard(wanted);
    let mut positions = Vec::new();
    let mut requests = Vec::new();
    for (to, group) in groups {
        let (pos, items): (Vec<usize>, Vec<FetchItem>) = group.into_iter().unzip();
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
        for (i, o) in pos.into_iter().zip(outcomes) {
            if let Slot::Read { outcome, .. } = &mut entries[i].slot {
                *outcome = Some(o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(n: usize) -> Bytes {
        let recs: Vec<Record> = (0..n)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(vec![7u8; 100])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            recs.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn cuts_only_at_batch_boundaries() {
        let one = batch(3);
        let mut two = bytes::BytesMut::from(&one[..]);
        two.extend_from_slice(&one);
        let two = two.freeze();
        assert_eq!(cut_at_batches(&two, two.len()).len(), two.len());
        assert_eq!(cut_at_batches(&two, two.len() - 1).len(), one.len());
        assert_eq!(cut_at_batches(&two, one.len() - 1).len(), 0);
        assert_eq!(cut_at_batches(&Bytes::new(), 100).len(), 0);
    }
}
