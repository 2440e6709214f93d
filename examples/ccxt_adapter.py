"""A CCXT-style facade over ``crypton.client``: the unified method names and shapes a
CCXT user expects (``fetch_ticker``, ``fetch_ohlcv``, ``create_order``, ...), so code
written against CCXT's unified API can be pointed at a Crypton exchange.

Not CCXT itself (no dependency on it): the same method names, arguments and result
keys, with Crypton's decimal strings turned into floats only here, at the edge, as
CCXT does. Symbols are CCXT's ``BASE/QUOTE``; times are ms since the epoch.

    exchange = Crypton("http://127.0.0.1:8000", api_key)
    exchange.fetch_ticker("BTC/USDT")["last"]
    exchange.create_order("BTC/USDT", "limit", "buy", 0.01, 50000)
"""

from __future__ import annotations

from typing import Any

from crypton.client import ApiError, Client
from crypton.wire import OrderView, TradeView

_STATUS = {
    "PENDING": "open", "NEW": "open", "OPEN": "open", "PARTIALLY_FILLED": "open",
    "FILLED": "closed", "CANCELED": "canceled", "EXPIRED": "expired", "REJECTED": "rejected",
}  # fmt: skip


def _market(symbol: str) -> str:
    return symbol.replace("/", "-")


def _symbol(market: str) -> str:
    return market.replace("-", "/")


def _num(text: str | None) -> float | None:
    return None if text is None else float(text)


class Crypton:
    """``ccxt.Exchange``-shaped methods over one ``crypton.client.Client``."""

    id = "crypton"

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.client = Client(base_url, api_key)

    def milliseconds(self) -> int:
        return self.client.time()

    def fetch_time(self) -> int:
        return self.client.time()

    def load_markets(self) -> dict[str, dict[str, Any]]:
        return {
            _symbol(m.market): {
                "id": m.market, "symbol": _symbol(m.market), "base": m.base, "quote": m.quote,
                "precision": {"amount": m.base_precision, "price": m.quote_precision},
                "limits": {"amount": {"min": float(m.min_quantity)},
                           "cost": {"min": float(m.min_notional)}},
                "maker": m.maker_fee_bps / 10_000, "taker": m.taker_fee_bps / 10_000,
            }
            for m in self.client.markets()
        }  # fmt: skip

    def fetch_ticker(self, symbol: str) -> dict[str, Any]:
        t = self.client.ticker(_market(symbol))
        return {
            "symbol": symbol, "timestamp": t.time, "last": _num(t.last), "close": _num(t.last),
            "bid": _num(t.bid), "ask": _num(t.ask), "open": _num(t.open), "high": _num(t.high),
            "low": _num(t.low), "baseVolume": float(t.volume),
            "quoteVolume": float(t.quote_volume), "percentage": _num(t.change_percent),
        }  # fmt: skip

    def fetch_order_book(self, symbol: str, limit: int = 50) -> dict[str, Any]:
        d = self.client.depth(_market(symbol), limit)
        return {
            "symbol": symbol, "timestamp": d.time, "nonce": d.seq,
            "bids": [[float(p), float(q)] for p, q in d.bids],
            "asks": [[float(p), float(q)] for p, q in d.asks],
        }  # fmt: skip

    def fetch_trades(
        self, symbol: str, since: int | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        page = self.client.trades(_market(symbol), limit, since=since)
        items = page.items if since is not None else list(reversed(page.items))
        return [self._trade(symbol, t) for t in items]  # CCXT: oldest first

    @staticmethod
    def _trade(symbol: str, t: TradeView) -> dict[str, Any]:
        return {
            "id": str(t.seq), "symbol": symbol, "timestamp": t.time, "side": t.taker_side,
            "takerOrMaker": "taker", "price": float(t.price), "amount": float(t.quantity),
        }  # fmt: skip

    def fetch_ohlcv(
        self, symbol: str, timeframe: str = "1m", since: int | None = None, limit: int = 100
    ) -> list[list[float]]:
        page = self.client.candles(_market(symbol), timeframe, limit, start=since)
        return [
            [c.start, float(c.open), float(c.high), float(c.low), float(c.close), float(c.volume)]
            for c in page.items
        ]

    def fetch_balance(self) -> dict[str, Any]:
        balances = self.client.balances()
        result: dict[str, Any] = {"free": {}, "used": {}, "total": {}}
        for asset, b in balances.items():
            free, used = float(b.available), float(b.held)
            result[asset] = {"free": free, "used": used, "total": free + used}
            result["free"][asset], result["used"][asset] = free, used
            result["total"][asset] = free + used
        return result

    def create_order(
        self,
        symbol: str,
        type: str,
        side: str,
        amount: float | None,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``params`` takes ``clientOrderId``, ``timeInForce``, ``postOnly``, ``cost``
        (a market buy's funds), as in CCXT."""
        params = params or {}
        terms: dict[str, Any] = {
            "price": None if price is None else format(price, "f"),
            "quantity": None if amount is None else format(amount, "f"),
            "funds": None if "cost" not in params else format(params["cost"], "f"),
            "client_order_id": params.get("clientOrderId"),
            "time_in_force": params.get("timeInForce", "GTC"),
            "post_only": bool(params.get("postOnly", False)),
        }
        if type == "market" and side == "buy" and terms["funds"] is not None:
            terms["quantity"] = None
        order = self.client.place_order(_market(symbol), side, type, wait=True, **terms)  # type: ignore[arg-type]
        return self._order(order)

    def cancel_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        return self._order(self.client.cancel_order(id, wait=True))

    def fetch_order(self, id: str, symbol: str | None = None) -> dict[str, Any]:
        try:
            return self._order(self.client.order(id))
        except ApiError as exc:
            if exc.status != 404:
                raise
            return self._order(self.client.order_by_client_id(id))

    def fetch_open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        market = None if symbol is None else _market(symbol)
        return [self._order(o) for o in self.client.orders("open", market).items]

    def fetch_my_trades(self, symbol: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        market = None if symbol is None else _market(symbol)
        return [
            {
                "id": str(f.seq), "order": f.order_id, "symbol": _symbol(f.market),
                "timestamp": f.time, "side": f.side, "takerOrMaker": f.liquidity,
                "price": float(f.price), "amount": float(f.quantity), "cost": float(f.funds),
                "fee": {"cost": float(f.fee), "currency": f.fee_asset},
            }
            for f in reversed(self.client.fills(market, limit).items)
        ]  # fmt: skip

    @staticmethod
    def _order(o: OrderView) -> dict[str, Any]:
        return {
            "id": o.order_id, "clientOrderId": o.client_order_id, "symbol": _symbol(o.market),
            "timestamp": o.created_at, "lastUpdateTimestamp": o.updated_at, "type": o.type,
            "side": o.side, "price": _num(o.price), "amount": _num(o.quantity),
            "filled": float(o.filled_quantity), "average": _num(o.average_price),
            "cost": float(o.filled_funds), "status": _STATUS[o.status],
            "timeInForce": o.time_in_force, "postOnly": o.post_only,
            "fee": {"cost": float(o.fee)}, "info": {"reason": o.reason,
                                                    "reason_code": o.reason_code},
        }  # fmt: skip
