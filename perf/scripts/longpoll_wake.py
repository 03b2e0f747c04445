#!/usr/bin/env python3
"""Produce-to-wake-up latency of a long-polling fetch (a measurement, not a test).

A raw Fetch v4 (max_wait 5 s, min_bytes 1) parks on an empty partition; a raw Produce v3
(acks=1) then writes one 1 KiB record. Measured: from sending the produce to receiving the
fetch's response (the broker must wake the parked fetch when the record becomes visible:
after its fsync on spated, after the append on Kafka — whose acks=1 does not fsync unless
flush.messages=1, which --start kafka sets for equal durability), and the produce's own
round trip. Percentiles over --rounds.

    SPATE_BIN=target/release/spated python3 perf/scripts/longpoll_wake.py --start spate
    SPATE_KAFKA_LIB=target/kafka-jars/lib python3 perf/scripts/longpoll_wake.py --start kafka

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

SYSTEM = Path(__file__).resolve().parents[2] / "broker" / "tests" / "system"
sys.path.insert(0, str(SYSTEM))

import kafka_wire as kw  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bootstrap", nargs="?", default="127.0.0.1:9092")
    ap.add_argument("--start", choices=["spate", "kafka"])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    broker = None
    if args.start:
        import spate_harness as h
        broker = h.Broker(name="longpoll", target=args.start)
        if args.start == "kafka":
            props = broker.work_dir / "server.properties"
            props.write_text(props.read_text() + "log.flush.interval.messages=1\n")
        broker.start()
        host, port = broker.host, broker.port
    else:
        host, port = args.bootstrap.rsplit(":", 1)
        port = int(port)
    try:
        from confluent_kafka.admin import AdminClient, NewTopic
        topic = f"longpoll-{os.getpid()}"
        admin = AdminClient({"bootstrap.servers": f"{host}:{port}"})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        value = b"x" * 1024
        offset = 0
        # Warm up (Kafka may answer NOT_LEADER right after the create).
        deadline = time.time() + 30
        while True:
            r = kw.produce_v3(host, port, {topic: {0: kw.encode_record_batch(
                [kw.Record(None, value)], int(time.time() * 1000))}}, acks=1)[(topic, 0)]
            if r.error_code == 0:
                offset = r.base_offset + 1
                break
            assert time.time() < deadline, r
            time.sleep(0.2)
        wakes, produces = [], []
        with kw.connect(host, port, timeout=15) as fs, kw.connect(host, port, timeout=15) as ps:
            for i in range(args.rounds):
                fs.sendall(kw.fetch_v4_request(100 + i, {topic: [(0, offset)]}, max_wait_ms=5000))
                time.sleep(0.02)  # let the fetch park
                got = {}

                def wait_fetch():
                    got["payload"] = kw.recv_frame(fs)
                    got["t"] = time.perf_counter()

                t = threading.Thread(target=wait_fetch)
                t.start()
                batch = kw.encode_record_batch([kw.Record(None, value)], int(time.time() * 1000))
                sent = time.perf_counter()
                ps.sendall(kw.produce_v3_request(200 + i, {topic: {0: batch}}, acks=1))
                kw.recv_frame(ps)
                acked = time.perf_counter()
                t.join(10)
                assert "t" in got, "the parked fetch was not woken"
                _, parts = kw.parse_fetch_v4_response(got["payload"])
                assert parts[(topic, 0)].records, "woken without the record"
                wakes.append((got["t"] - sent) * 1000)
                produces.append((acked - sent) * 1000)
                offset += 1
        rows = {"wake_ms": wakes, "produce_ack_ms": produces}
        print(f"{'':16}{'p50':>8}{'p99':>8}{'max':>8}  (ms, {args.rounds} rounds)")
        for name, xs in rows.items():
            print(f"{name:16}{pct(xs, 50):8.2f}{pct(xs, 99):8.2f}{max(xs):8.2f}")
        print(json.dumps({"target": args.start or args.bootstrap,
                          "wake_p50_ms": round(pct(wakes, 50), 3),
                          "wake_p99_ms": round(pct(wakes, 99), 3),
                          "produce_p50_ms": round(pct(produces, 50), 3),
                          "produce_p99_ms": round(pct(produces, 99), 3),
                          "mean_wake_ms": round(statistics.mean(wakes), 3)}))
    finally:
        if broker is not None:
            broker.stop()
            broker.cleanup()


if __name__ == "__main__":
    main()
