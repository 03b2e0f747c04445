//! OffsetCommit (key 8), v2–v9: member and generation checks as Kafka's classic groups
//! (admin commits with generation -1 only into empty groups), unknown partitions and
//! oversized metadata per partition; answered once the offsets are durable in
//! `__consumer_offsets`.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};
use kafka_protocol::ResponseError;

use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

pub async fn handle(ctx: &Ctx, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let topics: Vec<(kafka_protocol::messages::TopicName, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let call = GroupCall::Commit {
        req,
        version: ctx.version,
    };
    let result = match groups::call(&ctx.shard, &group, call).await {
        Ok(GroupAnswer::Commit(r)) => r,
        Ok(_) => Err(ResponseError::UnknownServerError),
        Err(e) => Err(e),
    };
    let topics = topics
        .into_iter()
        .enumerate()
        .map(|(ti, (name, parts))| {
            OffsetCommitResponseTopic::default()
                .with_name(name)
                .with_partitions(
                    parts
                        .into_iter()
                        .enumerate()
                        .map(|(pi, p)| {
                            let e = match &result {
                                Ok(errs) => errs
                                    .get(ti)
                                    .and_then(|v| v.get(pi))
                                    .copied()
                                    .unwrap_or(ResponseError::UnknownServerError),
                                Err(e) => *e,
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p)
                                .with_error_code(e.code())
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}
