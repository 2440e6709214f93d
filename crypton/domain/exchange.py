"""The whole exchange core in one process, for tests, the benchmark, the demo and the audit.

Wallets and books are connected by in-memory inboxes, first in first out:
one valid delivery order of the many the Kafka topics allow. Each machine is
deterministic in its own input order, which is what the dataflow guarantees
per key, so anything true here of every command sequence is true there.

>>> from crypton.config import load_markets
>>> from crypton.domain.messages import Credit
>>> ex = Exchange(load_markets())
>>> [m.status for m in ex.submit(Credit(user_id="a", asset="BTC", amount=1, transfer_id="t",
...                                      ts=0)) if hasattr(m, "status")]
['ACCEPTED']
"""

from __future__ import annotations

from collections import deque

from crypton.domain.markets import Markets
from crypton.domain.matching import BookMachine
from crypton.domain.messages import (
    BalanceState,
    BookCancel,
    BookOrder,
    CancelAll,
    CancelOrder,
    Credit,
    Debit,
    DepthState,
    Message,
    OrderState,
    PlaceOrder,
    Rejection,
    Release,
    Settle,
    Trade,
    TransferState,
    WalletInbox,
)
from crypton.domain.wallet import WalletMachine

__all__ = ["Exchange"]

_INTERNAL = (Settle, Release, BookOrder, BookCancel)
_TO_BOOK = (BookOrder, BookCancel)
# isinstance() against a msgspec Struct class goes through the metaclass's
# __instancecheck__ and costs ~0.1 us per miss, several times per message; an
# exact type lookup decides every message of the schema, and isinstance()
# stays as the fallback for anything else (subclasses).
_INTERNAL_TYPES = frozenset(_INTERNAL)
_EXTERNAL_TYPES = frozenset((OrderState, BalanceState, Trade, TransferState, Rejection, DepthState))
_WALLET_TYPES = frozenset((PlaceOrder, CancelOrder, CancelAll, Credit, Debit, Settle, Release))


class Exchange:
    """Every wallet and every book, driven by ``submit``."""

    def __init__(self, markets: Markets) -> None:
        self.markets = markets
        self.wallets: dict[str, WalletMachine] = {}
        self.books: dict[str, BookMachine] = {m.symbol: BookMachine(m) for m in markets}

    def wallet(self, user_id: str) -> WalletMachine:
        wallet = self.wallets.get(user_id)
        if wallet is None:
            wallet = self.wallets[user_id] = WalletMachine(user_id, self.markets)
        return wallet

    def submit(self, command: WalletInbox) -> list[Message]:
        """Run one command to quiescence; return the state records and events it caused
        (order states, balances, trades, transfers, rejections), in emission order."""
        queue: deque[Message] = deque((command,))
        emitted: list[Message] = []
        books, wallets = self.books, self.wallets
        internal, external = _INTERNAL_TYPES, _EXTERNAL_TYPES
        while queue:
            msg = queue.popleft()
            kind = type(msg)
            if (
                kind is BookOrder
                or kind is BookCancel
                or (kind not in _WALLET_TYPES and isinstance(msg, _TO_BOOK))
            ):
                out = books[msg.market].handle(msg)  # type: ignore[attr-defined,arg-type]
            else:
                wallet = wallets.get(msg.user_id)  # type: ignore[attr-defined]
                if wallet is None:
                    wallet = self.wallet(msg.user_id)  # type: ignore[attr-defined]
                out = wallet.handle(msg)  # type: ignore[arg-type]
            for item in out:
                kind = type(item)
                if kind in internal or (kind not in external and isinstance(item, _INTERNAL)):
                    queue.append(item)
                else:
                    emitted.append(item)
        return emitted

    def depth(self, market: str, levels: int = 20, ts: int = 0) -> DepthState:
        return self.books[market].depth(levels, ts)
