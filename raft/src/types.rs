//! Plain data types shared by the driver, the log-store seam and the transport.
//!
//! None of these mention raft-rs: the storage adapter and the broker only ever see these, so
//! the consensus implementation behind [`crate::Driver`] can change without touching them.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;

/// A node (one `spated` process). Raft peer ids are node ids: a node holds at most one replica
/// of a group. Zero is never a valid node id.
pub type NodeId = u64;

/// A Raft group: one per partition replica set (and one for the controller).
pub type GroupId = u64;

/// What a log entry carries, so the storage adapter can write non-data entries as Kafka
/// control batches (which consumers skip).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryKind {
    /// An application payload (later: one Kafka record batch).
    Data,
    /// The empty entry a new leader appends at the start of its term (Raft §5.4.2 / §8); the
    /// storage adapter writes it as a LEADER_CHANGE control batch.
    LeaderNoop,
    /// A single-step membership change (raft-rs `ConfChange`); the payload is its encoding.
    ConfChange,
    /// A joint-consensus membership change (raft-rs `ConfChangeV2`, Raft §6); the payload is
    /// its encoding. The storage adapter writes both kinds as KRAFT_VOTERS control batches.
    ConfChangeV2,
}

impl EntryKind {
    /// Whether the entry is a control entry (not application data).
    pub fn is_control(self) -> bool {
        !matches!(self, EntryKind::Data)
    }

    /// Whether the entry changes the group's membership.
    pub fn is_membership(self) -> bool {
        matches!(self, EntryKind::ConfChange | EntryKind::ConfChangeV2)
    }

    /// A stable one-byte code (used by encodings that persist or transfer entries).
    pub fn code(self) -> u8 {
        match self {
            EntryKind::Data => 0,
            EntryKind::LeaderNoop => 1,
            EntryKind::ConfChange => 2,
            EntryKind::ConfChangeV2 => 3,
        }
    }

    /// The inverse of [`EntryKind::code`].
    pub fn from_code(code: u8) -> Option<EntryKind> {
        Some(match code {
            0 => EntryKind::Data,
            1 => EntryKind::LeaderNoop,
            2 => EntryKind::ConfChange,
            3 => EntryKind::ConfChangeV2,
            _ => return None,
        })
    }
}

/// One Raft log entry: one opaque payload with its term and index.
#[derive(Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Position in the group's log (1-based, consecutive).
    pub index: u64,
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Data or control.
    pub kind: EntryKind,
    /// The payload: a Kafka batch for [`EntryKind::Data`], empty for a leader no-op, the
    /// encoded change for membership entries.
    pub payload: Bytes,
}

impl fmt::Debug for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "LogEntry({}@t{} {:?} {}B)",
            self.index,
            self.term,
            self.kind,
            self.payload.len()
        )
    }
}

/// The state that must be durable before any vote or append acknowledgement leaves the node
/// (Raft §5.1: "updated on stable storage before responding to RPCs").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate voted for in `term` (0 = none).
    pub vote: NodeId,
    /// Highest index known committed. Advisory only: after a restart the driver derives the
    /// commit index from the log (see `Driver::add_group`) and relearns the rest.
    pub commit: u64,
}

/// A group's configuration (Raft §6). Outside a joint-consensus transition `voters_outgoing`
/// and `learners_next` are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while in a joint configuration.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Voters that become learners when the joint configuration is left.
    pub learners_next: BTreeSet<NodeId>,
    /// Whether the joint configuration is left automatically.
    pub auto_leave: bool,
}

impl Membership {
    /// A plain configuration of `voters` and `learners`.
    pub fn new(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        Membership {
            voters: voters.into_iter().collect(),
            learners: learners.into_iter().collect(),
            ..Membership::default()
        }
    }

    /// Whether no voter is configured (an uninitialised replica).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty() && self.voters_outgoing.is_empty()
    }

    /// Whether a joint-consensus transition is in progress.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every node that holds a replica in this configuration.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(&self.learners);
        all.extend(&self.voters_outgoing);
        all.extend(&self.learners_next);
        all
    }

    /// Whether `node` votes in any half of the configuration.
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.voters_outgoing.contains(&node)
    }

    /// Checks the structural rules raft-rs relies on: at least one voter, no zero id, and no
    /// node that is both a voter and a learner. Membership received from a peer is checked with
    /// this before it reaches raft-rs (which would panic on it).
    pub fn validate(&self) -> Result<(), String> {
        if self.voters.is_empty() {
            return Err("no voters".into());
        }
        let all = self.members();
        if all.contains(&0) {
            return Err("node id 0".into());
        }
        if let Some(id) = self.learners.iter().find(|id| self.is_voter(**id)) {
            return Err(format!("node {id} is both voter and learner"));
        }
        if let Some(id) = self
            .learners_next
            .iter()
            .find(|id| !self.voters_outgoing.contains(id))
        {
            return Err(format!("next learner {id} is not an outgoing voter"));
        }
        if !self.is_joint() && (!self.learners_next.is_empty() || self.auto_leave) {
            return Err("joint-only fields set outside a joint configuration".into());
        }
        Ok(())
    }
}

/// One step of a membership change (Raft §6; several steps in one change use joint consensus).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a learner, or demote a voter to learner.
    AddLearner(NodeId),
    /// Remove a voter or learner.
    Remove(NodeId),
}

/// Where a group's log starts: everything up to and including `index` is no longer in the log
/// (compacted, or never received because a snapshot replaced it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStart {
    /// Last index not in the log.
    pub index: u64,
    /// Term of the entry at `index` (kept for log matching, Raft §5.3).
    pub term: u64,
}

/// A snapshot (Raft §7): "the log starts after `index`", with the membership as of `index`.
/// Spate's state machine is the log itself, so a snapshot carries no application state; the
/// data a follower behind the log start needs travels as an opaque payload produced and
/// consumed by the log store (the abstract "segment transfer").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last index covered.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Membership as of `index`.
    pub membership: Membership,
}

/// A replica's role in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Running a pre-vote round (Raft thesis §9.6); its term is not yet raised.
    PreCandidate,
    /// Running an election (Raft §5.2).
    Candidate,
    /// Leads the group for its term.
    Leader,
}
