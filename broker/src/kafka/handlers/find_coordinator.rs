//! FindCoordinator (key 10), v0–v6: this node coordinates every group (single node). The
//! first lookup creates the internal `__consumer_offsets` topic, as Kafka does.
//!
//! Transaction coordinators (key type 1) do not exist: transactions are not supported, and
//! the lookup answers COORDINATOR_NOT_AVAILABLE saying so.

use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::s;
use crate::groups::OFFSETS_TOPIC;
use crate::kafka::Ctx;
use crate::metadata::controller::{ControllerRequest, ControllerResponse, CreateTopicSpec};

const KEY_GROUP: i8 = 0;
const KEY_TRANSACTION: i8 = 1;

/// Creates `__consumer_offsets` unless it exists.
pub async fn ensure_offsets_topic(ctx: &Ctx) -> Result<(), (ResponseError, String)> {
    if ctx.shard.image.borrow().topics.contains_key(OFFSETS_TOPIC) {
        return Ok(());
    }
    let partitions = ctx.shard.config.groups.offsets_topic_partitions;
    let req = ControllerRequest::CreateTopics {
        topics: vec![CreateTopicSpec {
            name: OFFSETS_TOPIC.to_string(),
            num_partitions: partitions,
            replication_factor: 1,
            assignments: Vec::new(),
            configs: vec![
                ("cleanup.policy".into(), Some("compact".into())),
                ("segment.bytes".into(), Some("104857600".into())),
            ],
        }],
        validate_only: false,
    };
    match ctx.shard.controller(req).await {
        Ok(ControllerResponse::CreateTopics(mut r)) => match r.pop() {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) if e.code == ResponseError::TopicAlreadyExists => Ok(()),
            Some(Err(e)) => Err((ResponseError::CoordinatorNotAvailable, e.message)),
            None => Err((ResponseError::CoordinatorNotAvailable, "no answer".into())),
        },
        Ok(_) => Err((
            ResponseError::CoordinatorNotAvailable,
            "controller answered with the wrong response type".into(),
        )),
        Err(e) => Err((ResponseError::CoordinatorNotAvailable, e.message)),
    }
}

pub async fn handle(ctx: &Ctx, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
    let v = ctx.version;
    let keys: Vec<StrBytes> = if v >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let error: Option<(ResponseError, String)> = match req.key_type {
        KEY_GROUP => ensure_offsets_topic(ctx).await.err(),
        KEY_TRANSACTION => Some((
            ResponseError::CoordinatorNotAvailable,
            "transactions are not supported by this broker".into(),
        )),
        other => Some((
            ResponseError::InvalidRequest,
            format!("unknown coordinator key type {other}"),
        )),
    };
    let cfg = &ctx.shard.config;
    let (host, port) = &cfg.advertised_kafka_addr;
    let (node, host, port) = match &error {
        None => (cfg.node_id, s(host.clone()), *port as i32),
        Some(_) => (-1, s(""), -1),
    };
    let code = error.as_ref().map(|(e, _)| e.code()).unwrap_or(0);
    let message = error.as_ref().map(|(_, m)| s(m.clone()));
    if v >= 4 {
        return FindCoordinatorResponse::default().with_coordinators(
            keys.into_iter()
                .map(|k| {
                    Coordinator::default()
                        .with_key(k)
                        .with_node_id(BrokerId(node))
                        .with_host(host.clone())
                        .with_port(port)
                        .with_error_code(code)
                        .with_error_message(message.clone())
                })
                .collect(),
        );
    }
    let r = FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(BrokerId(node))
        .with_host(host)
        .with_port(port);
    if v >= 1 {
        r.with_error_message(message)
    } else {
        r
    }
}
