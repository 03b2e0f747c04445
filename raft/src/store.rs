//! The log-store seam: one instance per group (partition), holding that group's Raft log and
//! its small durable metadata.
//!
//! The contract mirrors an append-only segment log with a separate metadata record:
//!
//! * **Writes are visible at once, durable later.** `append`, `truncate_suffix`,
//!   `compact_prefix`, `install_snapshot`, `set_hard_state` and `set_membership` change what
//!   the read methods return immediately (the driver hands these reads to raft-rs), but they
//!   survive a crash only once a [`SyncToken`] issued *after* them has completed.
//! * **Syncs are asynchronous and ordered.** [`LogStore::sync`] starts making everything
//!   written so far durable and returns a token; [`LogStore::synced`] reports the highest
//!   completed token. Completing token `t` implies every token `< t` completed. The driver
//!   polls `synced` from [`crate::Driver::process`], so the shard loop just has to call
//!   `process` after a sync finishes.
//! * **A crash keeps a prefix.** After a crash the store reopens with everything covered by a
//!   completed sync, plus possibly some prefix of what came after (a torn tail); the entry log
//!   and the metadata record may keep different prefixes. The driver copes with both (it does
//!   not trust the stored commit index, and a snapshot's membership must be durable
//!   atomically with its log reset).
//! * **Reads may be asynchronous below the applied index.** A store that keeps only part of
//!   its log in memory (the segment-log adapter, [`crate::segment`]) answers [`LogStore::entries`]
//!   with [`StoreError::Loading`] for entries it must read from disk, starts loading them and
//!   counts completed loads in [`LogStore::loads_completed`]; the driver retries then (raft-rs
//!   "async fetch", used only when sending appends to followers). Entries above the applied
//!   index (reported with [`LogStore::on_applied`]) must always be served at once: raft-rs
//!   reads committed entries and pending configuration changes synchronously.
//!
//! One entry is one opaque payload (one Kafka batch for the segment-log adapter) with term,
//! index and [`EntryKind`], so the segment-log adapter can write leader no-ops and
//! configuration entries as Kafka control batches.

use bytes::Bytes;

use crate::types::{EntryKind, HardState, LogEntry, LogStart, Membership, NodeId, SnapshotMeta};

/// Whether a store can install a snapshot now ([`LogStore::prepare_snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotPrep {
    /// Everything the install needs is here: hand the snapshot to Raft.
    Ready,
    /// The store is fetching what the snapshot needs (a segment transfer); ask again after
    /// its next progress notification.
    Pending,
    /// The transfer failed; drop the snapshot (the leader sends another later).
    Failed(String),
}

/// Identifies one [`LogStore::sync`] request. Tokens increase; `0` means "nothing".
pub type SyncToken = u64;

/// A log-store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The requested index is below the log start (compacted or replaced by a snapshot).
    #[error("index {0} is compacted")]
    Compacted(u64),
    /// The requested index is beyond the last entry.
    #[error("index {0} is beyond the last entry")]
    Unavailable(u64),
    /// The request is inconsistent with the log (a gap, an out-of-range truncation, ...).
    #[error("invalid log operation: {0}")]
    Invalid(String),
    /// The device failed; the group must stop.
    #[error("i/o error: {0}")]
    Io(String),
    /// The entry at this index is on disk only; the store is loading it (see the module
    /// documentation). Never returned for indexes above the applied index.
    #[error("index {0} is being loaded from disk")]
    Loading(u64),
}

/// What a store holds when a group is opened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    /// Last persisted hard state.
    pub hard_state: HardState,
    /// The newest membership the store knows: the one written last with
    /// [`LogStore::set_membership`] or the one carried by the last installed snapshot,
    /// whichever took effect at the higher index (after a crash the two records may have
    /// survived to different points).
    pub membership: Membership,
    /// Index at which `membership` took effect (0 for none).
    pub membership_index: u64,
    /// A durable applied checkpoint (0 for none): every entry up to it is committed, was
    /// applied (so every membership change up to it is in `membership`) and is durable in
    /// this store's log. The driver restarts from it instead of replaying the log from the
    /// last membership change. A store may only report an index whose entries it made durable
    /// *before* the checkpoint itself (the in-memory store reports none).
    pub applied: u64,
}

/// The per-group log store seam. See the module documentation for the durability contract.
pub trait LogStore {
    /// The durable state to start from (after a restart: what survived the crash).
    fn initial_state(&self) -> StoredState;

    /// Where the log starts: the last index no longer in the log and its term. `index == 0`
    /// for a log that was never compacted.
    fn log_start(&self) -> LogStart;

    /// Index of the first entry in the log (`log_start().index + 1`).
    fn first_index(&self) -> u64 {
        self.log_start().index + 1
    }

    /// Index of the last entry (`first_index() - 1` when the log is empty).
    fn last_index(&self) -> u64;

    /// Term of the entry at `index`; valid for `first_index() - 1 ..= last_index()`.
    fn term(&self, index: u64) -> Result<u64, StoreError>;

    /// Entries `lo..hi`, stopping early once `max_bytes` of payload are gathered (but always
    /// returning at least one entry when the range is not empty).
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>, StoreError>;

    /// Appends entries; `entries[0].index` must be `last_index() + 1` (the driver truncates a
    /// conflicting suffix first).
    fn append(&mut self, entries: &[LogEntry]) -> Result<(), StoreError>;

    /// Removes every entry with index `>= from` (a conflicting suffix from an old leader,
    /// Raft §5.3). Never called below the commit index.
    fn truncate_suffix(&mut self, from: u64) -> Result<(), StoreError>;

    /// Drops entries up to and including `through` (retention). `through` is committed and
    /// applied; its term is kept for matching.
    fn compact_prefix(&mut self, through: u64) -> Result<(), StoreError>;

    /// Replaces the whole log with "the log starts after `meta.index`" (Raft §7), using the
    /// payload the leader's store produced with [`LogStore::snapshot_payload`]; also records
    /// `meta.membership` as taking effect at `meta.index`. The membership must become durable
    /// atomically with the log reset (a crash keeps both or neither).
    fn install_snapshot(&mut self, meta: &SnapshotMeta, payload: Bytes) -> Result<(), StoreError>;

    /// What a follower behind the log start needs besides the metadata, as of `index` (the
    /// abstract "segment transfer"; the in-memory store sends its retained entries).
    fn snapshot_payload(&self, index: u64) -> Result<Bytes, StoreError>;

    /// Called before a snapshot from node `from` is handed to Raft: a store that must fetch
    /// data to install it (the segment store's segment transfer) starts fetching and answers
    /// [`SnapshotPrep::Pending`] until it holds all of it, durably and apart from its log, so
    /// a transfer that does not complete costs nothing. The default needs nothing.
    fn prepare_snapshot(
        &mut self,
        _from: NodeId,
        _meta: &SnapshotMeta,
        _payload: &Bytes,
    ) -> SnapshotPrep {
        SnapshotPrep::Ready
    }

    /// Indexes of the membership entries after `after`, in log order. Read once when a group
    /// is opened. The default reads the entries; an adapter that indexes entry kinds (the
    /// segment log's control batches) should answer from its index.
    fn membership_indexes(&self, after: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        let last = self.last_index();
        let mut next = after.saturating_add(1).max(self.first_index());
        while next <= last {
            let chunk = self.entries(next, last.min(next.saturating_add(1023)) + 1, u64::MAX)?;
            let Some(end) = chunk.last().map(|e| e.index) else {
                break;
            };
            out.extend(
                chunk
                    .iter()
                    .filter(|e| e.kind.is_membership())
                    .map(|e| e.index),
            );
            next = end + 1;
        }
        Ok(out)
    }

    /// Records the hard state.
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StoreError>;

    /// Records the membership that took effect at `index` (a committed configuration entry).
    fn set_membership(&mut self, index: u64, membership: &Membership) -> Result<(), StoreError>;

    /// Starts making every write so far durable; returns its token.
    fn sync(&mut self) -> Result<SyncToken, StoreError>;

    /// Highest completed sync token.
    fn synced(&self) -> SyncToken;

    /// Entries up to `index` were applied (delivered as committed). A store may drop their
    /// payloads from memory once they are durable (and load them again on demand).
    fn on_applied(&mut self, _index: u64) {}

    /// Number of asynchronous loads completed (see [`StoreError::Loading`]); the driver
    /// retries reads that answered `Loading` once this grows.
    fn loads_completed(&self) -> u64 {
        0
    }

    /// A failure of the store's background work (a failed fsync, a metadata write error):
    /// the group must stop. Checked by the driver whenever it looks for completed syncs.
    fn failure(&self) -> Option<StoreError> {
        None
    }
}

/// A boxed store is a store (the simulator runs the in-memory and the segment-log stores
/// behind one driver type).
impl<S: LogStore + ?Sized> LogStore for Box<S> {
    fn initial_state(&self) -> StoredState {
        (**self).initial_state()
    }
    fn log_start(&self) -> LogStart {
        (**self).log_start()
    }
    fn first_index(&self) -> u64 {
        (**self).first_index()
    }
    fn last_index(&self) -> u64 {
        (**self).last_index()
    }
    fn term(&self, index: u64) -> Result<u64, StoreError> {
        (**self).term(index)
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>, StoreError> {
        (**self).entries(lo, hi, max_bytes)
    }
    fn append(&mut self, entries: &[LogEntry]) -> Result<(), StoreError> {
        (**self).append(entries)
    }
    fn truncate_suffix(&mut self, from: u64) -> Result<(), StoreError> {
        (**self).truncate_suffix(from)
    }
    fn compact_prefix(&mut self, through: u64) -> Result<(), StoreError> {
        (**self).compact_prefix(through)
    }
    fn install_snapshot(&mut self, meta: &SnapshotMeta, payload: Bytes) -> Result<(), StoreError> {
        (**self).install_snapshot(meta, payload)
    }
    fn snapshot_payload(&self, index: u64) -> Result<Bytes, StoreError> {
        (**self).snapshot_payload(index)
    }
    fn prepare_snapshot(
        &mut self,
        from: NodeId,
        meta: &SnapshotMeta,
        payload: &Bytes,
    ) -> SnapshotPrep {
        (**self).prepare_snapshot(from, meta, payload)
    }
    fn membership_indexes(&self, after: u64) -> Result<Vec<u64>, StoreError> {
        (**self).membership_indexes(after)
    }
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StoreError> {
        (**self).set_hard_state(hard_state)
    }
    fn set_membership(&mut self, index: u64, membership: &Membership) -> Result<(), StoreError> {
        (**self).set_membership(index, membership)
    }
    fn sync(&mut self) -> Result<SyncToken, StoreError> {
        (**self).sync()
    }
    fn synced(&self) -> SyncToken {
        (**self).synced()
    }
    fn on_applied(&mut self, index: u64) {
        (**self).on_applied(index)
    }
    fn loads_completed(&self) -> u64 {
        (**self).loads_completed()
    }
    fn failure(&self) -> Option<StoreError> {
        (**self).failure()
    }
}

/// A compact binary encoding of entries, used by [`LogStore::snapshot_payload`] of the
/// in-memory store; each entry is `index u64, term u64, kind u8, len u32, payload`.
pub fn encode_entries(entries: &[LogEntry]) -> Bytes {
    let size: usize = entries.iter().map(|e| 21 + e.payload.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.term.to_le_bytes());
        out.push(e.kind.code());
        out.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.payload);
    }
    Bytes::from(out)
}

/// The inverse of [`encode_entries`]; `None` when the bytes are malformed.
pub fn decode_entries(bytes: &Bytes) -> Option<Vec<LogEntry>> {
    let mut r = crate::wire::Reader::new(bytes.clone());
    let count = r.u32().ok()? as usize;
    // Each entry takes at least 21 bytes: a lying count cannot make us allocate.
    if count > r.remaining() / 21 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let index = r.u64().ok()?;
        let term = r.u64().ok()?;
        let kind = EntryKind::from_code(r.u8().ok()?)?;
        let len = r.u32().ok()? as usize;
        let payload = r.bytes(len).ok()?;
        out.push(LogEntry {
            index,
            term,
            kind,
            payload,
        });
    }
    r.finish().ok()?;
    Some(out)
}
