"""kill -9 while acks=all producers run: every acknowledged record is there after restart,
at its acknowledged offset, exactly once; nothing unacknowledged is half there.

Each round: a producer thread sends records (value = a unique id) with acks=all and records
the offset of every acknowledgement; the broker is SIGKILLed mid-stream and restarted; the
partition is read back in full and checked against the acknowledgements. Bounded: 3 rounds,
a few seconds each.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from clients import confluent_admin, create
from spate_harness import unique_topic

ROUNDS = 3
PARTITIONS = 2


def read_all(bootstrap: str, topic: str, ends: dict[int, int]) -> dict[tuple[int, int], bytes]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False, "enable.partition.eof": True})
    out: dict[tuple[int, int], bytes] = {}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        done: set[int] = {p for p, e in ends.items() if e == 0}
        deadline = time.time() + 30
        while len(done) < PARTITIONS and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # _PARTITION_EOF
                    if m.offset() >= ends[m.partition()]:
                        done.add(m.partition())
                continue
            key = (m.partition(), m.offset())
            assert key not in out, f"offset {key} read twice"
            out[key] = m.value()
        assert len(done) == PARTITIONS, f"could not read to the end: {done}"
    finally:
        c.close()
    return out


def high_watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    """Retries while the restarted broker still reports NOT_LEADER (Kafka does, briefly)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g")})
    deadline = time.time() + 30
    try:
        while True:
            try:
                return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                        for p in range(PARTITIONS)}
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def test_acknowledged_records_survive_kill_9(fresh_broker):
    b = fresh_broker
    topic = unique_topic("kill9")
    create(confluent_admin(b.bootstrap), [NewTopic(topic, PARTITIONS, 1)])
    acked: dict[bytes, tuple[int, int]] = {}
    next_id = 0
    for round_no in range(ROUNDS):
        stop = threading.Event()
        lock = threading.Lock()

        def produce(start_id: int):
            p = Producer({"bootstrap.servers": b.bootstrap, "acks": "all", "linger.ms": 2,
                          "enable.idempotence": False, "retries": 0,
                          "message.timeout.ms": 5000})

            def on_delivery(err, msg):
                if err is None:
                    with lock:
                        acked[msg.value()] = (msg.partition(), msg.offset())

            i = start_id
            while not stop.is_set():
                try:
                    p.produce(topic, value=f"r{i}".encode(), partition=i % PARTITIONS,
                              on_delivery=on_delivery)
                    i += 1
                except BufferError:
                    pass
                p.poll(0.001)
            p.flush(6)

        t = threading.Thread(target=produce, args=(next_id,))
        t.start()
        time.sleep(1.5)
        before = len(acked)
        b.kill()
        stop.set()
        t.join(timeout=30)
        next_id += 10_000_000
        assert before > 0, "nothing was acknowledged before the kill"
        print(f"round {round_no}: {before} acknowledged before the kill")
        b.start()
        ends = high_watermarks(b.bootstrap, topic)
        log = read_all(b.bootstrap, topic, ends)
        by_value = {}
        for (p, off), v in log.items():
            assert v not in by_value, f"{v!r} stored twice"
            by_value[v] = (p, off)
        with lock:
            missing = [v for v in acked if v not in by_value]
            moved = [v for v, where in acked.items() if v in by_value and by_value[v] != where]
        assert not missing, f"round {round_no}: {len(missing)} acknowledged records lost"
        assert not moved, f"round {round_no}: {len(moved)} records not at their acked offset"
        # Offsets are dense: no holes left by torn writes.
        for p in range(PARTITIONS):
            offs = sorted(o for (q, o) in log if q == p)
            assert offs == list(range(len(offs))), f"partition {p} has holes"
