"""Broker-side produce rules: a topic's compression.type recompresses batches (Kafka's
behaviour, keys/values/headers/timestamps kept), the internal __consumer_offsets topic refuses
client writes, and a produce with acks=all is bounded by its timeout.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import NewTopic

from clients import confluent_admin, create
from kafka_wire import Record, encode_record_batch, fetch_v4, produce_v3
from spate_harness import unique_topic

CODEC_IDS = {"uncompressed": 0, "gzip": 1}
INVALID_TOPIC_EXCEPTION = 17


def produce_retrying(broker, topic, records_bytes):
    deadline = time.monotonic() + 15
    while True:
        r = produce_v3(broker.host, broker.port, {topic: {0: records_bytes}})[(topic, 0)]
        if r.error_code != 6 or time.monotonic() > deadline:  # Kafka: NOT_LEADER just after create
            return r
        time.sleep(0.2)


@pytest.mark.parametrize("topic_codec,producer_codec", [("gzip", "none"), ("uncompressed", "gzip")])
def test_topic_compression_type_recompresses(broker, topic_codec, producer_codec):
    topic = unique_topic("recompress")
    create(confluent_admin(broker.bootstrap),
           [NewTopic(topic, 1, 1, config={"compression.type": topic_codec})])
    base_ts = int(time.time() * 1000)
    records = [Record(key=b"k%d" % i, value=b"value-%d" % i * 20,
                      headers=[("h", b"x%d" % i), ("h", None)], timestamp_delta=i, offset_delta=i)
               for i in range(5)]
    if producer_codec == "none":
        raw = encode_record_batch(records, base_ts)
    else:
        # A gzip batch from a real client, so the broker must decompress it.
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": broker.bootstrap, "compression.type": "gzip",
                      "linger.ms": 100, "enable.idempotence": False})
        for r in records:
            p.produce(topic, key=r.key, value=r.value, partition=0,
                      headers=[(k, v) for k, v in r.headers], timestamp=base_ts + r.timestamp_delta)
        assert p.flush(15) == 0
        raw = None
    if raw is not None:
        assert produce_retrying(broker, topic, raw).error_code == 0
    deadline = time.monotonic() + 15
    while True:
        got = fetch_v4(broker.host, broker.port, {topic: [(0, 0)]})[(topic, 0)]
        batches = got.batches()
        if sum(b.count for b in batches) >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got.error_code == 0
    assert batches and all(b.codec == CODEC_IDS[topic_codec] for b in batches), \
        [b.codec for b in batches]
    assert all(b.crc_ok for b in batches)
    decoded = [r for b in batches for r in (b.records or [])]
    assert [(r.key, r.value) for r in decoded] == [(r.key, r.value) for r in records]
    assert [r.headers for r in decoded] == [r.headers for r in records]
    stamps = [b.base_timestamp + r.timestamp_delta for b in batches for r in b.records]
    assert stamps == [base_ts + i for i in range(5)]
    offsets = [b.base_offset + r.offset_delta for b in batches for r in b.records]
    assert offsets == list(range(5))


def test_internal_offsets_topic_refuses_client_writes(broker):
    from confluent_kafka import Consumer, TopicPartition
    # A group lookup (here: committed offsets) creates __consumer_offsets.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + 20
        while "__consumer_offsets" not in c.list_topics(timeout=10).topics:
            try:
                c.committed([TopicPartition("x", 0)], timeout=5)
            except Exception:
                pass
            assert time.monotonic() < deadline, "__consumer_offsets never appeared"
            time.sleep(0.2)
    finally:
        c.close()
    raw = encode_record_batch([Record(key=b"k", value=b"v")], int(time.time() * 1000))
    r = produce_v3(broker.host, broker.port, {"__consumer_offsets": {0: raw}})
    assert r[("__consumer_offsets", 0)].error_code == INVALID_TOPIC_EXCEPTION
