"""Minimal raw Kafka wire helpers for the system tests.

Only what the tests need: framing, request headers v1/v2, ApiVersions (v0 and v3),
Metadata v4 (broker count for readiness), DeleteTopics v6 (delete by topic id), and for the
data path: v2 record batches (encode + decode, CRC-32C), Produce v3, Fetch v4, ListOffsets v1.
Every socket operation has a timeout.
"""

from __future__ import annotations

import socket
import struct
import uuid
from dataclasses import dataclass, field

API_PRODUCE = 0
API_FETCH = 1
API_LIST_OFFSETS = 2
API_METADATA = 3
API_API_VERSIONS = 18
API_CREATE_TOPICS = 19
API_DELETE_TOPICS = 20

MAX_KNOWN_API_VERSIONS = 4

ERR_NONE = 0
ERR_OFFSET_OUT_OF_RANGE = 1
ERR_CORRUPT_MESSAGE = 2
ERR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERR_MESSAGE_TOO_LARGE = 10
ERR_UNSUPPORTED_VERSION = 35
ERR_INVALID_REQUEST = 42
ERR_INVALID_RECORD = 87
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


# ================================================================ data path
#
# Record batch v2 (magic 2), see https://kafka.apache.org/documentation/#recordbatch:
#   baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8, crc u32 (CRC-32C of
#   everything after it), attributes i16, lastOffsetDelta i32, baseTimestamp i64,
#   maxTimestamp i64, producerId i64, producerEpoch i16, baseSequence i32, records [i32 count]
# Record: length varint, attributes i8, timestampDelta varlong, offsetDelta varint,
#   key (varint len, -1 = null), value (same), headers [varint count] of
#   (key: varint len + utf-8, value: varint len (-1 = null) + bytes)

BATCH_HEADER_LEN = 61
CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD = 0, 1, 2, 3, 4
CODEC_IDS = {"none": CODEC_NONE, "gzip": CODEC_GZIP, "snappy": CODEC_SNAPPY, "lz4": CODEC_LZ4,
             "zstd": CODEC_ZSTD}


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as in Kafka's record batch header. Pure Python (small batches)."""
    crc = 0xFFFFFFFF
    t = _CRC32C_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def varint(n: int) -> bytes:
    """Signed zig-zag varint / varlong (record fields)."""
    return uvarint((n << 1) ^ (n >> 63) if n < 0 else n << 1)


def _bytes_field(b: bytes | None) -> bytes:
    return varint(-1) if b is None else varint(len(b)) + b


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_delta: int = 0
    offset_delta: int = 0


def encode_record(r: Record) -> bytes:
    body = b"\x00" + varint(r.timestamp_delta) + varint(r.offset_delta)
    body += _bytes_field(r.key) + _bytes_field(r.value) + varint(len(r.headers))
    for hk, hv in r.headers:
        body += _bytes_field(hk.encode()) + _bytes_field(hv)
    return varint(len(body)) + body


def encode_record_batch(records: list[Record], base_timestamp: int, *, base_offset: int = 0,
                        magic: int = 2, attributes: int = 0, partition_leader_epoch: int = -1,
                        producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
                        crc: int | None = None) -> bytes:
    """An uncompressed v2 batch; offset deltas are 0..n-1 unless the records say otherwise.
    `crc` overrides the computed CRC-32C (to build a corrupt batch)."""
    import dataclasses

    records = [r if r.offset_delta or i == 0 else dataclasses.replace(r, offset_delta=i)
               for i, r in enumerate(records)]
    max_ts = base_timestamp + max((r.timestamp_delta for r in records), default=0)
    last_delta = max((r.offset_delta for r in records), default=0)
    after_crc = struct.pack(">hiqqqhii", attributes, last_delta, base_timestamp, max_ts,
                            producer_id, producer_epoch, base_sequence, len(records))
    after_crc += b"".join(encode_record(r) for r in records)
    if crc is None:
        crc = crc32c(after_crc)
    after_len = struct.pack(">ibI", partition_leader_epoch, magic, crc) + after_crc
    return struct.pack(">qi", base_offset, len(after_len)) + after_len


def _read_varint(r: "Reader") -> int:
    u = r.uvarint64()
    return (u >> 1) ^ -(u & 1)


def _read_bytes_field(r: "Reader") -> bytes | None:
    n = _read_varint(r)
    return None if n < 0 else r.take(n)


def _uvarint64(self) -> int:
    shift = 0
    result = 0
    while True:
        b = self.take(1)[0]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("varlong too long")


Reader.uvarint64 = _uvarint64


@dataclass
class RecordBatch:
    base_offset: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    count: int
    raw: bytes  # the whole batch as sent by the broker
    records: list[Record] | None = None  # decoded for codecs none and gzip

    @property
    def codec(self) -> int:
        return self.attributes & 0x07

    @property
    def crc_ok(self) -> bool:
        return crc32c(self.raw[21:]) == self.crc


def decode_records(data: bytes, count: int) -> list[Record]:
    r = Reader(data)
    out = []
    for _ in range(count):
        length = _read_varint(r)
        rr = Reader(r.take(length))
        rr.i8()  # attributes
        ts_delta = _read_varint(rr)
        off_delta = _read_varint(rr)
        key = _read_bytes_field(rr)
        value = _read_bytes_field(rr)
        headers = []
        for _ in range(_read_varint(rr)):
            hk = _read_bytes_field(rr)
            hv = _read_bytes_field(rr)
            headers.append((hk.decode() if hk is not None else None, hv))
        if rr.remaining():
            raise ValueError(f"{rr.remaining()} trailing bytes in a record")
        out.append(Record(key, value, headers, ts_delta, off_delta))
    if r.remaining():
        raise ValueError(f"{r.remaining()} trailing bytes after {count} records")
    return out


def decode_record_batches(data: bytes) -> list[RecordBatch]:
    """Batches in a Fetch `records` field (a trailing partial batch is ignored, as clients do)."""
    import gzip

    out = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        if length < BATCH_HEADER_LEN - 12 or pos + 12 + length > len(data):
            break
        raw = data[pos:pos + 12 + length]
        pos += 12 + length
        (ple, magic, crc, attrs, last_delta, base_ts, max_ts, pid, pepoch, bseq,
         count) = struct.unpack_from(">ibIhiqqqhii", raw, 12)
        b = RecordBatch(base_offset, ple, magic, crc, attrs, last_delta, base_ts, max_ts, pid,
                        pepoch, bseq, count, raw)
        body = raw[BATCH_HEADER_LEN:]
        if b.codec == CODEC_NONE:
            b.records = decode_records(body, count)
        elif b.codec == CODEC_GZIP:
            b.records = decode_records(gzip.decompress(body), count)
        out.append(b)
    return out


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def _nullable_bytes(b: bytes | None) -> bytes:
    return struct.pack(">i", -1) if b is None else struct.pack(">i", len(b)) + b


def produce_v3_request(correlation_id: int, data: dict[str, dict[int, bytes | None]],
                       acks: int = -1, timeout_ms: int = 10000,
                       transactional_id: str | None = None) -> bytes:
    """Produce v3 (non-flexible): transactional_id, acks, timeout_ms,
    topic_data [name, partition_data [index, records]]. `data` = {topic: {partition: records}}."""
    body = nullable_string(transactional_id) + struct.pack(">hii", acks, timeout_ms, len(data))
    for topic, parts in data.items():
        body += _string(topic) + struct.pack(">i", len(parts))
        for p, records in parts.items():
            body += struct.pack(">i", p) + _nullable_bytes(records)
    return frame(request_header(API_PRODUCE, 3, correlation_id) + body)


@dataclass
class ProducePartitionResult:
    error_code: int
    base_offset: int
    log_append_time_ms: int


def parse_produce_v3_response(payload: bytes) -> tuple[int, dict[tuple[str, int], ProducePartitionResult]]:
    """Response header v0; body v3: responses [name, partition_responses [index, error_code,
    base_offset, log_append_time_ms]], throttle_time_ms."""
    r = Reader(payload)
    corr = r.i32()
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx = r.i32()
            err = r.i16()
            (base,) = struct.unpack(">q", r.take(8))
            (lat,) = struct.unpack(">q", r.take(8))
            out[(name, idx)] = ProducePartitionResult(err, base, lat)
    r.i32()  # throttle_time_ms
    if r.remaining():
        raise ValueError(f"{r.remaining()} trailing bytes in Produce v3 response")
    return corr, out


def fetch_v4_request(correlation_id: int, partitions: dict[str, list[tuple[int, int]]],
                     max_wait_ms: int = 0, min_bytes: int = 1, max_bytes: int = 50 << 20,
                     partition_max_bytes: int = 10 << 20, isolation_level: int = 0) -> bytes:
    """Fetch v4 (non-flexible). `partitions` = {topic: [(partition, fetch_offset)]}."""
    body = struct.pack(">iiiibi", -1, max_wait_ms, min_bytes, max_bytes, isolation_level,
                       len(partitions))
    for topic, parts in partitions.items():
        body += _string(topic) + struct.pack(">i", len(parts))
        for p, offset in parts:
            body += struct.pack(">iqi", p, offset, partition_max_bytes)
    return frame(request_header(API_FETCH, 4, correlation_id) + body)


@dataclass
class FetchPartitionResult:
    error_code: int
    high_watermark: int
    last_stable_offset: int
    aborted_transactions: list[tuple[int, int]] | None
    records: bytes | None

    def batches(self) -> list[RecordBatch]:
        return decode_record_batches(self.records or b"")


def parse_fetch_v4_response(payload: bytes) -> tuple[int, dict[tuple[str, int], FetchPartitionResult]]:
    """Header v0; body v4: throttle_time_ms, responses [topic, partitions [partition_index,
    error_code, high_watermark, last_stable_offset, aborted_transactions, records]]."""
    r = Reader(payload)
    corr = r.i32()
    r.i32()  # throttle_time_ms
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx = r.i32()
            err = r.i16()
            hw, lso = struct.unpack(">qq", r.take(16))
            n = r.i32()
            aborted = None if n < 0 else [struct.unpack(">qq", r.take(16)) for _ in range(n)]
            size = r.i32()
            records = None if size < 0 else r.take(size)
            out[(name, idx)] = FetchPartitionResult(err, hw, lso, aborted, records)
    if r.remaining():
        raise ValueError(f"{r.remaining()} trailing bytes in Fetch v4 response")
    return corr, out


LATEST_TIMESTAMP = -1
EARLIEST_TIMESTAMP = -2


def list_offsets_v1_request(correlation_id: int, partitions: dict[str, list[tuple[int, int]]]) -> bytes:
    """ListOffsets v1: replica_id, topics [name, partitions [partition_index, timestamp]].
    `partitions` = {topic: [(partition, timestamp)]}, timestamp -1 = latest, -2 = earliest."""
    body = struct.pack(">ii", -1, len(partitions))
    for topic, parts in partitions.items():
        body += _string(topic) + struct.pack(">i", len(parts))
        for p, ts in parts:
            body += struct.pack(">iq", p, ts)
    return frame(request_header(API_LIST_OFFSETS, 1, correlation_id) + body)


def parse_list_offsets_v1_response(payload: bytes) -> tuple[int, dict[tuple[str, int], tuple[int, int, int]]]:
    """-> {(topic, partition): (error_code, timestamp, offset)}"""
    r = Reader(payload)
    corr = r.i32()
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx = r.i32()
            err = r.i16()
            ts, off = struct.unpack(">qq", r.take(16))
            out[(name, idx)] = (err, ts, off)
    if r.remaining():
        raise ValueError(f"{r.remaining()} trailing bytes in ListOffsets v1 response")
    return corr, out


def roundtrip(host: str, port: int, request: bytes, timeout: float = 15.0) -> bytes:
    """Send one framed request on a new connection and return the response payload; checks
    that the correlation id (bytes 8..12 of the framed request) comes back."""
    with connect(host, port, timeout) as s:
        s.sendall(request)
        payload = recv_frame(s)
    if payload[:4] != request[8:12]:
        raise ValueError(f"correlation id {payload[:4].hex()} != {request[8:12].hex()}")
    return payload


def produce_v3(host: str, port: int, data: dict[str, dict[int, bytes | None]], acks: int = -1,
               timeout: float = 15.0) -> dict[tuple[str, int], ProducePartitionResult]:
    return parse_produce_v3_response(roundtrip(host, port, produce_v3_request(31, data, acks),
                                               timeout))[1]


def fetch_v4(host: str, port: int, partitions: dict[str, list[tuple[int, int]]],
             timeout: float = 15.0, **kw) -> dict[tuple[str, int], FetchPartitionResult]:
    return parse_fetch_v4_response(roundtrip(host, port, fetch_v4_request(41, partitions, **kw),
                                             timeout))[1]


def list_offsets_v1(host: str, port: int, partitions: dict[str, list[tuple[int, int]]],
                    timeout: float = 15.0) -> dict[tuple[str, int], tuple[int, int, int]]:
    return parse_list_offsets_v1_response(roundtrip(host, port,
                                                    list_offsets_v1_request(51, partitions),
                                                    timeout))[1]
