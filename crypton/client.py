"""A typed Python client of the Crypton API: ``Client`` (sync) and ``AsyncClient``.

Both speak HTTP with httpx, read event streams with httpx-sse, and decode every
answer into the structs of ``crypton.wire`` (the same ones the API serves), so
amounts stay decimal strings and nothing becomes a float. An error answer
raises ``ApiError`` (``RateLimitedError`` for a 429), carrying the API's ``code``,
``field`` and ``reason_code``.

>>> import httpx
>>> def fake(request: httpx.Request) -> httpx.Response:
...     return httpx.Response(200, json={"time": 1700000000000})
>>> with Client("http://127.0.0.1:1", transport=httpx.MockTransport(fake)) as api:
...     api.time()
1700000000000
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import httpx
import msgspec
from httpx_sse import aconnect_sse, connect_sse

from crypton.wire import (
    BalanceView,
    CancelAllResult,
    CandlePage,
    DepthView,
    ErrorBody,
    FillPage,
    FillView,
    KeyCreated,
    KeyPage,
    MarketPage,
    MarketView,
    OrderPage,
    OrderView,
    ServerTime,
    TickerPage,
    TickerView,
    TradePage,
    TradeView,
    TransferView,
    UserCreated,
)

__all__ = ["ApiError", "AsyncClient", "Client", "Event", "RateLimitedError"]

T = TypeVar("T")
Params = dict[str, str | int | bool]
DEFAULT_TIMEOUT: Final = 15.0


class ApiError(Exception):
    """The API answered an error: ``status``, its ``code``, ``field`` and ``reason_code``."""

    def __init__(self, status: int, body: ErrorBody, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {body.code}: {body.message}")
        self.status = status
        self.code = body.code
        self.message = body.message
        self.field = body.field
        self.reason_code = body.reason_code
        self.retry_after = retry_after


class RateLimitedError(ApiError):
    """429: wait ``retry_after`` seconds."""


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its type, its decoded data and its id (the resume cursor)."""

    event: str
    data: Any
    id: str


_USER_EVENTS: Final[dict[str, Any]] = {
    "order": OrderView,
    "fill": FillView,
    "balance": dict[str, BalanceView],
}
_MARKET_EVENTS: Final[dict[str, Any]] = {"trade": TradeView, "depth": DepthView}


def _decode_event(kinds: Mapping[str, Any], event: str, data: str, id: str) -> Event:
    kind = kinds.get(event)
    payload = msgspec.json.decode(data, type=kind) if kind else msgspec.json.decode(data)
    return Event(event, payload, id)


@dataclass(frozen=True, slots=True)
class _Call:
    """One request: what both clients send, and the type of the answer."""

    method: str
    path: str
    answer: Any
    params: Params | None = None
    body: Any = None


def _page(**params: str | int | bool | None) -> Params:
    return {k: v for k, v in params.items() if v is not None}


def _error(response: httpx.Response) -> ApiError:
    try:
        body = msgspec.json.decode(response.content, type=ErrorBody)
    except msgspec.DecodeError:
        body = ErrorBody("http_error", response.text[:300] or response.reason_phrase)
    retry = response.headers.get("retry-after")
    seconds = float(retry) if retry and retry.isdigit() else None
    kind = RateLimitedError if response.status_code == 429 else ApiError
    return kind(response.status_code, body, seconds)


def _result(call: _Call, response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error(response)
    if call.answer is None or not response.content:
        return None
    return msgspec.json.decode(response.content, type=call.answer)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class _Calls:
    """Every route as a ``_Call``: the one place paths, parameters and answers are named."""

    @staticmethod
    def time() -> _Call:
        return _Call("GET", "/v1/time", ServerTime)

    @staticmethod
    def markets() -> _Call:
        return _Call("GET", "/v1/markets", MarketPage)

    @staticmethod
    def market(market: str) -> _Call:
        return _Call("GET", f"/v1/markets/{market}", MarketView)

    @staticmethod
    def ticker(market: str) -> _Call:
        return _Call("GET", f"/v1/markets/{market}/ticker", TickerView)

    @staticmethod
    def tickers() -> _Call:
        return _Call("GET", "/v1/tickers", TickerPage)

    @staticmethod
    def depth(market: str, levels: int) -> _Call:
        return _Call("GET", f"/v1/markets/{market}/depth", DepthView, {"levels": levels})

    @staticmethod
    def trades(
        market: str, limit: int, before_seq: int | None, since: int | None, after_seq: int | None
    ) -> _Call:
        params = _page(limit=limit, before_seq=before_seq, since=since, after_seq=after_seq)
        return _Call("GET", f"/v1/markets/{market}/trades", TradePage, params)

    @staticmethod
    def candles(
        market: str, interval: str, limit: int, start: int | None, end: int | None
    ) -> _Call:
        params = _page(interval=interval, limit=limit, start=start, end=end)
        return _Call("GET", f"/v1/markets/{market}/candles", CandlePage, params)

    @staticmethod
    def place_order(order: dict[str, Any], wait: bool) -> _Call:
        return _Call("POST", "/v1/orders", OrderView, _page(wait=wait or None), order)

    @staticmethod
    def order(order_id: str) -> _Call:
        return _Call("GET", f"/v1/orders/{order_id}", OrderView)

    @staticmethod
    def order_by_client_id(client_order_id: str) -> _Call:
        return _Call("GET", f"/v1/orders/by-client-id/{client_order_id}", OrderView)

    @staticmethod
    def cancel_order(order_id: str, wait: bool) -> _Call:
        return _Call("DELETE", f"/v1/orders/{order_id}", OrderView, _page(wait=wait or None))

    @staticmethod
    def cancel_by_client_id(client_order_id: str, wait: bool) -> _Call:
        path = f"/v1/orders/by-client-id/{client_order_id}"
        return _Call("DELETE", path, OrderView, _page(wait=wait or None))

    @staticmethod
    def cancel_all(market: str | None) -> _Call:
        params: Params = {"market": market} if market else {"all": True}
        return _Call("DELETE", "/v1/orders", CancelAllResult, params)

    @staticmethod
    def orders(status: str, market: str | None, limit: int, cursor: str | None) -> _Call:
        params = _page(status=status, market=market, limit=limit, cursor=cursor)
        return _Call("GET", "/v1/orders", OrderPage, params)

    @staticmethod
    def balances() -> _Call:
        return _Call("GET", "/v1/balances", dict[str, BalanceView])

    @staticmethod
    def fills(market: str | None, limit: int, cursor: str | None) -> _Call:
        return _Call("GET", "/v1/fills", FillPage, _page(market=market, limit=limit, cursor=cursor))

    # --- admin ---------------------------------------------------------------------

    @staticmethod
    def create_user(user_id: str | None) -> _Call:
        body = {"user_id": user_id} if user_id else {}
        return _Call("POST", "/v1/admin/users", UserCreated, None, body)

    @staticmethod
    def transfer(
        direction: str, user_id: str, asset: str, amount: str, transfer_id: str, wait: bool
    ) -> _Call:
        body = {"asset": asset, "amount": amount, "transfer_id": transfer_id}
        path = f"/v1/admin/users/{user_id}/{direction}"
        return _Call("POST", path, TransferView, _page(wait=wait or None), body)

    @staticmethod
    def user_balances(user_id: str) -> _Call:
        return _Call("GET", f"/v1/admin/users/{user_id}/balances", dict[str, BalanceView])

    @staticmethod
    def create_key(user_id: str, scopes: list[str] | None) -> _Call:
        body = {"scopes": scopes} if scopes is not None else {}
        return _Call("POST", f"/v1/admin/users/{user_id}/keys", KeyCreated, None, body)

    @staticmethod
    def list_keys(user_id: str) -> _Call:
        return _Call("GET", f"/v1/admin/users/{user_id}/keys", KeyPage)

    @staticmethod
    def revoke_key(user_id: str, key_id: str) -> _Call:
        return _Call("DELETE", f"/v1/admin/users/{user_id}/keys/{key_id}", None)


def order_body(
    market: str,
    side: Literal["buy", "sell"],
    type: Literal["limit", "market"] = "limit",
    *,
    price: str | None = None,
    quantity: str | None = None,
    funds: str | None = None,
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC",
    post_only: bool = False,
    client_order_id: str | None = None,
    stp: Literal["expire_taker", "expire_maker", "expire_both"] = "expire_taker",
) -> dict[str, Any]:
    """The JSON of ``POST /v1/orders``: only the fields given (amounts as strings)."""
    body: dict[str, Any] = {"market": market, "side": side, "type": type}
    optional = {"price": price, "quantity": quantity, "funds": funds,
                "client_order_id": client_order_id}  # fmt: skip
    body.update({k: v for k, v in optional.items() if v is not None})
    if time_in_force != "GTC":
        body["time_in_force"] = time_in_force
    if post_only:
        body["post_only"] = True
    if stp != "expire_taker":
        body["stp"] = stp
    return body


class Client:
    """The synchronous client. ``api_key`` is a user's key or the admin token."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _run(self, call: _Call) -> Any:
        response = self.http.request(call.method, call.path, params=call.params, json=call.body)
        return _result(call, response)

    # --- market data ---------------------------------------------------------------

    def time(self) -> int:
        """The server's clock, ms since the epoch."""
        answer: ServerTime = self._run(_Calls.time())
        return answer.time

    def markets(self) -> list[MarketView]:
        page: MarketPage = self._run(_Calls.markets())
        return page.items

    def market(self, market: str) -> MarketView:
        result: MarketView = self._run(_Calls.market(market))
        return result

    def ticker(self, market: str) -> TickerView:
        result: TickerView = self._run(_Calls.ticker(market))
        return result

    def tickers(self) -> list[TickerView]:
        page: TickerPage = self._run(_Calls.tickers())
        return page.items

    def depth(self, market: str, levels: int = 50) -> DepthView:
        result: DepthView = self._run(_Calls.depth(market, levels))
        return result

    def trades(
        self,
        market: str,
        limit: int = 100,
        *,
        before_seq: int | None = None,
        since: int | None = None,
        after_seq: int | None = None,
    ) -> TradePage:
        result: TradePage = self._run(_Calls.trades(market, limit, before_seq, since, after_seq))
        return result

    def candles(
        self,
        market: str,
        interval: str = "1m",
        limit: int = 100,
        *,
        start: int | None = None,
        end: int | None = None,
    ) -> CandlePage:
        result: CandlePage = self._run(_Calls.candles(market, interval, limit, start, end))
        return result

    # --- trading -------------------------------------------------------------------

    def place_order(
        self,
        market: str,
        side: Literal["buy", "sell"],
        type: Literal["limit", "market"] = "limit",
        *,
        wait: bool = False,
        **terms: Any,
    ) -> OrderView:
        """Place an order (``order_body`` names the terms); ``wait`` for its first state."""
        result: OrderView = self._run(
            _Calls.place_order(order_body(market, side, type, **terms), wait)
        )
        return result

    def order(self, order_id: str) -> OrderView:
        result: OrderView = self._run(_Calls.order(order_id))
        return result

    def order_by_client_id(self, client_order_id: str) -> OrderView:
        result: OrderView = self._run(_Calls.order_by_client_id(client_order_id))
        return result

    def cancel_order(self, order_id: str, *, wait: bool = False) -> OrderView:
        result: OrderView = self._run(_Calls.cancel_order(order_id, wait))
        return result

    def cancel_by_client_id(self, client_order_id: str, *, wait: bool = False) -> OrderView:
        result: OrderView = self._run(_Calls.cancel_by_client_id(client_order_id, wait))
        return result

    def cancel_all(self, market: str | None = None) -> CancelAllResult:
        """Cancel every open order in ``market``, or in every market when ``None``."""
        result: CancelAllResult = self._run(_Calls.cancel_all(market))
        return result

    def orders(
        self,
        status: Literal["open", "all"] = "all",
        market: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> OrderPage:
        result: OrderPage = self._run(_Calls.orders(status, market, limit, cursor))
        return result

    def balances(self) -> dict[str, BalanceView]:
        result: dict[str, BalanceView] = self._run(_Calls.balances())
        return result

    def fills(
        self, market: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> FillPage:
        result: FillPage = self._run(_Calls.fills(market, limit, cursor))
        return result

    # --- streams -------------------------------------------------------------------

    def stream_me(self, last_event_id: str | None = None) -> Iterator[Event]:
        """The caller's ``order``, ``balance`` and ``fill`` events (and ``live``, ``resync``)."""
        return self._stream("/v1/stream/me", _USER_EVENTS, last_event_id)

    def stream_market(self, market: str, last_event_id: str | None = None) -> Iterator[Event]:
        """``trade`` and ``depth`` events of one market."""
        return self._stream(f"/v1/stream/markets/{market}", _MARKET_EVENTS, last_event_id)

    def _stream(
        self, path: str, kinds: Mapping[str, Any], last_event_id: str | None
    ) -> Iterator[Event]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with connect_sse(self.http, "GET", path, headers=headers) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise _error(source.response)
            for sse in source.iter_sse():
                yield _decode_event(kinds, sse.event, sse.data, sse.id)

    # --- admin (with the admin token) ----------------------------------------------

    def create_user(self, user_id: str | None = None) -> UserCreated:
        result: UserCreated = self._run(_Calls.create_user(user_id))
        return result

    def credit(
        self, user_id: str, asset: str, amount: str, transfer_id: str, *, wait: bool = False
    ) -> TransferView:
        call = _Calls.transfer("credit", user_id, asset, amount, transfer_id, wait)
        result: TransferView = self._run(call)
        return result

    def debit(
        self, user_id: str, asset: str, amount: str, transfer_id: str, *, wait: bool = False
    ) -> TransferView:
        call = _Calls.transfer("debit", user_id, asset, amount, transfer_id, wait)
        result: TransferView = self._run(call)
        return result

    def user_balances(self, user_id: str) -> dict[str, BalanceView]:
        result: dict[str, BalanceView] = self._run(_Calls.user_balances(user_id))
        return result

    def create_key(self, user_id: str, scopes: list[str] | None = None) -> KeyCreated:
        result: KeyCreated = self._run(_Calls.create_key(user_id, scopes))
        return result

    def list_keys(self, user_id: str) -> KeyPage:
        result: KeyPage = self._run(_Calls.list_keys(user_id))
        return result

    def revoke_key(self, user_id: str, key_id: str) -> None:
        self._run(_Calls.revoke_key(user_id, key_id))


class AsyncClient:
    """The asyncio client: the same methods as ``Client``, awaited."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _run(self, call: _Call) -> Any:
        response = await self.http.request(
            call.method, call.path, params=call.params, json=call.body
        )
        return _result(call, response)

    async def time(self) -> int:
        answer: ServerTime = await self._run(_Calls.time())
        return answer.time

    async def markets(self) -> list[MarketView]:
        page: MarketPage = await self._run(_Calls.markets())
        return page.items

    async def market(self, market: str) -> MarketView:
        result: MarketView = await self._run(_Calls.market(market))
        return result

    async def ticker(self, market: str) -> TickerView:
        result: TickerView = await self._run(_Calls.ticker(market))
        return result

    async def tickers(self) -> list[TickerView]:
        page: TickerPage = await self._run(_Calls.tickers())
        return page.items

    async def depth(self, market: str, levels: int = 50) -> DepthView:
        result: DepthView = await self._run(_Calls.depth(market, levels))
        return result

    async def trades(
        self,
        market: str,
        limit: int = 100,
        *,
        before_seq: int | None = None,
        since: int | None = None,
        after_seq: int | None = None,
    ) -> TradePage:
        call = _Calls.trades(market, limit, before_seq, since, after_seq)
        result: TradePage = await self._run(call)
        return result

    async def candles(
        self,
        market: str,
        interval: str = "1m",
        limit: int = 100,
        *,
        start: int | None = None,
        end: int | None = None,
    ) -> CandlePage:
        result: CandlePage = await self._run(_Calls.candles(market, interval, limit, start, end))
        return result

    async def place_order(
        self,
        market: str,
        side: Literal["buy", "sell"],
        type: Literal["limit", "market"] = "limit",
        *,
        wait: bool = False,
        **terms: Any,
    ) -> OrderView:
        call = _Calls.place_order(order_body(market, side, type, **terms), wait)
        result: OrderView = await self._run(call)
        return result

    async def order(self, order_id: str) -> OrderView:
        result: OrderView = await self._run(_Calls.order(order_id))
        return result

    async def order_by_client_id(self, client_order_id: str) -> OrderView:
        result: OrderView = await self._run(_Calls.order_by_client_id(client_order_id))
        return result

    async def cancel_order(self, order_id: str, *, wait: bool = False) -> OrderView:
        result: OrderView = await self._run(_Calls.cancel_order(order_id, wait))
        return result

    async def cancel_by_client_id(self, client_order_id: str, *, wait: bool = False) -> OrderView:
        result: OrderView = await self._run(_Calls.cancel_by_client_id(client_order_id, wait))
        return result

    async def cancel_all(self, market: str | None = None) -> CancelAllResult:
        result: CancelAllResult = await self._run(_Calls.cancel_all(market))
        return result

    async def orders(
        self,
        status: Literal["open", "all"] = "all",
        market: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> OrderPage:
        result: OrderPage = await self._run(_Calls.orders(status, market, limit, cursor))
        return result

    async def balances(self) -> dict[str, BalanceView]:
        result: dict[str, BalanceView] = await self._run(_Calls.balances())
        return result

    async def fills(
        self, market: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> FillPage:
        result: FillPage = await self._run(_Calls.fills(market, limit, cursor))
        return result

    def stream_me(self, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._stream("/v1/stream/me", _USER_EVENTS, last_event_id)

    def stream_market(self, market: str, last_event_id: str | None = None) -> AsyncIterator[Event]:
        return self._stream(f"/v1/stream/markets/{market}", _MARKET_EVENTS, last_event_id)

    async def _stream(
        self, path: str, kinds: Mapping[str, Any], last_event_id: str | None
    ) -> AsyncIterator[Event]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        async with aconnect_sse(self.http, "GET", path, headers=headers) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                raise _error(source.response)
            async for sse in source.aiter_sse():
                yield _decode_event(kinds, sse.event, sse.data, sse.id)

    async def create_user(self, user_id: str | None = None) -> UserCreated:
        result: UserCreated = await self._run(_Calls.create_user(user_id))
        return result

    async def credit(
        self, user_id: str, asset: str, amount: str, transfer_id: str, *, wait: bool = False
    ) -> TransferView:
        call = _Calls.transfer("credit", user_id, asset, amount, transfer_id, wait)
        result: TransferView = await self._run(call)
        return result

    async def debit(
        self, user_id: str, asset: str, amount: str, transfer_id: str, *, wait: bool = False
    ) -> TransferView:
        call = _Calls.transfer("debit", user_id, asset, amount, transfer_id, wait)
        result: TransferView = await self._run(call)
        return result

    async def user_balances(self, user_id: str) -> dict[str, BalanceView]:
        result: dict[str, BalanceView] = await self._run(_Calls.user_balances(user_id))
        return result

    async def create_key(self, user_id: str, scopes: list[str] | None = None) -> KeyCreated:
        result: KeyCreated = await self._run(_Calls.create_key(user_id, scopes))
        return result

    async def list_keys(self, user_id: str) -> KeyPage:
        result: KeyPage = await self._run(_Calls.list_keys(user_id))
        return result

    async def revoke_key(self, user_id: str, key_id: str) -> None:
        await self._run(_Calls.revoke_key(user_id, key_id))
