//! The node-local metadata store: raft-engine on one dedicated thread.
//!
//! raft-engine's calls are synchronous and fsync, so they never run on a shard. Shards send
//! [`MetaStore`] requests over a bounded channel and await the reply; the thread drains every
//! queued request, writes them as one `LogBatch` with one `fdatasync` (group commit), then
//! answers them all. A reply means "durable": the request's batch was fsynced.
//!
//! Layout, one raft-engine region per Raft group (region id = group id):
//!
//! * [`CONTROLLER_GROUP`] holds the controller log — one entry per metadata command, in the
//!   same `eraftpb::Entry` form the controller's Raft group will use when the cluster grows
//!   past one node.
//! * Every Raft group (a partition's, and later the controller's) keeps its small durable
//!   metadata as key-values in its region: `hs` (hard state: term, vote, commit; an
//!   `eraftpb::HardState`), `conf` (the membership in effect and the index it took effect at:
//!   `u64` big-endian index followed by an `eraftpb::ConfState`) and any number of
//!   caller-defined keys under `u/` (the segment-log adapter keeps its log anchor and applied
//!   checkpoint there). [`MetaStore::write_group`] changes several of them atomically: one
//!   request is one part of one raft-engine `LogBatch`, so a crash keeps all of it or none,
//!   and requests become durable in the order they were sent.
//!
//! raft-engine leaves reclaiming its log files to the caller: the thread calls
//! `purge_expired_files` every [`METASTORE_PURGE_INTERVAL`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt, ReadableSize};
use tracing::{error, info, warn};

/// raft-engine group id of the controller log.
pub const CONTROLLER_GROUP: u64 = 1;
/// Requests queued for the metadata thread before senders wait (backpressure).
pub const METASTORE_QUEUE_MAX: usize = 1024;
/// Requests merged into one synchronous write.
pub const METASTORE_BATCH_MAX: usize = 256;
/// How often the thread lets raft-engine reclaim obsolete log files (TiKV's default).
pub const METASTORE_PURGE_INTERVAL: Duration = Duration::from_secs(10);

/// Region key of a group's hard state.
const KEY_HARD_STATE: &[u8] = b"hs";
/// Region key of a group's membership.
const KEY_MEMBERSHIP: &[u8] = b"conf";
/// Prefix of caller-defined keys.
const USER_PREFIX: &[u8] = b"u/";

#[derive(Debug, thiserror::Error)]
pub enum MetaStoreError {
    #[error("metadata store at {dir}: {source}")]
    Open {
        dir: PathBuf,
        source: raft_engine::Error,
    },
    #[error("metadata store write failed: {0}")]
    Write(String),
    #[error("metadata store: {0}")]
    Invalid(String),
    #[error("metadata store thread is gone")]
    Gone,
}

/// A Raft group's hard state (Raft §5.1, Figure 2: "persistent state on all servers").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupHardState {
    pub term: u64,
    /// Node voted for in `term` (0 = none).
    pub vote: u64,
    /// Highest index known committed (advisory).
    pub commit: u64,
}

/// A Raft group's membership (Raft §6) and the log index it took effect at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupMembership {
    pub index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration while in a joint configuration.
    pub voters_outgoing: Vec<u64>,
    /// Voters that become learners when the joint configuration is left.
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

/// Everything the store holds for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    pub hard_state: Option<GroupHardState>,
    pub membership: Option<GroupMembership>,
    /// Caller-defined keys (without the internal prefix) and their values.
    pub values: BTreeMap<Vec<u8>, Bytes>,
}

impl GroupState {
    /// Whether nothing is stored for the group.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none() && self.membership.is_none() && self.values.is_empty()
    }
}

/// One atomic change to a group's metadata (see [`MetaStore::write_group`]). Deletes apply
/// before puts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupWrite {
    pub hard_state: Option<GroupHardState>,
    pub membership: Option<GroupMembership>,
    pub put: Vec<(Vec<u8>, Bytes)>,
    pub delete: Vec<Vec<u8>>,
}

impl GroupWrite {
    /// Whether the write changes nothing.
    pub fn is_empty(&self) -> bool {
        self.hard_state.is_none()
            && self.membership.is_none()
            && self.put.is_empty()
            && self.delete.is_empty()
    }

    /// Applies the write to an in-memory image (what the store will hold once it is durable).
    pub fn apply_to(&self, state: &mut GroupState) {
        if let Some(hs) = self.hard_state {
            state.hard_state = Some(hs);
        }
        if let Some(m) = &self.membership {
            state.membership = Some(m.clone());
        }
        for k in &self.delete {
            state.values.remove(k);
        }
        for (k, v) in &self.put {
            state.values.insert(k.clone(), v.clone());
        }
    }
}

fn user_key(key: &[u8]) -> Vec<u8> {
    let mut k = USER_PREFIX.to_vec();
    k.extend_from_slice(key);
    k
}

fn encode_membership(m: &GroupMembership) -> Result<Vec<u8>, MetaStoreError> {
    let cs = ConfState {
        voters: m.voters.clone(),
        learners: m.learners.clone(),
        voters_outgoing: m.voters_outgoing.clone(),
        learners_next: m.learners_next.clone(),
        auto_leave: m.auto_leave,
        ..Default::default()
    };
    let mut out = m.index.to_be_bytes().to_vec();
    cs.write_to_vec(&mut out)
        .map_err(|e| MetaStoreError::Invalid(format!("encoding membership: {e}")))?;
    Ok(out)
}

fn decode_membership(v: &[u8]) -> Result<GroupMembership, String> {
    if v.len() < 8 {
        return Err(format!("membership record of {} bytes", v.len()));
    }
    let mut idx = [0u8; 8];
    idx.copy_from_slice(&v[..8]);
    let cs = ConfState::parse_from_bytes(&v[8..]).map_err(|e| e.to_string())?;
    Ok(GroupMembership {
        index: u64::from_be_bytes(idx),
        voters: cs.voters,
        learners: cs.learners,
        voters_outgoing: cs.voters_outgoing,
        learners_next: cs.learners_next,
        auto_leave: cs.auto_leave,
    })
}

/// Reads a group's metadata from the engine (an in-memory lookup in raft-engine's memtable).
fn read_group(engine: &Engine, group: u64) -> Result<GroupState, MetaStoreError> {
    let bad = |what: &str, e: String| {
        MetaStoreError::Invalid(format!("group {group}: damaged {what} record: {e}"))
    };
    let mut state = GroupState::default();
    let hs: Option<HardState> = engine
        .get_message(group, KEY_HARD_STATE)
        .map_err(|e| bad("hard state", e.to_string()))?;
    state.hard_state = hs.map(|hs| GroupHardState {
        term: hs.term,
        vote: hs.vote,
        commit: hs.commit,
    });
    if let Some(v) = engine.get(group, KEY_MEMBERSHIP) {
        state.membership = Some(decode_membership(&v).map_err(|e| bad("membership", e))?);
    }
    let mut end = USER_PREFIX.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    engine
        .scan_raw_messages(group, Some(USER_PREFIX), Some(&end), false, |k, v| {
            state
                .values
                .insert(k[USER_PREFIX.len()..].to_vec(), Bytes::copy_from_slice(v));
            true
        })
        .map_err(|e| bad("key-value", e.to_string()))?;
    Ok(state)
}

/// Adds a group write to a batch.
fn add_group_write(batch: &mut LogBatch, group: u64, w: &GroupWrite) -> Result<(), MetaStoreError> {
    let invalid = |e: raft_engine::Error| MetaStoreError::Invalid(e.to_string());
    if let Some(hs) = w.hard_state {
        let msg = HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
            ..Default::default()
        };
        batch
            .put_message(group, KEY_HARD_STATE.to_vec(), &msg)
            .map_err(invalid)?;
    }
    if let Some(m) = &w.membership {
        batch
            .put(group, KEY_MEMBERSHIP.to_vec(), encode_membership(m)?)
            .map_err(invalid)?;
    }
    for k in &w.delete {
        batch.delete(group, user_key(k));
    }
    for (k, v) in &w.put {
        batch.put(group, user_key(k), v.to_vec()).map_err(invalid)?;
    }
    Ok(())
}

#[derive(Clone)]
struct EntryExt;
impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

type Reply<T> = flume::Sender<Result<T, MetaStoreError>>;

enum Op {
    AppendController {
        data: Bytes,
        reply: Reply<u64>,
    },
    WriteGroup {
        group: u64,
        write: GroupWrite,
        reply: Reply<()>,
    },
    ReadGroup {
        group: u64,
        reply: Reply<GroupState>,
    },
    RemoveGroup {
        group: u64,
        reply: Reply<()>,
    },
    Stop,
}

/// A handle shards use to reach the metadata thread. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct MetaStore {
    tx: flume::Sender<Op>,
}

/// What was on disk at open.
pub struct Recovered {
    /// The controller log, `(index, data)` in index order.
    pub controller_log: Vec<(u64, Bytes)>,
    /// Metadata of every Raft group that has any (by group id).
    pub groups: BTreeMap<u64, GroupState>,
}

/// The metadata thread; join it after [`MetaStore::stop`].
pub struct MetaStoreThread {
    handle: JoinHandle<()>,
}

impl MetaStoreThread {
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

impl MetaStore {
    /// Opens (or creates) the store under `dir`, reads back the controller log and every
    /// group's metadata, and starts the metadata thread. Call this before the shards start: it
    /// blocks.
    pub fn open(dir: &Path) -> Result<(MetaStore, Recovered, MetaStoreThread), MetaStoreError> {
        let cfg = Config {
            dir: dir.to_string_lossy().into_owned(),
            target_file_size: ReadableSize::mb(16),
            ..Default::default()
        };
        let open_err = |source| MetaStoreError::Open {
            dir: dir.to_path_buf(),
            source,
        };
        let engine = Engine::open(cfg).map_err(open_err)?;
        let mut entries = Vec::new();
        if let (Some(first), Some(last)) = (
            engine.first_index(CONTROLLER_GROUP),
            engine.last_index(CONTROLLER_GROUP),
        ) {
            engine
                .fetch_entries_to::<EntryExt>(CONTROLLER_GROUP, first, last + 1, None, &mut entries)
                .map_err(open_err)?;
        }
        let controller_log: Vec<(u64, Bytes)> =
            entries.into_iter().map(|e| (e.index, e.data)).collect();
        let mut groups = BTreeMap::new();
        let mut ids = engine.raft_groups();
        ids.sort_unstable();
        for id in ids {
            let state = read_group(&engine, id)?;
            if !state.is_empty() {
                groups.insert(id, state);
            }
        }
        let next_index = controller_log.last().map(|(i, _)| i + 1).unwrap_or(1);
        info!(
            dir = %dir.display(),
            controller_entries = controller_log.len(),
            raft_groups = groups.len(),
            "metadata store opened"
        );
        let (tx, rx) = flume::bounded(METASTORE_QUEUE_MAX);
        let handle = std::thread::Builder::new()
            .name("spate-metastore".into())
            .spawn(move || run(engine, rx, next_index))
            .map_err(|e| MetaStoreError::Write(format!("spawning metadata thread: {e}")))?;
        Ok((
            MetaStore { tx },
            Recovered {
                controller_log,
                groups,
            },
            MetaStoreThread { handle },
        ))
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, MetaStoreError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send_async(op(reply))
            .await
            .map_err(|_| MetaStoreError::Gone)?;
        rx.recv_async().await.map_err(|_| MetaStoreError::Gone)?
    }

    /// Appends one controller-log entry durably; returns its index.
    pub async fn append_controller(&self, data: Bytes) -> Result<u64, MetaStoreError> {
        self.call(|reply| Op::AppendController { data, reply })
            .await
    }

    /// Changes a group's metadata atomically; resolves once the change is durable (fsynced,
    /// usually in one group commit with other shards' requests). Requests become durable in
    /// the order they are sent, so a caller that awaits one write before sending the next (or
    /// sends from one task) gets prefix semantics across crashes.
    ///
    /// The request is sent when the future is first polled; a caller that must overlap the
    /// write with other work polls it alongside (e.g. `futures_lite::future::zip`).
    pub async fn write_group(&self, group: u64, write: GroupWrite) -> Result<(), MetaStoreError> {
        if write.is_empty() {
            return Ok(());
        }
        self.call(|reply| Op::WriteGroup {
            group,
            write,
            reply,
        })
        .await
    }

    /// A group's current metadata (what the thread holds, including writes not yet durable
    /// only if they were sent earlier — requests are handled in order).
    pub async fn read_group(&self, group: u64) -> Result<GroupState, MetaStoreError> {
        self.call(|reply| Op::ReadGroup { group, reply }).await
    }

    /// Removes everything stored for a group (the partition was deleted or moved away);
    /// resolves once durable. The controller group cannot be removed.
    pub async fn remove_group(&self, group: u64) -> Result<(), MetaStoreError> {
        if group == CONTROLLER_GROUP {
            return Err(MetaStoreError::Invalid(
                "the controller group cannot be removed".into(),
            ));
        }
        self.call(|reply| Op::RemoveGroup { group, reply }).await
    }

    /// Asks the thread to finish the queued writes and exit (from any thread; never blocks).
    pub fn stop(&self) {
        let _ = self.tx.try_send(Op::Stop);
    }
}

/// A reply to send once the batch it belongs to is durable.
enum Pending {
    Index(u64, Reply<u64>),
    Done(Reply<()>),
}

/// The requests gathered into one `LogBatch` (one group commit).
struct Commit {
    batch: LogBatch,
    entries: Vec<Entry>,
    pending: Vec<Pending>,
}

impl Commit {
    fn new() -> Self {
        Commit {
            batch: LogBatch::default(),
            entries: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Writes and fsyncs the batch, then answers every request in it.
    fn finish(&mut self, engine: &Engine, next_index: &mut u64) {
        let Commit {
            batch,
            entries,
            pending,
        } = std::mem::replace(self, Commit::new());
        let mut batch = batch;
        if entries.is_empty() && batch.is_empty() {
            // Only refused writes (already answered), or nothing at all.
            for p in pending {
                if let Pending::Done(reply) = p {
                    let _ = reply.send(Ok(()));
                }
            }
            return;
        }
        let result = if entries.is_empty() {
            Ok(())
        } else {
            batch
                .add_entries::<EntryExt>(CONTROLLER_GROUP, &entries)
                .map_err(|e| e.to_string())
        }
        .and_then(|()| {
            engine
                .write(&mut batch, true)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => {
                for p in pending {
                    match p {
                        Pending::Index(index, reply) => {
                            let _ = reply.send(Ok(index));
                        }
                        Pending::Done(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                    }
                }
            }
            Err(e) => {
                error!(error = %e, "metadata store write failed");
                // The indexes were not used: hand them out again.
                *next_index -= entries.len() as u64;
                for p in pending {
                    let err = MetaStoreError::Write(e.clone());
                    match p {
                        Pending::Index(_, reply) => {
                            let _ = reply.send(Err(err));
                        }
                        Pending::Done(reply) => {
                            let _ = reply.send(Err(err));
                        }
                    }
                }
            }
        }
    }
}

fn run(engine: Engine, rx: flume::Receiver<Op>, mut next_index: u64) {
    let mut stop = false;
    let mut last_purge = Instant::now();
    while !stop {
        if last_purge.elapsed() >= METASTORE_PURGE_INTERVAL {
            last_purge = Instant::now();
            if let Err(e) = engine.purge_expired_files() {
                warn!(error = %e, "metadata store purge failed");
            }
        }
        let first = match rx.recv_timeout(METASTORE_PURGE_INTERVAL) {
            Ok(op) => op,
            Err(flume::RecvTimeoutError::Timeout) => continue,
            Err(flume::RecvTimeoutError::Disconnected) => break,
        };
        let mut ops = vec![first];
        while ops.len() < METASTORE_BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut commit = Commit::new();
        for op in ops {
            match op {
                Op::AppendController { data, reply } => {
                    commit.entries.push(Entry {
                        index: next_index,
                        term: 1,
                        data,
                        ..Default::default()
                    });
                    commit.pending.push(Pending::Index(next_index, reply));
                    next_index += 1;
                }
                Op::WriteGroup {
                    group,
                    write,
                    reply,
                } => {
                    // Check the whole write on a scratch batch first, so a refused write adds
                    // nothing to the shared one.
                    let mut scratch = LogBatch::default();
                    match add_group_write(&mut scratch, group, &write) {
                        Ok(()) => {
                            if let Err(e) = commit.batch.merge(&mut scratch) {
                                let _ = reply.send(Err(MetaStoreError::Invalid(e.to_string())));
                            } else {
                                commit.pending.push(Pending::Done(reply));
                            }
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Op::RemoveGroup { group, reply } => {
                    commit.batch.add_command(group, Command::Clean);
                    commit.pending.push(Pending::Done(reply));
                }
                Op::ReadGroup { group, reply } => {
                    // A read sees every request sent before it: write those first.
                    commit.finish(&engine, &mut next_index);
                    let _ = reply.send(read_group(&engine, group));
                }
                Op::Stop => stop = true,
            }
        }
        commit.finish(&engine, &mut next_index);
    }
    info!("metadata store thread stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_log_survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        assert!(rec.controller_log.is_empty());
        let idx: Vec<u64> = futures_lite::future::block_on(async {
            let mut v = Vec::new();
            for i in 0..5u8 {
                v.push(
                    store
                        .append_controller(Bytes::from(vec![i; 3]))
                        .await
                        .unwrap(),
                );
            }
            v
        });
        assert_eq!(idx, vec![1, 2, 3, 4, 5]);
        store.stop();
        thread.join();

        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        let got: Vec<(u64, Vec<u8>)> = rec
            .controller_log
            .iter()
            .map(|(i, d)| (*i, d.to_vec()))
            .collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], (5, vec![4u8; 3]));
        let next =
            futures_lite::future::block_on(store.append_controller(Bytes::from_static(b"x")));
        assert_eq!(next.unwrap(), 6);
        store.stop();
        thread.join();
    }

    fn membership(index: u64, voters: &[u64]) -> GroupMembership {
        GroupMembership {
            index,
            voters: voters.to_vec(),
            learners: vec![9],
            ..Default::default()
        }
    }

    /// Raft §5.1 (Figure 2, "persistent state on all servers ... updated on stable storage
    /// before responding to RPCs"): a group's hard state, membership and adapter keys are
    /// durable once `write_group` resolves and read back after a reopen, per group.
    #[test]
    fn group_state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        assert!(rec.groups.is_empty());
        futures_lite::future::block_on(async {
            let w = GroupWrite {
                hard_state: Some(GroupHardState {
                    term: 3,
                    vote: 2,
                    commit: 10,
                }),
                membership: Some(membership(4, &[1, 2, 3])),
                put: vec![
                    (b"anchor".to_vec(), Bytes::from_static(b"a1")),
                    (b"applied".to_vec(), Bytes::from_static(b"7")),
                ],
                delete: vec![],
            };
            store.write_group(5, w).await.unwrap();
            // A later write replaces fields and keys; deletes apply before puts.
            let w2 = GroupWrite {
                hard_state: Some(GroupHardState {
                    term: 4,
                    vote: 0,
                    commit: 11,
                }),
                put: vec![(b"anchor".to_vec(), Bytes::from_static(b"a2"))],
                delete: vec![b"applied".to_vec()],
                ..Default::default()
            };
            store.write_group(5, w2).await.unwrap();
            store
                .write_group(
                    7,
                    GroupWrite {
                        membership: Some(membership(1, &[2])),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            // An empty write is a no-op.
            store.write_group(8, GroupWrite::default()).await.unwrap();
            // The controller log shares the thread and the group commit.
            assert_eq!(
                store
                    .append_controller(Bytes::from_static(b"c"))
                    .await
                    .unwrap(),
                1
            );
            let g5 = store.read_group(5).await.unwrap();
            assert_eq!(g5.hard_state.map(|h| h.term), Some(4));
            assert_eq!(g5.values.len(), 1);
        });
        store.stop();
        thread.join();

        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        assert_eq!(rec.groups.keys().copied().collect::<Vec<_>>(), vec![5, 7]);
        let g5 = &rec.groups[&5];
        assert_eq!(
            g5.hard_state,
            Some(GroupHardState {
                term: 4,
                vote: 0,
                commit: 11
            })
        );
        assert_eq!(g5.membership, Some(membership(4, &[1, 2, 3])));
        assert_eq!(
            g5.values.iter().collect::<Vec<_>>(),
            vec![(&b"anchor".to_vec(), &Bytes::from_static(b"a2"))]
        );
        assert_eq!(rec.groups[&7].hard_state, None);
        assert_eq!(rec.groups[&7].membership, Some(membership(1, &[2])));
        assert_eq!(rec.controller_log.len(), 1);
        futures_lite::future::block_on(async {
            assert_eq!(store.read_group(5).await.unwrap(), *g5);
            assert!(store.read_group(99).await.unwrap().is_empty());
        });
        store.stop();
        thread.join();
    }

    /// Many concurrent writers (as from many shards) are merged into group commits; each
    /// write resolves only once durable, and after a reopen every group holds its last write.
    #[test]
    fn concurrent_group_writes_are_group_committed_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, thread) = MetaStore::open(dir.path()).unwrap();
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    futures_lite::future::block_on(async {
                        for round in 1..=50u64 {
                            for g in 0..10u64 {
                                let group = 100 + t * 10 + g;
                                let hs = GroupHardState {
                                    term: round,
                                    vote: t + 1,
                                    commit: round * 2,
                                };
                                store
                                    .write_group(
                                        group,
                                        GroupWrite {
                                            hard_state: Some(hs),
                                            ..Default::default()
                                        },
                                    )
                                    .await
                                    .unwrap();
                            }
                        }
                    })
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        store.stop();
        thread.join();
        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        assert_eq!(rec.groups.len(), 40);
        for (g, st) in &rec.groups {
            let hs = st.hard_state.unwrap();
            assert_eq!((hs.term, hs.commit), (50, 100), "group {g}");
            assert_eq!(hs.vote, (g - 100) / 10 + 1);
        }
        store.stop();
        thread.join();
    }

    #[test]
    fn remove_group_forgets_everything_but_not_the_controller() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _, thread) = MetaStore::open(dir.path()).unwrap();
        futures_lite::future::block_on(async {
            store
                .append_controller(Bytes::from_static(b"x"))
                .await
                .unwrap();
            let w = GroupWrite {
                hard_state: Some(GroupHardState {
                    term: 1,
                    vote: 1,
                    commit: 0,
                }),
                put: vec![(b"k".to_vec(), Bytes::from_static(b"v"))],
                ..Default::default()
            };
            store.write_group(3, w.clone()).await.unwrap();
            store.remove_group(3).await.unwrap();
            assert!(store.read_group(3).await.unwrap().is_empty());
            assert!(store.remove_group(CONTROLLER_GROUP).await.is_err());
            // A group can be recreated after removal.
            store.write_group(4, w).await.unwrap();
            store.remove_group(4).await.unwrap();
            store
                .write_group(
                    4,
                    GroupWrite {
                        membership: Some(membership(2, &[1])),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        });
        store.stop();
        thread.join();
        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        assert_eq!(rec.controller_log.len(), 1);
        assert_eq!(rec.groups.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(rec.groups[&4].hard_state, None);
        store.stop();
        thread.join();
    }
}
