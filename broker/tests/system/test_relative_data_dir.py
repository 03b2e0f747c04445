"""The quick start runs spated with its default, relative data dir (./data). Regression: with
a relative data dir every directory fsync of the partition logs failed with EBADF. Produce
with acks=all, restart, read everything back, and no storage error in the log."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from clients import confluent_admin, create
from spate_harness import unique_topic

pytestmark = pytest.mark.spate_only


def test_relative_data_dir_works_across_a_restart(broker_factory):
    b = broker_factory(relative_data_dir=True)
    topic = unique_topic("reldir")
    create(confluent_admin(b.bootstrap), [NewTopic(topic, 2, 1)])
    p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    for i in range(200):
        p.produce(topic, value=b"v%d" % i, partition=i % 2)
    assert p.flush(15) == 0
    b.restart()
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, q, 0) for q in range(2)])
        got = set()
        deadline = time.time() + 20
        while len(got) < 200 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.add(m.value())
    finally:
        c.close()
    assert got == {b"v%d" % i for i in range(200)}
    log = b.log_tail(200_000)
    assert "Bad file descriptor" not in log and "fdatasync failed" not in log \
        and "flush failed" not in log, log[-3000:]
