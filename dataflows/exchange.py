"""The exchange dataflow: wallets keyed by user, books keyed by market.

Run it with Bytewax's CLI (``crypton dataflow`` wraps this and creates the
recovery store)::

    python -m bytewax.recovery .crypton/recovery 1
    python -m bytewax.run dataflows.exchange:flow -r .crypton/recovery -s 10 -b 0

Graphs are acyclic and steps share no state, so the loop "hold funds (per
user) -> match (per market) -> settle (per user)" goes through Kafka: each
keyed state machine reads exactly one inbox topic partitioned by its own key,
and what one machine sends the other is written back to the other's inbox.
The steps are thin adapters around ``crypton.domain``: all decisions are
there, deterministic, so that a replay after recovery has no new effect.

**One Bytewax state key per user and per market.** Bytewax snapshots, at each
epoch close, only the keys awoken in that epoch, so the recovery store receives
the packed state of the wallets and books that changed, not of every wallet of
a partition: an epoch costs what changed in it. Idle machines are demoted to
their packed bytes (``LIVE_MACHINES``), so a million idle users cost bytes each,
not a live object graph each. A machine whose state is large (a busy book, a market
maker's dedupe window) is snapshotted as a delta on a base it wrote to Kafka
(``dataflows.bases``), so an epoch does not rewrite what did not change.

**Why a replay stays a function of the log.** A user's messages all come from
one inbox partition in offset order and Bytewax keeps each key's order, so each
machine's input is exactly its inbox partition restricted to its key, in log
order: what it does and emits is a function of that, and ``crypton audit``
replays precisely that. What per-key processing may change is the interleaving
*between* keys in what the steps write to the other inbox (Bytewax runs an
activation's keys in key order, and with several workers, keys of one partition
run on different threads). The sink restores it where it can: every output
carries the inbox position of the message that caused it and the sink writes each
batch in that order, so with one worker (the default process) a batch's
writes follow the log whatever batches the consumer returned, and a run from
a written inbox, crashed or not, is a function of that inbox. With several
workers, or after a crash, messages from *different* users may reach a book in
another order than in another run; each run is still correct and proven so:
every message carries a sequence per (origin, destination), so a receiver drops
what a replay sends again and parks early arrivals until the gap fills, and the
audit replays each machine over the inbox as it was written and checks the
state topics, the links between the inboxes and conservation of funds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from crypton import schema
from crypton.config import Settings
from crypton.domain.markets import Markets
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    BookCancel,
    BookOrder,
    DeadLetter,
    Message,
    OrderState,
    Settlement,
    Trade,
)
from crypton.domain.wallet import WalletMachine
from crypton.runtime import tune_gc
from dataflows import metrics, recovery
from dataflows.bases import (
    DELTA,
    LEGACY,
    SLOTS,
    Bases,
    BaseWrite,
    Delta,
    KafkaBases,
    span_for,
)
from dataflows.kafka_io import (
    Inbound,
    InboxSource,
    LogSink,
    Tagged,
    is_book,
    offset_of,
    when_idle,
)
from dataflows.recovery import SettledSnapshots

__all__ = ["LIVE_MACHINES", "BookLogic", "StateUnavailable", "WalletLogic", "build_flow", "flow"]

log = logging.getLogger("crypton.dataflow")

FLOW_ID = "crypton"
"""The dataflow's id: a step's state is stored under ``crypton.<step>``."""

STATE_STEPS = (f"{FLOW_ID}.wallet", f"{FLOW_ID}.book")
"""The keyed steps, whose settled snapshots the flow can read on demand."""

INPUT_ID = "inboxes"
"""The input of both inboxes; its partitions are ``wallet/N`` and ``book/N``."""

_FORMER_INPUTS = {
    f"{FLOW_ID}.wallet_inbox": (f"{FLOW_ID}.{INPUT_ID}", "wallet/"),
    f"{FLOW_ID}.book_inbox": (f"{FLOW_ID}.{INPUT_ID}", "book/"),
}
"""The inputs of each inbox before they were one, and where their positions go."""

DEPTH_LEVELS = 50
"""Levels per side in the depth snapshots published to the depth topic."""

FIRST_WHOLE_BYTES = int(os.environ.get("CRYPTON_STATE_FIRST_WHOLE_BYTES", str(64 * 1024)))
"""How much of a close's snapshots may stay whole while their machines' first bases are
on their way (each is named from a later close, once stored), before the close waits for
them instead. A state that first outgrows ``CRYPTON_STATE_INLINE_BYTES`` mid-run (a
trader's wallet, about 4 KiB) costs a few pages written whole once, where waiting cost
the whole flow a round trip to Kafka at that close (5-6 ms of a 10 ms stall, once in a
run of ``bench_scale``); a crowd of them at once (201 market makers funded together:
1.9 MB) waits one round trip for all, as before."""

IDLE_LEAD = 0.25
"""The last part of an epoch in which bases due are taken while the flow is idle
(``_Step.take_bases``), when the epoch's length is known: a base taken then usually
still serves the close, where one taken early would be used up and taken again."""

WARM_ORDERS = 1000
"""Resting orders a book packs ahead per slice while the flow is idle (``BookLogic.warm``):
about 1-2.5 ms here."""

LIVE_MACHINES = int(os.environ.get("CRYPTON_LIVE_MACHINES", "10000"))
"""Machines kept decoded per step and worker (the most recently used); the others
keep only their packed snapshot and are decoded again on their next message.

Live machines are what Python's cyclic garbage collector walks (a full collection
took 91 ms with 50,000 live wallets, 12 ms with 2,000) and most of the resident
memory (bench_scale, 50,000 idle users: 180-189 MiB with all live, 129 MiB with
10,000). A message to a demoted wallet costs about 5 us more (decode, and pack the
one it pushes out)."""


_pack = msgspec.msgpack.Encoder().encode
_decode_delta = msgspec.msgpack.Decoder(Delta).decode
_decode_legacy_delta = msgspec.msgpack.Decoder(tuple[str, int, int, int, int]).decode
_DELTA_PREFIX = b"\x96" + _pack(DELTA)
"""How a packed delta snapshot begins: a msgpack array of six, then ``DELTA``; its last
byte is its slot (a msgpack positive fixint)."""
_LEGACY_DELTA_PREFIX = b"\x95" + _pack(DELTA)
"""A delta from before the slots: an array of five, its base in ``LEGACY_BASES``."""


def _is_delta(packed: bytes) -> bool:
    return packed.startswith(_DELTA_PREFIX) or packed.startswith(_LEGACY_DELTA_PREFIX)


def _slot_named(packed: bytes | None) -> int:
    """The slot of the base a packed snapshot names (``LEGACY``: none, or the old topic)."""
    return packed[-1] if packed is not None and packed.startswith(_DELTA_PREFIX) else LEGACY


def _drop(message: Message) -> None:
    """Where a replay's outputs go."""


class StateUnavailable(RuntimeError):  # noqa: N818 (it is what it says)
    """A key's state could not be read (a delta's base or inbox): the flow stops, as
    on a failed write, rather than turn the key's messages into dead letters."""


# Parts shared by the snapshot shapes below.
_M = TypeVar("_M")
_Recent = tuple[int, int, dict[str, int], dict[str, int]]
"""``Recent.snapshot()``: since, horizon, current and previous generation."""
_Inbound = tuple[_Recent, dict[str, dict[int, tuple[int, _M]]], int]
"""``Inbound.snapshot()`` of messages ``_M``: applied, parked, stale."""
_Outbound = tuple[int, _Recent]
"""``Outbound.snapshot()``: the output counter and the last number per destination."""
_WindowGeneration = tuple[int, int, bytes | tuple[str, ...], bytes | tuple[str, ...]]
"""A dedupe window (``IdWindow``): a generation is 8 bytes an id, or, in a store
written before digests, the ids themselves."""

# The shape of ``WalletMachine.snapshot()``, for decoding packed snapshots back into
# the structs they hold.
WalletSnapshot = tuple[
    str,
    dict[str, tuple[int, int]],
    # The open orders' holds: (markets, [(order id, market index, holds the base, amount)])
    # (``WalletMachine._packed_holds``); a dict {order id: (market, asset, amount)} before.
    tuple[list[str], list[tuple[Any, int, bool, int]]] | dict[str, tuple[str, str, int]],
    # The dedupe windows (``IdWindow``)
    tuple[int, _WindowGeneration, _WindowGeneration],
    int,
    _Inbound[Settlement],
    _Outbound,
]

# A resting order in ``BookMachine.snapshot()`` (``crypton.domain.matching._pack_order``).
_RestingRow = tuple[
    str, Any, str, int, int, int, int, int, int, int, int, int, tuple[Any, ...] | None
]

_Levels = list[tuple[int, int, list[_RestingRow]]]
"""One side's levels from the best: (price, clock, [resting order row, ...]) each, a
row's ``ts`` counted back from its level's clock; a row's order id is a str or 16 bytes
(``Any`` keeps msgpack's str/bin apart)."""

# The shape of ``BookMachine.snapshot()``.
BookSnapshot = tuple[
    str,
    int,
    int,
    int,
    _Inbound[BookOrder | BookCancel],
    _Outbound,
    tuple[_Levels, _Levels],  # bids, asks
]

_LevelsV2 = list[tuple[int, list[_RestingRow]]]

# ``BookSnapshot`` before levels were packed with their own clock (rows counted back
# from the book's): what a recovery store written then holds; ``BookMachine.restore``
# reads it.
BookSnapshotV2 = tuple[
    str, int, int, int, _Inbound[BookOrder | BookCancel], _Outbound, tuple[_LevelsV2, _LevelsV2]
]

# ``BookSnapshot`` before the resting orders became short rows.
BookSnapshotV1 = tuple[
    str,
    int,
    int,
    int,
    _Inbound[BookOrder | BookCancel],
    _Outbound,
    list[tuple[tuple[Any, ...], int, int, int, int, int, int, int, int]],
]


class _EitherDecoder:
    """The current shape of a state, or else the ones before it, newest first (a store
    written by an earlier version resumes; its keys are written in the current shape
    next)."""

    def __init__(self, *shapes: msgspec.msgpack.Decoder[Any]) -> None:
        self.shapes = shapes

    def decode(self, packed: bytes) -> Any:
        for shape in self.shapes[:-1]:
            try:
                return shape.decode(packed)
            except msgspec.ValidationError:
                continue
        return self.shapes[-1].decode(packed)


_RETAIN = StatefulBatchLogic.RETAIN
_DISCARD = StatefulBatchLogic.DISCARD
_NOTHING: list[list[Tagged]] = []


def _failed(step: str, msg: Message, exc: Exception) -> DeadLetter:
    """A message the domain could not process, kept with the reason instead of a crash."""
    log.error("%s could not process %r: %s", step, msg, exc)
    key = getattr(msg, "user_id", None) or getattr(msg, "market", None)
    return DeadLetter(
        topic=step,
        partition=-1,
        offset=-1,
        key=key.encode() if key else None,
        value=schema.spec_of(msg).encode(msg),
        reason=f"{type(exc).__name__}: {exc}",
    )


class _Step:
    """What the logics of one step on one worker share.

    ``live`` holds the decoded machines, least recently used first. It is per worker
    because demoting touches another key's logic, which only its own worker's thread
    may do (Bytewax calls a key's logic on the worker that owns the key).
    """

    # ``__weakref__``: its idle work is held weakly (``kafka_io.when_idle``).
    __slots__ = (
        "__weakref__",
        "bases",
        "closed_at",
        "closes",
        "counts",
        "depth_levels",
        "dirty",
        "due",
        "epoch_s",
        "first_whole",
        "idled",
        "live",
        "live_max",
        "markets",
        "routes",
        "settled",
        "snapped",
        "state_id",
    )

    def __init__(
        self,
        name: str,
        markets: Markets,
        routes: schema.Routes,
        live_max: int,
        depth_levels: int,
        bases: Bases | None = None,
        settled: SettledSnapshots | None = None,
        epoch_s: float | None = None,
    ) -> None:
        self.bases = bases
        """Where large states keep their base (``dataflows.bases``); None: always whole."""
        self.settled = settled
        """Where a key Bytewax resumed without state reads its settled snapshot
        (``dataflows.recovery``); None: Bytewax resumes every key itself."""
        self.state_id = f"{FLOW_ID}.{name}"
        """The step's id in the recovery store."""
        self.markets = markets
        self.routes = routes
        """Where each output is written (``schema.record_routes``)."""
        self.live: OrderedDict[_KeyLogic, None] = OrderedDict()
        self.live_max = max(1, live_max)
        self.depth_levels = depth_levels
        self.counts = metrics.StepCounts(name)
        self.snapped: float | None = None
        """Seconds of ``snapshot()`` since the current epoch close began, if one did."""
        self.dirty: list[_KeyLogic] = []
        """The logics this epoch changed (with ``bases`` only): the close's first
        ``snapshot()`` sends every base due before any snapshot waits for one."""
        self.first_whole = 0
        """Bytes snapshotted whole at this close while their first base is on its way
        (``FIRST_WHOLE_BYTES``)."""
        self.due: deque[_KeyLogic] = deque()
        """The logics due a base, in the order they became due: taken while the flow
        waits for input (``take_bases``), else at the close."""
        self.idled = False
        """Whether the flow waited for input since the last close (``take_bases`` ran): a
        delta that has used half its span but not all of it then waits for that moment,
        not the close (``_KeyLogic._send_ahead``)."""
        self.epoch_s = epoch_s
        """Seconds between epoch closes, if known: bases are then taken idle only late in
        an epoch (``IDLE_LEAD``); else whenever the flow is idle. Given as the flow's
        setting (``CRYPTON_SNAPSHOT_SECONDS``), then measured: the first gap between two
        of the step's closes, or a shorter one since (a gap spans several epochs when
        none of the step's keys changed in some), so a flow run with another ``-s``
        than its setting still takes its bases late in the epoch."""
        self.closed_at = time.monotonic()
        """When the step's last epoch close began (``time.monotonic``): the first call of
        ``snapshot()`` at a close; the flow's start before the first."""
        self.closes = 0
        """The step's epoch closes so far."""

    def closed(self, now: float) -> None:
        """An epoch close began at ``now`` (``time.monotonic``): learn the epoch's length."""
        if self.epoch_s is not None and self.closes:
            gap = now - self.closed_at
            self.epoch_s = gap if self.closes == 1 else min(self.epoch_s, gap)
        self.closes += 1
        self.closed_at = now

    def take_bases(self, budget_s: float) -> None:
        """Take the bases due while the flow waits for input (``kafka_io.when_idle``),
        for about ``budget_s`` seconds, oldest due first.

        A base is the machine packed whole, which the epoch close would otherwise do for
        every machine due at once, on the flow's only thread: after a burst that was the
        close's whole cost (after 100,000 orders: 201 wallets, 1.5 MB, 87 ms, and the two
        books, 54 ms), and a command arriving during it waited for all of it. Taken here,
        one machine at a time between polls, a command waits at most for one machine's
        packing; the close names the base in a delta as it would have (``_KeyLogic._pack``).
        A machine taken here stays ``queued`` until the close: due again in the same epoch,
        the close takes it, so a machine is packed at most once an epoch, as before. With
        ``epoch_s`` known, only in the last ``IDLE_LEAD`` of an epoch: a small base's span
        (1,000 offsets of its inbox partition) lasts a few seconds at 500 orders a second,
        and a wallet based early in an epoch was based again at its close (``bench_pipeline
        --seconds 40``: 12.5 MB of bases, against 6.3 MB before idle bases).
        """
        self.idled = True
        bases, due = self.bases, self.due
        if bases is None or not due:
            return
        epoch_s = self.epoch_s
        # Epochs close every ``epoch_s``: a close that snapshotted none of this step's keys
        # did not move ``closed_at``, hence the remainder.
        if epoch_s and (time.monotonic() - self.closed_at) % epoch_s < epoch_s * (1 - IDLE_LEAD):
            return  # a base taken now would often be used up by the close, and taken again
        began = time.perf_counter()
        deadline = began + budget_s
        taken = 0
        while due:
            logic = due[0]
            if not logic.stale:  # deferred by the close, unchanged since: nothing to take
                due.popleft()
                logic.queued = False
            elif logic.machine is None:  # put away: its base was sent then (``_demote``)
                due.popleft()
            elif logic.warm():  # else a slice of it packed ahead; the rest next
                due.popleft()
                sent = logic.next_base
                logic._send_ahead(bases)
                logic.whole = None  # named by the close's delta; the machine may change
                taken += logic.next_base is not sent
            if time.perf_counter() >= deadline:
                break
        counts = self.counts
        counts.idle_bases += taken
        counts.idle_base_s += time.perf_counter() - began


class _Steps:
    """One ``_Step`` per worker thread, made on the first key the worker builds."""

    def __init__(
        self,
        name: str,
        markets: Markets,
        routes: schema.Routes,
        live_max: int,
        depth_levels: int = DEPTH_LEVELS,
        bases: Bases | None = None,
        settled: SettledSnapshots | None = None,
        epoch_s: float | None = None,
    ) -> None:
        self.args = (name, markets, routes, live_max, depth_levels, bases, settled, epoch_s)
        self.by_thread: dict[int, _Step] = {}

    def here(self) -> _Step:
        ident = threading.get_ident()
        step = self.by_thread.get(ident)
        if step is None:
            step = self.by_thread[ident] = _Step(*self.args)
            if step.bases is not None:
                when_idle(step.take_bases)
        return step


class _KeyLogic(StatefulBatchLogic[list[Inbound], list[Tagged], bytes]):
    """The machine of one key (a user's wallet, a market's book), fed in log order.

    Its Bytewax state is the machine's snapshot packed with msgpack (ten times
    faster than pickling the tuples). ``snapshot()`` is called only at the close of
    an epoch in which the key was awoken, and packs only if the machine changed.
    A logic is *live* (its machine decoded) or *demoted* (only ``packed``, and when that
    is a delta also the whole state, ``resident``); a restored logic starts demoted and
    decodes on its first message.
    """

    __slots__ = (
        "applied",
        "base",
        "handed",
        "key",
        "machine",
        "next_base",
        "packed",
        "queued",
        "resident",
        "span",
        "stale",
        "step",
        "whole",
    )

    name: ClassVar[str] = ""
    state: ClassVar[msgspec.msgpack.Decoder[Any] | _EitherDecoder]
    depth: ClassVar[bool] = False
    """Whether ``finish`` publishes something after each batch."""

    def __init__(self, step: _Step, packed: bytes | None) -> None:
        self.step = step
        self.packed = packed
        self.machine: Any = None
        self.stale = False
        """Whether the machine changed since ``packed`` was made."""
        self.key = ""
        self.applied = -1
        """The inbox offset of the last record applied (``dataflows.bases``): a key's
        messages of one record arrive in one item, so a record is applied wholly."""
        self.base: tuple[int, int, int, int] | None = None
        """(partition, offset, inbox offset, slot) of the base a delta snapshot names."""
        self.next_base: tuple[BaseWrite, int, int] | None = None
        """A base on its way to the store, with the inbox offset it was taken at and its slot."""
        self.handed = (_slot_named(packed), LEGACY)
        """The slots named by the last two snapshots handed to Bytewax, the latest first
        (the one a restored logic starts from, here): a restart resumes from one of
        them, so a new base takes neither slot (``_free_slot``)."""
        self.span = 0
        """The most inbox offsets a delta on its base spans, from the size of its latest
        base (``dataflows.bases.span_for``); 0 until it has one: ``rebase_offsets``."""
        self.whole: bytes | None = None
        """The state packed whole before its snapshot: at the epoch close (``_send_ahead``),
        or when the machine was put away changed (``_demote``)."""
        self.resident: bytes | None = None
        """The whole state of a machine put away while its snapshot is a delta, or before
        the close that snapshots its changes (``_demote``): it wakes from these bytes, not
        from its base and inbox in Kafka."""
        self.queued = False
        """Whether this epoch made the logic due a base (``_Step.due``), taken or not."""

    def restore(self, key: str, snapshot: Any) -> Any:
        raise NotImplementedError

    def create(self, key: str) -> Any:
        raise NotImplementedError

    def key_of(self, msg: Any) -> str:
        raise NotImplementedError

    def finish(self, machine: Any, last: Message, emit: Callable[[Message], None]) -> None:
        """Called after each batch that reached the machine, with its last message."""

    def warm(self) -> bool:
        """Pack a slice of the machine's next base ahead, while the flow is idle
        (``_Step.take_bases``); True once what is left is for the base itself."""
        return True

    def on_batch(self, values: list[list[Inbound]]) -> tuple[list[list[Tagged]], bool]:
        step = self.step
        if step.snapped is not None:  # the first batch after an epoch close
            metrics.EPOCH_SNAPSHOT.labels(self.name).observe(step.snapped)
            step.snapped = None
        machine = self.machine
        if machine is not None:
            step.live.move_to_end(self)
        out: list[Any] = []
        emit = out.append  # messages for the other step and events all go to the sink
        last: Message | None = None
        processed = 0
        stale = machine.inbound.stale if machine is not None else 0
        for batch in values:
            processed += len(batch)
            for tag, msg in batch:
                # Each output carries the position of the message that caused it (marked
                # here by the position itself): the sink writes in that order what Bytewax
                # hands it grouped by key (module docstring).
                emit(tag)
                if type(msg) is DeadLetter:  # undecodable input, kept as it came
                    emit(msg)
                    continue
                try:
                    if machine is None:
                        machine = self._wake(msg)
                        stale = machine.inbound.stale
                    last = msg
                    machine.apply(msg, emit, emit)
                except StateUnavailable:
                    raise  # not the message's fault: stop, and resume from the snapshot
                except Exception as exc:
                    emit(_failed(self.name, msg, exc))
        if processed:
            self.applied = offset_of(values[-1][-1][0])
        if last is not None:
            # One state record per balance and order the batch changed, not one per change.
            machine.flush(emit)
            step.counts.stale += machine.inbound.stale - stale
            if self.depth:
                self.finish(machine, last, emit)
            bases = step.bases
            if bases is not None:
                if not self.stale:
                    step.dirty.append(self)
                if not self.queued and self.next_base is None:
                    # Due a base, by ``_send_ahead``'s rule: taken when idle, else at the close.
                    base = self.base
                    half = (self.span or bases.rebase_offsets) // 2
                    if base is None or self.applied - base[2] > half:
                        self.queued = True
                        step.due.append(self)
            self.stale = True
        # One pass over the outputs: encode (``schema.record_encoder``, in line), tag and count.
        routes, encode = step.routes, schema.encode_value
        tagged: list[Tagged] = []
        add = tagged.append
        tag = trades = dead = 0
        stamps: list[int] | None = None
        for message in out:
            kind = message.__class__
            if kind is int:
                tag = message
                continue
            if kind is OrderState:
                if stamps is None:
                    stamps = []
                stamps.append(message.updated_at)
            elif kind is Trade:
                trades += 1
            elif kind is DeadLetter:
                dead += 1
            topic, key_of = routes[kind]
            add((tag, topic, key_of(message).encode(), encode(message)))
        counts = step.counts
        counts.messages += processed
        counts.emitted += len(tagged)
        if trades or dead or stamps:
            counts.add(trades, dead, stamps)
        # One item of encoded records per key and batch: each Bytewax item costs the
        # flow's one Python thread, so outputs travel to the sink together.
        if machine is not None or self.packed is not None:
            return ([tagged] if tagged else _NOTHING), _RETAIN
        # A key that never got a machine (dead letters, a market that does not exist)
        # leaves no state behind.
        return ([tagged] if tagged else _NOTHING), _DISCARD

    def _wake(self, msg: Message) -> Any:
        key = self.key = self.key_of(msg)
        packed = self.packed
        step = self.step
        resident, self.resident = self.resident, None
        self.whole = None  # packed when put away; the machine may change from here
        if resident is not None:  # put away while a delta: its state is here, whole
            packed = resident
        elif packed is None and step.settled is not None:
            try:
                state = step.settled.get(step.state_id, key)
            except Exception as exc:  # the store, not the message: stop and resume
                raise StateUnavailable(f"{self.name} {key}: settled snapshot unreadable") from exc
            if state is not None:
                assert isinstance(state, bytes), f"{self.name} {key}: settled {type(state)}"
                packed = self.packed = state
                self.handed = (_slot_named(state), LEGACY)
                step.counts.settled += 1
        if packed is None:
            machine = self.create(key)
        elif packed.startswith(_DELTA_PREFIX):
            machine = self._replay(key, _decode_delta(packed))
        elif packed.startswith(_LEGACY_DELTA_PREFIX):
            _mark, partition, offset, base_offset, applied = _decode_legacy_delta(packed)
            machine = self._replay(key, (DELTA, partition, offset, base_offset, applied, LEGACY))
        else:
            machine = self.restore(key, self.state.decode(packed))
        self.machine = machine
        live = self.step.live
        live[self] = None
        if len(live) > self.step.live_max:  # never this logic: it was just added last
            oldest, _ = live.popitem(last=False)
            oldest._demote()
        return machine

    def _replay(self, key: str, delta: Delta) -> Any:
        """The machine of a delta snapshot: its base, then its inbox messages since."""
        _mark, partition, offset, base_offset, applied, slot = delta
        bases = self.step.bases
        if bases is None:
            raise StateUnavailable(f"{self.name} {key}: a delta snapshot, and no store of bases")
        try:
            base = bases.get(self.name, key, partition, offset, slot)
            self.span = span_for(len(base), bases.rebase_offsets)
            machine = self.restore(key, self.state.decode(base))
            replay = list(bases.since(self.name, key, base_offset, applied))
        except Exception as exc:
            raise StateUnavailable(
                f"{self.name} {key}: base {partition}@{offset} or its inbox after"
                f" {base_offset} unreadable: {type(exc).__name__}: {exc}"
            ) from exc
        counts = self.step.counts
        counts.restored += 1
        counts.replayed += len(replay)
        for msg in replay:
            try:
                machine.apply(msg, _drop, _drop)  # written the first time: dropped now
            except Exception:  # failed the same way then: a dead letter
                continue
        machine.flush(_drop)
        self.base, self.applied = (partition, offset, base_offset, slot), applied
        return machine

    def _demote(self) -> None:
        bases = self.step.bases
        if self.stale and bases is not None:
            # Changed this epoch: packed whole now, snapshotted at the close like every
            # other changed machine. A base due is sent now, not waited for: waiting here
            # cost a round trip to Kafka per machine put away (funding 50,000 new users
            # with every state a delta: 18 s, two thirds of it in these waits). The
            # machine wakes from the same bytes (``resident``) if it is needed again.
            self._send_ahead(bases)
            self.whole = self.resident = self.whole or _pack(self.machine.snapshot())
        elif self.stale:  # no bases: ``_pack`` packs it whole
            self.packed = self._pack()
            self.stale = False
        elif self.packed is not None and _is_delta(self.packed):
            # Its snapshot names a base in Kafka: keep the state here too, whole, so that
            # waking it decodes these bytes instead of reading its base and inbox back
            # (milliseconds a machine). The delta stays what Bytewax stores.
            self.resident = _pack(self.machine.snapshot())
        self.machine = None

    def _send_ahead(self, bases: Bases, defer: bool = False) -> None:
        """Pack and send the machine's next base now if one is due, without waiting:
        called for every machine the epoch changed, before any snapshot of the close
        waits for a base (``snapshot``), and while the flow is idle (``_Step.take_bases``).
        Keeps what it packed for ``_pack``. With ``defer`` (a close, when the flow waits
        for input now and then) a delta that has used half its span but not all of it
        waits for the next such moment instead, ``queued``."""
        if self.whole is not None:
            return  # packed already
        base = self._adopt(bases)
        if self.next_base is not None:
            return  # on its way already
        if base is not None:
            used, span = self.applied - base[2], self._span(bases)
            if used <= span // 2:
                return  # a delta on the current base
            if defer and used <= span:
                self.queued = True
                self.step.due.append(self)
                return
        whole = self.whole = _pack(self.machine.snapshot())
        if len(whole) > bases.inline_bytes:
            self._send(bases, whole)

    def _pack(self) -> bytes:
        """The machine's state for Bytewax: whole, or a delta on a base (``dataflows.bases``).

        A delta names a base only once the store has acknowledged it. The next base is
        sent once a delta has used half its span (``_send_ahead``), and the old base
        serves until the store has the new one. While a machine's first base is on its
        way its snapshot stays whole, up to ``FIRST_WHOLE_BYTES`` a close; past that,
        and for the next base of a delta whose span is used up, the close waits for it:
        every base due was sent first, so it waits about one round trip, not one per
        machine.
        """
        step = self.step
        bases = step.bases
        if bases is None:
            return _pack(self.machine.snapshot())
        whole, self.whole = self.whole, None
        base = self._adopt(bases)
        limit = self._span(bases)
        if base is not None and self.applied - base[2] > limit and self.next_base:
            base = self._adopt(bases, wait=True)  # the span is used up: the next base may do
        if base is not None:
            span = self.applied - base[2]
            if span <= limit:
                if self.next_base is None and span > limit // 2 and not self.queued:
                    whole = whole or _pack(self.machine.snapshot())
                    if len(whole) <= bases.inline_bytes:
                        self.base = None
                        return whole  # it shrank: whole from now on
                    self._send(bases, whole)
                return self._delta(base)
        if whole is None:
            whole = _pack(self.machine.snapshot())
        if len(whole) <= bases.inline_bytes:
            self.base = self.next_base = None
            return whole
        if self.next_base is None:
            self._send(bases, whole)
        if base is None and step.first_whole + len(whole) <= FIRST_WHOLE_BYTES:
            step.first_whole += len(whole)
            return whole  # its first base is on its way: named once stored
        base = self._adopt(bases, wait=True)
        if base is not None and self.applied - base[2] <= limit:
            return self._delta(base)
        return whole  # the store refused the base: whole this time

    def _span(self, bases: Bases) -> int:
        """The most inbox offsets a delta on this machine's base may span (``span_for``)."""
        return self.span or bases.rebase_offsets

    def _delta(self, base: tuple[int, int, int, int]) -> bytes:
        partition, offset, at, slot = base
        return _pack((DELTA, partition, offset, at, self.applied, slot))

    def _send(self, bases: Bases, whole: bytes) -> None:
        """Start writing ``whole`` as the machine's next base (not waited for)."""
        slot = self._free_slot()
        try:
            self.next_base = bases.send(self.name, self.key, whole, slot), self.applied, slot
        except Exception as exc:  # Kafka's queue, not the machine: stay whole or on the old base
            self._failed_base(exc)
            return
        self.span = span_for(len(whole), bases.rebase_offsets)
        self.step.counts.base_bytes += len(whole)

    def _adopt(self, bases: Bases, wait: bool = False) -> tuple[int, int, int, int] | None:
        """The base a delta may name now: the next one once acknowledged (waited for if
        ``wait``), else the current one."""
        if self.next_base is not None:
            write, offset, slot = self.next_base
            if wait:
                # An error is in ``write`` too; a timeout leaves it in flight.
                with contextlib.suppress(Exception):
                    bases.wait(write)
            else:
                bases.poll()
            if write.where is not None:
                self.base, self.next_base = (*write.where, offset, slot), None
            elif write.error is not None:
                self.next_base = None
                self._failed_base(write.error)
        return self.base

    def _free_slot(self) -> int:
        """A slot for the next base that no snapshot a restart could resume from names:
        not the last two handed to Bytewax (``handed``), nor the base the delta names
        now (``dataflows.bases``, "Old bases are compacted away")."""
        taken = (*self.handed, self.base[3] if self.base is not None else LEGACY)
        return next(slot for slot in range(SLOTS) if slot not in taken)

    def _failed_base(self, exc: Exception) -> None:
        self.step.counts.base_failures += 1
        log.warning("%s %s: base not stored (%s); snapshotted as before", self.name, self.key, exc)

    def snapshot(self) -> bytes:
        began = time.perf_counter()
        step = self.step
        if step.dirty:  # the close's first snapshot: send every base due before any wait
            bases = step.bases
            assert bases is not None
            step.first_whole = 0
            defer, step.idled = step.idled, False
            step.closed(time.monotonic())
            for logic in step.due:  # the changed ones are in ``dirty`` too, and may be due again
                logic.queued = False
            step.due.clear()
            for logic in step.dirty:
                logic.queued = False
                if logic.stale and logic.machine is not None:
                    logic._send_ahead(bases, defer)
            step.dirty.clear()
        if self.stale:
            self.packed = self._pack()
            self.stale = False
            if self.machine is None and not _is_delta(self.packed):
                self.resident = None  # put away whole: it wakes from ``packed``
        packed = self.packed
        assert packed is not None, "a logic without state is discarded, never snapshotted"
        self.handed = (_slot_named(packed), self.handed[0])
        spent = time.perf_counter() - began
        step.snapped = (step.snapped or 0.0) + spent
        counts = step.counts
        counts.snapshot_bytes += len(packed)
        counts.snapshot_s += spent
        return packed


class WalletLogic(_KeyLogic):
    """The wallet of one user."""

    __slots__ = ()

    name = "wallet"
    state = msgspec.msgpack.Decoder(WalletSnapshot)

    def restore(self, key: str, snapshot: Any) -> WalletMachine:
        return WalletMachine.restore(snapshot, self.step.markets)

    def create(self, key: str) -> WalletMachine:
        return WalletMachine(key, self.step.markets)

    def key_of(self, msg: Any) -> str:
        return schema.WALLET_INBOX.key_of(msg)


class BookLogic(_KeyLogic):
    """The book of one market; after each batch it publishes the book's depth."""

    __slots__ = ()

    name = "book"
    state = _EitherDecoder(
        msgspec.msgpack.Decoder(BookSnapshot),
        msgspec.msgpack.Decoder(BookSnapshotV2),
        msgspec.msgpack.Decoder(BookSnapshotV1),
    )
    depth = True

    def restore(self, key: str, snapshot: Any) -> BookMachine:
        return BookMachine.restore(snapshot, self.step.markets.market(key))

    def create(self, key: str) -> BookMachine:
        return BookMachine(self.step.markets.market(key))

    def key_of(self, msg: Any) -> str:
        return schema.BOOK_INBOX.key_of(msg)

    def warm(self) -> bool:
        """A book packs its levels ahead a slice at a time (``BookMachine.warm``): a
        command arriving meanwhile waits for one slice, not the whole book."""
        machine: BookMachine = self.machine
        return machine.warm(WARM_ORDERS)

    def finish(self, machine: Any, last: Message, emit: Callable[[Message], None]) -> None:
        msg: Any = last
        ts = msg.order.ts if type(msg) is BookOrder else msg.ts
        emit(machine.depth(self.step.depth_levels, ts))


def build_flow(
    markets: Markets,
    inboxes: Source[tuple[str, list[Inbound]]],
    sink: Sink[tuple[str, list[Tagged]]],
    *,
    prefix: str = "",
    depth_levels: int = DEPTH_LEVELS,
    live_machines: int = LIVE_MACHINES,
    bases: Bases | None = None,
    settled: SettledSnapshots | None = None,
    epoch_s: float | None = None,
) -> Dataflow:
    """The exchange flow over any source and sink (Kafka in production, in-memory in tests).

    The source yields ``(key, [(position, message), ...])`` from both inboxes: user ids
    from the wallet inbox, markets from the book inbox as ``BookBatch``es (dead letters
    under any key); the sink receives ``(key, [(position, record), ...])``. A position
    is an inbox offset and an index in its record (``kafka_io.position``). With
    ``bases``, a machine larger than ``bases.inline_bytes`` is snapshotted as a delta on
    a base (``dataflows.bases``); the positions must then be of the inbox offsets
    ``bases`` reads.
    With ``settled``, a key Bytewax resumed without state reads its settled snapshot
    there on its first message (``dataflows.recovery``; the store must have been
    prepared ``on_demand``). ``epoch_s``, the seconds between epoch closes, times the
    bases taken while the flow is idle (``_Step.take_bases``).
    """
    flow = Dataflow(FLOW_ID)
    routes = schema.record_routes(prefix)
    wallets = _Steps(
        "wallet", markets, routes, live_machines, DEPTH_LEVELS, bases, settled, epoch_s
    )
    books = _Steps("book", markets, routes, live_machines, depth_levels, bases, settled, epoch_s)
    # Input -> keyed step -> output and little else: every operator a record passes
    # costs the flow's one Python thread. One input for both inboxes, so that their
    # partitions close each epoch together (``InboxSource``).
    routed = op.branch("route", op.input(INPUT_ID, flow, inboxes), is_book)
    wallet_out = op.stateful_batch(
        "wallet", routed.falses, lambda packed: WalletLogic(wallets.here(), packed)
    )
    book_out = op.stateful_batch(
        "book", routed.trues, lambda packed: BookLogic(books.here(), packed)
    )
    op.output("log", op.merge("outputs", wallet_out, book_out), sink)
    return flow


def _kafka_flow() -> Dataflow:
    tune_gc()
    settings = Settings.from_env()
    store = recovery.this_runs_directory()
    settled = None
    if store is not None and store.is_dir():
        # Before Bytewax opens the store: see ``dataflows.recovery``.
        # A store written when each inbox was an input of its own.
        recovery.rename_inputs(store, _FORMER_INPUTS)
        steps = STATE_STEPS if recovery.complete(store) else ()
        moved = recovery.prepare(store, on_demand=steps)
        settled = recovery.SettledSnapshots(store) if steps else None
        log.info("recovery store %s: %d settled snapshots moved", store, moved)
    port = os.environ.get("CRYPTON_DATAFLOW_METRICS_PORT")
    if port:
        metrics.serve(int(port))
    bases = KafkaBases(settings)
    parts = int(os.environ.get("CRYPTON_SINK_PARTS", "1"))
    return build_flow(
        settings.markets(),
        InboxSource(settings),
        # The bases' topic and producer are made ready when the flow starts (not at import).
        LogSink(settings, parts=parts, on_start=bases.prepare),
        prefix=settings.topic_prefix,
        bases=bases,
        settled=settled,
        epoch_s=settings.snapshot_seconds,
    )


flow = _kafka_flow()
