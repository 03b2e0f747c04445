//! The multi-raft driver: many Raft groups on one shard, one tick for all of them.
//!
//! # Loop
//!
//! The owner (a shard's event loop, or the simulator) calls:
//!
//! * [`Driver::tick`] from its timer (the driver derives whole ticks from the [`Clock`]);
//! * [`Driver::receive`] with every envelope from a peer node;
//! * [`Driver::propose`], [`Driver::change_membership`], [`Driver::transfer_leadership`],
//!   [`Driver::compact_log`] on behalf of the broker;
//! * [`Driver::process`] after any of the above *and after a log-store sync completes*: it
//!   handles raft-rs Readies, releases messages whose writes became durable and flushes one
//!   envelope per peer node to the [`Transport`];
//! * [`Driver::take_events`] to learn about commits, role and membership changes.
//!
//! # Persistence (Raft §5.1, raft thesis §10.2.1)
//!
//! Each Ready's entries, snapshot and hard state are written to the group's [`LogStore`] at
//! once (so raft-rs can read them back) and a sync is started; the Ready is handed back with
//! `advance_append_async`. Its "persisted messages" (vote grants, append acknowledgements,
//! everything a non-leader sends) wait in a per-group FIFO until the sync covering the Ready
//! completes; then `on_persist_ready` tells raft-rs, which counts the leader's own copy towards
//! the commit quorum only from that moment. A leader's append messages leave immediately, so
//! the leader's fsync overlaps replication, *except* when the same or an earlier still-pending
//! Ready changed term or vote: then they wait too, so no message of a term leaves a node before
//! that term (and its vote) is durable there.
//!
//! # Heartbeat coalescing
//!
//! Heartbeats and heartbeat responses of all groups bound for one node are carried as compact
//! items in the single envelope flushed to that node (see [`crate::wire`]), and every other
//! message produced in the same round rides along: one transport message per node pair per
//! flush, however many groups there are. The envelope also serves as the node-level liveness
//! signal (an empty one is sent every heartbeat interval to every peer node).
//!
//! # Quiescence
//!
//! A leader whose group is idle (everything committed, applied, durable and acknowledged by
//! every member; no configuration change or transfer in flight; every member's node alive) for
//! `quiesce_after_ticks` ticks sends a last heartbeat carrying a *quiesce* flag and stops
//! ticking the group. A follower receiving it stops ticking the group only if it is in sync
//! with that leader (same term and leader, commit = last index = the leader's commit); it then
//! keeps its election timer frozen instead of campaigning. Any other message for the group, a
//! proposal, or a local request wakes the group (heartbeat responses do not). Because a frozen
//! follower would never notice a dead leader, node-level liveness backs it up: when no
//! envelope arrived from a node for an election timeout, or the node's incarnation changed (it
//! restarted), every quiesced group with a replica on that node wakes and resumes ticking.
//! Quiescence only stops timers, never changes what raft-rs decides, so it cannot affect
//! safety; it could only cost liveness, which the simulator's liveness phase checks.
//!
//! # Determinism
//!
//! raft-rs draws election timeouts from the thread RNG; the driver overrides each draw with
//! its own seeded [`Prng`], and iterates only ordered maps, so a driver is a deterministic
//! function of its inputs (which the simulator relies on).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry,
    EntryType, Message, MessageType,
};
use raft::{Changer, ProgressState, RawNode, SnapshotStatus, StateRole};

use crate::adapter::{
    entry_from_pb, hard_state_from_pb, membership_from_pb, membership_to_pb, Fetches, RaftStore,
};
use crate::clock::Clock;
use crate::group::{role_of, Group, PendingReady};
use crate::rng::Prng;
use crate::store::{LogStore, SnapshotPrep, StoreError, SyncToken};
use crate::transport::Transport;
use crate::types::{
    GroupId, HardState, LogEntry, Membership, MembershipChange, NodeId, Role, SnapshotMeta,
};
use crate::wire::{Envelope, Heartbeat, HeartbeatResponse, WireError};

/// Index of the bootstrap snapshot every initial member starts from. Starting above zero means
/// a replica created empty (a node added later) can never be served from the log's first entry
/// and always receives a snapshot carrying the configuration (as TiKV does).
pub const BOOTSTRAP_INDEX: u64 = 1;
/// Term of the bootstrap snapshot.
pub const BOOTSTRAP_TERM: u64 = 1;

/// Upper bound of Ready-handling rounds in one [`Driver::process`] call; leftovers are handled
/// by the next call.
const MAX_PROCESS_ROUNDS: usize = 64;

/// Deliberately broken behaviours for the simulator's self-test. Compiled only with the
/// `fault-injection` feature (enabled for this crate's own tests, never in production).
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Treat unsynced writes as durable: release "after persistence" messages (vote grants,
    /// append acknowledgements) and report persistence to raft-rs before the sync completes.
    pub ack_before_sync: bool,
    /// The same, but only for Readies that did not change term or vote: votes stay correct,
    /// only log appends are acknowledged early.
    pub ack_appends_before_sync: bool,
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// This node.
    pub node_id: NodeId,
    /// Changes on every process start (a boot counter or random value); peers use a change to
    /// wake groups quiesced with this node.
    pub incarnation: u64,
    /// Length of one Raft tick in clock milliseconds.
    pub tick_ms: u64,
    /// Base election timeout in ticks; each timeout is drawn from `[election_ticks,
    /// 2 * election_ticks)` (Raft §5.2 randomized timeouts).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks (also the node-level liveness ping interval).
    pub heartbeat_ticks: usize,
    /// At most this many ticks are applied by one [`Driver::tick`] call after a stall, so a
    /// late timer does not fire a burst of elections.
    pub max_catchup_ticks: u64,
    /// Whether idle groups stop ticking (see the module documentation).
    pub quiesce: bool,
    /// Idle ticks before a leader quiesces its group.
    pub quiesce_after_ticks: u32,
    /// Upper bound of payload bytes in one append message.
    pub max_append_bytes: u64,
    /// Append messages in flight per follower.
    pub max_inflight_appends: usize,
    /// Seed of the election-timeout jitter.
    pub seed: u64,
    /// Deliberate bugs for the simulator's self-test.
    #[cfg(feature = "fault-injection")]
    pub faults: Faults,
}

impl DriverConfig {
    /// Defaults for `node_id`: 100 ms ticks, elections after 1–2 s, heartbeats every 200 ms,
    /// quiescence after 1 s idle.
    pub fn new(node_id: NodeId) -> Self {
        DriverConfig {
            node_id,
            incarnation: 0,
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_catchup_ticks: 2,
            quiesce: true,
            quiesce_after_ticks: 10,
            max_append_bytes: 1 << 20,
            max_inflight_appends: 256,
            seed: node_id,
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
        }
    }
}

/// How [`Driver::add_group`] initialises a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupInit {
    /// An initial member of a new group with this membership. Identical on every initial
    /// member; ignored when the store already holds state (a restart).
    Bootstrap(Membership),
    /// A replica that waits for the leader (a node being added, or a restart).
    Join,
}

/// Something the owner of the driver needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The replica's role, term or known leader changed.
    RoleChanged {
        /// The group.
        group: GroupId,
        /// New role.
        role: Role,
        /// Current term.
        term: u64,
        /// Known leader, if any.
        leader: Option<NodeId>,
    },
    /// Entries became committed and durable here, in log order (the high watermark is the last
    /// index). After a restart, entries beyond what the log proves committed are delivered
    /// again once the commit index is relearned from the leader.
    Committed {
        /// The group.
        group: GroupId,
        /// The entries, data and control.
        entries: Vec<LogEntry>,
    },
    /// A membership change was applied.
    MembershipChanged {
        /// The group.
        group: GroupId,
        /// Index of the configuration entry (or snapshot).
        index: u64,
        /// The new membership.
        membership: Membership,
    },
    /// The log was replaced by a snapshot from the leader (this replica was behind the
    /// leader's log start); the log now starts after `meta.index`.
    SnapshotInstalled {
        /// The group.
        group: GroupId,
        /// The snapshot.
        meta: SnapshotMeta,
    },
    /// The group's store failed; the group stopped and must be reopened.
    GroupFailed {
        /// The group.
        group: GroupId,
        /// The failure.
        error: StoreError,
    },
}

/// A point-in-time view of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// Role.
    pub role: Role,
    /// Current term.
    pub term: u64,
    /// Vote in the current term (0 = none).
    pub vote: NodeId,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// Highest index delivered in [`Event::Committed`] or covered by an installed snapshot
    /// (the high watermark).
    pub applied: u64,
    /// Highest index known durable here.
    pub persisted: u64,
    /// First index in the log.
    pub first_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Whether the group is quiesced (not ticked).
    pub quiesced: bool,
    /// Applied membership.
    pub membership: Membership,
    /// Whether the group stopped after a store failure.
    pub failed: bool,
}

/// Where a proposal landed. It is committed once an [`Event::Committed`] delivers an entry at
/// `index` with this `term`; an entry at `index` with another term means it was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Term of the entry.
    pub term: u64,
    /// Index of the entry.
    pub index: u64,
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// No such group here.
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    /// Only the leader accepts requests.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this replica knows of.
        leader: Option<NodeId>,
    },
    /// Payloads must not be empty (empty entries are leader no-ops).
    #[error("empty payload")]
    EmptyPayload,
    /// raft-rs dropped the proposal (a leadership transfer is in progress).
    #[error("proposal dropped")]
    Dropped,
    /// A membership change is still pending.
    #[error("a membership change is in progress")]
    ChangeInProgress,
    /// The change is not valid for the current membership.
    #[error("invalid change: {0}")]
    InvalidChange(String),
    /// The group stopped after a store failure.
    #[error("group failed")]
    GroupFailed,
}

/// Why a group could not be opened or managed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The group is already open.
    #[error("group {0} already exists")]
    GroupExists(GroupId),
    /// No such group here.
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    /// A bootstrap membership is invalid.
    #[error("invalid membership: {0}")]
    InvalidMembership(String),
    /// The stored state contradicts itself (e.g. membership applied beyond the durable log).
    #[error("inconsistent stored state: {0}")]
    Inconsistent(String),
    /// Compaction beyond the applied index.
    #[error("cannot compact through {through}: applied index is {applied}")]
    NotApplied {
        /// Requested index.
        through: u64,
        /// Applied index.
        applied: u64,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// raft-rs refused the configuration.
    #[error("raft: {0}")]
    Raft(String),
}

/// Counters, for tests and metrics export.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverMetrics {
    /// Envelopes handed to the transport.
    pub envelopes_sent: u64,
    /// Non-heartbeat Raft messages sent.
    pub messages_sent: u64,
    /// Coalesced heartbeats sent.
    pub heartbeats_sent: u64,
    /// Coalesced heartbeat responses sent.
    pub heartbeat_responses_sent: u64,
    /// Envelopes received and accepted.
    pub envelopes_received: u64,
    /// Envelopes rejected by the decoder.
    pub malformed_envelopes: u64,
    /// Messages refused by validation or undecodable.
    pub malformed_messages: u64,
    /// Messages for groups not open here.
    pub unknown_group_messages: u64,
    /// `RawNode::tick` calls.
    pub group_ticks: u64,
    /// Groups quiesced (leader or follower side).
    pub quiesced: u64,
    /// Groups woken from quiescence.
    pub woken: u64,
    /// Times a snapshot was held (again) until the store fetched what installing it needs
    /// (segment transfer).
    pub snapshots_held: u64,
    /// Snapshots dropped because that fetch failed (the leader sends another later).
    pub snapshot_transfers_failed: u64,
}

/// What is queued for one peer node until the next flush.
#[derive(Default)]
struct Outgoing {
    /// At most one heartbeat per group (a later one replaces an earlier one).
    heartbeats: BTreeMap<GroupId, Heartbeat>,
    heartbeat_responses: Vec<HeartbeatResponse>,
    messages: Vec<(GroupId, Bytes)>,
}

/// Node-level liveness of a peer.
struct PeerState {
    last_heard_ms: u64,
    incarnation: Option<u64>,
    alive: bool,
}

/// Runs many Raft groups of one shard. See the module documentation.
pub struct Driver<S: LogStore, T: Transport, C: Clock> {
    cfg: DriverConfig,
    transport: T,
    clock: C,
    logger: slog::Logger,
    rng: Prng,
    groups: BTreeMap<GroupId, Group<S>>,
    /// Groups that are ticked (not quiesced, not failed).
    active: BTreeSet<GroupId>,
    /// Groups that may have a Ready.
    dirty: BTreeSet<GroupId>,
    /// Groups with Readies waiting for a sync.
    syncing: BTreeSet<GroupId>,
    /// Groups holding back committed entries (a leader's own removal).
    deferring: BTreeSet<GroupId>,
    /// Groups with reads waiting for their store to load entries (shared with the groups'
    /// `RaftStore`s, which register themselves on a miss).
    fetching: Rc<RefCell<BTreeSet<GroupId>>>,
    /// Groups holding a snapshot message until their store prepared it.
    holding: BTreeSet<GroupId>,
    outbox: BTreeMap<NodeId, Outgoing>,
    peers: BTreeMap<NodeId, PeerState>,
    last_tick_ms: u64,
    ticks: u64,
    events: Vec<Event>,
    metrics: DriverMetrics,
}

impl<S: LogStore, T: Transport, C: Clock> Driver<S, T, C> {
    /// A driver with no groups.
    ///
    /// # Panics
    ///
    /// On a configuration raft-rs would reject (node id 0, `heartbeat_ticks` of 0 or not
    /// below `election_ticks`, `tick_ms` of 0): programming errors, not runtime conditions.
    pub fn new(cfg: DriverConfig, transport: T, clock: C) -> Self {
        assert!(cfg.node_id != 0, "node id 0 is reserved");
        assert!(cfg.tick_ms > 0, "tick_ms must be positive");
        assert!(
            cfg.heartbeat_ticks > 0 && cfg.heartbeat_ticks < cfg.election_ticks,
            "need 0 < heartbeat_ticks < election_ticks"
        );
        let last_tick_ms = clock.now_ms();
        Driver {
            rng: Prng::new(cfg.seed ^ cfg.node_id.rotate_left(32)),
            cfg,
            transport,
            clock,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            groups: BTreeMap::new(),
            active: BTreeSet::new(),
            dirty: BTreeSet::new(),
            syncing: BTreeSet::new(),
            deferring: BTreeSet::new(),
            fetching: Rc::default(),
            holding: BTreeSet::new(),
            outbox: BTreeMap::new(),
            peers: BTreeMap::new(),
            last_tick_ms,
            ticks: 0,
            events: Vec::new(),
            metrics: DriverMetrics::default(),
        }
    }

    /// This node.
    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// Counters.
    pub fn metrics(&self) -> DriverMetrics {
        self.metrics
    }

    /// Groups open here.
    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Number of groups currently ticked.
    pub fn active_groups(&self) -> usize {
        self.active.len()
    }

    /// The store of `group`.
    pub fn store(&self, group: GroupId) -> Option<&S> {
        self.groups.get(&group).map(|g| &g.raw.store().store)
    }

    /// The known leader of `group`.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        let g = self.groups.get(&group)?;
        match g.raw.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// A view of `group`'s replica.
    pub fn status(&self, group: GroupId) -> Option<GroupStatus> {
        let g = self.groups.get(&group)?;
        let r = &g.raw.raft;
        Some(GroupStatus {
            group,
            role: g.role(),
            term: r.term,
            vote: r.vote,
            leader: (r.leader_id != 0).then_some(r.leader_id),
            commit: r.raft_log.committed,
            applied: g.raw.store().applied,
            persisted: r.raft_log.persisted,
            first_index: r.raft_log.first_index(),
            last_index: r.raft_log.last_index(),
            quiesced: g.quiesced,
            membership: membership_from_pb(&g.raw.store().conf_state),
            failed: g.failed.is_some(),
        })
    }

    /// Takes the events produced since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Opens a group over `store`. See [`GroupInit`].
    pub fn add_group(
        &mut self,
        group: GroupId,
        mut store: S,
        init: GroupInit,
    ) -> Result<(), DriverError> {
        if self.groups.contains_key(&group) {
            return Err(DriverError::GroupExists(group));
        }
        if let GroupInit::Bootstrap(membership) = &init {
            membership
                .validate()
                .map_err(DriverError::InvalidMembership)?;
            // The log never returns to "empty at index 0" once the bootstrap snapshot is
            // durable, so an empty log means bootstrap did not survive (or never ran).
            if store.last_index() == 0 && store.log_start().index == 0 {
                let meta = SnapshotMeta {
                    index: BOOTSTRAP_INDEX,
                    term: BOOTSTRAP_TERM,
                    membership: membership.clone(),
                };
                store.install_snapshot(&meta, Bytes::new())?;
                let hs = store.initial_state().hard_state;
                if hs.term < BOOTSTRAP_TERM {
                    store.set_hard_state(HardState {
                        term: BOOTSTRAP_TERM,
                        vote: 0,
                        commit: BOOTSTRAP_INDEX,
                    })?;
                }
                // Bootstrap is deterministic: if this sync is lost, the restart redoes it.
                store.sync()?;
            }
        }
        let state = store.initial_state();
        let start = store.log_start();
        let last = store.last_index();
        if state.applied > last {
            return Err(DriverError::Inconsistent(format!(
                "applied checkpoint {} beyond the log end {last}",
                state.applied
            )));
        }
        // A store's applied checkpoint covers only entries it made durable before recording
        // it, with every membership change up to it recorded (see `StoredState::applied`).
        let applied = state.membership_index.max(start.index).max(state.applied);
        if applied > last {
            return Err(DriverError::Inconsistent(format!(
                "membership applied at {applied} but the log ends at {last}"
            )));
        }
        // The commit index to restart from. The stored one is not trusted: it may have survived
        // a crash that the log writes it describes did not (different files), e.g. the
        // truncation of a stale suffix and its replacement, and the stale entry would then
        // look committed. The commit index is volatile in Raft (Figure 2), but raft-rs applies
        // membership on commit, and its safety needs every replica to be at most one
        // configuration behind its log (one change at a time / joint consensus keep quorums
        // overlapping) — restarting from the applied point could fall further behind if the
        // membership record did not survive. So use what the log itself proves: a leader
        // proposes a membership change only after applying every earlier one, hence every
        // membership entry before the last one in this log is committed (and durable here).
        let conf_entries = store.membership_indexes(applied)?;
        let proven = match conf_entries.len() {
            0 | 1 => applied,
            n => conf_entries[n - 2].max(applied),
        };
        let hard_state = HardState {
            commit: proven,
            ..state.hard_state
        };
        let rcfg = raft::Config {
            id: self.cfg.node_id,
            election_tick: self.cfg.election_ticks,
            heartbeat_tick: self.cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: self.cfg.max_append_bytes,
            max_inflight_msgs: self.cfg.max_inflight_appends,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: self.cfg.election_ticks,
            max_election_tick: 2 * self.cfg.election_ticks,
            batch_append: true,
            ..raft::Config::default()
        };
        let members = state.membership.members();
        let raft_store = RaftStore {
            store,
            initial_hard_state: hard_state,
            conf_state: membership_to_pb(&state.membership),
            applied,
            group,
            fetches: Fetches::default(),
            fetching: Rc::clone(&self.fetching),
        };
        let mut raw = RawNode::new(&rcfg, raft_store, &self.logger)
            .map_err(|e| DriverError::Raft(e.to_string()))?;
        jitter(&mut raw, &mut self.rng, self.cfg.election_ticks);
        let term = raw.raft.term;
        let now = self.clock.now_ms();
        for &node in &members {
            self.ensure_peer(node, now);
        }
        self.groups.insert(
            group,
            Group {
                id: group,
                raw,
                quiesced: false,
                idle_ticks: 0,
                pending: Default::default(),
                written_term_vote: (hard_state.term, hard_state.vote),
                reported: (Role::Follower, 0, term),
                failed: None,
                members,
                snapshot_to_apply: None,
                deferred: Vec::new(),
                deferral: None,
                held_snapshot: None,
            },
        );
        self.active.insert(group);
        self.dirty.insert(group);
        Ok(())
    }

    /// Closes a group (e.g. the partition moved away) and returns its store. Messages still
    /// waiting for a sync are dropped, which is safe: they were never acknowledged.
    pub fn remove_group(&mut self, group: GroupId) -> Option<S> {
        let g = self.groups.remove(&group)?;
        self.active.remove(&group);
        self.dirty.remove(&group);
        self.syncing.remove(&group);
        self.deferring.remove(&group);
        self.fetching.borrow_mut().remove(&group);
        Some(g.raw.raft.r.raft_log.store.store)
    }

    /// Applies the ticks that elapsed on the clock since the last call (at most
    /// `max_catchup_ticks`). Call from a periodic timer; call [`Driver::process`] afterwards.
    pub fn tick(&mut self) {
        let now = self.clock.now_ms();
        let due = now.saturating_sub(self.last_tick_ms) / self.cfg.tick_ms;
        if due == 0 {
            return;
        }
        self.last_tick_ms += due * self.cfg.tick_ms;
        for _ in 0..due.min(self.cfg.max_catchup_ticks.max(1)) {
            self.tick_once(now);
        }
    }

    fn tick_once(&mut self, now: u64) {
        self.ticks += 1;
        let mut to_quiesce = Vec::new();
        let ids: Vec<GroupId> = self.active.iter().copied().collect();
        for id in ids {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            if g.snapshot_to_apply.is_some() {
                // See `campaign_blocked`: no election may start until the snapshot is durable.
                continue;
            }
            g.raw.tick();
            jitter(&mut g.raw, &mut self.rng, self.cfg.election_ticks);
            self.metrics.group_ticks += 1;
            self.dirty.insert(id);
            if self.cfg.quiesce && g.is_leader() {
                if quiescable(g, &self.peers) {
                    g.idle_ticks += 1;
                    if g.idle_ticks >= self.cfg.quiesce_after_ticks {
                        to_quiesce.push(id);
                    }
                } else {
                    g.idle_ticks = 0;
                }
            }
        }
        for id in to_quiesce {
            self.quiesce_as_leader(id);
        }

        // Node-level liveness: a silent peer wakes every quiesced group it has a replica of.
        let timeout = self.cfg.tick_ms * self.cfg.election_ticks as u64;
        let mut dead = Vec::new();
        for (&id, p) in &mut self.peers {
            if p.alive && now.saturating_sub(p.last_heard_ms) > timeout {
                p.alive = false;
                dead.push(id);
            }
        }
        for id in dead {
            tracing::debug!(node = self.cfg.node_id, peer = id, "peer node silent");
            self.wake_groups_with(id);
        }
        if self.ticks.is_multiple_of(self.cfg.heartbeat_ticks as u64) {
            for &peer in self.peers.keys() {
                self.outbox.entry(peer).or_default();
            }
        }
    }

    /// Handles one envelope from a peer node. An envelope that fails to decode is dropped
    /// whole; a malformed message inside a valid envelope is dropped alone (and counted).
    pub fn receive(&mut self, bytes: &Bytes) -> Result<(), WireError> {
        let env = match Envelope::decode(bytes) {
            Ok(env) => env,
            Err(e) => {
                self.metrics.malformed_envelopes += 1;
                tracing::warn!(node = self.cfg.node_id, error = %e, "dropping malformed envelope");
                return Err(e);
            }
        };
        if env.to != self.cfg.node_id || env.from == self.cfg.node_id {
            self.metrics.malformed_envelopes += 1;
            return Err(WireError::Misrouted {
                to: env.to,
                me: self.cfg.node_id,
            });
        }
        self.metrics.envelopes_received += 1;
        let from = env.from;
        let now = self.clock.now_ms();
        self.ensure_peer(from, now);
        let restarted = match self.peers.get_mut(&from) {
            Some(p) => {
                let restarted = p.incarnation.is_some_and(|i| i != env.incarnation);
                p.incarnation = Some(env.incarnation);
                p.last_heard_ms = now;
                p.alive = true;
                restarted
            }
            None => false,
        };
        if restarted {
            self.wake_groups_with(from);
        }
        for (group, body) in env.messages {
            match Message::parse_from_carllerche_bytes(&body) {
                Ok(m) => self.step_remote(group, m, from, true),
                Err(e) => {
                    self.metrics.malformed_messages += 1;
                    tracing::warn!(node = self.cfg.node_id, group, error = %e, "undecodable raft message");
                }
            }
        }
        for hb in env.heartbeats {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeat);
            m.from = from;
            m.to = self.cfg.node_id;
            m.term = hb.term;
            m.commit = hb.commit;
            self.step_remote(hb.group, m, from, !hb.quiesce);
            if hb.quiesce {
                self.follow_quiesce(hb, from);
            }
        }
        for r in env.heartbeat_responses {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgHeartbeatResponse);
            m.from = from;
            m.to = self.cfg.node_id;
            m.term = r.term;
            m.commit = r.commit;
            self.step_remote(r.group, m, from, false);
        }
        Ok(())
    }

    fn step_remote(&mut self, group: GroupId, m: Message, from: NodeId, wake: bool) {
        let Some(g) = self.groups.get_mut(&group) else {
            self.metrics.unknown_group_messages += 1;
            return;
        };
        if g.failed.is_some() {
            return;
        }
        if let Err(reason) = g.validate_incoming(&m, from) {
            self.metrics.malformed_messages += 1;
            tracing::warn!(
                node = self.cfg.node_id,
                group,
                from,
                msg_type = ?m.get_msg_type(),
                %reason,
                "dropping malformed raft message"
            );
            return;
        }
        if m.get_msg_type() == MessageType::MsgTimeoutNow && campaign_blocked(g) {
            tracing::debug!(
                node = self.cfg.node_id,
                group,
                "transfer ignored: snapshot not durable yet"
            );
            return;
        }
        if wake && g.quiesced {
            self.wake(group);
        }
        let m = if m.get_msg_type() == MessageType::MsgSnapshot {
            match self.gate_snapshot(group, m, from) {
                Some(m) => m,
                None => return,
            }
        } else {
            m
        };
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if let Err(e) = g.raw.step(m) {
            tracing::debug!(node = self.cfg.node_id, group, error = %e, "step refused");
        }
        jitter(&mut g.raw, &mut self.rng, self.cfg.election_ticks);
        self.dirty.insert(group);
    }

    /// A snapshot Raft would install must first be prepared by the store (a segment
    /// transfer, [`LogStore::prepare_snapshot`]): until then the message is held (one per
    /// group; a different snapshot arriving meanwhile is dropped, the leader resends), and
    /// dropped if the preparation fails. Returns the message when it may be stepped.
    fn gate_snapshot(&mut self, group: GroupId, m: Message, from: NodeId) -> Option<Message> {
        let g = self.groups.get_mut(&group)?;
        let md = m.get_snapshot().get_metadata();
        // Only a snapshot raft-rs would restore needs anything (it ignores stale ones).
        if m.term < g.raw.raft.term || md.index <= g.raw.raft.raft_log.committed {
            return Some(m);
        }
        if let Some((held, _)) = &g.held_snapshot {
            let h = held.get_snapshot().get_metadata();
            if (h.index, h.term) == (md.index, md.term) && m.term >= held.term {
                g.held_snapshot = Some((m, from));
            }
            return None;
        }
        let meta = SnapshotMeta {
            index: md.index,
            term: md.term,
            membership: membership_from_pb(md.get_conf_state()),
        };
        let data = m.get_snapshot().data.clone();
        match g.raw.mut_store().store.prepare_snapshot(from, &meta, &data) {
            SnapshotPrep::Ready => Some(m),
            SnapshotPrep::Pending => {
                g.held_snapshot = Some((m, from));
                self.holding.insert(group);
                self.metrics.snapshots_held += 1;
                None
            }
            SnapshotPrep::Failed(e) => {
                self.metrics.snapshot_transfers_failed += 1;
                tracing::info!(node = self.cfg.node_id, group, from, error = %e,
                    "snapshot dropped: its segment transfer failed");
                None
            }
        }
    }

    /// Asks the stores again about held snapshots; steps those now prepared.
    fn retry_held_snapshots(&mut self) {
        if self.holding.is_empty() {
            return;
        }
        let ids: Vec<GroupId> = self.holding.iter().copied().collect();
        for id in ids {
            let held = match self.groups.get_mut(&id) {
                Some(g) if g.failed.is_none() => g.held_snapshot.take(),
                _ => None,
            };
            self.holding.remove(&id);
            if let Some((m, from)) = held {
                self.step_remote(id, m, from, true);
                // Install it now: its staged data must reach the store before another
                // snapshot can start a transfer that would replace it.
                if self.dirty.remove(&id) {
                    self.handle_ready(id);
                }
            }
        }
    }

    /// Proposes `payload` (one Kafka batch) as a new entry. Only the leader accepts.
    pub fn propose(&mut self, group: GroupId, payload: Bytes) -> Result<Proposal, ProposeError> {
        if payload.is_empty() {
            return Err(ProposeError::EmptyPayload);
        }
        self.leader_group(group)?;
        self.wake(group);
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(ProposeError::UnknownGroup(group))?;
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = self.cfg.node_id;
        let e = Entry {
            data: payload,
            ..Default::default()
        };
        m.set_entries(vec![e].into());
        g.raw.step(m).map_err(|_| ProposeError::Dropped)?;
        g.idle_ticks = 0;
        self.dirty.insert(group);
        Ok(Proposal {
            term: g.raw.raft.term,
            index: g.raw.raft.raft_log.last_index(),
        })
    }

    /// Hands leadership to voter `to` (raft thesis §3.10): the leader stops accepting
    /// proposals, brings `to` up to date and tells it to campaign at once.
    pub fn transfer_leadership(&mut self, group: GroupId, to: NodeId) -> Result<(), ProposeError> {
        let g = self.leader_group(group)?;
        if to == self.cfg.node_id || !g.raw.raft.prs().conf().voters().contains(to) {
            return Err(ProposeError::InvalidChange(format!(
                "node {to} is not another voter"
            )));
        }
        self.wake(group);
        if let Some(g) = self.groups.get_mut(&group) {
            g.raw.transfer_leader(to);
            g.idle_ticks = 0;
        }
        self.dirty.insert(group);
        Ok(())
    }

    /// Proposes a membership change (Raft §6). One change uses the single-step protocol;
    /// several use joint consensus, left automatically once committed.
    pub fn change_membership(
        &mut self,
        group: GroupId,
        changes: &[MembershipChange],
    ) -> Result<(), ProposeError> {
        if changes.is_empty() {
            return Err(ProposeError::InvalidChange("no changes".into()));
        }
        let g = self.leader_group(group)?;
        let raft = &g.raw.raft;
        if raft.has_pending_conf() || in_joint(g) {
            return Err(ProposeError::ChangeInProgress);
        }
        let ccs: Vec<ConfChangeSingle> = changes
            .iter()
            .map(|c| {
                let (ty, node) = match *c {
                    MembershipChange::AddVoter(n) => (ConfChangeType::AddNode, n),
                    MembershipChange::AddLearner(n) => (ConfChangeType::AddLearnerNode, n),
                    MembershipChange::Remove(n) => (ConfChangeType::RemoveNode, n),
                };
                let mut s = ConfChangeSingle::default();
                s.set_change_type(ty);
                s.node_id = node;
                s
            })
            .collect();
        if ccs.iter().any(|c| c.node_id == 0) {
            return Err(ProposeError::InvalidChange("node id 0".into()));
        }
        if changes.iter().any(|c| {
            matches!(*c, MembershipChange::Remove(n) | MembershipChange::AddLearner(n) if n == self.cfg.node_id)
        }) {
            return Err(ProposeError::InvalidChange(
                "the leader cannot remove or demote itself; transfer leadership first".into(),
            ));
        }
        let mut cc = ConfChangeV2::default();
        cc.set_transition(ConfChangeTransition::Auto);
        cc.set_changes(ccs.clone().into());
        let mut changer = Changer::new(raft.prs());
        let check = match cc.enter_joint() {
            Some(auto_leave) => changer.enter_joint(auto_leave, &ccs),
            None => changer.simple(&ccs),
        };
        check.map_err(|e| ProposeError::InvalidChange(e.to_string()))?;
        self.wake(group);
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(ProposeError::UnknownGroup(group))?;
        g.raw
            .propose_conf_change(Vec::new(), cc)
            .map_err(|_| ProposeError::Dropped)?;
        g.idle_ticks = 0;
        self.dirty.insert(group);
        Ok(())
    }

    /// Starts an election now (tests; operators forcing a leader). Ignored by non-voters.
    pub fn campaign(&mut self, group: GroupId) -> Result<(), ProposeError> {
        if !self.groups.contains_key(&group) {
            return Err(ProposeError::UnknownGroup(group));
        }
        self.wake(group);
        if let Some(g) = self.groups.get_mut(&group) {
            if campaign_blocked(g) {
                return Ok(());
            }
            if let Err(e) = g.raw.campaign() {
                tracing::debug!(group, error = %e, "campaign refused");
            }
            jitter(&mut g.raw, &mut self.rng, self.cfg.election_ticks);
        }
        self.dirty.insert(group);
        Ok(())
    }

    /// Drops log entries up to and including `through` (retention). Followers that need them
    /// later receive a snapshot instead (Raft §7).
    pub fn compact_log(&mut self, group: GroupId, through: u64) -> Result<(), DriverError> {
        let g = self
            .groups
            .get_mut(&group)
            .ok_or(DriverError::UnknownGroup(group))?;
        let applied = g.raw.store().applied;
        if through > applied {
            return Err(DriverError::NotApplied { through, applied });
        }
        let result = g.raw.mut_store().store.compact_prefix(through);
        if let Err(e) = result {
            self.fail(group, e.clone());
            return Err(e.into());
        }
        Ok(())
    }

    /// Handles Readies, releases messages whose writes became durable and flushes one envelope
    /// per peer node. Call after every batch of inputs and after log-store syncs complete.
    pub fn process(&mut self) {
        for _ in 0..MAX_PROCESS_ROUNDS {
            self.retry_fetches();
            self.retry_held_snapshots();
            let waiting: Vec<GroupId> = self.syncing.iter().copied().collect();
            for id in waiting {
                self.release(id);
            }
            let deferring: Vec<GroupId> = self.deferring.iter().copied().collect();
            for id in deferring {
                self.finish_deferred(id);
            }
            if self.dirty.is_empty() {
                break;
            }
            let dirty = std::mem::take(&mut self.dirty);
            for id in dirty {
                self.handle_ready(id);
            }
        }
        self.flush();
    }

    /// Handles `group`'s pending Ready at once — after [`Driver::propose`], so the store
    /// holds the new entry (the segment store then knows its Kafka offsets) — without the
    /// rest of [`Driver::process`], whose cost grows with the number of groups waiting for a
    /// sync. Messages and events it produces wait for the next `process` (call it soon: it
    /// also releases what waited for syncs and flushes envelopes).
    pub fn process_group(&mut self, group: GroupId) {
        if self.dirty.remove(&group) {
            self.handle_ready(group);
        }
    }

    /// Hands raft-rs back the reads that waited for a load once the store completed one
    /// (raft-rs "async fetch": it then retries sending those appends).
    fn retry_fetches(&mut self) {
        if self.fetching.borrow().is_empty() {
            return;
        }
        let ids: Vec<GroupId> = self.fetching.borrow().iter().copied().collect();
        for id in ids {
            let Some(g) = self.groups.get_mut(&id) else {
                self.fetching.borrow_mut().remove(&id);
                continue;
            };
            let rs = g.raw.store();
            if g.failed.is_some() {
                rs.fetches.waiting.borrow_mut().clear();
                self.fetching.borrow_mut().remove(&id);
                continue;
            }
            if rs.store.loads_completed() == rs.fetches.loads_at_miss.get() {
                continue;
            }
            let waiting = std::mem::take(&mut *rs.fetches.waiting.borrow_mut());
            self.fetching.borrow_mut().remove(&id);
            // A retry that misses again registers the group anew.
            for ctx in waiting {
                g.raw.on_entries_fetched(ctx);
            }
            self.dirty.insert(id);
        }
    }

    fn leader_group(&self, group: GroupId) -> Result<&Group<S>, ProposeError> {
        let g = self
            .groups
            .get(&group)
            .ok_or(ProposeError::UnknownGroup(group))?;
        if g.failed.is_some() {
            return Err(ProposeError::GroupFailed);
        }
        if !g.is_leader() {
            let leader = g.raw.raft.leader_id;
            return Err(ProposeError::NotLeader {
                leader: (leader != 0).then_some(leader),
            });
        }
        Ok(g)
    }

    /// (acknowledge everything early, acknowledge appends early): both false unless a
    /// deliberate fault is injected.
    fn early_acks(&self) -> (bool, bool) {
        #[cfg(feature = "fault-injection")]
        {
            (
                self.cfg.faults.ack_before_sync,
                self.cfg.faults.ack_appends_before_sync,
            )
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            (false, false)
        }
    }

    fn ensure_peer(&mut self, node: NodeId, now: u64) {
        if node != self.cfg.node_id {
            self.peers.entry(node).or_insert(PeerState {
                last_heard_ms: now,
                incarnation: None,
                alive: true,
            });
        }
    }

    fn wake(&mut self, group: GroupId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        g.idle_ticks = 0;
        if !g.quiesced {
            return;
        }
        g.quiesced = false;
        if g.failed.is_none() {
            self.active.insert(group);
        }
        self.metrics.woken += 1;
        // A quiesce flag still waiting in the outbox would contradict the wake-up.
        for out in self.outbox.values_mut() {
            if let Some(hb) = out.heartbeats.get_mut(&group) {
                hb.quiesce = false;
            }
        }
    }

    fn wake_groups_with(&mut self, node: NodeId) {
        let ids: Vec<GroupId> = self
            .groups
            .values()
            .filter(|g| g.quiesced && g.members.contains(&node))
            .map(|g| g.id)
            .collect();
        for id in ids {
            self.wake(id);
        }
    }

    fn quiesce_as_leader(&mut self, group: GroupId) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        let r = &g.raw.raft;
        let commit = r.raft_log.committed;
        let term = r.term;
        let me = self.cfg.node_id;
        let mut followers: Vec<NodeId> = r.prs().iter().map(|(id, _)| *id).collect();
        followers.sort_unstable();
        g.quiesced = true;
        self.active.remove(&group);
        self.metrics.quiesced += 1;
        for to in followers.into_iter().filter(|id| *id != me) {
            self.outbox.entry(to).or_default().heartbeats.insert(
                group,
                Heartbeat {
                    group,
                    term,
                    commit,
                    quiesce: true,
                },
            );
        }
    }

    /// A follower got a quiesce heartbeat (already stepped): quiesce if in sync with the
    /// leader, otherwise keep (or start) ticking.
    fn follow_quiesce(&mut self, hb: Heartbeat, from: NodeId) {
        let Some(g) = self.groups.get_mut(&hb.group) else {
            return;
        };
        let r = &g.raw.raft;
        let in_sync = r.state == StateRole::Follower
            && r.leader_id == from
            && r.term == hb.term
            && r.raft_log.committed == hb.commit
            && r.raft_log.last_index() == hb.commit
            && g.pending.is_empty()
            && g.failed.is_none();
        if in_sync {
            if !g.quiesced {
                g.quiesced = true;
                self.active.remove(&hb.group);
                self.metrics.quiesced += 1;
            }
        } else {
            self.wake(hb.group);
        }
    }

    fn fail(&mut self, group: GroupId, error: StoreError) {
        if let Some(g) = self.groups.get_mut(&group) {
            tracing::error!(node = self.cfg.node_id, group, %error, "log store failed; stopping group");
            g.failed = Some(error.clone());
            g.pending.clear();
        }
        self.active.remove(&group);
        self.syncing.remove(&group);
        self.dirty.remove(&group);
        self.deferring.remove(&group);
        self.events.push(Event::GroupFailed { group, error });
    }

    fn handle_ready(&mut self, id: GroupId) {
        let me = self.cfg.node_id;
        let Some(g) = self.groups.get_mut(&id) else {
            return;
        };
        if g.failed.is_some() || !g.raw.has_ready() {
            return;
        }
        let mut rd = g.raw.ready();
        let number = rd.number();
        let term_change = rd
            .hs()
            .is_some_and(|hs| (hs.term, hs.vote) != g.written_term_vote);
        let hold = term_change || g.pending.iter().any(|p| p.term_change);
        let mut immediate = rd.take_messages();

        // Writes: snapshot, then entries (after truncating a conflicting suffix), then hard
        // state; one sync covers them all.
        let mut events = Vec::new();
        let written: Result<Option<SyncToken>, StoreError> = (|| {
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot();
                let md = snap.get_metadata();
                let meta = SnapshotMeta {
                    index: md.index,
                    term: md.term,
                    membership: membership_from_pb(md.get_conf_state()),
                };
                let rs = g.raw.mut_store();
                rs.store.install_snapshot(&meta, snap.data.clone())?;
                rs.applied = meta.index;
                g.snapshot_to_apply = Some(meta.index);
                rs.conf_state = md.get_conf_state().clone();
                g.members = meta.membership.members();
                events.push(Event::MembershipChanged {
                    group: id,
                    index: meta.index,
                    membership: meta.membership.clone(),
                });
                events.push(Event::SnapshotInstalled { group: id, meta });
            }
            if let Some(first) = rd.entries().first() {
                let first = first.index;
                let entries: Vec<LogEntry> = rd.entries().iter().map(entry_from_pb).collect();
                let store = &mut g.raw.mut_store().store;
                if first <= store.last_index() {
                    store.truncate_suffix(first)?;
                }
                store.append(&entries)?;
            }
            if let Some(hs) = rd.hs() {
                g.raw
                    .mut_store()
                    .store
                    .set_hard_state(hard_state_from_pb(hs))?;
                g.written_term_vote = (hs.term, hs.vote);
            }
            if rd.must_sync() {
                Ok(Some(g.raw.mut_store().store.sync()?))
            } else {
                Ok(None)
            }
        })();
        let token = match written {
            Ok(token) => token,
            Err(e) => {
                self.events.extend(events);
                self.fail(id, e);
                return;
            }
        };

        // Committed entries are durable here (raft-rs only hands out persisted ones): apply
        // membership changes and report them.
        let committed = rd.take_committed_entries();
        let applied_to = match apply_committed(g, me, committed, false, &mut events) {
            Ok(applied_to) => applied_to,
            Err(err) => {
                self.events.extend(events);
                self.fail(id, err);
                return;
            }
        };

        let mut after_sync = rd.take_persisted_messages();
        if hold {
            after_sync.append(&mut immediate);
        }
        g.raw.advance_append_async(rd);
        if let Some(index) = applied_to {
            let rs = g.raw.mut_store();
            rs.applied = index;
            rs.store.on_applied(index);
            g.raw.advance_apply_to(index);
        }
        step_down_if_removed(g);
        jitter(&mut g.raw, &mut self.rng, self.cfg.election_ticks);
        if g.deferral.is_some() {
            self.deferring.insert(id);
        }
        g.pending.push_back(PendingReady {
            number,
            token,
            msgs: after_sync,
            term_change,
        });
        self.syncing.insert(id);

        let r = &g.raw.raft;
        let now = (role_of(r.state), r.leader_id, r.term);
        if now != g.reported {
            g.reported = now;
            events.push(Event::RoleChanged {
                group: id,
                role: now.0,
                term: now.2,
                leader: (now.1 != 0).then_some(now.1),
            });
        }
        if g.raw.has_ready() {
            self.dirty.insert(id);
        }
        self.events.extend(events);
        self.send_all(id, immediate);
    }

    /// A leader that committed its own removal keeps leading, with the removal not yet applied,
    /// until a voter of the new configuration reports a commit index covering the removal;
    /// only then is it applied and the leader hands over (TimeoutNow) and steps down.
    ///
    /// raft-rs applies membership on commit, so followers learn that the removal took effect
    /// only from the leader's commit index. Stepping down at once can strand them: they stay in
    /// the old (or joint) configuration, which still needs the removed node's vote, and the
    /// removed node — holding the longest log but no longer promotable — rejects them, its
    /// rejections carrying a stale term that they ignore. Holding the apply back is safe: the
    /// leader keeps committing under the configuration it has applied, whose quorums overlap
    /// the new configuration's (one change at a time, or joint consensus).
    fn finish_deferred(&mut self, id: GroupId) {
        let me = self.cfg.node_id;
        let Some(g) = self.groups.get_mut(&id) else {
            self.deferring.remove(&id);
            return;
        };
        let Some((index, successors)) = &g.deferral else {
            self.deferring.remove(&id);
            return;
        };
        let r = &g.raw.raft;
        let ready = !g.is_leader()
            || successors.iter().any(|s| {
                r.prs()
                    .get(*s)
                    .is_some_and(|pr| pr.committed_index >= *index && pr.matched >= *index)
            });
        if !ready || g.failed.is_some() {
            return;
        }
        g.deferral = None;
        let entries = std::mem::take(&mut g.deferred);
        let mut events = Vec::new();
        let applied_to = match apply_committed(g, me, entries, true, &mut events) {
            Ok(applied_to) => applied_to,
            Err(err) => {
                self.events.extend(events);
                self.fail(id, err);
                return;
            }
        };
        if let Some(index) = applied_to {
            let rs = g.raw.mut_store();
            rs.applied = index;
            rs.store.on_applied(index);
            g.raw.advance_apply_to(index);
        }
        step_down_if_removed(g);
        jitter(&mut g.raw, &mut self.rng, self.cfg.election_ticks);
        if g.deferral.is_none() {
            self.deferring.remove(&id);
        }
        self.events.extend(events);
        self.dirty.insert(id);
    }

    /// Releases the Readies of `id` whose sync completed, in order.
    fn release(&mut self, id: GroupId) {
        let (ack_all_early, ack_appends_early) = self.early_acks();
        let Some(g) = self.groups.get_mut(&id) else {
            self.syncing.remove(&id);
            return;
        };
        if let Some(e) = g.raw.store().store.failure() {
            self.fail(id, e);
            return;
        }
        let synced = g.raw.store().store.synced();
        let mut last = None;
        let mut out = Vec::new();
        while let Some(p) = g.pending.front() {
            let durable = p.token.is_none_or(|t| t <= synced)
                || ack_all_early
                || (ack_appends_early && !p.term_change);
            if !durable {
                break;
            }
            if let Some(p) = g.pending.pop_front() {
                last = Some(p.number);
                out.extend(p.msgs);
            }
        }
        if let Some(number) = last {
            g.raw.on_persist_ready(number);
            // raft-rs learns that an installed snapshot is applied only from us, and only
            // once it is durable.
            if let Some(index) = g.snapshot_to_apply {
                let log = &g.raw.raft.raft_log;
                if log.persisted >= index && log.committed >= index {
                    if log.applied < index {
                        g.raw.advance_apply_to(index);
                    }
                    g.raw.mut_store().store.on_applied(index);
                    g.snapshot_to_apply = None;
                }
            }
            if g.raw.has_ready() {
                self.dirty.insert(id);
            }
        }
        if g.pending.is_empty() {
            self.syncing.remove(&id);
        }
        self.send_all(id, out);
    }

    fn send_all(&mut self, group: GroupId, msgs: Vec<Message>) {
        let mut snapshots_to = Vec::new();
        for m in msgs {
            if m.to == self.cfg.node_id || m.to == 0 {
                continue;
            }
            let out = self.outbox.entry(m.to).or_default();
            match m.get_msg_type() {
                MessageType::MsgHeartbeat if m.context.is_empty() => {
                    let quiesce = out.heartbeats.get(&group).is_some_and(|h| h.quiesce);
                    out.heartbeats.insert(
                        group,
                        Heartbeat {
                            group,
                            term: m.term,
                            commit: m.commit,
                            quiesce,
                        },
                    );
                }
                MessageType::MsgHeartbeatResponse if m.context.is_empty() => {
                    out.heartbeat_responses.push(HeartbeatResponse {
                        group,
                        term: m.term,
                        commit: m.commit,
                    });
                }
                ty => match m.write_to_bytes() {
                    Ok(bytes) => {
                        out.messages.push((group, Bytes::from(bytes)));
                        if ty == MessageType::MsgSnapshot {
                            snapshots_to.push(m.to);
                        }
                    }
                    Err(e) => {
                        tracing::error!(group, error = %e, "cannot encode raft message")
                    }
                },
            }
        }
        // The transport is fire-and-forget: report the snapshot as sent. If it is lost, the
        // follower's next rejection makes the leader send another.
        if !snapshots_to.is_empty() {
            if let Some(g) = self.groups.get_mut(&group) {
                for to in snapshots_to {
                    g.raw.report_snapshot(to, SnapshotStatus::Finish);
                }
                self.dirty.insert(group);
            }
        }
    }

    fn flush(&mut self) {
        let outbox = std::mem::take(&mut self.outbox);
        for (to, out) in outbox {
            let env = Envelope {
                from: self.cfg.node_id,
                to,
                incarnation: self.cfg.incarnation,
                heartbeats: out.heartbeats.into_values().collect(),
                heartbeat_responses: out.heartbeat_responses,
                messages: out.messages,
            };
            self.metrics.envelopes_sent += 1;
            self.metrics.messages_sent += env.messages.len() as u64;
            self.metrics.heartbeats_sent += env.heartbeats.len() as u64;
            self.metrics.heartbeat_responses_sent += env.heartbeat_responses.len() as u64;
            self.transport.send(to, env.encode());
        }
    }
}

/// raft-rs redraws the randomized election timeout from the thread RNG whenever it resets the
/// election timer; we redraw from our seeded generator whenever the timer reads zero (which
/// covers every reset), keeping the driver deterministic. The range is raft-rs's own.
fn jitter<S: raft::Storage>(raw: &mut RawNode<S>, rng: &mut Prng, election_ticks: usize) {
    let r = &mut raw.raft;
    if r.state != StateRole::Leader && r.election_elapsed == 0 {
        let e = election_ticks as u64;
        let t = rng.range(e, 2 * e - 1) as usize;
        r.set_randomized_election_timeout(t);
    }
}

/// Whether a leader's group is idle enough to stop ticking (see the module documentation).
fn quiescable<S: LogStore>(g: &Group<S>, peers: &BTreeMap<NodeId, PeerState>) -> bool {
    let r = &g.raw.raft;
    let log = &r.raft_log;
    let last = log.last_index();
    if r.state != StateRole::Leader
        || r.lead_transferee.is_some()
        || !g.pending.is_empty()
        || log.committed != last
        || log.persisted != last
        || log.applied != last
        || r.has_pending_conf()
        || in_joint(g)
    {
        return false;
    }
    r.prs().iter().all(|(id, pr)| {
        *id == r.id
            || (pr.matched == last
                && pr.committed_index == last
                && pr.state == ProgressState::Replicate
                && peers.get(id).is_some_and(|p| p.alive))
    })
}

/// A leader that applied a configuration without itself as a voter hands over and steps down
/// (raft thesis §4.2.2). raft-rs leaves this to the application and misbehaves otherwise (it
/// keeps leading without counting itself, and panics when its own progress is gone). The voter
/// that knows the most of the commit index and the log (normally one that already applied the
/// change, see `Driver::finish_deferred`) is told to campaign at once (TimeoutNow, thesis
/// §3.10); stepping down within the same term is safe because this node already voted for
/// itself in it.
fn step_down_if_removed<S: LogStore>(g: &mut Group<S>) {
    let r = &mut g.raw.raft;
    if r.state != StateRole::Leader || r.prs().conf().voters().contains(r.id) {
        return;
    }
    let me = r.id;
    let target = r
        .prs()
        .iter()
        .filter(|(id, _)| **id != me && r.prs().conf().voters().contains(**id))
        .map(|(id, pr)| (pr.committed_index, pr.matched, std::cmp::Reverse(*id)))
        .max()
        .map(|(_, _, std::cmp::Reverse(id))| id);
    if let Some(to) = target {
        r.send_timeout_now(to);
    }
    let term = r.term;
    r.become_follower(term, raft::INVALID_ID);
}

/// Whether an election must not start now: after raft-rs hands back a Ready with a snapshot
/// (`advance_append_async`) it forgets the snapshot but still believes its applied index is the
/// old one until we report the snapshot applied, which we may only do once it is durable. A
/// campaign in that window makes raft-rs read entries below the new log start and panic, so
/// the group is not ticked and ignores TimeoutNow until then (the window lasts one fsync).
fn campaign_blocked<S: LogStore>(g: &Group<S>) -> bool {
    g.snapshot_to_apply.is_some()
}

/// Whether the applied configuration is joint (Raft §6).
fn in_joint<S: LogStore>(g: &Group<S>) -> bool {
    !g.raw.store().conf_state.get_voters_outgoing().is_empty()
}

/// Applies committed entries in order (membership changes to raft-rs and the store) and
/// reports them; returns the last index applied. Unless `release` (the hold is over), entries
/// are held back from a membership change that would remove this leader on (see
/// `Driver::finish_deferred`).
fn apply_committed<S: LogStore>(
    g: &mut Group<S>,
    me: NodeId,
    committed: Vec<Entry>,
    release: bool,
    events: &mut Vec<Event>,
) -> Result<Option<u64>, StoreError> {
    let id = g.id;
    let mut applied_to = None;
    let mut delivered = Vec::with_capacity(committed.len());
    for e in committed {
        if g.deferral.is_some() {
            g.deferred.push(e);
            continue;
        }
        let entry = entry_from_pb(&e);
        if entry.kind.is_membership() {
            if let Some(successors) = removes_leader(g, &e).filter(|_| !release) {
                g.deferral = Some((e.index, successors));
                g.deferred.push(e);
                continue;
            }
            match apply_membership(g, &e) {
                Ok(membership) => {
                    g.members = membership.members();
                    g.raw
                        .mut_store()
                        .store
                        .set_membership(e.index, &membership)?;
                    events.push(Event::MembershipChanged {
                        group: id,
                        index: e.index,
                        membership,
                    });
                }
                // Deterministic on every replica (same committed entry), so skipping keeps
                // them consistent.
                Err(reason) => {
                    tracing::error!(node = me, group = id, index = e.index, %reason, "membership entry not applied")
                }
            }
        }
        applied_to = Some(e.index);
        delivered.push(entry);
    }
    if !delivered.is_empty() {
        events.push(Event::Committed {
            group: id,
            entries: delivered,
        });
    }
    Ok(applied_to)
}

/// If this node leads and applying `e` would leave it out of the voters, the voters of the
/// resulting (incoming) configuration.
fn removes_leader<S: LogStore>(g: &Group<S>, e: &Entry) -> Option<BTreeSet<NodeId>> {
    let r = &g.raw.raft;
    if r.state != StateRole::Leader {
        return None;
    }
    let cc = parse_conf_change(e).ok()?;
    let mut changer = Changer::new(r.prs());
    let result = if cc.leave_joint() {
        changer.leave_joint()
    } else if let Some(auto_leave) = cc.enter_joint() {
        changer.enter_joint(auto_leave, cc.get_changes())
    } else {
        changer.simple(cc.get_changes())
    };
    let (conf, _) = result.ok()?;
    if conf.voters().contains(r.id) {
        return None;
    }
    Some(conf.to_conf_state().voters.into_iter().collect())
}

/// Decodes a membership entry as a `ConfChangeV2`.
fn parse_conf_change(e: &Entry) -> Result<ConfChangeV2, String> {
    Ok(match e.get_entry_type() {
        EntryType::EntryConfChange => {
            let mut v1 = ConfChange::default();
            v1.merge_from_bytes(&e.data).map_err(|e| e.to_string())?;
            let mut single = ConfChangeSingle::default();
            single.set_change_type(v1.get_change_type());
            single.node_id = v1.node_id;
            let mut cc = ConfChangeV2::default();
            cc.set_changes(vec![single].into());
            cc
        }
        EntryType::EntryConfChangeV2 => {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&e.data).map_err(|e| e.to_string())?;
            cc
        }
        EntryType::EntryNormal => return Err("not a membership entry".into()),
    })
}

/// Applies a committed membership entry to raft-rs; returns the new membership.
fn apply_membership<S: LogStore>(g: &mut Group<S>, e: &Entry) -> Result<Membership, String> {
    let cc = parse_conf_change(e)?;
    let cs = g.raw.apply_conf_change(&cc).map_err(|e| e.to_string())?;
    let membership = membership_from_pb(&cs);
    g.raw.mut_store().conf_state = cs;
    Ok(membership)
}

impl<S: LogStore, T: Transport, C: Clock> std::fmt::Debug for Driver<S, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("node", &self.cfg.node_id)
            .field("groups", &self.groups.len())
            .field("active", &self.active.len())
            .finish()
    }
}
