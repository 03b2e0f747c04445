//! The admin HTTP API, on its own thread (never a shard's time).
//!
//! Serves `GET /v1/status/live` (the process answers), `GET /v1/status/ready` (every shard
//! listens for Kafka clients and the node is not shutting down), `GET /v1/cluster`,
//! `GET /v1/shards` (partitions and load per shard), `GET /v1/partitions[?topic=NAME]`
//! (offsets per partition) — JSON from the snapshot the shards publish every second (see
//! [`crate::view`]) — and `GET /metrics` (Prometheus text format, see [`crate::metrics`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

/// What the admin thread reads about the node.
pub struct AdminState {
    pub shards: usize,
    /// Shards whose Kafka listener is bound.
    pub listening: Arc<AtomicUsize>,
    /// Set on SIGTERM/SIGINT.
    pub stopping: Arc<AtomicBool>,
    /// What the shards publish.
    pub view: Arc<crate::view::NodeView>,
}

fn to_json<T: serde::Serialize>(v: &T) -> Response<std::io::Cursor<Vec<u8>>> {
    match serde_json::to_string(v) {
        Ok(body) => json(200, body),
        Err(e) => json(500, format!(r#"{{"error":"encoding: {e}"}}"#)),
    }
}

/// The value of `key` in a query string (no percent-decoding beyond `+`; topic names are
/// `[a-zA-Z0-9._-]`).
fn query_param(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace('+', " "))
    })
}

pub struct AdminServer {
    handle: JoinHandle<()>,
    done: Arc<AtomicBool>,
}

impl AdminServer {
    /// Binds `addr` and starts the admin thread.
    pub fn start(addr: SocketAddr, state: AdminState) -> Result<AdminServer> {
        let server =
            Server::http(addr).map_err(|e| anyhow!("binding the admin API on {addr}: {e}"))?;
        info!(%addr, "admin API listening");
        let done = Arc::new(AtomicBool::new(false));
        let done2 = done.clone();
        let handle = std::thread::Builder::new()
            .name("spate-admin".into())
            .spawn(move || serve(server, state, done2))?;
        Ok(AdminServer { handle, done })
    }

    pub fn stop(self) {
        self.done.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

fn json(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        .expect("static header is valid");
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header)
}

fn serve(server: Server, state: AdminState, done: Arc<AtomicBool>) {
    while !done.load(Ordering::SeqCst) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "admin API receive failed");
                continue;
            }
        };
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let response = match (request.method(), path.as_str()) {
            (Method::Get, "/v1/status/live") => json(200, r#"{"status":"live"}"#.into()),
            (Method::Get, "/v1/cluster") => {
                let c = state
                    .view
                    .cluster
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                to_json(&c)
            }
            (Method::Get, "/v1/shards") => to_json(&state.view.shard_views()),
            (Method::Get, "/v1/partitions") => {
                let topic = query_param(request.url(), "topic");
                to_json(&state.view.partition_views(topic.as_deref()))
            }
            (Method::Get, "/metrics") => {
                let header =
                    Header::from_bytes(&b"Content-Type"[..], &b"text/plain; version=0.0.4"[..])
                        .expect("static header is valid");
                Response::from_string(crate::metrics::render()).with_header(header)
            }
            (Method::Get, "/v1/status/ready") => {
                let listening = state.listening.load(Ordering::SeqCst);
                if state.stopping.load(Ordering::SeqCst) {
                    json(503, r#"{"status":"stopping"}"#.into())
                } else if listening < state.shards {
                    json(
                        503,
                        format!(
                            r#"{{"status":"starting","shards_listening":{listening},"shards":{}}}"#,
                            state.shards
                        ),
                    )
                } else {
                    json(200, r#"{"status":"ready"}"#.into())
                }
            }
            (
                _,
                "/v1/status/live" | "/v1/status/ready" | "/v1/cluster" | "/v1/shards"
                | "/v1/partitions" | "/metrics",
            ) => json(405, r#"{"error":"method not allowed"}"#.into()),
            _ => json(
                404,
                format!(
                    r#"{{"error":"no such endpoint: {}"}}"#,
                    path.escape_default()
                ),
            ),
        };
        let _ = request.respond(response);
    }
}
