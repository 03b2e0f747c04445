//! The group coordinator: classic consumer groups and committed offsets.
//!
//! A group belongs to one partition of the internal `__consumer_offsets` topic (Kafka's hash
//! of the group id) and is coordinated by the shard that owns that partition; requests reach
//! it over the shard mesh ([`call`]). Its state lives in memory ([`group::Group`]) and every
//! change that must survive a restart is written to that partition — offsets and group
//! metadata in Kafka's own record format ([`codec`]) — through the same log as user data. On
//! first use after start the shard replays the partition to rebuild its groups.

pub mod codec;
pub mod group;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::partition::CommitWaiter;
use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, OffsetCommitRequest,
    OffsetDeleteRequest, SyncGroupRequest,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;
use spate_storage::log::batch::RecordBatch;
use tracing::{info, warn};

use crate::config::GroupConfig;
use crate::kafka::handlers::s;
use crate::partition::PartitionKey;
use crate::shard::{Shard, ShardRequest, ShardResponse};
use codec::{GroupValue, OffsetValue, RecordKey};
use group::{wall_ms, Committed, Group, JoinArgs, JoinStep, State, SyncReply, SyncStep};

/// Kafka's internal offsets topic.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How often sessions, rebalance deadlines and offset expiry are checked.
const TICK: Duration = Duration::from_millis(100);
/// How often expired offsets are looked for.
const EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// Java's `String.hashCode`, as Kafka uses it to place a group.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The `__consumer_offsets` partition of `group` (Kafka's `Utils.abs(hash) % partitions`).
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    let h = java_hash(group);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// The coordinating shard and partition of `group`, if the offsets topic exists.
pub fn coordinator_of(shard: &Shard, group: &str) -> Option<(usize, PartitionKey)> {
    let img = shard.image.borrow();
    let t = img.topics.get(OFFSETS_TOPIC)?;
    let p = partition_for(group, t.partition_shards.len() as i32);
    let owner = *t.partition_shards.get(p as usize)? as usize % shard.mesh.nr_shards();
    Some((owner, (t.id, p)))
}

/// A group request, forwarded to the coordinating shard.
pub enum GroupCall {
    Join {
        req: JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    },
    Sync {
        req: SyncGroupRequest,
    },
    Heartbeat {
        req: HeartbeatRequest,
    },
    /// `(member id, instance id)` per leaving member.
    Leave {
        group: String,
        members: Vec<(String, Option<String>)>,
    },
    Commit {
        req: OffsetCommitRequest,
        version: i16,
    },
    /// `None`: every committed offset of the group.
    FetchOffsets {
        group: String,
        topics: Option<Vec<(String, Vec<i32>)>>,
    },
    DeleteOffsets {
        req: OffsetDeleteRequest,
    },
    Describe {
        group: String,
    },
    /// Every group this shard coordinates.
    List,
    Delete {
        group: String,
    },
}

/// Committed offsets per topic: `(partition, offset if any)`.
pub type TopicOffsets = Vec<(String, Vec<(i32, Option<Committed>)>)>;

pub enum GroupAnswer {
    Join(JoinGroupResponse),
    Sync(SyncReply),
    Error(ResponseError),
    /// LeaveGroup: the group-level error and one per member.
    Leave(ResponseError, Vec<ResponseError>),
    /// OffsetCommit: one error per partition, in request order (or one for all).
    Commit(Result<Vec<Vec<ResponseError>>, ResponseError>),
    Offsets(TopicOffsets),
    /// OffsetDelete: the group-level error, then one per partition in request order.
    DeleteOffsets(ResponseError, Vec<Vec<ResponseError>>),
    Describe(DescribedGroup),
    List(Vec<ListedGroup>),
}

/// Sends `call` to the shard coordinating `group`. `NOT_COORDINATOR` when the offsets topic
/// does not exist yet (clients then look the coordinator up again, which creates it).
pub async fn call(
    shard: &Shard,
    group: &str,
    call: GroupCall,
) -> Result<GroupAnswer, ResponseError> {
    let (owner, key) = coordinator_of(shard, group).ok_or(ResponseError::NotCoordinator)?;
    match shard
        .call(
            owner,
            ShardRequest::Group {
                key,
                call: Box::new(call),
            },
        )
        .await
        .map_err(|_| ResponseError::CoordinatorNotAvailable)?
    {
        ShardResponse::Group(a) => Ok(a),
        _ => Err(ResponseError::UnknownServerError),
    }
}

/// One shard's coordinator: the groups of the offsets partitions it owns.
pub struct Coordinator {
    cfg: GroupConfig,
    groups: RefCell<HashMap<String, Group>>,
    loaded: RefCell<HashSet<PartitionKey>>,
    load_lock: Semaphore,
    /// Orders offset writes: a later write's value always wins.
    seq: Cell<u64>,
    /// Records written to (or replayed from) each offsets partition since its last
    /// compaction.
    written: RefCell<HashMap<PartitionKey, u64>>,
    /// A compaction is running (one at a time per shard).
    compacting: Cell<bool>,
    last_compact_check: Cell<Instant>,
    last_expiry: Cell<Instant>,
}

fn ok() -> ResponseError {
    ResponseError::Unknown(0)
}

impl Coordinator {
    pub fn new(cfg: GroupConfig) -> Coordinator {
        Coordinator {
            cfg,
            groups: RefCell::new(HashMap::new()),
            loaded: RefCell::new(HashSet::new()),
            load_lock: Semaphore::new(1),
            seq: Cell::new(0),
            written: RefCell::new(HashMap::new()),
            compacting: Cell::new(false),
            last_compact_check: Cell::new(Instant::now()),
            last_expiry: Cell::new(Instant::now()),
        }
    }

    /// Groups this shard coordinates (loaded so far).
    pub fn len(&self) -> usize {
        self.groups.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn next_seq(&self) -> u64 {
        let s = self.seq.get() + 1;
        self.seq.set(s);
        s
    }

    /// Appends records to the offsets partition now and returns the durability future.
    fn write(
        shard: &Shard,
        key: PartitionKey,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<CommitWaiter, ResponseError> {
        Self::write_at(shard, key, records).map(|(_, w)| w)
    }

    /// [`Self::write`] that also returns the batch's base offset; counts the records for
    /// [`Self::compact_if_due`].
    fn write_at(
        shard: &Shard,
        key: PartitionKey,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(i64, CommitWaiter), ResponseError> {
        *shard.groups.written.borrow_mut().entry(key).or_default() += records.len() as u64;
        let p = shard
            .partitions
            .get(&key)
            .ok_or(ResponseError::NotCoordinator)?;
        let now = wall_ms();
        let recs: Vec<Record> = records
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // kafka-protocol batches records whose offset - sequence is constant; the
                // first record's -1 becomes the batch's base sequence (not idempotent).
                sequence: i as i32 - 1,
                timestamp: now,
                key: Some(k),
                value: v,
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            recs.iter(),
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| {
            warn!(error = %e, "encoding an offsets batch");
            ResponseError::UnknownServerError
        })?;
        let len = buf.len();
        let batch = RecordBatch::validate(buf.freeze(), len).map_err(|e| {
            warn!(error = %e, "offsets batch failed validation");
            ResponseError::UnknownServerError
        })?;
        let (base, waiter) = p.append(&batch).map_err(|(e, why)| {
            warn!(error = %why, "appending to {OFFSETS_TOPIC}");
            if e == ResponseError::KafkaStorageError {
                ResponseError::CoordinatorNotAvailable
            } else {
                e
            }
        })?;
        Ok((base, waiter))
    }

    fn group_record(g: &Group) -> (Bytes, Option<Bytes>) {
        (
            RecordKey::Group {
                group: g.id.clone(),
            }
            .encode(),
            Some(g.to_value().encode()),
        )
    }

    /// Rebuilds the groups of an offsets partition from its log, once per start.
    async fn ensure_loaded(&self, shard: &Shard, key: PartitionKey) -> Result<(), ResponseError> {
        if self.loaded.borrow().contains(&key) {
            return Ok(());
        }
        let _permit = self
            .load_lock
            .acquire_permit(1)
            .await
            .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        if self.loaded.borrow().contains(&key) {
            return Ok(());
        }
        let p = shard
            .partitions
            .get(&key)
            .ok_or(ResponseError::NotCoordinator)?;
        let started = Instant::now();
        let mut offsets: HashMap<String, HashMap<(String, i32), Committed>> = HashMap::new();
        let mut metas: HashMap<String, Option<GroupValue>> = HashMap::new();
        let mut bad = 0usize;
        let mut n = 0usize;
        p.for_each_batch(|mut batch| {
            let set = match RecordBatchDecoder::decode(&mut batch) {
                Ok(set) => set,
                Err(_) => {
                    bad += 1;
                    return;
                }
            };
            for r in set.records {
                n += 1;
                let Some(k) = r.key else { continue };
                let Ok(k) = RecordKey::decode(k) else {
                    bad += 1;
                    continue;
                };
                match k {
                    RecordKey::Offset {
                        group,
                        topic,
                        partition,
                    } => {
                        let m = offsets.entry(group).or_default();
                        match r.value.map(OffsetValue::decode) {
                            None => {
                                m.remove(&(topic, partition));
                            }
                            Some(Ok(v)) => {
                                m.insert(
                                    (topic, partition),
                                    Committed {
                                        offset: v.offset,
                                        leader_epoch: v.leader_epoch,
                                        metadata: v.metadata,
                                        commit_timestamp: v.commit_timestamp,
                                        seq: 0,
                                    },
                                );
                            }
                            Some(Err(_)) => bad += 1,
                        }
                    }
                    RecordKey::Group { group } => match r.value.map(GroupValue::decode) {
                        None => {
                            metas.insert(group, None);
                        }
                        Some(Ok(v)) => {
                            metas.insert(group, Some(v));
                        }
                        Some(Err(_)) => bad += 1,
                    },
                }
            }
        })
        .await
        .map_err(|e| {
            warn!(error = %e, "reading {OFFSETS_TOPIC}");
            ResponseError::CoordinatorLoadInProgress
        })?;
        let now = Instant::now();
        // Offsets of topics deleted while the group was not loaded go too (Kafka drops the
        // offsets of deleted topics).
        {
            let img = shard.image.borrow();
            for offs in offsets.values_mut() {
                offs.retain(|(t, _), _| img.topics.contains_key(t.as_str()));
            }
        }
        let mut groups = self.groups.borrow_mut();
        let mut loaded = 0;
        let names: HashSet<String> = offsets.keys().chain(metas.keys()).cloned().collect();
        for name in names {
            let offs = offsets.remove(&name).unwrap_or_default();
            let meta = metas.remove(&name).flatten();
            if meta.is_none() && offs.is_empty() {
                continue;
            }
            let mut g = match meta {
                Some(v) => Group::from_value(&name, v, now),
                None => Group::new(&name),
            };
            g.offsets = offs;
            groups.insert(name, g);
            loaded += 1;
        }
        self.loaded.borrow_mut().insert(key);
        self.written.borrow_mut().insert(key, n as u64);
        if n == 0 {
            return Ok(());
        }
        info!(
            partition = key.1,
            groups = loaded,
            records = n,
            undecodable = bad,
            ms = started.elapsed().as_millis() as u64,
            "loaded consumer groups"
        );
        Ok(())
    }

    /// Serves a group request on the coordinating shard.
    pub async fn handle(
        self: &Rc<Self>,
        shard: &Shard,
        key: PartitionKey,
        call: GroupCall,
    ) -> GroupAnswer {
        if let GroupCall::List = call {
            return GroupAnswer::List(self.list(shard).await);
        }
        if let Err(e) = self.ensure_loaded(shard, key).await {
            return GroupAnswer::Error(e);
        }
        match call {
            GroupCall::Join {
                req,
                version,
                client_id,
                client_host,
            } => GroupAnswer::Join(
                self.join(shard, key, req, version, client_id, client_host)
                    .await,
            ),
            GroupCall::Sync { req } => GroupAnswer::Sync(self.sync(shard, key, req).await),
            GroupCall::Heartbeat { req } => GroupAnswer::Error(self.heartbeat(req)),
            GroupCall::Leave { group, members } => self.leave(shard, key, &group, members),
            GroupCall::Commit { req, version } => {
                GroupAnswer::Commit(self.commit(shard, key, req, version).await)
            }
            GroupCall::FetchOffsets { group, topics } => {
                GroupAnswer::Offsets(self.fetch_offsets(&group, topics))
            }
            GroupCall::DeleteOffsets { req } => self.delete_offsets(shard, key, req).await,
            GroupCall::Describe { group } => GroupAnswer::Describe(self.describe(&group)),
            GroupCall::Delete { group } => {
                GroupAnswer::Error(self.delete(shard, key, &group).await)
            }
            GroupCall::List => unreachable!("answered above"),
        }
    }

    /// Writes the group's metadata if a change asked for it; returns the durability future.
    fn store_if_dirty(
        &self,
        shard: &Shard,
        key: PartitionKey,
        g: &mut Group,
    ) -> Option<Result<CommitWaiter, ResponseError>> {
        if !g.take_dirty() {
            return None;
        }
        Some(Self::write(shard, key, vec![Self::group_record(g)]))
    }

    async fn join(
        self: &Rc<Self>,
        shard: &Shard,
        key: PartitionKey,
        req: JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> JoinGroupResponse {
        let member_id = req.member_id.to_string();
        let fail = |e: ResponseError| {
            JoinGroupResponse::default()
                .with_error_code(e.code())
                .with_generation_id(-1)
                .with_member_id(req.member_id.clone())
        };
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        let st = req.session_timeout_ms;
        if st < self.cfg.min_session_timeout_ms || st > self.cfg.max_session_timeout_ms {
            return fail(ResponseError::InvalidSessionTimeout);
        }
        let args = JoinArgs {
            member_id: member_id.clone(),
            instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id,
            client_host,
            session_timeout_ms: st,
            // v0 has no rebalance timeout: the session timeout serves.
            rebalance_timeout_ms: if version >= 1 {
                req.rebalance_timeout_ms
            } else {
                st
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        let now = Instant::now();
        let (step, store) = {
            let mut groups = self.groups.borrow_mut();
            if !member_id.is_empty() && !groups.contains_key(&group_id) {
                return fail(ResponseError::UnknownMemberId);
            }
            let g = groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(&group_id));
            let step = g.join(args, now, self.cfg.initial_rebalance_delay);
            let store = self.store_if_dirty(shard, key, g);
            (step, store)
        };
        if let Some(store) = store {
            // A static member replaced in a stable group: answer once that is stored.
            let stored = match store {
                Ok(w) => w.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                return fail(ResponseError::CoordinatorNotAvailable);
            }
        }
        match step {
            JoinStep::Reply(r) => r,
            JoinStep::Wait(rx) => rx
                .recv_async()
                .await
                .unwrap_or_else(|_| fail(ResponseError::CoordinatorNotAvailable)),
        }
    }

    async fn sync(
        self: &Rc<Self>,
        shard: &Shard,
        key: PartitionKey,
        req: SyncGroupRequest,
    ) -> SyncReply {
        let group_id = req.group_id.0.to_string();
        let now = Instant::now();
        let (step, store) = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(&group_id) else {
                return SyncReply::error(ResponseError::UnknownMemberId);
            };
            let step = g.sync(
                req.member_id.as_str(),
                req.group_instance_id.as_deref(),
                req.generation_id,
                req.protocol_type.as_deref(),
                req.protocol_name.as_deref(),
                req.assignments
                    .iter()
                    .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                    .collect(),
            );
            let generation = g.storing();
            let store = self.store_if_dirty(shard, key, g).map(|w| (generation, w));
            (step, store)
        };
        if let Some((Some(generation), store)) = store {
            // The assignment is handed out once stored, even if this request goes away.
            let me = self.clone();
            let gid = group_id.clone();
            glommio::spawn_local(async move {
                let stored = match store {
                    Ok(w) => w.await.is_ok(),
                    Err(_) => false,
                };
                if let Some(g) = me.groups.borrow_mut().get_mut(&gid) {
                    g.finish_store(generation, stored, Instant::now());
                }
            })
            .detach();
        }
        let _ = now;
        match step {
            SyncStep::Reply(r) => r,
            SyncStep::Wait(rx) => rx
                .recv_async()
                .await
                .unwrap_or_else(|_| SyncReply::error(ResponseError::CoordinatorNotAvailable)),
        }
    }

    fn heartbeat(&self, req: HeartbeatRequest) -> ResponseError {
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(req.group_id.0.as_str()) else {
            return ResponseError::UnknownMemberId;
        };
        g.heartbeat(
            req.member_id.as_str(),
            req.group_instance_id.as_deref(),
            req.generation_id,
            Instant::now(),
        )
    }

    fn leave(
        &self,
        shard: &Shard,
        key: PartitionKey,
        group: &str,
        members: Vec<(String, Option<String>)>,
    ) -> GroupAnswer {
        let mut groups = self.groups.borrow_mut();
        let Some(g) = groups.get_mut(group) else {
            // Kafka: every member of an unknown group is an unknown member (v0-2 report it at
            // the top level).
            let n = members.len();
            return GroupAnswer::Leave(ok(), vec![ResponseError::UnknownMemberId; n]);
        };
        let now = Instant::now();
        let errors = members
            .iter()
            .map(|(m, i)| g.leave(m, i.as_deref(), now))
            .collect();
        if let Some(Err(e)) = self.store_if_dirty(shard, key, g) {
            warn!(%group, error = ?e, "storing the group after members left");
        }
        GroupAnswer::Leave(ok(), errors)
    }

    async fn commit(
        &self,
        shard: &Shard,
        key: PartitionKey,
        req: OffsetCommitRequest,
        version: i16,
    ) -> Result<Vec<Vec<ResponseError>>, ResponseError> {
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let generation = req.generation_id_or_member_epoch;
        let now_ms = wall_ms();
        let mut errors: Vec<Vec<ResponseError>> = Vec::with_capacity(req.topics.len());
        let mut records = Vec::new();
        let mut applied: Vec<((String, i32), Committed)> = Vec::new();
        let seq = self.next_seq();
        let waiter = {
            let mut groups = self.groups.borrow_mut();
            match groups.get(&group_id) {
                Some(g) => g.validate_commit(
                    req.member_id.as_str(),
                    req.group_instance_id.as_deref(),
                    generation,
                )?,
                None if generation < 0 => {}
                // Kafka: GROUP_ID_NOT_FOUND from v9, ILLEGAL_GENERATION before.
                None if version >= 9 => return Err(ResponseError::GroupIdNotFound),
                None => return Err(ResponseError::IllegalGeneration),
            }
            let img = shard.image.borrow();
            for t in &req.topics {
                let topic = img.topics.get(t.name.0.as_str());
                let mut errs = Vec::with_capacity(t.partitions.len());
                for p in &t.partitions {
                    let known = topic.is_some_and(|tm| {
                        p.partition_index >= 0
                            && (p.partition_index as usize) < tm.partition_shards.len()
                    });
                    let metadata = p.committed_metadata.as_deref().unwrap_or("");
                    if !known {
                        errs.push(ResponseError::UnknownTopicOrPartition);
                    } else if metadata.len() > self.cfg.offset_metadata_max_bytes {
                        errs.push(ResponseError::OffsetMetadataTooLarge);
                    } else {
                        let value = OffsetValue {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: metadata.to_string(),
                            commit_timestamp: now_ms,
                        };
                        let k = RecordKey::Offset {
                            group: group_id.clone(),
                            topic: t.name.0.to_string(),
                            partition: p.partition_index,
                        };
                        records.push((k.encode(), Some(value.encode())));
                        applied.push((
                            (t.name.0.to_string(), p.partition_index),
                            Committed {
                                offset: value.offset,
                                leader_epoch: value.leader_epoch,
                                metadata: value.metadata,
                                commit_timestamp: now_ms,
                                seq,
                            },
                        ));
                        errs.push(ok());
                    }
                }
                errors.push(errs);
            }
            drop(img);
            if records.is_empty() {
                None
            } else {
                let g = groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(&group_id));
                let _ = g;
                Some(Self::write(shard, key, records))
            }
        };
        if let Some(w) = waiter {
            let stored = match w {
                Ok(w) => w.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                for errs in &mut errors {
                    for e in errs.iter_mut() {
                        if *e == ok() {
                            *e = ResponseError::CoordinatorNotAvailable;
                        }
                    }
                }
                return Ok(errors);
            }
            let mut groups = self.groups.borrow_mut();
            if let Some(g) = groups.get_mut(&group_id) {
                for (k, c) in applied {
                    let newer = g.offsets.get(&k).is_none_or(|old| old.seq <= c.seq);
                    if newer {
                        g.offsets.insert(k, c);
                    }
                }
            }
        }
        Ok(errors)
    }

    fn fetch_offsets(&self, group: &str, topics: Option<Vec<(String, Vec<i32>)>>) -> TopicOffsets {
        let groups = self.groups.borrow();
        let g = groups.get(group);
        match topics {
            Some(ts) => ts
                .into_iter()
                .map(|(t, ps)| {
                    let parts = ps
                        .into_iter()
                        .map(|p| {
                            let c = g.and_then(|g| g.offsets.get(&(t.clone(), p)).cloned());
                            (p, c)
                        })
                        .collect();
                    (t, parts)
                })
                .collect(),
            None => {
                let mut by_topic: std::collections::BTreeMap<
                    String,
                    Vec<(i32, Option<Committed>)>,
                > = Default::default();
                if let Some(g) = g {
                    for ((t, p), c) in &g.offsets {
                        by_topic
                            .entry(t.clone())
                            .or_default()
                            .push((*p, Some(c.clone())));
                    }
                }
                by_topic
                    .into_iter()
                    .map(|(t, mut ps)| {
                        ps.sort_by_key(|(p, _)| *p);
                        (t, ps)
                    })
                    .collect()
            }
        }
    }

    async fn delete_offsets(
        &self,
        shard: &Shard,
        key: PartitionKey,
        req: OffsetDeleteRequest,
    ) -> GroupAnswer {
        let group_id = req.group_id.0.to_string();
        let mut errors = Vec::new();
        let mut records = Vec::new();
        let mut removed = Vec::new();
        let waiter = {
            let groups = self.groups.borrow();
            let Some(g) = groups.get(&group_id).filter(|g| g.state != State::Dead) else {
                return GroupAnswer::DeleteOffsets(ResponseError::GroupIdNotFound, Vec::new());
            };
            if g.state != State::Empty && g.protocol_type.as_deref() != Some("consumer") {
                return GroupAnswer::DeleteOffsets(ResponseError::NonEmptyGroup, Vec::new());
            }
            let img = shard.image.borrow();
            for t in &req.topics {
                let name = t.name.0.to_string();
                let subscribed = g.subscribed_to(&name);
                let exists = img.topics.contains_key(name.as_str());
                let mut errs = Vec::new();
                for p in &t.partitions {
                    if !exists {
                        errs.push(ResponseError::UnknownTopicOrPartition);
                    } else if subscribed {
                        errs.push(ResponseError::GroupSubscribedToTopic);
                    } else {
                        if g.offsets.contains_key(&(name.clone(), p.partition_index)) {
                            records.push((
                                RecordKey::Offset {
                                    group: group_id.clone(),
                                    topic: name.clone(),
                                    partition: p.partition_index,
                                }
                                .encode(),
                                None,
                            ));
                            removed.push((name.clone(), p.partition_index));
                        }
                        errs.push(ok());
                    }
                }
                errors.push(errs);
            }
            if records.is_empty() {
                None
            } else {
                Some(Self::write(shard, key, records))
            }
        };
        if let Some(w) = waiter {
            let stored = match w {
                Ok(w) => w.await.is_ok(),
                Err(_) => false,
            };
            if !stored {
                return GroupAnswer::DeleteOffsets(
                    ResponseError::CoordinatorNotAvailable,
                    Vec::new(),
                );
            }
            if let Some(g) = self.groups.borrow_mut().get_mut(&group_id) {
                for k in removed {
                    g.offsets.remove(&k);
                }
            }
        }
        GroupAnswer::DeleteOffsets(ok(), errors)
    }

    fn describe(&self, group: &str) -> DescribedGroup {
        let groups = self.groups.borrow();
        let Some(g) = groups.get(group) else {
            return DescribedGroup::default()
                .with_group_id(kafka_protocol::messages::GroupId(s(group)))
                .with_group_state(s("Dead"))
                .with_error_code(ResponseError::GroupIdNotFound.code())
                .with_error_message(Some(s(format!("Group {group} not found."))));
        };
        let stable = g.state == State::Stable;
        let protocol = g.protocol.clone().unwrap_or_default();
        DescribedGroup::default()
            .with_group_id(kafka_protocol::messages::GroupId(s(group)))
            .with_group_state(s(g.state.name()))
            .with_protocol_type(s(g.protocol_type.clone().unwrap_or_default()))
            .with_protocol_data(s(if stable {
                protocol.clone()
            } else {
                String::new()
            }))
            .with_members(
                g.members
                    .iter()
                    .map(|m| {
                        let mut d = DescribedGroupMember::default()
                            .with_member_id(s(m.id.clone()))
                            .with_group_instance_id(m.instance_id.clone().map(s))
                            .with_client_id(s(m.client_id.clone()))
                            .with_client_host(s(m.client_host.clone()));
                        if stable {
                            d.member_metadata = m.metadata(&protocol);
                            d.member_assignment = m.assignment.clone();
                        }
                        d
                    })
                    .collect(),
            )
    }

    async fn list(&self, shard: &Shard) -> Vec<ListedGroup> {
        // Load every offsets partition this shard owns first.
        let keys: Vec<PartitionKey> = {
            let img = shard.image.borrow();
            match img.topics.get(OFFSETS_TOPIC) {
                None => Vec::new(),
                Some(t) => t
                    .partition_shards
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| **o as usize % shard.mesh.nr_shards() == shard.id)
                    .map(|(p, _)| (t.id, p as i32))
                    .collect(),
            }
        };
        for k in keys {
            if let Err(e) = self.ensure_loaded(shard, k).await {
                warn!(partition = k.1, error = ?e, "loading groups for ListGroups");
            }
        }
        self.groups
            .borrow()
            .values()
            .filter(|g| g.state != State::Dead)
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(kafka_protocol::messages::GroupId(s(g.id.clone())))
                    .with_protocol_type(s(g.protocol_type.clone().unwrap_or_default()))
                    .with_group_state(s(g.state.name()))
                    .with_group_type(s("classic"))
            })
            .collect()
    }

    async fn delete(&self, shard: &Shard, key: PartitionKey, group: &str) -> ResponseError {
        if group.is_empty() {
            return ResponseError::InvalidGroupId;
        }
        let waiter = {
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(group).filter(|g| g.state != State::Dead) else {
                return ResponseError::GroupIdNotFound;
            };
            if g.state != State::Empty {
                return ResponseError::NonEmptyGroup;
            }
            let mut records: Vec<(Bytes, Option<Bytes>)> = g
                .offsets
                .keys()
                .map(|(t, p)| {
                    (
                        RecordKey::Offset {
                            group: group.to_string(),
                            topic: t.clone(),
                            partition: *p,
                        }
                        .encode(),
                        None,
                    )
                })
                .collect();
            records.push((
                RecordKey::Group {
                    group: group.to_string(),
                }
                .encode(),
                None,
            ));
            let w = Self::write(shard, key, records);
            if w.is_ok() {
                g.mark_dead();
                groups.remove(group);
            }
            w
        };
        match waiter {
            Ok(w) => match w.await {
                Ok(()) => ok(),
                Err(_) => ResponseError::CoordinatorNotAvailable,
            },
            Err(e) => e,
        }
    }

    /// Removes (and tombstones) every committed offset of a deleted topic.
    pub fn topic_deleted(&self, shard: &Shard, topic: &str) {
        let mut groups = self.groups.borrow_mut();
        for (id, g) in groups.iter_mut() {
            let gone: Vec<(String, i32)> = g
                .offsets
                .keys()
                .filter(|(t, _)| t == topic)
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            let records = gone
                .iter()
                .map(|(t, p)| {
                    g.offsets.remove(&(t.clone(), *p));
                    (
                        RecordKey::Offset {
                            group: id.clone(),
                            topic: t.clone(),
                            partition: *p,
                        }
                        .encode(),
                        None,
                    )
                })
                .collect();
            if let Some((_, key)) = coordinator_of(shard, id) {
                if let Err(e) = Self::write(shard, key, records) {
                    warn!(group = %id, %topic, error = ?e, "tombstoning offsets of a deleted topic");
                }
            }
        }
    }

    /// Expires sessions, finishes rebalances whose time has come, stores what changed, and
    /// now and then expires old offsets of empty groups.
    fn tick(&self, shard: &Shard) {
        let now = Instant::now();
        let expire = now.duration_since(self.last_expiry.get()) >= EXPIRY_EVERY;
        if expire {
            self.last_expiry.set(now);
        }
        let mut groups = self.groups.borrow_mut();
        let mut gone = Vec::new();
        for (id, g) in groups.iter_mut() {
            g.tick(now);
            let Some((_, key)) = coordinator_of(shard, id) else {
                continue;
            };
            let mut records = Vec::new();
            if g.take_dirty() {
                records.push(Self::group_record(g));
            }
            if expire {
                let expired = expired_offsets(g, wall_ms(), self.cfg.offsets_retention);
                for (t, p) in &expired {
                    g.offsets.remove(&(t.clone(), *p));
                    records.push((
                        RecordKey::Offset {
                            group: id.clone(),
                            topic: t.clone(),
                            partition: *p,
                        }
                        .encode(),
                        None,
                    ));
                }
                if !expired.is_empty() && g.state == State::Empty && g.offsets.is_empty() {
                    info!(group = %id, "empty group without offsets removed");
                    records.push((RecordKey::Group { group: id.clone() }.encode(), None));
                    gone.push(id.clone());
                }
            }
            if !records.is_empty() {
                if let Err(e) = Self::write(shard, key, records) {
                    warn!(group = %id, error = ?e, "storing group state");
                }
            }
        }
        for id in gone {
            groups.remove(&id);
        }
    }
}

/// An offsets partition is rewritten once it holds this many records since its last
/// compaction and at least twice as many as are live.
const COMPACT_MIN_RECORDS: u64 = 10_000;
/// How often partitions are checked for compaction.
const COMPACT_CHECK_EVERY: Duration = Duration::from_secs(2);
/// Records per batch of a compaction snapshot.
const SNAPSHOT_BATCH_RECORDS: usize = 500;

impl Coordinator {
    /// Compacts `__consumer_offsets` partitions by snapshot: the coordinator holds the live
    /// value of every key of a loaded partition (each group's metadata and committed
    /// offsets), so it appends them as fresh records and, once they are durable, moves the
    /// log start to the first of them (DeleteRecords' path: whole older segments are deleted).
    /// Everything below is superseded — like Kafka's log cleaner, only the latest value per
    /// key survives and deleted groups leave nothing behind; unlike it, the survivors get new
    /// offsets (no client reads this topic by offset). Generic log compaction
    /// (`cleanup.policy=compact` for user topics) is not implemented.
    async fn compact_if_due(&self, shard: &Shard) {
        if self.compacting.get() || self.last_compact_check.get().elapsed() < COMPACT_CHECK_EVERY {
            return;
        }
        self.last_compact_check.set(Instant::now());
        let due: Vec<PartitionKey> = {
            let groups = self.groups.borrow();
            let written = self.written.borrow();
            self.loaded
                .borrow()
                .iter()
                .filter(|key| {
                    let n = written.get(key).copied().unwrap_or(0);
                    let live: u64 = groups
                        .values()
                        .filter(|g| coordinator_of(shard, &g.id).is_some_and(|(_, k)| k == **key))
                        .map(|g| 1 + g.offsets.len() as u64)
                        .sum();
                    n >= COMPACT_MIN_RECORDS && n >= 2 * live
                })
                .copied()
                .collect()
        };
        if due.is_empty() {
            return;
        }
        self.compacting.set(true);
        for key in due {
            if let Err(e) = self.compact(shard, key).await {
                warn!(partition = key.1, error = ?e, "compacting {OFFSETS_TOPIC}");
            }
        }
        self.compacting.set(false);
    }

    async fn compact(&self, shard: &Shard, key: PartitionKey) -> Result<(), ResponseError> {
        // The live state, captured and appended without an await in between, so every later
        // write lands after it.
        let (first, waiters, live) = {
            let groups = self.groups.borrow();
            let mut records = Vec::new();
            for g in groups.values() {
                if coordinator_of(shard, &g.id).map(|(_, k)| k) != Some(key) {
                    continue;
                }
                if g.state != State::Empty || g.generation > 0 || g.protocol_type.is_some() {
                    records.push(Self::group_record(g));
                }
                for ((t, p), c) in &g.offsets {
                    let k = RecordKey::Offset {
                        group: g.id.clone(),
                        topic: t.clone(),
                        partition: *p,
                    };
                    let v = OffsetValue {
                        offset: c.offset,
                        leader_epoch: c.leader_epoch,
                        metadata: c.metadata.clone(),
                        commit_timestamp: c.commit_timestamp,
                    };
                    records.push((k.encode(), Some(v.encode())));
                }
            }
            let live = records.len();
            let mut first = None;
            let mut waiters = Vec::new();
            let mut it = records.into_iter().peekable();
            while it.peek().is_some() {
                let chunk: Vec<_> = it.by_ref().take(SNAPSHOT_BATCH_RECORDS).collect();
                let (base, w) = Self::write_at(shard, key, chunk)?;
                first.get_or_insert(base);
                waiters.push(w);
            }
            (first, waiters, live)
        };
        for w in waiters {
            w.await
                .map_err(|_| ResponseError::CoordinatorNotAvailable)?;
        }
        let p = shard
            .partitions
            .get(&key)
            .ok_or(ResponseError::NotCoordinator)?;
        // No live key at all: everything so far is superseded.
        let start = match first {
            Some(f) => f,
            None => p.high_watermark(),
        };
        let before = p.log_start_offset();
        p.delete_records(start).await?;
        self.written.borrow_mut().insert(key, live as u64);
        info!(
            partition = key.1,
            live_records = live,
            log_start_before = before,
            log_start = start,
            "compacted {OFFSETS_TOPIC}"
        );
        Ok(())
    }
}

/// Offsets of an empty group older than the retention (Kafka's KIP-211 rule: a consumer
/// group's offsets expire `retention` after it became empty; a group without a protocol
/// type — offsets committed by the admin client or a standalone consumer — by commit time).
pub fn expired_offsets(g: &Group, now_ms: i64, retention: Duration) -> Vec<(String, i32)> {
    if g.state != State::Empty {
        return Vec::new();
    }
    let retention = retention.as_millis() as i64;
    g.offsets
        .iter()
        .filter(|(_, c)| {
            let base = if g.protocol_type.is_some() {
                g.state_timestamp.max(c.commit_timestamp)
            } else {
                c.commit_timestamp
            };
            now_ms - base >= retention
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Runs the coordinator's timer on a shard until shutdown.
pub fn start_ticker(shard: Rc<Shard>) {
    glommio::spawn_local(async move {
        while !shard.shutdown.is_fired() {
            glommio::timer::sleep(TICK).await;
            shard.groups.tick(&shard);
            let coordinator = shard.groups.clone();
            coordinator.compact_if_due(&shard).await;
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_match_kafka() {
        // Java: "my-group".hashCode() == -1906497762; Utils.abs(...) % 50 == 12.
        assert_eq!(java_hash("my-group"), -1906497762);
        assert_eq!(partition_for("my-group", 50), 12);
        assert_eq!(java_hash(""), 0);
        assert_eq!(partition_for("", 16), 0);
        for g in ["a", "consumer-group-1", "ünïcode", "\u{1F600}"] {
            let p = partition_for(g, 16);
            assert!((0..16).contains(&p));
        }
    }

    #[test]
    fn offsets_expire_only_for_empty_groups_after_retention() {
        let mut g = Group::new("g");
        g.offsets.insert(
            ("t".into(), 0),
            Committed {
                offset: 1,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp: 1_000,
                seq: 1,
            },
        );
        let day = Duration::from_secs(86_400);
        assert!(expired_offsets(&g, 1_000 + 86_399_000, day).is_empty());
        assert_eq!(expired_offsets(&g, 1_000 + 86_400_000, day).len(), 1);
        g.state = State::Stable;
        assert!(expired_offsets(&g, i64::MAX / 2, day).is_empty());
    }
}
