"""Retention (cleanup.policy=delete): whole segments past retention.ms (by their largest record
timestamp) or beyond retention.bytes are deleted and the log start moves past them. When every
record of the active segment is expired, it is rolled and deleted too (Kafka's behaviour), so
the log ends up empty at its end offset. Runs against spated and Apache Kafka with a 300 ms
retention check.
"""

from __future__ import annotations

import time

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import NewTopic, OffsetSpec

from clients import confluent_admin, create, wait_until
from spate_harness import unique_topic

SEGMENT = 1 << 20  # Kafka 4's smallest segment.bytes


def earliest_latest(admin, topic):
    out = []
    for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
        r = admin.list_offsets({TopicPartition(topic, 0): spec}, request_timeout=15)
        out.append(list(r.values())[0].result().offset)
    return tuple(out)


def fill(bootstrap, topic, records, ts):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 64 << 10,
                  "compression.type": "none"})
    for i in range(records):
        p.produce(topic, value=b"%07d" % i + b"x" * 1017, partition=0, timestamp=ts)
    assert p.flush(30) == 0


def test_retention_by_time_and_by_size(broker_factory):
    b = broker_factory(retention_check_ms=300)
    admin = confluent_admin(b.bootstrap)
    old, big = unique_topic("ret-time"), unique_topic("ret-size")
    create(admin, [
        NewTopic(old, 1, 1, config={"segment.bytes": str(SEGMENT), "retention.ms": "60000"}),
        NewTopic(big, 1, 1, config={"segment.bytes": str(SEGMENT),
                                    "retention.bytes": str(2 * SEGMENT)}),
    ])
    hour_ago = int(time.time() * 1000) - 3_600_000
    fill(b.bootstrap, old, 4000, hour_ago)  # ~4 MiB of hour-old records: 3+ closed segments
    fill(b.bootstrap, big, 6000, int(time.time() * 1000))  # ~6 MiB of fresh records
    # Every segment of the old topic goes, the active one too (rolled first).
    wait_until(lambda: earliest_latest(admin, old) == (4000, 4000), timeout=30,
               what="retention.ms deleted every hour-old record")
    # The size-bounded topic keeps about retention.bytes (whole segments) and the newest data.
    wait_until(lambda: earliest_latest(admin, big)[0] > 0, timeout=30,
               what="retention.bytes deleted the oldest segments")
    start, end = earliest_latest(admin, big)
    assert end == 6000
    kept = end - start
    assert 1000 <= kept <= 4000, (start, end)
