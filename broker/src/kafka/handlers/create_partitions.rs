//! CreatePartitions (key 37), v0–v3.

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};
use kafka_protocol::ResponseError;

use super::err_msg;
use crate::kafka::Ctx;
use crate::metadata::controller::{
    ControllerRequest, ControllerResponse, CreatePartitionsSpec, KError,
};

pub async fn handle(ctx: &Ctx, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let specs: Vec<CreatePartitionsSpec> = req
        .topics
        .iter()
        .map(|t| CreatePartitionsSpec {
            name: t.name.0.to_string(),
            count: t.count,
            assignments: t.assignments.as_ref().map(|a| {
                a.iter()
                    .map(|x| x.broker_ids.iter().map(|b| b.0).collect())
                    .collect()
            }),
        })
        .collect();
    let n = specs.len();
    let results = match ctx
        .shard
        .controller(ControllerRequest::CreatePartitions {
            topics: specs,
            validate_only: req.validate_only,
        })
        .await
    {
        Ok(ControllerResponse::CreatePartitions(r)) => r,
        Ok(_) => vec![
            Err(KError::new(
                ResponseError::UnknownServerError,
                "bad controller reply"
            ));
            n
        ],
        Err(e) => vec![Err(e); n],
    };
    let results = req
        .topics
        .iter()
        .zip(results)
        .map(|(t, r)| {
            let base = CreatePartitionsTopicResult::default().with_name(t.name.clone());
            match r {
                Ok(()) => base,
                Err(e) => base
                    .with_error_code(e.code.code())
                    .with_error_message(err_msg(&e)),
            }
        })
        .collect();
    CreatePartitionsResponse::default().with_results(results)
}
