//! The Kafka API: dispatch of request frames to one handler per API.
//!
//! [`registry::APIS`] is the single table of implemented APIs and versions; ApiVersions is
//! generated from it and every request is checked against it before decoding.

pub mod fetch_sessions;
pub mod handlers;
pub mod records;
pub mod registry;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};
use spate_net::conn::{Completion, Dispatch, Reply};
use spate_net::header::{decode_request_header, encode_response, RawHeader};
use tracing::{debug, error, Instrument};

use crate::shard::Shard;

/// One Kafka connection's dispatcher.
pub struct KafkaConn {
    pub shard: Rc<Shard>,
    pub peer: SocketAddr,
}

impl Dispatch for KafkaConn {
    fn dispatch(&self, frame: Bytes) -> Pin<Box<dyn Future<Output = Completion> + '_>> {
        let shard = self.shard.clone();
        let peer = self.peer;
        // Stage one: the request starts now, as its own task, so a pipelined request does not
        // wait for the previous one to complete (produce requests on one connection share a
        // group commit). Tasks start in arrival order and a produce's appends happen before
        // its first await on the owning shard, so per-partition order is arrival order.
        // Stage two is the task's result, written by the connection in request order.
        let task = glommio::spawn_local(handle_frame(shard, peer, frame));
        let completion: Completion = Box::pin(task);
        Box::pin(std::future::ready(completion))
    }
}

/// Context every handler gets.
pub struct Ctx {
    pub shard: Rc<Shard>,
    pub version: i16,
    pub client_id: Option<String>,
    pub peer: SocketAddr,
}

async fn handle_frame(shard: Rc<Shard>, peer: SocketAddr, mut frame: Bytes) -> Reply {
    let Some(raw) = RawHeader::peek(&frame) else {
        return Reply::Close(format!(
            "request of {} bytes is shorter than a request header",
            frame.len()
        ));
    };
    let Ok(key) = ApiKey::try_from(raw.api_key) else {
        return Reply::Close(format!("unknown API key {}", raw.api_key));
    };
    let Some(range) = registry::versions(key) else {
        return Reply::Close(format!(
            "API {key:?} (key {}) is not supported",
            raw.api_key
        ));
    };
    let version = raw.api_version;
    if version < range.min || version > range.max {
        if key == ApiKey::ApiVersions {
            // KIP-511: answer a too-new ApiVersions with v0 and our ranges so the client can
            // retry with a version we speak.
            return handlers::api_versions::unsupported_version(raw.correlation_id);
        }
        return Reply::Close(format!(
            "{key:?} v{version} is not supported (supported: {}..={})",
            range.min, range.max
        ));
    }
    let header = match decode_request_header(&mut frame, key, version) {
        Ok(h) => h,
        Err(e) => return Reply::Close(e.to_string()),
    };
    if key == ApiKey::Produce && version < handlers::produce::SERVED_VERSION_MIN {
        return handlers::produce::legacy_unsupported(raw.correlation_id, version, &frame);
    }
    let ctx = Ctx {
        shard,
        version,
        client_id: header.client_id.map(|s| s.to_string()),
        peer,
    };
    let started = std::time::Instant::now();
    let shard = ctx.shard.clone();
    let span = tracing::debug_span!(
        "kafka",
        api = ?key,
        v = version,
        corr = raw.correlation_id,
        %peer,
        shard = ctx.shard.id
    );
    let reply = handlers::route(ctx, key, raw.correlation_id, frame)
        .instrument(span)
        .await;
    shard.metrics.request(key, started.elapsed().as_secs_f64());
    reply
}

/// Decodes the request body, runs the handler, encodes its response.
pub async fn serve<Req, Resp, F, Fut>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: Bytes,
    handler: F,
) -> Reply
where
    Req: Decodable,
    Resp: Encodable,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    serve_opt(key, version, correlation_id, body, |req: Req| async move {
        Some(handler(req).await)
    })
    .await
}

/// [`serve`] for handlers that may send no response (acks=0 produce).
pub async fn serve_opt<Req, Resp, F, Fut>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    mut body: Bytes,
    handler: F,
) -> Reply
where
    Req: Decodable,
    Resp: Encodable,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Option<Resp>>,
{
    let req = match Req::decode(&mut body, version) {
        Ok(r) => r,
        Err(e) => return Reply::Close(format!("malformed {key:?} v{version} request: {e}")),
    };
    if !body.is_empty() {
        debug!(
            trailing = body.len(),
            "trailing bytes after {key:?} request ignored"
        );
    }
    let Some(resp) = handler(req).await else {
        return Reply::Nothing;
    };
    match encode_response(correlation_id, key, version, &resp) {
        Ok(frame) => Reply::Frame(frame),
        Err(e) => {
            error!(error = %e, "could not encode response");
            Reply::Close(e.to_string())
        }
    }
}
