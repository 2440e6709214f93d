"""Idempotency keys (client_order_id, transfer_id) that this replica has written and not
yet seen decided, with the terms they were written with.

The read model knows a key only once the wallet has decided it. Until then, a
second request reusing the key with other terms would be written too and then
silently ignored by the wallet (the first one in the log wins), while its caller
was told its own terms were pending. A claim closes that window on this
replica; across replicas the handlers compare the decided outcome with the
request after ``?wait=true`` and answer 409 when they differ.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Final

from crypton.domain.messages import Credit, Debit, OrderState, PlaceOrder, TransferState

Key = tuple[str, str, str]
"""(kind, user id, idempotency key)."""

OrderTerms = tuple[object, ...]


def order_terms(o: PlaceOrder | OrderState) -> OrderTerms:
    """What a client asked for: two requests with one client_order_id must agree on it."""
    return (
        o.market, o.side, o.type, o.price, o.quantity, o.funds, o.time_in_force, o.post_only,
        o.stp,
    )  # fmt: skip


def transfer_terms(t: Credit | Debit | TransferState) -> tuple[str, str, int]:
    if isinstance(t, TransferState):
        return (t.direction, t.asset, t.amount)
    return ("credit" if isinstance(t, Credit) else "debit", t.asset, t.amount)


class Claims:
    """Bounded: the oldest claims go first, by then long decided (the read model answers)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._terms: OrderedDict[Key, Hashable] = OrderedDict()
        self._capacity: Final = capacity

    def claim(self, key: Key, terms: Hashable) -> bool:
        """Claim ``key`` for ``terms``; ``False`` if it is claimed for other terms.
        Call it with no ``await`` since the read model was checked."""
        held = self._terms.get(key)
        if held is not None:
            return held == terms
        self._terms[key] = terms
        while len(self._terms) > self._capacity:
            self._terms.popitem(last=False)
        return True

    def release(self, key: Key, terms: Hashable) -> None:
        """The command did not reach the log: the key is free again."""
        if self._terms.get(key) == terms:
            del self._terms[key]
