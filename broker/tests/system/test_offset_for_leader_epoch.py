"""OffsetForLeaderEpoch v2 over the raw protocol, against the partition's current leader epoch
as Metadata v7 reports it (Kafka: 0 for a new topic; Spate: the partition's Raft term). The
current epoch ends at the log end offset; an epoch newer than any known is (-1, -1); a current
leader epoch newer than the broker's is UNKNOWN_LEADER_EPOCH, an older one
FENCED_LEADER_EPOCH; an unknown topic UNKNOWN_TOPIC_OR_PARTITION. Same answers from Kafka.
Spate only: after a restart the epoch moves on (a new Raft term), the old epoch ends where the
new one starts, and a fetch with the old epoch is fenced."""

from __future__ import annotations

import struct
import time

import pytest
from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create
from spate_harness import unique_topic

API_OFFSET_FOR_LEADER_EPOCH = 23
UNKNOWN_LEADER_EPOCH = 75
FENCED_LEADER_EPOCH = 74


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


def leader_epochs_v7(host, port, topic):
    """Metadata v7 for one topic -> {partition: (error, leader, leader_epoch)}."""
    body = struct.pack(">i", 1) + kw._string(topic) + b"\x00"
    req = kw.frame(kw.request_header(kw.API_METADATA, 7, 62) + body)
    r = kw.Reader(kw.roundtrip(host, port, req))
    assert r.i32() == 62
    r.i32()  # throttle
    for _ in range(r.i32()):  # brokers
        r.i32(), r.string(), r.i32(), r.string()
    r.string()  # cluster id
    r.i32()  # controller
    out = {}
    for _ in range(r.i32()):
        r.i16(), r.string(), r.i8()
        for _ in range(r.i32()):
            err, p, leader, epoch = r.i16(), r.i32(), r.i32(), r.i32()
            for _ in range(3):  # replicas, isr, offline
                for _ in range(r.i32()):
                    r.i32()
            out[p] = (err, leader, epoch)
    return out


def produce_3(broker, topic):
    batch = kw.encode_record_batch([kw.Record(None, b"v%d" % i, offset_delta=i) for i in range(3)],
                                   int(time.time() * 1000))
    deadline = time.monotonic() + 15
    while kw.produce_v3(broker.host, broker.port, {topic: {0: batch}})[(topic, 0)].error_code:
        assert time.monotonic() < deadline  # Kafka: NOT_LEADER right after the create
        time.sleep(0.2)


def current_epoch(broker, topic):
    deadline = time.monotonic() + 15
    while True:
        err, leader, epoch = leader_epochs_v7(broker.host, broker.port, topic)[0]
        if err == 0 and leader >= 0:
            return epoch
        assert time.monotonic() < deadline, (err, leader, epoch)
        time.sleep(0.2)


def test_offset_for_leader_epoch(broker):
    topic = unique_topic("ofle")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 1, 1)])
    produce_3(broker, topic)
    epoch = current_epoch(broker, topic)
    assert epoch >= 0
    got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, -1, epoch)])
    assert got[0] == (0, epoch, 3)
    got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, epoch, epoch)])
    assert got[0] == (0, epoch, 3)
    got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, -1, epoch + 5)])
    assert got[0] == (0, -1, -1)
    got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, epoch + 5, epoch)])
    assert got[0][0] == UNKNOWN_LEADER_EPOCH
    if epoch > 0:
        got = offset_for_leader_epoch_v2(broker.host, broker.port, topic, [(0, epoch - 1, epoch)])
        assert got[0][0] == FENCED_LEADER_EPOCH
    got = offset_for_leader_epoch_v2(broker.host, broker.port, "no-such-topic-ofle", [(0, -1, 0)])
    assert got[0][0] == 3


@pytest.mark.spate_only
def test_leader_epoch_moves_on_at_restart(fresh_broker):
    b = fresh_broker
    topic = unique_topic("ofle-restart")
    create(confluent_admin(b.bootstrap), [NewTopic(topic, 1, 1)])
    produce_3(b, topic)
    first = current_epoch(b, topic)
    b.restart()
    second = current_epoch(b, topic)
    assert second > first
    produce_3(b, topic)
    # The old epoch ends where the new one starts (no offset was lost or added in between).
    got = offset_for_leader_epoch_v2(b.host, b.port, topic, [(0, -1, first)])
    assert got[0] == (0, first, 3)
    got = offset_for_leader_epoch_v2(b.host, b.port, topic, [(0, second, second)])
    assert got[0] == (0, second, 6)
    # A client that still believes the old epoch is fenced, and told about the new one.
    got = offset_for_leader_epoch_v2(b.host, b.port, topic, [(0, first, first)])
    assert got[0][0] == FENCED_LEADER_EPOCH
