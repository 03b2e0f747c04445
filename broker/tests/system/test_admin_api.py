"""The admin HTTP API (spated only; loopback): health, the cluster/shards/partitions views and
/metrics parsed by the reference Prometheus parser, moving with traffic."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from spate_harness import HOST

pytestmark = pytest.mark.spate_only


def get(broker, path: str) -> tuple[int, dict]:
    url = f"http://{HOST}:{broker.admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_live_and_ready(broker):
    assert get(broker, "/v1/status/live") == (200, {"status": "live"})
    assert get(broker, "/v1/status/ready") == (200, {"status": "ready"})


def test_unknown_endpoint_is_404(broker):
    status, body = get(broker, "/v1/nope")
    assert status == 404
    assert "/v1/nope" in body["error"]


def scrape(broker) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, parsed by the reference Prometheus text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{HOST}:{broker.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples, name: str, **labels) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def test_metrics_are_prometheus_text_and_move_with_traffic(broker):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import NewTopic

    from clients import confluent_admin, create
    from spate_harness import unique_topic

    before = scrape(broker)
    for family in ("spate_kafka_requests_total", "spate_kafka_connections",
                   "spate_partitions", "spate_produce_bytes_total", "spate_fetch_bytes_total"):
        assert any(n == family for n, _ in before), f"{family} missing"
    topic = unique_topic("metrics")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 2, 1)])
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(200):
        p.produce(topic, value=b"x" * 100, partition=i % 2)
    assert p.flush(15) == 0
    # No auto-commit: without a group coordinator (not built yet) librdkafka's close would
    # wait on its final commit.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g"),
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got = 0
        import time
        deadline = time.time() + 15
        while got < 100 and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got += 1
        assert got == 100
    finally:
        c.close()
    after = scrape(broker)
    assert total(after, "spate_kafka_requests_total", api="Produce") > \
        total(before, "spate_kafka_requests_total", api="Produce")
    assert total(after, "spate_kafka_requests_total", api="CreateTopics") >= \
        total(before, "spate_kafka_requests_total", api="CreateTopics") + 1
    assert total(after, "spate_produce_bytes_total") >= total(before, "spate_produce_bytes_total") + 200 * 100
    assert total(after, "spate_fetch_bytes_total") >= total(before, "spate_fetch_bytes_total") + 100 * 100
    assert total(after, "spate_log_fsync_seconds_count") > total(before, "spate_log_fsync_seconds_count")
    assert total(after, "spate_partitions") >= total(before, "spate_partitions") + 2
    assert total(after, "spate_kafka_request_seconds_count", api="Fetch") > 0
    # Per-partition series and the gauges the shards publish every second.
    assert total(after, "spate_partition_produce_bytes_total", topic=topic, partition="0") >= 100 * 100
    assert total(after, "spate_partition_fetch_bytes_total", topic=topic, partition="0") >= 100 * 100
    assert total(after, "spate_reactor_lag_seconds_count") > 0
    for family in ("spate_reactor_stalls_total", "spate_mesh_pending_requests",
                   "spate_fetch_sessions", "spate_consumer_groups", "spate_raft_groups_ticking",
                   "spate_raft_group_ticks_total", "spate_raft_groups_failed"):
        assert any(n == family for n, _ in after), f"{family} missing"
    import time
    # Every partition runs through its Raft group, which this node leads (published every
    # second, like the gauges below).
    deadline = time.time() + 5
    while True:
        now = scrape(broker)
        groups, leaders = total(now, "spate_raft_groups"), total(now, "spate_raft_leaders")
        if groups == total(now, "spate_partitions") and leaders == groups and groups >= 2:
            break
        assert time.time() < deadline, (groups, leaders, total(now, "spate_partitions"))
        time.sleep(0.2)
    deadline = time.time() + 5
    while total(scrape(broker), "spate_partition_high_watermark", topic=topic, partition="0") != 100:
        assert time.time() < deadline, "high watermark gauge never reached 100"
        time.sleep(0.2)
    # The consumer read just-produced batches: served from the shard's batch cache.
    deadline = time.time() + 5
    while total(scrape(broker), "spate_batch_cache_hits_total") == 0:
        assert time.time() < deadline, "no batch cache hit counted"
        time.sleep(0.2)
    assert any(n == "spate_batch_cache_bytes" for n, _ in scrape(broker))


def test_cluster_shards_and_partitions_views(broker):
    import time

    from clients import confluent_admin, create
    from confluent_kafka import Producer
    from confluent_kafka.admin import NewTopic
    from spate_harness import unique_topic

    topic = unique_topic("views")
    create(confluent_admin(broker.bootstrap), [NewTopic(topic, 3, 1)])
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(30):
        p.produce(topic, value=b"v", partition=i % 3)
    assert p.flush(15) == 0
    deadline = time.time() + 5
    while True:  # the shards publish once a second
        status, parts = get(broker, f"/v1/partitions?topic={topic}")
        assert status == 200
        if [x["high_watermark"] for x in parts] == [10, 10, 10] or time.time() > deadline:
            break
        time.sleep(0.2)
    assert [(x["topic"], x["partition"]) for x in parts] == [(topic, i) for i in range(3)]
    assert all(x["log_start_offset"] == 0 and x["log_end_offset"] == 10 for x in parts), parts
    # The leader epoch is the partition's Raft term: at least 2 (the first election after
    # the bootstrap term 1).
    assert all(x["leader_epoch"] >= 2 for x in parts), parts
    assert {x["shard"] for x in parts} <= set(range(broker.smp))
    status, shards = get(broker, "/v1/shards")
    assert status == 200
    assert sorted(s["shard"] for s in shards) == list(range(broker.smp))
    assert sum(s["partitions"] for s in shards) >= 3
    assert all(s["produce_bytes"] >= 0 and "reactor_stalls" in s for s in shards)
    status, cluster = get(broker, "/v1/cluster")
    assert status == 200
    assert cluster["node_id"] == 0 and cluster["shards"] == broker.smp
    assert cluster["kafka_addr"] == f"{HOST}:{broker.port}"
    assert cluster["topics"] >= 1 and len(cluster["cluster_id"]) == 22
    # The cap on one segment I/O: the data dir's device max_sectors_kb, bounded and aligned.
    cap = cluster["max_io_bytes"]
    assert 4096 <= cap <= 1 << 20 and cap % 4096 == 0, cap
    status, body = get(broker, "/v1/partitions?topic=no-such-topic")
    assert (status, body) == (200, [])
