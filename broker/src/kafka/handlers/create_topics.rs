//! CreateTopics (key 19), v2–v7.

use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse};
use kafka_protocol::ResponseError;
use tracing::info;

use super::{err_msg, s};
use crate::kafka::Ctx;
use crate::metadata::controller::{ControllerRequest, ControllerResponse, CreateTopicSpec, KError};

pub async fn handle(ctx: &Ctx, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let specs: Vec<CreateTopicSpec> = req
        .topics
        .iter()
        .map(|t| CreateTopicSpec {
            name: t.name.0.to_string(),
            num_partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .iter()
                .map(|a| a.broker_ids.iter().map(|b| b.0).collect())
                .collect(),
            configs: t
                .configs
                .iter()
                .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
                .collect(),
        })
        .collect();
    let n = specs.len();
    let results = match ctx
        .shard
        .controller(ControllerRequest::CreateTopics {
            topics: specs,
            validate_only: req.validate_only,
        })
        .await
    {
        Ok(ControllerResponse::CreateTopics(r)) => r,
        Ok(_) => vec![
            Err(KError::new(
                ResponseError::UnknownServerError,
                "bad controller reply"
            ));
            n
        ],
        Err(e) => vec![Err(e); n],
    };
    let node = ctx.shard.config.node_id;
    let img = ctx.shard.image.borrow();
    let topics = req
        .topics
        .iter()
        .zip(results)
        .map(|(t, r)| {
            let base = CreatableTopicResult::default().with_name(t.name.clone());
            match r {
                Ok(c) => {
                    if !req.validate_only {
                        info!(topic = %t.name.0, partitions = c.num_partitions, id = %c.id, "topic created");
                    }
                    let configs = img
                        .effective_topic_configs(&c.configs, node)
                        .into_iter()
                        .map(|(def, value, source)| {
                            CreatableTopicConfigs::default()
                                .with_name(s(def.name))
                                .with_value(Some(s(value)))
                                .with_config_source(source)
                        })
                        .collect();
                    base.with_topic_id(c.id)
                        .with_num_partitions(c.num_partitions)
                        .with_replication_factor(c.replication_factor)
                        .with_configs(Some(configs))
                }
                Err(e) => base
                    .with_error_code(e.code.code())
                    .with_error_message(err_msg(&e))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
                    .with_configs(None),
            }
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}
