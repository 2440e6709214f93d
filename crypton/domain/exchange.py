"""The whole exchange core in one process, for tests, the benchmark, the demo and the audit.

Wallets and books are connected by one in-memory queue, first in first out:
one valid delivery order of the many the Kafka topics allow. Each machine is
deterministic in its own input order, which is what the dataflow guarantees
per key, so anything true here of every command sequence is true there.

``submit_batch`` runs a batch the way the dataflow does: every command, then
everything they cause, and one state record per changed entity at the end.
``submit`` is a batch of one.

>>> from crypton.config import load_markets
>>> from crypton.domain.messages import Credit
>>> ex = Exchange(load_markets())
>>> [m.status for m in ex.submit(Credit(user_id="a", asset="BTC", amount=1, transfer_id="t",
...                                      ts=0)) if hasattr(m, "status")]
['ACCEPTED']
"""

from __future__ import annotations

from collections.abc import Iterable

from crypton.domain.delivery import run_batch
from crypton.domain.markets import Markets
from crypton.domain.matching import BookMachine
from crypton.domain.messages import DepthState, Message, WalletInbox
from crypton.domain.wallet import WalletMachine

__all__ = ["Exchange"]


class Exchange:
    """Every wallet and every book, driven by ``submit`` or ``submit_batch``."""

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
        return self.submit_batch((command,))

    def submit_batch(self, commands: Iterable[WalletInbox]) -> list[Message]:
        """Run ``commands`` and all they cause to quiescence; return the events as they
        happened, then the latest state of each balance and order the batch changed."""
        return run_batch(commands, self.books, self.wallets, self.wallet)

    def depth(self, market: str, levels: int = 20, ts: int = 0) -> DepthState:
        return self.books[market].depth(levels, ts)
