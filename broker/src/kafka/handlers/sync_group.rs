//! SyncGroup (key 14), v0–v5: the leader hands in the assignment, every member gets its
//! share once the group is stored.

use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

pub async fn handle(ctx: &Ctx, req: SyncGroupRequest) -> SyncGroupResponse {
    let group = req.group_id.0.to_string();
    let reply = match groups::call(&ctx.shard, &group, GroupCall::Sync { req }).await {
        Ok(GroupAnswer::Sync(r)) => r,
        Ok(_) => groups::group::SyncReply::error(ResponseError::UnknownServerError),
        Err(e) => groups::group::SyncReply::error(e),
    };
    let r = SyncGroupResponse::default()
        .with_error_code(reply.error.code())
        .with_assignment(reply.assignment);
    if ctx.version >= 5 {
        r.with_protocol_type(reply.protocol_type.map(s))
            .with_protocol_name(reply.protocol.map(s))
    } else {
        r
    }
}
