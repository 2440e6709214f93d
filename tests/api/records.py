"""Builders of state records (as the dataflow writes them) for API tests."""

from __future__ import annotations

from typing import Any

from crypton.domain.messages import OrderState, PlaceOrder, Trade


def order_state(
    oid: str = "o1",
    version: int = 1,
    status: str = "OPEN",
    user: str = "alice",
    created: int = 10,
    **overrides: Any,
) -> OrderState:
    fields: dict[str, Any] = {
        "order_id": oid, "user_id": user, "client_order_id": f"c-{oid}", "market": "BTC-USDT",
        "side": "buy", "type": "limit", "price": 100, "quantity": 1, "funds": None,
        "time_in_force": "GTC", "post_only": False, "stp": "expire_taker", "status": status,
        "created_at": created, "updated_at": created + version, "version": version,
    }  # fmt: skip
    fields.update(overrides)
    return OrderState(**fields)


def state_of(
    command: PlaceOrder, version: int = 1, status: str = "OPEN", **overrides: Any
) -> OrderState:
    """The state the wallet would write for a placed order."""
    fields: dict[str, Any] = {
        "order_id": command.order_id, "user_id": command.user_id,
        "client_order_id": command.client_order_id, "market": command.market,
        "side": command.side, "type": command.type, "price": command.price,
        "quantity": command.quantity, "funds": command.funds,
        "time_in_force": command.time_in_force, "post_only": command.post_only,
        "stp": command.stp, "status": status, "created_at": command.ts,
        "updated_at": command.ts, "version": version,
    }  # fmt: skip
    fields.update(overrides)
    return OrderState(**fields)


def trade(
    seq: int,
    price: int = 100,
    quantity: int = 1,
    time: int = 0,
    market: str = "BTC-USDT",
    **overrides: Any,
) -> Trade:
    fields: dict[str, Any] = {
        "market": market, "seq": seq, "price": price, "quantity": quantity,
        "notional": price * quantity // 10**8 if market == "BTC-USDT" else price * quantity,
        "taker_side": "buy", "maker_order_id": "m", "taker_order_id": "t",
        "maker_user_id": "alice", "taker_user_id": "bob", "maker_fee": 1, "taker_fee": 2,
        "buyer_release": 0, "time": time,
    }  # fmt: skip
    fields.update(overrides)
    return Trade(**fields)
