//! `spate cluster info|health`.

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::cli::ClusterCmd;
use crate::output::{print_json, section, Outcome, Table};

pub fn run(ctx: &mut Ctx, cmd: ClusterCmd) -> Result<Outcome> {
    match cmd {
        ClusterCmd::Info => info(ctx),
        ClusterCmd::Health => health(ctx),
    }
}

fn info(ctx: &mut Ctx) -> Result<Outcome> {
    let md = ctx.client.metadata(None)?;
    let mut brokers = md.brokers.clone();
    brokers.sort_by_key(|b| b.node_id);
    let topics = md.topics.iter().filter(|t| !t.internal).count();
    let partitions: usize = md
        .topics
        .iter()
        .filter(|t| !t.internal)
        .map(|t| t.partitions.len())
        .sum();
    if ctx.json() {
        print_json(&json!({
            "cluster_id": md.cluster_id,
            "controller_id": md.controller_id,
            "brokers": brokers,
            "topics": topics,
            "partitions": partitions,
        }));
        return Ok(Outcome::Success);
    }
    section("CLUSTER");
    let mut t = Table::new(&["ID", "CONTROLLER", "TOPICS", "PARTITIONS"]);
    t.row([
        md.cluster_id.clone().unwrap_or_else(|| "-".into()),
        md.controller_id.to_string(),
        topics.to_string(),
        partitions.to_string(),
    ]);
    t.print();
    println!();
    section("BROKERS");
    let mut t = Table::new(&["ID", "HOST", "PORT", "RACK"]);
    for b in &brokers {
        // rpk marks the controller with a star.
        let star = if b.node_id == md.controller_id {
            "*"
        } else {
            ""
        };
        t.row([
            format!("{}{star}", b.node_id),
            b.host.clone(),
            b.port.to_string(),
            b.rack.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.print();
    Ok(Outcome::Success)
}

fn health(ctx: &mut Ctx) -> Result<Outcome> {
    let md = ctx.client.metadata(None)?;
    let up: BTreeSet<i32> = md.brokers.iter().map(|b| b.node_id).collect();
    let mut known = up.clone();
    let mut leaderless = Vec::new();
    let mut under_replicated = Vec::new();
    for t in &md.topics {
        for p in &t.partitions {
            known.extend(p.replicas.iter().copied());
            let name = format!("{}/{}", t.name, p.partition);
            if p.leader < 0 || !up.contains(&p.leader) {
                leaderless.push(name);
            } else if p.isr.len() < p.replicas.len() {
                under_replicated.push(name);
            }
        }
    }
    let down: Vec<i32> = known.difference(&up).copied().collect();
    let healthy = down.is_empty() && leaderless.is_empty() && under_replicated.is_empty();
    if ctx.json() {
        print_json(&json!({
            "healthy": healthy,
            "controller_id": md.controller_id,
            "all_nodes": known,
            "nodes_down": down,
            "leaderless_partitions": leaderless,
            "under_replicated_partitions": under_replicated,
        }));
    } else {
        section("CLUSTER HEALTH OVERVIEW");
        let mut t = Table::new(&["CHECK", "VALUE"]);
        let list = |v: &[String]| format!("({}) [{}]", v.len(), v.join(", "));
        let nodes = |v: &[i32]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        t.row(["Healthy".to_string(), healthy.to_string()]);
        t.row(["Controller ID".to_string(), md.controller_id.to_string()]);
        t.row([
            "All nodes".to_string(),
            nodes(&known.iter().copied().collect::<Vec<_>>()),
        ]);
        t.row(["Nodes down".to_string(), nodes(&down)]);
        t.row(["Leaderless partitions".to_string(), list(&leaderless)]);
        t.row([
            "Under-replicated partitions".to_string(),
            list(&under_replicated),
        ]);
        t.print();
    }
    Ok(Outcome::from_ok(healthy))
}
