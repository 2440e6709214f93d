"""Builders and an audited exchange shared by the domain tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from crypton.config import load_markets
from crypton.domain.exchange import Exchange
from crypton.domain.invariants import (
    TradeSequenceAudit,
    TransitionAudit,
    exchange_problems,
    net_transfers,
    trade_problems,
)
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    BookCancel,
    BookOrder,
    CancelAll,
    CancelOrder,
    Credit,
    Debit,
    Message,
    OrderState,
    PlaceOrder,
    Trade,
    WalletInbox,
)
from crypton.domain.money import to_units

MARKETS = load_markets()
BTC_USDT = MARKETS.market("BTC-USDT")
T = TypeVar("T", bound=Message)


def usdt(text: str) -> int:
    return to_units(text, 6, allow_zero=True)


def btc(text: str) -> int:
    return to_units(text, 8, allow_zero=True)


def oid(user: str, cid: str) -> str:
    """Order ids as the API derives them: one per (user, client order id)."""
    return f"{user}/{cid}"


def credit(user: str, asset: str, amount: int, tid: str | None = None, ts: int = 0) -> Credit:
    return Credit(
        user_id=user, asset=asset, amount=amount, transfer_id=tid or f"c-{asset}-{amount}", ts=ts
    )


def debit(user: str, asset: str, amount: int, tid: str | None = None, ts: int = 0) -> Debit:
    return Debit(
        user_id=user, asset=asset, amount=amount, transfer_id=tid or f"d-{asset}-{amount}", ts=ts
    )


def limit(
    user: str,
    cid: str,
    side: Any,
    price: int,
    quantity: int,
    *,
    market: str = "BTC-USDT",
    ts: int = 0,
    **extra: Any,
) -> PlaceOrder:
    return PlaceOrder(
        user_id=user, order_id=oid(user, cid), client_order_id=cid, market=market, side=side,
        type="limit", price=price, quantity=quantity, ts=ts, **extra,
    )  # fmt: skip


def market_buy(
    user: str, cid: str, funds: int, market: str = "BTC-USDT", **extra: Any
) -> PlaceOrder:
    return PlaceOrder(
        user_id=user, order_id=oid(user, cid), client_order_id=cid, market=market, side="buy",
        type="market", funds=funds, ts=0, **{"time_in_force": "IOC", **extra},
    )  # fmt: skip


def market_sell(
    user: str, cid: str, quantity: int, market: str = "BTC-USDT", **extra: Any
) -> PlaceOrder:
    return PlaceOrder(
        user_id=user, order_id=oid(user, cid), client_order_id=cid, market=market, side="sell",
        type="market", quantity=quantity, ts=0, **{"time_in_force": "IOC", **extra},
    )  # fmt: skip


def cancel(user: str, cid: str, ts: int = 0) -> CancelOrder:
    return CancelOrder(user_id=user, order_id=oid(user, cid), ts=ts)


def cancel_all(user: str, market: str | None = None) -> CancelAll:
    return CancelAll(user_id=user, market=market, ts=0)


def only(messages: Iterable[Message], kind: type[T]) -> list[T]:
    return [m for m in messages if isinstance(m, kind)]


def last_state(messages: Iterable[Message], order_id: str) -> OrderState:
    states = [m for m in only(messages, OrderState) if m.order_id == order_id]
    assert states, f"no state for {order_id}"
    return states[-1]


class AuditedExchange(Exchange):
    """An ``Exchange`` that checks every invariant after every command."""

    def __init__(self) -> None:
        super().__init__(MARKETS)
        self.transfers: dict[str, int] = {}
        self.transitions = TransitionAudit()
        self.sequences = TradeSequenceAudit()
        self.history: list[Message] = []

    def submit(self, command: WalletInbox) -> list[Message]:
        out = super().submit(command)
        self.history += out
        problems: list[str] = []
        for asset, amount in net_transfers(out).items():
            self.transfers[asset] = self.transfers.get(asset, 0) + amount
        for message in out:
            if isinstance(message, OrderState):
                problems += self.transitions.feed(message)
            elif isinstance(message, Trade):
                problems += self.sequences.feed(message)
                problems += trade_problems(message, self.markets.market(message.market))
        problems += exchange_problems(self, self.transfers)
        assert not problems, problems
        return out


class Feeder:
    """Drive one ``BookMachine`` directly, numbering each user's messages."""

    def __init__(self, machine: BookMachine) -> None:
        self.machine = machine
        self.seq: dict[str, int] = {}

    def _next(self, user: str) -> int:
        self.seq[user] = self.seq.get(user, 0) + 1
        return self.seq[user]

    def order(self, cmd: PlaceOrder, hold: int) -> list[Message]:
        msg = BookOrder(market=cmd.market, src=cmd.user_id, seq=self._next(cmd.user_id),
                        order=cmd, hold=hold)  # fmt: skip
        return self.machine.handle(msg)

    def cancel(self, user: str, order_id: str) -> list[Message]:
        msg = BookCancel(market="BTC-USDT", src=user, seq=self._next(user), order_id=order_id,
                         ts=0)  # fmt: skip
        return self.machine.handle(msg)


def contents(machine: BookMachine) -> tuple[Any, ...]:
    """Everything a book holds, in priority order: what a snapshot must restore."""
    resting = [
        (o.cmd, o.hold, o.remaining, o.spent, o.filled_quantity, o.filled_funds, o.fee,
         o.fee_num, o.version, o.status, o.side, o.price)
        for o in machine.book.resting()
    ]  # fmt: skip
    return (machine.seq, machine.trade_seq, machine.clock, resting, machine.snapshot()[4:6])
