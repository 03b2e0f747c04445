//! One Raft group inside a driver: the raft-rs `RawNode` (private to this crate), the queue of
//! Readies waiting for their sync, and quiescence state. Also the validation of messages from
//! peers before they reach raft-rs.

use std::collections::{BTreeSet, VecDeque};

use raft::eraftpb::{Message, MessageType};
use raft::{RawNode, StateRole};

use crate::adapter::{membership_from_pb, RaftStore};
use crate::store::{LogStore, StoreError, SyncToken};
use crate::types::{GroupId, NodeId, Role};

/// A Ready whose writes were issued but whose "after persistence" messages must wait.
pub(crate) struct PendingReady {
    /// raft-rs Ready number (passed to `on_persist_ready`).
    pub(crate) number: u64,
    /// Sync covering the Ready's writes (`None`: nothing to persist).
    pub(crate) token: Option<SyncToken>,
    /// Messages that may leave only once the Ready is durable.
    pub(crate) msgs: Vec<Message>,
    /// The Ready changed term or vote.
    pub(crate) term_change: bool,
}

pub(crate) struct Group<S: LogStore> {
    pub(crate) id: GroupId,
    pub(crate) raw: RawNode<RaftStore<S>>,
    /// Not ticked (see the driver's quiescence notes).
    pub(crate) quiesced: bool,
    /// Consecutive ticks for which a leader found the group idle.
    pub(crate) idle_ticks: u32,
    /// Readies in raft-rs order whose messages wait for their sync.
    pub(crate) pending: VecDeque<PendingReady>,
    /// (term, vote) last written to the store.
    pub(crate) written_term_vote: (u64, u64),
    /// (role, leader, term) last reported in an event.
    pub(crate) reported: (Role, NodeId, u64),
    /// Set when the store failed; the group no longer runs.
    pub(crate) failed: Option<StoreError>,
    /// Nodes in the applied configuration (for node-liveness wake-ups).
    pub(crate) members: BTreeSet<NodeId>,
    /// Index of an installed snapshot to report as applied to raft-rs once it is durable.
    pub(crate) snapshot_to_apply: Option<u64>,
    /// Committed entries held back, starting with a membership change that removes this
    /// leader (see `Driver::finish_deferred`).
    pub(crate) deferred: Vec<raft::eraftpb::Entry>,
    /// Index of that membership change and the voters of the configuration it creates.
    pub(crate) deferral: Option<(u64, BTreeSet<NodeId>)>,
    /// A snapshot message (and its sender) held until the store has what installing it
    /// needs ([`LogStore::prepare_snapshot`]: a segment transfer).
    pub(crate) held_snapshot: Option<(Message, NodeId)>,
}

/// Upper bound for terms and indexes accepted from peers.
const LIMIT: u64 = 1 << 62;

pub(crate) fn role_of(state: StateRole) -> Role {
    match state {
        StateRole::Follower => Role::Follower,
        StateRole::PreCandidate => Role::PreCandidate,
        StateRole::Candidate => Role::Candidate,
        StateRole::Leader => Role::Leader,
    }
}

impl<S: LogStore> Group<S> {
    pub(crate) fn role(&self) -> Role {
        role_of(self.raw.raft.state)
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Checks a message from peer node `from` before it is stepped. raft-rs trusts its input
    /// and panics on several impossible-for-a-correct-peer messages; those are refused here.
    pub(crate) fn validate_incoming(&self, m: &Message, from: NodeId) -> Result<(), String> {
        let raft = &self.raw.raft;
        if m.from != from {
            return Err(format!(
                "message claims sender {} in an envelope from {from}",
                m.from
            ));
        }
        if m.to != raft.id {
            return Err(format!("message for {} delivered to {}", m.to, raft.id));
        }
        // raft-rs does unchecked arithmetic on terms and indexes; no real log gets near 2^62.
        let md = m.get_snapshot().get_metadata();
        let fields = [
            m.term,
            m.index,
            m.log_term,
            m.commit,
            m.reject_hint,
            md.index,
            md.term,
        ];
        let entries = m.get_entries().iter().flat_map(|e| [e.index, e.term]);
        if fields.into_iter().chain(entries).any(|v| v >= LIMIT) {
            return Err("term or index out of range".into());
        }
        if m.term == 0 {
            // raft-rs treats term 0 as a local message and skips its term checks.
            return Err("term 0".into());
        }
        let log = &raft.raft_log;
        let live = m.term >= raft.term; // raft-rs drops lower-term messages before handling
        match m.get_msg_type() {
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum => Err("local message type from a peer".into()),
            MessageType::MsgPropose => Err("proposal forwarding is disabled".into()),
            MessageType::MsgReadIndex | MessageType::MsgReadIndexResp => {
                Err("read-index is not supported".into())
            }
            MessageType::MsgTransferLeader => Err("remote transfer requests are refused".into()),
            MessageType::MsgAppend => {
                // raft-rs answers term 0 for any index outside the log, so a zero log term
                // would "match" a position we do not have.
                if m.log_term > m.term || (m.log_term == 0 && m.index != 0) {
                    return Err(format!("append with log term {}", m.log_term));
                }
                let mut prev_term = m.log_term;
                for (expect, e) in (m.index + 1..).zip(m.get_entries()) {
                    if e.index != expect {
                        return Err(format!(
                            "append entry {} where {} expected",
                            e.index, expect
                        ));
                    }
                    if e.term == 0 || e.term < prev_term || e.term > m.term {
                        return Err(format!("append entry term {} out of order", e.term));
                    }
                    prev_term = e.term;
                }
                if live && m.index >= log.committed && !log.match_term(m.index, m.log_term) {
                    // A rejection walks the log down to a term <= log_term; it must stop at the
                    // log start, which holds a committed entry no leader can be missing.
                    let start = log.first_index() - 1;
                    if log.term(start).map_or(true, |t| t > m.log_term) {
                        return Err("append conflicts below the log start".into());
                    }
                }
                Ok(())
            }
            MessageType::MsgHeartbeat => {
                if live && m.commit > log.last_index() {
                    return Err(format!(
                        "heartbeat commit {} beyond last index {}",
                        m.commit,
                        log.last_index()
                    ));
                }
                Ok(())
            }
            MessageType::MsgAppendResponse => {
                if self.is_leader() && m.term == raft.term {
                    if m.index > log.last_index() {
                        return Err(format!("append response for unknown index {}", m.index));
                    }
                    if m.reject && m.reject_hint > m.index {
                        return Err("reject hint above the rejected index".into());
                    }
                }
                Ok(())
            }
            MessageType::MsgSnapshot => {
                let meta = m.get_snapshot().get_metadata();
                if meta.index == 0 || meta.term == 0 || meta.term > m.term {
                    return Err("snapshot with invalid index or term".into());
                }
                let cs = meta.get_conf_state();
                let membership = membership_from_pb(cs);
                membership
                    .validate()
                    .map_err(|e| format!("snapshot membership: {e}"))?;
                let listed = cs.get_voters().len()
                    + cs.get_learners().len()
                    + cs.get_voters_outgoing().len()
                    + cs.get_learners_next().len();
                let distinct = membership.voters.len()
                    + membership.learners.len()
                    + membership.voters_outgoing.len()
                    + membership.learners_next.len();
                if listed != distinct {
                    return Err("snapshot membership lists a node twice".into());
                }
                Ok(())
            }
            MessageType::MsgRequestVote
            | MessageType::MsgRequestVoteResponse
            | MessageType::MsgRequestPreVote
            | MessageType::MsgRequestPreVoteResponse
            | MessageType::MsgHeartbeatResponse
            | MessageType::MsgTimeoutNow => Ok(()),
        }
    }
}
