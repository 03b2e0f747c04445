"""Idempotent producers: InitProducerId, duplicates answered with their original offsets,
sequence gaps refused, and the producer state surviving a restart (rebuilt from the log).

Runs against spated and, with SPATE_TEST_TARGET=kafka, against Apache Kafka: the answers are
Kafka's.
"""

from __future__ import annotations

import struct
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create
from spate_harness import unique_topic

API_INIT_PRODUCER_ID = 22
OUT_OF_ORDER_SEQUENCE_NUMBER = 45


def init_producer_id(host: str, port: int) -> tuple[int, int]:
    """InitProducerId v0 for an idempotent (non-transactional) producer. Retries the
    retriable COORDINATOR_LOAD_IN_PROGRESS / COORDINATOR_NOT_AVAILABLE (Kafka, just started)."""
    body = kw.nullable_string(None) + struct.pack(">i", 60000)
    req = kw.frame(kw.request_header(API_INIT_PRODUCER_ID, 0, 9) + body)
    deadline = time.time() + 20
    while True:
        r = kw.Reader(kw.roundtrip(host, port, req, 15.0))
        r.i32()  # correlation id
        r.i32()  # throttle
        err = r.i16()
        (pid,) = struct.unpack(">q", r.take(8))
        epoch = r.i16()
        if err in (14, 15) and time.time() < deadline:
            time.sleep(0.2)
            continue
        assert err == 0, f"InitProducerId error {err}"
        return pid, epoch


def batch(pid: int, epoch: int, first_seq: int, n: int, tag: str) -> bytes:
    records = [kw.Record(key=None, value=f"{tag}-{first_seq + i}".encode()) for i in range(n)]
    return kw.encode_record_batch(records, int(time.time() * 1000), producer_id=pid,
                                  producer_epoch=epoch, base_sequence=first_seq)


def produce(broker, topic: str, records: bytes) -> kw.ProducePartitionResult:
    return kw.produce_v3(broker.host, broker.port, {topic: {0: records}})[(topic, 0)]


def high_watermark(broker, topic: str) -> int:
    res = kw.fetch_v4(broker.host, broker.port, {topic: [(0, 0)]})
    return res[(topic, 0)].high_watermark


def test_retries_across_a_restart_are_deduplicated(fresh_broker):
    b = fresh_broker
    topic = unique_topic("idem")
    create(confluent_admin(b.bootstrap), [NewTopic(topic, 1, 1)])
    pid, epoch = init_producer_id(b.host, b.port)
    assert pid >= 0 and epoch == 0
    first, second = batch(pid, epoch, 0, 5, "a"), batch(pid, epoch, 5, 5, "b")
    assert produce(b, topic, first).base_offset == 0
    assert produce(b, topic, second).base_offset == 5
    # A retry right away: the original offsets, nothing appended.
    dup = produce(b, topic, second)
    assert (dup.error_code, dup.base_offset) == (0, 5)
    b.restart()
    # The same retry after a restart: still recognised.
    dup = produce(b, topic, second)
    assert (dup.error_code, dup.base_offset) == (0, 5)
    assert high_watermark(b, topic) == 10
    # A gap is refused and changes nothing; the next in-order batch goes on at 10.
    gap = produce(b, topic, batch(pid, epoch, 11, 2, "c"))
    assert gap.error_code == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert produce(b, topic, batch(pid, epoch, 10, 3, "d")).base_offset == 10
    assert high_watermark(b, topic) == 13
    # A new producer id is different from the first.
    assert init_producer_id(b.host, b.port)[0] != pid


def test_confluent_idempotent_producer_round_trip(broker):
    topic = unique_topic("idem")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 2, 1)])
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                  "linger.ms": 5})
    errors = []
    n = 2000
    for i in range(n):
        p.produce(topic, value=str(i).encode(), partition=i % 2,
                  on_delivery=lambda e, m: e and errors.append(e))
    assert p.flush(30) == 0
    assert not errors, errors[:3]
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, q, 0) for q in range(2)])
        seen = []
        deadline = time.time() + 30
        while len(seen) < n and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                seen.append(int(m.value()))
        assert sorted(seen) == list(range(n)), "every record exactly once"
    finally:
        c.close()


@pytest.mark.spate_only
def test_producer_state_snapshot_crash_and_damage(fresh_broker):
    """Spate keeps a producer-state snapshot per partition (written at a clean close, Kafka's
    `<offset>.snapshot`): a restart restores it and replays only the batches after it. After a
    kill -9 the batches since the snapshot are replayed from the log; a damaged snapshot is
    refused (logged) and the state rebuilt from the whole log — retries stay deduplicated in
    every case."""
    b = fresh_broker
    topic = unique_topic("idemsnap")
    create(confluent_admin(b.bootstrap), [NewTopic(topic, 1, 1)])
    pid, epoch = init_producer_id(b.host, b.port)
    first, second = batch(pid, epoch, 0, 5, "a"), batch(pid, epoch, 5, 5, "b")
    assert produce(b, topic, first).base_offset == 0
    assert produce(b, topic, second).base_offset == 5
    b.restart()  # clean: the snapshot at offset 10 is written, then restored
    snaps = list((b.data_dir / "partitions").glob("*/producers.snapshot"))
    assert len(snaps) == 1, snaps
    third = batch(pid, epoch, 10, 3, "c")
    assert produce(b, topic, third).base_offset == 10
    b.kill()  # the snapshot still says 10; the third batch is only in the log
    b.start()
    for records, base in ((second, 5), (third, 10)):
        dup = produce(b, topic, records)
        assert (dup.error_code, dup.base_offset) == (0, base)
    assert high_watermark(b, topic) == 13
    b.stop()
    snaps[0].write_bytes(b"SPPS\x01" + b"\x00" * 7 + b"garbage")
    b.start()
    assert "unreadable producer-state snapshot" in b.log_tail(200_000)
    assert not snaps[0].exists(), "a refused snapshot is removed, never trusted later"
    dup = produce(b, topic, third)
    assert (dup.error_code, dup.base_offset) == (0, 10)
    gap = produce(b, topic, batch(pid, epoch, 14, 1, "d"))
    assert gap.error_code == OUT_OF_ORDER_SEQUENCE_NUMBER
    assert produce(b, topic, batch(pid, epoch, 13, 1, "d")).base_offset == 13
