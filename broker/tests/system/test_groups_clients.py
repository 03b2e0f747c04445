"""Consumer groups with real clients: confluent-kafka (librdkafka), kafka-python, Apache Kafka's
Java consumer (kafka-console-consumer --group) and the confluent-kafka AdminClient group APIs;
three consumers joining and leaving a 6-partition topic with synchronous commits (range,
roundrobin and cooperative-sticky) lose and duplicate nothing; static membership restarts
without a rebalance; consumers resume at the committed offsets after a broker restart.

Group API versions the clients send (traced through api_trace_proxy against Apache Kafka 4.1
advertising only the versions Spate implements):
  librdkafka 2.16     FindCoordinator v2, JoinGroup v5, SyncGroup v3, Heartbeat v3, LeaveGroup v1,
                      OffsetCommit v9, OffsetFetch v9; admin: DescribeGroups v5, ListGroups v5
                      (v0 for the deprecated list_groups), DeleteGroups v2
  Java 4.1 consumer   FindCoordinator v6, JoinGroup v9, SyncGroup v5, LeaveGroup v5,
                      OffsetCommit v9, OffsetFetch v9 (and Heartbeat v4)
  kafka-python 3.0    FindCoordinator v6, JoinGroup v7, SyncGroup v5, LeaveGroup v5,
                      OffsetCommit v8, OffsetFetch v8
  kafka-consumer-groups  FindCoordinator v6, ListGroups v5, DescribeGroups v5, OffsetFetch v9,
                      OffsetCommit v9, DeleteGroups v2 (and OffsetDelete v0)

Apache Kafka 4.1 behaviour relied on here:
  - A static member (group.instance.id) that closes does not send LeaveGroup (librdkafka), and
    rejoining within session.timeout.ms gets its old assignment with no rebalance: the other
    member's generation stays the same and it sees no revoke/assign.
  - AdminClient alter_consumer_group_offsets on a group with members: per-partition
    UNKNOWN_MEMBER_ID (25). delete_consumer_groups: NON_EMPTY_GROUP (68) / GROUP_ID_NOT_FOUND (69).
  - describe_consumer_groups of an unknown group: state DEAD, no error. Members' host is
    "/127.0.0.1". Offsets committed by librdkafka carry the leader epoch (0) back.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid

import pytest
from confluent_kafka import (ConsumerGroupState, ConsumerGroupTopicPartitions,
                             ConsumerGroupType, KafkaError, KafkaException, TopicPartition)
from confluent_kafka.admin import NewTopic

import groups_wire as gw
from clients import (confluent_admin, create, group_consumer, ok, produce_values, results,
                     subscribe_and_wait, wait_until)
from groups_wire import GroupConn
from spate_harness import java_command, unique_topic


def new_group(prefix: str = "gc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def admin(broker):
    gw.wait_coordinator_ready(broker.host, broker.port)
    return confluent_admin(broker.bootstrap)


def new_topic(admin, partitions: int, prefix: str = "gct") -> str:
    name = unique_topic(prefix)
    create(admin, [NewTopic(name, partitions, 1)])
    return name


def values(partitions: int, per_partition: int, tag: str = "") -> dict[int, list[bytes]]:
    return {q: [f"{tag}{q}-{i}".encode() for i in range(per_partition)] for q in range(partitions)}


def committed_raw(broker, group: str, topic: str, partitions: int) -> dict[int, tuple[int, str]]:
    """{partition: (offset, metadata)} of the committed offsets (raw OffsetFetch v9)."""
    with GroupConn(broker.host, broker.port) as c:
        err, got = c.fetch_offsets(group, {topic: list(range(partitions))})
    assert err == 0, gw.err_name(err)
    return {q: got[(topic, q)][:2] for q in range(partitions) if got[(topic, q)][0] >= 0}


def consume_exactly(c, n: int, timeout: float = 30.0, commit: bool = False) -> list:
    """Poll until n records arrived (then make sure no more come for a moment)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            raise AssertionError(f"consumer error {m.error()}")
        got.append(m)
        if commit:
            c.commit(message=m, asynchronous=False)
    assert len(got) == n, f"got {len(got)} of {n} records"
    extra = c.poll(0.5)
    assert extra is None or extra.error(), f"unexpected extra record {extra.partition()}:{extra.offset()}"
    return got


# ------------------------------------------------------------------------------ single clients


def test_confluent_commit_and_resume(broker, admin):
    """librdkafka: consume half of the records committing each one synchronously, close; a new
    consumer in the group gets exactly the other half, then exactly the newly produced ones."""
    topic = new_topic(admin, 3)
    produce_values(broker.bootstrap, topic, values(3, 10))
    group = new_group("cf")
    c = group_consumer(broker.bootstrap, group)
    c.subscribe([topic])
    first = []
    deadline = time.monotonic() + 30
    while len(first) < 15 and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and not m.error():
            first.append(m)
            c.commit(message=m, asynchronous=False)
    assert len(first) == 15
    pos = {}
    for m in first:
        pos[m.partition()] = m.offset() + 1
    committed = {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, q) for q in range(3)], timeout=15)}
    assert {q: o for q, o in committed.items() if o >= 0} == pos
    c.close()
    assert {q: o for q, (o, _) in committed_raw(broker, group, topic, 3).items()} == pos

    c = group_consumer(broker.bootstrap, group)
    c.subscribe([topic])
    rest = consume_exactly(c, 15, commit=True)
    seen = [(m.partition(), m.offset(), m.value()) for m in first + rest]
    assert sorted(seen) == [(q, i, f"{q}-{i}".encode()) for q in range(3) for i in range(10)]

    produce_values(broker.bootstrap, topic, values(3, 2, tag="new"))
    more = consume_exactly(c, 6, commit=True)
    assert sorted((m.partition(), m.offset(), m.value()) for m in more) == \
        [(q, 10 + i, f"new{q}-{i}".encode()) for q in range(3) for i in range(2)]
    # commit with metadata, read back through the raw protocol
    c.commit(offsets=[TopicPartition(topic, 0, 12, "cf-meta")], asynchronous=False)
    c.close()
    # (librdkafka sends the metadata string with its terminating NUL: "cf-meta\x00")
    assert {q: (o, m.rstrip("\x00")) for q, (o, m) in committed_raw(broker, group, topic, 3).items()} == \
        {0: (12, "cf-meta"), 1: (12, ""), 2: (12, "")}


def test_kafka_python_commit_and_resume(broker, admin):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP
    from kafka.structs import OffsetAndMetadata

    topic = new_topic(admin, 3)
    produce_values(broker.bootstrap, topic, values(3, 10))
    group = new_group("kp")

    def consumer():
        return KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             session_timeout_ms=6000, heartbeat_interval_ms=500,
                             request_timeout_ms=15000, client_id="kp-client")

    def drain(c, n):
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                got.extend(recs)
        if len(got) != n:
            with GroupConn(broker.host, broker.port) as conn:
                (d,) = conn.describe([group])
            raise AssertionError(f"kafka-python consumed {len(got)} of {n} records; its assignment "
                                 f"{c.assignment()}; group {gw.coerce(d)}")
        assert not any(c.poll(timeout_ms=500).values())
        return got

    c = consumer()
    try:
        got = drain(c, 30)
        assert sorted((r.partition, r.offset, r.value) for r in got) == \
            [(q, i, f"{q}-{i}".encode()) for q in range(3) for i in range(10)]
        assert c.assignment() == {KTP(topic, q) for q in range(3)}
        # commit explicit offsets with metadata (partition 2 rewound to 4)
        c.commit({KTP(topic, 0): OffsetAndMetadata(10, "kp-meta", -1),
                  KTP(topic, 1): OffsetAndMetadata(10, "", -1),
                  KTP(topic, 2): OffsetAndMetadata(4, "", -1)})
        assert c.committed(KTP(topic, 2)) == 4
    finally:
        c.close(autocommit=False)
    assert committed_raw(broker, group, topic, 3) == {0: (10, "kp-meta"), 1: (10, ""), 2: (4, "")}

    produce_values(broker.bootstrap, topic, {0: [b"late-0"], 1: [b"late-1"]})
    c = consumer()
    try:
        got = drain(c, 2 + 6)
        assert sorted((r.partition, r.offset, r.value) for r in got) == \
            [(0, 10, b"late-0"), (1, 10, b"late-1")] + [(2, i, f"2-{i}".encode()) for i in range(4, 10)]
        c.commit()
    finally:
        c.close(autocommit=False)
    assert {q: o for q, (o, _) in committed_raw(broker, group, topic, 3).items()} == {0: 11, 1: 11, 2: 10}


def console_consumer(bootstrap, topic, group, n, from_beginning):
    cmd = java_command("org.apache.kafka.tools.consumer.ConsoleConsumer",
                       "--bootstrap-server", bootstrap, "--topic", topic, "--group", group,
                       *(["--from-beginning"] if from_beginning else []),
                       "--max-messages", str(n), "--timeout-ms", "30000",
                       "--consumer-property", "session.timeout.ms=6000",
                       "--consumer-property", "client.id=java-console")
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, f"console consumer rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert f"Processed a total of {n} messages" in r.stderr, r.stderr[-3000:]
    return r.stdout.splitlines()


def test_java_console_consumer_group(broker, admin):
    """kafka-console-consumer --group (Java client 4.1.1, auto commit on close): reads
    everything, its committed offsets are visible afterwards, a second run resumes there."""
    topic = new_topic(admin, 2)
    vals = values(2, 10)
    produce_values(broker.bootstrap, topic, vals)
    group = new_group("java")
    lines = console_consumer(broker.bootstrap, topic, group, 20, from_beginning=True)
    assert sorted(lines) == sorted(v.decode() for vs in vals.values() for v in vs)
    assert committed_raw(broker, group, topic, 2) == {0: (10, ""), 1: (10, "")}
    d = ok(admin.describe_consumer_groups([group], request_timeout=15))[group]
    assert d.state == ConsumerGroupState.EMPTY and not d.is_simple_consumer_group

    produce_values(broker.bootstrap, topic, {0: [b"n0", b"n1"], 1: [b"n2"]})
    lines = console_consumer(broker.bootstrap, topic, group, 3, from_beginning=True)
    assert sorted(lines) == ["n0", "n1", "n2"]  # --from-beginning only applies without offsets
    assert committed_raw(broker, group, topic, 2) == {0: (12, ""), 1: (11, "")}


# ------------------------------------------------------------------------------ rebalancing


class Worker(threading.Thread):
    """A confluent-kafka consumer in its own thread: processes (records) each message, then
    commits it synchronously before polling again.

    A synchronous commit can fail while the group rebalances (with cooperative-sticky the
    member keeps consuming during a rebalance: Kafka answers ILLEGAL_GENERATION or
    REBALANCE_IN_PROGRESS, as any broker must while the generation changes). As a careful
    application does, the worker then keeps the offset pending, retries it after the next
    poll, and commits pending offsets of revoked partitions in the revoke callback, so no
    partition changes hands with an uncommitted processed record."""

    def __init__(self, name, bootstrap, group, topic, strategy, **extra):
        super().__init__(name=name, daemon=True)
        self.conf = {"client.id": name, "partition.assignment.strategy": strategy, **extra}
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.records: list[tuple[int, int, bytes]] = []
        self.owned: set[int] = set()
        self.min_owned_after_first: int | None = None
        self.callbacks: list[tuple[str, list[int]]] = []
        self.errors: list[str] = []  # failures that can cause duplicates or losses
        self.retried_commits: list[str] = []  # commit errors that a later commit covered
        self.pending: dict[int, int] = {}  # partition -> offset to commit
        self.stop_flag = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()

    def _commit_pending(self, c, partitions=None, final=False) -> None:
        todo = {q: o for q, o in self.pending.items() if partitions is None or q in partitions}
        if not todo:
            return
        try:
            c.commit(offsets=[TopicPartition(self.topic, q, o) for q, o in todo.items()],
                     asynchronous=False)
            for q, o in todo.items():
                if self.pending.get(q) == o:
                    del self.pending[q]
        except KafkaException as e:
            msg = f"commit {todo}: {e.args[0]}"
            (self.errors if final else self.retried_commits).append(msg)

    def _cb(self, kind):
        def cb(consumer, partitions):
            qs = sorted(p.partition for p in partitions)
            with self.lock:
                self.callbacks.append((kind, qs))
            if kind == "revoke":
                self._commit_pending(consumer, set(qs), final=True)
            elif kind == "lost":
                lost = [q for q in qs if q in self.pending]
                if lost:
                    self.errors.append(f"lost partitions {lost} with uncommitted records")
        return cb

    def run(self):
        try:
            c = group_consumer(self.bootstrap, self.group, **self.conf)
            c.subscribe([self.topic], on_assign=self._cb("assign"), on_revoke=self._cb("revoke"),
                        on_lost=self._cb("lost"))
            while not self.stop_flag.is_set():
                m = c.poll(0.05)
                owned = {tp.partition for tp in c.assignment()}
                with self.lock:
                    self.owned = owned
                    if owned or self.min_owned_after_first is not None:
                        # smallest assignment seen since the first non-empty one
                        self.min_owned_after_first = min(len(owned), self.min_owned_after_first or 99)
                for q in [q for q in self.pending if q not in owned]:
                    self.errors.append(f"partition {q} no longer owned, offset {self.pending.pop(q)} uncommitted")
                self._commit_pending(c)
                if m is None:
                    continue
                if m.error():
                    self.errors.append(f"consume: {m.error()}")
                    continue
                with self.lock:
                    self.records.append((m.partition(), m.offset(), m.value()))
                self.pending[m.partition()] = m.offset() + 1
                self._commit_pending(c)
            self._commit_pending(c, final=True)
            c.close()
        except Exception as e:  # surfaced by the test
            self.errors.append(f"worker crashed: {e!r}")
        finally:
            self.closed.set()

    def snapshot(self):
        with self.lock:
            return set(self.owned), len(self.records)

    def stop(self, timeout=20):
        self.stop_flag.set()
        assert self.closed.wait(timeout), f"{self.name} did not close"


def producer_thread(bootstrap, topic, partitions, start, count, rate, stop):
    """Produce values 'v<i>' (i in start..start+count) to partition i % partitions at ~rate/s."""
    from confluent_kafka import Producer

    produced = []

    def run():
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all",
                      "linger.ms": 2, "log_level": 3})
        t0 = time.monotonic()
        for k, i in enumerate(range(start, start + count)):
            if stop.is_set():
                break
            p.produce(topic, value=f"v{i}".encode(), partition=i % partitions,
                      on_delivery=lambda err, msg: produced.append(
                          (msg.partition(), msg.offset(), msg.value())) if err is None else None)
            p.poll(0)
            ahead = t0 + (k + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        assert p.flush(30) == 0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, produced


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_three_consumers_join_and_leave(broker, admin, strategy):
    """Three librdkafka consumers (manual synchronous commit after each record) on a
    6-partition topic while records keep arriving: A alone, then B and C join (2 partitions
    each), then A leaves (3 each). Every record is consumed exactly once, and the final
    committed offsets are the log end offsets."""
    parts = 6
    topic = new_topic(admin, parts)
    group = new_group(f"three-{strategy}")
    produce_values(broker.bootstrap, topic, {q: [f"v{i}".encode() for i in range(q, 300, parts)]
                                             for q in range(parts)})
    produced = [(q, i // parts, f"v{i}".encode()) for i in range(300) for q in [i % parts]]

    def owned_map(ws):
        return {w.name: w.snapshot()[0] for w in ws}

    def balanced(ws, sizes):
        m = owned_map(ws)
        all_owned = [q for s in m.values() for q in s]
        return (sorted(len(s) for s in m.values()) == sizes and sorted(all_owned) == list(range(parts)))

    A = Worker("A", broker.bootstrap, group, topic, strategy)
    B = Worker("B", broker.bootstrap, group, topic, strategy)
    C = Worker("C", broker.bootstrap, group, topic, strategy)
    stop = threading.Event()
    try:
        A.start()
        wait_until(lambda: A.snapshot()[0] == set(range(parts)) and A.snapshot()[1] >= 60,
                   timeout=30, what="A owns all partitions and consumes")
        pt, live = producer_thread(broker.bootstrap, topic, parts, 300, 900, 150, stop)
        B.start()
        C.start()
        wait_until(lambda: balanced([A, B, C], [2, 2, 2]), timeout=40, interval=0.05,
                   what=f"2+2+2 assignment ({strategy}): {owned_map([A, B, C])}")
        A.stop()
        wait_until(lambda: balanced([B, C], [3, 3]), timeout=40, interval=0.05,
                   what=f"3+3 assignment after A left ({strategy}): {owned_map([B, C])}")
        pt.join(30)
        assert not pt.is_alive()
        expected = sorted(produced + live)
        assert len(expected) == 1200
        wait_until(lambda: sum(w.snapshot()[1] for w in (A, B, C)) >= len(expected), timeout=40,
                   what="everything consumed")
        time.sleep(0.5)  # (only to let a duplicate, if any, arrive before counting)
        B.stop()
        C.stop()
    finally:
        stop.set()
        for w in (A, B, C):
            w.stop_flag.set()
        for w in (A, B, C):
            if w.is_alive():
                w.closed.wait(20)

    for w in (A, B, C):
        assert not w.errors, (w.name, w.errors[:5])
        assert w.records, f"{w.name} consumed nothing"
        if w.retried_commits:
            print(f"{w.name}: {len(w.retried_commits)} commits failed during rebalances and were "
                  f"retried: {w.retried_commits[:3]}")
    got = sorted(A.records + B.records + C.records)
    dups = [r for r, n in zip(got, got[1:]) if r == n]
    assert not dups, f"{len(dups)} records consumed twice, e.g. {dups[:5]}"
    missing = sorted(set(expected) - set(got))
    assert not missing, f"{len(missing)} records never consumed, e.g. {missing[:5]}"
    assert got == expected
    end = {q: sum(1 for r in expected if r[0] == q) for q in range(parts)}
    assert {q: o for q, (o, _) in committed_raw(broker, group, topic, parts).items()} == end
    if strategy == "cooperative-sticky":
        # incremental rebalancing: A kept partitions through B's and C's joins
        assert A.min_owned_after_first and A.min_owned_after_first >= 2, A.callbacks
        assert not [cb for cb in A.callbacks if cb[0] == "revoke" and len(cb[1]) == parts], A.callbacks


def generation_of(broker, group, member_id, probe_topic) -> int:
    """The group's current generation, found with OffsetCommit (which answers
    ILLEGAL_GENERATION unless the generation matches) on an unrelated topic."""
    with GroupConn(broker.host, broker.port) as c:
        for g in range(1, 50):
            errs = c.commit(group, {(probe_topic, 0): 0}, g, member_id)
            if errs[(probe_topic, 0)] == 0:
                return g
            assert errs[(probe_topic, 0)] == gw.ERR_ILLEGAL_GENERATION, gw.err_name(errs[(probe_topic, 0)])
    raise AssertionError("no generation matched")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_static_member_restart_does_not_rebalance(broker, admin, static):
    """A (group.instance.id when static) closes and restarts within its session timeout; B
    (dynamic) sees no revoke/assign and the generation is unchanged. Control: without a
    group.instance.id the same restart rebalances the group."""
    topic = new_topic(admin, 2)
    probe = new_topic(admin, 1, prefix="probe")
    group = new_group("static" if static else "dynamic")
    extra = {"session.timeout.ms": 10000}
    a_conf = dict(extra, **({"group.instance.id": "static-a"} if static else {}))
    B = Worker("B", broker.bootstrap, group, topic, "range", **extra)
    B.start()
    try:
        wait_until(lambda: B.snapshot()[0] == {0, 1}, timeout=30, what="B owns both partitions")
        a = group_consumer(broker.bootstrap, group, **dict(a_conf, **{"client.id": "A"}))
        a.subscribe([topic])
        wait_until(lambda: (a.poll(0.05), len(a.assignment()) == 1 and B.snapshot()[0] != {0, 1})[1],
                   timeout=30, what="A and B one partition each")
        a_part = {tp.partition for tp in a.assignment()}
        wait_until(lambda: B.snapshot()[0] == {0, 1} - a_part, timeout=10, what="B settled")
        d = ok(admin.describe_consumer_groups([group], request_timeout=15))[group]
        members = {m.client_id: m for m in d.members}
        assert d.state == ConsumerGroupState.STABLE and set(members) == {"A", "B"}
        assert members["A"].group_instance_id == ("static-a" if static else None)
        a_member_before = members["A"].member_id
        b_member = members["B"].member_id
        gen_before = generation_of(broker, group, b_member, probe)
        with B.lock:
            b_callbacks_before = list(B.callbacks)

        a.close()  # static: no LeaveGroup
        a = group_consumer(broker.bootstrap, group, **dict(a_conf, **{"client.id": "A"}))
        a.subscribe([topic])
        wait_until(lambda: (a.poll(0.05), len(a.assignment()) == 1)[1], timeout=30,
                   what="A assigned again")
        # Give a rebalance, if one was started, time to reach B (heartbeat.interval.ms is 500).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            a.poll(0.1)
        d = ok(admin.describe_consumer_groups([group], request_timeout=15))[group]
        members = {m.client_id: m for m in d.members}
        assert d.state == ConsumerGroupState.STABLE and set(members) == {"A", "B"}
        assert members["B"].member_id == b_member
        gen_after = generation_of(broker, group, b_member, probe)
        with B.lock:
            b_callbacks_after = list(B.callbacks)
        if static:
            assert {tp.partition for tp in a.assignment()} == a_part
            assert members["A"].group_instance_id == "static-a"
            assert members["A"].member_id != a_member_before  # a new member id, same instance
            assert gen_after == gen_before, "static member restart must not rebalance"
            assert b_callbacks_after == b_callbacks_before, b_callbacks_after[len(b_callbacks_before):]
        else:
            assert gen_after > gen_before  # leave + rejoin: one or two rebalances
            assert len(b_callbacks_after) > len(b_callbacks_before)
        a.close()
    finally:
        B.stop()
    assert not B.errors, B.errors


# ------------------------------------------------------------------------------ AdminClient


def test_admin_client_group_apis(broker, admin):
    topic = new_topic(admin, 3)
    produce_values(broker.bootstrap, topic, values(3, 5))
    # active: a subscribed member; manual: only commits (assign(), never joins): a "simple"
    # group; left: its member joined and left (an Empty group of protocol type "consumer")
    active, manual, left, unknown = (new_group(p) for p in ("adm-active", "adm-manual", "adm-left", "adm-none"))

    c = group_consumer(broker.bootstrap, active, **{"client.id": "adm-client"})
    subscribe_and_wait(c, [topic], 3)
    c.commit(offsets=[TopicPartition(topic, q, q + 1) for q in range(3)], asynchronous=False)
    e = group_consumer(broker.bootstrap, manual)
    e.assign([TopicPartition(topic, 0)])
    e.commit(offsets=[TopicPartition(topic, 0, 5, "adm-meta")], asynchronous=False)
    e.close()
    with GroupConn(broker.host, broker.port) as conn:
        member, gen = gw.join_single_member_group(conn, left, {topic: 3})
        assert conn.commit(left, {(topic, 2): 2}, gen, member) == {(topic, 2): 0}
        assert conn.leave(left, member).error_code == 0
    try:
        # list_consumer_groups
        r = ok({0: admin.list_consumer_groups(request_timeout=15)})[0]
        assert not r.errors
        listed = {g.group_id: g for g in r.valid}
        assert {active, manual, left} <= set(listed)
        assert listed[active].state == ConsumerGroupState.STABLE
        assert listed[manual].state == ConsumerGroupState.EMPTY
        assert {listed[g].type for g in (active, manual, left)} == {ConsumerGroupType.CLASSIC}
        # a group that only ever committed offsets (no protocol type) is a "simple" group
        assert listed[manual].is_simple_consumer_group is True
        assert listed[active].is_simple_consumer_group is False
        assert listed[left].is_simple_consumer_group is False
        r = ok({0: admin.list_consumer_groups(request_timeout=15, states={ConsumerGroupState.STABLE})})[0]
        assert active in {g.group_id for g in r.valid} and not {manual, left} & {g.group_id for g in r.valid}
        r = ok({0: admin.list_consumer_groups(request_timeout=15, states={ConsumerGroupState.EMPTY})})[0]
        assert {manual, left} <= {g.group_id for g in r.valid} and active not in {g.group_id for g in r.valid}

        # describe_consumer_groups
        d = ok(admin.describe_consumer_groups([active, manual, unknown], request_timeout=15))
        a = d[active]
        assert (a.state, a.partition_assignor, a.type, a.is_simple_consumer_group) == \
            (ConsumerGroupState.STABLE, "range", ConsumerGroupType.CLASSIC, False)
        assert a.coordinator.id == 0 and (a.coordinator.host, a.coordinator.port) == (broker.host, broker.port)
        (m,) = a.members
        assert (m.client_id, m.host, m.group_instance_id) == ("adm-client", "/127.0.0.1", None)
        assert m.member_id.startswith("adm-client-")
        assert sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions) == \
            [(topic, q) for q in range(3)]
        assert (d[manual].state, d[manual].members) == (ConsumerGroupState.EMPTY, [])
        assert d[unknown].state == ConsumerGroupState.DEAD

        # list_consumer_group_offsets: all, and selected partitions
        got = ok(admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(active)]))[active]
        assert sorted((tp.partition, tp.offset, tp.error) for tp in got.topic_partitions) == \
            [(0, 1, None), (1, 2, None), (2, 3, None)]
        got = ok(admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(
            manual, [TopicPartition(topic, 0), TopicPartition(topic, 1)])]))[manual]
        got = {tp.partition: tp for tp in got.topic_partitions}
        assert {q: (tp.offset, tp.error) for q, tp in got.items()} == {0: (5, None), 1: (-1001, None)}
        assert got[0].metadata == "adm-meta"

        # alter_consumer_group_offsets: refused while the group has members, fine when manual
        r = ok(admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
            active, [TopicPartition(topic, 0, 4)])]))[active]
        assert [(tp.partition, tp.error.code() if tp.error else None) for tp in r.topic_partitions] == \
            [(0, KafkaError.UNKNOWN_MEMBER_ID)]
        r = ok(admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
            manual, [TopicPartition(topic, 0, 1), TopicPartition(topic, 2, 4)])]))[manual]
        assert sorted((tp.partition, tp.offset, tp.error) for tp in r.topic_partitions) == \
            [(0, 1, None), (2, 4, None)]
        assert {q: o for q, (o, _) in committed_raw(broker, manual, topic, 3).items()} == {0: 1, 2: 4}
        assert {q: o for q, (o, _) in committed_raw(broker, active, topic, 3).items()} == {0: 1, 1: 2, 2: 3}

        # delete_consumer_groups
        r = results(admin.delete_consumer_groups([active, manual, unknown], request_timeout=15))
        assert r[manual] is None
        assert isinstance(r[active], KafkaError) and r[active].code() == KafkaError.NON_EMPTY_GROUP
        assert isinstance(r[unknown], KafkaError) and r[unknown].code() == KafkaError.GROUP_ID_NOT_FOUND
        assert committed_raw(broker, manual, topic, 3) == {}
        r = ok({0: admin.list_consumer_groups(request_timeout=15)})[0]
        assert manual not in {g.group_id for g in r.valid} and active in {g.group_id for g in r.valid}
    finally:
        c.close()
    r = results(admin.delete_consumer_groups([active], request_timeout=15))
    assert r[active] is None


# ------------------------------------------------------------------------------ restart


@pytest.mark.timeout(150)
def test_consumers_resume_at_committed_offsets_after_restart(fresh_broker):
    broker = fresh_broker
    gw.wait_coordinator_ready(broker.host, broker.port)
    adm = confluent_admin(broker.bootstrap)
    parts = 4
    topic = new_topic(adm, parts)
    produce_values(broker.bootstrap, topic, values(parts, 20))
    positions = {0: 3, 1: 11, 2: 0, 3: 20}
    main, deleted, trimmed = new_group("rs-main"), new_group("rs-deleted"), new_group("rs-trimmed")
    # many groups, so that offsets live in many __consumer_offsets partitions
    others = {new_group(f"rs-{i}"): i for i in range(24)}

    c = group_consumer(broker.bootstrap, main)
    subscribe_and_wait(c, [topic], parts)
    c.commit(offsets=[TopicPartition(topic, q, o, f"m{q}") for q, o in positions.items()],
             asynchronous=False)
    c.close()
    with GroupConn(broker.host, broker.port) as conn:
        for g in (deleted, trimmed):
            assert set(conn.commit(g, {(topic, q): 5 for q in range(parts)}).values()) == {0}
        assert conn.delete_groups([deleted]) == {deleted: 0}
        assert conn.offset_delete(trimmed, {topic: [1]}) == (0, {(topic, 1): 0})
        for g, i in others.items():
            assert conn.commit(g, {(topic, i % parts): i}, metadata=g) == {(topic, i % parts): 0}
        # offsets are overwritten in place: only the latest survives
        assert conn.commit(trimmed, {(topic, 0): 6}) == {(topic, 0): 0}
    before = {g: committed_raw(broker, g, topic, parts) for g in [main, deleted, trimmed, *others]}
    assert {q: (o, m.rstrip("\x00")) for q, (o, m) in before[main].items()} == \
        {q: (o, f"m{q}") for q, o in positions.items()}  # librdkafka appends a NUL
    assert before[deleted] == {} and before[trimmed] == {0: (6, ""), 2: (5, ""), 3: (5, "")}

    del adm
    broker.restart()
    gw.wait_coordinator_ready(broker.host, broker.port)

    after = {g: committed_raw(broker, g, topic, parts) for g in [main, deleted, trimmed, *others]}
    assert after == before
    with GroupConn(broker.host, broker.port) as conn:
        (d,) = conn.describe([main])
        assert (d.group_state, d.protocol_type) == ("Empty", "consumer"), gw.coerce(d)
        assert conn.describe([deleted])[0].group_state == "Dead"

    c = group_consumer(broker.bootstrap, main)
    c.subscribe([topic])
    try:
        got = consume_exactly(c, sum(20 - o for o in positions.values()), commit=True)
        first = {}
        for m in got:
            first.setdefault(m.partition(), m.offset())
        assert first == {q: o for q, o in positions.items() if o < 20}
        assert sorted((m.partition(), m.offset(), m.value()) for m in got) == \
            [(q, i, f"{q}-{i}".encode()) for q in range(parts) for i in range(positions[q], 20)]
    finally:
        c.close()
    assert {q: o for q, (o, _) in committed_raw(broker, main, topic, parts).items()} == {q: 20 for q in range(parts)}
