"""DeleteRecords and ListOffsets' special timestamps through confluent-kafka's AdminClient.

DeleteRecords moves the log start (low watermark): fetches below it get OFFSET_OUT_OF_RANGE
(a consumer with auto.offset.reset=earliest restarts at the new start), ListOffsets earliest
reports it, and it survives a restart. Offsets past the high watermark are refused.
MAX_TIMESTAMP finds the record with the largest timestamp.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import NewTopic, OffsetSpec

from clients import confluent_admin, create
from spate_harness import unique_topic


def produce(bootstrap, topic, n, base_ts, ts_of=lambda i: i):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(n):
        p.produce(topic, value=b"v%d" % i, partition=0, timestamp=base_ts + ts_of(i))
    assert p.flush(15) == 0


def offsets(admin, topic, spec):
    r = admin.list_offsets({TopicPartition(topic, 0): spec}, request_timeout=15)
    info = list(r.values())[0].result()
    return info.offset, info.timestamp


def consume_all(bootstrap, topic, expect):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])  # offset 0 is below the start: reset to earliest
    got = []
    deadline = time.time() + 20
    try:
        while len(got) < expect and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append((m.offset(), m.value()))
    finally:
        c.close()
    return got


def test_delete_records_moves_the_log_start_and_survives_restart(fresh_broker):
    b = fresh_broker
    topic = unique_topic("delrec")
    admin = confluent_admin(b.bootstrap)
    create(admin, [NewTopic(topic, 1, 1)])
    base = int(time.time() * 1000) - 60_000
    # The largest timestamp is on record 3, not the last one.
    produce(b.bootstrap, topic, 10, base, ts_of=lambda i: 5000 if i == 3 else i)
    assert offsets(admin, topic, OffsetSpec.max_timestamp()) == (3, base + 5000)

    r = admin.delete_records([TopicPartition(topic, 0, 4)], request_timeout=15)
    low = list(r.values())[0].result()
    assert low.low_watermark == 4
    assert offsets(admin, topic, OffsetSpec.earliest())[0] == 4
    assert offsets(admin, topic, OffsetSpec.latest())[0] == 10
    got = consume_all(b.bootstrap, topic, 6)
    assert [o for o, _ in got] == list(range(4, 10))
    assert got[0][1] == b"v4"

    # Past the high watermark: refused, nothing moves.
    r = admin.delete_records([TopicPartition(topic, 0, 11)], request_timeout=15)
    try:
        list(r.values())[0].result()
        raise AssertionError("delete_records past the high watermark succeeded")
    except KafkaException as e:
        assert "OFFSET_OUT_OF_RANGE" in str(e) or "out of range" in str(e).lower(), e
    assert offsets(admin, topic, OffsetSpec.earliest())[0] == 4

    b.restart()
    admin = confluent_admin(b.bootstrap)
    assert offsets(admin, topic, OffsetSpec.earliest())[0] == 4
    assert [o for o, _ in consume_all(b.bootstrap, topic, 6)] == list(range(4, 10))
    # Everything (offset -1 = the high watermark).
    r = admin.delete_records([TopicPartition(topic, 0, -1)], request_timeout=15)
    assert list(r.values())[0].result().low_watermark == 10
    assert offsets(admin, topic, OffsetSpec.earliest())[0] == 10
