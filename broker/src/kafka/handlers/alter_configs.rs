//! AlterConfigs (key 33, v0–v2: replace a resource's whole dynamic set) and
//! IncrementalAlterConfigs (key 44, v0–v1: SET / DELETE / APPEND / SUBTRACT per key).

use kafka_protocol::messages::{
    alter_configs_response, incremental_alter_configs_response, AlterConfigsRequest,
    AlterConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::ResponseError;
use tracing::info;

use super::err_msg;
use crate::kafka::Ctx;
use crate::metadata::controller::{
    AlterResource, ConfigOp, ControllerRequest, ControllerResponse, KError,
};

async fn alter(
    ctx: &Ctx,
    resources: Vec<AlterResource>,
    incremental: bool,
    validate_only: bool,
) -> Vec<Result<(), KError>> {
    let n = resources.len();
    let summary: Vec<String> = resources
        .iter()
        .map(|r| format!("{}:{}", r.resource_type, r.resource_name))
        .collect();
    let results = match ctx
        .shard
        .controller(ControllerRequest::AlterConfigs {
            resources,
            incremental,
            validate_only,
        })
        .await
    {
        Ok(ControllerResponse::AlterConfigs(r)) => r,
        Ok(_) => vec![
            Err(KError::new(
                ResponseError::UnknownServerError,
                "bad controller reply"
            ));
            n
        ],
        Err(e) => vec![Err(e); n],
    };
    if !validate_only {
        for (res, r) in summary.iter().zip(&results) {
            if r.is_ok() {
                info!(resource = %res, incremental, "configs altered");
            }
        }
    }
    results
}

pub async fn handle_full(ctx: &Ctx, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let resources = req
        .resources
        .iter()
        .map(|r| AlterResource {
            resource_type: r.resource_type,
            resource_name: r.resource_name.to_string(),
            entries: r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        Some(ConfigOp::Set),
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect(),
        })
        .collect();
    let results = alter(ctx, resources, false, req.validate_only).await;
    let responses = req
        .resources
        .iter()
        .zip(results)
        .map(|(r, res)| {
            let base = alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            match res {
                Ok(()) => base.with_error_message(None),
                Err(e) => base
                    .with_error_code(e.code.code())
                    .with_error_message(err_msg(&e)),
            }
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn handle_incremental(
    ctx: &Ctx,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources = req
        .resources
        .iter()
        .map(|r| AlterResource {
            resource_type: r.resource_type,
            resource_name: r.resource_name.to_string(),
            entries: r
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        ConfigOp::from_i8(c.config_operation),
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect(),
        })
        .collect();
    let results = alter(ctx, resources, true, req.validate_only).await;
    let responses = req
        .resources
        .iter()
        .zip(results)
        .map(|(r, res)| {
            let base = incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name.clone());
            match res {
                Ok(()) => base.with_error_message(None),
                Err(e) => base
                    .with_error_code(e.code.code())
                    .with_error_message(err_msg(&e)),
            }
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
