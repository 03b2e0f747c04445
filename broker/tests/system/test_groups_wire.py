"""The classic consumer-group coordinator over the raw protocol (groups_wire.py): every version
of FindCoordinator / JoinGroup / SyncGroup / Heartbeat / LeaveGroup / OffsetCommit / OffsetFetch,
the rebalance protocol with concurrent members, session and rebalance timeouts, static members,
ListGroups / DescribeGroups / DeleteGroups / OffsetDelete, and bad requests with the exact error
codes Apache Kafka 4.1 answers. After every bad request the group still works.

What Apache Kafka 4.1.1 answers (observed with SPATE_TEST_TARGET=kafka; several differ from the
pre-4.0 coordinator and from what one would guess):
  - FindCoordinator right after startup: COORDINATOR_NOT_AVAILABLE (15), then NOT_COORDINATOR
    (16) from every group API while __consumer_offsets loads. The `coordinator` fixture waits.
  - JoinGroup v4+ with an empty member id: MEMBER_ID_REQUIRED (79) carrying the new member id
    "<client id>-<uuid>"; v0-3 join directly. A static member (group.instance.id) joins
    directly at any version and its member id is "<group instance id>-<uuid>".
  - A group's first generation is 1; every completed rebalance adds 1.
  - JoinGroup: empty protocol list, empty protocol type, or no protocol in common with the group
    (or another protocol type) -> INCONSISTENT_GROUP_PROTOCOL (23); session timeout outside
    [6000, 1800000] -> INVALID_SESSION_TIMEOUT (26); unknown non-empty member id -> UNKNOWN_MEMBER_ID
    (25); empty group id -> INVALID_GROUP_ID (24).
  - Heartbeat / SyncGroup for an unknown group or member: UNKNOWN_MEMBER_ID (25); wrong
    generation (older or newer): ILLEGAL_GENERATION (22); during a rebalance: Heartbeat answers
    REBALANCE_IN_PROGRESS (27).
  - OffsetCommit: unknown topic or partition -> UNKNOWN_TOPIC_OR_PARTITION (3) for that partition
    only (the others in the request commit); generation mismatch -> 22; unknown member of an
    active group -> 25, and so is a "simple" commit (generation -1, empty member id) to a group
    that has members; generation >= 0 on a group that does not exist -> ILLEGAL_GENERATION (22)
    for v2-8 but GROUP_ID_NOT_FOUND (69) for v9; with the current generation between JoinGroup
    and SyncGroup (CompletingRebalance) -> REBALANCE_IN_PROGRESS (27); metadata over 4096 bytes
    -> OFFSET_METADATA_TOO_LARGE (12). A static member's old (fenced) member id ->
    FENCED_INSTANCE_ID (82). A simple commit (generation -1) ignores the member id.
  - OffsetFetch of an unknown group: no error, offset -1, metadata "" (not null); a null
    metadata is stored as "".
  - LeaveGroup of an unknown member or group: v0-2 top-level UNKNOWN_MEMBER_ID (25); v3+
    top-level 0 with member error 25.
  - DescribeGroups (v0-5) of an unknown group: error 0, state "Dead" (v6, which Kafka also has,
    answers GROUP_ID_NOT_FOUND instead). Members' protocol metadata and assignment (and the
    group's protocol name) are only filled in in state Stable; client_host is "/127.0.0.1"
    (Java's InetAddress.toString()).
  - DeleteGroups: unknown -> GROUP_ID_NOT_FOUND (69), members -> NON_EMPTY_GROUP (68).
    OffsetDelete of a topic the group is subscribed to: partition error
    GROUP_SUBSCRIBED_TO_TOPIC (86), top-level 0; unknown group: top-level 69.
  - ListGroups v4 states filter and v5 types filter compare case-insensitively.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicCollection, TopicPartition
from confluent_kafka.admin import NewTopic

import groups_wire as gw
from clients import confluent_admin, create, wait_until
from groups_wire import (GroupConn, coerce, consumer_assignment, consumer_subscription,
                         err_name, join_single_member_group)

CLIENT_ID = "spate-system-test"
PARTS = 3


def new_group(prefix: str = "gw") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def topic(broker):
    admin = confluent_admin(broker.bootstrap)
    name = f"gw-{uuid.uuid4().hex[:8]}"
    create(admin, [NewTopic(name, PARTS, 1)])
    return name


@pytest.fixture(scope="module")
def coordinator(broker, topic):
    gw.wait_coordinator_ready(broker.host, broker.port)
    return broker


@pytest.fixture
def conn(coordinator):
    c = GroupConn(coordinator.host, coordinator.port)
    yield c
    c.close()


def other_conn(broker, timeout: float = 20.0) -> GroupConn:
    return GroupConn(broker.host, broker.port, timeout=timeout)


def all_parts(topic):
    return consumer_assignment({topic: list(range(PARTS))})


def still_works(broker, group: str, topic: str, leave: list[tuple[GroupConn, str]] = ()) -> None:
    """The group is usable after the bad requests: the members in `leave` leave, then a new
    member joins alone (generation advances), syncs, heartbeats, commits and reads back."""
    for c, member in leave:
        r = c.leave(group, member)
        assert r.error_code == 0 and r.members[0].error_code == 0, coerce(r)
    with other_conn(broker) as c:
        member, gen = join_single_member_group(c, group, {topic: PARTS})
        assert c.heartbeat(group, gen, member).error_code == 0
        errs = c.commit(group, {(topic, 0): 42, (topic, 1): 43}, gen, member)
        assert set(errs.values()) == {0}, errs
        err, got = c.fetch_offsets(group, {topic: [0, 1]})
        assert err == 0 and got[(topic, 0)][0] == 42 and got[(topic, 1)][0] == 43, got
        assert c.leave(group, member).error_code == 0


# ------------------------------------------------------------------------------ FindCoordinator


def test_find_coordinator_every_version(coordinator, conn):
    b = coordinator
    port = b.advertised_port
    for v in range(0, 4):
        r = conn.find_coordinator("some-group", version=v)
        assert (r.error_code, r.node_id, r.host, r.port) == (0, 0, b.host, port), (v, coerce(r))
    for v in (4, 5, 6):
        r = conn.call("FindCoordinator", v, {"key_type": 0, "coordinator_keys": ["g-a", "g-b"]})
        got = [(x.key, x.error_code, x.node_id, x.host, x.port) for x in r.coordinators]
        assert sorted(got) == [("g-a", 0, 0, b.host, port), ("g-b", 0, 0, b.host, port)], (v, got)


# ------------------------------------------------------------------------------ every version


@pytest.mark.parametrize("join_v", range(10))
def test_member_lifecycle_every_version(coordinator, conn, topic, join_v):
    """JoinGroup vN with the Sync/Heartbeat/Leave versions a client of the same release sends:
    join (MEMBER_ID_REQUIRED round trip from v4), sync, heartbeat, commit, describe, leave."""
    sync_v = gw.sync_version_for_join(join_v)
    hb_v = gw.heartbeat_version_for_join(join_v)
    leave_v = gw.leave_version_for_join(join_v)
    group = new_group(f"life{join_v}")
    sub = consumer_subscription([topic])
    member = ""
    if join_v >= 4:
        r = conn.join(group, [topic], version=join_v)
        assert r.error_code == gw.ERR_MEMBER_ID_REQUIRED, coerce(r)
        assert r.member_id.startswith(CLIENT_ID + "-") and len(r.member_id) > len(CLIENT_ID) + 1, r.member_id
        assert r.generation_id == -1 and r.members == []
        member = r.member_id
    r = conn.join(group, [topic], member_id=member, version=join_v)
    assert r.error_code == 0, err_name(r.error_code)
    if member:
        assert r.member_id == member
    else:
        assert r.member_id.startswith(CLIENT_ID + "-"), r.member_id
        member = r.member_id
    assert r.generation_id == 1
    assert r.leader == member
    assert r.protocol_name == "range"
    if join_v >= 7:
        assert r.protocol_type == "consumer"
    if join_v >= 9:
        assert r.skip_assignment is False
    assert [(m.member_id, m.metadata) for m in r.members] == [(member, sub)]

    assignment = all_parts(topic)
    s = conn.sync(group, 1, member, {member: assignment}, version=sync_v)
    assert s.error_code == 0, err_name(s.error_code)
    assert s.assignment == assignment
    if sync_v >= 5:
        assert (s.protocol_type, s.protocol_name) == ("consumer", "range")

    assert conn.heartbeat(group, 1, member, version=hb_v).error_code == 0
    assert conn.commit(group, {(topic, 2): 7}, 1, member) == {(topic, 2): 0}

    (d,) = conn.describe([group])
    assert (d.error_code, d.group_id, d.group_state, d.protocol_type, d.protocol_data) == \
        (0, group, "Stable", "consumer", "range"), coerce(d)
    assert [(m.member_id, m.client_id, m.client_host, m.member_metadata, m.member_assignment)
            for m in d.members] == [(member, CLIENT_ID, "/127.0.0.1", sub, assignment)]

    r = conn.leave(group, member, version=leave_v)
    assert r.error_code == 0
    if leave_v >= 3:
        assert [(m.member_id, m.error_code) for m in r.members] == [(member, 0)]
    (d,) = conn.describe([group])
    assert (d.group_state, d.members) == ("Empty", []), coerce(d)
    assert conn.heartbeat(group, 1, member, version=hb_v).error_code == gw.ERR_UNKNOWN_MEMBER_ID
    # The committed offset outlives the membership.
    assert conn.fetch_offsets(group, {topic: [2]})[1][(topic, 2)][:2] == (7, "")


@pytest.mark.parametrize("commit_v", range(2, 10))
def test_offset_commit_fetch_every_version(conn, topic, commit_v):
    """OffsetCommit vN (simple commits: generation -1, no member) read back by every
    OffsetFetch version 1-9, with metadata and (v6+) the committed leader epoch."""
    group = new_group(f"oc{commit_v}")
    body = gw.commit_body(group, {(topic, 0): 100 + commit_v, (topic, 1): 5}, metadata=f"meta-{commit_v}")
    for t in body["topics"]:
        for p in t["partitions"]:
            p["committed_leader_epoch"] = 3
    r = conn.call("OffsetCommit", commit_v, body)
    assert {(t.name, p.partition_index): p.error_code for t in r.topics for p in t.partitions} == \
        {(topic, 0): 0, (topic, 1): 0}
    epoch = 3 if commit_v >= 6 else -1
    for fv in range(1, 10):
        err, got = conn.fetch_offsets(group, {topic: [0, 1, 2]}, version=fv)
        assert err == 0
        assert {k: v[:3] for k, v in got.items()} == {
            (topic, 0): (100 + commit_v, f"meta-{commit_v}", 0),
            (topic, 1): (5, f"meta-{commit_v}", 0),
            (topic, 2): (-1, "", 0),
        }, (fv, got)
        if fv >= 5:
            r = conn.call("OffsetFetch", fv, {"group_id": group, "topics": [
                {"name": topic, "partition_indexes": [0]}]} if fv < 8 else {
                "groups": [{"group_id": group, "topics": [{"name": topic, "partition_indexes": [0]}]}]})
            p = (r.topics if fv < 8 else r.groups[0].topics)[0].partitions[0]
            assert p.committed_leader_epoch == epoch, (fv, coerce(p))
    # All topics (null topic list, v2+) returns exactly the committed partitions.
    err, got = conn.fetch_offsets(group, None, version=9)
    assert sorted(got) == [(topic, 0), (topic, 1)], got


def test_offset_fetch_several_groups_and_unknown_group(conn, topic):
    g1, g2, unknown = new_group("of1"), new_group("of2"), new_group("of-none")
    assert conn.commit(g1, {(topic, 0): 11}) == {(topic, 0): 0}
    assert conn.commit(g2, {(topic, 1): 22, (topic, 2): 23}, metadata=None) == \
        {(topic, 1): 0, (topic, 2): 0}
    r = conn.call("OffsetFetch", 9, {"groups": [
        {"group_id": g1, "topics": None},
        {"group_id": g2, "topics": [{"name": topic, "partition_indexes": [1, 2]}]},
        {"group_id": unknown, "topics": None},
        {"group_id": unknown, "topics": [{"name": topic, "partition_indexes": [0]}]},
    ]})
    got = [(g.group_id, g.error_code, sorted((t.name, p.partition_index, p.committed_offset,
                                              p.metadata, p.error_code)
                                             for t in g.topics for p in t.partitions))
           for g in r.groups]
    assert got == [
        (g1, 0, [(topic, 0, 11, "", 0)]),
        # a null metadata is stored and returned as ""
        (g2, 0, [(topic, 1, 22, "", 0), (topic, 2, 23, "", 0)]),
        (unknown, 0, []),
        (unknown, 0, [(topic, 0, -1, "", 0)]),
    ], got


def test_commit_metadata_size_limit(conn, topic):
    group = new_group("meta")
    assert conn.commit(group, {(topic, 0): 1}, metadata="m" * 4096) == {(topic, 0): 0}
    assert conn.commit(group, {(topic, 0): 2}, metadata="m" * 4097) == {(topic, 0): 12}
    assert conn.fetch_offsets(group, {topic: [0]})[1][(topic, 0)][:2] == (1, "m" * 4096)


def test_pipelined_commits_answered_in_order(conn, topic):
    group = new_group("pipe")
    n = 300
    conn.send_many([("OffsetCommit", 8, gw.commit_body(group, {(topic, i % PARTS): i}))
                    for i in range(n)])
    for i in range(n):
        r = conn.recv()
        assert [(t.name, p.partition_index, p.error_code) for t in r.topics for p in t.partitions] == \
            [(topic, i % PARTS, 0)], i
    err, got = conn.fetch_offsets(group, {topic: list(range(PARTS))})
    assert {k: v[0] for k, v in got.items()} == {(topic, q): n - PARTS + q for q in range(PARTS)}


# ------------------------------------------------------------------------------ rebalancing


def test_two_members_rebalance(coordinator, topic):
    """A joins alone (generation 1). B's JoinGroup is held until A, told by Heartbeat
    (REBALANCE_IN_PROGRESS), rejoins; both get generation 2, A stays leader and alone gets the
    member list; B's SyncGroup is held until the leader's SyncGroup brings the assignment. When A
    leaves, B is told to rejoin and becomes the leader of generation 3."""
    b = coordinator
    group = new_group("reb")
    A, B, probe = other_conn(b), other_conn(b), other_conn(b)
    try:
        a_id, gen = join_single_member_group(A, group, {topic: PARTS})
        assert gen == 1
        r = B.join(group, [topic], version=9)
        assert r.error_code == gw.ERR_MEMBER_ID_REQUIRED
        b_id = r.member_id
        assert A.heartbeat(group, 1, a_id).error_code == 0  # a pending member triggers nothing

        out = {}
        tb = threading.Thread(target=lambda: out.setdefault("b_join", B.join(group, [topic], member_id=b_id)))
        tb.start()
        wait_until(lambda: A.heartbeat(group, 1, a_id).error_code == gw.ERR_REBALANCE_IN_PROGRESS,
                   timeout=10, what="REBALANCE_IN_PROGRESS on the old member's heartbeat")
        (d,) = probe.describe([group])
        assert d.group_state == "PreparingRebalance", coerce(d)
        assert tb.is_alive(), "B's JoinGroup must wait for A to rejoin"
        ra = A.join(group, [topic], member_id=a_id)
        tb.join(15)
        rb = out["b_join"]
        assert ra.error_code == 0 and rb.error_code == 0, (coerce(ra), coerce(rb))
        assert ra.generation_id == rb.generation_id == 2
        assert ra.leader == rb.leader == a_id
        sub = consumer_subscription([topic])
        assert sorted((m.member_id, m.metadata) for m in ra.members) == sorted([(a_id, sub), (b_id, sub)])
        assert rb.members == []
        (d,) = probe.describe([group])
        assert d.group_state == "CompletingRebalance", coerce(d)
        # Between join and sync: heartbeats of the new generation are fine, commits are not yet.
        assert A.heartbeat(group, 2, a_id).error_code == 0
        assert A.heartbeat(group, 1, a_id).error_code == gw.ERR_ILLEGAL_GENERATION
        assert A.commit(group, {(topic, 0): 1}, 2, a_id) == {(topic, 0): gw.ERR_REBALANCE_IN_PROGRESS}
        assert A.commit(group, {(topic, 0): 1}, 1, a_id) == {(topic, 0): gw.ERR_ILLEGAL_GENERATION}

        # The follower syncs first and waits for the leader's assignment.
        tb = threading.Thread(target=lambda: out.setdefault("b_sync", B.sync(group, 2, b_id, {})))
        tb.start()
        time.sleep(0.3)  # (not for synchronization: gives B's SyncGroup time to arrive first)
        assert tb.is_alive(), "the follower's SyncGroup must wait for the leader's"
        a_asg = consumer_assignment({topic: [0, 1]})
        b_asg = consumer_assignment({topic: [2]})
        sa = A.sync(group, 2, a_id, {a_id: a_asg, b_id: b_asg})
        tb.join(15)
        assert sa.error_code == 0 and sa.assignment == a_asg
        assert out["b_sync"].error_code == 0 and out["b_sync"].assignment == b_asg
        assert A.heartbeat(group, 2, a_id).error_code == 0
        assert B.heartbeat(group, 2, b_id).error_code == 0
        assert A.heartbeat(group, 1, a_id).error_code == gw.ERR_ILLEGAL_GENERATION
        (d,) = probe.describe([group])
        assert d.group_state == "Stable"
        assert sorted((m.member_id, gw.parse_consumer_assignment(m.member_assignment)[topic])
                      for m in d.members) == sorted([(a_id, [0, 1]), (b_id, [2])])
        assert B.commit(group, {(topic, 2): 9}, 2, b_id) == {(topic, 2): 0}

        # A leaves: B has to rejoin, generation 3 with B as the leader.
        assert A.leave(group, a_id).error_code == 0
        wait_until(lambda: B.heartbeat(group, 2, b_id).error_code == gw.ERR_REBALANCE_IN_PROGRESS,
                   timeout=10, what="REBALANCE_IN_PROGRESS after the leader left")
        r = B.join(group, [topic], member_id=b_id)
        assert (r.error_code, r.generation_id, r.leader) == (0, 3, b_id), coerce(r)
        assert [m.member_id for m in r.members] == [b_id]
        s = B.sync(group, 3, b_id, {b_id: all_parts(topic)})
        assert s.error_code == 0 and s.assignment == all_parts(topic)
        assert B.commit(group, {(topic, 2): 10}, 2, b_id) == {(topic, 2): gw.ERR_ILLEGAL_GENERATION}
        assert B.commit(group, {(topic, 2): 10}, 3, b_id) == {(topic, 2): 0}
        still_works(b, group, topic, leave=[(B, b_id)])
    finally:
        for c in (A, B, probe):
            c.close()


@pytest.mark.timeout(60)
def test_member_that_does_not_rejoin_is_dropped_after_rebalance_timeout(coordinator, topic):
    b = coordinator
    group = new_group("rto")
    A, B = other_conn(b), other_conn(b, timeout=30)
    try:
        a_id, _ = join_single_member_group(A, group, {topic: PARTS}, version=3,
                                           rebalance_timeout_ms=3000)
        t0 = time.monotonic()
        r = B.join(group, [topic], version=3, rebalance_timeout_ms=3000)
        waited = time.monotonic() - t0
        # A never rejoins: B's join completes when the rebalance timeout (3 s) expires, without A.
        assert r.error_code == 0, coerce(r)
        assert 2.5 <= waited <= 12, waited
        assert r.generation_id == 2 and r.leader == r.member_id
        assert [m.member_id for m in r.members] == [r.member_id]
        assert A.heartbeat(group, 1, a_id, version=1).error_code == gw.ERR_UNKNOWN_MEMBER_ID
        assert B.sync(group, 2, r.member_id, {r.member_id: all_parts(topic)}, version=1).error_code == 0
        still_works(b, group, topic, leave=[(B, r.member_id)])
    finally:
        A.close()
        B.close()


@pytest.mark.timeout(60)
def test_session_timeout_removes_silent_member(coordinator, topic):
    b = coordinator
    group = new_group("sto")
    with other_conn(b) as c:
        member, gen = join_single_member_group(c, group, {topic: PARTS}, session_timeout_ms=6000)
        assert c.commit(group, {(topic, 0): 5}, gen, member) == {(topic, 0): 0}
        t0 = time.monotonic()
        wait_until(lambda: c.describe([group])[0].group_state == "Empty", timeout=20, interval=0.2,
                   what="the silent member to expire")
        waited = time.monotonic() - t0
        assert 4.0 <= waited, f"member expired after {waited:.1f}s, session timeout is 6 s"
        assert c.heartbeat(group, gen, member).error_code == gw.ERR_UNKNOWN_MEMBER_ID
        assert c.commit(group, {(topic, 0): 6}, gen, member) == {(topic, 0): gw.ERR_UNKNOWN_MEMBER_ID}
        assert c.fetch_offsets(group, {topic: [0]})[1][(topic, 0)][0] == 5
    still_works(b, group, topic)


def test_heartbeats_keep_member_alive_past_session_timeout(coordinator, topic):
    b = coordinator
    group = new_group("hb")
    with other_conn(b) as c:
        member, gen = join_single_member_group(c, group, {topic: PARTS}, session_timeout_ms=6000)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert c.heartbeat(group, gen, member).error_code == 0
            time.sleep(1)
        (d,) = c.describe([group])
        assert d.group_state == "Stable" and [m.member_id for m in d.members] == [member]
        assert c.leave(group, member).error_code == 0


def test_static_member_rejoin_keeps_generation(coordinator, topic):
    """A static member (group.instance.id) rejoining with an empty member id gets a new member
    id and its old assignment without a rebalance (generation unchanged); the old member id is
    fenced (FENCED_INSTANCE_ID). LeaveGroup by instance id removes it."""
    b = coordinator
    group = new_group("static")
    with other_conn(b) as c:
        r = c.join(group, [topic], group_instance_id="inst-1")  # v9, no MEMBER_ID_REQUIRED
        assert r.error_code == 0, err_name(r.error_code)
        assert [(m.member_id, m.group_instance_id) for m in r.members] == [(r.member_id, "inst-1")]
        old, gen = r.member_id, r.generation_id
        assert gen == 1
        assert c.sync(group, gen, old, {old: all_parts(topic)}, group_instance_id="inst-1").error_code == 0

        r = c.join(group, [topic], group_instance_id="inst-1")
        assert r.error_code == 0, err_name(r.error_code)
        new = r.member_id
        assert new != old
        assert r.generation_id == gen  # no rebalance
        assert r.skip_assignment is True  # v9: the (static) leader must not reassign
        s = c.sync(group, gen, new, {}, group_instance_id="inst-1")
        assert s.error_code == 0 and s.assignment == all_parts(topic)
        assert c.heartbeat(group, gen, old, group_instance_id="inst-1").error_code == gw.ERR_FENCED_INSTANCE_ID
        assert c.commit(group, {(topic, 0): 1}, gen, old, group_instance_id="inst-1") == \
            {(topic, 0): gw.ERR_FENCED_INSTANCE_ID}
        assert c.heartbeat(group, gen, new, group_instance_id="inst-1").error_code == 0
        assert c.commit(group, {(topic, 0): 1}, gen, new, group_instance_id="inst-1") == {(topic, 0): 0}
        (d,) = c.describe([group])
        assert [(m.member_id, m.group_instance_id) for m in d.members] == [(new, "inst-1")]

        r = c.leave(group, "", group_instance_id="inst-1")
        assert r.error_code == 0
        assert [(m.group_instance_id, m.error_code) for m in r.members] == [("inst-1", 0)]
        assert c.describe([group])[0].group_state == "Empty"
    still_works(b, group, topic)
    # Kafka names a static member "<group.instance.id>-<uuid>" (a dynamic one "<client.id>-<uuid>").
    assert old.startswith("inst-1-") and new.startswith("inst-1-"), (old, new)


# ------------------------------------------------------------------------------ bad requests


def test_commit_unknown_topic_or_partition(coordinator, conn, topic):
    group = new_group("bad-topic")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    errs = conn.commit(group, {(topic, 0): 3, (f"no-such-topic-{uuid.uuid4().hex[:6]}", 0): 3,
                               (topic, 99): 3}, gen, member)
    assert sorted(errs.values()) == [0, 3, 3], errs
    assert errs[(topic, 0)] == 0 and errs[(topic, 99)] == gw.ERR_UNKNOWN_TOPIC_OR_PARTITION
    # simple commit (no generation) too
    assert conn.commit(new_group("bad-topic-simple"), {("no-such-topic-x", 0): 1}) == \
        {("no-such-topic-x", 0): gw.ERR_UNKNOWN_TOPIC_OR_PARTITION}
    err, got = conn.fetch_offsets(group)
    assert err == 0 and {k: v[0] for k, v in got.items()} == {(topic, 0): 3}
    assert conn.heartbeat(group, gen, member).error_code == 0
    still_works(coordinator, group, topic, leave=[(conn, member)])


def test_commit_stale_or_future_generation(coordinator, conn, topic):
    group = new_group("bad-gen")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    for g in (gen - 1, gen + 1, 0):
        assert conn.commit(group, {(topic, 0): 5}, g, member) == {(topic, 0): gw.ERR_ILLEGAL_GENERATION}, g
    assert conn.fetch_offsets(group, {topic: [0]})[1][(topic, 0)][0] == -1
    assert conn.commit(group, {(topic, 0): 5}, gen, member) == {(topic, 0): 0}
    still_works(coordinator, group, topic, leave=[(conn, member)])


def test_commit_unknown_member(coordinator, conn, topic):
    group = new_group("bad-member")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    for v in range(2, 10):
        for g, m in ((gen, "no-such-member"), (-1, "")):
            # (-1, ""): a "simple" (admin) commit is refused while the group has members
            r = conn.call("OffsetCommit", v, gw.commit_body(group, {(topic, 0): 5}, g, m))
            assert [p.error_code for t in r.topics for p in t.partitions] == [gw.ERR_UNKNOWN_MEMBER_ID], (v, g, m)
    assert conn.fetch_offsets(group, {topic: [0]})[1][(topic, 0)][0] == -1
    assert conn.heartbeat(group, gen, member).error_code == 0
    still_works(coordinator, group, topic, leave=[(conn, member)])


@pytest.mark.parametrize("commit_v", range(2, 10))
def test_commit_with_generation_to_unknown_group(conn, topic, commit_v):
    """A generation >= 0 for a group that does not exist: ILLEGAL_GENERATION up to v8,
    GROUP_ID_NOT_FOUND from v9 (Kafka 4.1; it downgrades the error for older versions)."""
    group = new_group("bad-nogroup")
    want = gw.ERR_GROUP_ID_NOT_FOUND if commit_v >= 9 else gw.ERR_ILLEGAL_GENERATION
    for member in ("someone", ""):
        r = conn.call("OffsetCommit", commit_v, gw.commit_body(group, {(topic, 0): 5}, 3, member))
        assert [p.error_code for t in r.topics for p in t.partitions] == [want], (commit_v, member)
    assert conn.fetch_offsets(group, {topic: [0]})[1][(topic, 0)][0] == -1
    # generation -1: a simple commit, the member id is not checked; creates the group
    assert conn.commit(group, {(topic, 0): 5}, -1, "someone") == {(topic, 0): 0}
    assert conn.fetch_offsets(group, {topic: [0]})[1][(topic, 0)][0] == 5


@pytest.mark.parametrize("case", ["empty-list", "empty-type", "other-protocol", "other-type"])
def test_join_inconsistent_group_protocol(coordinator, conn, topic, case):
    group = new_group("bad-proto")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    kw = {"empty-list": {"protocols": []},
          "empty-type": {"protocol_type": ""},
          "other-protocol": {"protocols": [("roundrobin", consumer_subscription([topic]))]},
          "other-type": {"protocol_type": "connect"}}[case]
    with other_conn(coordinator) as c:
        for v in (3, 9):
            r = c.join(group, [topic], version=v, **kw)
            assert r.error_code == gw.ERR_INCONSISTENT_GROUP_PROTOCOL, (v, coerce(r))
            assert r.generation_id == -1
        if case == "empty-list":  # also on a group that does not exist yet
            r = c.join(new_group("bad-proto-new"), [topic], version=9, **kw)
            assert r.error_code == gw.ERR_INCONSISTENT_GROUP_PROTOCOL, coerce(r)
    # no rebalance was triggered
    assert conn.heartbeat(group, gen, member).error_code == 0
    (d,) = conn.describe([group])
    assert d.group_state == "Stable" and [m.member_id for m in d.members] == [member]
    still_works(coordinator, group, topic, leave=[(conn, member)])


def test_join_member_id_required_from_v4(coordinator, topic):
    b = coordinator
    for v in range(4, 10):
        group = new_group(f"mid{v}")
        with other_conn(b) as c:
            r = c.join(group, [topic], version=v)
            assert r.error_code == gw.ERR_MEMBER_ID_REQUIRED, (v, coerce(r))
            assert r.member_id.startswith(CLIENT_ID + "-"), r.member_id
            # The returned id is the one to use; the group has not started a generation.
            assert c.describe([group])[0].group_state in ("Empty", "Dead")
            r2 = c.join(group, [topic], member_id=r.member_id, version=v)
            assert (r2.error_code, r2.member_id, r2.generation_id) == (0, r.member_id, 1), coerce(r2)
            assert c.sync(group, 1, r.member_id, {r.member_id: all_parts(topic)},
                          version=gw.sync_version_for_join(v)).error_code == 0
            assert c.leave(group, r.member_id, version=gw.leave_version_for_join(v)).error_code == 0
    for v in range(0, 4):
        group = new_group(f"mid{v}")
        with other_conn(b) as c:
            r = c.join(group, [topic], version=v)
            assert r.error_code == 0 and r.member_id.startswith(CLIENT_ID + "-"), (v, coerce(r))


def test_join_unknown_member_id(coordinator, conn, topic):
    group = new_group("bad-join-member")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    with other_conn(coordinator) as c:
        for v in (3, 9):
            r = c.join(group, [topic], member_id="no-such-member", version=v)
            assert r.error_code == gw.ERR_UNKNOWN_MEMBER_ID, (v, coerce(r))
    assert conn.heartbeat(group, gen, member).error_code == 0
    still_works(coordinator, group, topic, leave=[(conn, member)])


@pytest.mark.parametrize("timeout_ms", [0, 5999, 1800001])
def test_join_invalid_session_timeout(coordinator, conn, topic, timeout_ms):
    group = new_group("bad-sto")
    for v in (0, 3, 9):
        r = conn.join(group, [topic], version=v, session_timeout_ms=timeout_ms)
        assert r.error_code == gw.ERR_INVALID_SESSION_TIMEOUT, (v, coerce(r))
    member, gen = join_single_member_group(conn, group, {topic: PARTS}, session_timeout_ms=6000)
    assert gen == 1
    still_works(coordinator, group, topic, leave=[(conn, member)])


def test_join_empty_group_id(conn, topic):
    for v in (0, 3, 9):
        r = conn.join("", [topic], version=v)
        assert r.error_code == gw.ERR_INVALID_GROUP_ID, (v, coerce(r))


def test_heartbeat_unknown_group_member_generation(coordinator, conn, topic):
    for v in range(5):
        r = conn.heartbeat(new_group("hb-none"), 1, "no-such-member", version=v)
        assert r.error_code == gw.ERR_UNKNOWN_MEMBER_ID, (v, coerce(r))
    group = new_group("bad-hb")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    assert conn.heartbeat(group, gen, "no-such-member").error_code == gw.ERR_UNKNOWN_MEMBER_ID
    assert conn.heartbeat(group, gen + 1, member).error_code == gw.ERR_ILLEGAL_GENERATION
    assert conn.heartbeat(group, gen - 1, member).error_code == gw.ERR_ILLEGAL_GENERATION
    assert conn.heartbeat(group, gen, member).error_code == 0
    still_works(coordinator, group, topic, leave=[(conn, member)])


def test_sync_wrong_generation_unknown_member_or_group(coordinator, conn, topic):
    group = new_group("bad-sync")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    for v in (0, 3, 5):
        for g in (gen + 1, gen - 1):
            r = conn.sync(group, g, member, {member: all_parts(topic)}, version=v)
            assert r.error_code == gw.ERR_ILLEGAL_GENERATION, (v, g, coerce(r))
            assert r.assignment == b""
        r = conn.sync(group, gen, "no-such-member", {}, version=v)
        assert r.error_code == gw.ERR_UNKNOWN_MEMBER_ID, (v, coerce(r))
        r = conn.sync(new_group("sync-none"), 1, "no-such-member", {}, version=v)
        assert r.error_code == gw.ERR_UNKNOWN_MEMBER_ID, (v, coerce(r))
    # the member's own (already synced) assignment is unchanged
    s = conn.sync(group, gen, member, {})
    assert s.error_code == 0 and s.assignment == all_parts(topic)
    assert conn.heartbeat(group, gen, member).error_code == 0
    still_works(coordinator, group, topic, leave=[(conn, member)])


def test_leave_unknown_member(coordinator, conn, topic):
    """LeaveGroup v0-2: top-level UNKNOWN_MEMBER_ID; v3+ (batch): top-level 0 and the member's
    error 25 -- for an unknown member of an existing group and for an unknown group alike."""
    group = new_group("bad-leave")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    for g in (group, new_group("leave-none")):
        for v in range(6):
            r = conn.leave(g, "no-such-member", version=v)
            if v < 3:
                assert r.error_code == gw.ERR_UNKNOWN_MEMBER_ID, (g, v, coerce(r))
            else:
                assert r.error_code == 0, (g, v, coerce(r))
                assert [(m.member_id, m.error_code) for m in r.members] == \
                    [("no-such-member", gw.ERR_UNKNOWN_MEMBER_ID)], (g, v, coerce(r))
    assert conn.heartbeat(group, gen, member).error_code == 0
    still_works(coordinator, group, topic, leave=[(conn, member)])


def test_batch_leave_known_and_unknown_member(coordinator, conn, topic):
    group = new_group("batch-leave")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    r = conn.call("LeaveGroup", 5, {"group_id": group, "members": [
        {"member_id": member}, {"member_id": "no-such-member"}]})
    assert r.error_code == 0
    assert [(m.member_id, m.error_code) for m in r.members] == \
        [(member, 0), ("no-such-member", gw.ERR_UNKNOWN_MEMBER_ID)], coerce(r)
    assert conn.describe([group])[0].group_state == "Empty"
    still_works(coordinator, group, topic)


def test_real_consumer_joins_after_bad_requests(coordinator, conn, topic):
    """A barrage of bad requests against one group, then confluent-kafka (librdkafka) joins it,
    gets every partition, and commits."""
    b = coordinator
    group = new_group("barrage")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    conn.commit(group, {("no-such-topic-y", 0): 1}, gen, member)
    conn.commit(group, {(topic, 0): 1}, gen + 5, member)
    conn.commit(group, {(topic, 0): 1}, gen, "ghost")
    conn.join(group, [topic], protocols=[])
    conn.join(group, [topic], session_timeout_ms=1000)
    conn.join(group, [topic], member_id="ghost")
    conn.heartbeat(group, gen + 1, member)
    conn.sync(group, gen + 1, member, {})
    conn.leave(group, "ghost")
    assert conn.heartbeat(group, gen, member).error_code == 0
    assert conn.leave(group, member).error_code == 0

    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 500, "log_level": 3})
    try:
        assigned = []
        c.subscribe([topic], on_assign=lambda cons, ps: assigned.extend(ps))
        wait_until(lambda: (c.poll(0.1), len(assigned) == PARTS)[1], timeout=30,
                   what="librdkafka consumer assigned")
        c.commit(offsets=[TopicPartition(topic, q, 0) for q in range(PARTS)], asynchronous=False)
        err, got = conn.fetch_offsets(group, {topic: list(range(PARTS))})
        assert {k: v[0] for k, v in got.items()} == {(topic, q): 0 for q in range(PARTS)}
    finally:
        c.close()


# ------------------------------------------------------------------------------ list / describe / delete


def test_describe_groups_every_version_and_states(coordinator, conn, topic):
    group = new_group("desc")
    simple = new_group("desc-simple")
    unknown = new_group("desc-none")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    assert conn.commit(simple, {(topic, 0): 1}) == {(topic, 0): 0}
    for v in range(6):
        groups = conn.describe([group, simple, unknown], version=v)
        got = {d.group_id: (d.error_code, d.group_state, d.protocol_type, d.protocol_data,
                            [m.member_id for m in d.members]) for d in groups}
        assert got == {
            group: (0, "Stable", "consumer", "range", [member]),
            simple: (0, "Empty", "", "", []),
            unknown: (0, "Dead", "", "", []),
        }, (v, got)
        m = groups[[d.group_id for d in groups].index(group)].members[0]
        assert (m.client_id, m.client_host) == (CLIENT_ID, "/127.0.0.1")
        if v >= 4:
            assert m.group_instance_id is None
    # While a second member is joining: PreparingRebalance; once the join completes but before
    # the leader's SyncGroup: CompletingRebalance, with no protocol name or member metadata.
    with other_conn(coordinator) as c2:
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("j", c2.join(group, [topic], version=3)))
        t.start()
        wait_until(lambda: conn.describe([group])[0].group_state == "PreparingRebalance",
                   timeout=10, what="PreparingRebalance")
        r = conn.join(group, [topic], member_id=member)
        t.join(15)
        assert r.error_code == 0 and out["j"].error_code == 0 and r.generation_id == gen + 1
        (d,) = conn.describe([group])
        assert (d.group_state, d.protocol_data) == ("CompletingRebalance", ""), coerce(d)
        assert sorted(m.member_id for m in d.members) == sorted([member, out["j"].member_id])
        # (Kafka still shows the members' previous assignment here; not checked.)
        assert [m.member_metadata for m in d.members] == [b"", b""], coerce(d)
        assert c2.leave(group, out["j"].member_id, version=1).error_code == 0
    assert conn.leave(group, member).error_code == 0
    (d,) = conn.describe([group])
    assert (d.group_state, d.protocol_type, d.protocol_data, d.members) == ("Empty", "consumer", "", [])


def test_list_groups_every_version_and_filters(coordinator, conn, topic):
    stable, empty, simple = new_group("ls-stable"), new_group("ls-empty"), new_group("ls-simple")
    member, _ = join_single_member_group(conn, stable, {topic: PARTS})
    m2, _ = join_single_member_group(conn, empty, {topic: PARTS})
    assert conn.leave(empty, m2).error_code == 0
    assert conn.commit(simple, {(topic, 0): 1}) == {(topic, 0): 0}
    mine = {stable, empty, simple}

    def listed(version, **kw):
        r = conn.list_groups(version=version, **kw)
        assert r.error_code == 0
        return {g.group_id: coerce(g) for g in r.groups if g.group_id in mine}

    for v in range(6):
        got = listed(v)
        assert {g: x["protocol_type"] for g, x in got.items()} == \
            {stable: "consumer", empty: "consumer", simple: ""}, (v, got)
        if v >= 4:
            assert {g: x["group_state"] for g, x in got.items()} == \
                {stable: "Stable", empty: "Empty", simple: "Empty"}, (v, got)
        if v >= 5:
            assert {x["group_type"] for x in got.values()} == {"classic"}
    assert set(listed(4, states=["Stable"])) == {stable}
    assert set(listed(4, states=["stable"])) == {stable}  # case-insensitive
    assert set(listed(4, states=["Empty"])) == {empty, simple}
    assert set(listed(4, states=["Empty", "Stable"])) == mine
    assert set(listed(4, states=["PreparingRebalance"])) == set()
    assert set(listed(5, types=["classic"])) == mine
    assert set(listed(5, types=["Classic"])) == mine
    assert set(listed(5, types=["consumer"])) == set()
    assert set(listed(5, states=["Stable"], types=["classic"])) == {stable}
    assert conn.leave(stable, member).error_code == 0


def test_delete_groups(coordinator, conn, topic):
    active, empty, unknown = new_group("del-active"), new_group("del-empty"), new_group("del-none")
    member, gen = join_single_member_group(conn, active, {topic: PARTS})
    assert conn.commit(active, {(topic, 0): 4}, gen, member) == {(topic, 0): 0}
    assert conn.commit(empty, {(topic, 0): 8, (topic, 1): 9}) == {(topic, 0): 0, (topic, 1): 0}
    for v in range(3):
        assert conn.delete_groups([active, unknown], version=v) == {
            active: gw.ERR_NON_EMPTY_GROUP, unknown: gw.ERR_GROUP_ID_NOT_FOUND}, v
    assert conn.delete_groups([empty], version=0) == {empty: 0}
    assert conn.delete_groups([empty], version=2) == {empty: gw.ERR_GROUP_ID_NOT_FOUND}
    err, got = conn.fetch_offsets(empty)
    assert (err, got) == (0, {})
    assert conn.describe([empty])[0].group_state == "Dead"
    assert empty not in {g.group_id for g in conn.list_groups().groups}
    # the active group and its offsets are untouched; once empty it can be deleted
    assert conn.fetch_offsets(active, {topic: [0]})[1][(topic, 0)][0] == 4
    assert conn.leave(active, member).error_code == 0
    assert conn.delete_groups([active]) == {active: 0}
    assert conn.fetch_offsets(active, {topic: [0]})[1][(topic, 0)][0] == -1
    # a deleted group id can be used again from scratch
    m, gen = join_single_member_group(conn, active, {topic: PARTS})
    assert gen == 1
    assert conn.leave(active, m).error_code == 0


def test_offset_delete(coordinator, conn, topic):
    group = new_group("odel")
    member, gen = join_single_member_group(conn, group, {topic: PARTS})
    assert conn.commit(group, {(topic, 0): 1, (topic, 1): 2, (topic, 2): 3}, gen, member) == \
        {(topic, q): 0 for q in range(PARTS)}
    err, parts = conn.offset_delete(group, {topic: [0]})
    assert (err, parts) == (0, {(topic, 0): gw.ERR_GROUP_SUBSCRIBED_TO_TOPIC})
    assert conn.offset_delete(new_group("odel-none"), {topic: [0]})[0] == gw.ERR_GROUP_ID_NOT_FOUND
    assert conn.leave(group, member).error_code == 0
    err, parts = conn.offset_delete(group, {topic: [0, 2], "no-such-topic-z": [0]})
    assert (err, parts) == (0, {(topic, 0): 0, (topic, 2): 0, ("no-such-topic-z", 0): 3}), parts
    err, got = conn.fetch_offsets(group)
    assert {k: v[0] for k, v in got.items()} == {(topic, 1): 2}


def test_consumer_offsets_topic_is_internal_with_16_partitions(coordinator, conn, topic):
    assert conn.commit(new_group("internal"), {(topic, 0): 1}) == {(topic, 0): 0}
    admin = confluent_admin(coordinator.bootstrap)
    d = admin.describe_topics(TopicCollection(["__consumer_offsets"]))["__consumer_offsets"].result(15)
    assert d.is_internal is True
    assert len(d.partitions) == 16
