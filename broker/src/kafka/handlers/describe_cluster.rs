//! DescribeCluster (key 60), v0–v2.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::ResponseError;

use super::s;
use crate::kafka::Ctx;

/// `endpoint_type` values (KIP-919).
const ENDPOINT_BROKERS: i8 = 1;

pub fn handle(ctx: &Ctx, req: DescribeClusterRequest) -> DescribeClusterResponse {
    let cfg = &ctx.shard.config;
    let img = ctx.shard.image.borrow();
    let resp = DescribeClusterResponse::default()
        .with_endpoint_type(req.endpoint_type)
        .with_cluster_id(s(img.cluster_id.clone()));
    if ctx.version >= 1 && req.endpoint_type != ENDPOINT_BROKERS {
        return resp
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(s(format!(
                "endpoint type {} is not served by this node",
                req.endpoint_type
            ))));
    }
    let (host, port) = &cfg.advertised_kafka_addr;
    resp.with_controller_id(BrokerId(cfg.node_id))
        .with_brokers(vec![DescribeClusterBroker::default()
            .with_broker_id(BrokerId(cfg.node_id))
            .with_host(s(host.clone()))
            .with_port(i32::from(*port))])
}
