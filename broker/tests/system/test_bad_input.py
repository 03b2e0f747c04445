"""Hostile and odd raw connections while a well-behaved admin client keeps working.

All traffic goes to the broker on 127.0.0.1 only; the run is bounded in connection count,
concurrency and time. What Apache Kafka 4.1 does, and what the assertions below require:
  - a frame whose length is negative, zero, too short for a header or > socket.request.max.bytes
    (100 MiB; 0x7fffffff) -> connection closed, nothing sent
  - unknown API key (999), unsupported version of a non-ApiVersions API (Metadata v99),
    an undecodable body (CreateTopics v7 with a bogus array length), HTTP or TLS bytes
    -> connection closed, nothing sent
  - ApiVersions with an unsupported version (99) -> a v0 ApiVersions response with
    error_code 35 (UNSUPPORTED_VERSION), and the connection stays usable (clients retry
    with a lower version on the same connection)
  - requests trickled in one byte at a time, or pipelined back to back -> answered, in order
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import resource
import struct
import threading
import time

import pytest
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

import kafka_wire as kw
from clients import confluent_admin, create, ok, topic_names
from spate_harness import unique_topic

N_CONNECTIONS = 1200
CONCURRENCY = 250
TOTAL_DEADLINE_S = 90
PER_CONN_TIMEOUT_S = 15
CLOSE_WAIT_S = 5
# Connections are opened at most this often, so bursts do not overflow the listen backlog
# (Kafka's is 50; an overflowing backlog drops handshakes and stalls clients for seconds).
RAMP_S = 0.004


def _hdr(key: int, version: int, corr: int, flexible: bool = False) -> bytes:
    return kw.request_header(key, version, corr, client_id="bad-input", flexible=flexible)


async def _read_outcome(reader: asyncio.StreamReader, timeout: float = CLOSE_WAIT_S) -> str:
    """'closed' (EOF/reset without data), 'data' (server sent bytes) or 'open' (neither)."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
    except asyncio.TimeoutError:
        return "open"
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    return "closed" if not data else "data"


async def _read_frame(reader: asyncio.StreamReader, timeout: float = CLOSE_WAIT_S) -> bytes:
    head = await asyncio.wait_for(reader.readexactly(4), timeout)
    (n,) = struct.unpack(">i", head)
    assert 4 <= n < (16 << 20), n
    return await asyncio.wait_for(reader.readexactly(n), timeout)


async def _send_then_expect_close(writer, reader, payload: bytes) -> str:
    try:
        writer.write(payload)
        await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        return "closed"
    return await _read_outcome(reader)


# Each kind: async fn(reader, writer, rng) -> outcome string; EXPECT maps kind -> allowed outcomes.

async def k_silent(reader, writer, rng):
    await asyncio.sleep(rng.uniform(0.2, 1.5))
    return "ok"


async def k_random(reader, writer, rng):
    writer.write(rng.randbytes(rng.randint(1, 512)))
    await writer.drain()
    await asyncio.sleep(rng.uniform(0.0, 0.5))
    return "ok"


async def k_truncated(reader, writer, rng):
    # header says 100 bytes, only 10 arrive, then the client goes away
    writer.write(struct.pack(">i", 100) + _hdr(18, 3, 1)[:10])
    await writer.drain()
    await asyncio.sleep(rng.uniform(0.1, 0.8))
    return "ok"


async def k_oversized(reader, writer, rng):
    return await _send_then_expect_close(writer, reader, struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 64)


async def k_negative(reader, writer, rng):
    return await _send_then_expect_close(writer, reader, struct.pack(">i", -rng.randint(1, 1 << 30)))


async def k_zero_len(reader, writer, rng):
    return await _send_then_expect_close(writer, reader, struct.pack(">i", 0))


async def k_short_frame(reader, writer, rng):
    return await _send_then_expect_close(writer, reader, kw.frame(b"abc"))


async def k_unknown_api(reader, writer, rng):
    return await _send_then_expect_close(writer, reader, kw.frame(_hdr(999, 0, 5) + rng.randbytes(16)))


async def k_framed_garbage(reader, writer, rng):
    # plausible frame, garbage header (api key far out of range) and body
    body = struct.pack(">h", rng.randint(1000, 32767)) + rng.randbytes(rng.randint(2, 200))
    return await _send_then_expect_close(writer, reader, kw.frame(body))


async def k_unsupported_metadata(reader, writer, rng):
    return await _send_then_expect_close(writer, reader, kw.frame(_hdr(kw.API_METADATA, 99, 6)))


async def k_malformed_create_topics(reader, writer, rng):
    # CreateTopics v7 (flexible): topics compact array length = a 5-byte varint near 2^32
    body = b"\xff\xff\xff\xff\x0f" + b"abc"
    return await _send_then_expect_close(
        writer, reader, kw.frame(_hdr(kw.API_CREATE_TOPICS, 7, 7, flexible=True) + body))


async def k_http(reader, writer, rng):
    return await _send_then_expect_close(writer, reader, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


async def k_tls(reader, writer, rng):
    hello = bytes.fromhex("16030100a5010000a10303") + rng.randbytes(64)
    return await _send_then_expect_close(writer, reader, hello)


async def k_api_versions_v99(reader, writer, rng):
    corr = rng.randint(1, 1 << 30)
    writer.write(kw.api_versions_request(99, corr))
    await writer.drain()
    resp = kw.parse_api_versions(await _read_frame(reader), 0)  # answered in v0
    if resp.correlation_id != corr:
        return f"bad-corr {resp.correlation_id}"
    if resp.error_code != kw.ERR_UNSUPPORTED_VERSION:
        return f"error-code {resp.error_code}"
    if resp.versions and kw.API_API_VERSIONS not in resp.versions:
        return f"v0 body lists {sorted(resp.versions)} but not ApiVersions"
    # clients retry with a supported version on the same connection
    writer.write(kw.api_versions_request(3, corr + 1))
    await writer.drain()
    resp = kw.parse_api_versions(await _read_frame(reader), 3)
    if resp.correlation_id != corr + 1 or resp.error_code != 0:
        return f"retry failed {resp.correlation_id} {resp.error_code}"
    return "ok"


async def k_slow_valid(reader, writer, rng):
    req = kw.api_versions_request(3, 4242)
    for i in range(len(req)):
        writer.write(req[i:i + 1])
        await writer.drain()
        await asyncio.sleep(0.01)
    resp = kw.parse_api_versions(await _read_frame(reader), 3)
    return "ok" if (resp.correlation_id, resp.error_code) == (4242, 0) and resp.versions else "bad"


async def k_pipelined(reader, writer, rng):
    corrs = [rng.randint(1, 1 << 30) for _ in range(4)]
    writer.write(b"".join(kw.api_versions_request(3, c) for c in corrs[:3]) + kw.metadata_v4_request(corrs[3]))
    await writer.drain()
    got = []
    for _ in corrs:
        got.append(struct.unpack(">i", (await _read_frame(reader))[:4])[0])
    return "ok" if got == corrs else f"out-of-order {got} != {corrs}"


async def k_valid_then_garbage(reader, writer, rng):
    writer.write(kw.api_versions_request(3, 99) + kw.frame(_hdr(999, 1, 100)))
    await writer.drain()
    resp = kw.parse_api_versions(await _read_frame(reader), 3)
    if resp.correlation_id != 99 or resp.error_code != 0:
        return "bad-first-response"
    return await _read_outcome(reader)


KINDS = {
    "silent": (k_silent, {"ok"}),
    "random": (k_random, {"ok"}),
    "truncated": (k_truncated, {"ok"}),
    "oversized": (k_oversized, {"closed"}),
    "negative": (k_negative, {"closed"}),
    "zero_len": (k_zero_len, {"closed"}),
    "short_frame": (k_short_frame, {"closed"}),
    "unknown_api": (k_unknown_api, {"closed"}),
    "framed_garbage": (k_framed_garbage, {"closed"}),
    "unsupported_metadata": (k_unsupported_metadata, {"closed"}),
    "malformed_create_topics": (k_malformed_create_topics, {"closed"}),
    "http": (k_http, {"closed"}),
    "tls": (k_tls, {"closed"}),
    "api_versions_v99": (k_api_versions_v99, {"ok"}),
    "slow_valid": (k_slow_valid, {"ok"}),
    "pipelined": (k_pipelined, {"ok"}),
    "valid_then_garbage": (k_valid_then_garbage, {"closed"}),
}


async def _abuse(host: str, port: int, n: int, concurrency: int, seed: int) -> collections.Counter:
    sem = asyncio.Semaphore(concurrency)
    outcomes: collections.Counter = collections.Counter()
    names = list(KINDS)

    async def one(i: int):
        kind = names[i % len(names)]
        fn, _ = KINDS[kind]
        rng = random.Random(seed * 100003 + i)
        await asyncio.sleep(i * RAMP_S)
        async with sem:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                res = await asyncio.wait_for(fn(reader, writer, rng), PER_CONN_TIMEOUT_S)
            except asyncio.TimeoutError:
                res = "timeout"
            except (ConnectionError, asyncio.IncompleteReadError, OSError, AssertionError, ValueError) as e:
                res = f"exc:{type(e).__name__}"
            finally:
                if writer is not None:
                    writer.close()
                    try:
                        await asyncio.wait_for(writer.wait_closed(), 2)
                    except Exception:
                        pass
            outcomes[(kind, res)] += 1

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), TOTAL_DEADLINE_S)
    return outcomes


class AdminLoop(threading.Thread):
    """Keeps creating topics and describing configs/metadata until stopped; records errors."""

    def __init__(self, bootstrap: str):
        super().__init__(daemon=True)
        self.admin = confluent_admin(bootstrap)
        self.stop_event = threading.Event()
        self.iterations = 0
        self.created: list[str] = []
        self.errors: list[str] = []

    def run(self):
        deadline = time.monotonic() + TOTAL_DEADLINE_S + 30
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                name = unique_topic("loop")
                create(self.admin, [NewTopic(name, 2, 1, config={"retention.ms": "60000"})])
                self.created.append(name)
                res = ConfigResource(ResourceType.TOPIC, name)
                cfg = ok(self.admin.describe_configs([res]))[res]
                assert cfg["retention.ms"].value == "60000", cfg["retention.ms"].value
                md = self.admin.list_topics(timeout=15)
                assert name in md.topics and len(md.topics[name].partitions) == 2
                self.iterations += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.2)


def test_garbage_connections_do_not_disturb_clients(broker):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = CONCURRENCY * 2 + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(need, soft), hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need, "fd limit too low for the test"

    loop = AdminLoop(broker.bootstrap)
    loop.start()
    t0 = time.monotonic()
    try:
        outcomes = asyncio.run(_abuse(broker.host, broker.port, N_CONNECTIONS, CONCURRENCY,
                                      seed=int.from_bytes(os.urandom(2), "big")))
    finally:
        # let the admin loop run a little past the abuse, then stop it
        time.sleep(0.5)
        loop.stop_event.set()
        loop.join(timeout=60)
    elapsed = time.monotonic() - t0

    summary = "\n".join(f"  {k:26s} {r:30s} {n}" for (k, r), n in sorted(outcomes.items()))
    print(f"\n{N_CONNECTIONS} connections in {elapsed:.1f}s; admin loop iterations: "
          f"{loop.iterations}\n{summary}")
    assert sum(outcomes.values()) == N_CONNECTIONS
    bad = {(k, r): n for (k, r), n in outcomes.items() if r not in KINDS[k][1]}
    assert not bad, f"unexpected outcomes:\n{summary}"

    assert broker.alive(), "broker died"
    assert not loop.errors, f"admin client saw {len(loop.errors)} errors, first: {loop.errors[:3]}"
    assert loop.iterations >= 3, f"admin loop made too little progress: {loop.iterations}"

    # The broker still answers, raw and through a client.
    resp = kw.api_versions(broker.host, broker.port, version=3)
    assert resp.error_code == 0 and kw.API_CREATE_TOPICS in resp.versions
    names = topic_names(confluent_admin(broker.bootstrap))
    assert set(loop.created) <= names


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_api_versions_supported_versions(broker, version):
    """ApiVersions v0..v3 all answer with error 0 and list the admin APIs."""
    resp = kw.api_versions(broker.host, broker.port, version=version)
    assert resp.error_code == 0
    for key in (kw.API_METADATA, kw.API_API_VERSIONS, kw.API_CREATE_TOPICS, kw.API_DELETE_TOPICS,
                32, 33, 37, 44, 60):  # DescribeConfigs AlterConfigs CreatePartitions IncrementalAlterConfigs DescribeCluster
        assert key in resp.versions, f"api {key} missing from ApiVersions v{version}"
        lo, hi = resp.versions[key]
        assert 0 <= lo <= hi


def test_api_versions_too_new_answers_v0_unsupported(broker):
    resp = kw.api_versions(broker.host, broker.port, version=99)
    assert resp.correlation_id == 7
    assert resp.error_code == kw.ERR_UNSUPPORTED_VERSION
    # Kafka lists ApiVersions' own supported range in the error response, so the client can
    # pick a version without another round trip.
    assert kw.API_API_VERSIONS in resp.versions
    assert resp.versions[kw.API_API_VERSIONS][1] >= 3
