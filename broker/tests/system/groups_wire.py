"""Raw Kafka protocol for the consumer-group APIs, for the system tests and perf/scripts.

A small schema-driven codec: each request/response below is the field list of Apache Kafka's
message definition (clients/src/main/resources/common/message/*.json in Kafka 4.1, also inside
kafka-clients-4.1.1.jar), with the version range of every field, so any version of
FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
OffsetDelete, ListGroups, DescribeGroups and DeleteGroups can be encoded and decoded. None of
these messages has tagged fields, so flexible versions only differ in compact strings/arrays/bytes
and the empty tag buffers (request header v2, response header v1).

Requests are dicts keyed by the snake_case field names; a missing field takes the schema default.
Responses decode into `Obj` (attribute access, nested lists of Obj). Also here: the consumer
protocol's Subscription / Assignment payloads (ConsumerProtocolSubscription / ...Assignment) and
`GroupConn`, one connection that sends requests (optionally pipelined) and reads responses.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid as uuidlib
from typing import Any

from kafka_wire import Reader, connect, frame, recv_frame, uvarint

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
API_FIND_COORDINATOR = 10
API_JOIN_GROUP = 11
API_HEARTBEAT = 12
API_LEAVE_GROUP = 13
API_SYNC_GROUP = 14
API_DESCRIBE_GROUPS = 15
API_LIST_GROUPS = 16
API_DELETE_GROUPS = 42
API_OFFSET_DELETE = 47

ERR_NONE = 0
ERR_UNKNOWN_TOPIC_OR_PARTITION = 3
ERR_COORDINATOR_LOAD_IN_PROGRESS = 14
ERR_COORDINATOR_NOT_AVAILABLE = 15
ERR_NOT_COORDINATOR = 16
ERR_ILLEGAL_GENERATION = 22
ERR_INCONSISTENT_GROUP_PROTOCOL = 23
ERR_INVALID_GROUP_ID = 24
ERR_UNKNOWN_MEMBER_ID = 25
ERR_INVALID_SESSION_TIMEOUT = 26
ERR_REBALANCE_IN_PROGRESS = 27
ERR_INVALID_COMMIT_OFFSET_SIZE = 28
ERR_UNSUPPORTED_VERSION = 35
ERR_INVALID_REQUEST = 42
ERR_NON_EMPTY_GROUP = 68
ERR_GROUP_ID_NOT_FOUND = 69
ERR_MEMBER_ID_REQUIRED = 79
ERR_FENCED_INSTANCE_ID = 82
ERR_GROUP_SUBSCRIBED_TO_TOPIC = 86
ERR_STALE_MEMBER_EPOCH = 113

ERROR_NAMES = {
    0: "NONE", 3: "UNKNOWN_TOPIC_OR_PARTITION", 14: "COORDINATOR_LOAD_IN_PROGRESS",
    15: "COORDINATOR_NOT_AVAILABLE", 16: "NOT_COORDINATOR", 22: "ILLEGAL_GENERATION",
    23: "INCONSISTENT_GROUP_PROTOCOL", 24: "INVALID_GROUP_ID", 25: "UNKNOWN_MEMBER_ID",
    26: "INVALID_SESSION_TIMEOUT", 27: "REBALANCE_IN_PROGRESS", 28: "INVALID_COMMIT_OFFSET_SIZE",
    35: "UNSUPPORTED_VERSION", 42: "INVALID_REQUEST", 68: "NON_EMPTY_GROUP",
    69: "GROUP_ID_NOT_FOUND", 79: "MEMBER_ID_REQUIRED", 82: "FENCED_INSTANCE_ID",
    86: "GROUP_SUBSCRIBED_TO_TOPIC", 113: "STALE_MEMBER_EPOCH",
}


def err_name(code: int) -> str:
    return f"{ERROR_NAMES.get(code, '?')}({code})"


# ---------------------------------------------------------------- schemas
#
# A field is (name, type, versions[, default]). versions: "N+" or "N-M". Types: int8, int16,
# int32, int64, bool, string, bytes, uuid, "[]int32", "[]string", or a list of fields (array of
# structs). Strings, bytes and arrays may always be null (None) on the wire; whether a given
# version allows it is the broker's business (the tests send nulls on purpose only where the
# schema says nullable).

S = "string"

# name: (api key, valid versions, first flexible version, request fields, response fields)
SCHEMAS: dict[str, tuple[int, tuple[int, int], int, list, list]] = {
    "FindCoordinator": (API_FIND_COORDINATOR, (0, 6), 3, [
        ("key", S, "0-3"),
        ("key_type", "int8", "1+"),
        ("coordinator_keys", "[]string", "4+"),
    ], [
        ("throttle_time_ms", "int32", "1+"),
        ("error_code", "int16", "0-3"),
        ("error_message", S, "1-3"),
        ("node_id", "int32", "0-3"),
        ("host", S, "0-3"),
        ("port", "int32", "0-3"),
        ("coordinators", [
            ("key", S, "4+"), ("node_id", "int32", "4+"), ("host", S, "4+"),
            ("port", "int32", "4+"), ("error_code", "int16", "4+"), ("error_message", S, "4+"),
        ], "4+"),
    ]),
    "JoinGroup": (API_JOIN_GROUP, (0, 9), 6, [
        ("group_id", S, "0+"),
        ("session_timeout_ms", "int32", "0+"),
        ("rebalance_timeout_ms", "int32", "1+", -1),
        ("member_id", S, "0+"),
        ("group_instance_id", S, "5+", None),
        ("protocol_type", S, "0+"),
        ("protocols", [("name", S, "0+"), ("metadata", "bytes", "0+")], "0+"),
        ("reason", S, "8+", None),
    ], [
        ("throttle_time_ms", "int32", "2+"),
        ("error_code", "int16", "0+"),
        ("generation_id", "int32", "0+"),
        ("protocol_type", S, "7+"),
        ("protocol_name", S, "0+"),
        ("leader", S, "0+"),
        ("skip_assignment", "bool", "9+"),
        ("member_id", S, "0+"),
        ("members", [("member_id", S, "0+"), ("group_instance_id", S, "5+"),
                     ("metadata", "bytes", "0+")], "0+"),
    ]),
    "SyncGroup": (API_SYNC_GROUP, (0, 5), 4, [
        ("group_id", S, "0+"),
        ("generation_id", "int32", "0+"),
        ("member_id", S, "0+"),
        ("group_instance_id", S, "3+", None),
        ("protocol_type", S, "5+", None),
        ("protocol_name", S, "5+", None),
        ("assignments", [("member_id", S, "0+"), ("assignment", "bytes", "0+")], "0+"),
    ], [
        ("throttle_time_ms", "int32", "1+"),
        ("error_code", "int16", "0+"),
        ("protocol_type", S, "5+"),
        ("protocol_name", S, "5+"),
        ("assignment", "bytes", "0+"),
    ]),
    "Heartbeat": (API_HEARTBEAT, (0, 4), 4, [
        ("group_id", S, "0+"),
        ("generation_id", "int32", "0+"),
        ("member_id", S, "0+"),
        ("group_instance_id", S, "3+", None),
    ], [
        ("throttle_time_ms", "int32", "1+"),
        ("error_code", "int16", "0+"),
    ]),
    "LeaveGroup": (API_LEAVE_GROUP, (0, 5), 4, [
        ("group_id", S, "0+"),
        ("member_id", S, "0-2"),
        ("members", [("member_id", S, "3+"), ("group_instance_id", S, "3+", None),
                     ("reason", S, "5+", None)], "3+"),
    ], [
        ("throttle_time_ms", "int32", "1+"),
        ("error_code", "int16", "0+"),
        ("members", [("member_id", S, "3+"), ("group_instance_id", S, "3+"),
                     ("error_code", "int16", "3+")], "3+"),
    ]),
    "OffsetCommit": (API_OFFSET_COMMIT, (2, 9), 8, [
        ("group_id", S, "0+"),
        ("generation_id_or_member_epoch", "int32", "1+", -1),
        ("member_id", S, "1+"),
        ("group_instance_id", S, "7+", None),
        ("retention_time_ms", "int64", "2-4", -1),
        ("topics", [
            ("name", S, "0-9"),
            ("partitions", [
                ("partition_index", "int32", "0+"),
                ("committed_offset", "int64", "0+"),
                ("committed_leader_epoch", "int32", "6+", -1),
                ("committed_metadata", S, "0+"),
            ], "0+"),
        ], "0+"),
    ], [
        ("throttle_time_ms", "int32", "3+"),
        ("topics", [
            ("name", S, "0-9"),
            ("partitions", [("partition_index", "int32", "0+"), ("error_code", "int16", "0+")], "0+"),
        ], "0+"),
    ]),
    "OffsetFetch": (API_OFFSET_FETCH, (1, 9), 6, [
        ("group_id", S, "0-7"),
        ("topics", [("name", S, "0-7"), ("partition_indexes", "[]int32", "0-7")], "0-7"),
        ("groups", [
            ("group_id", S, "8+"),
            ("member_id", S, "9+", None),
            ("member_epoch", "int32", "9+", -1),
            ("topics", [("name", S, "8-9"), ("partition_indexes", "[]int32", "8+")], "8+"),
        ], "8+"),
        ("require_stable", "bool", "7+"),
    ], [
        ("throttle_time_ms", "int32", "3+"),
        ("topics", [
            ("name", S, "0-7"),
            ("partitions", [
                ("partition_index", "int32", "0-7"),
                ("committed_offset", "int64", "0-7"),
                ("committed_leader_epoch", "int32", "5-7"),
                ("metadata", S, "0-7"),
                ("error_code", "int16", "0-7"),
            ], "0-7"),
        ], "0-7"),
        ("error_code", "int16", "2-7"),
        ("groups", [
            ("group_id", S, "8+"),
            ("topics", [
                ("name", S, "8-9"),
                ("partitions", [
                    ("partition_index", "int32", "8+"),
                    ("committed_offset", "int64", "8+"),
                    ("committed_leader_epoch", "int32", "8+"),
                    ("metadata", S, "8+"),
                    ("error_code", "int16", "8+"),
                ], "8+"),
            ], "8+"),
            ("error_code", "int16", "8+"),
        ], "8+"),
    ]),
    "OffsetDelete": (API_OFFSET_DELETE, (0, 0), 99, [
        ("group_id", S, "0+"),
        ("topics", [("name", S, "0+"), ("partitions", [("partition_index", "int32", "0+")], "0+")], "0+"),
    ], [
        ("error_code", "int16", "0+"),
        ("throttle_time_ms", "int32", "0+"),
        ("topics", [("name", S, "0+"), ("partitions", [("partition_index", "int32", "0+"),
                                                     ("error_code", "int16", "0+")], "0+")], "0+"),
    ]),
    "ListGroups": (API_LIST_GROUPS, (0, 5), 3, [
        ("states_filter", "[]string", "4+"),
        ("types_filter", "[]string", "5+"),
    ], [
        ("throttle_time_ms", "int32", "1+"),
        ("error_code", "int16", "0+"),
        ("groups", [("group_id", S, "0+"), ("protocol_type", S, "0+"),
                    ("group_state", S, "4+"), ("group_type", S, "5+")], "0+"),
    ]),
    "DescribeGroups": (API_DESCRIBE_GROUPS, (0, 5), 5, [
        ("groups", "[]string", "0+"),
        ("include_authorized_operations", "bool", "3+"),
    ], [
        ("throttle_time_ms", "int32", "1+"),
        ("groups", [
            ("error_code", "int16", "0+"),
            ("error_message", S, "6+"),
            ("group_id", S, "0+"),
            ("group_state", S, "0+"),
            ("protocol_type", S, "0+"),
            ("protocol_data", S, "0+"),
            ("members", [
                ("member_id", S, "0+"),
                ("group_instance_id", S, "4+"),
                ("client_id", S, "0+"),
                ("client_host", S, "0+"),
                ("member_metadata", "bytes", "0+"),
                ("member_assignment", "bytes", "0+"),
            ], "0+"),
            ("authorized_operations", "int32", "3+"),
        ], "0+"),
    ]),
    "DeleteGroups": (API_DELETE_GROUPS, (0, 2), 2, [
        ("groups_names", "[]string", "0+"),
    ], [
        ("throttle_time_ms", "int32", "0+"),
        ("results", [("group_id", S, "0+"), ("error_code", "int16", "0+")], "0+"),
    ]),
}

API_NAMES = {v[0]: k for k, v in SCHEMAS.items()}


def _in(versions: str, v: int) -> bool:
    if versions.endswith("+"):
        return v >= int(versions[:-1])
    lo, _, hi = versions.partition("-")
    return int(lo) <= v <= int(hi or lo)


_INT_FMT = {"int8": ">b", "int16": ">h", "int32": ">i", "int64": ">q"}


class Obj(dict):
    """A decoded struct: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# ---------------------------------------------------------------- encoding


def _enc_len(n: int | None, flexible: bool, wide: bool) -> bytes:
    """Length prefix: compact (uvarint n+1, 0 = null) or int16 (strings) / int32 (bytes, arrays)."""
    if flexible:
        return uvarint(0 if n is None else n + 1)
    if n is None:
        n = -1
    return struct.pack(">i" if wide else ">h", n)


def _enc_value(typ, value, v: int, flexible: bool) -> bytes:
    if isinstance(typ, list):
        if value is None:
            return _enc_len(None, flexible, True)
        out = _enc_len(len(value), flexible, True)
        for item in value:
            out += _enc_struct(typ, item, v, flexible)
        return out
    if typ in _INT_FMT:
        return struct.pack(_INT_FMT[typ], value)
    if typ == "bool":
        return b"\x01" if value else b"\x00"
    if typ == "uuid":
        return (value or uuidlib.UUID(int=0)).bytes
    if typ == "string":
        if value is None:
            return _enc_len(None, flexible, False)
        b = value.encode()
        return _enc_len(len(b), flexible, False) + b
    if typ == "bytes":
        if value is None:
            return _enc_len(None, flexible, True)
        return _enc_len(len(value), flexible, True) + bytes(value)
    if typ.startswith("[]"):
        if value is None:
            return _enc_len(None, flexible, True)
        return _enc_len(len(value), flexible, True) + b"".join(
            _enc_value(typ[2:], x, v, flexible) for x in value)
    raise ValueError(f"unknown type {typ}")


def _default(typ, dflt):
    if dflt is not _NO_DEFAULT:
        return dflt
    if isinstance(typ, list) or typ.startswith("[]"):
        return []
    if typ in _INT_FMT:
        return 0
    if typ == "bool":
        return False
    if typ == "string":
        return ""
    if typ == "bytes":
        return b""
    return None


_NO_DEFAULT = object()


def _enc_struct(fields, data: dict, v: int, flexible: bool) -> bytes:
    unknown = set(data) - {f[0] for f in fields}
    if unknown:
        raise KeyError(f"unknown fields {sorted(unknown)}")
    out = b""
    for f in fields:
        name, typ, versions = f[:3]
        if not _in(versions, v):
            continue
        value = data.get(name, _default(typ, f[3] if len(f) > 3 else _NO_DEFAULT))
        out += _enc_value(typ, value, v, flexible)
    if flexible:
        out += b"\x00"  # no tagged fields
    return out


def encode_request(api: str, version: int, correlation_id: int, body: dict,
                   client_id: str | None = "spate-system-test") -> bytes:
    """A framed request (header v1, or v2 for flexible versions)."""
    key, _valid, flex_from, req, _resp = SCHEMAS[api]
    flexible = version >= flex_from
    h = struct.pack(">hhi", key, version, correlation_id)
    if client_id is None:
        h += struct.pack(">h", -1)
    else:
        cb = client_id.encode()
        h += struct.pack(">h", len(cb)) + cb
    if flexible:
        h += b"\x00"
    return frame(h + _enc_struct(req, body, version, flexible))


# ---------------------------------------------------------------- decoding


def _dec_len(r: Reader, flexible: bool, wide: bool) -> int | None:
    if flexible:
        n = r.uvarint()
        return None if n == 0 else n - 1
    n = r.i32() if wide else r.i16()
    return None if n < 0 else n


def _dec_value(r: Reader, typ, v: int, flexible: bool):
    if isinstance(typ, list):
        n = _dec_len(r, flexible, True)
        return None if n is None else [_dec_struct(r, typ, v, flexible) for _ in range(n)]
    if typ in _INT_FMT:
        fmt = _INT_FMT[typ]
        return struct.unpack(fmt, r.take(struct.calcsize(fmt)))[0]
    if typ == "bool":
        return r.take(1) != b"\x00"
    if typ == "uuid":
        return uuidlib.UUID(bytes=r.take(16))
    if typ == "string":
        n = _dec_len(r, flexible, False)
        return None if n is None else r.take(n).decode()
    if typ == "bytes":
        n = _dec_len(r, flexible, True)
        return None if n is None else r.take(n)
    if typ.startswith("[]"):
        n = _dec_len(r, flexible, True)
        return None if n is None else [_dec_value(r, typ[2:], v, flexible) for _ in range(n)]
    raise ValueError(f"unknown type {typ}")


def _dec_struct(r: Reader, fields, v: int, flexible: bool) -> Obj:
    out = Obj()
    for f in fields:
        name, typ, versions = f[:3]
        if _in(versions, v):
            out[name] = _dec_value(r, typ, v, flexible)
    if flexible:
        r.skip_tags()
    return out


def decode_response(api: str, version: int, payload: bytes) -> tuple[int, Obj]:
    """-> (correlation id, body). Response header v0, or v1 (tag buffer) for flexible versions."""
    _key, _valid, flex_from, _req, resp = SCHEMAS[api]
    flexible = version >= flex_from
    r = Reader(payload)
    corr = r.i32()
    if flexible:
        r.skip_tags()
    body = _dec_struct(r, resp, version, flexible)
    if r.remaining():
        raise ValueError(f"{r.remaining()} trailing bytes in {api} v{version} response")
    return corr, body


# ---------------------------------------------------------------- consumer protocol payloads


def _pstring(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def consumer_subscription(topics: list[str], version: int = 0, user_data: bytes | None = None,
                          owned: dict[str, list[int]] | None = None) -> bytes:
    """ConsumerProtocolSubscription (JoinGroup protocol metadata of protocol type "consumer")."""
    out = struct.pack(">hi", version, len(topics)) + b"".join(_pstring(t) for t in topics)
    out += struct.pack(">i", -1) if user_data is None else struct.pack(">i", len(user_data)) + user_data
    if version >= 1:
        owned = owned or {}
        out += struct.pack(">i", len(owned))
        for t, ps in owned.items():
            out += _pstring(t) + struct.pack(">i", len(ps)) + b"".join(struct.pack(">i", p) for p in ps)
    if version >= 2:
        out += struct.pack(">i", -1)  # generation id
    if version >= 3:
        out += struct.pack(">h", -1)  # rack id: null
    return out


def consumer_assignment(assigned: dict[str, list[int]], version: int = 0,
                        user_data: bytes | None = None) -> bytes:
    """ConsumerProtocolAssignment (SyncGroup assignment of protocol type "consumer")."""
    out = struct.pack(">hi", version, len(assigned))
    for t, ps in assigned.items():
        out += _pstring(t) + struct.pack(">i", len(ps)) + b"".join(struct.pack(">i", p) for p in ps)
    out += struct.pack(">i", -1) if user_data is None else struct.pack(">i", len(user_data)) + user_data
    return out


def parse_consumer_assignment(data: bytes) -> dict[str, list[int]]:
    if not data:
        return {}
    r = Reader(data)
    r.i16()  # version
    out = {}
    for _ in range(r.i32()):
        t = r.string()
        out[t] = [r.i32() for _ in range(r.i32())]
    return out


def parse_consumer_subscription(data: bytes) -> list[str]:
    r = Reader(data)
    r.i16()
    return [r.string() for _ in range(r.i32())]


# ---------------------------------------------------------------- connection


class GroupConn:
    """One connection to the broker. `call(api, version, body)` = send + wait for the answer;
    `send` / `recv` for pipelining (responses come back in request order)."""

    def __init__(self, host: str, port: int, timeout: float = 15.0,
                 client_id: str | None = "spate-system-test"):
        self.sock: socket.socket = connect(host, port, timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client_id = client_id
        self._corr = 0
        self._inflight: list[tuple[int, str, int]] = []

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def settimeout(self, t: float) -> None:
        self.sock.settimeout(t)

    def encode(self, api: str, version: int, body: dict) -> bytes:
        self._corr += 1
        self._inflight.append((self._corr, api, version))
        return encode_request(api, version, self._corr, body, self.client_id)

    def send(self, api: str, version: int, body: dict) -> None:
        self.sock.sendall(self.encode(api, version, body))

    def send_many(self, reqs: list[tuple[str, int, dict]]) -> None:
        self.sock.sendall(b"".join(self.encode(a, v, b) for a, v, b in reqs))

    def recv(self) -> Obj:
        corr, api, version = self._inflight.pop(0)
        got, body = decode_response(api, version, recv_frame(self.sock))
        if got != corr:
            raise ValueError(f"{api} v{version}: correlation id {got} != {corr}")
        return body

    def call(self, api: str, version: int, body: dict) -> Obj:
        self.send(api, version, body)
        return self.recv()

    # ------------------------------------------------------------ conveniences

    def find_coordinator(self, group: str, version: int = 3) -> Obj:
        if version >= 4:
            r = self.call("FindCoordinator", version, {"key_type": 0, "coordinator_keys": [group]})
            return r.coordinators[0]
        return self.call("FindCoordinator", version, {"key": group, "key_type": 0})

    def join(self, group: str, topics: list[str] | None = None, member_id: str = "",
             version: int = 9, session_timeout_ms: int = 10000,
             rebalance_timeout_ms: int = 10000, group_instance_id: str | None = None,
             protocols: list[tuple[str, bytes]] | None = None,
             protocol_type: str = "consumer", reason: str | None = None) -> Obj:
        if protocols is None:
            protocols = [("range", consumer_subscription(topics or []))]
        return self.call("JoinGroup", version, {
            "group_id": group, "session_timeout_ms": session_timeout_ms,
            "rebalance_timeout_ms": rebalance_timeout_ms, "member_id": member_id,
            "group_instance_id": group_instance_id, "protocol_type": protocol_type,
            "protocols": [{"name": n, "metadata": m} for n, m in protocols],
            "reason": reason,
        })

    def sync(self, group: str, generation: int, member_id: str,
             assignments: dict[str, bytes] | None = None, version: int = 5,
             group_instance_id: str | None = None, protocol_type: str | None = "consumer",
             protocol_name: str | None = "range") -> Obj:
        return self.call("SyncGroup", version, {
            "group_id": group, "generation_id": generation, "member_id": member_id,
            "group_instance_id": group_instance_id, "protocol_type": protocol_type,
            "protocol_name": protocol_name,
            "assignments": [{"member_id": m, "assignment": a}
                            for m, a in (assignments or {}).items()],
        })

    def heartbeat(self, group: str, generation: int, member_id: str, version: int = 4,
                  group_instance_id: str | None = None) -> Obj:
        return self.call("Heartbeat", version, {
            "group_id": group, "generation_id": generation, "member_id": member_id,
            "group_instance_id": group_instance_id})

    def leave(self, group: str, member_id: str, version: int = 5,
              group_instance_id: str | None = None) -> Obj:
        if version >= 3:
            return self.call("LeaveGroup", version, {"group_id": group, "members": [
                {"member_id": member_id, "group_instance_id": group_instance_id}]})
        return self.call("LeaveGroup", version, {"group_id": group, "member_id": member_id})

    def commit(self, group: str, offsets: dict[tuple[str, int], int], generation: int = -1,
               member_id: str = "", version: int = 9, group_instance_id: str | None = None,
               metadata: str | None = "") -> dict[tuple[str, int], int]:
        """OffsetCommit -> {(topic, partition): error code}."""
        r = self.call("OffsetCommit", version, commit_body(group, offsets, generation, member_id,
                                                          group_instance_id, metadata))
        return {(t.name, p.partition_index): p.error_code for t in r.topics for p in t.partitions}

    def fetch_offsets(self, group: str, partitions: dict[str, list[int]] | None = None,
                      version: int = 9, require_stable: bool = False) -> tuple[int, dict]:
        """OffsetFetch -> (group error code, {(topic, partition): (offset, metadata, error)}).
        partitions None = all committed offsets of the group."""
        if version >= 8:
            topics = None if partitions is None else [
                {"name": t, "partition_indexes": ps} for t, ps in partitions.items()]
            r = self.call("OffsetFetch", version, {"groups": [{"group_id": group, "topics": topics}],
                                                   "require_stable": require_stable})
            g = r.groups[0]
            err, topics = g.error_code, g.topics
        else:
            topics = None if partitions is None else [
                {"name": t, "partition_indexes": ps} for t, ps in partitions.items()]
            r = self.call("OffsetFetch", version, {"group_id": group, "topics": topics,
                                                   "require_stable": require_stable})
            err, topics = r.get("error_code", 0), r.topics
        return err, {(t.name, p.partition_index): (p.committed_offset, p.metadata, p.error_code)
                     for t in topics for p in t.partitions}

    def describe(self, groups: list[str], version: int = 5) -> list[Obj]:
        return self.call("DescribeGroups", version, {"groups": groups,
                                                     "include_authorized_operations": False}).groups

    def list_groups(self, version: int = 5, states: list[str] | None = None,
                    types: list[str] | None = None) -> Obj:
        return self.call("ListGroups", version, {"states_filter": states or [],
                                                 "types_filter": types or []})

    def delete_groups(self, groups: list[str], version: int = 2) -> dict[str, int]:
        r = self.call("DeleteGroups", version, {"groups_names": groups})
        return {x.group_id: x.error_code for x in r.results}

    def offset_delete(self, group: str, partitions: dict[str, list[int]]) -> tuple[int, dict]:
        r = self.call("OffsetDelete", 0, {"group_id": group, "topics": [
            {"name": t, "partitions": [{"partition_index": p} for p in ps]}
            for t, ps in partitions.items()]})
        return r.error_code, {(t.name, p.partition_index): p.error_code
                              for t in r.topics for p in t.partitions}


def commit_body(group: str, offsets: dict[tuple[str, int], int], generation: int = -1,
                member_id: str = "", group_instance_id: str | None = None,
                metadata: str | None = "") -> dict:
    by_topic: dict[str, list] = {}
    for (t, p), off in offsets.items():
        by_topic.setdefault(t, []).append({"partition_index": p, "committed_offset": off,
                                           "committed_metadata": metadata})
    return {"group_id": group, "generation_id_or_member_epoch": generation,
            "member_id": member_id, "group_instance_id": group_instance_id,
            "topics": [{"name": t, "partitions": ps} for t, ps in by_topic.items()]}


def join_single_member_group(conn: GroupConn, group: str, topics: dict[str, int],
                             version: int = 9, session_timeout_ms: int = 10000,
                             rebalance_timeout_ms: int = 10000,
                             group_instance_id: str | None = None) -> tuple[str, int]:
    """Join `group` alone (MEMBER_ID_REQUIRED round trip for v4+), assign every partition of
    `topics` ({name: partition count}) to itself and SyncGroup. -> (member id, generation)."""
    names = sorted(topics)
    member = ""
    for _ in range(3):
        j = conn.join(group, names, member_id=member, version=version,
                      session_timeout_ms=session_timeout_ms,
                      rebalance_timeout_ms=rebalance_timeout_ms, group_instance_id=group_instance_id)
        if j.error_code == ERR_MEMBER_ID_REQUIRED:
            member = j.member_id
            continue
        break
    if j.error_code != ERR_NONE:
        raise AssertionError(f"JoinGroup {group}: {err_name(j.error_code)}")
    assert j.leader == j.member_id, (j.leader, j.member_id)
    assignment = consumer_assignment({t: list(range(n)) for t, n in topics.items()})
    s = conn.sync(group, j.generation_id, j.member_id, {j.member_id: assignment},
                  version=sync_version_for_join(version), group_instance_id=group_instance_id,
                  protocol_name=j.protocol_name)
    if s.error_code != ERR_NONE:
        raise AssertionError(f"SyncGroup {group}: {err_name(s.error_code)}")
    return j.member_id, j.generation_id


def wait_coordinator_ready(host: str, port: int, timeout: float = 60.0, n_groups: int = 64) -> None:
    """Wait until the group coordinator answers for (practically) every __consumer_offsets
    partition: FindCoordinator succeeds and OffsetFetch v8 for `n_groups` group ids has no group
    error. (Apache Kafka creates __consumer_offsets on the first FindCoordinator and answers
    COORDINATOR_NOT_AVAILABLE / NOT_COORDINATOR until its partitions are loaded.)"""
    import kafka_wire

    missing = {API_NAMES[k] for k in (API_FIND_COORDINATOR, API_OFFSET_FETCH)} - {
        API_NAMES.get(k) for k in kafka_wire.api_versions(host, port).versions}
    if missing:
        raise AssertionError(f"the broker does not advertise {sorted(missing)} in ApiVersions")
    groups = [f"warmup-{i}" for i in range(n_groups)]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with GroupConn(host, port) as c:
                fc = c.find_coordinator(groups[0], version=3)
                if fc.error_code != ERR_NONE:
                    last = f"FindCoordinator: {err_name(fc.error_code)}"
                else:
                    r = c.call("OffsetFetch", 8, {"groups": [{"group_id": g, "topics": None}
                                                             for g in groups]})
                    errs = {err_name(g.error_code) for g in r.groups if g.error_code}
                    if not errs:
                        return
                    last = f"OffsetFetch: {sorted(errs)}"
        except (OSError, ValueError) as e:  # ConnectionError is an OSError
            last = repr(e)
        time.sleep(0.2)
    raise AssertionError(f"group coordinator not ready after {timeout}s (last: {last})")


# The version pairs used when a test walks every version of the classic group protocol:
# (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) that came together in Kafka releases.
def sync_version_for_join(join_version: int) -> int:
    """The SyncGroup version a Java client of the same release sends with JoinGroup vN."""
    return {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 3, 6: 4, 7: 5, 8: 5, 9: 5}[join_version]


def heartbeat_version_for_join(join_version: int) -> int:
    return {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 3, 6: 4, 7: 4, 8: 4, 9: 4}[join_version]


def leave_version_for_join(join_version: int) -> int:
    return {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 3, 6: 4, 7: 4, 8: 5, 9: 5}[join_version]


def coerce(obj: Any):
    """Obj tree -> plain dicts/lists (for assertion messages)."""
    if isinstance(obj, dict):
        return {k: coerce(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [coerce(x) for x in obj]
    return obj
