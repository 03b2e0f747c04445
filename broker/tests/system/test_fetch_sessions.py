"""Incremental fetch sessions (KIP-227) over the raw protocol, Fetch v7.

A full fetch (epoch 0) opens a session; incremental fetches (epoch 1, 2, ...) send only what
changed and get back only partitions with news; a wrong epoch or an unknown session id gets
its error; epoch -1 closes the session. The same test runs against Apache Kafka.
"""

from __future__ import annotations

import socket
import struct
import time

from confluent_kafka.admin import NewTopic

from clients import confluent_admin, create
from kafka_wire import (API_FETCH, Reader, Record, _string, connect, encode_record_batch, frame,
                        produce_v3, recv_frame, request_header)
from spate_harness import unique_topic

FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71


def fetch_v7(sock: socket.socket, session_id: int, epoch: int,
             parts: dict[str, list[tuple[int, int]]], forgotten: dict[str, list[int]] | None = None,
             max_wait_ms: int = 0, corr: int = 7):
    """-> (error_code, session_id, {(topic, partition): (error, hw, records_len)})"""
    body = struct.pack(">iiiibii", -1, max_wait_ms, 1, 50 << 20, 0, session_id, epoch)
    body += struct.pack(">i", len(parts))
    for topic, ps in parts.items():
        body += _string(topic) + struct.pack(">i", len(ps))
        for p, offset in ps:
            body += struct.pack(">iqqi", p, offset, -1, 1 << 20)
    forgotten = forgotten or {}
    body += struct.pack(">i", len(forgotten))
    for topic, ps in forgotten.items():
        body += _string(topic) + struct.pack(">i", len(ps)) + b"".join(struct.pack(">i", p) for p in ps)
    sock.sendall(frame(request_header(API_FETCH, 7, corr) + body))
    r = Reader(recv_frame(sock))
    assert r.i32() == corr
    r.i32()  # throttle
    err = r.i16()
    sid = r.i32()
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx = r.i32()
            perr = r.i16()
            hw, _lso, _ls = struct.unpack(">qqq", r.take(24))
            n = r.i32()
            for _ in range(max(n, 0)):
                r.take(16)
            size = r.i32()
            if size > 0:
                r.take(size)
            out[(name, idx)] = (perr, hw, max(size, 0))
    assert r.remaining() == 0
    return err, sid, out


def batch(n: int) -> bytes:
    return encode_record_batch([Record(key=None, value=b"v%d" % i, offset_delta=i) for i in range(n)],
                               int(time.time() * 1000))


def produce_ok(host, port, topic, partition, n):
    """Produces n records; retries while Kafka still reports NOT_LEADER for a new topic."""
    deadline = time.monotonic() + 15
    while True:
        err = produce_v3(host, port, {topic: {partition: batch(n)}})[(topic, partition)].error_code
        if err != 6 or time.monotonic() > deadline:
            assert err == 0
            return
        time.sleep(0.2)


def test_fetch_session_lifecycle(broker):
    topic = unique_topic("sess")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 2, 1)])
    host, port = broker.host, broker.port
    produce_ok(host, port, topic, 0, 3)
    with connect(host, port, timeout=10) as s:
        # Full fetch: every partition comes back and a session opens.
        err, sid, out = fetch_v7(s, 0, 0, {topic: [(0, 0), (1, 0)]})
        assert err == 0 and sid > 0
        assert out[(topic, 0)][1] == 3 and out[(topic, 0)][2] > 0
        assert out[(topic, 1)][:2] == (0, 0)
        # Incremental with nothing new: both partitions are left out. Partition 0's fetch
        # offset moves to 3 (the client's position after the records).
        err, sid2, out = fetch_v7(s, sid, 1, {topic: [(0, 3)]})
        assert (err, sid2) == (0, sid)
        assert out == {}, out
        # New records on partition 1: only it comes back, though the request names nothing.
        produce_ok(host, port, topic, 1, 2)
        err, _, out = fetch_v7(s, sid, 2, {})
        assert err == 0
        assert set(out) == {(topic, 1)}, out
        assert out[(topic, 1)][1] == 2 and out[(topic, 1)][2] > 0
        # Forget partition 1: a produce there no longer shows up.
        err, _, out = fetch_v7(s, sid, 3, {topic: [(1, 2)]}, forgotten={topic: [1]})
        assert err == 0 and (topic, 1) not in out
        produce_ok(host, port, topic, 1, 1)
        err, _, out = fetch_v7(s, sid, 4, {})
        assert err == 0 and out == {}, out
        # A wrong epoch and an unknown id are refused; the session survives a wrong epoch.
        err, _, out = fetch_v7(s, sid, 9, {})
        assert err == INVALID_FETCH_SESSION_EPOCH and out == {}
        err, _, _ = fetch_v7(s, sid ^ 0x7fff0000, 1, {})
        assert err == FETCH_SESSION_ID_NOT_FOUND
        err, _, out = fetch_v7(s, sid, 5, {})
        assert err == 0
        # Epoch -1 closes it: a full fetch without a session.
        err, sid3, out = fetch_v7(s, sid, -1, {topic: [(0, 0)]})
        assert err == 0 and sid3 == 0 and out[(topic, 0)][2] > 0
        err, _, _ = fetch_v7(s, sid, 6, {})
        assert err == FETCH_SESSION_ID_NOT_FOUND


def test_incremental_fetch_long_polls_until_a_produce(broker):
    topic = unique_topic("sesswait")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 1, 1)])
    host, port = broker.host, broker.port
    with connect(host, port, timeout=15) as s:
        deadline = time.monotonic() + 15
        while True:  # Kafka may answer NOT_LEADER just after the topic is created
            err, sid, out = fetch_v7(s, 0, 0, {topic: [(0, 0)]})
            if out[(topic, 0)][0] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert err == 0 and sid > 0 and out[(topic, 0)][0] == 0
        started = time.monotonic()
        err, _, out = fetch_v7(s, sid, 1, {}, max_wait_ms=300)
        assert err == 0 and out == {}
        assert time.monotonic() - started >= 0.25, "an empty incremental fetch waits max_wait_ms"
