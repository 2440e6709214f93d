"""The in-memory delivery loop between wallets and books, apart from ``Exchange`` so
that ``make mypyc`` can compile it while ``Exchange`` stays a class tests subclass.

>>> from crypton.config import load_markets
>>> from crypton.domain.messages import Credit
>>> from crypton.domain.wallet import WalletMachine
>>> markets, wallets = load_markets(), {}
>>> def wallet(user_id: str) -> WalletMachine:
...     return wallets.setdefault(user_id, WalletMachine(user_id, markets))
>>> out = run_batch([Credit(user_id="a", asset="BTC", amount=1, transfer_id="t", ts=0)],
...                 {}, wallets, wallet)
>>> [type(m).__name__ for m in out]
['TransferState', 'BalanceState']
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from crypton.domain.matching import BookMachine
from crypton.domain.messages import BookCancel, BookOrder, Message, WalletInbox
from crypton.domain.wallet import WALLET_HANDLERS, WalletMachine

__all__ = ["run_batch"]

# Message types keyed by market; everything else a machine sends is keyed by user.
# ``Final`` aliases: C statics when compiled, compared by identity (a set's lookup of a
# type cost the loop 1.6% of the core's instructions).
_BookOrder: Final = BookOrder
_BookCancel: Final = BookCancel


def run_batch(
    commands: Iterable[WalletInbox],
    books: dict[str, BookMachine],
    wallets: dict[str, WalletMachine],
    new_wallet: Callable[[str], WalletMachine],
) -> list[Message]:
    """Run ``commands`` and all they cause to quiescence, first in first out; return
    the events as they happened, then the latest state of each balance and order the
    batch changed. ``new_wallet`` makes (and registers) the wallet of an unseen user."""
    queue: deque[Any] = deque(commands)
    emitted: list[Message] = []
    touched: list[WalletMachine | BookMachine] = []  # each once: ``pending``
    send, emit, pop = queue.append, emitted.append, queue.popleft
    wallet_handlers = WALLET_HANDLERS
    while queue:
        msg = pop()
        kind = type(msg)
        if kind is _BookOrder or kind is _BookCancel:
            book = books[msg.market]
            if not book.pending:
                book.pending = True
                touched.append(book)
            book.apply(msg, send, emit)
        else:
            # A wallet's ``apply`` is only its dispatch: done here, one call less.
            wallet = wallets.get(msg.user_id) or new_wallet(msg.user_id)
            if not wallet.pending:
                wallet.pending = True
                touched.append(wallet)
            wallet_handlers[kind](wallet, msg, send, emit)
    for machine in touched:
        machine.flush(emit)  # and leaves the batch: ``pending`` False
    return emitted
