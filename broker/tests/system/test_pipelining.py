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
