//! Metadata (key 3), v0–v13: brokers, topics (with ids), partitions and leaders.

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::ResponseError;

use super::s;
use crate::consensus::LeaderEpochs;
use crate::kafka::Ctx;
use crate::metadata::names::validate_topic_name;
use crate::metadata::TopicMeta;

/// A partition this node leads reports its Raft term as the leader epoch. One that is not
/// leading (its group failed, or it is still electing itself right after a create) is
/// LEADER_NOT_AVAILABLE with no leader, as Kafka answers for a partition without one.
fn topic_entry(t: &TopicMeta, node: i32, epochs: &LeaderEpochs) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(s(t.name.clone()))))
        .with_topic_id(t.id)
        .with_is_internal(t.name == crate::groups::OFFSETS_TOPIC)
        .with_partitions(
            (0..t.partition_shards.len() as i32)
                .map(|p| {
                    let r = MetadataResponsePartition::default()
                        .with_partition_index(p)
                        .with_replica_nodes(vec![BrokerId(node)])
                        .with_isr_nodes(vec![BrokerId(node)]);
                    match epochs.get(&(t.id, p)) {
                        Some(epoch) => r.with_leader_id(BrokerId(node)).with_leader_epoch(epoch),
                        None => r
                            .with_error_code(ResponseError::LeaderNotAvailable.code())
                            .with_leader_id(BrokerId(-1))
                            .with_leader_epoch(-1),
                    }
                })
                .collect(),
        )
}

pub fn handle(ctx: &Ctx, req: MetadataRequest) -> MetadataResponse {
    let shard = &ctx.shard;
    let cfg = &shard.config;
    let node = cfg.node_id;
    let img = shard.image.borrow();
    let epochs = &shard.partitions.consensus.epochs;
    let all = match &req.topics {
        None => true,
        Some(list) => list.is_empty() && ctx.version == 0,
    };
    let topics: Vec<MetadataResponseTopic> = if all {
        img.topics
            .values()
            .map(|t| topic_entry(t, node, epochs))
            .collect()
    } else {
        req.topics
            .iter()
            .flatten()
            .map(|rt| match &rt.name {
                Some(name) => match img.topics.get(name.0.as_str()) {
                    Some(t) => topic_entry(t, node, epochs),
                    None => {
                        let code = if validate_topic_name(name).is_err() {
                            ResponseError::InvalidTopicException
                        } else {
                            ResponseError::UnknownTopicOrPartition
                        };
                        MetadataResponseTopic::default()
                            .with_name(Some(name.clone()))
                            .with_error_code(code.code())
                    }
                },
                None => match img.topic_by_id(&rt.topic_id) {
                    Some(t) => topic_entry(t, node, epochs),
                    None => MetadataResponseTopic::default()
                        .with_name(None)
                        .with_topic_id(rt.topic_id)
                        .with_error_code(ResponseError::UnknownTopicId.code()),
                },
            })
            .collect()
    };
    let (host, port) = &cfg.advertised_kafka_addr;
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(node))
            .with_host(s(host.clone()))
            .with_port(i32::from(*port))])
        .with_cluster_id(Some(s(img.cluster_id.clone())))
        .with_controller_id(BrokerId(node))
        .with_topics(topics)
}
