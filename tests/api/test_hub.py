"""Fan-out to SSE clients and waiters, without a server: a slow client is dropped with a
``resync`` event and never holds up the others."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from api._config import ApiConfig
from api._context import Context
from api._hub import Hub, Subscriber
from api._sse import market_stream, user_stream
from api.metrics import Metrics
from api.readmodel import Change, LiveReadModel
from crypton.config import Settings, load_markets

from .records import order_state, trade


def context(queue: int = 3) -> Context:
    settings = Settings(kafka_port=1)  # never connected: the read model is not started
    metrics = Metrics()
    return Context(
        settings=settings,
        config=ApiConfig(sse_queue=queue, heartbeat_s=0.05),
        markets=load_markets(),
        metrics=metrics,
        readmodel=LiveReadModel(settings, metrics),
        hub=Hub(),
        commands=cast(Any, None),
        secret=b"test-secret-of-the-api",
    )


def trades(*seqs: int) -> list[Change]:
    return [Change("trade", trade(seq), 0, seq) for seq in seqs]


def test_a_full_queue_drops_only_that_subscriber() -> None:
    hub = Hub()
    slow, fast = Subscriber(2), Subscriber(100)
    hub.markets["BTC-USDT"] |= {slow, fast}
    hub.dispatch(trades(1, 2, 3))
    assert slow.dropped and not fast.dropped
    assert fast.queue.qsize() == 3


def test_slow_market_client_gets_resync_and_the_stream_ends() -> None:
    async def run() -> list[Any]:
        ctx = context(queue=3)
        ctx.hub.bind(asyncio.get_running_loop())
        stream = market_stream(ctx, ctx.markets.market("BTC-USDT"), None)
        events = [await anext(stream)]  # "live": subscribed
        ctx.hub.dispatch(trades(1, 2, 3, 4, 5))  # the client reads nothing meanwhile
        events += [e async for e in stream]
        assert ctx.hub.markets == {}  # unsubscribed
        return events

    events = asyncio.run(run())
    assert [e.event for e in events] == ["live", "resync"]
    assert events[-1].id == "0:0"  # it may resume from what it had


def test_heartbeats_and_close() -> None:
    async def run() -> list[Any]:
        ctx = context()
        ctx.hub.bind(asyncio.get_running_loop())
        stream = user_stream(ctx, "alice", None)
        events = [await anext(stream), await anext(stream)]
        ctx.hub.dispatch([Change("order", order_state("o1", user="alice"), 2, 7)])
        events.append(await anext(stream))
        ctx.hub.close()  # the server is shutting down: the stream ends
        events += [e async for e in stream]
        return events

    live, beat, order = asyncio.run(run())
    assert live.event == "live"
    assert beat.encode() == b": keep-alive\r\n"
    assert order.event == "order" and order.id == "o2=7"


def test_waiters_wake_on_their_key_only() -> None:
    async def run() -> tuple[object, object]:
        hub = Hub()
        hub.bind(asyncio.get_running_loop())
        box: dict[str, int] = {}
        waiting = asyncio.create_task(hub.wait_for(("order", "o1"), lambda: box.get("o1"), 2))
        await asyncio.sleep(0.01)
        hub.dispatch([Change("order", order_state("o2"), 0, 0)])
        box["o1"] = 1
        hub.dispatch([Change("order", order_state("o1"), 0, 1)])
        found = await waiting
        missing = await hub.wait_for(("order", "o3"), lambda: None, 0.05)
        return found, missing

    assert asyncio.run(run()) == (1, None)
