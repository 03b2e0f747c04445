//! Hand-driven scenarios, each checking one section of the Raft paper (§) or thesis, or one
//! scale feature of the driver. The invariant checker runs after every step here too.

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, Message, MessageType};
use spate_raft::wire::{Envelope, Heartbeat, MessageKind};
use spate_raft::{EntryKind, Event, GroupId, Membership, MembershipChange, NodeId, Prng, Role};

use crate::cluster::Cluster;
use crate::world::{Params, World};

fn three_voters(groups: u64) -> Vec<(GroupId, Membership)> {
    (1..=groups)
        .map(|g| (g, Membership::new([1, 2, 3], [])))
        .collect()
}

/// §5.2 leader election and §5.3 log replication: one leader per group, proposals commit on
/// every replica in the same order; §5.4.2 / §8: each new leader's term starts with a no-op,
/// exposed to the log store as a distinct entry kind (later a Kafka control batch).
#[test]
fn s5_2_s5_3_elect_replicate_and_leader_noop_kind() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let leader = c.leader(1).unwrap();
    let term = c.status(leader, 1).unwrap().term;
    for i in 0..10 {
        c.propose(1, &format!("batch-{i}")).unwrap();
    }
    c.advance(100);
    let reference: Vec<_> = c.committed(leader, 1);
    for id in 1..=3 {
        let log = c.committed(id, 1);
        let data: Vec<_> = log
            .iter()
            .filter(|e| e.kind == EntryKind::Data)
            .map(|e| e.payload.clone())
            .collect();
        assert_eq!(data.len(), 10, "node {id} committed {data:?}");
        assert_eq!(log.len(), reference.len());
        // The leader's no-op opens its term and is not application data.
        let noop = log.iter().find(|e| e.term == term).unwrap();
        assert_eq!(noop.kind, EntryKind::LeaderNoop);
        assert!(noop.payload.is_empty());
    }
    // Empty payloads are refused: they would be indistinguishable from a no-op.
    assert!(c.propose(1, "").is_err());
}

/// §5.1: a follower acknowledges an append only after its fsync; until then the leader cannot
/// count it. With both followers' fsyncs held, nothing commits; releasing one commits.
#[test]
fn s5_1_followers_acknowledge_only_after_fsync() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let leader = c.leader(1).unwrap();
    let followers: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    c.advance(50);
    let before = c.status(leader, 1).unwrap().commit;
    for f in &followers {
        c.held_syncs.insert(*f);
    }
    let p = c.propose(1, "needs-a-quorum").unwrap();
    c.advance(200);
    assert_eq!(
        c.status(leader, 1).unwrap().commit,
        before,
        "committed without durable acks"
    );
    assert!(!c.has_committed(leader, 1, "needs-a-quorum"));
    c.release_syncs(followers[0]);
    c.advance(50);
    assert!(c.status(leader, 1).unwrap().commit >= p.index);
    assert!(c.has_committed(leader, 1, "needs-a-quorum"));
}

/// Raft thesis §10.2.1: the leader sends appends before its own fsync, so replication overlaps
/// it; with the leader's fsync held, the followers' durable copies still form a majority and
/// the entry commits. The leader delivers it only once its own copy is durable.
#[test]
fn thesis_10_2_1_leader_fsync_overlaps_replication() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let leader = c.leader(1).unwrap();
    c.advance(50);
    c.held_syncs.insert(leader);
    let p = c.propose(1, "overlap").unwrap();
    c.advance(50);
    let st = c.status(leader, 1).unwrap();
    assert!(
        st.commit >= p.index,
        "followers' acks did not commit: {st:?}"
    );
    assert!(st.persisted < p.index, "the leader's fsync was held");
    assert!(
        !c.has_committed(leader, 1, "overlap"),
        "delivered before durable"
    );
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    assert!(c.has_committed(follower, 1, "overlap"));
    c.release_syncs(leader);
    c.advance(20);
    assert!(c.has_committed(leader, 1, "overlap"));
}

/// §5.4.1 election restriction: a node whose log misses committed entries cannot win an
/// election, even if it campaigns first.
#[test]
fn s5_4_1_stale_node_cannot_become_leader() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let leader = c.leader(1).unwrap();
    let stale = (1..=3).find(|id| *id != leader).unwrap();
    c.isolated.insert(stale);
    for i in 0..5 {
        c.propose(1, &format!("while-{stale}-was-away-{i}"))
            .unwrap();
    }
    c.advance(100);
    // Bring the stale node back while the old leader disappears, and let it campaign at once.
    c.isolated.remove(&stale);
    c.isolated.insert(leader);
    c.with(stale, |d| d.campaign(1)).unwrap();
    c.step();
    let winner = c.run_until(3_000, |c| c.leader(1).is_some_and(|l| l != leader));
    assert!(winner.is_some(), "no new leader");
    let new_leader = c.leader(1).unwrap();
    assert_ne!(new_leader, stale, "a stale log won an election");
    for i in 0..5 {
        assert!(c.has_committed(new_leader, 1, &format!("while-{stale}-was-away-{i}")));
    }
}

/// §5.4.2: a leader never commits an entry of an earlier term by counting replicas; it commits
/// its own no-op, which commits the earlier entries with it. Here a crashed leader's entry,
/// replicated to a majority but not known committed, is committed by the next leader together
/// with its no-op.
#[test]
fn s5_4_2_previous_term_entries_commit_through_the_new_leaders_noop() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let old = c.leader(1).unwrap();
    c.advance(50);
    // Replicate to the followers but crash the leader before it learns of the acks.
    c.propose(1, "old-term").unwrap();
    c.crash(old);
    c.step();
    let took = c.run_until(3_000, |c| c.leader(1).is_some());
    assert!(took.is_some());
    let new = c.leader(1).unwrap();
    c.advance(50);
    let log = c.committed(new, 1);
    let old_pos = log.iter().position(|e| e.payload == "old-term".as_bytes());
    let term = c.status(new, 1).unwrap().term;
    let noop_pos = log
        .iter()
        .position(|e| e.kind == EntryKind::LeaderNoop && e.term == term);
    assert!(old_pos.is_some() && noop_pos.is_some(), "{log:?}");
    assert!(old_pos < noop_pos);
}

/// §5.1 / Figure 2: term and vote survive a crash; an acknowledged entry survives a crash of
/// the follower that acknowledged it.
#[test]
fn s5_1_hard_state_and_acknowledged_entries_survive_crashes() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let p = c.propose(1, "durable").unwrap();
    c.advance(50);
    for id in 1..=3 {
        let before = c.status(id, 1).unwrap();
        c.crash(id);
        c.start(id);
        let after = c.status(id, 1).unwrap();
        assert_eq!((after.term, after.vote), (before.term, before.vote));
        assert!(after.last_index >= p.index);
    }
    c.elect_all(3_000);
    c.advance(100);
    for id in 1..=3 {
        assert!(c.has_committed(id, 1, "durable"));
    }
}

/// Raft thesis §3.10 leadership transfer: the target becomes leader well before an election
/// timeout could have elected anyone.
#[test]
fn thesis_3_10_leadership_transfer() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let old = c.leader(1).unwrap();
    let target = (1..=3).find(|id| *id != old).unwrap();
    c.propose(1, "before-transfer").unwrap();
    c.with(old, |d| d.transfer_leadership(1, target)).unwrap();
    let took = c.run_until(1_000, |c| c.leader(1) == Some(target));
    let took = took.expect("transfer did not complete");
    assert!(
        took < 100,
        "transfer took {took} ms (election timeout is 100-200 ms)"
    );
    c.propose(1, "after-transfer").unwrap();
    c.advance(50);
    assert!(c.has_committed(old, 1, "after-transfer"));
    // Only voters other than the leader are valid targets.
    assert!(c
        .with(target, |d| d.transfer_leadership(1, target))
        .is_err());
}

/// §6 membership changes: add a learner (it catches up but does not vote), promote it, replace
/// a voter with joint consensus, remove a voter; commits continue throughout. The leader
/// refuses to remove itself; a removed leader hands over and steps down.
#[test]
fn s6_membership_changes() {
    let mut c = Cluster::new(5, vec![(1, Membership::new([1, 2, 3], []))]);
    c.elect_all(2_000);
    let leader = c.leader(1).unwrap();
    let change = |c: &mut Cluster, changes: &[MembershipChange]| {
        let l = c.leader(1).unwrap();
        c.with(l, |d| d.change_membership(1, changes)).unwrap();
        c.advance(100);
    };
    change(&mut c, &[MembershipChange::AddLearner(4)]);
    c.propose(1, "with-learner").unwrap();
    c.advance(100);
    assert!(
        c.has_committed(4, 1, "with-learner"),
        "the learner did not catch up"
    );
    assert_eq!(c.status(4, 1).unwrap().membership.learners, [4].into());
    change(&mut c, &[MembershipChange::AddVoter(4)]);
    assert!(c.status(leader, 1).unwrap().membership.voters.contains(&4));
    // Replace a non-leader voter by node 5 in one joint-consensus change.
    let old = (1..=3).find(|id| *id != leader).unwrap();
    change(
        &mut c,
        &[MembershipChange::AddVoter(5), MembershipChange::Remove(old)],
    );
    c.advance(100);
    let m = c.status(leader, 1).unwrap().membership;
    assert!(!m.is_joint(), "joint configuration was not left: {m:?}");
    assert!(m.voters.contains(&5) && !m.voters.contains(&old));
    c.propose(1, "after-replace").unwrap();
    c.advance(100);
    assert!(c.has_committed(5, 1, "after-replace"));
    // The leader refuses to remove itself.
    let l = c.leader(1).unwrap();
    assert!(c
        .with(l, |d| d
            .change_membership(1, &[MembershipChange::Remove(l)]))
        .is_err());
    // Another voter removes... the leader only through a transfer first: transfer, then the
    // new leader removes the old one, which steps down.
    let next = *m.voters.iter().find(|v| **v != l).unwrap();
    c.with(l, |d| d.transfer_leadership(1, next)).unwrap();
    assert!(c.run_until(1_000, |c| c.leader(1) == Some(next)).is_some());
    change(&mut c, &[MembershipChange::Remove(l)]);
    c.propose(1, "after-removal").unwrap();
    c.advance(100);
    assert!(c.has_committed(next, 1, "after-removal"));
    assert!(!c.status(next, 1).unwrap().membership.voters.contains(&l));
}

/// §7 log compaction: a follower that was down while the leader compacted its log is caught
/// up by a snapshot (the abstract segment transfer), then by appends.
#[test]
fn s7_snapshot_catches_up_a_follower_behind_the_log_start() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let leader = c.leader(1).unwrap();
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    c.crash(lagging);
    for i in 0..20 {
        c.propose(1, &format!("e{i}")).unwrap();
    }
    c.advance(100);
    for id in (1..=3).filter(|id| *id != lagging) {
        let st = c.status(id, 1).unwrap();
        c.with(id, |d| d.compact_log(1, st.applied)).unwrap();
        assert_eq!(c.status(id, 1).unwrap().first_index, st.applied + 1);
    }
    c.start(lagging);
    c.propose(1, "after-snapshot").unwrap();
    let took = c.run_until(2_000, |c| c.has_committed(lagging, 1, "after-snapshot"));
    assert!(took.is_some(), "the lagging follower never caught up");
    assert!(c
        .events
        .iter()
        .any(|(n, e)| *n == lagging && matches!(e, Event::SnapshotInstalled { .. })));
    // Compaction beyond the applied index is refused.
    let st = c.status(leader, 1).unwrap();
    assert!(c
        .with(leader, |d| d.compact_log(1, st.applied + 1))
        .is_err());
}

/// A node added to a group starts empty and receives the configuration through a snapshot
/// (the bootstrap snapshot at index 1 guarantees one), then the log.
#[test]
fn s6_s7_new_member_receives_a_snapshot() {
    let mut c = Cluster::new(4, vec![(1, Membership::new([1, 2, 3], []))]);
    c.elect_all(2_000);
    c.propose(1, "before-join").unwrap();
    c.advance(50);
    let l = c.leader(1).unwrap();
    c.with(l, |d| {
        d.change_membership(1, &[MembershipChange::AddLearner(4)])
    })
    .unwrap();
    // Entries committed before node 4 caught up are covered by its snapshot, not delivered.
    c.advance(50);
    c.propose(1, "after-join").unwrap();
    c.advance(200);
    assert!(c.has_committed(4, 1, "after-join"));
    assert!(c
        .events
        .iter()
        .any(|(n, e)| *n == 4 && matches!(e, Event::SnapshotInstalled { .. })));
}

/// Heartbeat coalescing: with many groups, each node sends one envelope per peer per flush,
/// carrying every group's heartbeats, so the number of transport messages does not grow with
/// the number of groups.
///
/// Raft §5.2: heartbeats are empty AppendEntries; here they travel coalesced.
#[test]
fn coalescing_one_envelope_per_node_pair_regardless_of_group_count() {
    fn no_quiesce(cfg: &mut spate_raft::DriverConfig) {
        cfg.quiesce = false;
    }
    let mut per_group_count = Vec::new();
    for groups in [1u64, 200] {
        let mut c = Cluster::with_config(3, three_voters(groups), no_quiesce);
        c.elect_all(3_000);
        c.advance(100);
        let before: u64 = c.envelopes.values().sum();
        let hb_before: u64 = (1..=3)
            .map(|id| c.driver(id).metrics().heartbeats_sent)
            .sum();
        c.advance(1_000); // 100 ticks, idle
        let sent = c.envelopes.values().sum::<u64>() - before;
        let hbs = (1..=3)
            .map(|id| c.driver(id).metrics().heartbeats_sent)
            .sum::<u64>()
            - hb_before;
        per_group_count.push((groups, sent, hbs));
    }
    let (_, many, hbs) = per_group_count[1];
    // Per directed node pair and tick: at most one envelope flushed after the tick (all
    // groups' heartbeats) and one flushed after receiving it (all heartbeat responses), so
    // 6 pairs x 100 ticks x 2 bounds it whatever the number of groups. Uncoalesced, the same
    // traffic would be `hbs` heartbeats plus as many responses.
    assert!(many <= 6 * 100 * 2, "{per_group_count:?}");
    assert!(
        hbs >= 10 * many,
        "heartbeats were not coalesced: {per_group_count:?}"
    );
}

/// Quiescence: idle groups stop ticking on every node (leaders and followers); a proposal wakes
/// its group, which commits and quiesces again.
///
/// Raft §5.2: a follower's election timer is frozen only while its quiesced leader is known
/// alive.
#[test]
fn quiescence_idle_groups_stop_ticking_and_wake_on_proposals() {
    let mut c = Cluster::new(3, three_voters(100));
    c.elect_all(3_000);
    let took = c.run_until(2_000, |c| {
        c.nodes
            .values()
            .all(|n| n.driver.as_ref().is_some_and(|d| d.active_groups() == 0))
    });
    assert!(took.is_some(), "groups did not quiesce");
    let ticks: u64 = (1..=3).map(|id| c.driver(id).metrics().group_ticks).sum();
    c.advance(1_000);
    let idle_ticks: u64 = (1..=3)
        .map(|id| c.driver(id).metrics().group_ticks)
        .sum::<u64>()
        - ticks;
    assert_eq!(idle_ticks, 0, "quiesced groups were ticked");
    c.propose(7, "wake-up").unwrap();
    c.advance(100);
    for id in 1..=3 {
        assert!(c.has_committed(id, 7, "wake-up"));
    }
    let took = c.run_until(2_000, |c| {
        c.nodes
            .values()
            .all(|n| n.driver.as_ref().is_some_and(|d| d.active_groups() == 0))
    });
    assert!(took.is_some(), "group 7 did not quiesce again");
}

/// Quiescence must not cost liveness: when the node leading quiesced groups dies, followers
/// notice through node-level liveness, wake, and elect new leaders (§5.2).
#[test]
fn quiescence_followers_wake_when_the_leader_node_dies() {
    let mut c = Cluster::new(3, three_voters(20));
    c.elect_all(3_000);
    let quiet = c.run_until(2_000, |c| {
        c.nodes
            .values()
            .all(|n| n.driver.as_ref().is_some_and(|d| d.active_groups() == 0))
    });
    assert!(quiet.is_some());
    let victim = c.leader(1).unwrap();
    let led: Vec<GroupId> = (1..=20).filter(|g| c.leader(*g) == Some(victim)).collect();
    c.crash(victim);
    let took = c.run_until(3_000, |c| {
        led.iter()
            .all(|g| c.leader(*g).is_some_and(|l| l != victim))
    });
    assert!(
        took.is_some(),
        "groups led by the dead node stayed leaderless"
    );
    for g in &led {
        c.propose(*g, "after-failover").unwrap();
    }
    c.advance(100);
    let alive = (1..=3).find(|id| *id != victim).unwrap();
    for g in &led {
        assert!(c.has_committed(alive, *g, "after-failover"));
    }
}

fn raw_envelope(from: NodeId, to: NodeId, group: GroupId, m: &Message) -> Bytes {
    Envelope {
        from,
        to,
        incarnation: 0,
        messages: vec![(group, Bytes::from(m.write_to_bytes().unwrap()))],
        ..Envelope::default()
    }
    .encode()
}

/// Malformed input from a peer is dropped with an error, never a panic: garbage and
/// corrupted envelopes, envelopes for another node, and well-formed envelopes carrying
/// messages raft-rs would panic on.
///
/// Raft §5.1 assumes non-Byzantine peers and lossy networks: malformed input is treated as a
/// lost message.
#[test]
fn malformed_peer_messages_are_dropped_not_fatal() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let leader = c.leader(1).unwrap();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let st = c.status(victim, 1).unwrap();
    let me = victim;

    // Envelope level.
    let good = raw_envelope(leader, me, 1, &Message::default());
    let mut flipped = good.to_vec();
    flipped[5] ^= 0x10;
    for bad in [
        Bytes::from_static(b"garbage"),
        good.slice(..good.len() - 1),
        Bytes::from(flipped),
        raw_envelope(leader, 99, 1, &Message::default()),
    ] {
        assert!(c.with(me, |d| d.receive(&bad)).is_err());
    }

    // Message level: each would trip a raft-rs panic or is not acceptable from a peer.
    let mut msgs = Vec::new();
    let base = |ty: MessageType| {
        let mut m = Message::default();
        m.set_msg_type(ty);
        m.from = leader;
        m.to = me;
        m.term = st.term;
        m
    };
    let mut hb = base(MessageType::MsgHeartbeat);
    hb.commit = st.last_index + 1000;
    msgs.push(hb);
    let mut gap = base(MessageType::MsgAppend);
    gap.index = st.last_index;
    gap.log_term = st.term;
    let e = Entry {
        index: st.last_index + 5,
        term: st.term,
        ..Default::default()
    };
    gap.set_entries(vec![e].into());
    msgs.push(gap);
    let mut snap = base(MessageType::MsgSnapshot);
    snap.mut_snapshot().mut_metadata().index = st.last_index + 10;
    snap.mut_snapshot().mut_metadata().term = st.term;
    let mut cs = ConfState::default();
    cs.set_voters(vec![1, 2, 3]);
    cs.set_learners(vec![3]);
    snap.mut_snapshot().mut_metadata().set_conf_state(cs);
    msgs.push(snap);
    msgs.push(base(MessageType::MsgHup));
    msgs.push(base(MessageType::MsgPropose));
    let mut spoofed = base(MessageType::MsgHeartbeat);
    spoofed.from = 42;
    msgs.push(spoofed);
    let before = c.driver(me).metrics().malformed_messages;
    for m in &msgs {
        let env = raw_envelope(leader, me, 1, m);
        c.with(me, |d| d.receive(&env)).unwrap();
    }
    assert_eq!(
        c.driver(me).metrics().malformed_messages - before,
        msgs.len() as u64
    );
    // A coalesced heartbeat with an impossible commit index is dropped too.
    let env = Envelope {
        from: leader,
        to: me,
        incarnation: 0,
        heartbeats: vec![Heartbeat {
            group: 1,
            term: st.term,
            commit: u64::MAX,
            quiesce: false,
        }],
        ..Envelope::default()
    }
    .encode();
    c.with(me, |d| d.receive(&env)).unwrap();
    // The group still works.
    c.propose(1, "still-alive").unwrap();
    c.advance(50);
    assert!(c.has_committed(me, 1, "still-alive"));
}

/// Random well-framed messages of every type with random fields never crash a replica
/// (followers, candidates and leaders alike).
///
/// Raft §5.1 (lost, duplicated, reordered messages) and §5.2–§5.3 message handling under
/// fuzzing.
#[test]
fn fuzzed_peer_messages_never_panic() {
    let types = [
        MessageType::MsgAppend,
        MessageType::MsgAppendResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgRequestPreVote,
        MessageType::MsgRequestPreVoteResponse,
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgSnapshot,
        MessageType::MsgTimeoutNow,
        MessageType::MsgTransferLeader,
        MessageType::MsgReadIndex,
        MessageType::MsgPropose,
    ];
    let seeds = std::env::var("SPATE_FUZZ_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2u64);
    for seed in 0..seeds {
        let run = std::panic::catch_unwind(|| fuzz_once(seed, &types));
        assert!(run.is_ok(), "fuzz seed {seed} panicked");
    }
}

fn fuzz_once(seed: u64, types: &[MessageType]) {
    let mut rng = Prng::new(seed);
    let mut c = Cluster::new(3, three_voters(2));
    c.elect_all(2_000);
    for round in 0..2000u64 {
        let to = rng.range(1, 3);
        let from = (1..=3u64)
            .filter(|n| *n != to)
            .nth(rng.below(2) as usize)
            .unwrap();
        let g = rng.range(1, 2);
        let Some(st) = c.status(to, g) else { continue };
        // Mostly close to the replica's state (to get past raft-rs's own checks), sometimes wild.
        let near = |rng: &mut Prng, x: u64| match rng.below(20) {
            0 => rng.next_u64(),
            1 => u64::MAX,
            2 => 0,
            _ => x.saturating_add(rng.range(0, 6)).saturating_sub(3),
        };
        let mut m = Message::default();
        m.set_msg_type(*rng.pick(types).unwrap());
        m.from = from;
        m.to = to;
        m.term = near(&mut rng, st.term);
        m.index = near(&mut rng, st.last_index);
        m.log_term = near(&mut rng, st.term);
        m.commit = near(&mut rng, st.commit);
        m.reject = rng.chance(300_000);
        m.reject_hint = near(&mut rng, st.last_index);
        let n = rng.below(4);
        let mut entries = Vec::new();
        for k in 0..n {
            let index = if rng.chance(50_000) {
                rng.next_u64()
            } else {
                m.index.wrapping_add(1 + k)
            };
            entries.push(Entry {
                index,
                term: near(&mut rng, m.term),
                data: Bytes::from(format!("fuzz-{round}-{k}")),
                ..Default::default()
            });
        }
        m.set_entries(entries.into());
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let md = m.mut_snapshot().mut_metadata();
            md.index = near(&mut rng, st.last_index + 2);
            md.term = near(&mut rng, st.term);
            let mut cs = ConfState::default();
            cs.set_voters(vec![1, 2, 3]);
            md.set_conf_state(cs);
        }
        let env = raw_envelope(from, to, g, &m);
        if std::env::var("SPATE_FUZZ_TRACE").is_ok() {
            eprintln!("round {round}: to n{to} g{g} status t{} c{} first {} last {} role {:?} | {:?} t{} i{} lt{} c{} ents {:?} snap {:?}", st.term, st.commit, st.first_index, st.last_index, st.role, m.get_msg_type(), m.term, m.index, m.log_term, m.commit, m.get_entries().iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), m.get_snapshot().get_metadata().index);
        }
        // Forged messages can be well-formed and disruptive (a forged vote can elect a
        // leader), which the checker would rightly flag, so the drivers are driven directly:
        // the property here is only that nothing panics.
        if let Some(d) = c.nodes.get_mut(&to).and_then(|n| n.driver.as_mut()) {
            let _ = d.receive(&env);
            d.process();
        }
        c.drop_sent();
        if round % 20 == 0 {
            for id in 1..=3 {
                if let Some(d) = c.nodes.get_mut(&id).and_then(|n| n.driver.as_mut()) {
                    d.tick();
                    d.process();
                }
            }
        }
    }
}

/// The simulator is deterministic: one seed, one history (over either store), so replaying a
/// seed replays a §5–§7 invariant violation exactly.
#[test]
fn simulator_is_deterministic() {
    for (seed, segment) in [(3, false), (17, false), (5, true)] {
        let params = || {
            let mut p = Params::from_seed(seed);
            p.segment = segment;
            p
        };
        let a = World::new(params()).run();
        let b = World::new(params()).run();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert!(a.violation.is_none(), "{a:?}");
    }
}

/// Roles reported in events agree with the status (sanity of the event stream).
///
/// Raft §5.2 roles (follower, candidate, leader) as reported to the broker.
#[test]
fn role_events_match_status() {
    let mut c = Cluster::new(3, three_voters(2));
    c.elect_all(2_000);
    for g in 1..=2 {
        let l = c.leader(g).unwrap();
        let last = c
            .events
            .iter()
            .rev()
            .find_map(|(n, e)| match e {
                Event::RoleChanged { group, role, .. } if *n == l && *group == g => Some(*role),
                _ => None,
            })
            .unwrap();
        assert_eq!(last, Role::Leader);
    }
}

/// §6 / thesis §4.2.2: a leader that commits its own removal keeps leading until a voter of
/// the new configuration knows the removal is committed, then hands over and steps down.
/// (Stepping down at once can strand the remaining voters in a configuration that still needs
/// the removed node's vote; a 100,000-seed run found that.)
#[test]
fn s6_removed_leader_hands_over_after_the_new_configuration_knows() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    let l = c.leader(1).unwrap();
    let r = (1..=3).find(|id| *id != l).unwrap();
    let f = (1..=3).find(|id| *id != l && *id != r).unwrap();
    // L proposes removing R; only R gets the entry and L's own copy is not durable, so it
    // cannot commit. Then L dies.
    c.held_syncs.insert(l);
    c.isolated.insert(f);
    c.with(l, |d| {
        d.change_membership(1, &[MembershipChange::Remove(r)])
    })
    .unwrap();
    c.step();
    c.crash(l);
    c.held_syncs.remove(&l);
    c.isolated.clear();
    // R, which still counts itself a voter and has the longest log, wins with F's vote and
    // commits its own removal.
    let r_led = |c: &Cluster| {
        c.events.iter().any(|(n, e)| {
            *n == r
                && matches!(
                    e,
                    Event::RoleChanged {
                        role: Role::Leader,
                        ..
                    }
                )
        })
    };
    assert!(c.run_until(3_000, r_led).is_some());
    c.start(l);
    let took = c.run_until(3_000, |c| {
        c.leader(1).is_some_and(|x| x != r)
            && c.status(r, 1)
                .is_some_and(|s| !s.membership.voters.contains(&r))
    });
    assert!(took.is_some(), "no leader after the removal");
    // F learned that the removal committed before R applied it.
    let conf_index = c
        .committed(f, 1)
        .iter()
        .find(|e| e.kind == EntryKind::ConfChangeV2)
        .map(|e| e.index)
        .unwrap();
    let pos = |node: NodeId| {
        c.events.iter().position(|(n, e)| {
            *n == node
                && matches!(e, Event::MembershipChanged { index, .. } if *index == conf_index)
        })
    };
    assert!(pos(f).unwrap() < pos(r).unwrap());
    c.propose(1, "after").unwrap();
    c.advance(100);
    assert!(c.has_committed(f, 1, "after") && c.has_committed(l, 1, "after"));
    assert_ne!(c.leader(1), Some(r));
}

/// §5.4.3 across a crash: a follower replaces a stale, never-committed entry with the new
/// leader's and learns that index is committed; the commit index reaches the metadata file but
/// the log rewrite does not (different files). On restart the stale entry must not be taken as
/// committed: the stored commit index is not trusted and is relearned from the leader. (Found
/// by the simulator at seeds 131976 and 192723 of a 200,000-seed run.)
#[test]
fn s5_4_3_restart_does_not_trust_a_commit_index_ahead_of_the_log() {
    let mut c = Cluster::new(3, three_voters(1));
    c.elect_all(2_000);
    c.advance(50);
    let l = c.leader(1).unwrap();
    let a = (1..=3).find(|id| *id != l).unwrap();
    let b = (1..=3).find(|id| *id != l && *id != a).unwrap();
    // Only A gets the old leader's entry, which cannot commit (L's copy is not durable).
    c.isolated.insert(b);
    c.held_syncs.insert(l);
    let stale = c.propose(1, "stale").unwrap();
    c.step();
    c.crash(l);
    c.held_syncs.remove(&l);
    // L and B elect a leader without the entry; it puts its no-op at the same index.
    c.isolated.clear();
    c.isolated.insert(a);
    c.start(l);
    assert!(c.run_until(3_000, |c| c.leader(1).is_some()).is_some());
    c.advance(50);
    let new_leader = c.leader(1).unwrap();
    assert_ne!(new_leader, a);
    // A receives the replacement and the commit index, but its fsync does not happen: hold
    // A's syncs just before the first append carrying entries reaches it.
    c.isolated.clear();
    for _ in 0..20 {
        c.tick_all();
        loop {
            if c.in_flight_to(a)
                .iter()
                .any(|m| m.kind == MessageKind::Append && m.entries > 0)
            {
                c.held_syncs.insert(a);
            }
            if !c.step_round() {
                break;
            }
        }
        if c.held_syncs.contains(&a) {
            break;
        }
    }
    assert!(c.held_syncs.contains(&a));
    let st = c.status(a, 1).unwrap();
    assert!(
        st.commit >= stale.index && st.persisted < stale.index,
        "{st:?}"
    );
    c.crash_split(a, true);
    c.held_syncs.remove(&a);
    c.start(a);
    // The restarted replica does not deliver the stale entry (the checker would panic), and
    // catches up with the real one.
    c.propose(1, "after").unwrap();
    c.advance(100);
    assert!(c.has_committed(a, 1, "after"));
    assert!(!c.has_committed(a, 1, "stale"));
}

/// §6 across a crash: raft-rs applies membership on commit, and its safety needs every replica
/// to be at most one configuration behind its log. A follower whose membership record did not
/// survive a crash (while its log kept a later configuration entry) must come back no more than
/// one configuration behind: the driver re-derives the commit index from the log. (Restarting
/// from the last durable membership record alone let a replica fall back two configurations
/// and win an election with a stale quorum: two leaders in one term at seed 50115.)
#[test]
fn s6_restart_is_never_more_than_one_configuration_behind_its_log() {
    let mut c = Cluster::new(4, vec![(1, Membership::new([1, 2, 3], []))]);
    c.elect_all(2_000);
    c.advance(50);
    let l = c.leader(1).unwrap();
    let x = (1..=3).find(|id| *id != l).unwrap();
    // First change: applied everywhere; X's membership record is written but not synced yet.
    c.with(l, |d| {
        d.change_membership(1, &[MembershipChange::AddLearner(4)])
    })
    .unwrap();
    c.advance(50);
    assert_eq!(c.status(x, 1).unwrap().membership.learners, [4].into());
    // Second change reaches X's log; X crashes keeping its log writes but losing the metadata.
    c.held_syncs.insert(x);
    c.with(l, |d| {
        d.change_membership(1, &[MembershipChange::AddVoter(4)])
    })
    .unwrap();
    c.step();
    c.crash_split(x, false);
    c.held_syncs.remove(&x);
    c.start(x);
    let m = c.status(x, 1).unwrap().membership;
    assert!(
        m.learners.contains(&4) || m.voters.contains(&4),
        "restarted two configurations behind: {m:?}"
    );
    c.advance(100);
    assert!(c.status(x, 1).unwrap().membership.voters.contains(&4));
}
