"""Pipelining: many requests on one connection before reading any response.

Kafka answers requests of one connection strictly in order. Spate reads ahead (up to its
in-flight limit) and must still answer in request order; an unsupported request version
closes the connection only after the responses to the requests before it.
"""

from __future__ import annotations

import socket
import struct

import kafka_wire as kw


def _corr(payload: bytes) -> int:
    return struct.unpack(">i", payload[:4])[0]


def test_pipelined_requests_are_answered_in_order(broker):
    host, port = broker.host, broker.port
    with kw.connect(host, port, timeout=10) as sock:
        requests = b""
        for corr in range(1, 41):
            if corr % 2:
                requests += kw.api_versions_request(3, corr)
            else:
                requests += kw.metadata_v4_request(corr)
        sock.sendall(requests)
        got = [_corr(kw.recv_frame(sock)) for _ in range(40)]
    assert got == list(range(1, 41))


def test_unsupported_version_closes_after_earlier_responses(broker):
    host, port = broker.host, broker.port
    with kw.connect(host, port, timeout=10) as sock:
        bad = kw.frame(kw.request_header(kw.API_METADATA, 99, 3) + b"\x00" * 8)
        sock.sendall(kw.api_versions_request(3, 1) + kw.metadata_v4_request(2) + bad)
        assert _corr(kw.recv_frame(sock)) == 1
        assert _corr(kw.recv_frame(sock)) == 2
        sock.settimeout(10)
        try:
            rest = sock.recv(1)
        except (ConnectionResetError, socket.timeout) as e:  # closed (reset) is fine, a hang is not
            assert not isinstance(e, socket.timeout), "connection left open after a bad version"
            rest = b""
        assert rest == b"", "no response may follow an unsupported request version"


def test_one_connection_serves_forty_thousand_requests(broker):
    """Regression: each time a connection's reader waited for bytes it left a clone of its
    task's waker in the shard's shutdown list; past 32,767 (glommio's i16 task refcount) the
    shard panicked. Request-response in lockstep makes the reader wait before every request."""
    n = 40_000
    request = kw.api_versions_request(0, 7)
    with kw.connect(broker.host, broker.port, timeout=60) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            s.sendall(request)
            assert _corr(kw.recv_frame(s)) == 7
    # The broker is still healthy afterwards.
    assert kw.api_versions(broker.host, broker.port).error_code == 0
