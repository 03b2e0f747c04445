"""The Apache Kafka command line tools (kafka-topics, kafka-configs, kafka-broker-api-versions)
against the broker.

The expected strings are what Apache Kafka 4.1's tools print against Apache Kafka 4.1; the error
messages come from the broker (the tools print the broker's error_message), so Spate must send
the same messages. Note kafka-topics validates --config client side (LogConfig.validate), so
broker-side config validation is exercised through kafka-configs --alter instead.
"""

from __future__ import annotations

import re

import pytest

from clients import tool_ok, wait_until
from spate_harness import kafka_tool, unique_topic


def topics(bootstrap, *args, **kw):
    return kafka_tool("kafka-topics", "--bootstrap-server", bootstrap, *args, **kw)


def configs(bootstrap, *args, **kw):
    return kafka_tool("kafka-configs", "--bootstrap-server", bootstrap, *args, **kw)


def parse_describe(stdout: str) -> tuple[dict, list[dict]]:
    """Parse `kafka-topics --describe` for one topic: (topic line fields, partition lines)."""
    head = None
    parts = []
    for line in stdout.splitlines():
        if line.startswith("Topic:"):
            fields = dict(kv.split(": ", 1) if ": " in kv else (kv.rstrip(":"), "")
                          for kv in line.split("\t"))
            head = fields
        elif line.startswith("\tTopic:"):
            fields = {}
            for kv in line.strip("\t").split("\t"):
                k, _, v = kv.partition(":")
                fields[k.strip()] = v.strip()
            parts.append(fields)
    assert head is not None, f"no topic line in describe output:\n{stdout}"
    return head, parts


def config_lines(stdout: str) -> dict[str, str]:
    """kafka-configs --describe output -> {name: whole line}."""
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^\s+([a-z0-9._-]+)=(.*)$", line)
        if m:
            out[m.group(1)] = line.strip()
    return out


def described_configs(bootstrap, entity, until=lambda lines: True, all_=False) -> dict[str, str]:
    """kafka-configs --describe, retried until `until(lines)` holds (Kafka applies config
    changes to its metadata cache asynchronously)."""
    args = ["--describe", *(["--all"] if all_ else []), *entity]

    def attempt():
        lines = config_lines(tool_ok("kafka-configs", "--bootstrap-server", bootstrap, *args).stdout)
        return (lines,) if until(lines) else None  # tuple: an empty dict is a valid answer

    return wait_until(attempt, timeout=20, interval=0.2, what=f"configs of {entity} to settle")[0]


def listed(bootstrap) -> set[str]:
    r = tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--list")
    return {line.strip() for line in r.stdout.splitlines() if line.strip()}


# ------------------------------------------------------------------------------ api versions


def test_broker_api_versions_lists_the_broker(bootstrap):
    r = tool_ok("kafka-broker-api-versions", "--bootstrap-server", bootstrap)
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"{bootstrap} (id: 0 rack: "), r.stdout
    for api in ("ApiVersions(18)", "Metadata(3)", "CreateTopics(19)", "DeleteTopics(20)",
                "DescribeConfigs(32)", "AlterConfigs(33)", "CreatePartitions(37)",
                "IncrementalAlterConfigs(44)", "DescribeCluster(60)"):
        lines = [line for line in r.stdout.splitlines() if line.strip().startswith(api + ":")]
        assert lines, f"{api} missing from:\n{r.stdout}"
        assert "[usable: " in lines[0] and "UNSUPPORTED" not in lines[0], lines[0]


# ------------------------------------------------------------------------------ topics


def test_topic_create_list_describe_delete(bootstrap):
    name = unique_topic("tools")
    r = tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--create", "--topic", name,
                "--partitions", "3", "--replication-factor", "1",
                "--config", "retention.ms=1000", "--config", "cleanup.policy=compact")
    assert f"Created topic {name}." in r.stdout

    wait_until(lambda: name in listed(bootstrap), what=f"{name} listed")

    r = tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--describe", "--topic", name)
    head, parts = parse_describe(r.stdout)
    assert head["Topic"] == name
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", head["TopicId"]), head
    assert head["TopicId"] != "AAAAAAAAAAAAAAAAAAAAAA"
    assert head["PartitionCount"] == "3"
    assert head["ReplicationFactor"] == "1"
    shown = set(head["Configs"].split(","))
    assert {"cleanup.policy=compact", "retention.ms=1000"} <= shown, head["Configs"]
    assert [p["Partition"] for p in parts] == ["0", "1", "2"], r.stdout
    for p in parts:
        assert p["Topic"] == name
        assert p["Leader"] == "0" and p["Replicas"] == "0" and p["Isr"] == "0", p

    r = tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--delete", "--topic", name)
    wait_until(lambda: name not in listed(bootstrap), timeout=20, what=f"{name} to disappear")
    r = topics(bootstrap, "--describe", "--topic", name)
    assert r.rc == 1
    assert f"Topic '{name}' does not exist as expected" in r.stdout


def test_create_existing_topic_fails(bootstrap):
    name = unique_topic("dup")
    tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--create", "--topic", name,
            "--partitions", "1", "--replication-factor", "1")
    r = topics(bootstrap, "--create", "--topic", name, "--partitions", "2")
    assert r.rc == 1, r
    assert f"Error while executing topic command : Topic '{name}' already exists." in r.stdout
    assert "TopicExistsException" in r.stderr
    # --if-not-exists turns it into a no-op
    tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--create", "--topic", name,
            "--partitions", "2", "--if-not-exists")
    head, _ = parse_describe(tool_ok("kafka-topics", "--bootstrap-server", bootstrap,
                                     "--describe", "--topic", name).stdout)
    assert head["PartitionCount"] == "1"


# Apache Kafka 4.1's messages, which spated matches word for word.
LONG = "x" * 250


@pytest.mark.parametrize("bad,expected", [
    ("bad/name", "Topic name is invalid: 'bad/name' contains one or more characters other than "
                 "ASCII alphanumerics, '.', '_' and '-'"),
    ("..", "Topic name is invalid: '..' is not allowed"),
    (".", "Topic name is invalid: '.' is not allowed"),
    (LONG, f"Topic name is invalid: the length of '{LONG}' is longer than the max allowed length 249"),
    ("a b", "Topic name is invalid: 'a b' contains one or more characters other than "
            "ASCII alphanumerics, '.', '_' and '-'"),
], ids=["slash", "dotdot", "dot", "len250", "space"])
def test_invalid_topic_name_rejected(bootstrap, bad, expected):
    r = topics(bootstrap, "--create", "--topic", bad, "--partitions", "1", "--replication-factor", "1")
    assert r.rc == 1, r
    assert "Error while executing topic command : " in r.stdout, r.stdout
    assert "InvalidTopicException" in r.stderr  # i.e. error code 17 INVALID_TOPIC_EXCEPTION
    message = r.stdout.split("Error while executing topic command : ", 1)[1]
    assert expected in message, message
    assert bad not in listed(bootstrap)


def test_topic_name_of_249_chars_is_allowed(bootstrap):
    name = ("n249-" + unique_topic("x")).ljust(249, "z")
    assert len(name) == 249
    r = tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--create", "--topic", name,
                "--partitions", "1", "--replication-factor", "1")
    assert f"Created topic {name}." in r.stdout
    wait_until(lambda: name in listed(bootstrap), what=f"{name} listed")
    tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--delete", "--topic", name)


def test_replication_factor_above_broker_count_rejected(bootstrap):
    name = unique_topic("rf3")
    r = topics(bootstrap, "--create", "--topic", name, "--partitions", "1", "--replication-factor", "3")
    assert r.rc == 1
    assert "InvalidReplicationFactorException" in r.stderr
    assert ("Unable to replicate the partition 3 time(s): The target replication factor of 3 "
            "cannot be reached because only 1 broker(s) are registered.") in r.stdout
    assert name not in listed(bootstrap)


def test_increase_partitions(bootstrap):
    name = unique_topic("grow")
    tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--create", "--topic", name,
            "--partitions", "2", "--replication-factor", "1")
    tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--alter", "--topic", name,
            "--partitions", "5")

    def count():
        out = tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--describe", "--topic", name).stdout
        head, parts = parse_describe(out)
        return head["PartitionCount"] == "5" and [p["Partition"] for p in parts] == list("01234")

    wait_until(count, timeout=20, what="5 partitions")

    r = topics(bootstrap, "--alter", "--topic", name, "--partitions", "3")
    assert r.rc == 1
    assert "InvalidPartitionsException" in r.stderr
    expected = f"The topic {name} currently has 5 partition(s); 3 would not be an increase."
    assert expected in r.stdout, r.stdout


# ------------------------------------------------------------------------------ configs


def test_topic_configs_describe_alter_delete(bootstrap):
    name = unique_topic("cfg")
    tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--create", "--topic", name,
            "--partitions", "1", "--replication-factor", "1", "--config", "cleanup.policy=compact")
    entity = ("--entity-type", "topics", "--entity-name", name)

    r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--describe", *entity)
    assert f"Dynamic configs for topic {name} are:" in r.stdout
    lines = config_lines(r.stdout)
    assert lines["cleanup.policy"].startswith(
        "cleanup.policy=compact sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:cleanup.policy=compact"), r.stdout
    assert "retention.ms" not in lines

    r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--alter", *entity,
                "--add-config", "retention.ms=12345")
    assert f"Completed updating config for topic {name}." in r.stdout
    lines = described_configs(bootstrap, entity, lambda ls: "retention.ms" in ls)
    assert lines["retention.ms"].startswith(
        "retention.ms=12345 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:retention.ms=12345"), lines
    assert lines["cleanup.policy"].startswith("cleanup.policy=compact "), lines  # untouched

    r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--alter", *entity,
                "--delete-config", "retention.ms")
    assert f"Completed updating config for topic {name}." in r.stdout
    lines = described_configs(bootstrap, entity, lambda ls: "retention.ms" not in ls)
    assert lines["cleanup.policy"].startswith("cleanup.policy=compact "), lines

    # --all shows defaults too: retention.ms back to the 7-day default.
    r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--describe", "--all", *entity)
    assert f"All configs for topic {name} are:" in r.stdout
    lines = config_lines(r.stdout)
    assert lines["retention.ms"].startswith("retention.ms=604800000 sensitive=false"), lines["retention.ms"]
    assert "DYNAMIC_TOPIC_CONFIG" not in lines["retention.ms"]
    assert lines["segment.bytes"].startswith("segment.bytes=1073741824 "), lines.get("segment.bytes")
    assert lines["cleanup.policy"].startswith("cleanup.policy=compact "), lines


# Kafka 4.1's messages, which spated matches word for word.
@pytest.mark.parametrize("setting,message", [
    ("retention.ms=abc", "Invalid value abc for configuration retention.ms: Not a number of type LONG"),
    ("cleanup.policy=bogus", "Invalid value bogus for configuration cleanup.policy: "
                             "String must be one of: compact, delete"),
    ("no.such.config=1", "Unknown topic config name: no.such.config"),
], ids=["not-a-long", "bad-enum", "unknown-key"])
def test_topic_config_alter_invalid_rejected_by_broker(bootstrap, setting, message):
    name = unique_topic("badcfg")
    tool_ok("kafka-topics", "--bootstrap-server", bootstrap, "--create", "--topic", name,
            "--partitions", "1", "--replication-factor", "1")
    r = configs(bootstrap, "--alter", "--entity-type", "topics", "--entity-name", name,
                "--add-config", setting)
    assert r.rc == 1, r
    assert "InvalidConfigurationException" in r.stderr  # error code 40 INVALID_CONFIG
    assert message in r.stderr, r.stderr[-3000:]
    lines = config_lines(tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--describe",
                                 "--entity-type", "topics", "--entity-name", name).stdout)
    assert setting.split("=")[0] not in lines


def test_broker_configs_describe(bootstrap):
    r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--describe",
                "--entity-type", "brokers", "--entity-name", "0")
    assert "Dynamic configs for broker 0 are:" in r.stdout

    r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--describe", "--all",
                "--entity-type", "brokers", "--entity-name", "0")
    assert "All configs for broker 0 are:" in r.stdout
    lines = config_lines(r.stdout)
    # 7-day retention, expressed either way (Kafka: log.retention.hours=168, log.retention.ms=null)
    assert (lines.get("log.retention.hours", "").startswith("log.retention.hours=168 ")
            or lines.get("log.retention.ms", "").startswith("log.retention.ms=604800000 ")), \
        (lines.get("log.retention.hours"), lines.get("log.retention.ms"))
    assert lines["log.segment.bytes"].startswith("log.segment.bytes=1073741824 "), lines.get("log.segment.bytes")
    assert lines["num.partitions"].startswith("num.partitions=1 "), lines.get("num.partitions")


def test_broker_config_dynamic_alter(bootstrap):
    entity = ("--entity-type", "brokers", "--entity-name", "0")
    r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--alter", *entity,
                "--add-config", "log.retention.ms=99999")
    try:
        assert "Completed updating config for broker 0." in r.stdout
        lines = described_configs(bootstrap, entity, lambda ls: "log.retention.ms" in ls)
        assert lines["log.retention.ms"].startswith(
            "log.retention.ms=99999 sensitive=false synonyms={DYNAMIC_BROKER_CONFIG:log.retention.ms=99999"), lines
    finally:
        r = tool_ok("kafka-configs", "--bootstrap-server", bootstrap, "--alter", *entity,
                    "--delete-config", "log.retention.ms")
    described_configs(bootstrap, entity, lambda ls: "log.retention.ms" not in ls)
