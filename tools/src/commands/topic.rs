//! `spate topic create|list|describe|delete|alter-config|add-partitions` (produce and
//! consume live in their own modules).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest,
};
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::TopicCmd;
use crate::client::{sb, topic_name, KafkaError, TopicMeta, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use crate::output::{print_json, section, status_text, with_status, Outcome, Table};

/// DescribeConfigs / IncrementalAlterConfigs resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;

pub fn run(ctx: &mut Ctx, cmd: TopicCmd) -> Result<Outcome> {
    match cmd {
        TopicCmd::Create {
            topics,
            partitions,
            replicas,
            configs,
            dry_run,
        } => create(ctx, &topics, partitions, replicas, &configs, dry_run),
        TopicCmd::List { internal } => list(ctx, internal),
        TopicCmd::Describe { topics } => describe(ctx, &topics),
        TopicCmd::Delete { topics } => delete(ctx, &topics),
        TopicCmd::AlterConfig {
            topics,
            set,
            delete,
            append,
            subtract,
            dry_run,
        } => {
            let mut ops: Vec<(String, i8, Option<String>)> = Vec::new();
            ops.extend(set.into_iter().map(|(k, v)| (k, 0, Some(v))));
            ops.extend(delete.into_iter().map(|k| (k, 1, None)));
            ops.extend(append.into_iter().map(|(k, v)| (k, 2, Some(v))));
            ops.extend(subtract.into_iter().map(|(k, v)| (k, 3, Some(v))));
            if ops.is_empty() {
                bail!("nothing to change: give --set, --delete, --append or --subtract");
            }
            alter_config(ctx, &topics, &ops, dry_run)
        }
        TopicCmd::AddPartitions {
            topics,
            num,
            dry_run,
        } => add_partitions(ctx, &topics, num, dry_run),
        TopicCmd::Produce(args) => super::produce::run(ctx, args),
        TopicCmd::Consume(args) => super::consume::run(ctx, args),
    }
}

/// Prints one status per item (text table or JSON array) and says whether all were OK.
fn print_statuses(
    ctx: &Ctx,
    key: &str,
    items: &[(String, Option<KafkaError>, Value)],
    dry_run: bool,
) -> Outcome {
    let ok = items.iter().all(|(_, e, _)| e.is_none());
    if ctx.json() {
        let arr: Vec<Value> = items
            .iter()
            .map(|(name, e, extra)| {
                let mut v = json!({ key: name });
                if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
                    m.extend(x.clone());
                }
                with_status(v, e.as_ref())
            })
            .collect();
        print_json(&Value::Array(arr));
    } else {
        let mut t = Table::new(&[&key.to_uppercase(), "STATUS"]);
        for (name, e, _) in items {
            let mut s = status_text(e.as_ref());
            if dry_run && e.is_none() {
                s.push_str(" (dry run: validated, nothing changed)");
            }
            t.row([name.clone(), s]);
        }
        t.print();
    }
    Outcome::from_ok(ok)
}

fn create(
    ctx: &mut Ctx,
    topics: &[String],
    partitions: i32,
    replicas: i16,
    configs: &[(String, String)],
    dry_run: bool,
) -> Result<Outcome> {
    let timeout_ms = ctx.client.timeout().as_millis() as i32;
    let conn = ctx.client.any()?;
    let req = CreateTopicsRequest::default()
        .with_topics(
            topics
                .iter()
                .map(|name| {
                    CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(partitions)
                        .with_replication_factor(replicas)
                        .with_configs(
                            configs
                                .iter()
                                .map(|(k, v)| {
                                    CreatableTopicConfig::default()
                                        .with_name(sb(k))
                                        .with_value(Some(sb(v)))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
        .with_timeout_ms(timeout_ms)
        .with_validate_only(dry_run);
    let resp = conn.send(&req)?;
    let mut by_name: BTreeMap<String, (Option<KafkaError>, Value)> = BTreeMap::new();
    for t in resp.topics {
        let extra = if t.error_code == 0 && t.num_partitions > 0 {
            json!({"partitions": t.num_partitions, "replication_factor": t.replication_factor})
        } else {
            json!({})
        };
        by_name.insert(
            t.name.0.to_string(),
            (
                KafkaError::from_code(t.error_code, t.error_message.as_deref()),
                extra,
            ),
        );
    }
    let items = ordered(topics, by_name);
    Ok(print_statuses(ctx, "topic", &items, dry_run))
}

/// Results in the order the operator named the items; an item the broker did not answer
/// for is an error.
fn ordered(
    names: &[String],
    mut by_name: BTreeMap<String, (Option<KafkaError>, Value)>,
) -> Vec<(String, Option<KafkaError>, Value)> {
    let mut seen = std::collections::BTreeSet::new();
    names
        .iter()
        .filter(|n| seen.insert(n.as_str()))
        .map(|n| match by_name.remove(n) {
            Some((e, extra)) => (n.clone(), e, extra),
            None => (
                n.clone(),
                Some(KafkaError {
                    code: -1,
                    broker_message: Some("the broker's response did not mention it".into()),
                }),
                json!({}),
            ),
        })
        .collect()
}

fn list(ctx: &mut Ctx, internal: bool) -> Result<Outcome> {
    let md = ctx.client.metadata(None)?;
    let mut topics: Vec<&TopicMeta> = md
        .topics
        .iter()
        .filter(|t| internal || !t.internal)
        .collect();
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    if ctx.json() {
        let arr: Vec<Value> = topics
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "id": t.id,
                    "partitions": t.partitions.len(),
                    "replicas": t.replication_factor(),
                    "internal": t.internal,
                })
            })
            .collect();
        print_json(&Value::Array(arr));
    } else {
        let mut t = Table::new(&["NAME", "PARTITIONS", "REPLICAS"]);
        for topic in topics {
            t.row([
                topic.name.clone(),
                topic.partitions.len().to_string(),
                topic.replication_factor().to_string(),
            ]);
        }
        t.print();
    }
    Ok(Outcome::Success)
}

fn config_source(s: i8) -> &'static str {
    match s {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

struct ConfigEntry {
    name: String,
    value: Option<String>,
    source: &'static str,
    sensitive: bool,
}

fn describe(ctx: &mut Ctx, names: &[String]) -> Result<Outcome> {
    let md = ctx.client.metadata(Some(names))?;
    let mut ok = true;
    // Configs of every topic that exists, in one request.
    let found: Vec<&TopicMeta> = names
        .iter()
        .filter_map(|n| md.topic(n))
        .filter(|t| t.error.is_none())
        .collect();
    let mut configs: BTreeMap<String, Result<Vec<ConfigEntry>, KafkaError>> = BTreeMap::new();
    if !found.is_empty() {
        let req = DescribeConfigsRequest::default().with_resources(
            found
                .iter()
                .map(|t| {
                    DescribeConfigsResource::default()
                        .with_resource_type(RESOURCE_TOPIC)
                        .with_resource_name(sb(&t.name))
                        .with_configuration_keys(None)
                })
                .collect(),
        );
        let resp = ctx.client.any()?.send(&req)?;
        for r in resp.results {
            let entry = match KafkaError::from_code(r.error_code, r.error_message.as_deref()) {
                Some(e) => Err(e),
                None => {
                    let mut v: Vec<ConfigEntry> = r
                        .configs
                        .iter()
                        .map(|c| ConfigEntry {
                            name: c.name.to_string(),
                            value: c.value.as_ref().map(|v| v.to_string()),
                            source: config_source(c.config_source),
                            sensitive: c.is_sensitive,
                        })
                        .collect();
                    v.sort_by(|a, b| a.name.cmp(&b.name));
                    Ok(v)
                }
            };
            configs.insert(r.resource_name.to_string(), entry);
        }
    }
    // Log start and end offsets of every partition.
    let lookup = |ts: i64| -> Vec<(String, i32, i32, i64)> {
        found
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.clone(), p.partition, p.leader, ts))
            })
            .collect()
    };
    let (starts, ends) = if found.is_empty() {
        (BTreeMap::new(), BTreeMap::new())
    } else {
        let starts = ctx.client.list_offsets(&lookup(EARLIEST_TIMESTAMP))?;
        (starts, ctx.client.list_offsets(&lookup(LATEST_TIMESTAMP))?)
    };
    let offset_text = |r: Option<&Result<i64, KafkaError>>| match r {
        Some(Ok(o)) => o.to_string(),
        Some(Err(e)) => e.name(),
        None => "-".into(),
    };
    let offset_json = |r: Option<&Result<i64, KafkaError>>| match r {
        Some(Ok(o)) => json!(o),
        Some(Err(e)) => json!(e.name()),
        None => Value::Null,
    };

    let mut docs = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let Some(t) = md.topic(name).filter(|t| t.error.is_none()) else {
            ok = false;
            let e = md
                .topic(name)
                .and_then(|t| t.error.clone())
                .unwrap_or(KafkaError {
                    code: 3,
                    broker_message: None,
                });
            if ctx.json() {
                docs.push(with_status(json!({"name": name}), Some(&e)));
            } else {
                eprintln!("spate: topic {name}: {e}");
            }
            continue;
        };
        let cfg = configs.remove(name);
        if let Some(Err(e)) = &cfg {
            ok = false;
            if !ctx.json() {
                eprintln!("spate: configs of topic {name}: {e}");
            }
        }
        if ctx.json() {
            let parts: Vec<Value> = t
                .partitions
                .iter()
                .map(|p| {
                    let key = (t.name.clone(), p.partition);
                    json!({
                        "partition": p.partition,
                        "leader": p.leader,
                        "leader_epoch": p.leader_epoch,
                        "replicas": p.replicas,
                        "isr": p.isr,
                        "offline_replicas": p.offline,
                        "log_start_offset": offset_json(starts.get(&key)),
                        "high_watermark": offset_json(ends.get(&key)),
                        "error": p.error.as_ref().map(|e| e.name()),
                    })
                })
                .collect();
            let configs_json = match &cfg {
                Some(Ok(c)) => Value::Array(
                    c.iter()
                        .map(|c| json!({"name": c.name, "value": c.value, "source": c.source, "sensitive": c.sensitive}))
                        .collect(),
                ),
                Some(Err(e)) => json!({"error": e.name(), "message": e.message()}),
                None => Value::Null,
            };
            docs.push(json!({
                "name": t.name,
                "id": t.id,
                "internal": t.internal,
                "partitions": parts,
                "replicas": t.replication_factor(),
                "configs": configs_json,
                "status": "OK",
            }));
            continue;
        }
        if i > 0 {
            println!();
        }
        section("SUMMARY");
        let mut s = Table::new(&["NAME", "ID", "PARTITIONS", "REPLICAS", "INTERNAL"]);
        s.row([
            t.name.clone(),
            t.id.clone().unwrap_or_else(|| "-".into()),
            t.partitions.len().to_string(),
            t.replication_factor().to_string(),
            t.internal.to_string(),
        ]);
        s.print();
        if let Some(Ok(c)) = &cfg {
            println!();
            section("CONFIGS");
            let mut ct = Table::new(&["KEY", "VALUE", "SOURCE"]);
            for c in c {
                let value = match (&c.value, c.sensitive) {
                    (_, true) => "(sensitive)".to_string(),
                    (Some(v), _) => v.clone(),
                    (None, _) => "-".to_string(),
                };
                ct.row([c.name.clone(), value, c.source.to_string()]);
            }
            ct.print();
        }
        println!();
        section("PARTITIONS");
        let mut pt = Table::new(&[
            "PARTITION",
            "LEADER",
            "EPOCH",
            "REPLICAS",
            "ISR",
            "LOG-START-OFFSET",
            "HIGH-WATERMARK",
        ]);
        let ids = |v: &[i32]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        for p in &t.partitions {
            let key = (t.name.clone(), p.partition);
            pt.row([
                p.partition.to_string(),
                p.leader.to_string(),
                p.leader_epoch.to_string(),
                ids(&p.replicas),
                ids(&p.isr),
                offset_text(starts.get(&key)),
                offset_text(ends.get(&key)),
            ]);
        }
        pt.print();
    }
    if ctx.json() {
        print_json(&Value::Array(docs));
    }
    Ok(Outcome::from_ok(ok))
}

fn delete(ctx: &mut Ctx, topics: &[String]) -> Result<Outcome> {
    let timeout_ms = ctx.client.timeout().as_millis() as i32;
    let conn = ctx.client.any()?;
    let v = conn.version::<DeleteTopicsRequest>()?;
    let mut req = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
    if v >= 6 {
        req.topics = topics
            .iter()
            .map(|t| DeleteTopicState::default().with_name(Some(topic_name(t))))
            .collect();
    } else {
        req.topic_names = topics.iter().map(|t| topic_name(t)).collect();
    }
    let resp = conn.send_at(&req, v)?;
    let by_name = resp
        .responses
        .into_iter()
        .map(|r| {
            (
                r.name.map(|n| n.0.to_string()).unwrap_or_default(),
                (
                    KafkaError::from_code(r.error_code, r.error_message.as_deref()),
                    json!({}),
                ),
            )
        })
        .collect();
    Ok(print_statuses(
        ctx,
        "topic",
        &ordered(topics, by_name),
        false,
    ))
}

fn alter_config(
    ctx: &mut Ctx,
    topics: &[String],
    ops: &[(String, i8, Option<String>)],
    dry_run: bool,
) -> Result<Outcome> {
    let req = IncrementalAlterConfigsRequest::default()
        .with_resources(
            topics
                .iter()
                .map(|t| {
                    AlterConfigsResource::default()
                        .with_resource_type(RESOURCE_TOPIC)
                        .with_resource_name(sb(t))
                        .with_configs(
                            ops.iter()
                                .map(|(k, op, v)| {
                                    AlterableConfig::default()
                                        .with_name(sb(k))
                                        .with_config_operation(*op)
                                        .with_value(v.as_deref().map(sb))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
        .with_validate_only(dry_run);
    let resp = ctx.client.any()?.send(&req)?;
    let by_name = resp
        .responses
        .into_iter()
        .map(|r| {
            (
                r.resource_name.to_string(),
                (
                    KafkaError::from_code(r.error_code, r.error_message.as_deref()),
                    json!({}),
                ),
            )
        })
        .collect();
    Ok(print_statuses(
        ctx,
        "topic",
        &ordered(topics, by_name),
        dry_run,
    ))
}

fn add_partitions(ctx: &mut Ctx, topics: &[String], num: i32, dry_run: bool) -> Result<Outcome> {
    if num <= 0 {
        bail!("--num must be at least 1 (partitions can only be added)");
    }
    let md = ctx.client.metadata(Some(topics))?;
    let mut by_name: BTreeMap<String, (Option<KafkaError>, Value)> = BTreeMap::new();
    let mut wanted = Vec::new();
    for name in topics {
        match md.topic(name) {
            Some(t) if t.error.is_none() => {
                let total = t.partitions.len() as i32 + num;
                wanted.push(
                    CreatePartitionsTopic::default()
                        .with_name(topic_name(name))
                        .with_count(total)
                        .with_assignments(None),
                );
                by_name.insert(name.clone(), (None, json!({"partitions": total})));
            }
            t => {
                let e = t.and_then(|t| t.error.clone()).unwrap_or(KafkaError {
                    code: 3,
                    broker_message: None,
                });
                by_name.insert(name.clone(), (Some(e), json!({})));
            }
        }
    }
    if !wanted.is_empty() {
        let timeout_ms = ctx.client.timeout().as_millis() as i32;
        let req = CreatePartitionsRequest::default()
            .with_topics(wanted)
            .with_timeout_ms(timeout_ms)
            .with_validate_only(dry_run);
        let resp = ctx.client.any()?.send(&req)?;
        for r in resp.results {
            if let Some(e) = KafkaError::from_code(r.error_code, r.error_message.as_deref()) {
                by_name.insert(r.name.0.to_string(), (Some(e), json!({})));
            }
        }
    }
    Ok(print_statuses(
        ctx,
        "topic",
        &ordered(topics, by_name),
        dry_run,
    ))
}
