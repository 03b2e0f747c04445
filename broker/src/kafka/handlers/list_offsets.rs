//! ListOffsets (key 2), v1–v10: the earliest (-2) and latest (-1) offsets of partitions, the
//! first offset at or after a timestamp (found by scanning batch headers until the time index
//! exists; see `Partition::offset_for_timestamp`), the record with the largest timestamp (-3,
//! v7+), the earliest local offset (-4, v8+: the earliest, there is no tiered storage) and the
//! latest tiered offset (-5, v9+: -1). A special value the version does not know gets
//! UNSUPPORTED_VERSION; any other negative timestamp searches from the first record, as Kafka.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::consensus::epoch_check;
use crate::data::{self, locate, per_owner};
use crate::kafka::Ctx;
use crate::shard::{ShardRequest, ShardResponse};

pub async fn handle(ctx: &Ctx, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let shard = &ctx.shard;
    let mut results: Vec<Vec<(ResponseError, i64, i64)>> = Vec::new();
    let mut wanted = Vec::new();
    let epochs = &shard.partitions.consensus.epochs;
    // The partitions' current leader epochs, for the answer (Kafka gives the epoch of the
    // offset found; the current one is never older, so a client's later truncation check
    // cannot see a false divergence).
    let mut leader_epochs: Vec<Vec<i32>> = Vec::new();
    {
        let img = shard.image.borrow();
        for (ti, t) in req.topics.iter().enumerate() {
            let topic = img.topics.get(t.name.0.as_str());
            let mut r = Vec::new();
            leader_epochs.push(
                t.partitions
                    .iter()
                    .map(|p| {
                        locate(shard, topic, p.partition_index)
                            .and_then(|(key, _)| epochs.get(&key))
                            .unwrap_or(-1)
                    })
                    .collect(),
            );
            for (pi, p) in t.partitions.iter().enumerate() {
                let needs = match p.timestamp {
                    data::MAX_TIMESTAMP => 7,
                    data::EARLIEST_LOCAL_TIMESTAMP => 8,
                    data::LATEST_TIERED_TIMESTAMP => 9,
                    _ => 0,
                };
                let ts = if p.timestamp < data::LATEST_TIERED_TIMESTAMP {
                    0
                } else {
                    p.timestamp
                };
                let located = locate(shard, topic, p.partition_index);
                let stale = located
                    .and_then(|(key, _)| epoch_check(p.current_leader_epoch, epochs.get(&key)));
                match located {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1, -1)),
                    Some(_) if ctx.version < needs => {
                        r.push((ResponseError::UnsupportedVersion, -1, -1))
                    }
                    Some(_) if stale.is_some() => {
                        r.push((stale.unwrap_or(ResponseError::FencedLeaderEpoch), -1, -1))
                    }
                    Some((key, owner)) => {
                        r.push((ResponseError::Unknown(0), -1, -1));
                        wanted.push((owner, (ti, pi), (key, ts)));
                    }
                }
            }
            results.push(r);
        }
    }
    per_owner(
        shard,
        wanted,
        |items| ShardRequest::ListOffsets { items },
        |resp| match resp {
            ShardResponse::Offsets(v) => Some(v),
            _ => None,
        },
        (ResponseError::NotLeaderOrFollower, -1, -1),
        |(ti, pi), r| results[ti][pi] = r,
    )
    .await;
    let topics = req
        .topics
        .iter()
        .zip(results)
        .zip(leader_epochs)
        .map(|((t, rs), les)| {
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(rs)
                        .zip(les)
                        .map(|((p, (e, offset, timestamp)), le)| {
                            let r = ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(e.code())
                                .with_timestamp(timestamp)
                                .with_offset(offset);
                            // leader_epoch exists from v4 on; encoding it earlier fails.
                            if ctx.version >= 4 {
                                r.with_leader_epoch(if offset >= 0 { le } else { -1 })
                            } else {
                                r
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
