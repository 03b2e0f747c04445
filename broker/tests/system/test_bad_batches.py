"""Produce of batches whose records are bad though the batch header and CRC are fine.

Kafka validates every record (decompressing compressed batches) and so must Spate: a stored
bad batch would poison every consumer (the Java consumer fails on an lz4 frame with dependent
blocks, for one). Each case gets an error and leaves the log unchanged (high watermark 0).
Codes: INVALID_RECORD (87) where Kafka answers it; for undecodable compressed data Kafka 4.1
answers UNKNOWN_SERVER_ERROR (-1) or CORRUPT_MESSAGE, Spate CORRUPT_MESSAGE (2) — a clearer
code for the same refusal.
"""

from __future__ import annotations

import gzip
import struct
import time

import pytest
from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create
from spate_harness import TARGET, unique_topic

INVALID_RECORD = 87
CORRUPT_MESSAGE = 2


def batch(codec: int, payload: bytes, n: int) -> bytes:
    ts = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", codec, n - 1, ts, ts, -1, -1, -1, n) + payload
    after_len = struct.pack(">ibI", -1, 2, kw.crc32c(after_crc)) + after_crc
    return struct.pack(">qi", 0, len(after_len)) + after_len


def records(n: int, key: bytes | None = b"k", deltas=None) -> bytes:
    deltas = deltas if deltas is not None else list(range(n))
    return b"".join(kw.encode_record(kw.Record(key, b"v", [], 0, d)) for d in deltas)


def lz4_frame_dependent_blocks(data: bytes) -> bytes:
    """An LZ4 frame whose FLG byte says blocks are *dependent* (bit 5 clear), holding one
    uncompressed block (high bit of the block size set), as lz4js writes."""
    flg = 0x40  # version 01, block independence 0, no checksums
    bd = 0x70  # 4 MiB max block
    # Header checksum: (xxh32(FLG BD) >> 8) & 0xff; brokers that refuse the frame never check it.
    hc = 0xDF
    return (b"\x04\x22\x4d\x18" + bytes([flg, bd, hc]) + struct.pack("<I", len(data) | 0x80000000)
            + data + b"\x00\x00\x00\x00")


CASES = {
    "gzip_garbage": (lambda: batch(1, b"not gzip at all" * 4, 2), None),
    "gzip_more_records_than_declared": (lambda: batch(1, gzip.compress(records(3)), 2),
                                        INVALID_RECORD),
    "gzip_fewer_records_than_declared": (lambda: batch(1, gzip.compress(records(2)), 3),
                                         INVALID_RECORD),
    "snappy_garbage": (lambda: batch(2, b"\xff" * 40, 2), None),
    "zstd_garbage": (lambda: batch(4, b"\x28\xb5\x2f\xfd" + b"\x00" * 30, 2), None),
    "lz4_dependent_blocks": (lambda: batch(3, lz4_frame_dependent_blocks(records(2)), 2), None),
    "uncompressed_more_records_than_declared": (lambda: batch(0, records(3), 2), INVALID_RECORD),
}


def produce_retrying(broker, topic, raw, partition=0):
    deadline = time.monotonic() + 15
    while True:
        r = kw.produce_v3(broker.host, broker.port, {topic: {partition: raw}})[(topic, partition)]
        if r.error_code != 6 or time.monotonic() > deadline:  # Kafka: NOT_LEADER after create
            return r
        time.sleep(0.2)


@pytest.fixture(scope="module")
def bad_topic(broker):
    topic = unique_topic("badrec")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 1, 1)])
    # A good batch first, so "unchanged" means the high watermark stays at 1 record.
    assert produce_retrying(broker, topic, batch(0, records(1), 1)).error_code == 0
    return topic


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_records_are_refused_and_the_log_is_unchanged(broker, bad_topic, case):
    make, expected = CASES[case]
    r = produce_retrying(broker, bad_topic, make())
    assert r.error_code != 0, f"{case} was accepted at offset {r.base_offset}"
    if expected is not None:
        assert r.error_code == expected
    elif TARGET == "spate":
        assert r.error_code == CORRUPT_MESSAGE
    hw = kw.list_offsets_v1(broker.host, broker.port, {bad_topic: [(0, -1)]})
    assert hw[(bad_topic, 0)][2] == 1


def test_compacted_topic_requires_keys(broker):
    topic = unique_topic("compactkeys")
    create(confluent_admin(broker.bootstrap),
           [NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})])
    r = produce_retrying(broker, topic, batch(0, records(2, key=None), 2))
    assert r.error_code == INVALID_RECORD
    assert produce_retrying(broker, topic, batch(0, records(2), 2)).error_code == 0


@pytest.mark.spate_only
def test_a_decompression_bomb_is_refused_without_stalling(broker, bad_topic):
    """A 100 KB gzip batch whose one record decompresses to 80 MiB: Spate decompresses on the
    shard's reactor to validate records, so it bounds the output (64 MiB,
    `limits::DECOMPRESSED_BATCH_BYTES_MAX`) and answers INVALID_RECORD at once, log
    unchanged. (Kafka streams the records on a handler thread and would take it.)"""
    value = b"\0" * (80 << 20)
    rec = kw.encode_record(kw.Record(b"k", value, [], 0, 0))
    bomb = batch(1, gzip.compress(rec, compresslevel=9), 1)
    assert len(bomb) < 200_000
    t = time.monotonic()
    r = produce_retrying(broker, bad_topic, bomb)
    assert r.error_code == INVALID_RECORD
    assert time.monotonic() - t < 5
    hw = kw.list_offsets_v1(broker.host, broker.port, {bad_topic: [(0, -1)]})
    assert hw[(bad_topic, 0)][2] == 1
    # A big batch well under the limit still goes through (on a topic of its own).
    topic = unique_topic("bigok")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 1, 1)])
    ok = batch(1, gzip.compress(kw.encode_record(kw.Record(b"k", b"\0" * (8 << 20), [], 0, 0))), 1)
    assert produce_retrying(broker, topic, ok).error_code == 0
