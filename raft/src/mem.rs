//! An in-memory [`LogStore`] whose unsynced writes can be lost: the stand-in for the segment
//! log until the real adapter exists, and the simulator's disk.
//!
//! A [`MemDisk`] is one node's disk; it outlives the driver, so a simulated crash is "drop the
//! driver, call [`MemDisk::crash`], open a new driver over the same disk". Each group has two
//! independent append-only streams, like the real design (segment files for entries, the
//! metadata store for hard state and membership):
//!
//! * the **log stream**: append, truncate suffix, compact prefix, install snapshot;
//! * the **meta stream**: hard state, membership.
//!
//! Writes apply to a *visible* image at once and are queued as pending operations. A sync
//! returns a token; completing a token (automatically, or by the simulator after a simulated
//! latency) applies the pending operations up to it to the *durable* image. A crash keeps the
//! durable image plus a random prefix of each stream's pending operations (optionally cutting
//! the next append in the middle: a torn tail) and forgets everything else.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use bytes::Bytes;

use crate::rng::Prng;
use crate::store::{decode_entries, encode_entries, LogStore, StoreError, StoredState, SyncToken};
use crate::types::{GroupId, HardState, LogEntry, LogStart, Membership, SnapshotMeta};

/// The Raft log of one group: where it starts and the entries after that.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogImage {
    /// Last index not in `entries` (compacted or covered by a snapshot).
    pub start: LogStart,
    /// Membership carried by the last installed snapshot, with its index.
    pub installed_membership: (u64, Membership),
    /// Entries `start.index + 1 ..`.
    pub entries: Vec<LogEntry>,
    /// Entries that arrived inside snapshots (the "segment transfer"): kept so that a checker
    /// can verify what a follower received below its log start.
    pub transferred: Vec<LogEntry>,
}

impl LogImage {
    fn last_index(&self) -> u64 {
        self.start.index + self.entries.len() as u64
    }

    /// The entry at `index`, if it is in the log.
    pub fn get(&self, index: u64) -> Option<&LogEntry> {
        if index <= self.start.index {
            return None;
        }
        self.entries.get((index - self.start.index - 1) as usize)
    }

    fn term(&self, index: u64) -> Result<u64, StoreError> {
        if index == self.start.index {
            return Ok(self.start.term);
        }
        if index < self.start.index {
            return Err(StoreError::Compacted(index));
        }
        self.get(index)
            .map(|e| e.term)
            .ok_or(StoreError::Unavailable(index))
    }

    fn check_append(&self, entries: &[LogEntry]) -> Result<(), StoreError> {
        for (next, e) in (self.last_index() + 1..).zip(entries) {
            if e.index != next {
                return Err(StoreError::Invalid(format!(
                    "append of index {} where {} was expected",
                    e.index, next
                )));
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &LogOp) {
        match op {
            LogOp::Append(entries) => self.entries.extend(entries.iter().cloned()),
            LogOp::Truncate(from) => {
                let keep = from.saturating_sub(self.start.index + 1) as usize;
                self.entries.truncate(keep);
            }
            LogOp::Compact(through) => {
                if *through > self.start.index {
                    let n = ((through - self.start.index) as usize).min(self.entries.len());
                    if let Some(last) = n.checked_sub(1).and_then(|i| self.entries.get(i)) {
                        self.start = LogStart {
                            index: last.index,
                            term: last.term,
                        };
                    }
                    self.entries.drain(..n);
                }
            }
            LogOp::Install(meta, transferred) => {
                self.start = LogStart {
                    index: meta.index,
                    term: meta.term,
                };
                self.installed_membership = (meta.index, meta.membership.clone());
                self.entries.clear();
                self.transferred.extend(transferred.iter().cloned());
            }
        }
    }
}

/// Hard state and membership of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MetaImage {
    hard_state: HardState,
    membership: Membership,
    membership_index: u64,
}

impl MetaImage {
    fn apply(&mut self, op: &MetaOp) {
        match op {
            MetaOp::HardState(hs) => self.hard_state = *hs,
            MetaOp::Membership(index, m) => {
                self.membership = m.clone();
                self.membership_index = *index;
            }
        }
    }
}

#[derive(Clone, Debug)]
enum LogOp {
    Append(Vec<LogEntry>),
    Truncate(u64),
    Compact(u64),
    Install(SnapshotMeta, Vec<LogEntry>),
}

#[derive(Clone, Debug)]
enum MetaOp {
    HardState(HardState),
    Membership(u64, Membership),
}

#[derive(Default)]
struct GroupDisk {
    durable_log: LogImage,
    durable_meta: MetaImage,
    log: LogImage,
    meta: MetaImage,
    pending_log: Vec<LogOp>,
    pending_meta: Vec<MetaOp>,
    /// Sync tokens not yet completed, with the pending-op counts they cover.
    marks: VecDeque<(SyncToken, usize, usize)>,
    next_token: SyncToken,
    synced: SyncToken,
    /// Lowest index whose durable entry changed since the last [`MemDisk::take_changed`].
    changed_from: Option<u64>,
}

impl GroupDisk {
    /// Applies `op` to the durable image, noting which indexes changed.
    fn make_durable(&mut self, op: &LogOp) {
        let from = match op {
            LogOp::Append(entries) => entries.first().map(|e| e.index),
            LogOp::Truncate(from) => Some(*from),
            LogOp::Compact(_) => None,
            LogOp::Install(meta, _) => Some(meta.index.min(self.durable_log.start.index + 1)),
        };
        if let Some(index) = from {
            self.changed_from = Some(self.changed_from.map_or(index, |c| c.min(index)));
        }
        self.durable_log.apply(op);
    }

    fn complete(&mut self, token: SyncToken) {
        let mut covered = None;
        while let Some(&(t, nl, nm)) = self.marks.front() {
            if t > token {
                break;
            }
            covered = Some((nl, nm));
            self.marks.pop_front();
        }
        let Some((nl, nm)) = covered else { return };
        let ops: Vec<LogOp> = self.pending_log.drain(..nl).collect();
        for op in &ops {
            self.make_durable(op);
        }
        for op in self.pending_meta.drain(..nm) {
            self.durable_meta.apply(&op);
        }
        for mark in &mut self.marks {
            mark.1 -= nl;
            mark.2 -= nm;
        }
        self.synced = self.synced.max(token);
    }

    /// Loses unsynced writes: keeps a random prefix of each stream (`rng`), or else all or
    /// none of each stream's unsynced writes (`keep`: log, metadata).
    fn crash(&mut self, rng: Option<&mut Prng>, torn: bool, keep: (bool, bool)) {
        let all = |keep: bool, n: usize| if keep { n } else { 0 };
        let (keep_log, keep_meta, torn_cut) = match rng {
            Some(rng) => (
                rng.below(self.pending_log.len() as u64 + 1) as usize,
                rng.below(self.pending_meta.len() as u64 + 1) as usize,
                // How much of the first lost append survives a torn write.
                torn.then(|| rng.next_u64()),
            ),
            None => (
                all(keep.0, self.pending_log.len()),
                all(keep.1, self.pending_meta.len()),
                None,
            ),
        };
        let mut kept: Vec<LogOp> = self.pending_log.drain(..).take(keep_log + 1).collect();
        if kept.len() > keep_log {
            let cut = kept.pop();
            if let (Some(LogOp::Append(entries)), Some(r)) = (cut, torn_cut) {
                let n = (r % entries.len() as u64) as usize;
                if n > 0 {
                    kept.push(LogOp::Append(entries[..n].to_vec()));
                }
            }
        }
        for op in &kept {
            self.make_durable(op);
        }
        for op in self.pending_meta.drain(..).take(keep_meta) {
            self.durable_meta.apply(&op);
        }
        self.marks.clear();
        self.log = self.durable_log.clone();
        self.meta = self.durable_meta.clone();
    }

    fn write_log(&mut self, op: LogOp, auto: bool) {
        self.log.apply(&op);
        if auto {
            self.make_durable(&op);
        } else {
            self.pending_log.push(op);
        }
    }

    fn write_meta(&mut self, op: MetaOp, auto: bool) {
        self.meta.apply(&op);
        if auto {
            self.durable_meta.apply(&op);
        } else {
            self.pending_meta.push(op);
        }
    }
}

#[derive(Default)]
struct DiskInner {
    groups: BTreeMap<GroupId, GroupDisk>,
    auto_sync: bool,
    sync_requests: Vec<(GroupId, SyncToken)>,
}

/// One node's in-memory disk (clones share it). See the module documentation.
#[derive(Clone, Default)]
pub struct MemDisk {
    inner: Rc<RefCell<DiskInner>>,
}

impl MemDisk {
    /// A disk whose syncs complete only when [`MemDisk::complete_sync`] is called.
    pub fn new() -> Self {
        MemDisk::default()
    }

    /// A disk whose syncs complete immediately (every write is durable at once).
    pub fn with_auto_sync() -> Self {
        let disk = MemDisk::default();
        disk.inner.borrow_mut().auto_sync = true;
        disk
    }

    /// The store of `group` (created empty on first use).
    pub fn store(&self, group: GroupId) -> MemLogStore {
        self.inner.borrow_mut().groups.entry(group).or_default();
        MemLogStore {
            disk: self.clone(),
            group,
        }
    }

    /// Groups that have a store on this disk.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.borrow().groups.keys().copied().collect()
    }

    /// Sync requests issued since the last call, in issue order.
    pub fn take_sync_requests(&self) -> Vec<(GroupId, SyncToken)> {
        std::mem::take(&mut self.inner.borrow_mut().sync_requests)
    }

    /// Completes `group`'s syncs up to and including `token`.
    pub fn complete_sync(&self, group: GroupId, token: SyncToken) {
        if let Some(g) = self.inner.borrow_mut().groups.get_mut(&group) {
            g.complete(token);
        }
    }

    /// Simulates a crash: per group and stream, keep a random prefix of the unsynced writes
    /// (with `torn`, possibly cutting an append in the middle) and lose the rest, including
    /// every outstanding sync request.
    pub fn crash(&self, rng: &mut Prng, torn: bool) {
        let mut inner = self.inner.borrow_mut();
        inner.sync_requests.clear();
        for g in inner.groups.values_mut() {
            g.crash(Some(&mut *rng), torn, (false, false));
        }
    }

    /// Simulates a crash that loses every unsynced write.
    pub fn crash_losing_unsynced(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.sync_requests.clear();
        for g in inner.groups.values_mut() {
            g.crash(None, false, (false, false));
        }
    }

    /// Simulates a crash in which the metadata file kept its unsynced writes but the entry log
    /// lost all of its own (the two reached different points).
    pub fn crash_keeping_unsynced_metadata(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.sync_requests.clear();
        for g in inner.groups.values_mut() {
            g.crash(None, false, (false, true));
        }
    }

    /// Simulates a crash in which the entry log kept its unsynced writes but the metadata file
    /// lost all of its own.
    pub fn crash_keeping_unsynced_log(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.sync_requests.clear();
        for g in inner.groups.values_mut() {
            g.crash(None, false, (true, false));
        }
    }

    /// The visible (possibly unsynced) log of `group`.
    pub fn visible_log(&self, group: GroupId) -> LogImage {
        self.with_group(group, |g| g.log.clone())
            .unwrap_or_default()
    }

    /// The durable log of `group`.
    pub fn durable_log(&self, group: GroupId) -> LogImage {
        self.with_group(group, |g| g.durable_log.clone())
            .unwrap_or_default()
    }

    /// The durable hard state of `group`.
    pub fn durable_hard_state(&self, group: GroupId) -> HardState {
        self.with_group(group, |g| g.durable_meta.hard_state)
            .unwrap_or_default()
    }

    /// The term of the visible entry at `index` (including the log start), if known.
    pub fn visible_term(&self, group: GroupId, index: u64) -> Option<u64> {
        self.with_group(group, |g| g.log.term(index).ok()).flatten()
    }

    /// Visible entries from `from` on.
    pub fn visible_entries_from(&self, group: GroupId, from: u64) -> Vec<LogEntry> {
        self.with_group(group, |g| {
            let skip = from.saturating_sub(g.log.start.index + 1) as usize;
            g.log.entries.iter().skip(skip).cloned().collect()
        })
        .unwrap_or_default()
    }

    /// The lowest index whose *durable* entry changed since the last call.
    pub fn take_changed(&self, group: GroupId) -> Option<u64> {
        self.inner
            .borrow_mut()
            .groups
            .get_mut(&group)
            .and_then(|g| g.changed_from.take())
    }

    fn with_group<R>(&self, group: GroupId, f: impl FnOnce(&GroupDisk) -> R) -> Option<R> {
        self.inner.borrow().groups.get(&group).map(f)
    }
}

/// The [`LogStore`] of one group on a [`MemDisk`].
pub struct MemLogStore {
    disk: MemDisk,
    group: GroupId,
}

impl MemLogStore {
    fn read<R>(&self, f: impl FnOnce(&GroupDisk) -> R) -> R {
        let inner = self.disk.inner.borrow();
        match inner.groups.get(&self.group) {
            Some(g) => f(g),
            None => f(&GroupDisk::default()),
        }
    }

    fn write<R>(&mut self, f: impl FnOnce(&mut GroupDisk, bool) -> R) -> R {
        let mut inner = self.disk.inner.borrow_mut();
        let auto = inner.auto_sync;
        f(inner.groups.entry(self.group).or_default(), auto)
    }
}

impl LogStore for MemLogStore {
    fn initial_state(&self) -> StoredState {
        self.read(|g| {
            let (installed_index, installed) = &g.log.installed_membership;
            let (membership, membership_index) = if *installed_index > g.meta.membership_index {
                (installed.clone(), *installed_index)
            } else {
                (g.meta.membership.clone(), g.meta.membership_index)
            };
            StoredState {
                hard_state: g.meta.hard_state,
                membership,
                membership_index,
                applied: 0,
            }
        })
    }

    fn log_start(&self) -> LogStart {
        self.read(|g| g.log.start)
    }

    fn last_index(&self) -> u64 {
        self.read(|g| g.log.last_index())
    }

    fn term(&self, index: u64) -> Result<u64, StoreError> {
        self.read(|g| g.log.term(index))
    }

    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> Result<Vec<LogEntry>, StoreError> {
        self.read(|g| {
            if lo <= g.log.start.index {
                return Err(StoreError::Compacted(lo));
            }
            if hi > g.log.last_index() + 1 {
                return Err(StoreError::Unavailable(hi - 1));
            }
            let mut out = Vec::new();
            let mut size = 0u64;
            for index in lo..hi {
                let Some(e) = g.log.get(index) else { break };
                size += e.payload.len() as u64;
                if !out.is_empty() && size > max_bytes {
                    break;
                }
                out.push(e.clone());
            }
            Ok(out)
        })
    }

    fn append(&mut self, entries: &[LogEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write(|g, auto| {
            g.log.check_append(entries)?;
            g.write_log(LogOp::Append(entries.to_vec()), auto);
            Ok(())
        })
    }

    fn truncate_suffix(&mut self, from: u64) -> Result<(), StoreError> {
        self.write(|g, auto| {
            if from <= g.log.start.index {
                return Err(StoreError::Invalid(format!(
                    "truncate from {from} at or below the log start {}",
                    g.log.start.index
                )));
            }
            if from <= g.log.last_index() {
                g.write_log(LogOp::Truncate(from), auto);
            }
            Ok(())
        })
    }

    fn compact_prefix(&mut self, through: u64) -> Result<(), StoreError> {
        self.write(|g, auto| {
            if through <= g.log.start.index {
                return Ok(());
            }
            if through > g.log.last_index() {
                return Err(StoreError::Unavailable(through));
            }
            g.write_log(LogOp::Compact(through), auto);
            Ok(())
        })
    }

    fn install_snapshot(&mut self, meta: &SnapshotMeta, payload: Bytes) -> Result<(), StoreError> {
        let transferred = if payload.is_empty() {
            Vec::new()
        } else {
            decode_entries(&payload)
                .ok_or_else(|| StoreError::Invalid("malformed snapshot payload".into()))?
        };
        self.write(|g, auto| {
            // The snapshot's membership lives in the log stream, atomic with the log reset.
            g.write_log(LogOp::Install(meta.clone(), transferred), auto);
            Ok(())
        })
    }

    fn snapshot_payload(&self, index: u64) -> Result<Bytes, StoreError> {
        self.read(|g| {
            let upto: Vec<LogEntry> = g
                .log
                .entries
                .iter()
                .take_while(|e| e.index <= index)
                .cloned()
                .collect();
            Ok(encode_entries(&upto))
        })
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<(), StoreError> {
        self.write(|g, auto| {
            g.write_meta(MetaOp::HardState(hard_state), auto);
            Ok(())
        })
    }

    fn set_membership(&mut self, index: u64, membership: &Membership) -> Result<(), StoreError> {
        self.write(|g, auto| {
            g.write_meta(MetaOp::Membership(index, membership.clone()), auto);
            Ok(())
        })
    }

    fn sync(&mut self) -> Result<SyncToken, StoreError> {
        let group = self.group;
        let mut inner = self.disk.inner.borrow_mut();
        let auto = inner.auto_sync;
        let g = inner.groups.entry(group).or_default();
        g.next_token += 1;
        let token = g.next_token;
        if auto {
            g.synced = token;
        } else {
            let (nl, nm) = (g.pending_log.len(), g.pending_meta.len());
            g.marks.push_back((token, nl, nm));
            inner.sync_requests.push((group, token));
        }
        Ok(token)
    }

    fn synced(&self) -> SyncToken {
        self.read(|g| g.synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;

    fn entry(index: u64, term: u64) -> LogEntry {
        LogEntry {
            index,
            term,
            kind: EntryKind::Data,
            payload: Bytes::from(format!("e{index}")),
        }
    }

    /// Raft §5.1 (Figure 2, "persistent state ... updated on stable storage before responding"):
    /// the in-memory disk keeps exactly what a completed sync covered.
    #[test]
    fn unsynced_writes_are_lost_on_crash_synced_ones_survive() {
        let disk = MemDisk::new();
        let mut s = disk.store(1);
        s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        s.set_hard_state(HardState {
            term: 1,
            vote: 2,
            commit: 0,
        })
        .unwrap();
        let t = s.sync().unwrap();
        s.append(&[entry(3, 1)]).unwrap();
        s.set_hard_state(HardState {
            term: 2,
            vote: 3,
            commit: 0,
        })
        .unwrap();
        let t2 = s.sync().unwrap();
        assert_eq!(s.last_index(), 3);
        assert_eq!(disk.take_sync_requests(), vec![(1, t), (1, t2)]);
        disk.complete_sync(1, t);
        assert_eq!(s.synced(), t);
        assert_eq!(disk.durable_log(1).entries.len(), 2);
        disk.crash_losing_unsynced();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.initial_state().hard_state.vote, 2);
        // A completion for a sync issued before the crash changes nothing.
        disk.complete_sync(1, t2);
        assert_eq!(s.last_index(), 2);
    }

    /// Raft §5.1: the failure model the driver must tolerate — a crash keeps a prefix of the
    /// unsynced writes of each stream.
    #[test]
    fn random_crash_keeps_a_prefix_of_each_stream() {
        for seed in 0..200 {
            let disk = MemDisk::new();
            let mut s = disk.store(1);
            s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
            s.append(&[entry(4, 2)]).unwrap();
            s.set_hard_state(HardState {
                term: 2,
                vote: 1,
                commit: 0,
            })
            .unwrap();
            disk.crash(&mut Prng::new(seed), true);
            let log = disk.durable_log(1);
            // Whatever survived is a prefix of what was written, in order.
            for (i, e) in log.entries.iter().enumerate() {
                assert_eq!(e.index, i as u64 + 1);
            }
            assert!(log.entries.len() <= 4);
            let hs = s.initial_state().hard_state;
            assert!(hs == HardState::default() || hs.term == 2);
        }
    }

    /// Raft §5.3 (suffix truncation), §7 (compaction, snapshot installation with its
    /// membership).
    #[test]
    fn truncate_compact_install() {
        let disk = MemDisk::with_auto_sync();
        let mut s = disk.store(7);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
        s.truncate_suffix(3).unwrap();
        assert_eq!(s.last_index(), 2);
        assert!(s.append(&[entry(4, 2)]).is_err());
        s.append(&[entry(3, 3)]).unwrap();
        s.compact_prefix(2).unwrap();
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.term(2), Ok(1));
        assert_eq!(s.term(1), Err(StoreError::Compacted(1)));
        let payload = s.snapshot_payload(3).unwrap();
        let other = MemDisk::with_auto_sync();
        let mut o = other.store(7);
        let meta = SnapshotMeta {
            index: 3,
            term: 3,
            membership: Membership::new([1, 2, 3], []),
        };
        o.install_snapshot(&meta, payload).unwrap();
        assert_eq!(o.first_index(), 4);
        assert_eq!(o.term(3), Ok(3));
        assert_eq!(other.visible_log(7).transferred, vec![entry(3, 3)]);
        assert_eq!(o.initial_state().membership_index, 3);
    }
}
