"""__consumer_offsets stays bounded: after many commits the coordinator rewrites the live
offsets and group metadata and moves the partition's log start past everything superseded
(spated's compaction of its internal topic, see broker/src/groups/mod.rs). Every committed
offset survives it and a restart."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic, OffsetSpec

from clients import confluent_admin, create, wait_until
from spate_harness import unique_topic

pytestmark = pytest.mark.spate_only

PARTITIONS = 100
ROUNDS = 130  # 13,000 offset records: past the 10,000-record threshold


def offsets_log_starts(admin) -> list[int]:
    specs = {TopicPartition("__consumer_offsets", p): OffsetSpec.earliest() for p in range(16)}
    return [f.result().offset for f in admin.list_offsets(specs, request_timeout=15).values()]


def committed(bootstrap, group, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=15)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def test_offsets_topic_is_compacted_and_survives_restart(fresh_broker):
    b = fresh_broker
    admin = confluent_admin(b.bootstrap)
    topic, group = unique_topic("cmp"), unique_topic("g")
    create(admin, [NewTopic(topic, PARTITIONS, 1)])
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        for r in range(ROUNDS):
            c.commit(offsets=[TopicPartition(topic, p, r * 10 + p) for p in range(PARTITIONS)],
                     asynchronous=False)
    finally:
        c.close()
    want = {p: (ROUNDS - 1) * 10 + p for p in range(PARTITIONS)}
    assert committed(b.bootstrap, group, topic) == want
    wait_until(lambda: max(offsets_log_starts(admin)) > 0, timeout=30,
               what="the group's offsets partition was compacted")
    start = max(offsets_log_starts(admin))
    assert start >= 10_000, start  # the superseded records are below the log start
    assert committed(b.bootstrap, group, topic) == want
    b.restart()
    assert committed(b.bootstrap, group, topic) == want
