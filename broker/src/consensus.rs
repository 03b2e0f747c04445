//! Every partition runs through its Raft group: the shard's [`Driver`] and the task that
//! drives it.
//!
//! Lives on every shard: one driver owns the Raft groups of the partitions the shard owns
//! (spate-raft, `raft/`). On a single node each group has one voter (this node): it elects
//! itself when its partition opens — a new term, durable in the metadata store, and a
//! leader no-op that takes no Kafka offset — and an entry commits once it is durable
//! locally. The produce path proposes each batch and answers when the group delivers it as
//! committed; the high watermark is the Kafka offset after the last committed entry.
//!
//! The raft task wakes on the tick timer and whenever a store's pump finished a round (an
//! fsync completed): it calls `Driver::process`, then hands the events to the partitions.
//! Nothing is sent to other nodes yet (no peers: the node-to-node transport comes with
//! clustering), so the transport here only counts what a group of one never produces.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use spate_raft::{
    Driver, DriverConfig, Event, GroupId, MonotonicClock, Proposal, ProposeError, Role,
    SegmentStore, Transport,
};
use spate_storage::log::file::DmaDir;
use spate_storage::metastore::MetaStore;
use tracing::{error, warn};

use crate::partition::{Partition, PartitionKey};

/// A partition's Raft log store: its segment log, with hard state in the metadata store.
pub type Store = SegmentStore<DmaDir, MetaStore>;

/// Every Raft group's metadata as the metadata store recovered it at start, taken out group
/// by group as the shards open their partitions (a read through the metadata thread per
/// partition would force its pending writes out first: one fsync per opening partition).
/// Groups created later start empty.
pub type RecoveredGroups = Arc<
    std::sync::Mutex<std::collections::BTreeMap<GroupId, spate_storage::metastore::GroupState>>,
>;

/// The Raft log of a group of one is compacted (only its anchor moves: the data stays for
/// retention) once this many bytes were committed since the last compaction, so a restart
/// rebuilds the Raft index from at most this much of the log.
pub const RAFT_COMPACT_EVERY_BYTES: u64 = 64 << 20;

/// Current leader epoch (Raft term) of every partition this node leads, by partition: what
/// Metadata reports and what Fetch and ListOffsets check a client's `current_leader_epoch`
/// against. Written by the owning shard at each election (once per partition per start),
/// read by any shard's handlers; the only state the shards share for the data path.
#[derive(Default)]
pub struct LeaderEpochs {
    map: RwLock<HashMap<PartitionKey, i32>>,
}

impl LeaderEpochs {
    pub fn new() -> Arc<Self> {
        Arc::new(LeaderEpochs::default())
    }

    /// The partition's current leader epoch, if this node leads it.
    pub fn get(&self, key: &PartitionKey) -> Option<i32> {
        self.map.read().ok()?.get(key).copied()
    }

    /// Runs `f` with a lookup (one lock for a whole request).
    pub fn with<R>(&self, f: impl FnOnce(&dyn Fn(&PartitionKey) -> Option<i32>) -> R) -> R {
        match self.map.read() {
            Ok(m) => f(&|k| m.get(k).copied()),
            Err(_) => f(&|_| None),
        }
    }

    fn set(&self, key: PartitionKey, epoch: Option<i32>) {
        if let Ok(mut m) = self.map.write() {
            match epoch {
                Some(e) => m.insert(key, e),
                None => m.remove(&key),
            };
        }
    }
}

/// Kafka's check of a request's `current_leader_epoch` (-1: none given) against the
/// partition's: newer than ours is UNKNOWN_LEADER_EPOCH, older is FENCED_LEADER_EPOCH.
pub fn epoch_check(current: i32, ours: Option<i32>) -> Option<kafka_protocol::ResponseError> {
    use kafka_protocol::ResponseError;
    let ours = ours?;
    if current < 0 || current == ours {
        None
    } else if current > ours {
        Some(ResponseError::UnknownLeaderEpoch)
    } else {
        Some(ResponseError::FencedLeaderEpoch)
    }
}

/// Counts of one shard's driver.
pub struct RaftStats {
    pub groups: usize,
    /// Groups ticked (not quiesced).
    pub ticking: usize,
    pub group_ticks: u64,
}

/// The transport of a node without peers: a group of one never sends.
struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, to: u64, envelope: Bytes) {
        warn!(
            to,
            bytes = envelope.len(),
            "Raft message for another node dropped: this node has no peers"
        );
    }
}

/// The Raft side of one shard.
pub struct Consensus {
    node_id: u64,
    driver: RefCell<Driver<Store, NoPeers, MonotonicClock>>,
    partitions: RefCell<HashMap<GroupId, Weak<Partition>>>,
    /// The raft task has work (a pump round completed, a proposal, a new group).
    pending: Cell<bool>,
    wake: spate_net::wakers::WakerSet,
    pub epochs: Arc<LeaderEpochs>,
    /// The raft task was started (with the first group).
    started: Cell<bool>,
    stopped: Cell<bool>,
}

impl Consensus {
    pub fn new(node_id: i32, epochs: Arc<LeaderEpochs>) -> Rc<Self> {
        let node_id = u64::try_from(node_id).unwrap_or(0).max(1);
        let mut cfg = DriverConfig::new(node_id);
        // A fresh value per process start (peers use it to notice restarts).
        cfg.incarnation = crate::wall_ms() as u64;
        cfg.seed = cfg.incarnation ^ node_id;
        Rc::new(Consensus {
            node_id,
            driver: RefCell::new(Driver::new(cfg, NoPeers, MonotonicClock::new())),
            partitions: RefCell::new(HashMap::new()),
            pending: Cell::new(false),
            wake: spate_net::wakers::WakerSet::new(),
            epochs,
            started: Cell::new(false),
            stopped: Cell::new(false),
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The callback a store's pump calls after each round: run the driver soon.
    pub fn progress_hook(self: &Rc<Self>) -> Rc<dyn Fn(GroupId)> {
        let me = Rc::downgrade(self);
        Rc::new(move |_| {
            if let Some(c) = me.upgrade() {
                c.poke();
            }
        })
    }

    fn poke(&self) {
        if !self.pending.replace(true) {
            self.wake.wake_all();
        }
    }

    /// Adds a partition's group (a group of one, bootstrapped on first open) and starts its
    /// election (and, with the first group, the shard's raft task).
    pub fn add(
        self: &Rc<Self>,
        p: &Rc<Partition>,
        store: Store,
    ) -> Result<(), spate_raft::DriverError> {
        if !self.started.replace(true) {
            glommio::spawn_local(self.clone().run_loop()).detach();
        }
        let group = p.group;
        let voters = spate_raft::Membership::new([self.node_id], []);
        {
            let mut d = self.driver.borrow_mut();
            d.add_group(group, store, spate_raft::GroupInit::Bootstrap(voters))?;
            self.partitions.borrow_mut().insert(group, Rc::downgrade(p));
            if let Err(e) = d.campaign(group) {
                warn!(group, error = %e, "campaign refused");
            }
        }
        // The raft task runs the election with every other group's of this reactor turn
        // (a `process` per added group would cost O(groups) each at startup).
        self.poke();
        Ok(())
    }

    /// Removes a partition's group (deleted or closed); returns its store to close.
    pub fn remove(&self, p: &Partition) -> Option<Store> {
        self.partitions.borrow_mut().remove(&p.group);
        self.epochs.set(p.key, None);
        self.driver.borrow_mut().remove_group(p.group)
    }

    /// Proposes one validated batch; its offsets are known on return.
    pub fn propose(&self, group: GroupId, batch: Bytes) -> Result<Proposal, ProposeError> {
        let proposal = {
            let mut d = self.driver.borrow_mut();
            let p = d.propose(group, batch)?;
            // Hand the entry to the store now (it learns its offsets); the raft task runs
            // the rest once per reactor turn, for every proposal of that turn.
            d.process_group(group);
            p
        };
        self.poke();
        Ok(proposal)
    }

    /// Compacts the group's Raft log through `index` (only the anchor moves).
    fn compact(&self, group: GroupId, index: u64) {
        if let Err(e) = self.driver.borrow_mut().compact_log(group, index) {
            warn!(group, index, error = %e, "compacting the Raft log");
        }
    }

    /// Compacts the group's Raft log through everything it applied (committed), if that
    /// moves its start.
    pub fn compact_applied(&self, group: GroupId) {
        let (applied, anchor) = {
            let d = self.driver.borrow();
            let applied = d.status(group).map(|s| s.applied);
            (applied, d.store(group).map(|s| s.anchor().index))
        };
        if let (Some(applied), Some(anchor)) = (applied, anchor) {
            if applied > anchor {
                self.compact(group, applied);
                self.run();
            }
        }
    }

    /// One pass: process, then dispatch the events.
    fn run(&self) {
        let events = {
            let mut d = self.driver.borrow_mut();
            d.process();
            d.take_events()
        };
        if events.is_empty() {
            return;
        }
        let mut compact = Vec::new();
        for e in events {
            match e {
                Event::Committed { group, entries } => {
                    if let Some(p) = self.partition(group) {
                        if let Some(index) = p.on_committed(&entries) {
                            compact.push((group, index));
                        }
                    }
                }
                Event::RoleChanged {
                    group, role, term, ..
                } => {
                    if let Some(p) = self.partition(group) {
                        let epoch = (role == Role::Leader).then_some(term);
                        p.on_role(epoch);
                        self.epochs
                            .set(p.key, epoch.map(|t| i32::try_from(t).unwrap_or(i32::MAX)));
                    }
                }
                Event::GroupFailed { group, error } => {
                    if let Some(p) = self.partition(group) {
                        error!(topic = %p.topic, partition = p.key.1, group, error = %error,
                            "partition's Raft group failed: produce refused until restart");
                        p.on_failed();
                        self.epochs.set(p.key, None);
                    }
                }
                Event::MembershipChanged { .. } | Event::SnapshotInstalled { .. } => {}
            }
        }
        for (group, index) in compact {
            self.compact(group, index);
        }
    }

    fn partition(&self, group: GroupId) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(&group).and_then(Weak::upgrade)
    }

    /// Compacts every group's Raft log through what it applied (clean shutdown: the next
    /// open rebuilds nothing), then runs the driver until the stores are idle.
    pub fn compact_all(&self) {
        let groups: Vec<(GroupId, u64)> = {
            let d = self.driver.borrow();
            d.group_ids()
                .filter_map(|g| d.status(g).map(|s| (g, s.applied)))
                .collect()
        };
        for (g, applied) in groups {
            let anchor = self.driver.borrow().store(g).map(|s| s.anchor().index);
            if anchor.is_some_and(|a| a < applied) {
                self.compact(g, applied);
            }
        }
        self.run();
    }

    /// What the shard's metrics show.
    pub fn stats(&self) -> RaftStats {
        let d = self.driver.borrow();
        RaftStats {
            groups: d.group_ids().count(),
            ticking: d.active_groups(),
            group_ticks: d.metrics().group_ticks,
        }
    }

    /// Stops the raft task (shutdown, after the partitions closed).
    pub fn stop(&self) {
        self.stopped.set(true);
        self.wake.wake_all();
    }

    /// The shard's raft task: ticks every `tick_ms` and runs after every pump round.
    async fn run_loop(self: Rc<Self>) {
        let tick = Duration::from_millis(self.driver.borrow().config().tick_ms);
        let mut next_tick = std::time::Instant::now() + tick;
        while !self.stopped.get() {
            let now = std::time::Instant::now();
            if now >= next_tick {
                self.driver.borrow_mut().tick();
                next_tick = now + tick;
            }
            self.pending.set(false);
            self.run();
            if self.pending.get() {
                glommio::yield_if_needed().await;
                continue;
            }
            let wait = next_tick.saturating_duration_since(std::time::Instant::now());
            let _ = glommio::timer::timeout(wait, async {
                self.wake
                    .wait_until(|| self.pending.get() || self.stopped.get())
                    .await;
                Ok(())
            })
            .await;
        }
    }
}
