//! ListGroups (key 16), v0–v5: every group of every shard, filtered by state (v4+,
//! case-insensitive as in Kafka) and type (v5+; all groups here are "classic").

use kafka_protocol::messages::{ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::ResponseError;

use crate::groups::{GroupAnswer, GroupCall, OFFSETS_TOPIC};
use crate::kafka::Ctx;
use crate::shard::{ShardRequest, ShardResponse};

pub async fn handle(ctx: &Ctx, req: ListGroupsRequest) -> ListGroupsResponse {
    let v = ctx.version;
    let shard = &ctx.shard;
    let topic_id = shard.image.borrow().topics.get(OFFSETS_TOPIC).map(|t| t.id);
    let mut groups = Vec::new();
    let mut error = ResponseError::Unknown(0);
    if let Some(id) = topic_id {
        for to in 0..shard.mesh.nr_shards() {
            let req = ShardRequest::Group {
                key: (id, -1),
                call: Box::new(GroupCall::List),
            };
            match shard.call(to, req).await {
                Ok(ShardResponse::Group(GroupAnswer::List(gs))) => groups.extend(gs),
                _ => error = ResponseError::CoordinatorNotAvailable,
            }
        }
    }
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    groups.retain(|g| {
        (states.is_empty() || states.contains(&g.group_state.to_lowercase()))
            && (types.is_empty() || types.contains(&g.group_type.to_lowercase()))
    });
    groups.sort_by(|a, b| a.group_id.0.cmp(&b.group_id.0));
    for g in &mut groups {
        if v < 4 {
            g.group_state = Default::default();
        }
        if v < 5 {
            g.group_type = Default::default();
        }
    }
    ListGroupsResponse::default()
        .with_error_code(error.code())
        .with_groups(groups)
}
