"""Cluster metadata (topics, ids, partition counts, configs, deletions) survives a clean restart
on the same data dir and port."""

from __future__ import annotations

from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic, ResourceType)

from clients import confluent_admin, create, describe_topics, ok, topic_names, visible, wait_until
from spate_harness import unique_topic


def snapshot(admin, names) -> dict:
    """{topic: (topic id, partition ids, {dynamic topic config: value})}"""
    descs = describe_topics(admin, names)
    resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
    cfgs = ok(admin.describe_configs(resources))
    out = {}
    for n in names:
        d = descs[n]
        dyn = {k: e.value for k, e in cfgs[ConfigResource(ResourceType.TOPIC, n)].items()
               if e.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value}
        out[n] = (str(d.topic_id), [p.id for p in d.partitions], dyn)
    return out


def user_topics(admin) -> set[str]:
    return {t for t in topic_names(admin) if not t.startswith("__")}


def restart(broker):
    """Clean stop (exit code asserted) and start on the same data dir and port; new client."""
    broker.restart()
    return confluent_admin(broker.bootstrap)


def test_topics_survive_restart(fresh_broker):
    broker = fresh_broker
    admin = confluent_admin(broker.bootstrap)
    a, b, c, d = (unique_topic(x) for x in "abcd")
    create(admin, [
        NewTopic(a, 3, 1, config={"retention.ms": "1000", "cleanup.policy": "compact"}),
        NewTopic(b, 1, 1),
        NewTopic(c, 2, 1),
        NewTopic(d, 1, 1, config={"segment.bytes": "1048576"}),
    ])
    ok(admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, b, incremental_configs=[
        ConfigEntry("max.message.bytes", "2000000", incremental_operation=AlterConfigOpType.SET)])]))
    ok(admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, d, incremental_configs=[
        ConfigEntry("segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE),
        ConfigEntry("retention.bytes", "123456789", incremental_operation=AlterConfigOpType.SET)])]))
    ok(admin.create_partitions([NewPartitions(d, 4)]))
    ok(admin.delete_topics([c]))

    kept = [a, b, d]
    expected_cfg = {
        a: {"retention.ms": "1000", "cleanup.policy": "compact"},
        b: {"max.message.bytes": "2000000"},
        d: {"retention.bytes": "123456789"},
    }

    def settled():
        if c in topic_names(admin) or not visible(admin, d, 4):
            return None
        snap = snapshot(admin, kept)
        return snap if all(snap[t][2] == expected_cfg[t] for t in kept) else None

    before = wait_until(settled, what="changes applied")
    assert before[a][1] == [0, 1, 2] and before[b][1] == [0] and before[d][1] == [0, 1, 2, 3]
    assert len({v[0] for v in before.values()}) == 3
    cluster_id = admin.list_topics(timeout=15).cluster_id
    topics_before = user_topics(admin)
    assert c not in topics_before

    del admin  # drop the old client (and its connections) first
    admin = restart(broker)

    wait_until(lambda: all(visible(admin, t) for t in kept), what="topics visible after restart")
    after = snapshot(admin, kept)
    assert after == before
    assert user_topics(admin) == topics_before
    assert c not in topic_names(admin)
    assert admin.list_topics(timeout=15).cluster_id == cluster_id

    # The restarted broker keeps working, and a second generation of changes persists too.
    e = unique_topic("e")
    create(admin, [NewTopic(e, 2, 1, config={"cleanup.policy": "compact"})])
    ok(admin.delete_topics([a]))
    wait_until(lambda: a not in topic_names(admin), what=f"{a} deleted")
    e_before = snapshot(admin, [e])[e]

    del admin  # drop the old client (and its connections) first
    admin = restart(broker)

    wait_until(lambda: visible(admin, e, 2) and visible(admin, b), what="topics visible after 2nd restart")
    assert a not in topic_names(admin)
    assert snapshot(admin, [e])[e] == e_before
    assert snapshot(admin, [b, d]) == {b: before[b], d: before[d]}
    # a deleted topic's name can be reused after restart, with a new id
    create(admin, [NewTopic(a, 1, 1)])
    assert snapshot(admin, [a])[a][0] != before[a][0]


def test_dynamic_broker_config_survives_restart(fresh_broker):
    broker = fresh_broker
    admin = confluent_admin(broker.bootstrap)
    res = ConfigResource(ResourceType.BROKER, "0")
    ok(admin.incremental_alter_configs([ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry("log.retention.ms", "99999", incremental_operation=AlterConfigOpType.SET)])]))
    wait_until(lambda: ok(admin.describe_configs([res]))[res]["log.retention.ms"].value == "99999",
               what="broker config applied")

    del admin  # drop the old client (and its connections) first
    admin = restart(broker)

    def applied():
        e = ok(admin.describe_configs([res]))[res]["log.retention.ms"]
        return e if e.value == "99999" else None

    e = wait_until(applied, what="broker config after restart")
    assert e.source == ConfigSource.DYNAMIC_BROKER_CONFIG.value


def test_sigterm_exits_cleanly_when_idle_and_busy(fresh_broker):
    """stop() asserts exit code 0 (Kafka's JVM: 143) within 10 s, also right after a burst
    of admin requests with connections still open."""
    broker = fresh_broker
    admin = confluent_admin(broker.bootstrap)
    names = [unique_topic("busy") for _ in range(5)]
    ok(admin.create_topics([NewTopic(n, 2, 1) for n in names]))
    broker.stop()  # client connection still open
    assert not broker.alive()
    del admin
    broker.start()
    admin = confluent_admin(broker.bootstrap)
    wait_until(lambda: all(visible(admin, n, 2) for n in names), what="topics after restart")
