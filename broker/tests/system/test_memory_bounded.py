"""Memory stays bounded against clients that announce huge frames or never read responses.

spated-only: it reads the broker's resident set size from /proc.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest
from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create, topic_names
from spate_harness import unique_topic

pytestmark = pytest.mark.spate_only

MIB = 1 << 20
RSS_GROWTH_MAX = 256 * MIB


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_huge_announced_frames_cost_only_what_arrives(broker):
    pid = broker.proc.pid
    before = rss_bytes(pid)
    socks = []
    try:
        for _ in range(200):
            s = kw.connect(broker.host, broker.port, timeout=5)
            # A frame that claims 100 MiB - 1 (just under the limit) and brings 64 KiB.
            s.sendall(struct.pack(">i", 100 * MIB - 1) + b"\x00" * (64 << 10))
            socks.append(s)
        time.sleep(1.0)
        during = rss_bytes(pid)
        assert during - before < RSS_GROWTH_MAX, f"RSS grew by {(during - before) / MIB:.0f} MiB"
        # Other clients are unaffected meanwhile.
        admin = confluent_admin(broker.bootstrap)
        name = unique_topic("mem")
        create(admin, [NewTopic(name, 1, 1)])
        assert name in topic_names(admin)
    finally:
        for s in socks:
            s.close()


def test_client_that_never_reads_is_throttled_not_buffered(broker):
    pid = broker.proc.pid
    before = rss_bytes(pid)
    sock = kw.connect(broker.host, broker.port, timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = kw.metadata_v4_request(1)
    chunk = request * 1000
    sock.setblocking(False)
    deadline = time.monotonic() + 5
    sent = 0  # bytes; the stream stays frame-aligned because a partial chunk is finished first
    pending = memoryview(chunk)
    while time.monotonic() < deadline:
        try:
            n = sock.send(pending)
        except BlockingIOError:
            time.sleep(0.02)  # the broker stopped reading us: its in-flight queue is full
            continue
        sent += n
        pending = pending[n:] if n < len(pending) else memoryview(chunk)
    try:
        during = rss_bytes(pid)
        assert during - before < RSS_GROWTH_MAX, f"RSS grew by {(during - before) / MIB:.0f} MiB"
        # A broker that stopped reading us leaves the socket full: one more write cannot go
        # out. A broker that kept reading (buffering responses without limit) would drain it.
        for _ in range(4):  # kernel buffers may still take a little; then nothing more
            time.sleep(0.5)
            try:
                accepted = sock.send(pending)
            except BlockingIOError:
                accepted = 0
            if accepted:
                pending = pending[accepted:] if accepted < len(pending) else memoryview(chunk)
        assert accepted == 0, f"the broker still reads a client that never reads ({sent=})"
        admin = confluent_admin(broker.bootstrap)
        name = unique_topic("mem")
        create(admin, [NewTopic(name, 1, 1)])
        assert name in topic_names(admin)
    finally:
        sock.close()
