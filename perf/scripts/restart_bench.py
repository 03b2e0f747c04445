#!/usr/bin/env python3
"""Restart time of spated with many partitions (a measurement, not a test).

Creates --topics × --partitions-per-topic partitions (10 × 1,000 = 10,000 by default) on a
spated started with its data dir under target/ (a real disk: O_DIRECT), writes --batches
batches of --records records to every partition (acks=all: fsynced), then:

1. clean restart: SIGTERM (every log closed, segment checkpoints written), start again;
2. crash restart: one more batch per partition, kill -9, start again (the tails after the
   last checkpoints are scanned).

The restart time is from spawning the process to the broker answering ApiVersions and
Metadata (the harness's readiness check, polled every 100 ms), plus what each shard logged
for opening its partitions. After each restart every partition's high watermark is checked
(ListOffsets latest) against what was acknowledged.

    cargo build --release -p spate-broker --bin spated
    SPATE_BIN=target/release/spated python3 perf/scripts/restart_bench.py

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

SYSTEM = Path(__file__).resolve().parents[2] / "broker" / "tests" / "system"
sys.path.insert(0, str(SYSTEM))

os.environ.setdefault("SPATE_TEST_WORK", str(Path(__file__).resolve().parents[2]
                                             / "target" / "restart-bench"))

import kafka_wire as kw  # noqa: E402
import spate_harness as h  # noqa: E402


def create_topics(broker, prefix, n, parts):
    """Creates topics `{prefix}0..{prefix}{n-1}` of `parts` partitions each; returns their names."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topics = [f"{prefix}{i}" for i in range(n)]
    fs = admin.create_topics([NewTopic(t, parts, 1) for t in topics], request_timeout=120)
    for f in fs.values():
        f.result(180)
    return topics


def produce_all(broker, topics, parts, records, per_request=1000):
    """One batch of `records` 100-byte records per partition, acks=all; returns {(t, p): hw}."""
    ts = int(time.time() * 1000)
    batch = kw.encode_record_batch([kw.Record(None, b"v" * 100) for _ in range(records)], ts)
    ends = {}
    for t in topics:
        for lo in range(0, parts, per_request):
            req = {t: {p: batch for p in range(lo, min(parts, lo + per_request))}}
            out = kw.produce_v3(broker.host, broker.port, req, acks=-1, timeout=60)
            for (tp, p), r in out.items():
                if r.error_code != 0:
                    raise RuntimeError(f"produce to {tp}/{p}: error {r.error_code}")
                ends[(tp, p)] = r.base_offset + records
    return ends


def check_ends(broker, topics, parts, expected):
    bad = 0
    for t in topics:
        got = kw.list_offsets_v1(broker.host, broker.port, {t: [(p, -1) for p in range(parts)]},
                                 timeout=60)
        for p in range(parts):
            err, _, off = got[(t, p)]
            if err != 0 or off != expected[(t, p)]:
                if bad < 5:
                    print(f"{t}/{p}: error {err}, high watermark {off}, acknowledged end "
                          f"{expected[(t, p)]}", file=sys.stderr)
                bad += 1
    return bad


def shard_open_seconds(log_path: Path, start_no: int) -> float | None:
    """Seconds between the start marker's first log line and the last 'partitions open'."""
    text = log_path.read_text(errors="replace")
    part = text.split(f"===== start #{start_no} =====")[-1]
    stamps = re.findall(r"^(\S+Z)\s.*?(metadata recovered|partitions open)", part, re.M)
    if not stamps:
        return None
    from datetime import datetime

    def parse(s):
        return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    first = parse(stamps[0][0])
    last = max(parse(s) for s, what in stamps if what == "partitions open")  # noqa
    return last - first


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--partitions-per-topic", type=int, default=1000)
    ap.add_argument("--records", type=int, default=10)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--smp", type=int, default=2)
    args = ap.parse_args()
    broker = h.Broker(name="restart", target="spate", smp=args.smp)
    rows = []
    ok = False
    try:
        broker.start()
        topics = create_topics(broker, "rb", args.topics, args.partitions_per_topic)
        n = args.topics * args.partitions_per_topic
        t0 = time.monotonic()
        for _ in range(args.batches):
            ends = produce_all(broker, topics, args.partitions_per_topic, args.records)
        print(f"wrote {args.batches} batches to each of {n} partitions in "
              f"{time.monotonic() - t0:.1f} s", file=sys.stderr)

        for kind in ("clean", "crash"):
            if kind == "clean":
                t_stop = time.monotonic()
                broker.stop(timeout=120)
                print(f"clean shutdown (SIGTERM to exit) took {time.monotonic() - t_stop:.2f} s",
                      file=sys.stderr)
            else:
                ends = produce_all(broker, topics, args.partitions_per_topic, args.records)
                broker.kill()
            t0 = time.monotonic()
            broker.start(timeout=300)
            ready = time.monotonic() - t0
            opened = shard_open_seconds(broker.log_path, broker.starts)
            # How the time splits: opening (recovery, Raft index) and the elections after.
            for line in broker.log_path.read_text(errors="replace").split(f"start #{broker.starts}")[-1].splitlines():
                if "then led" in line:
                    m = re.search(r"open_s=([0-9.]+) elected_s=([0-9.]+)", line)
                    if m:
                        print(f"{kind}: opened in {float(m[1]):.2f} s, "
                              f"led {float(m[2]):.2f} s later", file=sys.stderr)
            bad = check_ends(broker, topics, args.partitions_per_topic, ends)
            rows.append({"restart": kind, "partitions": n, "ready_s": round(ready, 2),
                         "open_s": None if opened is None else round(opened, 2),
                         "wrong_high_watermarks": bad})
        ok = not any(r["wrong_high_watermarks"] for r in rows)
    finally:
        broker.stop(expect_clean=False) if broker.alive() else None
        broker.cleanup(keep=not ok)
        if not ok:
            print(f"kept {broker.work_dir}", file=sys.stderr)
    print("| restart | partitions | ready (s) | shards opened partitions (s) | wrong HW |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['restart']} | {r['partitions']} | {r['ready_s']} | {r['open_s']} | "
              f"{r['wrong_high_watermarks']} |")
    print(json.dumps({"restart": rows}))
    if any(r["wrong_high_watermarks"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
