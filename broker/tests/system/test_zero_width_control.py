"""Do Kafka clients read a log holding a *zero-width* control batch?

The Raft design question (raft/README.md, "Before wiring"): a leader no-op written as a
control batch occupying one Kafka offset would shift every partition's offsets (the first
record at 1, a gap after every election). The cheaper way out writes it as a control batch
with no records and `last_offset_delta = -1` — base offset = the next offset, last offset =
base - 1 — so it occupies no offset and the next data batch has the same base offset.

Spate writes its Raft leader no-ops this way (raft/src/segment/control.rs). This test plants one in a stopped broker's active
segment (between two data batches, CRC-valid, segment checkpoint removed so recovery scans
it), checks the storage keeps it and the next produce gets the offset after the first batch,
then has every client of the matrix — franz-go, kafkajs, Java kafka-clients, kcat and
confluent-kafka (librdkafka), kafka-python — consume the partition from the beginning and from
the offset the two batches share: each must see exactly the ten records, offsets 0..9, and
no error. Spate-only (it edits spated's files). Storage accepts such a batch on disk only as a
control batch (`check_first`); produce still refuses control batches from clients.
"""

from __future__ import annotations

import struct
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create
from spate_harness import unique_topic
from test_client_matrix import franz_go, java_client, kafkajs, kcat  # noqa: F401 (fixtures)

pytestmark = pytest.mark.spate_only

ATTR_CONTROL = 0x20


def zero_width_control_batch(base_offset: int, leader_epoch: int = 0) -> bytes:
    """A v2 control batch with no records occupying no offset (last_offset_delta = -1)."""
    now = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", ATTR_CONTROL, -1, now, now, -1, -1, -1, 0)
    after_len = struct.pack(">ibI", leader_epoch, 2, kw.crc32c(after_crc)) + after_crc
    return struct.pack(">qi", base_offset, len(after_len)) + after_len


def logical_end(data: bytes) -> int:
    """Where the batches of a segment file end (the rest is the zero padding of O_DIRECT)."""
    pos = 0
    while pos + 12 <= len(data):
        _, length = struct.unpack_from(">qi", data, pos)
        if length <= 0:
            break
        pos += 12 + length
    return pos


def values(tag: str, n: int) -> list[bytes]:
    return [f"{tag}-{i}".encode() for i in range(n)]


def test_clients_read_past_a_zero_width_control_batch(fresh_broker, franz_go, kafkajs,  # noqa: F811
                                                      java_client, kcat):  # noqa: F811
    b = fresh_broker
    topic = unique_topic("zw")
    create(confluent_admin(b.bootstrap), [NewTopic(topic, 1, 1)])
    first = kw.encode_record_batch([kw.Record(None, v) for v in values("a", 5)],
                                   int(time.time() * 1000))
    r = kw.produce_v3(b.host, b.port, {topic: {0: first}})[(topic, 0)]
    assert (r.error_code, r.base_offset) == (0, 0)
    b.stop()

    [pdir] = [d for d in (b.data_dir / "partitions").iterdir() if d.name.endswith("-0")
              and any(d.glob("*.log"))] or [None]
    segs = sorted(pdir.glob("*.log"))
    active = segs[-1]
    data = active.read_bytes()
    end = logical_end(data)
    with open(active, "r+b") as f:
        f.seek(end)
        f.write(zero_width_control_batch(5))
    for name in ("segments.checkpoint",):
        (pdir / name).unlink(missing_ok=True)
    b.start()
    log = b.log_tail(100_000)
    assert "truncat" not in log.split("===== start #2 =====")[-1].lower(), log[-3000:]

    second = kw.encode_record_batch([kw.Record(None, v) for v in values("b", 5)],
                                    int(time.time() * 1000))
    r = kw.produce_v3(b.host, b.port, {topic: {0: second}})[(topic, 0)]
    assert (r.error_code, r.base_offset) == (0, 5), "the control batch took no offset"

    # The raw log: data 0..4, the zero-width control batch at 5 (last offset 4), data 5..9.
    # (The restart elected a new Raft term, whose own zero-width no-op at 5 starts a new
    # segment: a read from 0 ends with the planted batch, one from 5 starts at the data.)
    res = kw.fetch_v4(b.host, b.port, {topic: [(0, 0)]})[(topic, 0)]
    assert (res.error_code, res.high_watermark) == (0, 10)
    batches = kw.decode_record_batches(res.records)
    shape = [(x.base_offset, x.base_offset + x.last_offset_delta, x.count) for x in batches]
    assert shape[:2] == [(0, 4, 5), (5, 4, 0)], shape
    assert shape[2:] in ([], [(5, 9, 5)]), shape
    assert all(x.crc_ok for x in batches)
    res = kw.fetch_v4(b.host, b.port, {topic: [(0, 5)]})[(topic, 0)]
    batches = kw.decode_record_batches(res.records)
    assert [(x.base_offset, x.base_offset + x.last_offset_delta, x.count) for x in batches] \
        == [(5, 9, 5)]

    want = values("a", 5) + values("b", 5)
    for start in (0, 5):
        expect = list(enumerate(want))[start:]
        for client in (franz_go, kafkajs, java_client, kcat):
            got = client.consume(b.bootstrap, topic, [0], len(expect), start={0: start})
            assert [(g.offset, g.value) for g in got] == expect, \
                f"{client.name} from {start}: {[(g.offset, g.value) for g in got]}"
        # librdkafka through confluent-kafka, with its position after the last record.
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g"),
                      "enable.auto.commit": False})
        try:
            c.assign([TopicPartition(topic, 0, start)])
            got = []
            deadline = time.time() + 30
            while len(got) < len(expect) and time.time() < deadline:
                m = c.poll(0.5)
                if m is not None:
                    assert not m.error(), m.error()
                    got.append((m.offset(), m.value()))
            assert got == expect
            assert c.position([TopicPartition(topic, 0)])[0].offset == 10
        finally:
            c.close()
        # kafka-python (its own protocol code).
        from kafka import KafkaConsumer
        from kafka import TopicPartition as KTP
        kc = KafkaConsumer(bootstrap_servers=b.bootstrap, group_id=None,
                           enable_auto_commit=False, auto_offset_reset="none",
                           request_timeout_ms=15000)
        try:
            kc.assign([KTP(topic, 0)])
            kc.seek(KTP(topic, 0), start)
            got = []
            deadline = time.monotonic() + 30
            while len(got) < len(expect) and time.monotonic() < deadline:
                for recs in kc.poll(timeout_ms=500).values():
                    got += [(r.offset, r.value) for r in recs]
            assert got == expect, f"kafka-python from {start}: {got}"
            assert kc.position(KTP(topic, 0)) == 10
        finally:
            kc.close()
