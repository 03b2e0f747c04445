"""A tiny Kafka-protocol TCP proxy that records which APIs (key, version) a client sends,
and can hide API keys from ApiVersions responses (to check a client's fallback path).

Used by test_api_usage.py; also handy by hand:

    python3 api_trace_proxy.py LISTEN_PORT BROKER_HOST:PORT [--hide 75,60]

For a client to keep going through the proxy after its bootstrap request, the broker must
advertise the proxy's address (Broker(advertised_port=...) / spated --advertised-kafka-addr).
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

from kafka_wire import API_API_VERSIONS, Reader, uvarint

API_NAMES = {
    0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch",
    10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 13: "LeaveGroup", 14: "SyncGroup",
    15: "DescribeGroups", 16: "ListGroups", 17: "SaslHandshake", 18: "ApiVersions",
    19: "CreateTopics", 20: "DeleteTopics", 21: "DeleteRecords", 22: "InitProducerId",
    29: "DescribeAcls", 32: "DescribeConfigs", 33: "AlterConfigs", 35: "DescribeLogDirs",
    36: "SaslAuthenticate", 37: "CreatePartitions", 42: "DeleteGroups", 43: "ElectLeaders",
    44: "IncrementalAlterConfigs", 45: "AlterPartitionReassignments",
    46: "ListPartitionReassignments", 47: "OffsetDelete", 48: "DescribeClientQuotas",
    49: "AlterClientQuotas", 50: "DescribeUserScramCredentials", 60: "DescribeCluster",
    61: "DescribeProducers", 64: "UnregisterBroker", 65: "DescribeTransactions",
    66: "ListTransactions", 68: "ConsumerGroupHeartbeat", 69: "ConsumerGroupDescribe",
    71: "GetTelemetrySubscriptions", 72: "PushTelemetry", 74: "ListConfigResources",
    75: "DescribeTopicPartitions",
}


def api_name(key: int) -> str:
    return API_NAMES.get(key, f"api{key}")


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _read_frame(sock: socket.socket) -> bytes | None:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">i", head)
    if n < 0 or n > (256 << 20):
        return None
    body = _recv_exact(sock, n)
    return None if body is None else body


def strip_api_versions(payload: bytes, version: int, hide: set[int]) -> bytes:
    """Remove `hide` keys from a (v3+, flexible) ApiVersions response payload."""
    if version < 3 or not hide:
        return payload
    r = Reader(payload)
    corr = r.i32()
    err = r.i16()
    n = r.uvarint() - 1
    kept = []
    for _ in range(max(n, 0)):
        start = r.pos
        key = r.i16()
        r.i16()
        r.i16()
        r.skip_tags()
        if key not in hide:
            kept.append(payload[start:r.pos])
    rest = payload[r.pos:]
    return struct.pack(">ih", corr, err) + uvarint(len(kept) + 1) + b"".join(kept) + rest


class TraceProxy:
    def __init__(self, listen_port: int, upstream: tuple[str, int], hide: set[int] | None = None):
        self.upstream = upstream
        self.hide = set(hide or ())
        self.calls: list[tuple[int, int]] = []  # (api_key, api_version) in arrival order
        self._lock = threading.Lock()
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind(("127.0.0.1", listen_port))
        self._lsock.listen(64)
        self._lsock.settimeout(0.5)
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._lsock.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.close()
                except OSError:
                    pass

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    def used(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        with self._lock:
            for k, v in self.calls:
                out.setdefault(api_name(k), set()).add(v)
        return out

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            up.settimeout(None)
            with self._lock:
                self._socks += [client, up]
            inflight: dict[int, tuple[int, int]] = {}
            threading.Thread(target=self._c2s, args=(client, up, inflight), daemon=True).start()
            threading.Thread(target=self._s2c, args=(up, client, inflight), daemon=True).start()

    def _c2s(self, client, up, inflight) -> None:
        try:
            while True:
                payload = _read_frame(client)
                if payload is None:
                    break
                if len(payload) >= 8:
                    key, ver, corr = struct.unpack(">hhi", payload[:8])
                    with self._lock:
                        self.calls.append((key, ver))
                    inflight[corr] = (key, ver)
                up.sendall(struct.pack(">i", len(payload)) + payload)
        except OSError:
            pass
        finally:
            for s in (client, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _s2c(self, up, client, inflight) -> None:
        try:
            while True:
                payload = _read_frame(up)
                if payload is None:
                    break
                if len(payload) >= 4:
                    (corr,) = struct.unpack(">i", payload[:4])
                    key, ver = inflight.pop(corr, (None, None))
                    if key == API_API_VERSIONS and self.hide:
                        payload = strip_api_versions(payload, ver, self.hide)
                client.sendall(struct.pack(">i", len(payload)) + payload)
        except OSError:
            pass
        finally:
            for s in (client, up):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def main() -> None:
    listen = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    hide = set()
    if "--hide" in sys.argv:
        hide = {int(x) for x in sys.argv[sys.argv.index("--hide") + 1].split(",")}
    p = TraceProxy(listen, (host, int(port)), hide)
    print(f"proxy on 127.0.0.1:{listen} -> {host}:{port}, hiding {sorted(hide)}; Ctrl-C to stop")
    try:
        seen = 0
        while True:
            threading.Event().wait(1)
            with p._lock:
                new = p.calls[seen:]
                seen = len(p.calls)
            for k, v in new:
                print(f"{api_name(k)}({k}) v{v}", flush=True)
    except KeyboardInterrupt:
        p.close()


if __name__ == "__main__":
    main()
