//! LeaveGroup (key 13), v0–v5: one member (v0–v2) or a batch of members by member id or
//! static instance id (v3+, KIP-345).

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
use kafka_protocol::ResponseError;

use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

pub async fn handle(ctx: &Ctx, req: LeaveGroupRequest) -> LeaveGroupResponse {
    let v = ctx.version;
    let group = req.group_id.0.to_string();
    let members: Vec<(String, Option<String>)> = if v >= 3 {
        req.members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let call = GroupCall::Leave {
        group: group.clone(),
        members,
    };
    let (top, errors) = match groups::call(&ctx.shard, &group, call).await {
        Ok(GroupAnswer::Leave(top, errors)) => (top, errors),
        Ok(_) => (ResponseError::UnknownServerError, Vec::new()),
        Err(e) => (e, Vec::new()),
    };
    if v < 3 {
        let e = if top.code() != 0 {
            top
        } else {
            errors.first().copied().unwrap_or(top)
        };
        return LeaveGroupResponse::default().with_error_code(e.code());
    }
    let members = if top.code() != 0 {
        Vec::new()
    } else {
        req.members
            .iter()
            .zip(errors)
            .map(|(m, e)| {
                MemberResponse::default()
                    .with_member_id(m.member_id.clone())
                    .with_group_instance_id(m.group_instance_id.clone())
                    .with_error_code(e.code())
            })
            .collect()
    };
    LeaveGroupResponse::default()
        .with_error_code(top.code())
        .with_members(members)
}
