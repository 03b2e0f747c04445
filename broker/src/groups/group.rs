//! One classic consumer group's state machine (Kafka's `ClassicGroup`): members, generations,
//! the join/sync barrier, static membership and session expiry.
//!
//! Pure: time comes in as an argument and waiting members get channels that the machine
//! completes. Persistence is the coordinator's job: a change that must reach
//! `__consumer_offsets` marks the group dirty ([`Group::take_dirty`]).
//!
//! States (Kafka's names): Empty → PreparingRebalance (members join) → CompletingRebalance
//! (join answered, waiting for the leader's SyncGroup) → Stable; any membership change goes
//! back to PreparingRebalance. Dead is a deleted group.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::JoinGroupResponse;
use kafka_protocol::ResponseError;

use super::codec::{GroupValue, MemberValue};
use crate::kafka::handlers::s;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl State {
    /// The name Kafka reports in DescribeGroups and ListGroups.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

/// What a SyncGroup waiter receives.
#[derive(Debug, Clone)]
pub struct SyncReply {
    pub error: ResponseError,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncReply {
    pub fn error(e: ResponseError) -> SyncReply {
        SyncReply {
            error: e,
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// `(name, metadata)` in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    join_tx: Option<flume::Sender<JoinGroupResponse>>,
    sync_tx: Option<flume::Sender<SyncReply>>,
    deadline: Instant,
}

impl Member {
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn awaiting_join(&self) -> bool {
        self.join_tx.is_some()
    }
}

/// A JoinGroup as the state machine sees it.
pub struct JoinArgs {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a new dynamic member first gets MEMBER_ID_REQUIRED and an id (KIP-394).
    pub require_known_member_id: bool,
}

pub enum JoinStep {
    Reply(JoinGroupResponse),
    Wait(flume::Receiver<JoinGroupResponse>),
}

pub enum SyncStep {
    Reply(SyncReply),
    /// Waits for the leader's assignment (and, for the leader, for the group to be stored).
    Wait(flume::Receiver<SyncReply>),
}

/// A committed offset held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Order of the write that carried it (a later write always wins).
    pub seq: u64,
}

pub struct Group {
    pub id: String,
    pub state: State,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    /// In join order (the first to join leads when there is no leader).
    pub members: Vec<Member>,
    /// instance id → member id.
    pub static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the time they expire.
    pending: HashMap<String, Instant>,
    /// PreparingRebalance ends here at the latest.
    rebalance_deadline: Option<Instant>,
    /// A rebalance out of Empty waits at least until here (group.initial.rebalance.delay.ms).
    join_not_before: Option<Instant>,
    /// The generation whose assignment is being stored (leader synced, write in flight).
    storing: Option<i32>,
    /// Wall-clock ms of the last state change.
    pub state_timestamp: i64,
    pub offsets: HashMap<(String, i32), Committed>,
    dirty: bool,
}

fn new_member_id(client_id: &str) -> String {
    format!("{client_id}-{}", uuid::Uuid::new_v4())
}

pub use crate::wall_ms;

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: Vec::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            join_not_before: None,
            storing: None,
            state_timestamp: wall_ms(),
            offsets: HashMap::new(),
            dirty: false,
        }
    }

    /// A group as stored: members come back as Stable members with fresh sessions, as
    /// when Kafka loads a group onto a new coordinator.
    pub fn from_value(id: &str, v: GroupValue, now: Instant) -> Group {
        let mut g = Group::new(id);
        g.protocol_type = Some(v.protocol_type).filter(|p| !p.is_empty());
        g.generation = v.generation;
        g.protocol = v.protocol;
        g.leader = v.leader;
        g.state_timestamp = v.state_timestamp;
        let protocol = g.protocol.clone().unwrap_or_default();
        for m in v.members {
            if let Some(i) = &m.group_instance_id {
                g.static_members.insert(i.clone(), m.member_id.clone());
            }
            g.members.push(Member {
                deadline: now + Duration::from_millis(m.session_timeout_ms.max(0) as u64),
                id: m.member_id,
                instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                session_timeout_ms: m.session_timeout_ms,
                protocols: vec![(protocol.clone(), m.subscription)],
                assignment: m.assignment,
                join_tx: None,
                sync_tx: None,
            });
        }
        g.state = if g.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        g
    }

    pub fn to_value(&self) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp: self.state_timestamp,
            members: self
                .members
                .iter()
                .map(|m| MemberValue {
                    member_id: m.id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Whether a change must be written to `__consumer_offsets`; clears the mark.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    pub fn has_member(&self, id: &str) -> bool {
        self.member(id).is_some()
    }

    fn set_state(&mut self, s: State) {
        self.state = s;
        self.state_timestamp = wall_ms();
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut it = self.members.iter();
        let Some(first) = it.next() else {
            return Vec::new();
        };
        let mut c: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in it {
            c.retain(|n| m.protocols.iter().any(|(p, _)| p == n));
        }
        c
    }

    /// Whether a member with these protocols may join (Kafka's `supportsProtocols`).
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        let c = self.candidate_protocols();
        protocols.iter().any(|(n, _)| c.contains(n))
    }

    /// Each member votes for its most preferred candidate; the most votes wins (ties: the
    /// candidate first in the first member's list).
    fn select_protocol(&self) -> Option<String> {
        let c = self.candidate_protocols();
        let mut votes: Vec<(String, usize)> = c.iter().map(|n| (n.clone(), 0)).collect();
        for m in &self.members {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| c.contains(n)) {
                if let Some(v) = votes.iter_mut().find(|(x, _)| x == n) {
                    v.1 += 1;
                }
            }
        }
        let best = votes.iter().map(|(_, v)| *v).max()?;
        votes.into_iter().find(|(_, v)| *v == best).map(|(n, _)| n)
    }

    fn join_response(&self, member_id: &str, error: ResponseError) -> JoinGroupResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone();
        let mut r = JoinGroupResponse::default()
            .with_error_code(error.code())
            .with_generation_id(self.generation)
            .with_protocol_type(self.protocol_type.clone().map(s))
            .with_protocol_name(protocol.clone().map(s))
            .with_leader(s(leader.clone()))
            .with_member_id(s(member_id));
        if member_id == leader {
            let p = protocol.unwrap_or_default();
            r.members = self
                .members
                .iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(m.id.clone()))
                        .with_group_instance_id(m.instance_id.clone().map(s))
                        .with_metadata(m.metadata(&p))
                })
                .collect();
        }
        r
    }

    fn error_join(member_id: &str, e: ResponseError) -> JoinGroupResponse {
        JoinGroupResponse::default()
            .with_error_code(e.code())
            .with_generation_id(-1)
            .with_member_id(s(member_id))
    }

    /// Handles a JoinGroup (Kafka's `classicGroupJoin`). Validation of the group id and the
    /// session timeout range is the caller's.
    pub fn join(&mut self, a: JoinArgs, now: Instant, initial_delay: Duration) -> JoinStep {
        use ResponseError::*;
        if self.state == State::Dead {
            return JoinStep::Reply(Self::error_join(&a.member_id, CoordinatorNotAvailable));
        }
        if !self.supports(&a.protocol_type, &a.protocols) {
            return JoinStep::Reply(Self::error_join(&a.member_id, InconsistentGroupProtocol));
        }
        if a.member_id.is_empty() {
            return self.join_unknown(a, now, initial_delay);
        }
        // A known id: the second join of KIP-394 or a rejoin.
        if self.pending.remove(&a.member_id).is_some() {
            let id = a.member_id.clone();
            return self.add_member(id, a, now, initial_delay);
        }
        if let Some(instance) = &a.instance_id {
            match self.static_members.get(instance) {
                Some(id) if *id != a.member_id => {
                    return JoinStep::Reply(Self::error_join(&a.member_id, FencedInstanceId));
                }
                None if self.has_member(&a.member_id) => {}
                None => return JoinStep::Reply(Self::error_join(&a.member_id, UnknownMemberId)),
                _ => {}
            }
        }
        if !self.has_member(&a.member_id) {
            return JoinStep::Reply(Self::error_join(&a.member_id, UnknownMemberId));
        }
        match self.state {
            State::PreparingRebalance => self.update_member(a, now, initial_delay),
            State::CompletingRebalance => {
                let same = self
                    .member(&a.member_id)
                    .is_some_and(|m| m.protocols == a.protocols);
                if same {
                    // A resent join (the response was lost): answer it again.
                    JoinStep::Reply(self.join_response(&a.member_id, ResponseError::Unknown(0)))
                } else {
                    self.update_member(a, now, initial_delay)
                }
            }
            State::Stable => {
                let is_leader = self.leader.as_deref() == Some(a.member_id.as_str());
                let same = self
                    .member(&a.member_id)
                    .is_some_and(|m| m.protocols == a.protocols);
                if is_leader || !same {
                    // The leader rejoining (a new subscription to assign) or new metadata.
                    self.update_member(a, now, initial_delay)
                } else {
                    if let Some(m) = self.member_mut(&a.member_id) {
                        m.deadline = now + session(m.session_timeout_ms);
                    }
                    JoinStep::Reply(self.join_response(&a.member_id, ResponseError::Unknown(0)))
                }
            }
            State::Empty | State::Dead => {
                JoinStep::Reply(Self::error_join(&a.member_id, UnknownMemberId))
            }
        }
    }

    fn join_unknown(&mut self, a: JoinArgs, now: Instant, initial_delay: Duration) -> JoinStep {
        // Kafka names a static member after its instance id, a dynamic one after its client.
        let new_id = new_member_id(a.instance_id.as_deref().unwrap_or(&a.client_id));
        if let Some(instance) = a.instance_id.clone() {
            if let Some(old) = self.static_members.get(&instance).cloned() {
                return self.replace_static_member(&old, new_id, a, now, initial_delay);
            }
            return self.add_member(new_id, a, now, initial_delay);
        }
        if a.require_known_member_id {
            let expires = now + session(a.session_timeout_ms);
            self.pending.insert(new_id.clone(), expires);
            return JoinStep::Reply(Self::error_join(&new_id, ResponseError::MemberIdRequired));
        }
        self.add_member(new_id, a, now, initial_delay)
    }

    /// A static member came back with a new member id (KIP-345): the old id is fenced and,
    /// when nothing changed in a stable group, no rebalance happens.
    fn replace_static_member(
        &mut self,
        old: &str,
        new_id: String,
        a: JoinArgs,
        now: Instant,
        initial_delay: Duration,
    ) -> JoinStep {
        let Some(m) = self.member_mut(old) else {
            self.static_members
                .remove(a.instance_id.as_deref().unwrap_or_default());
            return self.add_member(new_id, a, now, initial_delay);
        };
        let same_protocols = m.protocols == a.protocols;
        m.id = new_id.clone();
        m.client_id = a.client_id.clone();
        m.client_host = a.client_host.clone();
        m.session_timeout_ms = a.session_timeout_ms;
        m.rebalance_timeout_ms = a.rebalance_timeout_ms;
        m.deadline = now + session(a.session_timeout_ms);
        if let Some(tx) = m.join_tx.take() {
            let _ = tx.try_send(Self::error_join(old, ResponseError::FencedInstanceId));
        }
        if let Some(tx) = m.sync_tx.take() {
            let _ = tx.try_send(SyncReply::error(ResponseError::FencedInstanceId));
        }
        if let Some(i) = &a.instance_id {
            self.static_members.insert(i.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old) {
            self.leader = Some(new_id.clone());
        }
        match self.state {
            State::Stable if same_protocols => {
                self.dirty = true;
                let mut r = self.join_response(&new_id, ResponseError::Unknown(0));
                // The leader's members list lets it keep its assignment without
                // recomputing it (KIP-814).
                if self.leader.as_deref() == Some(new_id.as_str()) {
                    r.skip_assignment = true;
                }
                JoinStep::Reply(r)
            }
            State::PreparingRebalance => self.update_member(a.with_id(new_id), now, initial_delay),
            _ => {
                let a = a.with_id(new_id);
                self.update_member(a, now, initial_delay)
            }
        }
    }

    fn add_member(
        &mut self,
        id: String,
        a: JoinArgs,
        now: Instant,
        initial_delay: Duration,
    ) -> JoinStep {
        let (tx, rx) = flume::bounded(1);
        if let Some(i) = &a.instance_id {
            self.static_members.insert(i.clone(), id.clone());
        }
        if self.members.is_empty() {
            self.protocol_type = Some(a.protocol_type.clone());
        }
        self.members.push(Member {
            id,
            instance_id: a.instance_id,
            client_id: a.client_id,
            client_host: a.client_host,
            rebalance_timeout_ms: a.rebalance_timeout_ms,
            session_timeout_ms: a.session_timeout_ms,
            protocols: a.protocols,
            assignment: Bytes::new(),
            join_tx: Some(tx),
            sync_tx: None,
            deadline: now + session(a.session_timeout_ms),
        });
        self.member_changed(now, initial_delay);
        JoinStep::Wait(rx)
    }

    fn update_member(&mut self, a: JoinArgs, now: Instant, initial_delay: Duration) -> JoinStep {
        let (tx, rx) = flume::bounded(1);
        let Some(m) = self.member_mut(&a.member_id) else {
            return JoinStep::Reply(Self::error_join(
                &a.member_id,
                ResponseError::UnknownMemberId,
            ));
        };
        if let Some(old) = m.join_tx.replace(tx) {
            let _ = old.try_send(Self::error_join(
                &a.member_id,
                ResponseError::UnknownMemberId,
            ));
        }
        m.protocols = a.protocols;
        m.session_timeout_ms = a.session_timeout_ms;
        m.rebalance_timeout_ms = a.rebalance_timeout_ms;
        m.client_id = a.client_id;
        m.client_host = a.client_host;
        m.deadline = now + session(a.session_timeout_ms);
        self.member_changed(now, initial_delay);
        JoinStep::Wait(rx)
    }

    /// After a member joined or rejoined: start a rebalance if none runs, else see whether
    /// it can complete.
    fn member_changed(&mut self, now: Instant, initial_delay: Duration) {
        match self.state {
            State::PreparingRebalance => {
                // A member joining during the initial delay extends it (Kafka's
                // InitialDelayedJoin), up to the rebalance deadline.
                if let (Some(_), Some(cap)) = (self.join_not_before, self.rebalance_deadline) {
                    self.join_not_before = Some((now + initial_delay).min(cap));
                }
                self.try_complete_join(now)
            }
            _ => self.prepare_rebalance(now, initial_delay),
        }
    }

    fn max_rebalance_timeout(&self) -> Duration {
        Duration::from_millis(
            self.members
                .iter()
                .map(|m| m.rebalance_timeout_ms.max(0) as u64)
                .max()
                .unwrap_or(0),
        )
    }

    /// Kafka's `prepareRebalance`: cancel a running sync, wait for every member to rejoin.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        if self.state == State::CompletingRebalance {
            for m in &mut self.members {
                m.assignment = Bytes::new();
                if let Some(tx) = m.sync_tx.take() {
                    let _ = tx.try_send(SyncReply::error(ResponseError::RebalanceInProgress));
                }
            }
        }
        self.storing = None;
        let from_empty = self.state == State::Empty;
        self.set_state(State::PreparingRebalance);
        let timeout = self.max_rebalance_timeout();
        self.rebalance_deadline = Some(now + timeout);
        self.join_not_before = if from_empty && !initial_delay.is_zero() {
            Some(now + initial_delay.min(timeout))
        } else {
            None
        };
        self.try_complete_join(now);
    }

    /// Completes the join phase when every member has rejoined (and the initial delay has
    /// passed), or when the rebalance deadline has.
    fn try_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.pending.is_empty() && self.members.iter().all(|m| m.awaiting_join());
        let delayed = self.join_not_before.is_some_and(|t| now < t);
        let expired = self.rebalance_deadline.is_some_and(|t| now >= t);
        if (all_joined && !delayed) || expired {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        // Members that did not rejoin in time leave the group.
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|m| !m.awaiting_join())
            .map(|m| m.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.join_not_before = None;
        self.rebalance_deadline = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(State::Empty);
            self.dirty = true;
            return;
        }
        self.protocol = self.select_protocol();
        if self
            .leader
            .as_ref()
            .is_none_or(|l| !self.members.iter().any(|m| &m.id == l))
        {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        self.set_state(State::CompletingRebalance);
        let ids: Vec<String> = self.members.iter().map(|m| m.id.clone()).collect();
        for id in ids {
            let resp = self.join_response(&id, ResponseError::Unknown(0));
            if let Some(m) = self.member_mut(&id) {
                m.deadline = now + session(m.session_timeout_ms);
                if let Some(tx) = m.join_tx.take() {
                    let _ = tx.try_send(resp);
                }
            }
        }
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(pos) = self.members.iter().position(|m| m.id == id) {
            let m = self.members.remove(pos);
            if let Some(i) = &m.instance_id {
                if self.static_members.get(i).map(String::as_str) == Some(id) {
                    self.static_members.remove(i);
                }
            }
            if let Some(tx) = m.join_tx {
                let _ = tx.try_send(Self::error_join(id, ResponseError::UnknownMemberId));
            }
            if let Some(tx) = m.sync_tx {
                let _ = tx.try_send(SyncReply::error(ResponseError::UnknownMemberId));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// A member is gone (left or expired): rebalance without it.
    fn member_left(&mut self, id: &str, now: Instant) {
        self.remove_member(id);
        match self.state {
            State::Stable | State::CompletingRebalance => {
                self.prepare_rebalance(now, Duration::ZERO)
            }
            State::PreparingRebalance => self.try_complete_join(now),
            State::Empty | State::Dead => {}
        }
    }

    /// Checks member id, static instance id and generation (Kafka's `validateMember` and
    /// generation check).
    fn validate_member(
        &self,
        member_id: &str,
        instance: Option<&str>,
    ) -> Result<(), ResponseError> {
        if let Some(i) = instance {
            return match self.static_members.get(i) {
                Some(id) if id == member_id => Ok(()),
                Some(_) => Err(ResponseError::FencedInstanceId),
                None => Err(ResponseError::UnknownMemberId),
            };
        }
        if self.has_member(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncStep {
        use ResponseError::*;
        if self.state == State::Dead {
            return SyncStep::Reply(SyncReply::error(CoordinatorNotAvailable));
        }
        if let Err(e) = self.validate_member(member_id, instance) {
            return SyncStep::Reply(SyncReply::error(e));
        }
        if generation != self.generation {
            return SyncStep::Reply(SyncReply::error(IllegalGeneration));
        }
        if protocol_type.is_some_and(|p| Some(p) != self.protocol_type.as_deref())
            || protocol.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            return SyncStep::Reply(SyncReply::error(InconsistentGroupProtocol));
        }
        match self.state {
            State::Empty | State::Dead => SyncStep::Reply(SyncReply::error(UnknownMemberId)),
            State::PreparingRebalance => SyncStep::Reply(SyncReply::error(RebalanceInProgress)),
            State::CompletingRebalance => {
                let (tx, rx) = flume::bounded(1);
                if let Some(m) = self.member_mut(member_id) {
                    m.sync_tx = Some(tx);
                }
                if self.leader.as_deref() == Some(member_id) && self.storing.is_none() {
                    for m in &mut self.members {
                        m.assignment = assignments
                            .iter()
                            .find(|(id, _)| *id == m.id)
                            .map(|(_, a)| a.clone())
                            .unwrap_or_default();
                    }
                    // Stored first, then handed out (see `finish_store`).
                    self.storing = Some(self.generation);
                    self.dirty = true;
                }
                SyncStep::Wait(rx)
            }
            State::Stable => {
                let assignment = self
                    .member(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                SyncStep::Reply(self.sync_ok(assignment))
            }
        }
    }

    fn sync_ok(&self, assignment: Bytes) -> SyncReply {
        SyncReply {
            error: ResponseError::Unknown(0),
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment,
        }
    }

    /// Whether the leader's assignment of this generation waits to be stored.
    pub fn storing(&self) -> Option<i32> {
        self.storing
    }

    /// The leader's assignment of `generation` was stored (or not): hand it out and become
    /// Stable, or start over.
    pub fn finish_store(&mut self, generation: i32, ok: bool, now: Instant) {
        if self.storing != Some(generation)
            || self.generation != generation
            || self.state != State::CompletingRebalance
        {
            return;
        }
        self.storing = None;
        if !ok {
            for m in &mut self.members {
                m.assignment = Bytes::new();
                if let Some(tx) = m.sync_tx.take() {
                    let _ = tx.try_send(SyncReply::error(ResponseError::CoordinatorNotAvailable));
                }
            }
            self.prepare_rebalance(now, Duration::ZERO);
            return;
        }
        self.set_state(State::Stable);
        let replies: Vec<(usize, SyncReply)> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (i, self.sync_ok(m.assignment.clone())))
            .collect();
        for (i, r) in replies {
            let m = &mut self.members[i];
            m.deadline = now + session(m.session_timeout_ms);
            if let Some(tx) = m.sync_tx.take() {
                let _ = tx.try_send(r);
            }
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> ResponseError {
        use ResponseError::*;
        match self.state {
            State::Dead => return CoordinatorNotAvailable,
            State::Empty => return UnknownMemberId,
            _ => {}
        }
        if let Err(e) = self.validate_member(member_id, instance) {
            return e;
        }
        if generation != self.generation {
            return IllegalGeneration;
        }
        if let Some(m) = self.member_mut(member_id) {
            m.deadline = now + session(m.session_timeout_ms);
        }
        match self.state {
            State::PreparingRebalance => RebalanceInProgress,
            _ => Unknown(0),
        }
    }

    /// One LeaveGroup member: `(member id, instance id)`; returns its error.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        now: Instant,
    ) -> ResponseError {
        use ResponseError::*;
        if self.state == State::Dead {
            return CoordinatorNotAvailable;
        }
        let id = match instance {
            Some(i) => match self.static_members.get(i) {
                None => return UnknownMemberId,
                Some(id) if !member_id.is_empty() && id != member_id => return FencedInstanceId,
                Some(id) => id.clone(),
            },
            None => {
                if self.pending.remove(member_id).is_some() {
                    return Unknown(0);
                }
                if !self.has_member(member_id) {
                    return UnknownMemberId;
                }
                member_id.to_string()
            }
        };
        self.member_left(&id, now);
        Unknown(0)
    }

    /// Expires sessions and pending member ids, completes joins whose time has come.
    pub fn tick(&mut self, now: Instant) {
        self.pending.retain(|_, expires| *expires > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.deadline <= now && !m.awaiting_join() && m.sync_tx.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.member_left(&id, now);
        }
        self.try_complete_join(now);
    }

    /// Kafka's OffsetCommit checks for a classic group (`validateOffsetCommit`).
    pub fn validate_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        use ResponseError::*;
        if self.state == State::Dead {
            return Err(CoordinatorNotAvailable);
        }
        if generation < 0 && self.state == State::Empty {
            return Ok(());
        }
        if generation >= 0 || !member_id.is_empty() || instance.is_some() {
            self.validate_member(member_id, instance)?;
            if generation != self.generation {
                return Err(IllegalGeneration);
            }
        } else if self.state != State::Empty {
            return Err(UnknownMemberId);
        }
        if self.state == State::CompletingRebalance {
            return Err(RebalanceInProgress);
        }
        Ok(())
    }

    /// Whether a member's subscription names `topic` (consumer protocol only).
    pub fn subscribed_to(&self, topic: &str) -> bool {
        if self.protocol_type.as_deref() != Some("consumer") || self.state == State::Empty {
            return false;
        }
        let p = self.protocol.clone().unwrap_or_default();
        self.members.iter().any(|m| {
            super::codec::subscribed_topics(m.metadata(&p))
                .is_some_and(|ts| ts.iter().any(|t| t == topic))
        })
    }

    pub fn mark_dead(&mut self) {
        for id in self
            .members
            .iter()
            .map(|m| m.id.clone())
            .collect::<Vec<_>>()
        {
            self.remove_member(&id);
        }
        self.set_state(State::Dead);
    }
}

fn session(ms: i32) -> Duration {
    Duration::from_millis(ms.max(0) as u64)
}

impl JoinArgs {
    fn with_id(mut self, id: String) -> JoinArgs {
        self.member_id = id;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(id: &str, protocols: &[&str]) -> JoinArgs {
        JoinArgs {
            member_id: id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from_static(b"m")))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn reply(step: JoinStep) -> JoinGroupResponse {
        match step {
            JoinStep::Reply(r) => r,
            JoinStep::Wait(rx) => rx.try_recv().expect("join not complete"),
        }
    }

    /// Joins twice (KIP-394) and returns the member id and the join response.
    fn join_new(g: &mut Group, now: Instant, protocols: &[&str]) -> (String, JoinStep) {
        let r = reply(g.join(args("", protocols), now, Duration::ZERO));
        assert_eq!(r.error_code, ResponseError::MemberIdRequired.code());
        let id = r.member_id.to_string();
        let step = g.join(args(&id, protocols), now, Duration::ZERO);
        (id, step)
    }

    #[test]
    fn one_member_joins_syncs_and_is_stable() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (id, step) = join_new(&mut g, now, &["range"]);
        let r = reply(step);
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, 1);
        assert_eq!(r.leader.as_str(), id);
        assert_eq!(r.members.len(), 1, "the leader gets the member list");
        assert_eq!(g.state, State::CompletingRebalance);
        let SyncStep::Wait(rx) = g.sync(
            &id,
            None,
            1,
            None,
            None,
            vec![(id.clone(), Bytes::from_static(b"a"))],
        ) else {
            panic!("leader sync must wait for the store")
        };
        assert!(g.take_dirty());
        assert!(rx.try_recv().is_err());
        g.finish_store(1, true, now);
        assert_eq!(g.state, State::Stable);
        assert_eq!(&rx.try_recv().unwrap().assignment[..], b"a");
        assert_eq!(g.heartbeat(&id, None, 1, now), ResponseError::Unknown(0));
        assert_eq!(
            g.heartbeat(&id, None, 0, now),
            ResponseError::IllegalGeneration
        );
        assert_eq!(
            g.heartbeat("x", None, 1, now),
            ResponseError::UnknownMemberId
        );
    }

    #[test]
    fn second_member_triggers_rebalance_and_protocol_vote() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, step) = join_new(&mut g, now, &["range", "roundrobin"]);
        reply(step);
        let _ = g.sync(&a, None, 1, None, None, vec![]);
        g.finish_store(1, true, now);
        // b joins: the group rebalances; a learns it from its heartbeat and rejoins.
        let (b, b_step) = join_new(&mut g, now, &["roundrobin", "range"]);
        let JoinStep::Wait(b_rx) = b_step else {
            panic!()
        };
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&a, None, 1, now),
            ResponseError::RebalanceInProgress
        );
        let ra = reply(g.join(args(&a, &["range", "roundrobin"]), now, Duration::ZERO));
        let rb = b_rx.try_recv().unwrap();
        assert_eq!(ra.generation_id, 2);
        assert_eq!(rb.generation_id, 2);
        assert_eq!(ra.leader.as_str(), a, "the old leader stays leader");
        assert_eq!(ra.members.len(), 2);
        assert!(rb.members.is_empty());
        // One vote each: the tie goes to the first candidate in order.
        assert_eq!(ra.protocol_name.as_deref(), Some("range"));
        assert!(g.sync(&b, None, 2, None, None, vec![]).is_wait());
    }

    #[test]
    fn initial_delay_waits_and_is_extended_by_new_members() {
        let t0 = Instant::now();
        let delay = Duration::from_secs(3);
        let mut g = Group::new("g");
        let join = |g: &mut Group, now| {
            let r = reply(g.join(args("", &["range"]), now, delay));
            let id = r.member_id.to_string();
            let JoinStep::Wait(rx) = g.join(args(&id, &["range"]), now, delay) else {
                panic!("the first join waits out the delay")
            };
            rx
        };
        let a = join(&mut g, t0);
        g.tick(t0 + Duration::from_secs(2));
        assert!(a.try_recv().is_err(), "still inside the delay");
        let b = join(&mut g, t0 + Duration::from_secs(2));
        g.tick(t0 + Duration::from_millis(3500));
        assert!(
            a.try_recv().is_err(),
            "b's join extended the delay to t0+5s"
        );
        g.tick(t0 + Duration::from_secs(5));
        let (ra, rb) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert_eq!((ra.generation_id, rb.generation_id), (1, 1));
        assert_eq!(
            ra.members.len() + rb.members.len(),
            2,
            "one rebalance with both"
        );
    }

    #[test]
    fn inconsistent_protocols_and_empty_lists_are_rejected() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let r = reply(g.join(args("", &[]), now, Duration::ZERO));
        assert_eq!(
            r.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
        let (_, step) = join_new(&mut g, now, &["range"]);
        reply(step);
        let r = reply(g.join(args("", &["sticky"]), now, Duration::ZERO));
        assert_eq!(
            r.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
        let mut other = args("", &["range"]);
        other.protocol_type = "connect".into();
        let r = reply(g.join(other, now, Duration::ZERO));
        assert_eq!(
            r.error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
    }

    #[test]
    fn expired_session_leaves_and_last_member_empties_the_group() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, step) = join_new(&mut g, now, &["range"]);
        reply(step);
        let _ = g.sync(&a, None, 1, None, None, vec![]);
        g.finish_store(1, true, now);
        let _ = g.take_dirty();
        g.tick(now + Duration::from_secs(5));
        assert_eq!(g.state, State::Stable);
        g.tick(now + Duration::from_secs(11));
        assert_eq!(g.state, State::Empty);
        assert_eq!(g.generation, 2);
        assert!(g.take_dirty(), "becoming empty is stored");
    }

    #[test]
    fn static_member_rejoin_keeps_generation() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut a = args("", &["range"]);
        a.instance_id = Some("i1".into());
        let r = reply(g.join(a, now, Duration::ZERO));
        assert_eq!(r.error_code, 0, "static members need no second join");
        let old = r.member_id.to_string();
        let _ = g.sync(
            &old,
            Some("i1"),
            1,
            None,
            None,
            vec![(old.clone(), Bytes::from_static(b"x"))],
        );
        g.finish_store(1, true, now);
        let mut again = args("", &["range"]);
        again.instance_id = Some("i1".into());
        let r = reply(g.join(again, now, Duration::ZERO));
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, 1, "no rebalance");
        assert!(r.skip_assignment);
        assert_ne!(r.member_id.as_str(), old);
        assert_eq!(g.state, State::Stable);
        assert_eq!(
            g.heartbeat(&old, Some("i1"), 1, now),
            ResponseError::FencedInstanceId
        );
        let SyncStep::Reply(sr) = g.sync(r.member_id.as_str(), Some("i1"), 1, None, None, vec![])
        else {
            panic!()
        };
        assert_eq!(&sr.assignment[..], b"x");
    }

    #[test]
    fn commit_validation_follows_kafka() {
        let now = Instant::now();
        let mut g = Group::new("g");
        assert_eq!(g.validate_commit("", None, -1), Ok(()));
        assert_eq!(
            g.validate_commit("m", None, 1),
            Err(ResponseError::UnknownMemberId)
        );
        let (a, step) = join_new(&mut g, now, &["range"]);
        reply(step);
        assert_eq!(
            g.validate_commit(&a, None, 1),
            Err(ResponseError::RebalanceInProgress)
        );
        let _ = g.sync(&a, None, 1, None, None, vec![]);
        g.finish_store(1, true, now);
        assert_eq!(g.validate_commit(&a, None, 1), Ok(()));
        assert_eq!(
            g.validate_commit(&a, None, 0),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.validate_commit("", None, -1),
            Err(ResponseError::UnknownMemberId)
        );
    }

    impl SyncStep {
        fn is_wait(&self) -> bool {
            matches!(self, SyncStep::Wait(_))
        }
    }
}
