"""Views: folds of the state topics, the same for the API, the audit and the tests.

State topics are upserts by key carrying a version; the dataflow writes at
least once, so a record may arrive again after a restart. A view keeps the
highest version per key and ignores the rest, which makes the fold of the log
the same however often a record was written.
"""

from __future__ import annotations

from collections.abc import Iterable

from crypton.domain.messages import (
    BalanceState,
    DepthState,
    Message,
    OrderState,
    Rejection,
    Trade,
    TransferState,
)

__all__ = ["View"]


class View:
    """The latest state of everything the state topics describe.

    >>> view = View()
    >>> t = Trade(market="M", seq=1, price=1, quantity=1, notional=1, taker_side="buy",
    ...           maker_order_id="m", taker_order_id="t", maker_user_id="a",
    ...           taker_user_id="b", maker_fee=0, taker_fee=0, buyer_release=0, time=0)
    >>> view.apply(t), view.apply(t)  # the second is a replay
    (True, False)
    """

    def __init__(self) -> None:
        self.orders: dict[str, OrderState] = {}
        self.balances: dict[str, BalanceState] = {}
        self.trades: dict[tuple[str, int], Trade] = {}
        self.transfers: dict[tuple[str, str], TransferState] = {}
        self.depth: dict[str, DepthState] = {}
        self.rejections: list[Rejection] = []

    def apply(self, message: Message) -> bool:
        """Fold one record in; return whether it changed the view."""
        if isinstance(message, OrderState):
            current = self.orders.get(message.order_id)
            if current is not None and current.version >= message.version:
                return False
            self.orders[message.order_id] = message
        elif isinstance(message, BalanceState):
            known = self.balances.get(message.user_id)
            if known is not None and known.version >= message.version:
                return False
            self.balances[message.user_id] = message
        elif isinstance(message, Trade):
            key = (message.market, message.seq)
            if key in self.trades:
                return False
            self.trades[key] = message
        elif isinstance(message, TransferState):
            tkey = (message.user_id, message.transfer_id)
            if tkey in self.transfers:
                return False
            self.transfers[tkey] = message
        elif isinstance(message, DepthState):
            depth = self.depth.get(message.market)
            if depth is not None and depth.seq >= message.seq:
                return False
            self.depth[message.market] = message
        elif isinstance(message, Rejection):
            self.rejections.append(message)
        else:
            return False
        return True

    def apply_all(self, messages: Iterable[Message]) -> View:
        for message in messages:
            self.apply(message)
        return self

    def balance_table(self) -> dict[str, dict[str, tuple[int, int]]]:
        """{user: {asset: (available, held)}} of the latest balances."""
        return {
            user: {asset: (b.available, b.held) for asset, b in state.balances.items()}
            for user, state in sorted(self.balances.items())
        }
