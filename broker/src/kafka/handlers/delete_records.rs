//! DeleteRecords (key 21), v0–v2: moves partitions' log start offsets forward (-1: to the
//! high watermark); answered once the new start is persisted. Offsets past the high
//! watermark get OFFSET_OUT_OF_RANGE. Disk space below the new start is reclaimed when whole
//! segments fall below it (segment deletion runs with retention).

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::data::{locate, per_owner};
use crate::groups::OFFSETS_TOPIC;
use crate::kafka::Ctx;
use crate::shard::{ShardRequest, ShardResponse};

pub async fn handle(ctx: &Ctx, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let shard = &ctx.shard;
    let mut results: Vec<Vec<(ResponseError, i64)>> = Vec::new();
    let mut wanted = Vec::new();
    {
        let img = shard.image.borrow();
        for (ti, t) in req.topics.iter().enumerate() {
            let topic = img
                .topics
                .get(t.name.0.as_str())
                .filter(|t| t.name != OFFSETS_TOPIC);
            let mut r = Vec::new();
            for (pi, p) in t.partitions.iter().enumerate() {
                match locate(shard, topic, p.partition_index) {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1)),
                    Some((key, owner)) => {
                        r.push((ResponseError::Unknown(0), -1));
                        wanted.push((owner, (ti, pi), (key, p.offset)));
                    }
                }
            }
            results.push(r);
        }
    }
    per_owner(
        shard,
        wanted,
        |items| ShardRequest::DeleteRecords { items },
        |resp| match resp {
            ShardResponse::Deleted(v) => Some(v),
            _ => None,
        },
        (ResponseError::NotLeaderOrFollower, -1),
        |(ti, pi), r| results[ti][pi] = r,
    )
    .await;
    let topics = req
        .topics
        .iter()
        .zip(results)
        .map(|(t, rs)| {
            DeleteRecordsTopicResult::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .zip(rs)
                        .map(|(p, (e, low))| {
                            DeleteRecordsPartitionResult::default()
                                .with_partition_index(p.partition_index)
                                .with_low_watermark(low)
                                .with_error_code(e.code())
                        })
                        .collect(),
                )
        })
        .collect();
    DeleteRecordsResponse::default().with_topics(topics)
}
