"""The data path: Produce, Fetch (incl. long poll) and ListOffsets, with real clients
(confluent-kafka / librdkafka, kafka-python, kcat) and raw Produce v3 / Fetch v4 / ListOffsets v1.

Scope (what spated's first cut supports): non-idempotent producers only (no InitProducerId, so
every client is configured with enable.idempotence=false), acks 0/1/all, every compression
codec passed through, Fetch v4+ of whole batches with long poll, ListOffsets earliest/latest,
no consumer groups (consumers use manual assignment and never commit).

What Apache Kafka 4.1.1 does, and what the assertions below require (observed with
SPATE_TEST_TARGET=kafka):
  - Batches are stored as produced: a raw Fetch returns each batch with the producer's codec
    in its attributes and, for a hand-built batch, byte-identical from `attributes` on.
    (librdkafka itself sends a batch uncompressed when compressing did not shrink it, and uses
    LZ4 only if the broker advertises FindCoordinator: its LZ4 feature flag depends on it. The
    Java producer test covers lz4 independently of that.)
  - Fetch with min_bytes=1 on an empty partition waits max_wait_ms, and is answered as soon as
    a record is appended (long poll woken by the produce, not by the timeout).
  - Fetch at offset == high watermark: no error, no records. Fetch past it:
    partition error OFFSET_OUT_OF_RANGE (1), no records, high watermark -1.
    librdkafka with auto.offset.reset=error reports it as a consumer error _AUTO_OFFSET_RESET
    (-140) whose text names "Offset out of range".
  - Produce v3 to an unknown topic or partition: UNKNOWN_TOPIC_OR_PARTITION (3), topic not
    auto-created. librdkafka (topic.metadata.propagation.max.ms short): delivery error
    UNKNOWN_TOPIC_OR_PART (3, from Metadata) for the missing topic, _UNKNOWN_PARTITION (-190)
    for partition 99 (or produce() raising it when the metadata is already known).
  - A brand-new partition can answer a Fetch with NOT_LEADER_OR_FOLLOWER (6) for a moment
    after CreateTopics returned and Metadata shows it; the raw tests wait that out.
  - Produce v3 with a bad CRC: CORRUPT_MESSAGE (2); with magic 1: INVALID_RECORD (87) (Kafka 4
    only accepts magic 2 in Produce v3+); a batch bigger than the topic's max.message.bytes:
    MESSAGE_TOO_LARGE (10). In each case base_offset -1 and nothing is appended (high
    watermark unchanged, the next good batch gets the next offset). A successful Produce v3 to
    a CreateTime topic answers log_append_time -1.

Client quirks: kafka-python cannot send null header values (the confluent and raw tests do);
librdkafka consumers need a group.id even with manual assignment (it may log coordinator
errors against spated, which has no FindCoordinator yet; they are ignored).
Not covered here (beyond the first cut): idempotent / transactional producers, consumer
groups and committed offsets, ListOffsets by timestamp / max timestamp, Fetch v13+ (topic ids),
fetch sessions, log retention / truncation (log start offset stays 0).
"""

from __future__ import annotations

import gc
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest
from confluent_kafka import (OFFSET_END, TIMESTAMP_CREATE_TIME, Consumer, KafkaError,
                             KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create, wait_until
from spate_harness import HOST, TARGET, java_command, unique_topic

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


# ---------------------------------------------------------------- helpers


@dataclass
class Msg:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = 0

    def expect(self) -> tuple:
        return (self.partition, self.key, self.value, list(self.headers), self.timestamp)


def make_messages(n: int, partitions: int, seed: int = 1) -> list[Msg]:
    """Deterministic mix: binary / compressible / empty / null values, null / empty / binary keys,
    no / duplicate / null-valued headers, non-monotonic explicit timestamps (recent, so neither
    retention nor Kafka's message.timestamp.after.max.ms get in the way)."""
    rng = random.Random(seed)
    base_ts = int(time.time() * 1000) - 3_600_000
    out = []
    for i in range(n):
        if i % 7 == 3:
            key = None
        elif i % 11 == 5:
            key = b""
        else:
            key = f"key-{i}".encode() + rng.randbytes(rng.randint(0, 8))
        if i == 0 or i % 97 == 13:
            value = b""
        elif i == 1 or i % 89 == 7:
            value = None
        elif i % 3 == 0:
            value = rng.randbytes(rng.randint(1, 300))
        else:
            value = (b"spate-%d-" % i) * rng.randint(1, 300)
        if key is None and value is None:
            key = b"k"  # kafka-python refuses records without key and value
        h = i % 5
        if h == 0:
            headers = []
        elif h == 1:
            headers = [("h", b"1")]
        elif h == 2:
            headers = [("dup", b"a"), ("dup", b"b"), ("dup", None)]
        elif h == 3:
            headers = [("n", None)]
        else:
            headers = [("bin", rng.randbytes(20)), ("empty", b""), ("unicod\u00e9", b"x")]
        ts = base_ts + i * 10 + rng.randint(-500, 500)
        out.append(Msg(i % partitions, key, value, headers, ts))
    return out


def new_topic(admin, partitions: int = 1, config: dict | None = None, prefix: str = "pf") -> str:
    name = unique_topic(prefix)
    create(admin, [NewTopic(name, partitions, 1, config=config or {})])
    return name


def confluent_producer(bootstrap: str, extra: dict | None = None) -> Producer:
    conf = {
        "bootstrap.servers": bootstrap,
        "client.id": "spate-system-test",
        "enable.idempotence": False,  # no InitProducerId in spated yet
        "acks": "all",
        "linger.ms": 20,
        "message.timeout.ms": 30000,
        "socket.timeout.ms": 10000,
        "log_level": 3,
    }
    conf.update(extra or {})
    return Producer(conf)


def confluent_consumer(bootstrap: str, extra: dict | None = None) -> Consumer:
    """Manual assignment only: a group.id is required by librdkafka, but nothing is committed."""
    conf = {
        "bootstrap.servers": bootstrap,
        "client.id": "spate-system-test",
        "group.id": unique_topic("g"),
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "socket.timeout.ms": 10000,
        "log_level": 3,
    }
    conf.update(extra or {})
    return Consumer(conf)


def produce_all(p: Producer, topic: str, msgs: list[Msg], timeout: float = 30.0) -> list:
    """Produce with explicit partitions; returns [(err, partition, offset)] in produce order."""
    reports: list = [None] * len(msgs)

    def cb(i):
        def on_delivery(err, m):
            reports[i] = (err, m.partition(), m.offset())
        return on_delivery

    deadline = time.monotonic() + timeout
    for i, m in enumerate(msgs):
        while True:
            try:
                p.produce(topic, key=m.key, value=m.value, headers=m.headers or None,
                          partition=m.partition, timestamp=m.timestamp, on_delivery=cb(i))
                break
            except BufferError:
                assert time.monotonic() < deadline, "producer queue stuck"
                p.poll(0.05)
        p.poll(0)
    left = p.flush(max(1.0, deadline - time.monotonic()))
    assert left == 0, f"{left} messages not delivered within {timeout}s"
    assert all(r is not None for r in reports)
    return reports


def assert_delivered(reports: list, msgs: list[Msg]) -> dict[tuple[int, int], Msg]:
    """No delivery errors; per partition the offsets are 0..n-1 in produce order.
    Returns {(partition, offset): msg}."""
    errors = [(i, r[0]) for i, r in enumerate(reports) if r[0] is not None]
    assert not errors, f"{len(errors)} delivery errors, first: {errors[:3]}"
    per_part: dict[int, list[int]] = {}
    expected = {}
    for m, (_, part, off) in zip(msgs, reports):
        assert part == m.partition
        per_part.setdefault(part, []).append(off)
        expected[(part, off)] = m
    for part, offs in per_part.items():
        assert offs == list(range(len(offs))), f"partition {part} offsets {offs[:10]}..."
    return expected


def consume_n(c: Consumer, topic: str, n: int, timeout: float = 30.0) -> list:
    """Poll until n messages arrived (fail on a partition error of `topic`); then poll a little
    more to catch duplicates / extras."""
    got, other_errors = [], []
    deadline = time.monotonic() + timeout
    extra_until = None
    while time.monotonic() < deadline:
        for m in c.consume(num_messages=1000, timeout=0.2):
            err = m.error()
            if err is None:
                got.append(m)
            elif m.topic() == topic:
                raise AssertionError(f"partition error on {topic}[{m.partition()}]: {err}")
            else:
                other_errors.append(err)  # e.g. no group coordinator: irrelevant here
        if len(got) >= n and extra_until is None:
            extra_until = time.monotonic() + 0.5
        if extra_until is not None and time.monotonic() >= extra_until:
            break
    assert len(got) == n, (f"consumed {len(got)} of {n} within {timeout}s; "
                           f"other errors: {[str(e) for e in other_errors[:5]]}")
    return got


def assert_consumed(got: list, expected: dict[tuple[int, int], Msg]) -> None:
    diffs = []
    seen = set()
    for m in got:
        k = (m.partition(), m.offset())
        assert k not in seen, f"duplicate {k}"
        seen.add(k)
        want = expected.get(k)
        ts_type, ts = m.timestamp()
        have = (m.partition(), m.key(), m.value(), list(m.headers() or []), ts)
        if want is None or have != want.expect() or ts_type != TIMESTAMP_CREATE_TIME:
            diffs.append((k, have, ts_type, want.expect() if want else None))
    assert not diffs, f"{len(diffs)} records differ, first: {diffs[:2]}"
    assert seen == set(expected)


def assign_from(c: Consumer, topic: str, partitions: int, offset: int = 0) -> None:
    c.assign([TopicPartition(topic, p, offset) for p in range(partitions)])


def watermarks(c: Consumer, topic: str, partition: int) -> tuple[int, int]:
    return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)


def raw_latest(broker, topic: str, partition: int = 0) -> int:
    res = kw.list_offsets_v1(HOST, broker.port, {topic: [(partition, kw.LATEST_TIMESTAMP)]})
    err, _ts, off = res[(topic, partition)]
    assert err == 0, f"ListOffsets latest {topic}[{partition}] error {err}"
    return off


def raw_produce_ok(broker, topic: str, batch: bytes, partition: int = 0,
                   timeout: float = 15.0) -> kw.ProducePartitionResult:
    """Raw Produce v3 acks=all that must succeed (retried while a new topic's leader settles)."""
    deadline = time.monotonic() + timeout
    while True:
        r = kw.produce_v3(HOST, broker.port, {topic: {partition: batch}})[(topic, partition)]
        if r.error_code == 0 or time.monotonic() > deadline or r.error_code not in (3, 5, 6):
            break
        time.sleep(0.1)
    assert r.error_code == 0, f"produce error {r.error_code}"
    return r


@pytest.fixture(scope="module")
def admin(broker):
    return confluent_admin(broker.bootstrap)


@pytest.fixture(autouse=True)
def _collect_clients():
    yield
    gc.collect()  # close this test's clients while the broker is still up


# ---------------------------------------------------------------- round trips


# librdkafka enables LZ4 only when FindCoordinator is advertised; without it, it silently
# sent lz4 batches uncompressed (this was a strict xfail before the group coordinator).
@pytest.mark.parametrize("codec", CODECS)
def test_confluent_round_trip(broker, admin, codec):
    n, parts = 1000, 3
    topic = new_topic(admin, parts)
    msgs = make_messages(n, parts, seed=CODECS.index(codec))
    p = confluent_producer(broker.bootstrap, {"compression.codec": codec, "linger.ms": 100})
    expected = assert_delivered(produce_all(p, topic, msgs), msgs)

    c = confluent_consumer(broker.bootstrap)
    assign_from(c, topic, parts)
    assert_consumed(consume_n(c, topic, n), expected)
    counts = [sum(1 for m in msgs if m.partition == q) for q in range(parts)]
    for q in range(parts):
        assert watermarks(c, topic, q) == (0, counts[q])
    c.close()

    # The broker stored the producer's batches as they were: same codec, valid CRCs, offsets
    # contiguous from 0 to the high watermark.
    fetched = kw.fetch_v4(HOST, broker.port, {topic: [(q, 0) for q in range(parts)]})
    codecs_seen = []
    for q in range(parts):
        fp = fetched[(topic, q)]
        assert fp.error_code == 0 and fp.high_watermark == counts[q]
        batches = fp.batches()
        assert batches, f"partition {q}: no batches"
        nxt = 0
        for b in batches:
            assert b.magic == 2 and b.crc_ok
            # librdkafka sends a batch uncompressed when compressing did not make it smaller
            # (small batches), so "none" is fine too; but most batches are big + compressible.
            assert b.codec in (kw.CODEC_IDS[codec], kw.CODEC_NONE), f"batch codec {b.codec}"
            codecs_seen.append(b.codec)
            assert b.base_offset == nxt and b.count == b.last_offset_delta + 1
            nxt = b.base_offset + b.count
            if b.records is not None:  # none / gzip: check the content at the batch level too
                for r in b.records:
                    m = expected[(q, b.base_offset + r.offset_delta)]
                    assert (r.key, r.value, r.headers) == (m.key, m.value, m.headers)
                    assert b.base_timestamp + r.timestamp_delta == m.timestamp
        assert nxt == counts[q]
    hint = ("; librdkafka only uses LZ4 when the broker advertises FindCoordinator (its LZ4 "
            "feature depends on FindCoordinator v0, rdkafka_feature.c), else it silently sends "
            "uncompressed batches") if codec == "lz4" else ""
    assert kw.CODEC_IDS[codec] in codecs_seen, f"no {codec} batch stored: {codecs_seen}{hint}"


@pytest.mark.parametrize("codec", [None, "gzip"])
def test_kafka_python_round_trip(broker, admin, codec):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTP

    n, parts = 600, 3
    topic = new_topic(admin, parts)
    msgs = make_messages(n, parts, seed=7)
    for m in msgs:  # kafka-python only sends (str, bytes) headers; null values: see confluent
        m.headers = [(k, b"" if v is None else v) for k, v in m.headers]
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=False,
                      compression_type=codec, linger_ms=20, request_timeout_ms=15000,
                      max_block_ms=15000)
    try:
        futs = [p.send(topic, key=m.key, value=m.value, headers=m.headers,
                       partition=m.partition, timestamp_ms=m.timestamp) for m in msgs]
        p.flush(timeout=30)
        metas = [f.get(timeout=30) for f in futs]
    finally:
        p.close(timeout=10)
    expected = assert_delivered([(None, md.partition, md.offset) for md in metas], msgs)

    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                      enable_auto_commit=False, auto_offset_reset="none",
                      request_timeout_ms=15000)
    try:
        tps = [KTP(topic, q) for q in range(parts)]
        c.assign(tps)
        c.seek_to_beginning()
        got = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500, max_records=1000).values():
                got.extend(recs)
        assert len(got) == n
        diffs = []
        for r in got:
            want = expected[(r.partition, r.offset)].expect()
            have = (r.partition, r.key, r.value, list(r.headers), r.timestamp)
            if have != want or r.timestamp_type != 0:
                diffs.append((have, r.timestamp_type, want))
        assert not diffs, f"{len(diffs)} differ, first: {diffs[:2]}"
        assert {(r.partition, r.offset) for r in got} == set(expected)
        counts = {KTP(topic, q): sum(1 for m in msgs if m.partition == q) for q in range(parts)}
        assert c.end_offsets(tps) == counts
        assert c.beginning_offsets(tps) == {tp: 0 for tp in tps}
    finally:
        c.close()


@pytest.mark.parametrize("acks", [0, 1])
def test_acks_0_and_1_deliver(broker, admin, acks):
    n = 300
    topic = new_topic(admin, 1)
    msgs = make_messages(n, 1, seed=acks + 100)
    p = confluent_producer(broker.bootstrap, {"acks": acks})
    reports = produce_all(p, topic, msgs)
    assert all(r[0] is None for r in reports), [r for r in reports if r[0] is not None][:3]
    if acks == 1:
        assert [r[2] for r in reports] == list(range(n))
    c = confluent_consumer(broker.bootstrap)
    assign_from(c, topic, 1)
    assert_consumed(consume_n(c, topic, n), {(0, i): m for i, m in enumerate(msgs)})
    assert watermarks(c, topic, 0) == (0, n)
    c.close()


# ---------------------------------------------------------------- long poll


def test_raw_fetch_long_poll(broker, admin):
    """Fetch v4 with max_wait 5 s on an empty partition is answered right after a produce
    ~1 s later; an empty fetch waits max_wait; min_bytes above what is there waits too."""
    topic = new_topic(admin, 1)
    batch = kw.encode_record_batch([kw.Record(b"k", b"woken")], int(time.time() * 1000))

    # A brand-new partition may answer NOT_LEADER_OR_FOLLOWER (6) for a moment (Kafka).
    wait_until(lambda: kw.fetch_v4(HOST, broker.port, {topic: [(0, 0)]})[(topic, 0)].error_code
               == 0, what="partition fetchable")

    # Nothing there, min_bytes 1: waits max_wait (1 s), then answers with no records.
    t0 = time.monotonic()
    fp = kw.fetch_v4(HOST, broker.port, {topic: [(0, 0)]}, max_wait_ms=1000)[(topic, 0)]
    waited = time.monotonic() - t0
    assert fp.error_code == 0 and fp.high_watermark == 0 and not fp.records
    assert 0.8 <= waited < 4.0, f"empty fetch with max_wait 1000 took {waited:.2f}s"

    produced_at = []

    def produce_later():
        time.sleep(1.0)
        produced_at.append(time.monotonic())
        produced_at.append(raw_produce_ok(broker, topic, batch))

    th = threading.Thread(target=produce_later, daemon=True)
    t0 = time.monotonic()
    th.start()
    fp = kw.fetch_v4(HOST, broker.port, {topic: [(0, 0)]}, max_wait_ms=5000)[(topic, 0)]
    t1 = time.monotonic()
    th.join(20)
    assert len(produced_at) == 2 and produced_at[1].base_offset == 0
    assert fp.error_code == 0 and fp.high_watermark == 1
    [b] = fp.batches()
    assert b.base_offset == 0 and b.raw[21:] == batch[21:]
    print(f"[long poll] raw fetch answered {t1 - produced_at[0]:.3f}s after produce, "
          f"{t1 - t0:.3f}s after it was sent")
    assert t1 - t0 >= 0.8, f"fetch answered after {t1 - t0:.2f}s, before the produce"
    assert t1 - produced_at[0] < 3.0, f"fetch answered {t1 - produced_at[0]:.2f}s after produce"

    # 1 record there but min_bytes far above it: waits max_wait, then returns what there is.
    t0 = time.monotonic()
    fp = kw.fetch_v4(HOST, broker.port, {topic: [(0, 0)]}, max_wait_ms=1000,
                     min_bytes=1 << 20)[(topic, 0)]
    waited = time.monotonic() - t0
    assert fp.error_code == 0 and [x.raw[21:] for x in fp.batches()] == [batch[21:]]
    assert 0.8 <= waited < 4.0, f"fetch with unmet min_bytes took {waited:.2f}s"


def test_consumer_long_poll_woken_by_produce(broker, admin):
    topic = new_topic(admin, 1)
    p = confluent_producer(broker.bootstrap, {"linger.ms": 0})
    p.list_topics(topic, timeout=10)  # metadata + connection ready: produce latency is small
    c = confluent_consumer(broker.bootstrap, {"fetch.wait.max.ms": 5000,
                                              "socket.timeout.ms": 20000})
    c.assign([TopicPartition(topic, 0, OFFSET_END)])
    early = c.consume(num_messages=10, timeout=1.2)  # the first long-poll fetch is now waiting
    assert [m for m in early if m.error() is None] == []
    t_produce = time.monotonic()
    p.produce(topic, key=b"k", value=b"wake up", partition=0)
    assert p.flush(10) == 0
    got = None
    while got is None and time.monotonic() - t_produce < 10:
        for m in c.consume(num_messages=10, timeout=0.1):
            if m.error() is None:
                got = m
            elif m.topic() == topic:
                raise AssertionError(f"partition error: {m.error()}")
    elapsed = time.monotonic() - t_produce
    assert got is not None, "record not consumed within 10 s"
    assert (got.offset(), got.key(), got.value()) == (0, b"k", b"wake up")
    print(f"[long poll] consumer got the record {elapsed:.3f}s after produce")
    assert elapsed < 3.0, f"record arrived {elapsed:.2f}s after produce (fetch not woken?)"
    c.close()


# ---------------------------------------------------------------- offsets


def test_watermarks_and_list_offsets(broker, admin):
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    topic = new_topic(admin, 2)  # partition 1 stays empty
    c = confluent_consumer(broker.bootstrap)
    assert watermarks(c, topic, 0) == (0, 0)
    msgs = make_messages(10, 1, seed=5)
    assert_delivered(produce_all(confluent_producer(broker.bootstrap), topic, msgs), msgs)
    assert watermarks(c, topic, 0) == (0, 10)
    assert watermarks(c, topic, 1) == (0, 0)
    c.close()

    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                       enable_auto_commit=False, request_timeout_ms=15000)
    try:
        tps = [KTP(topic, 0), KTP(topic, 1)]
        assert kc.end_offsets(tps) == {tps[0]: 10, tps[1]: 0}
        assert kc.beginning_offsets(tps) == {tps[0]: 0, tps[1]: 0}
    finally:
        kc.close()

    res = kw.list_offsets_v1(HOST, broker.port, {topic: [(0, kw.LATEST_TIMESTAMP),
                                                          (1, kw.EARLIEST_TIMESTAMP)]})
    assert res[(topic, 0)][0] == 0 and res[(topic, 0)][2] == 10
    assert res[(topic, 1)][0] == 0 and res[(topic, 1)][2] == 0
    res = kw.list_offsets_v1(HOST, broker.port, {topic: [(0, kw.EARLIEST_TIMESTAMP)]})
    assert res[(topic, 0)][0] == 0 and res[(topic, 0)][2] == 0


def test_fetch_past_log_end(broker, admin):
    topic = new_topic(admin, 1)
    msgs = make_messages(10, 1, seed=6)
    assert_delivered(produce_all(confluent_producer(broker.bootstrap), topic, msgs), msgs)

    # Raw: offset == high watermark is fine (nothing to return), past it is out of range.
    at_end = kw.fetch_v4(HOST, broker.port, {topic: [(0, 10)]})[(topic, 0)]
    assert (at_end.error_code, at_end.high_watermark) == (0, 10) and not at_end.records
    for off in (11, 1000):
        fp = kw.fetch_v4(HOST, broker.port, {topic: [(0, off)]})[(topic, 0)]
        assert fp.error_code == kw.ERR_OFFSET_OUT_OF_RANGE, f"offset {off}: {fp}"
        assert not fp.records, f"offset {off}: records returned"
        assert fp.high_watermark == -1, f"offset {off}: Kafka answers high watermark -1 with " \
            f"OFFSET_OUT_OF_RANGE, got {fp.high_watermark}"

    # librdkafka with auto.offset.reset=error: an error event, no records.
    c = confluent_consumer(broker.bootstrap)
    c.assign([TopicPartition(topic, 0, 1000)])
    err = None
    deadline = time.monotonic() + 15
    while err is None and time.monotonic() < deadline:
        for m in c.consume(num_messages=10, timeout=0.2):
            assert m.error() is not None, f"unexpected record at offset {m.offset()}"
            if m.topic() == topic:
                err = m.error()
    c.close()
    assert err is not None, "no error reported for an out-of-range fetch"
    assert err.code() == KafkaError._AUTO_OFFSET_RESET, err
    assert "Offset out of range" in err.str(), err


# ---------------------------------------------------------------- unknown topic / partition


def test_produce_unknown_topic_or_partition(broker, admin):
    missing = unique_topic("missing")
    topic = new_topic(admin, 1)
    batch = kw.encode_record_batch([kw.Record(b"k", b"v")], int(time.time() * 1000))

    res = kw.produce_v3(HOST, broker.port, {missing: {0: batch}, topic: {99: batch}})
    assert res[(missing, 0)].error_code == kw.ERR_UNKNOWN_TOPIC_OR_PARTITION
    assert res[(topic, 99)].error_code == kw.ERR_UNKNOWN_TOPIC_OR_PARTITION
    assert raw_latest(broker, topic) == 0

    # librdkafka waits topic.metadata.propagation.max.ms for a missing topic to appear before
    # failing its messages with _UNKNOWN_TOPIC (else they just time out: _MSG_TIMED_OUT).
    p = confluent_producer(broker.bootstrap, {"message.timeout.ms": 5000,
                                              "topic.metadata.propagation.max.ms": 500})
    reports = []
    p.produce(missing, value=b"x", on_delivery=lambda err, m: reports.append(err))
    try:
        p.produce(topic, value=b"y", partition=99, on_delivery=lambda err, m: reports.append(err))
    except KafkaException as e:  # metadata already known: refused right away
        reports.append(e.args[0])
    assert p.flush(15) == 0
    codes = sorted(e.code() for e in reports if e is not None)
    assert len(codes) == 2, reports
    assert codes == sorted([KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION]), \
        [str(e) for e in reports]

    # Not auto-created, nothing appended.
    assert missing not in admin.list_topics(timeout=10).topics
    assert raw_latest(broker, topic) == 0


# ---------------------------------------------------------------- durability


def test_restart_keeps_records(fresh_broker):
    broker = fresh_broker
    admin = confluent_admin(broker.bootstrap)
    n, parts = 500, 2
    topic = new_topic(admin, parts)
    msgs = make_messages(n, parts, seed=8)
    expected = assert_delivered(
        produce_all(confluent_producer(broker.bootstrap, {"compression.codec": "lz4"}), topic,
                    msgs), msgs)
    counts = [sum(1 for m in msgs if m.partition == q) for q in range(parts)]
    del admin
    gc.collect()

    broker.restart()

    c = confluent_consumer(broker.bootstrap)
    assign_from(c, topic, parts)
    assert_consumed(consume_n(c, topic, n), expected)
    for q in range(parts):
        assert watermarks(c, topic, q) == (0, counts[q])
    c.close()
    # Appends continue after the recovered log end.
    more = [Msg(q, b"after", b"restart", [], int(time.time() * 1000)) for q in range(parts)]
    reports = produce_all(confluent_producer(broker.bootstrap), topic, more)
    assert [(r[0], r[2]) for r in reports] == [(None, counts[q]) for q in range(parts)]


# ---------------------------------------------------------------- bad input (raw Produce v3)


def test_produce_bad_batches_leave_log_unchanged(broker, admin):
    topic = new_topic(admin, 1, config={"max.message.bytes": "1024"})
    now = int(time.time() * 1000)
    good = kw.encode_record_batch(
        [kw.Record(b"k0", b"v0", [("h", b"1"), ("h", None)]),
         kw.Record(None, b"", [], 3), kw.Record(b"k2", None, [], 7)], now)
    r = raw_produce_ok(broker, topic, good)
    assert r.base_offset == 0 and r.log_append_time_ms == -1  # CreateTime topic
    assert raw_latest(broker, topic) == 3

    small = [kw.Record(b"bad", b"x" * 20)]
    ok_crc = kw.encode_record_batch(small, now)
    corrupt = kw.encode_record_batch(small, now, crc=kw.crc32c(ok_crc[21:]) ^ 0x1)
    magic1 = kw.encode_record_batch(small, now, magic=1)
    too_big = kw.encode_record_batch([kw.Record(b"big", bytes(4096))], now)
    assert len(too_big) > 4096
    cases = [("bad crc", corrupt, kw.ERR_CORRUPT_MESSAGE),
             ("magic 1", magic1, kw.ERR_INVALID_RECORD),
             ("4 KiB batch, max.message.bytes=1024", too_big, kw.ERR_MESSAGE_TOO_LARGE)]
    for what, batch, want in cases:
        res = kw.produce_v3(HOST, broker.port, {topic: {0: batch}})[(topic, 0)]
        assert res.error_code == want, f"{what}: error {res.error_code}, want {want}"
        assert res.base_offset == -1, f"{what}: base offset {res.base_offset}"
        assert raw_latest(broker, topic) == 3, f"{what}: log changed"

    one = kw.encode_record_batch([kw.Record(b"k3", b"v3")], now + 10)
    assert raw_produce_ok(broker, topic, one).base_offset == 3
    assert raw_latest(broker, topic) == 4

    # What was stored is exactly what was sent (from `attributes` on; the broker sets the base
    # offset and the partition leader epoch, which the CRC does not cover).
    fp = kw.fetch_v4(HOST, broker.port, {topic: [(0, 0)]})[(topic, 0)]
    assert fp.error_code == 0 and fp.high_watermark == 4
    batches = fp.batches()
    assert [b.base_offset for b in batches] == [0, 3]
    assert [b.raw[21:] for b in batches] == [good[21:], one[21:]]
    assert all(b.crc_ok for b in batches)
    assert [(r.key, r.value, r.headers) for r in batches[0].records] == [
        (b"k0", b"v0", [("h", b"1"), ("h", None)]), (None, b"", []), (b"k2", None, [])]


# ---------------------------------------------------------------- kcat


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed")
def test_kcat_round_trip(broker, admin):
    topic = new_topic(admin, 1)
    lines = ["k1:v1", "k2:hello world", "k3:a:b:c", "k4:\u00fcnicode", "k5:"]
    common = ["-b", broker.bootstrap, "-t", topic, "-X", "socket.timeout.ms=10000"]
    r = subprocess.run(["kcat", "-P", *common, "-X", "enable.idempotence=false", "-K:", "-p", "0"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["kcat", "-C", *common, "-o", "beginning", "-e", "-q",
                        "-f", "%p|%o|%k|%s\\n"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    want = [f"0|{i}|{ln.split(':', 1)[0]}|{ln.split(':', 1)[1]}" for i, ln in enumerate(lines)]
    assert r.stdout.splitlines() == want


# ---------------------------------------------------------------- Java producer (lz4)


def test_java_console_producer_lz4(broker, admin):
    """Apache Kafka's own producer (ConsoleProducer, kafka-clients 4.1.1), idempotence off,
    acks=all, lz4: the batch is stored lz4-compressed and reads back identical. (This is also
    the lz4 path that does not depend on librdkafka's FindCoordinator-gated LZ4 feature.)"""
    topic = new_topic(admin, 1)
    lines = [f"key-{i}:value-{i}-" + "x" * (i % 50) for i in range(50)]
    cmd = java_command("org.apache.kafka.tools.ConsoleProducer",
                       "--bootstrap-server", broker.bootstrap, "--topic", topic,
                       "--compression-codec", "lz4",
                       "--producer-property", "enable.idempotence=false",
                       "--request-required-acks", "all", "--timeout", "1000",
                       "--property", "parse.key=true",
                       "--property", "key.separator=:")
    r = subprocess.run(cmd, input="\n".join(lines) + "\n", capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"ConsoleProducer rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"

    fp = kw.fetch_v4(HOST, broker.port, {topic: [(0, 0)]})[(topic, 0)]
    assert fp.error_code == 0 and fp.high_watermark == len(lines), fp.error_code
    batches = fp.batches()
    assert batches and all(b.crc_ok for b in batches)
    assert {b.codec for b in batches} == {kw.CODEC_LZ4}, [b.codec for b in batches]

    c = confluent_consumer(broker.bootstrap)
    assign_from(c, topic, 1)
    got = consume_n(c, topic, len(lines))
    c.close()
    assert [(m.offset(), m.key(), m.value()) for m in got] == [
        (i, ln.split(":", 1)[0].encode(), ln.split(":", 1)[1].encode())
        for i, ln in enumerate(lines)]
