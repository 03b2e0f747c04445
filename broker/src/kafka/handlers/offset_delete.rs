//! OffsetDelete (key 47), v0: removes committed offsets of partitions the group is not
//! subscribed to (GROUP_SUBSCRIBED_TO_TOPIC otherwise).

use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
use kafka_protocol::ResponseError;

use crate::groups::{self, GroupAnswer, GroupCall};
use crate::kafka::Ctx;

pub async fn handle(ctx: &Ctx, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group = req.group_id.0.to_string();
    let shape: Vec<_> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.partitions
                    .iter()
                    .map(|p| p.partition_index)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let (top, errors) =
        match groups::call(&ctx.shard, &group, GroupCall::DeleteOffsets { req }).await {
            Ok(GroupAnswer::DeleteOffsets(top, errors)) => (top, errors),
            Ok(GroupAnswer::Error(e)) | Err(e) => (e, Vec::new()),
            Ok(_) => (ResponseError::UnknownServerError, Vec::new()),
        };
    if top.code() != 0 {
        return OffsetDeleteResponse::default().with_error_code(top.code());
    }
    OffsetDeleteResponse::default().with_topics(
        shape
            .into_iter()
            .zip(errors)
            .map(|((name, parts), errs)| {
                OffsetDeleteResponseTopic::default()
                    .with_name(name)
                    .with_partitions(
                        parts
                            .into_iter()
                            .zip(errs)
                            .map(|(p, e)| {
                                OffsetDeleteResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_error_code(e.code())
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}
