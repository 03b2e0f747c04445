//! ListOffsets (key 2), v1–v6: the earliest (-2) and latest (-1) offsets of partitions, and
//! the first offset at or after a timestamp (found by scanning batch headers until the time
//! index exists; see `Partition::offset_for_timestamp`).

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::data::{by_shard, fan_out};
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
                let owner = topic.and_then(|topic| {
                    usize::try_from(p.partition_index)
                        .ok()
                        .and_then(|i| topic.partition_shards.get(i))
                        .map(|o| (topic.id, *o as usize % shard.mesh.nr_shards()))
                });
                match owner {
                    None => r.push((ResponseError::UnknownTopicOrPartition, -1, -1)),
                    Some((id, o)) => {
                        r.push((ResponseError::Unknown(0), -1, -1));
                        wanted.push((o, 0, ((ti, pi), ((id, p.partition_index), p.timestamp))));
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
        for ((ti, pi), r) in pos.into_iter().zip(got) {
            results[ti][pi] = r;
        }
    }
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
                                r.with_leader_epoch(0)
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
