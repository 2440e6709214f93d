"""Apache Kafka on this machine: its jars from Maven, KRaft nodes on loopback.

The jars are fetched once per user with ``mvn dependency:copy-dependencies`` on
the packaged ``pom.xml`` into ``~/.cache/crypton/kafka-VERSION/libs`` (or
``$CRYPTON_KAFKA_HOME``). A node is ``java -cp 'libs/*' kafka.Kafka
server.properties``: one combined broker+controller per node, data under
``$CRYPTON_DATA_DIR/kafka/node-N``, formatted on first start.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from crypton.broker._security import ScramSecurity

__all__ = [
    "KAFKA_VERSION",
    "JavaMissingError",
    "KafkaLayout",
    "ensure_kafka_jars",
    "java_binary",
    "kafka_home",
]

KAFKA_VERSION = "4.4.0"
"""The Apache Kafka release the embedded broker runs (also pinned in ``pom.xml``)."""

MIN_JAVA = 17
JAVA_OPTS = "-XX:TieredStopAtLevel=1"
"""Extra JVM options of each node (``CRYPTON_KAFKA_JAVA_OPTS`` replaces them; empty for
none). The client JIT only: on a small machine shared with the exchange, the server JIT's
compiler threads took 0.5-0.7 of a core for the broker's first minutes (its request work
took less), and its code did not beat the client JIT's even after a million records
(``python -m loadtest.bench_pipeline --warmup 1000000``: the broker at 23-24% of a core
for the baseline loop with it, 35-49% without)."""
WITHOUT_JAVA = "or run without Java: CRYPTON_BROKER=tansu (memory only; see the README)"


class JavaMissingError(RuntimeError):
    """Java or Maven is missing or too old; the message says what to install, in one line."""


def _packaged(name: str) -> Path:
    return Path(str(resources.files("crypton.broker").joinpath(name)))


def kafka_home() -> Path:
    """Where the jars of :data:`KAFKA_VERSION` live (``$CRYPTON_KAFKA_HOME`` wins)."""
    explicit = os.environ.get("CRYPTON_KAFKA_HOME")
    if explicit:
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "crypton" / f"kafka-{KAFKA_VERSION}"


def java_binary() -> str:
    """The ``java`` to run Kafka with (``$JAVA_HOME/bin/java`` first); checks it is 17+."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else None
    if java is None or not os.access(java, os.X_OK):
        java = shutil.which("java")
    if java is None:
        raise JavaMissingError(
            f"Apache Kafka needs Java {MIN_JAVA}+, and 'java' is not on PATH:"
            f" install a JDK {MIN_JAVA} (e.g. apt-get install openjdk-17-jre-headless),"
            f" {WITHOUT_JAVA}"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise JavaMissingError(f"cannot run {java}: {exc}; {WITHOUT_JAVA}") from None
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_392" is Java 8
        major = int(found.group(2))
    if major < MIN_JAVA:
        raise JavaMissingError(
            f"Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+, {java} is Java {major or '?'}:"
            f" install a JDK {MIN_JAVA}, {WITHOUT_JAVA}"
        )
    return java


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Test sessions and `crypton up` may start at the same time: one fetches.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_kafka_jars(say: Callable[[str], None] = print) -> Path:
    """Return the directory of Kafka's jars, fetching them with Maven the first time.

    Raises :class:`JavaMissingError` when they must be fetched and ``mvn`` is missing.
    """
    home = kafka_home()
    libs = home / "libs"
    if (home / "COMPLETE").is_file():
        return libs
    with _locked(home.parent / f".kafka-{KAFKA_VERSION}.lock"):
        if (home / "COMPLETE").is_file():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise JavaMissingError(
                f"Apache Kafka's jars are not in {home} and 'mvn' is not on PATH to fetch them:"
                f" install Maven (apt-get install maven), {WITHOUT_JAVA}"
            )
        say(f"fetching Apache Kafka {KAFKA_VERSION} with Maven into {home} (once, ~45 MB)")
        started = time.monotonic()
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="crypton-kafka-pom-") as work:
            pom = Path(work) / "pom.xml"
            shutil.copyfile(_packaged("pom.xml"), pom)
            staging = home / "libs.partial"
            shutil.rmtree(staging, ignore_errors=True)
            result = subprocess.run(
                [
                    mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
                ],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if result.returncode != 0:
                lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
                why = next((ln for ln in lines if "ERROR" in ln), lines[-1] if lines else "")
                raise JavaMissingError(
                    f"mvn could not fetch Apache Kafka {KAFKA_VERSION}: {why.strip()[:300]}"
                )
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        shutil.copyfile(_packaged("log4j2.yaml"), home / "log4j2.yaml")
        (home / "COMPLETE").write_text(f"{KAFKA_VERSION}\n")
        jars = list(libs.iterdir())
        size = sum(f.stat().st_size for f in jars) >> 20
        say(f"fetched {len(jars)} jars ({size} MB) in {time.monotonic() - started:.0f}s")
    return libs


@dataclass(frozen=True)
class KafkaLayout:
    """A local KRaft cluster of ``nodes`` combined broker+controller nodes on one host.

    Node ``i`` (from 1) serves clients on ``port + i - 1`` and its controller on
    ``port + nodes + i - 1``: 9092 and 9093 for one node, 9092-9094 and
    9095-9097 for three.

    >>> layout = KafkaLayout(Path("/d"), "127.0.0.1", 9092, 3)
    >>> layout.bootstrap
    '127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094'
    >>> layout.voters
    '1@127.0.0.1:9095,2@127.0.0.1:9096,3@127.0.0.1:9097'
    >>> layout.properties(2)["controlled.shutdown.enable"]
    'false'
    >>> "controlled.shutdown.enable" in KafkaLayout(Path("/d"), "127.0.0.1", 9092).properties(1)
    False
    """

    root: Path
    host: str
    port: int
    nodes: int = 1
    extra: Mapping[str, str] = field(default_factory=dict)
    """Properties added to (or replacing) every node's defaults (and security's)."""
    security: ScramSecurity | None = None
    """SASL/SCRAM listeners and ACLs instead of the open PLAINTEXT listener."""

    def client_port(self, node: int) -> int:
        return self.port + node - 1

    def controller_port(self, node: int) -> int:
        return self.port + self.nodes + node - 1

    def ports(self) -> list[int]:
        """Every port the cluster binds."""
        return [
            p
            for n in range(1, self.nodes + 1)
            for p in (self.client_port(n), self.controller_port(n))
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{self.client_port(n)}" for n in range(1, self.nodes + 1))

    @property
    def voters(self) -> str:
        return ",".join(
            f"{n}@{self.host}:{self.controller_port(n)}" for n in range(1, self.nodes + 1)
        )

    def node_dir(self, node: int) -> Path:
        return self.root / f"node-{node}"

    def properties(self, node: int) -> dict[str, str]:
        """``server.properties`` of one node, sized for a small machine."""
        replicas = str(min(self.nodes, 3))
        min_isr = "2" if self.nodes >= 3 else "1"
        client, controller = self.client_port(node), self.controller_port(node)
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node),
            "controller.quorum.voters": self.voters,
            "listeners": f"PLAINTEXT://{self.host}:{client},CONTROLLER://{self.host}:{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{client}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.node_dir(node) / "data"),
            # Replicated as a real cluster would be: every topic on three nodes and a
            # write acknowledged by two of them (acks=all) before a client sees it.
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "unclean.leader.election.enable": "false",
            # Small internal topics and few threads: two cores, several processes.
            "offsets.topic.num.partitions": "8",
            "transaction.state.log.num.partitions": "4",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "2",
            "num.recovery.threads.per.data.dir": "2",
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created by `crypton topics` with their partition count; a typo
            # in a client must not create a topic with the wrong one.
            "auto.create.topics.enable": "false",
            # The cleaner looks for compactable segments every few seconds, so a
            # compacted state topic shrinks soon after its segments roll, and cleans a
            # log once a tenth of it is new since it last did (the default waits for
            # half: a topic whose records are replaced a few at a time, like the bases,
            # could wait a long while).
            "log.cleaner.backoff.ms": "2000",
            "log.cleaner.min.cleanable.ratio": "0.1",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 << 20),
        }
        if self.nodes > 1:
            # The nodes stop together (crypton.supervisor). A node's controlled shutdown
            # waits for the controller quorum to approve it, and the last node to stop
            # has no quorum left: it waited until its SIGKILL (the 3-node fault test's
            # teardown, now and then). Without it a stopping node still closes its logs
            # cleanly; its partitions' leadership moves when it is gone, as on a crash.
            props["controlled.shutdown.enable"] = "false"
        if self.security is not None:
            props.update(self.security.listeners(self.host, client, controller))
            props.update(self.security.properties())
        props.update(self.extra)
        return props

    def write_properties(self, node: int) -> Path:
        path = self.node_dir(node) / "server.properties"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in self.properties(node).items()]
        path.write_text("# written by crypton at each start\n" + "\n".join(lines) + "\n")
        return path

    def cluster_id(self) -> str:
        """The cluster's id, made once and kept in the data directory."""
        path = self.root / "cluster.id"
        if path.is_file():
            return path.read_text().strip()
        self.root.mkdir(parents=True, exist_ok=True)
        made = "-"
        while made.startswith("-"):  # the storage tool would read "-abc" as an option
            made = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        path.write_text(made + "\n")
        return made

    def check_shape(self) -> None:
        """A data directory formatted for N nodes cannot run as M: fail in one line."""
        path = self.root / "nodes"
        if path.is_file():
            had = int(path.read_text().strip() or "0")
            if had != self.nodes:
                raise ValueError(
                    f"{self.root} holds a {had}-node Kafka cluster, not {self.nodes}:"
                    " use another CRYPTON_DATA_DIR (or delete that one)"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{self.nodes}\n")

    def java_command(self, java: str, libs: Path, node: int, main: str, *args: str) -> list[str]:
        """``java ... MAIN ARGS`` with Kafka's classpath, logging and a small heap."""
        heap = os.environ.get("CRYPTON_KAFKA_HEAP", "512m")
        extra = os.environ.get("CRYPTON_KAFKA_JAVA_OPTS", JAVA_OPTS).split()
        return [
            java, f"-Xmx{heap}", "-Xms128m", "-Xss1m",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
            "-XX:+DisableExplicitGC", "-Djava.awt.headless=true", *extra,
            f"-Dlog4j2.configurationFile={libs.parent / 'log4j2.yaml'}",
            "-cp", f"{libs}/*", main, *args,
        ]  # fmt: skip

    def format_node(self, java: str, libs: Path, node: int) -> None:
        """Format a node's storage on its first start (``kafka-storage format``)."""
        props = self.write_properties(node)
        if (self.node_dir(node) / "data" / "meta.properties").is_file():
            return
        argv = self.java_command(
            java, libs, node, "kafka.tools.StorageTool", "format",
            "-t", self.cluster_id(), "-c", str(props), "--ignore-formatted",
            *(self.security.format_args() if self.security else []),
        )  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
            raise RuntimeError(
                f"formatting Kafka storage of node {node} failed: {lines[-1] if lines else '?'}"
            )

    def node_command(self, java: str, libs: Path, node: int) -> list[str]:
        return self.java_command(
            java, libs, node, "kafka.Kafka", str(self.node_dir(node) / "server.properties")
        )
