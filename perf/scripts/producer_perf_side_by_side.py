#!/usr/bin/env python3
"""A stopgap side-by-side produce benchmark until perf/'s own runner exists.

Starts spated (release build) and Apache Kafka 4.1.1 (KRaft, the test harness's Maven jars) in
turn on this machine, with equal durability — Kafka's topic gets flush.messages=1 (fsync
before the acknowledgement), as spated always does — and runs Apache Kafka's own
ProducerPerformance against each, alternating, N rounds. Prints each run's summary line and,
last, one JSON object with medians.

    SPATE_BIN=target/release/spated SPATE_KAFKA_LIB=target/kafka-jars/lib \\
      python3 perf/scripts/producer_perf_side_by_side.py --records 200000 --rounds 2

Brokers and the client share the machine's cores (no taskset pinning yet).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "broker/tests/system"))

from spate_harness import Broker, java_command, kafka_tool  # noqa: E402

SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th")


def run_one(target: str, args) -> dict:
    b = Broker(name=f"perf-{target}", target=target, smp=args.smp)
    try:
        b.start()
        topic = "perf"
        create = ["--bootstrap-server", b.bootstrap, "--create", "--topic", topic,
                  "--partitions", str(args.partitions), "--replication-factor", "1"]
        if target == "kafka" and not args.kafka_page_cache:
            create += ["--config", "flush.messages=1"]
        r = kafka_tool("kafka-topics", *create)
        assert r.rc == 0, r
        cmd = java_command(
            "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
            "--num-records", str(args.records), "--record-size", str(args.record_size),
            "--throughput", "-1", "--producer-props", f"bootstrap.servers={b.bootstrap}",
            "acks=all", "linger.ms=5", "batch.size=131072", "compression.type=none",
            heap="1g")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        lines = [line for line in out.stdout.splitlines() if SUMMARY.search(line)]
        if not lines:
            raise RuntimeError(f"{target}: no summary\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        m = SUMMARY.search(lines[-1])
        print(f"{target}: {lines[-1].strip()}", flush=True)
        return {"rec_s": float(m[2]), "mb_s": float(m[3]), "p50": int(m[6]), "p99": int(m[8]),
                "p999": int(m[9])}
    finally:
        b.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--smp", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--kafka-page-cache", action="store_true",
                    help="leave Kafka at its default (acknowledge from the page cache, no fsync): "
                         "NOT equal durability, for context only")
    args = ap.parse_args()
    runs = {"spate": [], "kafka": []}
    for _ in range(args.rounds):
        for target in ("spate", "kafka"):
            runs[target].append(run_one(target, args))
    med = {t: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for t, rs in runs.items()}
    print(json.dumps({
        "spate_mb_s": med["spate"]["mb_s"], "kafka_mb_s": med["kafka"]["mb_s"],
        "throughput_ratio": med["spate"]["mb_s"] / med["kafka"]["mb_s"],
        "spate_p99_ms": med["spate"]["p99"], "kafka_p99_ms": med["kafka"]["p99"],
        "spate_p999_ms": med["spate"]["p999"], "kafka_p999_ms": med["kafka"]["p999"],
        "records": args.records, "record_size": args.record_size,
        "partitions": args.partitions, "rounds": args.rounds,
        "kafka_fsync_before_ack": not args.kafka_page_cache,
    }))


if __name__ == "__main__":
    main()
