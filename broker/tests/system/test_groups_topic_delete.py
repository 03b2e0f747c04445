"""Committed offsets of a deleted topic go with it (Kafka's behaviour): a topic recreated
under the same name starts with no committed offsets for the group."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic

from clients import confluent_admin, create, wait_until
from spate_harness import unique_topic


def committed(bootstrap, group, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        return c.committed([TopicPartition(topic, 0)], timeout=15)[0].offset
    finally:
        c.close()


def test_offsets_of_a_deleted_topic_are_dropped(broker):
    admin = confluent_admin(broker.bootstrap)
    topic, group = unique_topic("deloff"), unique_topic("g")
    create(admin, [NewTopic(topic, 1, 1)])
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, 0, 5)], asynchronous=False)
    finally:
        c.close()
    assert committed(broker.bootstrap, group, topic) == 5
    admin.delete_topics([topic])[topic].result(15)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, what="topic deleted")
    time.sleep(0.5)
    create(admin, [NewTopic(topic, 1, 1)])
    wait_until(lambda: committed(broker.bootstrap, group, topic) < 0, timeout=20,
               what="offsets of the deleted topic dropped")
