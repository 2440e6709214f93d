"""Child processes of the exchange: started with their output in a log file, stopped cleanly.

Every process Crypton starts (broker, dataflow, API, test servers) goes through
:class:`Child`, so they all share one policy: the child gets its own session,
so a Ctrl-C in the terminal reaches only the parent, which stops the children
in a chosen order; and the kernel sends the child SIGTERM if the parent dies,
so no orphan keeps a port or a data directory busy.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from crypton.config import CLIENT_SECURITY_ENV, Settings

__all__ = ["Child", "free_port", "free_ports", "log_tail", "settings_env", "wait_for_port"]

_PR_SET_PDEATHSIG = 1
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Lines that say nothing about why a child stopped (loader warnings, banners).
_NOISE = ("GLIBC_2.", "press Ctrl-C to stop", "RUST_BACKTRACE", "stack backtrace")


def _load_prctl() -> object | None:
    # Resolved in the parent: the pre-exec hook runs between fork and exec,
    # where loading a library (imports, locks) could deadlock.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _die_with_parent() -> None:
    # SIGTERM rather than SIGKILL: a Kafka node then shuts down cleanly.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # type: ignore[operator]


class Child:
    """One child process whose stdout and stderr go to ``log_path`` (appended).

    >>> child = Child("sleeper", ["sleep", "30"], Path("/tmp/sleeper.log")).start()
    >>> child.stop()
    -15
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> Child:
        """Start the process (again, if it ran before); its output is appended to the log."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} start {self.argv}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                # Only calls a function resolved before fork (see _load_prctl).
                preexec_fn=_die_with_parent,  # noqa: PLW1509
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def poll(self) -> int | None:
        """The exit code if the process has ended, else ``None`` (also before start)."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end and return its exit code."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.wait(timeout)

    def signal(self, signum: int) -> None:
        """Send a signal to the process and its group if it still runs."""
        if self._proc is not None and self._proc.poll() is None:
            # The group too: a wrapper script that forked the real server must
            # not leave it behind.
            try:
                os.killpg(self._proc.pid, signum)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signum)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if the process is still there after ``grace`` seconds.

        Returns the exit code (negative: the signal that ended it), ``None`` if never started.
        """
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self._proc.wait()
        return self._proc.returncode

    def _kill_group(self) -> None:
        # The child leads its own session, so its group holds any helpers it forked.
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self._proc.kill()

    def tail(self, lines: int = 1) -> str:
        """The last meaningful lines of the log, for error messages."""
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = 1) -> str:
    """The last ``lines`` lines of a log file, without colour codes or known noise."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = []
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).strip()
        if line and not line.startswith("--- ") and not any(n in line for n in _NOISE):
            kept.append(line)
    return " | ".join(kept[-lines:])


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child's ``Settings.from_env()`` equal ``settings``.

    Starts from ``base`` (default: this process's environment), so unrelated
    variables (PATH, API knobs) pass through.
    """
    env = dict(os.environ if base is None else base)
    env.update(
        CRYPTON_DATA_DIR=str(settings.data_dir.absolute()),
        CRYPTON_BROKER=settings.broker,
        CRYPTON_KAFKA_HOST=settings.kafka_host,
        CRYPTON_KAFKA_PORT=str(settings.kafka_port),
        CRYPTON_KAFKA_NODES=str(settings.nodes),
        CRYPTON_TOPIC_PREFIX=settings.topic_prefix,
        CRYPTON_PARTITIONS=str(settings.partitions),
        CRYPTON_API_HOST=settings.api_host,
        CRYPTON_API_PORT=str(settings.api_port),
        CRYPTON_SNAPSHOT_SECONDS=str(settings.snapshot_seconds),
        CRYPTON_STATE_SEGMENT_MS=str(settings.state_segment_ms),
    )
    if settings.bootstrap:
        env["CRYPTON_KAFKA_BOOTSTRAP"] = settings.bootstrap
    else:
        env.pop("CRYPTON_KAFKA_BOOTSTRAP", None)
    for name, key in CLIENT_SECURITY_ENV.items():
        value = dict(settings.security).get(key)
        if value:
            env[name] = value
        else:
            env.pop(name, None)
    if settings.kafka_config_file is not None:
        env["CRYPTON_KAFKA_CONFIG"] = str(settings.kafka_config_file.absolute())
    else:
        env.pop("CRYPTON_KAFKA_CONFIG", None)
    if settings.markets_file is not None:
        env["CRYPTON_MARKETS"] = str(settings.markets_file.absolute())
    else:
        env.pop("CRYPTON_MARKETS", None)
    # In a source checkout, ``dataflows`` and ``api`` sit next to ``crypton``
    # but an editable install may only map ``crypton``: children started by
    # module name must find them from any working directory.
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file():
        paths = [str(root), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free TCP ports (a Kafka node needs two).

    Picked below the kernel's ephemeral range: a port from that range can be taken
    by any outgoing connection between the pick and the server's bind.

    >>> base = free_ports(3)
    >>> 1024 < base < 65533
    True
    """
    low, _ = _ephemeral_range()
    top = max(low, 20000 + count)
    for _ in range(500):
        base = random.randrange(15000, top - count)
        if all(_bindable(host, port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports on {host}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now, outside the ephemeral range."""
    return free_ports(1, host)


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    child: Child | None = None,
    stop: threading.Event | None = None,
) -> bool:
    """Whether ``host:port`` accepts connections within ``timeout`` seconds.

    Gives up early if ``child`` exits or ``stop`` (a ``threading.Event``) is set.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and child.poll() is not None:
            return False
        if stop is not None and stop.is_set():
            return False
        try:
            with socket.create_connection((host, port), 0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False
