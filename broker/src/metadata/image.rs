//! The metadata image: topics, ids, partition placement and configs, built by applying
//! controller-log records in order.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::configs::{source, TopicConfigDef, TOPIC_CONFIGS};

/// One record of the controller log. Records are applied in log order; a controller-log entry
/// holds the records of one request, so a request applies all-or-nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    /// The first record ever written: the cluster's identity.
    ClusterInit {
        cluster_id: String,
    },
    CreateTopic {
        name: String,
        id: Uuid,
        replication_factor: i16,
        /// Owning shard of each partition, by partition index.
        partition_shards: Vec<u32>,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        id: Uuid,
    },
    /// Appends partitions (owning shards of the new ones, in order).
    CreatePartitions {
        id: Uuid,
        new_partition_shards: Vec<u32>,
    },
    /// Replaces the topic's overrides with `configs`.
    SetTopicConfigs {
        id: Uuid,
        configs: BTreeMap<String, String>,
    },
    /// Producer ids below `end` have been handed out (allocated a block at a time).
    ProducerIdBlock {
        end: i64,
    },
    /// Replaces the dynamic broker configs (topic-config synonyms): cluster-wide defaults
    /// when `node` is `None`, else those of one node.
    SetBrokerConfigs {
        node: Option<i32>,
        configs: BTreeMap<String, String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub replication_factor: i16,
    pub partition_shards: Vec<u32>,
    /// Raft group (metadata-store region) of each partition, by partition index: assigned
    /// in controller-log order as the image is built, so every replay (and, with
    /// clustering, every node) gives a partition the same group.
    pub group_ids: Vec<u64>,
    /// Topic overrides only (defaults are resolved on read).
    pub configs: BTreeMap<String, String>,
}

/// The first Raft group id given to a partition (group 1 is the controller's,
/// `spate_storage::metastore::CONTROLLER_GROUP`).
pub const FIRST_PARTITION_GROUP: u64 = 2;

#[derive(Debug, Clone, Default)]
pub struct MetadataImage {
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    pub names_by_id: HashMap<Uuid, String>,
    /// Cluster-wide dynamic overrides, keyed by broker config name (e.g. `log.retention.ms`).
    pub cluster_configs: BTreeMap<String, String>,
    /// Per-node dynamic overrides, keyed by node id, then broker config name.
    pub node_configs: BTreeMap<i32, BTreeMap<String, String>>,
    /// Partitions owned by each shard (for least-loaded placement).
    pub partitions_per_shard: Vec<usize>,
    /// Producer ids below this have been allocated.
    pub producer_ids_end: i64,
    /// Index of the last applied controller-log entry.
    pub applied_index: u64,
    /// Raft groups given to partitions so far (the next is `FIRST_PARTITION_GROUP` plus
    /// this); never reused, so a deleted partition's leftover metadata cannot be picked up
    /// by a new one.
    pub groups_assigned: u64,
}

impl MetadataImage {
    pub fn new(nr_shards: usize) -> Self {
        MetadataImage {
            partitions_per_shard: vec![0; nr_shards],
            ..Default::default()
        }
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&TopicMeta> {
        self.names_by_id.get(id).and_then(|n| self.topics.get(n))
    }

    pub fn partition_count(&self) -> usize {
        self.partitions_per_shard.iter().sum()
    }

    /// Maps a stored shard to one that exists now (the node may restart with fewer shards).
    fn shard_slot(&self, shard: u32) -> usize {
        shard as usize % self.partitions_per_shard.len().max(1)
    }

    /// A topic config's effective value for a topic with `overrides` on node `node_id`, and
    /// where it comes from (Kafka's `ConfigSource`).
    pub fn effective_topic_config(
        &self,
        def: &TopicConfigDef,
        overrides: &BTreeMap<String, String>,
        node_id: i32,
    ) -> (String, i8) {
        if let Some(v) = overrides.get(def.name) {
            return (v.clone(), source::DYNAMIC_TOPIC_CONFIG);
        }
        if let Some(v) = self
            .node_configs
            .get(&node_id)
            .and_then(|m| m.get(def.broker_synonym))
        {
            return (v.clone(), source::DYNAMIC_BROKER_CONFIG);
        }
        if let Some(v) = self.cluster_configs.get(def.broker_synonym) {
            return (v.clone(), source::DYNAMIC_DEFAULT_BROKER_CONFIG);
        }
        (def.default.to_string(), source::DEFAULT_CONFIG)
    }

    /// Every topic config with its effective value and source, in name order.
    pub fn effective_topic_configs(
        &self,
        overrides: &BTreeMap<String, String>,
        node_id: i32,
    ) -> Vec<(&'static TopicConfigDef, String, i8)> {
        TOPIC_CONFIGS
            .iter()
            .map(|def| {
                let (v, s) = self.effective_topic_config(def, overrides, node_id);
                (def, v, s)
            })
            .collect()
    }

    /// The next `n` Raft group ids.
    fn assign_groups(&mut self, n: usize) -> Vec<u64> {
        let first = FIRST_PARTITION_GROUP + self.groups_assigned;
        self.groups_assigned += n as u64;
        (first..first + n as u64).collect()
    }

    /// Applies one controller-log entry's records.
    pub fn apply(&mut self, index: u64, records: &[MetadataRecord]) {
        for r in records {
            self.apply_one(r);
        }
        self.applied_index = index;
    }

    fn apply_one(&mut self, record: &MetadataRecord) {
        match record {
            MetadataRecord::ClusterInit { cluster_id } => self.cluster_id = cluster_id.clone(),
            MetadataRecord::ProducerIdBlock { end } => {
                self.producer_ids_end = self.producer_ids_end.max(*end);
            }
            MetadataRecord::CreateTopic {
                name,
                id,
                replication_factor,
                partition_shards,
                configs,
            } => {
                for s in partition_shards {
                    let slot = self.shard_slot(*s);
                    self.partitions_per_shard[slot] += 1;
                }
                self.names_by_id.insert(*id, name.clone());
                let group_ids = self.assign_groups(partition_shards.len());
                self.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name: name.clone(),
                        id: *id,
                        replication_factor: *replication_factor,
                        partition_shards: partition_shards.clone(),
                        group_ids,
                        configs: configs.clone(),
                    },
                );
            }
            MetadataRecord::DeleteTopic { id } => {
                if let Some(name) = self.names_by_id.remove(id) {
                    if let Some(t) = self.topics.remove(&name) {
                        for s in &t.partition_shards {
                            let slot = self.shard_slot(*s);
                            self.partitions_per_shard[slot] -= 1;
                        }
                    }
                }
            }
            MetadataRecord::CreatePartitions {
                id,
                new_partition_shards,
            } => {
                let Some(name) = self.names_by_id.get(id).cloned() else {
                    return;
                };
                for s in new_partition_shards {
                    let slot = self.shard_slot(*s);
                    self.partitions_per_shard[slot] += 1;
                }
                let groups = self.assign_groups(new_partition_shards.len());
                if let Some(t) = self.topics.get_mut(&name) {
                    t.partition_shards.extend_from_slice(new_partition_shards);
                    t.group_ids.extend(groups);
                }
            }
            MetadataRecord::SetTopicConfigs { id, configs } => {
                if let Some(name) = self.names_by_id.get(id).cloned() {
                    if let Some(t) = self.topics.get_mut(&name) {
                        t.configs = configs.clone();
                    }
                }
            }
            MetadataRecord::SetBrokerConfigs {
                node: None,
                configs,
            } => {
                self.cluster_configs = configs.clone();
            }
            MetadataRecord::SetBrokerConfigs {
                node: Some(n),
                configs,
            } => {
                self.node_configs.insert(*n, configs.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, shards: Vec<u32>) -> MetadataRecord {
        MetadataRecord::CreateTopic {
            name: name.into(),
            id: Uuid::new_v4(),
            replication_factor: 1,
            partition_shards: shards,
            configs: BTreeMap::new(),
        }
    }

    #[test]
    fn records_apply_and_round_trip_through_json() {
        let mut img = MetadataImage::new(2);
        let c = create("a", vec![0, 1]);
        let MetadataRecord::CreateTopic { id, .. } = c.clone() else {
            unreachable!()
        };
        let batch = vec![
            c,
            MetadataRecord::CreatePartitions {
                id,
                new_partition_shards: vec![0],
            },
        ];
        let json = serde_json::to_vec(&batch).unwrap();
        let back: Vec<MetadataRecord> = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, batch);
        img.apply(7, &back);
        assert_eq!(img.topics["a"].partition_shards, vec![0, 1, 0]);
        assert_eq!(img.partitions_per_shard, vec![2, 1]);
        img.apply(8, &[MetadataRecord::DeleteTopic { id }]);
        assert!(img.topics.is_empty() && img.names_by_id.is_empty());
        assert_eq!(img.partitions_per_shard, vec![0, 0]);
        assert_eq!(img.applied_index, 8);
    }

    #[test]
    fn fewer_shards_after_restart_still_apply() {
        let mut img = MetadataImage::new(1);
        img.apply(1, &[create("a", vec![0, 3, 5])]);
        assert_eq!(img.partitions_per_shard, vec![3]);
    }

    #[test]
    fn partitions_get_raft_groups_in_log_order_never_reused() {
        let log = {
            let a = create("a", vec![0, 1]);
            let MetadataRecord::CreateTopic { id, .. } = a.clone() else {
                unreachable!()
            };
            vec![
                vec![a],
                vec![create("b", vec![0])],
                vec![MetadataRecord::CreatePartitions {
                    id,
                    new_partition_shards: vec![1],
                }],
                vec![MetadataRecord::DeleteTopic { id }],
                vec![create("a", vec![0])],
            ]
        };
        let mut img = MetadataImage::new(2);
        for (i, r) in log.iter().enumerate() {
            img.apply(i as u64 + 1, r);
        }
        // a: 2, 3 (+ 5 from CreatePartitions, then deleted); b: 4; the new a: 6.
        assert_eq!(img.topics["b"].group_ids, vec![4]);
        assert_eq!(img.topics["a"].group_ids, vec![6]);
        // A replay of the same log gives the same groups.
        let mut again = MetadataImage::new(1);
        for (i, r) in log.iter().enumerate() {
            again.apply(i as u64 + 1, r);
        }
        assert_eq!(again.topics["a"].group_ids, vec![6]);
        assert_eq!(again.groups_assigned, 5);
    }
}
