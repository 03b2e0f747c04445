//! `spate group list|describe|seek|delete`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use kafka_protocol::messages::{DeleteGroupsRequest, DescribeGroupsRequest, ListGroupsRequest};
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::GroupCmd;
use crate::client::group::{commit, decode_assignment, fetch_committed, Offsets, PROTOCOL_TYPE};
use crate::client::{group_id, KafkaError, OffsetAnswers, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use crate::offset_spec::OffsetSpec;
use crate::output::{print_json, status_text, with_status, Outcome, Table};

pub fn run(ctx: &mut Ctx, cmd: GroupCmd) -> Result<Outcome> {
    match cmd {
        GroupCmd::List => list(ctx),
        GroupCmd::Describe { groups } => {
            let mut outcome = Outcome::Success;
            let mut docs = Vec::new();
            for (i, g) in groups.iter().enumerate() {
                match describe_one(ctx, g) {
                    Ok(d) => {
                        if ctx.json() {
                            docs.push(d.to_json());
                        } else {
                            if i > 0 {
                                println!();
                            }
                            d.print();
                        }
                    }
                    Err(e) => {
                        outcome = Outcome::Failure;
                        let k = e.downcast_ref::<KafkaError>().cloned();
                        if ctx.json() {
                            docs.push(match &k {
                                Some(k) => with_status(json!({"group": g}), Some(k)),
                                None => json!({"group": g, "status": "ERROR", "message": format!("{e:#}")}),
                            });
                        } else {
                            eprintln!("spate: group {g}: {e:#}");
                        }
                    }
                }
            }
            if ctx.json() {
                print_json(&Value::Array(docs));
            }
            Ok(outcome)
        }
        GroupCmd::Seek { group, to, topics } => seek(ctx, &group, to, &topics),
        GroupCmd::Delete { groups } => delete(ctx, &groups),
    }
}

fn list(ctx: &mut Ctx) -> Result<Outcome> {
    let md = ctx.client.metadata(Some(&[]))?;
    let mut rows: Vec<(String, i32, String, String)> = Vec::new();
    let mut ok = true;
    for b in &md.brokers {
        let answer = ctx.client.node(b.node_id).and_then(|c| {
            let v = c.version::<ListGroupsRequest>()?;
            c.send_at(&ListGroupsRequest::default(), v)
        });
        match answer {
            Ok(resp) => {
                if let Some(e) = KafkaError::from_code(resp.error_code, None) {
                    ok = false;
                    eprintln!("spate: ListGroups on node {}: {e}", b.node_id);
                }
                for g in resp.groups {
                    rows.push((
                        g.group_id.0.to_string(),
                        b.node_id,
                        g.group_state.to_string(),
                        g.protocol_type.to_string(),
                    ));
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("spate: ListGroups on node {}: {e:#}", b.node_id);
            }
        }
    }
    rows.sort();
    if ctx.json() {
        let arr = rows
            .iter()
            .map(|(g, n, s, p)| json!({"group": g, "coordinator": n, "state": s, "protocol_type": p}))
            .collect();
        print_json(&Value::Array(arr));
    } else {
        let mut t = Table::new(&["GROUP", "COORDINATOR", "STATE", "PROTOCOL-TYPE"]);
        for (g, n, s, p) in rows {
            let dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
            t.row([g, n.to_string(), dash(s), dash(p)]);
        }
        t.print();
    }
    Ok(Outcome::from_ok(ok))
}

struct MemberInfo {
    member_id: String,
    client_id: String,
    host: String,
    assignment: BTreeMap<String, Vec<i32>>,
}

struct PartitionLag {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    log_end: Result<i64, KafkaError>,
    member: Option<usize>,
}

impl PartitionLag {
    fn lag(&self) -> Option<i64> {
        match (self.committed, &self.log_end) {
            (Some(c), Ok(e)) => Some((e - c).max(0)),
            _ => None,
        }
    }
}

struct GroupView {
    group: String,
    coordinator: i32,
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberInfo>,
    partitions: Vec<PartitionLag>,
}

impl GroupView {
    fn total_lag(&self) -> i64 {
        self.partitions.iter().filter_map(|p| p.lag()).sum()
    }

    fn to_json(&self) -> Value {
        json!({
            "group": self.group,
            "coordinator": self.coordinator,
            "state": self.state,
            "protocol_type": self.protocol_type,
            "protocol": self.protocol,
            "members": self.members.iter().map(|m| json!({
                "member_id": m.member_id,
                "client_id": m.client_id,
                "host": m.host,
                "assignment": m.assignment,
            })).collect::<Vec<_>>(),
            "total_lag": self.total_lag(),
            "partitions": self.partitions.iter().map(|p| {
                let m = p.member.map(|i| &self.members[i]);
                json!({
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed_offset": p.committed,
                    "log_end_offset": p.log_end.as_ref().ok(),
                    "lag": p.lag(),
                    "member_id": m.map(|m| &m.member_id),
                    "client_id": m.map(|m| &m.client_id),
                    "host": m.map(|m| &m.host),
                    "error": p.log_end.as_ref().err().map(|e| e.name()),
                })
            }).collect::<Vec<_>>(),
            "status": "OK",
        })
    }

    fn print(&self) {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let mut head = Table::new(&[
            "GROUP",
            "COORDINATOR",
            "STATE",
            "BALANCER",
            "MEMBERS",
            "TOTAL-LAG",
        ]);
        head.row([
            self.group.clone(),
            self.coordinator.to_string(),
            dash(&self.state),
            dash(&self.protocol),
            self.members.len().to_string(),
            self.total_lag().to_string(),
        ]);
        head.print();
        println!();
        let mut t = Table::new(&[
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "MEMBER-ID",
            "CLIENT-ID",
            "HOST",
        ]);
        for p in &self.partitions {
            let m = p.member.map(|i| &self.members[i]);
            t.row([
                p.topic.clone(),
                p.partition.to_string(),
                p.committed.map_or("-".into(), |o| o.to_string()),
                match &p.log_end {
                    Ok(o) => o.to_string(),
                    Err(e) => e.name(),
                },
                p.lag().map_or("-".into(), |l| l.to_string()),
                m.map_or("-".into(), |m| m.member_id.clone()),
                m.map_or("-".into(), |m| m.client_id.clone()),
                m.map_or("-".into(), |m| m.host.clone()),
            ]);
        }
        t.print();
    }
}

struct Described {
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberInfo>,
}

/// DescribeGroups for one group at its coordinator.
fn describe_group(ctx: &mut Ctx, coordinator: i32, group: &str) -> Result<Described> {
    let req = DescribeGroupsRequest::default().with_groups(vec![group_id(group)]);
    let resp = ctx.client.node(coordinator)?.send(&req)?;
    let g = resp
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("DescribeGroups answered no group"))?;
    if let Some(e) = KafkaError::from_code(g.error_code, g.error_message.as_deref()) {
        return Err(anyhow::Error::new(e));
    }
    let consumer = g.protocol_type.as_str() == PROTOCOL_TYPE;
    let members = g
        .members
        .into_iter()
        .map(|m| MemberInfo {
            member_id: m.member_id.to_string(),
            client_id: m.client_id.to_string(),
            host: m.client_host.to_string(),
            assignment: if consumer {
                decode_assignment(m.member_assignment).unwrap_or_default()
            } else {
                BTreeMap::new()
            },
        })
        .collect();
    Ok(Described {
        state: g.group_state.to_string(),
        protocol_type: g.protocol_type.to_string(),
        protocol: g.protocol_data.to_string(),
        members,
    })
}

/// Leaders of `topics`' partitions and ListOffsets at `ts` for `partitions`.
fn offsets_at(
    ctx: &mut Ctx,
    partitions: &BTreeSet<(String, i32)>,
    ts: i64,
) -> Result<OffsetAnswers> {
    let topics: Vec<String> = partitions
        .iter()
        .map(|(t, _)| t.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if topics.is_empty() {
        return Ok(OffsetAnswers::new());
    }
    let md = ctx.client.metadata(Some(&topics))?;
    let mut wanted = Vec::new();
    let mut out = OffsetAnswers::new();
    for (t, p) in partitions {
        let meta = md.topic(t);
        match meta.and_then(|m| m.partitions.iter().find(|x| x.partition == *p)) {
            Some(pm) => wanted.push((t.clone(), *p, pm.leader, ts)),
            None => {
                let e = meta.and_then(|m| m.error.clone()).unwrap_or(KafkaError {
                    code: 3,
                    broker_message: None,
                });
                out.insert((t.clone(), *p), Err(e));
            }
        }
    }
    out.extend(ctx.client.list_offsets(&wanted)?);
    Ok(out)
}

fn describe_one(ctx: &mut Ctx, group: &str) -> Result<GroupView> {
    let coordinator = ctx.client.find_coordinator(group)?;
    let d = describe_group(ctx, coordinator, group)?;
    let committed = fetch_committed(&mut ctx.client, coordinator, group, None)?;
    if d.state == "Dead" && committed.is_empty() {
        return Err(anyhow::Error::new(KafkaError {
            code: 69,
            broker_message: Some(format!("Group {group} not found.")),
        }));
    }
    let mut all: BTreeSet<(String, i32)> = committed.keys().cloned().collect();
    let mut owner: BTreeMap<(String, i32), usize> = BTreeMap::new();
    for (i, m) in d.members.iter().enumerate() {
        for (t, ps) in &m.assignment {
            for p in ps {
                all.insert((t.clone(), *p));
                owner.insert((t.clone(), *p), i);
            }
        }
    }
    let ends = offsets_at(ctx, &all, LATEST_TIMESTAMP)?;
    let partitions = all
        .into_iter()
        .map(|key| PartitionLag {
            committed: committed.get(&key).copied(),
            log_end: ends.get(&key).cloned().unwrap_or(Err(KafkaError {
                code: 3,
                broker_message: None,
            })),
            member: owner.get(&key).copied(),
            topic: key.0,
            partition: key.1,
        })
        .collect();
    Ok(GroupView {
        group: group.to_string(),
        coordinator,
        state: d.state,
        protocol_type: d.protocol_type,
        protocol: d.protocol,
        members: d.members,
        partitions,
    })
}

fn seek(ctx: &mut Ctx, group: &str, to: OffsetSpec, topics: &[String]) -> Result<Outcome> {
    let coordinator = ctx.client.find_coordinator(group)?;
    let d = describe_group(ctx, coordinator, group)?;
    if !d.members.is_empty() || !matches!(d.state.as_str(), "Empty" | "Dead" | "") {
        bail!(
            "group {group} is {} with {} member(s); stop its consumers before seeking",
            d.state,
            d.members.len()
        );
    }
    let committed = fetch_committed(&mut ctx.client, coordinator, group, None)?;
    let topics: Vec<String> = if topics.is_empty() {
        committed
            .keys()
            .map(|(t, _)| t.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        topics.to_vec()
    };
    if topics.is_empty() {
        bail!("group {group} has no committed offsets; name the topics to seek with --topics");
    }
    let md = ctx.client.metadata(Some(&topics))?;
    // (topic, partition (−1: the whole topic), prior offset, new offset, error)
    type SeekRow = (String, i32, Option<i64>, Option<i64>, Option<KafkaError>);
    let mut rows: Vec<SeekRow> = Vec::new();
    let mut parts = BTreeSet::new();
    for t in &topics {
        match md.topic(t) {
            Some(m) if m.error.is_none() => {
                parts.extend(m.partitions.iter().map(|p| (t.clone(), p.partition)));
            }
            m => {
                let e = m.and_then(|m| m.error.clone()).unwrap_or(KafkaError {
                    code: 3,
                    broker_message: None,
                });
                rows.push((t.clone(), -1, None, None, Some(e)));
            }
        }
    }
    let starts = offsets_at(ctx, &parts, EARLIEST_TIMESTAMP)?;
    let ends = offsets_at(ctx, &parts, LATEST_TIMESTAMP)?;
    let by_time = match to {
        OffsetSpec::Timestamp(ts) => offsets_at(ctx, &parts, ts)?,
        _ => OffsetAnswers::new(),
    };
    let mut new_offsets = Offsets::new();
    for key in &parts {
        let prior = committed.get(key).copied();
        match (starts.get(key), ends.get(key)) {
            (Some(Ok(s)), Some(Ok(e))) => {
                let t = by_time.get(key).and_then(|r| r.as_ref().ok().copied());
                new_offsets.insert(key.clone(), to.resolve(*s, *e, t));
            }
            (a, b) => {
                let e = [a, b]
                    .into_iter()
                    .flatten()
                    .find_map(|r| r.as_ref().err().cloned())
                    .unwrap_or(KafkaError {
                        code: 5,
                        broker_message: None,
                    });
                rows.push((key.0.clone(), key.1, prior, None, Some(e)));
            }
        }
    }
    if !new_offsets.is_empty() {
        let results = commit(&mut ctx.client, coordinator, group, -1, "", &new_offsets)?;
        for (key, o) in &new_offsets {
            let e = match results.get(key) {
                Some(e) => e.clone(),
                None => Some(KafkaError {
                    code: -1,
                    broker_message: Some("the broker's response did not mention it".into()),
                }),
            };
            rows.push((
                key.0.clone(),
                key.1,
                committed.get(key).copied(),
                Some(*o),
                e,
            ));
        }
    }
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let ok = rows.iter().all(|r| r.4.is_none());
    let fmt = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
    if ctx.json() {
        let arr = rows
            .iter()
            .map(|(t, p, prior, new, e)| {
                with_status(
                    json!({"topic": t, "partition": p, "prior_offset": prior, "new_offset": new}),
                    e.as_ref(),
                )
            })
            .collect();
        print_json(&Value::Array(arr));
    } else {
        let mut table = Table::new(&["TOPIC", "PARTITION", "PRIOR-OFFSET", "NEW-OFFSET", "STATUS"]);
        for (t, p, prior, new, e) in &rows {
            table.row([
                t.clone(),
                if *p < 0 { "-".into() } else { p.to_string() },
                fmt(*prior),
                fmt(*new),
                status_text(e.as_ref()),
            ]);
        }
        table.print();
    }
    Ok(Outcome::from_ok(ok))
}

fn delete(ctx: &mut Ctx, groups: &[String]) -> Result<Outcome> {
    let mut results: BTreeMap<String, Option<KafkaError>> = BTreeMap::new();
    let mut by_coordinator: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for g in groups {
        match ctx.client.find_coordinator(g) {
            Ok(c) => by_coordinator.entry(c).or_default().push(g.clone()),
            Err(e) => {
                results.insert(
                    g.clone(),
                    Some(KafkaError {
                        code: 15,
                        broker_message: Some(format!("{e:#}")),
                    }),
                );
            }
        }
    }
    for (coordinator, names) in by_coordinator {
        let req = DeleteGroupsRequest::default()
            .with_groups_names(names.iter().map(|g| group_id(g)).collect());
        let resp = ctx.client.node(coordinator)?.send(&req)?;
        for r in resp.results {
            results.insert(
                r.group_id.0.to_string(),
                KafkaError::from_code(r.error_code, None),
            );
        }
    }
    let mut seen = BTreeSet::new();
    let rows: Vec<(String, Option<KafkaError>)> = groups
        .iter()
        .filter(|g| seen.insert(g.as_str()))
        .map(|g| {
            let e = results.remove(g).unwrap_or(Some(KafkaError {
                code: -1,
                broker_message: Some("the broker's response did not mention it".into()),
            }));
            (g.clone(), e)
        })
        .collect();
    let ok = rows.iter().all(|(_, e)| e.is_none());
    if ctx.json() {
        let arr = rows
            .iter()
            .map(|(g, e)| with_status(json!({"group": g}), e.as_ref()))
            .collect();
        print_json(&Value::Array(arr));
    } else {
        let mut t = Table::new(&["GROUP", "STATUS"]);
        for (g, e) in &rows {
            t.row([g.clone(), status_text(e.as_ref())]);
        }
        t.print();
    }
    Ok(Outcome::from_ok(ok))
}
