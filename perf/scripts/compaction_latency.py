#!/usr/bin/env python3
"""Does compaction move produce latency? (a measurement, not a test)

Starts spated (retention/compaction pass every second), fills a `cleanup.policy=compact`
topic with --mib of keyed records (--keys distinct keys, small segments, so most of it is
superseded) while `min.compaction.lag.ms` holds the cleaner back, then measures acks=all
produce round trips of 1 KiB records to another topic on one connection, pipelined one at a
time, for --seconds:

1. quiet: nothing else runs;
2. compacting: `min.compaction.lag.ms` set to 0, the next pass rewrites the topic — the
   phase starts when spate_compaction_runs_total moves... and is measured while it runs.

Compaction runs on a low-share task queue (50 shares vs 1000) and yields after every batch;
the claim to check is that produce p50/p99/p99.9 do not move.

    cargo build --release -p spate-broker --bin spated
    SPATE_BIN=$PWD/target/release/spated python3 perf/scripts/compaction_latency.py

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("SPATE_TEST_WORK", str(REPO / "target" / "compaction-latency"))
sys.path.insert(0, str(REPO / "broker" / "tests" / "system"))

import kafka_wire as kw  # noqa: E402
import spate_harness as h  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def metric(broker, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{broker.admin_port}/metrics",
                                  timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def probe(broker, topic: str, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """Sequential acks=all produces of one 1 KiB record; round trips in ms."""
    value = b"x" * 1024
    lat = []
    with kw.connect(broker.host, broker.port, timeout=15) as s:
        end = time.monotonic() + seconds
        cid = 0
        while time.monotonic() < end and not (stop and stop.is_set()):
            cid += 1
            batch = kw.encode_record_batch([kw.Record(None, value)], int(time.time() * 1000))
            req = kw.produce_v3_request(cid, {topic: {0: batch}}, -1)
            t = time.perf_counter()
            s.sendall(req)
            payload = kw.recv_frame(s)
            lat.append((time.perf_counter() - t) * 1000)
            _, res = kw.parse_produce_v3_response(payload)
            if res[(topic, 0)].error_code != 0:
                raise RuntimeError(f"produce error {res[(topic, 0)].error_code}")
    return lat


def summary(name, lat, extra=""):
    return {"phase": name, "produces": len(lat), "p50_ms": round(pct(lat, 50), 3),
            "p99_ms": round(pct(lat, 99), 3), "p999_ms": round(pct(lat, 99.9), 3),
            "max_ms": round(max(lat), 3), "note": extra}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--cleaner-io-mib", type=int, default=None,
                    help="log_cleaner_io_max_bytes_per_second in MiB/s (0: no limit; "
                         "default: the broker's)")
    args = ap.parse_args()

    class Spated(h.Broker):
        def _command(self):
            cmd = super()._command()
            if args.cleaner_io_mib is not None:
                conf = self.work_dir / "spated.toml"
                conf.write_text("log_cleaner_io_max_bytes_per_second = "
                                f"{args.cleaner_io_mib << 20}\n")
                cmd += ["--config", str(conf)]
            return cmd

    broker = Spated(name="complat", target="spate", smp=1, retention_check_ms=1000)
    rows = []
    try:
        broker.start()
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        compacted, probe_topic = "compacted", "probe"
        fs = admin.create_topics([
            NewTopic(compacted, 1, 1, config={"cleanup.policy": "compact",
                                              "segment.bytes": str(16 << 20),
                                              "min.compaction.lag.ms": str(3600_000)}),
            NewTopic(probe_topic, 1, 1)])
        for f in fs.values():
            f.result(60)
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20,
                      "batch.size": 1 << 20, "compression.type": "none", "acks": "all"})
        value = os.urandom(1024)
        n = args.mib * 1024
        t0 = time.monotonic()
        for i in range(n):
            while True:
                try:
                    p.produce(compacted, key=f"key-{i % args.keys}".encode(), value=value)
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 10000 == 0:
                p.poll(0)
        p.flush(300)
        print(f"wrote {args.mib} MiB ({n} records, {args.keys} keys) in "
              f"{time.monotonic() - t0:.1f} s", file=sys.stderr)
        time.sleep(2)  # let the last rolls and flushes settle

        stalls0 = metric(broker, "spate_reactor_stalls_total")
        quiet = probe(broker, probe_topic, args.seconds)
        stalls1 = metric(broker, "spate_reactor_stalls_total")
        rows.append(summary("quiet", quiet, f"{stalls1 - stalls0:.0f} reactor stalls > 25 ms"))

        runs0 = metric(broker, "spate_compaction_runs_total")
        secs0 = metric(broker, "spate_compaction_seconds_sum")
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ResourceType
        res = ConfigResource(ResourceType.TOPIC, compacted, incremental_configs=[
            ConfigEntry("min.compaction.lag.ms", "0",
                        incremental_operation=AlterConfigOpType.SET)])
        for f in admin.incremental_alter_configs([res]).values():
            f.result(30)
        t_alter = time.monotonic()
        during = probe(broker, probe_topic, args.seconds)
        runs1 = metric(broker, "spate_compaction_runs_total")
        secs1 = metric(broker, "spate_compaction_seconds_sum")
        removed = metric(broker, "spate_compaction_removed_bytes_total")
        stalls2 = metric(broker, "spate_reactor_stalls_total")
        note = (f"{runs1 - runs0:.0f} compaction run(s), {secs1 - secs0:.1f} s compacting, "
                f"{removed / 2**20:.0f} MiB removed; {stalls2 - stalls1:.0f} reactor stalls "
                "> 25 ms")
        rows.append(summary("compacting", during, note))
        if runs1 == runs0 or secs1 - secs0 < 1:
            print("warning: compaction did not overlap the measurement much: " + note,
                  file=sys.stderr)
        del t_alter
    finally:
        broker.stop(expect_clean=False) if broker.alive() else None
        broker.cleanup()
    print("| phase | produces | p50 ms | p99 ms | p99.9 ms | max ms | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r['produces']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['p999_ms']} | {r['max_ms']} | {r['note']} |")
    print(json.dumps({"compaction_latency": rows}))


if __name__ == "__main__":
    main()
