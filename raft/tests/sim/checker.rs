//! Safety invariants, checked after every simulator step. Each names the Raft paper section
//! (Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm", 2014) whose
//! guarantee it checks.

use std::collections::BTreeMap;

use spate_raft::mem::LogImage;
use spate_raft::wire::{MessageKind, MessageSummary};
use spate_raft::{GroupId, GroupStatus, LogEntry, NodeId, Role};

use crate::disk::DiskView;

/// A hash of an entry's content (kind and payload), for compact records.
pub fn entry_hash(e: &LogEntry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(e.kind.code());
    for b in e.payload.iter() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One committed entry, as first observed.
#[derive(Clone, Copy, Debug)]
struct CommittedRecord {
    term: u64,
    hash: u64,
    /// The observer's term when it saw the entry committed: the entry was committed in this
    /// term or earlier, so every leader of a *later* term must hold it (§5.4).
    observed_term: u64,
    observer: NodeId,
}

/// What the checker remembers per (node, group) within one incarnation of the node.
#[derive(Clone, Copy, Debug, Default)]
struct Replica {
    commit: u64,
    applied: u64,
    term: u64,
    role: Option<Role>,
}

/// The global record and the invariants over it.
pub struct Checker {
    /// (group, index) → the committed entry (§5.4.3 state machine safety).
    committed: BTreeMap<(GroupId, u64), CommittedRecord>,
    /// (group, term) → the leader of that term (§5.2 election safety).
    leaders: BTreeMap<(GroupId, u64), NodeId>,
    /// (group, index, term) → (content hash, term of the previous entry) (§5.3 log matching:
    /// an (index, term) pair determines the entry and, inductively, the whole prefix).
    entry_ids: BTreeMap<(GroupId, u64, u64), (u64, u64)>,
    replicas: BTreeMap<(NodeId, GroupId), Replica>,
    /// (node, group) → highest term the node put on the wire (pre-votes excluded).
    sent_term: BTreeMap<(NodeId, GroupId), u64>,
    /// (node, group, term) → the candidate the node granted its vote to.
    votes: BTreeMap<(NodeId, GroupId, u64), NodeId>,
    /// Check at every send that the sender's durable state backs the message (§5.1: persist
    /// before responding). Off for the "consequences only" self-test.
    pub check_durable_at_send: bool,
    /// The first violation, if any.
    pub violation: Option<String>,
    /// Committed entries recorded.
    pub committed_count: usize,
}

impl Checker {
    pub fn new() -> Self {
        Checker {
            committed: BTreeMap::new(),
            leaders: BTreeMap::new(),
            entry_ids: BTreeMap::new(),
            replicas: BTreeMap::new(),
            sent_term: BTreeMap::new(),
            votes: BTreeMap::new(),
            check_durable_at_send: true,
            violation: None,
            committed_count: 0,
        }
    }

    fn fail(&mut self, msg: String) {
        if self.violation.is_none() {
            self.violation = Some(msg);
        }
    }

    /// A node crashed: its volatile view starts over.
    pub fn on_crash(&mut self, node: NodeId) {
        self.replicas.retain(|(n, _), _| *n != node);
    }

    /// A node restarted and reopened `status`: its durable hard state must not have regressed
    /// below anything it said on the wire before the crash (§5.1, Figure 2 "persistent state").
    pub fn on_restart(&mut self, node: NodeId, status: &GroupStatus) {
        let g = status.group;
        if let Some(&sent) = self.sent_term.get(&(node, g)) {
            if status.term < sent {
                self.fail(format!(
                    "§5.1 hard state regressed across a crash: node {node} group {g} restarted \
                     at term {} but had sent messages of term {sent}",
                    status.term
                ));
            }
        }
        if let Some(&cand) = self.votes.get(&(node, g, status.term)) {
            if status.vote != cand {
                self.fail(format!(
                    "§5.2 vote lost across a crash: node {node} group {g} granted its term-{} \
                     vote to {cand} but restarted with vote {}",
                    status.term, status.vote
                ));
            }
        }
    }

    /// Messages a node sent (decoded from the wire before any network fault).
    pub fn on_sent(&mut self, from: NodeId, msgs: &[MessageSummary], disk: &dyn DiskView) {
        for m in msgs {
            if matches!(
                m.kind,
                MessageKind::RequestPreVote | MessageKind::RequestPreVoteResponse
            ) {
                continue; // pre-vote messages carry a prospective term, never persisted
            }
            let key = (from, m.group);
            let t = self.sent_term.entry(key).or_insert(0);
            *t = (*t).max(m.term);
            if m.kind == MessageKind::RequestVoteResponse && !m.reject {
                match self.votes.get(&(from, m.group, m.term)) {
                    Some(&prev) if prev != m.to => self.fail(format!(
                        "§5.2 election safety: node {from} group {} voted for both {prev} and {} \
                         in term {}",
                        m.group, m.to, m.term
                    )),
                    _ => {
                        self.votes.insert((from, m.group, m.term), m.to);
                    }
                }
            }
            if self.check_durable_at_send {
                self.check_backed_by_disk(from, m, disk);
            }
        }
    }

    /// §5.1: "Updated on stable storage before responding to RPCs". Every term a node sends
    /// must be durable there, a vote grant must be durable, and an append acknowledgement
    /// for index i means the durable log reaches i.
    fn check_backed_by_disk(&mut self, from: NodeId, m: &MessageSummary, disk: &dyn DiskView) {
        let hs = disk.durable_hard_state(m.group);
        if hs.term < m.term {
            self.fail(format!(
                "§5.1 node {from} group {} sent {:?} of term {} while its durable term is {}",
                m.group, m.kind, m.term, hs.term
            ));
        }
        if m.kind == MessageKind::RequestVoteResponse
            && !m.reject
            && hs.term == m.term
            && hs.vote != m.to
        {
            self.fail(format!(
                "§5.1 node {from} group {} granted its vote to {} before persisting it (durable \
                 vote {})",
                m.group, m.to, hs.vote
            ));
        }
        if m.kind == MessageKind::AppendResponse && !m.reject {
            let Some(last) = disk.durable_last(m.group) else {
                return;
            };
            if last < m.index {
                self.fail(format!(
                    "§5.1 node {from} group {} acknowledged index {} but its durable log ends at \
                     {last}",
                    m.group, m.index
                ));
            }
        }
    }

    /// Committed entries delivered to the application (the high watermark moved).
    pub fn on_committed(&mut self, node: NodeId, group: GroupId, entries: &[LogEntry], term: u64) {
        let r = self.replicas.entry((node, group)).or_default();
        let mut prev_applied = r.applied;
        for e in entries {
            if e.index <= prev_applied {
                // Redelivery is allowed only after a restart, which resets the record.
                self.fail(format!(
                    "high watermark not monotonic: node {node} group {group} delivered index \
                     {} after {prev_applied}",
                    e.index
                ));
                return;
            }
            prev_applied = e.index;
            self.record_commit(node, group, e, term);
        }
        if let Some(r) = self.replicas.get_mut(&(node, group)) {
            r.applied = prev_applied;
        }
    }

    /// §5.4.3: a committed (index) has one entry forever, on every node.
    fn record_commit(&mut self, node: NodeId, group: GroupId, e: &LogEntry, term: u64) {
        let hash = entry_hash(e);
        match self.committed.get(&(group, e.index)) {
            Some(rec) if rec.term != e.term || rec.hash != hash => {
                let rec = *rec;
                self.fail(format!(
                    "§5.4.3 committed entry changed: group {group} index {} was committed as \
                     term {} (seen by node {}) but node {node} has it committed as term {}",
                    e.index, rec.term, rec.observer, e.term
                ));
            }
            Some(_) => {}
            None => {
                self.committed_count += 1;
                self.committed.insert(
                    (group, e.index),
                    CommittedRecord {
                        term: e.term,
                        hash,
                        observed_term: term,
                        observer: node,
                    },
                );
            }
        }
    }

    /// A snapshot was installed: what it transferred must be the committed entries (§7).
    pub fn on_snapshot(&mut self, node: NodeId, group: GroupId, term: u64, disk: &dyn DiskView) {
        for e in disk.transferred(group) {
            self.record_commit(node, group, &e, term);
        }
    }

    /// Checks one replica after a step.
    pub fn check_replica(&mut self, node: NodeId, status: &GroupStatus, disk: &dyn DiskView) {
        let g = status.group;
        let prev = self.replicas.get(&(node, g)).copied().unwrap_or_default();

        // Per-incarnation monotonicity of term and commit index.
        if status.term < prev.term {
            self.fail(format!(
                "term went backwards on node {node} group {g}: {} -> {}",
                prev.term, status.term
            ));
        }
        if status.commit < prev.commit {
            self.fail(format!(
                "commit index went backwards on node {node} group {g}: {} -> {}",
                prev.commit, status.commit
            ));
        }

        // §5.3 log matching, incrementally over the part of the durable log that changed.
        // Durable logs, because a crash may legitimately erase a volatile suffix that never
        // left the node (e.g. a single-voter leader whose term was not yet durable restarts
        // and is elected again in the same term); whatever left the node is durable on the
        // receiver before it acknowledges, so nothing that matters escapes this check.
        if let Some((from, log)) = disk.take_changed_durable(g) {
            self.check_log_matching(node, g, &log, from);
        }

        // §5.4.3 every entry up to the commit index is the committed one.
        if status.commit > prev.commit {
            let from = (prev.commit + 1).max(status.first_index);
            for e in disk.visible_entries_from(g, from) {
                if e.index > status.commit {
                    break;
                }
                self.record_commit(node, g, &e, status.term);
            }
        }

        // §6 (as raft-rs implements it, applying membership on commit): a replica is at most
        // one configuration behind its log, i.e. at most one membership entry lies beyond its
        // commit index. Quorums of successive configurations overlap; of configurations two
        // apart they need not, so a replica further behind could win a stale election.
        let pending_conf = disk.membership_entries_after(g, status.commit);
        if pending_conf > 1 {
            self.fail(format!(
                "§6 node {node} group {g} is {pending_conf} configurations behind its log \
                 (commit {})",
                status.commit
            ));
        }

        // §5.2 election safety and §5.4 leader completeness.
        if status.role == Role::Leader {
            match self.leaders.get(&(g, status.term)) {
                Some(&other) if other != node => self.fail(format!(
                    "§5.2 election safety: group {g} has two leaders in term {}: {other} and {node}",
                    status.term
                )),
                Some(_) => {}
                None => {
                    self.leaders.insert((g, status.term), node);
                }
            }
            if prev.role != Some(Role::Leader) || prev.term != status.term {
                self.check_leader_completeness(node, status, disk);
            }
        }

        self.replicas.insert(
            (node, g),
            Replica {
                commit: status.commit,
                applied: prev.applied,
                term: status.term,
                role: Some(status.role),
            },
        );
    }

    fn check_log_matching(&mut self, node: NodeId, g: GroupId, log: &LogImage, from: u64) {
        let start = log.start.index + 1;
        let from = from.max(start);
        let mut prev_term = if from == start {
            log.start.term
        } else {
            log.get(from - 1).map_or(0, |e| e.term)
        };
        for e in log.entries.iter().skip((from - start) as usize) {
            let id = (g, e.index, e.term);
            let value = (entry_hash(e), prev_term);
            match self.entry_ids.get(&id) {
                Some(&seen) if seen != value => {
                    self.fail(format!(
                        "§5.3 log matching: node {node} group {g} has index {} term {} with a \
                         different {} than another log",
                        e.index,
                        e.term,
                        if seen.0 != value.0 {
                            "content"
                        } else {
                            "preceding entry"
                        }
                    ));
                    return;
                }
                Some(_) => {}
                None => {
                    self.entry_ids.insert(id, value);
                }
            }
            prev_term = e.term;
        }
    }

    /// §5.4 leader completeness: a leader of term t holds every entry committed before t.
    fn check_leader_completeness(
        &mut self,
        node: NodeId,
        status: &GroupStatus,
        disk: &dyn DiskView,
    ) {
        let g = status.group;
        let log = disk.visible_log(g);
        let mut missing = None;
        for ((_, index), rec) in self.committed.range((g, 0)..=(g, u64::MAX)) {
            if rec.observed_term >= status.term || *index <= log.start.index {
                continue;
            }
            match log.get(*index) {
                Some(e) if e.term == rec.term && entry_hash(e) == rec.hash => {}
                other => {
                    missing = Some((*index, rec.term, other.map(|e| e.term)));
                    break;
                }
            }
        }
        if let Some((index, term, have)) = missing {
            self.fail(format!(
                "§5.4 leader completeness: node {node} became leader of group {g} in term {} \
                 without committed entry {index} (term {term}); it has {have:?}",
                status.term
            ));
        }
    }
}
