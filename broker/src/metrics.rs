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
    partition_produce_bytes: IntCounterVec,
    partition_fetch_bytes: IntCounterVec,
    partition_high_watermark: IntGaugeVec,
    partition_log_start: IntGaugeVec,
    corrupt_batches: IntCounterVec,
    reactor_stalls: IntCounterVec,
    reactor_lag: HistogramVec,
    mesh_pending: IntGaugeVec,
    fetch_sessions: IntGaugeVec,
    consumer_groups: IntGaugeVec,
    retention_segments: IntCounterVec,
    compaction_runs: IntCounterVec,
    compaction_removed_records: IntCounterVec,
    compaction_removed_bytes: IntCounterVec,
    compaction_seconds: HistogramVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    cache_resident: IntGaugeVec,
    disk_full: IntGaugeVec,
    raft_groups: IntGaugeVec,
    raft_groups_ticking: IntGaugeVec,
    raft_leaders: IntGaugeVec,
    raft_failed: IntGaugeVec,
    raft_group_ticks: IntCounterVec,
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
            partition_produce_bytes: register_int_counter_vec!(
                "spate_partition_produce_bytes_total",
                "Record-batch bytes appended to a partition",
                &["topic", "partition"]
            )
            .expect("metric registers once"),
            partition_fetch_bytes: register_int_counter_vec!(
                "spate_partition_fetch_bytes_total",
                "Record-batch bytes read from a partition by fetches",
                &["topic", "partition"]
            )
            .expect("metric registers once"),
            partition_high_watermark: register_int_gauge_vec!(
                "spate_partition_high_watermark",
                "A partition's high watermark (updated every second)",
                &["topic", "partition"]
            )
            .expect("metric registers once"),
            partition_log_start: register_int_gauge_vec!(
                "spate_partition_log_start_offset",
                "A partition's log start offset (updated every second)",
                &["topic", "partition"]
            )
            .expect("metric registers once"),
            corrupt_batches: register_int_counter_vec!(
                "spate_storage_corrupt_batches_total",
                "Damaged record batches found on disk (by reads, index rebuilds, recovery), each \
                 counted once; they are never served (fetches get CORRUPT_MESSAGE)",
                &["topic", "partition"]
            )
            .expect("metric registers once"),
            reactor_stalls: register_int_counter_vec!(
                "spate_reactor_stalls_total",
                "Reactor-lag probe wakeups more than 25 ms late: a task held the shard's reactor",
                &["shard"]
            )
            .expect("metric registers once"),
            reactor_lag: register_histogram_vec!(
                "spate_reactor_lag_seconds",
                "How late the shard's 10 ms probe timer fires",
                &["shard"],
                vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]
            )
            .expect("metric registers once"),
            mesh_pending: register_int_gauge_vec!(
                "spate_mesh_pending_requests",
                "Requests this shard sent other shards that await an answer",
                &["shard"]
            )
            .expect("metric registers once"),
            fetch_sessions: register_int_gauge_vec!(
                "spate_fetch_sessions",
                "Open incremental fetch sessions (KIP-227)",
                &["shard"]
            )
            .expect("metric registers once"),
            consumer_groups: register_int_gauge_vec!(
                "spate_consumer_groups",
                "Consumer groups this shard coordinates",
                &["shard"]
            )
            .expect("metric registers once"),
            retention_segments: register_int_counter_vec!(
                "spate_retention_deleted_segments_total",
                "Segments deleted by retention (retention.ms / retention.bytes)",
                &["shard"]
            )
            .expect("metric registers once"),
            compaction_runs: register_int_counter_vec!(
                "spate_compaction_runs_total",
                "Log compactions of cleanup.policy=compact partitions, by outcome",
                &["shard", "outcome"]
            )
            .expect("metric registers once"),
            compaction_removed_records: register_int_counter_vec!(
                "spate_compaction_removed_records_total",
                "Records removed by log compaction (superseded values and expired tombstones)",
                &["shard"]
            )
            .expect("metric registers once"),
            compaction_removed_bytes: register_int_counter_vec!(
                "spate_compaction_removed_bytes_total",
                "Segment bytes reclaimed by log compaction",
                &["shard"]
            )
            .expect("metric registers once"),
            compaction_seconds: register_histogram_vec!(
                "spate_compaction_seconds",
                "Duration of one partition's log compaction",
                &["shard"],
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0]
            )
            .expect("metric registers once"),
            cache_hits: register_int_counter_vec!(
                "spate_batch_cache_hits_total",
                "Reads served from the shard's batch cache",
                &["shard"]
            )
            .expect("metric registers once"),
            cache_misses: register_int_counter_vec!(
                "spate_batch_cache_misses_total",
                "Reads that went to the disk",
                &["shard"]
            )
            .expect("metric registers once"),
            cache_resident: register_int_gauge_vec!(
                "spate_batch_cache_bytes",
                "Bytes held in the shard's batch cache",
                &["shard"]
            )
            .expect("metric registers once"),
            disk_full: register_int_gauge_vec!(
                "spate_partitions_disk_full",
                "Partitions whose appends are refused because the disk is full",
                &["shard"]
            )
            .expect("metric registers once"),
            raft_groups: register_int_gauge_vec!(
                "spate_raft_groups",
                "Raft groups (one per partition) this shard runs",
                &["shard"]
            )
            .expect("metric registers once"),
            raft_groups_ticking: register_int_gauge_vec!(
                "spate_raft_groups_ticking",
                "Raft groups that are ticked (not quiesced: busy or recently busy)",
                &["shard"]
            )
            .expect("metric registers once"),
            raft_leaders: register_int_gauge_vec!(
                "spate_raft_leaders",
                "Raft groups this shard's replica leads (partitions it serves)",
                &["shard"]
            )
            .expect("metric registers once"),
            raft_failed: register_int_gauge_vec!(
                "spate_raft_groups_failed",
                "Raft groups stopped after a store (I/O) failure: their partitions refuse \
                 produce until the broker restarts",
                &["shard"]
            )
            .expect("metric registers once"),
            raft_group_ticks: register_int_counter_vec!(
                "spate_raft_group_ticks_total",
                "Raft ticks applied to groups (idle groups are not ticked)",
                &["shard"]
            )
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
    pub reactor_stalls: IntCounter,
    pub reactor_lag: Histogram,
    pub mesh_pending: IntGauge,
    pub fetch_sessions: IntGauge,
    pub consumer_groups: IntGauge,
    pub retention_segments: IntCounter,
    /// Compactions that rewrote segments / found nothing to do / failed.
    pub compaction_done: IntCounter,
    pub compaction_abandoned: IntCounter,
    pub compaction_failed: IntCounter,
    pub compaction_removed_records: IntCounter,
    pub compaction_removed_bytes: IntCounter,
    pub compaction_seconds: Histogram,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_resident: IntGauge,
    pub disk_full: IntGauge,
    pub raft_groups: IntGauge,
    pub raft_groups_ticking: IntGauge,
    pub raft_leaders: IntGauge,
    pub raft_failed: IntGauge,
    pub raft_group_ticks: IntCounter,
}

/// One partition's series (labels `topic`, `partition`); removed when the partition goes.
pub struct PartitionMetrics {
    labels: [String; 2],
    pub produce_bytes: IntCounter,
    pub fetch_bytes: IntCounter,
    pub high_watermark: IntGauge,
    pub log_start_offset: IntGauge,
    pub corrupt_batches: IntCounter,
}

impl PartitionMetrics {
    pub fn new(topic: &str, partition: i32) -> PartitionMetrics {
        let f = families();
        let labels = [topic.to_string(), partition.to_string()];
        let l = [labels[0].as_str(), labels[1].as_str()];
        PartitionMetrics {
            produce_bytes: f.partition_produce_bytes.with_label_values(&l),
            fetch_bytes: f.partition_fetch_bytes.with_label_values(&l),
            high_watermark: f.partition_high_watermark.with_label_values(&l),
            log_start_offset: f.partition_log_start.with_label_values(&l),
            corrupt_batches: f.corrupt_batches.with_label_values(&l),
            labels,
        }
    }

    /// Drops the partition's series (deleted topic or partition moved away).
    pub fn remove(&self) {
        let f = families();
        let l = [self.labels[0].as_str(), self.labels[1].as_str()];
        let _ = f.partition_produce_bytes.remove_label_values(&l);
        let _ = f.partition_fetch_bytes.remove_label_values(&l);
        let _ = f.partition_high_watermark.remove_label_values(&l);
        let _ = f.partition_log_start.remove_label_values(&l);
        let _ = f.corrupt_batches.remove_label_values(&l);
    }
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
            reactor_stalls: f.reactor_stalls.with_label_values(&[&s]),
            reactor_lag: f.reactor_lag.with_label_values(&[&s]),
            mesh_pending: f.mesh_pending.with_label_values(&[&s]),
            fetch_sessions: f.fetch_sessions.with_label_values(&[&s]),
            consumer_groups: f.consumer_groups.with_label_values(&[&s]),
            retention_segments: f.retention_segments.with_label_values(&[&s]),
            compaction_done: f.compaction_runs.with_label_values(&[&s, "done"]),
            compaction_abandoned: f.compaction_runs.with_label_values(&[&s, "abandoned"]),
            compaction_failed: f.compaction_runs.with_label_values(&[&s, "failed"]),
            compaction_removed_records: f.compaction_removed_records.with_label_values(&[&s]),
            compaction_removed_bytes: f.compaction_removed_bytes.with_label_values(&[&s]),
            compaction_seconds: f.compaction_seconds.with_label_values(&[&s]),
            cache_hits: f.cache_hits.with_label_values(&[&s]),
            cache_misses: f.cache_misses.with_label_values(&[&s]),
            cache_resident: f.cache_resident.with_label_values(&[&s]),
            disk_full: f.disk_full.with_label_values(&[&s]),
            raft_groups: f.raft_groups.with_label_values(&[&s]),
            raft_groups_ticking: f.raft_groups_ticking.with_label_values(&[&s]),
            raft_leaders: f.raft_leaders.with_label_values(&[&s]),
            raft_failed: f.raft_failed.with_label_values(&[&s]),
            raft_group_ticks: f.raft_group_ticks.with_label_values(&[&s]),
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
