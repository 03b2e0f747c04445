//! OffsetForLeaderEpoch (key 23), v2–v4: the end offset of a leader epoch, which consumers use
//! to detect log truncation after a leader change. Until Raft terms arrive every partition has
//! one epoch, 0, starting at offset 0: epoch 0 ends at the log end offset; any other epoch is
//! unknown (-1, -1), as Kafka's epoch cache answers. A current leader epoch above 0 is
//! UNKNOWN_LEADER_EPOCH.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::data::{by_shard, fan_out, LOG_END_OFFSET};
use crate::kafka::Ctx;
use crate::partition::SINGLE_NODE_TERM;
use crate::shard::{ShardRequest, ShardResponse};

const EPOCH: i32 = SINGLE_NODE_TERM as i32;

pub async fn handle(ctx: &Ctx, req: OffsetForLeaderEpochRequest) -> OffsetForLeaderEpochResponse {
    let shard = &ctx.shard;
    // (error, epoch, end offset) per partition.
    let mut results: Vec<Vec<(ResponseError, i32, i64)>> = Vec::new();
    let mut wanted = Vec::new();
    {
        let img = shard.image.borrow();
        for (ti, t) in req.topics.iter().enumerate() {
            let topic = img.topics.get(t.topic.0.as_str());
            let mut r = Vec::new();
            for (pi, p) in t.partitions.iter().enumerate() {
                let owner = topic.and_then(|topic| {
                    usize::try_from(p.partition)
                        .ok()
                        .and_then(|i| topic.partition_shards.get(i))
                        .map(|o| (topic.id, *o as usize % shard.mesh.nr_shards()))
                });
                match owner {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1, -1)),
                    Some(_) if p.current_leader_epoch > EPOCH => {
                        r.push((ResponseError::UnknownLeaderEpoch, -1, -1))
                    }
                    Some(_) if p.leader_epoch != EPOCH => {
                        r.push((ResponseError::Unknown(0), -1, -1))
                    }
                    Some((id, o)) => {
                        r.push((ResponseError::Unknown(0), EPOCH, -1));
                        wanted.push((o, 0, ((ti, pi), ((id, p.partition), LOG_END_OFFSET))));
                    }
                }
            }
            results.push(r);
        }
    }
    let mut positions = Vec::new();
    let mut requests = Vec::new();
    for (to, group) in by_shard(wanted) {
        let (pos, items): (Vec<_>, Vec<_>) = group.into_iter().map(|(_, x)| x).unzip();
        positions.push(pos);
        requests.push((to, ShardRequest::ListOffsets { items }));
    }
    for (pos, answer) in positions.into_iter().zip(fan_out(shard, requests).await) {
        let got: Vec<(ResponseError, i64, i64)> = match answer {
            Ok(ShardResponse::Offsets(v)) => v,
            _ => pos
                .iter()
                .map(|_| (ResponseError::NotLeaderOrFollower, -1, -1))
                .collect(),
        };
        for ((ti, pi), (e, offset, _)) in pos.into_iter().zip(got) {
            results[ti][pi] = if e == ResponseError::Unknown(0) {
                (e, EPOCH, offset)
            } else {
                (e, -1, -1)
            };
        }
    }
    let topics = req
        .topics
        .iter()
        .zip(results)
        .map(|(t, rs)| {
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(rs)
                        .map(|(p, (e, epoch, end))| {
                            EpochEndOffset::default()
                                .with_partition(p.partition)
                                .with_error_code(e.code())
                                .with_leader_epoch(epoch)
                                .with_end_offset(end)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
