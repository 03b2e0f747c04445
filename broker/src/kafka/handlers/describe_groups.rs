//! DescribeGroups (key 15), v0–v6: state, protocol and members of each group (member
//! metadata and assignments only while Stable, as Kafka). An unknown group is "Dead" with no
//! error before v6 and GROUP_ID_NOT_FOUND from v6.

use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

/// Operations allowed on a group without ACLs: READ, DELETE, DESCRIBE (Kafka's bits 3, 6, 8).
const GROUP_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

pub async fn handle(ctx: &Ctx, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let v = ctx.version;
    let mut out = Vec::with_capacity(req.groups.len());
    for g in &req.groups {
        let call = GroupCall::Describe {
            group: g.0.to_string(),
        };
        let mut d = match groups::call(&ctx.shard, g.0.as_str(), call).await {
            Ok(GroupAnswer::Describe(d)) => d,
            Ok(GroupAnswer::Error(e)) | Err(e) => DescribedGroup::default()
                .with_group_id(g.clone())
                .with_error_code(e.code()),
            Ok(_) => DescribedGroup::default()
                .with_group_id(g.clone())
                .with_error_code(ResponseError::UnknownServerError.code()),
        };
        if d.error_code == ResponseError::GroupIdNotFound.code() && v < 6 {
            d.error_code = 0;
            d.error_message = None;
        }
        if v < 6 {
            d.error_message = None;
        }
        if d.group_state.is_empty() {
            d.group_state = s("");
        }
        if v < 4 {
            for m in &mut d.members {
                m.group_instance_id = None;
            }
        }
        if v >= 3 && req.include_authorized_operations {
            d.authorized_operations = GROUP_OPERATIONS;
        }
        out.push(d);
    }
    DescribeGroupsResponse::default().with_groups(out)
}
