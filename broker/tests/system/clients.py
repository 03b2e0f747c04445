"""Small helpers around the Python Kafka clients used by the system tests."""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from spate_harness import kafka_tool

OP_TIMEOUT = 15.0


def confluent_admin(bootstrap: str, **extra) -> AdminClient:
    conf = {
        "bootstrap.servers": bootstrap,
        "client.id": "spate-system-test",
        "socket.timeout.ms": 10000,
        "log_level": 3,  # errors only; librdkafka logs to stderr (captured by pytest)
    }
    conf.update(extra)
    return AdminClient(conf)


def results(futures: dict, timeout: float = OP_TIMEOUT) -> dict:
    """Resolve a dict of futures: value on success, the KafkaError on failure."""
    out = {}
    for key, fut in futures.items():
        try:
            out[key] = fut.result(timeout=timeout)
        except KafkaException as e:
            out[key] = e.args[0]
    return out


def ok(futures: dict, timeout: float = OP_TIMEOUT) -> dict:
    """Resolve futures, failing the test on any error."""
    out = results(futures, timeout)
    errors = {k: v for k, v in out.items() if isinstance(v, KafkaError)}
    assert not errors, f"unexpected errors: { {str(k): e.str() for k, e in errors.items()} }"
    return out


def visible(admin: AdminClient, name: str, partitions: int | None = None) -> bool:
    """Topic is in this broker's metadata (with `partitions` partitions, all with a leader)."""
    md = admin.list_topics(topic=name, timeout=OP_TIMEOUT)
    t = md.topics.get(name)
    if t is None or t.error is not None:
        return False
    if partitions is not None and partitions > 0 and len(t.partitions) != partitions:
        return False
    return all(p.leader >= 0 and p.error is None for p in t.partitions.values())


def create(admin: AdminClient, new_topics: list, **kw) -> None:
    """CreateTopics, fail on any error, then wait until every topic is visible in metadata.

    (Apache Kafka answers CreateTopics once the controller committed; its broker metadata
    catches up a moment later. Clients are expected to tolerate that.)"""
    ok(admin.create_topics(new_topics, **kw))
    for t in new_topics:
        wait_until(lambda: visible(admin, t.topic, t.num_partitions), what=f"{t.topic} in metadata")


def topic_names(admin: AdminClient) -> set[str]:
    return set(admin.list_topics(timeout=OP_TIMEOUT).topics)


def describe_topics(admin: AdminClient, names: list[str]) -> dict:
    return ok(admin.describe_topics(TopicCollection(list(names))))


def wait_until(pred, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def tool_ok(name: str, *args: str, timeout: float = 90):
    r = kafka_tool(name, *args, timeout=timeout)
    assert r.rc == 0, f"{name} {' '.join(args)} failed rc={r.rc}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-4000:]}"
    return r


# ---------------------------------------------------------------- consumer groups


def group_consumer(bootstrap: str, group: str, **extra):
    """A confluent-kafka consumer in `group`: manual commits, earliest, 6 s session timeout."""
    from confluent_kafka import Consumer

    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "log_level": 3,
    }
    conf.update(extra)
    return Consumer(conf)


def subscribe_and_wait(consumer, topics: list[str], partitions: int, timeout: float = 30.0) -> list:
    """subscribe() and poll until `partitions` partitions are assigned; returns the assignment.
    (Only for a consumer alone in its group; messages polled meanwhile are lost to the caller,
    so call it before producing or with auto.offset.reset=latest semantics in mind.)"""
    consumer.subscribe(topics)
    return wait_until(lambda: (consumer.poll(0.1), len(consumer.assignment()) == partitions)[1]
                      and consumer.assignment(), timeout=timeout, what=f"{partitions} partitions assigned")


def produce_values(bootstrap: str, topic: str, values: dict[int, list[bytes]]) -> None:
    """Produce `values` ({partition: [value, ...]}) in order, acks=all; fail on any error."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all",
                  "linger.ms": 5, "log_level": 3})
    errors = []
    for q, vals in values.items():
        for v in vals:
            p.produce(topic, value=v, partition=q,
                      on_delivery=lambda err, msg: errors.append(err) if err else None)
    assert p.flush(30) == 0, "produce did not complete"
    assert not errors, errors
