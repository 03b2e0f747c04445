//! A small synchronous Kafka client: enough for an operator CLI, never used by the broker.
//!
//! `Client` holds one connection to a bootstrap broker (metadata and admin requests) and
//! lazily one per node for requests that must reach a partition leader or a group
//! coordinator. Everything is blocking std I/O: the tools are not a hot path.

pub mod conn;
pub mod error;
pub mod group;
pub mod records;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, GroupId, ListOffsetsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

pub use conn::Conn;
pub use error::KafkaError;

/// ListOffsets timestamps with a special meaning.
pub const EARLIEST_TIMESTAMP: i64 = -2;
pub const LATEST_TIMESTAMP: i64 = -1;

/// How long produce/consume wait for a just-created topic to appear in metadata (Kafka
/// answers CreateTopics before every broker's metadata cache has it).
pub const TOPIC_APPEAR_WAIT: Duration = Duration::from_secs(5);

pub fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(sb(s))
}

pub fn group_id(s: &str) -> GroupId {
    GroupId(sb(s))
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerInfo {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone)]
pub struct PartitionMeta {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
    pub error: Option<KafkaError>,
}

#[derive(Debug, Clone)]
pub struct TopicMeta {
    pub name: String,
    /// Base64 (URL-safe, unpadded) as Kafka prints topic ids; `None` before Metadata v10.
    pub id: Option<String>,
    pub internal: bool,
    pub error: Option<KafkaError>,
    pub partitions: Vec<PartitionMeta>,
}

impl TopicMeta {
    pub fn replication_factor(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.replicas.len())
            .max()
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone)]
pub struct Metadata {
    pub cluster_id: Option<String>,
    pub controller_id: i32,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicMeta>,
}

impl Metadata {
    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// A (topic, partition) → offset answer of ListOffsets, or that partition's error.
pub type OffsetAnswers = BTreeMap<(String, i32), Result<i64, KafkaError>>;

pub struct Client {
    bootstrap: Vec<String>,
    timeout: Duration,
    boot: Option<Conn>,
    nodes: HashMap<i32, Conn>,
    brokers: HashMap<i32, String>,
}

impl Client {
    pub fn new(bootstrap: Vec<String>, timeout: Duration) -> Client {
        Client {
            bootstrap,
            timeout,
            boot: None,
            nodes: HashMap::new(),
            brokers: HashMap::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection for metadata and admin requests: the first bootstrap broker that answers.
    pub fn any(&mut self) -> Result<&mut Conn> {
        if self.boot.is_none() {
            let mut failures = Vec::new();
            for addr in &self.bootstrap {
                match Conn::connect(addr, self.timeout) {
                    Ok(c) => {
                        self.boot = Some(c);
                        break;
                    }
                    Err(e) => failures.push(format!("{addr}: {e:#}")),
                }
            }
            if self.boot.is_none() {
                bail!(
                    "no broker reachable (--brokers / SPATE_BROKERS):\n  {}",
                    failures.join("\n  ")
                );
            }
        }
        Ok(self.boot.as_mut().expect("connected above"))
    }

    /// The connection to node `id` (its address from the last Metadata or FindCoordinator).
    pub fn node(&mut self, id: i32) -> Result<&mut Conn> {
        if !self.nodes.contains_key(&id) {
            if !self.brokers.contains_key(&id) {
                self.metadata(Some(&[]))?;
            }
            let addr = self
                .brokers
                .get(&id)
                .cloned()
                .ok_or_else(|| anyhow!("node {id} is not in the cluster metadata"))?;
            let conn = Conn::connect(&addr, self.timeout)
                .with_context(|| format!("connecting to node {id}"))?;
            self.nodes.insert(id, conn);
        }
        Ok(self.nodes.get_mut(&id).expect("inserted above"))
    }

    /// Drops a node's connection (after an I/O error), so the next use reconnects.
    pub fn forget_node(&mut self, id: i32) {
        self.nodes.remove(&id);
    }

    /// Metadata for `topics` (`None`: all topics; `Some(&[])`: brokers only).
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<Metadata> {
        let conn = self.any()?;
        let v = conn.version::<MetadataRequest>()?;
        let mut req = MetadataRequest::default();
        req.topics = match topics {
            None if v >= 1 => None,
            None => Some(vec![]),
            Some([]) if v == 0 => bail!("Metadata v0 cannot ask for brokers only"),
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| MetadataRequestTopic::default().with_name(Some(topic_name(n))))
                    .collect(),
            ),
        };
        if v >= 4 {
            req.allow_auto_topic_creation = false;
        }
        let resp = conn.send_at(&req, v)?;
        if let Some(e) = KafkaError::from_code(resp.error_code, None) {
            bail!("Metadata: {e}");
        }
        let brokers: Vec<BrokerInfo> = resp
            .brokers
            .iter()
            .map(|b| BrokerInfo {
                node_id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
                rack: b.rack.as_ref().map(|r| r.to_string()),
            })
            .collect();
        for b in &brokers {
            self.brokers.insert(b.node_id, b.addr());
        }
        let topics = resp
            .topics
            .iter()
            .map(|t| {
                let mut partitions: Vec<PartitionMeta> = t
                    .partitions
                    .iter()
                    .map(|p| PartitionMeta {
                        partition: p.partition_index,
                        leader: p.leader_id.0,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                        error: KafkaError::from_code(p.error_code, None),
                    })
                    .collect();
                partitions.sort_by_key(|p| p.partition);
                TopicMeta {
                    name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    id: (v >= 10 && !t.topic_id.is_nil())
                        .then(|| crate::output::base64_url(t.topic_id.as_bytes())),
                    internal: t.is_internal,
                    error: KafkaError::from_code(t.error_code, None),
                    partitions,
                }
            })
            .collect();
        Ok(Metadata {
            cluster_id: resp.cluster_id.as_ref().map(|c| c.to_string()),
            controller_id: resp.controller_id.0,
            brokers,
            topics,
        })
    }

    /// Metadata for one topic, waiting up to `TOPIC_APPEAR_WAIT` while it is unknown or has
    /// partitions without a leader (a topic created a moment ago).
    /// Kafka errors are kept as `KafkaError` (downcastable) in the returned error.
    pub fn topic_metadata(&mut self, name: &str) -> Result<TopicMeta> {
        let deadline = Instant::now() + TOPIC_APPEAR_WAIT;
        loop {
            let md = self.metadata(Some(&[name.to_string()]))?;
            let t = md
                .topic(name)
                .cloned()
                .ok_or_else(|| anyhow!("Metadata did not list {name}"))?;
            let pending = match &t.error {
                Some(e) if e.is_retriable() => Some(e.clone()),
                Some(e) => return Err(anyhow::Error::new(e.clone())),
                None => t.partitions.iter().find(|p| p.leader < 0).map(|p| {
                    p.error.clone().unwrap_or(KafkaError {
                        code: 5,
                        broker_message: None,
                    })
                }),
            };
            match pending {
                None if !t.partitions.is_empty() => return Ok(t),
                None => {
                    if Instant::now() >= deadline {
                        bail!("topic {name} has no partitions");
                    }
                }
                Some(e) => {
                    if Instant::now() >= deadline {
                        return Err(anyhow::Error::new(e));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// FindCoordinator for a group; returns the coordinator's node id (connectable with
    /// `node`).
    pub fn find_coordinator(&mut self, group: &str) -> Result<i32> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let conn = self.any()?;
            let v = conn.version::<FindCoordinatorRequest>()?;
            let mut req = FindCoordinatorRequest::default();
            if v >= 4 {
                req.coordinator_keys = vec![sb(group)];
            } else {
                req.key = sb(group);
            }
            let resp = conn.send_at(&req, v)?;
            let (code, msg, node, host, port) = if v >= 4 {
                let c = resp
                    .coordinators
                    .first()
                    .ok_or_else(|| anyhow!("FindCoordinator answered no coordinator"))?;
                (
                    c.error_code,
                    c.error_message.clone(),
                    c.node_id.0,
                    c.host.to_string(),
                    c.port,
                )
            } else {
                (
                    resp.error_code,
                    resp.error_message.clone(),
                    resp.node_id.0,
                    resp.host.to_string(),
                    resp.port,
                )
            };
            match KafkaError::from_code(code, msg.as_deref()) {
                None => {
                    let addr = BrokerInfo {
                        node_id: node,
                        host,
                        port,
                        rack: None,
                    }
                    .addr();
                    if self.brokers.get(&node) != Some(&addr) {
                        self.nodes.remove(&node);
                    }
                    self.brokers.insert(node, addr);
                    return Ok(node);
                }
                // The coordinator (or __consumer_offsets) is still loading: retry.
                Some(e) if e.is_retriable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Some(e) => bail!("FindCoordinator for group {group}: {e}"),
            }
        }
    }

    /// ListOffsets for partitions (each with its leader and the timestamp to look up),
    /// one request per leader.
    pub fn list_offsets(
        &mut self,
        wanted: &[(String, i32, i32, i64)], // (topic, partition, leader, timestamp)
    ) -> Result<OffsetAnswers> {
        let mut by_leader: BTreeMap<i32, Vec<&(String, i32, i32, i64)>> = BTreeMap::new();
        for w in wanted {
            by_leader.entry(w.2).or_default().push(w);
        }
        let mut out = OffsetAnswers::new();
        for (leader, parts) in by_leader {
            if leader < 0 {
                for (t, p, _, _) in parts {
                    out.insert(
                        (t.clone(), *p),
                        Err(KafkaError {
                            code: 5,
                            broker_message: None,
                        }),
                    );
                }
                continue;
            }
            let conn = self.node(leader)?;
            let v = conn.version::<ListOffsetsRequest>()?;
            let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
            for (t, p, _, ts) in &parts {
                let lp = ListOffsetsPartition::default()
                    .with_partition_index(*p)
                    .with_timestamp(*ts);
                topics.entry(t.as_str()).or_default().push(lp);
            }
            let mut req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            ListOffsetsTopic::default()
                                .with_name(topic_name(t))
                                .with_partitions(ps)
                        })
                        .collect(),
                );
            if v >= 10 {
                req.timeout_ms = self.timeout.as_millis() as i32;
            }
            let resp = self.node(leader)?.send_at(&req, v)?;
            for t in resp.topics {
                for p in t.partitions {
                    let key = (t.name.0.to_string(), p.partition_index);
                    let answer = match KafkaError::from_code(p.error_code, None) {
                        Some(e) => Err(e),
                        None => Ok(p.offset),
                    };
                    out.insert(key, answer);
                }
            }
        }
        Ok(out)
    }
}
