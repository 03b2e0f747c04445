//! Private glue between our types and raft-rs: the `raft::Storage` implementation over a
//! [`LogStore`], and conversions of entries, hard state and membership.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::rc::Rc;

use raft::eraftpb::{self, ConfState, EntryType};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::store::{LogStore, StoreError};
use crate::types::{EntryKind, GroupId, HardState, LogEntry, Membership};

/// Reads that answered "loading" and wait for the store (raft-rs async fetch).
#[derive(Default)]
pub(crate) struct Fetches {
    /// raft-rs contexts to hand back with `on_entries_fetched`.
    pub(crate) waiting: RefCell<Vec<GetEntriesContext>>,
    /// `LogStore::loads_completed` when the oldest waiting read missed.
    pub(crate) loads_at_miss: Cell<u64>,
}

/// What raft-rs reads through `raft::Storage`: the group's [`LogStore`] plus the applied
/// index and configuration the driver maintains.
pub(crate) struct RaftStore<S> {
    pub(crate) store: S,
    /// Hard state handed to raft-rs when the group is opened.
    pub(crate) initial_hard_state: HardState,
    /// Configuration as of `applied`.
    pub(crate) conf_state: ConfState,
    /// Highest index whose entry has been applied (delivered as committed).
    pub(crate) applied: u64,
    /// The group (for the driver's registry of waiting reads).
    pub(crate) group: GroupId,
    /// Reads waiting for the store to load entries.
    pub(crate) fetches: Fetches,
    /// The driver's set of groups with waiting reads.
    pub(crate) fetching: Rc<RefCell<BTreeSet<GroupId>>>,
}

fn to_raft_err(e: StoreError) -> raft::Error {
    raft::Error::Store(match e {
        StoreError::Compacted(_) => StorageError::Compacted,
        StoreError::Unavailable(_) => StorageError::Unavailable,
        // Only reads that may wait see `LogTemporarilyUnavailable` (see `entries`); anywhere
        // else a load means the store broke its contract and raft-rs stops.
        other => StorageError::Other(Box::new(other)),
    })
}

impl<S: LogStore> raft::Storage for RaftStore<S> {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: hard_state_to_pb(&self.initial_hard_state),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<eraftpb::Entry>> {
        let max = max_size.into().unwrap_or(u64::MAX);
        match self.store.entries(low, high, max) {
            Ok(entries) => Ok(entries.iter().map(entry_to_pb).collect()),
            Err(StoreError::Loading(_)) if context.can_async() => {
                // raft-rs async fetch: it retries this send once told the entries are there
                // (`RawNode::on_entries_fetched`, called by the driver after a load).
                let mut waiting = self.fetches.waiting.borrow_mut();
                if waiting.is_empty() {
                    self.fetches.loads_at_miss.set(self.store.loads_completed());
                }
                waiting.push(context);
                self.fetching.borrow_mut().insert(self.group);
                Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
            }
            Err(e) => Err(to_raft_err(e)),
        }
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.store.term(idx).map_err(to_raft_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.store.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.store.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<eraftpb::Snapshot> {
        // A snapshot is "the log starts after `applied`" plus whatever the store transfers.
        // Any failure is reported as temporarily unavailable: raft-rs retries later, while
        // any other error would make it panic.
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let index = self.applied;
        if index < request_index || index == 0 {
            return Err(unavailable());
        }
        let term = self.store.term(index).map_err(|_| unavailable())?;
        let data = self
            .store
            .snapshot_payload(index)
            .map_err(|_| unavailable())?;
        let mut snap = eraftpb::Snapshot {
            data,
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

/// Our entry to raft-rs's. Leader no-ops are raft-rs normal entries with empty data.
pub(crate) fn entry_to_pb(e: &LogEntry) -> eraftpb::Entry {
    let mut out = eraftpb::Entry::default();
    out.set_entry_type(match e.kind {
        EntryKind::Data | EntryKind::LeaderNoop => EntryType::EntryNormal,
        EntryKind::ConfChange => EntryType::EntryConfChange,
        EntryKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
    });
    out.index = e.index;
    out.term = e.term;
    out.data = e.payload.clone();
    out
}

/// raft-rs's entry to ours. Empty normal entries are leader no-ops (our proposals are never
/// empty); any entry context is dropped (we never set one).
pub(crate) fn entry_from_pb(e: &eraftpb::Entry) -> LogEntry {
    let kind = match e.get_entry_type() {
        EntryType::EntryNormal if e.data.is_empty() => EntryKind::LeaderNoop,
        EntryType::EntryNormal => EntryKind::Data,
        EntryType::EntryConfChange => EntryKind::ConfChange,
        EntryType::EntryConfChangeV2 => EntryKind::ConfChangeV2,
    };
    LogEntry {
        index: e.index,
        term: e.term,
        kind,
        payload: e.data.clone(),
    }
}

pub(crate) fn hard_state_to_pb(hs: &HardState) -> eraftpb::HardState {
    eraftpb::HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
        ..Default::default()
    }
}

pub(crate) fn hard_state_from_pb(hs: &eraftpb::HardState) -> HardState {
    HardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    }
}

pub(crate) fn membership_to_pb(m: &Membership) -> ConfState {
    let mut cs = ConfState::default();
    cs.set_voters(m.voters.iter().copied().collect());
    cs.set_learners(m.learners.iter().copied().collect());
    cs.set_voters_outgoing(m.voters_outgoing.iter().copied().collect());
    cs.set_learners_next(m.learners_next.iter().copied().collect());
    cs.auto_leave = m.auto_leave;
    cs
}

pub(crate) fn membership_from_pb(cs: &ConfState) -> Membership {
    let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<_>>();
    Membership {
        voters: set(cs.get_voters()),
        learners: set(cs.get_learners()),
        voters_outgoing: set(cs.get_voters_outgoing()),
        learners_next: set(cs.get_learners_next()),
        auto_leave: cs.auto_leave,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Raft §5.3 and §6: an entry keeps its index, term and kind — data, the leader no-op
    /// (§5.4.2, §8) and both kinds of configuration entry (§6) — through raft-rs's representation.
    #[test]
    fn entry_kinds_round_trip() {
        for (kind, payload) in [
            (EntryKind::Data, Bytes::from_static(b"batch")),
            (EntryKind::LeaderNoop, Bytes::new()),
            (EntryKind::ConfChange, Bytes::from_static(b"cc")),
            (EntryKind::ConfChangeV2, Bytes::new()),
        ] {
            let e = LogEntry {
                index: 5,
                term: 2,
                kind,
                payload,
            };
            assert_eq!(entry_from_pb(&entry_to_pb(&e)), e);
        }
    }

    /// Raft §6: a joint configuration (incoming and outgoing voters, learners) survives the
    /// conversion to raft-rs and back.
    #[test]
    fn membership_round_trips() {
        let m = Membership {
            voters: [1, 2].into(),
            learners: [4].into(),
            voters_outgoing: [1, 2, 3].into(),
            learners_next: [3].into(),
            auto_leave: true,
        };
        assert_eq!(membership_from_pb(&membership_to_pb(&m)), m);
        assert!(m.validate().is_ok());
    }
}
