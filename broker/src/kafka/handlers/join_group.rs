//! JoinGroup (key 11), v0–v9: the classic group protocol's join barrier (see
//! `groups::group`). v4+ new members first get MEMBER_ID_REQUIRED (KIP-394); static members
//! (`group.instance.id`, KIP-345) rejoin without a rebalance.

use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

pub async fn handle(ctx: &Ctx, req: JoinGroupRequest) -> JoinGroupResponse {
    let v = ctx.version;
    let group = req.group_id.0.to_string();
    let member_id = req.member_id.clone();
    let fail = |e: ResponseError| {
        JoinGroupResponse::default()
            .with_error_code(e.code())
            .with_generation_id(-1)
            .with_member_id(member_id.clone())
    };
    let call = GroupCall::Join {
        req,
        version: v,
        client_id: ctx.client_id.clone().unwrap_or_default(),
        client_host: format!("/{}", ctx.peer.ip()),
    };
    let mut r = match groups::call(&ctx.shard, &group, call).await {
        Ok(GroupAnswer::Join(r)) => r,
        Ok(_) => fail(ResponseError::UnknownServerError),
        Err(e) => fail(e),
    };
    // Fields the version does not have must keep their defaults to encode.
    if v < 7 {
        r.protocol_type = None;
        if r.protocol_name.is_none() {
            r.protocol_name = Some(s(""));
        }
    }
    if v < 9 {
        r.skip_assignment = false;
    }
    if v < 5 {
        for m in &mut r.members {
            m.group_instance_id = None;
        }
    }
    r
}
