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

use crate::data::{locate, per_owner, LOG_END_OFFSET};
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
                match locate(shard, topic, p.partition) {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1, -1)),
                    Some(_) if p.current_leader_epoch > EPOCH => {
                        r.push((ResponseError::UnknownLeaderEpoch, -1, -1))
                    }
                    Some(_) if p.leader_epoch != EPOCH => {
                        r.push((ResponseError::Unknown(0), -1, -1))
                    }
                    Some((key, owner)) => {
                        r.push((ResponseError::Unknown(0), EPOCH, -1));
                        wanted.push((owner, (ti, pi), (key, LOG_END_OFFSET)));
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
        |(ti, pi), (e, offset, _)| {
            results[ti][pi] = if e == ResponseError::Unknown(0) {
                (e, EPOCH, offset)
            } else {
                (e, -1, -1)
            }
        },
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
