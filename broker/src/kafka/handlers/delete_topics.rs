//! DeleteTopics (key 20), v1–v6 (v6 addresses topics by name or by id).

use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use kafka_protocol::ResponseError;
use tracing::info;
use uuid::Uuid;

use super::{err_msg, s};
use crate::kafka::Ctx;
use crate::metadata::controller::{ControllerRequest, ControllerResponse, KError, TopicRef};

pub async fn handle(ctx: &Ctx, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    // What the client asked for, as (name, id) to echo back, and the reference to delete.
    let asked: Vec<(Option<TopicName>, Uuid, Result<TopicRef, KError>)> = if ctx.version >= 6 {
        req.topics
            .iter()
            .map(|t| {
                let r = match (&t.name, t.topic_id.is_nil()) {
                    (Some(n), true) => Ok(TopicRef::Name(n.0.to_string())),
                    (None, false) => Ok(TopicRef::Id(t.topic_id)),
                    (Some(_), false) => Err(KError::new(
                        ResponseError::InvalidRequest,
                        "A topic must be named by its name or by its id, not both.",
                    )),
                    (None, true) => Err(KError::new(
                        ResponseError::InvalidRequest,
                        "A topic must be named by its name or by its id.",
                    )),
                };
                (t.name.clone(), t.topic_id, r)
            })
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| {
                (
                    Some(n.clone()),
                    Uuid::nil(),
                    Ok(TopicRef::Name(n.0.to_string())),
                )
            })
            .collect()
    };
    let refs: Vec<TopicRef> = asked
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok().cloned())
        .collect();
    let n = refs.len();
    let mut results = if n == 0 {
        Vec::new()
    } else {
        match ctx
            .shard
            .controller(ControllerRequest::DeleteTopics { topics: refs })
            .await
        {
            Ok(ControllerResponse::DeleteTopics(r)) => r,
            Ok(_) => vec![
                Err(KError::new(
                    ResponseError::UnknownServerError,
                    "bad controller reply"
                ));
                n
            ],
            Err(e) => vec![Err(e); n],
        }
    }
    .into_iter();
    let responses = asked
        .into_iter()
        .map(|(name, id, r)| {
            let outcome = match r {
                Ok(_) => results.next().unwrap_or_else(|| {
                    Err(KError::new(
                        ResponseError::UnknownServerError,
                        "missing result",
                    ))
                }),
                Err(e) => Err(e),
            };
            match outcome {
                Ok((topic, topic_id)) => {
                    info!(%topic, id = %topic_id, "topic deleted");
                    DeletableTopicResult::default()
                        .with_name(Some(TopicName(s(topic))))
                        .with_topic_id(topic_id)
                }
                Err(e) => DeletableTopicResult::default()
                    .with_name(name)
                    .with_topic_id(id)
                    .with_error_code(e.code.code())
                    .with_error_message(err_msg(&e)),
            }
        })
        .collect();
    DeleteTopicsResponse::default().with_responses(responses)
}
