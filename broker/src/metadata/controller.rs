//! The controller: the only writer of cluster metadata. Lives on shard 0.
//!
//! A request is *planned* against the current image (pure functions below: validation, Kafka
//! error codes, placement), its records are appended durably to the controller log in the
//! metadata store, then applied on every shard before the request is answered — so a client
//! that created a topic sees it on its next request, whichever shard serves it.

use std::collections::{BTreeMap, HashMap, HashSet};

use kafka_protocol::ResponseError;
use uuid::Uuid;

use super::configs::{self, by_broker_synonym, topic_config, ConfigType};
use super::image::{MetadataImage, MetadataRecord};
use super::names::{unify_collision_chars, validate_topic_name};
use crate::limits::{PARTITIONS_PER_NODE_MAX, PARTITIONS_PER_TOPIC_MAX};

/// A Kafka error code with its message, for one item of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct KError {
    pub code: ResponseError,
    pub message: String,
}

impl KError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        KError {
            code,
            message: message.into(),
        }
    }
}

/// What the controller needs to know about the node beyond the image.
#[derive(Debug, Clone, Copy)]
pub struct ControllerCtx {
    pub node_id: i32,
    /// Brokers that can host replicas (1 until clustering).
    pub live_brokers: i32,
    pub default_partitions: i32,
    pub default_replication_factor: i16,
}

/// Resource types of DescribeConfigs / AlterConfigs.
pub mod resource {
    pub const TOPIC: i8 = 2;
    pub const BROKER: i8 = 4;
}

#[derive(Debug, Clone)]
pub struct CreateTopicSpec {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    /// Manual assignment: broker ids per partition (empty: let the controller place them).
    pub assignments: Vec<Vec<i32>>,
    pub configs: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreatedTopic {
    pub id: Uuid,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

#[derive(Debug, Clone)]
pub struct CreatePartitionsSpec {
    pub name: String,
    pub count: i32,
    pub assignments: Option<Vec<Vec<i32>>>,
}

/// `IncrementalAlterConfigs` operations; `AlterConfigs` (non-incremental) uses `Set` for every
/// entry and replaces the whole set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOp {
    Set,
    Delete,
    Append,
    Subtract,
}

impl ConfigOp {
    pub fn from_i8(op: i8) -> Option<ConfigOp> {
        Some(match op {
            0 => ConfigOp::Set,
            1 => ConfigOp::Delete,
            2 => ConfigOp::Append,
            3 => ConfigOp::Subtract,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct AlterResource {
    pub resource_type: i8,
    pub resource_name: String,
    /// `(key, op, value)`; `op` is `None` when the client sent an unknown operation code.
    pub entries: Vec<(String, Option<ConfigOp>, Option<String>)>,
}

/// A metadata change sent to the controller.
#[derive(Debug, Clone)]
pub enum ControllerRequest {
    CreateTopics {
        topics: Vec<CreateTopicSpec>,
        validate_only: bool,
    },
    DeleteTopics {
        topics: Vec<TopicRef>,
    },
    CreatePartitions {
        topics: Vec<CreatePartitionsSpec>,
        validate_only: bool,
    },
    AlterConfigs {
        resources: Vec<AlterResource>,
        incremental: bool,
        validate_only: bool,
    },
    /// A producer id for an idempotent producer; with `existing`, bump that producer's epoch
    /// (KIP-360) or, when the epoch is exhausted, hand out a new id.
    InitProducerId {
        existing: Option<(i64, i16)>,
    },
}

#[derive(Debug, Clone)]
pub enum ControllerResponse {
    CreateTopics(Vec<Result<CreatedTopic, KError>>),
    DeleteTopics(DeleteResults),
    CreatePartitions(Vec<Result<(), KError>>),
    AlterConfigs(Vec<Result<(), KError>>),
    ProducerId(Result<(i64, i16), KError>),
}

impl ControllerResponse {
    /// Replaces every successful item with `err` (the records could not be persisted).
    pub fn fail_all(self, err: &KError) -> ControllerResponse {
        fn f<T>(v: Vec<Result<T, KError>>, err: &KError) -> Vec<Result<T, KError>> {
            v.into_iter()
                .map(|r| r.and_then(|_| Err(err.clone())))
                .collect()
        }
        match self {
            ControllerResponse::CreateTopics(v) => ControllerResponse::CreateTopics(f(v, err)),
            ControllerResponse::DeleteTopics(v) => ControllerResponse::DeleteTopics(f(v, err)),
            ControllerResponse::CreatePartitions(v) => {
                ControllerResponse::CreatePartitions(f(v, err))
            }
            ControllerResponse::AlterConfigs(v) => ControllerResponse::AlterConfigs(f(v, err)),
            ControllerResponse::ProducerId(r) => {
                ControllerResponse::ProducerId(r.and_then(|_| Err(err.clone())))
            }
        }
    }
}

/// Plans a request: the per-item results and the records to persist (empty when nothing
/// changes, e.g. `validate_only`).
pub fn plan(
    image: &MetadataImage,
    ctx: &ControllerCtx,
    req: &ControllerRequest,
) -> (ControllerResponse, Vec<MetadataRecord>) {
    match req {
        ControllerRequest::CreateTopics {
            topics,
            validate_only,
        } => {
            let (r, rec) = plan_create_topics(image, ctx, topics, *validate_only);
            (ControllerResponse::CreateTopics(r), rec)
        }
        ControllerRequest::DeleteTopics { topics } => {
            let (r, rec) = plan_delete_topics(image, topics);
            (ControllerResponse::DeleteTopics(r), rec)
        }
        ControllerRequest::CreatePartitions {
            topics,
            validate_only,
        } => {
            let (r, rec) = plan_create_partitions(image, ctx, topics, *validate_only);
            (ControllerResponse::CreatePartitions(r), rec)
        }
        ControllerRequest::AlterConfigs {
            resources,
            incremental,
            validate_only,
        } => {
            let (r, rec) = plan_alter_configs(image, ctx, resources, *incremental, *validate_only);
            (ControllerResponse::AlterConfigs(r), rec)
        }
        ControllerRequest::InitProducerId { .. } => (
            ControllerResponse::ProducerId(Err(KError::new(
                ResponseError::UnknownServerError,
                "producer ids are allocated by the controller service, not planned",
            ))),
            Vec::new(),
        ),
    }
}

fn duplicates<'a>(names: impl Iterator<Item = &'a str>) -> HashSet<&'a str> {
    let mut seen = HashSet::new();
    let mut dup = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            dup.insert(n);
        }
    }
    dup
}

fn duplicate_topic(name: &str) -> KError {
    KError::new(
        ResponseError::InvalidRequest,
        format!("Duplicate topic name {name} in the request."),
    )
}

fn check_assignment(
    ctx: &ControllerCtx,
    replicas: &[i32],
    expected_rf: Option<usize>,
) -> Result<(), KError> {
    if replicas.is_empty() {
        return Err(KError::new(
            ResponseError::InvalidReplicaAssignment,
            "A partition's replica assignment is empty.",
        ));
    }
    if let Some(rf) = expected_rf {
        if replicas.len() != rf {
            return Err(KError::new(
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "Inconsistent replication factor: expected {rf} replicas, got {}.",
                    replicas.len()
                ),
            ));
        }
    }
    if replicas.iter().collect::<HashSet<_>>().len() != replicas.len() {
        return Err(KError::new(
            ResponseError::InvalidReplicaAssignment,
            "Duplicate brokers in a partition's replica assignment.",
        ));
    }
    if let Some(b) = replicas.iter().find(|b| **b != ctx.node_id) {
        return Err(KError::new(
            ResponseError::InvalidReplicaAssignment,
            format!("Broker {b} in the replica assignment is not registered."),
        ));
    }
    Ok(())
}

fn rf_error(ctx: &ControllerCtx, rf: i16) -> Option<KError> {
    if rf <= 0 {
        return Some(KError::new(
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0, or -1 to use the default value.",
        ));
    }
    if i32::from(rf) > ctx.live_brokers {
        return Some(KError::new(
            ResponseError::InvalidReplicationFactor,
            format!(
                "Unable to replicate the partition {rf} time(s): The target replication factor \
                 of {rf} cannot be reached because only {} broker(s) are registered.",
                ctx.live_brokers
            ),
        ));
    }
    None
}

fn partitions_error(image: &MetadataImage, adding: usize, total: i64) -> Option<KError> {
    if total > i64::from(PARTITIONS_PER_TOPIC_MAX) {
        return Some(KError::new(
            ResponseError::InvalidPartitions,
            format!("A topic may have at most {PARTITIONS_PER_TOPIC_MAX} partitions."),
        ));
    }
    if image.partition_count() + adding > PARTITIONS_PER_NODE_MAX {
        return Some(KError::new(
            ResponseError::InvalidPartitions,
            format!(
                "The node would exceed its limit of {PARTITIONS_PER_NODE_MAX} partitions \
                 (it has {}).",
                image.partition_count()
            ),
        ));
    }
    None
}

/// Picks owning shards for `n` new partitions, each on the currently least-loaded shard
/// (ties to the lowest shard), counting each pick in `load`.
fn place(load: &mut [usize], n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let shard = (0..load.len())
                .min_by_key(|i| (load[*i], *i))
                .expect("at least one shard");
            load[shard] += 1;
            shard as u32
        })
        .collect()
}

pub fn plan_create_topics(
    image: &MetadataImage,
    ctx: &ControllerCtx,
    specs: &[CreateTopicSpec],
    validate_only: bool,
) -> (Vec<Result<CreatedTopic, KError>>, Vec<MetadataRecord>) {
    let dup = duplicates(specs.iter().map(|s| s.name.as_str()));
    let existing_unified: HashMap<String, &str> = image
        .topics
        .keys()
        .map(|n| (unify_collision_chars(n), n.as_str()))
        .collect();
    let mut load = image.partitions_per_shard.clone();
    let mut added = 0usize;
    let mut records = Vec::new();
    let results = specs
        .iter()
        .map(|spec| {
            if dup.contains(spec.name.as_str()) {
                return Err(duplicate_topic(&spec.name));
            }
            validate_topic_name(&spec.name)
                .map_err(|m| KError::new(ResponseError::InvalidTopicException, m))?;
            if image.topics.contains_key(&spec.name) {
                return Err(KError::new(
                    ResponseError::TopicAlreadyExists,
                    format!("Topic '{}' already exists.", spec.name),
                ));
            }
            if let Some(other) = existing_unified.get(&unify_collision_chars(&spec.name)) {
                return Err(KError::new(
                    ResponseError::InvalidTopicException,
                    format!(
                        "Topic '{}' collides with existing topic: {other}",
                        spec.name
                    ),
                ));
            }
            let (num_partitions, rf) = if spec.assignments.is_empty() {
                let n = if spec.num_partitions == -1 {
                    ctx.default_partitions
                } else {
                    spec.num_partitions
                };
                if n <= 0 {
                    return Err(KError::new(
                        ResponseError::InvalidPartitions,
                        "Number of partitions was set to an invalid non-positive value.",
                    ));
                }
                let rf = if spec.replication_factor == -1 {
                    ctx.default_replication_factor
                } else {
                    spec.replication_factor
                };
                if let Some(e) = rf_error(ctx, rf) {
                    return Err(e);
                }
                (n, rf)
            } else {
                if spec.num_partitions != -1 || spec.replication_factor != -1 {
                    return Err(KError::new(
                        ResponseError::InvalidRequest,
                        "Both numPartitions or replicationFactor and replicasAssignments were \
                         set. Both cannot be used at the same time.",
                    ));
                }
                let rf = spec.assignments[0].len();
                for replicas in &spec.assignments {
                    check_assignment(ctx, replicas, Some(rf))?;
                }
                (spec.assignments.len() as i32, rf as i16)
            };
            if let Some(e) = partitions_error(
                image,
                added + num_partitions as usize,
                num_partitions.into(),
            ) {
                return Err(e);
            }
            let configs = configs::validate_topic_overrides(&spec.configs)
                .and_then(|c| configs::check_topic_combination(&c).map(|()| c))
                .map_err(|m| KError::new(ResponseError::InvalidConfig, m))?;
            let id = if validate_only {
                Uuid::nil()
            } else {
                Uuid::new_v4()
            };
            added += num_partitions as usize;
            let shards = place(&mut load, num_partitions as usize);
            if !validate_only {
                records.push(MetadataRecord::CreateTopic {
                    name: spec.name.clone(),
                    id,
                    replication_factor: rf,
                    partition_shards: shards,
                    configs: configs.clone(),
                });
            }
            Ok(CreatedTopic {
                id,
                num_partitions,
                replication_factor: rf,
                configs,
            })
        })
        .collect();
    (results, records)
}

/// Per-topic outcome of a delete: the deleted topic's name and id.
pub type DeleteResults = Vec<Result<(String, Uuid), KError>>;

pub fn plan_delete_topics(
    image: &MetadataImage,
    refs: &[TopicRef],
) -> (DeleteResults, Vec<MetadataRecord>) {
    let mut deleted = HashSet::new();
    let mut records = Vec::new();
    let results = refs
        .iter()
        .map(|r| {
            let topic = match r {
                TopicRef::Name(n) => image.topics.get(n).ok_or_else(|| {
                    KError::new(
                        ResponseError::UnknownTopicOrPartition,
                        "This server does not host this topic-partition.",
                    )
                })?,
                TopicRef::Id(id) => image.topic_by_id(id).ok_or_else(|| {
                    KError::new(
                        ResponseError::UnknownTopicId,
                        "This server does not host this topic ID.",
                    )
                })?,
            };
            if deleted.insert(topic.id) {
                records.push(MetadataRecord::DeleteTopic { id: topic.id });
            }
            Ok((topic.name.clone(), topic.id))
        })
        .collect();
    (results, records)
}

pub fn plan_create_partitions(
    image: &MetadataImage,
    ctx: &ControllerCtx,
    specs: &[CreatePartitionsSpec],
    validate_only: bool,
) -> (Vec<Result<(), KError>>, Vec<MetadataRecord>) {
    let dup = duplicates(specs.iter().map(|s| s.name.as_str()));
    let mut load = image.partitions_per_shard.clone();
    let mut added = 0usize;
    let mut records = Vec::new();
    let results = specs
        .iter()
        .map(|spec| {
            if dup.contains(spec.name.as_str()) {
                return Err(duplicate_topic(&spec.name));
            }
            let topic = image.topics.get(&spec.name).ok_or_else(|| {
                KError::new(
                    ResponseError::UnknownTopicOrPartition,
                    format!("The topic '{}' does not exist.", spec.name),
                )
            })?;
            let current = topic.partition_shards.len() as i32;
            if spec.count < current {
                return Err(KError::new(
                    ResponseError::InvalidPartitions,
                    format!(
                        "The topic {} currently has {current} partition(s); {} would not be an \
                         increase.",
                        spec.name, spec.count
                    ),
                ));
            }
            if spec.count == current {
                return Err(KError::new(
                    ResponseError::InvalidPartitions,
                    format!("Topic already has {current} partition(s)."),
                ));
            }
            let adding = (spec.count - current) as usize;
            if let Some(assignments) = &spec.assignments {
                if assignments.len() != adding {
                    return Err(KError::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!(
                            "Increasing the number of partitions by {adding} but {} \
                             assignments provided.",
                            assignments.len()
                        ),
                    ));
                }
                for replicas in assignments {
                    check_assignment(ctx, replicas, Some(topic.replication_factor as usize))?;
                }
            }
            if let Some(e) = partitions_error(image, added + adding, spec.count.into()) {
                return Err(e);
            }
            added += adding;
            let shards = place(&mut load, adding);
            if !validate_only {
                records.push(MetadataRecord::CreatePartitions {
                    id: topic.id,
                    new_partition_shards: shards,
                });
            }
            Ok(())
        })
        .collect();
    (results, records)
}

/// Applies one resource's entries to `current`, checking every key and value.
fn alter_config_map(
    current: &BTreeMap<String, String>,
    entries: &[(String, Option<ConfigOp>, Option<String>)],
    incremental: bool,
    broker: bool,
) -> Result<BTreeMap<String, String>, KError> {
    let keys = duplicates(entries.iter().map(|(k, _, _)| k.as_str()));
    if let Some(k) = keys.iter().next() {
        return Err(KError::new(
            ResponseError::InvalidRequest,
            format!("Error due to duplicate config keys: {k}"),
        ));
    }
    let invalid = |m: String| KError::new(ResponseError::InvalidConfig, m);
    let mut out = if incremental {
        current.clone()
    } else {
        BTreeMap::new()
    };
    for (key, op, value) in entries {
        let def = if broker {
            by_broker_synonym(key).ok_or_else(|| {
                if configs::static_broker_config_names().contains(&key.as_str()) {
                    KError::new(
                        ResponseError::InvalidRequest,
                        format!("Cannot update these configs dynamically: Set({key})"),
                    )
                } else {
                    invalid(format!("Unknown broker config name: {key}"))
                }
            })?
        } else {
            topic_config(key).ok_or_else(|| invalid(format!("Unknown topic config name: {key}")))?
        };
        let op = op.ok_or_else(|| {
            KError::new(
                ResponseError::InvalidRequest,
                format!("Unknown config operation for {key}"),
            )
        })?;
        match op {
            ConfigOp::Delete => {
                out.remove(key);
            }
            ConfigOp::Set => {
                let v = value
                    .as_deref()
                    .ok_or_else(|| invalid(format!("Null value not supported for {key}")))?;
                out.insert(key.clone(), def.validate(v).map_err(invalid)?);
            }
            ConfigOp::Append | ConfigOp::Subtract => {
                if def.ty != ConfigType::List {
                    return Err(invalid(format!(
                        "Config value append or subtract is not allowed for config key: {key}"
                    )));
                }
                let v = value
                    .as_deref()
                    .ok_or_else(|| invalid(format!("Null value not supported for {key}")))?;
                let base = out
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| def.default.to_string());
                let mut items: Vec<String> = base
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let canonical = def.validate(item).map_err(invalid)?;
                    if op == ConfigOp::Append {
                        if !items.contains(&canonical) {
                            items.push(canonical);
                        }
                    } else {
                        items.retain(|i| *i != canonical);
                    }
                }
                if items.is_empty() {
                    out.remove(key);
                } else {
                    out.insert(
                        key.clone(),
                        def.validate(&items.join(",")).map_err(invalid)?,
                    );
                }
            }
        }
    }
    Ok(out)
}

pub fn plan_alter_configs(
    image: &MetadataImage,
    ctx: &ControllerCtx,
    resources: &[AlterResource],
    incremental: bool,
    validate_only: bool,
) -> (Vec<Result<(), KError>>, Vec<MetadataRecord>) {
    let mut records = Vec::new();
    let results = resources
        .iter()
        .map(|res| match res.resource_type {
            resource::TOPIC => {
                let topic = image.topics.get(&res.resource_name).ok_or_else(|| {
                    KError::new(
                        ResponseError::UnknownTopicOrPartition,
                        format!("The topic '{}' does not exist.", res.resource_name),
                    )
                })?;
                let configs = alter_config_map(&topic.configs, &res.entries, incremental, false)?;
                configs::check_topic_combination(&configs)
                    .map_err(|m| KError::new(ResponseError::InvalidConfig, m))?;
                if !validate_only {
                    records.push(MetadataRecord::SetTopicConfigs {
                        id: topic.id,
                        configs,
                    });
                }
                Ok(())
            }
            resource::BROKER => {
                let node = if res.resource_name.is_empty() {
                    None
                } else {
                    match res.resource_name.parse::<i32>() {
                        Ok(n) if n == ctx.node_id => Some(n),
                        _ => {
                            return Err(KError::new(
                                ResponseError::InvalidRequest,
                                format!("Unknown broker '{}'.", res.resource_name),
                            ))
                        }
                    }
                };
                let empty = BTreeMap::new();
                let current = match node {
                    None => &image.cluster_configs,
                    Some(n) => image.node_configs.get(&n).unwrap_or(&empty),
                };
                let configs = alter_config_map(current, &res.entries, incremental, true)?;
                if !validate_only {
                    records.push(MetadataRecord::SetBrokerConfigs { node, configs });
                }
                Ok(())
            }
            other => Err(KError::new(
                ResponseError::InvalidRequest,
                format!("Altering configs of resource type {other} is not supported."),
            )),
        })
        .collect();
    (results, records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: ControllerCtx = ControllerCtx {
        node_id: 0,
        live_brokers: 1,
        default_partitions: 1,
        default_replication_factor: 1,
    };

    fn spec(name: &str, p: i32, rf: i16) -> CreateTopicSpec {
        CreateTopicSpec {
            name: name.into(),
            num_partitions: p,
            replication_factor: rf,
            assignments: vec![],
            configs: vec![],
        }
    }

    fn created(
        image: &mut MetadataImage,
        specs: &[CreateTopicSpec],
    ) -> Vec<Result<CreatedTopic, KError>> {
        let (r, rec) = plan_create_topics(image, &CTX, specs, false);
        let idx = image.applied_index + 1;
        image.apply(idx, &rec);
        r
    }

    fn code<T: std::fmt::Debug>(r: &Result<T, KError>) -> ResponseError {
        r.as_ref().unwrap_err().code
    }

    #[test]
    fn placement_goes_to_the_least_loaded_shard() {
        let mut load = vec![2, 0, 0];
        assert_eq!(place(&mut load, 4), vec![1, 2, 1, 2]);
        assert_eq!(load, vec![2, 2, 2]);
    }

    #[test]
    fn create_topics_validates_like_kafka() {
        let mut img = MetadataImage::new(2);
        let r = created(&mut img, &[spec("a", 3, 1), spec("b", -1, -1)]);
        assert_eq!(r[0].as_ref().unwrap().num_partitions, 3);
        assert_eq!(r[1].as_ref().unwrap().num_partitions, 1);
        assert_eq!(img.topics["a"].partition_shards, vec![0, 1, 0]);
        let r = created(
            &mut img,
            &[
                spec("a", 1, 1),
                spec("bad/name", 1, 1),
                spec("c", 0, 1),
                spec("d", 1, 3),
                spec("e", 1, 0),
                spec("dup", 1, 1),
                spec("dup", 1, 1),
                spec("a_b", 1, 1),
            ],
        );
        assert_eq!(code(&r[0]), ResponseError::TopicAlreadyExists);
        assert_eq!(code(&r[1]), ResponseError::InvalidTopicException);
        assert_eq!(code(&r[2]), ResponseError::InvalidPartitions);
        assert_eq!(code(&r[3]), ResponseError::InvalidReplicationFactor);
        assert!(r[3]
            .as_ref()
            .unwrap_err()
            .message
            .contains("only 1 broker(s)"));
        assert_eq!(code(&r[4]), ResponseError::InvalidReplicationFactor);
        assert_eq!(code(&r[5]), ResponseError::InvalidRequest);
        assert_eq!(code(&r[6]), ResponseError::InvalidRequest);
        assert!(r[7].is_ok());
        let r = created(&mut img, &[spec("a.b", 1, 1)]);
        assert_eq!(code(&r[0]), ResponseError::InvalidTopicException);
        assert_eq!(img.topics.len(), 3);
    }

    #[test]
    fn validate_only_and_bad_configs_create_nothing() {
        let img = MetadataImage::new(1);
        let (r, rec) = plan_create_topics(&img, &CTX, &[spec("a", 1, 1)], true);
        assert!(r[0].is_ok() && rec.is_empty());
        let mut s = spec("a", 1, 1);
        s.configs = vec![("retention.ms".into(), Some("abc".into()))];
        let (r, rec) = plan_create_topics(&img, &CTX, &[s], false);
        assert_eq!(code(&r[0]), ResponseError::InvalidConfig);
        assert!(rec.is_empty());
    }

    #[test]
    fn manual_assignment_rules() {
        let img = MetadataImage::new(1);
        let mut s = spec("a", -1, -1);
        s.assignments = vec![vec![0], vec![0]];
        let (r, _) = plan_create_topics(&img, &CTX, &[s.clone()], false);
        assert_eq!(r[0].as_ref().unwrap().num_partitions, 2);
        s.assignments = vec![vec![5]];
        let (r, _) = plan_create_topics(&img, &CTX, &[s.clone()], false);
        assert_eq!(code(&r[0]), ResponseError::InvalidReplicaAssignment);
        s.num_partitions = 1;
        s.assignments = vec![vec![0]];
        let (r, _) = plan_create_topics(&img, &CTX, &[s], false);
        assert_eq!(code(&r[0]), ResponseError::InvalidRequest);
    }

    #[test]
    fn delete_and_create_partitions() {
        let mut img = MetadataImage::new(2);
        created(&mut img, &[spec("a", 2, 1)]);
        let id = img.topics["a"].id;
        let cp = |n: &str, c| CreatePartitionsSpec {
            name: n.into(),
            count: c,
            assignments: None,
        };
        let (r, rec) = plan_create_partitions(&img, &CTX, &[cp("a", 1), cp("a2", 3)], false);
        assert_eq!(code(&r[0]), ResponseError::InvalidPartitions);
        assert_eq!(code(&r[1]), ResponseError::UnknownTopicOrPartition);
        assert!(rec.is_empty());
        let (r, rec) = plan_create_partitions(&img, &CTX, &[cp("a", 5)], false);
        assert!(r[0].is_ok());
        img.apply(9, &rec);
        assert_eq!(img.topics["a"].partition_shards.len(), 5);
        let (r, rec) = plan_delete_topics(
            &img,
            &[
                TopicRef::Id(Uuid::new_v4()),
                TopicRef::Name("zz".into()),
                TopicRef::Id(id),
            ],
        );
        assert_eq!(code(&r[0]), ResponseError::UnknownTopicId);
        assert_eq!(code(&r[1]), ResponseError::UnknownTopicOrPartition);
        assert_eq!(r[2].as_ref().unwrap().0, "a");
        img.apply(10, &rec);
        assert!(img.topics.is_empty());
    }

    #[test]
    fn incremental_and_full_alter_configs() {
        let mut img = MetadataImage::new(1);
        created(&mut img, &[spec("t", 1, 1)]);
        let res = |entries: Vec<(&str, Option<ConfigOp>, Option<&str>)>| AlterResource {
            resource_type: resource::TOPIC,
            resource_name: "t".into(),
            entries: entries
                .into_iter()
                .map(|(k, o, v)| (k.to_string(), o, v.map(str::to_string)))
                .collect(),
        };
        let set = Some(ConfigOp::Set);
        let (r, rec) = plan_alter_configs(
            &img,
            &CTX,
            &[res(vec![
                ("retention.ms", set, Some("1000")),
                ("cleanup.policy", Some(ConfigOp::Append), Some("compact")),
            ])],
            true,
            false,
        );
        assert!(r[0].is_ok(), "{r:?}");
        img.apply(5, &rec);
        assert_eq!(img.topics["t"].configs["retention.ms"], "1000");
        assert_eq!(img.topics["t"].configs["cleanup.policy"], "delete,compact");
        let (r, _) = plan_alter_configs(
            &img,
            &CTX,
            &[res(vec![(
                "retention.ms",
                Some(ConfigOp::Append),
                Some("1"),
            )])],
            true,
            false,
        );
        assert_eq!(code(&r[0]), ResponseError::InvalidConfig);
        let (r, _) = plan_alter_configs(
            &img,
            &CTX,
            &[res(vec![("nope", set, Some("1"))])],
            true,
            false,
        );
        assert_eq!(code(&r[0]), ResponseError::InvalidConfig);
        // Non-incremental replaces the whole set.
        let (r, rec) = plan_alter_configs(
            &img,
            &CTX,
            &[res(vec![("segment.ms", set, Some("5000"))])],
            false,
            false,
        );
        assert!(r[0].is_ok());
        img.apply(6, &rec);
        assert_eq!(img.topics["t"].configs.len(), 1);
        // Broker resource: synonyms are dynamic, static configs are not.
        let broker = |name: &str, key: &str| AlterResource {
            resource_type: resource::BROKER,
            resource_name: name.into(),
            entries: vec![(key.into(), set, Some("123".into()))],
        };
        let (r, rec) = plan_alter_configs(
            &img,
            &CTX,
            &[
                broker("", "log.retention.ms"),
                broker("0", "num.partitions"),
                broker("7", "log.retention.ms"),
            ],
            true,
            false,
        );
        assert!(r[0].is_ok());
        assert_eq!(code(&r[1]), ResponseError::InvalidRequest);
        assert_eq!(code(&r[2]), ResponseError::InvalidRequest);
        img.apply(7, &rec);
        let def = topic_config("retention.ms").unwrap();
        let (v, src) = img.effective_topic_config(def, &BTreeMap::new(), 0);
        assert_eq!(
            (v.as_str(), src),
            ("123", configs::source::DYNAMIC_DEFAULT_BROKER_CONFIG)
        );
    }
}
