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
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from crypton import codec, topics
from crypton.config import Settings
from crypton.domain.markets import Markets
from crypton.domain.matching import BookMachine
from crypton.domain.messages import BookCancel, BookOrder, DeadLetter, Message
from crypton.domain.wallet import WalletMachine
from crypton.routing import route
from dataflows import metrics
from dataflows.kafka_io import InboxSource, LogSink, Record

__all__ = ["BookLogic", "WalletLogic", "build_flow", "flow"]

log = logging.getLogger("crypton.dataflow")

DEPTH_LEVELS = 50
"""Levels per side in the depth snapshots published to the depth topic."""


def _failed(step: str, msg: Message, exc: Exception) -> DeadLetter:
    """A message the domain could not process, kept with the reason instead of a crash."""
    log.error("%s could not process %r: %s", step, msg, exc)
    key = getattr(msg, "user_id", None) or getattr(msg, "market", None)
    return DeadLetter(
        topic=step, partition=-1, offset=-1, key=key.encode() if key else None,
        value=codec.encode(msg), reason=f"{type(exc).__name__}: {exc}",
    )


class WalletLogic(StatefulBatchLogic[Message, Message, Any]):
    """The wallet step for one user: a ``WalletMachine`` and its snapshots."""

    def __init__(self, markets: Markets, resume: Any) -> None:
        self.markets = markets
        self.machine = WalletMachine.restore(resume, markets) if resume is not None else None

    def on_batch(self, values: list[Message]) -> tuple[list[Message], bool]:
        out: list[Message] = []
        for msg in values:
            if self.machine is None:
                self.machine = WalletMachine(msg.user_id, self.markets)  # type: ignore[attr-defined]
            try:
                out.extend(self.machine.handle(msg))  # type: ignore[arg-type]
            except Exception as exc:
                out.append(_failed("wallet", msg, exc))
        metrics.count("wallet", len(values), out)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return self.machine.snapshot() if self.machine is not None else None


class BookLogic(StatefulBatchLogic[Message, Message, Any]):
    """The book step for one market; publishes a depth snapshot after each batch."""

    def __init__(self, markets: Markets, resume: Any, depth_levels: int) -> None:
        self.markets = markets
        self.depth_levels = depth_levels
        self.machine: BookMachine | None = None
        if resume is not None:
            self.machine = BookMachine.restore(resume, markets.market(resume[0]))

    def on_batch(self, values: list[Message]) -> tuple[list[Message], bool]:
        out: list[Message] = []
        before = self.machine.seq if self.machine is not None else 0
        ts = 0
        for msg in values:
            assert isinstance(msg, BookOrder | BookCancel)
            try:
                if self.machine is None:
                    self.machine = BookMachine(self.markets.market(msg.market))
                out.extend(self.machine.handle(msg))
                ts = msg.ts if isinstance(msg, BookCancel) else msg.order.ts
            except Exception as exc:
                out.append(_failed("book", msg, exc))
        if self.machine is not None and self.machine.seq != before:
            out.append(self.machine.depth(self.depth_levels, ts))
        metrics.count("book", len(values), out)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return self.machine.snapshot() if self.machine is not None else None


def _is_message(item: Message) -> bool:
    return not isinstance(item, DeadLetter)


def _encoder(prefix: str) -> Callable[[Message], tuple[str, Record]]:
    names = {spec.logical: topics.topic_name(spec.logical, prefix) for spec in topics.TOPICS}

    def encode(message: Message) -> tuple[str, Record]:
        logical, key = route(message)
        topic = names[logical]
        # Keyed by destination: one destination, one sink partition, one order.
        return f"{topic}/{key}", (topic, key.encode(), codec.encode(message))

    return encode


def build_flow(
    markets: Markets,
    wallet_inbox: Source[Message],
    book_inbox: Source[Message],
    sink: Sink[tuple[str, Record]],
    *,
    prefix: str = "",
    depth_levels: int = DEPTH_LEVELS,
) -> Dataflow:
    """The exchange flow over any sources and sink (Kafka in production, in-memory in tests)."""
    flow = Dataflow("crypton")
    wallet_in = op.branch("wallet_decoded", op.input("wallet_inbox", flow, wallet_inbox),
                          _is_message)
    book_in = op.branch("book_decoded", op.input("book_inbox", flow, book_inbox), _is_message)
    by_user = op.key_on("by_user", wallet_in.trues, lambda m: m.user_id)  # type: ignore[attr-defined]
    by_market = op.key_on("by_market", book_in.trues, lambda m: m.market)  # type: ignore[attr-defined]
    wallets = op.stateful_batch("wallet", by_user, lambda s: WalletLogic(markets, s))
    books = op.stateful_batch("book", by_market, lambda s: BookLogic(markets, s, depth_levels))
    out = op.merge(
        "outputs",
        op.map("wallet_out", wallets, lambda kv: kv[1]),
        op.map("book_out", books, lambda kv: kv[1]),
        wallet_in.falses,
        book_in.falses,
    )
    op.output("log", op.map("encode", out, _encoder(prefix)), sink)
    return flow


def _kafka_flow() -> Dataflow:
    settings = Settings.from_env()
    name = lambda logical: topics.topic_name(logical, settings.topic_prefix)  # noqa: E731
    port = os.environ.get("CRYPTON_DATAFLOW_METRICS_PORT")
    if port:
        metrics.serve(int(port))
    return build_flow(
        settings.markets(),
        InboxSource(settings, name(topics.WALLET_INBOX), codec.wallet_inbox.decode),
        InboxSource(settings, name(topics.BOOK_INBOX), codec.book_inbox.decode),
        LogSink(settings, parts=int(os.environ.get("CRYPTON_SINK_PARTS", "1"))),
        prefix=settings.topic_prefix,
    )


flow = _kafka_flow()
