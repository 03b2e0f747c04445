"""Process management for the system tests: the broker under test and the Kafka CLI tools.

The broker under test is `spated` by default. With SPATE_TEST_TARGET=kafka the same
interface starts a real single-node Apache Kafka (KRaft, combined broker+controller, node id 0)
from the jars fetched by fetch-kafka-jars.sh, so the tests can be validated against the
reference implementation.

Environment:
  SPATE_TEST_TARGET  spate (default) | kafka
  SPATE_BIN          path of spated (default <repo>/target/debug/spated)
  SPATE_KAFKA_LIB    dir with the Kafka jars (default <repo>/target/kafka-jars/lib)
  SPATE_TEST_WORK    where data dirs and logs go (default <repo>/target/system-tests); must be
                     a real disk (spated uses O_DIRECT, which tmpfs does not support)
  SPATE_KEEP_DATA    1 = keep data dirs / logs of passing tests too
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import kafka_wire

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TARGET = os.environ.get("SPATE_TEST_TARGET", "spate").strip().lower() or "spate"
if TARGET not in ("spate", "kafka"):
    raise RuntimeError(f"SPATE_TEST_TARGET must be 'spate' or 'kafka', not {TARGET!r}")
SPATE_BIN = Path(os.environ.get("SPATE_BIN", REPO / "target" / "debug" / "spated"))
KAFKA_LIB = Path(os.environ.get("SPATE_KAFKA_LIB", REPO / "target" / "kafka-jars" / "lib"))
WORK_ROOT = Path(os.environ.get("SPATE_TEST_WORK", REPO / "target" / "system-tests"))
KEEP_DATA = os.environ.get("SPATE_KEEP_DATA") == "1"
LOG4J_CONFIG = HERE / "java" / "log4j2.properties"

HOST = "127.0.0.1"

_LIVE: "set[Broker]" = set()


@atexit.register
def _kill_leftovers() -> None:
    for b in list(_LIVE):
        b.kill()

# Main classes of the Kafka 4.x command line tools (verified against the 4.1.1 jars).
TOOL_MAIN_CLASSES = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",  # still Scala, in the core jar
    "kafka-broker-api-versions": "org.apache.kafka.tools.BrokerApiVersionsCommand",
    "kafka-storage": "kafka.tools.StorageTool",  # Scala, core jar
    "kafka-server": "kafka.Kafka",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
}


class ToolResult(NamedTuple):
    rc: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


_topic_counter = itertools.count()


def unique_topic(prefix: str = "t") -> str:
    """A topic name no other test (or earlier run on the same data dir) uses."""
    return f"{prefix}-{os.getpid()}-{next(_topic_counter)}-{uuid.uuid4().hex[:6]}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def ensure_kafka_jars() -> Path:
    """Fetch the Kafka jars if they are not there yet (same script CI uses)."""
    if not any(KAFKA_LIB.glob("kafka-tools-*.jar")):
        subprocess.run(["bash", str(HERE / "fetch-kafka-jars.sh"), str(KAFKA_LIB)],
                       check=True, timeout=900)
    return KAFKA_LIB


def java_command(main_class: str, *args: str, heap: str = "256m", log_level: str = "WARN",
                 server: bool = False) -> list[str]:
    jvm = [
        "java",
        f"-Xmx{heap}",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dspate.log.level={log_level}",
        "-Dlog4j2.disableJmx=true",
    ]
    if server:
        jvm += ["-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    else:
        # CLI tools: start fast, run briefly.
        jvm += ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"]
    return jvm + ["-cp", f"{ensure_kafka_jars()}/*", main_class, *args]


_cds_attempted = False


def _cds_archive() -> Path:
    """AppCDS archive of the tool classes: halves the ~0.7 s JVM start of every tool call.
    Keyed on the JVM binary; the JVM itself ignores an archive whose classpath changed."""
    java = os.path.realpath(shutil.which("java") or "java")
    try:
        ident = f"{java}:{os.stat(java).st_mtime_ns}:{sorted(os.listdir(KAFKA_LIB))}"
    except OSError:
        ident = "unknown"
    key = hashlib.sha1(ident.encode()).hexdigest()[:12]
    return KAFKA_LIB.parent / f"tools-cds-{key}.jsa"


def _cds_flags() -> tuple[list[str], Path | None]:
    global _cds_attempted
    if os.environ.get("SPATE_TOOLS_CDS", "1") != "1":
        return [], None
    archive = _cds_archive()
    # -Xlog:disable: the JVM's own (CDS) warnings would otherwise land on the tool's stdout.
    if archive.exists():
        return ["-Xlog:disable", f"-XX:SharedArchiveFile={archive}"], None
    if _cds_attempted:
        return ["-Xlog:disable"], None
    _cds_attempted = True
    tmp = archive.with_name(f"{archive.name}.{os.getpid()}.tmp")
    return ["-Xlog:disable", f"-XX:ArchiveClassesAtExit={tmp}"], tmp


def kafka_tool(name: str, *args: str, timeout: float = 90) -> ToolResult:
    """Run a Kafka CLI tool (e.g. "kafka-topics") and return (rc, stdout, stderr)."""
    main_class = TOOL_MAIN_CLASSES.get(name, name)
    cmd = java_command(main_class, *[str(a) for a in args])
    flags, dumping = _cds_flags()
    cp = cmd.index("-cp")
    cmd = cmd[:cp] + flags + cmd[cp:]
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
        if dumping is not None and dumping.exists():
            archive = _cds_archive()
            for stale in archive.parent.glob("tools-cds-*.jsa"):
                stale.unlink(missing_ok=True)
            os.replace(dumping, archive)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise AssertionError(f"{name} {' '.join(args)} timed out after {timeout}s\n"
                             f"stdout:\n{out}\nstderr:\n{err}") from None
    return ToolResult(p.returncode, p.stdout, p.stderr)


class BrokerError(RuntimeError):
    pass


class Broker:
    """One broker process (spated or a reference Kafka) with its data dir and log file."""

    def __init__(self, name: str = "broker", target: str = TARGET, smp: int = 2,
                 advertised_port: int | None = None, retention_check_ms: int | None = None,
                 relative_data_dir: bool = False):
        self.target = target
        self.name = name
        # How often retention runs (spated's --log-retention-check-interval-ms, Kafka's
        # log.retention.check.interval.ms); None: each broker's default (5 minutes).
        self.retention_check_ms = retention_check_ms
        # spated only: pass the data dir relative to the broker's working directory (the
        # README's quick start uses the default ./data).
        self.relative_data_dir = relative_data_dir
        if target == "spate" and not SPATE_BIN.exists():
            raise BrokerError(f"spated binary not found at {SPATE_BIN} "
                              "(cargo build -p spate-broker --bin spated, or set SPATE_BIN)")
        self.smp = smp
        WORK_ROOT.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix=f"{target}-{name}-", dir=WORK_ROOT))
        self.data_dir = self.work_dir / "data"
        self.data_dir.mkdir()
        self.log_path = self.work_dir / "broker.log"
        self.port = free_port()
        self.admin_port = free_port()
        self.controller_port = free_port()
        # Clients are told to connect here (e.g. a tracing proxy in front of the broker).
        self.advertised_port = advertised_port or self.port
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.starts = 0
        self.expect_running = False  # True between a successful start() and stop()
        if target == "kafka":
            self._prepare_kafka()

    # ------------------------------------------------------------ public API

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def host(self) -> str:
        return HOST

    def start(self, timeout: float = 60.0) -> "Broker":
        if self.proc is not None and self.proc.poll() is None:
            raise BrokerError("already running")
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n===== start #{self.starts + 1} =====\n".encode())
        self._log_file.flush()
        env = dict(os.environ)
        if self.target == "spate":
            env.setdefault("RUST_LOG", "info")
            env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.work_dir, start_new_session=True)
        self.starts += 1
        _LIVE.add(self)
        self._wait_ready(timeout)
        self.expect_running = True
        return self

    def stop(self, timeout: float = 10.0, expect_clean: bool = True) -> int:
        """SIGTERM and wait; asserts a clean exit (0; Kafka's JVM may also report 143)."""
        if self.proc is None:
            raise BrokerError("never started")
        if self.proc.poll() is not None:
            self.expect_running = False
            rc = self.proc.returncode
            self._closed(rc)
            raise BrokerError(f"{self.target} had already exited with {rc}\n{self.log_tail()}")
        self.expect_running = False
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.target} did not exit within {timeout}s of SIGTERM\n"
                                 f"{self.log_tail()}") from None
        self._closed(rc)
        if expect_clean:
            ok = (0,) if self.target == "spate" else (0, 143)
            assert rc in ok, f"{self.target} exited with {rc} after SIGTERM\n{self.log_tail()}"
        return rc

    def restart(self, timeout: float = 60.0) -> "Broker":
        """Clean stop (asserted), then start again on the same data dir and ports."""
        self.stop()
        return self.start(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            self._closed(self.proc.returncode)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, max_bytes: int = 12000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - max_bytes))
                data = f.read().decode(errors="replace")
        except OSError as e:
            return f"<no log: {e}>"
        head = f"--- {self.target} log {self.log_path} (last {max_bytes} bytes) ---\n"
        return head + data

    def cleanup(self, keep: bool = False) -> None:
        self.kill()
        if not keep and not KEEP_DATA:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ------------------------------------------------------------ internals

    def _closed(self, rc) -> None:
        _LIVE.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _command(self) -> list[str]:
        if self.target == "spate":
            if not SPATE_BIN.exists():
                raise BrokerError(f"spated binary not found at {SPATE_BIN} "
                                  "(cargo build -p spate-broker --bin spated, or set SPATE_BIN)")
            return [
                str(SPATE_BIN),
                "--data-dir", "data" if self.relative_data_dir else str(self.data_dir),
                "--kafka-addr", self.bootstrap,
                "--advertised-kafka-addr", f"{HOST}:{self.advertised_port}",
                "--admin-addr", f"{HOST}:{self.admin_port}",
                "--smp", str(self.smp),
                "--node-id", "0",
                # As the Kafka target's group.initial.rebalance.delay.ms below.
                "--group-initial-rebalance-delay-ms", "0",
            ] + ([] if self.retention_check_ms is None else
                 ["--log-retention-check-interval-ms", str(self.retention_check_ms)])
        return java_command(TOOL_MAIN_CLASSES["kafka-server"], str(self.work_dir / "server.properties"),
                            heap="768m", log_level="INFO", server=True)

    def _prepare_kafka(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "0",
            "controller.quorum.voters": f"0@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.advertised_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "16",  # as spated's __consumer_offsets
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        if self.retention_check_ms is not None:
            props["log.retention.check.interval.ms"] = str(self.retention_check_ms)
            # The log cleaner's idle sleep (15 s by default): spated compacts in its
            # retention pass, so both check as often.
            props["log.cleaner.backoff.ms"] = str(self.retention_check_ms)
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        (self.work_dir / "server.properties").write_text(text)
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's Uuid.randomUuid(): "-x" reads as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        r = kafka_tool("kafka-storage", "format", "--config", str(self.work_dir / "server.properties"),
                       "--cluster-id", cluster_id, "--ignore-formatted", timeout=120)
        if r.rc != 0:
            raise BrokerError(f"kafka-storage format failed rc={r.rc}\n{r.stdout}\n{r.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        """Ready = answers ApiVersions and lists itself (node 0) in Metadata."""
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self._closed(rc)
                raise BrokerError(f"{self.target} exited with {rc} during startup\n{self.log_tail()}")
            try:
                resp = kafka_wire.api_versions(HOST, self.port, version=3, timeout=2.0)
                if resp.error_code != 0:
                    raise BrokerError(f"ApiVersions error {resp.error_code}")
                ids = kafka_wire.metadata_broker_ids(HOST, self.port, timeout=2.0)
                if 0 in ids:
                    return
                last_err = BrokerError(f"metadata lists brokers {ids}")
            except (OSError, ValueError, BrokerError, ConnectionError) as e:
                last_err = e
            time.sleep(0.1)
        self.kill()
        raise BrokerError(f"{self.target} not ready within {timeout}s (last: {last_err!r})\n"
                          f"{self.log_tail()}")
