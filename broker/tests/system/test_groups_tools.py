"""Apache Kafka's kafka-consumer-groups tool (ConsumerGroupCommand, kafka-tools 4.1.1) against the
broker's group coordinator: --list (with --state / --type), --describe (offsets, lag, members,
state), --reset-offsets (--to-earliest / --to-offset / --shift-by / --to-latest, --execute and
--dry-run), --delete and --delete-offsets.

The tool exits 0 even when it reports an error; errors are printed on stdout as "Error: ...".
Expected output is what the 4.1 tool prints against Apache Kafka 4.1 (the exception texts are the
client's defaults for the broker's error codes, so they follow from the codes):
  - --describe of a group without members prints its committed offsets with "-" for
    CONSUMER-ID/HOST/CLIENT-ID and "Consumer group 'G' has no active members." on stderr;
    with members, every assigned partition is listed, "-" as CURRENT-OFFSET and LAG where
    nothing is committed, HOST is "/127.0.0.1".
  - --describe of an unknown group: "Error: Consumer group 'G' does not exist." when the
    broker answers DescribeGroups v0-5 with state Dead (Apache Kafka, which has DescribeGroups v6,
    answers GROUP_ID_NOT_FOUND and the tool prints "... GroupIdNotFoundException: Group G not
    found."; either is accepted).
  - --reset-offsets of an active group: "Error: Assignments can only be reset if the group 'G'
    is inactive, but the current state is Stable."
  - --delete of a group with members: "* Group 'G' could not be deleted due to:
    org.apache.kafka.common.errors.GroupNotEmptyException: The group is not empty."
  - --delete-offsets of a topic the group is subscribed to: GroupSubscribedToTopicException per
    partition.
"""

from __future__ import annotations

import re
import uuid

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import NewTopic

import groups_wire as gw
from clients import (confluent_admin, create, group_consumer, produce_values, subscribe_and_wait,
                     tool_ok, wait_until)
from groups_wire import GroupConn

PARTS = 3
PER_PART = 10  # records per partition


def new_group(prefix: str = "cg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def env(broker):
    """(broker, topic with 3 partitions x 10 records, second empty topic), coordinator ready."""
    admin = confluent_admin(broker.bootstrap)
    topic, other = f"cgt-{uuid.uuid4().hex[:8]}", f"cgu-{uuid.uuid4().hex[:8]}"
    create(admin, [NewTopic(topic, PARTS, 1), NewTopic(other, 1, 1)])
    produce_values(broker.bootstrap, topic,
                   {q: [f"{q}-{i}".encode() for i in range(PER_PART)] for q in range(PARTS)})
    gw.wait_coordinator_ready(broker.host, broker.port)
    return broker, topic, other


def cg(bootstrap, *args):
    return tool_ok("kafka-consumer-groups", "--bootstrap-server", bootstrap, *args)


def table(stdout: str, header_start: str = "GROUP") -> list[dict]:
    """Rows of the whitespace-separated table whose header starts with `header_start`."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if ln.startswith(header_start + " ") or ln.startswith(header_start + "\t"):
            head = ln.replace("COORDINATOR (ID)", "COORDINATOR(ID)").split()
            rows = []
            for row in lines[i + 1:]:
                if row.startswith("Error") or row.startswith("Consumer group"):
                    break
                cells = re.sub(r"\s+\((\d+)\)", r"(\1)", row).split()  # "host:port  (0)"
                assert len(cells) == len(head), f"row {row!r} does not match header {head}"
                rows.append(dict(zip(head, cells)))
            return rows
    raise AssertionError(f"no table with header {header_start!r} in:\n{stdout}")


def committed(broker, group: str, topic: str) -> dict[int, int]:
    with GroupConn(broker.host, broker.port) as c:
        err, got = c.fetch_offsets(group, {topic: list(range(PARTS))})
    assert err == 0
    return {q: got[(topic, q)][0] for q in range(PARTS) if got[(topic, q)][0] >= 0}


def simple_commit(broker, group: str, offsets: dict[tuple[str, int], int]) -> None:
    with GroupConn(broker.host, broker.port) as c:
        assert set(c.commit(group, offsets).values()) == {0}


@pytest.fixture
def active(env):
    """A confluent-kafka consumer (client.id cli-<n>) subscribed to the topic, alone in its group,
    with offsets 4 and 10 committed for partitions 0 and 1 (none for 2)."""
    broker, topic, _ = env
    group = new_group("active")
    client_id = f"cli-{uuid.uuid4().hex[:6]}"
    c = group_consumer(broker.bootstrap, group, **{"client.id": client_id})
    subscribe_and_wait(c, [topic], PARTS)
    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 10)], asynchronous=False)
    yield group, client_id, c
    try:
        c.close()
    except RuntimeError:
        pass  # the test closed it already


def test_list_with_state_and_type(env, active):
    broker, topic, _ = env
    group_active, _, _ = active
    empty, simple = new_group("empty"), new_group("simple")
    c = group_consumer(broker.bootstrap, empty)
    subscribe_and_wait(c, [topic], PARTS)
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    c.close()
    simple_commit(broker, simple, {(topic, 1): 2})
    mine = {group_active, empty, simple}

    listed = {ln.strip() for ln in cg(broker.bootstrap, "--list").stdout.splitlines() if ln.strip()}
    assert mine <= listed, listed

    rows = {r["GROUP"]: r["STATE"] for r in table(cg(broker.bootstrap, "--list", "--state").stdout)}
    assert {g: rows.get(g) for g in mine} == {group_active: "Stable", empty: "Empty", simple: "Empty"}
    rows = {r["GROUP"] for r in table(cg(broker.bootstrap, "--list", "--state", "Stable").stdout)}
    assert group_active in rows and not {empty, simple} & rows
    rows = {r["GROUP"]: r["TYPE"] for r in table(cg(broker.bootstrap, "--list", "--type").stdout)}
    assert {g: rows.get(g) for g in mine} == {g: "Classic" for g in mine}

    cg(broker.bootstrap, "--delete", "--group", empty, "--group", simple)
    listed = {ln.strip() for ln in cg(broker.bootstrap, "--list").stdout.splitlines() if ln.strip()}
    assert group_active in listed and not {empty, simple} & listed


def test_describe_inactive_group_offsets_and_lag(env):
    broker, topic, _ = env
    group = new_group("lag")
    c = group_consumer(broker.bootstrap, group)
    c.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    c.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 10)], asynchronous=False)
    c.close()
    for args in ((), ("--offsets",)):
        r = cg(broker.bootstrap, "--describe", "--group", group, *args)
        rows = sorted(table(r.stdout), key=lambda x: (x["TOPIC"], int(x["PARTITION"])))
        assert rows == [
            {"GROUP": group, "TOPIC": topic, "PARTITION": "0", "CURRENT-OFFSET": "4",
             "LOG-END-OFFSET": str(PER_PART), "LAG": "6", "CONSUMER-ID": "-", "HOST": "-", "CLIENT-ID": "-"},
            {"GROUP": group, "TOPIC": topic, "PARTITION": "1", "CURRENT-OFFSET": "10",
             "LOG-END-OFFSET": str(PER_PART), "LAG": "0", "CONSUMER-ID": "-", "HOST": "-", "CLIENT-ID": "-"},
        ], r.stdout
        assert f"Consumer group '{group}' has no active members." in r.stderr

    r = cg(broker.bootstrap, "--describe", "--group", group, "--state")
    (row,) = table(r.stdout)
    assert row == {"GROUP": group, "COORDINATOR(ID)": f"{broker.host}:{broker.port}(0)",
                   "ASSIGNMENT-STRATEGY": "-", "STATE": "Empty", "#MEMBERS": "0"}, r.stdout
    r = cg(broker.bootstrap, "--describe", "--group", group, "--members")
    assert table(r.stdout) == []


def test_describe_active_group(env, active):
    broker, topic, other = env
    group, client_id, _ = active
    r = cg(broker.bootstrap, "--describe", "--group", group)
    rows = sorted(table(r.stdout), key=lambda x: (x["TOPIC"], int(x["PARTITION"])))
    member = rows[0]["CONSUMER-ID"]
    assert member.startswith(client_id + "-"), rows
    expect = [("0", "4", "6"), ("1", "10", "0"), ("2", "-", "-")]
    assert rows == [{"GROUP": group, "TOPIC": topic, "PARTITION": q, "CURRENT-OFFSET": cur,
                     "LOG-END-OFFSET": str(PER_PART), "LAG": lag, "CONSUMER-ID": member,
                     "HOST": "/127.0.0.1", "CLIENT-ID": client_id} for q, cur, lag in expect], r.stdout
    assert "no active members" not in r.stderr

    r = cg(broker.bootstrap, "--describe", "--group", group, "--members")
    assert table(r.stdout) == [{"GROUP": group, "CONSUMER-ID": member, "HOST": "/127.0.0.1",
                                "CLIENT-ID": client_id, "#PARTITIONS": str(PARTS)}], r.stdout
    r = cg(broker.bootstrap, "--describe", "--group", group, "--members", "--verbose")
    (row,) = table(r.stdout)
    assert row["CURRENT-ASSIGNMENT"] == f"{topic}:0,1,2", r.stdout
    r = cg(broker.bootstrap, "--describe", "--group", group, "--state")
    assert table(r.stdout) == [{"GROUP": group, "COORDINATOR(ID)": f"{broker.host}:{broker.port}(0)",
                                "ASSIGNMENT-STRATEGY": "range", "STATE": "Stable",
                                "#MEMBERS": "1"}], r.stdout

    # --all-groups includes it
    r = cg(broker.bootstrap, "--describe", "--all-groups")
    assert {(x["GROUP"], x["PARTITION"]) for x in table(r.stdout) if x["GROUP"] == group} == \
        {(group, str(q)) for q in range(PARTS)}


def test_describe_unknown_group(env):
    broker, _, _ = env
    group = new_group("nosuch")
    r = cg(broker.bootstrap, "--describe", "--group", group)
    out = r.stdout
    assert (f"Error: Consumer group '{group}' does not exist." in out
            or f"GroupIdNotFoundException: Group {group} not found." in out), out


def test_reset_offsets_inactive_group(env):
    broker, topic, _ = env
    group = new_group("reset")
    simple_commit(broker, group, {(topic, 0): 4, (topic, 1): 10})
    all_new = {str(q) for q in range(PARTS)}

    def reset(*args):
        r = cg(broker.bootstrap, "--reset-offsets", "--group", group, *args)
        assert "Error" not in r.stdout, r.stdout
        return {(x["TOPIC"], x["PARTITION"]): x["NEW-OFFSET"] for x in table(r.stdout)}

    assert reset("--topic", topic, "--to-earliest", "--execute") == {(topic, q): "0" for q in all_new}
    assert committed(broker, group, topic) == {0: 0, 1: 0, 2: 0}

    assert reset("--topic", topic, "--to-offset", "7", "--execute") == {(topic, q): "7" for q in all_new}
    assert committed(broker, group, topic) == {0: 7, 1: 7, 2: 7}

    assert reset("--topic", f"{topic}:1", "--shift-by", "-2", "--execute") == {(topic, "1"): "5"}
    assert reset("--topic", f"{topic}:2", "--shift-by", "2", "--execute") == {(topic, "2"): "9"}
    assert committed(broker, group, topic) == {0: 7, 1: 5, 2: 9}

    # --dry-run (the default) only prints
    assert reset("--topic", topic, "--to-latest", "--dry-run") == {(topic, q): "10" for q in all_new}
    assert reset("--topic", topic, "--to-earliest") == {(topic, q): "0" for q in all_new}
    assert committed(broker, group, topic) == {0: 7, 1: 5, 2: 9}

    # out of range: clamped to the log end / start offsets
    assert reset("--topic", f"{topic}:0", "--shift-by", "100", "--execute") == {(topic, "0"): "10"}
    assert committed(broker, group, topic) == {0: 10, 1: 5, 2: 9}

    # A consumer of the group resumes exactly there.
    c = group_consumer(broker.bootstrap, group)
    try:
        c.subscribe([topic])
        got = []
        wait_until(lambda: (got.extend(m for m in c.consume(100, 0.2) if not m.error()), len(got) >= 6)[1],
                   timeout=30, what="records after the reset offsets")
        got.extend(m for m in c.consume(100, 0.5) if not m.error())  # nothing more may come
        assert sorted((m.partition(), m.offset(), m.value()) for m in got) == \
            [(1, o, f"1-{o}".encode()) for o in range(5, 10)] + [(2, 9, b"2-9")]
    finally:
        c.close()

    # A group that never existed: the reset creates its offsets.
    fresh = new_group("reset-new")
    r = cg(broker.bootstrap, "--reset-offsets", "--group", fresh, "--topic", topic, "--to-offset", "3", "--execute")
    assert {x["NEW-OFFSET"] for x in table(r.stdout)} == {"3"}
    assert committed(broker, fresh, topic) == {0: 3, 1: 3, 2: 3}
    (row,) = table(cg(broker.bootstrap, "--describe", "--group", fresh, "--state").stdout)
    assert (row["STATE"], row["#MEMBERS"]) == ("Empty", "0")


def test_reset_offsets_refused_for_active_group(env, active):
    broker, topic, _ = env
    group, _, _ = active
    r = cg(broker.bootstrap, "--reset-offsets", "--group", group, "--topic", topic, "--to-earliest", "--execute")
    assert (f"Error: Assignments can only be reset if the group '{group}' is inactive, "
            "but the current state is Stable.") in r.stdout, r.stdout
    assert committed(broker, group, topic) == {0: 4, 1: 10}


def test_delete_group(env, active):
    broker, topic, _ = env
    busy, _, _ = active
    group = new_group("del")
    simple_commit(broker, group, {(topic, 0): 3})
    r = cg(broker.bootstrap, "--delete", "--group", group)
    assert f"Deletion of requested consumer groups ('{group}') was successful." in r.stdout, r.stdout
    assert committed(broker, group, topic) == {}
    listed = {ln.strip() for ln in cg(broker.bootstrap, "--list").stdout.splitlines()}
    assert group not in listed and busy in listed

    r = cg(broker.bootstrap, "--delete", "--group", busy)
    assert "Error: Deletion of some consumer groups failed:" in r.stdout, r.stdout
    assert (f"* Group '{busy}' could not be deleted due to: "
            "org.apache.kafka.common.errors.GroupNotEmptyException: The group is not empty.") in r.stdout
    assert committed(broker, busy, topic) == {0: 4, 1: 10}

    r = cg(broker.bootstrap, "--delete", "--group", group)
    assert (f"* Group '{group}' could not be deleted due to: "
            "org.apache.kafka.common.errors.GroupIdNotFoundException: The group id does not exist.") in r.stdout


def test_delete_offsets(env, active):
    broker, topic, other = env
    group, _, consumer = active
    r = cg(broker.bootstrap, "--delete-offsets", "--group", group, "--topic", topic)
    assert "Error: Encountered some partition-level error" in r.stdout, r.stdout
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(topic)]
    assert len(lines) == PARTS and all(
        "GroupSubscribedToTopicException: Deleting offsets of a topic is forbidden while the "
        "consumer group is actively subscribed to it." in ln for ln in lines), r.stdout
    assert committed(broker, group, topic) == {0: 4, 1: 10}

    consumer.close()
    wait_until(lambda: table(cg(broker.bootstrap, "--describe", "--group", group, "--state").stdout)[0]["STATE"] == "Empty",
               timeout=15, what="group empty")
    r = cg(broker.bootstrap, "--delete-offsets", "--group", group, "--topic", f"{topic}:1")
    assert f"Request succeeded for deleting offsets from group {group}." in r.stdout, r.stdout
    assert re.search(rf"^{re.escape(topic)}\s+1\s+Successful\s*$", r.stdout, re.M), r.stdout
    assert committed(broker, group, topic) == {0: 4}
