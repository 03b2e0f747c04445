"""OffsetForLeaderEpoch v2 over the raw protocol: epoch 0 ends at the log end offset, an
unknown epoch is (-1, -1), a current leader epoch newer than the broker's is
UNKNOWN_LEADER_EPOCH, an unknown topic UNKNOWN_TOPIC_OR_PARTITION. Same answers from Kafka."""

from __future__ import annotations

import struct
import time

from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create
from spate_harness import unique_topic

API_OFFSET_FOR_LEADER_EPOCH = 23


def offset_for_leader_epoch_v2(host, port, topic, parts):
    """parts: [(partition, current_leader_epoch, leader_epoch)] ->
    {partition: (error, leader_epoch, end_offset)}"""
    body = struct.pack(">i", 1) + kw._string(topic) + struct.pack(">i", len(parts))
    for p, cur, ep in parts:
        body += struct.pack(">iii", p, cur, ep)
    req = kw.frame(kw.request_header(API_OFFSET_FOR_LEADER_EPOCH, 2, 61) + body)
    r = kw.Reader(kw.roundtrip(host, port, req))
    assert r.i32() == 61
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            err = r.i16()
            p = r.i32()
            epoch = r.i32()
            (end,) = struct.unpack(">q", r.take(8))
            out[p] = (err, epoch, end)
    return out


def test_offset_for_leader_epoch(broker):
    topic = unique_topic("ofle")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 1, 1)])
    batch = kw.encode_record_batch([kw.Record(None, b"v%d" % i, offset_delta=i) for i in range(3)],
                                   int(time.time() * 1000))
    deadline = time.monotonic() + 15
    while kw.produce_v3(broker.host, broker.port, {topic: {0: batch}})[(topic, 0)].error_code:
        assert time.monotonic() < deadline  # Kafka: NOT_LEADER right after the create
        time.sleep(0.2)
    got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, -1, 0)])
    assert got[0] == (0, 0, 3)
    got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, -1, 5)])
    assert got[0] == (0, -1, -1)
    got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, 5, 0)])
    assert got[0][0] == 75  # UNKNOWN_LEADER_EPOCH
    got = offset_for_leader_epoch_v2(broker.host, broker.port, "no-such-topic-ofle", [(0, -1, 0)])
    assert got[0][0] == 3
