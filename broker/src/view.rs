//! The node as the admin API shows it: cluster, shards and partitions, published by every
//! shard once a second into a shared snapshot (the admin thread never asks a shard anything,
//! so it never takes a shard's time). The same pass updates the gauges of `/metrics`.

use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::shard::Shard;

/// How often shards publish.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    pub cluster_id: String,
    pub node_id: i32,
    /// The advertised Kafka address.
    pub kafka_addr: String,
    pub shards: usize,
    pub topics: usize,
    pub partitions: usize,
    pub version: &'static str,
    /// Cap on one segment I/O (the data dir's device `max_sectors_kb`, bounded).
    pub max_io_bytes: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardView {
    pub shard: usize,
    pub partitions: usize,
    pub connections: usize,
    pub fetch_sessions: usize,
    pub consumer_groups: usize,
    pub mesh_pending_requests: usize,
    pub produce_bytes: u64,
    pub fetch_bytes: u64,
    pub reactor_stalls: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionView {
    pub topic: String,
    pub topic_id: String,
    pub partition: i32,
    pub shard: usize,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    /// The partition's Raft term while this node leads it (-1: not leading).
    pub leader_epoch: i32,
}

/// One shard's published view and its partitions.
pub type ShardSnapshot = (ShardView, Vec<PartitionView>);

/// Shared between the shards (writers) and the admin thread (reader).
#[derive(Debug, Default)]
pub struct NodeView {
    pub cluster: Mutex<ClusterView>,
    /// Indexed by shard id; `None` until the shard first published.
    pub shards: Mutex<Vec<Option<ShardSnapshot>>>,
}

impl NodeView {
    pub fn new(shards: usize) -> Arc<NodeView> {
        Arc::new(NodeView {
            cluster: Mutex::new(ClusterView::default()),
            shards: Mutex::new(vec![None; shards]),
        })
    }

    pub fn shard_views(&self) -> Vec<ShardView> {
        lock(&self.shards)
            .iter()
            .flatten()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Partitions sorted by topic and partition, optionally of one topic.
    pub fn partition_views(&self, topic: Option<&str>) -> Vec<PartitionView> {
        let mut out: Vec<PartitionView> = lock(&self.shards)
            .iter()
            .flatten()
            .flat_map(|(_, ps)| ps.iter())
            .filter(|p| topic.is_none_or(|t| p.topic == t))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        out
    }
}

/// A poisoned lock only means a panicking holder; the data is plain values, still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reactor-lag probe's period and what counts as a stall: a timer wakeup this late means
/// some task held the reactor (glommio's own stall detector cannot be hooked from outside: its
/// report type is private).
const LAG_PROBE_EVERY: Duration = Duration::from_millis(10);
const STALL_LATENESS: Duration = Duration::from_millis(25);

/// Measures how late the shard's timers fire (`spate_reactor_lag_seconds`) and counts the
/// wakeups later than [`STALL_LATENESS`] as stalls.
pub fn start_lag_probe(shard: Rc<Shard>) {
    glommio::spawn_local(async move {
        while !shard.shutdown.is_fired() {
            let asked = std::time::Instant::now();
            glommio::timer::sleep(LAG_PROBE_EVERY).await;
            let late = asked.elapsed().saturating_sub(LAG_PROBE_EVERY);
            shard.metrics.reactor_lag.observe(late.as_secs_f64());
            if late >= STALL_LATENESS {
                shard.metrics.reactor_stalls.inc();
            }
        }
    })
    .detach();
}

/// Publishes this shard's view (and, on the controller shard, the cluster's) every second
/// until shutdown, updating the gauges on the way.
pub fn start_publisher(shard: Rc<Shard>, view: Arc<NodeView>) {
    glommio::spawn_local(async move {
        loop {
            publish(&shard, &view);
            if shard.shutdown.is_fired() {
                break;
            }
            glommio::timer::sleep(PUBLISH_EVERY).await;
        }
    })
    .detach();
}

fn publish(shard: &Shard, view: &NodeView) {
    let (mut disk_full, mut leaders, mut failed) = (0i64, 0i64, 0i64);
    let parts: Vec<PartitionView> = shard
        .partitions
        .all()
        .iter()
        .map(|p| {
            disk_full += i64::from(p.disk_full());
            leaders += i64::from(p.leader_epoch().is_some());
            failed += i64::from(p.failed());
            let (start, hw) = (p.log_start_offset(), p.high_watermark());
            p.metrics.high_watermark.set(hw);
            p.metrics.log_start_offset.set(start);
            // Damage found by recovery at open or by background reads, reported promptly.
            p.report_corruption();
            PartitionView {
                topic: p.topic.clone(),
                topic_id: p.key.0.to_string(),
                partition: p.key.1,
                shard: shard.id,
                log_start_offset: start,
                high_watermark: hw,
                log_end_offset: p.log_end_offset(),
                leader_epoch: p.leader_epoch().unwrap_or(-1),
            }
        })
        .collect();
    let m = &shard.metrics;
    let sessions = shard.fetch_sessions.borrow().len();
    let groups = shard.groups.len();
    let pending = shard.mesh.pending();
    m.fetch_sessions.set(sessions as i64);
    m.consumer_groups.set(groups as i64);
    m.mesh_pending.set(pending as i64);
    if let Some(cache) = &shard.partitions.cache {
        let st = cache.stats();
        m.cache_hits
            .inc_by(st.hits.saturating_sub(m.cache_hits.get()));
        m.cache_misses
            .inc_by(st.misses.saturating_sub(m.cache_misses.get()));
        m.cache_resident.set(st.resident_bytes as i64);
    }
    m.disk_full.set(disk_full);
    let raft = shard.partitions.consensus.stats();
    m.raft_groups.set(raft.groups as i64);
    m.raft_groups_ticking.set(raft.ticking as i64);
    m.raft_leaders.set(leaders);
    m.raft_failed.set(failed);
    m.raft_group_ticks
        .inc_by(raft.group_ticks.saturating_sub(m.raft_group_ticks.get()));
    let s = ShardView {
        shard: shard.id,
        partitions: parts.len(),
        connections: shard.connections.get(),
        fetch_sessions: sessions,
        consumer_groups: groups,
        mesh_pending_requests: pending,
        produce_bytes: m.produce_bytes.get(),
        fetch_bytes: m.fetch_bytes.get(),
        reactor_stalls: m.reactor_stalls.get(),
    };
    if let Some(slot) = lock(&view.shards).get_mut(shard.id) {
        *slot = Some((s, parts));
    }
    if shard.id == crate::shard::CONTROLLER_SHARD {
        let img = shard.image.borrow();
        let (host, port) = &shard.config.advertised_kafka_addr;
        *lock(&view.cluster) = ClusterView {
            cluster_id: img.cluster_id.clone(),
            node_id: shard.config.node_id,
            kafka_addr: format!("{host}:{port}"),
            shards: shard.mesh.nr_shards(),
            topics: img.topics.len(),
            partitions: img.partition_count(),
            version: env!("CARGO_PKG_VERSION"),
            max_io_bytes: shard.config.max_io_bytes,
        };
    }
}
