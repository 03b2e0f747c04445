//! OffsetFetch (key 9), v1–v9: committed offsets of one group (v1–v7) or several (v8+), for
//! listed partitions or all of them; -1 where nothing is committed.

use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, OffsetFetchResponse, TopicName};
use kafka_protocol::ResponseError;

use super::s;
use crate::groups::{self, GroupAnswer, GroupCall, TopicOffsets};
use crate::kafka::Ctx;

async fn fetch(
    ctx: &Ctx,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
) -> Result<TopicOffsets, ResponseError> {
    let call = GroupCall::FetchOffsets {
        group: group.to_string(),
        topics,
    };
    match groups::call(&ctx.shard, group, call).await? {
        GroupAnswer::Offsets(o) => Ok(o),
        GroupAnswer::Error(e) => Err(e),
        _ => Err(ResponseError::UnknownServerError),
    }
}

pub async fn handle(ctx: &Ctx, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let v = ctx.version;
    if v >= 8 {
        let mut out = Vec::with_capacity(req.groups.len());
        for g in &req.groups {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let r = fetch(ctx, g.group_id.0.as_str(), topics).await;
            let (code, topics) = match r {
                Ok(o) => (0, o),
                Err(e) => (e.code(), Vec::new()),
            };
            out.push(
                OffsetFetchResponseGroup::default()
                    .with_group_id(g.group_id.clone())
                    .with_error_code(code)
                    .with_topics(
                        topics
                            .into_iter()
                            .map(|(t, ps)| {
                                OffsetFetchResponseTopics::default()
                                    .with_name(TopicName(s(t)))
                                    .with_partitions(
                                        ps.into_iter()
                                            .map(|(p, c)| {
                                                let (o, e, m) = match c {
                                                    Some(c) => {
                                                        (c.offset, c.leader_epoch, c.metadata)
                                                    }
                                                    None => (-1, -1, String::new()),
                                                };
                                                OffsetFetchResponsePartitions::default()
                                                    .with_partition_index(p)
                                                    .with_committed_offset(o)
                                                    .with_committed_leader_epoch(e)
                                                    .with_metadata(Some(s(m)))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect(),
                    ),
            );
        }
        return OffsetFetchResponse::default().with_groups(out);
    }
    let group: &GroupId = &req.group_id;
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect::<Vec<_>>()
    });
    // v1 has no top-level error: a failure goes on every requested partition.
    let (code, offsets) = match fetch(ctx, group.0.as_str(), topics.clone()).await {
        Ok(o) => (0, o),
        Err(e) if v >= 2 => (e.code(), Vec::new()),
        Err(e) => {
            let parts = topics.unwrap_or_default();
            let topics = parts
                .into_iter()
                .map(|(t, ps)| {
                    OffsetFetchResponseTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partitions(
                            ps.into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_metadata(Some(s("")))
                                        .with_error_code(e.code())
                                })
                                .collect(),
                        )
                })
                .collect();
            return OffsetFetchResponse::default().with_topics(topics);
        }
    };
    let topics = offsets
        .into_iter()
        .map(|(t, ps)| {
            OffsetFetchResponseTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(
                    ps.into_iter()
                        .map(|(p, c)| {
                            let (o, e, m) = match c {
                                Some(c) => (c.offset, c.leader_epoch, c.metadata),
                                None => (-1, -1, String::new()),
                            };
                            let r = OffsetFetchResponsePartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                                .with_metadata(Some(s(m)));
                            if v >= 5 {
                                r.with_committed_leader_epoch(e)
                            } else {
                                r
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    let r = OffsetFetchResponse::default().with_topics(topics);
    if v >= 2 {
        r.with_error_code(code)
    } else {
        r
    }
}
