"""Every message on the log, declared once and shared by dataflow, API, audit and tests.

Each message is a ``msgspec.Struct`` encoded as JSON with a type tag (``msg``)
and a schema version (``v``). Amounts are integers of the smallest unit;
prices are quote units per whole base unit (see ``crypton.domain.markets``).
Times are milliseconds since the epoch, stamped by the API on the command:
the dataflow never reads a clock, so a replay produces the same bytes.

Inbox messages passed between the two keyed state machines carry their
origin (``src``), the sender's own output counter (``seq``, one per sender)
and the ``seq`` of the sender's previous message to the same destination
(``prev``, 0 when it starts a new chain); the receiver drops anything at or
below what it has applied and parks a message until its ``prev`` is applied,
which makes the dataflow's at-least-once delivery effectively-once in bounded
memory (``crypton.domain.sequencing``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, TypeAlias

import msgspec

__all__ = [
    "CANCELED",
    "EXPIRED",
    "FILLED",
    "NEW",
    "OPEN",
    "PARTIALLY_FILLED",
    "REJECTED",
    "TERMINAL",
    "Balance",
    "BalanceState",
    "BookCancel",
    "BookInbox",
    "BookOrder",
    "CancelAll",
    "CancelOrder",
    "Credit",
    "DeadLetter",
    "Debit",
    "DepthState",
    "Emit",
    "Message",
    "OrderState",
    "PlaceOrder",
    "Rejection",
    "Settlement",
    "Stamp",
    "Trade",
    "TransferState",
    "WalletInbox",
]

SCHEMA_VERSION: Final = 1

Side = Literal["buy", "sell"]
OrderType = Literal["limit", "market"]
TimeInForce = Literal["GTC", "IOC", "FOK"]
SelfTradePrevention = Literal["expire_taker", "expire_maker", "expire_both"]
OrderStatus = Literal[
    "NEW", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELED", "REJECTED", "EXPIRED"
]

NEW: Final = "NEW"
OPEN: Final = "OPEN"
PARTIALLY_FILLED: Final = "PARTIALLY_FILLED"
FILLED: Final = "FILLED"
CANCELED: Final = "CANCELED"
REJECTED: Final = "REJECTED"
EXPIRED: Final = "EXPIRED"
TERMINAL: Final = frozenset({FILLED, CANCELED, REJECTED, EXPIRED})

FEE_ACCOUNT: Final = "_fees"
"""The wallet that collects trading fees. User ids starting with ``_`` are reserved."""


class Message(msgspec.Struct, tag_field="msg", kw_only=True, gc=False):
    """Base of every message: the tag names the type, ``v`` the schema version."""

    v: int = SCHEMA_VERSION


Emit = Callable[[Message], None]
"""Where a state machine puts a message it causes: a list's or a queue's ``append``."""

Stamp: TypeAlias = Any
"""A message's ``ts`` that a machine passes on unchanged into the records it makes (an
order's ``created_at`` and ``updated_at``, a trade's and a settlement's ``ts``): kept as
the int object it came in. Compiled (``make mypyc``), an ``int`` is a machine integer,
boxed into a new object at each use as a record's field."""


# --- Commands, written by the API to the wallet inbox (key: user_id) -----------------


class PlaceOrder(Message, tag="place_order", kw_only=True, omit_defaults=True):
    """Place an order. ``order_id`` is derived from (user, client_order_id) by the API,
    so a retried request names the same order and can never create a second one.

    Written without the fields at their defaults (``omit_defaults``; the decoder fills
    them in): the flow decodes a command twice, from the wallet inbox and inside the
    book's ``BookOrder``, and the wallet encodes it once more, so the fields a usual
    order leaves alone (``v``, ``funds``, ``post_only``, ``stp``, often ``time_in_force``)
    cost the flow 3.4% of its instructions an order (``loadtest.flow_instructions``).
    A command without ``v`` is of schema version 1 (``SCHEMA_VERSION`` until it changes:
    ``tests/test_schema.py`` holds the line).
    """

    user_id: str
    order_id: str
    client_order_id: str
    market: str
    side: Side
    type: OrderType
    price: int | None = None
    quantity: int | None = None
    funds: int | None = None
    """Market buys: the most quote to spend, fees included."""
    time_in_force: TimeInForce = "GTC"
    post_only: bool = False
    stp: SelfTradePrevention = "expire_taker"
    ts: int


PLACE_ORDER_FIELDS: Final = (
    "v", "user_id", "order_id", "client_order_id", "market", "side", "type", "price",
    "quantity", "funds", "time_in_force", "post_only", "stp", "ts",
)  # fmt: skip
"""``PlaceOrder``'s fields in order: the wallet and the book unpack a command's
``msgspec.structs.astuple`` in this order (one call, not a lookup by name per field)."""
assert PlaceOrder.__struct_fields__ == PLACE_ORDER_FIELDS


class CancelOrder(Message, tag="cancel_order", kw_only=True):
    user_id: str
    order_id: str
    ts: int


class CancelAll(Message, tag="cancel_all", kw_only=True):
    """Cancel every open order of the user, in one market or (``market=None``) all."""

    user_id: str
    market: str | None = None
    ts: int


class Credit(Message, tag="credit", kw_only=True):
    """Add to ``available``. A repeated ``transfer_id`` has no further effect."""

    user_id: str
    asset: str
    amount: int
    transfer_id: str
    ts: int


class Debit(Message, tag="debit", kw_only=True):
    """Take from ``available``; rejected if that is more than available."""

    user_id: str
    asset: str
    amount: int
    transfer_id: str
    ts: int


# --- The book's reports to the wallets (key: user_id) ---------------------------------


class Trade(Message, tag="trade"):
    """One execution, at the maker's price. Emitted once by the book, for every reader;
    the wallets settle from the ``Settlement`` the book computes from it in the same step."""

    market: str
    seq: int
    """Per-market trade sequence: 1, 2, 3, ... with no gap."""
    price: int
    quantity: int
    notional: int
    taker_side: Side
    maker_order_id: str
    taker_order_id: str
    maker_user_id: str
    taker_user_id: str
    maker_fee: int
    taker_fee: int
    buyer_release: int
    """Quote the buyer held but does not need: price improvement of a limit buy."""
    time: int


class Settlement(Message, tag="settlement", array_like=True):
    """What one book message did to one order of a wallet: its fills, net, and whether
    the book closed it. One per (book inbox message, order), so that its number is a
    function of the book's input, never of how the log was batched.

    The wallet takes ``take`` out of the order's hold (in the asset it holds), hands
    ``refund`` of it back to available (a limit buy's price improvement), adds
    ``receive`` of the market's other asset to available (fees already deducted),
    and, if ``closed``, releases whatever the order still holds. With no order
    (``order_id == ""``) it is the fee account's collection: ``receive`` quote.

    Encoded as an array (``array_like``): the book writes one for nearly every fill.
    """

    user_id: str
    src: str
    """The market whose book sent it."""
    seq: int
    """The book's output counter (see ``crypton.domain.sequencing``)."""
    prev: int
    """The book's previous ``seq`` to this wallet; 0 if none it remembers."""
    order_id: str
    take: int
    refund: int
    receive: int
    closed: bool
    ts: int


assert Settlement.__struct_fields__ == (
    "user_id",
    "src",
    "seq",
    "prev",
    "order_id",
    "take",
    "refund",
    "receive",
    "closed",
    "ts",
    "v",
), "the wallet unpacks a Settlement's ``msgspec.structs.astuple`` in this order"

WalletInbox = PlaceOrder | CancelOrder | CancelAll | Credit | Debit | Settlement


# --- The wallet's requests to the books (key: market) ---------------------------------


class BookOrder(Message, tag="book_order", array_like=True):
    """An order whose funds are held, for the book to match or rest. Like every message
    between the machines, encoded as an array: only the machines read these."""

    market: str
    src: str
    seq: int
    """The wallet's output counter (see ``crypton.domain.sequencing``)."""
    order: PlaceOrder
    hold: int
    prev: int = 0
    """The wallet's previous ``seq`` to this book; 0 for its first."""


class BookCancel(Message, tag="book_cancel", array_like=True):
    market: str
    src: str
    seq: int
    order_id: str
    ts: int
    prev: int = 0


BookInbox = BookOrder | BookCancel

assert (
    BookOrder.__struct_fields__[:3] == BookCancel.__struct_fields__[:3] == ("market", "src", "seq")
    and BookOrder.__struct_fields__[5] == BookCancel.__struct_fields__[5] == "prev"
), "the book unpacks both kinds' ``msgspec.structs.astuple`` alike"


# --- State topics: upserts by key with a version --------------------------------------


class OrderState(Message, tag="order"):
    """The latest state of an order (key: order_id). Readers keep the highest version.

    Fields with defaults come last so the dataflow can build it positionally:
    by keyword, msgspec matches each of the twenty names in turn, which made
    this record the costliest object of the hot path.
    """

    order_id: str
    user_id: str
    client_order_id: str
    market: str
    side: Side
    type: OrderType
    price: int | None
    quantity: int | None
    funds: int | None
    time_in_force: TimeInForce
    post_only: bool
    stp: SelfTradePrevention
    status: OrderStatus
    created_at: int
    updated_at: int
    version: int
    reason: str | None = None
    filled_quantity: int = 0
    filled_funds: int = 0
    """Quote notional of the fills, fees excluded."""
    fee: int = 0
    reason_code: str | None = None
    """A ``crypton.domain.orders.ReasonCode`` beside ``reason``; absent in older records."""


class Balance(msgspec.Struct, array_like=True, gc=False):
    available: int = 0
    held: int = 0


class BalanceState(Message, tag="balances"):
    """All balances of a user (key: user_id), versioned by the wallet's change counter."""

    user_id: str
    version: int
    balances: dict[str, Balance]
    ts: int


class TransferState(Message, tag="transfer", kw_only=True):
    """The outcome of a credit or debit (key: user_id/transfer_id)."""

    user_id: str
    transfer_id: str
    direction: Literal["credit", "debit"]
    asset: str
    amount: int
    status: Literal["ACCEPTED", "REJECTED"]
    reason: str | None = None
    reason_code: str | None = None
    """A ``crypton.domain.orders.ReasonCode`` when REJECTED; absent in older records."""
    ts: int


class DepthState(Message, tag="depth", kw_only=True):
    """Aggregated book levels (key: market) as of book sequence ``seq``.

    ``bids`` best (highest) first, ``asks`` best (lowest) first: [price, quantity].
    """

    market: str
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]
    ts: int


class Rejection(Message, tag="rejection", kw_only=True):
    """A command refused with no state record of its own, e.g. cancel of an unknown order."""

    user_id: str
    command: str
    ref: str
    reason: str
    ts: int
    reason_code: str | None = None
    """A ``crypton.domain.orders.ReasonCode``; absent in older records."""


class DeadLetter(Message, tag="dead_letter", kw_only=True):
    """Input that could not be decoded or processed, kept with the reason."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
