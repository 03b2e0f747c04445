"""Which APIs the Java tools depend on, checked through a tracing proxy.

The broker advertises the proxy's address, so every request of the tool goes through it.
The proxy can hide API keys from ApiVersions responses to exercise the tools' fallbacks.
"""

from __future__ import annotations

import pytest

from api_trace_proxy import TraceProxy
from clients import tool_ok
from spate_harness import HOST, free_port, unique_topic


@pytest.fixture
def traced(broker_factory):
    port = free_port()
    b = broker_factory(advertised_port=port)
    proxy = TraceProxy(port, (HOST, b.port))
    yield f"{HOST}:{port}", proxy
    proxy.close()


def describe(bs, name):
    r = tool_ok("kafka-topics", "--bootstrap-server", bs, "--describe", "--topic", name)
    head = r.stdout.splitlines()[0]
    # ELR fields only come with DescribeTopicPartitions ("Elr: " vs "Elr: N/A" from Metadata)
    parts = [line.split("\tElr:")[0] for line in r.stdout.splitlines() if line.startswith("\tTopic:")]
    return head, parts


def test_kafka_topics_describe_with_and_without_newer_apis(traced):
    bs, proxy = traced
    name = unique_topic("trace")
    tool_ok("kafka-topics", "--bootstrap-server", bs, "--create", "--topic", name,
            "--partitions", "2", "--replication-factor", "1", "--config", "retention.ms=1000")

    proxy.reset()
    head, parts = describe(bs, name)
    used = proxy.used()
    assert "PartitionCount: 2" in head and "retention.ms=1000" in head, head
    assert len(parts) == 2
    assert {"Metadata", "DescribeConfigs"} <= set(used), used
    print("kafka-topics --describe used:", {k: sorted(v) for k, v in used.items()})

    # Without DescribeTopicPartitions (75), DescribeCluster (60) and
    # ListPartitionReassignments (46) the tool falls back to Metadata: same output.
    proxy.hide = {75, 60, 46}
    proxy.reset()
    head2, parts2 = describe(bs, name)
    used = proxy.used()
    assert not {"DescribeTopicPartitions", "DescribeCluster", "ListPartitionReassignments"} & set(used), used
    assert head2 == head
    assert parts2 == parts
