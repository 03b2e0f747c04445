//! Heartbeat (key 12), v0–v4: keeps a member's session alive and tells it when the group
//! rebalances (REBALANCE_IN_PROGRESS).

use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};
use kafka_protocol::ResponseError;

use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

pub async fn handle(ctx: &Ctx, req: HeartbeatRequest) -> HeartbeatResponse {
    let group = req.group_id.0.to_string();
    let e = match groups::call(&ctx.shard, &group, GroupCall::Heartbeat { req }).await {
        Ok(GroupAnswer::Error(e)) => e,
        Ok(_) => ResponseError::UnknownServerError,
        Err(e) => e,
    };
    HeartbeatResponse::default().with_error_code(e.code())
}
