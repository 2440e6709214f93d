"""Server-sent event streams that resume without gaps or repeats.

Every event's ``id`` is a cursor over the log, not a counter of this process,
so a client may reconnect to any replica with ``Last-Event-ID``:

* market streams: ``"<trade seq>:<depth seq>"``. Trades are replayed from the
  trade log after the trade sequence; depth is a snapshot, so only the newest
  one after the depth sequence is sent.
* the user stream: ``"o0=12,o1=7,b2=30,t1=5"``, the last offset seen per
  partition of ``crypton.orders`` (``o``), ``crypton.balances`` (``b``) and
  ``crypton.trades`` (``t``, whose records are the user's ``fill`` events).
  Within one partition every replica sees the same order, so "offset above the
  cursor" selects each event exactly once whatever replica serves the reconnect.

Live events pass the same cursor test, which also removes the overlap between
the snapshot and the live queue. A ``live`` event (empty data) ends the snapshot
or replay and carries the current cursor. A client that falls behind (its queue
overflows) or asks for events no longer kept gets a ``resync`` event and the
stream ends; it should refetch the REST state and reconnect.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Collection
from typing import Any, Final

import msgspec
from litestar.response import ServerSentEventMessage

from crypton.domain.markets import Market

from . import schemas
from ._context import Context
from ._hub import Subscriber
from .errors import too_many_streams
from .readmodel import Change

_MARKET_CURSOR = re.compile(r"(\d{1,19}):(\d{1,19})")
_USER_CURSOR = re.compile(r"([obt])(\d{1,5})=(-?\d{1,19})")
_KINDS = {"o": "order", "b": "balance", "t": "trade"}
_CODES = {v: k for k, v in _KINDS.items()}

Cursor = dict[tuple[str, int], int]
MAX_CURSOR_CHARS: Final = 4096
"""Far above what the partitions of the state topics need (about 20 characters each)."""
_MALFORMED: Final = (
    "Last-Event-ID is not an event id of this stream; refetch and reconnect without it"
)


def _event(
    event: str, data: msgspec.Struct | dict[str, Any], cursor: str
) -> ServerSentEventMessage:
    return ServerSentEventMessage(data=msgspec.json.encode(data).decode(), event=event, id=cursor)


def _resync(reason: str, cursor: str) -> ServerSentEventMessage:
    return _event("resync", {"reason": reason}, cursor)


def _live(cursor: str) -> ServerSentEventMessage:
    # Marks the end of the snapshot (or replay): what follows is live. Its id gives
    # the client a resume point even before anything has happened.
    return _event("live", {}, cursor)


def parse_market_cursor(text: str) -> tuple[int, int] | None:
    """``(trade seq, depth seq)``, or ``None`` for anything this API did not write."""
    match = _MARKET_CURSOR.fullmatch(text)
    return None if match is None else (int(match[1]), int(match[2]))


def parse_user_cursor(text: str, known: Collection[tuple[str, int]]) -> Cursor | None:
    """The offsets per partition, or ``None`` for anything this API did not write: too
    long, malformed, a partition named twice or one the state topics do not have."""
    if len(text) > MAX_CURSOR_CHARS:
        return None
    cursor: Cursor = {}
    for part in text.split(","):
        match = _USER_CURSOR.fullmatch(part)
        if match is None:
            return None
        key = (_KINDS[match[1]], int(match[2]))
        if key in cursor or key not in known:
            return None
        cursor[key] = int(match[3])
    return cursor


def format_user_cursor(cursor: Cursor) -> str:
    return ",".join(f"{_CODES[k]}{p}={o}" for (k, p), o in sorted(cursor.items()))


async def _next(sub: Subscriber, heartbeat: float) -> Change | None:
    """The next change; ``None`` when a heartbeat is due or the stream was closed."""
    try:
        return await asyncio.wait_for(sub.queue.get(), heartbeat)
    except TimeoutError:
        return None


class _Heartbeat(ServerSentEventMessage):
    """A comment line *without* the blank line that ends an event: a blank line would
    make some clients (httpx-sse) dispatch an empty event carrying the last id."""

    def encode(self) -> bytes:
        return b": keep-alive\r\n"


_HEARTBEAT = _Heartbeat()


async def market_stream(
    ctx: Context, market: Market, last_event_id: str | None
) -> AsyncIterator[ServerSentEventMessage]:
    symbol = market.symbol
    if ctx.hub.closed:
        return
    sub = Subscriber(ctx.config.sse_queue)
    ctx.hub.markets[symbol].add(sub)
    gauge = ctx.metrics.sse_clients.labels("market")
    gauge.inc()
    try:
        resume = parse_market_cursor(last_event_id) if last_event_id else None
        if last_event_id and resume is None:
            # Never echo what the client made up: it would be the id of every event.
            yield _resync(_MALFORMED, "")
            return
        with ctx.readmodel.read() as model:
            log = model.trade_log(symbol)
            depth = model.depth.get(symbol)
            if resume is None:
                trade_seq, depth_seq = log.last_seq, 0
                replay: list[Any] | None = []
            else:
                trade_seq, depth_seq = resume
                replay = log.after(trade_seq)
        if replay is None:
            yield _resync("trades since your last event are no longer kept", "")
            return
        for trade in replay:
            trade_seq = trade.seq
            yield _event("trade", schemas.from_trade(market, trade), f"{trade_seq}:{depth_seq}")
        if depth is not None and depth.seq > depth_seq:
            depth_seq = depth.seq
            yield _event(
                "depth", schemas.from_depth(market, depth, 1000), f"{trade_seq}:{depth_seq}"
            )
        yield _live(f"{trade_seq}:{depth_seq}")
        while True:
            if sub.dropped:
                ctx.metrics.sse_dropped.labels("market").inc()
                yield _resync("client too slow", f"{trade_seq}:{depth_seq}")
                return
            change = await _next(sub, ctx.config.heartbeat_s)
            if change is None:
                if sub.closed:
                    return
                yield _HEARTBEAT
            elif change.kind == "trade" and change.record.seq > trade_seq:
                trade_seq = change.record.seq
                view = schemas.from_trade(market, change.record)
                yield _event("trade", view, f"{trade_seq}:{depth_seq}")
            elif change.kind == "depth" and change.record.seq > depth_seq:
                depth_seq = change.record.seq
                depth_view = schemas.from_depth(market, change.record, 1000)
                yield _event("depth", depth_view, f"{trade_seq}:{depth_seq}")
    finally:
        ctx.hub.unsubscribe(ctx.hub.markets, symbol, sub)
        gauge.dec()


def _user_event(
    ctx: Context, user_id: str, change: Change
) -> tuple[str, msgspec.Struct | dict[str, Any]]:
    record = change.record
    if change.kind == "order":
        return "order", schemas.from_order(ctx.markets.market(record.market), record)
    if change.kind == "trade":
        with ctx.readmodel.read() as model:
            fill = next(f for f in model.fills_of_trade(record) if f.user_id == user_id)
            client_order_id = model.client_order_id(fill.order_id)
        return "fill", schemas.from_fill(ctx.markets.market(record.market), fill, client_order_id)
    return "balance", schemas.from_balances(record, ctx.precisions)


async def user_stream(
    ctx: Context, user_id: str, last_event_id: str | None
) -> AsyncIterator[ServerSentEventMessage]:
    if ctx.hub.closed:
        return
    if len(ctx.hub.users.get(user_id, ())) >= ctx.config.sse_streams_per_user:
        # Streams opened together all passed the route's check before any started.
        yield _resync(too_many_streams(ctx.config.sse_streams_per_user).body.message, "")
        return
    sub = Subscriber(ctx.config.sse_queue)
    ctx.hub.users[user_id].add(sub)
    gauge = ctx.metrics.sse_clients.labels("user")
    gauge.inc()
    try:
        snapshot: list[Change] = []
        with ctx.readmodel.read() as model:
            known = ctx.readmodel.positions.keys()
            resume = parse_user_cursor(last_event_id, known) if last_event_id else None
            journal = ctx.readmodel.journals.get(user_id)
            if resume is None:
                cursor = dict(ctx.readmodel.positions)
                balance = model.balance(user_id)
                if balance is not None:
                    snapshot.append(Change("balance", balance, -1, -1))
                snapshot += [Change("order", o, -1, -1) for o in model.open_orders(user_id)]
                gap = False
            else:
                cursor = resume
                events = list(journal.events) if journal else []
                evicted = ctx.readmodel.evicted(user_id)
                gap = any(cursor.get(k, -1) < off for k, off in evicted.items())
                snapshot = [e for e in events if e.offset > cursor.get((e.kind, e.partition), -1)]
        if last_event_id and resume is None:
            yield _resync(_MALFORMED, "")
            return
        if gap:
            yield _resync("events since your last event are no longer kept", "")
            return
        for change in snapshot:
            if change.offset >= 0:
                cursor[(change.kind, change.partition)] = change.offset
            name, data = _user_event(ctx, user_id, change)
            yield _event(name, data, format_user_cursor(cursor))
        yield _live(format_user_cursor(cursor))
        while True:
            if sub.dropped:
                ctx.metrics.sse_dropped.labels("user").inc()
                yield _resync("client too slow", format_user_cursor(cursor))
                return
            live = await _next(sub, ctx.config.heartbeat_s)
            if live is None:
                if sub.closed:
                    return
                yield _HEARTBEAT
                continue
            key = (live.kind, live.partition)
            if live.offset <= cursor.get(key, -1):
                continue
            cursor[key] = live.offset
            name, data = _user_event(ctx, user_id, live)
            yield _event(name, data, format_user_cursor(cursor))
    finally:
        ctx.hub.unsubscribe(ctx.hub.users, user_id, sub)
        gauge.dec()
