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

use crate::data::{self, locate, per_owner};
use crate::kafka::Ctx;
use crate::shard::{ShardRequest, ShardResponse};

pub async fn handle(ctx: &Ctx, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let shard = &ctx.shard;
    let mut results: Vec<Vec<(ResponseError, i64, i64)>> = Vec::new();
    let mut wanted = Vec::new();
    {
        let img = shard.image.borrow();
        for (ti, t) in req.topics.iter().enumerate() {
            let topic = img.topics.get(t.name.0.as_str());
            let mut r = Vec::new();
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
                match locate(shard, topic, p.partition_index) {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1, -1)),
                    Some(_) if ctx.version < needs => {
                        r.push((ResponseError::UnsupportedVersion, -1, -1))
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
        .map(|(t, rs)| {
            ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(rs)
                        .map(|(p, (e, offset, timestamp))| {
                            let r = ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(e.code())
                                .with_timestamp(timestamp)
                                .with_offset(offset);
                            // leader_epoch exists from v4 on; encoding it earlier fails.
                            if ctx.version >= 4 {
                                r.with_leader_epoch(if offset >= 0 { 0 } else { -1 })
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
