//! The simulated cluster: N nodes × M groups on one thread, a simulated clock, a faulty
//! network and faulty disks, every knob drawn from one seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use bytes::Bytes;
use spate_raft::segment::control::data_batch;
use spate_raft::wire::{self, MessageKind};
use spate_raft::{
    Driver, DriverConfig, Event, GroupId, GroupInit, LogStore, ManualClock, MemNetwork,
    MemTransport, Membership, MembershipChange, NodeId, Prng, Role,
};

use crate::checker::Checker;
use crate::disk::{proposal_key, SimDisk, SimTransfers};

/// The in-memory store and the segment-log adapter run behind one driver type.
pub type SimDriver = Driver<Box<dyn LogStore>, MemTransport, ManualClock>;

/// Every knob of one run. All of it derives from the seed (see [`Params::from_seed`]); tests
/// may override fields before running.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub nodes: u64,
    pub groups: u64,
    /// Initial membership per group (index `g - 1`).
    pub initial: Vec<Membership>,
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Per-node clock rate in parts per million of real (simulated) time.
    pub clock_ppm: Vec<u64>,
    /// Network: per-million chances per envelope, and delay bounds in ms.
    pub drop_pm: u64,
    pub dup_pm: u64,
    pub corrupt_pm: u64,
    pub delay_min: u64,
    pub delay_max: u64,
    /// Disk: sync latency bounds in ms; whether a crash may cut an append in the middle.
    pub disk_min: u64,
    pub disk_max: u64,
    pub torn: bool,
    /// Chaos: one decision round every `chaos_ms`; per-million chances per round.
    pub chaos_ms: u64,
    pub crash_pm: u64,
    pub down_min: u64,
    pub down_max: u64,
    pub partition_pm: u64,
    pub heal_pm: u64,
    pub propose_pm: u64,
    /// Chance per round to toggle a quiet spell without proposals (lets groups quiesce).
    pub quiet_toggle_pm: u64,
    pub membership_pm: u64,
    pub transfer_pm: u64,
    pub compact_pm: u64,
    /// Length of the fault phase and the bound of the liveness phase, in ms.
    pub safety_ms: u64,
    pub liveness_ms: u64,
    pub quiesce: bool,
    pub quiesce_after_ticks: u32,
    /// Run a deliberately broken driver: 0 = correct, 1 = acknowledge everything (votes and
    /// appends) before fsync, 2 = acknowledge appends before fsync (votes stay correct).
    pub broken: u8,
    /// Run the groups over the segment-log adapter (spate-storage's partition log on a
    /// crash-injecting directory, metadata in an in-memory metadata store) instead of the
    /// in-memory store; proposals are then Kafka record batches.
    pub segment: bool,
    /// Segment mode: payload bytes cached below the applied index (0: every follower that
    /// lags is served by asynchronous loads from the segment files).
    pub seg_cache_bytes: u64,
    /// Segment mode: applied bytes between applied checkpoints.
    pub seg_checkpoint_bytes: u64,
    /// Segment mode: chance (per million) that a store's pump is not run in a poll pass.
    pub seg_pump_lag_pm: u64,
}

impl Params {
    pub fn from_seed(seed: u64) -> Params {
        let mut r = Prng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let nodes = r.range(3, 5);
        let groups = r.range(1, 4);
        let all: Vec<NodeId> = (1..=nodes).collect();
        let mut initial = Vec::new();
        for _ in 0..groups {
            let mut pool = all.clone();
            let voters_n = match r.below(10) {
                0 => 1,
                1 if nodes >= 5 => 5,
                _ => 3,
            };
            let mut voters = BTreeSet::new();
            for _ in 0..voters_n {
                let i = r.below(pool.len() as u64) as usize;
                voters.insert(pool.remove(i));
            }
            let mut learners = BTreeSet::new();
            if !pool.is_empty() && r.chance(300_000) {
                let i = r.below(pool.len() as u64) as usize;
                learners.insert(pool.remove(i));
            }
            initial.push(Membership::new(voters, learners));
        }
        let calm = r.chance(200_000);
        let clock_ppm = (0..nodes).map(|_| r.range(950_000, 1_050_000)).collect();
        let delay_max = r.range(2, 40);
        let disk_max = r.range(1, 25);
        Params {
            seed,
            nodes,
            groups,
            initial,
            tick_ms: 10,
            election_ticks: 10,
            heartbeat_ticks: 2,
            clock_ppm,
            drop_pm: if calm { 0 } else { r.range(0, 150_000) },
            dup_pm: if calm { 0 } else { r.range(0, 50_000) },
            corrupt_pm: if calm { 0 } else { r.range(0, 10_000) },
            delay_min: r.range(0, delay_max / 2),
            delay_max,
            disk_min: r.range(0, disk_max / 2),
            disk_max,
            torn: r.chance(500_000),
            chaos_ms: 10,
            crash_pm: if calm { 0 } else { r.range(0, 20_000) },
            down_min: 20,
            down_max: r.range(50, 500),
            partition_pm: if calm { 0 } else { r.range(0, 20_000) },
            heal_pm: r.range(10_000, 60_000),
            propose_pm: r.range(50_000, 600_000),
            quiet_toggle_pm: r.range(0, 30_000),
            membership_pm: r.range(0, 30_000),
            transfer_pm: r.range(0, 15_000),
            compact_pm: r.range(0, 40_000),
            safety_ms: r.range(1000, 3000),
            liveness_ms: 3000,
            quiesce: r.chance(800_000),
            quiesce_after_ticks: r.range(3, 12) as u32,
            broken: 0,
            segment: false,
            // Drawn last, so the other knobs of a seed do not depend on the store.
            seg_cache_bytes: [0, 300, 1 << 20][r.below(3) as usize],
            seg_checkpoint_bytes: [1, 2000, u64::MAX][r.below(3) as usize],
            seg_pump_lag_pm: [0, 300_000, 700_000][r.below(3) as usize],
        }
    }
}

enum Ev {
    Tick(NodeId),
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Bytes,
    },
    SyncDone {
        node: NodeId,
        incarnation: u64,
        group: GroupId,
        token: u64,
    },
    Restart(NodeId),
    Chaos,
    Liveness,
}

struct Node {
    id: NodeId,
    disk: SimDisk,
    clock: ManualClock,
    driver: Option<SimDriver>,
    incarnation: u64,
    ppm: u64,
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Outcome {
    pub violation: Option<String>,
    pub steps: u64,
    pub sim_ms: u64,
    pub committed: usize,
    pub crashes: u64,
    pub partitions: u64,
    pub snapshots: u64,
    pub membership_changes: u64,
    pub transfers: u64,
    pub quiesced: u64,
    pub malformed_dropped: u64,
    /// Segment mode: asynchronous loads of evicted entries (followers served from the
    /// segment files), counted over the stores open at the end.
    pub loads: u64,
    /// Segment mode: snapshots installed from transferred segment data, and transfers that
    /// failed (source unreachable, simulated failure, interrupted).
    pub segment_transfers: u64,
    pub segment_transfer_failures: u64,
    /// Time from healing to every group having committed a new entry.
    pub recovery_ms: u64,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
}

pub struct World {
    p: Params,
    rng: Prng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    net: MemNetwork,
    /// Segment mode: the segment-transfer network.
    xfer: Option<std::rc::Rc<SimTransfers>>,
    /// Directed pairs whose envelopes are dropped.
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Completion time of the last scheduled sync per (node, group): syncs finish in order.
    last_sync_at: BTreeMap<(NodeId, GroupId), u64>,
    phase: Phase,
    /// Groups whose liveness-phase proposal was committed.
    live_done: BTreeSet<GroupId>,
    live_payloads: BTreeSet<Bytes>,
    proposals: u64,
    quiet: bool,
    pub checker: Checker,
    pub trace: bool,
    log: String,
    out: Outcome,
}

impl World {
    pub fn new(p: Params) -> World {
        let rng = Prng::new(p.seed);
        let nodes = (1..=p.nodes)
            .map(|id| Node {
                id,
                disk: if p.segment {
                    SimDisk::segment(
                        p.seed ^ id.rotate_left(40),
                        p.seg_cache_bytes,
                        p.seg_checkpoint_bytes,
                        p.seg_pump_lag_pm,
                    )
                } else {
                    SimDisk::mem()
                },
                clock: ManualClock::new(),
                driver: None,
                incarnation: 0,
                ppm: p.clock_ppm[(id - 1) as usize],
            })
            .collect::<Vec<Node>>();
        let xfer = p.segment.then(|| SimTransfers::new(p.seed));
        if let Some(x) = &xfer {
            for n in &nodes {
                n.disk.attach(n.id, x);
            }
        }
        World {
            xfer,
            p,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            net: MemNetwork::new(),
            blocked: BTreeSet::new(),
            last_sync_at: BTreeMap::new(),
            phase: Phase::Safety,
            live_done: BTreeSet::new(),
            live_payloads: BTreeSet::new(),
            proposals: 0,
            quiet: false,
            checker: Checker::new(),
            trace: false,
            log: String::new(),
            out: Outcome::default(),
        }
    }

    fn note(&mut self, msg: impl FnOnce() -> String) {
        if self.trace {
            let line = format!("[{:>6}ms] {}", self.now, msg());
            println!("{line}");
        }
    }

    fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((time, self.seq), ev);
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn up(&self, id: NodeId) -> bool {
        self.nodes[(id - 1) as usize].driver.is_some()
    }

    /// Runs the safety phase, then the liveness phase.
    pub fn run(mut self) -> Outcome {
        for id in 1..=self.p.nodes {
            self.start(id);
        }
        let chaos = self.p.chaos_ms;
        self.at(chaos, Ev::Chaos);
        let end = self.p.safety_ms + self.p.liveness_ms;
        while let Some(((time, _), ev)) = self.queue.pop_first() {
            if time > end {
                break;
            }
            self.now = time;
            if self.phase == Phase::Safety && time >= self.p.safety_ms {
                self.enter_liveness();
            }
            self.out.steps += 1;
            self.handle(ev);
            if self.checker.violation.is_some() {
                break;
            }
            if self.phase == Phase::Liveness && self.live_done.len() as u64 == self.p.groups {
                self.out.recovery_ms = self.now.saturating_sub(self.p.safety_ms);
                break;
            }
        }
        self.out.sim_ms = self.now;
        self.out.committed = self.checker.committed_count;
        for n in &self.nodes {
            self.out.loads += n.disk.loads();
            let (installed, failed) = n.disk.transfer_counts();
            self.out.segment_transfers += installed;
            self.out.segment_transfer_failures += failed;
            if let Some(d) = &n.driver {
                self.out.quiesced += d.metrics().quiesced;
                self.out.malformed_dropped +=
                    d.metrics().malformed_envelopes + d.metrics().malformed_messages;
            }
        }
        self.out.violation = self.checker.violation.take();
        if self.out.violation.is_none() && self.live_done.len() as u64 != self.p.groups {
            let mut msg = format!(
                "liveness: after healing, groups {:?} did not elect a leader and commit a new \
                 entry within {} ms;",
                (1..=self.p.groups)
                    .filter(|g| !self.live_done.contains(g))
                    .collect::<Vec<_>>(),
                self.p.liveness_ms
            );
            for n in &self.nodes {
                if let Some(d) = &n.driver {
                    for g in d.group_ids() {
                        if let Some(s) = d.status(g) {
                            let _ = write!(
                                msg,
                                " n{} g{} {:?} t{} lead {:?} commit {} last {} q {} voters {:?};",
                                n.id,
                                g,
                                s.role,
                                s.term,
                                s.leader,
                                s.commit,
                                s.last_index,
                                s.quiesced,
                                s.membership.voters
                            );
                        }
                    }
                }
            }
            self.out.violation = Some(msg);
        }
        let _ = &self.log;
        self.out
    }

    fn enter_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.note(|| "=== liveness phase: heal, restart, no more faults ===".into());
        self.blocked.clear();
        for id in 1..=self.p.nodes {
            if !self.up(id) {
                self.start(id);
            }
        }
        let now = self.now;
        self.at(now, Ev::Liveness);
    }

    fn handle(&mut self, ev: Ev) {
        if let Some(x) = &self.xfer {
            if *x.blocked.borrow() != self.blocked {
                *x.blocked.borrow_mut() = self.blocked.clone();
            }
        }
        match ev {
            Ev::Tick(id) => {
                if !self.up(id) {
                    return;
                }
                self.with_driver(id, |d| d.tick());
                // The timer fires about every tick; the node's (skewed) clock decides how many
                // ticks actually elapsed.
                let next = self.now + self.p.tick_ms + self.rng.below(3);
                self.at(next, Ev::Tick(id));
            }
            Ev::Deliver { from, to, bytes } => {
                if !self.up(to) || self.blocked.contains(&(from, to)) {
                    return;
                }
                if self.trace {
                    let summary = describe(&bytes);
                    self.note(|| format!("n{to} <- n{from}: {summary}"));
                }
                self.with_driver(to, |d| {
                    let _ = d.receive(&bytes);
                });
            }
            Ev::SyncDone {
                node,
                incarnation,
                group,
                token,
            } => {
                let n = self.node(node);
                if n.incarnation != incarnation || n.driver.is_none() {
                    return;
                }
                n.disk.complete_sync(group, token);
                self.with_driver(node, |_| {});
            }
            Ev::Restart(id) => {
                if !self.up(id) {
                    self.start(id);
                }
            }
            Ev::Chaos => {
                if self.phase == Phase::Safety {
                    self.chaos();
                    let next = self.now + self.p.chaos_ms;
                    self.at(next, Ev::Chaos);
                }
            }
            Ev::Liveness => {
                for g in 1..=self.p.groups {
                    if !self.live_done.contains(&g) {
                        self.proposals += 1;
                        let payload = self.payload(format!("live:g{g}:{}", self.proposals));
                        if self.propose(g, payload.clone()) {
                            self.live_payloads.insert(proposal_key(&payload));
                        }
                    }
                }
                let next = self.now + 50;
                self.at(next, Ev::Liveness);
            }
        }
    }

    /// Starts (or restarts) a node over its disk.
    fn start(&mut self, id: NodeId) {
        let p = self.p.clone();
        let seed = self.rng.next_u64();
        let now = self.now;
        let net = self.net.clone();
        let n = self.node(id);
        n.clock.set(now * n.ppm / 1_000_000);
        let mut cfg = DriverConfig::new(id);
        cfg.incarnation = n.incarnation;
        cfg.tick_ms = p.tick_ms;
        cfg.election_ticks = p.election_ticks;
        cfg.heartbeat_ticks = p.heartbeat_ticks;
        cfg.seed = seed;
        cfg.quiesce = p.quiesce;
        cfg.quiesce_after_ticks = p.quiesce_after_ticks;
        cfg.faults.ack_before_sync = p.broken == 1;
        cfg.faults.ack_appends_before_sync = p.broken == 2;
        let mut d = Driver::new(cfg, net.endpoint(id), n.clock.clone());
        let mut failure = None;
        for g in 1..=p.groups {
            let initial = &p.initial[(g - 1) as usize];
            let init = if initial.members().contains(&id) {
                GroupInit::Bootstrap(initial.clone())
            } else {
                GroupInit::Join
            };
            match n.disk.store(g) {
                Ok(store) => {
                    if let Err(e) = d.add_group(g, store, init) {
                        failure = Some(format!(
                            "node {id} could not reopen group {g} after a crash: {e} (durable \
                             state lost)"
                        ));
                    }
                }
                Err(e) => {
                    failure = Some(format!(
                        "node {id} could not open the store of group {g} after a crash: {e}"
                    ));
                }
            }
        }
        let restarted = n.incarnation > 0;
        let statuses: Vec<_> = d.group_ids().filter_map(|g| d.status(g)).collect();
        n.driver = Some(d);
        if let Some(f) = failure {
            self.checker.violation.get_or_insert(f);
        }
        if restarted {
            for s in &statuses {
                self.checker.on_restart(id, s);
            }
        }
        let inc = self.nodes[(id - 1) as usize].incarnation;
        self.note(|| format!("n{id} starts (incarnation {inc})"));
        let first_tick = now + self.rng.range(1, p.tick_ms);
        self.at(first_tick, Ev::Tick(id));
        self.with_driver(id, |_| {});
    }

    fn crash(&mut self, id: NodeId) {
        let torn = self.p.torn;
        let down = self.rng.range(self.p.down_min, self.p.down_max);
        let mut rng = self.rng.fork();
        let n = self.node(id);
        let metrics = n.driver.take().map(|d| d.metrics()).unwrap_or_default();
        n.disk.crash(&mut rng, torn);
        n.incarnation += 1;
        self.checker.on_crash(id);
        self.out.crashes += 1;
        self.out.quiesced += metrics.quiesced;
        self.out.malformed_dropped += metrics.malformed_envelopes + metrics.malformed_messages;
        self.note(|| format!("n{id} CRASHES (down {down} ms)"));
        let at = self.now + down;
        self.at(at, Ev::Restart(id));
    }

    /// Runs `f` on a live node's driver, then processes, ships what it sent, schedules its
    /// syncs, feeds its events to the checker and checks its replicas.
    fn with_driver(&mut self, id: NodeId, f: impl FnOnce(&mut SimDriver)) {
        let now = self.now;
        let idx = (id - 1) as usize;
        {
            let n = &mut self.nodes[idx];
            n.clock.set(now * n.ppm / 1_000_000);
            let Some(d) = n.driver.as_mut() else { return };
            f(d);
        }
        // Process; segment stores: run their pumps, whose completed work releases more
        // (bounded). Envelopes are checked against the sender's durable state as they are
        // sent, before the pumps go on.
        let mut rounds = 0;
        loop {
            if let Some(d) = self.nodes[idx].driver.as_mut() {
                d.process();
            }
            self.ship_sent();
            if !self.nodes[idx].disk.poll() {
                break;
            }
            rounds += 1;
            if rounds > 1000 {
                self.checker
                    .violation
                    .get_or_insert(format!("node {id}: store pumps never settle"));
                break;
            }
        }
        if let Some(x) = &self.xfer {
            if let Err(e) = self.nodes[idx].disk.check_transfers(x) {
                self.checker
                    .violation
                    .get_or_insert(format!("node {id}: {e}"));
            }
            if let Some(v) = x.violation.borrow().clone() {
                self.checker.violation.get_or_insert(v);
            }
        }
        let Some(d) = self.nodes[idx].driver.as_mut() else {
            return;
        };
        let events = d.take_events();
        let statuses: Vec<_> = d.group_ids().filter_map(|g| d.status(g)).collect();
        // Syncs: complete in order after a random latency.
        let disk = self.nodes[idx].disk.clone();
        let incarnation = self.nodes[idx].incarnation;
        for (group, token) in disk.take_sync_requests() {
            let lat = self.rng.range(self.p.disk_min, self.p.disk_max);
            let key = (id, group);
            let t = (now + lat).max(self.last_sync_at.get(&key).copied().unwrap_or(0));
            self.last_sync_at.insert(key, t);
            self.at(
                t,
                Ev::SyncDone {
                    node: id,
                    incarnation,
                    group,
                    token,
                },
            );
        }
        let term_of = |g: GroupId| statuses.iter().find(|s| s.group == g).map_or(0, |s| s.term);
        for ev in events {
            match ev {
                Event::Committed { group, entries } => {
                    self.checker.on_committed(id, group, &entries, term_of(group));
                    if self.phase == Phase::Liveness
                        && entries
                            .iter()
                            .any(|e| self.live_payloads.contains(&proposal_key(&e.payload)))
                    {
                        self.live_done.insert(group);
                    }
                }
                Event::SnapshotInstalled { group, meta } => {
                    self.out.snapshots += 1;
                    self.note(|| format!("n{id} g{group} installs snapshot at {}", meta.index));
                    self.checker
                        .on_snapshot(id, group, term_of(group), disk.view());
                }
                Event::GroupFailed { group, error } => {
                    self.checker.violation.get_or_insert(format!(
                        "node {id} group {group} failed: {error}"
                    ));
                }
                Event::RoleChanged {
                    group,
                    role,
                    term,
                    leader,
                } => self.note(|| format!("n{id} g{group} is {role:?} in term {term} (leader {leader:?})")),
                Event::MembershipChanged {
                    group,
                    index,
                    membership,
                } => self.note(|| {
                    format!(
                        "n{id} g{group} membership at {index}: voters {:?} learners {:?} outgoing {:?}",
                        membership.voters, membership.learners, membership.voters_outgoing
                    )
                }),
            }
        }
        for s in &statuses {
            self.checker.check_replica(id, s, disk.view());
        }
    }

    /// A proposal's payload: the text itself, or in segment mode a Kafka batch carrying it.
    fn payload(&self, text: String) -> Bytes {
        if self.p.segment {
            data_batch(&[text.as_bytes()], 1_700_000_000_000)
        } else {
            Bytes::from(text)
        }
    }

    /// Envelopes sent since the last call: check what the sender claims against its durable
    /// state, then transmit.
    fn ship_sent(&mut self) {
        for s in self.net.take_sent() {
            if let Ok(msgs) = wire::inspect(&s.bytes) {
                let disk = self.nodes[(s.from - 1) as usize].disk.clone();
                self.checker.on_sent(s.from, &msgs, disk.view());
            }
            self.transmit(s.from, s.to, s.bytes);
        }
    }

    fn transmit(&mut self, from: NodeId, to: NodeId, bytes: Bytes) {
        let faults = self.phase == Phase::Safety;
        if faults && self.rng.chance(self.p.drop_pm) {
            return;
        }
        let copies = if faults && self.rng.chance(self.p.dup_pm) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let (lo, hi) = if faults {
                (self.p.delay_min, self.p.delay_max)
            } else {
                (self.p.delay_min.min(5), self.p.delay_max.min(10))
            };
            let delay = self.rng.range(lo, hi);
            let mut b = bytes.clone();
            if faults && self.rng.chance(self.p.corrupt_pm) && !b.is_empty() {
                let mut v = b.to_vec();
                let i = self.rng.below(v.len() as u64) as usize;
                v[i] ^= 1 << self.rng.below(8);
                b = Bytes::from(v);
            }
            let at = self.now + delay;
            self.at(at, Ev::Deliver { from, to, bytes: b });
        }
    }

    /// The node that leads `group` with the highest term among live nodes.
    fn leader_of(&self, group: GroupId) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for n in &self.nodes {
            if let Some(s) = n.driver.as_ref().and_then(|d| d.status(group)) {
                if s.role == Role::Leader && best.is_none_or(|(t, _)| s.term > t) {
                    best = Some((s.term, n.id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    fn propose(&mut self, group: GroupId, payload: Bytes) -> bool {
        let Some(l) = self.leader_of(group) else {
            return false;
        };
        let mut ok = false;
        self.with_driver(l, |d| ok = d.propose(group, payload).is_ok());
        ok
    }

    fn chaos(&mut self) {
        let p = self.p.clone();
        if self.rng.chance(p.quiet_toggle_pm) {
            self.quiet = !self.quiet;
            let quiet = self.quiet;
            self.note(|| format!("clients {}", if quiet { "go quiet" } else { "resume" }));
        }
        if !self.quiet && self.rng.chance(p.propose_pm) {
            let g = self.rng.range(1, p.groups);
            self.proposals += 1;
            let payload = self.payload(format!("g{g}:{}", self.proposals));
            self.propose(g, payload);
        }
        if self.rng.chance(p.crash_pm) {
            let up: Vec<NodeId> = (1..=p.nodes).filter(|id| self.up(*id)).collect();
            if let Some(&id) = self.rng.pick(&up) {
                self.crash(id);
            }
        }
        if self.rng.chance(p.partition_pm) {
            self.partition();
        }
        if !self.blocked.is_empty() && self.rng.chance(p.heal_pm) {
            self.note(|| "network heals".into());
            self.blocked.clear();
        }
        if self.rng.chance(p.membership_pm) {
            self.change_membership();
        }
        if self.rng.chance(p.transfer_pm) {
            let g = self.rng.range(1, p.groups);
            if let Some(l) = self.leader_of(g) {
                let voters: Vec<NodeId> = self.nodes[(l - 1) as usize]
                    .driver
                    .as_ref()
                    .and_then(|d| d.status(g))
                    .map(|s| {
                        s.membership
                            .voters
                            .iter()
                            .copied()
                            .filter(|v| *v != l)
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(&to) = self.rng.pick(&voters) {
                    self.out.transfers += 1;
                    self.note(|| format!("g{g}: transfer leadership n{l} -> n{to}"));
                    self.with_driver(l, |d| {
                        let _ = d.transfer_leadership(g, to);
                    });
                }
            }
        }
        if self.rng.chance(p.compact_pm) {
            let id = self.rng.range(1, p.nodes);
            let g = self.rng.range(1, p.groups);
            let st = self.nodes[(id - 1) as usize]
                .driver
                .as_ref()
                .and_then(|d| d.status(g));
            if let Some(st) = st {
                if st.applied >= st.first_index {
                    let through = self.rng.range(st.first_index, st.applied);
                    self.note(|| format!("n{id} g{g}: compact through {through}"));
                    self.with_driver(id, |d| {
                        let _ = d.compact_log(g, through);
                    });
                }
            }
        }
    }

    fn partition(&mut self) {
        let nodes: Vec<NodeId> = (1..=self.p.nodes).collect();
        let side: Vec<bool> = nodes.iter().map(|_| self.rng.chance(500_000)).collect();
        let one_way = self.rng.chance(200_000);
        self.blocked.clear();
        for (i, &a) in nodes.iter().enumerate() {
            for (j, &b) in nodes.iter().enumerate() {
                if side[i] != side[j] && (!one_way || side[i]) {
                    self.blocked.insert((a, b));
                }
            }
        }
        self.out.partitions += 1;
        let desc = format!("{:?}", self.blocked);
        self.note(|| {
            format!(
                "network partition{}: blocked {desc}",
                if one_way { " (one-way)" } else { "" }
            )
        });
    }

    fn change_membership(&mut self) {
        let g = self.rng.range(1, self.p.groups);
        let Some(l) = self.leader_of(g) else { return };
        let Some(st) = self.nodes[(l - 1) as usize]
            .driver
            .as_ref()
            .and_then(|d| d.status(g))
        else {
            return;
        };
        let m = &st.membership;
        if m.is_joint() {
            return;
        }
        let members = m.members();
        let outsiders: Vec<NodeId> = (1..=self.p.nodes)
            .filter(|n| !members.contains(n))
            .collect();
        let learners: Vec<NodeId> = m.learners.iter().copied().collect();
        let others: Vec<NodeId> = m.voters.iter().copied().filter(|v| *v != l).collect();
        let mut options: Vec<Vec<MembershipChange>> = Vec::new();
        if let Some(&x) = self.rng.pick(&learners) {
            options.push(vec![MembershipChange::AddVoter(x)]);
        }
        if let Some(&x) = self.rng.pick(&outsiders) {
            options.push(vec![MembershipChange::AddLearner(x)]);
            if let Some(&y) = self.rng.pick(&others) {
                // Replace a voter in one joint-consensus step (§6).
                options.push(vec![
                    MembershipChange::AddVoter(x),
                    MembershipChange::Remove(y),
                ]);
            }
        }
        if m.voters.len() > 2 {
            if let Some(&y) = self.rng.pick(&others) {
                options.push(vec![MembershipChange::Remove(y)]);
                options.push(vec![MembershipChange::AddLearner(y)]);
            }
        }
        if let Some(&x) = self.rng.pick(&learners) {
            options.push(vec![MembershipChange::Remove(x)]);
        }
        let Some(change) = self.rng.pick(&options).cloned() else {
            return;
        };
        self.note(|| format!("g{g}: leader n{l} proposes {change:?}"));
        let mut ok = false;
        self.with_driver(l, |d| ok = d.change_membership(g, &change).is_ok());
        if ok {
            self.out.membership_changes += 1;
        }
    }
}

/// A one-line description of an envelope for traces.
pub fn describe(bytes: &Bytes) -> String {
    match wire::inspect(bytes) {
        Err(e) => format!("<malformed: {e}>"),
        Ok(msgs) if msgs.is_empty() => "<ping>".into(),
        Ok(msgs) => msgs
            .iter()
            .map(|m| {
                let kind = match m.kind {
                    MessageKind::Append => "App",
                    MessageKind::AppendResponse => "AppResp",
                    MessageKind::RequestVote => "Vote",
                    MessageKind::RequestVoteResponse => "VoteResp",
                    MessageKind::RequestPreVote => "PreVote",
                    MessageKind::RequestPreVoteResponse => "PreVoteResp",
                    MessageKind::Heartbeat => "HB",
                    MessageKind::HeartbeatResponse => "HBResp",
                    MessageKind::Snapshot => "Snap",
                    MessageKind::TimeoutNow => "TimeoutNow",
                    MessageKind::Other => "Other",
                };
                format!(
                    "{kind}(g{} t{} i{} c{}{}{})",
                    m.group,
                    m.term,
                    m.index,
                    m.commit,
                    if m.reject { " reject" } else { "" },
                    if m.entries > 0 {
                        format!(" +{}", m.entries)
                    } else {
                        String::new()
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}
