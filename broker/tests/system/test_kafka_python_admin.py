"""kafka-python (pure Python client, its own protocol implementation) KafkaAdminClient."""

from __future__ import annotations

import uuid

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewPartitions
from kafka.errors import InvalidConfigurationError, TopicAlreadyExistsError

from clients import wait_until
from spate_harness import unique_topic


@pytest.fixture(scope="module")
def admin(broker):
    a = KafkaAdminClient(bootstrap_servers=broker.bootstrap, client_id="spate-system-test-kp",
                         request_timeout_ms=15000)
    yield a
    a.close()


def described(admin, name):
    (t,) = admin.describe_topics([name])
    return t


def visible(admin, name, partitions=None):
    try:
        t = described(admin, name)
    except Exception:
        return False
    if t["error_code"] != 0:
        return False
    return partitions is None or len(t["partitions"]) == partitions


def topic_config(admin, name, **kw) -> dict:
    out = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)], **kw)
    return out["topic"][name]


def test_create_list_describe_delete(admin):
    name = unique_topic("kp")
    resp = admin.create_topics({name: {"num_partitions": 2, "replication_factor": 1,
                                       "configs": {"retention.ms": "5000"}}})
    (t,) = resp["topics"]
    assert t["name"] == name and t["error_code"] == 0
    # CreateTopics v5+ echoes the resulting partition count / RF / configs and (v7) the topic id
    assert t["num_partitions"] == 2 and t["replication_factor"] == 1
    assert t["configs"]["retention.ms"]["value"] == "5000"
    assert t["configs"]["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert t["configs"]["cleanup.policy"]["value"] == "delete"
    created_id = uuid.UUID(str(t["topic_id"]))
    assert created_id.int != 0

    wait_until(lambda: visible(admin, name, 2), what=f"{name} visible")
    assert name in admin.list_topics()
    d = described(admin, name)
    assert d["name"] == name and not d["is_internal"]
    assert uuid.UUID(str(d["topic_id"])) == created_id
    parts = sorted(d["partitions"], key=lambda p: p["partition_index"])
    assert [p["partition_index"] for p in parts] == [0, 1]
    for p in parts:
        assert p["error_code"] == 0
        assert p["leader_id"] == 0 and p["replica_nodes"] == [0] and p["isr_nodes"] == [0]

    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})

    resp = admin.delete_topics([name])
    (r,) = resp["topics"]
    assert r["name"] == name and r["error_code"] == 0
    wait_until(lambda: name not in admin.list_topics(), what=f"{name} deleted")


def test_create_rejects_bad_config(admin):
    name = unique_topic("kpbad")
    with pytest.raises(InvalidConfigurationError) as ei:
        admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1,
                                    "configs": {"retention.ms": "abc"}}})
    assert "retention.ms" in str(ei.value)
    assert name not in admin.list_topics()


def test_validate_only(admin):
    name = unique_topic("kpvo")
    resp = admin.create_topics({name: {"num_partitions": 3, "replication_factor": 1}}, validate_only=True)
    assert resp["topics"][0]["error_code"] == 0
    assert name not in admin.list_topics()


def test_describe_and_alter_configs(admin):
    name = unique_topic("kpcfg")
    admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1,
                                "configs": {"cleanup.policy": "compact"}}})
    wait_until(lambda: visible(admin, name), what=f"{name} visible")

    modified = topic_config(admin, name)  # default filter: only non-default keys
    assert modified["cleanup.policy"]["value"] == "compact"
    assert modified["cleanup.policy"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    assert "retention.ms" not in modified

    everything = topic_config(admin, name, config_filter="all")
    assert everything["retention.ms"]["value"] == "604800000"
    assert everything["retention.ms"]["config_source"] == "DEFAULT_CONFIG"
    assert everything["retention.ms"]["config_type"] == "LONG"

    out = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                              configs={"retention.ms": "777"})])
    assert out == {"topic": {name: "OK"}}, out
    cfg = wait_until(lambda: (lambda c: c if "retention.ms" in c else None)(topic_config(admin, name)),
                     what="retention.ms altered")
    assert cfg["retention.ms"]["value"] == "777"
    assert cfg["cleanup.policy"]["value"] == "compact"  # incremental: other keys untouched

    out = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                              configs={"retention.ms": "abc"})])
    msg = out["topic"][name]
    assert msg != "OK" and "Error 40" in str(msg) and "retention.ms" in str(msg), out
    assert topic_config(admin, name)["retention.ms"]["value"] == "777"


def test_create_partitions(admin):
    name = unique_topic("kpcp")
    admin.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})
    wait_until(lambda: visible(admin, name, 1), what=f"{name} visible")
    resp = admin.create_partitions({name: NewPartitions(3)})
    assert resp.results[0].error_code == 0, resp
    wait_until(lambda: visible(admin, name, 3), what=f"{name} has 3 partitions")


def test_describe_cluster(admin, broker):
    c = admin.describe_cluster()
    assert c["cluster_id"]
    assert c["controller_id"] == 0
    assert [(b["broker_id"], b["host"], b["port"]) for b in c["brokers"]] == [(0, "127.0.0.1", broker.port)]
