"""Keep the exchange's processes running: restart what dies, stop everything in order.

``crypton up`` hands the broker, the dataflow and the API to a
:class:`Supervisor`. A process that exits on its own is restarted after a delay
that doubles on each quick failure (1s, 2s, 4s, ... up to a cap), so a crash
loop does not spin a core while a transient fault (the broker restarting) heals
by itself. Ctrl-C or SIGTERM stops the processes in reverse start order: the API
first (no new commands), then the dataflow (it has consumed what it could), the
broker last (it has acknowledged everything the others wrote).

The nodes of a Kafka cluster are one *group*: each is restarted on its own, but
they stop together. Stopped one by one, the last nodes of a three-node cluster
lose their quorum and wait for it until the grace period ends (and controlled
shutdown of a broker needs the controller quorum), so a group gets SIGTERM at
once and shares one grace period.

Processes that only work as a whole (the Bytewax processes of one dataflow: a Timely
cluster connects its peers once, at start) are one :class:`Together`: when any member
exits, the others are stopped and all of them start again, from the last snapshot.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

__all__ = ["Managed", "Supervisor", "Together"]


class Managed(Protocol):
    """What the supervisor needs of a process: :class:`crypton.process.Child` and
    :class:`crypton.broker.BrokerNode` both fit."""

    name: str
    log_path: Path

    @property
    def running(self) -> bool: ...

    def start(self) -> object: ...

    def poll(self) -> int | None: ...

    def stop(self, grace: float = ...) -> int | None: ...


class Together:
    """Processes that live and die as one, supervised as a single :class:`Managed`.

    A Timely cluster (``bytewax.run -i N -a ...``) makes its connections at start: a
    process restarted alone finds its peers past their handshake, and the peers of a
    dead process may wait for it forever. So the first member to exit is the exit code
    of the whole; :meth:`start` stops any member still running before it starts them
    all, and :meth:`stop` stops them together (SIGTERM to all, one grace period).
    """

    def __init__(self, name: str, members: Sequence[Managed]) -> None:
        if not members:
            raise ValueError("Together needs at least one member")
        self.name = name
        self.members = list(members)
        self.log_path = self.members[0].log_path

    @property
    def running(self) -> bool:
        return all(m.running for m in self.members)

    def start(self) -> Together:
        self.stop()
        for member in self.members:
            member.start()
        return self

    def poll(self) -> int | None:
        """The exit code of the first member found ended, else ``None``."""
        for member in self.members:
            code = member.poll()
            if code is not None:
                self.log_path = member.log_path  # the log that says why
                return code
        return None

    def stop(self, grace: float = 10.0) -> int | None:
        """Stop every member at once; the code of the first member (``None``: never ran)."""
        running = [m for m in self.members if m.running]
        if len(running) > 1:
            with ThreadPoolExecutor(len(running), f"{self.name}-stop") as pool:
                list(pool.map(lambda m: m.stop(grace), running))
        elif running:
            running[0].stop(grace)
        return self.members[0].poll()


@dataclass
class _Slot:
    process: Managed
    delay: float
    group: int
    restart_at: float | None = None
    started_at: float = 0.0
    restarts: int = 0


def _say(line: str) -> None:
    print(line, flush=True)


class Supervisor:
    """Run processes, restart them with exponential backoff, stop them in reverse order.

    Each item of ``processes`` is a process or a group of processes (a sequence):
    members of a group start and restart each on its own but stop together.
    ``backoff`` is the first delay, doubled on each restart up to ``max_backoff``,
    and reset once a process has stayed up for ``stable_after`` seconds.
    """

    def __init__(
        self,
        processes: Sequence[Managed | Sequence[Managed]],
        *,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        stable_after: float = 30.0,
        grace: float = 10.0,
        say: Callable[[str], None] = _say,
    ) -> None:
        self._slots = [
            _Slot(member, backoff, group)
            for group, item in enumerate(processes)
            for member in (item if isinstance(item, Sequence) else [item])
        ]
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.grace = grace
        self.say = say
        self._stop = threading.Event()
        self.stop_reason: str | None = None

    def restarts(self, name: str) -> int:
        """How many times the process called ``name`` was restarted."""
        return next(s.restarts for s in self._slots if s.process.name == name)

    def start(self) -> None:
        """Start, in order, every process that is not running yet.

        Processes the caller already started (the broker, which must be ready
        before topics are created) are taken over as they are.
        """
        for slot in self._slots:
            if slot.process.running:
                slot.started_at = time.monotonic()
            else:
                self._launch(slot)

    def _launch(self, slot: _Slot) -> bool:
        slot.started_at = time.monotonic()
        slot.restart_at = None
        try:
            slot.process.start()
        except Exception as exc:
            # A start that fails (port still taken, binary missing) is one more
            # failure to back off from, not the end of the supervisor.
            self._schedule(slot, f"{slot.process.name} failed to start: {exc}")
            return False
        return True

    def _schedule(self, slot: _Slot, what: str) -> None:
        now = time.monotonic()
        if now - slot.started_at >= self.stable_after:
            slot.delay = self.backoff
        self.say(f"{what}; restarting in {slot.delay:g}s (log: {slot.process.log_path})")
        slot.restart_at = now + slot.delay
        slot.delay = min(slot.delay * 2, self.max_backoff)

    def check(self) -> None:
        """Notice exited processes and restart those whose delay has passed."""
        now = time.monotonic()
        for slot in self._slots:
            if self._stop.is_set():
                return
            if slot.restart_at is not None:
                if now >= slot.restart_at and self._launch(slot):
                    slot.restarts += 1
                    self.say(f"{slot.process.name} restarted")
                continue
            code = slot.process.poll()
            if code is not None:
                self._schedule(slot, f"{slot.process.name} exited with code {code}")

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask :meth:`run` to stop everything; safe from a signal handler or another thread."""
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(f"received {signal.Signals(signum).name}")

    def run(self, poll_interval: float = 0.2, handle_signals: bool = True) -> None:
        """Supervise until :meth:`request_stop` (or SIGINT/SIGTERM), then stop everything."""
        previous = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            while not self._stop.wait(poll_interval):
                self.check()
        finally:
            self.say(f"stopping ({self.stop_reason or 'interrupted'})")
            self.stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop_all(self) -> None:
        """Stop every group, the last started first; a group's members stop together,
        each with the grace period."""
        self._stop.set()
        groups: dict[int, list[Managed]] = {}
        for slot in reversed(self._slots):
            groups.setdefault(slot.group, []).append(slot.process)
        for members in groups.values():
            running = [p for p in members if p.poll() is None]
            if len(running) == 1:
                self._stop_one(running[0])
            elif running:
                with ThreadPoolExecutor(len(running), "crypton-stop") as pool:
                    list(pool.map(self._stop_one, running))

    def _stop_one(self, process: Managed) -> None:
        began = time.monotonic()
        code = process.stop(self.grace)
        took = time.monotonic() - began
        self.say(f"{process.name} stopped (code {code}, {took:.1f}s)")
