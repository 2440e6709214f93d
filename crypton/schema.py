"""The log schema: one spec per topic, owning its messages, key, codec and fold rule.

Everything that writes or reads the log goes through these specs: the
dataflow's sink (``record_encoder``), the API's command writes
(``CommandLog.send``), the read model, ``crypton audit`` (``crypton.views``)
and the tests. Nobody else picks a topic, a key or a codec for a message.

A topic's fold rule says how a reader turns its records into state:

* ``Upsert``: the latest state per identity; a record replaces the one held
  only if its version is higher, so replays and stale copies change nothing;
* ``FirstWins``: a final outcome per identity (a trade, a transfer's
  result); a second record with the same identity is a replay;
* ``Append``: every record counts (rejections, dead letters).

>>> from crypton.domain.messages import Credit
>>> credit = Credit(user_id="alice", asset="BTC", amount=1, transfer_id="t", ts=0)
>>> spec = spec_of(credit)
>>> spec.logical, spec.key_of(credit)
('wallet.inbox', 'alice')
>>> spec.decode(spec.encode(credit)) == credit
True
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from types import GenericAlias
from typing import Any, Final

import msgspec

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
    Settlement,
    Trade,
    TransferState,
)
from crypton.users import UserState

__all__ = [
    "BALANCES",
    "BOOK_INBOX",
    "BY_LOGICAL",
    "BY_TYPE",
    "DEAD_LETTERS",
    "DEPTH",
    "ORDERS",
    "REJECTIONS",
    "SPECS",
    "TRADES",
    "TRANSFERS",
    "USERS",
    "WALLET_INBOX",
    "Append",
    "FirstWins",
    "Fold",
    "Record",
    "Routes",
    "TopicSpec",
    "Upsert",
    "batch_value",
    "encode_value",
    "record_encoder",
    "record_routes",
    "spec_of",
    "topic_name",
]

Record = tuple[str, bytes, bytes]
"""(topic, key, value): what a producer writes."""

_encode = msgspec.json.Encoder().encode


def topic_name(logical: str, prefix: str = "") -> str:
    """The Kafka topic of a logical name.

    >>> topic_name("orders", "dev.")
    'dev.crypton.orders'
    """
    return f"{prefix}crypton.{logical}"


# --- fold rules ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    """Latest state per identity: a higher version replaces, anything else is stale."""

    identity: Callable[[Any], Any]
    version: Callable[[Any], int]

    def accepts(self, old: Any | None, new: Any) -> bool:
        return old is None or self.version(new) > self.version(old)


@dataclass(frozen=True, slots=True)
class FirstWins:
    """A final outcome per identity: the first record stands, later ones are replays."""

    identity: Callable[[Any], Any]

    def accepts(self, old: Any | None, new: Any) -> bool:
        return old is None


@dataclass(frozen=True, slots=True)
class Append:
    """Every record counts: a history, not a state."""

    def accepts(self, old: Any | None, new: Any) -> bool:
        return True


Fold = Upsert | FirstWins | Append


# --- the specs ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TopicSpec:
    """One topic of the log: its name, what it carries, how it is keyed and folded."""

    logical: str
    key: str
    """The key, in words (the column name ksqlDB declares)."""
    key_of: Callable[[Any], str]
    """The key of a message: it decides the partition, so the order a reader sees."""
    types: tuple[type[msgspec.Struct], ...]
    fold: Fold | None
    """How readers fold the records; ``None`` for inboxes, which only steps read."""
    compacted: bool
    doc: str
    decoder: msgspec.json.Decoder[Any] = field(init=False, repr=False)
    """Decodes the types encoded as JSON objects (or all of them)."""
    array_decoder: msgspec.json.Decoder[Any] | None = field(init=False, repr=False)
    """Decodes the types encoded as JSON arrays (``array_like``), when there are both:
    a topic may carry commands as objects and the machines' messages as arrays."""
    batch_decoder: msgspec.json.Decoder[Any] | None = field(init=False, repr=False)
    """Decodes a batch of the ``array_like`` types (``batch_value``), if there are any."""

    def __post_init__(self) -> None:
        arrays = tuple(t for t in self.types if t.__struct_config__.array_like)
        objects = tuple(t for t in self.types if not t.__struct_config__.array_like)
        if arrays and objects:
            decoder, array_decoder = _union_decoder(objects), _union_decoder(arrays)
        else:
            decoder, array_decoder = _union_decoder(self.types), None
        batches = None
        if arrays:
            batches = msgspec.json.Decoder(
                GenericAlias(list, (functools.reduce(operator.or_, arrays),))
            )
        object.__setattr__(self, "decoder", decoder)
        object.__setattr__(self, "array_decoder", array_decoder)
        object.__setattr__(self, "batch_decoder", batches)

    def name(self, prefix: str = "") -> str:
        """The Kafka topic name under ``prefix``."""
        return topic_name(self.logical, prefix)

    def config(self, segment_ms: int = 600_000) -> dict[str, str]:
        """Topic-level configuration given at creation.

        >>> ORDERS.config(60_000)["segment.ms"]
        '60000'
        """
        if not self.compacted:
            # The history itself: never loses a record to compaction.
            return {"cleanup.policy": "delete", "retention.ms": "-1"}
        # An upsert log holding the latest state per key. Only closed segments are
        # compacted, so they roll every ``segment_ms``, and the cleaner starts once a
        # tenth of a log is superseded records.
        return {
            "cleanup.policy": "compact",
            "segment.ms": str(segment_ms),
            "min.cleanable.dirty.ratio": "0.1",
        }

    def encode(self, message: msgspec.Struct) -> bytes:
        """The record value: JSON with the type tag."""
        return _encode(message)

    def decode(self, data: bytes | str) -> Any:
        """One of ``types`` from a record value; ``msgspec.DecodeError`` if malformed."""
        arrays = self.array_decoder
        if arrays is not None:
            first = data[:1]
            if first.isspace():
                first = data.lstrip()[:1]
            if first in (b"[", "["):
                return arrays.decode(data)
        return self.decoder.decode(data)

    def decode_all(self, data: bytes) -> list[Any]:
        """The messages of one record: its message, or each message of a batch.

        The dataflow writes what one step sends the other as batches, one record per
        inbox partition and sink call (``batch_value``): a JSON array of the messages'
        own arrays, in order. Only ``array_like`` types travel in batches, so a command
        (an object) is never inside one; an empty batch holds no message.

        >>> from crypton.domain.messages import BookCancel
        >>> one = BookCancel(market="BTC-USDT", src="alice", seq=1, order_id="o1", ts=0)
        >>> two = BookCancel(market="BTC-USDT", src="bob", seq=1, order_id="o2", ts=0)
        >>> BOOK_INBOX.decode_all(BOOK_INBOX.encode(one)) == [one]
        True
        >>> batch = batch_value([BOOK_INBOX.encode(one), BOOK_INBOX.encode(two)])
        >>> BOOK_INBOX.decode_all(batch) == [one, two]
        True
        """
        first = data[:1]
        if first == b"{":  # one message as an object, as the API writes a command
            return [self.decoder.decode(data)]
        batches = self.batch_decoder
        if batches is not None and first == b"[":
            second = data[1:2]
            if second.isspace():
                second = data[1:].lstrip()[:1]
            if second in (b"[", b"]"):
                return batches.decode(data)  # type: ignore[no-any-return]
        return [self.decode(data)]


def batch_value(values: list[bytes]) -> bytes:
    """One record value holding the encoded ``array_like`` messages ``values``, in order
    (``TopicSpec.decode_all`` reads it back)."""
    return b"[" + b",".join(values) + b"]"


def _union_decoder(types: tuple[type[msgspec.Struct], ...]) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(functools.reduce(operator.or_, types))


def _user(m: Any) -> str:
    return m.user_id  # type: ignore[no-any-return]


def _market(m: Any) -> str:
    return m.market  # type: ignore[no-any-return]


def _order_id(m: Any) -> str:
    return m.order_id  # type: ignore[no-any-return]


def _transfer(m: Any) -> str:
    return f"{m.user_id}/{m.transfer_id}"


def _dead_letter_key(m: DeadLetter) -> str:
    return m.key.decode("utf-8", "replace") if m.key else m.topic


def _version(m: Any) -> int:
    return m.version  # type: ignore[no-any-return]


def _seq(m: Any) -> int:
    return m.seq  # type: ignore[no-any-return]


WALLET_INBOX: Final = TopicSpec(
    "wallet.inbox", "user_id", _user,
    (PlaceOrder, CancelOrder, CancelAll, Credit, Debit, Settlement),
    None, False, "commands and book reports for the wallet step",
)  # fmt: skip
BOOK_INBOX: Final = TopicSpec(
    "book.inbox", "market", _market, (BookOrder, BookCancel),
    None, False, "held orders and cancels for the book step",
)  # fmt: skip
ORDERS: Final = TopicSpec(
    "orders", "order_id", _order_id, (OrderState,),
    Upsert(_order_id, _version), True, "latest order state with a version",
)  # fmt: skip
BALANCES: Final = TopicSpec(
    "balances", "user_id", _user, (BalanceState,),
    Upsert(_user, _version), True, "latest balances of a user with a version",
)  # fmt: skip
TRADES: Final = TopicSpec(
    "trades", "market", _market, (Trade,),
    FirstWins(lambda t: (t.market, t.seq)), False, "every trade with a per-market sequence",
)  # fmt: skip
DEPTH: Final = TopicSpec(
    "depth", "market", _market, (DepthState,),
    Upsert(_market, _seq), True, "aggregated book levels with the book sequence",
)  # fmt: skip
TRANSFERS: Final = TopicSpec(
    "transfers", "user_id/transfer_id", _transfer, (TransferState,),
    FirstWins(lambda t: (t.user_id, t.transfer_id)), True, "outcome of credits and debits",
)  # fmt: skip
REJECTIONS: Final = TopicSpec(
    "rejections", "user_id", _user, (Rejection,),
    Append(), False, "commands refused without a state record",
)  # fmt: skip
DEAD_LETTERS: Final = TopicSpec(
    "deadletters", "any", _dead_letter_key, (DeadLetter,),
    Append(), False, "undecodable or unprocessable input, with reason",
)  # fmt: skip
USERS: Final = TopicSpec(
    "users", "user_id", _user, (UserState,),
    Upsert(_user, _version), True, "users and hashed API keys",
)  # fmt: skip

SPECS: Final = (
    WALLET_INBOX, BOOK_INBOX, ORDERS, BALANCES, TRADES, DEPTH, TRANSFERS, REJECTIONS,
    DEAD_LETTERS, USERS,
)  # fmt: skip
"""Every topic of the exchange, in declaration (and creation) order."""

BY_LOGICAL: Final = {spec.logical: spec for spec in SPECS}
BY_TYPE: Final = {kind: spec for spec in SPECS for kind in spec.types}
"""Message type -> the one topic that carries it."""


def spec_of(message: msgspec.Struct) -> TopicSpec:
    """The topic a message belongs to (each message type belongs to exactly one)."""
    return BY_TYPE[type(message)]


Routes = dict[type[msgspec.Struct], tuple[str, Callable[[Any], str]]]
"""Message type -> (its topic's name, its key function): where a message is written."""

encode_value: Final = _encode
"""A record's value (JSON with the type tag), as ``TopicSpec.encode`` makes it."""


def record_routes(prefix: str = "") -> Routes:
    """Where each message type is written under ``prefix``: the dataflow's steps encode
    their outputs through this table in line (``record_encoder``, one call less a record)."""
    return {kind: (spec.name(prefix), spec.key_of) for kind, spec in BY_TYPE.items()}


def record_encoder(prefix: str = "") -> Callable[[Message], Record]:
    """Message -> (topic, key, value) under ``prefix``, as the dataflow's sink writes it."""
    routes = record_routes(prefix)

    def encode(message: Message) -> Record:
        topic, key_of = routes[type(message)]
        return topic, key_of(message).encode(), _encode(message)

    return encode
