//! DeleteRecords (key 21), v0–v2: moves partitions' log start offsets forward (-1: to the
//! high watermark); answered once the new start is persisted. Offsets past the high
//! watermark get OFFSET_OUT_OF_RANGE. Disk space below the new start is reclaimed when whole
//! segments fall below it (segment deletion runs with retention).

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};
use kafka_protocol::ResponseError;

use crate::data::{by_shard, fan_out};
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
                let owner = topic.and_then(|topic| {
                    usize::try_from(p.partition_index)
                        .ok()
                        .and_then(|i| topic.partition_shards.get(i))
                        .map(|o| (topic.id, *o as usize % shard.mesh.nr_shards()))
                });
                match owner {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1)),
                    Some((id, o)) => {
                        r.push((ResponseError::Unknown(0), -1));
                        wanted.push((o, 0, ((ti, pi), ((id, p.partition_index), p.offset))));
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
        requests.push((to, ShardRequest::DeleteRecords { items }));
    }
    for (pos, answer) in positions.into_iter().zip(fan_out(shard, requests).await) {
        let got: Vec<(ResponseError, i64)> = match answer {
            Ok(ShardResponse::Deleted(v)) => v,
            _ => pos
                .iter()
                .map(|_| (ResponseError::NotLeaderOrFollower, -1))
                .collect(),
        };
        for ((ti, pi), r) in pos.into_iter().zip(got) {
            results[ti][pi] = r;
        }
    }
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
