"""Client matrix: the data path with clients in other languages, exact content checks.

Clients (drivers in clients/, see clients/README.md):
  franz-go   clients/go (kgo), built once per session into target/client-matrix/franzclient
  kafkajs    clients/js (Node), `npm ci` there (test-all.sh does it; the fixture too if missing)
  java       clients/java/ClientMatrix.java, Apache Kafka's kafka-clients 4.1.1 from
             target/kafka-jars/lib, compiled with javac once per session
  kcat       Debian's kcat 1.7.1 (librdkafka 2.0.2), driven directly

Each client produces AND consumes its own records for every codec (none, gzip, snappy, lz4,
zstd), and a few cross-client pairings check that each reads what another wrote (then again
from an offset inside a stored batch, in 2 KiB fetches). The records cover keys and values
that are null, empty, binary, large/compressible and one of 256 KiB; headers that are absent,
duplicated (same key several times, in order), null-valued, empty, binary, with an empty key;
and explicit CreateTime timestamps (not monotonic) set by the producer. Every check is exact: the
consumer must see exactly the produced records at offsets 0..n-1 of each partition, in offset
order, no duplicates or extras, with timestamp type CreateTime. Besides what the client reads,
a raw Fetch v4 checks the stored batches: valid CRC-32C, contiguous offsets, CreateTime, and
the producer's codec (a client may send a small batch uncompressed when compressing does not
shrink it, so uncompressed batches are allowed too, but at least one batch must carry the
codec); none/gzip batches are decoded and compared record by record as well.

The round trips use direct partition assignment, no consumer group (kafkajs has no assign():
its driver uses kafkajs's own Cluster / Broker.fetch / Batch decoding, as its consumer does).
The group test at the end (test_group_consume_and_commit) uses each client's consumer group
(classic protocol) with explicit commits, checked with another client's OffsetFetch.

Client limits and what Apache Kafka 4.1.1 does (both observed with SPATE_TEST_TARGET=kafka):
  - kafkajs headers are a JS object (duplicate keys -> array): a record keeps its header order
    only when equal keys are adjacent, which is all these records send. kafkajs 2.2.4 cannot
    produce null header values (TypeError in sizeOfHeaders), so records it produces carry
    empty ones instead; it reads null header values fine (the *-to-kafkajs pairings).
  - kafkajs codecs: gzip built in, snappy = kafkajs-snappy (pure JS), lz4 = lz4js (pure JS),
    zstd = zstd-codec (WebAssembly); @kafkajs/zstd and kafkajs-lz4 1.x need native node-gyp
    builds, kafkajs-lz4 2.0 beta fails to load its wasm on Node >= 18.
  - kcat cannot set a record's timestamp (librdkafka stamps CreateTime = now: checked to lie
    within the produce call), and its headers come from the command line, one set per
    invocation, without NUL bytes. With -Z, empty keys / values are sent as null.
  - librdkafka (kcat) uses LZ4 only when the broker advertises FindCoordinator (its LZ4
    feature depends on FindCoordinator v0); otherwise it silently sends lz4 batches
    uncompressed.
  - Apache Kafka decompresses every produced batch: an lz4 frame without the
    block-independence flag (what lz4js.compress writes) is refused with
    UNKNOWN_SERVER_ERROR ("Dependent block stream is unsupported"), hence clients/js/lz4.js.
    (spated stores batches without decompressing them and accepts such a batch, which a Java
    consumer then cannot read.)
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import NewTopic

import kafka_wire as kw
from clients import confluent_admin, create, ok, wait_until
from spate_harness import HERE, HOST, REPO, ensure_kafka_jars, java_command, unique_topic

CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
BUILD_DIR = REPO / "target" / "client-matrix"
CLIENTS = HERE / "clients"


# ---------------------------------------------------------------- records


@dataclass
class Msg:
    partition: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp: int = 0

    def expect(self) -> tuple:
        return (self.key, self.value, list(self.headers), self.timestamp)


@dataclass
class Got:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: int
    ts_type: int | None  # 0 CreateTime, 1 LogAppendTime

    def have(self) -> tuple:
        return (self.key, self.value, list(self.headers), self.timestamp)


def matrix_messages(n: int, partitions: int, seed: int) -> list[Msg]:
    """Deterministic mix: null / empty / binary / text keys; empty / null / binary /
    compressible values (a few KiB, one of 256 KiB random bytes); no / single / duplicate
    (incl. null) / null-valued / binary + empty headers, an empty header key; explicit,
    non-monotonic timestamps within the last hour."""
    rng = random.Random(seed)
    base_ts = int(time.time() * 1000) - 3_000_000
    out = []
    for i in range(n):
        if i % 7 == 3:
            key = None
        elif i % 11 == 5:
            key = b""
        elif i % 5 == 2:
            key = rng.randbytes(rng.randint(1, 16))
        else:
            key = f"key-{i}".encode()
        if i in (0, 1) or i % 31 == 13:
            value = b"" if i != 1 else None
        elif i % 29 == 7:
            value = None
        elif i == n // 2 + 1:
            value = rng.randbytes(256 << 10)  # bigger than any small fetch, incompressible
        elif i % 3 == 0:
            value = rng.randbytes(rng.randint(1, 200))
        else:
            value = (b"spate-matrix-%d|" % i) * rng.randint(1, 150)
        h = i % 6
        if h == 0:
            headers = []
        elif h == 1:
            headers = [("h", b"1")]
        elif h == 2:
            headers = [("dup", b"a"), ("dup", b"b"), ("dup", None), ("other", b"c")]
        elif h == 3:
            headers = [("n", None)]
        elif h == 4:
            headers = [("bin", rng.randbytes(24)), ("empty", b""), ("unicod\u00e9", b"x")]
        else:
            headers = [("trace-id", rng.randbytes(8)), ("trace-id", b"\x00\xff"), ("", b"k")]
        ts = base_ts + i * 37 + rng.randint(-1000, 1000)
        out.append(Msg(i % partitions, key, value, headers, ts))
    return out


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def _unb64(s: str | None) -> bytes | None:
    return None if s is None else base64.b64decode(s)


def _to_json(m: Msg) -> dict:
    return {"p": m.partition, "k": _b64(m.key), "v": _b64(m.value),
            "h": [{"k": k, "v": _b64(v)} for k, v in m.headers], "ts": m.timestamp}


def _from_json(r: dict) -> Got:
    return Got(r["p"], r["o"], _unb64(r["k"]), _unb64(r["v"]),
               [(h["k"], _unb64(h["v"])) for h in r["h"]], r["ts"], r.get("tt"))


def expected_by_offset(msgs: list[Msg], offsets: list[tuple[int, int]]) -> dict:
    """The producer's (partition, offset) per record: per partition 0..n-1 in produce order."""
    assert len(offsets) == len(msgs), f"{len(offsets)} offsets for {len(msgs)} records"
    per_part: dict[int, list[int]] = {}
    expected = {}
    for m, (p, off) in zip(msgs, offsets):
        assert p == m.partition, f"record for partition {m.partition} landed in {p}"
        per_part.setdefault(p, []).append(off)
        expected[(p, off)] = m
    for p, offs in per_part.items():
        assert offs == list(range(len(offs))), f"partition {p} offsets {offs[:10]}..."
    return expected


def assert_exact(got: list[Got], expected: dict, what: str, check_ts: bool = True) -> None:
    """Exactly the expected records: each (partition, offset) once, offsets ascending per
    partition, same key / value / headers (order and duplicates included) / timestamp,
    timestamp type CreateTime."""
    seen, last, diffs = set(), {}, []
    for g in got:
        k = (g.partition, g.offset)
        assert k not in seen, f"{what}: duplicate record {k}"
        seen.add(k)
        assert g.offset > last.get(g.partition, -1), f"{what}: offsets not ascending at {k}"
        last[g.partition] = g.offset
        want = expected.get(k)
        have = g.have() if check_ts else g.have()[:3]
        if want is None:
            diffs.append((k, have, None))
            continue
        exp = want.expect() if check_ts else want.expect()[:3]
        if have != exp or g.ts_type != 0:
            diffs.append((k, have, g.ts_type, exp))
    missing = sorted(set(expected) - seen)
    assert not diffs and not missing, (f"{what}: {len(diffs)} records differ (first: "
                                       f"{diffs[:2]}), {len(missing)} missing {missing[:5]}")


def assert_stored(broker, topic: str, expected: dict, codec: str) -> tuple[list[int], dict]:
    """Raw Fetch v4 of every partition: CRC ok, offsets contiguous 0..hw, CreateTime, codec is
    the producer's (or none); none/gzip batches decoded and compared. Returns the codecs seen
    and {partition: [(base offset, record count)]} of the stored batches."""
    counts: dict[int, int] = {}
    for (p, _off) in expected:
        counts[p] = counts.get(p, 0) + 1
    want_codec = kw.CODEC_IDS[codec]
    fetched = kw.fetch_v4(HOST, broker.port, {topic: [(p, 0) for p in counts]})
    seen, layout = [], {}
    for p, n in counts.items():
        fp = fetched[(topic, p)]
        assert fp.error_code == 0 and fp.high_watermark == n, \
            f"partition {p}: error {fp.error_code}, high watermark {fp.high_watermark}, want {n}"
        nxt = 0
        for b in fp.batches():
            assert b.magic == 2 and b.crc_ok, f"partition {p} batch at {b.base_offset}: bad CRC"
            assert b.codec in (want_codec, kw.CODEC_NONE), f"batch codec {b.codec}, want {codec}"
            assert b.attributes & 0x08 == 0, f"batch at {b.base_offset}: LogAppendTime"
            seen.append(b.codec)
            layout.setdefault(p, []).append((b.base_offset, b.count))
            assert b.base_offset == nxt and b.count == b.last_offset_delta + 1
            nxt = b.base_offset + b.count
            if b.records is not None:
                for r in b.records:
                    m = expected[(p, b.base_offset + r.offset_delta)]
                    assert (r.key, r.value, r.headers) == (m.key, m.value, m.headers), \
                        f"stored record {p}:{b.base_offset + r.offset_delta} differs"
                    assert b.base_timestamp + r.timestamp_delta == m.timestamp
        assert nxt == n, f"partition {p}: batches end at {nxt}, want {n}"
    return seen, layout


def inside_a_batch(batches: list[tuple[int, int]]) -> int:
    """An offset in the middle of a stored batch (of the first one with more than one record),
    so a fetch from it returns a batch that starts before it."""
    for base, count in batches:
        if count > 1:
            return base + count // 2
    return batches[len(batches) // 2][0]


def assert_codec_used(seen: list[int], codec: str, who: str) -> None:
    if codec != "none":
        assert kw.CODEC_IDS[codec] in seen, f"{who}: no {codec} batch stored (codecs {seen})"


# ---------------------------------------------------------------- drivers


class Driver:
    """A client program speaking the JSON protocol of clients/README.md."""

    name = "?"
    null_header_values = True  # can produce them

    def producible(self, msgs: list[Msg]) -> list[Msg]:
        """The records as this client can produce them."""
        if self.null_header_values:
            return msgs
        return [Msg(m.partition, m.key, m.value, [(k, b"" if v is None else v)
                                                  for k, v in m.headers], m.timestamp)
                for m in msgs]

    def command(self) -> list[str]:
        raise NotImplementedError

    def run(self, req: dict, timeout: float = 60.0) -> dict:
        t0 = time.monotonic()
        try:
            p = subprocess.run(self.command(), input=json.dumps(req).encode(),
                               capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{self.name} {req['op']} timed out after {timeout}s\n"
                                 f"stderr:\n{(e.stderr or b'').decode(errors='replace')[-3000:]}")
        elapsed = time.monotonic() - t0
        err = p.stderr.decode(errors="replace")
        try:
            out = json.loads(p.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            out = {"error": f"no JSON result: {p.stdout[-500:]!r}"}
        if p.returncode != 0 or "error" in out:
            raise AssertionError(f"{self.name} {req['op']} failed (rc={p.returncode}): "
                                 f"{out.get('error')}\nstderr:\n{err[-3000:]}")
        print(f"[{self.name}] {req['op']} {elapsed:.2f}s")
        return out

    def produce(self, bootstrap: str, topic: str, msgs: list[Msg], codec: str) -> dict:
        out = self.run({"op": "produce", "bootstrap": bootstrap, "topic": topic, "codec": codec,
                        "records": [_to_json(m) for m in msgs]})
        return expected_by_offset(msgs, [tuple(o) for o in out["offsets"]])

    def consume(self, bootstrap: str, topic: str, partitions: list[int], count: int,
                start: dict[int, int] | None = None,
                max_partition_bytes: int | None = None) -> list[Got]:
        req = {"op": "consume", "bootstrap": bootstrap, "topic": topic,
               "partitions": partitions, "count": count, "timeout_ms": 30000}
        if start:
            req["start"] = {str(p): o for p, o in start.items()}
        if max_partition_bytes:
            req["max_partition_bytes"] = max_partition_bytes
        return [_from_json(r) for r in self.run(req)["records"]]

    def group_consume(self, bootstrap: str, topic: str, group: str, count: int) -> list[Got]:
        out = self.run({"op": "group_consume", "bootstrap": bootstrap, "topic": topic,
                        "group": group, "count": count, "timeout_ms": 45000}, timeout=90)
        return [_from_json(r) for r in out["records"]]


class FranzGo(Driver):
    name = "franz-go"

    def __init__(self, binary: Path):
        self.binary = binary

    def command(self) -> list[str]:
        return [str(self.binary)]


class KafkaJS(Driver):
    name = "kafkajs"
    null_header_values = False  # kafkajs 2.2.4: TypeError in sizeOfHeaders

    def command(self) -> list[str]:
        return ["node", str(CLIENTS / "js" / "client.js")]


class Java(Driver):
    name = "java"

    def __init__(self, classes: Path):
        self.classes = classes

    def command(self) -> list[str]:
        cmd = java_command("ClientMatrix", heap="256m")
        cp = cmd.index("-cp")
        cmd[cp + 1] = f"{self.classes}{os.pathsep}{cmd[cp + 1]}"
        return cmd


class Kcat:
    """kcat 1.7 (librdkafka 2.0): -P with -K key delimiter, -H headers, -Z nulls; -C -J."""

    name = "kcat"
    KEY_DELIM, MSG_DELIM = b"\x1f", b"\x1e"  # binary values avoid these two bytes

    def produce_lines(self, bootstrap: str, topic: str, partition: int, lines: list[tuple],
                      headers: list[tuple[str, bytes | None]], codec: str, null_empty: bool):
        """lines: [(key, value)] bytes; one kcat -P run; returns (t_before, t_after) in ms."""
        args = [b"kcat", b"-P", b"-b", bootstrap.encode(), b"-t", topic.encode(),
                b"-p", str(partition).encode(), b"-K", b"\\x1f", b"-D", b"\\x1e",
                b"-z", codec.encode(), b"-X", b"socket.timeout.ms=10000",
                b"-X", b"message.timeout.ms=30000", b"-X", b"linger.ms=50"]
        if null_empty:
            args.append(b"-Z")
        for k, v in headers:
            args += [b"-H", k.encode() if v is None else k.encode() + b"=" + v]
        data = b"".join(k + self.KEY_DELIM + v + self.MSG_DELIM for k, v in lines)
        t0 = int(time.time() * 1000)
        p = subprocess.run(args, input=data, capture_output=True, timeout=60)
        t1 = int(time.time() * 1000)
        assert p.returncode == 0 and not p.stderr.strip(), \
            f"kcat -P rc={p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}"
        return t0, t1

    def consume(self, bootstrap: str, topic: str, partitions: list[int], count: int,
                start: dict[int, int] | None = None,
                max_partition_bytes: int | None = None) -> list[Got]:
        got = []
        small = []
        if max_partition_bytes:
            n = max_partition_bytes
            small = ["-X", f"fetch.message.max.bytes={n}", "-X", f"fetch.max.bytes={4 * n}",
                     "-X", f"message.max.bytes={4 * n}"]
        for part in partitions:
            offset = str((start or {}).get(part, "beginning"))
            p = subprocess.run(["kcat", "-C", "-b", bootstrap, "-t", topic, "-p", str(part),
                                "-o", offset, "-e", "-q", "-J", "-Z",
                                "-X", "socket.timeout.ms=10000", *small],
                               capture_output=True, timeout=60)
            assert p.returncode == 0, f"kcat -C rc={p.returncode}: {p.stderr[-2000:]!r}"
            for line in p.stdout.splitlines():
                # kcat's JSON passes bytes >= 0x80 through raw and escapes control bytes as
                # \u00XX: read it as latin-1 to get every byte back exactly.
                j = json.loads(line.decode("latin-1"))
                raw = lambda s: None if s is None else s.encode("latin-1")  # noqa: E731
                hs = j.get("headers") or []
                headers = [(raw(hs[i]).decode(), raw(hs[i + 1])) for i in range(0, len(hs), 2)]
                tt = {"create": 0, "logappend": 1}.get(j["tstype"])
                got.append(Got(j["partition"], j["offset"], raw(j["key"]), raw(j["payload"]),
                               headers, j["ts"], tt))
        assert len(got) >= count, f"kcat consumed {len(got)} of {count}"
        return got


# ---------------------------------------------------------------- fixtures


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (tools/dev/test-all.sh installs the client deps)")
    return path


@pytest.fixture(scope="session")
def franz_go() -> FranzGo:
    """Build the franz-go driver once per session (go's build cache makes reruns quick)."""
    _tool("go")
    out = BUILD_DIR / "franzclient"
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false")
    p = subprocess.run(["go", "build", "-o", str(out), "."], cwd=CLIENTS / "go", env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"go build failed:\n{p.stderr[-3000:]}"
    return FranzGo(out)


@pytest.fixture(scope="session")
def kafkajs() -> KafkaJS:
    _tool("node")
    js = CLIENTS / "js"
    if not (js / "node_modules" / ".package-lock.json").exists():
        _tool("npm")
        p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=js,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"npm ci failed:\n{p.stderr[-3000:]}"
    return KafkaJS()


@pytest.fixture(scope="session")
def java_client() -> Java:
    """javac the single-file driver against the Kafka jars once per session."""
    _tool("javac")
    lib = ensure_kafka_jars()
    src = CLIENTS / "java" / "ClientMatrix.java"
    classes = BUILD_DIR / "java"
    cls = classes / "ClientMatrix.class"
    if not cls.exists() or cls.stat().st_mtime < src.stat().st_mtime:
        classes.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["javac", "-d", str(classes), "-cp", f"{lib}/*", str(src)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"javac failed:\n{p.stderr[-3000:]}"
    return Java(classes)


@pytest.fixture(scope="session")
def kcat() -> Kcat:
    _tool("kcat")
    return Kcat()


@pytest.fixture
def driver(request):
    return request.getfixturevalue({"franz-go": "franz_go", "kafkajs": "kafkajs",
                                    "java": "java_client", "kcat": "kcat"}[request.param])


@pytest.fixture(scope="module")
def admin(broker):
    return confluent_admin(broker.bootstrap)


def new_topic(admin, partitions: int) -> str:
    name = unique_topic("cm")
    create(admin, [NewTopic(name, partitions, 1)])
    return name


def wait_fetchable(broker, topic: str, partitions: int) -> None:
    """A brand-new Kafka partition can answer NOT_LEADER_OR_FOLLOWER for a moment."""
    def ready():
        res = kw.fetch_v4(HOST, broker.port, {topic: [(p, 0) for p in range(partitions)]})
        return all(res[(topic, p)].error_code == 0 for p in range(partitions))
    wait_until(ready, what=f"{topic} fetchable")


# ---------------------------------------------------------------- round trips


N, PARTS = 240, 3


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("driver", ["franz-go", "kafkajs", "java"], indirect=True)
def test_round_trip(broker, admin, driver, codec):
    """One client produces (explicit partitions + timestamps, the codec) and reads back by
    direct assignment: exactly the produced records; the stored batches carry the codec."""
    topic = new_topic(admin, PARTS)
    wait_fetchable(broker, topic, PARTS)
    msgs = driver.producible(matrix_messages(N, PARTS, seed=CODECS.index(codec) + 10))
    expected = driver.produce(broker.bootstrap, topic, msgs, codec)
    seen, _ = assert_stored(broker, topic, expected, codec)
    assert_codec_used(seen, codec, driver.name)
    got = driver.consume(broker.bootstrap, topic, list(range(PARTS)), N)
    assert_exact(got, expected, f"{driver.name} {codec}")


def _kcat_batches(seed: int) -> list[dict]:
    """kcat -P runs: (partition, -Z?, headers, [(key, value)]) and the records they make."""
    rng = random.Random(seed)

    def binval(n):  # binary, without kcat's delimiters
        return bytes(b for b in rng.randbytes(n * 2) if b not in (0x1e, 0x1f))[:n]

    big = [(b"k%d" % i, (b"kcat-%d|" % i) * rng.randint(20, 200)) for i in range(40)]
    return [
        # Empty keys and values stay empty; duplicate header keys incl. an empty value.
        {"partition": 0, "null_empty": False,
         "headers": [("h", b"1"), ("dup", b"a"), ("dup", b"b"), ("dup", b"")],
         "lines": [(b"key-0", b"value-0"), (b"", b"empty key"), (b"empty value", b""),
                   (b"", b""), (binval(12), binval(300)), (b"\xc3\xbcnicode", b"\xe2\x82\xac")]
                  + big[:20]},
        # -Z: empty key / value -> null; null, binary and empty header values.
        {"partition": 1, "null_empty": True,
         "headers": [("nullh", None), ("bin", b"\xff\x01\x7f\x80\x1b"), ("empty", b""),
                     ("unicod\u00e9", b"x"), ("nullh", None)],
         "lines": [(b"", b"null key"), (b"null value", b""), (b"", b""),
                   (binval(5), binval(100))] + big[20:]},
        # No headers at all.
        {"partition": 0, "null_empty": False, "headers": [],
         "lines": [(b"plain", b"no headers")] + big[:10]},
    ]


def _kcat_expected(runs: list[dict]) -> dict:
    """{(partition, offset): Msg} with timestamp = the (t_before, t_after) window."""
    expected, nxt = {}, {}
    for run in runs:
        for k, v in run["lines"]:
            if run["null_empty"]:
                k, v = (k or None), (v or None)
            p = run["partition"]
            off = nxt.get(p, 0)
            nxt[p] = off + 1
            expected[(p, off)] = Msg(p, k, v, list(run["headers"]), run["window"])
    return expected


def _check_window(got: list[Got], expected: dict) -> None:
    for g in got:
        t0, t1 = expected[(g.partition, g.offset)].timestamp
        assert t0 - 5 <= g.timestamp <= t1 + 5, \
            f"{g.partition}:{g.offset} CreateTime {g.timestamp} outside the produce [{t0}, {t1}]"


@pytest.mark.parametrize("codec", CODECS)
def test_kcat_round_trip(broker, admin, kcat, codec):
    """kcat -P (-K, -H, -Z, -z codec) then kcat -C -J: exact keys, values, headers; CreateTime
    stamped by librdkafka during the produce."""
    topic = new_topic(admin, 2)
    wait_fetchable(broker, topic, 2)
    runs = _kcat_batches(seed=CODECS.index(codec))
    for run in runs:
        run["window"] = kcat.produce_lines(broker.bootstrap, topic, run["partition"],
                                           run["lines"], run["headers"], codec,
                                           run["null_empty"])
    expected = _kcat_expected(runs)
    got = kcat.consume(broker.bootstrap, topic, [0, 1], len(expected))
    assert_exact(got, expected, f"kcat {codec}", check_ts=False)
    _check_window(got, expected)

    # Stored batches: the timestamps are only known as a window, so compare without them.
    stored = {k: Msg(m.partition, m.key, m.value, m.headers, 0) for k, m in expected.items()}
    fetched = kw.fetch_v4(HOST, broker.port, {topic: [(0, 0), (1, 0)]})
    seen = []
    for p in (0, 1):
        fp = fetched[(topic, p)]
        n = sum(1 for (q, _o) in stored if q == p)
        assert fp.error_code == 0 and fp.high_watermark == n
        nxt = 0
        for b in fp.batches():
            assert b.crc_ok and b.base_offset == nxt and b.attributes & 0x08 == 0
            assert b.codec in (kw.CODEC_IDS[codec], kw.CODEC_NONE), f"codec {b.codec}"
            seen.append(b.codec)
            nxt += b.count
            for r in b.records or []:
                m = stored[(p, b.base_offset + r.offset_delta)]
                assert (r.key, r.value, r.headers) == (m.key, m.value, m.headers)
        assert nxt == n
    assert_codec_used(seen, codec, "kcat" + (" (librdkafka uses LZ4 only if the broker "
                                             "advertises FindCoordinator)" if codec == "lz4"
                                             else ""))


# ---------------------------------------------------------------- cross-client


CROSS = [  # (producer, consumer, codec)
    ("franz-go", "kafkajs", "zstd"),
    ("kafkajs", "java", "lz4"),
    ("java", "franz-go", "snappy"),
    ("franz-go", "kcat", "gzip"),
    ("kafkajs", "franz-go", "snappy"),
    ("java", "kafkajs", "zstd"),
]


@pytest.mark.parametrize("producer,consumer,codec", CROSS,
                         ids=[f"{p}-to-{c}-{z}" for p, c, z in CROSS])
def test_cross_client(request, broker, admin, producer, consumer, codec):
    """What one client wrote, another reads exactly (different codec implementations on each
    side); then again from the middle of a stored batch, in small fetches."""
    names = {"franz-go": "franz_go", "kafkajs": "kafkajs", "java": "java_client", "kcat": "kcat"}
    prod = request.getfixturevalue(names[producer])
    cons = request.getfixturevalue(names[consumer])
    parts = 2
    topic = new_topic(admin, parts)
    wait_fetchable(broker, topic, parts)
    msgs = prod.producible(matrix_messages(160, parts,
                                           seed=100 + CROSS.index((producer, consumer, codec))))
    expected = prod.produce(broker.bootstrap, topic, msgs, codec)
    seen, layout = assert_stored(broker, topic, expected, codec)
    assert_codec_used(seen, codec, producer)
    got = cons.consume(broker.bootstrap, topic, list(range(parts)), len(msgs))
    assert_exact(got, expected, f"{producer} -> {consumer} ({codec})")

    # From inside a batch (the fetch returns the whole batch; the client drops the records
    # before its position), 2 KiB per partition and fetch: many fetches, each from where the
    # last one ended.
    start = {p: inside_a_batch(layout[p]) for p in range(parts)}
    rest = {k: m for k, m in expected.items() if k[1] >= start[k[0]]}
    got = cons.consume(broker.bootstrap, topic, list(range(parts)), len(rest), start=start,
                       max_partition_bytes=2048)
    assert_exact(got, rest, f"{producer} -> {consumer} ({codec}) from {start}, small fetches")


# ---------------------------------------------------------------- consumer groups


@pytest.mark.parametrize("driver", ["franz-go", "kafkajs", "java"], indirect=True)
def test_group_consume_and_commit(broker, admin, driver):
    """The client's consumer group (single member, subscribe, from the earliest offset,
    auto commit off) reads everything exactly once, commits explicitly and leaves; the
    committed offsets (read back with another client) are the log end offsets."""
    parts = 2
    topic = new_topic(admin, parts)
    wait_fetchable(broker, topic, parts)
    msgs = driver.producible(matrix_messages(120, parts, seed=99))
    expected = driver.produce(broker.bootstrap, topic, msgs, "none")
    group = unique_topic("grp")
    got = driver.group_consume(broker.bootstrap, topic, group, len(msgs))
    assert_exact(got, expected, f"{driver.name} group {group}")

    counts = {p: sum(1 for m in msgs if m.partition == p) for p in range(parts)}
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(parts)])
    res = ok(admin.list_consumer_group_offsets([req]))
    committed = {tp.partition: tp.offset for tp in res[group].topic_partitions}
    assert committed == counts, f"committed offsets {committed}, want {counts}"
