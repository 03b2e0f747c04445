"""A data dir on tmpfs (no O_DIRECT): spated says so at start and still works, through
glommio's buffered fallback. spated only."""

from __future__ import annotations

import os
import shutil
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from clients import confluent_admin, create
from spate_harness import Broker, unique_topic

pytestmark = pytest.mark.spate_only

SHM = "/dev/shm"


@pytest.mark.skipif(not os.path.isdir(SHM), reason="no /dev/shm")
def test_tmpfs_data_dir_warns_and_works(tmp_path):
    data = os.path.join(SHM, f"spate-test-{uuid.uuid4().hex[:8]}")
    b = Broker(name="tmpfs")
    b.data_dir = type(b.data_dir)(data)
    try:
        b.start()
        topic = unique_topic("shm")
        create(confluent_admin(b.bootstrap), [NewTopic(topic, 1, 1)])
        p = Producer({"bootstrap.servers": b.bootstrap})
        errors = []
        for i in range(100):
            p.produce(topic, value=b"v%d" % i, on_delivery=lambda e, m: e and errors.append(e))
        assert p.flush(15) == 0 and not errors
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": unique_topic("g")})
        try:
            assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 100)
        finally:
            c.close()
        b.stop()
        assert "data dir is on tmpfs" in b.log_tail(), b.log_tail()
    finally:
        b.kill()
        b.cleanup(keep=False)
        shutil.rmtree(data, ignore_errors=True)
