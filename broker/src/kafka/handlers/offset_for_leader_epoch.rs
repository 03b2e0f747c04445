//! OffsetForLeaderEpoch (key 23), v2–v4: the end offset of a leader epoch, which consumers use
//! to detect log truncation after a leader change. A partition's leader epochs are its Raft
//! terms; the owning shard answers from the partition's leader epoch cache (Kafka's
//! `LeaderEpochFileCache.endOffsetFor`): the largest epoch at or below the one asked for, and
//! where the next epoch starts (the log end for the latest); `(-1, -1)` for an epoch older
//! than any the partition knows. A `current_leader_epoch` newer than the partition's is
//! UNKNOWN_LEADER_EPOCH, an older one FENCED_LEADER_EPOCH.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use kafka_protocol::ResponseError;

use crate::data::{locate, per_owner};
use crate::kafka::Ctx;
use crate::shard::{ShardRequest, ShardResponse};

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
                match locate(shard, topic, p.partition) {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1, -1)),
                    Some((key, owner)) => {
                        r.push((ResponseError::Unknown(0), -1, -1));
                        wanted.push((
                            owner,
                            (ti, pi),
                            (key, p.current_leader_epoch, p.leader_epoch),
                        ));
                    }
                }
            }
            results.push(r);
        }
    }
    per_owner(
        shard,
        wanted,
        |items| ShardRequest::EpochEnds { items },
        |resp| match resp {
            ShardResponse::EpochEnds(v) => Some(v),
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
