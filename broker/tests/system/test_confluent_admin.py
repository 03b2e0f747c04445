"""confluent-kafka (librdkafka) AdminClient against the broker."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import (AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource,
                                   NewPartitions, NewTopic, ResourceType)

import kafka_wire
from clients import confluent_admin, create, describe_topics, ok, results, topic_names, wait_until
from spate_harness import unique_topic


@pytest.fixture(scope="module")
def admin(broker):
    a = confluent_admin(broker.bootstrap)
    yield a
    del a


def topic_configs(admin, name) -> dict:
    res = ConfigResource(ResourceType.TOPIC, name)
    return ok(admin.describe_configs([res]))[res]


def partition_count(admin, name) -> int:
    md = admin.list_topics(topic=name, timeout=15)
    t = md.topics[name]
    assert t.error is None, t.error
    return len(t.partitions)


def test_create_topic_and_metadata(admin, broker):
    name = unique_topic("ck")
    create(admin, [NewTopic(name, num_partitions=3, replication_factor=1,
                            config={"retention.ms": "1000", "cleanup.policy": "compact"})],
           operation_timeout=10)
    md = admin.list_topics(timeout=15)
    assert name in md.topics
    t = md.topics[name]
    assert t.error is None
    assert sorted(t.partitions) == [0, 1, 2]
    for p in t.partitions.values():
        assert p.error is None
        assert p.leader == 0 and p.replicas == [0] and p.isrs == [0]
    assert list(md.brokers) == [0]
    assert md.brokers[0].host == "127.0.0.1" and md.brokers[0].port == broker.port
    assert md.controller_id == 0
    assert md.cluster_id

    desc = describe_topics(admin, [name])[name]
    assert desc.name == name
    assert str(desc.topic_id) not in ("", "AAAAAAAAAAAAAAAAAAAAAA")
    assert [p.id for p in desc.partitions] == [0, 1, 2]
    assert all(p.leader.id == 0 for p in desc.partitions)
    assert not desc.is_internal


def test_topic_ids_are_unique(admin):
    names = [unique_topic("ids") for _ in range(3)]
    create(admin, [NewTopic(n, 1, 1) for n in names])
    ids = {str(d.topic_id) for d in describe_topics(admin, names).values()}
    assert len(ids) == 3


def test_validate_only_creates_nothing(admin):
    name = unique_topic("vo")
    ok(admin.create_topics([NewTopic(name, 2, 1, config={"retention.ms": "5000"})], validate_only=True))
    assert name not in topic_names(admin)
    # validate_only still validates
    bad = results(admin.create_topics([NewTopic(name, 1, 1, config={"retention.ms": "abc"})],
                                      validate_only=True))[name]
    assert isinstance(bad, KafkaError) and bad.code() == KafkaError.INVALID_CONFIG, bad
    assert name not in topic_names(admin)
    # and the name is still free afterwards
    create(admin, [NewTopic(name, 2, 1)])
    assert partition_count(admin, name) == 2


def test_default_partitions_and_replication(admin):
    name = unique_topic("dflt")
    create(admin, [NewTopic(name)])  # -1 / -1: broker defaults
    assert partition_count(admin, name) == 1


# Kafka 4.1's messages, which spated matches word for word.
@pytest.mark.parametrize("cfg,fragments", [
    ({"retention.ms": "abc"},
     ["Invalid value abc for configuration retention.ms: Not a number of type LONG"]),
    ({"cleanup.policy": "bogus"},
     ["Invalid value bogus for configuration cleanup.policy: String must be one of: compact, delete"]),
    ({"no.such.config": "1"}, ["Unknown topic config name: no.such.config"]),
    ({"min.insync.replicas": "0"},
     ["Invalid value 0 for configuration min.insync.replicas: Value must be at least 1"]),
], ids=["not-a-long", "bad-enum", "unknown-key", "below-min"])
def test_create_with_invalid_config(admin, cfg, fragments):
    name = unique_topic("badcfg")
    err = results(admin.create_topics([NewTopic(name, 1, 1, config=cfg)]))[name]
    assert isinstance(err, KafkaError), err
    assert err.code() == KafkaError.INVALID_CONFIG, (err.name(), err.str())
    for f in fragments:
        assert f in err.str(), err.str()
    assert name not in topic_names(admin)


def test_create_errors(admin):
    existing = unique_topic("exists")
    create(admin, [NewTopic(existing, 1, 1)])
    rf3, zero, bad = unique_topic("rf3"), unique_topic("zero"), "bad/name"
    out = results(admin.create_topics([
        NewTopic(rf3, 1, 3), NewTopic(zero, 0, 1), NewTopic(bad, 1, 1), NewTopic(existing, 1, 1)]))
    assert out[rf3].code() == KafkaError.INVALID_REPLICATION_FACTOR, out[rf3]
    assert "The target replication factor of 3 cannot be reached because only 1 broker(s) are registered" in out[rf3].str()
    assert out[zero].code() == KafkaError.INVALID_PARTITIONS, out[zero]
    assert out[bad].code() == KafkaError.TOPIC_EXCEPTION, out[bad]  # 17 INVALID_TOPIC_EXCEPTION
    assert bad in out[bad].str() and "ASCII alphanumerics" in out[bad].str(), out[bad].str()
    assert out[existing].code() == KafkaError.TOPIC_ALREADY_EXISTS, out[existing]
    assert f"Topic '{existing}' already exists." in out[existing].str()
    names = topic_names(admin)
    assert rf3 not in names and zero not in names and bad not in names


def test_describe_configs_sources(admin):
    name = unique_topic("dc")
    create(admin, [NewTopic(name, 1, 1, config={"retention.ms": "1000", "cleanup.policy": "compact"})])
    cfg = topic_configs(admin, name)
    assert cfg["retention.ms"].value == "1000"
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert not cfg["retention.ms"].is_default
    assert cfg["cleanup.policy"].value == "compact"
    assert cfg["segment.bytes"].value == "1073741824"
    assert cfg["segment.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert cfg["segment.bytes"].is_default
    assert cfg["max.message.bytes"].value == "1048588"
    for key in ("retention.bytes", "min.insync.replicas", "compression.type", "segment.ms",
                "message.timestamp.type", "min.cleanable.dirty.ratio", "delete.retention.ms"):
        assert key in cfg, f"{key} missing from DescribeConfigs"

    missing = results(admin.describe_configs([ConfigResource(ResourceType.TOPIC, unique_topic("nope"))]))
    (err,) = missing.values()
    assert isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err


def test_incremental_alter_configs(admin):
    name = unique_topic("iac")
    create(admin, [NewTopic(name, 1, 1, config={"cleanup.policy": "compact"})])
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "5000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("cleanup.policy", None, incremental_operation=AlterConfigOpType.DELETE),
    ])
    ok(admin.incremental_alter_configs([res]))
    cfg = wait_until(lambda: (lambda c: c if c["retention.ms"].value == "5000" else None)(
        topic_configs(admin, name)), what="retention.ms=5000")
    assert cfg["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert cfg["cleanup.policy"].value == "delete"  # back to default
    assert cfg["cleanup.policy"].source == ConfigSource.DEFAULT_CONFIG.value

    # APPEND to a list config
    ok(admin.incremental_alter_configs([ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND)])]))
    wait_until(lambda: set(topic_configs(admin, name)["cleanup.policy"].value.split(","))
               == {"delete", "compact"}, what="cleanup.policy=delete,compact")

    # invalid values are rejected and change nothing
    for entry, fragment in [
        (ConfigEntry("retention.ms", "abc", incremental_operation=AlterConfigOpType.SET),
         "Invalid value abc for configuration retention.ms"),
        (ConfigEntry("cleanup.policy", "bogus", incremental_operation=AlterConfigOpType.SET),
         "Invalid value bogus for configuration cleanup.policy"),
        (ConfigEntry("no.such.config", "1", incremental_operation=AlterConfigOpType.SET),
         "Unknown topic config name: no.such.config"),
    ]:
        r = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[entry])
        (err,) = results(admin.incremental_alter_configs([r])).values()
        assert isinstance(err, KafkaError) and err.code() == KafkaError.INVALID_CONFIG, err
        assert fragment in err.str(), err.str()
    assert topic_configs(admin, name)["retention.ms"].value == "5000"

    r = ConfigResource(ResourceType.TOPIC, unique_topic("nope"), incremental_configs=[
        ConfigEntry("retention.ms", "1", incremental_operation=AlterConfigOpType.SET)])
    (err,) = results(admin.incremental_alter_configs([r])).values()
    assert isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err


def test_broker_configs(admin):
    res = ConfigResource(ResourceType.BROKER, "0")
    cfg = ok(admin.describe_configs([res]))[res]
    # 7 days either way (Kafka: log.retention.hours=168 and log.retention.ms unset)
    assert (cfg["log.retention.hours"].value == "168" if "log.retention.hours" in cfg
            else cfg["log.retention.ms"].value == "604800000")
    assert cfg["num.partitions"].value == "1"
    assert cfg["log.segment.bytes"].value == "1073741824"

    ok(admin.incremental_alter_configs([ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
        ConfigEntry("log.retention.ms", "99999", incremental_operation=AlterConfigOpType.SET)])]))
    try:
        # Kafka applies dynamic broker configs asynchronously (metadata log -> broker).
        e = wait_until(lambda: (lambda e: e if e.value == "99999" else None)(
            ok(admin.describe_configs([res]))[res]["log.retention.ms"]), what="log.retention.ms=99999")
        assert e.source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    finally:
        ok(admin.incremental_alter_configs([ConfigResource(ResourceType.BROKER, "0", incremental_configs=[
            ConfigEntry("log.retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])]))
    wait_until(lambda: ok(admin.describe_configs([res]))[res]["log.retention.ms"].source
               != ConfigSource.DYNAMIC_BROKER_CONFIG.value, what="log.retention.ms reverted")


def test_create_partitions(admin):
    name = unique_topic("cp")
    create(admin, [NewTopic(name, 2, 1)])
    ok(admin.create_partitions([NewPartitions(name, 4)]))
    wait_until(lambda: partition_count(admin, name) == 4, what="4 partitions")
    assert [p.id for p in describe_topics(admin, [name])[name].partitions] == [0, 1, 2, 3]

    out = results(admin.create_partitions([NewPartitions(name, 3), NewPartitions(name + "-nope", 3)]))
    assert out[name].code() == KafkaError.INVALID_PARTITIONS, out[name]
    assert out[name + "-nope"].code() == KafkaError.UNKNOWN_TOPIC_OR_PART, out[name + "-nope"]
    same = results(admin.create_partitions([NewPartitions(name, 4)]))[name]
    assert isinstance(same, KafkaError) and same.code() == KafkaError.INVALID_PARTITIONS
    assert "Topic already has 4 partition(s)." in same.str(), same.str()
    # validate_only changes nothing
    ok(admin.create_partitions([NewPartitions(name, 8)], validate_only=True))
    assert partition_count(admin, name) == 4


def test_delete_topics(admin, broker):
    a, b = unique_topic("del"), unique_topic("del")
    create(admin, [NewTopic(a, 2, 1), NewTopic(b, 1, 1)])
    ok(admin.delete_topics([a], operation_timeout=10))
    wait_until(lambda: a not in topic_names(admin), what=f"{a} deleted")
    assert b in topic_names(admin)
    (err,) = results(admin.delete_topics([a])).values()
    assert isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART, err
    # the name can be reused, with a new id
    old_id = str(describe_topics(admin, [b])[b].topic_id)
    ok(admin.delete_topics([b]))
    wait_until(lambda: b not in topic_names(admin), what=f"{b} deleted")
    create(admin, [NewTopic(b, 3, 1)])
    assert partition_count(admin, b) == 3
    assert str(describe_topics(admin, [b])[b].topic_id) != old_id


def _uuid_of(topic_id) -> uuid.UUID:
    """confluent's Uuid prints base64; convert to uuid.UUID."""
    import base64
    s = str(topic_id)
    return uuid.UUID(bytes=base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))


def test_delete_topic_by_id(admin, broker):
    name = unique_topic("delid")
    create(admin, [NewTopic(name, 1, 1)])
    tid = _uuid_of(describe_topics(admin, [name])[name].topic_id)
    (res,) = kafka_wire.delete_topics_by_id(broker.host, broker.port, [tid])
    assert res.error_code == 0, res
    assert res.topic_id == tid
    assert res.name == name
    wait_until(lambda: name not in topic_names(admin), what=f"{name} deleted by id")
    (res,) = kafka_wire.delete_topics_by_id(broker.host, broker.port, [uuid.uuid4()])
    assert res.error_code == kafka_wire.ERR_UNKNOWN_TOPIC_ID, res


def test_describe_cluster(admin, broker):
    dc = admin.describe_cluster().result(timeout=15)
    assert dc.cluster_id
    assert [(n.id, n.host, n.port) for n in dc.nodes] == [(0, "127.0.0.1", broker.port)]
    assert dc.controller is not None and dc.controller.id == 0
    assert dc.cluster_id == admin.list_topics(timeout=15).cluster_id
