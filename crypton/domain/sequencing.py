"""Effectively-once delivery between the two keyed state machines, in bounded memory.

Kafka, as Bytewax uses it, delivers at least once: after a crash the flow
rewinds to its last snapshot and emits again what it had already written. So
every message one machine sends another carries two numbers:

* ``seq``: the sender's own output counter (one per sender, whatever the
  destination), so it only grows: a receiver that has applied ``seq`` from an
  origin knows every lower number from it is old;
* ``prev``: the ``seq`` of the sender's previous message to the same
  destination, or 0 if it has none or has forgotten that destination.

The receiver keeps ``applied[origin]``, the last ``seq`` it applied, and
decides (``Inbound.accept``):

* ``seq <= applied``: a repeat, dropped;
* ``prev <= applied < seq``: in line, applied (``prev == 0`` says the sender
  starts a new chain: nothing earlier to wait for);
* ``prev > applied``: an early arrival, parked until the chain reaches it: the
  gap check (an idempotent producer never leaves a gap) of every live chain.

>>> inbox: Inbound[str] = Inbound()
>>> inbox.accept("BTC-USDT", 10, 0, "a")
['a']
>>> inbox.accept("BTC-USDT", 10, 0, "a")  # a repeat
[]
>>> inbox.accept("BTC-USDT", 30, 20, "c")  # early: 20 is missing
[]
>>> inbox.accept("BTC-USDT", 20, 10, "b")
['b', 'c']

Bounded state. Time is message time, never the wall clock: a machine's clock
is the largest command ``ts`` it has seen, so a replay forgets exactly what
the first run forgot. A ``Recent`` map forgets a key not used for between one
and two ``DEDUPE_WINDOW_MS`` (W) of that clock: two generations, the current
one and the previous one, swapped once per W, so forgetting costs O(1) per
message and never scans. A book forgets the users it no longer hears from
(``Inbound(forgets=True)``) and those it no longer sends to (``Outbound``: its
next message to them has ``prev == 0``). A wallet hears from and sends to a
bounded set of markets and forgets nothing.

Why forgetting never applies a message twice. ``Recent.horizon`` is a time
before which every forgotten origin had gone quiet: each was last heard from
before the horizon (at least W behind the clock). A message from an origin
the receiver has no entry for is *stale*, dropped and counted
(``Inbound.stale``), if its ``ts`` is older than the horizon; otherwise it is
accepted and the origin's entry starts again from it. Now suppose message
``m`` was applied, then its origin forgotten, and ``m`` arrives again. When
``m`` was applied the receiver's clock was at least ``m.ts`` (the clock is the
largest ``ts`` seen, ``m``'s included) and the origin was heard from then, so
``m.ts <= last heard < horizon``: the repeat is stale. A repeat from an origin
still remembered has ``seq <= applied``. So no message is ever applied twice.

Why it loses nothing in practice. A new message is dropped only if its origin
was forgotten (quiet for more than W of the receiver's clock) and it is itself
older than the horizon, at least W behind the newest message the receiver
has seen: a command would have to reach the book more than W (ten minutes)
of message time behind the other users' commands. An origin with parked
messages is never forgotten; a sender forgets a destination only after W
without sending to it, and the receiver's gap check starts again with the
new chain.

>>> W = DEDUPE_WINDOW_MS
>>> book: Inbound[str] = Inbound(forgets=True)
>>> book.tick(0); book.accept("alice", 5, 0, "order", ts=0)
['order']
>>> for clock in (W, 2 * W, 3 * W):  # alice says nothing for three windows
...     book.tick(clock)
>>> "alice" in book.applied, book.applied.horizon
(False, 600000)
>>> book.accept("alice", 5, 0, "order", ts=0)  # her old message again: stale
[]
>>> book.stale
1
>>> book.accept("alice", 9, 5, "new order", ts=3 * W)  # she is back
['new order']
"""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar

__all__ = ["DEDUPE_WINDOW_MS", "Inbound", "Outbound", "Recent"]

DEDUPE_WINDOW_MS: Final = 10 * 60 * 1000
"""W: how long (of message time) a machine remembers an id or a peer it has not used."""

M = TypeVar("M")
V = TypeVar("V")


class Recent(Generic[V]):
    """A map that forgets a key not used for more than ``span`` of message time.

    Keys live in two generations. ``tick(clock)`` swaps them once the current
    one is ``span`` old: the previous generation, untouched since the current
    one began, is dropped, and the current one becomes the previous. ``get``
    moves a key it finds in the previous generation back to the current one.
    So a key is kept for at least ``span`` after its last use, and ``horizon``
    says how far back memory is complete: every key ever dropped was last
    used before it (it is the start of the generation that was current when
    they were dropped, at least ``span`` before the swap).

    >>> seen: Recent[None] = Recent(span=10)
    >>> _ = seen.tick(0); seen.put("a", None); _ = seen.tick(10); seen.put("b", None)
    >>> "a" in seen, "b" in seen, len(seen), seen.horizon
    (True, True, 2, 0)
    >>> seen.tick(20)  # "a" was used in the generation begun at 0: forgotten
    True
    >>> "a" in seen, "b" in seen, seen.horizon
    (False, True, 10)
    """

    __slots__ = ("current", "horizon", "previous", "since", "span")

    def __init__(
        self,
        span: int = DEDUPE_WINDOW_MS,
        since: int = 0,
        current: dict[str, V] | None = None,
        previous: dict[str, V] | None = None,
        horizon: int = 0,
    ) -> None:
        self.span = span
        self.since = since  # the clock when the current generation began
        self.horizon = horizon  # every key dropped so far was last used before this
        self.current: dict[str, V] = current if current is not None else {}
        self.previous: dict[str, V] = previous if previous is not None else {}

    def tick(self, clock: int) -> bool:
        """Swap generations if the current one is ``span`` old at ``clock``; say if it did."""
        if clock - self.since < self.span:
            return False
        if self.previous:
            # Every key of the generation dropped now was last used before the one
            # it leaves behind began.
            self.horizon = self.since
        self.previous = self.current
        self.current = {}
        self.since = clock
        return True

    def get(self, key: str) -> V | None:
        """The value of ``key`` (now in the current generation), or ``None``."""
        value = self.current.get(key)
        if value is None:
            value = self.previous.pop(key, None)
            if value is not None:
                self.current[key] = value
        return value

    def put(self, key: str, value: V) -> None:
        self.previous.pop(key, None)
        self.current[key] = value

    def __contains__(self, key: object) -> bool:
        return key in self.current or key in self.previous

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def snapshot(self) -> tuple[int, int, dict[str, V], dict[str, V]]:
        return self.since, self.horizon, dict(self.current), dict(self.previous)

    @classmethod
    def restore(cls, snapshot: Any, span: int = DEDUPE_WINDOW_MS) -> Recent[V]:
        since, horizon, current, previous = snapshot
        return cls(span, since, dict(current), dict(previous), horizon)


class Inbound(Generic[M]):
    """The receiving side: last applied ``seq`` per origin, and parked early arrivals.

    ``applied`` is a ``Recent`` map; with ``forgets`` the owner calls ``tick``
    as its clock advances and an origin idle for more than W is forgotten (see
    the module's proof). Without, nothing is ever forgotten and an origin's
    first message must have ``prev == 0`` or it waits for the one before it.
    """

    __slots__ = ("applied", "forgets", "parked", "stale")

    def __init__(
        self,
        applied: Recent[int] | None = None,
        parked: dict[str, dict[int, tuple[int, M]]] | None = None,
        stale: int = 0,
        *,
        forgets: bool = False,
    ) -> None:
        self.applied: Recent[int] = applied if applied is not None else Recent()
        # origin -> {prev: (seq, message)}: what waits for the message numbered ``prev``
        self.parked: dict[str, dict[int, tuple[int, M]]] = parked if parked is not None else {}
        self.stale = stale  # messages dropped as too old to tell from a repeat
        self.forgets = forgets

    def tick(self, clock: int) -> None:
        """Advance to ``clock``: forget origins idle for a whole generation, except
        those with parked messages (kept, so that nothing parked is lost)."""
        applied = self.applied
        dropped = applied.previous
        if self.forgets and applied.tick(clock):
            for src in self.parked:
                last = dropped.get(src)
                if last is not None:
                    applied.current[src] = last

    def accept(self, src: str, seq: int, prev: int, message: M, ts: int = 0) -> list[M]:
        """The messages now due, in order: none for a repeat or a stale message,
        several when a gap fills. ``ts`` is the message's time, checked against the
        horizon only when the origin is unknown to a forgetting receiver."""
        last = self.applied.get(src)
        if last is None:
            if self.forgets:
                if ts < self.applied.horizon:
                    # Older than any entry the receiver could have dropped: maybe a
                    # repeat, never safe to apply.
                    self.stale += 1
                    return []
                last = prev  # a returning or new origin starts its chain here
            else:
                last = 0
        if seq <= last:
            return []
        if prev > last:
            self.parked.setdefault(src, {})[prev] = (seq, message)
            return []
        due = [message]
        waiting = self.parked.get(src)
        if waiting is not None:
            while seq in waiting:
                seq, later = waiting.pop(seq)
                due.append(later)
            if not waiting:
                del self.parked[src]
        self.applied.put(src, seq)
        return due

    @property
    def gaps(self) -> int:
        """How many messages wait for an earlier one: zero unless delivery misbehaves."""
        return sum(len(waiting) for waiting in self.parked.values())

    def snapshot(self) -> tuple[Any, dict[str, dict[int, tuple[int, Any]]], int]:
        return (
            self.applied.snapshot(),
            {src: dict(w) for src, w in self.parked.items()},
            self.stale,
        )

    @classmethod
    def restore(cls, snapshot: Any, *, forgets: bool = False) -> Inbound[Any]:
        applied, parked, stale = snapshot
        return cls(
            Recent.restore(applied),
            {src: {p: (s, m) for p, (s, m) in w.items()} for src, w in parked.items()},
            stale,
            forgets=forgets,
        )


class Outbound:
    """The sending side: one output counter, and the last ``seq`` sent to each
    destination (a ``Recent`` map: a forgotten destination gets ``prev == 0``).

    >>> out = Outbound()
    >>> [(out.link(d), out.count) for d in ("x", "x", "y", "x")]
    [(0, 1), (1, 2), (0, 3), (2, 4)]
    """

    __slots__ = ("count", "last")

    def __init__(self, count: int = 0, last: Recent[int] | None = None) -> None:
        self.count = count
        self.last: Recent[int] = last if last is not None else Recent()

    def link(self, dest: str) -> int:
        """Number the next message to ``dest`` (``count``) and return its ``prev``."""
        seq = self.count + 1
        self.count = seq
        last = self.last
        prev = last.current.get(dest)
        if prev is None:
            prev = last.previous.pop(dest, 0)
        last.current[dest] = seq
        return prev

    def snapshot(self) -> tuple[int, tuple[int, int, dict[str, int], dict[str, int]]]:
        return self.count, self.last.snapshot()

    @classmethod
    def restore(cls, snapshot: Any) -> Outbound:
        count, last = snapshot
        return cls(count, Recent.restore(last))
