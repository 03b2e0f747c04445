"""Log compaction (cleanup.policy=compact): once the segments holding several values per key
are closed, the cleaner keeps only the latest record of every key, at its original offset
(a compacted log has offset gaps); tombstones survive delete.retention.ms after the cleaning
that first kept them, then go. Consumers read the compacted log from the beginning with the
latest values and their original timestamps; positions and lag stay sane. Runs against spated
and Apache Kafka (segment.ms rolls, a 300 ms retention check / cleaner backoff); bad settings
are refused with INVALID_CONFIG.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, NewTopic, OffsetSpec, ResourceType
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

from clients import confluent_admin, create, results, tool_ok, wait_until
from spate_harness import HOST, unique_topic

KEYS = [f"key-{i:02d}".encode() for i in range(20)]
DELETED = KEYS[:5]  # tombstoned in the last round
SEGMENT_MS = 400
DELETE_RETENTION_MS = 4000
ROUNDS = 4


def topic_config(**extra) -> dict:
    cfg = {
        "cleanup.policy": "compact",
        "segment.ms": str(SEGMENT_MS),
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(DELETE_RETENTION_MS),
    }
    cfg.update(extra)
    return cfg


class Writer:
    """An idempotent, lz4-compressing producer that remembers where every record landed."""

    def __init__(self, bootstrap: str, topic: str, compression: str = "lz4"):
        self.topic = topic
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                           "compression.type": compression, "linger.ms": 20, "log_level": 3})
        self.landed: dict[tuple[bytes, bytes | None], tuple[int, int]] = {}
        self.latest: dict[bytes, tuple[int, bytes | None, int]] = {}
        self.errors: list = []
        self.produced = 0

    def put(self, key: bytes, value: bytes | None) -> None:
        ts = int(time.time() * 1000)
        self.produced += 1

        def done(err, msg):
            if err:
                self.errors.append(err)
            else:
                self.landed[(key, value)] = (msg.offset(), ts)

        self.p.produce(self.topic, key=key, value=value, partition=0, timestamp=ts,
                       on_delivery=done)

    def flush(self) -> None:
        assert self.p.flush(30) == 0, "produce did not complete"
        assert not self.errors, self.errors
        for (key, value), (offset, ts) in self.landed.items():
            if key not in self.latest or self.latest[key][0] < offset:
                self.latest[key] = (offset, value, ts)

    def round(self, r: int, keys=KEYS, tombstones=()) -> None:
        for k in keys:
            self.put(k, None if k in tombstones else b"%s=v%d" % (k, r) + b"." * 200)
        self.flush()

    def roll(self) -> None:
        """Kafka rolls a segment on the first append after segment.ms; spated rolls it in its
        retention pass. Either way what came before ends up in a closed segment."""
        time.sleep(SEGMENT_MS / 1000 + 0.3)
        self.put(b"roll", b"x%d" % self.produced)
        self.flush()


def read_all(bootstrap: str, topic: str) -> list[tuple[int, bytes, bytes | None, int]]:
    """Every record from the beginning to the end: (offset, key, value, timestamp)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("reader"),
                  "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        out = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return out
                raise AssertionError(m.error())
            out.append((m.offset(), m.key(), m.value(), m.timestamp()[1]))
        raise AssertionError(f"no end of partition within 30 s ({len(out)} records)")
    finally:
        c.close()


def compacted(records, w: Writer, tombstones: bool) -> bool:
    """Exactly the latest record of every data key, at its offset (tombstones included or
    not); the roll markers are left out of the comparison."""
    got = {}
    for offset, key, value, _ in records:
        if key == b"roll":
            continue
        if key in got:
            return False  # an older value is still there
        got[key] = (offset, value)
    want = {k: (o, v) for k, (o, v, _) in w.latest.items()
            if k != b"roll" and (tombstones or v is not None)}
    return got == want


def earliest_latest(admin, topic):
    out = []
    for spec in (OffsetSpec.earliest(), OffsetSpec.latest()):
        r = admin.list_offsets({TopicPartition(topic, 0): spec}, request_timeout=15)
        out.append(list(r.values())[0].result().offset)
    return tuple(out)


def test_latest_value_per_key_then_tombstones_go(broker_factory):
    b = broker_factory(retention_check_ms=300)
    admin = confluent_admin(b.bootstrap)
    topic = unique_topic("compact")
    create(admin, [NewTopic(topic, 1, 1, config=topic_config())])
    w = Writer(b.bootstrap, topic)
    for r in range(ROUNDS):
        w.round(r, tombstones=DELETED if r == ROUNDS - 1 else ())
        w.roll()
    produced = w.produced
    assert produced == ROUNDS * len(KEYS) + ROUNDS

    # Compacted: the latest value of every key (a tombstone for the deleted ones), each at
    # the offset it was written at, with its own timestamp.
    records = wait_until(lambda: (lambda rs: rs if compacted(rs, w, tombstones=True) else None)(
        read_all(b.bootstrap, topic)), timeout=90, interval=0.5, what="the topic compacted")
    assert len(records) < produced
    for offset, key, value, ts in records:
        assert w.landed[(key, value)] == (offset, ts), (key, value)
    assert sorted(r[0] for r in records) == [r[0] for r in records], "offsets ascend"
    assert earliest_latest(admin, topic) == (0, produced)
    # By timestamp: the first surviving record at or after it (the gaps are skipped).
    probe = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("ts"),
                      "log_level": 3})
    last_roll = max(o for o, k, _, _ in records if k == b"roll")
    try:
        for _, _, _, ts in records[::5]:
            want = min(o for o, _, _, t in records if t >= ts)
            # A later pass may meanwhile remove an older roll marker (superseded by the last
            # one: `compacted` leaves them out) or a tombstone past its delete horizon: then
            # the first record that stays is the answer.
            stays = [(o, t) for o, k, v, t in records
                     if v is not None and (k != b"roll" or o == last_roll)]
            later = min((o for o, t in stays if t >= ts), default=-1)
            got = probe.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=15)[0]
            assert got.offset in (want, later), (ts, got.offset, want, later)
    finally:
        probe.close()

    # A consumer group reads it from the beginning: its position and committed offset end at
    # the log end, lag 0.
    group = unique_topic("g")
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group, "log_level": 3,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "enable.partition.eof": True})
    try:
        c.subscribe([topic])
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF, m.error()
                break
            seen.append(m.offset())
        assert len(seen) >= len(KEYS), seen
        c.commit(asynchronous=False)
        tp = TopicPartition(topic, 0)
        assert c.position([tp])[0].offset == produced
        assert c.committed([tp], timeout=15)[0].offset == produced
        lo, hi = c.get_watermark_offsets(tp, timeout=15)
        assert (lo, hi) == (0, produced)
    finally:
        c.close()

    # Past delete.retention.ms (counted from the cleaning that first kept them), a later
    # cleaning removes the tombstones. Kafka cleans only when there is new dirty data.
    time.sleep(DELETE_RETENTION_MS / 1000 + 0.5)
    w.round(ROUNDS, keys=KEYS[10:])
    w.roll()
    records = wait_until(lambda: (lambda rs: rs if compacted(rs, w, tombstones=False) else None)(
        read_all(b.bootstrap, topic)), timeout=90, interval=0.5, what="the tombstones removed")
    assert not any(k in DELETED for _, k, _, _ in records)
    for offset, key, value, ts in records:
        assert w.landed[(key, value)] == (offset, ts), (key, value)


def test_other_clients_read_a_compacted_log(broker_factory):
    """kafka-python and the Java console consumer walk the gaps, rebuilt and empty batches."""
    b = broker_factory(retention_check_ms=300)
    admin = confluent_admin(b.bootstrap)
    topic = unique_topic("compact-read")
    # Tombstones stay while the clients read (the Java tool takes seconds to start).
    create(admin, [NewTopic(topic, 1, 1, config=topic_config(**{"delete.retention.ms": "600000"}))])
    w = Writer(b.bootstrap, topic, compression="gzip")  # kafka-python has no lz4 here
    for r in range(3):
        w.round(r, tombstones=DELETED if r == 2 else ())
        w.roll()
    records = wait_until(lambda: (lambda rs: rs if compacted(rs, w, tombstones=True) else None)(
        read_all(b.bootstrap, topic)), timeout=90, interval=0.5, what="the topic compacted")
    # A later pass may still clean what the last roll made cleanable (the previous "roll"
    # record): wait until the log stays the same over several passes (300 ms apart), or the
    # clients below would read a log compacted further than `want` (seen in CI).
    last = [records]

    def settled():
        now = read_all(b.bootstrap, topic)
        same = now == last[0]
        last[0] = now
        return now if same else None

    time.sleep(1.5)
    records = wait_until(settled, timeout=60, interval=1.5, what="compaction settled")
    want = [(o, k, v) for o, k, v, _ in records]

    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    kc = KafkaConsumer(bootstrap_servers=b.bootstrap, enable_auto_commit=False,
                       auto_offset_reset="earliest", consumer_timeout_ms=5000)
    try:
        kc.assign([KTP(topic, 0)])
        kc.seek_to_beginning()
        got = [(m.offset, m.key, m.value) for m in kc]
        assert got == want
        assert kc.position(KTP(topic, 0)) == w.latest[b"roll"][0] + 1
    finally:
        kc.close()

    r = tool_ok("kafka-console-consumer", "--bootstrap-server", b.bootstrap, "--topic", topic,
                "--from-beginning", "--timeout-ms", "8000", "--property", "print.key=true",
                "--property", "print.offset=true", "--property", "key.separator=|")
    lines = [ln for ln in r.stdout.splitlines() if "|" in ln]
    offsets = [int(ln.split("|")[0].removeprefix("Offset:")) for ln in lines]
    assert offsets == [o for o, _, _ in want], r.stdout[-2000:]


@pytest.mark.spate_only
def test_compaction_survives_restart_and_is_counted(broker_factory):
    b = broker_factory(retention_check_ms=300)
    admin = confluent_admin(b.bootstrap)
    topic = unique_topic("compact-restart")
    create(admin, [NewTopic(topic, 1, 1, config=topic_config())])
    w = Writer(b.bootstrap, topic)
    for r in range(3):
        w.round(r)
        w.roll()
    records = wait_until(lambda: (lambda rs: rs if compacted(rs, w, tombstones=True) else None)(
        read_all(b.bootstrap, topic)), timeout=60, interval=0.5, what="the topic compacted")
    with urllib.request.urlopen(f"http://{HOST}:{b.admin_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    runs = sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith("spate_compaction_runs_total{") and 'outcome="done"' in ln)
    removed = sum(float(ln.split()[-1]) for ln in text.splitlines()
                  if ln.startswith("spate_compaction_removed_records_total{"))
    assert runs >= 1 and removed >= 2 * len(KEYS), (runs, removed)
    assert "spate_compaction_seconds_bucket" in text
    b.restart()
    after = read_all(b.bootstrap, topic)
    assert compacted(after, w, tombstones=True)
    data = [r for r in records if r[1] != b"roll"]
    assert [r for r in after if r[1] != b"roll"] == data
    log = b.log_path.read_text(errors="replace")
    assert "compacted" in log and "compaction failed" not in log


def test_bad_compaction_configs_are_refused(broker_factory):
    b = broker_factory()
    admin = confluent_admin(b.bootstrap)
    for cfg in ({"min.cleanable.dirty.ratio": "2"}, {"min.cleanable.dirty.ratio": "-0.1"},
                {"delete.retention.ms": "-5"}, {"min.compaction.lag.ms": "-1"},
                {"max.compaction.lag.ms": "0"}, {"cleanup.policy": "compress"},
                {"min.compaction.lag.ms": "6000", "max.compaction.lag.ms": "5000"}):
        name = unique_topic("badcmp")
        err = results(admin.create_topics([NewTopic(name, 1, 1, config=cfg)]))[name]
        assert isinstance(err, KafkaError) and err.code() == KafkaError.INVALID_CONFIG, (cfg, err)
    # On an existing topic too.
    topic = unique_topic("cmp-alter")
    create(admin, [NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})])
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("min.cleanable.dirty.ratio", "2",
                    incremental_operation=AlterConfigOpType.SET)])
    err = results(admin.incremental_alter_configs([res]))[res]
    assert isinstance(err, KafkaError) and err.code() == KafkaError.INVALID_CONFIG, err
    # min.compaction.lag.ms above max.compaction.lag.ms, made by an alter (Kafka checks the
    # combination with its LogConfig.validateValues).
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("max.compaction.lag.ms", "5000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("min.compaction.lag.ms", "6000", incremental_operation=AlterConfigOpType.SET)])
    err = results(admin.incremental_alter_configs([res]))[res]
    assert isinstance(err, KafkaError) and err.code() == KafkaError.INVALID_CONFIG, err
    # A record without a key is refused on a compacted topic.
    p = Producer({"bootstrap.servers": b.bootstrap, "log_level": 3, "retries": 0})
    errors = []
    p.produce(topic, value=b"no key", partition=0,
              on_delivery=lambda e, m: errors.append(e))
    p.flush(30)
    assert errors and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD, errors
