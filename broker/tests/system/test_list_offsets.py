"""ListOffsets by timestamp (the consumer's offsetsForTimes): the first record at or after
the time, inside compressed batches too; -1 when no record is that recent."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from clients import confluent_admin, create
from spate_harness import unique_topic


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_offsets_for_times(broker, codec):
    topic = unique_topic("times")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 1, 1)])
    base = int(time.time() * 1000) - 600_000  # ten minutes ago, within Kafka's defaults
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": codec,
                  "linger.ms": 50, "enable.idempotence": False})
    for i in range(10):  # timestamps base+1000, base+2000, ... in one or few batches
        p.produce(topic, value=b"v%d" % i, partition=0, timestamp=base + 1000 * (i + 1))
    assert p.flush(15) == 0
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g")})
    try:
        def lookup(ts: int) -> int:
            deadline = time.time() + 20
            while True:
                try:
                    [tp] = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
                    if tp.error is None:
                        return tp.offset
                except Exception:
                    pass
                if time.time() > deadline:
                    raise AssertionError("offsets_for_times kept failing")
                time.sleep(0.3)

        assert lookup(base) == 0
        assert lookup(base + 3500) == 3  # the record stamped base+4000
        assert lookup(base + 4000) == 3
        assert lookup(base + 10_000) == 9
        assert lookup(base + 60_000) == -1  # none that recent: OFFSET_END
    finally:
        c.close()
