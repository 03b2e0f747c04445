"""Minimal raw Kafka wire helpers for the system tests.

Only what the tests need: framing, request headers v1/v2, ApiVersions (v0 and v3),
Metadata v4 (broker count for readiness) and DeleteTopics v6 (delete by topic id).
Every socket operation has a timeout.
"""

from __future__ import annotations

import socket
import struct
import uuid
from dataclasses import dataclass, field

API_METADATA = 3
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_DELETE_TOPICS = 20

MAX_KNOWN_API_VERSIONS = 4

ERR_NONE = 0
ERR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERR_UNSUPPORTED_VERSION = 35
ERR_INVALID_REQUEST = 42
ERR_UNKNOWN_TOPIC_ID = 100


# ---------------------------------------------------------------- encoding


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def compact_string(s: str | None) -> bytes:
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def nullable_string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    b = s.encode()
    return struct.pack(">h", len(b)) + b


TAGS_NONE = b"\x00"


def request_header(api_key: int, api_version: int, correlation_id: int,
                   client_id: str | None = "spate-system-test", flexible: bool = False) -> bytes:
    """Request header v1 (flexible=False) or v2 (flexible=True)."""
    h = struct.pack(">hhi", api_key, api_version, correlation_id) + nullable_string(client_id)
    if flexible:
        h += TAGS_NONE
    return h


def frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def api_versions_request(version: int, correlation_id: int) -> bytes:
    """A framed ApiVersions request. v3+ is flexible and carries client software name/version.

    For versions the broker does not know (e.g. 99) we still send a v3-shaped body, as a
    real newer client would."""
    if version >= 3:
        body = compact_string("spate-system-test") + compact_string("1.0") + TAGS_NONE
        return frame(request_header(API_API_VERSIONS, version, correlation_id, flexible=True) + body)
    return frame(request_header(API_API_VERSIONS, version, correlation_id))


def metadata_v4_request(correlation_id: int) -> bytes:
    # topics: null array (all topics), allow_auto_topic_creation: false
    body = struct.pack(">i", -1) + b"\x00"
    return frame(request_header(API_METADATA, 4, correlation_id) + body)


def delete_topics_v6_request(correlation_id: int, topic_ids: list[uuid.UUID],
                             timeout_ms: int = 10000) -> bytes:
    body = uvarint(len(topic_ids) + 1)
    for tid in topic_ids:
        body += compact_string(None) + tid.bytes + TAGS_NONE
    body += struct.pack(">i", timeout_ms) + TAGS_NONE
    return frame(request_header(API_DELETE_TOPICS, 6, correlation_id, flexible=True) + body)


# ---------------------------------------------------------------- decoding


class Reader:
    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise ValueError(f"short buffer: need {n} at {self.pos}, have {len(self.buf)}")
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def i8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def uvarint(self) -> int:
        shift = 0
        result = 0
        while True:
            b = self.take(1)[0]
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 35:
                raise ValueError("varint too long")

    def string(self) -> str | None:
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def compact_string(self) -> str | None:
        n = self.uvarint()
        return None if n == 0 else self.take(n - 1).decode()

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self.take(16))

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())

    def remaining(self) -> int:
        return len(self.buf) - self.pos


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket, max_len: int = 64 << 20) -> bytes:
    (n,) = struct.unpack(">i", recv_exact(sock, 4))
    if n < 4 or n > max_len:
        raise ValueError(f"bad response frame length {n}")
    return recv_exact(sock, n)


@dataclass
class ApiVersionsResponse:
    correlation_id: int
    error_code: int
    versions: dict[int, tuple[int, int]] = field(default_factory=dict)


def parse_api_versions(payload: bytes, version: int) -> ApiVersionsResponse:
    """Parse an ApiVersions response (response header is always v0 for ApiVersions).

    `version` is the version the response body is encoded in: 0 when the broker answered an
    unsupported version (it falls back to v0), else the request version."""
    r = Reader(payload)
    corr = r.i32()
    err = r.i16()
    versions: dict[int, tuple[int, int]] = {}
    if version >= 3:
        n = r.uvarint() - 1
        for _ in range(max(n, 0)):
            k, lo, hi = r.i16(), r.i16(), r.i16()
            r.skip_tags()
            versions[k] = (lo, hi)
    else:
        n = r.i32()
        for _ in range(max(n, 0)):
            k, lo, hi = r.i16(), r.i16(), r.i16()
            versions[k] = (lo, hi)
    return ApiVersionsResponse(corr, err, versions)


def parse_metadata_v4_broker_ids(payload: bytes) -> list[int]:
    r = Reader(payload)
    r.i32()  # correlation id
    r.i32()  # throttle_time_ms
    ids = []
    for _ in range(r.i32()):
        ids.append(r.i32())
        r.string()  # host
        r.i32()  # port
        r.string()  # rack
    return ids


@dataclass
class DeleteTopicResult:
    name: str | None
    topic_id: uuid.UUID
    error_code: int
    error_message: str | None


def parse_delete_topics_v6(payload: bytes) -> tuple[int, list[DeleteTopicResult]]:
    r = Reader(payload)
    corr = r.i32()
    r.skip_tags()  # response header v1
    r.i32()  # throttle_time_ms
    out = []
    for _ in range(r.uvarint() - 1):
        name = r.compact_string()
        tid = r.uuid()
        err = r.i16()
        msg = r.compact_string()
        r.skip_tags()
        out.append(DeleteTopicResult(name, tid, err, msg))
    return corr, out


# ---------------------------------------------------------------- one-shot helpers


def connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    return s


def api_versions(host: str, port: int, version: int = 3, timeout: float = 5.0) -> ApiVersionsResponse:
    with connect(host, port, timeout) as s:
        s.sendall(api_versions_request(version, 7))
        payload = recv_frame(s)
        # A version the broker does not support is answered in v0 (error 35).
        resp = parse_api_versions(payload, version if version <= MAX_KNOWN_API_VERSIONS else 0)
        if resp.correlation_id != 7:
            raise ValueError(f"correlation id {resp.correlation_id} != 7")
        return resp


def metadata_broker_ids(host: str, port: int, timeout: float = 5.0) -> list[int]:
    with connect(host, port, timeout) as s:
        s.sendall(metadata_v4_request(11))
        return parse_metadata_v4_broker_ids(recv_frame(s))


def delete_topics_by_id(host: str, port: int, topic_ids: list[uuid.UUID],
                        timeout: float = 15.0) -> list[DeleteTopicResult]:
    with connect(host, port, timeout) as s:
        s.sendall(delete_topics_v6_request(21, topic_ids))
        corr, results = parse_delete_topics_v6(recv_frame(s))
        if corr != 21:
            raise ValueError(f"correlation id {corr} != 21")
        return results
