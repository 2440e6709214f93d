"""crypton.client without a server: requests it builds, answers it decodes, errors it raises."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from crypton.client import ApiError, AsyncClient, Client, RateLimitedError, order_body


def _server(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path == "/v1/orders" and request.method == "POST":
            return httpx.Response(
                400,
                json={"code": "invalid_request", "message": "price must be a multiple of the "
                      "tick 0.01", "field": "price", "reason_code": "invalid_tick"},
            )  # fmt: skip
        if path == "/v1/balances":
            return httpx.Response(429, headers={"Retry-After": "2"}, json={
                "code": "rate_limited", "message": "slow down"})  # fmt: skip
        if path.endswith("/candles"):
            return httpx.Response(200, json={"items": [], "next_cursor": None})
        return httpx.Response(404, json={"code": "not_found", "message": "no"})

    return httpx.MockTransport(answer)


def test_errors_carry_code_field_and_reason_code() -> None:
    seen: list[httpx.Request] = []
    with Client("http://127.0.0.1:1", "k", transport=_server(seen)) as api:
        with pytest.raises(ApiError) as info:
            api.place_order("BTC-USDT", "buy", price="1.001", quantity="1", client_order_id="c")
        assert (info.value.status, info.value.code, info.value.field) == (
            400, "invalid_request", "price",
        )  # fmt: skip
        assert info.value.reason_code == "invalid_tick"
        with pytest.raises(RateLimitedError) as limited:
            api.balances()
        assert limited.value.retry_after == 2
        assert api.candles("BTC-USDT", "1h", start=5).items == []
    body = json.loads(seen[0].content)
    assert body == {"market": "BTC-USDT", "side": "buy", "type": "limit", "price": "1.001",
                    "quantity": "1", "client_order_id": "c"}  # fmt: skip
    assert seen[0].headers["authorization"] == "Bearer k"
    assert dict(seen[2].url.params) == {"interval": "1h", "limit": "100", "start": "5"}


def test_the_async_client_builds_the_same_requests() -> None:
    seen: list[httpx.Request] = []

    async def run() -> None:
        async with AsyncClient("http://127.0.0.1:1", transport=_server(seen)) as api:
            assert (await api.candles("BTC-USDT", "1h", start=5)).items == []
            with pytest.raises(ApiError):
                await api.order("nope")

    asyncio.run(run())
    assert dict(seen[0].url.params) == {"interval": "1h", "limit": "100", "start": "5"}
    assert seen[1].url.path == "/v1/orders/nope"


def test_order_body_sends_only_what_is_given() -> None:
    assert order_body("ETH-USDT", "buy", "market", funds="10", time_in_force="IOC") == {
        "market": "ETH-USDT", "side": "buy", "type": "market", "funds": "10",
        "time_in_force": "IOC",
    }  # fmt: skip
