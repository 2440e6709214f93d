"""Where each message goes: its topic and its key.

The key decides the partition, and so which keyed state machine sees the
message and in which order: the wallet inbox is keyed by user, the book inbox
by market, each state topic by the identity its records update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crypton import topics
from crypton.domain.messages import (
    BalanceState,
    BookCancel,
    BookOrder,
    CancelAll,
    CancelOrder,
    Credit,
    DeadLetter,
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
)

__all__ = ["route"]


def _user(m: Any) -> str:
    return m.user_id  # type: ignore[no-any-return]


def _market(m: Any) -> str:
    return m.market  # type: ignore[no-any-return]


def _dead_letter_key(m: DeadLetter) -> str:
    return m.key.decode("utf-8", "replace") if m.key else m.topic


_ROUTES: dict[type[Any], tuple[str, Callable[[Any], str]]] = {
    PlaceOrder: (topics.WALLET_INBOX, _user),
    CancelOrder: (topics.WALLET_INBOX, _user),
    CancelAll: (topics.WALLET_INBOX, _user),
    Credit: (topics.WALLET_INBOX, _user),
    Debit: (topics.WALLET_INBOX, _user),
    Settle: (topics.WALLET_INBOX, _user),
    Release: (topics.WALLET_INBOX, _user),
    BookOrder: (topics.BOOK_INBOX, _market),
    BookCancel: (topics.BOOK_INBOX, _market),
    OrderState: (topics.ORDERS, lambda m: m.order_id),
    BalanceState: (topics.BALANCES, _user),
    Trade: (topics.TRADES, _market),
    DepthState: (topics.DEPTH, _market),
    TransferState: (topics.TRANSFERS, lambda m: f"{m.user_id}/{m.transfer_id}"),
    Rejection: (topics.REJECTIONS, _user),
    DeadLetter: (topics.DEAD_LETTERS, _dead_letter_key),
}


def route(message: Message) -> tuple[str, str]:
    """The logical topic and the key of ``message``.

    >>> from crypton.domain.messages import Credit
    >>> route(Credit(user_id="alice", asset="BTC", amount=1, transfer_id="t", ts=0))
    ('wallet.inbox', 'alice')
    """
    topic, key = _ROUTES[type(message)]
    return topic, key(message)
