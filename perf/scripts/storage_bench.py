#!/usr/bin/env python3
"""The storage issue's figures in one run: the raw io_uring probe and the partition-log
benchmark on the same disk, one after the other, and their ratios (a measurement, not a test).

    cargo build --release -p spate-perf -p spate-storage --example log_bench
    python3 perf/scripts/storage_bench.py [--dir target/storage-bench] [--seconds 5]

Runs `spate-perf probe` (O_DIRECT sequential write, 4 KiB write + fdatasync) then
`log_bench` (appender throughput, fsynced small appends with 1 and 100 partitions, 10,000
partitions: memory, clean and crash restart) and prints:

- appender throughput / raw sequential write (target >= 0.85),
- fsynced small appends, one stream / raw write+fdatasync rate (target >= 0.80),
- 100 partitions / one stream (group commit: > 1),
- p50/p99/p99.9 of the durable append, memory per idle partition, restart times.

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def last_json(out: str) -> dict:
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON line in:\n{out[-2000:]}")


def run(cmd: list[str]) -> dict:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed with {p.returncode}")
    sys.stderr.write(p.stdout)
    return last_json(p.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=REPO / "target" / "storage-bench")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=10_000)
    args = ap.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    (args.dir / "probe").mkdir(parents=True)
    release = REPO / "target" / "release"
    probe = run([str(release / "spate-perf"), "probe", "--dir", str(args.dir / "probe"),
                 "--size-mib", str(args.size_mib), "--sync-ops", "2000", "--tcp-mib", "1"])
    log = run([str(release / "examples" / "log_bench"), "--dir", str(args.dir / "log"),
               "--seconds", str(args.seconds), "--partitions", str(args.partitions)])
    shutil.rmtree(args.dir, ignore_errors=True)
    raw_write_mb_s = probe["seq_write_mib_s"] * 1.048576  # MiB/s -> MB/s, as log_bench reports
    ratios = {
        "appender_vs_raw_write": log["throughput_mb_s"] / raw_write_mb_s,
        "one_stream_fsync_vs_raw": log["small_1x1_appends_s"] / probe["write_fdatasync_ops_s"],
        "hundred_partitions_vs_one_stream": log["small_100x1_appends_s"]
        / log["small_1x1_appends_s"],
    }
    rows = [
        ("raw O_DIRECT sequential write", f"{raw_write_mb_s:.0f} MB/s"),
        ("appender throughput (fsynced)", f"{log['throughput_mb_s']:.0f} MB/s — "
         f"{ratios['appender_vs_raw_write']:.2f}× raw (target ≥ 0.85)"),
        ("raw 4 KiB write + fdatasync", f"{probe['write_fdatasync_ops_s']:.0f} ops/s"),
        ("fsynced 100 B appends, 1 stream", f"{log['small_1x1_appends_s']:.0f}/s — "
         f"{ratios['one_stream_fsync_vs_raw']:.2f}× raw (target ≥ 0.80); p50/p99/p99.9 "
         f"{log['small_1x1_p50_us']}/{log['small_1x1_p99_us']}/{log['small_1x1_p999_us']} µs"),
        ("fsynced 100 B appends, 100 partitions", f"{log['small_100x1_appends_s']:.0f}/s — "
         f"{ratios['hundred_partitions_vs_one_stream']:.1f}× one stream; p50/p99/p99.9 "
         f"{log['small_100x1_p50_us']}/{log['small_100x1_p99_us']}/"
         f"{log['small_100x1_p999_us']} µs"),
        ("fsynced 100 B appends, 1 partition × 100 streams",
         f"{log['small_1x100_appends_s']:.0f}/s"),
        (f"memory per idle partition ({log['partitions']})",
         f"{log['idle_partition_rss_bytes']} B (after restart "
         f"{log['idle_partition_rss_bytes_after_restart']} B; target ≤ 65536)"),
        (f"clean restart, {log['partitions']} partitions", f"{log['clean_restart_s']} s (target ≤ 2)"),
        (f"crash restart, {log['partitions']} partitions",
         f"{log['crash_restart_s']} s (target ≤ 5)"),
    ]
    print("| figure | value |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print(json.dumps({"probe": probe, "log_bench": log,
                      "ratios": {k: round(v, 3) for k, v in ratios.items()}}))


if __name__ == "__main__":
    main()
