"""The `spate` operator CLI (tools/, crate spate-tools) against the broker.

`spate` talks to the broker with its own small synchronous Kafka client, so these tests check
the CLI and the broker together: topic admin (one status per item, the broker's error text, a
non-zero exit on any failure), produce from a file and consume back, JSON output, consumer
groups (join/sync/commit as a member, lag in `group describe`, seek, delete), and the commands
that need no broker (completion, help, tune check).

Everything here must also pass against Apache Kafka (SPATE_TEST_TARGET=kafka): expectations
are written from what Kafka 4.1 answers. Kafka applies metadata changes to its brokers
asynchronously, so checks after create/delete/alter poll with wait_until.

Environment: SPATE_CLI, the spate binary (default <repo>/target/debug/spate; build it with
`cargo build -p spate-tools --bin spate`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from kafka.partitioner.default import murmur2

from clients import wait_until
from spate_harness import REPO, ToolResult, free_port, unique_topic

SPATE_CLI = Path(os.environ.get("SPATE_CLI", REPO / "target" / "debug" / "spate"))
RECORDS = 10_000


@pytest.fixture(scope="module", autouse=True)
def cli_built():
    if not SPATE_CLI.exists():
        pytest.fail(f"spate CLI not found at {SPATE_CLI} "
                    "(cargo build -p spate-tools --bin spate, or set SPATE_CLI)")


def spate(bootstrap: str | None, *args: str, stdin: bytes | None = None,
          timeout: float = 90) -> ToolResult:
    """Run `spate [--brokers B] ARGS...`; returns (rc, stdout, stderr)."""
    cmd = [str(SPATE_CLI)]
    if bootstrap is not None:
        cmd += ["--brokers", bootstrap]
    cmd += [str(a) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "SPATE_BROKERS"}
    try:
        p = subprocess.run(cmd, input=stdin if stdin is not None else b"", capture_output=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{' '.join(cmd)} timed out after {timeout}s\n"
                             f"stderr:\n{(e.stderr or b'').decode(errors='replace')}") from None
    return ToolResult(p.returncode, p.stdout.decode(errors="replace"),
                      p.stderr.decode(errors="replace"))


def ok(bootstrap: str | None, *args: str, **kw) -> ToolResult:
    r = spate(bootstrap, *args, **kw)
    assert r.rc == 0, f"spate {' '.join(args)} failed rc={r.rc}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def js(bootstrap: str, *args: str, **kw):
    return json.loads(ok(bootstrap, *args, "--format", "json", **kw).stdout)


def table(stdout: str) -> list[list[str]]:
    """Rows of an aligned text table (header included), split on runs of 2+ spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def statuses(stdout: str) -> dict[str, str]:
    """`NAME  STATUS` tables → {name: status}."""
    rows = table(stdout)
    assert rows and rows[0][-1] == "STATUS", stdout
    return {r[0]: r[-1] for r in rows[1:]}


def create(bootstrap: str, *names: str, partitions: int = 1, extra: tuple = ()) -> None:
    r = ok(bootstrap, "topic", "create", *names, "-p", str(partitions), *extra)
    assert statuses(r.stdout) == {n: "OK" for n in names}, r.stdout
    # Kafka: visible in every broker's metadata a moment after CreateTopics answers.
    wait_until(lambda: set(names) <= {t["name"] for t in js(bootstrap, "topic", "list")},
               timeout=20, what=f"{names} listed")


def group_view(bootstrap: str, group: str) -> dict:
    [doc] = js(bootstrap, "group", "describe", group)
    return doc


def group_view_if_any(bootstrap: str, group: str) -> dict | None:
    """`group describe` as JSON, or None while the group does not exist yet."""
    r = spate(bootstrap, "group", "describe", group, "--format", "json")
    return json.loads(r.stdout)[0] if r.rc == 0 else None


# ----------------------------------------------------------------------------- no broker needed


def test_help_has_examples_and_completion_scripts_generate():
    assert "Examples:" in ok(None, "--help").stdout
    for noun_verb in (["topic", "create"], ["topic", "consume"], ["group", "seek"], ["tune", "check"]):
        assert "Examples:" in ok(None, *noun_verb, "--help").stdout, noun_verb
    assert "_spate" in ok(None, "completion", "bash").stdout
    assert "#compdef spate" in ok(None, "completion", "zsh").stdout
    assert "complete -c spate" in ok(None, "completion", "fish").stdout
    bad = spate(None, "topic", "consume", "t", "--offset", "sideways")
    assert bad.rc == 2 and "invalid offset" in bad.stderr, bad


def test_tune_check_reports_every_check(tmp_path):
    r = spate(None, "tune", "check", "--data-dir", str(tmp_path), "--format", "json")
    doc = json.loads(r.stdout)
    names = {c["check"] for c in doc["checks"]}
    assert names == {"memlock limit", "fs.aio-max-nr", "io_uring", "data dir filesystem",
                     "I/O scheduler", "CPU governor"}, doc
    failed = [c for c in doc["checks"] if c["status"] == "fail"]
    assert r.rc == (1 if failed else 0), (r, failed)
    # spated runs on this machine, so io_uring works here.
    assert next(c for c in doc["checks"] if c["check"] == "io_uring")["status"] == "ok", doc


def test_unreachable_broker_is_an_error():
    r = spate(f"127.0.0.1:{free_port()}", "topic", "list")
    assert r.rc == 1 and "no broker reachable" in r.stderr, r


# ----------------------------------------------------------------------------- cluster


def test_cluster_info(broker):
    doc = js(broker.bootstrap, "cluster", "info")
    assert [(b["node_id"], b["host"], b["port"]) for b in doc["brokers"]] == [(0, broker.host, broker.port)]
    assert doc["cluster_id"], doc
    assert doc["controller_id"] == 0, doc
    rows = table(ok(broker.bootstrap, "cluster", "info").stdout)
    assert ["0*", broker.host, str(broker.port), "-"] in rows, rows


def test_cluster_health(broker):
    doc = js(broker.bootstrap, "cluster", "health")
    assert doc["healthy"] is True and doc["nodes_down"] == [], doc
    assert doc["leaderless_partitions"] == [] and doc["under_replicated_partitions"] == [], doc


# ----------------------------------------------------------------------------- topic admin


def test_topic_create_list_describe_delete(broker):
    b = broker.bootstrap
    a, c = unique_topic("cli"), unique_topic("cli")
    create(b, a, c, partitions=3, extra=("-c", "retention.ms=3600000"))
    listed = {t["name"]: t for t in js(b, "topic", "list")}
    assert (listed[a]["partitions"], listed[a]["replicas"], listed[a]["internal"]) == (3, 1, False)
    assert listed[a]["id"] and listed[a]["id"] != listed[c]["id"]
    assert a in [r[0] for r in table(ok(b, "topic", "list").stdout)]

    # Kafka answers ListOffsets with NOT_LEADER for a moment after a create (the CLI then
    # shows no offsets): poll until the offsets are known.
    def described():
        [d] = js(b, "topic", "describe", a)
        offsets_known = all(p["log_start_offset"] == 0 and p["high_watermark"] == 0
                            for p in d["partitions"])
        return d if offsets_known else None
    d = wait_until(described, timeout=30, interval=0.5, what="offsets in topic describe")
    assert [p["partition"] for p in d["partitions"]] == [0, 1, 2], d
    assert all(p["leader"] == 0 and p["replicas"] == [0] and p["isr"] == [0] for p in d["partitions"]), d
    configs = {x["name"]: x for x in d["configs"]}
    assert configs["retention.ms"]["value"] == "3600000", configs["retention.ms"]
    assert configs["retention.ms"]["source"] == "DYNAMIC_TOPIC_CONFIG", configs["retention.ms"]
    assert configs["cleanup.policy"]["source"] == "DEFAULT_CONFIG", configs["cleanup.policy"]
    text = ok(b, "topic", "describe", a).stdout
    assert "SUMMARY" in text and "CONFIGS" in text and "HIGH-WATERMARK" in text, text

    r = ok(b, "topic", "delete", a, c)
    assert statuses(r.stdout) == {a: "OK", c: "OK"}, r.stdout
    wait_until(lambda: not {a, c} & {t["name"] for t in js(b, "topic", "list")},
               timeout=20, what="deleted topics gone from the list")


def test_create_prints_one_status_per_topic_and_fails_on_any_error(broker):
    b = broker.bootstrap
    old, new = unique_topic("cli"), unique_topic("cli")
    create(b, old)
    r = spate(b, "topic", "create", old, new)
    assert r.rc == 1, r
    st = statuses(r.stdout)
    assert st[new] == "OK", st
    assert st[old].startswith("TOPIC_ALREADY_EXISTS: "), st
    assert f"'{old}'" in st[old], st
    # The same as JSON: the Kafka error name, code and the broker's message per item.
    r = spate(b, "topic", "create", old, "--format", "json")
    assert r.rc == 1, r
    [item] = json.loads(r.stdout)
    assert (item["topic"], item["status"], item["error_code"]) == (old, "TOPIC_ALREADY_EXISTS", 36)


@pytest.mark.parametrize("config, message", [
    ("cleanup.policy=bogus",
     "Invalid value bogus for configuration cleanup.policy: String must be one of: compact, delete"),
    ("retention.ms=abc", "Invalid value abc for configuration retention.ms: Not a number of type LONG"),
    ("no.such.config=1", "Unknown topic config name: no.such.config"),
])
def test_bad_config_shows_the_brokers_error(broker, config, message):
    name = unique_topic("cli")
    r = spate(broker.bootstrap, "topic", "create", name, "-c", config)
    assert r.rc == 1, r
    assert statuses(r.stdout) == {name: f"INVALID_CONFIG: {message}"}, r.stdout
    dry = spate(broker.bootstrap, "topic", "create", name, "-c", config, "--dry-run", "--format", "json")
    assert dry.rc == 1 and json.loads(dry.stdout)[0]["message"] == message, dry


def test_dry_run_creates_nothing(broker):
    name = unique_topic("cli")
    r = ok(broker.bootstrap, "topic", "create", name, "-p", "2", "--dry-run")
    assert statuses(r.stdout)[name].startswith("OK"), r.stdout
    assert name not in {t["name"] for t in js(broker.bootstrap, "topic", "list")}


def test_alter_config_and_add_partitions(broker):
    b = broker.bootstrap
    name = unique_topic("cli")
    create(b, name, partitions=1)
    r = ok(b, "topic", "alter-config", name, "--set", "retention.ms=1000")
    assert statuses(r.stdout) == {name: "OK"}, r.stdout

    def retention():
        [d] = js(b, "topic", "describe", name)
        return {x["name"]: x["value"] for x in d["configs"]}["retention.ms"]

    wait_until(lambda: retention() == "1000", timeout=20, what="retention.ms altered")
    r = spate(b, "topic", "alter-config", name, "--set", "retention.ms=abc")
    assert r.rc == 1, r
    assert statuses(r.stdout)[name] == ("INVALID_CONFIG: Invalid value abc for configuration "
                                        "retention.ms: Not a number of type LONG"), r.stdout
    ok(b, "topic", "alter-config", name, "--delete", "retention.ms")
    wait_until(lambda: retention() == "604800000", timeout=20, what="retention.ms back to default")

    r = ok(b, "topic", "add-partitions", name, "-n", "2")
    assert statuses(r.stdout) == {name: "OK"}, r.stdout
    wait_until(lambda: len(js(b, "topic", "describe", name)[0]["partitions"]) == 3,
               timeout=20, what="3 partitions")


def test_unknown_topic_fails_naming_the_error(broker):
    b = broker.bootstrap
    missing = unique_topic("nope")
    for args, stdin in ((["topic", "produce", missing], b"x\n"),
                        (["topic", "consume", missing, "-n", "1"], None),
                        (["topic", "describe", missing], None)):
        r = spate(b, *args, stdin=stdin)
        assert r.rc == 1, (args, r)
        assert "UNKNOWN_TOPIC_OR_PARTITION" in r.stderr, (args, r)
    for verb in (["delete"], ["alter-config", "--set", "retention.ms=1"], ["add-partitions", "-n", "1"]):
        r = spate(b, "topic", verb[0], missing, *verb[1:])
        assert r.rc == 1, (verb, r)
        assert statuses(r.stdout)[missing].startswith("UNKNOWN_TOPIC_OR_PARTITION"), (verb, r.stdout)


# ----------------------------------------------------------------------------- produce / consume


def test_produce_a_file_and_consume_it_back_in_order(broker, tmp_path):
    b = broker.bootstrap
    name = unique_topic("cli")
    create(b, name, partitions=1)
    lines = [f"line-{i:05d} {'x' * (i % 50)}" for i in range(RECORDS)]
    src = tmp_path / "lines.txt"
    src.write_text("\n".join(lines) + "\n")
    r = ok(b, "topic", "produce", name, "--file", str(src))
    rows = table(r.stdout)
    assert rows[0] == ["PARTITION", "RECORDS", "FIRST-OFFSET", "LAST-OFFSET", "STATUS"], r.stdout
    assert rows[1:] == [["0", str(RECORDS), "0", str(RECORDS - 1), "OK"]], r.stdout

    got = ok(b, "topic", "consume", name, "-n", str(RECORDS)).stdout.splitlines()
    assert got == lines
    # -e stops at the end offsets seen at start; the count matches.
    assert len(ok(b, "topic", "consume", name, "--exit-at-end").stdout.splitlines()) == RECORDS
    [d] = js(b, "topic", "describe", name)
    assert d["partitions"][0]["high_watermark"] == RECORDS, d


def test_round_robin_over_partitions_keeps_order_per_partition(broker, tmp_path):
    b = broker.bootstrap
    name = unique_topic("cli")
    create(b, name, partitions=3)
    src = tmp_path / "n.txt"
    src.write_text("".join(f"{i}\n" for i in range(RECORDS)))
    doc = js(b, "topic", "produce", name, "--file", str(src), "--compression", "lz4")
    assert doc["records"] == RECORDS and doc["failed"] == 0, doc
    assert sorted(p["records"] for p in doc["partitions"]) == [3333, 3333, 3334], doc

    out = ok(b, "topic", "consume", name, "-n", str(RECORDS), "-f", "%p %o %v").stdout.splitlines()
    assert Counter(line.split()[2] for line in out) == Counter(str(i) for i in range(RECORDS))
    per_partition: dict[int, list[tuple[int, int]]] = {}
    for line in out:
        p, o, v = line.split()
        per_partition.setdefault(int(p), []).append((int(o), int(v)))
    for p, recs in per_partition.items():
        offsets = [o for o, _ in recs]
        assert offsets == list(range(len(recs))), f"partition {p}: offsets not consecutive"
        assert [v for _, v in recs] == sorted(v for _, v in recs), f"partition {p} out of order"


def test_keyed_records_go_where_kafkas_default_partitioner_puts_them(broker):
    b = broker.bootstrap
    name = unique_topic("cli")
    create(b, name, partitions=5)
    keys = [f"user-{i}" for i in range(200)]
    stdin = "".join(f"{k}:v{i}\n" for i, k in enumerate(keys)).encode()
    ok(b, "topic", "produce", name, "-k", ":", stdin=stdin)
    out = ok(b, "topic", "consume", name, "-n", "200", "-f", "%k %p %v").stdout.splitlines()
    assert len(out) == 200
    for line in out:
        k, p, _ = line.split()
        assert int(p) == (murmur2(k.encode()) & 0x7FFFFFFF) % 5, line


def test_headers_compression_template_and_json(broker):
    b = broker.bootstrap
    name = unique_topic("cli")
    create(b, name)
    ok(b, "topic", "produce", name, "-k", "=", "-H", "source=cli", "-H", "n=1", "--compression", "gzip",
       "--acks", "1", stdin=b"k1=hello world\nno separator here\n")
    out = ok(b, "topic", "consume", name, "-n", "2", "-f", "%k|%v|%o|%p|%t|%h").stdout
    assert out.splitlines() == [f"k1|hello world|0|0|{name}|source=cli,n=1",
                                f"|no separator here|1|0|{name}|source=cli,n=1"], out
    recs = [json.loads(line) for line in
            ok(b, "topic", "consume", name, "-n", "2", "--format", "json").stdout.splitlines()]
    assert [(r["key"], r["value"], r["offset"], r["partition"], r["topic"]) for r in recs] == [
        ("k1", "hello world", 0, 0, name), (None, "no separator here", 1, 0, name)], recs
    assert recs[0]["headers"] == [{"key": "source", "value": "cli"}, {"key": "n", "value": "1"}]
    assert recs[0]["timestamp"] > 1_600_000_000_000


def test_consume_start_offsets(broker):
    b = broker.bootstrap
    name = unique_topic("cli")
    create(b, name)
    ok(b, "topic", "produce", name, stdin=b"".join(b"%d\n" % i for i in range(10)))

    def consume(*args):
        return ok(b, "topic", "consume", name, "-e", *args).stdout.splitlines()

    assert consume("--offset", "start") == [str(i) for i in range(10)]
    assert consume("--offset", "end") == []
    assert consume("--offset", "7") == ["7", "8", "9"]
    assert consume("--offset", "-2") == ["8", "9"]
    assert consume("--offset", "@0") == [str(i) for i in range(10)]
    assert consume("--offset", "@-1h") == [str(i) for i in range(10)]
    assert consume("-n", "3", "--offset", "2") == ["2", "3", "4"]


# ----------------------------------------------------------------------------- groups


def test_group_consume_describe_lag_seek_delete(broker):
    b = broker.bootstrap
    name = unique_topic("cli")
    group = unique_topic("cli-group")
    create(b, name, partitions=2)
    ok(b, "topic", "produce", name, stdin=b"".join(b"%d\n" % i for i in range(100)))

    first = ok(b, "topic", "consume", name, "-g", group, "-n", "60").stdout.splitlines()
    assert len(first) == 60
    doc = group_view(b, group)
    assert doc["state"] == "Empty" and doc["members"] == [], doc
    parts = {p["partition"]: p for p in doc["partitions"] if p["topic"] == name}
    assert sum(p["committed_offset"] for p in parts.values()) == 60, doc
    assert all(p["log_end_offset"] == 50 for p in parts.values()), doc
    assert all(p["lag"] == 50 - p["committed_offset"] for p in parts.values()), doc
    assert doc["total_lag"] == 40, doc
    text = ok(b, "group", "describe", group).stdout
    assert "TOTAL-LAG" in text and "CURRENT-OFFSET" in text and "LOG-END-OFFSET" in text, text

    # The group resumes where it committed: the rest, with no record twice.
    rest = ok(b, "topic", "consume", name, "-g", group, "-e").stdout.splitlines()
    assert sorted(first + rest, key=int) == [str(i) for i in range(100)], (first, rest)
    assert group_view(b, group)["total_lag"] == 0
    listed = js(b, "group", "list")
    assert any(g["group"] == group and g["protocol_type"] == "consumer" for g in listed), listed

    r = ok(b, "group", "seek", group, "--to", "start")
    rows = table(r.stdout)
    assert rows[0] == ["TOPIC", "PARTITION", "PRIOR-OFFSET", "NEW-OFFSET", "STATUS"], r.stdout
    assert sorted(rows[1:]) == [[name, "0", "50", "0", "OK"], [name, "1", "50", "0", "OK"]], r.stdout
    assert group_view(b, group)["total_lag"] == 100
    seek = js(b, "group", "seek", group, "--to", "-10", "--topics", name)
    assert sorted(s["new_offset"] for s in seek) == [40, 40], seek
    assert group_view(b, group)["total_lag"] == 20

    r = ok(b, "group", "delete", group)
    assert statuses(r.stdout) == {group: "OK"}, r.stdout
    gone = spate(b, "group", "describe", group)
    assert gone.rc == 1 and "GROUP_ID_NOT_FOUND" in gone.stderr, gone
    r = spate(b, "group", "delete", group)
    assert r.rc == 1 and statuses(r.stdout)[group].startswith("GROUP_ID_NOT_FOUND"), r


def test_two_group_members_split_the_partitions(broker):
    """A follower member running while a second joins: range assignment, no record twice."""
    b = broker.bootstrap
    name = unique_topic("cli")
    group = unique_topic("cli-group")
    create(b, name, partitions=4)
    ok(b, "topic", "produce", name, stdin=b"".join(b"%d\n" % i for i in range(400)))
    env = {k: v for k, v in os.environ.items() if k != "SPATE_BROKERS"}
    cmd = [str(SPATE_CLI), "--brokers", b, "topic", "consume", name, "-g", group]
    one = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    two = None
    try:
        wait_until(lambda: (group_view_if_any(b, group) or {}).get("state") == "Stable",
                   timeout=30, what="one member")
        two = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

        def two_members():
            doc = group_view_if_any(b, group) or {}
            return doc.get("state") == "Stable" and len(doc["members"]) == 2 and doc

        doc = wait_until(two_members, timeout=60, what="two members")
        assignments = [sorted(p for ps in m["assignment"].values() for p in ps) for m in doc["members"]]
        assert sorted(assignments) == [[0, 1], [2, 3]], doc
        ok(b, "topic", "produce", name, stdin=b"".join(b"%d\n" % i for i in range(400, 500)))
        wait_until(lambda: group_view(b, group)["total_lag"] == 0, timeout=30, what="lag 0")
    finally:
        outs = []
        for p in (one, two):
            if p is not None:
                p.send_signal(signal.SIGINT)  # commit, leave the group, exit 0
                out, err = p.communicate(timeout=30)
                assert p.returncode == 0, err.decode(errors="replace")
                outs.append(out.decode().splitlines())
    got = outs[0] + outs[1]
    assert sorted(got, key=int) == [str(i) for i in range(500)], "a record missing or printed twice"
    assert group_view(b, group)["members"] == []
