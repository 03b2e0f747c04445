//! One file per Kafka API: each decodes nothing itself (see [`super::serve`]), reads top-down
//! (trace, call one service, build the response) and turns failures into Kafka error codes.

pub mod alter_configs;
pub mod api_versions;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod sync_group;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use spate_net::conn::Reply;

use super::{serve, serve_opt, Ctx};
use crate::metadata::controller::KError;

pub(crate) fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub(crate) fn err_msg(e: &KError) -> Option<StrBytes> {
    Some(s(e.message.clone()))
}

/// Routes a request whose key and version are in the registry to its handler.
pub async fn route(ctx: Ctx, key: ApiKey, corr: i32, body: Bytes) -> Reply {
    let v = ctx.version;
    match key {
        ApiKey::ApiVersions => {
            serve(key, v, corr, body, |r: ApiVersionsRequest| async move {
                api_versions::handle(&ctx, r)
            })
            .await
        }
        ApiKey::Produce => {
            serve_opt(key, v, corr, body, |r: ProduceRequest| async move {
                produce::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::Fetch => {
            serve(key, v, corr, body, |r: FetchRequest| async move {
                fetch::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::ListOffsets => {
            serve(key, v, corr, body, |r: ListOffsetsRequest| async move {
                list_offsets::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::InitProducerId => {
            serve(key, v, corr, body, |r: InitProducerIdRequest| async move {
                init_producer_id::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::Metadata => {
            serve(key, v, corr, body, |r: MetadataRequest| async move {
                metadata::handle(&ctx, r)
            })
            .await
        }
        ApiKey::CreateTopics => {
            serve(key, v, corr, body, |r: CreateTopicsRequest| async move {
                create_topics::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::DeleteTopics => {
            serve(key, v, corr, body, |r: DeleteTopicsRequest| async move {
                delete_topics::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::CreatePartitions => serve(
            key,
            v,
            corr,
            body,
            |r: CreatePartitionsRequest| async move { create_partitions::handle(&ctx, r).await },
        )
        .await,
        ApiKey::DescribeConfigs => {
            serve(key, v, corr, body, |r: DescribeConfigsRequest| async move {
                describe_configs::handle(&ctx, r)
            })
            .await
        }
        ApiKey::AlterConfigs => {
            serve(key, v, corr, body, |r: AlterConfigsRequest| async move {
                alter_configs::handle_full(&ctx, r).await
            })
            .await
        }
        ApiKey::IncrementalAlterConfigs => {
            serve(
                key,
                v,
                corr,
                body,
                |r: IncrementalAlterConfigsRequest| async move {
                    alter_configs::handle_incremental(&ctx, r).await
                },
            )
            .await
        }
        ApiKey::DescribeCluster => {
            serve(key, v, corr, body, |r: DescribeClusterRequest| async move {
                describe_cluster::handle(&ctx, r)
            })
            .await
        }
        ApiKey::FindCoordinator => {
            serve(key, v, corr, body, |r: FindCoordinatorRequest| async move {
                find_coordinator::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::JoinGroup => {
            serve(key, v, corr, body, |r: JoinGroupRequest| async move {
                join_group::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::SyncGroup => {
            serve(key, v, corr, body, |r: SyncGroupRequest| async move {
                sync_group::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::Heartbeat => {
            serve(key, v, corr, body, |r: HeartbeatRequest| async move {
                heartbeat::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::LeaveGroup => {
            serve(key, v, corr, body, |r: LeaveGroupRequest| async move {
                leave_group::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::OffsetCommit => {
            serve(key, v, corr, body, |r: OffsetCommitRequest| async move {
                offset_commit::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::OffsetFetch => {
            serve(key, v, corr, body, |r: OffsetFetchRequest| async move {
                offset_fetch::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::OffsetDelete => {
            serve(key, v, corr, body, |r: OffsetDeleteRequest| async move {
                offset_delete::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::ListGroups => {
            serve(key, v, corr, body, |r: ListGroupsRequest| async move {
                list_groups::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::DescribeGroups => {
            serve(key, v, corr, body, |r: DescribeGroupsRequest| async move {
                describe_groups::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::DeleteGroups => {
            serve(key, v, corr, body, |r: DeleteGroupsRequest| async move {
                delete_groups::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::DeleteRecords => {
            serve(key, v, corr, body, |r: DeleteRecordsRequest| async move {
                delete_records::handle(&ctx, r).await
            })
            .await
        }
        ApiKey::OffsetForLeaderEpoch => {
            serve(
                key,
                v,
                corr,
                body,
                |r: OffsetForLeaderEpochRequest| async move {
                    offset_for_leader_epoch::handle(&ctx, r).await
                },
            )
            .await
        }
        other => Reply::Close(format!("API {other:?} has no handler")),
    }
}
