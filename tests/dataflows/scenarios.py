"""Seeded command mixes shared by the dataflow tests and the crash tests."""

from __future__ import annotations

import random

from crypton.domain.markets import Markets
from crypton.domain.messages import (
    CancelAll,
    CancelOrder,
    Credit,
    Debit,
    Message,
    PlaceOrder,
)

USERS = ("alice", "bob", "carol", "dave")


def funding(markets: Markets, users: tuple[str, ...] = USERS, ts: int = 1) -> list[Message]:
    """Generous credits of every asset for every user."""
    return [
        Credit(
            user_id=user,
            asset=asset.code,
            amount=10_000 * asset.scale,
            transfer_id=f"fund-{asset.code}",
            ts=ts,
        )
        for user in users
        for asset in markets.assets.values()
    ]


def trading(
    markets: Markets,
    count: int,
    seed: int = 7,
    users: tuple[str, ...] = USERS,
    symbols: tuple[str, ...] = ("BTC-USDT", "ETH-BTC"),
    start_ts: int = 1_000,
) -> list[Message]:
    """A mix that rests, crosses, cancels and is sometimes invalid, around a mid price."""
    rng = random.Random(seed)
    mids = {"BTC-USDT": 50_000, "ETH-USDT": 3_000, "ETH-BTC": 0.06}
    placed: list[tuple[str, str]] = []
    commands: list[Message] = []
    for i in range(count):
        ts = start_ts + i
        user = rng.choice(users)
        symbol = rng.choice(symbols)
        market = markets.market(symbol)
        roll = rng.random()
        if roll < 0.15 and placed:
            owner, order_id = rng.choice(placed)
            commands.append(CancelOrder(user_id=owner, order_id=order_id, ts=ts))
            continue
        if roll < 0.17:
            commands.append(CancelAll(user_id=user, market=symbol, ts=ts))
            continue
        if roll < 0.19:
            commands.append(
                Debit(
                    user_id=user,
                    asset=market.quote.code,
                    amount=rng.choice([1, 10**15]),
                    transfer_id=f"d{i}",
                    ts=ts,
                )
            )
            continue
        side = rng.choice(("buy", "sell"))
        mid_ticks = int(mids[symbol] * market.quote.scale) // market.tick
        price = (mid_ticks + rng.randint(-20, 20)) * market.tick
        quantity = rng.randint(1, 30) * market.min_quantity
        order_id = f"{user}-{i}"
        kind = rng.random()
        fields: dict[str, object] = {}
        if kind < 0.1:
            fields = {"type": "market", "time_in_force": "IOC"}
            if side == "buy":
                fields["funds"] = market.notional(price, quantity)
            else:
                fields["quantity"] = quantity
        else:
            tif = rng.choice(("GTC", "GTC", "GTC", "IOC", "FOK"))
            fields = {
                "type": "limit",
                "price": price,
                "quantity": quantity,
                "time_in_force": tif,
                "post_only": tif == "GTC" and rng.random() < 0.1,
            }
            if rng.random() < 0.03:
                fields["price"] = price + 1  # off the tick: rejected with a reason
        commands.append(
            PlaceOrder(
                user_id=user,
                order_id=order_id,
                client_order_id=f"c{i}",
                market=symbol,
                side=side,
                stp=rng.choice(("expire_taker", "expire_maker", "expire_both")),
                ts=ts,
                **fields,
            )  # type: ignore[arg-type]
        )
        placed.append((user, order_id))
    return commands
