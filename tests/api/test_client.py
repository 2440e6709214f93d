"""crypton.client against a real API: sync and async, REST and the user stream."""

from __future__ import annotations

import asyncio

import pytest

from crypton import topics
from crypton.client import ApiError, AsyncClient, Client

from .records import order_state, trade
from .support import ADMIN_TOKEN, ApiServer, StateWriter, wait_for

pytestmark = pytest.mark.integration


def test_sync_client(api_server: ApiServer, state_writer: StateWriter) -> None:
    with Client(api_server.url, ADMIN_TOKEN) as admin:
        alice = admin.create_user("alice")
        assert alice.scopes == ["read", "trade"]
        reader = admin.create_key("alice", ["read"])
        assert [k.key_id for k in admin.list_keys("alice").items] == [alice.key_id, reader.key_id]
        assert admin.time() > 0
        assert {m.market for m in admin.markets()} >= {"BTC-USDT"}
    state_writer.send(topics.ORDERS, "m", order_state("m", user="alice", client_order_id="c1"))
    state_writer.flush()
    with Client(api_server.url, alice.api_key) as api:
        wait_for(lambda: api.orders().items)
        assert api.order_by_client_id("c1").order_id == "m"
        with pytest.raises(ApiError) as info:
            api.place_order("BTC-USDT", "buy", price="50000.001", quantity="0.001")
        assert info.value.reason_code == "invalid_tick"
        events = api.stream_me()
        assert next(events).event == "order"
        assert next(events).event == "live"
        state_writer.send(topics.TRADES, "BTC-USDT", trade(1, quantity=10_000, time=3))
        state_writer.flush()
        fill = next(e for e in events if e.event == "fill")
        assert (fill.data.order_id, fill.data.client_order_id, fill.data.liquidity) == (
            "m", "c1", "maker",
        )  # fmt: skip
        events.close()  # type: ignore[attr-defined]
    with Client(api_server.url, reader.api_key) as read_only:
        with pytest.raises(ApiError) as denied:
            read_only.cancel_by_client_id("c1")
        assert denied.value.status == 403


def test_async_client(api_server: ApiServer) -> None:
    async def run() -> None:
        async with AsyncClient(api_server.url, ADMIN_TOKEN) as admin:
            bob = await admin.create_user("bob")
            done = await admin.credit("bob", "USDT", "10", "t1")
            assert done.status in ("PENDING", "ACCEPTED")
        async with AsyncClient(api_server.url, bob.api_key) as api:
            assert (await api.ticker("BTC-USDT")).market == "BTC-USDT"
            assert len(await api.tickers()) >= 1
            assert set(await api.balances()) >= {"USDT"}

    asyncio.run(run())
