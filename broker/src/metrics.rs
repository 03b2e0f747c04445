//! Prometheus metrics, `spate_` families, served by the admin thread at `/metrics` (the
//! default registry, so raft-engine's own metrics appear too).
//!
//! Every series a shard writes carries its `shard` label, so shards never write the same
//! atomic. Hot paths use [`ShardMetrics`], whose children are resolved once per shard.

use std::sync::OnceLock;

use kafka_protocol::messages::ApiKey;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

use crate::kafka::registry::APIS;

struct Families {
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    connections: IntGaugeVec,
    produce_bytes: IntCounterVec,
    fetch_bytes: IntCounterVec,
    fsync_seconds: HistogramVec,
    partitions: IntGaugeVec,
}

fn families() -> &'static Families {
    static F: OnceLock<Families> = OnceLock::new();
    F.get_or_init(|| {
        let latency = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        Families {
            requests: register_int_counter_vec!(
                "spate_kafka_requests_total",
                "Kafka requests served, by API",
                &["shard", "api"]
            )
            .expect("metric registers once"),
            request_seconds: register_histogram_vec!(
                "spate_kafka_request_seconds",
                "Time from a request's dispatch to its response, by API",
                &["shard", "api"],
                latency.clone()
            )
            .expect("metric registers once"),
            connections: register_int_gauge_vec!(
                "spate_kafka_connections",
                "Open Kafka client connections",
                &["shard"]
            )
            .expect("metric registers once"),
            produce_bytes: register_int_counter_vec!(
                "spate_produce_bytes_total",
                "Record-batch bytes appended",
                &["shard"]
            )
            .expect("metric registers once"),
            fetch_bytes: register_int_counter_vec!(
                "spate_fetch_bytes_total",
                "Record-batch bytes returned to fetches",
                &["shard"]
            )
            .expect("metric registers once"),
            fsync_seconds: register_histogram_vec!(
                "spate_log_fsync_seconds",
                "Duration of one partition flush's fdatasync phase",
                &["shard"],
                latency
            )
            .expect("metric registers once"),
            partitions: register_int_gauge_vec!("spate_partitions", "Partitions owned", &["shard"])
                .expect("metric registers once"),
        }
    })
}

/// One shard's resolved series.
pub struct ShardMetrics {
    requests: Vec<(ApiKey, IntCounter, Histogram)>,
    pub connections: IntGauge,
    pub produce_bytes: IntCounter,
    pub fetch_bytes: IntCounter,
    pub fsync_seconds: Histogram,
    pub partitions: IntGauge,
}

impl ShardMetrics {
    pub fn new(shard: usize) -> ShardMetrics {
        let f = families();
        let s = shard.to_string();
        ShardMetrics {
            requests: APIS
                .iter()
                .map(|(k, _, _)| {
                    let api = format!("{k:?}");
                    (
                        *k,
                        f.requests.with_label_values(&[&s, &api]),
                        f.request_seconds.with_label_values(&[&s, &api]),
                    )
                })
                .collect(),
            connections: f.connections.with_label_values(&[&s]),
            produce_bytes: f.produce_bytes.with_label_values(&[&s]),
            fetch_bytes: f.fetch_bytes.with_label_values(&[&s]),
            fsync_seconds: f.fsync_seconds.with_label_values(&[&s]),
            partitions: f.partitions.with_label_values(&[&s]),
        }
    }

    /// Counts one served request of `api` that took `seconds`.
    pub fn request(&self, api: ApiKey, seconds: f64) {
        if let Some((_, n, h)) = self.requests.iter().find(|(k, _, _)| *k == api) {
            n.inc();
            h.observe(seconds);
        }
    }
}

/// The Prometheus text exposition of every registered metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = prometheus::Encoder::encode(&encoder, &prometheus::gather(), &mut buf) {
        return format!("# encoding metrics failed: {e}\n");
    }
    String::from_utf8(buf).unwrap_or_default()
}
