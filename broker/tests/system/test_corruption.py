"""Damaged segment files are never served (spated only: the test edits its data dir).

Records go to a topic with 1 MiB segments (several closed segments and an active one); the
broker is stopped cleanly, one byte in the middle of a batch is flipped — in a closed segment,
or (separately) in the active one — and the broker restarted. Then:

* it starts, and a consumer reading from the beginning gets every record before the damaged
  batch, exactly, then CORRUPT_MESSAGE (error code 2, as Apache Kafka answers a
  CorruptRecordException on read) — never the damaged bytes; a raw Fetch agrees, every batch
  it returns checks out (CRC-32C), and the other partition of the same fetch is unaffected;
* records after the damaged batch are served, and DeleteRecords past it lets a consumer from
  the beginning read on (what Kafka's own test of a corrupt segment does);
* the broker log names the segment file, position and offset, once however many fetches hit
  it, and `spate_storage_corrupt_batches_total` counts it once.

The active-segment case then kills the broker (no clean close, so recovery scans the active
segment): the damaged batch inside the acknowledged data is kept and reported, not cut.
"""

from __future__ import annotations

import re
import struct
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

import kafka_wire
from clients import confluent_admin, create, describe_topics, wait_until
from spate_harness import HOST, unique_topic

pytestmark = pytest.mark.spate_only

CORRUPT_MESSAGE = 2
SEGMENT = 1 << 20
RECORDS = 4500
VALUE = 1024


def value(i: int) -> bytes:
    return b"%07d" % i + b"x" * (VALUE - 7)


def produce(bootstrap: str, topic: str, partition: int, ids: range) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 10,
                  "batch.size": 64 << 10, "compression.type": "none"})
    for i in ids:
        p.produce(topic, value=value(i), partition=partition)
    assert p.flush(30) == 0


def partition_dir(b, admin, topic: str, partition: int) -> Path:
    tid = describe_topics(admin, [topic])[topic].topic_id
    msb = tid.get_most_significant_bits() & (2**64 - 1)
    lsb = tid.get_least_significant_bits() & (2**64 - 1)
    d = b.data_dir / "partitions" / f"{uuid.UUID(int=(msb << 64) | lsb)}-{partition}"
    assert d.is_dir(), f"{d} missing: {sorted(p.name for p in (b.data_dir / 'partitions').iterdir())}"
    return d


def batches_in(path: Path) -> list[tuple[int, int, int, int]]:
    """(base offset, last offset, file position, length) of every batch in a segment file."""
    data = path.read_bytes()
    out, pos = [], 0
    while pos + 61 <= len(data):
        base, length = struct.unpack_from(">qi", data, pos)
        if length <= 0:
            break  # zero padding of the tail page
        (delta,) = struct.unpack_from(">i", data, pos + 23)
        out.append((base, base + delta, pos, 12 + length))
        pos += 12 + length
    return out


def flip_middle_batch(segment: Path) -> tuple[int, int, int]:
    """Flips one byte inside the records of the middle batch: (base, next base, position)."""
    bs = batches_in(segment)
    assert len(bs) >= 3, f"{segment.name}: {len(bs)} batches"
    base, last, pos, length = bs[len(bs) // 2]
    at = pos + 61 + (length - 61) // 2
    with open(segment, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0xFF]))
    return base, last + 1, pos


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("*.log"))


def consume_until_error(bootstrap: str, topic: str, partition: int, start: int = 0,
                        timeout: float = 30) -> tuple[list[tuple[int, bytes]], object]:
    """Records from `start` until the first error (or the end): ([(offset, value)], error)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False, "enable.partition.eof": True,
                  "fetch.error.backoff.ms": 100})
    got: list[tuple[int, bytes]] = []
    try:
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                return got, m
            got.append((m.offset(), m.value()))
        raise AssertionError(f"no error and no end within {timeout}s ({len(got)} records)")
    finally:
        c.close()


def raw_fetch(b, topic: str, offsets: list[tuple[int, int]], max_bytes: int = 10 << 20):
    return kafka_wire.fetch_v4(b.host, b.port, {topic: offsets}, partition_max_bytes=max_bytes)


def corrupt_metric(b, topic: str, partition: int) -> float:
    url = f"http://{HOST}:{b.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if (line.startswith("spate_storage_corrupt_batches_total{")
                and f'topic="{topic}"' in line and f'partition="{partition}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def log_reports(b, segment: str) -> list[str]:
    """Broker log lines reporting a damaged batch in `segment` since the last start."""
    text = b.log_path.read_text(errors="replace")
    text = text[text.rfind("===== start #"):]
    return [ln for ln in text.splitlines() if "corrupt record batch" in ln and segment in ln]


def check_served_around(b, topic: str, bad: int, after: int, end: int) -> None:
    """Consumer and raw fetches: everything before `bad` exactly, then CORRUPT_MESSAGE; valid
    batches only; `after` (the next batch) on is served; partition 1 unaffected."""
    got, err = consume_until_error(b.bootstrap, topic, 0)
    assert [o for o, _ in got] == list(range(bad)), "records before the damaged batch"
    assert all(v == value(o) for o, v in got)
    assert err.error().code() == CORRUPT_MESSAGE, err.error()
    assert err.offset() == bad
    # The same in a raw fetch, with partition 1 in the same request.
    r = raw_fetch(b, topic, [(0, bad), (1, 0)])
    p0, p1 = r[(topic, 0)], r[(topic, 1)]
    assert (p0.error_code, p0.high_watermark, p0.records) == (CORRUPT_MESSAGE, -1, b"")
    assert p1.error_code == 0 and p1.batches() and p1.batches()[0].base_offset == 0
    # Fetches from anywhere before it: valid batches, cut before it; after it: served.
    for at in (0, bad // 2, bad - 1, after):
        part = raw_fetch(b, topic, [(0, at)], max_bytes=1 << 20)[(topic, 0)]
        assert part.error_code == 0, (at, part.error_code)
        batches = part.batches()
        assert batches, f"nothing at {at}"
        assert all(x.crc_ok for x in batches), f"a damaged batch was served from {at}"
        last = batches[-1].base_offset + batches[-1].last_offset_delta
        assert batches[0].base_offset <= at and (last < bad or batches[0].base_offset >= after)
        for x in batches:
            for i, rec in enumerate(x.records):
                assert rec.value == value(x.base_offset + i)
    got, err = consume_until_error(b.bootstrap, topic, 0, start=after)
    assert [o for o, _ in got] == list(range(after, end))
    assert err.error().code() == -191  # _PARTITION_EOF


def reported_once(b, topic: str, segment: str, pos: int, bad: int) -> None:
    lines = wait_until(lambda: log_reports(b, segment), what="the corruption in the broker log")
    assert len(lines) == 1, lines
    line = lines[0]
    assert re.search(rf"\boffset={bad}\b", line) and re.search(rf"\bposition={pos}\b", line), line
    assert f"topic={topic}" in line and "partition=0" in line, line
    assert corrupt_metric(b, topic, 0) == 1


def setup(b, name: str) -> tuple[object, str, Path]:
    admin = confluent_admin(b.bootstrap)
    topic = unique_topic(name)
    create(admin, [NewTopic(topic, 2, 1, config={"segment.bytes": str(SEGMENT)})])
    produce(b.bootstrap, topic, 0, range(RECORDS))
    produce(b.bootstrap, topic, 1, range(100))
    d = partition_dir(b, admin, topic, 0)
    return admin, topic, d


def test_flipped_byte_in_a_closed_segment(fresh_broker):
    b = fresh_broker
    admin, topic, d = setup(b, "corrupt-closed")
    b.stop()
    segs = segments(d)
    assert len(segs) >= 4, [s.name for s in segs]
    victim = segs[1]
    bad, after, pos = flip_middle_batch(victim)
    b.start()
    assert corrupt_metric(b, topic, 0) == 0, "a clean restart reads no closed segment"
    check_served_around(b, topic, bad, after, RECORDS)
    # Many fetches ran into it: reported once.
    reported_once(b, topic, victim.name, pos, bad)
    # DeleteRecords past it: a consumer from the beginning reads on.
    admin = confluent_admin(b.bootstrap)
    r = admin.delete_records([TopicPartition(topic, 0, after)], request_timeout=15)
    assert list(r.values())[0].result().low_watermark == after
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g"),
                  "auto.offset.reset": "earliest", "enable.partition.eof": True})
    try:
        c.subscribe([topic])
        offsets = []
        deadline = time.time() + 30
        while time.time() < deadline and len(offsets) < RECORDS - after:
            m = c.poll(0.5)
            if m is not None and not m.error() and m.partition() == 0:
                offsets.append(m.offset())
        assert offsets == list(range(after, RECORDS))
    finally:
        c.close()


def test_flipped_byte_in_the_active_segment(fresh_broker):
    b = fresh_broker
    admin, topic, d = setup(b, "corrupt-active")
    b.stop()
    victim = segments(d)[-1]
    bad, after, pos = flip_middle_batch(victim)
    b.start()
    check_served_around(b, topic, bad, after, RECORDS)
    reported_once(b, topic, victim.name, pos, bad)
    # Appends go on after it and are served.
    produce(b.bootstrap, topic, 0, range(RECORDS, RECORDS + 50))
    check_served_around(b, topic, bad, after, RECORDS + 50)

    # A crash, and no segment checkpoint (as after a crash right after a roll): recovery
    # scans the segment. The damaged batch lies inside acknowledged data: kept (and
    # reported at open), nothing after it is cut. (On Spate the restart above elected a new
    # Raft term, and a new term starts a new segment: the victim is closed now, so its index
    # files go too, as if the crash came before they were written.)
    b.kill()
    (d / "segments.checkpoint").unlink()
    if victim != segments(d)[-1]:
        for suffix in (".index", ".timeindex"):
            victim.with_suffix(suffix).unlink(missing_ok=True)
    b.start()
    check_served_around(b, topic, bad, after, RECORDS + 50)
    reported_once(b, topic, victim.name, pos, bad)
    assert any("damaged batch inside the data" in ln
               for ln in b.log_path.read_text(errors="replace").splitlines()[-400:])


def test_a_damaged_offset_commit_does_not_hide_the_later_ones(fresh_broker):
    """The coordinator replays __consumer_offsets past a damaged batch: the commits after it
    are all there after a restart (a replay that stopped at the damage lost them, and the
    coordinator's snapshot compaction would then have deleted them for good)."""
    b = fresh_broker
    admin = confluent_admin(b.bootstrap)
    topic = unique_topic("corrupt-commits")
    create(admin, [NewTopic(topic, 1, 1)])
    group = unique_topic("g")
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        for o in (1, 2, 3):
            c.commit(offsets=[TopicPartition(topic, 0, o)], asynchronous=False)
    finally:
        c.close()
    # The group's __consumer_offsets partition: the only one written to (on Spate every
    # partition has a segment file, holding its Raft leader no-op: pick the one with data).
    [d] = [d for d in (partition_dir(b, admin, "__consumer_offsets", q) for q in range(16))
           if sum(len(batches_in(s)) for s in segments(d)) >= 3]
    b.stop()
    seg = segments(d)[-1]
    batches = batches_in(seg)
    assert len(batches) >= 3, batches
    # The first commit's batch: flip a byte of its records.
    base, _, pos, length = batches[-3]
    at = pos + 61 + (length - 61) // 2
    data = bytearray(seg.read_bytes())
    data[at] ^= 0xFF
    seg.write_bytes(bytes(data))
    b.start()
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, 0)], timeout=30)
        assert got[0].offset == 3, got
    finally:
        c.close()
    assert "batch scan skips the offsets of a damaged batch" in b.log_tail(200_000)
