#!/usr/bin/env python3
"""Consumer-group coordinator benchmark (a measurement, not a test).

Measures, over the raw Kafka protocol (broker/tests/system/groups_wire.py, one TCP connection
per member, so 100 members are cheap on a 2-core box):

  rebalance  N members (10 and 100 by default) join one empty group at once: time until every
             member has completed SyncGroup in one generation that has all N members (the
             MEMBER_ID_REQUIRED round trip and any extra rebalance rounds included). Then, with
             the group stable: one more member joins (N+1), and that member leaves again (N):
             time until all members are synced in the new generation. Members heartbeat every
             --heartbeat-ms, which bounds how fast they notice a rebalance (Kafka clients
             default to 3000 ms), so the join/leave figures include up to one heartbeat interval.
  commits    offset-commit throughput from one client connection: synchronous (one OffsetCommit
             v9 in flight, latency percentiles too) and pipelined (--window requests in flight),
             each request committing --commit-partitions partitions of one group.

Against a running broker:

    python3 perf/scripts/group_bench.py 127.0.0.1:9092

or let it start one with the system-test harness (spated from SPATE_BIN, or Apache Kafka 4.1.1
from SPATE_KAFKA_LIB; Kafka then gets log.flush.interval.messages=1 so a commit is fsynced
before it is acknowledged, as spated does, unless --kafka-page-cache):

    SPATE_KAFKA_LIB=target/kafka-jars/lib python3 perf/scripts/group_bench.py --start kafka
    SPATE_BIN=target/release/spated python3 perf/scripts/group_bench.py --start spate

Prints a table, then one JSON object on the last line. The broker and this client share the
machine's cores: read the numbers as a first signal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "broker/tests/system"))

import groups_wire as gw  # noqa: E402
from groups_wire import GroupConn, consumer_assignment  # noqa: E402


# ---------------------------------------------------------------------------- rebalance


class Group:
    """Bookkeeping shared by the members of one benchmark group."""

    def __init__(self, name: str, topic: str, partitions: int, args):
        self.name, self.topic, self.partitions, self.args = name, topic, partitions, args
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.size_of_gen: dict[int, int] = {}  # generation -> member count (seen by the leader)
        self.synced: dict[int, dict[int, float]] = {}  # generation -> {member idx: time}
        self.errors: list[str] = []

    def record_leader(self, gen: int, n: int) -> None:
        with self.lock:
            self.size_of_gen[gen] = n
            self.changed.notify_all()

    def record_sync(self, gen: int, idx: int) -> None:
        with self.lock:
            self.synced.setdefault(gen, {})[idx] = time.monotonic()
            self.changed.notify_all()

    def error(self, msg: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(msg)

    def wait_complete(self, n: int, after_gen: int, timeout: float) -> tuple[int, float]:
        """Wait for a generation > after_gen with n members, all synced -> (gen, last sync time)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                for gen in sorted(self.synced):
                    if gen > after_gen and self.size_of_gen.get(gen) == n and len(self.synced[gen]) == n:
                        return gen, max(self.synced[gen].values())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"group {self.name}: no complete generation of {n} members "
                                       f"after {timeout}s (sizes {self.size_of_gen}, synced "
                                       f"{ {g: len(s) for g, s in self.synced.items()} }, errors {self.errors[:3]})")
                self.changed.wait(min(left, 0.5))


class Member(threading.Thread):
    def __init__(self, group: Group, idx: int, host: str, port: int, start: threading.Event):
        super().__init__(daemon=True, name=f"member-{idx}")
        self.g, self.idx, self.start_evt = group, idx, start
        self.conn = GroupConn(host, port, timeout=120, client_id=f"bench-{idx}")
        self.member_id = ""
        self.stop_evt = threading.Event()
        self.left = threading.Event()

    def run(self) -> None:
        g, a = self.g, self.g.args
        self.start_evt.wait()
        sub = gw.consumer_subscription([g.topic])
        try:
            while not self.stop_evt.is_set():
                r = self.conn.join(g.name, protocols=[("range", sub)], member_id=self.member_id,
                                   session_timeout_ms=a.session_timeout_ms,
                                   rebalance_timeout_ms=a.rebalance_timeout_ms)
                if r.error_code == gw.ERR_MEMBER_ID_REQUIRED:
                    self.member_id = r.member_id
                    continue
                if r.error_code != 0:
                    g.error(f"{self.name} JoinGroup: {gw.err_name(r.error_code)}")
                    if r.error_code == gw.ERR_UNKNOWN_MEMBER_ID:
                        self.member_id = ""
                    time.sleep(0.1)
                    continue
                self.member_id, gen = r.member_id, r.generation_id
                assignments = {}
                if r.leader == self.member_id:
                    members = sorted(m.member_id for m in r.members)
                    per: dict[str, list[int]] = {m: [] for m in members}
                    for q in range(g.partitions):
                        per[members[q % len(members)]].append(q)
                    assignments = {m: consumer_assignment({g.topic: qs}) for m, qs in per.items()}
                    g.record_leader(gen, len(members))
                s = self.conn.sync(g.name, gen, self.member_id, assignments)
                if s.error_code == gw.ERR_REBALANCE_IN_PROGRESS:
                    continue
                if s.error_code != 0:
                    g.error(f"{self.name} SyncGroup gen {gen}: {gw.err_name(s.error_code)}")
                    continue
                g.record_sync(gen, self.idx)
                while not self.stop_evt.wait(a.heartbeat_ms / 1000):
                    h = self.conn.heartbeat(g.name, gen, self.member_id)
                    if h.error_code == 0:
                        continue
                    if h.error_code != gw.ERR_REBALANCE_IN_PROGRESS:
                        g.error(f"{self.name} Heartbeat gen {gen}: {gw.err_name(h.error_code)}")
                    break
            if self.member_id:
                self.conn.leave(g.name, self.member_id)
        except (OSError, ValueError) as e:
            g.error(f"{self.name}: {e!r}")
        finally:
            self.left.set()
            self.conn.close()

    def stop(self) -> None:
        self.stop_evt.set()


def bench_rebalance(host: str, port: int, topic: str, partitions: int, n: int, args) -> dict:
    g = Group(f"bench-{n}-{uuid.uuid4().hex[:8]}", topic, partitions, args)
    go = threading.Event()
    members = [Member(g, i, host, port, go) for i in range(n)]  # connect first
    for m in members:
        m.start()
    t0 = time.monotonic()
    go.set()
    gen, t_done = g.wait_complete(n, 0, args.timeout)
    out = {"members": n, "initial_join_ms": (t_done - t0) * 1000, "initial_generation": gen}

    # one more member joins the stable group
    extra_go = threading.Event()
    extra = Member(g, n, host, port, extra_go)
    extra.start()
    t0 = time.monotonic()
    extra_go.set()
    gen2, t_done = g.wait_complete(n + 1, gen, args.timeout)
    out["member_join_ms"] = (t_done - t0) * 1000

    # ... and leaves again
    t0 = time.monotonic()
    extra.stop()
    gen3, t_done = g.wait_complete(n, gen2, args.timeout)
    out["member_leave_ms"] = (t_done - t0) * 1000
    out["generations"] = gen3

    for m in members:
        m.stop()
    for m in members + [extra]:
        m.left.wait(30)
    out["errors"] = len(g.errors)
    if g.errors:
        print(f"  ({len(g.errors)} member errors, first: {g.errors[:3]})", flush=True)
    return out


# ---------------------------------------------------------------------------- commits


def bench_commits(host: str, port: int, topic: str, partitions: int, args) -> dict:
    group = f"bench-commit-{uuid.uuid4().hex[:8]}"
    parts = list(range(min(args.commit_partitions, partitions)))
    out = {}
    with GroupConn(host, port, timeout=60) as c:
        def body(i: int) -> dict:
            return gw.commit_body(group, {(topic, q): i for q in parts})

        def check(r) -> None:
            errs = {p.error_code for t in r.topics for p in t.partitions}
            if errs != {0}:
                raise RuntimeError(f"OffsetCommit errors {sorted(map(gw.err_name, errs))}")

        # warm up (creates the group)
        for i in range(20):
            check(c.call("OffsetCommit", 9, body(i)))

        lat = []
        t0 = time.monotonic()
        i = 0
        while time.monotonic() - t0 < args.seconds:
            s = time.monotonic()
            check(c.call("OffsetCommit", 9, body(i)))
            lat.append(time.monotonic() - s)
            i += 1
        elapsed = time.monotonic() - t0
        lat.sort()
        q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000  # noqa: E731
        out["sync_commits_s"] = len(lat) / elapsed
        out["sync_p50_ms"], out["sync_p99_ms"], out["sync_max_ms"] = q(0.5), q(0.99), lat[-1] * 1000

        w = args.window
        sent = done = 0
        t0 = time.monotonic()
        c.send_many([("OffsetCommit", 9, body(k)) for k in range(w)])
        sent = w
        while True:
            check(c.recv())
            done += 1
            if time.monotonic() - t0 < args.seconds:
                c.send("OffsetCommit", 9, body(sent))
                sent += 1
            elif done == sent:
                break
        elapsed = time.monotonic() - t0
        out["pipelined_commits_s"] = done / elapsed
        out["window"] = w

        err, got = c.fetch_offsets(group, {topic: parts})
        last = {k: v[0] for k, v in got.items()}
        if err or set(last.values()) != {sent - 1}:
            raise RuntimeError(f"last commit not visible: {err} {last} (expected {sent - 1})")
    out["partitions_per_commit"] = len(parts)
    return out


# ---------------------------------------------------------------------------- main


def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from confluent_kafka.admin import NewTopic

    from clients import confluent_admin, create

    create(confluent_admin(bootstrap), [NewTopic(name, partitions, 1)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bootstrap", nargs="?", help="HOST:PORT of a running broker")
    ap.add_argument("--start", choices=["spate", "kafka"], help="start a broker with the test harness")
    ap.add_argument("--kafka-page-cache", action="store_true",
                    help="with --start kafka: do not fsync each commit (Kafka's default; NOT "
                         "equal durability)")
    ap.add_argument("--members", default="10,100", help="group sizes, comma-separated")
    ap.add_argument("--partitions", type=int, default=120, help="partitions of the bench topic")
    ap.add_argument("--heartbeat-ms", type=int, default=300)
    ap.add_argument("--session-timeout-ms", type=int, default=30000)
    ap.add_argument("--rebalance-timeout-ms", type=int, default=60000)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each commit phase")
    ap.add_argument("--window", type=int, default=64, help="pipelined commits in flight")
    ap.add_argument("--commit-partitions", type=int, default=1, help="partitions per OffsetCommit")
    ap.add_argument("--timeout", type=float, default=120.0, help="max wait for one rebalance")
    args = ap.parse_args()
    if bool(args.bootstrap) == bool(args.start):
        ap.error("give either a bootstrap HOST:PORT or --start spate|kafka")

    broker = None
    if args.start:
        from spate_harness import Broker

        broker = Broker(name="group-bench", target=args.start)
        if args.start == "kafka" and not args.kafka_page_cache:
            with open(broker.work_dir / "server.properties", "a") as f:
                f.write("log.flush.interval.messages=1\n")
        broker.start()
        args.bootstrap = broker.bootstrap
    host, port = args.bootstrap.rsplit(":", 1)
    port = int(port)
    try:
        gw.wait_coordinator_ready(host, port)
        topic = f"group-bench-{uuid.uuid4().hex[:8]}"
        create_topic(args.bootstrap, topic, args.partitions)

        rows = []
        for n in (int(x) for x in args.members.split(",") if x):
            print(f"rebalance: {n} members ...", flush=True)
            rows.append(bench_rebalance(host, port, topic, args.partitions, n, args))
        print("commits ...", flush=True)
        commits = bench_commits(host, port, topic, args.partitions, args)
    finally:
        if broker is not None:
            broker.stop()
            broker.cleanup()

    target = args.start or "external"
    print()
    print(f"group coordinator benchmark: {target} at {args.bootstrap}, heartbeat {args.heartbeat_ms} ms")
    print(f"{'members':>8} {'initial join (ms)':>18} {'gens':>5} {'+1 join (ms)':>13} {'-1 leave (ms)':>14} {'errors':>7}")
    for r in rows:
        print(f"{r['members']:>8} {r['initial_join_ms']:>18.1f} {r['initial_generation']:>5} "
              f"{r['member_join_ms']:>13.1f} {r['member_leave_ms']:>14.1f} {r['errors']:>7}")
    print()
    print(f"{'offset commits, 1 connection':<34} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'synchronous (1 in flight)':<34} {commits['sync_commits_s']:>10.0f} "
          f"{commits['sync_p50_ms']:>8.2f} {commits['sync_p99_ms']:>8.2f} {commits['sync_max_ms']:>8.2f}")
    print(f"{'pipelined (' + str(commits['window']) + ' in flight)':<34} {commits['pipelined_commits_s']:>10.0f}")
    print(json.dumps({
        "target": target,
        "kafka_fsync_per_commit": (not args.kafka_page_cache) if args.start == "kafka" else None,
        "heartbeat_ms": args.heartbeat_ms,
        "rebalance": {str(r["members"]): {k: (round(v, 1) if isinstance(v, float) else v)
                                          for k, v in r.items() if k != "members"} for r in rows},
        "commits": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in commits.items()},
    }))


if __name__ == "__main__":
    main()
