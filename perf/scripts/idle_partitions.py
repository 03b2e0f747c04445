#!/usr/bin/env python3
"""CPU of a broker whose partitions are idle: every partition is a Raft group (a measurement,
not a test).

Starts spated with --smp 1 (so all groups are on one shard) and its data dir under target/,
creates --topics x --partitions-per-topic partitions (10 x 1,000 = 10,000 by default), writes
one acks=all batch to each (every group has committed something since its election), waits
--settle seconds (idle groups stop ticking: quiescence), then samples the broker process's CPU
time (utime + stime from /proc) over --seconds and reports it as % of one core, with the
Raft gauges of /metrics (groups, groups still ticking). Nothing talks to the broker while it
is measured.

    cargo build --release -p spate-broker --bin spated
    SPATE_BIN=target/release/spated python3 perf/scripts/idle_partitions.py

The raft crate's own figure for the driver alone (two nodes, in-memory store, heartbeat
bytes between them): `cargo run --release -p spate-raft --example idle_groups`.

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

SYSTEM = Path(__file__).resolve().parents[2] / "broker" / "tests" / "system"
sys.path.insert(0, str(SYSTEM))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("SPATE_TEST_WORK", str(Path(__file__).resolve().parents[2]
                                             / "target" / "idle-bench"))

import spate_harness as h  # noqa: E402
from restart_bench import create_topics, produce_all  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def gauge(broker, name: str) -> float:
    url = f"http://{h.HOST}:{broker.admin_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--partitions-per-topic", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    broker = h.Broker(name="idle", target="spate", smp=1)
    try:
        broker.start()
        topics = create_topics(broker, "idle", args.topics, args.partitions_per_topic)
        produce_all(broker, topics, args.partitions_per_topic, 1)
        time.sleep(args.settle)
        pid = broker.proc.pid
        groups, ticking = gauge(broker, "spate_raft_groups"), gauge(broker,
                                                                   "spate_raft_groups_ticking")
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.seconds)
        c1, t1 = cpu_seconds(pid), time.monotonic()
        ticking_after = gauge(broker, "spate_raft_groups_ticking")
        pct = 100.0 * (c1 - c0) / (t1 - t0)
    finally:
        broker.stop(expect_clean=False) if broker.alive() else None
        broker.cleanup()
    n = args.topics * args.partitions_per_topic
    print("| partitions (Raft groups) on one shard | groups ticking (before / after) | "
          "broker CPU, % of one core |")
    print("|---|---|---|")
    print(f"| {n} ({groups:.0f}) | {ticking:.0f} / {ticking_after:.0f} | {pct:.2f} |")
    print(json.dumps({"partitions": n, "raft_groups": groups, "ticking": ticking_after,
                      "seconds": args.seconds, "cpu_pct_of_core": round(pct, 3)}))


if __name__ == "__main__":
    main()
