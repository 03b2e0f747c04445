//! The classic consumer-group protocol: committed offsets (OffsetFetch / OffsetCommit) and a
//! group member (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup) that computes
//! the range assignment itself when the coordinator makes it the leader.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message};

use super::{group_id, sb, topic_name, Client, KafkaError};

pub const PROTOCOL_TYPE: &str = "consumer";
pub const ASSIGNOR: &str = "range";
/// Kafka's consumer defaults (session.timeout.ms, max.poll.interval.ms, heartbeat.interval.ms).
pub const SESSION_TIMEOUT_MS: i32 = 45_000;
pub const REBALANCE_TIMEOUT_MS: i32 = 60_000;
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// Bound on join attempts in one rebalance (each failure is a retriable coordinator answer).
const JOIN_ATTEMPTS_MAX: usize = 20;

/// (topic, partition) → offset.
pub type Offsets = BTreeMap<(String, i32), i64>;

// ------------------------------------------------------------------ consumer protocol

/// The `metadata` of a JoinGroup protocol: a version prefix, then the subscription.
pub fn encode_subscription(topics: &[String]) -> Result<Bytes> {
    let sub =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| sb(t)).collect());
    versioned(&sub, 0)
}

pub fn decode_subscription(mut b: Bytes) -> Result<Vec<String>> {
    let v = read_version::<ConsumerProtocolSubscription>(&mut b)?;
    let sub = ConsumerProtocolSubscription::decode(&mut b, v)
        .map_err(|e| anyhow!("undecodable subscription: {e}"))?;
    Ok(sub.topics.iter().map(|t| t.to_string()).collect())
}

pub fn encode_assignment(assigned: &BTreeMap<String, Vec<i32>>) -> Result<Bytes> {
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        assigned
            .iter()
            .map(|(t, ps)| {
                AssignedPartitions::default()
                    .with_topic(topic_name(t))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    versioned(&a, 0)
}

/// An empty `assignment` (a member that got nothing) decodes to no partitions.
pub fn decode_assignment(mut b: Bytes) -> Result<BTreeMap<String, Vec<i32>>> {
    if b.is_empty() {
        return Ok(BTreeMap::new());
    }
    let v = read_version::<ConsumerProtocolAssignment>(&mut b)?;
    let a = ConsumerProtocolAssignment::decode(&mut b, v)
        .map_err(|e| anyhow!("undecodable assignment: {e}"))?;
    Ok(a.assigned_partitions
        .into_iter()
        .map(|tp| (tp.topic.0.to_string(), tp.partitions))
        .collect())
}

fn versioned<M: Encodable>(m: &M, version: i16) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    m.encode(&mut buf, version)
        .map_err(|e| anyhow!("encoding consumer protocol data: {e}"))?;
    Ok(buf.freeze())
}

/// Newer versions only append fields, so data of a version above ours decodes as our newest.
fn read_version<M: Message>(b: &mut Bytes) -> Result<i16> {
    if b.len() < 2 {
        bail!("consumer protocol data shorter than its version");
    }
    let v = b.get_i16();
    if v < 0 {
        bail!("consumer protocol data of version {v}");
    }
    Ok(v.min(M::VERSIONS.max))
}

/// Kafka's RangeAssignor: per topic, the subscribed members sorted by id each take a
/// contiguous range; the first `partitions % members` take one extra.
pub fn range_assign(
    members: &[(String, Vec<String>)],
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = members
        .iter()
        .map(|(m, _)| (m.clone(), BTreeMap::new()))
        .collect();
    for (topic, &count) in partition_counts {
        let mut subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(m, _)| m)
            .collect();
        if subscribed.is_empty() || count <= 0 {
            continue;
        }
        subscribed.sort();
        let n = subscribed.len() as i32;
        let (per, extra) = (count / n, count % n);
        for (i, member) in subscribed.into_iter().enumerate() {
            let i = i as i32;
            let start = per * i + i.min(extra);
            let len = per + i32::from(i < extra);
            if len > 0 {
                out.get_mut(member)
                    .expect("every member has an entry")
                    .insert(topic.clone(), (start..start + len).collect());
            }
        }
    }
    out
}

// ------------------------------------------------------------------ committed offsets

/// OffsetFetch: committed offsets of `group` (`topics`: `None` = every committed partition).
/// Partitions without a commit are left out.
pub fn fetch_committed(
    client: &mut Client,
    coordinator: i32,
    group: &str,
    topics: Option<&BTreeMap<String, Vec<i32>>>,
) -> Result<Offsets> {
    let conn = client.node(coordinator)?;
    let v = conn.version::<OffsetFetchRequest>()?;
    let mut req = OffsetFetchRequest::default();
    if v >= 8 {
        let mut g = OffsetFetchRequestGroup::default().with_group_id(group_id(group));
        g.topics = topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopics::default()
                        .with_name(topic_name(t))
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
        req.groups = vec![g];
    } else {
        req.group_id = group_id(group);
        req.topics = match topics {
            Some(ts) => Some(
                ts.iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(topic_name(t))
                            .with_partition_indexes(ps.clone())
                    })
                    .collect(),
            ),
            None if v >= 2 => None,
            None => bail!("OffsetFetch v{v} cannot list all of a group's offsets"),
        };
    }
    let resp = conn.send_at(&req, v)?;
    let mut out = Offsets::new();
    let mut push = |t: String, p: i32, offset: i64, code: i16| -> Result<()> {
        if let Some(e) = KafkaError::from_code(code, None) {
            bail!("committed offset of {t}/{p} in group {group}: {e}");
        }
        if offset >= 0 {
            out.insert((t, p), offset);
        }
        Ok(())
    };
    if v >= 8 {
        let g = resp
            .groups
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("OffsetFetch answered no group"))?;
        if let Some(e) = KafkaError::from_code(g.error_code, None) {
            return Err(anyhow::Error::new(e)).context(format!("OffsetFetch for group {group}"));
        }
        for t in g.topics {
            for p in t.partitions {
                push(
                    t.name.0.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )?;
            }
        }
    } else {
        if let Some(e) = KafkaError::from_code(resp.error_code, None) {
            return Err(anyhow::Error::new(e)).context(format!("OffsetFetch for group {group}"));
        }
        for t in resp.topics {
            for p in t.partitions {
                push(
                    t.name.0.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                )?;
            }
        }
    }
    Ok(out)
}

/// OffsetCommit; returns each partition's result. `generation` −1 with an empty member id
/// commits as an admin (accepted only while the group has no members).
pub fn commit(
    client: &mut Client,
    coordinator: i32,
    group: &str,
    generation: i32,
    member_id: &str,
    offsets: &Offsets,
) -> Result<BTreeMap<(String, i32), Option<KafkaError>>> {
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for ((t, p), o) in offsets {
        topics.entry(t.as_str()).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(*p)
                .with_committed_offset(*o),
        );
    }
    let req = OffsetCommitRequest::default()
        .with_group_id(group_id(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(sb(member_id))
        .with_topics(
            topics
                .into_iter()
                .map(|(t, ps)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(topic_name(t))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let resp = client.node(coordinator)?.send(&req)?;
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            out.insert(
                (t.name.0.to_string(), p.partition_index),
                KafkaError::from_code(p.error_code, None),
            );
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------ membership

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Not due yet, or the coordinator answered OK.
    Fine,
    /// The group is rebalancing (or forgot us): commit, then `rejoin`.
    Rejoin,
}

/// This CLI as one member of a classic consumer group.
pub struct Member {
    pub group: String,
    pub topics: Vec<String>,
    pub member_id: String,
    pub generation: i32,
    pub coordinator: i32,
    pub assignment: BTreeMap<String, Vec<i32>>,
    pub is_leader: bool,
    last_heartbeat: Instant,
}

impl Member {
    /// Finds the coordinator and joins (JoinGroup + SyncGroup) subscribed to `topics`.
    pub fn join(client: &mut Client, group: &str, topics: Vec<String>) -> Result<Member> {
        let coordinator = client.find_coordinator(group)?;
        let mut m = Member {
            group: group.to_string(),
            topics,
            member_id: String::new(),
            generation: -1,
            coordinator,
            assignment: BTreeMap::new(),
            is_leader: false,
            last_heartbeat: Instant::now(),
        };
        m.rejoin(client)?;
        Ok(m)
    }

    /// One rebalance: JoinGroup until the coordinator answers, SyncGroup, new assignment.
    pub fn rejoin(&mut self, client: &mut Client) -> Result<()> {
        for attempt in 0..JOIN_ATTEMPTS_MAX {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 * attempt.min(10) as u64));
            }
            match self.join_once(client)? {
                Step::Done => {
                    self.last_heartbeat = Instant::now();
                    return Ok(());
                }
                Step::Retry => continue,
                Step::FindCoordinator => {
                    client.forget_node(self.coordinator);
                    self.coordinator = client.find_coordinator(&self.group)?;
                }
            }
        }
        bail!(
            "could not join group {} in {JOIN_ATTEMPTS_MAX} attempts",
            self.group
        )
    }

    fn join_once(&mut self, client: &mut Client) -> Result<Step> {
        let timeout = client.timeout();
        let conn = client.node(self.coordinator)?;
        let v = conn.version::<JoinGroupRequest>()?;
        let mut req = JoinGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_session_timeout_ms(SESSION_TIMEOUT_MS)
            .with_member_id(sb(&self.member_id))
            .with_protocol_type(sb(PROTOCOL_TYPE))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(sb(ASSIGNOR))
                .with_metadata(encode_subscription(&self.topics)?)]);
        if v >= 1 {
            req.rebalance_timeout_ms = REBALANCE_TIMEOUT_MS;
        }
        // JoinGroup is answered when the rebalance completes: wait as long as it may take.
        conn.set_read_timeout(Duration::from_millis(REBALANCE_TIMEOUT_MS as u64) + timeout)?;
        let resp = conn.send_at(&req, v);
        conn.set_read_timeout(timeout)?;
        let resp = resp?;
        if let Some(e) = KafkaError::from_code(resp.error_code, None) {
            return self.on_error(e, "JoinGroup", resp.member_id.to_string());
        }
        self.member_id = resp.member_id.to_string();
        self.generation = resp.generation_id;
        self.is_leader = resp.leader == resp.member_id;
        let protocol = resp
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|| ASSIGNOR.to_string());
        let assignments = if self.is_leader && !resp.skip_assignment {
            let members: Vec<(String, Vec<String>)> = resp
                .members
                .iter()
                .map(|m| {
                    decode_subscription(m.metadata.clone())
                        .map(|topics| (m.member_id.to_string(), topics))
                })
                .collect::<Result<_>>()?;
            let mut all: Vec<String> = members.iter().flat_map(|(_, t)| t.clone()).collect();
            all.sort();
            all.dedup();
            let md = client.metadata(Some(&all))?;
            let counts: BTreeMap<String, i32> = md
                .topics
                .iter()
                .filter(|t| t.error.is_none())
                .map(|t| (t.name.clone(), t.partitions.len() as i32))
                .collect();
            range_assign(&members, &counts)
                .iter()
                .map(|(m, a)| {
                    Ok(SyncGroupRequestAssignment::default()
                        .with_member_id(sb(m))
                        .with_assignment(encode_assignment(a)?))
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![]
        };
        let conn = client.node(self.coordinator)?;
        let v = conn.version::<SyncGroupRequest>()?;
        let mut req = SyncGroupRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(sb(&self.member_id))
            .with_assignments(assignments);
        if v >= 5 {
            req.protocol_type = Some(sb(PROTOCOL_TYPE));
            req.protocol_name = Some(sb(&protocol));
        }
        conn.set_read_timeout(Duration::from_millis(REBALANCE_TIMEOUT_MS as u64) + timeout)?;
        let resp = conn.send_at(&req, v);
        conn.set_read_timeout(timeout)?;
        let resp = resp?;
        if let Some(e) = KafkaError::from_code(resp.error_code, None) {
            return self.on_error(e, "SyncGroup", self.member_id.clone());
        }
        self.assignment = decode_assignment(resp.assignment)?;
        Ok(Step::Done)
    }

    fn on_error(&mut self, e: KafkaError, api: &str, member_id: String) -> Result<Step> {
        Ok(match ResponseError::try_from_code(e.code) {
            // KIP-394: the first JoinGroup only learns the member id.
            Some(ResponseError::MemberIdRequired) => {
                self.member_id = member_id;
                Step::Retry
            }
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                self.generation = -1;
                Step::Retry
            }
            Some(ResponseError::RebalanceInProgress | ResponseError::IllegalGeneration) => {
                Step::Retry
            }
            Some(ResponseError::CoordinatorLoadInProgress) => Step::Retry,
            Some(ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable) => {
                Step::FindCoordinator
            }
            _ => bail!("{api} for group {}: {e}", self.group),
        })
    }

    /// Heartbeats when one is due (every `HEARTBEAT_INTERVAL`).
    pub fn heartbeat(&mut self, client: &mut Client) -> Result<Heartbeat> {
        if self.last_heartbeat.elapsed() < HEARTBEAT_INTERVAL {
            return Ok(Heartbeat::Fine);
        }
        let req = HeartbeatRequest::default()
            .with_group_id(group_id(&self.group))
            .with_generation_id(self.generation)
            .with_member_id(sb(&self.member_id));
        let resp = client.node(self.coordinator)?.send(&req)?;
        self.last_heartbeat = Instant::now();
        match KafkaError::from_code(resp.error_code, None) {
            None => Ok(Heartbeat::Fine),
            Some(e) => match self.on_error(e, "Heartbeat", self.member_id.clone())? {
                Step::FindCoordinator => {
                    client.forget_node(self.coordinator);
                    self.coordinator = client.find_coordinator(&self.group)?;
                    Ok(Heartbeat::Rejoin)
                }
                _ => Ok(Heartbeat::Rejoin),
            },
        }
    }

    /// Commits as this member (generation and member id); partition errors fail the call.
    pub fn commit(&mut self, client: &mut Client, offsets: &Offsets) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let results = commit(
            client,
            self.coordinator,
            &self.group,
            self.generation,
            &self.member_id,
            offsets,
        )?;
        for ((t, p), e) in results {
            if let Some(e) = e {
                bail!("committing {t}/{p} for group {}: {e}", self.group);
            }
        }
        Ok(())
    }

    /// LeaveGroup, so the others rebalance now instead of after the session timeout.
    pub fn leave(&mut self, client: &mut Client) -> Result<()> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let conn = client.node(self.coordinator)?;
        let v = conn.version::<LeaveGroupRequest>()?;
        let mut req = LeaveGroupRequest::default().with_group_id(group_id(&self.group));
        if v >= 3 {
            let mut who = MemberIdentity::default().with_member_id(sb(&self.member_id));
            if v >= 5 {
                who.reason = Some(sb("the spate CLI consumer is done"));
            }
            req.members = vec![who];
        } else {
            req.member_id = sb(&self.member_id);
        }
        let resp = conn.send_at(&req, v)?;
        if let Some(e) = KafkaError::from_code(resp.error_code, None) {
            bail!("LeaveGroup for group {}: {e}", self.group);
        }
        self.member_id.clear();
        Ok(())
    }
}

enum Step {
    Done,
    Retry,
    FindCoordinator,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        list.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    #[test]
    fn range_gives_the_first_members_the_extra_partitions() {
        let counts = BTreeMap::from([("a".to_string(), 7), ("b".to_string(), 2)]);
        // Out of order on purpose: the assignor sorts by member id.
        let got = range_assign(
            &members(&[("m3", &["a"]), ("m1", &["a", "b"]), ("m2", &["a", "b"])]),
            &counts,
        );
        assert_eq!(got["m1"]["a"], vec![0, 1, 2]);
        assert_eq!(got["m2"]["a"], vec![3, 4]);
        assert_eq!(got["m3"]["a"], vec![5, 6]);
        assert_eq!(got["m1"]["b"], vec![0]);
        assert_eq!(got["m2"]["b"], vec![1]);
        assert!(!got["m3"].contains_key("b"));
    }

    #[test]
    fn range_leaves_surplus_members_empty() {
        let counts = BTreeMap::from([("a".to_string(), 1)]);
        let got = range_assign(&members(&[("x", &["a"]), ("y", &["a"])]), &counts);
        assert_eq!(got["x"]["a"], vec![0]);
        assert!(got["y"].is_empty());
    }

    #[test]
    fn consumer_protocol_data_round_trips() {
        let topics = vec!["t1".to_string(), "t2".to_string()];
        assert_eq!(
            decode_subscription(encode_subscription(&topics).unwrap()).unwrap(),
            topics
        );
        let a = BTreeMap::from([("t1".to_string(), vec![0, 2])]);
        assert_eq!(
            decode_assignment(encode_assignment(&a).unwrap()).unwrap(),
            a
        );
        assert!(decode_assignment(Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn a_newer_subscription_version_decodes_as_ours() {
        // Java consumers send v3 (owned partitions, generation, rack); a future v4 appends.
        let sub = ConsumerProtocolSubscription::default()
            .with_topics(vec![sb("t")])
            .with_generation_id(4);
        let mut b = BytesMut::new();
        b.put_i16(3);
        sub.encode(&mut b, 3).unwrap();
        assert_eq!(
            decode_subscription(b.freeze()).unwrap(),
            vec!["t".to_string()]
        );
    }
}
