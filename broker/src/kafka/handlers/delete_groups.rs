//! DeleteGroups (key 42), v0–v2: removes empty groups and their committed offsets
//! (NON_EMPTY_GROUP while members remain, GROUP_ID_NOT_FOUND for unknown groups).

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
use kafka_protocol::ResponseError;

use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

pub async fn handle(ctx: &Ctx, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let mut results = Vec::with_capacity(req.groups_names.len());
    for g in &req.groups_names {
        let call = GroupCall::Delete {
            group: g.0.to_string(),
        };
        let e = match groups::call(&ctx.shard, g.0.as_str(), call).await {
            Ok(GroupAnswer::Error(e)) | Err(e) => e,
            Ok(_) => ResponseError::UnknownServerError,
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(g.clone())
                .with_error_code(e.code()),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}
