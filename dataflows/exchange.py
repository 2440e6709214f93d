"""The exchange dataflow: wallets keyed by user, books keyed by market.

Run it with Bytewax's CLI (``crypton dataflow`` wraps this and creates the
recovery store)::

    python -m bytewax.recovery .crypton/recovery 1
    python -m bytewax.run dataflows.exchange:flow -r .crypton/recovery -s 2 -b 0

Graphs are acyclic and steps share no state, so the loop "hold funds (per
user) -> match (per market) -> settle (per user)" goes through Kafka: each
keyed state machine reads exactly one inbox topic partitioned by its own key,
and what one machine sends the other is written back to the other's inbox.
The steps are thin adapters around ``crypton.domain``: all decisions are
there, deterministic, so that a replay after recovery has no new effect.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from crypton import schema, topics
from crypton.config import Settings
from crypton.domain.markets import Markets
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    BookCancel,
    BookOrder,
    DeadLetter,
    Message,
    Release,
    Settle,
)
from crypton.domain.wallet import WalletMachine
from dataflows import metrics
from dataflows.kafka_io import InboxSource, LogSink, Record

__all__ = ["BookLogic", "WalletLogic", "build_flow", "flow"]

log = logging.getLogger("crypton.dataflow")

DEPTH_LEVELS = 50
"""Levels per side in the depth snapshots published to the depth topic."""


_pack = msgspec.msgpack.Encoder().encode

# The shapes of ``WalletMachine.snapshot()`` and ``BookMachine.snapshot()``, for
# decoding packed snapshots back into the structs they hold.
WalletSnapshot = tuple[
    str,
    dict[str, tuple[int, int]],
    dict[str, tuple[str, str, int]],
    tuple[
        int,
        tuple[int, int, tuple[str, ...], tuple[str, ...]],
        tuple[int, int, tuple[str, ...], tuple[str, ...]],
    ],
    int,
    tuple[
        tuple[int, int, dict[str, int], dict[str, int]],
        dict[str, dict[int, tuple[int, Settle | Release]]],
        int,
    ],
    tuple[int, tuple[int, int, dict[str, int], dict[str, int]]],
]
BookSnapshot = tuple[
    str,
    int,
    int,
    int,
    tuple[
        tuple[int, int, dict[str, int], dict[str, int]],
        dict[str, dict[int, tuple[int, BookOrder | BookCancel]]],
        int,
    ],
    tuple[int, tuple[int, int, dict[str, int], dict[str, int]]],
    list[tuple[tuple[Any, ...], int, int, int, int, int, int, int, int]],
]


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


class _PartitionLogic(StatefulBatchLogic[list[Message], list[Record], Any]):
    """The machines of one inbox partition, fed in the partition's log order.

    Keying the step by partition rather than by user or market makes what it
    writes to the other inbox a function of the log alone: one logic sees its
    partition's records in offset order and emits in that order, however the
    consumer batched them. A crash and replay therefore re-emits the same
    messages in the same order, and the other side applies the first copy
    of each: a crash changes nothing, not even the interleaving.
    """

    step = ""

    state: msgspec.msgpack.Decoder[Any]

    def __init__(
        self, markets: Markets, resume: dict[str, bytes] | None, encode: Callable[[Message], Record]
    ) -> None:
        self.markets = markets
        self.encode = encode
        self.machines: dict[str, Any] = {}
        # Each machine's snapshot is packed once with msgpack (ten times faster than
        # pickling the tuples, which stalled the flow for 200 ms on a 50k-order book)
        # and reused until the machine changes, so an epoch pays only for what changed.
        self.snapshots: dict[str, bytes] = dict(resume or {})
        self.dirty: dict[str, None] = {}
        for key, packed in self.snapshots.items():
            self.machines[key] = self.restore(key, self.state.decode(packed))

    def restore(self, key: str, snapshot: Any) -> Any:
        raise NotImplementedError

    def create(self, key: str) -> Any:
        raise NotImplementedError

    def key_of(self, msg: Any) -> str:
        raise NotImplementedError

    def finish(self, touched: dict[str, Message], out: list[Message]) -> None:
        """Called after each batch with the machines it touched and their last message."""

    def on_batch(self, values: list[list[Message]]) -> tuple[list[list[Record]], bool]:
        out: list[Message] = []
        emit = out.append  # messages for the other step and events all go to the sink
        touched: dict[str, Message] = {}
        machines, dirty = self.machines, self.dirty
        processed = 0
        for batch in values:
            processed += len(batch)
            for msg in batch:
                if type(msg) is DeadLetter:  # undecodable input, kept as it came
                    out.append(msg)
                    continue
                try:
                    key = self.key_of(msg)
                    machine = machines.get(key)
                    if machine is None:
                        machine = machines[key] = self.create(key)
                    dirty[key] = None
                    touched[key] = msg
                    machine.apply(msg, emit, emit)
                except Exception as exc:
                    out.append(_failed(self.step, msg, exc))
        # One state record per balance and order the batch changed, not one per change.
        for key in touched:
            machines[key].flush(emit)
        self.finish(touched, out)
        metrics.count(self.step, processed, out)
        if not out:
            return [], StatefulBatchLogic.RETAIN
        # One item of encoded records per batch: each Bytewax item costs the flow's
        # one Python thread, so outputs travel to the sink together.
        encode = self.encode
        return [[encode(message) for message in out]], StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, bytes]:
        for key in self.dirty:
            self.snapshots[key] = _pack(self.machines[key].snapshot())
        self.dirty.clear()
        return dict(self.snapshots)


class WalletLogic(_PartitionLogic):
    """The wallets of the users on one wallet-inbox partition."""

    step = "wallet"
    state = msgspec.msgpack.Decoder(WalletSnapshot)

    def restore(self, key: str, snapshot: Any) -> WalletMachine:
        return WalletMachine.restore(snapshot, self.markets)

    def create(self, key: str) -> WalletMachine:
        return WalletMachine(key, self.markets)

    def key_of(self, msg: Any) -> str:
        return schema.WALLET_INBOX.key_of(msg)


class BookLogic(_PartitionLogic):
    """The books of the markets on one book-inbox partition; after each batch it
    publishes a depth snapshot of every book the batch changed."""

    step = "book"
    state = msgspec.msgpack.Decoder(BookSnapshot)

    def __init__(
        self,
        markets: Markets,
        resume: dict[str, Any] | None,
        encode: Callable[[Message], Record],
        depth_levels: int = DEPTH_LEVELS,
    ) -> None:
        super().__init__(markets, resume, encode)
        self.depth_levels = depth_levels

    def restore(self, key: str, snapshot: Any) -> BookMachine:
        return BookMachine.restore(snapshot, self.markets.market(key))

    def create(self, key: str) -> BookMachine:
        return BookMachine(self.markets.market(key))

    def key_of(self, msg: Any) -> str:
        return schema.BOOK_INBOX.key_of(msg)

    def finish(self, touched: dict[str, Message], out: list[Message]) -> None:
        for market, last in touched.items():
            msg: Any = last
            ts = msg.order.ts if type(msg) is BookOrder else msg.ts
            out.append(self.machines[market].depth(self.depth_levels, ts))


def build_flow(
    markets: Markets,
    wallet_inbox: Source[tuple[str, list[Message]]],
    book_inbox: Source[tuple[str, list[Message]]],
    sink: Sink[tuple[str, list[Record]]],
    *,
    prefix: str = "",
    depth_levels: int = DEPTH_LEVELS,
) -> Dataflow:
    """The exchange flow over any sources and sink (Kafka in production, in-memory in tests).

    The sources yield ``(partition, [message, ...])``: the steps are keyed by inbox
    partition; the sink receives ``(partition, [record, ...])``.
    """
    flow = Dataflow("crypton")
    encode = schema.record_encoder(prefix)
    # Input -> keyed step -> output and nothing else: every operator a record passes
    # costs the flow's one Python thread. The sink partition follows the inbox
    # partition, so one source partition's output keeps its order.
    wallets = op.stateful_batch(
        "wallet",
        op.input("wallet_inbox", flow, wallet_inbox),
        lambda s: WalletLogic(markets, s, encode),
    )
    books = op.stateful_batch(
        "book",
        op.input("book_inbox", flow, book_inbox),
        lambda s: BookLogic(markets, s, encode, depth_levels),
    )
    op.output("log", op.merge("outputs", wallets, books), sink)
    return flow


def _kafka_flow() -> Dataflow:
    settings = Settings.from_env()
    name = lambda logical: topics.topic_name(logical, settings.topic_prefix)  # noqa: E731
    port = os.environ.get("CRYPTON_DATAFLOW_METRICS_PORT")
    if port:
        metrics.serve(int(port))
    return build_flow(
        settings.markets(),
        # bytewax ships no type information, so its subclasses are untyped to mypy.
        InboxSource(settings, name(topics.WALLET_INBOX), schema.WALLET_INBOX.decode),  # type: ignore[no-untyped-call]
        InboxSource(settings, name(topics.BOOK_INBOX), schema.BOOK_INBOX.decode),  # type: ignore[no-untyped-call]
        LogSink(settings, parts=int(os.environ.get("CRYPTON_SINK_PARTS", "1"))),
        prefix=settings.topic_prefix,
    )


flow = _kafka_flow()
