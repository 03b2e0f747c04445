//! A hand-driven cluster for scenario tests: instant, reliable delivery unless a test
//! isolates nodes or holds a node's fsyncs; the same invariant checker as the random runs.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use spate_raft::wire;
use spate_raft::{
    Driver, DriverConfig, Event, GroupId, GroupInit, GroupStatus, LogEntry, ManualClock, MemDisk,
    MemLogStore, MemNetwork, MemTransport, Membership, NodeId, Proposal, ProposeError, Role,
};

use crate::checker::Checker;

/// Scenario clusters run the in-memory store.
pub type SimDriver = Driver<MemLogStore, MemTransport, ManualClock>;

pub struct CNode {
    pub disk: MemDisk,
    pub clock: ManualClock,
    pub driver: Option<SimDriver>,
    pub incarnation: u64,
}

pub struct Cluster {
    pub now: u64,
    pub tick_ms: u64,
    net: MemNetwork,
    pub nodes: BTreeMap<NodeId, CNode>,
    groups: Vec<(GroupId, Membership)>,
    configure: fn(&mut DriverConfig),
    /// Nodes whose envelopes (in and out) are dropped.
    pub isolated: BTreeSet<NodeId>,
    /// Nodes whose fsyncs do not complete.
    pub held_syncs: BTreeSet<NodeId>,
    /// Envelopes in flight (delivered by `step`).
    in_flight: Vec<(NodeId, NodeId, Bytes)>,
    pub checker: Checker,
    /// Every event, per node, in order.
    pub events: Vec<(NodeId, Event)>,
    /// Envelopes sent per (from, to).
    pub envelopes: BTreeMap<(NodeId, NodeId), u64>,
}

fn no_config(_: &mut DriverConfig) {}

impl Cluster {
    /// `nodes` nodes (ids 1..=nodes) hosting `groups`; initial members bootstrap, the others
    /// join empty.
    pub fn new(nodes: u64, groups: Vec<(GroupId, Membership)>) -> Cluster {
        Cluster::with_config(nodes, groups, no_config)
    }

    pub fn with_config(
        nodes: u64,
        groups: Vec<(GroupId, Membership)>,
        configure: fn(&mut DriverConfig),
    ) -> Cluster {
        let mut c = Cluster {
            now: 0,
            tick_ms: 10,
            net: MemNetwork::new(),
            nodes: BTreeMap::new(),
            groups,
            configure,
            isolated: BTreeSet::new(),
            held_syncs: BTreeSet::new(),
            in_flight: Vec::new(),
            checker: Checker::new(),
            events: Vec::new(),
            envelopes: BTreeMap::new(),
        };
        for id in 1..=nodes {
            c.nodes.insert(
                id,
                CNode {
                    disk: MemDisk::new(),
                    clock: ManualClock::new(),
                    driver: None,
                    incarnation: 0,
                },
            );
            c.start(id);
        }
        c
    }

    pub fn start(&mut self, id: NodeId) {
        let net = self.net.clone();
        let groups = self.groups.clone();
        let configure = self.configure;
        let tick_ms = self.tick_ms;
        let n = self.nodes.get_mut(&id).expect("node");
        let mut cfg = DriverConfig::new(id);
        cfg.tick_ms = tick_ms;
        cfg.incarnation = n.incarnation;
        cfg.seed = 1000 * id + n.incarnation;
        configure(&mut cfg);
        let mut d = Driver::new(cfg, net.endpoint(id), n.clock.clone());
        for (g, m) in &groups {
            let init = if m.members().contains(&id) {
                GroupInit::Bootstrap(m.clone())
            } else {
                GroupInit::Join
            };
            d.add_group(*g, n.disk.store(*g), init).expect("open group");
        }
        let restarted = n.incarnation > 0;
        let statuses: Vec<GroupStatus> = d.group_ids().filter_map(|g| d.status(g)).collect();
        n.driver = Some(d);
        if restarted {
            for s in &statuses {
                self.checker.on_restart(id, s);
            }
        }
        self.after(id);
    }

    /// Crashes a node, losing every unsynced write.
    pub fn crash(&mut self, id: NodeId) {
        let n = self.nodes.get_mut(&id).expect("node");
        n.driver = None;
        n.disk.crash_losing_unsynced();
        n.incarnation += 1;
        self.checker.on_crash(id);
    }

    /// Crashes a node whose metadata file kept its unsynced writes while its entry log lost
    /// its own (`keep_metadata`), or the other way round.
    pub fn crash_split(&mut self, id: NodeId, keep_metadata: bool) {
        let n = self.nodes.get_mut(&id).expect("node");
        n.driver = None;
        if keep_metadata {
            n.disk.crash_keeping_unsynced_metadata();
        } else {
            n.disk.crash_keeping_unsynced_log();
        }
        n.incarnation += 1;
        self.checker.on_crash(id);
    }

    pub fn driver(&mut self, id: NodeId) -> &mut SimDriver {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.driver.as_mut())
            .expect("live node")
    }

    pub fn status(&self, id: NodeId, g: GroupId) -> Option<GroupStatus> {
        self.nodes.get(&id)?.driver.as_ref()?.status(g)
    }

    /// The live leader of `g` with the highest term.
    pub fn leader(&self, g: GroupId) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for &id in self.nodes.keys() {
            if let Some(s) = self.status(id, g) {
                if s.role == Role::Leader && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Runs `f` on a node's driver, then processes and collects what it produced.
    pub fn with<R>(&mut self, id: NodeId, f: impl FnOnce(&mut SimDriver) -> R) -> R {
        let r = f(self.driver(id));
        self.after(id);
        r
    }

    pub fn propose(&mut self, g: GroupId, payload: &str) -> Result<Proposal, ProposeError> {
        let l = self
            .leader(g)
            .ok_or(ProposeError::NotLeader { leader: None })?;
        let payload = Bytes::from(payload.to_owned());
        self.with(l, |d| d.propose(g, payload))
    }

    fn after(&mut self, id: NodeId) {
        let now = self.now;
        let held = self.held_syncs.contains(&id);
        let n = self.nodes.get_mut(&id).expect("node");
        let disk = n.disk.clone();
        let Some(d) = n.driver.as_mut() else { return };
        n.clock.set(now);
        d.process();
        if !held {
            // Complete this node's syncs (possibly releasing more messages) until none remain.
            loop {
                let reqs = disk.take_sync_requests();
                if reqs.is_empty() {
                    break;
                }
                for (g, t) in reqs {
                    disk.complete_sync(g, t);
                }
                d.process();
            }
        }
        let events = d.take_events();
        let statuses: Vec<GroupStatus> = d.group_ids().filter_map(|g| d.status(g)).collect();
        for s in self.net.take_sent() {
            if let Ok(msgs) = wire::inspect(&s.bytes) {
                let sender_disk = self.nodes[&s.from].disk.clone();
                self.checker.on_sent(s.from, &msgs, &sender_disk);
            }
            *self.envelopes.entry((s.from, s.to)).or_default() += 1;
            self.in_flight.push((s.from, s.to, s.bytes));
        }
        for ev in events {
            match &ev {
                Event::Committed { group, entries } => {
                    let term = statuses
                        .iter()
                        .find(|s| s.group == *group)
                        .map_or(0, |s| s.term);
                    self.checker.on_committed(id, *group, entries, term);
                }
                Event::SnapshotInstalled { group, .. } => {
                    let term = statuses
                        .iter()
                        .find(|s| s.group == *group)
                        .map_or(0, |s| s.term);
                    self.checker.on_snapshot(id, *group, term, &disk);
                }
                _ => {}
            }
            self.events.push((id, ev));
        }
        for s in &statuses {
            self.checker.check_replica(id, s, &disk);
        }
        if let Some(v) = &self.checker.violation {
            panic!("invariant violated: {v}");
        }
    }

    /// Drops every envelope sent but not yet collected (for tests that drive drivers directly).
    pub fn drop_sent(&mut self) {
        self.net.take_sent();
        for n in self.nodes.values() {
            for (g, t) in n.disk.take_sync_requests() {
                n.disk.complete_sync(g, t);
            }
        }
    }

    /// Completes held syncs of `id` (after removing it from `held_syncs`).
    pub fn release_syncs(&mut self, id: NodeId) {
        self.held_syncs.remove(&id);
        self.after(id);
    }

    /// Delivers what is in flight now (one hop); returns whether anything was in flight.
    pub fn step_round(&mut self) -> bool {
        let batch = std::mem::take(&mut self.in_flight);
        if batch.is_empty() {
            return false;
        }
        for (from, to, bytes) in batch {
            if self.isolated.contains(&from) || self.isolated.contains(&to) {
                continue;
            }
            let up = self.nodes.get(&to).is_some_and(|n| n.driver.is_some());
            if up {
                self.with(to, |d| {
                    let _ = d.receive(&bytes);
                });
            }
        }
        true
    }

    /// Delivers everything in flight (and what that produces) until the network is empty.
    pub fn step(&mut self) {
        for _ in 0..1000 {
            if !self.step_round() {
                return;
            }
        }
        panic!("the network did not quiesce");
    }

    /// Messages in flight to `node`.
    pub fn in_flight_to(&self, node: NodeId) -> Vec<wire::MessageSummary> {
        self.in_flight
            .iter()
            .filter(|(_, to, _)| *to == node)
            .filter_map(|(_, _, b)| wire::inspect(b).ok())
            .flatten()
            .collect()
    }

    /// Moves time one tick forward and ticks every live node (delivers nothing).
    pub fn tick_all(&mut self) {
        self.now += self.tick_ms;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].driver.is_some() {
                self.with(id, |d| d.tick());
            }
        }
    }

    /// Advances time by `ms`, ticking every live node each `tick_ms` and delivering messages.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.tick_all();
            self.step();
        }
    }

    /// Advances until `cond` holds; returns the time it took, or `None` after `max_ms`.
    pub fn run_until(&mut self, max_ms: u64, cond: impl Fn(&Cluster) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now - start <= max_ms {
            if cond(self) {
                return Some(self.now - start);
            }
            self.advance(self.tick_ms);
        }
        None
    }

    /// Entries node `id` delivered as committed for `g`, in order.
    pub fn committed(&self, id: NodeId, g: GroupId) -> Vec<LogEntry> {
        self.events
            .iter()
            .filter(|(n, _)| *n == id)
            .filter_map(|(_, e)| match e {
                Event::Committed { group, entries } if *group == g => Some(entries.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Whether node `id` delivered `payload` as committed in `g`.
    pub fn has_committed(&self, id: NodeId, g: GroupId, payload: &str) -> bool {
        self.committed(id, g)
            .iter()
            .any(|e| e.payload == payload.as_bytes())
    }

    /// Elects a leader for every group (within `max_ms`).
    pub fn elect_all(&mut self, max_ms: u64) {
        let groups: Vec<GroupId> = self.groups.iter().map(|(g, _)| *g).collect();
        let took = self.run_until(max_ms, |c| groups.iter().all(|g| c.leader(*g).is_some()));
        assert!(took.is_some(), "no leader within {max_ms} ms");
    }
}
