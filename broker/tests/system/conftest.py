"""pytest fixtures for the Spate system tests.

Fixtures:
  broker        one broker per test module (started once, clean SIGTERM stop asserted at the end)
  fresh_broker  one broker per test (for restart tests)
  broker_factory  extra brokers with options, e.g. broker_factory(advertised_port=...)
  bootstrap     broker.bootstrap of the module broker
  topic_name    a unique topic name factory
Markers: spate_only / kafka_only skip a test on the other target.

The target is spated by default; SPATE_TEST_TARGET=kafka runs the very same tests against a
real single-node Apache Kafka (KRaft) started from the Maven jars. See spate_harness.py.
"""

from __future__ import annotations

import gc
import resource

import pytest

import spate_harness
from spate_harness import TARGET, Broker, unique_topic


def pytest_configure(config):
    # Raise the fd limit for this process and therefore for the brokers it starts.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    want = min(want, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    config.addinivalue_line("markers", "spate_only: test only makes sense against spated")
    config.addinivalue_line("markers", "kafka_only: test only makes sense against Apache Kafka")


def pytest_sessionfinish(session, exitstatus):
    gc.collect()  # destroy leftover Kafka clients before the summary is printed


def pytest_report_header(config):
    where = spate_harness.SPATE_BIN if TARGET == "spate" else spate_harness.KAFKA_LIB
    return [f"spate system tests: target={TARGET} ({where})"]


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TARGET != "spate" and item.get_closest_marker("spate_only"):
            item.add_marker(pytest.mark.skip(reason="spated-specific test"))
        if TARGET != "kafka" and item.get_closest_marker("kafka_only"):
            item.add_marker(pytest.mark.skip(reason="Apache Kafka-specific test"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    item.stash.setdefault(_FAILED_KEY, True)
    # Attach the broker's log tail to the failure report.
    funcargs = getattr(item, "funcargs", {})
    brokers = [funcargs.get(n) for n in ("broker", "fresh_broker")]
    brokers += getattr(funcargs.get("broker_factory"), "made", [])
    for b in brokers:
        if isinstance(b, Broker):
            state = "alive" if b.alive() else "NOT RUNNING"
            rep.sections.append((f"{b.target} broker ({state}) {b.work_dir}", b.log_tail()))


_FAILED_KEY = pytest.StashKey[bool]()


def _module_failed(request) -> bool:
    return any(i.stash.get(_FAILED_KEY, False) for i in request.session.items
               if i.module is request.module)


def _finish(b: Broker, failed: bool) -> None:
    """Stop a broker at teardown: it must still be alive and exit cleanly on SIGTERM."""
    # Drop lingering client objects first so they disconnect while the broker is still up
    # (otherwise librdkafka logs connection errors later, even after pytest's summary).
    gc.collect()
    try:
        if b.proc is None or not b.expect_running:
            return  # never started, or a test stopped it on purpose
        if not b.alive():
            raise AssertionError(f"{b.target} died during the tests (exit {b.proc.returncode})\n"
                                 f"{b.log_tail()}")
        b.stop()
    finally:
        b.kill()
        b.cleanup(keep=failed)
        if failed:
            print(f"\n[kept {b.work_dir} for inspection]")


@pytest.fixture(scope="module")
def broker(request):
    b = Broker(name=request.module.__name__.rsplit(".", 1)[-1])  # raises if spated is missing
    try:
        b.start()
    except Exception:
        b.cleanup(keep=True)
        raise
    yield b
    _finish(b, _module_failed(request))


@pytest.fixture
def fresh_broker(request):
    b = Broker(name=request.node.name[:40])
    try:
        b.start()
    except Exception:
        b.cleanup(keep=True)
        raise
    yield b
    failed = request.node.stash.get(_FAILED_KEY, False)
    _finish(b, failed)


@pytest.fixture
def broker_factory(request):
    """Start extra brokers with custom options: broker_factory(advertised_port=...)."""
    made = []

    def make(**kwargs) -> Broker:
        b = Broker(name=request.node.name[:40], **kwargs)
        made.append(b)
        b.start()
        return b

    make.made = made
    yield make
    failed = request.node.stash.get(_FAILED_KEY, False)
    for b in made:
        _finish(b, failed)


@pytest.fixture(scope="module")
def bootstrap(broker):
    return broker.bootstrap


@pytest.fixture
def topic_name():
    return unique_topic
