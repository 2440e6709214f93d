"""Effectively-once delivery between the two keyed state machines.

Kafka, as Bytewax uses it, delivers at least once: after a crash the flow
rewinds to its last snapshot and emits again what it had already written.
Every message from one machine to another therefore carries a sequence
number that grows by one per (origin, destination) pair. The receiver applies
``n`` only after ``n - 1``: a number it has seen is a replay and is dropped; a
number from the future (a gap, which an idempotent producer never leaves) is
parked until the gap fills, so nothing is applied out of order or lost.

>>> inbox: Inbound[str] = Inbound()
>>> inbox.accept("BTC-USDT", 1, "a")
['a']
>>> inbox.accept("BTC-USDT", 1, "a")  # a replay
[]
>>> inbox.accept("BTC-USDT", 3, "c")  # early: parked
[]
>>> inbox.accept("BTC-USDT", 2, "b")
['b', 'c']
>>> inbox.in_line("BTC-USDT", 4), inbox.in_line("BTC-USDT", 4)
(True, False)
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

__all__ = ["Inbound", "Outbound"]

M = TypeVar("M")


class Inbound(Generic[M]):
    """The receiving side: last applied sequence per origin, and parked early arrivals."""

    __slots__ = ("applied", "parked")

    def __init__(
        self,
        applied: dict[str, int] | None = None,
        parked: dict[str, dict[int, M]] | None = None,
    ) -> None:
        self.applied: dict[str, int] = applied if applied is not None else {}
        self.parked: dict[str, dict[int, M]] = parked if parked is not None else {}

    def in_line(self, src: str, seq: int) -> bool:
        """Whether ``seq`` is next from ``src`` with nothing parked: then it is taken as
        applied, and the caller applies the message at once (no list, no copy). When
        it is not, the caller hands the message to ``accept``."""
        if self.parked or seq != self.applied.get(src, 0) + 1:
            return False
        self.applied[src] = seq
        return True

    def accept(self, src: str, seq: int, message: M) -> list[M]:
        """The messages now due, in order: none for a replay, several when a gap fills."""
        last = self.applied.get(src, 0)
        if seq == last + 1 and not self.parked:  # the common case: next in line
            self.applied[src] = seq
            return [message]
        if seq <= last:
            return []
        if seq > last + 1:
            self.parked.setdefault(src, {})[seq] = message
            return []
        due = [message]
        waiting = self.parked.get(src)
        while waiting and seq + 1 in waiting:
            seq += 1
            due.append(waiting.pop(seq))
        if waiting is not None and not waiting:
            del self.parked[src]
        self.applied[src] = seq
        return due

    @property
    def gaps(self) -> int:
        """How many messages wait for an earlier one: zero unless delivery misbehaves."""
        return sum(len(waiting) for waiting in self.parked.values())

    def snapshot(self) -> tuple[dict[str, int], dict[str, dict[int, Any]]]:
        return dict(self.applied), {src: dict(w) for src, w in self.parked.items()}


class Outbound:
    """The sending side: the next sequence number per destination."""

    __slots__ = ("sent",)

    def __init__(self, sent: dict[str, int] | None = None) -> None:
        self.sent: dict[str, int] = sent if sent is not None else {}

    def next(self, dest: str) -> int:
        seq = self.sent.get(dest, 0) + 1
        self.sent[dest] = seq
        return seq
