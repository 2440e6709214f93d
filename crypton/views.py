"""Views: folds of the state topics by their specs' rules, for the audit and the tests.

State topics are upserts by key carrying a version; the dataflow writes at
least once, so a record may arrive again after a restart. A view folds each
record by its topic's rule (``crypton.schema``: upsert by version, first
wins, append), which makes the fold of the log the same however often a
record was written. The API's read model (``crypton.readmodel``) folds by
the same rules and adds its indexes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from crypton import schema
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
        # One table per folded topic: identity -> record, or the records in order.
        self.tables: dict[str, dict[Any, Any]] = {}
        self.histories: dict[str, list[Any]] = {}
        for spec in schema.SPECS:
            if isinstance(spec.fold, schema.Append):
                self.histories[spec.logical] = []
            elif spec.fold is not None:
                self.tables[spec.logical] = {}

    @property
    def orders(self) -> dict[str, OrderState]:
        return self.tables[schema.ORDERS.logical]

    @property
    def balances(self) -> dict[str, BalanceState]:
        return self.tables[schema.BALANCES.logical]

    @property
    def trades(self) -> dict[tuple[str, int], Trade]:
        return self.tables[schema.TRADES.logical]

    @property
    def transfers(self) -> dict[tuple[str, str], TransferState]:
        return self.tables[schema.TRANSFERS.logical]

    @property
    def depth(self) -> dict[str, DepthState]:
        return self.tables[schema.DEPTH.logical]

    @property
    def rejections(self) -> list[Rejection]:
        return self.histories[schema.REJECTIONS.logical]

    def apply(self, message: Message) -> bool:
        """Fold one record in by its topic's rule; return whether it changed the view."""
        spec = schema.BY_TYPE.get(type(message))
        fold = spec.fold if spec is not None else None
        if spec is None or fold is None:
            return False  # inbox messages are not state
        if isinstance(fold, schema.Append):
            self.histories[spec.logical].append(message)
            return True
        table = self.tables[spec.logical]
        identity = fold.identity(message)
        if not fold.accepts(table.get(identity), message):
            return False
        table[identity] = message
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
